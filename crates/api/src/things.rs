//! Handlers of the thing operations: things and their attributes, and the certificates attached
//! to them (the principal travels in the `x-amzn-principal` header).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use certfleet_registry::{AttributeFilter, KeyPageRequest, ThingFilter, ThingName, ThingPrincipalType};
use certfleet_services::{AttributePayload, Caller, ThingDefinition, ThingUpdate, decode_token, encode_token};
use http::HeaderMap;
use serde_json::json as json_value;

use crate::AppState;
use crate::certificates::{Reply, call, json};
use crate::error::ApiError;
use crate::policies::header;
use crate::wire::{Query, json_body};
use crate::wire_things::*;

pub(crate) fn thing_name(text: &str, member: &str) -> Result<ThingName, ApiError> {
    ThingName::parse(text).map_err(|_| {
        ApiError::invalid_request(format!("{member} must match [a-zA-Z0-9:_-]+ (1 to 128 characters), got {text:?}"))
    })
}

fn principal_type(query: &Query) -> Result<Option<ThingPrincipalType>, ApiError> {
    query
        .text("thingPrincipalType")
        .map(|text| {
            ThingPrincipalType::parse(text).ok_or_else(|| {
                ApiError::invalid_request(format!(
                    "thingPrincipalType must be EXCLUSIVE_THING or NON_EXCLUSIVE_THING, got {text:?}"
                ))
            })
        })
        .transpose()
}

/// `nextToken`/`maxResults` of the thing listings.
pub(crate) fn token_page(query: &Query) -> Result<KeyPageRequest, ApiError> {
    Ok(KeyPageRequest {
        limit: query.int("maxResults", 1..=250)?.unwrap_or(50),
        after: query.text("nextToken").filter(|token| !token.is_empty()).map(decode_token).transpose()?,
    })
}

pub(crate) fn attribute_payload(payload: WireAttributePayload) -> AttributePayload {
    AttributePayload { attributes: payload.attributes.unwrap_or_default(), merge: payload.merge.unwrap_or(false) }
}

// ---- things -----------------------------------------------------------------------------------

pub async fn create_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let request: CreateThingRequest = json_body(&body)?;
    let definition = ThingDefinition {
        type_name: request.thing_type_name.as_deref().map(|text| thing_name(text, "thingTypeName")).transpose()?,
        attributes: request.attribute_payload.map(attribute_payload).unwrap_or_default().attributes,
        billing_group: request.billing_group_name,
    };
    let thing = call(&state, move |services| services.create_thing(&caller, &name, &definition)).await?;
    json(CreateThingResponse {
        thing_name: thing.name.to_string(),
        thing_arn: state.services.thing_arn(&thing.account, &thing.name),
        thing_id: thing.id,
    })
}

pub async fn describe_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let thing = call(&state, move |services| services.describe_thing(&caller, &name)).await?;
    json(describe_thing_response(&thing, state.services.thing_arn(&thing.account, &thing.name)))
}

pub async fn update_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Bytes,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let request: UpdateThingRequest = json_body(&body)?;
    let update = ThingUpdate {
        type_name: request.thing_type_name.as_deref().map(|text| thing_name(text, "thingTypeName")).transpose()?,
        remove_type: request.remove_thing_type.unwrap_or(false),
        attributes: request.attribute_payload.map(attribute_payload),
        expected_version: request.expected_version,
    };
    call(&state, move |services| services.update_thing(&caller, &name, &update)).await?;
    json(json_value!({}))
}

pub async fn delete_thing(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let query = Query::parse(query.as_deref())?;
    let expected_version = query
        .text("expectedVersion")
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| ApiError::invalid_request(format!("expectedVersion must be an integer, got {text:?}")))
        })
        .transpose()?;
    call(&state, move |services| services.delete_thing(&caller, &name, expected_version)).await?;
    json(json_value!({}))
}

pub async fn list_things(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Reply {
    let query = Query::parse(query.as_deref())?;
    let page = token_page(&query)?;
    let attribute_name = query.text("attributeName").filter(|name| !name.is_empty()).map(str::to_owned);
    let attribute_value = query.text("attributeValue").map(str::to_owned);
    let attribute = match (attribute_name, attribute_value) {
        (None, None) => None,
        (None, Some(_)) => return Err(ApiError::invalid_request("attributeValue needs an attributeName")),
        (Some(name), None) => Some(AttributeFilter::Present { name }),
        (Some(name), Some(prefix)) if query.flag("usePrefixAttributeValue")? => {
            Some(AttributeFilter::StartsWith { name, prefix })
        }
        (Some(name), Some(value)) => Some(AttributeFilter::Equals { name, value }),
    };
    let filter = ThingFilter {
        type_name: query.text("thingTypeName").map(|text| thing_name(text, "thingTypeName")).transpose()?,
        attribute,
    };
    let page = call(&state, move |services| services.list_things(&caller, &filter, &page)).await?;
    json(ListThingsResponse {
        things: page
            .items
            .iter()
            .map(|thing| thing_attribute(thing, state.services.thing_arn(&thing.account, &thing.name)))
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

// ---- principals -------------------------------------------------------------------------------

pub async fn attach_thing_principal(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let principal = header(&headers, "x-amzn-principal")?;
    let kind = principal_type(&Query::parse(query.as_deref())?)?.unwrap_or(ThingPrincipalType::NonExclusive);
    call(&state, move |services| services.attach_thing_principal(&caller, &name, &principal, kind)).await?;
    json(json_value!({}))
}

pub async fn detach_thing_principal(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let principal = header(&headers, "x-amzn-principal")?;
    call(&state, move |services| services.detach_thing_principal(&caller, &name, &principal)).await?;
    json(json_value!({}))
}

pub async fn list_thing_principals(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let page = token_page(&Query::parse(query.as_deref())?)?;
    let account = caller.account.clone();
    let page = call(&state, move |services| services.list_thing_principals(&caller, &name, None, &page)).await?;
    json(ListThingPrincipalsResponse {
        principals: page
            .items
            .iter()
            .map(|attachment| state.services.certificate_arn(&account, &attachment.certificate_id))
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn list_thing_principals_v2(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Reply {
    let name = thing_name(&name, "thingName")?;
    let query = Query::parse(query.as_deref())?;
    let (page, kind) = (token_page(&query)?, principal_type(&query)?);
    let account = caller.account.clone();
    let page = call(&state, move |services| services.list_thing_principals(&caller, &name, kind, &page)).await?;
    json(ListThingPrincipalsV2Response {
        thing_principal_objects: page
            .items
            .iter()
            .map(|attachment| ThingPrincipalObject {
                principal: state.services.certificate_arn(&account, &attachment.certificate_id),
                thing_principal_type: attachment.principal_type.as_str(),
            })
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn list_principal_things(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let principal = header(&headers, "x-amzn-principal")?;
    let page = token_page(&Query::parse(query.as_deref())?)?;
    let page = call(&state, move |services| services.list_principal_things(&caller, &principal, None, &page)).await?;
    json(ListPrincipalThingsResponse {
        things: page.items.iter().map(|attachment| attachment.thing_name.to_string()).collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}

pub async fn list_principal_things_v2(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Reply {
    let principal = header(&headers, "x-amzn-principal")?;
    let query = Query::parse(query.as_deref())?;
    let (page, kind) = (token_page(&query)?, principal_type(&query)?);
    let page = call(&state, move |services| services.list_principal_things(&caller, &principal, kind, &page)).await?;
    json(ListPrincipalThingsV2Response {
        principal_thing_objects: page
            .items
            .iter()
            .map(|attachment| PrincipalThingObject {
                thing_name: attachment.thing_name.to_string(),
                thing_principal_type: attachment.principal_type.as_str(),
            })
            .collect(),
        next_token: page.next.as_deref().map(encode_token),
    })
}
