//! The rules of policies, things and their attachments, checked through the typed services on a
//! real SQLite registry: one-line cases, each followed by a look at what was (not) stored.

use std::collections::BTreeMap;

use certfleet_pki::CertificateId;
use certfleet_registry::{
    AttributeFilter, CertificateStatus, ChangeKind, KeyPageRequest, PageRequest, PolicyName, ThingFilter, ThingName,
    ThingPrincipalType,
};
use certfleet_services::*;

const ALLOW_ALL: &str =
    r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;

use certfleet_testkit::{World, world};

fn caller(world: &World) -> Caller {
    world.caller()
}

use certfleet_testkit::outcome as kind;

fn policy(name: &str) -> PolicyName {
    PolicyName::parse(name).unwrap()
}

fn thing(name: &str) -> ThingName {
    ThingName::parse(name).unwrap()
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn document(resource: &str) -> String {
    format!(
        r#"{{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "iot:Connect", "Resource": "{resource}"}}]}}"#
    )
}

/// A new INACTIVE certificate of `caller`: (its ID, its ARN).
fn certificate(world: &World, caller: &Caller) -> (CertificateId, String) {
    let id = world.services.create_keys_and_certificate(caller, false).unwrap().certificate.id;
    let arn = world.services.certificate_arn(&caller.account, &id);
    (id, arn)
}

fn first_page() -> KeyPageRequest {
    KeyPageRequest { limit: 250, after: None }
}

fn policy_names(world: &World, caller: &Caller) -> Vec<String> {
    let page = world.services.list_policies(caller, &PageRequest { limit: 250, ascending: true, after: None }).unwrap();
    page.items.iter().map(|policy| policy.name.to_string()).collect()
}

#[test]
fn a_malformed_document_is_refused_and_not_stored() {
    let world = world();
    let alice = caller(&world);
    let long = document(&format!("arn:aws:iot:us-east-1:123456789012:client/{}", "x".repeat(2100)));
    let cases = [
        ("valid", ALLOW_ALL.to_string(), "ok"),
        ("not-json", "this is not json".to_string(), "MalformedPolicy"),
        ("old-version", ALLOW_ALL.replace("2012-10-17", "2008-10-17"), "MalformedPolicy"),
        (
            "no-effect",
            r#"{"Version": "2012-10-17", "Statement": {"Action": "iot:*", "Resource": "*"}}"#.to_string(),
            "MalformedPolicy",
        ),
        ("unknown-variable", document("arn:aws:iot:us-east-1:1:client/${iot:Nope}"), "MalformedPolicy"),
        ("too-long", long, "MalformedPolicy"),
        ("empty", String::new(), "MalformedPolicy"),
    ];
    for (name, text, expected) in &cases {
        assert_eq!(kind(world.services.create_policy(&alice, &policy(name), text, &[])), *expected, "{name}");
    }
    assert_eq!(policy_names(&world, &alice), vec!["valid"], "only the valid document was stored");
    assert_eq!(kind(world.services.create_policy(&alice, &policy("valid"), ALLOW_ALL, &[])), "AlreadyExists");
    assert_eq!(kind(world.services.create_policy_version(&alice, &policy("valid"), "{", true)), "MalformedPolicy");
    assert_eq!(world.services.list_policy_versions(&alice, &policy("valid")).unwrap().1.len(), 1);
}

#[test]
fn policy_versions_follow_aws() {
    let world = world();
    let alice = caller(&world);
    let name = policy("versioned");
    world.services.create_policy(&alice, &name, &document("*"), &[]).unwrap();
    enum Step {
        Create(bool),
        SetDefault(i64),
        DeleteVersion(i64),
        DeletePolicy,
    }
    use Step::*;
    // (step, outcome, default version after, versions after)
    let cases = [
        (Create(false), "ok", 1, "2 1"),
        (Create(true), "ok", 3, "3 2 1"),
        (Create(false), "ok", 3, "4 3 2 1"),
        (Create(false), "ok", 3, "5 4 3 2 1"),
        (Create(true), "VersionsLimitExceeded", 3, "5 4 3 2 1"),
        (DeleteVersion(3), "DeleteConflict", 3, "5 4 3 2 1"),
        (DeleteVersion(9), "NotFound", 3, "5 4 3 2 1"),
        (SetDefault(9), "NotFound", 3, "5 4 3 2 1"),
        (DeletePolicy, "DeleteConflict", 3, "5 4 3 2 1"),
        (DeleteVersion(2), "ok", 3, "5 4 3 1"),
        (Create(false), "ok", 3, "6 5 4 3 1"),
        (SetDefault(6), "ok", 6, "6 5 4 3 1"),
        (SetDefault(6), "ok", 6, "6 5 4 3 1"),
        (DeleteVersion(1), "ok", 6, "6 5 4 3"),
        (DeleteVersion(3), "ok", 6, "6 5 4"),
        (DeleteVersion(4), "ok", 6, "6 5"),
        (DeletePolicy, "DeleteConflict", 6, "6 5"),
        (DeleteVersion(5), "ok", 6, "6"),
    ];
    for (index, (step, expected, default, versions)) in cases.into_iter().enumerate() {
        let outcome = match step {
            Create(set_as_default) => kind(world.services.create_policy_version(
                &alice,
                &name,
                &document(&format!("arn:aws:iot:us-east-1:1:client/v{index}")),
                set_as_default,
            )),
            SetDefault(version) => kind(world.services.set_default_policy_version(&alice, &name, version)),
            DeleteVersion(version) => kind(world.services.delete_policy_version(&alice, &name, version)),
            DeletePolicy => kind(world.services.delete_policy(&alice, &name)),
        };
        assert_eq!(outcome, expected, "step {index}");
        let (stored, listed) = world.services.list_policy_versions(&alice, &name).unwrap();
        let listed: Vec<_> = listed.iter().map(|version| version.version.to_string()).collect();
        assert_eq!((stored.default_version, listed.join(" ")), (default, versions.to_string()), "step {index}");
    }
    let (_, default) = world.services.get_policy(&alice, &name).unwrap();
    assert_eq!(default.version, 6);
    assert_eq!(kind(world.services.delete_policy(&alice, &name)), "ok");
    assert_eq!(kind(world.services.get_policy(&alice, &name)), "NotFound");
    assert_eq!(kind(world.services.create_policy_version(&alice, &name, ALLOW_ALL, false)), "NotFound");
}

#[test]
fn policies_attach_to_the_callers_certificates_only() {
    let world = world();
    let (alice, bob) = (caller(&world), caller(&world));
    let (mine, my_arn) = certificate(&world, &alice);
    let (_, bobs_arn) = certificate(&world, &bob);
    world.services.create_policy(&alice, &policy("p"), ALLOW_ALL, &[]).unwrap();
    let unknown = format!("arn:aws:iot:us-east-1:{}:cert/{}", alice.account, "0".repeat(64));
    let other_region = my_arn.replace("us-east-1", "eu-west-1");
    let cases = [
        (my_arn.as_str(), "ok"),
        (my_arn.as_str(), "ok"),
        (bobs_arn.as_str(), "NotFound"),
        (unknown.as_str(), "NotFound"),
        (other_region.as_str(), "NotFound"),
        ("arn:aws:iot:us-east-1:111111111111:thinggroup/g", "NotFound"),
        ("us-east-1:0b5a8a4c-1111-2222-3333-444455556666", "InvalidRequest"),
        ("arn:aws:iot:us-east-1:111111111111:cert/not-hex", "InvalidRequest"),
        ("arn:aws:s3:::bucket", "InvalidRequest"),
        ("", "InvalidRequest"),
    ];
    for (target, expected) in cases {
        assert_eq!(kind(world.services.attach_policy(&alice, &policy("p"), target)), expected, "{target:?}");
    }
    assert_eq!(kind(world.services.attach_policy(&alice, &policy("nope"), &my_arn)), "NotFound");
    let targets = world.services.list_targets_for_policy(&alice, &policy("p"), &first_page()).unwrap();
    assert_eq!(targets.items, vec![certfleet_registry::PolicyTarget::Certificate(mine.clone())]);
    assert_eq!(kind(world.services.list_attached_policies(&bob, &bobs_arn, false, &first_page())), "ok");
    assert!(world.services.list_attached_policies(&bob, &bobs_arn, false, &first_page()).unwrap().items.is_empty());
    assert_eq!(
        kind(world.services.list_attached_policies(&bob, &my_arn, false, &first_page())),
        "NotFound",
        "tenants do not see each other"
    );

    // At most ten policies per certificate.
    for index in 2..=10 {
        world.services.create_policy(&alice, &policy(&format!("p{index}")), ALLOW_ALL, &[]).unwrap();
        assert_eq!(
            kind(world.services.attach_policy(&alice, &policy(&format!("p{index}")), &my_arn)),
            "ok",
            "policy {index}"
        );
    }
    world.services.create_policy(&alice, &policy("p11"), ALLOW_ALL, &[]).unwrap();
    assert_eq!(kind(world.services.attach_policy(&alice, &policy("p11"), &my_arn)), "LimitExceeded");
    assert_eq!(
        kind(world.services.attach_policy(&alice, &policy("p"), &my_arn)),
        "ok",
        "attaching again is no new attachment"
    );
    assert_eq!(world.services.list_attached_policies(&alice, &my_arn, false, &first_page()).unwrap().items.len(), 10);

    assert_eq!(kind(world.services.delete_policy(&alice, &policy("p"))), "DeleteConflict");
    assert_eq!(kind(world.services.detach_policy(&alice, &policy("p"), &my_arn)), "ok");
    assert_eq!(
        kind(world.services.detach_policy(&alice, &policy("p"), &my_arn)),
        "ok",
        "detaching again changes nothing"
    );
    assert_eq!(kind(world.services.detach_policy(&alice, &policy("p"), &bobs_arn)), "NotFound");
    assert_eq!(kind(world.services.delete_policy(&alice, &policy("p"))), "ok");
}

#[test]
fn effective_policies_are_the_principals_default_documents() {
    let world = world();
    let alice = caller(&world);
    let (id, arn) = certificate(&world, &alice);
    world.services.create_policy(&alice, &policy("b"), &document("*"), &[]).unwrap();
    world.services.create_policy(&alice, &policy("a"), ALLOW_ALL, &[]).unwrap();
    world.services.attach_policy(&alice, &policy("b"), &arn).unwrap();
    world.services.attach_policy(&alice, &policy("a"), &arn).unwrap();
    let newer = document("arn:aws:iot:us-east-1:1:client/newer");
    world.services.create_policy_version(&alice, &policy("b"), &newer, false).unwrap();
    let expected = vec![("a".to_string(), ALLOW_ALL.to_string()), ("b".to_string(), document("*"))];
    assert_eq!(world.services.principal_policies(&alice.account, &id).unwrap().policies, expected);
    world.services.set_default_policy_version(&alice, &policy("b"), 2).unwrap();
    let effective = world.services.effective_policies(&alice, Some(&arn), None).unwrap();
    assert_eq!(effective, vec![(policy("a"), ALLOW_ALL.to_string()), (policy("b"), newer)]);
    assert!(world.services.effective_policies(&alice, None, None).unwrap().is_empty());
    assert_eq!(kind(world.services.effective_policies(&alice, Some(&arn), Some(&thing("missing")))), "NotFound");
    world.services.create_thing(&alice, &thing("present"), &ThingDefinition::default()).unwrap();
    assert_eq!(world.services.effective_policies(&alice, Some(&arn), Some(&thing("present"))).unwrap().len(), 2);
}

#[test]
fn certificates_with_attachments_resist_deletion_and_transfer() {
    let world = world();
    let (alice, bob) = (caller(&world), caller(&world));
    world.services.create_policy(&alice, &policy("p"), ALLOW_ALL, &[]).unwrap();
    world.services.create_thing(&alice, &thing("t"), &ThingDefinition::default()).unwrap();
    // (policy attached, thing attached, force) -> (delete outcome, transfer outcome)
    let cases = [
        (true, false, false, "DeleteConflict", "TransferConflict"),
        (true, false, true, "ok", "TransferConflict"),
        (false, true, false, "DeleteConflict", "TransferConflict"),
        (false, true, true, "DeleteConflict", "TransferConflict"),
        (true, true, true, "DeleteConflict", "TransferConflict"),
        (false, false, false, "ok", "ok"),
    ];
    for (with_policy, with_thing, force, delete, transfer) in cases {
        let label = format!("policy {with_policy}, thing {with_thing}, force {force}");
        for operation in ["transfer", "delete"] {
            let (id, arn) = certificate(&world, &alice);
            if with_policy {
                world.services.attach_policy(&alice, &policy("p"), &arn).unwrap();
            }
            if with_thing {
                world
                    .services
                    .attach_thing_principal(&alice, &thing("t"), &arn, ThingPrincipalType::NonExclusive)
                    .unwrap();
            }
            if operation == "delete" {
                assert_eq!(kind(world.services.delete_certificate(&alice, &id, force)), delete, "{label}");
                let exists = world.services.describe_certificate(&alice, &id).is_ok();
                assert_eq!(exists, delete != "ok", "{label}");
                if delete == "ok" {
                    assert!(
                        world.services.principal_policies(&alice.account, &id).unwrap().policies.is_empty(),
                        "force detached the policies"
                    );
                }
            } else {
                assert_eq!(
                    kind(world.services.transfer_certificate(&alice, &id, &bob.account, None)),
                    transfer,
                    "{label}"
                );
                let status = world.services.describe_certificate(&alice, &id).unwrap().status;
                let expected =
                    if transfer == "ok" { CertificateStatus::PendingTransfer } else { CertificateStatus::Inactive };
                assert_eq!(status, expected, "{label}");
                if transfer == "ok" {
                    assert_eq!(
                        kind(world.services.attach_policy(&alice, &policy("p"), &arn)),
                        "CertificateState",
                        "{label}"
                    );
                    assert_eq!(
                        kind(world.services.attach_thing_principal(
                            &alice,
                            &thing("t"),
                            &arn,
                            ThingPrincipalType::NonExclusive
                        )),
                        "CertificateState"
                    );
                }
            }
            if with_thing {
                let _ = world.services.detach_thing_principal(&alice, &thing("t"), &arn);
            }
        }
    }
}

#[test]
fn create_thing_is_idempotent_and_counts_attributes() {
    let world = world();
    let alice = caller(&world);
    world.services.create_thing_type(&alice, &thing("sensor"), &ThingTypeProperties::default(), &[]).unwrap();
    let three = attributes(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let four = attributes(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]);
    let fifty: BTreeMap<_, _> = (0..50).map(|index| (format!("k{index}"), "v".to_string())).collect();
    let fifty_one: BTreeMap<_, _> = (0..51).map(|index| (format!("k{index}"), "v".to_string())).collect();
    let typed = |attributes: &BTreeMap<String, String>| ThingDefinition {
        type_name: Some(thing("sensor")),
        attributes: attributes.clone(),
        billing_group: None,
    };
    let untyped = |attributes: &BTreeMap<String, String>| ThingDefinition {
        type_name: None,
        attributes: attributes.clone(),
        billing_group: None,
    };
    let cases = [
        ("t1", untyped(&three), "ok"),
        ("t1", untyped(&three), "ok"),
        ("t1", untyped(&attributes(&[("a", "1")])), "AlreadyExists"),
        ("t1", typed(&three), "AlreadyExists"),
        ("t2", untyped(&four), "InvalidRequest"),
        ("t3", typed(&fifty), "ok"),
        ("t4", typed(&fifty_one), "InvalidRequest"),
        ("t5", untyped(&attributes(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "")])), "ok"),
        ("t6", untyped(&attributes(&[("bad name", "1")])), "InvalidRequest"),
        ("t7", untyped(&attributes(&[("name", "bad value!")])), "InvalidRequest"),
        ("t8", untyped(&attributes(&[("n.a,m@e/:#-_", "v=[x]")])), "ok"),
        ("t9", ThingDefinition { billing_group: Some("group".into()), ..ThingDefinition::default() }, "NotFound"),
    ];
    for (name, definition, expected) in &cases {
        assert_eq!(
            kind(world.services.create_thing(&alice, &thing(name), definition)),
            *expected,
            "{name} {definition:?}"
        );
    }
    let listed = world.services.list_things(&alice, &ThingFilter::default(), &first_page()).unwrap();
    let names: Vec<_> = listed.items.iter().map(|thing| thing.name.to_string()).collect();
    assert_eq!(names, vec!["t1", "t3", "t5", "t8"], "refusals stored nothing");
    let first = world.services.describe_thing(&alice, &thing("t1")).unwrap();
    let again = world.services.create_thing(&alice, &thing("t1"), &untyped(&three)).unwrap();
    assert_eq!((again.id, again.version), (first.id, 1), "the identical thing comes back");
    assert_eq!(
        world.services.describe_thing(&alice, &thing("t5")).unwrap().attributes.len(),
        3,
        "an empty value is no attribute"
    );
}

#[test]
fn update_thing_merges_replaces_and_checks_versions() {
    let world = world();
    let alice = caller(&world);
    world.services.create_thing_type(&alice, &thing("sensor"), &ThingTypeProperties::default(), &[]).unwrap();
    world
        .services
        .create_thing(
            &alice,
            &thing("t"),
            &ThingDefinition { attributes: attributes(&[("a", "1"), ("b", "2")]), ..ThingDefinition::default() },
        )
        .unwrap();
    let merge = |pairs: &[(&str, &str)]| Some(AttributePayload { attributes: attributes(pairs), merge: true });
    let replace = |pairs: &[(&str, &str)]| Some(AttributePayload { attributes: attributes(pairs), merge: false });
    let sensor = Some(thing("sensor"));
    // (update, outcome, attributes after, type after, version after)
    let cases = [
        (ThingUpdate { attributes: merge(&[("c", "3")]), ..ThingUpdate::default() }, "ok", "a=1 b=2 c=3", None, 2),
        (
            ThingUpdate {
                attributes: merge(&[("a", ""), ("b", "9")]),
                expected_version: Some(2),
                ..ThingUpdate::default()
            },
            "ok",
            "b=9 c=3",
            None,
            3,
        ),
        (
            ThingUpdate { attributes: merge(&[("x", "1")]), expected_version: Some(2), ..ThingUpdate::default() },
            "VersionConflict",
            "b=9 c=3",
            None,
            3,
        ),
        (
            ThingUpdate { attributes: merge(&[("x", "1"), ("y", "2")]), ..ThingUpdate::default() },
            "InvalidRequest",
            "b=9 c=3",
            None,
            3,
        ),
        (ThingUpdate { attributes: replace(&[("z", "1")]), ..ThingUpdate::default() }, "ok", "z=1", None, 4),
        (
            ThingUpdate {
                type_name: sensor.clone(),
                attributes: merge(&[("a", "1"), ("b", "2"), ("c", "3")]),
                ..ThingUpdate::default()
            },
            "ok",
            "a=1 b=2 c=3 z=1",
            sensor.clone(),
            5,
        ),
        (
            ThingUpdate { remove_type: true, ..ThingUpdate::default() },
            "InvalidRequest",
            "a=1 b=2 c=3 z=1",
            sensor.clone(),
            5,
        ),
        (
            ThingUpdate { remove_type: true, type_name: sensor.clone(), ..ThingUpdate::default() },
            "InvalidRequest",
            "a=1 b=2 c=3 z=1",
            sensor.clone(),
            5,
        ),
        (
            ThingUpdate { remove_type: true, attributes: replace(&[("only", "1")]), ..ThingUpdate::default() },
            "ok",
            "only=1",
            None,
            6,
        ),
        (
            ThingUpdate { attributes: replace(&[]), expected_version: Some(6), ..ThingUpdate::default() },
            "ok",
            "",
            None,
            7,
        ),
        (ThingUpdate { attributes: merge(&[("bad!", "1")]), ..ThingUpdate::default() }, "InvalidRequest", "", None, 7),
    ];
    for (index, (update, expected, attributes_after, type_after, version_after)) in cases.into_iter().enumerate() {
        assert_eq!(kind(world.services.update_thing(&alice, &thing("t"), &update)), expected, "step {index}");
        let stored = world.services.describe_thing(&alice, &thing("t")).unwrap();
        let listed: Vec<_> = stored.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            (listed.join(" "), stored.type_name, stored.version),
            (attributes_after.to_string(), type_after, version_after),
            "step {index}"
        );
    }
    assert_eq!(kind(world.services.update_thing(&alice, &thing("missing"), &ThingUpdate::default())), "NotFound");
}

#[test]
fn delete_thing_rules() {
    let world = world();
    let alice = caller(&world);
    let (_, arn) = certificate(&world, &alice);
    world.services.create_thing(&alice, &thing("t"), &ThingDefinition::default()).unwrap();
    world.services.attach_thing_principal(&alice, &thing("t"), &arn, ThingPrincipalType::NonExclusive).unwrap();
    let cases = [
        ("missing", None, "ok"),
        ("missing", Some(7), "ok"),
        ("t", Some(2), "VersionConflict"),
        ("t", Some(1), "InvalidRequest"),
        ("t", None, "InvalidRequest"),
    ];
    for (name, expected_version, expected) in cases {
        assert_eq!(
            kind(world.services.delete_thing(&alice, &thing(name), expected_version)),
            expected,
            "{name} {expected_version:?}"
        );
    }
    assert!(world.services.describe_thing(&alice, &thing("t")).is_ok());
    world.services.detach_thing_principal(&alice, &thing("t"), &arn).unwrap();
    assert_eq!(kind(world.services.delete_thing(&alice, &thing("t"), Some(1))), "ok");
    assert_eq!(kind(world.services.describe_thing(&alice, &thing("t"))), "NotFound");
}

#[test]
fn an_exclusive_attachment_is_the_principals_only_one() {
    use ThingPrincipalType::{Exclusive as X, NonExclusive as N};
    type Attachments = &'static [(&'static str, ThingPrincipalType)];
    // (attachments made first, then the one tried, its outcome)
    let cases: [(Attachments, (&str, ThingPrincipalType), &str); 8] = [
        (&[], ("a", X), "ok"),
        (&[("a", N)], ("b", N), "ok"),
        (&[("a", N)], ("b", X), "InvalidRequest"),
        (&[("a", X)], ("b", N), "InvalidRequest"),
        (&[("a", X)], ("b", X), "InvalidRequest"),
        (&[("a", N)], ("a", X), "ok"),
        (&[("a", X)], ("a", N), "ok"),
        (&[("a", N), ("b", N)], ("a", X), "InvalidRequest"),
    ];
    let world = world();
    let alice = caller(&world);
    for name in ["a", "b"] {
        world.services.create_thing(&alice, &thing(name), &ThingDefinition::default()).unwrap();
    }
    for (before, (name, principal_type), expected) in cases {
        let (id, arn) = certificate(&world, &alice);
        for (name, principal_type) in before {
            world.services.attach_thing_principal(&alice, &thing(name), &arn, *principal_type).unwrap();
        }
        let outcome = kind(world.services.attach_thing_principal(&alice, &thing(name), &arn, principal_type));
        assert_eq!(outcome, expected, "{before:?} then {name} {principal_type:?}");
        let page = world.services.list_principal_things(&alice, &arn, None, &first_page()).unwrap();
        let attached: Vec<_> = page.items.iter().map(|a| (a.thing_name.to_string(), a.principal_type)).collect();
        let mut expected_attached: Vec<_> = before.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        if expected == "ok" {
            expected_attached.retain(|(n, _)| n != name);
            expected_attached.push((name.to_string(), principal_type));
            expected_attached.sort_by(|left, right| left.0.cmp(&right.0));
        }
        assert_eq!(attached, expected_attached, "{before:?} then {name} {principal_type:?}");
        for (name, _) in &attached {
            world.services.detach_thing_principal(&alice, &thing(name), &arn).unwrap();
        }
        assert!(world.services.principal_things(&alice.account, &id).unwrap().is_empty());
    }
}

#[test]
fn thing_principals_list_both_ways_and_feed_the_gateway() {
    let world = world();
    let (alice, bob) = (caller(&world), caller(&world));
    let (id, arn) = certificate(&world, &alice);
    let (_, other_arn) = certificate(&world, &alice);
    let (_, bobs_arn) = certificate(&world, &bob);
    for name in ["lamp", "switch"] {
        world
            .services
            .create_thing(
                &alice,
                &thing(name),
                &ThingDefinition { attributes: attributes(&[("room", name)]), ..ThingDefinition::default() },
            )
            .unwrap();
    }
    world.services.attach_thing_principal(&alice, &thing("lamp"), &arn, ThingPrincipalType::NonExclusive).unwrap();
    world.services.attach_thing_principal(&alice, &thing("switch"), &arn, ThingPrincipalType::NonExclusive).unwrap();
    world.services.attach_thing_principal(&alice, &thing("lamp"), &other_arn, ThingPrincipalType::Exclusive).unwrap();
    let cases = [
        (&arn, "lamp", ThingPrincipalType::NonExclusive, "ok"),
        (&bobs_arn, "lamp", ThingPrincipalType::NonExclusive, "NotFound"),
        (&arn, "missing", ThingPrincipalType::NonExclusive, "NotFound"),
    ];
    for (principal, name, principal_type, expected) in cases {
        assert_eq!(
            kind(world.services.attach_thing_principal(&alice, &thing(name), principal, principal_type)),
            expected,
            "{name}"
        );
    }
    let of_lamp = world.services.list_thing_principals(&alice, &thing("lamp"), None, &first_page()).unwrap();
    assert_eq!(of_lamp.items.len(), 2);
    let exclusive = world
        .services
        .list_thing_principals(&alice, &thing("lamp"), Some(ThingPrincipalType::Exclusive), &first_page())
        .unwrap();
    assert_eq!(exclusive.items.len(), 1);
    assert_eq!(kind(world.services.list_thing_principals(&alice, &thing("missing"), None, &first_page())), "NotFound");
    assert_eq!(kind(world.services.list_principal_things(&bob, &arn, None, &first_page())), "NotFound");
    let things = world.services.principal_things(&alice.account, &id).unwrap();
    let seen: Vec<_> = things.iter().map(|thing| (thing.name.to_string(), thing.attributes["room"].clone())).collect();
    assert_eq!(seen, vec![("lamp".into(), "lamp".into()), ("switch".into(), "switch".into())]);

    // ListThings filters.
    let filter = |name: &str, value: &str, prefix: bool| ThingFilter {
        type_name: None,
        attribute: Some(if prefix {
            AttributeFilter::StartsWith { name: name.into(), prefix: value.into() }
        } else {
            AttributeFilter::Equals { name: name.into(), value: value.into() }
        }),
    };
    for (filter, expected) in [
        (filter("room", "lamp", false), 1),
        (filter("room", "s", true), 1),
        (filter("room", "", true), 2),
        (filter("floor", "1", false), 0),
    ] {
        assert_eq!(
            world.services.list_things(&alice, &filter, &first_page()).unwrap().items.len(),
            expected,
            "{filter:?}"
        );
    }
}

#[test]
fn attachments_and_defaults_reach_the_change_feed() {
    use certfleet_registry::read;
    let world = world();
    let alice = caller(&world);
    let (id, arn) = certificate(&world, &alice);
    world.services.create_policy(&alice, &policy("p"), ALLOW_ALL, &[]).unwrap();
    world.services.create_thing(&alice, &thing("t"), &ThingDefinition::default()).unwrap();
    let start = read(world.services.store(), |tx| tx.last_change_seq()).unwrap();

    world.services.attach_policy(&alice, &policy("p"), &arn).unwrap();
    world.services.attach_policy(&alice, &policy("p"), &arn).unwrap(); // no change
    world.services.create_policy_version(&alice, &policy("p"), &document("*"), false).unwrap(); // not the default
    world.services.create_policy_version(&alice, &policy("p"), &document("*"), true).unwrap();
    world.services.set_default_policy_version(&alice, &policy("p"), 1).unwrap();
    assert!(world.services.create_policy_version(&alice, &policy("p"), "{", true).is_err()); // refused: nothing
    world.services.attach_thing_principal(&alice, &thing("t"), &arn, ThingPrincipalType::Exclusive).unwrap();
    world
        .services
        .update_thing(
            &alice,
            &thing("t"),
            &ThingUpdate {
                attributes: Some(AttributePayload { attributes: attributes(&[("a", "1")]), merge: true }),
                ..ThingUpdate::default()
            },
        )
        .unwrap();
    world.services.detach_thing_principal(&alice, &thing("t"), &arn).unwrap();
    world.services.detach_policy(&alice, &policy("p"), &arn).unwrap();
    world.services.delete_policy_version(&alice, &policy("p"), 2).unwrap();
    world.services.delete_policy_version(&alice, &policy("p"), 3).unwrap();
    world.services.delete_policy(&alice, &policy("p")).unwrap();
    world.services.delete_thing(&alice, &thing("t"), None).unwrap();

    let seen: Vec<_> = read(world.services.store(), |tx| tx.changes_after(start, 100))
        .unwrap()
        .into_iter()
        .map(|change| (change.kind, change.entity_id))
        .collect();
    let cert = (ChangeKind::Certificate, id.to_string());
    let p = (ChangeKind::Policy, "p".to_string());
    let t = (ChangeKind::Thing, "t".to_string());
    assert_eq!(seen, vec![cert.clone(), p.clone(), p.clone(), cert.clone(), t.clone(), cert.clone(), cert, p, t]);
}
