//! The broker's tap: what sees every message a device publishes on this node (the rules
//! engine's queue), defined here so that the broker depends on no engine.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use certfleet_pki::CertificateId;
use certfleet_registry::AccountId;

use crate::fabric::Message;

/// A device's message as the broker hands it to its tap.
#[derive(Clone, Debug)]
pub struct Published {
    pub account: AccountId,
    /// The publisher's MQTT client id (`clientid()`).
    pub client_id: String,
    /// The publisher's certificate id (`principal()`).
    pub principal: Option<CertificateId>,
    pub message: Arc<Message>,
    /// When the broker received it, in milliseconds since the Unix epoch (`timestamp()`).
    pub received_ms: i64,
    /// How many rules republished it on its way here: 0 for a device's message.
    pub depth: u8,
}

/// Sees every message a device publishes on this node, on the publish path: it must not block.
pub trait PublishTap: Send + Sync {
    /// Whether the tap wants messages on `topic` of `account` (asked before building one).
    fn wants(&self, _account: &AccountId, _topic: &str) -> bool {
        true
    }

    fn published(&self, published: Published);
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64)
}
