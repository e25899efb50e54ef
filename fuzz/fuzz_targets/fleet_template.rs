//! libFuzzer driver of `Target::FleetTemplate`; the body is in `crates/fuzzing` (see docs/fuzzing.md).

#![no_main]

use certfleet_fuzzing::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    Target::FleetTemplate.run(data);
});
