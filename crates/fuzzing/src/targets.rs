//! The bodies of the fuzz targets. Inputs that hold several parts (a rule and its payload, a
//! policy and the names it is asked about) separate them with NUL bytes.

use std::sync::LazyLock;

use bytes::BytesMut;
use certfleet_mqtt::{MAX_PACKET_SIZE, Packet, ProtocolVersion, decode, encode};
use certfleet_pki::{Certificate, CertificateId, Crl, Csr, Issuer, KeyAlgorithm};
use certfleet_policy::{Action, Context as PolicyContext, Policy, Request as PolicyRequest, Thing, evaluate};
use certfleet_rules::{Context as RuleContext, Limits, Output, Rule};
use certfleet_services::{Template, TemplateKind};
use certfleet_sigv4::{
    Request as SigRequest, SigningKey, VerifyPolicy, canonical_request, parse_authorization, parse_request_auth, verify,
};
use time::OffsetDateTime;

/// A fixed "now" (2026-11-24T21:00:00Z): the targets never read the clock.
fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_554_000).expect("a valid timestamp")
}

/// The CA whose certificate and key the CRL and JITP targets check against. Made once per
/// process: key generation is far slower than one fuzz input.
static CA: LazyLock<Issuer> = LazyLock::new(|| {
    Issuer::generate_root("Fuzz CA", "certfleet", time::Duration::days(365), KeyAlgorithm::EcdsaP256, now())
        .expect("a CA")
});

/// A device certificate of [`CA`], for `Crl::lists` and `Template::resolve`.
static DEVICE: LazyLock<Certificate> = LazyLock::new(|| {
    let key = certfleet_pki::GeneratedKeyPair::generate(KeyAlgorithm::EcdsaP256).expect("a key");
    CA.issue_for_key(key.public_key(), "fuzz-device", time::Duration::days(30), now()).expect("a device certificate")
});

/// Splits `data` at its first `count - 1` NUL bytes into `count` parts (missing parts are empty),
/// each read as UTF-8 with invalid sequences replaced.
fn parts<const N: usize>(data: &[u8]) -> [String; N] {
    let mut pieces = data.splitn(N, |byte| *byte == 0);
    std::array::from_fn(|_| String::from_utf8_lossy(pieces.next().unwrap_or_default()).into_owned())
}

/// A small maximum packet size, so that the size check is exercised too.
const MQTT_MAX: usize = 64 * 1024;

pub(crate) fn mqtt_decode(data: &[u8]) -> bool {
    let mut decoded = false;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MQTT_MAX) {
            // A CONNECT is decoded by its own protocol level.
            let version = match &packet {
                Packet::Connect(connect) => connect.protocol_version,
                _ => version,
            };
            let mut out = BytesMut::new();
            encode(&packet, version, &mut out).expect("a decoded packet re-encodes");
            let again = decode(&mut out, version, MAX_PACKET_SIZE);
            assert_eq!(again, Ok(Some(packet)));
            assert!(out.is_empty());
            decoded = true;
        }
    }
    decoded
}

pub(crate) fn certificate(data: &[u8]) -> bool {
    let parsed = match std::str::from_utf8(data) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN") => Certificate::from_pem(text),
        _ => Certificate::from_der(data.to_vec()),
    };
    let Ok(certificate) = parsed else { return false };
    assert_eq!(certificate.id(), &CertificateId::of_der(certificate.der()));
    let again = Certificate::from_der(certificate.der().to_vec()).expect("a parsed certificate parses again");
    assert!(again == certificate);
    let again = Certificate::from_pem(&certificate.to_pem()).expect("a certificate's PEM parses");
    assert!(again == certificate);
    let _ = (certificate.subject_string(), certificate.issuer_string(), certificate.subject_common_name());
    let _ = (certificate.subject_attributes(), certificate.issuer_attributes());
    let _ = (certificate.serial_hex(), certificate.serial_decimal());
    let _ = (certificate.subject_fingerprint(), certificate.issuer_fingerprint());
    let _ = (certificate.is_valid_at(now()), certificate.is_ca(), certificate.key_usage_allows_cert_sign());
    let _ = (certificate.names_host("device.example.com"), certificate.names_host("a.b"));
    let _ = (certificate.signature_algorithm(), certificate.is_self_issued());
    let _ = certificate_checks(&certificate);
    true
}

fn certificate_checks(certificate: &Certificate) -> Vec<bool> {
    vec![
        certfleet_pki::verify_signature(certificate, certificate.public_key()).is_ok(),
        certfleet_pki::check_ca_certificate(certificate, now()).is_ok(),
        certfleet_pki::check_issued_by(certificate, certificate, now()).is_ok(),
        certfleet_pki::check_issued_by(certificate, CA.certificate(), now()).is_ok(),
        certfleet_pki::check_key_rules(certificate.public_key()).is_ok(),
    ]
}

pub(crate) fn csr(data: &[u8]) -> bool {
    let parsed = match std::str::from_utf8(data) {
        Ok(text) if text.trim_start().starts_with("-----BEGIN") => Csr::from_pem(text),
        _ => Csr::from_der(data),
    };
    let Ok(csr) = parsed else { return false };
    let _ = (csr.subject_string(), csr.subject_common_name(), csr.signature_algorithm());
    // A request that passed every check can be issued.
    CA.issue_from_csr(&csr, time::Duration::days(1), now()).expect("a checked CSR is issued");
    true
}

pub(crate) fn crl(data: &[u8]) -> bool {
    let Ok(crl) = Crl::parse(data) else { return false };
    let again = Crl::from_der(crl.der().to_vec()).expect("a parsed list parses again");
    assert_eq!(again.revoked_count(), crl.revoked_count());
    let _ = (crl.issuer_string(), crl.this_update(), crl.next_update());
    let _ = (crl.lists(&DEVICE), crl.lists(CA.certificate()));
    let _ = crl.verify_signature(CA.certificate().public_key());
    true
}

pub(crate) fn policy(data: &[u8]) -> bool {
    let [document, name, client_id] = parts::<3>(data);
    let Ok(policy) = Policy::parse(&document) else { return false };
    let mut context = PolicyContext { client_id, ..PolicyContext::default() };
    let policies = [policy];
    for with_thing in [false, true] {
        if with_thing {
            context.thing = Some(Thing { name: name.clone(), ..Thing::default() });
            context.certificate.subject.common_name = vec![name.clone()];
        }
        for action in Action::ALL {
            let resource = format!("arn:aws:iot:us-east-1:123456789012:{}/{name}", action.resource_type());
            let _ = evaluate(&policies, &PolicyRequest { action, resource: &resource, context: &context });
        }
    }
    for statement in policies[0].statements() {
        let _ = (statement.sid(), statement.effect(), statement.has_condition());
        let _ = Action::ALL.map(|action| statement.covers(action));
    }
    true
}

pub(crate) fn rules(data: &[u8]) -> bool {
    let [sql, payload, topic] = parts::<3>(data);
    let Ok(rule) = Rule::parse(&sql) else { return false };
    // The payload as bytes (after the second NUL), not as lossy text: binary payloads matter.
    let payload_bytes = data.splitn(3, |byte| *byte == 0).nth(1).unwrap_or(payload.as_bytes());
    let topic = if topic.is_empty() { "a/b" } else { topic.as_str() };
    let new_uuid = || 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_u128;
    let tight = Limits { max_value_bytes: 256, max_steps: 200, max_depth: 16, max_payload_depth: 8 };
    for limits in [Limits::default(), tight] {
        let context = RuleContext {
            topic,
            client_id: "fuzz-client",
            principal: Some("0123abcd"),
            timestamp_ms: 1_795_554_000_000,
            new_uuid: &new_uuid,
            limits,
        };
        if let Ok(Output::Json(json)) = rule.evaluate(&context, payload_bytes) {
            let size = json.to_string().len();
            assert!(size <= limits.max_value_bytes, "an output of {size} bytes under {limits:?}");
        }
    }
    true
}

pub(crate) fn jitp_template(data: &[u8]) -> bool {
    let body = String::from_utf8_lossy(data);
    let Ok(template) = Template::parse(&body) else { return false };
    let _ = template.resolve(&DEVICE, DEVICE.id());
    true
}

/// The input is a fleet provisioning template body, a NUL, then the request's parameters, one
/// `name=value` per line; resolved for a fixed certificate ID and for RegisterThing (none).
pub(crate) fn fleet_template(data: &[u8]) -> bool {
    let [body, parameters] = parts::<2>(data);
    let Ok(template) = Template::parse_as(TemplateKind::FleetProvisioning, &body) else { return false };
    let parameters: std::collections::BTreeMap<String, String> = parameters
        .lines()
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    if let Ok(provisioning) = template.resolve_fleet(&parameters, Some(DEVICE.id())) {
        for value in provisioning.device_configuration.values() {
            assert!(value.chars().count() <= certfleet_services::MAX_VALUE_CHARS, "an unbounded value");
        }
    }
    let _ = template.resolve_fleet(&parameters, None);
    true
}

/// The input is a request in HTTP/1.1's shape: `METHOD path[?query]`, header lines `name: value`,
/// an empty line, the body.
pub(crate) fn sigv4(data: &[u8]) -> bool {
    let (head, body) = match data.windows(2).position(|window| window == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n');
    let request_line = lines.next().unwrap_or_default();
    let (method, target) = request_line.split_once(' ').unwrap_or((request_line, "/"));
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(&str, &str)> =
        lines.map(|line| line.split_once(':').map_or((line, ""), |(name, value)| (name, value.trim()))).collect();
    let request = SigRequest { method, raw_path, raw_query, headers: &headers, body };
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("authorization") {
            let _ = parse_authorization(value);
        }
    }
    let _ = canonical_request(&request, &["host".to_owned(), "x-amz-date".to_owned()]);
    let Ok((authorization, time)) = parse_request_auth(&request) else { return false };
    let _ = canonical_request(&request, &authorization.signed_headers);
    let key = SigningKey::derive("fuzz-secret", &authorization.date, "us-east-1", "iot");
    let policy = VerifyPolicy { region: "us-east-1", service: "iot", max_clock_skew: time::Duration::minutes(5) };
    let _ = verify(&request, &authorization, time, &key, &policy, time);
    true
}

/// The input is a CBOR payload: decoded under the bounds; a value read writes back to bytes that
/// read to the same value.
pub(crate) fn cbor(data: &[u8]) -> bool {
    let Ok(value) = certfleet_cbor::decode(data) else { return false };
    assert_eq!(
        certfleet_cbor::decode(&certfleet_cbor::encode(&value)),
        Ok(value),
        "a decoded value re-encodes to itself"
    );
    true
}
