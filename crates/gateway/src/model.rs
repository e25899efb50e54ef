//! The gateway's vocabulary, at the bottom of its module graph: who a device is ([`Identity`]),
//! why it is not let in ([`Refusal`]), why its CONNECT is refused ([`ConnectRefusal`]). Every
//! other module may use these; this one uses none of them.

use std::fmt;

use certfleet_mqtt::ReasonCode;
use certfleet_pki::CertificateId;
use certfleet_registry::AccountId;
use time::OffsetDateTime;

/// Why a device is not let in. Logged and counted; never told to the device in detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The TLS client sent no certificate.
    NoClientCert,
    /// The certificate does not parse or uses a key or signature certfleet refuses.
    BadCertificate,
    /// The certificate is registered in no account.
    Unregistered,
    /// The certificate is registered, but in another account than the endpoint's.
    WrongAccount,
    /// The certificate is INACTIVE (or the deprecated REGISTER_INACTIVE).
    Inactive,
    /// The certificate is REVOKED.
    Revoked,
    /// The certificate is being transferred to another account.
    PendingTransfer,
    /// The certificate waits for activation (just-in-time registration).
    PendingActivation,
    /// The certificate's notAfter has passed.
    Expired,
    /// The certificate's notBefore is still ahead.
    NotYetValid,
    /// The CA that signed the certificate is no longer registered.
    CaMissing,
    /// The CA that signed the certificate is INACTIVE.
    CaInactive,
    /// The certificate does not verify against its registered CA.
    ChainInvalid,
    /// The certificate's mode (SNI_ONLY, or registered without a CA) needs SNI, and none was sent.
    SniRequired,
    /// The registry could not be read: refused to stay safe.
    RegistryUnavailable,
    /// The certificate could be registered just in time, but the account registers more per
    /// second than this node allows (`Services::auto_register_certificate`); nothing was
    /// written, and the device may retry.
    RegistrationThrottled,
    /// Not a refusal of the device: its endpoint now serves another server chain, and the
    /// session is closed so that the device handshakes again and sees it (a migration's drain).
    ServerChainChanged,
}

impl Refusal {
    /// Every reason, for metrics.
    pub const ALL: [Refusal; 17] = [
        Refusal::NoClientCert,
        Refusal::BadCertificate,
        Refusal::Unregistered,
        Refusal::WrongAccount,
        Refusal::Inactive,
        Refusal::Revoked,
        Refusal::PendingTransfer,
        Refusal::PendingActivation,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::CaMissing,
        Refusal::CaInactive,
        Refusal::ChainInvalid,
        Refusal::SniRequired,
        Refusal::RegistryUnavailable,
        Refusal::RegistrationThrottled,
        Refusal::ServerChainChanged,
    ];

    /// The reason as logged and counted.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoClientCert => "NoClientCert",
            Refusal::BadCertificate => "BadCertificate",
            Refusal::Unregistered => "Unregistered",
            Refusal::WrongAccount => "WrongAccount",
            Refusal::Inactive => "Inactive",
            Refusal::Revoked => "Revoked",
            Refusal::PendingTransfer => "PendingTransfer",
            Refusal::PendingActivation => "PendingActivation",
            Refusal::Expired => "Expired",
            Refusal::NotYetValid => "NotYetValid",
            Refusal::CaMissing => "CaMissing",
            Refusal::CaInactive => "CaInactive",
            Refusal::ChainInvalid => "ChainInvalid",
            Refusal::SniRequired => "SniRequired",
            Refusal::RegistryUnavailable => "RegistryUnavailable",
            Refusal::RegistrationThrottled => "RegistrationThrottled",
            Refusal::ServerChainChanged => "ServerChainChanged",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated device: what the session layer knows of its principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub account: AccountId,
    pub certificate_id: CertificateId,
    pub ca_certificate_id: Option<CertificateId>,
    pub not_after: OffsetDateTime,
}

/// Why the gateway refused the CONNECT of an authenticated device: logged once with the client
/// ID, counted (`certfleet_broker_connect_refusals_total{reason=...}`) and answered with
/// [`ConnectRefusal::reason_code`] (MQTT 3.1.1: its return code, where 3.1.1 has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectRefusal {
    /// MQTT 5 enhanced authentication was asked for; the certificate is the only credential.
    AuthenticationMethod,
    /// The certificate stopped being accepted (revoked, say) between the handshake and CONNECT.
    IdentityClosed,
    /// MQTT 3.1.1: an empty client ID with clean session 0 (the spec's return code 2).
    EmptyClientIdWithSession,
    /// The client ID is longer than the gateway allows.
    ClientIdTooLong,
    /// The client ID holds an MQTT wildcard, `+` or `#`: substituted into a policy or a topic it
    /// could stand for other clients.
    ClientIdWildcard,
    /// The client ID holds the character NUL, which no topic may hold.
    ClientIdNul,
    /// The client ID starts with `$`, which AWS IoT reserves.
    ClientIdReserved,
    /// The policies do not allow `iot:Connect` on the client ID.
    ConnectNotAuthorized,
    /// The will's payload is over the message size limit.
    WillTooLarge,
    /// The will's topic is reserved or the policies do not allow publishing (or retaining) on it.
    WillNotAuthorized,
    /// The node runs in a cluster that cannot be asked now (NATS unreachable): the client ID
    /// cannot be taken without risking two live sessions for it.
    ClusterUnavailable,
    /// The node is shutting down: the device is to connect to another node.
    ServerShuttingDown,
}

impl ConnectRefusal {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [ConnectRefusal; 12] = [
        ConnectRefusal::AuthenticationMethod,
        ConnectRefusal::IdentityClosed,
        ConnectRefusal::EmptyClientIdWithSession,
        ConnectRefusal::ClientIdTooLong,
        ConnectRefusal::ClientIdWildcard,
        ConnectRefusal::ClientIdNul,
        ConnectRefusal::ClientIdReserved,
        ConnectRefusal::ConnectNotAuthorized,
        ConnectRefusal::WillTooLarge,
        ConnectRefusal::WillNotAuthorized,
        ConnectRefusal::ClusterUnavailable,
        ConnectRefusal::ServerShuttingDown,
    ];

    /// The reason's name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectRefusal::AuthenticationMethod => "authentication_method",
            ConnectRefusal::IdentityClosed => "identity_closed",
            ConnectRefusal::EmptyClientIdWithSession => "empty_client_id_with_session",
            ConnectRefusal::ClientIdTooLong => "client_id_too_long",
            ConnectRefusal::ClientIdWildcard => "client_id_wildcard",
            ConnectRefusal::ClientIdNul => "client_id_nul",
            ConnectRefusal::ClientIdReserved => "client_id_reserved",
            ConnectRefusal::ConnectNotAuthorized => "connect_not_authorized",
            ConnectRefusal::WillTooLarge => "will_too_large",
            ConnectRefusal::WillNotAuthorized => "will_not_authorized",
            ConnectRefusal::ClusterUnavailable => "cluster_unavailable",
            ConnectRefusal::ServerShuttingDown => "server_shutting_down",
        }
    }

    /// What the client is told: MQTT 5's reason code (MQTT 3.1.1 maps it to its return code:
    /// 0x85 is 2 "identifier rejected", 0x87 is 5 "not authorized", 0x88 is 3 "server
    /// unavailable"; the others close silently).
    pub fn reason_code(self) -> ReasonCode {
        match self {
            ConnectRefusal::AuthenticationMethod => ReasonCode::BAD_AUTHENTICATION_METHOD,
            ConnectRefusal::IdentityClosed
            | ConnectRefusal::ConnectNotAuthorized
            | ConnectRefusal::WillNotAuthorized => ReasonCode::NOT_AUTHORIZED,
            ConnectRefusal::EmptyClientIdWithSession
            | ConnectRefusal::ClientIdTooLong
            | ConnectRefusal::ClientIdWildcard
            | ConnectRefusal::ClientIdNul
            | ConnectRefusal::ClientIdReserved => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            ConnectRefusal::WillTooLarge => ReasonCode::PACKET_TOO_LARGE,
            ConnectRefusal::ClusterUnavailable => ReasonCode::SERVER_UNAVAILABLE,
            // Not 0x8B: "server shutting down" is a DISCONNECT reason, which CONNACK may not carry.
            ConnectRefusal::ServerShuttingDown => ReasonCode::SERVER_UNAVAILABLE,
        }
    }

    /// Why a client ID cannot be used, if it cannot (the empty one is decided by the caller).
    pub fn of_client_id(client_id: &str, max_len: usize) -> Option<ConnectRefusal> {
        if client_id.len() > max_len {
            Some(ConnectRefusal::ClientIdTooLong)
        } else if client_id.contains(['+', '#']) {
            Some(ConnectRefusal::ClientIdWildcard)
        } else if client_id.contains('\0') {
            Some(ConnectRefusal::ClientIdNul)
        } else if client_id.starts_with('$') {
            Some(ConnectRefusal::ClientIdReserved)
        } else {
            None
        }
    }
}

impl std::fmt::Display for ConnectRefusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}
