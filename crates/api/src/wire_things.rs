//! The AWS IoT wire shapes of the policy and thing operations (restJson1), converted from the
//! domain values by hand. Timestamps are epoch seconds ([`epoch_seconds`]).

use std::collections::BTreeMap;

use certfleet_registry::{Policy, PolicyVersion, Thing};
use serde::{Deserialize, Serialize};

use crate::wire::{WireTag, epoch_seconds};

// ---- requests ---------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreatePolicyRequest {
    pub policy_document: Option<String>,
    pub tags: Option<Vec<WireTag>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreatePolicyVersionRequest {
    pub policy_document: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRequest {
    pub target: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct GetEffectivePoliciesRequest {
    pub principal: Option<String>,
    pub cognito_identity_pool_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WireAttributePayload {
    pub attributes: Option<BTreeMap<String, String>>,
    pub merge: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingRequest {
    pub thing_type_name: Option<String>,
    pub attribute_payload: Option<WireAttributePayload>,
    pub billing_group_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingRequest {
    pub thing_type_name: Option<String>,
    pub attribute_payload: Option<WireAttributePayload>,
    pub expected_version: Option<i64>,
    pub remove_thing_type: Option<bool>,
}

// ---- responses --------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatePolicyResponse {
    pub policy_name: String,
    pub policy_arn: String,
    pub policy_document: String,
    pub policy_version_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetPolicyResponse {
    pub policy_name: String,
    pub policy_arn: String,
    pub policy_document: String,
    pub default_version_id: String,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatePolicyVersionResponse {
    pub policy_arn: String,
    pub policy_document: String,
    pub policy_version_id: String,
    pub is_default_version: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetPolicyVersionResponse {
    pub policy_arn: String,
    pub policy_name: String,
    pub policy_document: String,
    pub policy_version_id: String,
    pub is_default_version: bool,
    pub creation_date: f64,
    pub last_modified_date: f64,
    pub generation_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WirePolicyVersion {
    pub version_id: String,
    pub is_default_version: bool,
    pub create_date: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPolicyVersionsResponse {
    pub policy_versions: Vec<WirePolicyVersion>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    pub policy_name: String,
    pub policy_arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPoliciesResponse {
    pub policies: Vec<PolicySummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListTargetsResponse {
    pub targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// ListPolicyPrincipals (deprecated): the targets under another name.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPolicyPrincipalsResponse {
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    pub policy_name: String,
    pub policy_arn: String,
    pub policy_document: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetEffectivePoliciesResponse {
    pub effective_policies: Vec<EffectivePolicy>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingResponse {
    pub thing_name: String,
    pub thing_arn: String,
    pub thing_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeThingResponse {
    pub default_client_id: String,
    pub thing_name: String,
    pub thing_id: String,
    pub thing_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_type_name: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingAttribute {
    pub thing_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_type_name: Option<String>,
    pub thing_arn: String,
    pub attributes: BTreeMap<String, String>,
    pub version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThingsResponse {
    pub things: Vec<ThingAttribute>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThingPrincipalsResponse {
    pub principals: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingPrincipalObject {
    pub principal: String,
    pub thing_principal_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThingPrincipalsV2Response {
    pub thing_principal_objects: Vec<ThingPrincipalObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPrincipalThingsResponse {
    pub things: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalThingObject {
    pub thing_name: String,
    pub thing_principal_type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPrincipalThingsV2Response {
    pub principal_thing_objects: Vec<PrincipalThingObject>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

// ---- conversions ------------------------------------------------------------------------------

pub fn policy_response(policy: &Policy, default: &PolicyVersion, arn: String) -> GetPolicyResponse {
    GetPolicyResponse {
        policy_name: policy.name.to_string(),
        policy_arn: arn,
        policy_document: default.document.clone(),
        default_version_id: policy.default_version.to_string(),
        creation_date: epoch_seconds(policy.created_at),
        last_modified_date: epoch_seconds(policy.last_modified),
        generation_id: policy.generation_id.clone(),
    }
}

pub fn policy_version_response(policy: &Policy, version: &PolicyVersion, arn: String) -> GetPolicyVersionResponse {
    GetPolicyVersionResponse {
        policy_arn: arn,
        policy_name: policy.name.to_string(),
        policy_document: version.document.clone(),
        policy_version_id: version.version.to_string(),
        is_default_version: policy.default_version == version.version,
        creation_date: epoch_seconds(version.created_at),
        // Versions never change: the last modification is the creation.
        last_modified_date: epoch_seconds(version.created_at),
        generation_id: policy.generation_id.clone(),
    }
}

pub fn describe_thing_response(thing: &Thing, arn: String) -> DescribeThingResponse {
    DescribeThingResponse {
        default_client_id: thing.name.to_string(),
        thing_name: thing.name.to_string(),
        thing_id: thing.id.clone(),
        thing_arn: arn,
        thing_type_name: thing.type_name.as_ref().map(ToString::to_string),
        attributes: thing.attributes.clone(),
        version: thing.version,
    }
}

pub fn thing_attribute(thing: &Thing, arn: String) -> ThingAttribute {
    ThingAttribute {
        thing_name: thing.name.to_string(),
        thing_type_name: thing.type_name.as_ref().map(ToString::to_string),
        thing_arn: arn,
        attributes: thing.attributes.clone(),
        version: thing.version,
    }
}
