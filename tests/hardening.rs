//! The importer tried as an adversary and as a new user would, through the real binary:
//! files swapped after loading, configuration mistakes caught before anything is loaded,
//! an unreachable Visibuild, and a `kill -9` whose work is taken back at once.

mod common;

use common::*;
use std::time::Duration;
use visibuild_import::pipeline::hash::md5_bytes;
use visibuild_sandbox::SandboxConfig;

/// MD5 (base64) of the bytes, as the sandbox records it.
async fn ticket_state(pool: &sqlx::PgPool, reference: &str) -> (String, String) {
    sqlx::query_as("SELECT state::text, COALESCE(last_error, '') FROM tickets WHERE ref = $1")
        .bind(reference)
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Files opened inside the root
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_for_a_symlink_out_of_the_root_after_loading_is_refused_never_uploaded() {
    let db = Db::new("symlink");
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(2, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let swapped = manifest.file(&reference(0), 0);
    std::fs::remove_file(&swapped).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &swapped).unwrap();

    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 1, "{out:?}");
    let pool = db.pool().await;
    let (state, error) = ticket_state(&pool, &reference(0)).await;
    assert_eq!(state, "failed");
    assert!(error.contains("outside the files root"), "{error}");
    let passwd = std::fs::read("/etc/passwd").unwrap();
    assert!(
        sb.objects().iter().all(|o| o.md5 != md5_bytes(&passwd)),
        "/etc/passwd went up"
    );
    assert_eq!(created_by_title(&sb).get("Defect 0"), None);
    assert_eq!(created_by_title(&sb).get("Defect 1"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_swapped_for_a_fifo_after_loading_is_refused_as_a_fifo_without_hanging() {
    let db = Db::new("fifo");
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(1, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let swapped = manifest.file(&reference(0), 0);
    std::fs::remove_file(&swapped).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&swapped)
        .status()
        .unwrap();
    assert!(made.success());

    let run = spawn(with_token(&db, &["run", "--api-url", &sb.base_url()]));
    let out = run.wait().await;
    assert_eq!(out.code, 1, "{out:?}");
    let (state, error) = ticket_state(&db.pool().await, &reference(0)).await;
    assert_eq!(state, "failed");
    assert!(
        error.contains("a FIFO (named pipe), not a regular file"),
        "{error}"
    );
    assert!(!error.contains("empty"), "{error}");
    assert!(sb.objects().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_since_loading_is_uploaded_as_it_is_now_and_the_change_is_reported() {
    let db = Db::new("changed");
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(2, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let changed = manifest.file(&reference(0), 0);
    let now = b"\xFF\xD8\xFF a different, longer photo than the one that was loaded".repeat(50);
    std::fs::write(&changed, &now).unwrap();

    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("the file changed since it was loaded"),
        "{out:?}"
    );
    assert_eq!(created_by_title(&sb), each_once(2));
    assert!(
        sb.objects()
            .iter()
            .any(|o| o.md5 == md5_bytes(&now) && o.size == now.len() as u64),
        "the file went up as it is now"
    );
    let rows = report(&db).await;
    let note = &rows[&reference(0)]["file_changes"];
    assert!(
        note.contains("changed since it was loaded") && note.contains(&now.len().to_string()),
        "{note}"
    );
    assert_eq!(rows[&reference(1)]["file_changes"], "");
}

// ---------------------------------------------------------------------------------------
// Configuration mistakes: exit 2 before anything is loaded
// ---------------------------------------------------------------------------------------

async fn batches(db: &Db) -> i64 {
    match sqlx::PgPool::connect(&db.url).await {
        Ok(pool) => count(&pool, "SELECT count(*) FROM batches").await,
        Err(_) => 0, // the database was never even created
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_url_that_is_not_an_http_origin_exits_2_before_loading() {
    let db = Db::new("apiurl");
    let manifest = Manifest::new(2, |_| 0);
    for url in [
        "https://app.visibuild.com.au/api/core/v1",
        "127.0.0.1:8080",
        "ftp://example.com",
        "https://app.visibuild.com.au/?x=1",
    ] {
        let out = output(with_token(
            &db,
            &["import", manifest.arg(), "--api-url", url],
        ))
        .await;
        assert_eq!(out.code, 2, "{url}: {out:?}");
        assert!(out.stderr.contains("--api-url"), "{out:?}");
        assert!(out.stderr.contains("origin"), "{out:?}");
    }
    // A trailing slash is fine.
    let sb = start(SandboxConfig::default()).await;
    let origin = format!("{}/", sb.base_url());
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &origin],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(batches(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_refused_credentials_exit_2_before_loading() {
    let db = Db::new("creds");
    let manifest = Manifest::new(2, |_| 0);
    let sb = start(SandboxConfig {
        clients: vec![(
            "demo".into(),
            visibuild_sandbox::Secret::new("right"),
            "sandbox".into(),
        )],
        ..Default::default()
    })
    .await;
    let out = output(bin(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    ))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("VISIBUILD_TOKEN"), "{out:?}");
    assert_eq!(batches(&db).await, 0, "nothing loaded");

    let mut cmd = bin(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    );
    cmd.env("VISIBUILD_CLIENT_ID", "demo")
        .env("VISIBUILD_CLIENT_SECRET", "wrong");
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("client credentials were refused"),
        "{out:?}"
    );
    assert!(!out.all().contains("wrong"), "the secret is not echoed");
    assert_eq!(batches(&db).await, 0, "nothing loaded");
    assert!(sb.tickets().is_empty());
}

// ---------------------------------------------------------------------------------------
// Visibuild unreachable
// ---------------------------------------------------------------------------------------

/// An origin on which nothing listens: every connection is refused.
fn refusing_origin() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_visibuild_pauses_the_pool_uses_no_attempts_and_exits_3() {
    let db = Db::new("unreachable");
    let manifest = Manifest::new(20, |t| t % 2);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let mut cmd = with_token(&db, &["run", "--api-url", &refusing_origin()]);
    cmd.env("VISIBUILD_OUTAGE_SECS", "6");
    let out = output(cmd).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("Visibuild unreachable"), "{out:?}");
    let warnings = out.stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 2,
        "one warning per 30 s, not one per job: {out:?}"
    );

    let pool = db.pool().await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE state IN ('failed', 'running')"
        )
        .await,
        0,
        "nothing failed, nothing left locked"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets WHERE state IN ('failed', 'needs_review')"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE attempt >= max_attempts"
        )
        .await,
        0,
        "no attempt used up"
    );
    let status = status_json(&db).await;
    let reasons = status[0]["retry_reasons"].to_string();
    assert!(reasons.contains("unreachable"), "{status}");

    // When it is back, the same queue finishes, each ticket once.
    let sb = start(SandboxConfig::default()).await;
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(20));
}

// ---------------------------------------------------------------------------------------
// kill -9, then a restart on the same host
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_a_restarted_run_takes_back_the_dead_workers_jobs_at_once() {
    let db = Db::new("kill9");
    let sb = start(SandboxConfig {
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let manifest = Manifest::new(30, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let pool = db.pool().await;
    let p = &pool;
    // Leases of ten minutes: waiting for them to run out would outlast the test's timeout.
    let args = [
        "run",
        "--api-url",
        &sb.base_url(),
        "--workers",
        "4",
        "--lease-secs",
        "600",
    ];
    let mut run = spawn(with_token(&db, &args));
    eventually(
        "jobs are running and some work is done",
        move || async move {
            count(p, "SELECT count(*) FROM jobs WHERE state = 'completed'").await > 0
                && count(p, "SELECT count(*) FROM jobs WHERE state = 'running'").await > 0
        },
    )
    .await;
    run.child.start_kill().unwrap();
    run.child.wait().await.unwrap();
    assert!(count(&pool, "SELECT count(*) FROM jobs WHERE state = 'running'").await > 0);

    let restarted = spawn(with_token(&db, &args));
    let out = restarted.wait().await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("taking back the jobs of a worker process of this host that is gone"),
        "{out:?}"
    );
    assert_eq!(created_by_title(&sb), each_once(30));
}
