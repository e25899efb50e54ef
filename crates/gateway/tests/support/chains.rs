//! The gateway's built-in server chain for tests that run a real listener: one ECDSA P-256 leaf
//! for `localhost` under a fresh root named `root_name`, in both built-in slots.

use certfleet_gateway::endpoints::BuiltinChains;
use certfleet_pki::{Issuer, KeyAlgorithm};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub fn builtin_chains(root_name: &str) -> BuiltinChains {
    let now = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let root =
        Issuer::generate_root(root_name, "certfleet", time::Duration::days(30), KeyAlgorithm::EcdsaP256, now).unwrap();
    let (leaf, key) = root
        .issue_server_certificate(
            "gateway",
            &["localhost".into()],
            time::Duration::days(30),
            KeyAlgorithm::EcdsaP256,
            now,
        )
        .unwrap();
    let chain = certfleet_gateway::tls::certified_key_der(
        vec![CertificateDer::from(leaf.der().to_vec())],
        &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
    )
    .unwrap();
    BuiltinChains { default: chain.clone(), large: chain }
}
