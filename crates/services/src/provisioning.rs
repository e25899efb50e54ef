//! Just-in-time provisioning (JITP) templates: the `templateBody` of a CA's registrationConfig.
//!
//! A template is parsed and checked once, when it is registered (RegisterCACertificate,
//! UpdateCACertificate), into a typed [`Template`]: a bad template is refused then, never at a
//! device's first connection. At that connection, [`Template::resolve`] fills in the
//! `AWS::IoT::Certificate::*` parameters from the device certificate and gives the concrete
//! [`Provisioning`] the JITR transaction applies.
//!
//! Supported: the `AWS::IoT::Thing` (ThingName, AttributePayload, ThingTypeName),
//! `AWS::IoT::Certificate` (CertificateId, Status) and `AWS::IoT::Policy` (PolicyName and/or
//! PolicyDocument) resources; parameter declarations with a `Default`; the intrinsic functions
//! `Ref`, `Fn::Join` and `Fn::Sub`. Refused: other parameters, other resource types, other
//! functions (`Fn::If`, `Fn::FindInMap`, ...) and `Conditions`. `OverrideSettings` is accepted
//! and ignored (a thing that exists is used as it is).

use std::collections::BTreeMap;

use certfleet_pki::{Certificate, CertificateId};
use certfleet_registry::{CertificateStatus, PolicyName, ThingName};
use serde_json::{Map, Value};

use crate::Error;

/// The parameters a JITP template may use, with the OID of the subject attribute each comes from.
const PARAMETERS: [(&str, Option<&str>); 8] = [
    ("AWS::IoT::Certificate::CommonName", Some("2.5.4.3")),
    ("AWS::IoT::Certificate::Country", Some("2.5.4.6")),
    ("AWS::IoT::Certificate::Organization", Some("2.5.4.10")),
    ("AWS::IoT::Certificate::OrganizationalUnit", Some("2.5.4.11")),
    ("AWS::IoT::Certificate::DistinguishedNameQualifier", Some("2.5.4.46")),
    ("AWS::IoT::Certificate::StateName", Some("2.5.4.8")),
    ("AWS::IoT::Certificate::SerialNumber", Some("2.5.4.5")),
    ("AWS::IoT::Certificate::Id", None),
];

/// A checked JITP template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// Declared parameters with their default value.
    defaults: BTreeMap<String, String>,
    thing: Option<ThingResource>,
    certificate: Option<CertificateResource>,
    policy: Option<PolicyResource>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ThingResource {
    name: Expr,
    type_name: Option<Expr>,
    attributes: BTreeMap<String, Expr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct CertificateResource {
    status: CertificateStatus,
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
    Join(String, Vec<Expr>),
    /// `Fn::Sub`: literal pieces and `${Parameter}` references, in order.
    Sub(Vec<Expr>),
}

/// What a template gives for one device certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioning {
    pub thing: Option<ProvisionedThing>,
    /// The status the certificate is registered with (ACTIVE when the template has no
    /// certificate resource).
    pub status: CertificateStatus,
    pub policy: Option<ProvisionedPolicy>,
}

/// The thing to create (when absent) and attach the certificate to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedThing {
    pub name: ThingName,
    pub type_name: Option<ThingName>,
    pub attributes: BTreeMap<String, String>,
}

/// The policy to attach to the certificate: an existing one (no document) or one to create
/// with `document` (reused when it exists with that document).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionedPolicy {
    pub name: PolicyName,
    pub document: Option<String>,
}

impl Template {
    /// Parses and checks a template body; every refusal is [`Error::InvalidRequest`].
    pub fn parse(body: &str) -> Result<Template, Error> {
        let root: Value =
            serde_json::from_str(body).map_err(|error| invalid(format!("the template is not JSON: {error}")))?;
        let root = root.as_object().ok_or_else(|| invalid("the template must be a JSON object".into()))?;
        for key in root.keys() {
            match key.as_str() {
                "Parameters" | "Resources" => {}
                "Conditions" => return Err(invalid("template Conditions are not supported".into())),
                other => return Err(invalid(format!("unknown template section {other:?}"))),
            }
        }
        let mut defaults = BTreeMap::new();
        let mut declared = Vec::new();
        if let Some(parameters) = root.get("Parameters") {
            let parameters = parameters.as_object().ok_or_else(|| invalid("Parameters must be an object".into()))?;
            for (name, declaration) in parameters {
                check_parameter(name)?;
                declared.push(name.clone());
                let declaration = declaration
                    .as_object()
                    .ok_or_else(|| invalid(format!("the parameter {name} must be an object")))?;
                if let Some(default) = declaration.get("Default") {
                    let default =
                        default.as_str().ok_or_else(|| invalid(format!("the Default of {name} must be a string")))?;
                    defaults.insert(name.clone(), default.to_owned());
                }
            }
        }
        let resources = root
            .get("Resources")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("the template needs a Resources object".into()))?;
        let mut template = Template { defaults, thing: None, certificate: None, policy: None };
        for (logical_name, resource) in resources {
            let resource = resource
                .as_object()
                .ok_or_else(|| invalid(format!("the resource {logical_name} must be an object")))?;
            let kind = resource.get("Type").and_then(Value::as_str).unwrap_or_default();
            let empty = Map::new();
            let properties = match resource.get("Properties") {
                None => &empty,
                Some(properties) => properties
                    .as_object()
                    .ok_or_else(|| invalid(format!("the Properties of {logical_name} must be an object")))?,
            };
            if let Some(other) =
                resource.keys().find(|key| !["Type", "Properties", "OverrideSettings"].contains(&key.as_str()))
            {
                return Err(invalid(format!("the resource {logical_name} has an unsupported key {other:?}")));
            }
            let duplicate = || invalid(format!("the template has a second {kind} resource ({logical_name})"));
            match kind {
                "AWS::IoT::Thing" => {
                    if template.thing.is_some() {
                        return Err(duplicate());
                    }
                    template.thing = Some(parse_thing(logical_name, properties)?);
                }
                "AWS::IoT::Certificate" => {
                    if template.certificate.is_some() {
                        return Err(duplicate());
                    }
                    template.certificate = Some(parse_certificate(logical_name, properties)?);
                }
                "AWS::IoT::Policy" => {
                    if template.policy.is_some() {
                        return Err(duplicate());
                    }
                    template.policy = Some(parse_policy(logical_name, properties)?);
                }
                other => return Err(invalid(format!("the resource {logical_name} has an unsupported type {other:?}"))),
            }
        }
        Ok(template)
    }

    /// The resources for `device`, whose ID is `id`. Fails when a parameter the template uses
    /// is neither in the certificate nor declared with a default, or when a value is not a valid
    /// name or attribute.
    pub fn resolve(&self, device: &Certificate, id: &CertificateId) -> Result<Provisioning, Error> {
        let subject = device.subject_attributes();
        let parameter = |name: &str| -> Result<String, Error> {
            let from_certificate = match PARAMETERS.iter().find(|(known, _)| *known == name) {
                Some((_, None)) => Some(id.to_string()),
                Some((_, Some(oid))) => {
                    subject.iter().find(|(attribute, _)| attribute == oid).map(|(_, value)| value.clone())
                }
                None => None,
            };
            from_certificate.or_else(|| self.defaults.get(name).cloned()).ok_or_else(|| {
                invalid(format!("the certificate has no value for the parameter {name}, and it has no default"))
            })
        };
        let thing = match &self.thing {
            None => None,
            Some(thing) => {
                let name = evaluate(&thing.name, &parameter)?;
                let type_name = thing.type_name.as_ref().map(|expr| evaluate(expr, &parameter)).transpose()?;
                let mut attributes = BTreeMap::new();
                for (key, expr) in &thing.attributes {
                    let value = evaluate(expr, &parameter)?;
                    if !value.is_empty() {
                        attributes.insert(key.clone(), value);
                    }
                }
                crate::things::check_attributes(&attributes)?;
                let type_name = type_name
                    .map(|text| ThingName::parse(&text))
                    .transpose()
                    .map_err(|error| invalid(error.to_string()))?;
                crate::things::check_attribute_count(&attributes, type_name.as_ref())?;
                Some(ProvisionedThing {
                    name: ThingName::parse(&name).map_err(|error| invalid(error.to_string()))?,
                    type_name,
                    attributes,
                })
            }
        };
        let policy = match &self.policy {
            None => None,
            Some(policy) => {
                let name = match (&policy.name, &policy.document) {
                    (Some(expr), _) => evaluate(expr, &parameter)?,
                    (None, Some(document)) => generated_policy_name(document),
                    (None, None) => {
                        return Err(invalid("the policy resource needs a PolicyName or a PolicyDocument".into()));
                    }
                };
                Some(ProvisionedPolicy {
                    name: PolicyName::parse(&name).map_err(|error| invalid(error.to_string()))?,
                    document: policy.document.clone(),
                })
            }
        };
        let status = self.certificate.as_ref().map_or(CertificateStatus::Active, |certificate| certificate.status);
        Ok(Provisioning { thing, status, policy })
    }
}

/// The name of a policy a template creates from a document without a name: like AWS, the
/// SHA-256 of the document in hex.
fn generated_policy_name(document: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, document.as_bytes()))
}

fn parse_thing(logical_name: &str, properties: &Map<String, Value>) -> Result<ThingResource, Error> {
    let mut name = None;
    let mut type_name = None;
    let mut attributes = BTreeMap::new();
    for (key, value) in properties {
        match key.as_str() {
            "ThingName" => name = Some(parse_expr(value)?),
            "ThingTypeName" => type_name = Some(parse_expr(value)?),
            "AttributePayload" => {
                let payload = value.as_object().ok_or_else(|| invalid("AttributePayload must be an object".into()))?;
                for (attribute, expr) in payload {
                    attributes.insert(attribute.clone(), parse_expr(expr)?);
                }
            }
            "ThingGroups" | "BillingGroup" => {
                return Err(invalid(format!("the thing property {key} is not supported (certfleet has no groups)")));
            }
            other => {
                return Err(invalid(format!("the thing resource {logical_name} has an unknown property {other:?}")));
            }
        }
    }
    let name = name.ok_or_else(|| invalid(format!("the thing resource {logical_name} needs a ThingName")))?;
    Ok(ThingResource { name, type_name, attributes })
}

fn parse_certificate(logical_name: &str, properties: &Map<String, Value>) -> Result<CertificateResource, Error> {
    let mut status = CertificateStatus::Active;
    for (key, value) in properties {
        match key.as_str() {
            "CertificateId" => match parse_expr(value)? {
                Expr::Ref(parameter) if parameter == "AWS::IoT::Certificate::Id" => {}
                _ => return Err(invalid("CertificateId must be {\"Ref\": \"AWS::IoT::Certificate::Id\"}".into())),
            },
            "Status" => {
                status = match value.as_str() {
                    Some("ACTIVE") => CertificateStatus::Active,
                    Some("INACTIVE") => CertificateStatus::Inactive,
                    _ => return Err(invalid("the certificate Status must be ACTIVE or INACTIVE".into())),
                }
            }
            other => {
                return Err(invalid(format!(
                    "the certificate resource {logical_name} has an unknown property {other:?}"
                )));
            }
        }
    }
    Ok(CertificateResource { status })
}

fn parse_policy(logical_name: &str, properties: &Map<String, Value>) -> Result<PolicyResource, Error> {
    let mut name = None;
    let mut document = None;
    for (key, value) in properties {
        match key.as_str() {
            "PolicyName" => name = Some(parse_expr(value)?),
            "PolicyDocument" => {
                let text = value.as_str().ok_or_else(|| invalid("PolicyDocument must be a string".into()))?;
                certfleet_policy::Policy::parse(text).map_err(|error| {
                    invalid(format!("the PolicyDocument of {logical_name} is not a valid policy: {error}"))
                })?;
                document = Some(text.to_owned());
            }
            other => {
                return Err(invalid(format!("the policy resource {logical_name} has an unknown property {other:?}")));
            }
        }
    }
    if name.is_none() && document.is_none() {
        return Err(invalid(format!("the policy resource {logical_name} needs a PolicyName or a PolicyDocument")));
    }
    Ok(PolicyResource { name, document })
}

fn parse_expr(value: &Value) -> Result<Expr, Error> {
    match value {
        Value::String(text) => Ok(Expr::Text(text.clone())),
        Value::Object(function) if function.len() == 1 => {
            let (name, argument) = function.iter().next().ok_or_else(|| invalid("an empty function".into()))?;
            match name.as_str() {
                "Ref" => {
                    let parameter = argument.as_str().ok_or_else(|| invalid("Ref takes a parameter name".into()))?;
                    check_parameter(parameter)?;
                    Ok(Expr::Ref(parameter.to_owned()))
                }
                "Fn::Join" => {
                    let shape = || invalid("Fn::Join takes [delimiter, [values]]".into());
                    let [delimiter, parts] = argument.as_array().map(Vec::as_slice).ok_or_else(shape)? else {
                        return Err(shape());
                    };
                    let delimiter = delimiter.as_str().ok_or_else(shape)?;
                    let parts = parts.as_array().ok_or_else(shape)?.iter().map(parse_expr).collect::<Result<_, _>>()?;
                    Ok(Expr::Join(delimiter.to_owned(), parts))
                }
                "Fn::Sub" => {
                    let text = argument.as_str().ok_or_else(|| {
                        invalid("Fn::Sub takes a string (the variable map form is not supported)".into())
                    })?;
                    parse_sub(text)
                }
                other => Err(invalid(format!("the intrinsic function {other} is not supported"))),
            }
        }
        _ => Err(invalid(format!("unsupported template value {value}"))),
    }
}

/// `Fn::Sub`'s string: `${Parameter}` references among literal text (`${!x}` is a literal `${x}`).
fn parse_sub(text: &str) -> Result<Expr, Error> {
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
            check_parameter(name)?;
            parts.push(Expr::Ref(name.to_owned()));
        }
        rest = &after[end + 1..];
    }
    parts.push(Expr::Text(rest.to_owned()));
    Ok(Expr::Sub(parts))
}

fn evaluate(expr: &Expr, parameter: &dyn Fn(&str) -> Result<String, Error>) -> Result<String, Error> {
    match expr {
        Expr::Text(text) => Ok(text.clone()),
        Expr::Ref(name) => parameter(name),
        Expr::Join(delimiter, parts) => {
            Ok(parts.iter().map(|part| evaluate(part, parameter)).collect::<Result<Vec<_>, _>>()?.join(delimiter))
        }
        Expr::Sub(parts) => {
            Ok(parts.iter().map(|part| evaluate(part, parameter)).collect::<Result<Vec<_>, _>>()?.concat())
        }
    }
}

fn check_parameter(name: &str) -> Result<(), Error> {
    if PARAMETERS.iter().any(|(known, _)| *known == name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "the template references the unknown parameter {name:?}: a JITP template may use only the AWS::IoT::Certificate::* parameters"
        )))
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidRequest(message)
}
