//! Just-in-time provisioning through the typed services, on a real SQLite registry: which
//! templates RegisterCACertificate refuses, and what a template creates and attaches when a
//! device it applies to is registered just in time.

use certfleet_pki::{Certificate, CertificateId, GeneratedKeyPair, Issuer, KeyAlgorithm};
use certfleet_registry::{CertificateStatus, KeyPageRequest, PageRequest, PolicyName, RegistrationConfig, ThingName};
use certfleet_services::*;
use certfleet_testkit::{START, World, world};
use time::Duration;

const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;

fn root(name: &str) -> Issuer {
    Issuer::generate_root(name, "test", Duration::days(30), KeyAlgorithm::EcdsaP256, START).unwrap()
}

fn device(ca: &Issuer, common_name: &str) -> Certificate {
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    ca.issue_for_key(key.public_key(), common_name, Duration::days(1), START).unwrap()
}

/// A template with `thing` (the ThingName value, JSON), a certificate and `policy` (the policy
/// resource's Properties, JSON).
fn template(thing: &str, policy: &str) -> String {
    format!(
        r#"{{"Parameters": {{"AWS::IoT::Certificate::CommonName": {{"Type": "String"}}}},
            "Resources": {{
              "thing": {{"Type": "AWS::IoT::Thing", "Properties": {{"ThingName": {thing}}}}},
              "certificate": {{"Type": "AWS::IoT::Certificate",
                "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}, "Status": "ACTIVE"}}}},
              "policy": {{"Type": "AWS::IoT::Policy", "Properties": {policy}}}}}}}"#
    )
}

fn inline_policy() -> String {
    format!(r#"{{"PolicyName": "fleet", "PolicyDocument": {}}}"#, serde_json_string(POLICY))
}

fn serde_json_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Registers `ca` (ACTIVE, auto-registering, DEFAULT mode) with `body` as its templateBody.
fn register_ca(world: &World, caller: &Caller, ca: &Issuer, body: Option<String>) -> Result<CertificateId, Error> {
    let code = world.services.get_registration_code(caller).unwrap();
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let verification = ca.issue_for_key(key.public_key(), &code, Duration::days(1), START).unwrap();
    let request = CaRegistration {
        ca_certificate_pem: ca.certificate().to_pem(),
        verification_certificate_pem: Some(verification.to_pem()),
        set_as_active: true,
        allow_auto_registration: true,
        registration_config: body.map(|body| RegistrationConfig { template_body: Some(body), ..Default::default() }),
        ..Default::default()
    };
    world.services.register_ca_certificate(caller, &request).map(|(_, id)| id)
}

/// Whether RegisterCACertificate accepts `body`; a refusal is InvalidRequest mentioning `refusal`.
fn check_template(body: &str, refusal: Option<&str>) {
    let world = world();
    let caller = world.caller();
    match (register_ca(&world, &caller, &root("ca"), Some(body.to_owned())), refusal) {
        (Ok(_), None) => {}
        (Err(Error::InvalidRequest(message)), Some(expected)) => {
            assert!(message.contains(expected), "{body}: {message:?} does not mention {expected:?}");
            let cas = world
                .services
                .list_ca_certificates(&caller, &PageRequest { limit: 100, ascending: true, after: None })
                .unwrap();
            assert!(cas.items.is_empty(), "a refused template registers nothing");
        }
        (outcome, _) => panic!("{body}: unexpected {outcome:?}, expected refusal {refusal:?}"),
    }
}

#[test]
fn templates_are_checked_when_the_ca_is_registered() {
    let common_name = r#"{"Ref": "AWS::IoT::Certificate::CommonName"}"#;
    check_template(&template(common_name, &inline_policy()), None);
    check_template(&template(common_name, r#"{"PolicyName": "existing"}"#), None);
    check_template(
        &template(r#"{"Fn::Join": ["-", ["x", {"Ref": "AWS::IoT::Certificate::Id"}]]}"#, &inline_policy()),
        None,
    );
    check_template(&template(r#"{"Fn::Sub": "dev-${AWS::IoT::Certificate::SerialNumber}"}"#, &inline_policy()), None);
    check_template(
        &template(r#"{"Ref": "AWS::IoT::Certificate::Nickname"}"#, &inline_policy()),
        Some("unknown parameter"),
    );
    check_template(&template(r#"{"Fn::Sub": "dev-${Nickname}"}"#, &inline_policy()), Some("unknown parameter"));
    check_template(&template(r#"{"Fn::If": ["c", "a", "b"]}"#, &inline_policy()), Some("Fn::If is not supported"));
    check_template(&template(r#"{"Fn::Join": ["-"]}"#, &inline_policy()), Some("Fn::Join takes"));
    check_template(&template(common_name, r#"{"PolicyDocument": "{\"Statement\": 3}"}"#), Some("not a valid policy"));
    check_template(&template(common_name, "{}"), Some("needs a PolicyName or a PolicyDocument"));
    check_template(r#"{"Resources": {"role": {"Type": "AWS::IAM::Role"}}}"#, Some("unsupported type"));
    check_template(r#"{"Parameters": {"Zone": {"Type": "String"}}, "Resources": {}}"#, Some("unknown parameter"));
    check_template(r#"{"Resources": {}, "Conditions": {}}"#, Some("Conditions are not supported"));
    check_template("not json", Some("not JSON"));
}

#[test]
fn a_template_creates_and_attaches_the_thing_and_policy_and_activates_the_certificate() {
    let world = world();
    let caller = world.caller();
    let ca = root("jitp root");
    let thing_name = r#"{"Fn::Join": ["", [{"Ref": "AWS::IoT::Certificate::CommonName"}]]}"#;
    register_ca(&world, &caller, &ca, Some(template(thing_name, &inline_policy()))).unwrap();
    for common_name in ["sensor-1", "sensor-2"] {
        let device = device(&ca, common_name);
        let (record, _) = world.services.auto_register_certificate(&caller.account, &device, true).unwrap().unwrap();
        assert_eq!(record.status, CertificateStatus::Active);
        let thing = world.services.describe_thing(&caller, &ThingName::parse(common_name).unwrap()).unwrap();
        let arn = world.services.certificate_arn(&caller.account, device.id());
        let things = world
            .services
            .list_principal_things(&caller, &arn, None, &KeyPageRequest { limit: 100, after: None })
            .unwrap();
        assert_eq!(
            things.items.iter().map(|attachment| attachment.thing_name.clone()).collect::<Vec<_>>(),
            vec![thing.name]
        );
        let policies = world
            .services
            .list_attached_policies(&caller, &arn, false, &KeyPageRequest { limit: 100, after: None })
            .unwrap();
        assert_eq!(policies.items.iter().map(|policy| policy.name.as_str()).collect::<Vec<_>>(), vec!["fleet"]);
    }
    let (_, version) = world.services.get_policy(&caller, &PolicyName::parse("fleet").unwrap()).unwrap();
    assert_eq!(version.document, POLICY, "the policy is created once and shared");
}

#[test]
fn fn_sub_and_defaults_fill_the_thing_and_its_attributes() {
    let world = world();
    let caller = world.caller();
    let ca = root("sub root");
    let policy = format!(r#"{{"Type": "AWS::IoT::Policy", "Properties": {}}}"#, inline_policy());
    let body = format!(
        r#"{{"Parameters": {{"AWS::IoT::Certificate::Country": {{"Type": "String", "Default": "FR"}}}},
            "Resources": {{"thing": {{"Type": "AWS::IoT::Thing", "Properties": {{
              "ThingName": {{"Fn::Sub": "${{AWS::IoT::Certificate::Country}}_${{AWS::IoT::Certificate::CommonName}}"}},
              "AttributePayload": {{"country": {{"Ref": "AWS::IoT::Certificate::Country"}}, "kind": "meter"}}}}}},
              "policy": {policy}}}}}"#
    );
    register_ca(&world, &caller, &ca, Some(body)).unwrap();
    let (record, _) =
        world.services.auto_register_certificate(&caller.account, &device(&ca, "m7"), true).unwrap().unwrap();
    assert_eq!(record.status, CertificateStatus::Active, "no certificate resource: ACTIVE");
    let thing = world.services.describe_thing(&caller, &ThingName::parse("FR_m7").unwrap()).unwrap();
    assert_eq!(thing.attributes.get("country").map(String::as_str), Some("FR"));
    assert_eq!(thing.attributes.get("kind").map(String::as_str), Some("meter"));
}

#[test]
fn a_template_that_does_not_apply_to_a_certificate_leaves_it_pending_activation() {
    let world = world();
    let caller = world.caller();
    let ca = root("fallback root");
    // An existing policy by name that does not exist yet.
    register_ca(
        &world,
        &caller,
        &ca,
        Some(template(r#"{"Ref": "AWS::IoT::Certificate::CommonName"}"#, r#"{"PolicyName": "missing"}"#)),
    )
    .unwrap();
    let (record, _) =
        world.services.auto_register_certificate(&caller.account, &device(&ca, "d1"), true).unwrap().unwrap();
    assert_eq!(record.status, CertificateStatus::PendingActivation);
    assert!(world.services.describe_thing(&caller, &ThingName::parse("d1").unwrap()).is_err(), "nothing created");

    // Once the policy exists the template applies.
    world.services.create_policy(&caller, &PolicyName::parse("missing").unwrap(), POLICY, &[]).unwrap();
    let (record, _) =
        world.services.auto_register_certificate(&caller.account, &device(&ca, "d2"), true).unwrap().unwrap();
    assert_eq!(record.status, CertificateStatus::Active);

    // A common name that is not a valid thing name.
    let (record, _) =
        world.services.auto_register_certificate(&caller.account, &device(&ca, "bad name!"), true).unwrap().unwrap();
    assert_eq!(record.status, CertificateStatus::PendingActivation);
}

#[test]
fn update_ca_certificate_refuses_a_bad_template_and_keeps_the_old_config() {
    let world = world();
    let caller = world.caller();
    let id = register_ca(&world, &caller, &root("update root"), None).unwrap();
    let update = CaUpdate {
        registration_config: Some(RegistrationConfig {
            template_body: Some(r#"{"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}"#.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(world.services.update_ca_certificate(&caller, &id, &update), Err(Error::InvalidRequest(_))));
    assert_eq!(world.services.describe_ca_certificate(&caller, &id).unwrap().registration_config, None);
}

fn definition(name: &str, body: String) -> TemplateDefinition {
    TemplateDefinition {
        name: name.into(),
        description: Some("devices of the line".into()),
        body,
        enabled: true,
        role_arn: "arn:aws:iam::123456789012:role/JITPRole".into(),
        template_type: Some(JITP.into()),
        pre_provisioning_hook: None,
    }
}

#[test]
fn provisioning_templates_are_created_listed_described_and_deleted() {
    let world = world();
    let caller = world.caller();
    let body = template(r#"{"Ref": "AWS::IoT::Certificate::CommonName"}"#, &inline_policy());
    let created = world.services.create_provisioning_template(&caller, &definition("line-1", body.clone())).unwrap();
    assert_eq!(
        (created.body.as_str(), created.default_version, created.template_type.as_str()),
        (body.as_str(), 1, "JITP")
    );
    assert!(matches!(
        world.services.create_provisioning_template(&caller, &definition("line-1", body.clone())),
        Err(Error::AlreadyExists { .. })
    ));
    world.services.create_provisioning_template(&caller, &definition("line-2", body.clone())).unwrap();
    let first = world.services.list_provisioning_templates(&caller, &KeyPageRequest { limit: 1, after: None }).unwrap();
    assert_eq!(first.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["line-1"]);
    let second =
        world.services.list_provisioning_templates(&caller, &KeyPageRequest { limit: 1, after: first.next }).unwrap();
    assert_eq!((second.items[0].name.as_str(), second.next), ("line-2", None));
    assert_eq!(
        world.services.describe_provisioning_template(&caller, "line-2").unwrap().description.as_deref(),
        Some("devices of the line")
    );

    // Refusals: bad body, unknown parameter, fleet provisioning, bad name; nothing is stored.
    let unknown = template(r#"{"Ref": "AWS::IoT::Certificate::Nickname"}"#, &inline_policy());
    for bad in [
        definition("bad", unknown),
        definition("bad", "{}".into()),
        TemplateDefinition { template_type: None, ..definition("bad", body.clone()) },
        definition("bad name", body.clone()),
    ] {
        assert!(
            matches!(world.services.create_provisioning_template(&caller, &bad), Err(Error::InvalidRequest(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(world.services.describe_provisioning_template(&caller, "bad"), Err(Error::NotFound(_))));

    // A CA naming a template keeps it from being deleted; a missing template cannot be named.
    let ca = root("named root");
    let code = world.services.get_registration_code(&caller).unwrap();
    let key = GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let request = |template_name: &str| CaRegistration {
        ca_certificate_pem: ca.certificate().to_pem(),
        verification_certificate_pem: Some(
            ca.issue_for_key(key.public_key(), &code, Duration::days(1), START).unwrap().to_pem(),
        ),
        set_as_active: true,
        allow_auto_registration: true,
        registration_config: Some(RegistrationConfig {
            template_name: Some(template_name.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(world.services.register_ca_certificate(&caller, &request("nope")), Err(Error::InvalidRequest(_))));
    world.services.register_ca_certificate(&caller, &request("line-1")).unwrap();
    assert!(matches!(world.services.delete_provisioning_template(&caller, "line-1"), Err(Error::DeleteConflict(_))));
    world.services.delete_provisioning_template(&caller, "line-2").unwrap();
    assert!(matches!(world.services.delete_provisioning_template(&caller, "line-2"), Err(Error::NotFound(_))));

    // The named template applies at the first connection.
    let (record, _) =
        world.services.auto_register_certificate(&caller.account, &device(&ca, "named-1"), true).unwrap().unwrap();
    assert_eq!(record.status, CertificateStatus::Active);
    world.services.describe_thing(&caller, &ThingName::parse("named-1").unwrap()).unwrap();
}

#[test]
fn a_template_naming_a_missing_or_deprecated_thing_type_provisions_nothing() {
    let world = world();
    let caller = world.caller();
    let ca = root("typed root");
    let body = template(r#"{"Ref": "AWS::IoT::Certificate::CommonName"}"#, &inline_policy())
        .replace(r#""Properties": {"ThingName""#, r#""Properties": {"ThingTypeName": "meter", "ThingName""#);
    assert!(body.contains("meter"), "{body}");
    register_ca(&world, &caller, &ca, Some(body)).unwrap();
    let page = KeyPageRequest { limit: 100, after: None };
    for (common_name, setup) in [("meter-1", "missing"), ("meter-2", "deprecated"), ("meter-3", "usable")] {
        match setup {
            "deprecated" => {
                let properties = ThingTypeProperties::default();
                world
                    .services
                    .create_thing_type(&caller, &ThingName::parse("meter").unwrap(), &properties, &[])
                    .unwrap();
                world.services.deprecate_thing_type(&caller, &ThingName::parse("meter").unwrap(), false).unwrap();
            }
            "usable" => {
                world.services.deprecate_thing_type(&caller, &ThingName::parse("meter").unwrap(), true).unwrap()
            }
            _ => {}
        }
        let device = device(&ca, common_name);
        let (record, _) = world.services.auto_register_certificate(&caller.account, &device, true).unwrap().unwrap();
        let thing = world.services.describe_thing(&caller, &ThingName::parse(common_name).unwrap());
        let arn = world.services.certificate_arn(&caller.account, device.id());
        let policies = world.services.list_attached_policies(&caller, &arn, false, &page).unwrap().items;
        if setup == "usable" {
            assert_eq!(record.status, CertificateStatus::Active);
            assert_eq!(thing.unwrap().type_name.unwrap().as_str(), "meter");
            assert_eq!(policies.len(), 1);
        } else {
            assert_eq!(record.status, CertificateStatus::PendingActivation, "{setup}: registered as JITR would");
            assert!(thing.is_err(), "{setup}: no thing created");
            assert!(policies.is_empty(), "{setup}: no policy attached");
        }
    }
}
