//! Server-side sessions: a random ID in a cookie names a session bound to one account and the
//! access key that signed in; each session carries its own CSRF token. The table is bounded in
//! total and per account, sessions end after an idle time and a lifetime, and the table keeps
//! only the SHA-256 of each ID (a dump of it opens no session).
//!
//! No clock and no lock: time is an argument and the caller holds the lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use certfleet_registry::AccountId;

/// The bounds of the session table.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Sessions at once, every account together.
    pub max_sessions: usize,
    /// Sessions of one account at once; past it the account's oldest session ends.
    pub max_per_account: usize,
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub lifetime: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 1000,
            max_per_account: 20,
            idle: Duration::from_secs(30 * 60),
            lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// A signed-in operator.
#[derive(Clone, Debug)]
pub struct Session {
    pub account: AccountId,
    pub access_key_id: String,
    /// The token every state change of this session must carry.
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// Why no session was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The table is full of live sessions.
    Full,
    /// The system's random source failed.
    NoRandomness,
}

/// What happened to a table entry when a session was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// The account's oldest session was ended to make room.
    pub evicted_oldest_of_account: bool,
}

/// The session table.
#[derive(Debug)]
pub struct Sessions {
    limits: SessionLimits,
    by_digest: HashMap<[u8; 32], Session>,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            limits: SessionLimits {
                max_sessions: limits.max_sessions.max(1),
                max_per_account: limits.max_per_account.max(1),
                ..limits
            },
            by_digest: HashMap::new(),
        }
    }

    /// Opens a session for `account`: answers its ID (for the cookie) and its CSRF token.
    pub fn open(
        &mut self,
        account: &AccountId,
        access_key_id: &str,
        now: Instant,
    ) -> Result<(String, String, Opened), Refused> {
        let mut opened = Opened::default();
        let of_account: Vec<([u8; 32], Instant)> = self
            .by_digest
            .iter()
            .filter(|(_, session)| &session.account == account)
            .map(|(digest, session)| (*digest, session.created))
            .collect();
        if of_account.len() >= self.limits.max_per_account
            && let Some((oldest, _)) = of_account.iter().min_by_key(|(_, created)| *created)
        {
            self.by_digest.remove(oldest);
            opened.evicted_oldest_of_account = true;
        }
        if self.by_digest.len() >= self.limits.max_sessions {
            self.prune(now);
            if self.by_digest.len() >= self.limits.max_sessions {
                return Err(Refused::Full);
            }
        }
        let id = random_token().ok_or(Refused::NoRandomness)?;
        let csrf = random_token().ok_or(Refused::NoRandomness)?;
        self.by_digest.insert(
            digest_of(&id),
            Session {
                account: account.clone(),
                access_key_id: access_key_id.to_owned(),
                csrf: csrf.clone(),
                created: now,
                last_seen: now,
            },
        );
        Ok((id, csrf, opened))
    }

    /// The live session of this cookie value (and marks it used), or `None`: unknown, idle too
    /// long or past its lifetime (then it is ended).
    pub fn find(&mut self, id: &str, now: Instant) -> Option<Session> {
        if id.len() != 64 {
            return None;
        }
        let digest = digest_of(id);
        let session = self.by_digest.get_mut(&digest)?;
        if self.limits.expired(session, now) {
            self.by_digest.remove(&digest);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends the session of this cookie value; answers whether there was one.
    pub fn close(&mut self, id: &str) -> bool {
        self.by_digest.remove(&digest_of(id)).is_some()
    }

    /// Ends every session of an access key (deleted, or no longer of that account).
    pub fn close_key(&mut self, access_key_id: &str) {
        self.by_digest.retain(|_, session| session.access_key_id != access_key_id);
    }

    /// Ends the sessions past their idle time or lifetime.
    pub fn prune(&mut self, now: Instant) {
        let limits = self.limits;
        self.by_digest.retain(|_, session| !limits.expired(session, now));
    }

    /// Sessions held.
    pub fn count(&self) -> usize {
        self.by_digest.len()
    }

    /// The cookie's Max-Age: the sessions' lifetime.
    pub fn lifetime(&self) -> Duration {
        self.limits.lifetime
    }
}

impl SessionLimits {
    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.saturating_duration_since(session.last_seen) >= self.idle
            || now.saturating_duration_since(session.created) >= self.lifetime
    }
}

/// 32 random bytes as 64 lowercase hex characters.
pub fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

fn digest_of(id: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, id.as_bytes()).as_ref());
    out
}

/// Whether two secrets are equal, in time independent of where they differ: both are hashed
/// first, so the comparison is over 32 bytes whatever their lengths.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (digest_of(a), digest_of(b));
    a.iter().zip(b.iter()).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(digits: &str) -> AccountId {
        AccountId::parse(digits).unwrap()
    }

    fn table(max_sessions: usize, max_per_account: usize) -> Sessions {
        Sessions::new(SessionLimits {
            max_sessions,
            max_per_account,
            idle: Duration::from_secs(60),
            lifetime: Duration::from_secs(600),
        })
    }

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends_when_closed() {
        let start = Instant::now();
        let mut sessions = table(10, 10);
        let (id, csrf, _) = sessions.open(&account("111111111111"), "AKIA1", start).unwrap();
        assert_eq!((id.len(), csrf.len()), (64, 64));
        assert_ne!(id, csrf);
        let found = sessions.find(&id, start).unwrap();
        assert_eq!((found.account, found.csrf), (account("111111111111"), csrf));
        assert!(sessions.find(&id.replace(&id[..1], if &id[..1] == "0" { "1" } else { "0" }), start).is_none());
        assert!(sessions.find("short", start).is_none());
        assert!(sessions.close(&id));
        assert!(sessions.find(&id, start).is_none());
        assert!(!sessions.close(&id));
    }

    #[test]
    fn sessions_end_after_their_idle_time_and_their_lifetime() {
        let start = Instant::now();
        let mut sessions = table(10, 10);
        let (idle, ..) = sessions.open(&account("111111111111"), "AKIA1", start).unwrap();
        assert!(sessions.find(&idle, start + Duration::from_secs(59)).is_some());
        assert!(sessions.find(&idle, start + Duration::from_secs(59 + 60)).is_none(), "idle 60 s");
        let (used, ..) = sessions.open(&account("111111111111"), "AKIA1", start).unwrap();
        for minute in 1..10 {
            assert!(sessions.find(&used, start + Duration::from_secs(minute * 59)).is_some());
        }
        assert!(sessions.find(&used, start + Duration::from_secs(600)).is_none(), "lifetime 600 s");
        assert_eq!(sessions.count(), 0);
    }

    #[test]
    fn the_table_is_bounded_per_account_and_in_total() {
        let start = Instant::now();
        let mut sessions = table(3, 2);
        let (first, ..) = sessions.open(&account("111111111111"), "AKIA1", start).unwrap();
        let (second, ..) = sessions.open(&account("111111111111"), "AKIA1", start + Duration::from_secs(1)).unwrap();
        let (third, _, opened) =
            sessions.open(&account("111111111111"), "AKIA1", start + Duration::from_secs(2)).unwrap();
        assert!(opened.evicted_oldest_of_account);
        let now = start + Duration::from_secs(3);
        assert!(sessions.find(&first, now).is_none(), "the account's oldest ended");
        assert!(sessions.find(&second, now).is_some() && sessions.find(&third, now).is_some());
        sessions.open(&account("222222222222"), "AKIA2", now).unwrap();
        assert_eq!(sessions.open(&account("333333333333"), "AKIA3", now).unwrap_err(), Refused::Full);
        // Once sessions expire, there is room again.
        assert!(sessions.open(&account("333333333333"), "AKIA3", now + Duration::from_secs(120)).is_ok());
        assert_eq!(sessions.count(), 1);
    }

    #[test]
    fn closing_a_key_ends_its_sessions_only() {
        let start = Instant::now();
        let mut sessions = table(10, 10);
        let (a, ..) = sessions.open(&account("111111111111"), "AKIA1", start).unwrap();
        let (b, ..) = sessions.open(&account("111111111111"), "AKIA2", start).unwrap();
        sessions.close_key("AKIA1");
        assert!(sessions.find(&a, start).is_none());
        assert!(sessions.find(&b, start).is_some());
    }

    #[test]
    fn secrets_compare_whole() {
        for (a, b, same) in [
            ("secret", "secret", true),
            ("secret", "secreT", false),
            ("secret", "secret2", false),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(same_secret(a, b), same, "{a:?} {b:?}");
        }
    }
}
