//! Table tests of the whole crate through its public API: one `check` per case.
//!
//! In statements, `~` stands for `arn:aws:iot:us-east-1:123456789012:`; request resources are
//! written without it.

use std::collections::BTreeMap;

use crate::Action::{Connect, Publish, Receive, RetainPublish, Subscribe};
use crate::Decision::{Allow, ExplicitDeny, ImplicitDeny};
use crate::*;

const ARN: &str = "arn:aws:iot:us-east-1:123456789012:";

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

/// A registered device: thing `sensor-1` attached, a full certificate.
fn device() -> Context {
    Context {
        client_id: "sensor-1".into(),
        source_ip: Some("192.0.2.7".into()),
        thing: Some(Thing {
            name: "sensor-1".into(),
            type_name: Some("thermometer".into()),
            attributes: BTreeMap::from([
                ("floor".to_owned(), "3".to_owned()),
                ("site".to_owned(), "a*b?c/d".to_owned()),
            ]),
        }),
        certificate: CertificateAttributes {
            serial_number: Some("10525622389124227206".into()),
            subject: DistinguishedName {
                country: strings(&["US"]),
                organization: strings(&["Example Corp"]),
                organizational_unit: strings(&["line-1", "line-2", "line-3", "line-4", "line-5", "line-6"]),
                common_name: strings(&["sensor-1"]),
                ..DistinguishedName::default()
            },
            issuer: DistinguishedName { common_name: strings(&["Fleet CA"]), ..DistinguishedName::default() },
            subject_alternative_names: AlternativeNames {
                dns_names: strings(&["sensor-1.example.com"]),
                ..AlternativeNames::default()
            },
            issuer_alternative_names: AlternativeNames::default(),
        },
    }
}

/// The same device with no thing attached to its certificate.
fn unattached() -> Context {
    Context { thing: None, ..device() }
}

fn with_client_id(client_id: &str) -> Context {
    Context { client_id: client_id.into(), ..device() }
}

fn with_thing_type(type_name: Option<&str>) -> Context {
    let mut context = device();
    if let Some(thing) = &mut context.thing {
        thing.type_name = type_name.map(str::to_owned);
    }
    context
}

fn with_common_name(common_name: &str) -> Context {
    let mut context = device();
    context.certificate.subject.common_name = strings(&[common_name]);
    context
}

fn document(statements: &str) -> String {
    format!(r#"{{"Version": "2012-10-17", "Statement": {}}}"#, statements.replace('~', ARN))
}

fn check(statements: &str, action: Action, resource: &str, context: &Context, expected: Decision) {
    check_policies(&[statements], action, resource, context, expected);
}

fn check_policies(statements: &[&str], action: Action, resource: &str, context: &Context, expected: Decision) {
    let policies: Vec<Policy> = statements
        .iter()
        .map(|statements| Policy::parse(&document(statements)).unwrap_or_else(|error| panic!("{statements}: {error}")))
        .collect();
    let resource = format!("{ARN}{resource}");
    let request = Request { action, resource: &resource, context };
    assert_eq!(evaluate(&policies, &request), expected, "{statements:?}, {action} on {resource}");
}

// The tables below keep one case per line; rustfmt would spread each over five.

#[test]
#[rustfmt::skip]
fn actions() {
    let connect = r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}"#;
    check(connect, Connect, "client/sensor-1", &device(), Allow);
    check(connect, Publish, "topic/a", &device(), ImplicitDeny);
    let publish = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}"#;
    check(publish, Publish, "topic/a", &device(), Allow);
    check(publish, RetainPublish, "topic/a", &device(), ImplicitDeny);
    check(publish, Receive, "topic/a", &device(), ImplicitDeny);
    let subscribe = r#"{"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "*"}"#;
    check(subscribe, Subscribe, "topicfilter/a/#", &device(), Allow);
    check(subscribe, Publish, "topic/a", &device(), ImplicitDeny);
    let receive = r#"{"Effect": "Allow", "Action": "iot:Receive", "Resource": "*"}"#;
    check(receive, Receive, "topic/a", &device(), Allow);
    check(receive, Subscribe, "topicfilter/a", &device(), ImplicitDeny);
    let retain = r#"{"Effect": "Allow", "Action": "iot:RetainPublish", "Resource": "*"}"#;
    check(retain, RetainPublish, "topic/a", &device(), Allow);
    check(retain, Publish, "topic/a", &device(), ImplicitDeny);
}

#[test]
#[rustfmt::skip]
fn action_wildcards_and_lists() {
    for action in Action::ALL {
        let resource = format!("{}/a", action.resource_type());
        check(r#"{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}"#, action, &resource, &device(), Allow);
        check(r#"{"Effect": "Allow", "Action": "*", "Resource": "*"}"#, action, &resource, &device(), Allow);
    }
    let p_star = r#"{"Effect": "Allow", "Action": "iot:P*", "Resource": "*"}"#;
    check(p_star, Publish, "topic/a", &device(), Allow);
    check(p_star, Subscribe, "topicfilter/a", &device(), ImplicitDeny);
    check(p_star, RetainPublish, "topic/a", &device(), ImplicitDeny);
    let star_publish = r#"{"Effect": "Allow", "Action": "iot:*Publish", "Resource": "*"}"#;
    check(star_publish, Publish, "topic/a", &device(), Allow);
    check(star_publish, RetainPublish, "topic/a", &device(), Allow);
    check(star_publish, Receive, "topic/a", &device(), ImplicitDeny);
    check(r#"{"Effect": "Allow", "Action": "iot:?eceive", "Resource": "*"}"#, Receive, "topic/a", &device(), Allow);
    check(r#"{"Effect": "Allow", "Action": "IOT:PUBLISH", "Resource": "*"}"#, Publish, "topic/a", &device(), Allow);
    check(r#"{"Effect": "Allow", "Action": "iot:UpdateThingShadow", "Resource": "*"}"#, Publish, "topic/a", &device(), ImplicitDeny);
    check(r#"{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}"#, Publish, "topic/a", &device(), ImplicitDeny);
    let list = r#"{"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "*"}"#;
    check(list, Publish, "topic/a", &device(), Allow);
    check(list, Receive, "topic/a", &device(), Allow);
    check(list, Subscribe, "topicfilter/a", &device(), ImplicitDeny);
}

#[test]
#[rustfmt::skip]
fn not_action() {
    let not_publish = r#"{"Effect": "Allow", "NotAction": "iot:Publish", "Resource": "*"}"#;
    check(not_publish, Publish, "topic/a", &device(), ImplicitDeny);
    check(not_publish, Receive, "topic/a", &device(), Allow);
    check(not_publish, Connect, "client/sensor-1", &device(), Allow);
    check(r#"{"Effect": "Allow", "NotAction": ["iot:P*", "iot:Connect"], "Resource": "*"}"#, Connect, "client/x", &device(), ImplicitDeny);
    check(r#"{"Effect": "Allow", "NotAction": "iot:UpdateThingShadow", "Resource": "*"}"#, Subscribe, "topicfilter/a", &device(), Allow);
    let deny_all_but_connect = r#"[{"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
        {"Effect": "Deny", "NotAction": "iot:Connect", "Resource": "*"}]"#;
    check(deny_all_but_connect, Connect, "client/sensor-1", &device(), Allow);
    check(deny_all_but_connect, Publish, "topic/a", &device(), ExplicitDeny);
}

#[test]
#[rustfmt::skip]
fn resources() {
    let any = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}"#;
    check(any, Publish, "topic/anything/at/all", &device(), Allow);
    let exact = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/a/b"}"#;
    check(exact, Publish, "topic/a/b", &device(), Allow);
    check(exact, Publish, "topic/a/b/c", &device(), ImplicitDeny);
    check(exact, Publish, "topic/a/B", &device(), ImplicitDeny);
    check(exact, Publish, "topicfilter/a/b", &device(), ImplicitDeny);
    let subtree = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/a/*"}"#;
    check(subtree, Publish, "topic/a/b", &device(), Allow);
    check(subtree, Publish, "topic/a/b/c/d", &device(), Allow);
    check(subtree, Publish, "topic/a/", &device(), Allow);
    check(subtree, Publish, "topic/a", &device(), ImplicitDeny);
    check(subtree, Publish, "topic/ab", &device(), ImplicitDeny);
    let infix = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/*/telemetry"}"#;
    check(infix, Publish, "topic/x/y/telemetry", &device(), Allow);
    check(infix, Publish, "topic/x/telemetry/more", &device(), ImplicitDeny);
    let one = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/a?c"}"#;
    check(one, Publish, "topic/abc", &device(), Allow);
    check(one, Publish, "topic/a/c", &device(), Allow);
    check(one, Publish, "topic/ac", &device(), ImplicitDeny);
    check(one, Publish, "topic/abbc", &device(), ImplicitDeny);
    let region = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:123456789012:topic/a"}"#;
    check(region, Publish, "topic/a", &device(), Allow);
    let colon = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*/a"}"#;
    check(colon, Publish, "topic/a", &device(), Allow);
    let list = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": ["~topic/a", "~topic/b"]}"#;
    check(list, Publish, "topic/b", &device(), Allow);
    check(list, Publish, "topic/c", &device(), ImplicitDeny);
}

#[test]
#[rustfmt::skip]
fn mqtt_wildcards_are_literal() {
    let plus = r#"{"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "~topicfilter/a/+"}"#;
    check(plus, Subscribe, "topicfilter/a/+", &device(), Allow);
    check(plus, Subscribe, "topicfilter/a/b", &device(), ImplicitDeny);
    let hash = r#"{"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "~topicfilter/a/#"}"#;
    check(hash, Subscribe, "topicfilter/a/#", &device(), Allow);
    check(hash, Subscribe, "topicfilter/a/b/c", &device(), ImplicitDeny);
    let star = r#"{"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "~topicfilter/a/*"}"#;
    check(star, Subscribe, "topicfilter/a/+/c", &device(), Allow);
    check(star, Subscribe, "topicfilter/a/#", &device(), Allow);
}

#[test]
#[rustfmt::skip]
fn not_resource() {
    let public = r#"{"Effect": "Allow", "Action": "iot:Publish", "NotResource": "~topic/private/*"}"#;
    check(public, Publish, "topic/public", &device(), Allow);
    check(public, Publish, "topic/private/x", &device(), ImplicitDeny);
    let two = r#"{"Effect": "Allow", "Action": "iot:Publish", "NotResource": ["~topic/x", "~topic/y"]}"#;
    check(two, Publish, "topic/y", &device(), ImplicitDeny);
    check(two, Publish, "topic/z", &device(), Allow);
}

#[test]
#[rustfmt::skip]
fn statement_forms() {
    let object = r#"{"Sid": "one", "Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/a"}"#;
    check(object, Publish, "topic/a", &device(), Allow);
    let array = r#"[{"Effect": "Allow", "Action": ["iot:Publish"], "Resource": ["~topic/a"]}]"#;
    check(array, Publish, "topic/a", &device(), Allow);
    let with_id = format!(r#"{{"Id": "p", "Version": "2012-10-17", "Statement": {}}}"#, object.replace('~', ARN));
    assert!(Policy::parse(&with_id).is_ok());
}

#[test]
#[rustfmt::skip]
fn deny_wins() {
    let one_policy = r#"[{"Effect": "Allow", "Action": "iot:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "iot:Publish", "Resource": "~topic/secret"}]"#;
    check(one_policy, Publish, "topic/secret", &device(), ExplicitDeny);
    check(one_policy, Publish, "topic/other", &device(), Allow);
    check(one_policy, Receive, "topic/secret", &device(), Allow);
    let deny_first = r#"[{"Effect": "Deny", "Action": "iot:Publish", "Resource": "~topic/secret"},
        {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]"#;
    check(deny_first, Publish, "topic/secret", &device(), ExplicitDeny);
    let allow = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}"#;
    let deny = r#"{"Effect": "Deny", "Action": "iot:Publish", "Resource": "~topic/secret"}"#;
    check_policies(&[allow, deny], Publish, "topic/secret", &device(), ExplicitDeny);
    check_policies(&[deny, allow], Publish, "topic/secret", &device(), ExplicitDeny);
    check_policies(&[allow, deny], Publish, "topic/open", &device(), Allow);
    check_policies(&[deny], Publish, "topic/secret", &device(), ExplicitDeny);
    check_policies(&[deny], Publish, "topic/open", &device(), ImplicitDeny);
    check_policies(&[], Publish, "topic/open", &device(), ImplicitDeny);
    let connect = r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}"#;
    check_policies(&[connect, deny], Publish, "topic/open", &device(), ImplicitDeny);
    check_policies(&[connect, allow], Publish, "topic/open", &device(), Allow);
}

#[test]
#[rustfmt::skip]
fn client_and_thing_variables() {
    let client = r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "~client/${iot:ClientId}"}"#;
    check(client, Connect, "client/sensor-1", &device(), Allow);
    check(client, Connect, "client/sensor-2", &device(), ImplicitDeny);
    check(r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "~client/${IOT:CLIENTID}"}"#, Connect, "client/sensor-1", &device(), Allow);
    let thing = r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "~client/${iot:Connection.Thing.ThingName}"}"#;
    check(thing, Connect, "client/sensor-1", &device(), Allow);
    check(thing, Connect, "client/sensor-1", &unattached(), ImplicitDeny);
    check(thing, Connect, "client/", &unattached(), ImplicitDeny);
    let thing_type = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${iot:Connection.Thing.ThingTypeName}/x"}"#;
    check(thing_type, Publish, "topic/thermometer/x", &device(), Allow);
    check(thing_type, Publish, "topic//x", &with_thing_type(None), ImplicitDeny);
    check(thing_type, Publish, "topic/thermometer/x", &unattached(), ImplicitDeny);
    let floor = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/floor/${iot:Connection.Thing.Attributes[floor]}"}"#;
    check(floor, Publish, "topic/floor/3", &device(), Allow);
    check(floor, Publish, "topic/floor/4", &device(), ImplicitDeny);
    check(floor, Publish, "topic/floor/3", &unattached(), ImplicitDeny);
    let missing = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${iot:Connection.Thing.Attributes[room]}*"}"#;
    check(missing, Publish, "topic/x", &device(), ImplicitDeny);
    let attribute_case = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${iot:Connection.Thing.Attributes[Floor]}"}"#;
    check(attribute_case, Publish, "topic/3", &device(), ImplicitDeny);
    let attached = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/attached/${iot:Connection.Thing.IsAttached}"}"#;
    check(attached, Publish, "topic/attached/true", &device(), Allow);
    check(attached, Publish, "topic/attached/false", &unattached(), Allow);
    check(attached, Publish, "topic/attached/true", &unattached(), ImplicitDeny);
    let source_ip = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/ip/${aws:SourceIp}"}"#;
    check(source_ip, Publish, "topic/ip/192.0.2.7", &device(), Allow);
    check(source_ip, Publish, "topic/ip/", &Context { source_ip: None, ..device() }, ImplicitDeny);
}

#[test]
#[rustfmt::skip]
fn substituted_values_are_literal() {
    let client = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${iot:ClientId}"}"#;
    check(client, Publish, "topic/a*b", &with_client_id("a*b"), Allow);
    check(client, Publish, "topic/aXXb", &with_client_id("a*b"), ImplicitDeny);
    check(client, Publish, "topic/a?b", &with_client_id("a?b"), Allow);
    check(client, Publish, "topic/aXb", &with_client_id("a?b"), ImplicitDeny);
    check(client, Publish, "topic/a", &with_client_id("*"), ImplicitDeny);
    let site = r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "~client/${iot:Connection.Thing.Attributes[site]}"}"#;
    check(site, Connect, "client/a*b?c/d", &device(), Allow);
    check(site, Connect, "client/aXXbYc/d", &device(), ImplicitDeny);
    let prefix = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${iot:ClientId}/*"}"#;
    check(prefix, Publish, "topic/sensor-1/x/y", &device(), Allow);
    check(prefix, Publish, "topic/sensor-10/x", &device(), ImplicitDeny);
    check(prefix, Publish, "topic/sensor-1", &device(), ImplicitDeny);
}

/// A value substituted into a topic or topic filter is one literal level: a value holding `/`,
/// `+`, `#` or NUL has no value there (so it grants nothing, and fails a NotResource closed),
/// whichever variable it comes from. A `client` resource takes the client ID as it is.
#[test]
#[rustfmt::skip]
fn substituted_values_stay_in_their_topic_level() {
    let filter = r#"{"Effect": "Allow", "Action": "iot:Subscribe", "Resource": "~topicfilter/clients/${iot:ClientId}/#"}"#;
    check(filter, Subscribe, "topicfilter/clients/sensor-1/#", &device(), Allow);
    check(filter, Subscribe, "topicfilter/clients/+/#", &with_client_id("+"), ImplicitDeny);
    check(filter, Subscribe, "topicfilter/clients/#/#", &with_client_id("#"), ImplicitDeny);
    check(filter, Subscribe, "topicfilter/clients/a+/#", &with_client_id("a+"), ImplicitDeny);
    check(filter, Subscribe, "topicfilter/clients/victim/x/#", &with_client_id("victim/x"), ImplicitDeny);
    check(filter, Subscribe, "topicfilter/clients/a\u{0}b/#", &with_client_id("a\u{0}b"), ImplicitDeny);
    let topic = r#"{"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive", "iot:RetainPublish"], "Resource": "~topic/clients/${iot:ClientId}/*"}"#;
    for action in [Publish, Receive, RetainPublish] {
        check(topic, action, "topic/clients/sensor-1/t", &device(), Allow);
        check(topic, action, "topic/clients/victim/x/t", &with_client_id("victim/x"), ImplicitDeny);
        check(topic, action, "topic/clients/victim/t", &with_client_id("victim/"), ImplicitDeny);
        check(topic, action, "topic/clients/+/t", &with_client_id("+"), ImplicitDeny);
        check(topic, action, "topic/clients/#/t", &with_client_id("#"), ImplicitDeny);
    }
    // Other literal characters stay literal, and a `client` resource takes `/` as it is.
    check(topic, Publish, "topic/clients/a*b/t", &with_client_id("a*b"), Allow);
    check(topic, Publish, "topic/clients/a b:c/t", &with_client_id("a b:c"), Allow);
    let connect = r#"{"Effect": "Allow", "Action": "iot:Connect", "Resource": "~client/${iot:ClientId}"}"#;
    check(connect, Connect, "client/victim/x", &with_client_id("victim/x"), Allow);
    // Thing attributes and certificate fields too.
    let site = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${iot:Connection.Thing.Attributes[site]}/*"}"#;
    check(site, Publish, "topic/a*b?c/d/x", &device(), ImplicitDeny);
    let common_name = r#"{"Effect": "Allow", "Action": ["iot:Publish", "iot:Subscribe"], "Resource": ["~topic/cn/${iot:Certificate.Subject.CommonName}/*", "~topicfilter/cn/${iot:Certificate.Subject.CommonName}/*"]}"#;
    check(common_name, Publish, "topic/cn/sensor-1/x", &device(), Allow);
    check(common_name, Publish, "topic/cn/victim/x/y", &with_common_name("victim/x"), ImplicitDeny);
    check(common_name, Subscribe, "topicfilter/cn/victim/x/y", &with_common_name("victim/x"), ImplicitDeny);
    check(common_name, Connect, "client/x", &with_common_name("victim/x"), ImplicitDeny);
    let units = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/ou/${iot:Certificate.Subject.OrganizationalUnit.List}"}"#;
    let mut slashed = device();
    slashed.certificate.subject.organizational_unit = strings(&["line-1", "line/2"]);
    check(units, Publish, "topic/ou/line-1", &device(), Allow);
    check(units, Publish, "topic/ou/line-1", &slashed, ImplicitDeny);
    // NotResource fails closed: the Allow does not apply, a Deny does.
    let not_resource = r#"{"Effect": "Allow", "Action": "iot:Publish", "NotResource": "~topic/clients/${iot:ClientId}/*"}"#;
    check(not_resource, Publish, "topic/elsewhere", &with_client_id("a/b"), ImplicitDeny);
    check(not_resource, Publish, "topic/elsewhere", &device(), Allow);
    let deny_others = r#"{"Effect": "Deny", "Action": "iot:Publish", "NotResource": "~topic/clients/${iot:ClientId}/*"}"#;
    let allow_all = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}"#;
    check_policies(&[allow_all, deny_others], Publish, "topic/clients/victim/x/t", &with_client_id("victim/x"), ExplicitDeny);
    check_policies(&[allow_all, deny_others], Publish, "topic/clients/sensor-1/t", &device(), Allow);
}

/// The strict device policy certfleet ships (`crates/agent/policy/device-policy-strict.json`,
/// written for any region and account): the client ID must be the name of a thing attached to
/// the certificate, and the topics are that thing's.
#[test]
fn the_strict_device_policy() {
    let document = include_str!("../../agent/policy/device-policy-strict.json");
    let policy = Policy::parse(document).expect("the strict device policy compiles");
    let decide = |action: Action, resource: &str, context: &Context| {
        let resource = format!("{ARN}{resource}");
        evaluate(std::slice::from_ref(&policy), &Request { action, resource: &resource, context })
    };
    let cases: [(Action, &str, Context, Decision); 14] = [
        (Connect, "client/sensor-1", device(), Allow),
        (Connect, "client/sensor-1", unattached(), ImplicitDeny),
        (Connect, "client/sensor-2", with_client_id("sensor-2"), ImplicitDeny),
        (Subscribe, "topicfilter/management/topic/sensor-1/csr_req", device(), Allow),
        (Subscribe, "topicfilter/management/topic/sensor-1/crt_req", device(), Allow),
        (Subscribe, "topicfilter/management/topic/+/crt_req", device(), ImplicitDeny),
        (Subscribe, "topicfilter/management/topic/sensor-1/csr_req", unattached(), ImplicitDeny),
        (Receive, "topic/management/topic/sensor-1/crt_req", device(), Allow),
        (Receive, "topic/management/topic/sensor-2/crt_req", device(), ImplicitDeny),
        (Publish, "topic/management/topic/sensor-1/csr_res", device(), Allow),
        (Publish, "topic/management/topic/sensor-1/crt_ack", device(), Allow),
        (Publish, "topic/management/topic/sensor-1/crt_err", device(), Allow),
        (Publish, "topic/management/topic/sensor-2/csr_res", device(), ImplicitDeny),
        (Publish, "topic/management/topic/sensor-1/crt_req", device(), ImplicitDeny),
    ];
    for (action, resource, context, expected) in cases {
        assert_eq!(decide(action, resource, &context), expected, "{action} on {resource}");
    }
}

#[test]
#[rustfmt::skip]
fn certificate_variables() {
    let resource = |variable: &str| {
        format!(r#"{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${{{variable}}}"}}"#)
    };
    let cases = [
        ("iot:Certificate.Subject.CommonName", "sensor-1", Allow),
        ("iot:Certificate.Subject.CommonName", "sensor-2", ImplicitDeny),
        ("iot:Certificate.Subject.Organization", "Example Corp", Allow),
        ("iot:Certificate.Subject.Country", "US", Allow),
        ("iot:Certificate.Issuer.CommonName", "Fleet CA", Allow),
        ("iot:Certificate.SerialNumber", "10525622389124227206", Allow),
        ("iot:Certificate.Subject.AlternativeName.DNSName", "sensor-1.example.com", Allow),
        ("iot:Certificate.Subject.Title", "", ImplicitDeny),
        ("iot:Certificate.Issuer.AlternativeName.DNSName", "", ImplicitDeny),
        // The plain name is the first value; `.N` the value at index N.
        ("iot:Certificate.Subject.OrganizationalUnit", "line-1", Allow),
        ("iot:Certificate.Subject.OrganizationalUnit", "line-2", ImplicitDeny),
        ("iot:Certificate.Subject.OrganizationalUnit.1", "line-2", Allow),
        ("iot:Certificate.Subject.OrganizationalUnit.4", "line-5", Allow),
        ("iot:Certificate.Subject.OrganizationalUnit.5", "line-6", ImplicitDeny),
        ("iot:Certificate.Subject.Country.1", "US", ImplicitDeny),
        // `.List`: any of the first five values.
        ("iot:Certificate.Subject.OrganizationalUnit.List", "line-1", Allow),
        ("iot:Certificate.Subject.OrganizationalUnit.List", "line-3", Allow),
        ("iot:Certificate.Subject.OrganizationalUnit.List", "line-5", Allow),
        ("iot:Certificate.Subject.OrganizationalUnit.List", "line-6", ImplicitDeny),
        ("iot:Certificate.Subject.Title.List", "", ImplicitDeny),
        ("iot:Certificate.AvailableKeys", "iot:Certificate.Subject.CommonName", Allow),
        ("iot:Certificate.AvailableKeys", "iot:Certificate.Subject.Title", ImplicitDeny),
    ];
    for (variable, topic, expected) in cases {
        check(&resource(variable), Publish, &format!("topic/{topic}"), &device(), expected);
    }
    // AWS IoT does not substitute a certificate attribute holding a wildcard character.
    let common_name = resource("iot:Certificate.Subject.CommonName");
    check(&common_name, Publish, "topic/dev*", &with_common_name("dev*"), ImplicitDeny);
    check(&common_name, Publish, "topic/a+b", &with_common_name("a+b"), ImplicitDeny);
    check(&common_name, Publish, "topic/plain", &with_common_name("plain"), Allow);
    check(&common_name, Publish, &format!("topic/{}", "x".repeat(1025)), &with_common_name(&"x".repeat(1025)), ImplicitDeny);
}

#[test]
#[rustfmt::skip]
fn escapes() {
    let star = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${*}"}"#;
    check(star, Publish, "topic/*", &device(), Allow);
    check(star, Publish, "topic/x", &device(), ImplicitDeny);
    let question = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/a${?}"}"#;
    check(question, Publish, "topic/a?", &device(), Allow);
    check(question, Publish, "topic/ab", &device(), ImplicitDeny);
    let dollar = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/${$}{iot:ClientId}"}"#;
    check(dollar, Publish, "topic/${iot:ClientId}", &device(), Allow);
    check(dollar, Publish, "topic/sensor-1", &device(), ImplicitDeny);
    let plain_dollar = r#"{"Effect": "Allow", "Action": "iot:Publish", "Resource": "~topic/$aws/things/${iot:ClientId}/shadow/*"}"#;
    check(plain_dollar, Publish, "topic/$aws/things/sensor-1/shadow/update", &device(), Allow);
}

#[test]
#[rustfmt::skip]
fn variables_without_a_value_never_widen_access() {
    let thing = "${iot:Connection.Thing.ThingName}";
    // In Resource: that pattern matches nothing, the others still do.
    let mixed = format!(r#"{{"Effect": "Allow", "Action": "iot:Publish", "Resource": ["~topic/{thing}", "~topic/public"]}}"#);
    check(&mixed, Publish, "topic/public", &unattached(), Allow);
    check(&mixed, Publish, "topic/sensor-1", &unattached(), ImplicitDeny);
    // A Deny through an unresolved Resource pattern does not apply.
    let deny_own = format!(r#"[{{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}},
        {{"Effect": "Deny", "Action": "iot:Publish", "Resource": ["~topic/{thing}/x", "~topic/admin"]}}]"#);
    check(&deny_own, Publish, "topic/anything", &unattached(), Allow);
    check(&deny_own, Publish, "topic/admin", &unattached(), ExplicitDeny);
    check(&deny_own, Publish, "topic/sensor-1/x", &device(), ExplicitDeny);
    // In NotResource: an Allow does not apply...
    let allow_except = format!(r#"{{"Effect": "Allow", "Action": "iot:Publish", "NotResource": "~topic/{thing}/private"}}"#);
    check(&allow_except, Publish, "topic/x", &unattached(), ImplicitDeny);
    check(&allow_except, Publish, "topic/x", &device(), Allow);
    check(&allow_except, Publish, "topic/sensor-1/private", &device(), ImplicitDeny);
    // ...and a Deny does.
    let deny_except = format!(r#"[{{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}},
        {{"Effect": "Deny", "Action": "iot:Publish", "NotResource": "~topic/{thing}/*"}}]"#);
    check(&deny_except, Publish, "topic/x", &unattached(), ExplicitDeny);
    check(&deny_except, Publish, "topic/sensor-1/a", &device(), Allow);
    check(&deny_except, Publish, "topic/x", &device(), ExplicitDeny);
    check(&deny_except, Receive, "topic/x", &unattached(), Allow);
    // Under a negated condition operator: the same.
    let allow_not_equal = format!(r#"{{"Effect": "Allow", "Action": "iot:Publish", "Resource": "*",
        "Condition": {{"StringNotEquals": {{"iot:ClientId": "{thing}"}}}}}}"#);
    check(&allow_not_equal, Publish, "topic/a", &unattached(), ImplicitDeny);
    check(&allow_not_equal, Publish, "topic/a", &with_client_id("other"), Allow);
    check(&allow_not_equal, Publish, "topic/a", &device(), ImplicitDeny);
    let deny_not_equal = format!(r#"[{{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}},
        {{"Effect": "Deny", "Action": "iot:Publish", "Resource": "*",
          "Condition": {{"StringNotEquals": {{"iot:ClientId": "{thing}"}}}}}}]"#);
    check(&deny_not_equal, Publish, "topic/a", &unattached(), ExplicitDeny);
    check(&deny_not_equal, Publish, "topic/a", &device(), Allow);
    check(&deny_not_equal, Publish, "topic/a", &with_client_id("other"), ExplicitDeny);
}

#[test]
#[rustfmt::skip]
fn conditions() {
    let condition = |condition: &str| {
        format!(r#"{{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*", "Condition": {condition}}}"#)
    };
    let cases = [
        (r#"{"Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#, device(), Allow),
        (r#"{"Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#, unattached(), ImplicitDeny),
        (r#"{"Bool": {"iot:Connection.Thing.IsAttached": true}}"#, device(), Allow),
        (r#"{"Bool": {"iot:Connection.Thing.IsAttached": "FALSE"}}"#, unattached(), Allow),
        (r#"{"Bool": {"iot:Connection.Thing.IsAttached": ["true", "false"]}}"#, unattached(), Allow),
        (r#"{"StringEquals": {"iot:ClientId": "sensor-1"}}"#, device(), Allow),
        (r#"{"StringEquals": {"iot:ClientId": "sensor-1"}}"#, with_client_id("sensor-2"), ImplicitDeny),
        (r#"{"StringEquals": {"IOT:CLIENTID": "sensor-1"}}"#, device(), Allow),
        (r#"{"StringEquals": {"iot:ClientId": ["x", "sensor-1"]}}"#, device(), Allow),
        (r#"{"StringEquals": {"iot:ClientId": "sensor-*"}}"#, device(), ImplicitDeny),
        (r#"{"StringEquals": {"iot:ClientId": "sensor-*"}}"#, with_client_id("sensor-*"), Allow),
        (r#"{"StringEquals": {"iot:ClientId": "SENSOR-1"}}"#, device(), ImplicitDeny),
        (r#"{"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}"#, device(), Allow),
        (r#"{"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}"#, unattached(), ImplicitDeny),
        (r#"{"StringEquals": {"iot:ClientId": "${iot:Connection.Thing.ThingName}"}}"#, with_client_id("other"), ImplicitDeny),
        (r#"{"StringNotEquals": {"iot:ClientId": "admin"}}"#, device(), Allow),
        (r#"{"StringNotEquals": {"iot:ClientId": ["admin", "sensor-1"]}}"#, device(), ImplicitDeny),
        (r#"{"StringEqualsIgnoreCase": {"iot:ClientId": "SENSOR-1"}}"#, device(), Allow),
        (r#"{"StringNotEqualsIgnoreCase": {"iot:ClientId": "SENSOR-1"}}"#, device(), ImplicitDeny),
        (r#"{"StringLike": {"iot:ClientId": "sensor-*"}}"#, device(), Allow),
        (r#"{"StringLike": {"iot:ClientId": "sensor-?"}}"#, device(), Allow),
        (r#"{"StringLike": {"iot:ClientId": "gateway-*"}}"#, device(), ImplicitDeny),
        (r#"{"StringLike": {"iot:ClientId": "${iot:Connection.Thing.ThingName}*"}}"#, with_client_id("sensor-1-b"), Allow),
        (r#"{"StringLike": {"iot:ClientId": "${iot:Connection.Thing.Attributes[site]}"}}"#, with_client_id("aXbYc/d"), ImplicitDeny),
        (r#"{"StringNotLike": {"iot:ClientId": "gateway-*"}}"#, device(), Allow),
        (r#"{"StringNotLike": {"iot:ClientId": "sensor-*"}}"#, device(), ImplicitDeny),
        // Several keys are ANDed, several operators too.
        (r#"{"StringEquals": {"iot:ClientId": "sensor-1", "iot:Connection.Thing.ThingTypeName": "thermometer"}}"#, device(), Allow),
        (r#"{"StringEquals": {"iot:ClientId": "sensor-1", "iot:Connection.Thing.ThingTypeName": "valve"}}"#, device(), ImplicitDeny),
        (r#"{"StringEquals": {"iot:ClientId": "sensor-1"}, "Bool": {"iot:Connection.Thing.IsAttached": "true"}}"#, unattached(), ImplicitDeny),
        // An absent key: positive operators fail, negated ones, IfExists and ForAllValues pass.
        (r#"{"StringEquals": {"iot:Connection.Thing.ThingTypeName": "thermometer"}}"#, unattached(), ImplicitDeny),
        (r#"{"StringNotEquals": {"iot:Connection.Thing.ThingTypeName": "valve"}}"#, unattached(), Allow),
        (r#"{"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "valve"}}"#, with_thing_type(None), Allow),
        (r#"{"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "valve"}}"#, device(), ImplicitDeny),
        (r#"{"StringEqualsIfExists": {"iot:Connection.Thing.ThingTypeName": "thermometer"}}"#, device(), Allow),
        // Multi-valued keys.
        (r#"{"ForAnyValue:StringEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": "line-3"}}"#, device(), Allow),
        (r#"{"ForAnyValue:StringEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": "line-6"}}"#, device(), ImplicitDeny),
        (r#"{"ForAllValues:StringLike": {"iot:Certificate.Subject.OrganizationalUnit.List": "line-*"}}"#, device(), Allow),
        (r#"{"ForAllValues:StringEquals": {"iot:Certificate.Subject.OrganizationalUnit.List": ["line-1", "line-2"]}}"#, device(), ImplicitDeny),
        (r#"{"ForAllValues:StringEquals": {"iot:Certificate.Subject.Organization.List": ["Example Corp", "AnyCompany"]}}"#, device(), Allow),
        (r#"{"ForAllValues:StringEquals": {"iot:Certificate.Subject.Title.List": "x"}}"#, device(), Allow),
        (r#"{"ForAnyValue:StringEquals": {"iot:Certificate.Subject.Title.List": "x"}}"#, device(), ImplicitDeny),
        (r#"{"ForAnyValue:StringEquals": {"iot:Certificate.AvailableKeys": "iot:Certificate.Subject.CommonName"}}"#, device(), Allow),
        (r#"{"ForAnyValue:StringEquals": {"iot:Certificate.AvailableKeys": "iot:Certificate.Subject.Title"}}"#, device(), ImplicitDeny),
        // A certificate attribute is compared as it is, wildcards included.
        (r#"{"StringEquals": {"iot:Certificate.Subject.CommonName": "dev*"}}"#, with_common_name("dev*"), Allow),
        // Null tests presence.
        (r#"{"Null": {"iot:Certificate.Subject.Title": "true"}}"#, device(), Allow),
        (r#"{"Null": {"iot:Certificate.Subject.CommonName": "false"}}"#, device(), Allow),
        (r#"{"Null": {"iot:Certificate.Subject.CommonName": "true"}}"#, device(), ImplicitDeny),
        (r#"{"Null": {"iot:Connection.Thing.ThingName": "false"}}"#, unattached(), ImplicitDeny),
        (r#"{"Null": {"iot:Certificate.Subject.OrganizationalUnit.List": "false"}}"#, device(), Allow),
        (r#"{}"#, device(), Allow),
    ];
    for (block, context, expected) in cases {
        check(&condition(block), Connect, "client/sensor-1", &context, expected);
    }
}

#[test]
#[rustfmt::skip]
fn malformed_documents() {
    let check_error = |document: &str, expected: &str| match Policy::parse(document) {
        Ok(_) => panic!("{document} parsed: expected {expected}"),
        Err(error) => assert_eq!(error.to_string(), expected, "{document}"),
    };
    let statement = |statement: &str| document(statement);
    check_error("", "policy document is empty");
    check_error(" \n\t ", "policy document is empty");
    check_error("not json", "policy document is not valid json");
    check_error(r#"{"Version": "2012-10-17""#, "policy document is not valid json");
    check_error("[]", "policy document must be an object");
    check_error(r#"{"Statement": []}"#, "Version is missing");
    check_error(r#"{"Version": "2008-10-17", "Statement": []}"#, r#"policy version "2008-10-17" is not supported: use "2012-10-17""#);
    check_error(r#"{"Version": 2012, "Statement": []}"#, "Version must be a string");
    check_error(r#"{"Version": "2012-10-17"}"#, "Statement is missing");
    check_error(&statement("[]"), "Statement is empty");
    check_error(&statement(r#""x""#), "Statement must be an object or an array of objects");
    check_error(&statement(r#"["x"]"#), "Statement[0] must be an object");
    check_error(r#"{"Version": "2012-10-17", "Statement": [], "Foo": 1}"#, r#"policy document has unknown element "Foo""#);
    check_error(r#"{"Version": "2012-10-17", "Version": "2012-10-17", "Statement": []}"#, r#"policy document has element "Version" more than once"#);
    check_error(r#"{"Version": "2012-10-17", "Id": 1, "Statement": []}"#, "Id must be a string");
    check_error(&statement(r#"{"Effect": "Deny", "Effect": "Allow", "Action": "*", "Resource": "*"}"#), r#"Statement has element "Effect" more than once"#);
    check_error(&statement(r#"{"Action": "*", "Resource": "*"}"#), "Statement.Effect is missing");
    check_error(&statement(r#"[{"Effect": "Maybe", "Action": "*", "Resource": "*"}]"#), r#"Statement[0].Effect is "Maybe": expected "Allow" or "Deny""#);
    check_error(&statement(r#"[{"Effect": "allow", "Action": "*", "Resource": "*"}]"#), r#"Statement[0].Effect is "allow": expected "Allow" or "Deny""#);
    check_error(&statement(r#"[{"Effect": true, "Action": "*", "Resource": "*"}]"#), "Statement[0].Effect must be a string");
    check_error(&statement(r#"[{"Effect": "Allow", "Resource": "*"}]"#), "Statement[0].Action is missing");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "*"}]"#), "Statement[0].Resource is missing");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "*", "NotAction": "iot:Connect", "Resource": "*"}]"#), "Statement[0] has both Action and NotAction: use one of them");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "*", "Resource": "*", "NotResource": "*"}]"#), "Statement[0] has both Resource and NotResource: use one of them");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": [], "Resource": "*"}]"#), "Statement[0].Action is empty");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": 5, "Resource": "*"}]"#), "Statement[0].Action must be a string or an array of strings");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": ["iot:Publish", 5], "Resource": "*"}]"#), "Statement[0].Action[1] must be a string");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "Publish", "Resource": "*"}]"#), r#"Statement[0].Action is "Publish": an action is "*" or "service:action", such as "iot:Publish""#);
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "iot:", "Resource": "*"}]"#), r#"Statement[0].Action is "iot:": an action is "*" or "service:action", such as "iot:Publish""#);
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "iot:Publsh", "Resource": "*"}]"#), r#"Statement[0].Action is "iot:Publsh": AWS IoT has no such action"#);
    check_error(&statement(r#"[{"Effect": "Allow", "Action": ["iot:Connect", "iot:Foo"], "Resource": "*"}]"#), r#"Statement[0].Action[1] is "iot:Foo": AWS IoT has no such action"#);
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "*", "Resource": ["*", "topic/a"]}]"#), r#"Statement[0].Resource[1] is "topic/a": a resource is "*" or an arn, such as "arn:aws:iot:us-east-1:123456789012:topic/a""#);
    check_error(&statement(r#"[{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]"#), r#"Statement[0] has unknown element "Principal""#);
    check_error(&statement(r#"[{"Sid": 1, "Effect": "Allow", "Action": "*", "Resource": "*"}]"#), "Statement[0].Sid must be a string");
    check_error(&statement(r#"[{"Effect": "Allow", "Action": "*", "Resource": ["*", "~topic/${iot:Nope}"]}]"#), "Statement[0].Resource[1] uses unknown policy variable ${iot:Nope}");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "~topic/${iot:Certificate.Subject.EmailAddress}"}"#), "Statement.Resource uses unknown policy variable ${iot:Certificate.Subject.EmailAddress}");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "~topic/${iot:ClientId"}"#), &format!(r#"Statement.Resource has an unterminated policy variable: "{ARN}topic/${{iot:ClientId""#));
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "~topic/${iot:Certificate.Subject.Country.List}/${iot:Certificate.Subject.State.List}"}"#), "Statement.Resource uses more than one multi-valued policy variable: at most one is supported");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": []}"#), "Statement.Condition must be an object");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}}"#), r#"Statement.Condition: condition operator "DateGreaterThan" is not supported"#);
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:LastWillTopic": "a"}}}"#), r#"Statement.Condition.StringEquals: condition key "iot:LastWillTopic" is not supported"#);
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:Certificate.Subject.Organization.List": "a"}}}"#), r#"Statement.Condition.StringEquals: condition key "iot:Certificate.Subject.Organization.List" has several values: use ForAnyValue: or ForAllValues:"#);
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "yes"}}}"#), r#"Statement.Condition.Bool.iot:Connection.Thing.IsAttached is "yes": expected "true" or "false""#);
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {}}}"#), "Statement.Condition.StringEquals is empty");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": null}}}"#), "Statement.Condition.StringEquals.iot:ClientId must be a string, boolean or number, or an array of them");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": ["a", "${iot:Nope}"]}}}"#), "Statement.Condition.StringEquals.iot:ClientId[1] uses unknown policy variable ${iot:Nope}");
    check_error(&statement(r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"iot:ClientId": "a"}, "StringEquals": {"iot:ClientId": "b"}}}"#), r#"Statement.Condition has element "StringEquals" more than once"#);
}

#[test]
fn introspection() {
    let policy = Policy::parse(&document(
        r#"[{"Sid": "connect", "Effect": "Allow", "Action": "iot:Connect", "Resource": "~client/*",
             "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}},
            {"Effect": "Deny", "NotAction": ["iot:P*"], "NotResource": ["~topic/a", "~topic/b"]}]"#,
    ))
    .expect("parses");
    let [connect, deny] = policy.statements() else {
        panic!("two statements expected");
    };
    assert_eq!(connect.sid(), Some("connect"));
    assert_eq!(connect.effect(), Effect::Allow);
    assert_eq!(connect.actions(), Written { negated: false, values: &strings(&["iot:Connect"]) });
    assert_eq!(connect.resources().values, &[format!("{ARN}client/*")]);
    assert!(connect.has_condition());
    assert!(connect.covers(Connect));
    assert!(!connect.covers(Publish));
    assert_eq!(deny.sid(), None);
    assert_eq!(deny.effect(), Effect::Deny);
    assert_eq!(deny.actions(), Written { negated: true, values: &strings(&["iot:P*"]) });
    assert!(deny.resources().negated);
    assert_eq!(deny.resources().values.len(), 2);
    assert!(!deny.has_condition());
    let covered: Vec<Action> = Action::ALL.into_iter().filter(|action| deny.covers(*action)).collect();
    assert_eq!(covered, [Connect, Subscribe, Receive, RetainPublish]);
}

#[test]
fn document_size_limit() {
    // 2048 characters excluding whitespace is the most AWS IoT accepts; whitespace is free.
    let sized = |characters: usize| {
        let empty = document(r#"{"Effect": "Allow", "Action": "*", "Resource": "~topic/"}"#);
        let length = empty.chars().filter(|character| !character.is_whitespace()).count();
        let padded = document(&format!(
            r#"{{"Effect": "Allow", "Action": "*", "Resource": "~topic/{}"}}"#,
            "x".repeat(characters - length)
        ));
        format!("{padded}{}", " ".repeat(5000))
    };
    assert!(Policy::parse(&sized(2048)).is_ok());
    let error = Policy::parse(&sized(2049)).map(|_| ()).expect_err("too long");
    assert_eq!(error.to_string(), "policy document has 2049 characters excluding whitespace: at most 2048 are allowed");
}

#[test]
fn public_types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<Context>();
    assert_send_sync::<Error>();
}
