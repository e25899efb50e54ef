//! `tls-check` against in-test rustls servers serving root -> intermediate -> leaf.

mod support;

use std::path::PathBuf;

use certfleet_tlstools::tls_check::{self, Failure, Status, TlsCheckArgs, Warning};
use clap::Parser;
use serde_json::Value;
use support::{Chain, Kind, Made, ServerOptions, chain, closed_port, make, serve, valid_for_days};
use time::OffsetDateTime;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TlsCheckArgs,
}

/// A temporary directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "certfleet-tlstools-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }

    fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write");
        path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `certfleet tls-check ARGS --output json`; returns the exit code, JSON and stderr.
fn tls_check(args: &[&str]) -> (u8, Value, String) {
    let cli = Cli::try_parse_from(std::iter::once("tls-check").chain(args.iter().copied()).chain(["--output", "json"]))
        .expect("arguments parse");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let status = tls_check::run(&cli.args, OffsetDateTime::now_utc(), &mut stdout, &mut stderr);
    let json = if stdout.is_empty() { Value::Null } else { serde_json::from_slice(&stdout).expect("json output") };
    (status.code(), json, String::from_utf8_lossy(&stderr).into_owned())
}

fn serve_chain(chain: &Chain, options: ServerOptions) -> u16 {
    serve(vec![chain.leaf.der.clone(), chain.intermediate.der.clone()], chain.leaf.private_key(), options)
}

fn bundle(dir: &Dir, name: &str, certificates: &[&Made]) -> String {
    dir.write(name, &certificates.iter().map(|made| made.pem()).collect::<String>())
}

fn kinds(json: &Value) -> Vec<String> {
    json["warnings"].as_array().expect("warnings").iter().map(|w| w["kind"].as_str().unwrap_or("").to_owned()).collect()
}

#[test]
fn verified_with_the_root_bundle() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions { alpn: vec![b"x-amzn-mqtt-ca".to_vec()], ..Default::default() });
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let target = format!("localhost:{port}");
    let (code, json, _) = tls_check(&[&target, "--ca-file", &ca, "--alpn", "x-amzn-mqtt-ca"]);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["connection"]["tlsVersion"], "TLS 1.3");
    assert_eq!(json["connection"]["alpn"], "x-amzn-mqtt-ca");
    assert!(json["connection"]["cipherSuite"].as_str().unwrap_or("").starts_with("TLS13_"), "{json:#}");
    assert_eq!(json["serverName"], "localhost");
    let chain_json = json["chain"].as_array().expect("chain");
    assert_eq!(chain_json.len(), 2);
    assert_eq!(chain_json[0]["subject"], "CN=localhost");
    assert_eq!(chain_json[0]["sha256"], chain.leaf.sha256());
    assert_eq!(chain_json[0]["keyType"], "ec");
    assert_eq!(chain_json[0]["keyBits"], 256);
    assert_eq!(chain_json[0]["signatureAlgorithm"], "ecdsa-with-SHA256");
    assert_eq!(chain_json[0]["sha1"].as_str().map(str::len), Some(40));
    assert_eq!((chain_json[0]["isCa"].as_bool(), chain_json[0]["selfSigned"].as_bool()), (Some(false), Some(false)));
    assert_eq!(chain_json[1]["subject"], "CN=Test Intermediate");
    assert_eq!(chain_json[1]["isCa"], true);
    assert!(json["chainBytes"].as_u64().unwrap_or(0) > 500);
    let verification = &json["verification"];
    assert_eq!(verification["trusted"], true);
    assert_eq!(verification["hostnameMatches"], true);
    assert_eq!(verification["anchor"]["subject"], "CN=Test Root");
    assert_eq!(verification["anchor"]["selfSigned"], true);
    assert_eq!(json["warnings"], serde_json::json!([]));
    assert_eq!(json["exitCode"], 0);
}

#[test]
fn tls_1_2_when_asked() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let (code, json, _) = tls_check(&[&format!("127.0.0.1:{port}"), "--ca-file", &ca, "--tls-version", "1.2"]);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["connection"]["tlsVersion"], "TLS 1.2");
    assert_eq!(json["serverName"], "127.0.0.1");
}

#[test]
fn pinning_the_intermediate_is_a_warning() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "intermediate.pem", &[&chain.intermediate]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca]);
    assert_eq!(code, 4, "{json:#}");
    assert_eq!(json["verification"]["trusted"], true);
    assert_eq!(json["verification"]["trustedByRootsOnly"], false);
    assert_eq!(json["verification"]["anchor"]["selfSigned"], false);
    assert_eq!(kinds(&json), ["pinned-intermediate"]);
    let message = json["warnings"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("only through the intermediate CN=Test Intermediate"), "{message}");
}

#[test]
fn intermediate_beside_the_root_is_still_a_warning() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "both.pem", &[&chain.root, &chain.intermediate]);
    let request_args =
        Cli::try_parse_from(["tls-check", &format!("localhost:{port}"), "--ca-file", &ca]).expect("args");
    let request = tls_check::Request::from_args(&request_args.args).expect("request");
    let report = tls_check::check(&request, OffsetDateTime::now_utc());
    assert_eq!(report.status(), Status::Warnings);
    assert!(
        matches!(report.warnings.as_slice(), [Warning::PinnedIntermediate { only_anchor: false, .. }]),
        "{:?}",
        report.warnings
    );
}

#[test]
fn pinning_the_leaf_is_a_warning() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "leaf.pem", &[&chain.root, &chain.leaf]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca]);
    assert_eq!(code, 4, "{json:#}");
    assert_eq!(kinds(&json), ["pinned-leaf"]);
}

#[test]
fn a_bundle_without_the_root_fails() {
    let dir = Dir::new();
    let chain = chain(365);
    let (from, to) = valid_for_days(365);
    let other = make("Other Root", Kind::Ca, None, from, to);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "other.pem", &[&other]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca]);
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(json["connection"]["ok"], true, "the handshake completes: the verifier records");
    assert_eq!(json["verification"]["trusted"], false);
    assert_eq!(json["verification"]["error"], "no path to a certificate of the bundle (unknown issuer)");
    assert_eq!(json["chain"].as_array().map(Vec::len), Some(2), "the chain is shown anyway");

    // A root with the same name but another key (a re-keyed root): the signature does not verify.
    let impostor = support::chain(365);
    let ca = bundle(&dir, "impostor.pem", &[&impostor.root]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca]);
    assert_eq!(code, 1, "{json:#}");
    let error = json["verification"]["error"].as_str().unwrap_or("");
    assert!(error.contains("has the issuer's name but not its key"), "{error}");
}

#[test]
fn a_host_name_mismatch_fails() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let (code, json, _) =
        tls_check(&[&format!("127.0.0.1:{port}"), "--ca-file", &ca, "--servername", "iot.example.com"]);
    assert_eq!(code, 1, "{json:#}");
    assert_eq!(json["verification"]["trusted"], true);
    assert_eq!(json["verification"]["hostnameMatches"], false);
    assert_eq!(json["serverName"], "iot.example.com");
}

#[test]
fn next_roots_missing_from_the_bundle() {
    let dir = Dir::new();
    let chain = chain(365);
    let next = support::chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let next_roots = bundle(&dir, "next.pem", &[&chain.root, &next.root]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca, "--next-roots", &next_roots]);
    assert_eq!(code, 4, "{json:#}");
    assert_eq!(kinds(&json), ["next-root-missing"]);
    assert_eq!(json["nextRoots"][0]["inBundle"], true);
    assert_eq!(json["nextRoots"][1]["inBundle"], false);
    assert_eq!(json["nextRoots"][1]["sha256"], next.root.sha256());
    assert_eq!(json["verifiesWithNextRoots"], true);

    let ready = bundle(&dir, "ready.pem", &[&chain.root, &next.root]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ready, "--next-roots", &next_roots]);
    assert_eq!(code, 0, "{json:#}");
}

#[test]
fn a_leaf_expiring_soon_is_a_warning() {
    let dir = Dir::new();
    let chain = chain(10);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca]);
    assert_eq!(code, 4, "{json:#}");
    assert_eq!(kinds(&json), ["expires-soon"]);
    let (code, _, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca, "--warn-days", "5"]);
    assert_eq!(code, 0);
}

#[test]
fn tls_1_3_only_server_refuses_1_2_with_an_alert() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions { versions: vec![&rustls::version::TLS13], ..Default::default() });
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca, "--tls-version", "1.2"]);
    assert_eq!(code, 3, "{json:#}");
    assert_eq!(json["connection"]["error"]["kind"], "alert");
    assert_eq!(json["connection"]["error"]["alert"], "protocol_version");
    assert_eq!(json["verification"], Value::Null, "no chain was presented");
}

fn mtls_server(chain: &Chain, client_ca: &Made, versions: Vec<&'static rustls::SupportedProtocolVersion>) -> u16 {
    serve_chain(chain, ServerOptions { versions, client_ca: Some(client_ca.der.clone()), ..Default::default() })
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let dir = Dir::new();
    let chain = chain(365);
    let (from, to) = valid_for_days(365);
    let device_ca = make("Device CA", Kind::Ca, None, from, to);
    let device = make("device-1", Kind::Client, Some(&device_ca), from, to);
    let port = mtls_server(&chain, &device_ca, vec![&rustls::version::TLS13, &rustls::version::TLS12]);
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let cert = dir.write("device.pem", &device.pem());
    let key = dir.write("device.key", &device.key_pem());
    let target = format!("localhost:{port}");
    let (code, json, _) = tls_check(&[&target, "--ca-file", &ca, "--cert", &cert, "--key", &key]);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["connection"]["clientCertificateOffered"], true);

    // TLS 1.3: the server refuses after our Finished; the alert arrives on the first read.
    let (code, json, _) = tls_check(&[&target, "--ca-file", &ca]);
    assert_eq!(code, 3, "{json:#}");
    assert_eq!(json["connection"]["error"]["alert"], "certificate_required");
    let message = json["connection"]["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("requires a client certificate"), "{message}");
    assert_eq!(json["verification"]["trusted"], true, "the server's chain is still checked");

    // A certificate from another CA is refused.
    let stranger_ca = make("Stranger CA", Kind::Ca, None, from, to);
    let stranger = make("stranger", Kind::Client, Some(&stranger_ca), from, to);
    let cert = dir.write("stranger.pem", &stranger.pem());
    let key = dir.write("stranger.key", &stranger.key_pem());
    let (code, json, _) = tls_check(&[&target, "--ca-file", &ca, "--cert", &cert, "--key", &key]);
    assert_eq!(code, 3, "{json:#}");
    assert_eq!(json["connection"]["error"]["alert"], "unknown_ca");
}

#[test]
fn mutual_tls_1_2_refuses_during_the_handshake() {
    let dir = Dir::new();
    let chain = chain(365);
    let (from, to) = valid_for_days(365);
    let device_ca = make("Device CA", Kind::Ca, None, from, to);
    let port = mtls_server(&chain, &device_ca, vec![&rustls::version::TLS12]);
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let request = Cli::try_parse_from(["tls-check", &format!("localhost:{port}"), "--ca-file", &ca]).expect("args");
    let report =
        tls_check::check(&tls_check::Request::from_args(&request.args).expect("request"), OffsetDateTime::now_utc());
    match &report.handshake {
        Err(Failure::Alert { after_handshake: false, alert }) => assert!(!alert.is_empty()),
        other => panic!("expected an alert during the handshake, got {other:?}"),
    }
    assert_eq!(report.status(), Status::ConnectionFailed);
}

#[test]
fn an_unreachable_port_is_exit_code_3() {
    let dir = Dir::new();
    let chain = chain(365);
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let (code, json, _) = tls_check(&[&format!("127.0.0.1:{}", closed_port()), "--ca-file", &ca, "--timeout", "5s"]);
    assert_eq!(code, 3, "{json:#}");
    assert_eq!(json["connection"]["error"]["kind"], "connect");
}

#[test]
fn input_errors_are_exit_code_2_with_one_line() {
    let dir = Dir::new();
    let chain = chain(365);
    let (from, to) = valid_for_days(365);
    let other = make("other", Kind::Client, None, from, to);
    let ca = bundle(&dir, "root.pem", &[&chain.root]);
    let garbage =
        dir.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n");
    let empty = dir.write("empty.pem", "hello\n");
    let cert = dir.write("cert.pem", &chain.leaf.pem());
    let wrong_key = dir.write("wrong.key", &other.key_pem());
    let missing = dir.0.join("missing.pem").display().to_string();
    let check = |args: &[&str], expected: &str| {
        let (code, json, stderr) = tls_check(args);
        assert_eq!((code, json), (2, Value::Null), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("certfleet tls-check: ") && stderr.contains(expected), "{args:?}: {stderr}");
    };
    check(&["localhost", "--ca-file", &ca], "is not HOST:PORT: no port");
    check(&["localhost:99999", "--ca-file", &ca], "is not HOST:PORT");
    check(&["localhost:8883", "--ca-file", &garbage], "garbage.pem");
    check(&["localhost:8883", "--ca-file", &empty], "no CERTIFICATE block");
    check(&["localhost:8883", "--ca-file", &missing], "missing.pem");
    check(&["localhost:8883", "--ca-file", &ca, "--cert", &cert, "--key", &wrong_key], "wrong.key");
    check(&["localhost:8883", "--ca-file", &ca, "--next-roots", &garbage], "garbage.pem");
    check(&["localhost:8883", "--ca-file", &ca, "--servername", "bad name!"], "not a valid server name");
    assert!(Cli::try_parse_from(["tls-check", "localhost:8883", "--ca-file", &ca, "--cert", &cert]).is_err());
    assert!(Cli::try_parse_from(["tls-check", "localhost:8883", "--ca-file", &ca, "--tls-version", "1.1"]).is_err());
    assert!(Cli::try_parse_from(["tls-check", "localhost:8883", "--ca-file", &ca, "--timeout", "10"]).is_err());
}

#[test]
fn text_output_names_everything() {
    let dir = Dir::new();
    let chain = chain(365);
    let port = serve_chain(&chain, ServerOptions::default());
    let ca = bundle(&dir, "intermediate.pem", &[&chain.intermediate]);
    let cli = Cli::try_parse_from(["tls-check", &format!("localhost:{port}"), "--ca-file", &ca]).expect("args");
    let mut stdout = Vec::new();
    let status = tls_check::run(&cli.args, OffsetDateTime::now_utc(), &mut stdout, &mut Vec::new());
    let text = String::from_utf8(stdout).expect("utf-8");
    assert_eq!(status, Status::Warnings);
    for expected in [
        "connection: TLS 1.3",
        "chain as presented: 2 certificates",
        "[0] subject:    CN=localhost",
        "sha256:     ",
        "chain: trusted, anchored at CN=Test Intermediate (NOT a root)",
        "host name: localhost matches",
        "WARNING pinned-intermediate",
        "result: ok with warnings (exit code 4)",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
}

#[test]
fn a_large_chain_is_a_note_not_a_warning() {
    let dir = Dir::new();
    let base = chain(365);
    let (from, to) = valid_for_days(365);
    let mut names: Vec<String> = (0..800).map(|index| format!("device-endpoint-{index:04}.iot.example.com")).collect();
    names.push("localhost".to_owned());
    let leaf = make("localhost", Kind::Server(names), Some(&base.intermediate), from, to);
    let port =
        serve(vec![leaf.der.clone(), base.intermediate.der.clone()], leaf.private_key(), ServerOptions::default());
    let ca = bundle(&dir, "root.pem", &[&base.root]);
    let (code, json, _) = tls_check(&[&format!("localhost:{port}"), "--ca-file", &ca]);
    assert_eq!(code, 0, "{json:#}");
    assert!(json["chainBytes"].as_u64().unwrap_or(0) > 16 * 1024, "{}", json["chainBytes"]);
    let notes = json["notes"].as_array().expect("notes");
    assert!(notes[0].as_str().unwrap_or("").contains("more than 16384"), "{notes:?}");
}
