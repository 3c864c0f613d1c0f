//! Chaos: the real binary imports 300 tickets from a faulty sandbox (5xx, dropped create
//! answers, S3 SlowDown, 429s, 2 s URLs, 3 s tokens) while it is SIGKILLed three times;
//! afterwards every ticket exists once, with exactly its files. On both stores: an embedded
//! SQLite file and Postgres.
//!
//! The variant that also restarts the machine's Postgres is `#[ignore]`d in the default
//! `cargo test`: `.ci/run` runs it as a step of its own (`--ignored`), after every other
//! suite, so that no other test sees the restart. Set `CHAOS_SEED` to replay a run; the
//! seed picks the faults and the moments of the kills.

use base64::Engine;
use md5::{Digest, Md5};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use visibuild_sandbox::{Sandbox, SandboxConfig, Secret};

const PROJECT: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";
const TICKETS: usize = 300;
const CLIENT_ID: &str = "chaos-client";
const CLIENT_SECRET: &str = "chaos-secret-do-not-log";
/// The sandbox serves this many API calls a second; the importer is told a bit more.
const SERVER_RATE: u32 = 30;
const IMPORTER_RATE: &str = "36/s";
/// How long any one wait in this test may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(240);

/// The generated manifest, and each ticket's expected files: (filename, size, md5 base64).
struct Fixture {
    dir: tempfile::TempDir,
    manifest: PathBuf,
    expected: HashMap<String, Vec<(String, u64, String)>>,
}

/// Every tenth ticket has no attachments; the others 1–3 small files.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    let mut csv = String::from("ref,project_id,title,priority,attachments\n");
    let mut expected = HashMap::new();
    for t in 0..TICKETS {
        let files = if t % 10 == 0 { 0 } else { 1 + t % 3 };
        let mut paths = Vec::new();
        let mut want = Vec::new();
        for f in 0..files {
            let name = format!("t{t}-f{f}.jpg");
            let bytes: Vec<u8> = (0..200 + (t * 37 + f * 101) % 2_800)
                .map(|i| ((i * 31 + t * 7 + f) % 251) as u8)
                .collect();
            std::fs::write(dir.path().join("files").join(&name), &bytes).unwrap();
            let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&bytes));
            want.push((name.clone(), bytes.len() as u64, md5));
            paths.push(format!("files/{name}"));
        }
        csv.push_str(&format!(
            "CH-{t:04},{PROJECT},Defect {t},high,{}\n",
            paths.join(";")
        ));
        expected.insert(format!("Defect {t}"), want);
    }
    let manifest = dir.path().join("manifest.csv");
    std::fs::write(&manifest, csv).unwrap();
    Fixture {
        dir,
        manifest,
        expected,
    }
}

/// The master URL (`.env`'s, or an exported `DATABASE_URL`), and one for database `name`.
fn database_urls(name: &str) -> (String, String) {
    let master = std::env::var("DATABASE_URL").ok().unwrap_or_else(|| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".env"))
            .ok()
            .and_then(|env| {
                env.lines()
                    .find_map(|l| l.trim().strip_prefix("DATABASE_URL=").map(str::to_string))
            })
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
    });
    let mut url = url::Url::parse(&master).unwrap();
    url.set_path(&format!("/{name}"));
    (master, url.to_string())
}

/// The importer binary, pointed at the sandbox and the test's own database.
struct Importer {
    db_url: String,
    api_url: String,
    log: PathBuf,
}

impl Importer {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_visibuild-import"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("VISIBUILD_CLIENT_ID", CLIENT_ID)
            .env("VISIBUILD_CLIENT_SECRET", CLIENT_SECRET)
            .env_remove("VISIBUILD_TOKEN")
            .env_remove("VISIBUILD_API_URL")
            .env_remove("VISIBUILD_REGION")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        cmd
    }

    fn enqueue(&self, manifest: &Path) -> ExitStatus {
        self.command(&[
            "enqueue",
            "-q",
            manifest.to_str().unwrap(),
            "--batch",
            "chaos",
        ])
        .status()
        .unwrap()
    }

    fn spawn_run(&self) -> Child {
        self.command(&[
            "run",
            "-q",
            "--api-url",
            &self.api_url,
            "--api-rate",
            IMPORTER_RATE,
            "--upload-rate",
            "200/s",
            "--workers",
            "16",
            "--upload-concurrency",
            "8",
            "--lease-secs",
            "5",
        ])
        .spawn()
        .unwrap()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

/// Requests the sandbox has answered (or dropped) so far: the clock the chaos runs on.
fn served(sandbox: &Sandbox) -> u64 {
    let stats = sandbox.stats();
    stats
        .requests
        .values()
        .flat_map(|s| s.values())
        .sum::<u64>()
        + stats.responses_dropped
}

/// Waits until the sandbox has served `requests` or the child exits; true if it exited.
async fn run_until(sandbox: &Sandbox, child: &mut Child, requests: u64) -> bool {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        if served(sandbox) >= requests {
            return false;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no progress towards {requests} requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigkill(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -KILL failed");
    child.wait().unwrap();
}

/// Restarts the local Postgres cluster and waits until it accepts connections again.
fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian-style Postgres install (/etc/postgresql)")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max()
        .expect("a Postgres version under /etc/postgresql");
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", "restart"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart failed");
    let start = Instant::now();
    while !Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .unwrap()
        .success()
    {
        assert!(start.elapsed() < DEADLINE, "Postgres did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "the importer did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn drop_database(master: &str, name: &str) {
    if let Ok(pool) = PgPool::connect(master).await {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&pool)
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_leave_every_ticket_created_once_with_its_files_on_sqlite() {
    chaos(Store::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_leave_every_ticket_created_once_with_its_files_on_postgres() {
    chaos(Store::Postgres, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts the machine's Postgres: .ci/run runs it as its own step (--ignored)"]
async fn kills_and_a_postgres_restart_leave_every_ticket_created_once_with_its_files() {
    chaos(Store::Postgres, true).await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Postgres,
    Sqlite,
}

async fn chaos(store: Store, restart: bool) {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_240_601);
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = fixture();
    let sandbox = visibuild_sandbox::start(SandboxConfig {
        tokens: Vec::new(),
        clients: vec![(
            CLIENT_ID.into(),
            Secret::new(CLIENT_SECRET),
            "sandbox".into(),
        )],
        rate: Some(SERVER_RATE),
        // The strictest bucket: calls one interval apart or 429. The importer is given more
        // than the server allows, so the shared budget meets 429s and adapts under them.
        rate_burst: Some(1),
        fail_rate: 0.05,
        drop_rate: 0.05,
        s3_fail_rate: 0.05,
        url_ttl: Duration::from_secs(2),
        token_ttl: Duration::from_secs(3),
        seed: Some(seed),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let name = format!("vi_chaos_{}_{}_{}", std::process::id(), seed, restart);
    let (master, db_url) = match store {
        Store::Postgres => database_urls(&name),
        Store::Sqlite => (
            String::new(),
            format!("sqlite:{}", fx.dir.path().join("queue.db").display()),
        ),
    };
    if store == Store::Postgres {
        drop_database(&master, &name).await;
    }
    let importer = Importer {
        db_url: db_url.clone(),
        api_url: sandbox.base_url(),
        log: fx.dir.path().join("importer.log"),
    };

    assert!(
        importer.enqueue(&fx.manifest).success(),
        "{}",
        importer.log_tail()
    );

    // About 1,500 requests make a clean run (600 presigns and PUTs, 300 creates): three
    // kills (and a Postgres restart) spread over the first two thirds, at seeded moments.
    let mut moments = vec![
        rng.random_range(60..300),
        rng.random_range(350..600),
        rng.random_range(650..850),
        rng.random_range(900..1_050),
    ];
    if !restart {
        moments.pop();
    }
    eprintln!(
        "{store:?}: kills at {:?} requests, Postgres restart at {:?}",
        &moments[..3],
        moments.get(3)
    );
    let mut child = importer.spawn_run();
    for (i, &at) in moments.iter().enumerate() {
        let exited = run_until(&sandbox, &mut child, at).await;
        assert!(
            !exited,
            "the importer exited before chaos event {i} at {at} requests ({:?}):\n{}",
            child.try_wait(),
            importer.log_tail()
        );
        if i < 3 {
            sigkill(&mut child);
            child = importer.spawn_run();
        } else {
            restart_postgres();
        }
    }

    // The last run rides out the restart; re-run until a run ends with 0 or 1 (bounded).
    let mut last = wait_exit(&mut child).await;
    for _ in 0..5 {
        if matches!(last.code(), Some(0 | 1)) {
            break;
        }
        eprintln!("run ended with {last:?}; running again");
        last = wait_exit(&mut importer.spawn_run()).await;
    }
    assert!(
        matches!(last.code(), Some(0 | 1)),
        "the last run ended with {last:?}:\n{}",
        importer.log_tail()
    );

    // Every ticket exists exactly once in Visibuild, with exactly its files.
    let created = sandbox.tickets();
    let mut by_title: HashMap<&str, usize> = HashMap::new();
    for t in &created {
        *by_title.entry(t.title.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = by_title.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "created more than once: {duplicates:?}"
    );
    let missing: BTreeSet<&str> = fx
        .expected
        .keys()
        .map(String::as_str)
        .filter(|t| !by_title.contains_key(t))
        .collect();
    assert_eq!(created.len() + missing.len(), TICKETS);
    for ticket in &created {
        let got: Vec<(String, u64, String)> = ticket
            .attachments
            .iter()
            .map(|a| (a.filename.clone(), a.size, a.md5.clone()))
            .collect();
        assert_eq!(got, fx.expected[&ticket.title], "{} files", ticket.title);
    }

    // The queue agrees: created, or (no attachments, create outcome unknown) needs review.
    let db = visibuild_import::store::connect(&db_url).await.unwrap();
    let q = "SELECT t.title, CAST(t.state AS TEXT),
                    (SELECT count(*) FROM attachments a WHERE a.ticket_id = t.id)
               FROM tickets t";
    let states: Vec<(String, String, i64)> = match &db {
        visibuild_queue::Store::Postgres(p) => sqlx::query_as(q).fetch_all(p).await,
        visibuild_queue::Store::Sqlite(p) => sqlx::query_as(q).fetch_all(p).await,
    }
    .unwrap();
    assert_eq!(states.len(), TICKETS);
    let review: Vec<&str> = states
        .iter()
        .filter(|(_, state, _)| state == "needs_review")
        .map(|(title, _, _)| title.as_str())
        .collect();
    let wrong: Vec<_> = states
        .iter()
        .filter(|(_, state, files)| match state.as_str() {
            "created" => false,
            "needs_review" => *files > 0,
            _ => true,
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "neither created nor legitimately in review: {wrong:?}"
    );
    // A ticket Visibuild never got (a 500/502 answered before anything was made) can only be
    // one held for review — never one the queue believes created.
    let unexplained: Vec<_> = missing.iter().filter(|t| !review.contains(t)).collect();
    assert!(
        unexplained.is_empty(),
        "never created and not held for review: {unexplained:?}"
    );
    let q = "SELECT count(*) FROM jobs WHERE state = 'running'";
    let running: i64 = match &db {
        visibuild_queue::Store::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await,
        visibuild_queue::Store::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await,
    }
    .unwrap();
    assert_eq!(running, 0, "jobs left running (locked)");
    db.close().await;

    // The chaos did happen.
    let stats = sandbox.stats();
    eprintln!(
        "{} created, {} need review ({review:?}); sandbox: {} requests, {} 5xx, {} dropped, \
         {} S3 faults, {} 429s, {} tokens issued, {} S3 403s",
        TICKETS - review.len(),
        review.len(),
        served(&sandbox),
        stats.faults_injected,
        stats.responses_dropped,
        stats.s3_faults,
        stats.rate_limited,
        stats.count("POST /oauth/token", 200),
        stats.count("PUT /s3", 403),
    );
    assert!(stats.faults_injected > 0 && stats.responses_dropped > 0 && stats.s3_faults > 0);
    assert!(
        stats.rate_limited > 0,
        "the importer ran a little faster than the server allows"
    );
    assert!(
        stats.count("POST /oauth/token", 200) > 1,
        "tokens expired and were renewed"
    );
    let log = std::fs::read_to_string(&importer.log).unwrap_or_default();
    assert!(
        !log.contains(CLIENT_SECRET),
        "the client secret reached the logs"
    );
    // Informational: how the restart showed in the last run (sqlx reconnects by itself;
    // a handler whose write was cut retries through the queue).
    let outage = |l: &&str| {
        [
            "terminating connection",
            "database error",
            "database unavailable",
        ]
        .iter()
        .any(|needle| l.contains(needle))
    };
    eprintln!(
        "importer log: {} lines about the Postgres restart",
        log.lines().filter(outage).count()
    );

    if store == Store::Postgres {
        drop_database(&master, &name).await;
    }
}
