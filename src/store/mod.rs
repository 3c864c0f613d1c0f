//! The store: an embedded SQLite file or Postgres (over TLS as the URL's `sslmode` asks),
//! created and migrated on first use; in its submodules, every SQL statement the importer
//! runs on its own tables, each a named function that works on either store. The jobs table
//! is the queue crate's: the importer reads it, and changes it only through the queue.

pub mod attempts;
pub mod budgets;
pub mod control;
pub mod dashboard;
pub mod gates;
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
    /// A URL of a kind this program does not store in (MySQL, an in-memory SQLite, …).
    #[error(
        "DATABASE_URL {url} is not a store this program can use ({why}); accepted: unset (an \
         embedded file in the state directory), sqlite:PATH (an embedded file) or \
         postgres://… (Postgres)"
    )]
    Unsupported { url: String, why: &'static str },
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
    /// As `Batch`, for a cause that [`is_outage`](Self::is_outage).
    #[error("{0}")]
    Unavailable(String),
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
            StoreError::Unsupported { .. }
                | StoreError::BadUrl { .. }
                | StoreError::RootCert { .. }
                | StoreError::Open { .. }
        ) || self.is_login_refused()
    }

    /// The store is down, not the statement wrong: no connection, a connection lost or
    /// refused, a pool that timed out waiting for one, a disk that is full or failing, a
    /// server shutting down. Work waits for it (no attempt used); the run exits 3 if it
    /// lasts.
    pub fn is_outage(&self) -> bool {
        match self {
            StoreError::Connect { .. } => !self.is_login_refused(),
            StoreError::Unavailable(_) => true,
            StoreError::Sqlx(e) => sqlx_is_outage(e),
            _ => false,
        }
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

/// SQLite's primary result codes that say the file or its disk failed, not the statement:
/// BUSY (another writer past the busy timeout), IOERR, CORRUPT is not one (not transient),
/// FULL, CANTOPEN, NOMEM.
const SQLITE_OUTAGE_CODES: [u32; 5] = [5, 7, 10, 13, 14];

/// SQLSTATE classes and codes that say the Postgres server is not there for us: connection
/// exceptions (08), insufficient resources (53: disk full, out of memory, too many
/// connections), operator intervention (57P01-57P05: shutdown, cannot connect now), system
/// error (58).
fn sqlstate_is_outage(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("58")
        || matches!(code, "57P01" | "57P02" | "57P03" | "57P05")
}

fn sqlx_is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::InvalidSavePointStatement
        | sqlx::Error::BeginFailed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| match code.parse::<u32>() {
            // SQLite: an extended result code; its low byte is the primary one.
            Ok(sqlite) => SQLITE_OUTAGE_CODES.contains(&(sqlite & 0xff)),
            Err(_) => sqlstate_is_outage(&code),
        }),
        _ => false,
    }
}

/// The file of an embedded store's URL (`sqlite:PATH`), or `None` for Postgres.
pub fn sqlite_path(database_url: &str) -> Option<PathBuf> {
    let path = database_url.strip_prefix(SQLITE_SCHEME)?;
    let path = path.strip_prefix("//").unwrap_or(path);
    Some(PathBuf::from(path))
}

/// Refuses a URL that names no store this program can use: only `sqlite:PATH` (a file, not
/// `:memory:`: every connection would see a database of its own) and `postgres://…` are.
pub fn check_url(database_url: &str) -> Result<(), StoreError> {
    let unsupported = |why| {
        Err(StoreError::Unsupported {
            url: redact_url(database_url),
            why,
        })
    };
    if let Some(path) = sqlite_path(database_url) {
        let text = path.to_string_lossy();
        return if text.is_empty() {
            unsupported("no file named after sqlite:")
        } else if text.starts_with(":memory:")
            || text.starts_with("file::memory:")
            || text.contains("mode=memory")
        {
            unsupported(
                "an in-memory database is lost when the program ends, and each of its connections would see another one",
            )
        } else {
            Ok(())
        };
    }
    let scheme = database_url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(()),
        Some("mysql" | "mariadb") => unsupported("MySQL is not supported"),
        Some(_) => unsupported("an unknown scheme"),
        None => unsupported("not a URL"),
    }
}

/// The URL of the embedded store at `path`.
pub fn sqlite_url(path: &Path) -> String {
    format!("{SQLITE_SCHEME}{}", path.display())
}

/// Drops the database of `database_url` if it exists (a rehearsal's fresh start): the
/// SQLite file with its journal, or the Postgres database.
pub async fn drop_database(database_url: &str) -> Result<(), StoreError> {
    check_url(database_url)?;
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
    check_url(database_url)?;
    if let Some(path) = sqlite_path(database_url) {
        let open_error = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        create_private(&path).map_err(|e| open_error(sqlx::Error::Io(e)))?;
        let alone = opening_alone(&path)
            .await
            .map_err(|e| open_error(sqlx::Error::Io(e)))?;
        let store = Store::open_sqlite(&path, max_connections)
            .await
            .map_err(open_error)?;
        migrate(&store).await?;
        drop(alone);
        return Ok(store);
    }
    let pool = connect_postgres(database_url, max_connections).await?;
    let store = Store::Postgres(pool);
    migrate(&store).await?;
    Ok(store)
}

/// Processes opening one embedded store open and migrate it in turn. Two processes starting
/// together on a fresh file collide twice: switching it to WAL answers "database is locked"
/// at once (SQLite's busy handler does not cover it), and SQLite's migrator takes no lock
/// of its own, so both would apply the same migration (one then fails on
/// `_sqlx_migrations`). The turn is an exclusive `flock` on the store's folder (no file of
/// its own), held until the returned handle is dropped. Not on the database file: closing
/// another handle on it would drop SQLite's own locks.
async fn opening_alone(path: &Path) -> std::io::Result<std::fs::File> {
    let folder = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let folder = std::fs::File::open(&folder)?;
        rustix::fs::flock(&folder, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(folder)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Creates the embedded store's folder (mode 0700) and file (0600) when they do not exist
/// yet, whatever the umask: they hold contact names and e-mails. SQLite gives the `-wal`
/// and `-shm` files it makes beside it the database file's mode. What exists is left as it is.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let private_dir = std::fs::Permissions::from_mode(0o700);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, private_dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        // An empty file is an empty database to SQLite.
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(0o600)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
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
    // A server that is gone is noticed within seconds (then the run's outage handling
    // waits for it), not after half a minute per statement.
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
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

    #[test]
    fn only_sqlite_files_and_postgres_are_accepted_as_stores() {
        for ok in [
            "sqlite:/var/lib/x/queue.db",
            "sqlite://relative.db",
            "postgres://db/imp",
            "postgresql://u:p@db:5432/imp?sslmode=require",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "mysql://app:hunter2@db/imp",
            "sqlite::memory:",
            "sqlite:",
            "sqlite:file::memory:?cache=shared",
            "redis://db",
            "queue.db",
        ] {
            let err = check_url(bad).unwrap_err();
            assert!(err.is_misconfigured(), "{bad}");
            let text = err.to_string();
            assert!(
                text.contains("sqlite:PATH") && text.contains("postgres://"),
                "{text}"
            );
            assert!(!text.contains("hunter2"), "{text}");
        }
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
