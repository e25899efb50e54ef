//! The agent: connect with the right credentials, keep the session up (backoff between
//! attempts), and carry out the rotation protocol, committing each step to the credentials
//! directory before acting on it. What to do is decided in [`crate::rotation`]; this module
//! does the IO.

use std::time::Duration;

use certfleet_mqtt::{PacketId, TopicFilter};
use certfleet_pki::CertificateId;
use rcgen::PublicKeyData as _;
use rustls_pki_types::{ServerName, UnixTime};
use tokio::sync::{mpsc, watch};

use crate::backoff::random_unit;
use crate::config::{Config, KeyAlgorithm, Step};
use crate::connection::{ConnectError, Identity, Incoming, Session, Settings};
use crate::error::Error;
use crate::rotation::{self, CertificateDecision, Credential, CsrDecision, ErrorCode, Report, Topics};
use crate::store::{Slot, State, Store};

/// What an agent reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session is up (connected and subscribed) with this certificate.
    Connected { certificate_id: CertificateId, credential: Credential },
    /// The session ended, or a connection attempt failed; the agent retries after a backoff.
    Disconnected { reason: String },
    /// A `csr_req` started a rotation: a new key is made.
    RotationStarted,
    /// A CSR was published on `csr_res` (also for a duplicated `csr_req`).
    CsrSent,
    /// A new certificate passed its checks and is stored as pending; the agent reconnects with it.
    CertificateInstalled { certificate_id: CertificateId },
    /// `crt_ack` was delivered from the new session and the new certificate is now current.
    Acked { certificate_id: CertificateId },
    /// The rotation failed (a bad certificate, or the new one refused at connect); the agent
    /// uses the old credentials and reports the reason on `crt_err`.
    Failed { reason: String },
}

/// One device agent.
pub struct Agent {
    config: Config,
    store: Store,
    topics: Topics,
    filters: Vec<TopicFilter>,
    settings: Settings,
    events: mpsc::UnboundedSender<Event>,
}

/// How a session ended.
enum Leave {
    Shutdown,
    /// A certificate was installed: reconnect at once (with it).
    Rotate,
    /// The session was lost: reconnect after a backoff.
    Lost(String),
}

/// What handling a message did.
enum Handled {
    Continue,
    /// A `crt_err` was published for the committed `unreported_error`.
    Reported(PacketId),
    Rotate,
    Lost(String),
}

impl Agent {
    /// An agent and the receiver of its events. Checks the settings and opens the credentials
    /// directory (creating it, 0700, when missing); connects nothing yet.
    pub fn new(config: Config) -> Result<(Agent, mpsc::UnboundedReceiver<Event>), Error> {
        let bad = |reason: String| Error::Config { reason };
        if config.client_id.is_empty() || config.client_id.contains(['/', '+', '#']) {
            return Err(bad(format!(
                "client id {:?} cannot be a topic level (empty, or holds / + #)",
                config.client_id
            )));
        }
        let topics = Topics::for_client(&config.client_id);
        let filters = [&topics.csr_req, &topics.crt_req]
            .into_iter()
            .map(|topic| TopicFilter::new(topic.clone()).map_err(|error| bad(format!("topic {topic}: {error}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|error| bad(format!("server name {:?}: {error}", config.server_name)))?;
        let settings = Settings {
            endpoint: config.endpoint.clone(),
            server_name,
            roots: config.server_roots.roots(),
            alpn: config.alpn,
            version: config.mqtt_version.protocol(),
            client_id: config.client_id.clone(),
            keep_alive: config.keep_alive.max(Duration::from_secs(1)),
            connect_timeout: config.connect_timeout,
        };
        let store = Store::open(&config.credentials_dir)?;
        let (events, receiver) = mpsc::unbounded_channel();
        Ok((Agent { config, store, topics, filters, settings, events }, receiver))
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): recovers from the disk,
    /// connects, serves the rotation protocol, reconnects. Returns an error only when it cannot
    /// go on (unreadable current credentials or directory) or a test knob stopped it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let mut state = self.store.load()?;
        let removed = self.store.remove_leftovers(&state)?;
        if !removed.is_empty() {
            tracing::info!(?removed, "removed the leftovers of an interrupted step");
        }
        let mut attempt: u32 = 0;
        // Attempts in a row with the pending certificate that got no answer, and the last reason.
        let mut unanswered_pending: u32 = 0;
        let mut last_pending_error = String::new();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let credential = rotation::first_choice(&state, unanswered_pending);
            let identity = match self.identity(&state, credential) {
                Ok(identity) => identity,
                Err(reason) if credential == Credential::Pending => {
                    let report = Report::new(
                        ErrorCode::CredentialsUnusable,
                        format!("the new credentials do not load: {reason}"),
                        pending_certificate(&state),
                    );
                    state = self.abandon(&state, report)?;
                    continue;
                }
                Err(reason) => return Err(Error::Credentials { reason }),
            };
            let opened = tokio::select! {
                opened = Session::open(&self.settings, &identity, &self.filters) => opened,
                _ = shutdown.changed() => return Ok(()),
            };
            let reason = match opened {
                Ok(session) => {
                    attempt = 0;
                    if credential == Credential::Current && rotation::probe_abandons_pending(&state) {
                        let reason = format!(
                            "the new certificate got no answer in {unanswered_pending} attempts while the old one connects: {last_pending_error}"
                        );
                        let report = Report::new(ErrorCode::Unreachable, reason, pending_certificate(&state));
                        state = self.abandon(&state, report)?;
                    }
                    unanswered_pending = 0;
                    match self.serve(session, credential, &mut state, &mut shutdown).await? {
                        Leave::Shutdown => return Ok(()),
                        Leave::Rotate => continue,
                        Leave::Lost(reason) => reason,
                    }
                }
                Err(ConnectError::Refused(reason)) if credential == Credential::Pending => {
                    tracing::warn!(cert = %identity.certificate_id, %reason, "the new certificate was refused; back to the old one");
                    let reason = format!("the new certificate was refused at connect: {reason}");
                    let report = Report::new(ErrorCode::ConnectRefused, reason, pending_certificate(&state));
                    state = self.abandon(&state, report)?;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(cert = %identity.certificate_id, ?credential, %error, "connection failed");
                    match credential {
                        Credential::Pending => {
                            unanswered_pending = unanswered_pending.saturating_add(1);
                            last_pending_error = error.to_string();
                        }
                        // The probe failed too: the network, not the new certificate.
                        Credential::Current => unanswered_pending = 0,
                    }
                    error.to_string()
                }
            };
            self.emit(Event::Disconnected { reason });
            let delay = self.config.backoff.delay(attempt, random_unit());
            attempt = attempt.saturating_add(1);
            tracing::debug!(?delay, attempt, "waiting before reconnecting");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Serves one session until it ends.
    async fn serve(
        &self,
        mut session: Session,
        credential: Credential,
        state: &mut State,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Leave, Error> {
        let certificate_id = session.certificate_id().clone();
        tracing::info!(cert = %certificate_id, ?credential, client_id = %self.config.client_id, "connected");
        self.emit(Event::Connected { certificate_id: certificate_id.clone(), credential });
        let mut ack_in_flight = None;
        if credential == Credential::Pending {
            if let Some(next) = rotation::proven(state) {
                self.store.commit(&next)?;
                *state = next;
            }
            self.crash_point(Step::NewSessionConnected)?;
            match self.publish_ack(&mut session, &certificate_id).await {
                Ok(packet_id) => ack_in_flight = Some(packet_id),
                Err(reason) => return Ok(Leave::Lost(reason)),
            }
            self.crash_point(Step::AckSent)?;
        }
        let mut error_in_flight = None;
        if let Some(report) = state.unreported_error.clone() {
            match self.publish_error(&mut session, &report).await {
                Ok(packet_id) => error_in_flight = Some(packet_id),
                Err(reason) => return Ok(Leave::Lost(reason)),
            }
        }
        loop {
            let incoming = tokio::select! {
                incoming = session.next() => incoming,
                _ = shutdown.changed() => {
                    session.close().await;
                    return Ok(Leave::Shutdown);
                }
            };
            let handled = match incoming {
                Err(reason) => Handled::Lost(reason),
                Ok(Incoming::Delivered(packet_id)) if ack_in_flight == Some(packet_id) => {
                    ack_in_flight = None;
                    if let Some((next, old)) = rotation::promoted(state) {
                        self.store.commit(&next)?;
                        *state = next;
                        self.store.remove_slot(&old);
                        tracing::info!(cert = %certificate_id, "rotation complete: the new certificate is current");
                        self.emit(Event::Acked { certificate_id: certificate_id.clone() });
                    }
                    Handled::Continue
                }
                Ok(Incoming::Delivered(packet_id)) if error_in_flight == Some(packet_id) => {
                    error_in_flight = None;
                    let next = State { unreported_error: None, ..state.clone() };
                    self.store.commit(&next)?;
                    *state = next;
                    Handled::Continue
                }
                Ok(Incoming::Delivered(_)) => Handled::Continue,
                Ok(Incoming::Message { topic, .. }) if topic == self.topics.csr_req => {
                    self.on_csr_request(&mut session, state).await?
                }
                Ok(Incoming::Message { topic, payload }) if topic == self.topics.crt_req => {
                    self.on_certificate_request(&mut session, state, &payload).await?
                }
                Ok(Incoming::Message { topic, .. }) => {
                    tracing::debug!(%topic, "ignoring a message");
                    Handled::Continue
                }
            };
            match handled {
                Handled::Continue => {}
                Handled::Reported(packet_id) => error_in_flight = Some(packet_id),
                Handled::Rotate => {
                    session.close().await;
                    return Ok(Leave::Rotate);
                }
                Handled::Lost(reason) => return Ok(Leave::Lost(reason)),
            }
        }
    }

    async fn on_csr_request(&self, session: &mut Session, state: &mut State) -> Result<Handled, Error> {
        let (slot, key) = match rotation::on_csr_request(state) {
            CsrDecision::NewKey { slot, next } => {
                tracing::info!(slot = slot.as_str(), algorithm = self.config.key_algorithm.name(), "rotation started");
                self.emit(Event::RotationStarted);
                let algorithm = self.config.key_algorithm;
                let key = tokio::task::spawn_blocking(move || generate_key(algorithm))
                    .await
                    .map_err(|error| Error::Key { reason: error.to_string() })??;
                self.store.create_slot(&slot)?;
                self.store.write_key(&slot, &key.serialize_pem())?;
                self.store.commit(&next)?;
                *state = next;
                self.crash_point(Step::KeyStored)?;
                (slot, key)
            }
            CsrDecision::SameKey { slot } => {
                tracing::info!(slot = slot.as_str(), "csr_req during a rotation: sending the csr of the same key");
                let loaded = self.store.read_key(&slot).ok().and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok());
                match loaded {
                    Some(key) => (slot, key),
                    None => {
                        let report = Report::new(ErrorCode::KeyUnavailable, "the pending key does not load", None);
                        return self.fail(session, state, report).await;
                    }
                }
            }
        };
        let csr = build_csr(&key, &self.config.client_id)?;
        let payload = serde_json::json!({ "CSR": csr }).to_string().into_bytes();
        if let Err(reason) = session.publish(&self.topics.csr_res, payload).await {
            return Ok(Handled::Lost(reason));
        }
        tracing::info!(slot = slot.as_str(), "csr sent");
        self.emit(Event::CsrSent);
        self.crash_point(Step::CsrSent)?;
        Ok(Handled::Continue)
    }

    async fn on_certificate_request(
        &self,
        session: &mut Session,
        state: &mut State,
        payload: &[u8],
    ) -> Result<Handled, Error> {
        let request = match rotation::parse_certificate_request(payload) {
            Ok(request) => request,
            Err(problem) => {
                let report = Report::new(problem.code(), problem.to_string(), None);
                return Ok(self.report(session, &report).await);
            }
        };
        let offered = first_certificate_id(&request.certificate_pem);
        let decision = match &offered {
            Some(offered) => rotation::on_certificate_request(state, session.certificate_id(), offered),
            None => match &state.pending {
                Some(crate::store::Pending::Key { slot }) => CertificateDecision::Check { slot: slot.clone() },
                _ => CertificateDecision::Refuse(rotation::Refusal::NoRotation),
            },
        };
        let slot = match decision {
            CertificateDecision::ReAck => {
                let certificate_id = session.certificate_id().clone();
                tracing::info!(cert = %certificate_id, "crt_req for the certificate in use: acknowledging again");
                return Ok(match self.publish_ack(session, &certificate_id).await {
                    Ok(_) => Handled::Continue,
                    Err(reason) => Handled::Lost(reason),
                });
            }
            CertificateDecision::Refuse(refusal) => {
                tracing::warn!(reason = %refusal, "crt_req refused");
                let report = Report::new(refusal.code(), refusal.to_string(), offered.clone());
                return Ok(self.report(session, &report).await);
            }
            CertificateDecision::Check { slot } => slot,
        };
        let key = match self.store.read_key(&slot).ok().and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok()) {
            Some(key) => key,
            None => {
                let report = Report::new(ErrorCode::KeyUnavailable, "the pending key does not load", offered.clone());
                return self.fail(session, state, report).await;
            }
        };
        let checked = match rotation::check_certificate(
            &request,
            &key.subject_public_key_info(),
            &self.config.device_roots,
            UnixTime::now(),
        ) {
            Ok(checked) => checked,
            Err(problem) => {
                let report = Report::new(problem.code(), problem.to_string(), offered.clone());
                return self.fail(session, state, report).await;
            }
        };
        self.store.write_certificate(&slot, &checked.pem)?;
        let next = rotation::installed(state, &slot, &checked.certificate_id);
        self.store.commit(&next)?;
        *state = next;
        tracing::info!(cert = %checked.certificate_id, slot = slot.as_str(), "new certificate installed; reconnecting with it");
        self.emit(Event::CertificateInstalled { certificate_id: checked.certificate_id });
        self.crash_point(Step::CertificateStored)?;
        Ok(Handled::Rotate)
    }

    /// Abandons the rotation (committed, with the report) and reports it now.
    async fn fail(&self, session: &mut Session, state: &mut State, report: Report) -> Result<Handled, Error> {
        *state = self.abandon(state, report.clone())?;
        Ok(self.report(session, &report).await)
    }

    /// Commits the abandoned state (the report kept for `crt_err`) and removes the pending slot.
    fn abandon(&self, state: &State, report: Report) -> Result<State, Error> {
        let reason = report.reason.clone();
        tracing::warn!(%reason, code = report.code.map(ErrorCode::as_str), "rotation failed; keeping the old credentials");
        let (next, gone) = rotation::abandoned(state, report);
        self.store.commit(&next)?;
        if let Some(slot) = gone {
            self.store.remove_slot(&slot);
        }
        self.emit(Event::Failed { reason });
        Ok(next)
    }

    async fn report(&self, session: &mut Session, report: &Report) -> Handled {
        match self.publish_error(session, report).await {
            Ok(packet_id) => Handled::Reported(packet_id),
            Err(reason) => Handled::Lost(reason),
        }
    }

    async fn publish_ack(&self, session: &mut Session, certificate_id: &CertificateId) -> Result<PacketId, String> {
        let payload = serde_json::json!({ "certificateId": certificate_id.as_str() }).to_string().into_bytes();
        let packet_id = session.publish(&self.topics.crt_ack, payload).await?;
        tracing::info!(cert = %certificate_id, "crt_ack sent");
        Ok(packet_id)
    }

    async fn publish_error(&self, session: &mut Session, report: &Report) -> Result<PacketId, String> {
        let payload = report.payload().to_string().into_bytes();
        let packet_id = session.publish(&self.topics.crt_err, payload).await?;
        tracing::info!(reason = %report.reason, code = report.code.map(ErrorCode::as_str), "crt_err sent");
        Ok(packet_id)
    }

    /// The credentials of `credential` in `state`.
    fn identity(&self, state: &State, credential: Credential) -> Result<Identity, String> {
        let slot: &Slot = match (credential, &state.pending) {
            (Credential::Pending, Some(pending)) => pending.slot(),
            _ => &state.current,
        };
        let described = |error: Error| {
            let source = std::error::Error::source(&error).map(|source| format!(": {source}")).unwrap_or_default();
            format!("{error} in {}{source}", self.store.slot_dir(slot).display())
        };
        let certificate = self.store.read_certificate(slot).map_err(described)?;
        let key = self.store.read_key(slot).map_err(described)?;
        Identity::from_pem(&certificate, &key)
    }

    fn crash_point(&self, step: Step) -> Result<(), Error> {
        match self.config.crash_after == Some(step) {
            true => Err(Error::InjectedCrash(step)),
            false => Ok(()),
        }
    }

    fn emit(&self, event: Event) {
        // Nobody listening is fine: the binary does not read events.
        let _ = self.events.send(event);
    }
}

/// A new key of the configured kind.
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<rcgen::KeyPair, Error> {
    let made = match algorithm {
        KeyAlgorithm::P256 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        KeyAlgorithm::Rsa3072 => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072),
    };
    made.map_err(|error| Error::Key { reason: error.to_string() })
}

/// A CSR (PEM) for `key` with subject CN=`client_id`.
pub fn build_csr(key: &rcgen::KeyPair, client_id: &str) -> Result<String, Error> {
    let bad = |error: rcgen::Error| Error::Key { reason: error.to_string() };
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, client_id);
    params.serialize_request(key).map_err(bad)?.pem().map_err(bad)
}

/// The pending certificate's ID, if one is installed.
fn pending_certificate(state: &State) -> Option<CertificateId> {
    match &state.pending {
        Some(crate::store::Pending::Certificate { certificate_id, .. }) => Some(certificate_id.clone()),
        Some(crate::store::Pending::Key { .. }) | None => None,
    }
}

/// The ID of the first certificate of a PEM text, if its first block reads.
fn first_certificate_id(pem: &str) -> Option<CertificateId> {
    use rustls_pki_types::pem::PemObject as _;
    let first = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()?;
    Some(CertificateId::of_der(&first))
}
