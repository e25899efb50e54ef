//! `scan` on blobs made at run time: DER certificates at odd offsets in noise, PEM blocks,
//! truncated and corrupted ones; expiry flags at a fixed `now`; trust bundle checks.

mod support;

use std::path::PathBuf;

use certfleet_tlstools::scan::{self, Format, ScanArgs, Status, scan_reader, scan_reader_in_chunks};
use clap::Parser;
use serde_json::Value;
use support::{Kind, Made, Noise, make};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const NOW: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ScanArgs,
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("certfleet-scan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent");
        }
        std::fs::write(&path, content).expect("write");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn leaf(name: &str, not_after: OffsetDateTime) -> Made {
    make(name, Kind::Client, None, NOW - Duration::days(365), not_after)
}

fn ca(name: &str, issuer: Option<&Made>) -> Made {
    make(name, Kind::Ca, issuer, NOW - Duration::days(365), NOW + Duration::days(3650))
}

fn put(blob: &mut [u8], at: usize, bytes: &[u8]) {
    blob[at..at + bytes.len()].copy_from_slice(bytes);
}

fn line_of(blob: &[u8], at: usize) -> u64 {
    blob[..at].iter().filter(|&&b| b == b'\n').count() as u64 + 1
}

#[test]
fn firmware_blob() {
    let certificates: Vec<Made> =
        (0..7).map(|index| leaf(&format!("device-{index}"), NOW + Duration::days(100 + index))).collect();
    let mut blob = Noise::new(7).bytes(300 * 1024);
    let der_offsets = [1001, 70_003, 200_017];
    for (made, at) in certificates.iter().zip(der_offsets) {
        put(&mut blob, at, &made.der);
    }
    let pem_offsets = [150_001, 250_001];
    for (made, at) in certificates[3..5].iter().zip(pem_offsets) {
        put(&mut blob, at, format!("\n{}\n", made.pem()).as_bytes());
    }
    let corrupted = certificates[5].pem().replacen("MII", "M*I", 1);
    put(&mut blob, 280_001, format!("\n{corrupted}\n").as_bytes());
    let truncated = &certificates[6].der[..200];
    blob.extend_from_slice(truncated);

    let mut expected = vec![
        (1001u64, Format::Der, None, certificates[0].sha256()),
        (70_003, Format::Der, None, certificates[1].sha256()),
        (150_002, Format::Pem, Some(line_of(&blob, 150_002)), certificates[3].sha256()),
        (200_017, Format::Der, None, certificates[2].sha256()),
        (250_002, Format::Pem, Some(line_of(&blob, 250_002)), certificates[4].sha256()),
    ];
    expected.sort_by_key(|entry| entry.0);
    for chunk in [8 << 20, 4096, 65_543, 150_003] {
        let scanned = scan_reader_in_chunks(&blob[..], chunk).expect("scans");
        let got: Vec<_> = scanned
            .certificates
            .iter()
            .map(|found| (found.offset, found.format, found.line, found.certificate.id().to_string()))
            .collect();
        assert_eq!(got, expected, "chunk {chunk}");
        assert_eq!(scanned.bytes, blob.len() as u64);
        assert_eq!(scanned.warnings.len(), 2, "chunk {chunk}: {:?}", scanned.warnings);
        let corrupted_line = line_of(&blob, 280_002);
        assert!(
            scanned.warnings[0].starts_with(&format!(
                "line {corrupted_line}: a CERTIFICATE PEM block is not a certificate: bad base64"
            )),
            "{:?}",
            scanned.warnings
        );
        let truncated_at = blob.len() - 200;
        assert_eq!(
            scanned.warnings[1],
            format!(
                "offset {truncated_at}: a DER certificate is truncated ({} bytes declared, 200 left in the file)",
                certificates[6].der.len()
            )
        );
    }
}

#[test]
fn the_same_certificate_twice_is_reported_once() {
    let made = leaf("twice", NOW + Duration::days(100));
    let mut blob = Noise::new(3).bytes(10_000);
    put(&mut blob, 501, &made.der);
    put(&mut blob, 5001, &made.der);
    blob.extend_from_slice(made.pem().as_bytes());
    let scanned = scan_reader(&blob[..]).expect("scans");
    let offsets: Vec<u64> = scanned.certificates.iter().map(|found| found.offset).collect();
    assert_eq!(offsets, [501]);
    assert_eq!(scanned.pem_certificates.len(), 1, "the PEM copy still counts for bundles");
}

#[test]
fn truncated_and_mutated_der_never_panics_nor_invents_certificates() {
    let made = leaf("fragile", NOW + Duration::days(100));
    for length in 0..made.der.len() {
        let scanned = scan_reader(&made.der[..length]).expect("scans");
        assert!(scanned.certificates.is_empty(), "truncated at {length}");
    }
    for at in 0..12 {
        for value in [0x00, 0x30, 0x81, 0x82, 0x83, 0xa0, 0xff] {
            let mut der = made.der.to_vec();
            der[at] = value;
            let scanned = scan_reader(&der[..]).expect("scans");
            for found in &scanned.certificates {
                assert_eq!(found.certificate.der(), &der[..found.certificate.der().len()], "{at} {value}");
            }
        }
    }
    // Noise full of certificate-like headers.
    let mut noise = Noise::new(11).bytes(200_000);
    for at in (0..noise.len() - 16).step_by(97) {
        put(&mut noise, at, &[0x30, 0x82, 0x01, 0x40, 0x30, 0x82, 0x01, 0x20, 0xa0, 0x03, 0x02, 0x01, 0x02]);
    }
    let scanned = scan_reader(&noise[..]).expect("scans");
    assert!(scanned.certificates.is_empty());
}

#[test]
fn trusted_certificate_and_c_string_pem() {
    let made = leaf("trusted", NOW + Duration::days(100));
    let mut trusted = made.der.to_vec();
    trusted.extend_from_slice(&[0x30, 0x0c, 0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02]);
    let trusted_pem = certfleet_pki::pem_encode("TRUSTED CERTIFICATE", &trusted);
    let other = leaf("in-c-source", NOW + Duration::days(100));
    let c_source: String = other.pem().lines().map(|line| format!("    \"{line}\\n\"\n")).collect();
    let text = format!("{trusted_pem}\nstatic const char ca[] =\n{c_source};\n");
    let scanned = scan_reader(text.as_bytes()).expect("scans");
    let got: Vec<_> = scanned
        .certificates
        .iter()
        .map(|found| (found.format, found.line, found.certificate.id().to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (Format::TrustedPem, Some(1), made.sha256()),
            (
                Format::Pem,
                Some(text.lines().position(|l| l.contains("BEGIN CERTIFICATE")).map(|l| l as u64 + 1).unwrap_or(0)),
                other.sha256()
            )
        ]
    );
    assert!(scanned.warnings.is_empty(), "{:?}", scanned.warnings);
}

fn run(args: &[&str]) -> (u8, Value) {
    let cli = Cli::try_parse_from(std::iter::once("scan").chain(args.iter().copied()).chain(["--output", "json"]))
        .expect("arguments parse");
    let mut stdout = Vec::new();
    let status = scan::run(&cli.args, NOW, &mut stdout, &mut Vec::new());
    let json = if stdout.is_empty() { Value::Null } else { serde_json::from_slice(&stdout).expect("json") };
    (status.code(), json)
}

fn flags_by_subject(json: &Value) -> Vec<(String, Vec<String>)> {
    let mut flags: Vec<(String, Vec<String>)> = json["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .map(|certificate| {
            let flags = certificate["flags"].as_array().expect("flags");
            (
                certificate["subject"].as_str().unwrap_or("").to_owned(),
                flags.iter().map(|flag| flag.as_str().unwrap_or("").to_owned()).collect(),
            )
        })
        .collect();
    flags.sort();
    flags
}

fn expect_flags(json: &Value, expected: &[(&str, &[&str])]) {
    let expected: Vec<(String, Vec<String>)> = expected
        .iter()
        .map(|(subject, flags)| (subject.to_string(), flags.iter().map(|flag| flag.to_string()).collect()))
        .collect();
    assert_eq!(flags_by_subject(json), expected, "{json:#}");
}

#[test]
fn expiry_flags_with_within_and_before() {
    let dir = Dir::new("expiry");
    dir.write("expired.pem", leaf("expired", NOW - Duration::days(1)).pem());
    dir.write("sub/soon.crt", leaf("soon", NOW + Duration::days(10)).pem());
    dir.write("sub/deeper/later.der", &leaf("later", NOW + Duration::days(60)).der);
    let root = dir.0.display().to_string();

    let (code, json) = run(&[&root]);
    assert_eq!(code, 1);
    expect_flags(&json, &[("CN=expired", &["expired"]), ("CN=later", &[]), ("CN=soon", &[])]);
    assert_eq!(json["filesScanned"], 3);

    let (code, json) = run(&[&root, "--within", "30d"]);
    assert_eq!(code, 1);
    expect_flags(&json, &[("CN=expired", &["expired"]), ("CN=later", &[]), ("CN=soon", &["expires-by-deadline"])]);
    assert_eq!(json["deadline"], "2026-07-01T00:00:00Z");

    let (_, json) = run(&[&root, "--before", "2026-08-15"]);
    expect_flags(
        &json,
        &[("CN=expired", &["expired"]), ("CN=later", &["expires-by-deadline"]), ("CN=soon", &["expires-by-deadline"])],
    );

    let later = dir.0.join("sub/deeper/later.der").display().to_string();
    let (code, json) = run(&[&later, "--within", "2w"]);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["certificates"][0]["offset"], 0);
    assert_eq!(json["certificates"][0]["format"], "der");
    assert_eq!(json["certificates"][0]["daysLeft"], 60);

    assert!(Cli::try_parse_from(["scan", &root, "--within", "30d", "--before", "2026-08-15"]).is_err());
    assert!(Cli::try_parse_from(["scan", &root, "--before", "soon"]).is_err());
    assert!(Cli::try_parse_from(["scan"]).is_err());
}

#[test]
fn trust_bundles_pinning_and_required_roots() {
    let dir = Dir::new("bundles");
    let old_root = ca("Old Root", None);
    let new_root = ca("New Root", None);
    let intermediate = ca("Intermediate", Some(&old_root));
    let server = leaf("server", NOW + Duration::days(300));
    let pem = |certificates: &[&Made]| certificates.iter().map(|made| made.pem()).collect::<String>();
    dir.write("device-a/ca-bundle.pem", pem(&[&old_root, &intermediate, &server]));
    dir.write("device-b/ca-bundle.pem", pem(&[&old_root, &new_root]));
    // DER CA certificates in a binary do not make it a trust bundle.
    let mut firmware = Noise::new(5).bytes(5000);
    put(&mut firmware, 333, &intermediate.der);
    dir.write("device-c/firmware.bin", &firmware);
    let required = dir.write("required.pem", pem(&[&old_root, &new_root]));
    let devices = |name: &str| dir.0.join(name).display().to_string();

    let (code, json) = run(&[
        &devices("device-a"),
        &devices("device-b"),
        &devices("device-c"),
        "--require-roots",
        &required.display().to_string(),
    ]);
    assert_eq!(code, 1);
    let bundles = json["bundles"].as_array().expect("bundles");
    assert_eq!(bundles.len(), 2, "{json:#}");
    assert!(bundles[0]["file"].as_str().unwrap_or("").ends_with("device-a/ca-bundle.pem"));
    assert_eq!(bundles[0]["certificates"], 3);
    assert_eq!(bundles[0]["caCertificates"], 2);
    assert_eq!(
        bundles[0]["missingRoots"],
        serde_json::json!([{"subject": "CN=New Root", "sha256": new_root.sha256()}])
    );
    assert_eq!(bundles[1]["missingRoots"], serde_json::json!([]));
    let certificates = json["certificates"].as_array().expect("certificates");
    let flags: Vec<(String, String, Value)> = certificates
        .iter()
        .map(|c| {
            (
                c["file"].as_str().unwrap_or("").rsplit('/').nth(1).unwrap_or("").to_owned(),
                c["subject"].as_str().unwrap_or("").to_owned(),
                c["flags"].clone(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            ("device-a".to_owned(), "CN=Old Root".to_owned(), serde_json::json!([])),
            ("device-a".to_owned(), "CN=Intermediate".to_owned(), serde_json::json!(["pinned-intermediate"])),
            ("device-a".to_owned(), "CN=server".to_owned(), serde_json::json!(["pinned-leaf"])),
            ("device-b".to_owned(), "CN=Old Root".to_owned(), serde_json::json!([])),
            ("device-b".to_owned(), "CN=New Root".to_owned(), serde_json::json!([])),
            ("device-c".to_owned(), "CN=Intermediate".to_owned(), serde_json::json!([])),
        ]
    );
    assert_eq!(json["flagged"], 3);

    let (code, _) = run(&[&devices("device-b"), "--require-roots", &required.display().to_string()]);
    assert_eq!(code, 0);
    let garbage = dir.write("garbage.pem", "no certificates here");
    let (code, json) = run(&[&devices("device-b"), "--require-roots", &garbage.display().to_string()]);
    assert_eq!((code, json), (2, Value::Null));
}

#[test]
fn walking_directories() {
    let dir = Dir::new("walk");
    let made = leaf("walked", NOW + Duration::days(100));
    dir.write("a/b/c/cert.pem", made.pem());
    dir.write("a/empty.bin", b"");
    std::os::unix::fs::symlink(dir.0.join("a"), dir.0.join("a/b/loop")).expect("symlink");
    std::os::unix::fs::symlink(dir.0.join("a/b/c/cert.pem"), dir.0.join("a/link.pem")).expect("symlink");
    std::os::unix::fs::symlink(dir.0.join("nowhere"), dir.0.join("a/dangling")).expect("symlink");
    let mut warnings = Vec::new();
    let files = scan::collect_files(&[dir.0.join("a"), dir.0.join("a/b")], &mut warnings).expect("walks");
    let names: Vec<String> =
        files.iter().map(|file| file.strip_prefix(&dir.0).unwrap_or(file).display().to_string()).collect();
    assert_eq!(names, ["a/b/c/cert.pem", "a/empty.bin"]);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].0, dir.0.join("a/dangling"));

    let (code, json) = run(&[&dir.0.join("a").display().to_string()]);
    assert_eq!(code, 0);
    assert_eq!(json["certificates"].as_array().map(Vec::len), Some(1));
    assert_eq!(json["warnings"].as_array().map(Vec::len), Some(1));

    let (code, json) = run(&[&dir.0.join("a").display().to_string(), &dir.0.join("missing").display().to_string()]);
    assert_eq!((code, json), (2, Value::Null));
    let error = scan::scan(&[dir.0.join("missing")], &scan::Options::default(), NOW).expect_err("missing");
    assert!(error.to_string().ends_with("missing: No such file or directory (os error 2)"), "{error}");
}

#[test]
fn text_output() {
    let dir = Dir::new("text");
    dir.write("old.pem", leaf("old", NOW - Duration::days(3)).pem());
    let cli = Cli::try_parse_from(["scan", &dir.0.display().to_string()]).expect("args");
    let mut stdout = Vec::new();
    let status = scan::run(&cli.args, NOW, &mut stdout, &mut Vec::new());
    assert_eq!(status, Status::Flagged);
    let text = String::from_utf8(stdout).expect("utf-8");
    for expected in [
        "old.pem line 1 [pem]",
        "subject:    CN=old",
        "expired 3 days ago",
        "FLAGGED:    expired",
        "1 certificates in 1 files",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
}
