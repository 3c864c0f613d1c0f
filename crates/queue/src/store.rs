//! Which store a queue lives in, and the handles its operations take: the pool ([`Store`]),
//! a transaction ([`Tx`]), a pooled connection ([`Connection`]), or a borrowed one
//! ([`Conn`]); [`Ex`] is any of them, for statements that run on either.

use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::Error;

/// The queue's own schema, per store, recorded in its own migrations table so that the
/// application sharing the database keeps its own.
static POSTGRES_SCHEMA: LazyLock<Migrator> =
    LazyLock::new(|| own_table(sqlx::migrate!("migrations/postgres")));
static SQLITE_SCHEMA: LazyLock<Migrator> =
    LazyLock::new(|| own_table(sqlx::migrate!("migrations/sqlite")));

fn own_table(mut migrator: Migrator) -> Migrator {
    migrator.dangerous_set_table_name("_queue_migrations");
    migrator
}

/// A queue's store: a pool of connections to Postgres or to one SQLite file.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// How long a SQLite statement waits for another process's write to finish.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens (creating it and its folder if need be) the SQLite file at `path`: WAL, so
    /// readers never wait for the writer; a busy timeout, so several processes on one host
    /// can share the file; `synchronous = NORMAL`, durable at every checkpoint and never
    /// corrupt.
    pub async fn open_sqlite(path: &Path, max_connections: u32) -> Result<Store, sqlx::Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(SQLITE_BUSY_TIMEOUT)
            // A COMMIT that failed (disk full, I/O error) can leave SQLite's transaction
            // rolled back under sqlx's count of it: such a connection would refuse every
            // later BEGIN. It is closed, never handed out again.
            .before_acquire(|conn, _| {
                Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
            })
            .connect_with(options)
            .await?;
        Ok(Store::Sqlite(pool))
    }

    /// Brings the queue's tables up to date.
    pub async fn migrate(&self) -> Result<(), Error> {
        match self {
            Store::Postgres(pool) => POSTGRES_SCHEMA.run(pool).await?,
            Store::Sqlite(pool) => SQLITE_SCHEMA.run(pool).await?,
        }
        Ok(())
    }

    /// A transaction. In SQLite it takes the write lock at once (`BEGIN IMMEDIATE`): a
    /// transaction that read first and wrote later could fail to upgrade under a
    /// concurrent writer, where waiting at the start (the busy timeout) always succeeds.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Store::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Store::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    pub async fn acquire(&self) -> Result<Connection, sqlx::Error> {
        Ok(match self {
            Store::Postgres(pool) => Connection::Postgres(pool.acquire().await?),
            Store::Sqlite(pool) => Connection::Sqlite(pool.acquire().await?),
        })
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }
}

/// An open transaction on either store.
#[derive(Debug)]
pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Postgres(tx) => Conn::Postgres(tx),
            Tx::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.commit().await,
            Tx::Sqlite(tx) => tx.commit().await,
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Postgres(tx) => tx.rollback().await,
            Tx::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// A connection taken from the pool (returned when dropped).
#[derive(Debug)]
pub enum Connection {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

impl Connection {
    pub fn conn(&mut self) -> Conn<'_> {
        match self {
            Connection::Postgres(c) => Conn::Postgres(c),
            Connection::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

/// A borrowed connection (or transaction) on either store: several statements in a row.
#[derive(Debug)]
pub enum Conn<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// The same connection, borrowed again for one more statement.
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Postgres(c) => Conn::Postgres(c),
            Conn::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

/// Where one statement runs: a pool or a connection, of either store.
#[derive(Debug)]
pub enum Ex<'c> {
    PostgresPool(&'c PgPool),
    Postgres(&'c mut PgConnection),
    SqlitePool(&'c SqlitePool),
    Sqlite(&'c mut SqliteConnection),
}

impl<'c> From<&'c Store> for Ex<'c> {
    fn from(store: &'c Store) -> Self {
        match store {
            Store::Postgres(pool) => Ex::PostgresPool(pool),
            Store::Sqlite(pool) => Ex::SqlitePool(pool),
        }
    }
}

impl<'c> From<Conn<'c>> for Ex<'c> {
    fn from(conn: Conn<'c>) -> Self {
        match conn {
            Conn::Postgres(c) => Ex::Postgres(c),
            Conn::Sqlite(c) => Ex::Sqlite(c),
        }
    }
}

impl<'a, 'c> From<&'a mut Conn<'c>> for Ex<'a> {
    fn from(conn: &'a mut Conn<'c>) -> Self {
        Ex::from(conn.reborrow())
    }
}

impl<'a> From<&'a mut Tx> for Ex<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        Ex::from(tx.conn())
    }
}

impl<'a> From<&'a mut Connection> for Ex<'a> {
    fn from(c: &'a mut Connection) -> Self {
        Ex::from(c.conn())
    }
}
