//! The pieces of `certfleet-loadgen` that its criterion benchmarks share with the binary: the
//! in-process handshake ceiling and the `/proc` readings; and the audit scenario, which its tests
//! run small.

pub mod audit;
pub mod ceiling;
pub mod proc_stats;
