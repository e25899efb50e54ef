//! The policy authorizer on a real SQLite registry: what attached policies allow at each action,
//! the thing of a connection, the certificate variables, and live reloads through the change feed.

use std::collections::BTreeMap;
use std::sync::Arc;

use certfleet_gateway::Authorizer;
use certfleet_gateway::authz::PolicyAuthorizer;
use certfleet_gateway::follow::apply_all;
use certfleet_gateway::identity::{Identity, Registry};
use certfleet_gateway::live::LiveSessions;
use certfleet_pki::Certificate;
use certfleet_registry::{PolicyName, ThingName, ThingPrincipalType};
use certfleet_services::*;

struct World {
    services: Arc<Services>,
    registry: Registry,
    live: LiveSessions,
    authorizer: Arc<PolicyAuthorizer>,
    alice: Caller,
    runtime: tokio::runtime::Runtime,
    seq: std::cell::Cell<i64>,
    _world: certfleet_testkit::World,
}

fn world() -> World {
    let world = certfleet_testkit::world();
    let services = world.services.clone();
    let alice = world.caller();
    let seq = services.last_change_seq().unwrap();
    World {
        registry: Registry::new(services.clone()),
        live: LiveSessions::default(),
        authorizer: PolicyAuthorizer::new(services.clone(), "us-east-1"),
        services,
        alice,
        runtime: tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap(),
        seq: std::cell::Cell::new(seq),
        _world: world,
    }
}

impl World {
    /// An ACTIVE device certificate, authenticated and loaded into the authorizer.
    fn device(&self) -> (Identity, Certificate, String) {
        let created = self.services.create_keys_and_certificate(&self.alice, true).unwrap();
        let certificate = Certificate::from_pem(&created.certificate.pem).unwrap();
        let identity = self
            .runtime
            .block_on(self.registry.authenticate(&self.alice.account, false, &certificate, certfleet_testkit::START))
            .unwrap();
        let arn = self.services.certificate_arn(&self.alice.account, certificate.id());
        (identity, certificate, arn)
    }

    fn load(&self, identity: &Identity, certificate: &Certificate) {
        self.runtime.block_on(self.authorizer.load(identity, certificate)).unwrap();
    }

    fn policy(&self, name: &str, document: &str) {
        self.services.create_policy(&self.alice, &PolicyName::parse(name).unwrap(), document, &[]).unwrap();
    }

    fn attach(&self, name: &str, arn: &str) {
        self.services.attach_policy(&self.alice, &PolicyName::parse(name).unwrap(), arn).unwrap();
    }

    /// Applies every change-feed entry since the last call, as the follower does.
    fn follow(&self) {
        for change in self.services.changes_after(self.seq.get(), 1000).unwrap() {
            self.seq.set(change.seq);
            self.runtime.block_on(apply_all(&self.registry, &self.live, Some(&self.authorizer), &change));
        }
    }
}

fn document(statements: &str) -> String {
    format!(r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#)
}

const ARN: &str = "arn:aws:iot:us-east-1:*:";

enum Ask {
    Connect(&'static str),
    Publish(&'static str, &'static str),
    Retain(&'static str, &'static str),
    Subscribe(&'static str, &'static str),
    Receive(&'static str, &'static str),
}

fn check(authorizer: &PolicyAuthorizer, identity: &Identity, ask: Ask, expected: bool) {
    let (what, got) = match ask {
        Ask::Connect(client) => (format!("connect {client}"), authorizer.connect(identity, client)),
        Ask::Publish(client, topic) => {
            (format!("{client} publish {topic}"), authorizer.publish(identity, client, topic, false))
        }
        Ask::Retain(client, topic) => {
            (format!("{client} retain {topic}"), authorizer.publish(identity, client, topic, true))
        }
        Ask::Subscribe(client, filter) => {
            (format!("{client} subscribe {filter}"), authorizer.subscribe(identity, client, filter))
        }
        Ask::Receive(client, topic) => {
            (format!("{client} receive {topic}"), authorizer.receive(identity, client, topic))
        }
    };
    assert_eq!(got, expected, "{what}");
}

#[test]
fn a_device_without_policies_may_do_nothing() {
    let world = world();
    let (identity, certificate, _) = world.device();
    world.load(&identity, &certificate);
    check(&world.authorizer, &identity, Ask::Connect("anything"), false);
    check(&world.authorizer, &identity, Ask::Publish("anything", "a/b"), false);
    // Never loaded: refused too (fail closed).
    let (other, _, _) = world.device();
    check(&world.authorizer, &other, Ask::Connect("anything"), false);
}

#[test]
fn each_action_is_decided_on_its_resource() {
    let world = world();
    let (identity, certificate, arn) = world.device();
    world.policy(
        "device",
        &document(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"{ARN}client/${{iot:ClientId}}"}},
               {{"Effect":"Deny","Action":"iot:Connect","Resource":"{ARN}client/banned-*"}},
               {{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"{ARN}topic/dev/${{iot:ClientId}}/*"}},
               {{"Effect":"Allow","Action":"iot:RetainPublish","Resource":"{ARN}topic/dev/${{iot:ClientId}}/state"}},
               {{"Effect":"Allow","Action":"iot:Subscribe","Resource":"{ARN}topicfilter/dev/${{iot:ClientId}}/#"}}"#
        )),
    );
    world.attach("device", &arn);
    world.load(&identity, &certificate);
    let authorizer = &world.authorizer;
    check(authorizer, &identity, Ask::Connect("sensor-1"), true);
    check(authorizer, &identity, Ask::Connect("banned-1"), false);
    check(authorizer, &identity, Ask::Publish("sensor-1", "dev/sensor-1/t"), true);
    check(authorizer, &identity, Ask::Publish("sensor-1", "dev/sensor-2/t"), false);
    check(authorizer, &identity, Ask::Publish("sensor-1", "other"), false);
    check(authorizer, &identity, Ask::Retain("sensor-1", "dev/sensor-1/state"), true);
    check(authorizer, &identity, Ask::Retain("sensor-1", "dev/sensor-1/t"), false);
    check(authorizer, &identity, Ask::Subscribe("sensor-1", "dev/sensor-1/#"), true);
    check(authorizer, &identity, Ask::Subscribe("sensor-1", "dev/sensor-1/+"), false);
    check(authorizer, &identity, Ask::Subscribe("sensor-1", "dev/sensor-2/#"), false);
    check(authorizer, &identity, Ask::Receive("sensor-1", "dev/sensor-1/x"), true);
    check(authorizer, &identity, Ask::Receive("sensor-1", "dev/sensor-2/x"), false);
    // A `*` in the client id is literal, not a wildcard.
    check(authorizer, &identity, Ask::Publish("*", "dev/x/t"), false);
}

#[test]
fn the_thing_named_by_the_client_id_is_the_connections_thing() {
    let world = world();
    let (identity, certificate, arn) = world.device();
    let attributes = BTreeMap::from([("room".to_owned(), "kitchen".to_owned())]);
    for name in ["lamp-1", "lamp-2"] {
        let thing = ThingName::parse(name).unwrap();
        world
            .services
            .create_thing(
                &world.alice,
                &thing,
                &ThingDefinition { attributes: attributes.clone(), ..Default::default() },
            )
            .unwrap();
        world.services.attach_thing_principal(&world.alice, &thing, &arn, ThingPrincipalType::NonExclusive).unwrap();
    }
    world.policy(
        "things",
        &document(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"{ARN}client/${{iot:Connection.Thing.ThingName}}"}},
               {{"Effect":"Allow","Action":"iot:Publish","Resource":"{ARN}topic/${{iot:Connection.Thing.Attributes[room]}}/${{iot:Connection.Thing.ThingName}}"}}"#
        )),
    );
    world.attach("things", &arn);
    world.load(&identity, &certificate);
    let authorizer = &world.authorizer;
    check(authorizer, &identity, Ask::Connect("lamp-1"), true);
    check(authorizer, &identity, Ask::Connect("lamp-2"), true);
    check(authorizer, &identity, Ask::Connect("lamp-3"), false);
    check(authorizer, &identity, Ask::Publish("lamp-1", "kitchen/lamp-1"), true);
    check(authorizer, &identity, Ask::Publish("lamp-1", "kitchen/lamp-2"), false);
    check(authorizer, &identity, Ask::Publish("lamp-2", "kitchen/lamp-2"), true);
}

#[test]
fn certificate_variables_come_from_the_certificate() {
    let world = world();
    let (identity, certificate, arn) = world.device();
    world.policy(
        "serial",
        &document(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"{ARN}client/${{iot:Certificate.SerialNumber}}"}}"#
        )),
    );
    world.attach("serial", &arn);
    world.load(&identity, &certificate);
    let serial = u128::from_str_radix(&certificate.serial_hex(), 16).unwrap().to_string();
    let serial: &'static str = Box::leak(serial.into_boxed_str());
    check(&world.authorizer, &identity, Ask::Connect(serial), true);
    check(&world.authorizer, &identity, Ask::Connect("12"), false);
}

#[test]
fn policy_changes_reach_loaded_principals_through_the_change_feed() {
    let world = world();
    let (identity, certificate, arn) = world.device();
    let allow = |topic: &str| {
        document(&format!(
            r#"{{"Effect":"Allow","Action":["iot:Connect","iot:Publish"],"Resource":["{ARN}client/*","{ARN}topic/{topic}"]}}"#
        ))
    };
    world.policy("live", &allow("first"));
    world.follow();
    world.load(&identity, &certificate);
    let authorizer = &world.authorizer;
    check(authorizer, &identity, Ask::Connect("c"), false);

    // Attached (a certificate entry): allowed.
    world.attach("live", &arn);
    world.follow();
    check(authorizer, &identity, Ask::Publish("c", "first"), true);

    // A new default version (a policy entry).
    let name = PolicyName::parse("live").unwrap();
    world.services.create_policy_version(&world.alice, &name, &allow("second"), true).unwrap();
    check(authorizer, &identity, Ask::Publish("c", "first"), true);
    world.follow();
    check(authorizer, &identity, Ask::Publish("c", "first"), false);
    check(authorizer, &identity, Ask::Publish("c", "second"), true);

    // The old version made default again.
    world.services.set_default_policy_version(&world.alice, &name, 1).unwrap();
    world.follow();
    check(authorizer, &identity, Ask::Publish("c", "first"), true);

    // Detached: nothing is allowed any more.
    world.services.detach_policy(&world.alice, &name, &arn).unwrap();
    world.follow();
    check(authorizer, &identity, Ask::Connect("c"), false);
    check(authorizer, &identity, Ask::Publish("c", "first"), false);
}

#[test]
fn thing_changes_reach_the_connections_context() {
    let world = world();
    let (identity, certificate, arn) = world.device();
    let thing = ThingName::parse("meter").unwrap();
    let room = |value: &str| ThingDefinition {
        attributes: BTreeMap::from([("room".to_owned(), value.to_owned())]),
        ..Default::default()
    };
    world.services.create_thing(&world.alice, &thing, &room("hall")).unwrap();
    world.services.attach_thing_principal(&world.alice, &thing, &arn, ThingPrincipalType::NonExclusive).unwrap();
    world.policy(
        "rooms",
        &document(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Publish","Resource":"{ARN}topic/${{iot:Connection.Thing.Attributes[room]}}"}}"#
        )),
    );
    world.attach("rooms", &arn);
    world.follow();
    world.load(&identity, &certificate);
    check(&world.authorizer, &identity, Ask::Publish("meter", "hall"), true);
    world
        .services
        .update_thing(
            &world.alice,
            &thing,
            &ThingUpdate {
                attributes: Some(AttributePayload { attributes: room("cellar").attributes, merge: true }),
                ..Default::default()
            },
        )
        .unwrap();
    world.follow();
    check(&world.authorizer, &identity, Ask::Publish("meter", "hall"), false);
    check(&world.authorizer, &identity, Ask::Publish("meter", "cellar"), true);
}

/// An attacker holding one valid certificate chooses its client ID to borrow another device's
/// thing: `iot:Connection.Thing.*` name only a thing attached to the connection's own
/// certificate (exclusively, or non-exclusively and named by the client ID), so neither the
/// shipped strict policy nor a looser one without the `IsAttached` condition lets it through.
#[test]
fn a_device_cannot_borrow_a_thing_not_attached_to_its_certificate() {
    let world = world();
    world.policy("strict", include_str!("../../agent/policy/device-policy-strict.json"));
    world.policy(
        "loose",
        &document(&format!(
            r#"{{"Effect":"Allow","Action":"iot:Connect","Resource":"{ARN}client/${{iot:Connection.Thing.ThingName}}"}},
               {{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":"{ARN}topic/things/${{iot:Connection.Thing.ThingName}}/*"}}"#
        )),
    );
    let thing = |name: &str, arn: Option<&str>, kind: ThingPrincipalType| {
        let name = ThingName::parse(name).unwrap();
        world.services.create_thing(&world.alice, &name, &ThingDefinition::default()).unwrap();
        if let Some(arn) = arn {
            world.services.attach_thing_principal(&world.alice, &name, arn, kind).unwrap();
        }
    };
    let (mallory, mallory_certificate, mallory_arn) = world.device();
    let (_, _, victim_arn) = world.device();
    let (eve, eve_certificate, eve_arn) = world.device();
    let (solo, solo_certificate, solo_arn) = world.device();
    thing("mallory-thing", Some(&mallory_arn), ThingPrincipalType::NonExclusive);
    thing("victim-thing", Some(&victim_arn), ThingPrincipalType::NonExclusive);
    thing("orphan", None, ThingPrincipalType::NonExclusive);
    thing("solo-thing", Some(&solo_arn), ThingPrincipalType::Exclusive);
    for arn in [&mallory_arn, &victim_arn, &solo_arn] {
        world.attach("strict", arn);
    }
    world.attach("loose", &eve_arn);
    world.load(&mallory, &mallory_certificate);
    world.load(&eve, &eve_certificate);
    world.load(&solo, &solo_certificate);
    let authorizer = &world.authorizer;

    check(authorizer, &mallory, Ask::Connect("mallory-thing"), true);
    check(authorizer, &mallory, Ask::Connect("victim-thing"), false);
    check(authorizer, &mallory, Ask::Connect("orphan"), false);
    check(authorizer, &mallory, Ask::Subscribe("victim-thing", "management/topic/victim-thing/crt_req"), false);
    check(authorizer, &mallory, Ask::Receive("victim-thing", "management/topic/victim-thing/crt_req"), false);
    check(authorizer, &mallory, Ask::Publish("victim-thing", "management/topic/victim-thing/csr_res"), false);
    check(authorizer, &mallory, Ask::Publish("mallory-thing", "management/topic/victim-thing/csr_res"), false);
    check(authorizer, &mallory, Ask::Publish("mallory-thing", "management/topic/mallory-thing/csr_res"), true);
    check(authorizer, &mallory, Ask::Receive("mallory-thing", "management/topic/mallory-thing/crt_req"), true);

    // No thing attached: the thing variables have no value, whatever the client ID names.
    check(authorizer, &eve, Ask::Connect("victim-thing"), false);
    check(authorizer, &eve, Ask::Connect("orphan"), false);
    check(authorizer, &eve, Ask::Publish("victim-thing", "things/victim-thing/state"), false);
    check(authorizer, &eve, Ask::Receive("victim-thing", "things/victim-thing/cmd"), false);

    // An exclusive thing is the connection's thing; the client ID must still be its name.
    check(authorizer, &solo, Ask::Connect("solo-thing"), true);
    check(authorizer, &solo, Ask::Connect("victim-thing"), false);
    check(authorizer, &solo, Ask::Publish("victim-thing", "management/topic/victim-thing/csr_res"), false);
}
