//! Handlers of the thing type and static thing group operations: types, groups, their
//! members. Policies attached to groups go through `policies.rs` (a thing-group ARN target).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_registry::{ThingGroupFilter, ThingGroupName, ThingName, ThingType};
use certfleet_services::{Caller, Services, ThingGroupDefinition, ThingGroupUpdate, ThingTypeProperties, encode_token};
use serde_json::json as json_value;

use crate::AppState;
use crate::certificates::{Reply, call, json};
use crate::error::ApiError;
use crate::things::{attribute_payload, thing_name, token_page};
use crate::wire::{Query, epoch_seconds, json_body, tags_from_wire};
use crate::wire_groups::*;

fn group_name(text: &str, member: &str) -> Result<ThingGroupName, ApiError> {
    ThingGroupName::parse(text).map_err(|_| {
        ApiError::invalid_request(format!("{member} must match [a-zA-Z0-9:_-]+ (1 to 128 characters), got {text:?}"))
    })
}

/// A group named by name or by ARN (AddThingToThingGroup, RemoveThingFromThingGroup).
fn group_of(
    services: &Services,
    caller: &Caller,
    name: Option<String>,
    arn: Option<String>,
) -> Result<ThingGroupName, ApiError> {
    match (name.filter(|text| !text.is_empty()), arn.filter(|text| !text.is_empty())) {
        (Some(name), _) => group_name(&name, "thingGroupName"),
        (None, Some(arn)) => Ok(services.thing_group_from_arn(&caller.account, &arn)?),
        (None, None) => Err(ApiError::invalid_request("thingGroupName or thingGroupArn is required")),
    }
}

/// A thing named by name or by ARN.
fn thing_of(
    services: &Services,
    caller: &Caller,
    name: Option<String>,
    arn: Option<String>,
) -> Result<ThingName, ApiError> {
    match (name.filter(|text| !text.is_empty()), arn.filter(|text| !text.is_empty())) {
        (Some(name), _) => thing_name(&name, "thingName"),
        (None, Some(arn)) => Ok(services.thing_from_arn(&caller.account, &arn)?),
        (None, None) => Err(ApiError::invalid_request("thingName or thingArn is required")),
    }
}

fn no_dynamic_groups(flag: Option<bool>) -> Result<(), ApiError> {
    if flag == Some(true) {
        return Err(ApiError::invalid_request(
            "certfleet has no dynamic thing groups: overrideDynamicGroups is not supported",
        ));
    }
    Ok(())
}

fn type_properties(properties: Option<WireThingTypeProperties>) -> Result<ThingTypeProperties, ApiError> {
    let properties = properties.unwrap_or_default();
    if properties.mqtt5_configuration.is_some() {
        return Err(ApiError::invalid_request("mqtt5Configuration (propagating attributes) is not supported"));
    }
    Ok(ThingTypeProperties {
        description: properties.thing_type_description,
        searchable_attributes: properties.searchable_attributes,
    })
}

fn type_definition(thing_type: &ThingType) -> (ThingTypePropertiesOut, ThingTypeMetadata) {
    (
        ThingTypePropertiesOut {
            thing_type_description: thing_type.description.clone(),
            searchable_attributes: thing_type.searchable_attributes.clone(),
        },
        ThingTypeMetadata {
            deprecated: thing_type.deprecated_at.is_some(),
            deprecation_date: thing_type.deprecated_at.map(epoch_seconds),
            creation_date: epoch_seconds(thing_type.created_at),
        },
    )
}

// ---- thing types ------------------------------------------------------------------------------

pub async fn create_thing_type(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = thing_name(&name, "thingTypeName")?;
    let request: CreateThingTypeRequest = json_body(&body)?;
    let properties = type_properties(request.thing_type_properties)?;
    let tags = tags_from_wire(request.tags)?;
    let created = call(&state, move |services| services.create_thing_type(&caller, &name, &properties, &tags)).await?;
    json(CreateThingTypeResponse {
        thing_type_name: created.name.to_string(),
        thing_type_arn: state.services.thing_type_arn(&created.account, &created.name),
        thing_type_id: created.id,
    })
}

pub async fn describe_thing_type(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = thing_name(&name, "thingTypeName")?;
    let found = call(&state, move |services| services.describe_thing_type(&caller, &name)).await?;
    let (properties, metadata) = type_definition(&found);
    json(DescribeThingTypeResponse {
        thing_type_name: found.name.to_string(),
        thing_type_arn: state.services.thing_type_arn(&found.account, &found.name),
        thing_type_id: found.id,
        thing_type_properties: properties,
        thing_type_metadata: metadata,
    })
}

pub async fn list_thing_types(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = token_page(&query)?;
    let name = query.text("thingTypeName").map(|text| thing_name(text, "thingTypeName")).transpose()?;
    let page = call(&state, move |services| services.list_thing_types(&caller, name.as_ref(), &page)).await?;
    json(ListThingTypesResponse {
        thing_types: page
            .items
            .iter()
            .map(|thing_type| {
                let (properties, metadata) = type_definition(thing_type);
                ThingTypeDefinition {
                    thing_type_name: thing_type.name.to_string(),
                    thing_type_arn: state.services.thing_type_arn(&thing_type.account, &thing_type.name),
                    thing_type_properties: properties,
                    thing_type_metadata: metadata,
                }
            })
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn update_thing_type(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = thing_name(&name, "thingTypeName")?;
    let request: UpdateThingTypeRequest = json_body(&body)?;
    let properties = type_properties(request.thing_type_properties)?;
    call(&state, move |services| services.update_thing_type(&caller, &name, &properties)).await?;
    json(json_value!({}))
}

pub async fn deprecate_thing_type(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = thing_name(&name, "thingTypeName")?;
    let request: DeprecateThingTypeRequest = json_body(&body)?;
    let undo = request.undo_deprecate.unwrap_or(false);
    call(&state, move |services| services.deprecate_thing_type(&caller, &name, undo)).await?;
    json(json_value!({}))
}

pub async fn delete_thing_type(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = thing_name(&name, "thingTypeName")?;
    call(&state, move |services| services.delete_thing_type(&caller, &name)).await?;
    json(json_value!({}))
}

// ---- thing groups -----------------------------------------------------------------------------

pub async fn create_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = group_name(&name, "thingGroupName")?;
    let request: CreateThingGroupRequest = json_body(&body)?;
    let properties = request.thing_group_properties.unwrap_or_default();
    let definition = ThingGroupDefinition {
        parent: request.parent_group_name.as_deref().map(|text| group_name(text, "parentGroupName")).transpose()?,
        description: properties.thing_group_description,
        attributes: properties.attribute_payload.map(attribute_payload).unwrap_or_default().attributes,
    };
    let tags = tags_from_wire(request.tags)?;
    let group = call(&state, move |services| services.create_thing_group(&caller, &name, &definition, &tags)).await?;
    json(CreateThingGroupResponse {
        thing_group_name: group.name.to_string(),
        thing_group_arn: state.services.thing_group_arn(&group.account, &group.name),
        thing_group_id: group.id,
    })
}

pub async fn describe_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = group_name(&name, "thingGroupName")?;
    let described = call(&state, move |services| services.describe_thing_group(&caller, &name)).await?;
    let group = &described.group;
    let arn = |name: &ThingGroupName| state.services.thing_group_arn(&group.account, name);
    json(DescribeThingGroupResponse {
        thing_group_name: group.name.to_string(),
        thing_group_id: group.id.clone(),
        thing_group_arn: arn(&group.name),
        version: group.version,
        thing_group_properties: ThingGroupPropertiesOut {
            thing_group_description: group.description.clone(),
            attribute_payload: AttributePayloadOut { attributes: group.attributes.clone() },
        },
        thing_group_metadata: ThingGroupMetadata {
            parent_group_name: group.parent.as_ref().map(ToString::to_string),
            root_to_parent_thing_groups: described
                .root_to_parent
                .iter()
                .map(|name| GroupNameAndArn { group_name: name.to_string(), group_arn: arn(name) })
                .collect(),
            creation_date: epoch_seconds(group.created_at),
        },
        status: "ACTIVE",
    })
}

pub async fn update_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = group_name(&name, "thingGroupName")?;
    let request: UpdateThingGroupRequest = json_body(&body)?;
    let properties =
        request.thing_group_properties.ok_or_else(|| ApiError::invalid_request("thingGroupProperties is required"))?;
    let update = ThingGroupUpdate {
        description: properties.thing_group_description,
        attributes: properties.attribute_payload.map(attribute_payload),
        expected_version: request.expected_version,
    };
    let version = call(&state, move |services| services.update_thing_group(&caller, &name, &update)).await?;
    json(UpdateThingGroupResponse { version })
}

pub async fn delete_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = group_name(&name, "thingGroupName")?;
    let query = Query::parse(query.as_deref())?;
    let expected_version = query
        .text("expectedVersion")
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| ApiError::invalid_request(format!("expectedVersion must be an integer, got {text:?}")))
        })
        .transpose()?;
    call(&state, move |services| services.delete_thing_group(&caller, &name, expected_version)).await?;
    json(json_value!({}))
}

/// ListThingGroups. Without `parentGroup`, every group (root groups only with
/// `recursive=false`); with it, its children (every descendant with `recursive=true`).
pub async fn list_thing_groups(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = token_page(&query)?;
    let parent = query.text("parentGroup").map(|text| group_name(text, "parentGroup")).transpose()?;
    let recursive = match query.text("recursive") {
        None => parent.is_none(),
        Some(_) => query.flag("recursive")?,
    };
    let name_prefix = query
        .text("namePrefixFilter")
        .map(|text| group_name(text, "namePrefixFilter").map(|name| name.to_string()))
        .transpose()?;
    let filter = ThingGroupFilter { parent, recursive, name_prefix };
    let account = caller.account.clone();
    let page = call(&state, move |services| services.list_thing_groups(&caller, &filter, &page)).await?;
    json(ListThingGroupsResponse {
        thing_groups: page
            .items
            .iter()
            .map(|name| GroupNameAndArn {
                group_name: name.to_string(),
                group_arn: state.services.thing_group_arn(&account, name),
            })
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn add_thing_to_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: ThingGroupMemberRequest = json_body(&body)?;
    no_dynamic_groups(request.override_dynamic_groups)?;
    let group = group_of(&state.services, &caller, request.thing_group_name, request.thing_group_arn)?;
    let thing = thing_of(&state.services, &caller, request.thing_name, request.thing_arn)?;
    call(&state, move |services| services.add_thing_to_thing_group(&caller, &group, &thing)).await?;
    json(json_value!({}))
}

pub async fn remove_thing_from_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: ThingGroupMemberRequest = json_body(&body)?;
    let group = group_of(&state.services, &caller, request.thing_group_name, request.thing_group_arn)?;
    let thing = thing_of(&state.services, &caller, request.thing_name, request.thing_arn)?;
    call(&state, move |services| services.remove_thing_from_thing_group(&caller, &group, &thing)).await?;
    json(json_value!({}))
}

pub async fn update_thing_groups_for_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Reply {
    let request: UpdateThingGroupsForThingRequest = json_body(&body)?;
    no_dynamic_groups(request.override_dynamic_groups)?;
    let thing = thing_name(request.thing_name.as_deref().unwrap_or_default(), "thingName")?;
    let names = |list: Option<Vec<String>>, member: &str| -> Result<Vec<ThingGroupName>, ApiError> {
        let list = list.unwrap_or_default();
        if list.len() > certfleet_services::MAX_GROUPS_PER_THING {
            return Err(ApiError::invalid_request(format!(
                "{member} names at most {} groups, not {}",
                certfleet_services::MAX_GROUPS_PER_THING,
                list.len()
            )));
        }
        list.iter().map(|text| group_name(text, member)).collect()
    };
    let add = names(request.thing_groups_to_add, "thingGroupsToAdd")?;
    let remove = names(request.thing_groups_to_remove, "thingGroupsToRemove")?;
    call(&state, move |services| services.update_thing_groups_for_thing(&caller, &thing, &add, &remove)).await?;
    json(json_value!({}))
}

pub async fn list_things_in_thing_group(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = group_name(&name, "thingGroupName")?;
    let query = Query::parse(query.as_deref())?;
    let page = token_page(&query)?;
    let recursive = query.flag("recursive")?;
    let page =
        call(&state, move |services| services.list_things_in_thing_group(&caller, &name, recursive, &page)).await?;
    json(ListThingsInThingGroupResponse {
        things: page.items.iter().map(ToString::to_string).collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn list_thing_groups_for_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let page = token_page(&Query::parse(query.as_deref())?)?;
    let account = caller.account.clone();
    let page = call(&state, move |services| services.list_thing_groups_for_thing(&caller, &name, &page)).await?;
    json(ListThingGroupsResponse {
        thing_groups: page
            .items
            .iter()
            .map(|name| GroupNameAndArn {
                group_name: name.to_string(),
                group_arn: state.services.thing_group_arn(&account, name),
            })
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}
