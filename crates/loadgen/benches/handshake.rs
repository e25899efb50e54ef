//! The in-process ceiling of mutual-TLS 1.3 handshakes with certificates like ours (ECDSA P-256
//! server and client certificates, X25519): a rustls client and server pumping bytes into each
//! other in memory, no sockets, no MQTT. Full handshakes, and resumed ones (stateless
//! session tickets, as the gateway). Both sides run on the measuring thread; `certfleet-loadgen ceiling` runs the same
//! loop and also reports the server side's share.

use certfleet_loadgen::ceiling::{Fixture, Mode, handshake};
use criterion::{Criterion, criterion_group, criterion_main};

fn handshakes(c: &mut Criterion) {
    let mut group = c.benchmark_group("mtls13_p256_x25519");
    let full = Fixture::new(Mode::Full).expect("fixture");
    group.bench_function("full_handshake", |b| b.iter(|| handshake(&full).expect("handshake")));
    let resumed = Fixture::new(Mode::Resumed).expect("fixture");
    handshake(&resumed).expect("priming handshake");
    group.bench_function("resumed_handshake", |b| b.iter(|| handshake(&resumed).expect("handshake")));
    group.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
