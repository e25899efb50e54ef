//! The bounded fuzz step of `scripts/test`: every target replays its committed corpus
//! (`fuzz/corpus/<target>/`) and a fixed number of seeded mutations of it, on stable Rust.
//!
//! `CERTFLEET_FUZZ_MUTATIONS` (default 2000 per target; scripts/test uses 20,000) and `CERTFLEET_FUZZ_SEED` (default 1) change
//! the run: a larger count is a longer, still deterministic, run.

use std::path::PathBuf;

use certfleet_fuzzing::{Target, replay};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().map_or(default, |value| value.parse().unwrap_or_else(|_| panic!("{name}={value:?}")))
}

fn replay_target(target: Target) {
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target.name());
    let mutations = usize::try_from(setting("CERTFLEET_FUZZ_MUTATIONS", 2000)).expect("a count");
    let replayed = replay(target, &corpus, mutations, setting("CERTFLEET_FUZZ_SEED", 1));
    // A corpus exercises both sides: inputs the code accepts (so mutations start deep inside the
    // format) and inputs it refuses.
    assert!(replayed.corpus >= 3, "{}: a corpus of {} inputs", target.name(), replayed.corpus);
    assert!(replayed.corpus_accepted >= 2, "{}: {replayed:?}", target.name());
    assert!(replayed.corpus_accepted < replayed.corpus, "{}: {replayed:?}", target.name());
}

#[test]
fn mqtt_decode() {
    replay_target(Target::MqttDecode);
}

#[test]
fn certificate() {
    replay_target(Target::Certificate);
}

#[test]
fn csr() {
    replay_target(Target::Csr);
}

#[test]
fn crl() {
    replay_target(Target::Crl);
}

#[test]
fn policy() {
    replay_target(Target::Policy);
}

#[test]
fn rules() {
    replay_target(Target::Rules);
}

#[test]
fn jitp_template() {
    replay_target(Target::JitpTemplate);
}

#[test]
fn fleet_template() {
    replay_target(Target::FleetTemplate);
}

#[test]
fn sigv4() {
    replay_target(Target::Sigv4);
}

#[test]
fn cbor() {
    replay_target(Target::Cbor);
}

/// Every target has a test above and a corpus directory.
#[test]
fn every_target_has_a_corpus() {
    for target in Target::ALL {
        let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target.name());
        assert!(corpus.is_dir(), "{}", corpus.display());
    }
}
