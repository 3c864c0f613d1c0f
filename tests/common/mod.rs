//! Fixtures shared by the tests that run the real binary: a database of the test's own, a
//! manifest of generated files, the binary with a clean environment, polling helpers.
#![allow(dead_code)]

use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use visibuild_sandbox::{Sandbox, SandboxConfig};

pub const BIN: &str = env!("CARGO_BIN_EXE_visibuild-import");
pub const PROJECT: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";
pub const COLUMNS: &str =
    "ref, project_id, title, address, priority, contact_name, contact_email, attachments";

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A store of the test's own, which the binary creates on first use; dropped at the end: a
/// Postgres database ([`Db::new`]) or an embedded SQLite file ([`Db::sqlite`]).
pub struct Db {
    pub url: String,
    pub name: String,
    pub master: String,
    dir: Option<tempfile::TempDir>,
}

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Sqlite,
}

/// One test body, run as two tests: on Postgres and on an embedded SQLite file. The body is
/// an `async fn(Db)` of the same name as the macro's argument, in the same module.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Db::on($crate::common::Kind::Postgres, "t")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Db::on($crate::common::Kind::Sqlite, "t")).await;
            }
        }
    };
}

impl Db {
    pub fn on(kind: Kind, tag: &str) -> Self {
        match kind {
            Kind::Postgres => Self::new(tag),
            Kind::Sqlite => Self::sqlite(tag),
        }
    }

    /// An embedded store in a folder of the test's own.
    pub fn sqlite(tag: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{tag}.db"));
        Self {
            url: format!("sqlite:{}", path.display()),
            name: String::new(),
            master: String::new(),
            dir: Some(dir),
        }
    }

    pub fn kind(&self) -> Kind {
        if self.dir.is_some() {
            Kind::Sqlite
        } else {
            Kind::Postgres
        }
    }

    /// The store, created and migrated as the binary would.
    pub async fn store(&self) -> visibuild_queue::Store {
        visibuild_import::store::connect(&self.url).await.unwrap()
    }

    /// The rehearsal's store beside this one (`--sandbox`), dropped with the fixture.
    pub fn rehearsal(&self) -> Self {
        Self {
            url: visibuild_import::app::rehearsal_database_url(&self.url),
            name: format!("{}_sandbox", self.name),
            master: self.master.clone(),
            dir: None,
        }
    }

    pub fn new(tag: &str) -> Self {
        let master = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("vi_cli_{tag}_{}_{nanos}", std::process::id());
        let mut url = url::Url::parse(&master).unwrap();
        url.set_path(&format!("/{name}"));
        Self {
            url: url.to_string(),
            name,
            master,
            dir: None,
        }
    }

    /// The Postgres database (a test that reads it directly is a Postgres test).
    pub async fn pool(&self) -> PgPool {
        assert_eq!(self.kind(), Kind::Postgres, "pool() is for Postgres tests");
        PgPool::connect(&self.url).await.unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.dir.is_some() {
            return; // the folder goes with it
        }
        // Best effort, on a thread of its own: Drop may run inside the test's runtime.
        let master = self.master.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = PgPool::connect(&master).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&pool)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A manifest of `tickets` tickets, ticket i titled `Defect i` with `files_of(i)` files.
pub struct Manifest {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub files: HashMap<String, Vec<String>>,
}

impl Manifest {
    pub fn new(tickets: usize, files_of: impl Fn(usize) -> usize) -> Self {
        Self::with_refs("DEF", tickets, files_of)
    }

    /// Refs `PREFIX-0000`…; titles stay `Defect i`.
    pub fn with_refs(prefix: &str, tickets: usize, files_of: impl Fn(usize) -> usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("files")).unwrap();
        let mut csv = String::from("ref,project_id,title,priority,attachments\n");
        let mut files = HashMap::new();
        for t in 0..tickets {
            let reference = format!("{prefix}-{t:04}");
            let mut paths = Vec::new();
            for f in 0..files_of(t) {
                let name = format!("files/t{t}-f{f}.jpg");
                let bytes: Vec<u8> = (0..3000 + 97 * t + f)
                    .map(|i| ((i * 31 + t * 7 + f) % 251) as u8)
                    .collect();
                std::fs::write(dir.path().join(&name), bytes).unwrap();
                paths.push(name);
            }
            csv.push_str(&format!(
                "{reference},{PROJECT},Defect {t},medium,{}\n",
                paths.join(";")
            ));
            files.insert(reference, paths);
        }
        let path = dir.path().join("manifest.csv");
        std::fs::write(&path, csv).unwrap();
        Self { dir, path, files }
    }

    pub fn file(&self, reference: &str, index: usize) -> PathBuf {
        self.dir.path().join(&self.files[reference][index])
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

pub fn reference(t: usize) -> String {
    format!("DEF-{t:04}")
}

pub async fn start(config: SandboxConfig) -> Sandbox {
    visibuild_import::visibuild::use_ring_for_tls();
    visibuild_sandbox::start(config).await.unwrap()
}

/// Created tickets by title: how many times each was created.
pub fn created_by_title(sb: &Sandbox) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in sb.tickets() {
        *counts.entry(t.title).or_default() += 1;
    }
    counts
}

pub fn each_once(tickets: usize) -> BTreeMap<String, usize> {
    (0..tickets).map(|t| (format!("Defect {t}"), 1)).collect()
}

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The binary on `db`, with no ambient settings leaking in from the environment.
pub fn bin(db: &Db, args: &[&str]) -> tokio::process::Command {
    bin_on(&db.url, args)
}

/// The binary with `database_url` as its `DATABASE_URL`, and no other ambient settings.
pub fn bin_on(database_url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", database_url)
        .kill_on_drop(true);
    for var in [
        "RUST_LOG",
        "VISIBUILD_TOKEN",
        "VISIBUILD_CLIENT_ID",
        "VISIBUILD_CLIENT_SECRET",
        "VISIBUILD_API_URL",
        "VISIBUILD_REGION",
        "VISIBUILD_LOG_FORMAT",
        "VISIBUILD_PROGRESS_SECS",
        "VISIBUILD_FILES_ROOT",
        "VISIBUILD_OUTAGE_SECS",
        "VISIBUILD_UI_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `bin` with the sandbox's static token.
pub fn with_token(db: &Db, args: &[&str]) -> tokio::process::Command {
    let mut cmd = bin(db, args);
    cmd.env("VISIBUILD_TOKEN", "sandbox-token");
    cmd
}

pub async fn output(mut cmd: tokio::process::Command) -> Out {
    let out = cmd.stdin(Stdio::null()).output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running binary whose output goes to files the test can poll.
pub struct Running {
    pub child: tokio::process::Child,
    pub _dir: tempfile::TempDir,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

pub fn spawn(mut cmd: tokio::process::Command) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let stdout = dir.path().join("stdout");
    let stderr = dir.path().join("stderr");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Running {
        child,
        _dir: dir,
        stdout,
        stderr,
    }
}

impl Running {
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, as `systemctl stop` or `kill` sends.
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends `signal` (`-INT`, `-TERM`) to the binary.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait(mut self) -> Out {
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .expect("the binary ends")
            .unwrap();
        Out {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        }
    }
}

/// Poll `condition` until it holds, or fail after a minute.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A count read from either store (`sql` in the SQL both speak).
pub async fn count_in(store: &visibuild_queue::Store, sql: &'static str) -> i64 {
    match store {
        visibuild_queue::Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        visibuild_queue::Store::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap()
}

pub async fn status_json(db: &Db) -> serde_json::Value {
    let out = output(bin(db, &["status", "--json"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

/// The report as (ref → column → value).
pub async fn report(db: &Db) -> BTreeMap<String, HashMap<String, String>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.csv");
    let out = output(bin(db, &["report", "--out", file.to_str().unwrap()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let mut reader = csv::Reader::from_path(&file).unwrap();
    let headers = reader.headers().unwrap().clone();
    let mut rows = BTreeMap::new();
    for record in reader.records() {
        let record = record.unwrap();
        let row: HashMap<String, String> = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect();
        assert!(
            rows.insert(row["ref"].clone(), row).is_none(),
            "one row per ticket"
        );
    }
    rows
}
