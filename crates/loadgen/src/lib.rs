//! The pieces of `certfleet-loadgen` that its criterion benchmarks share with the binary: the
//! in-process handshake ceiling and the `/proc` readings.

pub mod ceiling;
pub mod proc_stats;
