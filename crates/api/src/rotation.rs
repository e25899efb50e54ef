//! Handlers of the certfleet rotation extension (SigV4 like every operation):
//!
//! - `POST /certfleet/rotations` `{"certificateIds": [...], "subject": "keep-old"}`: a manual
//!   campaign (`subject`: `keep-old`, the default, or `require-csr-match`).
//! - `GET /certfleet/rotations?campaignId=&state=&clientId=&nextToken=&maxResults=`.
//! - `GET /certfleet/rotations/{id}`, `POST /certfleet/rotations/{id}/retry`.
//! - `GET /certfleet/rotation-campaigns/{id}`: the campaign with its counts per state.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_pki::CertificateId;
use certfleet_registry::{Rotation, RotationFilter, RotationSource, RotationState, SubjectRule};
use certfleet_services::{Caller, CampaignSummary};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::certificates::{Reply, call, json as reply_json};
use crate::error::ApiError;
use crate::wire::{Query, epoch_seconds, json_body};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    #[serde(default)]
    certificate_ids: Vec<String>,
    #[serde(default)]
    subject: Option<String>,
}

fn rotation_to_wire(rotation: &Rotation) -> Value {
    json!({
        "rotationId": rotation.id,
        "campaignId": rotation.campaign_id,
        "clientId": rotation.client_id,
        "oldCertificateId": rotation.old_certificate_id.as_str(),
        "newCertificateId": rotation.new_certificate_id.as_ref().map(|id| id.as_str().to_owned()),
        "csrKeyFingerprint": rotation.csr_key_fingerprint,
        "state": rotation.state.as_str(),
        "attempts": rotation.attempts,
        "error": rotation.error,
        "deadline": rotation.deadline.map(epoch_seconds),
        "createdAt": epoch_seconds(rotation.created_at),
        "updatedAt": epoch_seconds(rotation.updated_at),
    })
}

fn campaign_to_wire(summary: &CampaignSummary) -> Value {
    let counts: serde_json::Map<String, Value> = RotationState::ALL
        .iter()
        .map(|state| (state.as_str().to_owned(), summary.counts.get(state).copied().unwrap_or(0).into()))
        .collect();
    json!({
        "campaignId": summary.campaign.id,
        "source": summary.campaign.source.as_str(),
        "auditTaskId": summary.campaign.audit_task_id,
        "subject": summary.campaign.subject_rule.as_str(),
        "createdAt": epoch_seconds(summary.campaign.created_at),
        "total": summary.counts.values().sum::<i64>(),
        "counts": counts,
    })
}

pub async fn start(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, body: Bytes) -> Reply {
    let request: StartRequest = json_body(&body)?;
    let ids = request
        .certificate_ids
        .iter()
        .map(|id| {
            CertificateId::parse(id).map_err(|_| ApiError::invalid_request(format!("{id:?} is not a certificate ID")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let subject_rule = match request.subject.as_deref() {
        None => SubjectRule::KeepOld,
        Some(text) => SubjectRule::parse(text).ok_or_else(|| {
            ApiError::invalid_request(format!("subject {text:?} is neither keep-old nor require-csr-match"))
        })?,
    };
    let summary =
        call(&state, move |services| services.start_rotation(&caller, &ids, RotationSource::Manual, subject_rule))
            .await?;
    reply_json(campaign_to_wire(&summary))
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let state_filter = match query.text("state") {
        Some(text) => Some(
            RotationState::parse(text).ok_or_else(|| ApiError::invalid_request(format!("unknown state {text:?}")))?,
        ),
        None => None,
    };
    let filter = RotationFilter {
        campaign_id: query.text("campaignId").map(str::to_owned),
        state: state_filter,
        client_id: query.text("clientId").map(str::to_owned),
    };
    let limit = query.int("maxResults", 1..=1000)?.unwrap_or(250);
    let after = query.text("nextToken").map(str::to_owned);
    let rotations =
        call(&state, move |services| services.list_rotations(&caller, &filter, after.as_deref(), limit)).await?;
    let next = if rotations.len() == limit as usize { rotations.last().map(|r| r.id.clone()) } else { None };
    reply_json(json!({
        "rotations": rotations.iter().map(rotation_to_wire).collect::<Vec<_>>(),
        "nextToken": next,
    }))
}

pub async fn describe(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let rotation = call(&state, move |services| services.describe_rotation(&caller, &id)).await?;
    reply_json(rotation_to_wire(&rotation))
}

pub async fn retry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let rotation = call(&state, move |services| services.retry_rotation(&caller, &id)).await?;
    reply_json(rotation_to_wire(&rotation))
}

pub async fn describe_campaign(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Reply {
    let summary = call(&state, move |services| services.describe_rotation_campaign(&caller, &id)).await?;
    reply_json(campaign_to_wire(&summary))
}
