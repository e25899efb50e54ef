//! Certificate ownership tokens: what CreateKeysAndCertificate and CreateCertificateFromCsr hand
//! a device, and RegisterThing takes back.
//!
//! A token is 32 random bytes (base64), and it is worth something only where it was issued: it is
//! kept in the [`ConnectionTokens`] of the connection that asked for the certificate (so another
//! connection, another certificate or another account cannot use it, whatever it learns), it is
//! taken out by its first use (single-use), and it expires. The certificate it stands for is
//! held beside it, in memory only: the registry gets a row for it when RegisterThing applies a
//! template, so an abandoned request leaves nothing behind.
//!
//! Bounds: at most [`ConnectionTokens::MAX`] per connection (the oldest gives way) and a node-wide
//! budget ([`TokenBudget`]): a token holds a [`Slot`] of it until it is used, expires or its
//! connection ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use certfleet_pki::CertificateId;
use tokio::time::Instant;

/// The node-wide number of ownership tokens held at once.
#[derive(Debug)]
pub(crate) struct TokenBudget {
    held: AtomicUsize,
    max: usize,
}

impl TokenBudget {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(TokenBudget { held: AtomicUsize::new(0), max })
    }

    /// A slot, or `None` when the budget is spent.
    pub(crate) fn slot(self: &Arc<Self>) -> Option<Slot> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| (held < self.max).then_some(held + 1))
            .ok()
            .map(|_| Slot(self.clone()))
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One token's share of the [`TokenBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<TokenBudget>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A certificate issued to a connection and not yet registered.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) certificate_id: CertificateId,
    pub(crate) certificate_der: Vec<u8>,
    pub(crate) certificate_pem: String,
    pub(crate) expires: Instant,
    pub(crate) _slot: Slot,
}

/// The tokens one connection holds.
#[derive(Debug, Default)]
pub(crate) struct ConnectionTokens {
    entries: Vec<(String, Pending)>,
}

impl ConnectionTokens {
    /// The most tokens a connection holds at once: a device provisions one certificate; a few
    /// retries are room enough.
    pub(crate) const MAX: usize = 4;

    /// Keeps `pending` under a new token and returns the token. Expired tokens go first; past
    /// [`Self::MAX`] the oldest gives way.
    pub(crate) fn insert(&mut self, pending: Pending, now: Instant) -> Result<String, aws_lc_rs::error::Unspecified> {
        let mut random = [0u8; 32];
        aws_lc_rs::rand::fill(&mut random)?;
        let token = base64::engine::general_purpose::STANDARD.encode(random);
        self.entries.retain(|(_, held)| held.expires > now);
        if self.entries.len() >= Self::MAX {
            self.entries.remove(0);
        }
        self.entries.push((token.clone(), pending));
        Ok(token)
    }

    /// Takes the certificate a token stands for: `None` when this connection holds no such
    /// token or it has expired. Either way the token is gone afterwards.
    pub(crate) fn take(&mut self, token: &str, now: Instant) -> Option<Pending> {
        let at = self.entries.iter().position(|(held, _)| constant_time_eq(held.as_bytes(), token.as_bytes()))?;
        let (_, pending) = self.entries.remove(at);
        (pending.expires > now).then_some(pending)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Compares two byte strings in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// How long a token lives: AWS does not document it; five minutes is room for a device to store
/// its new key and ask for its thing, and short for a token that leaked.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(budget: &Arc<TokenBudget>, expires: Instant) -> Pending {
        Pending {
            certificate_id: CertificateId::parse(&"a".repeat(64)).unwrap(),
            certificate_der: vec![1, 2, 3],
            certificate_pem: String::new(),
            expires,
            _slot: budget.slot().unwrap(),
        }
    }

    #[test]
    fn a_token_is_single_use_bounded_and_expires() {
        let budget = TokenBudget::new(100);
        let now = Instant::now();
        let later = now + DEFAULT_TOKEN_LIFETIME;
        let mut tokens = ConnectionTokens::default();
        let token = tokens.insert(pending(&budget, later), now).unwrap();
        assert_eq!(token.len(), 44);
        assert!(tokens.take("not the token", now).is_none());
        assert!(tokens.take(&token, now).is_some());
        assert!(tokens.take(&token, now).is_none(), "used once");
        assert_eq!(budget.held(), 0, "the slot is given back");

        let expired = tokens.insert(pending(&budget, now + Duration::from_secs(1)), now).unwrap();
        assert!(tokens.take(&expired, now + Duration::from_secs(2)).is_none());
        assert_eq!(tokens.len(), 0, "an expired token is gone too");

        let first = tokens.insert(pending(&budget, later), now).unwrap();
        for _ in 0..ConnectionTokens::MAX {
            tokens.insert(pending(&budget, later), now).unwrap();
        }
        assert_eq!(tokens.len(), ConnectionTokens::MAX);
        assert!(tokens.take(&first, now).is_none(), "the oldest gave way");
        assert_eq!(budget.held(), ConnectionTokens::MAX);
        drop(tokens);
        assert_eq!(budget.held(), 0, "a connection's end gives its slots back");
    }

    #[test]
    fn the_budget_is_node_wide() {
        let budget = TokenBudget::new(2);
        let a = budget.slot().unwrap();
        let _b = budget.slot().unwrap();
        assert!(budget.slot().is_none());
        drop(a);
        assert!(budget.slot().is_some());
    }
}
