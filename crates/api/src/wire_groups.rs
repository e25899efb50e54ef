//! The AWS IoT wire shapes of the thing type and thing group operations (restJson1), converted
//! from the domain values by hand. Timestamps are epoch seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::WireTag;
use crate::wire_things::WireAttributePayload;

// ---- requests ---------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WireThingTypeProperties {
    pub thing_type_description: Option<String>,
    pub searchable_attributes: Option<Vec<String>>,
    pub mqtt5_configuration: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingTypeRequest {
    pub thing_type_properties: Option<WireThingTypeProperties>,
    pub tags: Option<Vec<WireTag>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingTypeRequest {
    pub thing_type_properties: Option<WireThingTypeProperties>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeprecateThingTypeRequest {
    pub undo_deprecate: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WireThingGroupProperties {
    pub thing_group_description: Option<String>,
    pub attribute_payload: Option<WireAttributePayload>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingGroupRequest {
    pub parent_group_name: Option<String>,
    pub thing_group_properties: Option<WireThingGroupProperties>,
    pub tags: Option<Vec<WireTag>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingGroupRequest {
    pub thing_group_properties: Option<WireThingGroupProperties>,
    pub expected_version: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThingGroupMemberRequest {
    pub thing_group_name: Option<String>,
    pub thing_group_arn: Option<String>,
    pub thing_name: Option<String>,
    pub thing_arn: Option<String>,
    pub override_dynamic_groups: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingGroupsForThingRequest {
    pub thing_name: Option<String>,
    pub thing_groups_to_add: Option<Vec<String>>,
    pub thing_groups_to_remove: Option<Vec<String>>,
    pub override_dynamic_groups: Option<bool>,
}

// ---- responses --------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingTypeResponse {
    pub thing_type_name: String,
    pub thing_type_arn: String,
    pub thing_type_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingTypePropertiesOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_type_description: Option<String>,
    pub searchable_attributes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingTypeMetadata {
    pub deprecated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deprecation_date: Option<f64>,
    pub creation_date: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeThingTypeResponse {
    pub thing_type_name: String,
    pub thing_type_id: String,
    pub thing_type_arn: String,
    pub thing_type_properties: ThingTypePropertiesOut,
    pub thing_type_metadata: ThingTypeMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingTypeDefinition {
    pub thing_type_name: String,
    pub thing_type_arn: String,
    pub thing_type_properties: ThingTypePropertiesOut,
    pub thing_type_metadata: ThingTypeMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThingTypesResponse {
    pub thing_types: Vec<ThingTypeDefinition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateThingGroupResponse {
    pub thing_group_name: String,
    pub thing_group_arn: String,
    pub thing_group_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributePayloadOut {
    pub attributes: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingGroupPropertiesOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thing_group_description: Option<String>,
    pub attribute_payload: AttributePayloadOut,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupNameAndArn {
    pub group_name: String,
    pub group_arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThingGroupMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_group_name: Option<String>,
    pub root_to_parent_thing_groups: Vec<GroupNameAndArn>,
    pub creation_date: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeThingGroupResponse {
    pub thing_group_name: String,
    pub thing_group_id: String,
    pub thing_group_arn: String,
    pub version: i64,
    pub thing_group_properties: ThingGroupPropertiesOut,
    pub thing_group_metadata: ThingGroupMetadata,
    pub status: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateThingGroupResponse {
    pub version: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThingGroupsResponse {
    pub thing_groups: Vec<GroupNameAndArn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListThingsInThingGroupResponse {
    pub things: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}
