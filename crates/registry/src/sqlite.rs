//! The embedded SQLite backend: one file in WAL mode, one writer connection and a pool of
//! read-only connections, so reads never wait for writes.

use std::path::Path;
use std::sync::{Condvar, Mutex};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use crate::conn::{Conn, Row, Value};
use crate::migrations::{Dialect, MIGRATIONS, statements};
use crate::{Error, Store, Tx};

/// The SQLite registry backend.
pub struct SqliteStore {
    path: std::path::PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Readers>,
    /// Signalled when a reader is handed back.
    reader_returned: Condvar,
}

/// The read-only connections: at most [`MAX_READERS`] exist, each with its own page cache, so a
/// burst of concurrent reads (a reconnect storm's registry lookups, each on a blocking thread)
/// waits for a connection instead of opening one per thread and keeping them all.
struct Readers {
    idle: Vec<Connection>,
    open: usize,
}

/// The most read-only connections open at once.
const MAX_READERS: usize = 8;

impl SqliteStore {
    /// Opens (creating with 0600 permissions if needed) the database file at `path` and applies
    /// pending migrations.
    pub fn open(path: &Path) -> Result<Self, Error> {
        create_private_file(path)?;
        let writer = Connection::open(path).map_err(Error::Sqlite)?;
        configure(&writer, false)?;
        writer.pragma_update(None, "journal_mode", "WAL").map_err(Error::Sqlite)?;
        // The one writer touches every table's indexes (the gateway's connection history among
        // them): a page cache of up to 32 MiB rather than SQLite's 2 MiB keeps their hot pages in
        // memory instead of re-reading them from the file for every batch.
        writer.pragma_update(None, "cache_size", -32_768).map_err(Error::Sqlite)?;
        migrate(&writer)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Readers { idle: Vec::new(), open: 0 }),
            reader_returned: Condvar::new(),
        })
    }

    /// An idle reader, a new one while fewer than [`MAX_READERS`] are open, or the next one
    /// handed back.
    fn reader(&self) -> Result<Connection, Error> {
        let mut readers = self.readers.lock().map_err(poisoned)?;
        loop {
            if let Some(connection) = readers.idle.pop() {
                return Ok(connection);
            }
            if readers.open < MAX_READERS {
                readers.open += 1;
                break;
            }
            readers = self.reader_returned.wait(readers).map_err(poisoned)?;
        }
        drop(readers);
        let opened = (|| {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
            let connection = Connection::open_with_flags(&self.path, flags).map_err(Error::Sqlite)?;
            configure(&connection, true)?;
            Ok(connection)
        })();
        if opened.is_err() {
            self.readers.lock().map_err(poisoned)?.open -= 1;
            self.reader_returned.notify_one();
        }
        opened
    }

    fn hand_back(&self, connection: Connection) -> Result<(), Error> {
        self.readers.lock().map_err(poisoned)?.idle.push(connection);
        self.reader_returned.notify_one();
        Ok(())
    }
}

impl Store for SqliteStore {
    fn write_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        let mut writer = self.writer.lock().map_err(poisoned)?;
        let transaction = writer.transaction_with_behavior(TransactionBehavior::Immediate).map_err(Error::Sqlite)?;
        let mut conn = SqliteConn(&transaction);
        work(&mut Tx::new(&mut conn))?;
        transaction.commit().map_err(Error::Sqlite)
    }

    fn read_tx(&self, work: &mut dyn FnMut(&mut Tx<'_>) -> Result<(), Error>) -> Result<(), Error> {
        let mut connection = self.reader()?;
        let result = (|| {
            let transaction = connection.transaction().map_err(Error::Sqlite)?;
            let mut conn = SqliteConn(&transaction);
            work(&mut Tx::new(&mut conn))?;
            transaction.commit().map_err(Error::Sqlite)
        })();
        self.hand_back(connection)?;
        result
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

fn configure(connection: &Connection, read_only: bool) -> Result<(), Error> {
    connection.busy_timeout(std::time::Duration::from_secs(10)).map_err(Error::Sqlite)?;
    connection.set_prepared_statement_cache_capacity(128);
    connection.pragma_update(None, "foreign_keys", "ON").map_err(Error::Sqlite)?;
    connection.pragma_update(None, "synchronous", "NORMAL").map_err(Error::Sqlite)?;
    if read_only {
        connection.pragma_update(None, "query_only", "ON").map_err(Error::Sqlite)?;
    }
    Ok(())
}

fn migrate(connection: &Connection) -> Result<(), Error> {
    connection
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .map_err(Error::Sqlite)?;
    for (version, sql) in MIGRATIONS {
        let applied: i64 = connection
            .query_row("SELECT COUNT(*) FROM schema_migrations WHERE version = ?1", [version], |row| row.get(0))
            .map_err(Error::Sqlite)?;
        if applied > 0 {
            continue;
        }
        let batch: String =
            statements(sql, Dialect::Sqlite).iter().map(|statement| format!("{statement};\n")).collect();
        connection
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;\n{batch}INSERT INTO schema_migrations VALUES ({version}, unixepoch() * 1000);\nCOMMIT;"
            ))
            .map_err(Error::Sqlite)?;
        tracing::info!(version, "applied sqlite migration");
    }
    Ok(())
}

/// Creates the database file readable by its owner only, before SQLite opens it.
fn create_private_file(path: &Path) -> Result<(), Error> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop).map_err(|error| Error::Open(format!("{}: {error}", path.display())))
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Open("a sqlite connection lock was poisoned by a panic".into())
}

struct SqliteConn<'c>(&'c Connection);

impl Conn for SqliteConn<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, Error> {
        let mut statement = self.0.prepare_cached(sql).map_err(map_error)?;
        bind(&mut statement, params)?;
        Ok(statement.raw_execute().map_err(map_error)? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, Error> {
        let mut statement = self.0.prepare_cached(sql).map_err(map_error)?;
        bind(&mut statement, params)?;
        let width = statement.column_count();
        let mut rows = statement.raw_query();
        let mut result = Vec::new();
        while let Some(row) = rows.next().map_err(map_error)? {
            let mut values = Vec::with_capacity(width);
            for index in 0..width {
                values.push(match row.get_ref(index).map_err(map_error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(value) => Value::Int(value),
                    ValueRef::Text(bytes) => Value::Text(
                        String::from_utf8(bytes.to_vec())
                            .map_err(|_| Error::InvalidValue(format!("column {index} is not UTF-8")))?,
                    ),
                    other => {
                        return Err(Error::InvalidValue(format!("column {index}: unexpected {:?}", other.data_type())));
                    }
                });
            }
            result.push(Row(values));
        }
        Ok(result)
    }

    fn for_update(&self) -> &'static str {
        // BEGIN IMMEDIATE already holds the database's only write lock.
        ""
    }
}

fn bind(statement: &mut rusqlite::CachedStatement<'_>, params: &[Value]) -> Result<(), Error> {
    if statement.parameter_count() != params.len() {
        return Err(Error::InvalidValue(format!(
            "statement takes {} parameters, {} given",
            statement.parameter_count(),
            params.len()
        )));
    }
    for (index, value) in params.iter().enumerate() {
        let result = match value {
            Value::Null => statement.raw_bind_parameter(index + 1, rusqlite::types::Null),
            Value::Int(value) => statement.raw_bind_parameter(index + 1, value),
            Value::Text(text) => statement.raw_bind_parameter(index + 1, text),
        };
        result.map_err(map_error)?;
    }
    Ok(())
}

fn map_error(error: rusqlite::Error) -> Error {
    match &error {
        rusqlite::Error::SqliteFailure(failure, message) if failure.code == ErrorCode::ConstraintViolation => {
            Error::Conflict(message.clone().unwrap_or_else(|| failure.to_string()))
        }
        _ => Error::Sqlite(error),
    }
}
