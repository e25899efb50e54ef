//! Fleet provisioning through the typed services on a real SQLite registry: template versions,
//! updates and hooks; the template the gateway provisions with; the one-transaction apply (all
//! or nothing); RegisterThing and CreateProvisioningClaim.

use std::collections::BTreeMap;

use certfleet_pki::{CertificateId, GeneratedKeyPair, KeyAlgorithm};
use certfleet_registry::{CertificateStatus, KeyPageRequest, PageRequest, ThingFilter, ThingGroupName, ThingName};
use certfleet_services::*;
use certfleet_testkit::{World, world};

const POLICY: &str = r#"{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iot:Connect\",\"Resource\":\"*\"}]}"#;
const ROLE: &str = "arn:aws:iam::123456789012:role/Provisioning";

/// A fleet template: a thing named by the `Serial` parameter with `thing_extra` properties and
/// OverrideSettings `overrides`, a certificate, and `policies` (resources, JSON members).
fn template(thing_extra: &str, overrides: &str, policies: &str) -> String {
    format!(
        r#"{{"Parameters": {{"Serial": {{"Type": "String"}}}},
            "Resources": {{
              "thing": {{"Type": "AWS::IoT::Thing", "OverrideSettings": {{{overrides}}},
                "Properties": {{"ThingName": {{"Fn::Sub": "dev-${{Serial}}"}}{thing_extra}}}}},
              "certificate": {{"Type": "AWS::IoT::Certificate",
                "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}, "Status": "ACTIVE"}}}}{policies}}},
            "DeviceConfiguration": {{"serial": {{"Ref": "Serial"}}}}}}"#
    )
}

const CREATED_POLICY: &str = r#", "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "fleet", "PolicyDocument": "PLACEHOLDER"}}"#;

fn created_policy() -> String {
    CREATED_POLICY.replace("PLACEHOLDER", POLICY)
}

fn definition(name: &str, body: String) -> TemplateDefinition {
    TemplateDefinition { name: name.into(), body, enabled: true, role_arn: ROLE.into(), ..Default::default() }
}

fn parameters(serial: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("Serial".to_owned(), serial.to_owned())])
}

/// What the account holds: certificate IDs, thing names (with attributes and type), policy names.
fn holdings(world: &World, caller: &Caller) -> (Vec<String>, Vec<String>, Vec<String>) {
    let all = PageRequest { limit: 250, ascending: true, after: None };
    let certificates =
        world.services.list_certificates(caller, &all).unwrap().items.iter().map(|c| c.id.to_string()).collect();
    let things = world
        .services
        .list_things(caller, &ThingFilter::default(), &KeyPageRequest { limit: 250, after: None })
        .unwrap()
        .items
        .iter()
        .map(|thing| {
            format!("{} {:?} {:?}", thing.name, thing.type_name.as_ref().map(ThingName::as_str), thing.attributes)
        })
        .collect();
    let policies =
        world.services.list_policies(caller, &all).unwrap().items.iter().map(|p| p.name.to_string()).collect();
    (certificates, things, policies)
}

/// Resolves `body` with `serial` and applies it for a freshly issued certificate; on a refusal,
/// checks its kind and that nothing was written.
fn check_apply(
    world: &World,
    caller: &Caller,
    body: &str,
    serial: &str,
    expected: Result<(), &str>,
) -> Option<ProvisioningOutcome> {
    let template = Template::parse_as(TemplateKind::FleetProvisioning, body).unwrap();
    let issued = world.services.issue_keys_and_certificate(&caller.account).unwrap();
    let before = holdings(world, caller);
    let outcome = template.resolve_fleet(&parameters(serial), Some(&issued.certificate.id)).and_then(|provisioning| {
        world.services.apply_fleet_provisioning(&caller.account, &provisioning, &issued.certificate.der, None)
    });
    match (outcome, expected) {
        (Ok(outcome), Ok(())) => {
            assert_eq!(outcome.certificate_id, issued.certificate.id);
            Some(outcome)
        }
        (Err(error), Err(kind)) => {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(holdings(world, caller), before, "a refused provisioning writes nothing");
            None
        }
        (outcome, expected) => panic!("{outcome:?}, expected {expected:?}"),
    }
}

#[test]
fn apply_creates_updates_and_attaches_or_writes_nothing() {
    let world = world();
    let caller = world.caller();
    let body = template(r#", "AttributePayload": {"line": "a"}"#, "", &created_policy());
    let outcome = check_apply(&world, &caller, &body, "1", Ok(())).unwrap();
    assert_eq!(outcome.thing_name.as_ref().map(ThingName::as_str), Some("dev-1"));
    assert_eq!(outcome.device_configuration, BTreeMap::from([("serial".to_owned(), "1".to_owned())]));
    assert_eq!(outcome.resource_arns.keys().collect::<Vec<_>>(), ["certificate", "policy", "thing"]);
    assert!(outcome.resource_arns["thing"].ends_with(":thing/dev-1"), "{:?}", outcome.resource_arns);
    let certificate = world.services.describe_certificate(&caller, &outcome.certificate_id).unwrap();
    assert_eq!(certificate.status, CertificateStatus::Active);
    let arn = world.services.certificate_arn(&caller.account, &outcome.certificate_id);
    let policies = world
        .services
        .list_attached_policies(&caller, &arn, false, &KeyPageRequest { limit: 10, after: None })
        .unwrap();
    assert_eq!(policies.items.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["fleet"]);
    let things =
        world.services.list_principal_things(&caller, &arn, None, &KeyPageRequest { limit: 10, after: None }).unwrap();
    assert_eq!(things.items.len(), 1);

    // Refusals write nothing: a named policy that does not exist, a policy name taken by
    // another document, a thing group that does not exist, an OverrideSettings FAIL.
    let missing = r#", "p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "nope"}}"#;
    check_apply(
        &world,
        &caller,
        &template("", "", &format!("{}{missing}", created_policy())),
        "2",
        Err("ResourceRegistrationFailure"),
    );
    let other = CREATED_POLICY.replace("PLACEHOLDER", &POLICY.replace("iot:Connect", "iot:Publish"));
    check_apply(&world, &caller, &template("", "", &other), "2", Err("ResourceRegistrationFailure"));
    check_apply(
        &world,
        &caller,
        &template(r#", "ThingGroups": ["g1"]"#, "", &created_policy()),
        "2",
        Err("ResourceRegistrationFailure"),
    );
    // With the group, the new thing joins it.
    let group = ThingGroupName::parse("g1").unwrap();
    world.services.create_thing_group(&caller, &group, &ThingGroupDefinition::default(), &[]).unwrap();
    let outcome =
        check_apply(&world, &caller, &template(r#", "ThingGroups": ["g1"]"#, "", &created_policy()), "3", Ok(()))
            .unwrap();
    let thing = outcome.thing_name.unwrap();
    let groups = world
        .services
        .list_thing_groups_for_thing(&caller, &thing, &KeyPageRequest { limit: 10, after: None })
        .unwrap();
    assert_eq!(groups.items, [group]);
    check_apply(
        &world,
        &caller,
        &template(r#", "AttributePayload": {"line": "b"}"#, r#""AttributePayload": "FAIL""#, ""),
        "1",
        Err("ConflictingResourceUpdate"),
    );

    // OverrideSettings on the existing thing dev-1 (attributes line=a).
    let thing = |world: &World| world.services.describe_thing(&caller, &ThingName::parse("dev-1").unwrap()).unwrap();
    check_apply(&world, &caller, &template(r#", "AttributePayload": {"line": "b"}"#, "", ""), "1", Ok(()));
    assert_eq!(
        thing(&world).attributes,
        BTreeMap::from([("line".to_owned(), "a".to_owned())]),
        "DO_NOTHING by default"
    );
    check_apply(
        &world,
        &caller,
        &template(r#", "AttributePayload": {"zone": "z"}"#, r#""AttributePayload": "MERGE""#, ""),
        "1",
        Ok(()),
    );
    assert_eq!(thing(&world).attributes.len(), 2);
    // REPLACE gives the thing a type, which must exist.
    let replace_type = template(
        r#", "AttributePayload": {"zone": "y"}, "ThingTypeName": "sensor""#,
        r#""AttributePayload": "REPLACE", "ThingTypeName": "REPLACE""#,
        "",
    );
    check_apply(&world, &caller, &replace_type, "1", Err("ResourceRegistrationFailure"));
    let sensor = ThingName::parse("sensor").unwrap();
    world.services.create_thing_type(&caller, &sensor, &ThingTypeProperties::default(), &[]).unwrap();
    check_apply(
        &world,
        &caller,
        &template(
            r#", "AttributePayload": {"zone": "y"}, "ThingTypeName": "sensor""#,
            r#""AttributePayload": "REPLACE", "ThingTypeName": "REPLACE""#,
            "",
        ),
        "1",
        Ok(()),
    );
    let replaced = thing(&world);
    assert_eq!(replaced.attributes, BTreeMap::from([("zone".to_owned(), "y".to_owned())]));
    assert_eq!(replaced.type_name.as_ref().map(ThingName::as_str), Some("sensor"));
    check_apply(
        &world,
        &caller,
        &template(r#", "AttributePayload": {"zone": "y"}"#, r#""AttributePayload": "FAIL""#, ""),
        "1",
        Ok(()),
    );
}

#[test]
fn template_versions_updates_and_hooks() {
    let world = world();
    let caller = world.caller();
    let services = &world.services;
    let v1 = template("", "", &created_policy());
    let hook = HookDefinition { target: "https://hooks.example/check".into(), payload_version: None };
    let created = services
        .create_provisioning_template(
            &caller,
            &TemplateDefinition { pre_provisioning_hook: Some(hook.clone()), ..definition("fleet", v1.clone()) },
        )
        .unwrap();
    assert_eq!(
        (created.template_type.as_str(), created.default_version),
        ("FLEET_PROVISIONING", 1),
        "FLEET_PROVISIONING by default"
    );
    assert_eq!(
        created.pre_provisioning_hook.as_ref().map(|hook| hook.payload_version.as_str()),
        Some(HOOK_PAYLOAD_VERSION)
    );

    let v2 = template(r#", "AttributePayload": {"v": "2"}"#, "", "");
    for (expected, default) in [(2, false), (3, true), (4, false), (5, false)] {
        let (version, is_default) =
            services.create_provisioning_template_version(&caller, "fleet", &v2, default).unwrap();
        assert_eq!((version.version_id, is_default), (expected, default));
    }
    let sixth = services.create_provisioning_template_version(&caller, "fleet", &v2, false).unwrap_err();
    assert_eq!(sixth.kind(), "VersionsLimitExceeded");
    let bad = services.create_provisioning_template_version(&caller, "other", &v2, false).unwrap_err();
    assert_eq!(bad.kind(), "NotFound");
    let described = services.describe_provisioning_template(&caller, "fleet").unwrap();
    assert_eq!((described.default_version, described.body.as_str()), (3, v2.as_str()));
    assert_eq!(
        services.delete_provisioning_template_version(&caller, "fleet", 3).unwrap_err().kind(),
        "DeleteConflict"
    );
    services.delete_provisioning_template_version(&caller, "fleet", 2).unwrap();
    assert_eq!(services.delete_provisioning_template_version(&caller, "fleet", 2).unwrap_err().kind(), "NotFound");
    let listed = services
        .list_provisioning_template_versions(&caller, "fleet", &KeyPageRequest { limit: 2, after: None })
        .unwrap();
    assert_eq!(listed.items.iter().map(|(v, d)| (v.version_id, *d)).collect::<Vec<_>>(), [(1, false), (3, true)]);
    let rest = services
        .list_provisioning_template_versions(&caller, "fleet", &KeyPageRequest { limit: 2, after: listed.next })
        .unwrap();
    assert_eq!(rest.items.iter().map(|(v, _)| v.version_id).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(rest.next, None);
    let (version, is_default) = services.describe_provisioning_template_version(&caller, "fleet", 1).unwrap();
    assert_eq!((version.body.as_str(), is_default), (v1.as_str(), false));
    // Version 6 is the next ID, never 2 again.
    let (version, _) = services.create_provisioning_template_version(&caller, "fleet", &v1, false).unwrap();
    assert_eq!(version.version_id, 6);

    // UpdateProvisioningTemplate.
    let update = TemplateUpdate {
        default_version: Some(1),
        enabled: Some(false),
        description: Some("d".into()),
        ..Default::default()
    };
    services.update_provisioning_template(&caller, "fleet", &update).unwrap();
    let updated = services.describe_provisioning_template(&caller, "fleet").unwrap();
    assert_eq!((updated.default_version, updated.body.as_str(), updated.enabled), (1, v1.as_str(), false));
    for (bad, kind) in [
        (TemplateUpdate { default_version: Some(2), ..Default::default() }, "NotFound"),
        (
            TemplateUpdate {
                pre_provisioning_hook: Some(HookDefinition {
                    target: "ftp://hooks.example/".into(),
                    payload_version: None,
                }),
                ..Default::default()
            },
            "InvalidRequest",
        ),
        (
            TemplateUpdate {
                pre_provisioning_hook: Some(HookDefinition { target: "https://".into(), payload_version: None }),
                ..Default::default()
            },
            "InvalidRequest",
        ),
        (
            TemplateUpdate {
                pre_provisioning_hook: Some(HookDefinition {
                    target: "https://a.example/".into(),
                    payload_version: Some("2019-01-01".into()),
                }),
                ..Default::default()
            },
            "InvalidRequest",
        ),
        (
            TemplateUpdate {
                pre_provisioning_hook: Some(hook.clone()),
                remove_pre_provisioning_hook: true,
                ..Default::default()
            },
            "InvalidRequest",
        ),
    ] {
        assert_eq!(services.update_provisioning_template(&caller, "fleet", &bad).unwrap_err().kind(), kind, "{bad:?}");
    }
    assert_eq!(
        services.describe_provisioning_template(&caller, "fleet").unwrap(),
        updated,
        "refused updates change nothing"
    );
    services
        .update_provisioning_template(
            &caller,
            "fleet",
            &TemplateUpdate { remove_pre_provisioning_hook: true, ..Default::default() },
        )
        .unwrap();
    assert_eq!(services.describe_provisioning_template(&caller, "fleet").unwrap().pre_provisioning_hook, None);

    // A JITP template takes no hook; a fleet template takes no RegisterThing certificate.
    let jitp = r#"{"Resources": {}}"#.to_owned();
    let refused = services.create_provisioning_template(
        &caller,
        &TemplateDefinition {
            template_type: Some(JITP.into()),
            pre_provisioning_hook: Some(hook),
            ..definition("jitp", jitp)
        },
    );
    assert_eq!(refused.unwrap_err().kind(), "InvalidRequest");
    let csr_body = r#"{"Parameters": {"Csr": {"Type": "String"}}, "Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateSigningRequest": {"Ref": "Csr"}}}}}"#;
    assert_eq!(
        services.create_provisioning_template(&caller, &definition("csr", csr_body.into())).unwrap_err().kind(),
        "InvalidRequest"
    );
}

#[test]
fn the_template_the_gateway_provisions_with() {
    let world = world();
    let caller = world.caller();
    let services = &world.services;
    services.create_provisioning_template(&caller, &definition("fleet", template("", "", ""))).unwrap();
    services
        .create_provisioning_template(
            &caller,
            &TemplateDefinition { enabled: false, ..definition("off", template("", "", "")) },
        )
        .unwrap();
    services
        .create_provisioning_template(
            &caller,
            &TemplateDefinition {
                template_type: Some(JITP.into()),
                ..definition("jitp", r#"{"Resources": {}}"#.into())
            },
        )
        .unwrap();
    let usable = services.fleet_template_for_provisioning(&caller.account, "fleet").unwrap();
    assert_eq!((usable.name.as_str(), usable.version_id, usable.hook), ("fleet", 1, None));
    assert!(usable.arn.ends_with(":provisioningtemplate/fleet"));
    for (name, why) in [
        ("missing", TemplateRefusal::NotFound),
        ("off", TemplateRefusal::Disabled),
        ("jitp", TemplateRefusal::NotFleetProvisioning),
        ("bad name", TemplateRefusal::NotFound),
    ] {
        match services.fleet_template_for_provisioning(&caller.account, name) {
            Err(Error::TemplateNotUsable { why: refusal, .. }) => assert_eq!(refusal, why, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    // The issued certificate is not in the registry until applied.
    let issued = services.issue_keys_and_certificate(&caller.account).unwrap();
    assert_eq!(services.describe_certificate(&caller, &issued.certificate.id).unwrap_err().kind(), "NotFound");
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let csr_key = rcgen::KeyPair::from_pem(&key.private_key_pem()).unwrap();
    let csr = csr.serialize_request(&csr_key).unwrap().pem().unwrap();
    let from_csr = services.issue_certificate_from_csr(&caller.account, &csr).unwrap();
    assert_eq!(services.describe_certificate(&caller, &from_csr.id).unwrap_err().kind(), "NotFound");
    let weak = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let weak_csr =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&weak).unwrap().pem().unwrap();
    assert_eq!(services.issue_certificate_from_csr(&caller.account, &weak_csr).unwrap_err().kind(), "InvalidRequest");
}

#[test]
fn register_thing_and_provisioning_claims() {
    let world = world();
    let caller = world.caller();
    let services = &world.services;
    let body = r#"{"Parameters": {"Serial": {"Type": "String"}, "Csr": {"Type": "String"}},
        "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Serial"}}},
          "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateSigningRequest": {"Ref": "Csr"}, "Status": "ACTIVE"}}}}"#;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr =
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap().pem().unwrap();
    let missing =
        services.register_thing(&caller, body, &BTreeMap::from([("Csr".to_owned(), csr.clone())])).unwrap_err();
    assert_eq!(missing.kind(), "InvalidParameters");
    assert!(holdings(&world, &caller).0.is_empty(), "nothing registered");
    let outcome = services
        .register_thing(
            &caller,
            body,
            &BTreeMap::from([("Csr".to_owned(), csr), ("Serial".to_owned(), "r-1".to_owned())]),
        )
        .unwrap();
    assert_eq!(outcome.resource_arns.keys().collect::<Vec<_>>(), ["certificate", "thing"]);
    assert_eq!(
        services.describe_certificate(&caller, &outcome.certificate_id).unwrap().status,
        CertificateStatus::Active
    );
    let no_source = template("", "", "");
    assert_eq!(services.register_thing(&caller, &no_source, &parameters("x")).unwrap_err().kind(), "InvalidRequest");

    // Claims: ACTIVE, valid 5 minutes, bound to their FLEET_PROVISIONING template.
    services.create_provisioning_template(&caller, &definition("fleet", template("", "", ""))).unwrap();
    let claim = services.create_provisioning_claim(&caller, "fleet").unwrap();
    assert_eq!(claim.expiration - world.services.now(), CLAIM_VALIDITY);
    let id = CertificateId::parse(claim.certificate.id.as_str()).unwrap();
    assert_eq!(services.describe_certificate(&caller, &id).unwrap().status, CertificateStatus::Active);
    assert_eq!(
        services.provisioning_claim(&caller.account, &id).unwrap().map(|claim| claim.template_name),
        Some("fleet".to_owned())
    );
    assert_eq!(services.provisioning_claim(&caller.account, &outcome.certificate_id).unwrap(), None);
    assert_eq!(services.create_provisioning_claim(&caller, "missing").err().map(|e| e.kind()), Some("NotFound"));
}

#[test]
fn register_thing_with_a_certificate_of_a_registered_ca() {
    use certfleet_pki::Issuer;
    use certfleet_testkit::START;
    let world = world();
    let caller = world.caller();
    let services = &world.services;
    let ca =
        Issuer::generate_root("fleet ca", "test", time::Duration::days(30), KeyAlgorithm::EcdsaP256, START).unwrap();
    let device_key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let device = ca.issue_for_key(device_key.public_key(), "device", time::Duration::days(1), START).unwrap();
    let body = r#"{"Parameters": {"Pem": {"Type": "String"}},
        "Resources": {"certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": {"Ref": "Pem"}, "Status": "INACTIVE"}}}}"#;
    let pem = BTreeMap::from([("Pem".to_owned(), device.to_pem())]);
    // The CA is not registered: refused, nothing written.
    assert_eq!(services.register_thing(&caller, body, &pem).unwrap_err().kind(), "ResourceRegistrationFailure");
    assert!(holdings(&world, &caller).0.is_empty());

    let code = services.get_registration_code(&caller).unwrap();
    let verification_key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let verification = ca.issue_for_key(verification_key.public_key(), &code, time::Duration::days(1), START).unwrap();
    let (_, ca_id) = services
        .register_ca_certificate(
            &caller,
            &CaRegistration {
                ca_certificate_pem: ca.certificate().to_pem(),
                verification_certificate_pem: Some(verification.to_pem()),
                set_as_active: true,
                ..Default::default()
            },
        )
        .unwrap();
    let outcome = services.register_thing(&caller, body, &pem).unwrap();
    assert_eq!(&outcome.certificate_id, device.id());
    let registered = services.describe_certificate(&caller, device.id()).unwrap();
    assert_eq!((registered.status, registered.ca_certificate_id), (CertificateStatus::Inactive, Some(ca_id)));
    // Registering it again is refused.
    assert_eq!(services.register_thing(&caller, body, &pem).unwrap_err().kind(), "ResourceRegistrationFailure");
}
