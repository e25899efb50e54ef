//! libFuzzer driver of `Target::Cbor`; the body is in `crates/fuzzing` (see docs/fuzzing.md).

#![no_main]

use certfleet_fuzzing::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    Target::Cbor.run(data);
});
