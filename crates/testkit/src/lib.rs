//! Test fixtures shared by certfleet's test suites (a dev-dependency only): a real SQLite
//! registry in a temporary directory that disappears with the fixture, a hand-moved clock, and
//! the services over them with a device-issuing CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use certfleet_pki::{Issuer, KeyAlgorithm};
use certfleet_registry::SqliteStore;
use certfleet_services::{Caller, Config, ManualClock, Services};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// Where every fixture's clock starts.
pub const START: OffsetDateTime = datetime!(2026-06-01 00:00 UTC);

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory under the system's temporary directory.
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "certfleet-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Services over a fresh SQLite registry, with a clock stopped at [`START`].
pub struct World {
    pub services: Arc<Services>,
    pub clock: Arc<ManualClock>,
    _dir: TempDir,
}

/// A fresh [`World`].
pub fn world() -> World {
    world_with(Config::default())
}

/// A fresh [`World`] whose services have `config`.
pub fn world_with(config: Config) -> World {
    let dir = TempDir::new("world");
    let store = Arc::new(SqliteStore::open(&dir.path().join("registry.db")).expect("opening the registry"));
    let clock = Arc::new(ManualClock::new(START));
    let issuer =
        Issuer::generate_root("test device root", "certfleet", Duration::days(3650), KeyAlgorithm::EcdsaP256, START)
            .expect("generating the device root");
    let services = Arc::new(Services::new(store, clock.clone(), config, Some(issuer)));
    World { services, clock, _dir: dir }
}

impl World {
    /// A new account, as the caller of operations.
    pub fn caller(&self) -> Caller {
        Caller { account: self.services.create_account().expect("creating an account").id }
    }
}

/// `"ok"`, or the name of the refusal: one-line test cases compare outcomes as text.
pub fn outcome<T>(result: Result<T, certfleet_services::Error>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error.kind(),
    }
}
