//! Reading the registry's change feed in order: every node that caches registry state (the
//! gateway's identities and policies, the API's signing keys) follows the feed with a [`Cursor`].
//!
//! Sequence numbers may commit out of order on PostgreSQL (two transactions take 10 and 11,
//! 11 commits first). The cursor therefore remembers what it saw above a watermark and only
//! moves the watermark over a gap once the gap is older than [`GAP_PATIENCE`] (the transaction
//! that took it rolled back). Entries carry no state, so seeing one twice is harmless.
//!
//! A follower reads the feed on a timer. [`Announcing`] lets the process that commits an entry
//! say so at once (in a cluster, the gateway then nudges every node's follower to read now): a
//! store that calls its `announce` after each transaction that recorded change-feed entries has
//! committed. The timer stays the safety net.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certfleet_registry::{Change, Error, Store, Tx};

/// How long a gap in sequence numbers is waited for before it is taken for a rollback.
pub const GAP_PATIENCE: Duration = Duration::from_secs(10);

/// Where a follower is in the feed.
#[derive(Debug)]
pub struct Cursor {
    watermark: i64,
    seen: BTreeSet<i64>,
    gap_since: Option<Instant>,
}

impl Cursor {
    /// A cursor after `seq` (everything up to it is considered handled).
    pub fn after(seq: i64) -> Self {
        Cursor { watermark: seq, seen: BTreeSet::new(), gap_since: None }
    }

    /// Where to read from.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Takes a batch read after the watermark; returns the entries not seen before.
    pub fn take(&mut self, batch: Vec<Change>, now: Instant) -> Vec<Change> {
        let fresh: Vec<Change> =
            batch.into_iter().filter(|change| change.seq > self.watermark && self.seen.insert(change.seq)).collect();
        loop {
            if self.seen.remove(&(self.watermark + 1)) {
                self.watermark += 1;
                self.gap_since = None;
                continue;
            }
            let Some(&next) = self.seen.iter().next() else {
                self.gap_since = None;
                break;
            };
            // A gap below `next`: wait for it, then give up on it.
            match self.gap_since {
                None => {
                    self.gap_since = Some(now);
                    break;
                }
                Some(since) if now.duration_since(since) >= GAP_PATIENCE => {
                    self.watermark = next - 1;
                    self.gap_since = None;
                }
                Some(_) => break,
            }
        }
        fresh
    }
}

/// A store that calls `announce` after every committed transaction that recorded change-feed
/// entries (never for one that rolled back, nor for one that recorded none). Everything else is
/// the inner store's. `announce` runs on the committing thread: it must be quick and must not
/// block (the gateway's wakes a task).
pub struct Announcing {
    inner: Arc<dyn Store>,
    announce: Box<dyn Fn() + Send + Sync>,
}

impl Announcing {
    pub fn new(inner: Arc<dyn Store>, announce: Box<dyn Fn() + Send + Sync>) -> Self {
        Announcing { inner, announce }
    }
}

impl Store for Announcing {
    fn write_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        // The backend may run `work` again (a retry): only the attempt that committed counts.
        let mut recorded = false;
        let result = self.inner.write_tx(&mut |tx| {
            let outcome = work(tx);
            recorded = tx.changes_recorded() > 0;
            outcome
        });
        if result.is_ok() && recorded {
            (self.announce)();
        }
        result
    }

    fn read_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        self.inner.read_tx(work)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certfleet_registry::{AccountId, ChangeKind};

    fn change(seq: i64) -> Change {
        Change {
            seq,
            account: AccountId::parse("111111111111").unwrap(),
            kind: ChangeKind::Certificate,
            entity_id: "x".into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn seqs(changes: &[Change]) -> Vec<i64> {
        changes.iter().map(|change| change.seq).collect()
    }

    #[test]
    fn the_cursor_waits_for_gaps_then_gives_up_on_them() {
        let start = Instant::now();
        let mut cursor = Cursor::after(10);
        assert_eq!(seqs(&cursor.take(vec![change(11), change(13)], start)), vec![11, 13]);
        assert_eq!(cursor.watermark(), 11, "12 is missing: wait for it");
        // 12 commits late: it is delivered, and the watermark passes both.
        assert_eq!(seqs(&cursor.take(vec![change(12), change(13)], start + Duration::from_secs(1))), vec![12]);
        assert_eq!(cursor.watermark(), 13);
        // 14 never commits (rolled back): after the patience, the watermark moves past it.
        assert_eq!(seqs(&cursor.take(vec![change(15)], start + Duration::from_secs(2))), vec![15]);
        assert_eq!(cursor.watermark(), 13);
        assert!(cursor.take(vec![change(15)], start + Duration::from_secs(3)).is_empty(), "no entry twice");
        cursor.take(vec![], start + Duration::from_secs(2) + GAP_PATIENCE);
        assert_eq!(cursor.watermark(), 15);
    }

    #[test]
    fn only_commits_that_recorded_changes_are_announced() {
        let directory = std::env::temp_dir().join(format!("certfleet-announcing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).unwrap();
        let inner: Arc<dyn Store> = Arc::new(certfleet_registry::SqliteStore::open(&directory.join("r.db")).unwrap());
        let announced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = announced.clone();
        let store = Announcing::new(
            inner,
            Box::new(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        );
        let count = || announced.load(std::sync::atomic::Ordering::Relaxed);
        let account = AccountId::parse("111111111111").unwrap();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let check = |work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>, expected: usize| {
            let _ = store.write_tx(work);
            assert_eq!(count(), expected);
        };
        // A write without a change-feed entry, a write with one, a rolled-back one, a read.
        check(&mut |tx| tx.last_change_seq().map(|_| ()), 0);
        check(&mut |tx| tx.record_change(&account, ChangeKind::Certificate, "x", at), 1);
        check(&mut |tx| tx.record_change(&account, ChangeKind::Certificate, "y", at).and(Err(Error::Aborted)), 1);
        store.read_tx(&mut |tx| tx.last_change_seq().map(|_| ())).unwrap();
        assert_eq!(count(), 1);
        let _ = std::fs::remove_dir_all(&directory);
    }
}
