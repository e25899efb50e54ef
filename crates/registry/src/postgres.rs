//! The PostgreSQL backend, for registries shared by several certfleet nodes.
//!
//! Writes run at READ COMMITTED; per-account rules are serialised by locking the account row
//! (`Tx::lock_account`), and cross-account rules are enforced by unique indexes. Serialisation
//! failures and deadlocks are retried.

use std::collections::HashMap;
use std::sync::Mutex;

use postgres::error::SqlState;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Statement};

use crate::conn::{Conn, Row, Value};
use crate::migrations::{Dialect, MIGRATIONS, statements};
use crate::{Error, Store, Tx};

const ATTEMPTS: usize = 5;

/// The PostgreSQL registry backend.
pub struct PostgresStore {
    url: String,
    schema: Option<String>,
    pool: Mutex<Vec<PgConnection>>,
}

struct PgConnection {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl PostgresStore {
    /// Connects to `url` and applies pending migrations. With `schema`, everything lives in that
    /// schema (created if missing): tests use it to run in isolation on a shared server.
    pub fn open(url: &str, schema: Option<&str>) -> Result<Self, Error> {
        if let Some(schema) = schema
            && !schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Error::Open(format!("invalid schema name {schema:?}")));
        }
        let store =
            PostgresStore { url: url.to_owned(), schema: schema.map(str::to_owned), pool: Mutex::new(Vec::new()) };
        let mut connection = store.connect()?;
        migrate(&mut connection.client)?;
        store.pool.lock().map_err(poisoned)?.push(connection);
        Ok(store)
    }

    /// Drops the store's schema and everything in it (test clean-up).
    pub fn drop_schema(&self) -> Result<(), Error> {
        let Some(schema) = &self.schema else { return Ok(()) };
        let mut connection = self.take()?;
        connection.client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).map_err(Error::Postgres)
    }

    fn connect(&self) -> Result<PgConnection, Error> {
        let mut client =
            Client::connect(&self.url, NoTls).map_err(|error| Error::Open(format!("postgres: {error}")))?;
        if let Some(schema) = &self.schema {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"))
                .map_err(Error::Postgres)?;
        }
        Ok(PgConnection { client, statements: HashMap::new() })
    }

    /// A pooled connection still open, or a new one (connections the server closed, during an
    /// outage say, are dropped here rather than failing one call each).
    fn take(&self) -> Result<PgConnection, Error> {
        loop {
            match self.pool.lock().map_err(poisoned)?.pop() {
                Some(connection) if connection.client.is_closed() => drop(connection),
                Some(connection) => return Ok(connection),
                None => return self.connect(),
            }
        }
    }

    fn run(&self, read_only: bool, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        let mut connection = self.take()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match run_once(&mut connection, read_only, work) {
                // Closed before COMMIT (nothing committed): once more on a new connection.
                Err(Attempt::Closed(_)) if attempt < ATTEMPTS => {
                    connection = self.connect()?;
                    continue;
                }
                Err(Attempt::Closed(error)) => Err(Error::Postgres(error)),
                Err(Attempt::Failed(error)) => Err(error),
                Ok(()) => Ok(()),
            };
            match result {
                Err(Error::Postgres(error)) if retryable(&error) && attempt < ATTEMPTS => {
                    tracing::debug!(attempt, %error, "retrying postgres transaction");
                }
                Err(Error::Postgres(error)) if error.is_closed() => return Err(Error::Postgres(error)),
                result => {
                    self.pool.lock().map_err(poisoned)?.push(connection);
                    return result;
                }
            }
        }
    }
}

/// How one attempt at a transaction failed.
enum Attempt {
    /// The connection was found closed before COMMIT was sent: nothing was committed.
    Closed(::postgres::Error),
    Failed(Error),
}

fn run_once(
    connection: &mut PgConnection,
    read_only: bool,
    work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>,
) -> Result<(), Attempt> {
    let mut transaction = connection.client.build_transaction().read_only(read_only).start().map_err(|error| {
        if error.is_closed() { Attempt::Closed(error) } else { Attempt::Failed(Error::Postgres(error)) }
    })?;
    let mut conn = PgConn { transaction: &mut transaction, statements: &mut connection.statements };
    // A connection found closed before COMMIT was sent committed nothing: safe to run again.
    work(&mut Tx::new(&mut conn)).map_err(|error| match error {
        Error::Postgres(error) if error.is_closed() => Attempt::Closed(error),
        error => Attempt::Failed(error),
    })?;
    transaction.commit().map_err(|error| Attempt::Failed(map_error(error)))
}

impl Drop for PostgresStore {
    /// Each synchronous client owns a small runtime, which must not be dropped on an async
    /// thread: close the pooled connections on a plain thread of their own.
    fn drop(&mut self) {
        let connections = std::mem::take(self.pool.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        if connections.is_empty() {
            return;
        }
        let _ = std::thread::spawn(move || drop(connections)).join();
    }
}

impl Store for PostgresStore {
    fn write_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        self.run(false, work)
    }

    fn read_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        self.run(true, work)
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

fn migrate(client: &mut Client) -> Result<(), Error> {
    let mut transaction = client.transaction().map_err(Error::Postgres)?;
    // One node migrates at a time; the others wait here and then find nothing to do.
    transaction
        .batch_execute(
            "SELECT pg_advisory_xact_lock(7243011); \
             CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(Error::Postgres)?;
    for (version, sql) in MIGRATIONS {
        let applied = transaction
            .query_opt("SELECT version FROM schema_migrations WHERE version = $1", &[version])
            .map_err(Error::Postgres)?;
        if applied.is_some() {
            continue;
        }
        for statement in statements(sql, Dialect::Postgres) {
            transaction.batch_execute(&statement).map_err(Error::Postgres)?;
        }
        transaction
            .execute(
                "INSERT INTO schema_migrations VALUES ($1, (extract(epoch from now()) * 1000)::bigint)",
                &[version],
            )
            .map_err(Error::Postgres)?;
        tracing::info!(version, "applied postgres migration");
    }
    transaction.commit().map_err(Error::Postgres)
}

struct PgConn<'t, 'c> {
    transaction: &'t mut postgres::Transaction<'c>,
    statements: &'t mut HashMap<String, Statement>,
}

impl PgConn<'_, '_> {
    fn statement(&mut self, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.transaction.prepare(sql).map_err(map_error)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Conn for PgConn<'_, '_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|value| value as &(dyn ToSql + Sync)).collect();
        self.transaction.execute(&statement, &params).map_err(map_error)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        let statement = self.statement(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|value| value as &(dyn ToSql + Sync)).collect();
        let rows = self.transaction.query(&statement, &params).map_err(map_error)?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|index| {
                        let column_type = row.columns()[index].type_();
                        let value = if *column_type == Type::INT8 {
                            row.try_get::<_, Option<i64>>(index).map(|value| value.map_or(Value::Null, Value::Int))
                        } else if *column_type == Type::INT4 {
                            row.try_get::<_, Option<i32>>(index)
                                .map(|value| value.map_or(Value::Null, |value| Value::Int(value.into())))
                        } else {
                            row.try_get::<_, Option<String>>(index).map(|value| value.map_or(Value::Null, Value::Text))
                        };
                        value.map_err(Error::Postgres)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Row)
            })
            .collect()
    }

    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(value) => value.to_sql(ty, out),
            Value::Text(text) => text.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <String as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

fn retryable(error: &postgres::Error) -> bool {
    matches!(error.code(), Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED)
}

fn map_error(error: postgres::Error) -> Error {
    match error.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => Error::Conflict(db.message().to_owned()),
        _ => Error::Postgres(error),
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Open("the postgres pool lock was poisoned by a panic".into())
}
