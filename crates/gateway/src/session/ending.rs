//! Why a connection ends, and the one place that maps it to protocol output: the MQTT 5
//! DISCONNECT reason code, AWS IoT's `disconnectReason`, and whether the will is published.

use std::fmt;

use certfleet_mqtt::ReasonCode;

use crate::events::DisconnectReason;
use crate::model::Refusal;

/// Why a connected session's connection ends.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent DISCONNECT; MQTT 5 reason 0x04 asks for the will anyway.
    ClientDisconnect { with_will: bool, session_expiry: Option<u32> },
    /// The stream ended or failed without DISCONNECT.
    ConnectionLost,
    /// Nothing arrived for one and a half keep-alive periods.
    KeepAliveTimeout,
    /// Another connection took the client ID.
    TakenOver,
    /// The registry no longer accepts the device's identity.
    Revoked(Refusal),
    /// The device certificate's notAfter passed.
    CertificateExpired,
    /// The node is shutting down (the device is to reconnect to another node). Not a client's
    /// DISCONNECT, so the will is published, as for any connection the server closes.
    ServerShutdown,
    /// The client sent bytes the codec refuses.
    Malformed(certfleet_mqtt::Error),
    /// The client broke a rule of the session (a second CONNECT, a receive maximum exceeded, an
    /// unknown topic alias, ...).
    Violation { reason_code: ReasonCode, what: &'static str },
    /// A PUBLISH payload over the message size limit.
    MessageTooLarge { size: usize },
    /// An MQTT 3.1.1 client published where it may not (MQTT 5 clients get a PUBACK or PUBREC
    /// reason code instead).
    NotAuthorized,
}

impl Ending {
    /// The reason code of the DISCONNECT sent to an MQTT 5 client, if one is sent.
    pub(crate) fn reason_code(&self) -> Option<ReasonCode> {
        Some(match self {
            Ending::ClientDisconnect { .. } | Ending::ConnectionLost => return None,
            Ending::KeepAliveTimeout => ReasonCode::KEEP_ALIVE_TIMEOUT,
            Ending::TakenOver => ReasonCode::SESSION_TAKEN_OVER,
            Ending::Revoked(Refusal::ServerChainChanged) | Ending::ServerShutdown => ReasonCode::SERVER_SHUTTING_DOWN,
            Ending::Revoked(_) | Ending::CertificateExpired => ReasonCode::ADMINISTRATIVE_ACTION,
            Ending::Malformed(error) => match error.reason_code() {
                // Only CONNECT yields these, and DISCONNECT may not carry them.
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION | ReasonCode::UNSPECIFIED_ERROR => ReasonCode::PROTOCOL_ERROR,
                code => code,
            },
            Ending::Violation { reason_code, .. } => *reason_code,
            Ending::MessageTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Ending::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        })
    }

    /// AWS IoT's name for it.
    pub(crate) fn disconnect_reason(&self) -> DisconnectReason {
        match self {
            Ending::ClientDisconnect { .. } => DisconnectReason::ClientInitiatedDisconnect,
            Ending::ConnectionLost => DisconnectReason::ConnectionLost,
            Ending::KeepAliveTimeout => DisconnectReason::MqttKeepAliveTimeout,
            Ending::TakenOver => DisconnectReason::DuplicateClientId,
            Ending::Revoked(Refusal::ServerChainChanged) | Ending::ServerShutdown => {
                DisconnectReason::ServerInitiatedDisconnect
            }
            Ending::Revoked(_) | Ending::CertificateExpired | Ending::NotAuthorized => DisconnectReason::AuthError,
            Ending::Malformed(_) | Ending::Violation { .. } | Ending::MessageTooLarge { .. } => {
                DisconnectReason::ClientError
            }
        }
    }

    /// Whether the will is published: on every end but a normal DISCONNECT (AWS IoT publishes it
    /// on AUTH_ERROR too). For a takeover on this node the broker has settled the will already.
    pub(crate) fn publishes_will(&self) -> bool {
        match self {
            Ending::ClientDisconnect { with_will, .. } => *with_will,
            _ => true,
        }
    }

    /// The Session Expiry Interval a DISCONNECT set.
    pub(crate) fn session_expiry(&self) -> Option<u32> {
        match self {
            Ending::ClientDisconnect { session_expiry, .. } => *session_expiry,
            _ => None,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::ClientDisconnect { with_will: false, .. } => f.write_str("client disconnected"),
            Ending::ClientDisconnect { with_will: true, .. } => f.write_str("client disconnected with its will"),
            Ending::ConnectionLost => f.write_str("connection lost"),
            Ending::KeepAliveTimeout => f.write_str("keep-alive timeout"),
            Ending::TakenOver => f.write_str("session taken over by another connection"),
            Ending::Revoked(reason) => write!(f, "identity no longer accepted: {reason}"),
            Ending::CertificateExpired => f.write_str("certificate expired"),
            Ending::ServerShutdown => f.write_str("the node is shutting down"),
            Ending::Malformed(error) => write!(f, "{error}"),
            Ending::Violation { what, .. } => write!(f, "protocol error: {what}"),
            Ending::MessageTooLarge { size } => write!(f, "message of {size} bytes over the size limit"),
            Ending::NotAuthorized => f.write_str("publish not authorized"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let check = |ending: Ending, code: Option<u8>, reason: &str, will: bool| {
            assert_eq!(ending.reason_code().map(ReasonCode::code), code, "{ending}");
            assert_eq!(ending.disconnect_reason().as_str(), reason, "{ending}");
            assert_eq!(ending.publishes_will(), will, "{ending}");
        };
        check(
            Ending::ClientDisconnect { with_will: false, session_expiry: None },
            None,
            "CLIENT_INITIATED_DISCONNECT",
            false,
        );
        check(
            Ending::ClientDisconnect { with_will: true, session_expiry: None },
            None,
            "CLIENT_INITIATED_DISCONNECT",
            true,
        );
        check(Ending::ConnectionLost, None, "CONNECTION_LOST", true);
        check(Ending::KeepAliveTimeout, Some(0x8D), "MQTT_KEEP_ALIVE_TIMEOUT", true);
        check(Ending::TakenOver, Some(0x8E), "DUPLICATE_CLIENTID", true);
        check(Ending::Revoked(Refusal::Revoked), Some(0x98), "AUTH_ERROR", true);
        check(Ending::CertificateExpired, Some(0x98), "AUTH_ERROR", true);
        check(Ending::ServerShutdown, Some(0x8B), "SERVER_INITIATED_DISCONNECT", true);
        check(Ending::Revoked(Refusal::ServerChainChanged), Some(0x8B), "SERVER_INITIATED_DISCONNECT", true);
        check(Ending::Malformed(certfleet_mqtt::Error::Truncated), Some(0x81), "CLIENT_ERROR", true);
        check(
            Ending::Malformed(certfleet_mqtt::Error::UnsupportedProtocolVersion(3)),
            Some(0x82),
            "CLIENT_ERROR",
            true,
        );
        check(Ending::MessageTooLarge { size: 1 }, Some(0x95), "CLIENT_ERROR", true);
        check(Ending::NotAuthorized, Some(0x87), "AUTH_ERROR", true);
    }
}
