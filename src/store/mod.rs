//! The store: an embedded SQLite file or Postgres (over TLS as the URL's `sslmode` asks),
//! created and migrated on first use; in its submodules, every SQL statement the importer
//! runs on its own tables, each a named function that works on either store. The jobs table
//! is the queue crate's: the importer reads it, and changes it only through the queue.

pub mod budgets;
pub mod dashboard;
pub(crate) mod staging;
pub mod status;
pub mod tickets;

pub use visibuild_queue::{Conn, Ex, Store, Timestamp, Tx};

use std::str::FromStr;
use std::time::Duration;

use std::path::{Path, PathBuf};

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{Connection, PgConnection, Postgres};

use crate::domain::JobId;

/// The importer's tables, per store, embedded from `migrations/` at build time.
pub static POSTGRES_SCHEMA: Migrator = sqlx::migrate!("migrations/postgres");
pub static SQLITE_SCHEMA: Migrator = sqlx::migrate!("migrations/sqlite");

/// The scheme of an embedded store's URL: `sqlite:PATH`.
const SQLITE_SCHEME: &str = "sqlite:";

/// Pool size of [`connect`]: enough for a worker pool plus its heartbeats and listener.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// SQLSTATE `invalid_catalog_name`: the database named in the URL does not exist.
const UNKNOWN_DATABASE: &str = "3D000";
/// SQLSTATE `duplicate_database`.
const DUPLICATE_DATABASE: &str = "42P04";

/// What can go wrong in the store. Database URLs in messages have their password replaced
/// by `***`; causes are kept as `source()` so they show in a logged cause chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{url} is not a usable Postgres URL")]
    BadUrl {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    /// The root certificate the URL (or `PGSSLROOTCERT`) names for `verify-ca` or
    /// `verify-full` cannot be read: a configuration mistake, not an outage.
    #[error("cannot read the root certificate {path} (sslrootcert)")]
    RootCert {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the database of {url}")]
    CreateDatabase {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open the embedded store {path}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot migrate the database schema")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A write named a job and an attempt that no longer holds the job: its lease expired
    /// and another claimer took it over, or it already finished. The work must be dropped.
    #[error("job {job} attempt {attempt} no longer holds the job (lease lost or job finished)")]
    Fenced { job: JobId, attempt: i32 },
    #[error("invalid new job: {0}")]
    InvalidJob(&'static str),
    /// A batch this write was part of failed as a whole (the cause, as text: one error
    /// answers every write of the batch).
    #[error("{0}")]
    Batch(String),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

impl From<visibuild_queue::Error> for StoreError {
    fn from(e: visibuild_queue::Error) -> Self {
        match e {
            visibuild_queue::Error::Fenced { job, attempt } => StoreError::Fenced { job, attempt },
            visibuild_queue::Error::InvalidJob(why) => StoreError::InvalidJob(why),
            visibuild_queue::Error::Migrate(e) => StoreError::Migrate(e),
            e @ visibuild_queue::Error::NoBudget(_) => StoreError::Batch(e.to_string()),
            visibuild_queue::Error::Sqlx(e) => StoreError::Sqlx(e),
        }
    }
}

/// SQLSTATE class `28`, invalid authorization: wrong password, unknown role, no `pg_hba`
/// entry. The server is there; it refused who we said we are.
const LOGIN_REFUSED_CLASS: &str = "28";

impl StoreError {
    /// The server could not be reached or would not talk to us: nothing answered, the
    /// connection was refused or timed out, TLS failed. Worth trying again later.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, StoreError::Connect { .. }) && !self.is_login_refused()
    }

    /// The operator's to fix, not worth retrying: a malformed URL, an unreadable
    /// `sslrootcert`, a login the server refused, an embedded store's file that cannot be
    /// opened (a folder that cannot be made, a file that is not a database).
    pub fn is_misconfigured(&self) -> bool {
        matches!(
            self,
            StoreError::BadUrl { .. } | StoreError::RootCert { .. } | StoreError::Open { .. }
        ) || self.is_login_refused()
    }

    /// The server refused the login in the URL: a configuration error, not an outage.
    fn is_login_refused(&self) -> bool {
        let StoreError::Connect {
            source: sqlx::Error::Database(e),
            ..
        } = self
        else {
            return false;
        };
        e.code()
            .is_some_and(|code| code.starts_with(LOGIN_REFUSED_CLASS))
    }
}

/// The file of an embedded store's URL (`sqlite:PATH`), or `None` for Postgres.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let path = database_url.strip_prefix(SQLITE_SCHEME)?;
    let path = path.strip_prefix("//").unwrap_or(path);
    Some(PathBuf::from(path))
}

/// The URL of the embedded store at `path`.
pub fn sqlite_url(path: &Path) -> String {
    format!("{SQLITE_SCHEME}{}", path.display())
}

/// Drops the database of `database_url` if it exists (a rehearsal's fresh start): the
/// SQLite file with its journal, or the Postgres database.
pub async fn drop_database(database_url: &str) -> Result<(), StoreError> {
    if let Some(path) = sqlite_path(database_url) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Open {
                        path: path.display().to_string(),
                        source: sqlx::Error::Io(e),
                    });
                }
            }
        }
        return Ok(());
    }
    parse_url(database_url)?;
    let exists = Postgres::database_exists(database_url)
        .await
        .map_err(|source| StoreError::Connect {
            url: redact_url(database_url),
            source,
        })?;
    if exists {
        Postgres::drop_database(database_url)
            .await
            .map_err(|source| StoreError::CreateDatabase {
                url: redact_url(database_url),
                source,
            })?;
    }
    Ok(())
}

/// Connects with [`DEFAULT_MAX_CONNECTIONS`]; see [`connect_with`].
pub async fn connect(database_url: &str) -> Result<Store, StoreError> {
    connect_with(database_url, DEFAULT_MAX_CONNECTIONS).await
}

/// Opens the store of `database_url` — `sqlite:PATH` or `postgres://…` — with a pool of
/// `max_connections`, creating it first if it does not exist, and brings both schemas (the
/// queue's and the importer's) up to date.
pub async fn connect_with(database_url: &str, max_connections: u32) -> Result<Store, StoreError> {
    if let Some(path) = sqlite_path(database_url) {
        let store = Store::open_sqlite(&path, max_connections)
            .await
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        migrate(&store).await?;
        return Ok(store);
    }
    let pool = connect_postgres(database_url, max_connections).await?;
    let store = Store::Postgres(pool);
    migrate(&store).await?;
    Ok(store)
}

async fn connect_postgres(
    database_url: &str,
    max_connections: u32,
) -> Result<sqlx::PgPool, StoreError> {
    let url = redact_url(database_url);
    let options = parse_url(database_url)?;
    // Probe with one connection first: it fails fast (no pool retries) on a wrong host,
    // and an existing database needs no rights on the maintenance database.
    match PgConnection::connect_with(&options).await {
        Ok(probe) => probe.close().await.map_err(StoreError::Sqlx)?,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNKNOWN_DATABASE) => {
            create_database(database_url, &url).await?;
        }
        Err(source) => return Err(StoreError::Connect { url, source }),
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { url, source })?;
    Ok(pool)
}

/// The URL's options, with TLS as its `sslmode` asks (rustls; `verify-ca` and
/// `verify-full` trust the system's roots, or the `sslrootcert` given instead).
fn parse_url(database_url: &str) -> Result<PgConnectOptions, StoreError> {
    let options =
        PgConnectOptions::from_str(database_url).map_err(|source| StoreError::BadUrl {
            url: redact_url(database_url),
            source,
        })?;
    if matches!(
        options.get_ssl_mode(),
        PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        check_root_cert(database_url)?;
    }
    Ok(options)
}

/// A root certificate file that cannot be read is said so up front; sqlx would otherwise
/// fail every connection with a bare "No such file or directory".
fn check_root_cert(database_url: &str) -> Result<(), StoreError> {
    let in_url = url::Url::parse(database_url).ok().and_then(|url| {
        url.query_pairs()
            .find(|(k, _)| matches!(k.as_ref(), "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(_, v)| v.into_owned())
    });
    let Some(path) = in_url.or_else(|| std::env::var("PGSSLROOTCERT").ok()) else {
        return Ok(());
    };
    if path.trim_start().starts_with("-----BEGIN") {
        return Ok(()); // the certificate itself, inline
    }
    match std::fs::File::open(&path) {
        Ok(_) => Ok(()),
        Err(source) => Err(StoreError::RootCert { path, source }),
    }
}

/// Applies the embedded migrations that have not run yet. In Postgres the importer's come
/// first: a database made before the queue was its own crate has its jobs table from them
/// (and the queue's own migration then finds it there).
pub async fn migrate(store: &Store) -> Result<(), StoreError> {
    match store {
        Store::Postgres(pool) => {
            POSTGRES_SCHEMA.run(pool).await?;
            store.migrate().await?;
        }
        Store::Sqlite(pool) => {
            store.migrate().await?;
            SQLITE_SCHEMA.run(pool).await?;
        }
    }
    Ok(())
}

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

async fn create_database(database_url: &str, redacted: &str) -> Result<(), StoreError> {
    match Postgres::create_database(database_url).await {
        Ok(()) => Ok(()),
        // Another process created it between our connect and our CREATE: fine. Two CREATEs
        // at the same moment can also collide in the catalog's unique index (23505) rather
        // than as a duplicate database (seen with workers started together on a new store).
        Err(sqlx::Error::Database(e))
            if matches!(
                e.code().as_deref(),
                Some(DUPLICATE_DATABASE | UNIQUE_VIOLATION)
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(StoreError::CreateDatabase {
            url: redacted.to_string(),
            source,
        }),
    }
}

/// The URL with any password (userinfo or `password=` parameter) replaced by `***`.
pub fn redact_url(database_url: &str) -> String {
    if sqlite_path(database_url).is_some() {
        return database_url.to_string();
    }
    let Ok(mut url) = url::Url::parse(database_url) else {
        return "<unparseable database URL>".to_string();
    };
    if url.password().is_some() {
        // Only fails for URLs that cannot have credentials, which this one has.
        let _ = url.set_password(Some("***"));
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_urls_hide_the_password_wherever_it_is() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/imp"),
            "postgres://app:***@db:5432/imp"
        );
        let q = redact_url("postgres://db/imp?user=app&password=hunter2&sslmode=require");
        assert!(!q.contains("hunter2"), "{q}");
        assert!(q.contains("sslmode=require"), "{q}");
        assert_eq!(redact_url("postgres://db/imp"), "postgres://db/imp");
        assert!(!redact_url("not a url hunter2").contains("hunter2"));
    }

    #[tokio::test]
    async fn connection_errors_do_not_print_the_password() {
        // Port 1 on localhost refuses connections at once.
        let err = connect_with("postgres://app:hunter2@127.0.0.1:1/imp", 1)
            .await
            .unwrap_err();
        let mut chain = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        assert!(!chain.contains("hunter2"), "{chain}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }
}
