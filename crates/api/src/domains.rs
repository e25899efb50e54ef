//! Domain configurations (Create/Describe/Update/Delete/ListDomainConfigurations) and the
//! certfleet extensions beside them: a configuration's chains, server-root migration (migrate,
//! revert, finish, status) and the test endpoints' records.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_registry::{DomainConfiguration, DomainStatus};
use certfleet_services::{
    Caller, DomainConfigurationDefinition, DomainConfigurationUpdate, Migration, MigrationSettings, Services,
    decode_token, encode_token,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::certificates::{Reply, call, json};
use crate::error::ApiError;
use crate::wire::{Query, epoch_seconds, json_body};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireTlsConfig {
    security_policy: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireServerCertificateConfig {
    #[serde(rename = "enableOCSPCheck")]
    enable_ocsp_check: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CreateRequest {
    domain_name: Option<String>,
    server_certificate_arns: Option<Vec<String>>,
    validation_certificate_arn: Option<String>,
    authorizer_config: Option<Value>,
    service_type: Option<String>,
    #[allow(dead_code)]
    tags: Option<Value>,
    tls_config: Option<WireTlsConfig>,
    server_certificate_config: Option<WireServerCertificateConfig>,
    authentication_type: Option<String>,
    application_protocol: Option<String>,
    #[allow(dead_code)]
    client_certificate_config: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct UpdateRequest {
    authorizer_config: Option<Value>,
    domain_configuration_status: Option<String>,
    #[allow(dead_code)]
    remove_authorizer_config: Option<bool>,
    tls_config: Option<WireTlsConfig>,
    server_certificate_config: Option<WireServerCertificateConfig>,
    authentication_type: Option<String>,
    application_protocol: Option<String>,
    #[allow(dead_code)]
    client_certificate_config: Option<Value>,
}

fn name_reply(services: &Services, config: &DomainConfiguration) -> Value {
    json!({
        "domainConfigurationName": config.name,
        "domainConfigurationArn": services.domain_configuration_arn(config),
    })
}

/// `POST /domainConfigurations/{name}`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: CreateRequest = json_body(&body)?;
    let definition = DomainConfigurationDefinition {
        name,
        domain_name: request.domain_name,
        server_certificate_arns: request.server_certificate_arns.unwrap_or_default(),
        validation_certificate_arn: request.validation_certificate_arn,
        service_type: request.service_type,
        security_policy: request.tls_config.and_then(|tls| tls.security_policy),
        authentication_type: request.authentication_type,
        application_protocol: request.application_protocol,
        has_authorizer_config: request.authorizer_config.is_some_and(|value| !value.is_null()),
        enable_ocsp_check: request.server_certificate_config.and_then(|c| c.enable_ocsp_check).unwrap_or(false),
    };
    let reply = call(&state, move |services| {
        services.create_domain_configuration(&caller, &definition).map(|config| name_reply(services, &config))
    })
    .await?;
    json(reply)
}

/// `GET /domainConfigurations/{name}`.
pub async fn describe(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let reply = call(&state, move |services| {
        let config = services.describe_domain_configuration(&caller, &name)?;
        let certificates = services.domain_configuration_certificates(&config)?;
        Ok(describe_wire(services, &config, &certificates))
    })
    .await?;
    json(reply)
}

fn describe_wire(
    services: &Services,
    config: &DomainConfiguration,
    certificates: &[certfleet_registry::ServerCertificate],
) -> Value {
    let now = services.now();
    let server_certificate = |id: &String| {
        let arn = services.server_certificate_arn(&config.account, id);
        let (status, detail) = match certificates.iter().find(|c| &c.id == id) {
            Some(record) if record.not_after < now => ("INVALID", "the certificate has expired"),
            Some(_) => ("VALID", ""),
            None => ("INVALID", "the certificate no longer exists"),
        };
        json!({ "serverCertificateArn": arn, "serverCertificateStatus": status, "serverCertificateStatusDetail": detail })
    };
    let migration = config.migration.as_deref().and_then(Migration::parse);
    let mut out = json!({
        "domainConfigurationName": config.name,
        "domainConfigurationArn": services.domain_configuration_arn(config),
        "domainName": config.domain_name,
        "serverCertificates": config.current_chain.iter().map(server_certificate).collect::<Vec<_>>(),
        "domainConfigurationStatus": config.status.as_str(),
        "serviceType": config.service_type,
        "domainType": config.domain_type,
        "lastStatusChangeDate": epoch_seconds(config.last_status_change),
        "tlsConfig": { "securityPolicy": config.security_policy },
        "certfleet": {
            "nextServerCertificates": config.next_chain.iter().map(server_certificate).collect::<Vec<_>>(),
            "serving": if config.serving_next { "next" } else { "current" },
            "migration": migration.map(|m| migration_wire(&m)),
        },
    });
    if let Some(value) = &config.authentication_type {
        out["authenticationType"] = value.clone().into();
    }
    if let Some(value) = &config.application_protocol {
        out["applicationProtocol"] = value.clone().into();
    }
    out
}

fn migration_wire(migration: &Migration) -> Value {
    json!({
        "id": migration.id,
        "drainPerSecond": migration.settings.drain_per_second,
        "guardMaxFailures": migration.settings.guard_max_failures,
        "startedAt": epoch_seconds(migration.started_at),
        "revertedAt": migration.reverted_at.map(epoch_seconds),
        "revertReason": migration.revert_reason,
    })
}

/// `PUT /domainConfigurations/{name}`.
pub async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: UpdateRequest = json_body(&body)?;
    let status = request
        .domain_configuration_status
        .map(|text| {
            DomainStatus::parse(&text).ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "domainConfigurationStatus must be ENABLED or DISABLED, got {text:?}"
                ))
            })
        })
        .transpose()?;
    let update = DomainConfigurationUpdate {
        status,
        security_policy: request.tls_config.and_then(|tls| tls.security_policy),
        authentication_type: request.authentication_type,
        application_protocol: request.application_protocol,
        has_authorizer_config: request.authorizer_config.is_some_and(|value| !value.is_null()),
        enable_ocsp_check: request.server_certificate_config.and_then(|c| c.enable_ocsp_check).unwrap_or(false),
    };
    let reply = call(&state, move |services| {
        services.update_domain_configuration(&caller, &name, &update).map(|config| name_reply(services, &config))
    })
    .await?;
    json(reply)
}

/// `DELETE /domainConfigurations/{name}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    call(&state, move |services| services.delete_domain_configuration(&caller, &name)).await?;
    json(json!({}))
}

/// `GET /domainConfigurations`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let limit = query.int("pageSize", 1..=250)?.unwrap_or(250) as usize;
    let after = query.text("marker").filter(|m| !m.is_empty()).map(decode_token).transpose()?;
    let service_type = query.text("serviceType").map(str::to_owned);
    if let Some(service_type) = &service_type
        && !["DATA", "CREDENTIAL_PROVIDER", "JOBS"].contains(&service_type.as_str())
    {
        return Err(ApiError::invalid_request(format!("unknown serviceType {service_type:?}")));
    }
    let reply = call(&state, move |services| {
        let (items, next) = services.list_domain_configurations(&caller, after.as_deref(), limit)?;
        let items: Vec<Value> = items
            .iter()
            .filter(|c| service_type.as_deref().is_none_or(|s| s == c.service_type))
            .map(|c| {
                json!({
                    "domainConfigurationName": c.name,
                    "domainConfigurationArn": services.domain_configuration_arn(c),
                    "serviceType": c.service_type,
                })
            })
            .collect();
        let mut out = json!({ "domainConfigurations": items });
        if let Some(next) = next {
            out["nextMarker"] = encode_token(&next).into();
        }
        Ok(out)
    })
    .await?;
    json(reply)
}

// ---- certfleet extensions ---------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ChainRequest {
    server_certificate_arns: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MigrateRequest {
    drain_per_second: Option<f64>,
    guard_max_failures: Option<u64>,
}

/// Runs a change of a configuration and answers with the configuration as it is now.
async fn changed(
    state: &Arc<AppState>,
    change: impl FnOnce(&Services) -> Result<DomainConfiguration, certfleet_services::Error> + Send + 'static,
) -> Reply {
    let reply = call(state, move |services| {
        let config = change(services)?;
        Ok(describe_wire(services, &config, &services.domain_configuration_certificates(&config)?))
    })
    .await?;
    json(reply)
}

/// `PUT /certfleet/domain-configurations/{name}/chain`: the current chain.
pub async fn set_chain(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: ChainRequest = json_body(&body)?;
    let arns = request.server_certificate_arns.unwrap_or_default();
    changed(&state, move |services| services.set_current_chain(&caller, &name, &arns)).await
}

/// `PUT /certfleet/domain-configurations/{name}/next-chain`: the chain a migration moves to.
pub async fn set_next_chain(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: ChainRequest = json_body(&body)?;
    let arns = request.server_certificate_arns.unwrap_or_default();
    changed(&state, move |services| services.set_next_chain(&caller, &name, &arns)).await
}

/// `POST /certfleet/domain-configurations/{name}/migrate`.
pub async fn migrate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let request: MigrateRequest = json_body(&body)?;
    let defaults = MigrationSettings::default();
    let settings = MigrationSettings {
        drain_per_second: request.drain_per_second.unwrap_or(defaults.drain_per_second),
        guard_max_failures: request.guard_max_failures,
    };
    changed(&state, move |services| services.migrate_domain_configuration(&caller, &name, settings)).await
}

/// `POST /certfleet/domain-configurations/{name}/revert`.
pub async fn revert(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    changed(&state, move |services| {
        services.revert_domain_configuration(&caller.account, &name, "reverted by the operator")
    })
    .await
}

/// `POST /certfleet/domain-configurations/{name}/finish`.
pub async fn finish(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    changed(&state, move |services| services.finish_migration(&caller, &name)).await
}

/// `GET /certfleet/domain-configurations/{name}/migration`: the configuration, and this node's
/// per-chain counters and drain report; in a cluster, every node's summed, each node's view in
/// `nodes` and the nodes that did not answer in `missingNodes` (both empty for a node alone).
pub async fn status(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let data_plane = state.data_plane.clone();
    let reply = call(&state, move |services| {
        let config = services.describe_domain_configuration(&caller, &name)?;
        let mut out = describe_wire(services, &config, &services.domain_configuration_certificates(&config)?);
        let report =
            data_plane.as_ref().and_then(|plane| plane.endpoint_report(&caller.account, &name)).unwrap_or_default();
        out["chains"] = report
            .chains
            .iter()
            .map(|chain| {
                json!({
                    "chain": chain.chain,
                    "serving": chain.serving,
                    "connected": chain.connected,
                    "handshakesCompleted": chain.handshakes_completed,
                    "handshakesFailed": chain.handshakes_failed,
                })
            })
            .collect::<Vec<_>>()
            .into();
        out["drain"] = report
            .drain
            .map(|drain| {
                json!({
                    "migrationId": drain.migration_id,
                    "toChain": drain.to_chain,
                    "sessions": drain.sessions,
                    "closed": drain.closed,
                    "cameBack": drain.came_back,
                    "notBack": drain.not_back,
                    "guardTripped": drain.guard_tripped,
                })
            })
            .into();
        out["nodes"] = report
            .nodes
            .iter()
            .map(|node| {
                json!({
                    "node": node.node,
                    "serving": node.serving,
                    "connected": node.connected,
                    "drainSessions": node.drain_sessions,
                    "drainClosed": node.drain_closed,
                    "guardTripped": node.guard_tripped,
                })
            })
            .collect::<Vec<_>>()
            .into();
        out["missingNodes"] = report.missing_nodes.into();
        Ok(out)
    })
    .await?;
    json(reply)
}

/// `GET /certfleet/test-endpoint-results?clientId=&maxResults=`: what the test endpoints saw.
pub async fn test_results(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let limit = query.int("maxResults", 1..=1000)?.unwrap_or(100);
    let client_id = query.text("clientId").map(str::to_owned);
    let reply = call(&state, move |services| {
        let probes = services.endpoint_probes(&caller, client_id.as_deref(), limit)?;
        let results: Vec<Value> = probes
            .iter()
            .map(|p| {
                json!({
                    "domainConfigurationName": p.configuration,
                    "peer": p.peer,
                    "serverName": p.server_name,
                    "clientId": p.client_id,
                    "clientCertificateId": p.client_certificate_id,
                    "tlsVersion": p.tls_version,
                    "cipherSuite": p.cipher_suite,
                    "outcome": p.outcome,
                    "detail": p.detail,
                    "at": epoch_seconds(p.at),
                })
            })
            .collect();
        Ok(json!({ "results": results }))
    })
    .await?;
    json(reply)
}
