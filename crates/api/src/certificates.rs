//! Handlers of the registration-code, CA-certificate, device-certificate, transfer and endpoint
//! operations: decode the wire request, call the service, encode the wire response.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, body::Bytes};
use certfleet_pki::CertificateId;
use certfleet_registry::{AccountId, PageRequest};
use certfleet_services::{
    CaRegistration, CaUpdate, Caller, CertificateRegistration, Services, decode_marker, encode_marker,
};
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::wire::*;

pub(crate) type Reply = Result<Response, ApiError>;

/// Runs a service call on the blocking pool (the registry does blocking IO).
pub(crate) async fn call<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&Services) -> Result<T, certfleet_services::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let services = state.services.clone();
    tokio::task::spawn_blocking(move || work(&services))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(ApiError::from)
}

pub(crate) fn json(value: impl serde::Serialize) -> Reply {
    Ok(Json(value).into_response())
}

pub(crate) fn empty() -> Reply {
    Ok(http::StatusCode::OK.into_response())
}

fn certificate_id(text: &str) -> Result<CertificateId, ApiError> {
    CertificateId::parse(text).map_err(|_| {
        ApiError::invalid_request(format!("certificateId must be 64 hexadecimal characters, got {text:?}"))
    })
}

fn page_request(query: &Query) -> Result<PageRequest, ApiError> {
    Ok(PageRequest {
        limit: query.int("pageSize", 1..=250)?.unwrap_or(25),
        ascending: query.flag("isAscendingOrder")?,
        after: query.text("marker").filter(|marker| !marker.is_empty()).map(decode_marker).transpose()?,
    })
}

pub(crate) fn required(value: Option<String>, member: &str) -> Result<String, ApiError> {
    value.filter(|text| !text.is_empty()).ok_or_else(|| ApiError::invalid_request(format!("{member} is required")))
}

// ---- registration code ------------------------------------------------------------------------

pub async fn get_registration_code(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Reply {
    let code = call(&state, move |services| services.get_registration_code(&caller)).await?;
    json(json!({ "registrationCode": code }))
}

pub async fn delete_registration_code(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Reply {
    call(&state, move |services| services.delete_registration_code(&caller)).await?;
    json(json!({}))
}

// ---- CA certificates --------------------------------------------------------------------------

pub async fn register_ca_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let request: RegisterCaCertificateRequest = json_body(&body)?;
    let registration = CaRegistration {
        ca_certificate_pem: required(request.ca_certificate, "caCertificate")?,
        verification_certificate_pem: request.verification_certificate.filter(|pem| !pem.is_empty()),
        mode: request.certificate_mode.as_deref().map(certificate_mode).transpose()?,
        set_as_active: query.flag("setAsActive")?,
        allow_auto_registration: query.flag("allowAutoRegistration")?,
        registration_config: request.registration_config.map(registration_config_from_wire).transpose()?,
        tags: tags_from_wire(request.tags)?,
    };
    let (arn, id) = call(&state, move |services| services.register_ca_certificate(&caller, &registration)).await?;
    json(CertificateArnAndId { certificate_arn: arn, certificate_id: id.to_string() })
}

pub async fn describe_ca_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let id = certificate_id(&id)?;
    let (ca, arn) = call(&state, move |services| {
        let ca = services.describe_ca_certificate(&caller, &id)?;
        let arn = services.ca_certificate_arn(&caller.account, &id);
        Ok((ca, arn))
    })
    .await?;
    json(ca_description(&ca, arn))
}

pub async fn update_ca_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let id = certificate_id(&id)?;
    let query = Query::parse(query.as_deref())?;
    let request: UpdateCaCertificateRequest = json_body(&body)?;
    let update = CaUpdate {
        new_status: query.text("newStatus").map(ca_status).transpose()?,
        new_auto_registration: query
            .text("newAutoRegistrationStatus")
            .map(|text| match text {
                "ENABLE" => Ok(true),
                "DISABLE" => Ok(false),
                other => Err(ApiError::invalid_request(format!(
                    "newAutoRegistrationStatus must be ENABLE or DISABLE, got {other:?}"
                ))),
            })
            .transpose()?,
        registration_config: request.registration_config.map(registration_config_from_wire).transpose()?,
        remove_auto_registration: request.remove_auto_registration.unwrap_or(false),
    };
    call(&state, move |services| services.update_ca_certificate(&caller, &id, &update)).await?;
    empty()
}

pub async fn delete_ca_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let id = certificate_id(&id)?;
    call(&state, move |services| services.delete_ca_certificate(&caller, &id)).await?;
    json(json!({}))
}

pub async fn list_ca_certificates(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = page_request(&query)?;
    let template_name = query.text("templateName").map(str::to_owned);
    let (page, account) = call(&state, move |services| {
        let page = services.list_ca_certificates(&caller, &page)?;
        Ok((page, caller.account))
    })
    .await?;
    let services = &state.services;
    let certificates = page
        .items
        .iter()
        .filter(|ca| {
            template_name.is_none()
                || ca.registration_config.as_ref().and_then(|config| config.template_name.as_ref())
                    == template_name.as_ref()
        })
        .map(|ca| CaCertificateSummary {
            certificate_arn: services.ca_certificate_arn(&account, &ca.id),
            certificate_id: ca.id.to_string(),
            status: ca.status.as_str(),
            creation_date: epoch_seconds(ca.created_at),
        })
        .collect();
    json(ListResponse { certificates, next_marker: page.next.as_ref().map(encode_marker) })
}

pub async fn list_certificates_by_ca(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let id = certificate_id(&id)?;
    let page = page_request(&Query::parse(query.as_deref())?)?;
    let account = caller.account.clone();
    let page = call(&state, move |services| services.list_certificates_by_ca(&caller, &id, &page)).await?;
    certificate_list(&state, &account, page)
}

// ---- device certificates ----------------------------------------------------------------------

pub async fn create_keys_and_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let set_as_active = Query::parse(query.as_deref())?.flag("setAsActive")?;
    let account = caller.account.clone();
    let created = call(&state, move |services| services.create_keys_and_certificate(&caller, set_as_active)).await?;
    let certificate = &created.certificate;
    json(CreatedCertificate {
        certificate_arn: state.services.certificate_arn(&account, &certificate.id),
        certificate_id: certificate.id.to_string(),
        certificate_pem: certificate.pem.clone(),
        key_pair: Some(KeyPair {
            public_key: created.key_pair.public_key_pem(),
            private_key: created.key_pair.private_key_pem().to_string(),
        }),
    })
}

pub async fn create_certificate_from_csr(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let set_as_active = Query::parse(query.as_deref())?.flag("setAsActive")?;
    let request: CreateCertificateFromCsrRequest = json_body(&body)?;
    let csr = required(request.certificate_signing_request, "certificateSigningRequest")?;
    if csr.len() > 4096 {
        return Err(ApiError::invalid_request("certificateSigningRequest exceeds 4096 characters"));
    }
    let account = caller.account.clone();
    let certificate =
        call(&state, move |services| services.create_certificate_from_csr(&caller, &csr, set_as_active)).await?;
    json(CreatedCertificate {
        certificate_arn: state.services.certificate_arn(&account, &certificate.id),
        certificate_id: certificate.id.to_string(),
        certificate_pem: certificate.pem,
        key_pair: None,
    })
}

async fn register(state: Arc<AppState>, caller: Caller, query: Option<String>, body: Bytes, without_ca: bool) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let request: RegisterCertificateRequest = json_body(&body)?;
    let registration = CertificateRegistration {
        certificate_pem: required(request.certificate_pem, "certificatePem")?,
        ca_certificate_pem: request.ca_certificate_pem.filter(|pem| !pem.is_empty()),
        status: request.status.as_deref().map(certificate_status).transpose()?,
        set_as_active: query.flag("setAsActive")?,
    };
    let account = caller.account.clone();
    let certificate = call(&state, move |services| {
        if without_ca {
            services.register_certificate_without_ca(&caller, &registration)
        } else {
            services.register_certificate(&caller, &registration)
        }
    })
    .await?;
    json(CertificateArnAndId {
        certificate_arn: state.services.certificate_arn(&account, &certificate.id),
        certificate_id: certificate.id.to_string(),
    })
}

pub async fn register_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    register(state, caller, query, body, false).await
}

pub async fn register_certificate_without_ca(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    register(state, caller, query, body, true).await
}

pub async fn describe_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let id = certificate_id(&id)?;
    let certificate = call(&state, move |services| services.describe_certificate(&caller, &id)).await?;
    let arn = state.services.certificate_arn(&certificate.account, &certificate.id);
    json(certificate_description(&certificate, arn))
}

pub async fn update_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let id = certificate_id(&id)?;
    let query = Query::parse(query.as_deref())?;
    let status =
        certificate_status(query.text("newStatus").ok_or_else(|| ApiError::invalid_request("newStatus is required"))?)?;
    call(&state, move |services| services.update_certificate(&caller, &id, status)).await?;
    empty()
}

pub async fn delete_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let id = certificate_id(&id)?;
    let force = Query::parse(query.as_deref())?.flag("forceDelete")?;
    call(&state, move |services| services.delete_certificate(&caller, &id, force)).await?;
    empty()
}

pub async fn list_certificates(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let page = page_request(&Query::parse(query.as_deref())?)?;
    let account = caller.account.clone();
    let page = call(&state, move |services| services.list_certificates(&caller, &page)).await?;
    certificate_list(&state, &account, page)
}

fn certificate_list(
    state: &AppState,
    account: &AccountId,
    page: certfleet_registry::Page<certfleet_registry::DeviceCertificate>,
) -> Reply {
    let certificates = page
        .items
        .iter()
        .map(|certificate| CertificateSummary {
            certificate_arn: state.services.certificate_arn(account, &certificate.id),
            certificate_id: certificate.id.to_string(),
            status: certificate.status.as_str(),
            certificate_mode: certificate.mode.as_str(),
            creation_date: epoch_seconds(certificate.created_at),
        })
        .collect();
    json(ListResponse { certificates, next_marker: page.next.as_ref().map(encode_marker) })
}

// ---- transfers --------------------------------------------------------------------------------

pub async fn transfer_certificate(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Reply {
    let id = certificate_id(&id)?;
    let query = Query::parse(query.as_deref())?;
    let target =
        query.text("targetAwsAccount").ok_or_else(|| ApiError::invalid_request("targetAwsAccount is required"))?;
    let target = AccountId::parse(target).map_err(|error| ApiError::invalid_request(error.to_string()))?;
    let request: TransferCertificateRequest = json_body(&body)?;
    if request.transfer_message.as_ref().is_some_and(|message| message.chars().count() > 128) {
        return Err(ApiError::invalid_request("transferMessage exceeds 128 characters"));
    }
    let arn =
        call(&state, move |services| services.transfer_certificate(&caller, &id, &target, request.transfer_message))
            .await?;
    json(json!({ "transferredCertificateArn": arn }))
}

pub async fn accept_certificate_transfer(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let id = certificate_id(&id)?;
    let set_as_active = Query::parse(query.as_deref())?.flag("setAsActive")?;
    call(&state, move |services| services.accept_certificate_transfer(&caller, &id, set_as_active)).await?;
    empty()
}

pub async fn reject_certificate_transfer(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let id = certificate_id(&id)?;
    let request: RejectCertificateTransferRequest = json_body(&body)?;
    if request.reject_reason.as_ref().is_some_and(|reason| reason.chars().count() > 128) {
        return Err(ApiError::invalid_request("rejectReason exceeds 128 characters"));
    }
    call(&state, move |services| services.reject_certificate_transfer(&caller, &id, request.reject_reason)).await?;
    empty()
}

pub async fn cancel_certificate_transfer(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let id = certificate_id(&id)?;
    call(&state, move |services| services.cancel_certificate_transfer(&caller, &id)).await?;
    empty()
}

// ---- endpoints --------------------------------------------------------------------------------

pub async fn describe_endpoint(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let endpoint_type = query.text("endpointType").filter(|text| !text.is_empty()).map(str::to_owned);
    let address = call(&state, move |services| services.endpoint_address(&caller, endpoint_type.as_deref())).await?;
    json(json!({ "endpointAddress": address }))
}

// ---- certfleet extensions ---------------------------------------------------------------------

/// `GET /certfleet/sessions`: the caller's devices connected to this node, or in a cluster to
/// every node that answered, each with the node serving it (a certfleet extension, not an AWS
/// operation; `node` is null on a node running alone).
pub async fn list_connected_clients(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Reply {
    let sessions: Vec<_> = state
        .data_plane
        .as_ref()
        .map(|plane| plane.connected_clients(&caller.account))
        .unwrap_or_default()
        .into_iter()
        .map(|client| {
            json!({
                "clientId": client.client_id,
                "certificateId": client.certificate_id.to_string(),
                "accountId": caller.account.to_string(),
                "sni": client.sni,
                "tlsVersion": client.tls_version,
                "ipAddress": client.peer,
                "connectedAt": epoch_seconds(client.connected_at),
                "node": client.node,
            })
        })
        .collect();
    json(json!({ "sessions": sessions }))
}
