//! The AWS IoT-compatible control plane over HTTPS: restJson1 routes, SigV4 authentication,
//! AWS error shapes.
//!
//! **Architecture Invariant:** this is the only crate that knows the AWS wire format (paths,
//! member names, timestamp encoding, error headers). It converts wire shapes to the typed calls
//! of `certfleet-services` by hand and back, and maps `certfleet_services::Error` to AWS errors
//! in one place (`error.rs`).
//!
//! **API Boundary:** the HTTP API itself, which the stock AWS CLI and SDKs drive.

mod acm;
mod audit;
mod auth;
mod certificates;
mod domains;
mod error;
mod groups;
mod listener;
mod policies;
mod provisioning;
mod rotation;
mod things;
mod topic_rules;
mod wire;
mod wire_groups;
mod wire_things;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use certfleet_services::{Caller, Services};
use http::{HeaderValue, StatusCode};

pub use error::ApiError;
pub use listener::{Limits, ListenerMetrics, serve};

/// Settings of the HTTP API.
#[derive(Clone, Debug)]
pub struct Config {
    /// The region requests must be signed for.
    pub region: String,
    /// How far a request's signing time may be from the server's clock (AWS: 5 minutes).
    pub max_clock_skew: time::Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The listener's connection budget and deadlines.
    pub limits: Limits,
    /// Where the destination confirmations go out (and which http URLs are accepted).
    pub egress: Arc<certfleet_egress::Egress>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region: "us-east-1".into(),
            max_clock_skew: time::Duration::minutes(5),
            max_body_bytes: 512 * 1024,
            limits: Limits::default(),
            egress: Arc::new(certfleet_egress::Egress::default()),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    pub services: Arc<Services>,
    pub config: Config,
    /// This node's gateway, for the operator view (its sessions, its endpoints' chains); none
    /// when no gateway runs here.
    pub data_plane: Option<Arc<dyn certfleet_services::DataPlane>>,
    keys: Arc<auth::KeyCache>,
    listener_metrics: Arc<ListenerMetrics>,
}

/// The router with every operation, behind SigV4 authentication and request logging.
/// `data_plane` is this node's gateway (`certfleet_gateway::Node::data_plane`), if one runs here.
pub fn router(
    services: Arc<Services>,
    config: Config,
    listener_metrics: Arc<ListenerMetrics>,
    data_plane: Option<Arc<dyn certfleet_services::DataPlane>>,
) -> Router {
    use certificates as c;
    use policies as p;
    use things as t;
    let keys = auth::KeyCache::following(services.clone(), config.limits.signing_key_cache, listener_metrics.clone());
    let state = Arc::new(AppState { services, config, data_plane, keys, listener_metrics });
    Router::new()
        .route("/registrationcode", get(c::get_registration_code).delete(c::delete_registration_code))
        .route("/cacertificate", post(c::register_ca_certificate))
        .route(
            "/cacertificate/{id}",
            get(c::describe_ca_certificate).put(c::update_ca_certificate).delete(c::delete_ca_certificate),
        )
        .route("/cacertificates", get(c::list_ca_certificates))
        .route("/certificates-by-ca/{id}", get(c::list_certificates_by_ca))
        .route("/keys-and-certificate", post(c::create_keys_and_certificate))
        .route("/certificates", post(c::create_certificate_from_csr).get(c::list_certificates))
        .route("/certificate/register", post(c::register_certificate))
        .route("/certificate/register-no-ca", post(c::register_certificate_without_ca))
        .route(
            "/certificates/{id}",
            get(c::describe_certificate).put(c::update_certificate).delete(c::delete_certificate),
        )
        .route("/transfer-certificate/{id}", patch(c::transfer_certificate))
        .route("/accept-certificate-transfer/{id}", patch(c::accept_certificate_transfer))
        .route("/reject-certificate-transfer/{id}", patch(c::reject_certificate_transfer))
        .route("/cancel-certificate-transfer/{id}", patch(c::cancel_certificate_transfer))
        .route("/endpoint", get(c::describe_endpoint))
        .route("/certfleet/sessions", get(c::list_connected_clients))
        .route("/", post(acm::dispatch))
        .route("/domainConfigurations", get(domains::list))
        .route(
            "/domainConfigurations/{name}",
            post(domains::create).get(domains::describe).put(domains::update).delete(domains::delete),
        )
        .route("/certfleet/domain-configurations/{name}/chain", put(domains::set_chain))
        .route("/certfleet/domain-configurations/{name}/next-chain", put(domains::set_next_chain))
        .route("/certfleet/domain-configurations/{name}/migrate", post(domains::migrate))
        .route("/certfleet/domain-configurations/{name}/revert", post(domains::revert))
        .route("/certfleet/domain-configurations/{name}/finish", post(domains::finish))
        .route("/certfleet/domain-configurations/{name}/migration", get(domains::status))
        .route("/certfleet/test-endpoint-results", get(domains::test_results))
        .route("/policies", get(p::list_policies))
        .route("/policies/{policyName}", post(p::create_policy).get(p::get_policy).delete(p::delete_policy))
        .route("/policies/{policyName}/version", post(p::create_policy_version).get(p::list_policy_versions))
        .route(
            "/policies/{policyName}/version/{policyVersionId}",
            get(p::get_policy_version).patch(p::set_default_policy_version).delete(p::delete_policy_version),
        )
        .route("/target-policies/{policyName}", put(p::attach_policy).post(p::detach_policy))
        .route("/attached-policies/{target}", post(p::list_attached_policies))
        .route("/policy-targets/{policyName}", post(p::list_targets_for_policy))
        .route("/effective-policies", post(p::get_effective_policies))
        .route("/principal-policies", get(p::list_principal_policies))
        .route("/principal-policies/{policyName}", put(p::attach_principal_policy).delete(p::detach_principal_policy))
        .route("/policy-principals", get(p::list_policy_principals))
        .route("/things", get(t::list_things).post(provisioning::register_thing))
        .route(
            "/things/{thingName}",
            post(t::create_thing).get(t::describe_thing).patch(t::update_thing).delete(t::delete_thing),
        )
        .route(
            "/things/{thingName}/principals",
            put(t::attach_thing_principal).delete(t::detach_thing_principal).get(t::list_thing_principals),
        )
        .route("/things/{thingName}/principals-v2", get(t::list_thing_principals_v2))
        .route("/things/{thingName}/thing-groups", get(groups::list_thing_groups_for_thing))
        .route("/thing-types", get(groups::list_thing_types))
        .route(
            "/thing-types/{thingTypeName}",
            post(groups::create_thing_type)
                .get(groups::describe_thing_type)
                .patch(groups::update_thing_type)
                .delete(groups::delete_thing_type),
        )
        .route("/thing-types/{thingTypeName}/deprecate", post(groups::deprecate_thing_type))
        .route("/thing-groups", get(groups::list_thing_groups))
        .route(
            "/thing-groups/{thingGroupName}",
            post(groups::create_thing_group)
                .get(groups::describe_thing_group)
                .patch(groups::update_thing_group)
                .delete(groups::delete_thing_group),
        )
        .route("/thing-groups/addThingToThingGroup", put(groups::add_thing_to_thing_group))
        .route("/thing-groups/removeThingFromThingGroup", put(groups::remove_thing_from_thing_group))
        .route("/thing-groups/updateThingGroupsForThing", put(groups::update_thing_groups_for_thing))
        .route("/thing-groups/{thingGroupName}/things", get(groups::list_things_in_thing_group))
        .route("/principals/things", get(t::list_principal_things))
        .route("/principals/things-v2", get(t::list_principal_things_v2))
        .route(
            "/provisioning-templates",
            post(provisioning::create_provisioning_template).get(provisioning::list_provisioning_templates),
        )
        .route(
            "/provisioning-templates/{templateName}",
            get(provisioning::describe_provisioning_template)
                .patch(provisioning::update_provisioning_template)
                .delete(provisioning::delete_provisioning_template),
        )
        .route(
            "/provisioning-templates/{templateName}/versions",
            post(provisioning::create_provisioning_template_version)
                .get(provisioning::list_provisioning_template_versions),
        )
        .route(
            "/provisioning-templates/{templateName}/versions/{versionId}",
            get(provisioning::describe_provisioning_template_version)
                .delete(provisioning::delete_provisioning_template_version),
        )
        .route(
            "/provisioning-templates/{templateName}/provisioning-claim",
            post(provisioning::create_provisioning_claim),
        )
        .route(
            "/audit/configuration",
            get(audit::describe_account_audit_configuration)
                .patch(audit::update_account_audit_configuration)
                .delete(audit::delete_account_audit_configuration),
        )
        .route("/audit/tasks", post(audit::start_on_demand_audit_task).get(audit::list_audit_tasks))
        .route("/audit/tasks/{taskId}", get(audit::describe_audit_task))
        .route("/audit/tasks/{taskId}/cancel", put(audit::cancel_audit_task))
        .route("/audit/findings", post(audit::list_audit_findings))
        .route("/audit/findings/{findingId}", get(audit::describe_audit_finding))
        .route("/audit/scheduledaudits", get(audit::list_scheduled_audits))
        .route(
            "/audit/scheduledaudits/{scheduledAuditName}",
            post(audit::create_scheduled_audit)
                .get(audit::describe_scheduled_audit)
                .patch(audit::update_scheduled_audit)
                .delete(audit::delete_scheduled_audit),
        )
        .route("/certfleet/rotations", post(rotation::start).get(rotation::list))
        .route("/certfleet/rotations/{id}", get(rotation::describe))
        .route("/certfleet/rotations/{id}/retry", post(rotation::retry))
        .route("/certfleet/rotation-campaigns/{id}", get(rotation::describe_campaign))
        .route("/certfleet/crls", get(audit::list_crls))
        .route("/certfleet/crls/{crlName}", put(audit::put_crl).delete(audit::delete_crl))
        .route("/rules", get(topic_rules::list_topic_rules))
        .route(
            "/rules/{ruleName}",
            post(topic_rules::create_topic_rule)
                .get(topic_rules::get_topic_rule)
                .patch(topic_rules::replace_topic_rule)
                .delete(topic_rules::delete_topic_rule),
        )
        .route("/rules/{ruleName}/enable", post(topic_rules::enable_topic_rule))
        .route("/rules/{ruleName}/disable", post(topic_rules::disable_topic_rule))
        .route(
            "/destinations",
            get(topic_rules::list_topic_rule_destinations)
                .post(topic_rules::create_topic_rule_destination)
                .patch(topic_rules::update_topic_rule_destination),
        )
        .route(
            "/destinations/{*arn}",
            get(topic_rules::get_topic_rule_destination).delete(topic_rules::delete_topic_rule_destination),
        )
        .route("/confirmdestination/{*confirmationToken}", get(topic_rules::confirm_topic_rule_destination))
        .fallback(unknown_operation)
        .method_not_allowed_fallback(unknown_operation)
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), refuse_repeated_query_parameters))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

async fn unknown_operation(request: Request) -> Response {
    ApiError::new(
        "UnknownOperationException",
        StatusCode::NOT_FOUND,
        format!("no operation at {} {}", request.method(), request.uri().path()),
    )
    .into_response()
}

/// Refuses a query string that repeats a parameter (or is not UTF-8) before the signature is
/// checked and before any handler runs: SigV4's canonical query sorts repeated values, so
/// `?a=1&a=2` and `?a=2&a=1` carry the same signature, and whichever value a handler took would
/// be unsigned. The refusal depends on the request's text alone, so checking it first costs no
/// key lookup and tells a stranger nothing.
async fn refuse_repeated_query_parameters(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    match wire::Query::parse(request.uri().query()) {
        Ok(_) => next.run(request).await,
        Err(error) => auth::refuse_repeated_query_parameter(&state, request, error),
    }
}

/// Gives every response a request ID and logs each request with its outcome.
async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = auth::clip(&loggable_path(request.uri().path())).into_owned();
    let request_id = new_request_id();
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-amzn-RequestId", value);
    }
    let account = response.extensions().get::<Caller>().map(|caller| caller.account.to_string());
    let elapsed_us = started.elapsed().as_micros() as u64;
    match response.extensions().get::<ApiError>() {
        // Authentication logged it already, at most once a second per cause.
        Some(_) if response.extensions().get::<auth::Refused>().is_some() => {}
        Some(error) => tracing::info!(
            %method, path, request_id, ?account, status = error.status.as_u16(), code = error.code,
            message = %auth::clip(&error.message), elapsed_us, "request refused"
        ),
        None => {
            tracing::debug!(%method, path, request_id, status = response.status().as_u16(), ?account, elapsed_us, "request")
        }
    }
    response
}

/// The path as logged: a destination's confirmation token is a secret, so it is not.
fn loggable_path(path: &str) -> String {
    match path.strip_prefix("/confirmdestination/") {
        Some(_) => "/confirmdestination/<token>".to_owned(),
        None => path.to_owned(),
    }
}

fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs_fill(&mut bytes).is_err() {
        return "00000000-0000-4000-8000-000000000000".into();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

fn aws_lc_rs_fill(bytes: &mut [u8]) -> Result<(), ()> {
    use rustls::crypto::CryptoProvider;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    provider.secure_random.fill(bytes).map_err(drop)
}

#[cfg(test)]
mod tests {
    #[test]
    fn confirmation_tokens_are_not_logged() {
        for (path, logged) in [
            ("/confirmdestination/0123abcd", "/confirmdestination/<token>"),
            ("/confirmdestination/", "/confirmdestination/<token>"),
            ("/destinations/arn%3Aaws", "/destinations/arn%3Aaws"),
            ("/rules/r1", "/rules/r1"),
        ] {
            assert_eq!(super::loggable_path(path), logged, "{path}");
        }
    }
}
