//! Following the registry's change feed: every committed change to a certificate, CA or account
//! invalidates this node's cache and re-checks the live sessions it touches, closing those whose
//! identity is no longer accepted. Polling a few times a second keeps revocation under a second
//! on every node sharing the registry. With a [`PolicyAuthorizer`], policy, thing, thing group
//! and certificate entries also reload the policies of the principals they touch (`authz`), so
//! a policy attached (to a certificate or a thing group), detached or given a new default
//! version, a thing added to or removed from a group, or a group deleted reaches live sessions
//! as quickly. The work is bounded by the principals this node holds for the entry's account.
//!
//! Sequence numbers may commit out of order on PostgreSQL: [`Cursor`] (in services, shared with
//! the API's access-key cache) waits for gaps.
//!
//! In a cluster the follower is also nudged (`poll_now`) when any node commits a change-feed
//! entry (`crate::cluster`): it reads at once, at most once per [`NUDGED_POLL_GAP`], and the
//! timer stays the safety net.

use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet_pki::CertificateId;
use certfleet_registry::{Change, ChangeKind};
use tokio::sync::{Notify, watch};

use crate::authz::PolicyAuthorizer;
use crate::identity::Registry;
use crate::live::{LiveSessions, uses};

use certfleet_services::feed::Cursor;

/// How often the authorizer forgets the principals no session uses any more.
const FORGET_UNUSED_EVERY: Duration = Duration::from_secs(60);

/// The shortest time between two reads of the feed when nudged: a storm of commits costs the
/// registry at most one query per gap and node.
pub const NUDGED_POLL_GAP: Duration = Duration::from_millis(10);

/// Follows the feed until `shutdown` turns true, every `interval` and whenever `poll_now` is
/// told; `authorizer`, when given, is told every entry.
#[allow(clippy::too_many_arguments, reason = "each is a part of the node the follower keeps true, made before it")]
pub async fn follow(
    registry: Arc<Registry>,
    live: Arc<LiveSessions>,
    authorizer: Option<Arc<PolicyAuthorizer>>,
    endpoints: Arc<crate::endpoints::Endpoints>,
    rules: Arc<crate::rules::RuleBook>,
    interval: Duration,
    poll_now: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let services = registry.services().clone();
    let start = {
        let services = services.clone();
        tokio::task::spawn_blocking(move || services.last_change_seq()).await
    };
    let mut cursor = match start {
        Ok(Ok(seq)) => Cursor::after(seq),
        _ => {
            tracing::error!("cannot read the change feed; the cache starts empty and is re-read on every connection");
            Cursor::after(0)
        }
    };
    let mut last_forget = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = poll_now.notified() => {
                tokio::time::sleep_until(last_read + NUDGED_POLL_GAP).await;
                ticker.reset();
            }
            _ = shutdown.changed() => return,
        }
        last_read = tokio::time::Instant::now();
        let services = services.clone();
        let after = cursor.watermark();
        let batch = match tokio::task::spawn_blocking(move || services.changes_after(after, 1000)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(error)) => {
                // Whatever changed meanwhile must not be served from the cache.
                tracing::warn!(%error, "reading the change feed failed; forgetting the cache");
                registry.forget_all();
                endpoints.forget();
                rules.forget_all();
                if let Some(authorizer) = &authorizer {
                    authorizer.distrust_held();
                }
                continue;
            }
            Err(_) => continue,
        };
        for change in cursor.take(batch, Instant::now()) {
            match change.kind {
                ChangeKind::DomainConfiguration => endpoints.changed(&change.account, &change.entity_id).await,
                ChangeKind::Account => endpoints.forget(),
                ChangeKind::TopicRule => rules.forget(&change.account),
                _ => {}
            }
            apply_all(&registry, &live, authorizer.as_deref(), &change).await;
        }
        if let Some(authorizer) = &authorizer
            && last_forget.elapsed() >= FORGET_UNUSED_EVERY
        {
            authorizer.forget_unused(&live, FORGET_UNUSED_EVERY);
            last_forget = Instant::now();
        }
    }
}

/// [`apply`], then the authorizer's reload of the principals the change touches.
pub async fn apply_all(
    registry: &Registry,
    live: &LiveSessions,
    authorizer: Option<&PolicyAuthorizer>,
    change: &Change,
) {
    apply(registry, live, change).await;
    if let Some(authorizer) = authorizer {
        authorizer.changed(change).await;
    }
}

/// Invalidates what `change` names and re-checks the sessions it touches.
pub async fn apply(registry: &Registry, live: &LiveSessions, change: &Change) {
    let account = &change.account;
    let affected = match change.kind {
        ChangeKind::Certificate | ChangeKind::CaCertificate => {
            let Ok(id) = CertificateId::parse(&change.entity_id) else {
                tracing::warn!(seq = change.seq, entity = change.entity_id, "change-feed entry names no certificate");
                return;
            };
            if change.kind == ChangeKind::Certificate {
                registry.forget_certificate(account, &id);
                live.identities(|identity| uses(identity, account, Some(&id), None))
            } else {
                registry.forget_ca(account, &id);
                live.identities(|identity| uses(identity, account, None, Some(&id)))
            }
        }
        ChangeKind::Account => {
            registry.forget_account(account);
            live.identities(|identity| uses(identity, account, None, None))
        }
        // Policies and things decide what a device may do, not who it is: `apply_all` hands
        // those entries to the authorizer.
        _ => return,
    };
    let now = time::OffsetDateTime::now_utc();
    for identity in affected {
        if let Err(reason) = registry.recheck(&identity, now).await {
            let closed = live.close_identity(&identity, reason);
            let seconds = (time::OffsetDateTime::now_utc() - change.created_at).as_seconds_f64();
            live.note_closed_after_change(closed, seconds);
        }
    }
}
