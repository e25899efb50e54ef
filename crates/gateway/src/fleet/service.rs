//! Serves the fleet provisioning requests of one node, off the connections' tasks.
//!
//! A request is taken only if its connection has none in flight, the node is under
//! [`FleetConfig::max_in_flight`] and (for the two certificate requests) the account is under
//! [`FleetConfig::certificates_per_second`]; otherwise it is rejected at once (Throttled). Issuing
//! and registering run on the blocking pool (key generation and the registry), the
//! pre-provisioning hook through the egress policy within [`FleetConfig::hook_timeout`]. The
//! answer goes back to the asking connection only ([`Broker::reply`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use certfleet_cache::LogGate;
use certfleet_egress::{Egress, Purpose};
use certfleet_mqtt::{Properties, QoS, TopicName};
use certfleet_registry::AccountId;
use certfleet_services::Services;
use certfleet_services::rate::{Admission, WindowedRate};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::tokens::{ConnectionTokens, Pending, TokenBudget};
use super::{Operation, Rejection, Request};
use crate::broker::{Broker, Session};
use crate::fabric::Message;
use crate::model::Identity;

/// The bounds of the fleet provisioning API on one node.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    /// How long a certificate ownership token lives.
    pub token_lifetime: Duration,
    /// Tokens held on the node at once (each holds its certificate, about 1 KiB).
    pub max_tokens: usize,
    /// Requests served at once on the node (key generation and registrations).
    pub max_in_flight: usize,
    /// Certificates issued per account per second (CreateKeysAndCertificate and
    /// CreateCertificateFromCsr together) on this node.
    pub certificates_per_second: u32,
    /// How long the pre-provisioning hook has to answer (AWS: 5 s).
    pub hook_timeout: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            token_lifetime: super::tokens::DEFAULT_TOKEN_LIFETIME,
            max_tokens: 10_000,
            max_in_flight: 16,
            certificates_per_second: 20,
            hook_timeout: Duration::from_secs(5),
        }
    }
}

/// The most parameters a RegisterThing request carries (AWS names no limit; a template declares
/// few).
pub const MAX_PARAMETERS: usize = 100;
/// The longest parameter name and value (RegisterThing's API shape: 2048 and 4096).
pub const MAX_PARAMETER_NAME: usize = 2048;
pub const MAX_PARAMETER_VALUE: usize = 4096;
/// The longest CSR taken (PEM).
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// The most of a hook's answer read.
pub const MAX_HOOK_ANSWER: usize = 64 * 1024;

/// What the fleet provisioning API counted, for `/metrics`.
#[derive(Debug, Default)]
pub struct FleetCounters {
    accepted: [AtomicU64; 3],
    rejected: [AtomicU64; Rejection::ALL.len()],
}

/// The fleet provisioning API of one node.
pub struct FleetProvisioning {
    config: FleetConfig,
    services: Arc<Services>,
    egress: Arc<Egress>,
    in_flight: Arc<Semaphore>,
    budget: Arc<TokenBudget>,
    rate: Mutex<WindowedRate<AccountId>>,
    counters: FleetCounters,
    /// One log line a second per rejection kind.
    gate: Mutex<LogGate<{ Rejection::ALL.len() }>>,
}

/// The connection a request came on: what its answer and its token are bound to.
pub(crate) struct Caller {
    pub(crate) broker: Arc<Broker>,
    pub(crate) identity: Arc<Identity>,
    pub(crate) client_id: String,
    pub(crate) session: Arc<Session>,
    pub(crate) connection: u64,
    pub(crate) fleet: ConnectionFleet,
}

/// A connection's share of the fleet provisioning API: its ownership tokens (dropped with the
/// connection) and whether it has a request in flight.
#[derive(Clone, Default)]
pub(crate) struct ConnectionFleet {
    tokens: Arc<Mutex<ConnectionTokens>>,
    busy: Arc<AtomicBool>,
}

/// Marks a connection as having no request in flight when dropped.
struct Idle(Arc<AtomicBool>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A request's outcome: the accepted payload, or why not (with the detail for the log only).
type Outcome = Result<Value, (Rejection, String)>;

impl FleetProvisioning {
    pub fn new(config: FleetConfig, services: Arc<Services>, egress: Arc<Egress>) -> Arc<Self> {
        Arc::new(FleetProvisioning {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            budget: TokenBudget::new(config.max_tokens),
            rate: Mutex::new(WindowedRate::new(config.certificates_per_second, time::Duration::SECOND, 100_000)),
            config,
            services,
            egress,
            counters: FleetCounters::default(),
            gate: Mutex::new(LogGate::default()),
        })
    }

    /// Takes a request published on a request topic (the publish was authorized by the
    /// caller's policies already). Answers at once when it cannot be taken; otherwise serves it
    /// on its own task.
    pub(crate) fn submit(self: &Arc<Self>, caller: Caller, request: Request, payload: Bytes) {
        if caller.fleet.busy.swap(true, Ordering::AcqRel) {
            self.answer(
                &caller,
                &request,
                Err((Rejection::Throttled, "a request of this connection is in flight".into())),
            );
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.answer(
                &caller,
                &request,
                Err((Rejection::Throttled, "the node serves its maximum of requests".into())),
            );
            caller.fleet.busy.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            // Whatever happens to the task (a panic included), the connection is free again.
            let _idle = Idle(caller.fleet.busy.clone());
            let outcome = this.serve(&caller, &request, payload).await;
            this.answer(&caller, &request, outcome);
            drop(permit);
        });
    }

    async fn serve(&self, caller: &Caller, request: &Request, payload: Bytes) -> Outcome {
        let body = request.format.decode(&payload).map_err(|rejection| (rejection, "unreadable payload".into()))?;
        match &request.operation {
            Operation::CreateKeysAndCertificate => self.create_keys_and_certificate(caller).await,
            Operation::CreateCertificateFromCsr => {
                let csr = string_field(&body, "certificateSigningRequest", MAX_CSR_BYTES)?;
                self.create_certificate_from_csr(caller, csr).await
            }
            Operation::RegisterThing { template } => self.register_thing(caller, template, &body).await,
        }
    }

    fn admit_certificate(&self, account: &AccountId) -> Result<(), (Rejection, String)> {
        let mut rate = self.rate.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match rate.admit(account, time::OffsetDateTime::now_utc()) {
            Admission::Admitted => Ok(()),
            _ => Err((Rejection::Throttled, "the account is over its certificates per second".into())),
        }
    }

    /// Keeps an issued certificate under a new token of the caller's connection.
    fn hold(&self, caller: &Caller, issued: &Issued) -> Result<String, (Rejection, String)> {
        let slot = self
            .budget
            .slot()
            .ok_or_else(|| (Rejection::Throttled, "the node holds its maximum of ownership tokens".to_owned()))?;
        let now = Instant::now();
        let pending = Pending {
            certificate_id: issued.id.clone(),
            certificate_der: issued.der.clone(),
            certificate_pem: issued.pem.clone(),
            expires: now + self.config.token_lifetime,
            _slot: slot,
        };
        let mut tokens = caller.fleet.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.insert(pending, now).map_err(|_| (Rejection::InternalFailure, "no randomness for a token".to_owned()))
    }

    async fn create_keys_and_certificate(&self, caller: &Caller) -> Outcome {
        self.admit_certificate(&caller.identity.account)?;
        let services = self.services.clone();
        let account = caller.identity.account.clone();
        let (issued, private_key_pem) = blocking(move || backend::create_keys_and_certificate(&services, &account))
            .await?
            .map_err(|detail| (Rejection::InternalFailure, detail))?;
        let token = self.hold(caller, &issued)?;
        Ok(json!({
            "certificateId": issued.id.to_string(),
            "certificatePem": issued.pem,
            "privateKey": private_key_pem,
            "certificateOwnershipToken": token,
        }))
    }

    async fn create_certificate_from_csr(&self, caller: &Caller, csr: String) -> Outcome {
        self.admit_certificate(&caller.identity.account)?;
        let services = self.services.clone();
        let account = caller.identity.account.clone();
        let issued = blocking(move || backend::issue_from_csr(&services, &account, &csr))
            .await?
            .map_err(|detail| (Rejection::InvalidCsr, detail))?;
        let token = self.hold(caller, &issued)?;
        Ok(json!({
            "certificateOwnershipToken": token,
            "certificateId": issued.id.to_string(),
            "certificatePem": issued.pem,
        }))
    }

    async fn register_thing(&self, caller: &Caller, template_name: &str, body: &Value) -> Outcome {
        let token = string_field(body, "certificateOwnershipToken", 1024)?;
        let mut parameters = parameters(body.get("parameters"))?;
        let services = self.services.clone();
        let account = caller.identity.account.clone();
        let claim = caller.identity.certificate_id.clone();
        let name = template_name.to_owned();
        let template = blocking(move || backend::template(&services, &account, &claim, &name)).await??;
        // The token is spent from here on, whatever happens next.
        let pending = {
            let mut tokens = caller.fleet.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            tokens.take(&token, Instant::now())
        }
        .ok_or_else(|| {
            (Rejection::InvalidCertificateOwnershipToken, "no such live token on this connection".to_owned())
        })?;
        if let Some(hook) = template.hook.as_ref() {
            let overrides = self.call_hook(caller, &template, &hook.target, &pending, &parameters).await?;
            parameters.extend(overrides);
        }
        let services = self.services.clone();
        let account = caller.identity.account.clone();
        let claim = caller.identity.certificate_id.clone();
        let provisioned =
            blocking(move || backend::provision(&services, &account, &template, parameters, &pending, &claim))
                .await??;
        let mut answer = Map::new();
        answer.insert("deviceConfiguration".into(), Value::Object(provisioned.device_configuration));
        if let Some(thing_name) = provisioned.thing_name {
            answer.insert("thingName".into(), Value::String(thing_name));
        }
        Ok(Value::Object(answer))
    }

    /// POSTs AWS's pre-provisioning hook input to the template's hook and reads its answer:
    /// `allowProvisioning` must be `true`; `parameterOverrides` (strings) replace parameters.
    async fn call_hook(
        &self,
        caller: &Caller,
        template: &backend::FleetTemplate,
        hook_url: &str,
        pending: &Pending,
        parameters: &Map<String, Value>,
    ) -> Result<Map<String, Value>, (Rejection, String)> {
        let input = json!({
            "claimCertificateId": caller.identity.certificate_id.to_string(),
            "certificateId": pending.certificate_id.to_string(),
            "certificatePem": pending.certificate_pem,
            "templateArn": template.arn,
            "clientId": caller.client_id,
            "parameters": parameters,
        });
        let answer = self
            .egress
            .post_for_answer(
                self.config.hook_timeout,
                &caller.identity.account,
                Purpose::ProvisioningHook,
                hook_url,
                Bytes::from(input.to_string()),
                MAX_HOOK_ANSWER,
            )
            .await
            .map_err(|failure| (Rejection::HookFailed, format!("the hook was not answered: {failure:?}")))?;
        let answer: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| (Rejection::HookFailed, "the hook's answer is not JSON".to_owned()))?;
        match answer.get("allowProvisioning") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Err((Rejection::HookRefused, "the hook did not allow it".into())),
            _ => return Err((Rejection::HookFailed, "the hook's answer has no boolean allowProvisioning".into())),
        }
        match answer.get("parameterOverrides") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(overrides) => parameters_checked(overrides)
                .map_err(|_| (Rejection::HookFailed, "the hook's parameterOverrides are not valid".to_owned())),
        }
    }

    /// Answers the caller on `/accepted` or `/rejected`, counting and logging a rejection.
    fn answer(&self, caller: &Caller, request: &Request, outcome: Outcome) {
        let (accepted, payload) = match outcome {
            Ok(payload) => {
                let index = match request.operation {
                    Operation::CreateKeysAndCertificate => 0,
                    Operation::CreateCertificateFromCsr => 1,
                    Operation::RegisterThing { .. } => 2,
                };
                self.counters.accepted[index].fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    operation = request.operation.as_str(),
                    format = request.format.as_str(),
                    "fleet provisioning request accepted"
                );
                (true, payload)
            }
            Err((rejection, detail)) => {
                let index = Rejection::ALL.iter().position(|known| *known == rejection).unwrap_or_default();
                self.counters.rejected[index].fetch_add(1, Ordering::Relaxed);
                let admitted = self
                    .gate
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .admit(index, std::time::Instant::now());
                if let Some(suppressed) = admitted {
                    tracing::info!(
                        operation = request.operation.as_str(),
                        why = rejection.as_str(),
                        detail,
                        suppressed,
                        "fleet provisioning request rejected"
                    );
                }
                (false, rejection.payload())
            }
        };
        let Ok(topic) = TopicName::new(request.answer_topic(accepted)) else { return };
        let message = Message {
            topic,
            payload: Bytes::from(request.format.encode(&payload)),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
        };
        caller.broker.reply(&caller.identity.account, &caller.session, caller.connection, Arc::new(message));
    }

    /// The Prometheus text of the fleet provisioning counters.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP certfleet_fleet_provisioning_accepted_total Fleet provisioning requests accepted, by operation.\n# TYPE certfleet_fleet_provisioning_accepted_total counter"
        );
        for (index, operation) in
            ["create_keys_and_certificate", "create_certificate_from_csr", "register_thing"].iter().enumerate()
        {
            let count = self.counters.accepted[index].load(Ordering::Relaxed);
            let _ = writeln!(out, "certfleet_fleet_provisioning_accepted_total{{operation=\"{operation}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_fleet_provisioning_rejected_total Fleet provisioning requests rejected, by reason.\n# TYPE certfleet_fleet_provisioning_rejected_total counter"
        );
        for (index, rejection) in Rejection::ALL.iter().enumerate() {
            let count = self.counters.rejected[index].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "certfleet_fleet_provisioning_rejected_total{{reason=\"{}\"}} {count}",
                rejection.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP certfleet_fleet_provisioning_tokens Certificate ownership tokens held on this node.\n# TYPE certfleet_fleet_provisioning_tokens gauge\ncertfleet_fleet_provisioning_tokens {}",
            self.budget.held()
        );
        let _ = writeln!(
            out,
            "# HELP certfleet_fleet_provisioning_tokens_max The node's bound on ownership tokens.\n# TYPE certfleet_fleet_provisioning_tokens_max gauge\ncertfleet_fleet_provisioning_tokens_max {}",
            self.config.max_tokens
        );
    }
}

/// A certificate issued for a device and not registered yet.
pub(crate) struct Issued {
    pub(crate) id: certfleet_pki::CertificateId,
    pub(crate) der: Vec<u8>,
    pub(crate) pem: String,
}

/// What RegisterThing gave.
pub(crate) struct Provisioned {
    pub(crate) thing_name: Option<String>,
    pub(crate) device_configuration: Map<String, Value>,
}

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, (Rejection, String)> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| (Rejection::InternalFailure, format!("the blocking task failed: {error}")))
}

/// A string field of a request, at most `max` bytes.
fn string_field(body: &Value, name: &str, max: usize) -> Result<String, (Rejection, String)> {
    match body.get(name) {
        Some(Value::String(text)) if !text.is_empty() && text.len() <= max => Ok(text.clone()),
        Some(Value::String(text)) if !text.is_empty() => {
            Err((Rejection::InvalidPayload, format!("{name} is longer than {max} bytes")))
        }
        None | Some(Value::Null) | Some(Value::String(_)) if name == "certificateOwnershipToken" => {
            Err((Rejection::InvalidCertificateOwnershipToken, "no certificateOwnershipToken".into()))
        }
        _ => Err((Rejection::InvalidPayload, format!("{name} is missing or not a string"))),
    }
}

/// RegisterThing's `parameters`: an object of strings, bounded.
fn parameters(value: Option<&Value>) -> Result<Map<String, Value>, (Rejection, String)> {
    match value {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(value) => parameters_checked(value).map_err(|why| (Rejection::InvalidPayload, why)),
    }
}

fn parameters_checked(value: &Value) -> Result<Map<String, Value>, String> {
    let map = value.as_object().ok_or("parameters is not an object")?;
    if map.len() > MAX_PARAMETERS {
        return Err(format!("more than {MAX_PARAMETERS} parameters"));
    }
    for (name, value) in map {
        let Some(text) = value.as_str() else { return Err(format!("the parameter {name:?} is not a string")) };
        if name.is_empty() || name.len() > MAX_PARAMETER_NAME || text.len() > MAX_PARAMETER_VALUE {
            return Err("a parameter name or value is too long".into());
        }
    }
    Ok(map.clone())
}

/// The calls into the services, and the mapping of their refusals to the API's.
mod backend {
    use std::collections::BTreeMap;

    use certfleet_pki::CertificateId;
    pub(crate) use certfleet_services::FleetTemplate;
    use certfleet_services::{Error, TemplateRefusal};

    use super::*;

    pub(crate) fn create_keys_and_certificate(
        services: &Services,
        account: &AccountId,
    ) -> Result<(Issued, String), String> {
        let keys = services.issue_keys_and_certificate(account).map_err(|error| error.to_string())?;
        let private_key = keys.key_pair.private_key_pem().to_string();
        Ok((issued(keys.certificate), private_key))
    }

    pub(crate) fn issue_from_csr(services: &Services, account: &AccountId, csr: &str) -> Result<Issued, String> {
        services.issue_certificate_from_csr(account, csr).map(issued).map_err(|error| error.to_string())
    }

    fn issued(certificate: certfleet_services::IssuedCertificate) -> Issued {
        Issued { id: certificate.id, der: certificate.der, pem: certificate.pem }
    }

    /// The template RegisterThing provisions with, if the caller may use it: a claim certificate
    /// made by CreateProvisioningClaim provisions with its own template only.
    pub(crate) fn template(
        services: &Services,
        account: &AccountId,
        claim: &CertificateId,
        name: &str,
    ) -> Result<FleetTemplate, (Rejection, String)> {
        let template = services.fleet_template_for_provisioning(account, name).map_err(|error| match error {
            Error::TemplateNotUsable { why: TemplateRefusal::Disabled, .. } => {
                (Rejection::TemplateDisabled, format!("the template {name} is disabled"))
            }
            Error::TemplateNotUsable { why, .. } => (Rejection::TemplateNotFound, format!("{name}: {}", why.as_str())),
            other => (Rejection::InternalFailure, other.to_string()),
        })?;
        match services.provisioning_claim(account, claim) {
            Ok(Some(bound)) if bound.template_name != name => Err((
                Rejection::ClaimNotForTemplate,
                format!("the claim certificate is bound to the template {}", bound.template_name),
            )),
            Ok(_) => Ok(template),
            Err(error) => Err((Rejection::InternalFailure, error.to_string())),
        }
    }

    /// Resolves the template with the parameters and the pending certificate's ID, and applies
    /// it in one registry transaction.
    pub(crate) fn provision(
        services: &Services,
        account: &AccountId,
        template: &FleetTemplate,
        parameters: Map<String, Value>,
        pending: &Pending,
        claim: &CertificateId,
    ) -> Result<Provisioned, (Rejection, String)> {
        let parameters: BTreeMap<String, String> = parameters
            .into_iter()
            .filter_map(|(name, value)| value.as_str().map(|text| (name, text.to_owned())))
            .collect();
        let provisioning = template
            .template
            .resolve_fleet(&parameters, Some(&pending.certificate_id))
            .map_err(|error| (Rejection::InvalidParameters, error.to_string()))?;
        let outcome = services
            .apply_fleet_provisioning(account, &provisioning, &pending.certificate_der, Some(claim))
            .map_err(|error| match error {
                Error::InvalidParameters(_) | Error::InvalidRequest(_) => {
                    (Rejection::InvalidParameters, error.to_string())
                }
                Error::ResourceRegistrationFailure(_) | Error::ConflictingResourceUpdate(_) => {
                    (Rejection::RegistrationFailed, error.to_string())
                }
                other => (Rejection::InternalFailure, other.to_string()),
            })?;
        Ok(Provisioned {
            thing_name: outcome.thing_name.map(|name| name.to_string()),
            device_configuration: outcome
                .device_configuration
                .into_iter()
                .map(|(key, value)| (key, Value::String(value)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fields_are_bounded() {
        assert!(string_field(&json!({"a": "x"}), "a", 1).is_ok());
        assert_eq!(string_field(&json!({"a": "xx"}), "a", 1).unwrap_err().0, Rejection::InvalidPayload);
        assert_eq!(string_field(&json!({"a": 1}), "a", 1).unwrap_err().0, Rejection::InvalidPayload);
        assert_eq!(
            string_field(&json!({}), "certificateOwnershipToken", 10).unwrap_err().0,
            Rejection::InvalidCertificateOwnershipToken
        );
        assert_eq!(
            string_field(&json!({"certificateOwnershipToken": ""}), "certificateOwnershipToken", 10).unwrap_err().0,
            Rejection::InvalidCertificateOwnershipToken
        );
        assert!(parameters(None).unwrap().is_empty());
        assert_eq!(parameters(Some(&json!({"SerialNumber": "1"}))).unwrap().len(), 1);
        for bad in [
            json!([]),
            json!({"n": 1}),
            json!({"": "x"}),
            json!({"v": "x".repeat(MAX_PARAMETER_VALUE + 1)}),
            Value::Object((0..=MAX_PARAMETERS).map(|n| (n.to_string(), json!("x"))).collect()),
        ] {
            assert_eq!(parameters(Some(&bad)).unwrap_err().0, Rejection::InvalidPayload, "{bad}");
        }
    }
}
