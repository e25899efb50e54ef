//! The rules of thing types, static thing groups and policies attached to groups, through the
//! typed services on a real SQLite registry: depth, the ten-group bound, inheritance,
//! deprecation and deletion, and ARNs of other accounts.

use certfleet_registry::{ChangeKind, KeyPageRequest, PolicyName, ThingGroupFilter, ThingGroupName, ThingName};
use certfleet_services::*;
use certfleet_testkit::{World, outcome as kind, world, world_with};

fn group(name: &str) -> ThingGroupName {
    ThingGroupName::parse(name).unwrap()
}

fn thing(name: &str) -> ThingName {
    ThingName::parse(name).unwrap()
}

fn policy(name: &str) -> PolicyName {
    PolicyName::parse(name).unwrap()
}

fn page() -> KeyPageRequest {
    KeyPageRequest { limit: 250, after: None }
}

fn document(resource: &str) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "iot:Connect", "Resource": "{resource}"}}]}}"#
    )
}

fn create_group(world: &World, caller: &Caller, name: &str, parent: Option<&str>) -> &'static str {
    let definition = ThingGroupDefinition { parent: parent.map(group), ..ThingGroupDefinition::default() };
    kind(world.services.create_thing_group(caller, &group(name), &definition, &[]))
}

fn create_thing(world: &World, caller: &Caller, name: &str, type_name: Option<&str>) -> &'static str {
    let definition = ThingDefinition { type_name: type_name.map(thing), ..ThingDefinition::default() };
    kind(world.services.create_thing(caller, &thing(name), &definition))
}

#[test]
fn a_hierarchy_is_at_most_seven_levels_deep() {
    let world = world();
    let alice = world.caller();
    let mut parent: Option<String> = None;
    for level in 1..=7 {
        assert_eq!(create_group(&world, &alice, &format!("l{level}"), parent.as_deref()), "ok", "level {level}");
        parent = Some(format!("l{level}"));
    }
    assert_eq!(create_group(&world, &alice, "l8", Some("l7")), "InvalidRequest");
    assert_eq!(create_group(&world, &alice, "orphan", Some("missing")), "NotFound");
    assert_eq!(kind(world.services.describe_thing_group(&alice, &group("l8"))), "NotFound");
    let described = world.services.describe_thing_group(&alice, &group("l7")).unwrap();
    assert_eq!(described.root_to_parent, (1..=6).map(|level| group(&format!("l{level}"))).collect::<Vec<_>>());
    // A group with children is not deleted; a leaf is.
    assert_eq!(kind(world.services.delete_thing_group(&alice, &group("l6"), None)), "InvalidRequest");
    assert_eq!(kind(world.services.delete_thing_group(&alice, &group("l7"), Some(2))), "VersionConflict");
    assert_eq!(kind(world.services.delete_thing_group(&alice, &group("l7"), Some(1))), "ok");
    assert_eq!(kind(world.services.delete_thing_group(&alice, &group("l7"), None)), "ok", "gone already");
    let filter = ThingGroupFilter { parent: Some(group("l4")), recursive: true, name_prefix: None };
    let below = world.services.list_thing_groups(&alice, &filter, &page()).unwrap().items;
    assert_eq!(below, vec![group("l5"), group("l6")]);
}

#[test]
fn a_thing_is_in_at_most_ten_groups() {
    let world = world();
    let alice = world.caller();
    assert_eq!(create_thing(&world, &alice, "t", None), "ok");
    for index in 0..11 {
        assert_eq!(create_group(&world, &alice, &format!("g{index:02}"), None), "ok");
    }
    for index in 0..10 {
        let name = group(&format!("g{index:02}"));
        assert_eq!(kind(world.services.add_thing_to_thing_group(&alice, &name, &thing("t"))), "ok");
    }
    let cases: [(&[&str], &[&str], &str); 4] = [
        (&["g10"], &[], "InvalidRequest"),
        (&["g10"], &["g00"], "ok"),
        (&["g00"], &[], "InvalidRequest"),
        (&["g00"], &["g10"], "ok"),
    ];
    for (add, remove, expected) in cases {
        let add: Vec<_> = add.iter().map(|name| group(name)).collect();
        let remove: Vec<_> = remove.iter().map(|name| group(name)).collect();
        let before = world.services.list_thing_groups_for_thing(&alice, &thing("t"), &page()).unwrap().items;
        let outcome = kind(world.services.update_thing_groups_for_thing(&alice, &thing("t"), &add, &remove));
        assert_eq!(outcome, expected, "{add:?} {remove:?}");
        let after = world.services.list_thing_groups_for_thing(&alice, &thing("t"), &page()).unwrap().items;
        assert_eq!(after.len(), 10);
        if expected != "ok" {
            assert_eq!(after, before, "a refusal changes nothing");
        }
    }
    assert_eq!(kind(world.services.add_thing_to_thing_group(&alice, &group("g00"), &thing("missing"))), "NotFound");
    assert_eq!(kind(world.services.add_thing_to_thing_group(&alice, &group("missing"), &thing("t"))), "NotFound");
}

#[test]
fn a_certificate_inherits_the_policies_of_its_things_groups_and_their_ancestors() {
    let world = world();
    let alice = world.caller();
    let id = world.services.create_keys_and_certificate(&alice, true).unwrap().certificate.id;
    let cert_arn = world.services.certificate_arn(&alice.account, &id);
    for (name, parent) in [("root", None), ("mid", Some("root")), ("leaf", Some("mid")), ("other", None)] {
        assert_eq!(create_group(&world, &alice, name, parent), "ok");
    }
    for name in ["on-root", "on-mid", "on-other", "own"] {
        world.services.create_policy(&alice, &policy(name), &document("*"), &[]).unwrap();
    }
    let arn = |name: &str| world.services.thing_group_arn(&alice.account, &group(name));
    world.services.attach_policy(&alice, &policy("on-root"), &arn("root")).unwrap();
    world.services.attach_policy(&alice, &policy("on-mid"), &arn("mid")).unwrap();
    world.services.attach_policy(&alice, &policy("on-other"), &arn("other")).unwrap();
    world.services.attach_policy(&alice, &policy("own"), &cert_arn).unwrap();
    assert_eq!(create_thing(&world, &alice, "device", None), "ok");
    world
        .services
        .attach_thing_principal(
            &alice,
            &thing("device"),
            &cert_arn,
            certfleet_registry::ThingPrincipalType::NonExclusive,
        )
        .unwrap();
    let names = |world: &World| -> Vec<String> {
        world
            .services
            .principal_policies(&alice.account, &id)
            .unwrap()
            .policies
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    assert_eq!(names(&world), ["own"]);
    world.services.add_thing_to_thing_group(&alice, &group("leaf"), &thing("device")).unwrap();
    assert_eq!(names(&world), ["on-mid", "on-root", "own"]);
    let applying = world.services.principal_policies(&alice.account, &id).unwrap();
    assert_eq!(applying.groups, ["leaf", "mid", "root"]);
    let recursive = world.services.list_attached_policies(&alice, &arn("leaf"), true, &page()).unwrap().items;
    assert_eq!(recursive.iter().map(|p| p.name.to_string()).collect::<Vec<_>>(), ["on-mid", "on-root"]);
    assert!(world.services.list_attached_policies(&alice, &arn("leaf"), false, &page()).unwrap().items.is_empty());
    // A policy attached to a group cannot be deleted; deleting the group detaches it.
    assert_eq!(kind(world.services.delete_policy(&alice, &policy("on-other"))), "DeleteConflict");
    assert_eq!(kind(world.services.delete_thing_group(&alice, &group("other"), None)), "ok");
    assert_eq!(kind(world.services.delete_policy(&alice, &policy("on-other"))), "ok");
    world.services.remove_thing_from_thing_group(&alice, &group("leaf"), &thing("device")).unwrap();
    assert_eq!(names(&world), ["own"]);
}

#[test]
fn group_arns_of_other_accounts_are_refused_and_change_nothing() {
    let world = world();
    let (alice, bob) = (world.caller(), world.caller());
    assert_eq!(create_group(&world, &bob, "g", None), "ok");
    assert_eq!(create_group(&world, &alice, "g", None), "ok");
    world.services.create_policy(&alice, &policy("p"), &document("*"), &[]).unwrap();
    let bobs = world.services.thing_group_arn(&bob.account, &group("g"));
    let alices = world.services.thing_group_arn(&alice.account, &group("g"));
    let cases = [
        (bobs.clone(), "NotFound"),
        (alices.replace("us-east-1", "eu-west-1"), "NotFound"),
        (alices.replace(":thinggroup/g", ":thinggroup/missing"), "NotFound"),
        (alices.replace(":thinggroup/g", ":thinggroup/bad name"), "InvalidRequest"),
        (alices.clone(), "ok"),
    ];
    for (target, expected) in cases {
        assert_eq!(kind(world.services.attach_policy(&alice, &policy("p"), &target)), expected, "{target}");
    }
    let targets = world.services.list_targets_for_policy(&alice, &policy("p"), &page()).unwrap().items;
    assert_eq!(targets, vec![certfleet_registry::PolicyTarget::ThingGroup(group("g"))]);
    assert!(world.services.list_attached_policies(&bob, &bobs, false, &page()).unwrap().items.is_empty());
    assert_eq!(
        kind(world.services.thing_from_arn(&alice.account, "arn:aws:iot:us-east-1:111111111111:thing/t")),
        "NotFound"
    );
    // The change feed names the group, for the gateways.
    let changes = world.services.changes_after(0, 1000).unwrap();
    assert!(changes.iter().any(|change| change.kind == ChangeKind::ThingGroup && change.entity_id == "g"));
}

#[test]
fn thing_types_must_exist_and_be_usable_and_wait_before_deletion() {
    let world = world();
    let alice = world.caller();
    assert_eq!(create_thing(&world, &alice, "t", Some("sensor")), "NotFound");
    let properties = ThingTypeProperties { description: None, searchable_attributes: Some(vec!["a".into(); 4]) };
    assert_eq!(kind(world.services.create_thing_type(&alice, &thing("sensor"), &properties, &[])), "InvalidRequest");
    let properties = ThingTypeProperties { description: Some("x\ny".into()), searchable_attributes: None };
    assert_eq!(kind(world.services.create_thing_type(&alice, &thing("sensor"), &properties, &[])), "InvalidRequest");
    let properties = ThingTypeProperties::default();
    assert_eq!(kind(world.services.create_thing_type(&alice, &thing("sensor"), &properties, &[])), "ok");
    assert_eq!(kind(world.services.create_thing_type(&alice, &thing("sensor"), &properties, &[])), "AlreadyExists");
    assert_eq!(create_thing(&world, &alice, "t", Some("sensor")), "ok");
    assert_eq!(kind(world.services.delete_thing_type(&alice, &thing("sensor"))), "InvalidRequest", "not deprecated");
    world.services.deprecate_thing_type(&alice, &thing("sensor"), false).unwrap();
    assert_eq!(create_thing(&world, &alice, "u", Some("sensor")), "InvalidRequest", "deprecated");
    world.clock.advance(time::Duration::minutes(4));
    assert_eq!(kind(world.services.delete_thing_type(&alice, &thing("sensor"))), "InvalidRequest", "within 5 minutes");
    world.clock.advance(time::Duration::minutes(2));
    assert_eq!(kind(world.services.delete_thing_type(&alice, &thing("sensor"))), "InvalidRequest", "a thing has it");
    let update = ThingUpdate { remove_type: true, ..ThingUpdate::default() };
    world.services.update_thing(&alice, &thing("t"), &update).unwrap();
    assert_eq!(kind(world.services.delete_thing_type(&alice, &thing("sensor"))), "ok");
    // Another account never sees the type.
    let bob = world.caller();
    assert_eq!(kind(world.services.describe_thing_type(&bob, &thing("sensor"))), "NotFound");
}

#[test]
fn a_configured_wait_of_zero_deletes_at_once() {
    let world = world_with(Config { thing_type_deletion_wait: time::Duration::ZERO, ..Config::default() });
    let alice = world.caller();
    world.services.create_thing_type(&alice, &thing("t"), &ThingTypeProperties::default(), &[]).unwrap();
    world.services.deprecate_thing_type(&alice, &thing("t"), false).unwrap();
    assert_eq!(kind(world.services.delete_thing_type(&alice, &thing("t"))), "ok");
}
