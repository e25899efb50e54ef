//! Policy variables and condition keys: their names, and how each resolves against a
//! [`Context`].
//!
//! The same names serve both uses: `${iot:ClientId}` inside a resource and `iot:ClientId` as a
//! condition key. Names are matched ASCII case-insensitively (IAM condition keys are), except a
//! thing attribute name, which is case-sensitive like the attribute itself.

use crate::context::{AlternativeNames, CertificateAttributes, Context, DistinguishedName};

/// AWS IoT uses at most the first five values of a multi-valued certificate attribute.
const MAX_CERTIFICATE_VALUES: usize = 5;

/// AWS IoT does not substitute a certificate attribute longer than this (in characters).
const MAX_SUBSTITUTED_CHARACTERS: usize = 1024;

/// AWS IoT does not substitute a certificate attribute holding one of these.
const WILDCARD_CHARACTERS: [char; 5] = ['*', '$', '+', '?', '#'];

/// A variable or condition key the policy language knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Variable {
    ClientId,
    SourceIp,
    ThingName,
    ThingTypeName,
    ThingIsAttached,
    ThingAttribute(Box<str>),
    Certificate {
        field: CertificateField,
        selection: Selection,
    },
    /// `iot:Certificate.AvailableKeys`: the names of the certificate variables that have a value.
    CertificateAvailableKeys,
}

/// Which values of a multi-valued certificate attribute a variable stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// The plain name: the first value.
    First,
    /// `Name.N`: the value at zero-based index N (`.1` is the second value, as in AWS IoT).
    Index(usize),
    /// `Name.List`: every value.
    All,
}

/// Characters a value substituted into a topic or topic filter resource may not hold: the
/// MQTT level separator and wildcards (and NUL, which no topic may hold). Such a value would
/// name more than its own literal level (`victim/x` inside `clients/victim/`, `+` standing for
/// every client in a filter), so the variable has no value there.
const TOPIC_LEVEL_FORBIDDEN: [char; 4] = ['/', '+', '#', '\0'];

/// How a resolved value will be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// Substituted into a `client` resource or a condition value.
    Substitution,
    /// Substituted into a `topic` or `topicfilter` resource: the value must be one literal topic
    /// level (see [`Usage::admits`]).
    TopicSubstitution,
    /// Compared by a condition operator.
    ConditionKey,
}

impl Usage {
    /// Whether the value is written into a string (rather than compared).
    fn substitutes(self) -> bool {
        match self {
            Usage::Substitution | Usage::TopicSubstitution => true,
            Usage::ConditionKey => false,
        }
    }

    /// Whether a resolved value may be used this way: inside a topic or topic filter a value
    /// holding `/`, `+`, `#` or NUL is not substituted (the variable then has no value, which
    /// never widens access), whatever variable it comes from.
    pub(crate) fn admits(self, value: &str) -> bool {
        match self {
            Usage::TopicSubstitution => !value.contains(TOPIC_LEVEL_FORBIDDEN),
            Usage::Substitution | Usage::ConditionKey => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CertificateField {
    SerialNumber,
    Subject(NameField),
    Issuer(NameField),
    SubjectAlternativeName(AlternativeNameField),
    IssuerAlternativeName(AlternativeNameField),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameField {
    Country,
    Organization,
    OrganizationalUnit,
    DistinguishedNameQualifier,
    State,
    CommonName,
    SerialNumber,
    Title,
    Surname,
    GivenName,
    Initials,
    Pseudonym,
    GenerationQualifier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AlternativeNameField {
    Rfc822Name,
    DnsName,
    DirectoryName,
    UniformResourceIdentifier,
    IpAddress,
}

/// Every certificate variable AWS IoT documents, by its full name.
///
/// This table is also the value of `iot:Certificate.AvailableKeys`, in this order.
const CERTIFICATE_FIELDS: [(&str, CertificateField); 37] = {
    use AlternativeNameField as A;
    use CertificateField::{Issuer, IssuerAlternativeName, SerialNumber, Subject, SubjectAlternativeName};
    use NameField as N;
    [
        ("iot:Certificate.SerialNumber", SerialNumber),
        ("iot:Certificate.Subject.Country", Subject(N::Country)),
        ("iot:Certificate.Subject.Organization", Subject(N::Organization)),
        ("iot:Certificate.Subject.OrganizationalUnit", Subject(N::OrganizationalUnit)),
        ("iot:Certificate.Subject.DistinguishedNameQualifier", Subject(N::DistinguishedNameQualifier)),
        ("iot:Certificate.Subject.State", Subject(N::State)),
        ("iot:Certificate.Subject.CommonName", Subject(N::CommonName)),
        ("iot:Certificate.Subject.SerialNumber", Subject(N::SerialNumber)),
        ("iot:Certificate.Subject.Title", Subject(N::Title)),
        ("iot:Certificate.Subject.Surname", Subject(N::Surname)),
        ("iot:Certificate.Subject.GivenName", Subject(N::GivenName)),
        ("iot:Certificate.Subject.Initials", Subject(N::Initials)),
        ("iot:Certificate.Subject.Pseudonym", Subject(N::Pseudonym)),
        ("iot:Certificate.Subject.GenerationQualifier", Subject(N::GenerationQualifier)),
        ("iot:Certificate.Issuer.Country", Issuer(N::Country)),
        ("iot:Certificate.Issuer.Organization", Issuer(N::Organization)),
        ("iot:Certificate.Issuer.OrganizationalUnit", Issuer(N::OrganizationalUnit)),
        ("iot:Certificate.Issuer.DistinguishedNameQualifier", Issuer(N::DistinguishedNameQualifier)),
        ("iot:Certificate.Issuer.State", Issuer(N::State)),
        ("iot:Certificate.Issuer.CommonName", Issuer(N::CommonName)),
        ("iot:Certificate.Issuer.SerialNumber", Issuer(N::SerialNumber)),
        ("iot:Certificate.Issuer.Title", Issuer(N::Title)),
        ("iot:Certificate.Issuer.Surname", Issuer(N::Surname)),
        ("iot:Certificate.Issuer.GivenName", Issuer(N::GivenName)),
        ("iot:Certificate.Issuer.Initials", Issuer(N::Initials)),
        ("iot:Certificate.Issuer.Pseudonym", Issuer(N::Pseudonym)),
        ("iot:Certificate.Issuer.GenerationQualifier", Issuer(N::GenerationQualifier)),
        ("iot:Certificate.Subject.AlternativeName.RFC822Name", SubjectAlternativeName(A::Rfc822Name)),
        ("iot:Certificate.Subject.AlternativeName.DNSName", SubjectAlternativeName(A::DnsName)),
        ("iot:Certificate.Subject.AlternativeName.DirectoryName", SubjectAlternativeName(A::DirectoryName)),
        (
            "iot:Certificate.Subject.AlternativeName.UniformResourceIdentifier",
            SubjectAlternativeName(A::UniformResourceIdentifier),
        ),
        ("iot:Certificate.Subject.AlternativeName.IPAddress", SubjectAlternativeName(A::IpAddress)),
        ("iot:Certificate.Issuer.AlternativeName.RFC822Name", IssuerAlternativeName(A::Rfc822Name)),
        ("iot:Certificate.Issuer.AlternativeName.DNSName", IssuerAlternativeName(A::DnsName)),
        ("iot:Certificate.Issuer.AlternativeName.DirectoryName", IssuerAlternativeName(A::DirectoryName)),
        (
            "iot:Certificate.Issuer.AlternativeName.UniformResourceIdentifier",
            IssuerAlternativeName(A::UniformResourceIdentifier),
        ),
        ("iot:Certificate.Issuer.AlternativeName.IPAddress", IssuerAlternativeName(A::IpAddress)),
    ]
};

impl Variable {
    /// The variable called `name` (what stands between `${` and `}`, or a condition key).
    pub(crate) fn parse(name: &str) -> Option<Variable> {
        const THING_ATTRIBUTE: &str = "iot:Connection.Thing.Attributes[";
        let fixed = [
            ("iot:ClientId", Variable::ClientId),
            ("aws:SourceIp", Variable::SourceIp),
            ("iot:Connection.Thing.ThingName", Variable::ThingName),
            ("iot:Connection.Thing.ThingTypeName", Variable::ThingTypeName),
            ("iot:Connection.Thing.IsAttached", Variable::ThingIsAttached),
            ("iot:Certificate.AvailableKeys", Variable::CertificateAvailableKeys),
        ];
        if let Some((_, variable)) = fixed.into_iter().find(|(known, _)| known.eq_ignore_ascii_case(name)) {
            return Some(variable);
        }
        if let Some(prefix) = name.get(..THING_ATTRIBUTE.len())
            && prefix.eq_ignore_ascii_case(THING_ATTRIBUTE)
        {
            let attribute = name[THING_ATTRIBUTE.len()..].strip_suffix(']')?;
            if attribute.is_empty() || attribute.contains(['[', ']']) {
                return None;
            }
            return Some(Variable::ThingAttribute(attribute.into()));
        }
        let (base, selection) = match name.rsplit_once('.') {
            Some((base, suffix)) if suffix.eq_ignore_ascii_case("List") => (base, Selection::All),
            Some((base, index)) if (1..=3).contains(&index.len()) && index.bytes().all(|b| b.is_ascii_digit()) => {
                (base, Selection::Index(index.parse().ok()?))
            }
            _ => (name, Selection::First),
        };
        let (_, field) = CERTIFICATE_FIELDS.iter().find(|(known, _)| known.eq_ignore_ascii_case(base))?;
        if *field == CertificateField::SerialNumber && selection != Selection::First {
            return None;
        }
        Some(Variable::Certificate { field: *field, selection })
    }

    /// Whether the variable stands for several values at once.
    pub(crate) fn is_multi_valued(&self) -> bool {
        matches!(self, Variable::CertificateAvailableKeys | Variable::Certificate { selection: Selection::All, .. })
    }

    /// The values of the variable for a request; [`Values::None`] when it has none.
    pub(crate) fn resolve<'c>(&self, context: &'c Context, usage: Usage) -> Values<'c> {
        let thing = context.thing.as_ref();
        let one = |value: Option<&'c str>| value.map_or(Values::None, Values::One);
        match self {
            Variable::ClientId => Values::One(&context.client_id),
            Variable::SourceIp => one(context.source_ip.as_deref()),
            Variable::ThingName => one(thing.map(|thing| thing.name.as_str())),
            Variable::ThingTypeName => one(thing.and_then(|thing| thing.type_name.as_deref())),
            Variable::ThingIsAttached => Values::One(if thing.is_some() { "true" } else { "false" }),
            Variable::ThingAttribute(name) => {
                one(thing.and_then(|thing| thing.attributes.get(&**name)).map(String::as_str))
            }
            Variable::Certificate { field, selection } => {
                let values = field.values(&context.certificate);
                let values = &values[..values.len().min(MAX_CERTIFICATE_VALUES)];
                let selected = match selection {
                    Selection::First => values.get(..1),
                    Selection::Index(index) => values.get(*index..*index + 1),
                    Selection::All => Some(values),
                };
                match selected {
                    Some(selected) if usage.substitutes() && !selected.iter().all(|value| substitutable(value)) => {
                        Values::None
                    }
                    Some(selected) if !selected.is_empty() => Values::Many(selected),
                    _ => Values::None,
                }
            }
            Variable::CertificateAvailableKeys => {
                if available_keys(&context.certificate).next().is_some() {
                    Values::AvailableKeys(&context.certificate)
                } else {
                    Values::None
                }
            }
        }
    }
}

/// AWS IoT leaves a certificate variable unsubstituted when its value holds a wildcard or is too
/// long; certfleet then treats it as having no value.
fn substitutable(value: &str) -> bool {
    !value.contains(WILDCARD_CHARACTERS) && value.chars().count() <= MAX_SUBSTITUTED_CHARACTERS
}

fn available_keys(certificate: &CertificateAttributes) -> impl Iterator<Item = &'static str> + '_ {
    CERTIFICATE_FIELDS.iter().filter(|(_, field)| !field.values(certificate).is_empty()).map(|(name, _)| *name)
}

impl CertificateField {
    fn values(self, certificate: &CertificateAttributes) -> &[String] {
        match self {
            CertificateField::SerialNumber => certificate.serial_number.as_slice(),
            CertificateField::Subject(field) => field.values(&certificate.subject),
            CertificateField::Issuer(field) => field.values(&certificate.issuer),
            CertificateField::SubjectAlternativeName(field) => field.values(&certificate.subject_alternative_names),
            CertificateField::IssuerAlternativeName(field) => field.values(&certificate.issuer_alternative_names),
        }
    }
}

impl NameField {
    fn values(self, name: &DistinguishedName) -> &[String] {
        match self {
            NameField::Country => &name.country,
            NameField::Organization => &name.organization,
            NameField::OrganizationalUnit => &name.organizational_unit,
            NameField::DistinguishedNameQualifier => &name.distinguished_name_qualifier,
            NameField::State => &name.state,
            NameField::CommonName => &name.common_name,
            NameField::SerialNumber => &name.serial_number,
            NameField::Title => &name.title,
            NameField::Surname => &name.surname,
            NameField::GivenName => &name.given_name,
            NameField::Initials => &name.initials,
            NameField::Pseudonym => &name.pseudonym,
            NameField::GenerationQualifier => &name.generation_qualifier,
        }
    }
}

impl AlternativeNameField {
    fn values(self, names: &AlternativeNames) -> &[String] {
        match self {
            AlternativeNameField::Rfc822Name => &names.rfc822_names,
            AlternativeNameField::DnsName => &names.dns_names,
            AlternativeNameField::DirectoryName => &names.directory_names,
            AlternativeNameField::UniformResourceIdentifier => &names.uniform_resource_identifiers,
            AlternativeNameField::IpAddress => &names.ip_addresses,
        }
    }
}

/// The values of a variable for one request, borrowed from the [`Context`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum Values<'c> {
    None,
    One(&'c str),
    Many(&'c [String]),
    AvailableKeys(&'c CertificateAttributes),
}

impl<'c> Values<'c> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Values::None => 0,
            Values::One(_) => 1,
            Values::Many(values) => values.len(),
            Values::AvailableKeys(certificate) => available_keys(certificate).count(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value at `index`, which must be below [`Values::len`].
    pub(crate) fn get(&self, index: usize) -> &'c str {
        match self {
            Values::None => "",
            Values::One(value) => value,
            Values::Many(values) => values.get(index).map_or("", String::as_str),
            Values::AvailableKeys(certificate) => available_keys(certificate).nth(index).unwrap_or(""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Option<&str>) {
        let actual = Variable::parse(name).map(|variable| format!("{variable:?}"));
        assert_eq!(actual.as_deref(), expected, "{name}");
    }

    #[test]
    fn names() {
        check("iot:ClientId", Some("ClientId"));
        check("IOT:clientid", Some("ClientId"));
        check("aws:SourceIp", Some("SourceIp"));
        check("iot:Connection.Thing.ThingName", Some("ThingName"));
        check("iot:Connection.Thing.ThingTypeName", Some("ThingTypeName"));
        check("iot:Connection.Thing.IsAttached", Some("ThingIsAttached"));
        check("iot:Connection.Thing.Attributes[Floor]", Some(r#"ThingAttribute("Floor")"#));
        check("iot:connection.thing.attributes[Floor]", Some(r#"ThingAttribute("Floor")"#));
        check("iot:Connection.Thing.Attributes[]", None);
        check("iot:Connection.Thing.Attributes[a", None);
        check("iot:Connection.Thing.Attributes[a]b]", None);
        check(
            "iot:Certificate.Subject.CommonName",
            Some("Certificate { field: Subject(CommonName), selection: First }"),
        );
        check(
            "iot:Certificate.Subject.OrganizationalUnit.List",
            Some("Certificate { field: Subject(OrganizationalUnit), selection: All }"),
        );
        check("iot:Certificate.Issuer.Country.1", Some("Certificate { field: Issuer(Country), selection: Index(1) }"));
        check(
            "iot:Certificate.Subject.AlternativeName.DNSName",
            Some("Certificate { field: SubjectAlternativeName(DnsName), selection: First }"),
        );
        check("iot:Certificate.SerialNumber", Some("Certificate { field: SerialNumber, selection: First }"));
        check("iot:Certificate.SerialNumber.List", None);
        check("iot:Certificate.AvailableKeys", Some("CertificateAvailableKeys"));
        check("iot:Certificate.Subject.EmailAddress", None);
        check("iot:Certificate.Subject.Locality", None);
        check("iot:Certificate.Validity.NotBefore", None);
        check("iot:Certificate.Subject.CommonName.1234", None);
        check("iot:Nope", None);
        check("aws:username", None);
    }
}
