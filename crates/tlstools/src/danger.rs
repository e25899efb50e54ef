//! **Danger:** a server-certificate verifier that accepts every chain and only records it.
//!
//! `tls-check` must see the chain a server presents, and finish the handshake, even when that
//! chain would be refused: the point of the tool is to say *why* it would be refused. So the
//! verifier here keeps the presented chain and answers "verified"; [`crate::tls_check`] then
//! verifies the recorded chain against the bundle itself ([`crate::tls_check::verify`]) and
//! reports the result. The handshake signatures (CertificateVerify, ServerKeyExchange) are
//! still checked, so the peer did hold the leaf's key.
//!
//! Never use this verifier for a connection that carries data: nothing here is trusted.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Records the chain the server presents and accepts it (see the module documentation).
#[derive(Debug)]
pub(crate) struct DangerRecordingVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    recorded: Arc<Mutex<Vec<CertificateDer<'static>>>>,
}

impl DangerRecordingVerifier {
    /// A verifier checking handshake signatures with `algorithms`, and the slot it records into.
    pub(crate) fn new(algorithms: WebPkiSupportedAlgorithms) -> (Self, Arc<Mutex<Vec<CertificateDer<'static>>>>) {
        let recorded = Arc::new(Mutex::new(Vec::new()));
        (DangerRecordingVerifier { algorithms, recorded: recorded.clone() }, recorded)
    }
}

impl ServerCertVerifier for DangerRecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates).map(|der| der.clone().into_owned()).collect();
        *self.recorded.lock().unwrap_or_else(PoisonError::into_inner) = chain;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
