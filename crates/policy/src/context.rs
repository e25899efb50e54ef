//! What policy variables and condition keys resolve from: the connection's client id, the thing
//! attached to its certificate and the certificate's own attributes.
//!
//! The gateway builds one [`Context`] per connection and lends it to every evaluation. An absent
//! value (`None`, an empty `Vec`) is not an empty string: a statement that needs it does not
//! match (see the crate documentation, "Variables without a value").

use std::collections::BTreeMap;

/// Everything a request is evaluated against besides its action and resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The MQTT client id of the connection (`iot:ClientId`).
    pub client_id: String,
    /// The client's IP address as text (`aws:SourceIp`), when known.
    pub source_ip: Option<String>,
    /// The thing attached to the connection's certificate, `None` when none is
    /// (`iot:Connection.Thing.*`; `iot:Connection.Thing.IsAttached` is then `"false"`).
    pub thing: Option<Thing>,
    /// The attributes of the client certificate (`iot:Certificate.*`).
    pub certificate: CertificateAttributes,
}

/// The registry thing attached to the connection's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Thing {
    /// `iot:Connection.Thing.ThingName`.
    pub name: String,
    /// `iot:Connection.Thing.ThingTypeName`, `None` when the thing has no type.
    pub type_name: Option<String>,
    /// `iot:Connection.Thing.Attributes[name]`, by attribute name (case-sensitive).
    pub attributes: BTreeMap<String, String>,
}

/// The attributes of the client certificate that AWS IoT exposes as `iot:Certificate.*`.
///
/// Multi-valued attributes keep the certificate's order; only the first five values are used,
/// as in AWS IoT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateAttributes {
    /// `iot:Certificate.SerialNumber`: the serial number as a decimal integer, as AWS IoT writes
    /// it (`10525622389124227206`, not `92:12:85:cb:b7:a5:e0:86`).
    pub serial_number: Option<String>,
    /// `iot:Certificate.Subject.*`.
    pub subject: DistinguishedName,
    /// `iot:Certificate.Issuer.*`.
    pub issuer: DistinguishedName,
    /// `iot:Certificate.Subject.AlternativeName.*`.
    pub subject_alternative_names: AlternativeNames,
    /// `iot:Certificate.Issuer.AlternativeName.*`.
    pub issuer_alternative_names: AlternativeNames,
}

/// The attributes of a subject or issuer name that AWS IoT exposes, each with every value it has
/// in the name (an RDN attribute may repeat: several `OU=` for example).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DistinguishedName {
    /// `C`: `...Country`.
    pub country: Vec<String>,
    /// `O`: `...Organization`.
    pub organization: Vec<String>,
    /// `OU`: `...OrganizationalUnit`.
    pub organizational_unit: Vec<String>,
    /// `dnQualifier`: `...DistinguishedNameQualifier`.
    pub distinguished_name_qualifier: Vec<String>,
    /// `ST`: `...State`.
    pub state: Vec<String>,
    /// `CN`: `...CommonName`.
    pub common_name: Vec<String>,
    /// `serialNumber` (the name attribute, not the certificate's): `...SerialNumber`.
    pub serial_number: Vec<String>,
    /// `title`: `...Title`.
    pub title: Vec<String>,
    /// `SN`: `...Surname`.
    pub surname: Vec<String>,
    /// `GN`: `...GivenName`.
    pub given_name: Vec<String>,
    /// `initials`: `...Initials`.
    pub initials: Vec<String>,
    /// `pseudonym`: `...Pseudonym`.
    pub pseudonym: Vec<String>,
    /// `generationQualifier`: `...GenerationQualifier`.
    pub generation_qualifier: Vec<String>,
}

/// The entries of a subject or issuer alternative name extension, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlternativeNames {
    /// `email:` entries: `...AlternativeName.RFC822Name`.
    pub rfc822_names: Vec<String>,
    /// `DNS:` entries: `...AlternativeName.DNSName`.
    pub dns_names: Vec<String>,
    /// `DirName:` entries, written as text: `...AlternativeName.DirectoryName`.
    pub directory_names: Vec<String>,
    /// `URI:` entries: `...AlternativeName.UniformResourceIdentifier`.
    pub uniform_resource_identifiers: Vec<String>,
    /// `IP Address:` entries, written as text: `...AlternativeName.IPAddress`.
    pub ip_addresses: Vec<String>,
}
