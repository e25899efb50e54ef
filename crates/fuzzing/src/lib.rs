//! The fuzz targets of certfleet, as plain functions over bytes, so that one body serves two
//! drivers:
//!
//! - libFuzzer (`fuzz/`, its own workspace: `scripts/fuzz <target> <seconds>`), coverage-guided,
//!   for long runs;
//! - [`replay`], on stable Rust under `cargo test`: every file of the committed corpus
//!   (`fuzz/corpus/<target>/`) and a fixed number of seeded mutations of them, so that the
//!   targets keep building and running in CI (see `tests/replay.rs` and `docs/fuzzing.md`).
//!
//! A target must never panic: whatever the bytes, the code under test answers with a value or an
//! error. Where a target can check more than "no panic" (a decoded packet re-encodes to itself, a
//! parsed certificate's ID is the SHA-256 of its bytes), it asserts it.

mod mutate;
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::Path;

pub use mutate::Mutator;

/// Every fuzz target. The name (see [`Target::name`]) is the libFuzzer binary's and the corpus
/// directory's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The MQTT decoder, as a stream of packets in both protocol versions.
    MqttDecode,
    /// `Certificate::from_der` / `from_pem` and everything read from a parsed certificate.
    Certificate,
    /// `Csr::from_der` / `from_pem` (key rules and signature check included).
    Csr,
    /// `Crl::parse` and the lookups and signature check on a parsed list.
    Crl,
    /// `Policy::parse` and `evaluate` for every action.
    Policy,
    /// `Rule::parse` and `Rule::evaluate` with its `Limits`.
    Rules,
    /// `Template::parse` (JITP) and `Template::resolve` for a fixed device certificate.
    JitpTemplate,
    /// `Template::parse_as` (FLEET_PROVISIONING) and `Template::resolve_fleet` with the
    /// request's parameters (the input's lines after the first NUL, `name=value`).
    FleetTemplate,
    /// SigV4: `parse_request_auth`, `parse_authorization` and `canonical_request`.
    Sigv4,
    /// The fleet provisioning API's CBOR decoder (`certfleet_cbor::decode`); what it reads
    /// re-encodes and reads back to the same value.
    Cbor,
}

impl Target {
    /// Every target, in the order `scripts/fuzz` and the replay run them.
    pub const ALL: [Target; 10] = [
        Target::MqttDecode,
        Target::Certificate,
        Target::Csr,
        Target::Crl,
        Target::Policy,
        Target::Rules,
        Target::JitpTemplate,
        Target::FleetTemplate,
        Target::Sigv4,
        Target::Cbor,
    ];

    /// The target's name: its libFuzzer binary and its corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            Target::MqttDecode => "mqtt_decode",
            Target::Certificate => "certificate",
            Target::Csr => "csr",
            Target::Crl => "crl",
            Target::Policy => "policy",
            Target::Rules => "rules",
            Target::JitpTemplate => "jitp_template",
            Target::FleetTemplate => "fleet_template",
            Target::Sigv4 => "sigv4",
            Target::Cbor => "cbor",
        }
    }

    /// Runs the target on one input: whether the code under test accepted it (parsed it, decoded
    /// a packet). Panics only when the code under test misbehaves.
    pub fn run(self, data: &[u8]) -> bool {
        match self {
            Target::MqttDecode => targets::mqtt_decode(data),
            Target::Certificate => targets::certificate(data),
            Target::Csr => targets::csr(data),
            Target::Crl => targets::crl(data),
            Target::Policy => targets::policy(data),
            Target::Rules => targets::rules(data),
            Target::JitpTemplate => targets::jitp_template(data),
            Target::FleetTemplate => targets::fleet_template(data),
            Target::Sigv4 => targets::sigv4(data),
            Target::Cbor => targets::cbor(data),
        }
    }
}

/// What a [`replay`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Corpus files run as they are.
    pub corpus: usize,
    /// Of those, the ones the code under test accepted.
    pub corpus_accepted: usize,
    /// Mutated inputs run.
    pub mutations: usize,
}

/// Runs `target` on every file in `corpus_dir`, then on `mutations` inputs made from them by a
/// [`Mutator`] seeded with `seed`. On a panic, prints the input (hex) before passing the panic on,
/// so that it can be added to the corpus and to a regression test.
///
/// # Panics
///
/// When the corpus directory cannot be read or is empty, and when the target panics.
pub fn replay(target: Target, corpus_dir: &Path, mutations: usize, seed: u64) -> Replayed {
    let mut corpus: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir)
        .unwrap_or_else(|error| panic!("{}: {error}", corpus_dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (path.display().to_string(), bytes)
        })
        .collect();
    assert!(!corpus.is_empty(), "{}: the corpus is empty", corpus_dir.display());
    // read_dir's order is the file system's: sort, so that a seed always means the same inputs.
    corpus.sort();
    let corpus_accepted = corpus.iter().filter(|(path, bytes)| run_reporting(target, bytes, path)).count();
    let inputs: Vec<Vec<u8>> = corpus.into_iter().map(|(_, bytes)| bytes).collect();
    let mut mutator = Mutator::new(seed);
    for index in 0..mutations {
        let input = mutator.mutate(&inputs);
        run_reporting(target, &input, &format!("mutation {index} (seed {seed})"));
    }
    Replayed { corpus: inputs.len(), corpus_accepted, mutations }
}

fn run_reporting(target: Target, data: &[u8], origin: &str) -> bool {
    match catch_unwind(AssertUnwindSafe(|| target.run(data))) {
        Ok(accepted) => accepted,
        Err(panic) => {
            eprintln!("{}: {origin} panicked; input ({} bytes, hex):\n{}", target.name(), data.len(), hex(data));
            resume_unwind(panic);
        }
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|byte| format!("{byte:02x}")).collect()
}
