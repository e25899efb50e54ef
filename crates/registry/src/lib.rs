//! certfleet's registry: the domain model and its storage.
//!
//! [`Store`] is the storage interface; [`SqliteStore`] (the embedded default) and
//! [`PostgresStore`] (for several nodes) are its two backends. Every operation runs inside one
//! transaction handed out by [`write`] or [`read`]: a closure that returns an error leaves no
//! trace. The operations themselves are written once, in [`Tx`], over a minimal SQL connection
//! interface that each backend implements, so both backends run the very same statements.

mod conn;
mod migrations;
mod model;
mod model_audit;
mod model_groups;
mod model_rotation;
mod postgres;
mod sqlite;
mod tx;
mod tx_audit;
mod tx_console;
mod tx_endpoints;
mod tx_groups;
mod tx_maintenance;
mod tx_provisioning;
mod tx_rotation;
mod tx_rules;
mod tx_things;

pub use model::*;
pub use model_audit::*;
pub use model_groups::*;
pub use model_rotation::*;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use tx::Tx;
pub use tx_console::{
    CaFilter, CertificateOrder, CertificateRow, CertificateSearch, ExpiryGroup, FleetGroup, SearchAfter,
    TIMELINE_WEEKS, subject_cn_of,
};
pub use tx_maintenance::{MaintenanceJob, PruneTarget};
pub use tx_rules::{DestinationStatus, TopicRule, TopicRuleDestination, TopicRuleFilter};

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A uniqueness rule of the schema refused the write.
    #[error("already exists: {0}")]
    Conflict(String),
    /// A stored or given value could not be understood.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// The SQLite backend failed.
    #[error("sqlite: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// The PostgreSQL backend failed.
    #[error("postgres: {0}")]
    Postgres(#[source] ::postgres::Error),
    /// The database could not be opened or prepared.
    #[error("cannot open the registry: {0}")]
    Open(String),
    /// The account a write acts for does not exist (deleted, possibly by a concurrent
    /// transaction): the write must not land.
    #[error("the account {0} does not exist")]
    AccountNotFound(AccountId),
    /// The transaction's closure returned an error, so the transaction was rolled back.
    #[error("transaction aborted by its caller")]
    Aborted,
}

/// A transactional store of the registry.
///
/// Implemented by [`SqliteStore`] and [`PostgresStore`]; callers use the [`write`] and [`read`]
/// functions, which carry typed results and errors through the object-safe methods.
pub trait Store: Send + Sync {
    /// Runs `work` in one read-write transaction, committed only when `work` returns `Ok`.
    /// The backend may run `work` again when the database asks for a retry.
    fn write_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error>;
    /// Runs `work` in one read-only transaction.
    fn read_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error>;
    /// The backend's name, for logs.
    fn backend(&self) -> &'static str;
}

/// Runs `work` in a read-write transaction of `store` and returns its result; on `Err` the
/// transaction is rolled back.
pub fn write<R, E: From<Error>>(store: &dyn Store, mut work: impl FnMut(&mut Tx<'_>) -> Result<R, E>) -> Result<R, E> {
    let mut outcome = None;
    let result = store.write_tx(&mut |tx| run_once(tx, &mut work, &mut outcome));
    finish(result, outcome)
}

/// Runs `work` in a read-only transaction of `store` and returns its result.
pub fn read<R, E: From<Error>>(store: &dyn Store, mut work: impl FnMut(&mut Tx<'_>) -> Result<R, E>) -> Result<R, E> {
    let mut outcome = None;
    let result = store.read_tx(&mut |tx| run_once(tx, &mut work, &mut outcome));
    finish(result, outcome)
}

fn run_once<R, E>(
    tx: &mut Tx<'_>,
    work: &mut impl FnMut(&mut Tx<'_>) -> Result<R, E>,
    outcome: &mut Option<Result<R, E>>,
) -> Result<(), Error> {
    let result = work(tx);
    let failed = result.is_err();
    *outcome = Some(result);
    if failed { Err(Error::Aborted) } else { Ok(()) }
}

fn finish<R, E: From<Error>>(result: Result<(), Error>, outcome: Option<Result<R, E>>) -> Result<R, E> {
    match (result, outcome) {
        (Ok(()), Some(outcome)) | (Err(Error::Aborted), Some(outcome)) => outcome,
        (Err(error), _) => Err(error.into()),
        (Ok(()), None) => Err(Error::Open("transaction closure never ran".into()).into()),
    }
}
