//! Provisioning templates: the language of JITP templates (a CA's `templateBody`, or a JITP
//! provisioning template) and of FLEET_PROVISIONING templates (and RegisterThing's
//! `templateBody`), parsed and checked once into a typed [`Template`] and resolved, without IO,
//! into the concrete [`Provisioning`] a registry transaction applies.
//!
//! A template's [`TemplateKind`] decides what it may use:
//!
//! - **JITP** (unchanged since issue 5): sections `Parameters` and `Resources`; the parameters
//!   `AWS::IoT::Certificate::*`, filled from the device certificate ([`Template::resolve`]), with
//!   a `Default`; `Ref`, `Fn::Join`, `Fn::Sub` (string form); one thing (no groups), one
//!   certificate (CertificateId, Status), one policy. `OverrideSettings` is accepted and ignored
//!   (an existing thing is used as it is). Anything else is refused.
//! - **FLEET_PROVISIONING**: sections `Parameters` (`Type` String or Number, `Default`),
//!   `Mappings`, `Conditions` (`Fn::Equals`, `Fn::And`, `Fn::Or`, `Fn::Not`, `{"Condition":
//!   name}`), `Resources` (each may carry `"Condition": name`), `DeviceConfiguration` (a flat
//!   object of values returned to the device); the intrinsics `Ref`, `Fn::Join`, `Fn::Sub`,
//!   `Fn::If` (with `{"Ref": "AWS::NoValue"}` dropping a property), `Fn::Select`, `Fn::Split`,
//!   `Fn::FindInMap`; a thing with `ThingGroups` and typed `OverrideSettings`, a certificate
//!   (`CertificateId` = `AWS::IoT::Certificate::Id`, or for RegisterThing a
//!   `CertificateSigningRequest` or `CertificatePem` parameter), up to 10 policies. Parameters
//!   come from the device's request and `AWS::IoT::Certificate::Id` from the service
//!   ([`Template::resolve_fleet`]).
//!
//! Every input is hostile: the body is at most 10240 characters, expressions nest at most
//! [`MAX_DEPTH`] deep, condition references form no cycle and chain at most [`MAX_DEPTH`] deep
//! (each condition is evaluated once per resolution), a request has at most [`MAX_PARAMETERS`]
//! parameters with names of at most 2048 and values of at most 4096 characters, and no value a
//! template computes (a `Fn::Join`, a `Fn::Sub`) exceeds [`MAX_VALUE_CHARS`] nor a list (a
//! `Fn::Split`) [`MAX_LIST_ITEMS`] items: each is checked as it is built.

use std::collections::{BTreeMap, BTreeSet};

use certfleet_pki::{Certificate, CertificateId};
use certfleet_registry::{CertificateStatus, PolicyName, ThingName};
use serde_json::{Map, Value};

use crate::Error;

/// The longest body AWS accepts (`TemplateBody`).
pub const MAX_BODY_CHARS: usize = 10240;
/// How deep expressions (and chains of condition references) may nest.
pub const MAX_DEPTH: usize = 16;
/// The most parameters a template declares, and a request gives.
pub const MAX_PARAMETERS: usize = 100;
/// The longest parameter name (AWS's `Parameter` shape).
pub const MAX_PARAMETER_NAME_CHARS: usize = 2048;
/// The longest parameter value (AWS's `Value` shape).
pub const MAX_PARAMETER_VALUE_CHARS: usize = 4096;
/// The longest value a template computes.
pub const MAX_VALUE_CHARS: usize = 4096;
/// The most items of a list (`Fn::Split`'s result, a literal list).
pub const MAX_LIST_ITEMS: usize = 100;
/// The most policy resources of a fleet provisioning template (AWS's policies per certificate).
pub const MAX_POLICIES: usize = 10;
/// The most thing groups a thing resource names (AWS's groups per thing).
pub const MAX_THING_GROUPS: usize = 10;

/// The service-provided parameter: the ID of the certificate being provisioned.
pub const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";
const NO_VALUE: &str = "AWS::NoValue";

/// The parameters a JITP template may use, with the OID of the subject attribute each comes from.
const JITP_PARAMETERS: [(&str, Option<&str>); 8] = [
    ("AWS::IoT::Certificate::CommonName", Some("2.5.4.3")),
    ("AWS::IoT::Certificate::Country", Some("2.5.4.6")),
    ("AWS::IoT::Certificate::Organization", Some("2.5.4.10")),
    ("AWS::IoT::Certificate::OrganizationalUnit", Some("2.5.4.11")),
    ("AWS::IoT::Certificate::DistinguishedNameQualifier", Some("2.5.4.46")),
    ("AWS::IoT::Certificate::StateName", Some("2.5.4.8")),
    ("AWS::IoT::Certificate::SerialNumber", Some("2.5.4.5")),
    (CERTIFICATE_ID_PARAMETER, None),
];

/// What a template is for, which decides what it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateKind {
    /// Just-in-time provisioning: parameters from the device certificate.
    Jitp,
    /// Fleet provisioning (and RegisterThing): parameters from the request.
    FleetProvisioning,
}

impl TemplateKind {
    /// AWS's `type`: `JITP` or `FLEET_PROVISIONING`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "JITP" => Some(TemplateKind::Jitp),
            "FLEET_PROVISIONING" => Some(TemplateKind::FleetProvisioning),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Jitp => "JITP",
            TemplateKind::FleetProvisioning => "FLEET_PROVISIONING",
        }
    }
}

/// A checked template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    kind: TemplateKind,
    parameters: BTreeMap<String, Declaration>,
    mappings: Mappings,
    conditions: BTreeMap<String, Condition>,
    thing: Option<Resource<ThingResource>>,
    certificate: Option<Resource<CertificateResource>>,
    policies: Vec<Resource<PolicyResource>>,
    device_configuration: BTreeMap<String, Expr>,
}

/// `Mappings`: map name, then top-level key, then second-level key, to a value.
type Mappings = BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Declaration {
    number: bool,
    default: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Resource<T> {
    logical_name: String,
    condition: Option<String>,
    body: T,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ThingResource {
    name: Expr,
    type_name: Option<Expr>,
    attributes: BTreeMap<String, Expr>,
    groups: Vec<Expr>,
    overrides: OverrideSettings,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CertificateResource {
    status: Expr,
    source: SourceExpr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SourceExpr {
    Provisioned,
    SigningRequest(Expr),
    Pem(Expr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PolicyResource {
    name: Option<Expr>,
    document: Option<String>,
}

/// A template value: text, a parameter, or an intrinsic function over values.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Text(String),
    Ref(String),
    /// `{"Ref": "AWS::NoValue"}`: the property is dropped.
    NoValue,
    Join(String, List),
    /// `Fn::Sub`: literal pieces and `${Parameter}` references, in order.
    Sub(Vec<Expr>),
    If(String, Box<Expr>, Box<Expr>),
    Select(Box<Expr>, List),
    FindInMap(Box<[Expr; 3]>),
}

/// A list value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum List {
    Items(Vec<Expr>),
    Split(String, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Condition {
    Equals(Expr, Expr),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    Named(String),
}

/// What to do with a field of a thing that exists already (AWS's `OverrideSettings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    /// Add the template's values to the thing's (attributes, groups).
    Merge,
    /// Set the thing's field to the template's value.
    Replace,
    /// Leave the thing's field as it is.
    DoNothing,
    /// Refuse the provisioning if the thing's field differs from the template's value.
    Fail,
}

impl Override {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "MERGE" => Some(Override::Merge),
            "REPLACE" => Some(Override::Replace),
            "DO_NOTHING" => Some(Override::DoNothing),
            "FAIL" => Some(Override::Fail),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Override::Merge => "MERGE",
            Override::Replace => "REPLACE",
            Override::DoNothing => "DO_NOTHING",
            Override::Fail => "FAIL",
        }
    }
}

/// The thing resource's `OverrideSettings`; a field not named is [`Override::DoNothing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverrideSettings {
    /// MERGE, REPLACE, DO_NOTHING or FAIL.
    pub attributes: Override,
    /// REPLACE, DO_NOTHING or FAIL.
    pub type_name: Override,
    /// MERGE, REPLACE, DO_NOTHING or FAIL.
    pub groups: Override,
}

impl Default for OverrideSettings {
    fn default() -> Self {
        OverrideSettings {
            attributes: Override::DoNothing,
            type_name: Override::DoNothing,
            groups: Override::DoNothing,
        }
    }
}

/// What a template gives for one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioning {
    pub thing: Option<ProvisionedThing>,
    /// The status the certificate is registered with (ACTIVE when the template has no
    /// certificate resource).
    pub status: CertificateStatus,
    /// Where the certificate comes from.
    pub certificate: CertificateSource,
    /// The certificate resource's logical name (for RegisterThing's `resourceArns`).
    pub certificate_logical_name: Option<String>,
    pub policies: Vec<ProvisionedPolicy>,
    /// The template's `DeviceConfiguration`, returned to the device.
    pub device_configuration: BTreeMap<String, String>,
}

/// Where the certificate being provisioned comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// The certificate the provisioning is for: JITP's device certificate, or the one the
    /// server issued to a fleet-provisioning device (`AWS::IoT::Certificate::Id`).
    Provisioned,
    /// RegisterThing: a certificate to issue for this CSR (PEM).
    SigningRequest(String),
    /// RegisterThing: this certificate (PEM), signed by one of the account's CAs.
    Pem(String),
}

/// The thing to create or update, and attach the certificate to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedThing {
    pub logical_name: String,
    pub name: ThingName,
    pub type_name: Option<ThingName>,
    pub attributes: BTreeMap<String, String>,
    /// The thing groups the thing belongs to (names checked like thing names).
    pub groups: Vec<String>,
    pub overrides: OverrideSettings,
}

/// A policy to attach to the certificate: an existing one (no document) or one to create with
/// `document` (reused when it exists with that document).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedPolicy {
    pub logical_name: String,
    pub name: PolicyName,
    pub document: Option<String>,
}

impl Template {
    /// Parses and checks a JITP template body; every refusal is [`Error::InvalidRequest`].
    pub fn parse(body: &str) -> Result<Template, Error> {
        Template::parse_as(TemplateKind::Jitp, body)
    }

    /// Parses and checks a template body of `kind`; every refusal is [`Error::InvalidRequest`].
    pub fn parse_as(kind: TemplateKind, body: &str) -> Result<Template, Error> {
        if body.chars().count() > MAX_BODY_CHARS {
            return Err(invalid(format!("the template is longer than {MAX_BODY_CHARS} characters")));
        }
        let root: Value =
            serde_json::from_str(body).map_err(|error| invalid(format!("the template is not JSON: {error}")))?;
        let root = root.as_object().ok_or_else(|| invalid("the template must be a JSON object".into()))?;
        let fleet = kind == TemplateKind::FleetProvisioning;
        for key in root.keys() {
            match key.as_str() {
                "Parameters" | "Resources" => {}
                "Conditions" | "Mappings" | "DeviceConfiguration" | "Description" | "AWSTemplateFormatVersion"
                    if fleet => {}
                "Conditions" => return Err(invalid("template Conditions are not supported".into())),
                other => return Err(invalid(format!("unknown template section {other:?}"))),
            }
        }
        let mut template = Template {
            kind,
            parameters: BTreeMap::new(),
            mappings: BTreeMap::new(),
            conditions: BTreeMap::new(),
            thing: None,
            certificate: None,
            policies: Vec::new(),
            device_configuration: BTreeMap::new(),
        };
        if let Some(parameters) = root.get("Parameters") {
            template.parameters = parse_parameters(kind, parameters)?;
        }
        if let Some(mappings) = root.get("Mappings") {
            template.mappings = parse_mappings(mappings)?;
        }
        let condition_names: BTreeSet<String> = match root.get("Conditions") {
            None => BTreeSet::new(),
            Some(conditions) => conditions
                .as_object()
                .ok_or_else(|| invalid("Conditions must be an object".into()))?
                .keys()
                .cloned()
                .collect(),
        };
        let parser = Parser { template: &template, condition_names: &condition_names };
        let mut conditions = BTreeMap::new();
        if let Some(Value::Object(definitions)) = root.get("Conditions") {
            for (name, definition) in definitions {
                conditions.insert(name.clone(), parser.condition(definition, 0)?);
            }
        }
        check_condition_chains(&conditions)?;
        let resources = root
            .get("Resources")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("the template needs a Resources object".into()))?;
        let mut thing = None;
        let mut certificate = None;
        let mut policies = Vec::new();
        for (logical_name, resource) in resources {
            let resource = resource
                .as_object()
                .ok_or_else(|| invalid(format!("the resource {logical_name} must be an object")))?;
            let kind_name = resource.get("Type").and_then(Value::as_str).unwrap_or_default();
            let empty = Map::new();
            let properties = match resource.get("Properties") {
                None => &empty,
                Some(properties) => properties
                    .as_object()
                    .ok_or_else(|| invalid(format!("the Properties of {logical_name} must be an object")))?,
            };
            let allowed_keys: &[&str] = if fleet {
                &["Type", "Properties", "OverrideSettings", "Condition"]
            } else {
                &["Type", "Properties", "OverrideSettings"]
            };
            if let Some(other) = resource.keys().find(|key| !allowed_keys.contains(&key.as_str())) {
                return Err(invalid(format!("the resource {logical_name} has an unsupported key {other:?}")));
            }
            let condition = match resource.get("Condition") {
                None => None,
                Some(Value::String(name)) if condition_names.contains(name) => Some(name.clone()),
                Some(other) => {
                    return Err(invalid(format!("the Condition of {logical_name} names no condition: {other}")));
                }
            };
            let duplicate = || invalid(format!("the template has a second {kind_name} resource ({logical_name})"));
            match kind_name {
                "AWS::IoT::Thing" => {
                    if thing.is_some() {
                        return Err(duplicate());
                    }
                    let overrides = match resource.get("OverrideSettings") {
                        Some(settings) if fleet => parse_overrides(settings)?,
                        _ => OverrideSettings::default(),
                    };
                    thing =
                        Some(resource_of(logical_name, &condition, parser.thing(logical_name, properties, overrides)?));
                }
                "AWS::IoT::Certificate" => {
                    if certificate.is_some() {
                        return Err(duplicate());
                    }
                    if condition.is_some() {
                        return Err(invalid(format!(
                            "the certificate resource {logical_name} cannot have a Condition"
                        )));
                    }
                    certificate =
                        Some(resource_of(logical_name, &condition, parser.certificate(logical_name, properties)?));
                }
                "AWS::IoT::Policy" => {
                    if !policies.is_empty() && !fleet {
                        return Err(duplicate());
                    }
                    if policies.len() == MAX_POLICIES {
                        return Err(invalid(format!("a template has at most {MAX_POLICIES} policy resources")));
                    }
                    policies.push(resource_of(logical_name, &condition, parser.policy(logical_name, properties)?));
                }
                other => return Err(invalid(format!("the resource {logical_name} has an unsupported type {other:?}"))),
            }
        }
        let mut device_configuration = BTreeMap::new();
        if let Some(configuration) = root.get("DeviceConfiguration") {
            let configuration =
                configuration.as_object().ok_or_else(|| invalid("DeviceConfiguration must be an object".into()))?;
            for (key, value) in configuration {
                device_configuration.insert(key.clone(), parser.expr(value, 0)?);
            }
        }
        if fleet && certificate.is_none() {
            return Err(invalid("a fleet provisioning template needs an AWS::IoT::Certificate resource".into()));
        }
        template.conditions = conditions;
        template.thing = thing;
        template.certificate = certificate;
        template.policies = policies;
        template.device_configuration = device_configuration;
        Ok(template)
    }

    pub fn kind(&self) -> TemplateKind {
        self.kind
    }

    /// Whether the certificate resource names a CSR or a certificate parameter (RegisterThing),
    /// rather than the certificate being provisioned.
    pub fn certificate_is_supplied(&self) -> bool {
        self.certificate.as_ref().is_some_and(|certificate| !matches!(certificate.body.source, SourceExpr::Provisioned))
    }

    /// The resources for `device`, whose ID is `id` (JITP). Fails when a parameter the template
    /// uses is neither in the certificate nor declared with a default, or when a value is not a
    /// valid name or attribute.
    pub fn resolve(&self, device: &Certificate, id: &CertificateId) -> Result<Provisioning, Error> {
        let subject = device.subject_attributes();
        let parameter = |name: &str| -> Result<Option<String>, Error> {
            let from_certificate = match JITP_PARAMETERS.iter().find(|(known, _)| *known == name) {
                Some((_, None)) => Some(id.to_string()),
                Some((_, Some(oid))) => {
                    subject.iter().find(|(attribute, _)| attribute == oid).map(|(_, value)| value.clone())
                }
                None => None,
            };
            let value =
                from_certificate.or_else(|| self.parameters.get(name).and_then(|declared| declared.default.clone()));
            match value {
                Some(value) => Ok(Some(value)),
                None => Err(invalid(format!(
                    "the certificate has no value for the parameter {name}, and it has no default"
                ))),
            }
        };
        self.resolve_with(&parameter)
    }

    /// The resources for a fleet provisioning request: `parameters` from the device (or
    /// RegisterThing's caller), `certificate_id` the ID of the certificate being provisioned
    /// (`None` for RegisterThing, where `AWS::IoT::Certificate::Id` has no value). A parameter the
    /// template uses with neither a value nor a default, a value too long or not a number where
    /// the declaration says Number, is [`Error::InvalidParameters`].
    pub fn resolve_fleet(
        &self,
        parameters: &BTreeMap<String, String>,
        certificate_id: Option<&CertificateId>,
    ) -> Result<Provisioning, Error> {
        if self.kind != TemplateKind::FleetProvisioning {
            return Err(invalid("a JITP template is resolved for a device certificate".into()));
        }
        if parameters.len() > MAX_PARAMETERS {
            return Err(Error::InvalidParameters(format!("at most {MAX_PARAMETERS} parameters")));
        }
        for (name, value) in parameters {
            if name.chars().count() > MAX_PARAMETER_NAME_CHARS || value.chars().count() > MAX_PARAMETER_VALUE_CHARS {
                return Err(Error::InvalidParameters(format!(
                    "parameter names are at most {MAX_PARAMETER_NAME_CHARS} and values at most {MAX_PARAMETER_VALUE_CHARS} characters"
                )));
            }
        }
        if certificate_id.is_some() && self.certificate_is_supplied() {
            return Err(invalid(
                "this template's certificate is a CertificateSigningRequest or CertificatePem parameter: only RegisterThing can use it"
                    .into(),
            ));
        }
        let parameter = |name: &str| -> Result<Option<String>, Error> {
            if name == CERTIFICATE_ID_PARAMETER {
                return certificate_id.map(|id| Some(id.to_string())).ok_or_else(|| {
                    Error::InvalidParameters(format!("{CERTIFICATE_ID_PARAMETER} has no value in RegisterThing"))
                });
            }
            let declared = self.parameters.get(name);
            let value =
                parameters.get(name).cloned().or_else(|| declared.and_then(|declared| declared.default.clone()));
            let Some(value) = value else {
                return Err(Error::InvalidParameters(format!(
                    "the parameter {name} has no value in the request and no default"
                )));
            };
            if declared.is_some_and(|declared| declared.number) && value.trim().parse::<f64>().is_err() {
                return Err(Error::InvalidParameters(format!("the parameter {name} must be a number")));
            }
            Ok(Some(value))
        };
        self.resolve_with(&parameter)
    }

    fn resolve_with(&self, parameter: &dyn Fn(&str) -> Result<Option<String>, Error>) -> Result<Provisioning, Error> {
        let mut scope = Scope { template: self, parameter, conditions: BTreeMap::new() };
        let thing = match &self.thing {
            Some(resource) if scope.applies(resource.condition.as_deref())? => {
                let thing = &resource.body;
                let name = scope.required(&thing.name, "ThingName")?;
                let type_name = match &thing.type_name {
                    None => None,
                    Some(expr) => scope.value(expr)?,
                };
                let mut attributes = BTreeMap::new();
                for (key, expr) in &thing.attributes {
                    if let Some(value) = scope.value(expr)?.filter(|value| !value.is_empty()) {
                        attributes.insert(key.clone(), value);
                    }
                }
                crate::things::check_attributes(&attributes)?;
                let type_name = type_name
                    .map(|text| ThingName::parse(&text))
                    .transpose()
                    .map_err(|error| invalid(error.to_string()))?;
                crate::things::check_attribute_count(&attributes, type_name.as_ref())?;
                let mut groups = Vec::new();
                for expr in &thing.groups {
                    if let Some(group) = scope.value(expr)? {
                        ThingName::parse(&group).map_err(|_| {
                            invalid(format!(
                                "a thing group name must match [a-zA-Z0-9:_-]+ (1 to 128 characters), got {group:?}"
                            ))
                        })?;
                        if !groups.contains(&group) {
                            groups.push(group);
                        }
                    }
                }
                Some(ProvisionedThing {
                    logical_name: resource.logical_name.clone(),
                    name: ThingName::parse(&name).map_err(|error| invalid(error.to_string()))?,
                    type_name,
                    attributes,
                    groups,
                    overrides: thing.overrides,
                })
            }
            _ => None,
        };
        let mut policies = Vec::new();
        for resource in &self.policies {
            if !scope.applies(resource.condition.as_deref())? {
                continue;
            }
            let policy = &resource.body;
            let name = match (&policy.name, &policy.document) {
                (Some(expr), _) => scope.required(expr, "PolicyName")?,
                (None, Some(document)) => generated_policy_name(document),
                (None, None) => {
                    return Err(invalid("the policy resource needs a PolicyName or a PolicyDocument".into()));
                }
            };
            let name = PolicyName::parse(&name).map_err(|error| invalid(error.to_string()))?;
            if policies.iter().any(|existing: &ProvisionedPolicy| existing.name == name) {
                return Err(invalid(format!("two policy resources name the policy {name}")));
            }
            policies.push(ProvisionedPolicy {
                logical_name: resource.logical_name.clone(),
                name,
                document: policy.document.clone(),
            });
        }
        let (status, certificate, certificate_logical_name) = match &self.certificate {
            None => (CertificateStatus::Active, CertificateSource::Provisioned, None),
            Some(resource) => {
                let status = match scope.required(&resource.body.status, "Status")?.as_str() {
                    "ACTIVE" => CertificateStatus::Active,
                    "INACTIVE" => CertificateStatus::Inactive,
                    _ => return Err(invalid("the certificate Status must be ACTIVE or INACTIVE".into())),
                };
                let source = match &resource.body.source {
                    SourceExpr::Provisioned => CertificateSource::Provisioned,
                    SourceExpr::SigningRequest(expr) => {
                        CertificateSource::SigningRequest(scope.required(expr, "CertificateSigningRequest")?)
                    }
                    SourceExpr::Pem(expr) => CertificateSource::Pem(scope.required(expr, "CertificatePem")?),
                };
                (status, source, Some(resource.logical_name.clone()))
            }
        };
        let mut device_configuration = BTreeMap::new();
        for (key, expr) in &self.device_configuration {
            if let Some(value) = scope.value(expr)? {
                device_configuration.insert(key.clone(), value);
            }
        }
        Ok(Provisioning { thing, status, certificate, certificate_logical_name, policies, device_configuration })
    }
}

fn resource_of<T>(logical_name: &str, condition: &Option<String>, body: T) -> Resource<T> {
    Resource { logical_name: logical_name.to_owned(), condition: condition.clone(), body }
}

/// The name of a policy a template creates from a document without a name: like AWS, the
/// SHA-256 of the document in hex.
fn generated_policy_name(document: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, document.as_bytes()))
}

fn parse_parameters(kind: TemplateKind, parameters: &Value) -> Result<BTreeMap<String, Declaration>, Error> {
    let parameters = parameters.as_object().ok_or_else(|| invalid("Parameters must be an object".into()))?;
    if parameters.len() > MAX_PARAMETERS {
        return Err(invalid(format!("a template declares at most {MAX_PARAMETERS} parameters")));
    }
    let mut declared = BTreeMap::new();
    for (name, declaration) in parameters {
        match kind {
            TemplateKind::Jitp => check_jitp_parameter(name)?,
            TemplateKind::FleetProvisioning => check_parameter_name(name)?,
        }
        let declaration =
            declaration.as_object().ok_or_else(|| invalid(format!("the parameter {name} must be an object")))?;
        let number = match (kind, declaration.get("Type").and_then(Value::as_str)) {
            (TemplateKind::Jitp, _) | (_, Some("String")) => false,
            (_, Some("Number")) => true,
            (_, other) => {
                return Err(invalid(format!(
                    "the Type of the parameter {name} must be String or Number, got {other:?}"
                )));
            }
        };
        if kind == TemplateKind::FleetProvisioning
            && let Some(other) =
                declaration.keys().find(|key| !["Type", "Default", "Description"].contains(&key.as_str()))
        {
            return Err(invalid(format!("the parameter {name} has an unsupported key {other:?}")));
        }
        let default = match declaration.get("Default") {
            None => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Number(value)) if number => Some(value.to_string()),
            Some(_) => return Err(invalid(format!("the Default of {name} must be a string"))),
        };
        if number && default.as_ref().is_some_and(|default| default.trim().parse::<f64>().is_err()) {
            return Err(invalid(format!("the Default of the Number parameter {name} is not a number")));
        }
        declared.insert(name.clone(), Declaration { number, default });
    }
    Ok(declared)
}

fn parse_mappings(mappings: &Value) -> Result<Mappings, Error> {
    let shape = || invalid("Mappings must be {map: {key: {key: string}}}".into());
    let mut parsed = BTreeMap::new();
    for (map, keys) in mappings.as_object().ok_or_else(shape)? {
        let mut first = BTreeMap::new();
        for (key, values) in keys.as_object().ok_or_else(shape)? {
            let mut second = BTreeMap::new();
            for (name, value) in values.as_object().ok_or_else(shape)? {
                let value = match value {
                    Value::String(text) => text.clone(),
                    Value::Number(number) => number.to_string(),
                    _ => return Err(shape()),
                };
                second.insert(name.clone(), value);
            }
            first.insert(key.clone(), second);
        }
        parsed.insert(map.clone(), first);
    }
    Ok(parsed)
}

fn parse_overrides(settings: &Value) -> Result<OverrideSettings, Error> {
    let settings = settings.as_object().ok_or_else(|| invalid("OverrideSettings must be an object".into()))?;
    let mut overrides = OverrideSettings::default();
    for (field, value) in settings {
        let setting = value.as_str().and_then(Override::parse).ok_or_else(|| {
            invalid(format!("OverrideSettings {field} must be MERGE, REPLACE, DO_NOTHING or FAIL, got {value}"))
        })?;
        match field.as_str() {
            "AttributePayload" => overrides.attributes = setting,
            "ThingGroups" => overrides.groups = setting,
            "ThingTypeName" if setting == Override::Merge => {
                return Err(invalid("OverrideSettings ThingTypeName cannot be MERGE".into()));
            }
            "ThingTypeName" => overrides.type_name = setting,
            other => return Err(invalid(format!("OverrideSettings has an unknown field {other:?}"))),
        }
    }
    Ok(overrides)
}

/// Refuses a cycle of condition references, and chains deeper than [`MAX_DEPTH`].
fn check_condition_chains(conditions: &BTreeMap<String, Condition>) -> Result<(), Error> {
    fn references<'c>(condition: &'c Condition, into: &mut Vec<&'c str>) {
        match condition {
            Condition::Equals(..) => {}
            Condition::And(all) | Condition::Or(all) => all.iter().for_each(|inner| references(inner, into)),
            Condition::Not(inner) => references(inner, into),
            Condition::Named(name) => into.push(name),
        }
    }
    // Depth of each condition's chain of references, computed once each (memoized).
    let mut depths: BTreeMap<&str, usize> = BTreeMap::new();
    fn depth<'c>(
        name: &'c str,
        conditions: &'c BTreeMap<String, Condition>,
        depths: &mut BTreeMap<&'c str, usize>,
        stack: &mut Vec<&'c str>,
    ) -> Result<usize, Error> {
        if let Some(known) = depths.get(name) {
            return Ok(*known);
        }
        if stack.contains(&name) {
            return Err(invalid(format!("the condition {name} refers to itself")));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(invalid(format!("conditions refer to conditions more than {MAX_DEPTH} deep")));
        }
        let Some(condition) = conditions.get(name) else {
            return Err(invalid(format!("no condition is named {name}")));
        };
        let mut named = Vec::new();
        references(condition, &mut named);
        stack.push(name);
        let mut deepest = 0;
        for inner in named {
            deepest = deepest.max(depth(inner, conditions, depths, stack)?);
        }
        stack.pop();
        depths.insert(name, deepest + 1);
        Ok(deepest + 1)
    }
    for name in conditions.keys() {
        depth(name, conditions, &mut depths, &mut Vec::new())?;
    }
    Ok(())
}

/// What the parsing of resources and expressions needs to know of the template.
struct Parser<'t> {
    template: &'t Template,
    condition_names: &'t BTreeSet<String>,
}

impl Parser<'_> {
    fn fleet(&self) -> bool {
        self.template.kind == TemplateKind::FleetProvisioning
    }

    fn thing(
        &self,
        logical_name: &str,
        properties: &Map<String, Value>,
        overrides: OverrideSettings,
    ) -> Result<ThingResource, Error> {
        let mut name = None;
        let mut type_name = None;
        let mut attributes = BTreeMap::new();
        let mut groups = Vec::new();
        for (key, value) in properties {
            match key.as_str() {
                "ThingName" => name = Some(self.expr(value, 0)?),
                "ThingTypeName" => type_name = Some(self.expr(value, 0)?),
                "AttributePayload" => {
                    let payload =
                        value.as_object().ok_or_else(|| invalid("AttributePayload must be an object".into()))?;
                    for (attribute, expr) in payload {
                        attributes.insert(attribute.clone(), self.expr(expr, 0)?);
                    }
                }
                "ThingGroups" if self.fleet() => {
                    let list = value.as_array().ok_or_else(|| invalid("ThingGroups must be a list".into()))?;
                    if list.len() > MAX_THING_GROUPS {
                        return Err(invalid(format!("ThingGroups names at most {MAX_THING_GROUPS} groups")));
                    }
                    groups = list.iter().map(|group| self.expr(group, 0)).collect::<Result<_, _>>()?;
                }
                "ThingGroups" | "BillingGroup" | "PackageVersions" => {
                    let why = match key.as_str() {
                        "ThingGroups" => "a JITP template cannot name thing groups",
                        "BillingGroup" => "certfleet has no billing groups",
                        _ => "certfleet has no software package catalog",
                    };
                    return Err(invalid(format!("the thing property {key} is not supported ({why})")));
                }
                other => {
                    return Err(invalid(format!(
                        "the thing resource {logical_name} has an unknown property {other:?}"
                    )));
                }
            }
        }
        let name = name.ok_or_else(|| invalid(format!("the thing resource {logical_name} needs a ThingName")))?;
        Ok(ThingResource { name, type_name, attributes, groups, overrides })
    }

    fn certificate(&self, logical_name: &str, properties: &Map<String, Value>) -> Result<CertificateResource, Error> {
        let mut status = Expr::Text("ACTIVE".into());
        let mut source = None;
        for (key, value) in properties {
            let supplied = |expr: Expr| match expr {
                Expr::Ref(parameter) if parameter != CERTIFICATE_ID_PARAMETER => Ok(Expr::Ref(parameter)),
                _ => Err(invalid(format!("{key} must be {{\"Ref\": parameter}}"))),
            };
            let previous = match key.as_str() {
                "CertificateId" => match self.expr(value, 0)? {
                    Expr::Ref(parameter) if parameter == CERTIFICATE_ID_PARAMETER => {
                        source.replace(SourceExpr::Provisioned)
                    }
                    _ => return Err(invalid("CertificateId must be {\"Ref\": \"AWS::IoT::Certificate::Id\"}".into())),
                },
                "CertificateSigningRequest" if self.fleet() => {
                    source.replace(SourceExpr::SigningRequest(supplied(self.expr(value, 0)?)?))
                }
                "CertificatePem" if self.fleet() => source.replace(SourceExpr::Pem(supplied(self.expr(value, 0)?)?)),
                "Status" => {
                    status = self.expr(value, 0)?;
                    if matches!(&status, Expr::Text(text) if text != "ACTIVE" && text != "INACTIVE")
                        || (!self.fleet() && !matches!(status, Expr::Text(_)))
                    {
                        return Err(invalid("the certificate Status must be ACTIVE or INACTIVE".into()));
                    }
                    None
                }
                other => {
                    return Err(invalid(format!(
                        "the certificate resource {logical_name} has an unknown property {other:?}"
                    )));
                }
            };
            if previous.is_some() {
                return Err(invalid(format!(
                    "the certificate resource {logical_name} names its certificate twice (CertificateId, CertificateSigningRequest, CertificatePem)"
                )));
            }
        }
        let source = match source {
            Some(source) => source,
            None if self.fleet() => {
                return Err(invalid(format!(
                    "the certificate resource {logical_name} needs a CertificateId, CertificateSigningRequest or CertificatePem"
                )));
            }
            None => SourceExpr::Provisioned,
        };
        Ok(CertificateResource { status, source })
    }

    fn policy(&self, logical_name: &str, properties: &Map<String, Value>) -> Result<PolicyResource, Error> {
        let mut name = None;
        let mut document = None;
        for (key, value) in properties {
            match key.as_str() {
                "PolicyName" => name = Some(self.expr(value, 0)?),
                "PolicyDocument" => {
                    let text = value.as_str().ok_or_else(|| invalid("PolicyDocument must be a string".into()))?;
                    certfleet_policy::Policy::parse(text).map_err(|error| {
                        invalid(format!("the PolicyDocument of {logical_name} is not a valid policy: {error}"))
                    })?;
                    document = Some(text.to_owned());
                }
                other => {
                    return Err(invalid(format!(
                        "the policy resource {logical_name} has an unknown property {other:?}"
                    )));
                }
            }
        }
        if name.is_none() && document.is_none() {
            return Err(invalid(format!("the policy resource {logical_name} needs a PolicyName or a PolicyDocument")));
        }
        Ok(PolicyResource { name, document })
    }

    fn expr(&self, value: &Value, depth: usize) -> Result<Expr, Error> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("the template's values nest more than {MAX_DEPTH} deep")));
        }
        let fleet = self.fleet();
        match value {
            Value::String(text) => Ok(Expr::Text(text.clone())),
            Value::Number(number) if fleet => Ok(Expr::Text(number.to_string())),
            Value::Object(function) if function.len() == 1 => {
                let (name, argument) = function.iter().next().ok_or_else(|| invalid("an empty function".into()))?;
                match name.as_str() {
                    "Ref" => {
                        let parameter =
                            argument.as_str().ok_or_else(|| invalid("Ref takes a parameter name".into()))?;
                        if fleet && parameter == NO_VALUE {
                            return Ok(Expr::NoValue);
                        }
                        self.check_reference(parameter)?;
                        Ok(Expr::Ref(parameter.to_owned()))
                    }
                    "Fn::Join" => {
                        let shape = || invalid("Fn::Join takes [delimiter, [values]]".into());
                        let [delimiter, parts] = argument.as_array().map(Vec::as_slice).ok_or_else(shape)? else {
                            return Err(shape());
                        };
                        let delimiter = delimiter.as_str().ok_or_else(shape)?;
                        let parts = if fleet {
                            self.list(parts, depth + 1)?
                        } else {
                            List::Items(
                                parts
                                    .as_array()
                                    .ok_or_else(shape)?
                                    .iter()
                                    .map(|part| self.expr(part, depth + 1))
                                    .collect::<Result<_, _>>()?,
                            )
                        };
                        Ok(Expr::Join(delimiter.to_owned(), parts))
                    }
                    "Fn::Sub" => {
                        let text = argument.as_str().ok_or_else(|| {
                            invalid("Fn::Sub takes a string (the variable map form is not supported)".into())
                        })?;
                        self.sub(text)
                    }
                    "Fn::If" if fleet => {
                        let shape = || invalid("Fn::If takes [condition, value if true, value if false]".into());
                        let [condition, then, otherwise] = argument.as_array().map(Vec::as_slice).ok_or_else(shape)?
                        else {
                            return Err(shape());
                        };
                        let condition = condition.as_str().ok_or_else(shape)?;
                        if !self.condition_names.contains(condition) {
                            return Err(invalid(format!("Fn::If names no condition: {condition:?}")));
                        }
                        Ok(Expr::If(
                            condition.to_owned(),
                            Box::new(self.expr(then, depth + 1)?),
                            Box::new(self.expr(otherwise, depth + 1)?),
                        ))
                    }
                    "Fn::Select" if fleet => {
                        let shape = || invalid("Fn::Select takes [index, [values]]".into());
                        let [index, list] = argument.as_array().map(Vec::as_slice).ok_or_else(shape)? else {
                            return Err(shape());
                        };
                        Ok(Expr::Select(Box::new(self.expr(index, depth + 1)?), self.list(list, depth + 1)?))
                    }
                    "Fn::FindInMap" if fleet => {
                        let shape = || invalid("Fn::FindInMap takes [map, top-level key, second-level key]".into());
                        let [map, first, second] = argument.as_array().map(Vec::as_slice).ok_or_else(shape)? else {
                            return Err(shape());
                        };
                        let map = self.expr(map, depth + 1)?;
                        if let Expr::Text(name) = &map
                            && !self.template.mappings.contains_key(name)
                        {
                            return Err(invalid(format!("Fn::FindInMap names no mapping: {name:?}")));
                        }
                        Ok(Expr::FindInMap(Box::new([
                            map,
                            self.expr(first, depth + 1)?,
                            self.expr(second, depth + 1)?,
                        ])))
                    }
                    "Fn::Split" if fleet => {
                        Err(invalid("Fn::Split gives a list: use it inside Fn::Join or Fn::Select".into()))
                    }
                    other => Err(invalid(format!("the intrinsic function {other} is not supported"))),
                }
            }
            _ => Err(invalid(format!("unsupported template value {value}"))),
        }
    }

    fn list(&self, value: &Value, depth: usize) -> Result<List, Error> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("the template's values nest more than {MAX_DEPTH} deep")));
        }
        match value {
            Value::Array(items) => {
                if items.len() > MAX_LIST_ITEMS {
                    return Err(invalid(format!("a list has at most {MAX_LIST_ITEMS} items")));
                }
                Ok(List::Items(items.iter().map(|item| self.expr(item, depth + 1)).collect::<Result<_, _>>()?))
            }
            Value::Object(function) if function.len() == 1 && function.contains_key("Fn::Split") => {
                let shape = || invalid("Fn::Split takes [delimiter, value]".into());
                let [delimiter, source] =
                    function.get("Fn::Split").and_then(Value::as_array).map(Vec::as_slice).ok_or_else(shape)?
                else {
                    return Err(shape());
                };
                let delimiter = delimiter.as_str().filter(|delimiter| !delimiter.is_empty()).ok_or_else(shape)?;
                Ok(List::Split(delimiter.to_owned(), Box::new(self.expr(source, depth + 1)?)))
            }
            _ => Err(invalid(format!("expected a list or Fn::Split, got {value}"))),
        }
    }

    fn condition(&self, value: &Value, depth: usize) -> Result<Condition, Error> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("the template's conditions nest more than {MAX_DEPTH} deep")));
        }
        let shape =
            || invalid(format!("a condition is Fn::Equals, Fn::And, Fn::Or, Fn::Not or Condition, got {value}"));
        let function = value.as_object().filter(|function| function.len() == 1).ok_or_else(shape)?;
        let (name, argument) = function.iter().next().ok_or_else(shape)?;
        let conditions = |minimum: usize| -> Result<Vec<Condition>, Error> {
            let all = argument.as_array().ok_or_else(shape)?;
            if !(minimum..=10).contains(&all.len()) {
                return Err(invalid(format!("{name} takes {minimum} to 10 conditions")));
            }
            all.iter().map(|inner| self.condition(inner, depth + 1)).collect()
        };
        match name.as_str() {
            "Fn::Equals" => {
                let [left, right] = argument.as_array().map(Vec::as_slice).ok_or_else(shape)? else {
                    return Err(invalid("Fn::Equals takes [value, value]".into()));
                };
                Ok(Condition::Equals(self.expr(left, depth + 1)?, self.expr(right, depth + 1)?))
            }
            "Fn::And" => Ok(Condition::And(conditions(2)?)),
            "Fn::Or" => Ok(Condition::Or(conditions(2)?)),
            "Fn::Not" => {
                let mut inner = conditions(1)?;
                match (inner.pop(), inner.is_empty()) {
                    (Some(inner), true) => Ok(Condition::Not(Box::new(inner))),
                    _ => Err(invalid("Fn::Not takes [condition]".into())),
                }
            }
            "Condition" => {
                let named = argument.as_str().ok_or_else(shape)?;
                if !self.condition_names.contains(named) {
                    return Err(invalid(format!("no condition is named {named:?}")));
                }
                Ok(Condition::Named(named.to_owned()))
            }
            _ => Err(shape()),
        }
    }

    /// `Fn::Sub`'s string: `${Parameter}` references among literal text (`${!x}` is a literal
    /// `${x}`).
    fn sub(&self, text: &str) -> Result<Expr, Error> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            parts.push(Expr::Text(rest[..start].to_owned()));
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| invalid(format!("Fn::Sub: unclosed ${{ in {text:?}")))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                parts.push(Expr::Text(format!("${{{literal}}}")));
            } else {
                self.check_reference(name)?;
                parts.push(Expr::Ref(name.to_owned()));
            }
            rest = &after[end + 1..];
        }
        parts.push(Expr::Text(rest.to_owned()));
        Ok(Expr::Sub(parts))
    }

    /// A parameter a value refers to: JITP's certificate parameters; a fleet template's declared
    /// parameters and `AWS::IoT::Certificate::Id`.
    fn check_reference(&self, name: &str) -> Result<(), Error> {
        match self.template.kind {
            TemplateKind::Jitp => check_jitp_parameter(name),
            TemplateKind::FleetProvisioning
                if name == CERTIFICATE_ID_PARAMETER || self.template.parameters.contains_key(name) =>
            {
                Ok(())
            }
            TemplateKind::FleetProvisioning => Err(invalid(format!(
                "the template references the unknown parameter {name:?}: declare it in Parameters"
            ))),
        }
    }
}

/// The evaluation of one resolution: the parameters' values and the conditions' (each evaluated
/// once).
struct Scope<'t> {
    template: &'t Template,
    parameter: &'t dyn Fn(&str) -> Result<Option<String>, Error>,
    conditions: BTreeMap<String, bool>,
}

impl Scope<'_> {
    fn applies(&mut self, condition: Option<&str>) -> Result<bool, Error> {
        match condition {
            None => Ok(true),
            Some(name) => self.named_condition(name),
        }
    }

    fn named_condition(&mut self, name: &str) -> Result<bool, Error> {
        if let Some(known) = self.conditions.get(name) {
            return Ok(*known);
        }
        let template = self.template;
        let condition =
            template.conditions.get(name).ok_or_else(|| invalid(format!("no condition is named {name:?}")))?;
        let holds = self.condition(condition)?;
        self.conditions.insert(name.to_owned(), holds);
        Ok(holds)
    }

    fn condition(&mut self, condition: &Condition) -> Result<bool, Error> {
        match condition {
            Condition::Equals(left, right) => {
                Ok(self.required(left, "Fn::Equals")? == self.required(right, "Fn::Equals")?)
            }
            Condition::And(all) => {
                for inner in all {
                    if !self.condition(inner)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Condition::Or(all) => {
                for inner in all {
                    if self.condition(inner)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Condition::Not(inner) => Ok(!self.condition(inner)?),
            Condition::Named(name) => self.named_condition(name),
        }
    }

    /// A value that must be there (not `AWS::NoValue`).
    fn required(&mut self, expr: &Expr, what: &str) -> Result<String, Error> {
        self.value(expr)?.ok_or_else(|| invalid(format!("{what} cannot be AWS::NoValue")))
    }

    /// A value, or `None` for `AWS::NoValue`.
    fn value(&mut self, expr: &Expr) -> Result<Option<String>, Error> {
        let value = match expr {
            Expr::Text(text) => Some(text.clone()),
            Expr::Ref(name) => (self.parameter)(name)?,
            Expr::NoValue => None,
            Expr::Join(delimiter, list) => {
                let items = self.list(list)?;
                let mut joined = String::new();
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        joined.push_str(delimiter);
                    }
                    joined.push_str(item);
                    bounded(&joined)?;
                }
                Some(joined)
            }
            Expr::Sub(parts) => {
                let mut text = String::new();
                for part in parts {
                    text.push_str(&self.required(part, "a Fn::Sub variable")?);
                    bounded(&text)?;
                }
                Some(text)
            }
            Expr::If(condition, then, otherwise) => {
                if self.named_condition(condition)? {
                    self.value(then)?
                } else {
                    self.value(otherwise)?
                }
            }
            Expr::Select(index, list) => {
                let index = self.required(index, "Fn::Select's index")?;
                let items = self.list(list)?;
                let position = index
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| Error::InvalidParameters(format!("Fn::Select's index {index:?} is not a number")))?;
                Some(items.into_iter().nth(position).ok_or_else(|| {
                    Error::InvalidParameters(format!("Fn::Select's index {position} is past the list's end"))
                })?)
            }
            Expr::FindInMap(keys) => {
                let [map, first, second] = keys.as_ref();
                let map = self.required(map, "Fn::FindInMap's map")?;
                let first = self.required(first, "Fn::FindInMap's key")?;
                let second = self.required(second, "Fn::FindInMap's key")?;
                let found = self
                    .template
                    .mappings
                    .get(&map)
                    .and_then(|keys| keys.get(&first))
                    .and_then(|keys| keys.get(&second));
                Some(found.cloned().ok_or_else(|| {
                    Error::InvalidParameters(format!("Fn::FindInMap finds nothing at {map}/{first}/{second}"))
                })?)
            }
        };
        if let Some(text) = &value {
            bounded(text)?;
        }
        Ok(value)
    }

    /// A list's items (`AWS::NoValue` items dropped).
    fn list(&mut self, list: &List) -> Result<Vec<String>, Error> {
        match list {
            List::Items(items) => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(value) = self.value(item)? {
                        values.push(value);
                    }
                }
                Ok(values)
            }
            List::Split(delimiter, source) => {
                let source = self.required(source, "Fn::Split's value")?;
                if source.matches(delimiter.as_str()).count() >= MAX_LIST_ITEMS {
                    return Err(Error::InvalidParameters(format!("Fn::Split gives more than {MAX_LIST_ITEMS} items")));
                }
                Ok(source.split(delimiter.as_str()).map(str::to_owned).collect())
            }
        }
    }
}

fn bounded(text: &str) -> Result<(), Error> {
    if text.len() > MAX_VALUE_CHARS && text.chars().count() > MAX_VALUE_CHARS {
        Err(Error::InvalidParameters(format!(
            "a value of the template would be longer than {MAX_VALUE_CHARS} characters"
        )))
    } else {
        Ok(())
    }
}

fn check_jitp_parameter(name: &str) -> Result<(), Error> {
    if JITP_PARAMETERS.iter().any(|(known, _)| *known == name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "the template references the unknown parameter {name:?}: a JITP template may use only the AWS::IoT::Certificate::* parameters"
        )))
    }
}

fn check_parameter_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.chars().count() > MAX_PARAMETER_NAME_CHARS {
        return Err(invalid(format!("a parameter name is 1 to {MAX_PARAMETER_NAME_CHARS} characters")));
    }
    if name.starts_with("AWS::") && name != CERTIFICATE_ID_PARAMETER {
        return Err(invalid(format!(
            "the parameter {name} is reserved: the only AWS:: parameter of a fleet template is {CERTIFICATE_ID_PARAMETER}"
        )));
    }
    Ok(())
}

fn invalid(message: String) -> Error {
    Error::InvalidRequest(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iot:Connect\",\"Resource\":\"*\"}]}"#;

    /// A fleet template with `parameters`, `conditions`, the thing's `properties` and a certificate.
    fn fleet(parameters: &str, conditions: &str, thing: &str) -> String {
        format!(
            r#"{{"Parameters": {{{parameters}}}, "Conditions": {{{conditions}}},
                "Mappings": {{"Region": {{"eu": {{"Endpoint": "eu.example", "Zone": "1"}}}}}},
                "Resources": {{
                  "thing": {{"Type": "AWS::IoT::Thing", "Properties": {thing}}},
                  "certificate": {{"Type": "AWS::IoT::Certificate",
                    "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}, "Status": "ACTIVE"}}}}}}}}"#
        )
    }

    /// One line per resolved resource, so a case states its whole outcome.
    fn summary(provisioning: &Provisioning) -> String {
        let mut lines = Vec::new();
        if let Some(thing) = &provisioning.thing {
            let attributes: Vec<String> = thing.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            lines.push(format!(
                "thing {} type={} attrs=[{}] groups=[{}] overrides={}/{}/{}",
                thing.name,
                thing.type_name.as_ref().map_or("-", ThingName::as_str),
                attributes.join(","),
                thing.groups.join(","),
                thing.overrides.attributes.as_str(),
                thing.overrides.type_name.as_str(),
                thing.overrides.groups.as_str(),
            ));
        }
        let source = match &provisioning.certificate {
            CertificateSource::Provisioned => "provisioned".to_owned(),
            CertificateSource::SigningRequest(csr) => format!("csr:{csr}"),
            CertificateSource::Pem(pem) => format!("pem:{pem}"),
        };
        lines.push(format!("certificate {} {source}", provisioning.status.as_str()));
        for policy in &provisioning.policies {
            lines.push(format!(
                "policy {} {}",
                policy.name,
                if policy.document.is_some() { "created" } else { "named" }
            ));
        }
        if !provisioning.device_configuration.is_empty() {
            let entries: Vec<String> =
                provisioning.device_configuration.iter().map(|(k, v)| format!("{k}={v}")).collect();
            lines.push(format!("config {}", entries.join(",")));
        }
        lines.join("\n")
    }

    /// Parses `template` as a fleet template and resolves it with `parameters` (`k=v` pairs) and
    /// the certificate ID `c0ffee..`; `expected` is the [`summary`], or `Err(kind: text)` of the
    /// refusal (at parse or resolution).
    fn check(template: &str, parameters: &[(&str, &str)], expected: Result<&str, &str>) {
        let parameters: BTreeMap<String, String> =
            parameters.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let id = CertificateId::parse(&"c0ffee".repeat(11)[..64]).unwrap();
        let outcome = Template::parse_as(TemplateKind::FleetProvisioning, template)
            .and_then(|parsed| parsed.resolve_fleet(&parameters, Some(&id)));
        match (outcome, expected) {
            (Ok(provisioning), Ok(expected)) => {
                assert_eq!(summary(&provisioning), expected.replace("\n            ", "\n"), "{template}")
            }
            (Err(error), Err(expected)) => {
                let (kind, text) = expected.split_once(": ").unwrap_or((expected, ""));
                assert_eq!(error.kind(), kind, "{template}: {error}");
                assert!(error.to_string().contains(text), "{template}: {error:?} does not mention {text:?}");
            }
            (outcome, expected) => panic!("{template}: {outcome:?}, expected {expected:?}"),
        }
    }

    const NAME: &str = r#""ThingName": {"Type": "String"}"#;
    const CERT: &str = "certificate ACTIVE provisioned";

    #[test]
    fn intrinsics() {
        let plain = |value: &str| fleet(NAME, "", &format!(r#"{{"ThingName": {value}}}"#));
        let ok = |thing: &str| {
            format!("thing {thing} type=- attrs=[] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}")
        };
        check(&plain(r#"{"Ref": "ThingName"}"#), &[("ThingName", "dev-1")], Ok(&ok("dev-1")));
        check(&plain(r#""literal""#), &[], Ok(&ok("literal")));
        check(
            &plain(r#"{"Fn::Join": ["-", ["a", {"Ref": "ThingName"}, "b"]]}"#),
            &[("ThingName", "x")],
            Ok(&ok("a-x-b")),
        );
        check(
            &plain(r#"{"Fn::Sub": "dev-${ThingName}-${!literal}"}"#),
            &[("ThingName", "7")],
            Err("InvalidRequest: got \"dev-7-${literal}\""),
        );
        check(&plain(r#"{"Fn::Sub": "dev-${ThingName}"}"#), &[("ThingName", "7")], Ok(&ok("dev-7")));
        check(&plain(r#"{"Fn::Select": ["1", ["a", "b", "c"]]}"#), &[], Ok(&ok("b")));
        check(
            &plain(r#"{"Fn::Select": [2, {"Fn::Split": [":", {"Ref": "ThingName"}]}]}"#),
            &[("ThingName", "x:y:z")],
            Ok(&ok("z")),
        );
        check(
            &plain(r#"{"Fn::Join": ["", {"Fn::Split": [".", {"Ref": "ThingName"}]}]}"#),
            &[("ThingName", "a.b.c")],
            Ok(&ok("abc")),
        );
        check(
            &plain(r#"{"Fn::FindInMap": ["Region", {"Ref": "ThingName"}, "Zone"]}"#),
            &[("ThingName", "eu")],
            Ok(&ok("1")),
        );
        check(
            &plain(r#"{"Fn::FindInMap": ["Region", {"Ref": "ThingName"}, "Zone"]}"#),
            &[("ThingName", "us")],
            Err("InvalidParameters: finds nothing"),
        );
        check(&plain(r#"{"Fn::FindInMap": ["Nope", "eu", "Zone"]}"#), &[], Err("InvalidRequest: names no mapping"));
        check(&plain(r#"{"Fn::Select": ["5", ["a"]]}"#), &[], Err("InvalidParameters: past the list's end"));
        check(&plain(r#"{"Fn::Select": ["x", ["a"]]}"#), &[], Err("InvalidParameters: not a number"));
        check(&plain(r#"{"Fn::Split": [",", "a,b"]}"#), &[], Err("InvalidRequest: gives a list"));
        check(&plain(r#"{"Fn::Base64": "a"}"#), &[], Err("InvalidRequest: Fn::Base64 is not supported"));
        check(&plain(r#"{"Fn::GetAtt": ["a", "b"]}"#), &[], Err("InvalidRequest: Fn::GetAtt is not supported"));
        check(&plain(r#"{"Fn::Join": ["-"]}"#), &[], Err("InvalidRequest: Fn::Join takes"));
        check(&plain(r#"{"Ref": "Undeclared"}"#), &[], Err("InvalidRequest: unknown parameter"));
        check(&plain(r#"{"Ref": "AWS::IoT::Certificate::Id"}"#), &[], Ok(&ok(&"c0ffee".repeat(11)[..64])));
        check(&plain(r#"{"Ref": "AWS::NoValue"}"#), &[], Err("InvalidRequest: ThingName cannot be AWS::NoValue"));
    }

    #[test]
    fn parameters_defaults_and_types() {
        let thing = r#"{"ThingName": {"Fn::Join": ["-", [{"Ref": "Prefix"}, {"Ref": "Serial"}]]}}"#;
        let declared = r#""Prefix": {"Type": "String", "Default": "dev"}, "Serial": {"Type": "Number"}"#;
        let ok = |thing: &str| {
            format!("thing {thing} type=- attrs=[] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}")
        };
        check(&fleet(declared, "", thing), &[("Serial", "42")], Ok(&ok("dev-42")));
        check(&fleet(declared, "", thing), &[("Serial", "42"), ("Prefix", "s")], Ok(&ok("s-42")));
        check(&fleet(declared, "", thing), &[("Serial", "42"), ("Extra", "ignored")], Ok(&ok("dev-42")));
        check(&fleet(declared, "", thing), &[], Err("InvalidParameters: the parameter Serial has no value"));
        check(&fleet(declared, "", thing), &[("Serial", "forty")], Err("InvalidParameters: must be a number"));
        // The device cannot choose the certificate ID.
        let by_id = fleet(
            r#""AWS::IoT::Certificate::Id": {"Type": "String"}"#,
            "",
            r#"{"ThingName": {"Ref": "AWS::IoT::Certificate::Id"}}"#,
        );
        check(&by_id, &[("AWS::IoT::Certificate::Id", "mine")], Ok(&ok(&"c0ffee".repeat(11)[..64])));
        check(&fleet(r#""X": {"Type": "List"}"#, "", thing), &[], Err("InvalidRequest: String or Number"));
        check(&fleet(r#""AWS::Region": {"Type": "String"}"#, "", thing), &[], Err("InvalidRequest: reserved"));
        check(
            &fleet(r#""X": {"Type": "Number", "Default": "many"}"#, "", thing),
            &[],
            Err("InvalidRequest: not a number"),
        );
    }

    #[test]
    fn conditions_and_no_value() {
        let declared = r#""ThingName": {"Type": "String"}, "Env": {"Type": "String", "Default": "prod"}"#;
        let conditions = r#""IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]},
            "IsTest": {"Fn::Not": [{"Condition": "IsProd"}]},
            "Both": {"Fn::And": [{"Condition": "IsProd"}, {"Fn::Equals": ["a", "a"]}]},
            "Either": {"Fn::Or": [{"Condition": "IsTest"}, {"Fn::Equals": [{"Ref": "ThingName"}, "special"]}]}"#;
        let thing = r#"{"ThingName": {"Fn::If": ["Both", {"Ref": "ThingName"}, "test-thing"]},
            "ThingTypeName": {"Fn::If": ["IsTest", "tester", {"Ref": "AWS::NoValue"}]},
            "AttributePayload": {"env": {"Ref": "Env"}, "flag": {"Fn::If": ["Either", "yes", {"Ref": "AWS::NoValue"}]}}}"#;
        let template = fleet(declared, conditions, thing);
        check(
            &template,
            &[("ThingName", "d1")],
            Ok(&format!(
                "thing d1 type=- attrs=[env=prod] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}"
            )),
        );
        check(
            &template,
            &[("ThingName", "special")],
            Ok(&format!(
                "thing special type=- attrs=[env=prod,flag=yes] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}"
            )),
        );
        check(
            &template,
            &[("ThingName", "d1"), ("Env", "test")],
            Ok(&format!(
                "thing test-thing type=tester attrs=[env=test,flag=yes] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}"
            )),
        );
        // A resource under a false condition is not provisioned, and its parameters are not needed.
        let conditional = r#"{"Parameters": {"Make": {"Type": "String"}, "Name": {"Type": "String"}},
            "Conditions": {"Wanted": {"Fn::Equals": [{"Ref": "Make"}, "yes"]}},
            "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Condition": "Wanted", "Properties": {"ThingName": {"Ref": "Name"}}},
              "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}}}"#;
        check(conditional, &[("Make", "no")], Ok(CERT));
        check(conditional, &[("Make", "yes")], Err("InvalidParameters: the parameter Name has no value"));
        check(
            conditional,
            &[("Make", "yes"), ("Name", "n")],
            Ok(&format!("thing n type=- attrs=[] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}")),
        );
        // Refusals.
        let name_thing = r#"{"ThingName": "x"}"#;
        check(
            &fleet("", r#""A": {"Condition": "B"}, "B": {"Condition": "A"}"#, name_thing),
            &[],
            Err("InvalidRequest: refers to itself"),
        );
        check(&fleet("", r#""A": {"Condition": "A"}"#, name_thing), &[], Err("InvalidRequest: refers to itself"));
        check(
            &fleet("", r#""A": {"Condition": "Missing"}"#, name_thing),
            &[],
            Err("InvalidRequest: no condition is named"),
        );
        check(&fleet("", r#""A": {"Fn::Equals": ["a"]}"#, name_thing), &[], Err("InvalidRequest: Fn::Equals takes"));
        check(
            &fleet("", r#""A": {"Fn::And": [{"Fn::Equals": ["a", "a"]}]}"#, name_thing),
            &[],
            Err("InvalidRequest: 2 to 10"),
        );
        check(&fleet("", r#""A": {"Fn::Xor": []}"#, name_thing), &[], Err("InvalidRequest: a condition is"));
        check(
            &fleet("", "", r#"{"ThingName": {"Fn::If": ["Nope", "a", "b"]}}"#),
            &[],
            Err("InvalidRequest: names no condition"),
        );
        let chain: Vec<String> = (0..20).map(|i| format!(r#""C{i}": {{"Condition": "C{}"}}"#, i + 1)).collect();
        let chain = format!(r#"{}, "C20": {{"Fn::Equals": ["a", "a"]}}"#, chain.join(", "));
        check(&fleet("", &chain, name_thing), &[], Err("InvalidRequest: more than 16 deep"));
    }

    #[test]
    fn resources_override_settings_policies_and_device_configuration() {
        let thing = r#"{"ThingName": "t", "ThingGroups": ["g1", {"Ref": "Group"}, {"Ref": "AWS::NoValue"}], "AttributePayload": {"a": "1"}}"#;
        let template = format!(
            r#"{{"Parameters": {{"Group": {{"Type": "String"}}, "Region": {{"Type": "String", "Default": "eu"}}}},
                "Mappings": {{"Region": {{"eu": {{"Endpoint": "eu.example"}}}}}},
                "Resources": {{
                  "thing": {{"Type": "AWS::IoT::Thing", "Properties": {thing},
                    "OverrideSettings": {{"AttributePayload": "MERGE", "ThingTypeName": "REPLACE", "ThingGroups": "FAIL"}}}},
                  "cert": {{"Type": "AWS::IoT::Certificate", "Properties": {{"CertificateId": {{"Ref": "AWS::IoT::Certificate::Id"}}, "Status": "INACTIVE"}}}},
                  "p1": {{"Type": "AWS::IoT::Policy", "Properties": {{"PolicyName": "existing"}}}},
                  "p2": {{"Type": "AWS::IoT::Policy", "Properties": {{"PolicyName": "created", "PolicyDocument": "{POLICY}"}}}}}},
                "DeviceConfiguration": {{"Endpoint": {{"Fn::FindInMap": ["Region", {{"Ref": "Region"}}, "Endpoint"]}}, "Plain": "x", "Dropped": {{"Ref": "AWS::NoValue"}}}}}}"#
        );
        check(
            &template,
            &[("Group", "g2")],
            Ok("thing t type=- attrs=[a=1] groups=[g1,g2] overrides=MERGE/REPLACE/FAIL
            certificate INACTIVE provisioned
            policy existing named
            policy created created
            config Endpoint=eu.example,Plain=x"),
        );
        let with = |resources: &str| {
            format!(r#"{{"Parameters": {{"Csr": {{"Type": "String"}}}}, "Resources": {{{resources}}}}}"#)
        };
        let certificate = r#""c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}"#;
        check(&with(""), &[], Err("InvalidRequest: needs an AWS::IoT::Certificate resource"));
        check(
            &with(&format!(
                r#"{certificate}, "t": {{"Type": "AWS::IoT::Thing", "Properties": {{"ThingName": "t"}}, "OverrideSettings": {{"ThingTypeName": "MERGE"}}}}"#
            )),
            &[],
            Err("InvalidRequest: cannot be MERGE"),
        );
        check(
            &with(&format!(
                r#"{certificate}, "t": {{"Type": "AWS::IoT::Thing", "Properties": {{"ThingName": "t"}}, "OverrideSettings": {{"AttributePayload": "SOMETIMES"}}}}"#
            )),
            &[],
            Err("InvalidRequest: MERGE, REPLACE, DO_NOTHING or FAIL"),
        );
        check(
            &with(&format!(
                r#"{certificate}, "t": {{"Type": "AWS::IoT::Thing", "Properties": {{"ThingName": "t", "BillingGroup": "b"}}}}"#
            )),
            &[],
            Err("InvalidRequest: BillingGroup"),
        );
        check(
            &with(&format!(
                r#"{certificate}, "t": {{"Type": "AWS::IoT::Thing", "Properties": {{"ThingName": "bad name"}}}}"#
            )),
            &[],
            Err("InvalidRequest: thing name"),
        );
        check(
            &with(&format!(
                r#"{certificate}, "p": {{"Type": "AWS::IoT::Policy", "Properties": {{"PolicyDocument": "{{}}"}}}}"#
            )),
            &[],
            Err("InvalidRequest: not a valid policy"),
        );
        check(
            &with(&format!(r#"{certificate}, "r": {{"Type": "AWS::IAM::Role"}}"#)),
            &[],
            Err("InvalidRequest: unsupported type"),
        );
        check(
            &with(
                r#""c": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "REVOKED", "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}"#,
            ),
            &[],
            Err("InvalidRequest: ACTIVE or INACTIVE"),
        );
        // RegisterThing's certificate sources: not usable for a provisioned certificate.
        check(
            &with(
                r#""c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateSigningRequest": {"Ref": "Csr"}}}"#,
            ),
            &[("Csr", "x")],
            Err("InvalidRequest: only RegisterThing"),
        );
        check(
            &with(
                r#""c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateSigningRequest": {"Ref": "Csr"}, "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}"#,
            ),
            &[],
            Err("InvalidRequest: names its certificate twice"),
        );
        let register = Template::parse_as(TemplateKind::FleetProvisioning, &with(r#""c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateSigningRequest": {"Ref": "Csr"}}}"#)).unwrap();
        let resolved = register.resolve_fleet(&BTreeMap::from([("Csr".to_owned(), "PEM".to_owned())]), None).unwrap();
        assert_eq!(summary(&resolved), "certificate ACTIVE csr:PEM");
        let missing = register.resolve_fleet(&BTreeMap::new(), None).unwrap_err();
        assert_eq!(missing.kind(), "InvalidParameters");
        // Eleven policies are refused; sections JITP does not know are refused as before.
        let policies: Vec<String> = (0..11)
            .map(|i| format!(r#""p{i}": {{"Type": "AWS::IoT::Policy", "Properties": {{"PolicyName": "p{i}"}}}}"#))
            .collect();
        check(&with(&format!("{certificate}, {}", policies.join(", "))), &[], Err("InvalidRequest: at most 10 policy"));
        check(r#"{"Resources": {}, "Outputs": {}}"#, &[], Err("InvalidRequest: unknown template section"));
    }

    #[test]
    fn bounds() {
        let thing =
            r#"{"ThingName": "t", "AttributePayload": {"a": {"Fn::Join": ["", [{"Ref": "P"}, {"Ref": "P"}]]}}}"#;
        let template = fleet(r#""P": {"Type": "String"}"#, "", thing);
        check(&template, &[("P", &"x".repeat(4097))], Err("InvalidParameters: at most 4096"));
        check(&template, &[("P", &"x".repeat(2500))], Err("InvalidParameters: longer than 4096"));
        let long_name = "k".repeat(2049);
        check(&template, &[(&long_name, "v")], Err("InvalidParameters: at most 2048"));
        let many: Vec<(String, String)> = (0..101).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        check(&template, &many, Err("InvalidParameters: at most 100 parameters"));
        let split = fleet(
            r#""P": {"Type": "String"}"#,
            "",
            r#"{"ThingName": {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "P"}]}]}}"#,
        );
        check(&split, &[("P", &",".repeat(100))], Err("InvalidParameters: more than 100 items"));
        check(
            &split,
            &[("P", "a,b")],
            Ok(&format!("thing a type=- attrs=[] groups=[] overrides=DO_NOTHING/DO_NOTHING/DO_NOTHING\n{CERT}")),
        );
        let mut deep = r#""t""#.to_owned();
        for _ in 0..20 {
            deep = format!(r#"{{"Fn::Join": ["", [{deep}]]}}"#);
        }
        check(
            &fleet("", "", &format!(r#"{{"ThingName": {deep}}}"#)),
            &[],
            Err("InvalidRequest: nest more than 16 deep"),
        );
        check(
            &format!(r#"{{"Resources": {{}}, "Description": "{}"}}"#, "x".repeat(10240)),
            &[],
            Err("InvalidRequest: longer than 10240"),
        );
    }

    /// JITP templates keep their language: fleet-only features are refused there.
    #[test]
    fn jitp_templates_refuse_fleet_features() {
        for (body, refusal) in [
            (r#"{"Resources": {}, "Conditions": {}}"#, "Conditions are not supported"),
            (r#"{"Resources": {}, "DeviceConfiguration": {}}"#, "unknown template section"),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::If": ["c", "a", "b"]}}}}}"#,
                "Fn::If is not supported",
            ),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t", "ThingGroups": ["g"]}}}}"#,
                "ThingGroups is not supported",
            ),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Condition": "c", "Properties": {"ThingName": "t"}}}}"#,
                "unsupported key",
            ),
            (r#"{"Parameters": {"Zone": {"Type": "String"}}, "Resources": {}}"#, "unknown parameter"),
        ] {
            let error = Template::parse(body).unwrap_err();
            assert!(error.to_string().contains(refusal), "{body}: {error}");
        }
    }
}
