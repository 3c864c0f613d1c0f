//! The operator's surface, through the real binary: check, enqueue, import, run, status,
//! retry, report, OAuth, secrets in logs, signals and progress — against an in-process
//! sandbox on port 0 and a fresh Postgres database per test.

mod common;

use common::*;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use visibuild_sandbox::{Sandbox, SandboxConfig, Secret};

// ---------------------------------------------------------------------------------------
// check and enqueue
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn check_prints_every_corpus_problem_compiler_style_and_exits_2() {
    let db = Db::new("check");
    let cases: &[(&str, &[&str])] = &[
        (
            "missing_column.csv",
            &[r#"1: missing required column "project_id""#],
        ),
        (
            "unknown_column.csv",
            &[r#"1: unknown column "colour" (the columns are {COLUMNS})"#],
        ),
        (
            "bad_priority.csv",
            &[r#"3: priority: "urgent" is not one of low, medium, high"#],
        ),
        (
            "bad_email.csv",
            &[r#"2: contact_email: "sam.example.com" is not an e-mail address"#],
        ),
        (
            "bad_uuid.csv",
            &[r#"2: project_id: "not-a-uuid" is not a UUID"#],
        ),
        (
            "missing_value.csv",
            &[
                "2: title: missing required value",
                "3: ref: missing required value",
                "4: project_id: missing required value",
            ],
        ),
        (
            "missing_file.csv",
            &[r#"2: attachments: "files/nope.jpg" does not exist"#],
        ),
        (
            "empty_file.csv",
            &[r#"2: attachments: "files/empty.jpg" is empty (0 bytes)"#],
        ),
        (
            "absolute.csv",
            &[
                r#"2: attachments: "/etc/passwd" is an absolute path; paths are relative to the files root (--allow-outside-root lifts this)"#,
            ],
        ),
        (
            "field_count.csv",
            &["3: expected 8 fields (as in the header), found 4"],
        ),
        (
            "invalid_utf8.csv",
            &["3: title: not valid UTF-8 text (save the manifest as UTF-8)"],
        ),
        (
            "not_a_csv.csv",
            &[
                "1: not a CSV file: its content is image/png; expected a UTF-8 header row ({COLUMNS})",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, problems) in cases {
        let path = format!("tests/manifests/{name}");
        let out = output(bin(&db, &["check", &path])).await;
        let mut expected: Vec<String> = problems
            .iter()
            .map(|p| format!("{path}:{}", p.replace("{COLUMNS}", COLUMNS)))
            .collect();
        let lines: Vec<&str> = out.stdout.lines().collect();
        let summary = lines.last().copied().unwrap_or_default();
        let wanted_summary_end = match problems.len() {
            1 => "; 1 problem".to_string(),
            n => format!("; {n} problems"),
        };
        if out.code != 2
            || lines[..lines.len().saturating_sub(1)] != expected[..]
            || !summary.starts_with("errors: ")
            || !summary.ends_with(&wanted_summary_end)
        {
            expected.push(format!(
                "errors: … tickets, … files, … B{wanted_summary_end}"
            ));
            failures.push(format!(
                "{name}: expected exit 2 and {expected:#?}\ngot {out:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn check_passes_the_sample_manifest_with_a_summary_and_touches_no_database() {
    let db = Db::new("check_ok");
    let out = output(bin(&db, &["check", "samples/manifest.csv"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .starts_with("ok: 12 tickets, 20 files, 549.8 KiB; 0 problems"),
        "{out:?}"
    );
    assert!(
        PgPool::connect(&db.url).await.is_err(),
        "check created the database"
    );
}

#[tokio::test]
async fn check_counts_a_manifest_with_one_bad_ticket_of_two_in_words_that_agree() {
    let db = Db::new("check_plural");
    let out = output(bin(&db, &["check", "tests/manifests/bad_priority.csv"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stdout.lines().last(),
        Some("errors: 2 tickets (1 valid, 1 with problems), 0 files, 0 B; 1 problem"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("1 tickets"), "{out:?}");
}

#[tokio::test]
async fn enqueue_loads_nothing_from_a_manifest_with_errors_unless_told_to_skip_invalid() {
    let db = Db::new("enqueue");
    assert_eq!(output(bin(&db, &["migrate"])).await.code, 0);
    let pool = db.pool().await;

    let out = output(bin(&db, &["enqueue", "tests/manifests/bad_priority.csv"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(
        r#"tests/manifests/bad_priority.csv:3: priority: "urgent" is not one of low, medium, high"#
    ));
    assert!(out.stderr.contains("nothing was loaded"), "{out:?}");
    assert_eq!(count(&pool, "SELECT count(*) FROM tickets").await, 0);

    let out = output(bin(
        &db,
        &[
            "enqueue",
            "tests/manifests/bad_priority.csv",
            "--skip-invalid",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("skipped 1 ticket with problems: D-2"),
        "{out:?}"
    );
    assert!(out.stdout.contains("1 ticket and 0 files added"), "{out:?}");
    let refs: Vec<String> = sqlx::query_scalar("SELECT ref FROM tickets")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(refs, ["D-1"]);

    // Enqueue is idempotent: the same manifest again adds nothing.
    let out = output(bin(
        &db,
        &[
            "enqueue",
            "tests/manifests/bad_priority.csv",
            "--skip-invalid",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("0 tickets and 0 files added; 1 already known")
    );
}

// ---------------------------------------------------------------------------------------
// import, status, report, retry
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_then_status_and_report_describe_every_ticket() {
    let db = Db::new("import");
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(6, |t| t % 3);
    let files: usize = (0..6).map(|t| t % 3).sum();

    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("tickets: 6 created, 0 failed, 0 need review, 0 not finished"),
        "{out:?}"
    );
    assert_eq!(created_by_title(&sb), each_once(6));

    let human = output(bin(&db, &["status"])).await;
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("batch manifest.csv"), "{human:?}");
    assert!(human.stdout.contains("tickets: 6 created"), "{human:?}");
    assert!(
        human.stdout.contains(&format!("files:   {files} uploaded")),
        "{human:?}"
    );

    let json = status_json(&db).await;
    let batch = &json[0];
    assert_eq!(batch["batch"], "manifest.csv");
    assert_eq!(batch["tickets"]["created"], 6);
    assert_eq!(batch["files"]["uploaded"], files);
    assert_eq!(batch["jobs"]["failed"], 0);
    assert_eq!(batch["jobs"]["completed"], 6 + files);
    assert_eq!(batch["bytes_uploaded"], batch["bytes_total"]);
    assert_eq!(batch["top_errors"].as_array().unwrap().len(), 0);

    let rows = report(&db).await;
    let in_sandbox: HashMap<String, _> = sb
        .tickets()
        .into_iter()
        .map(|t| (t.title.clone(), t))
        .collect();
    assert_eq!(rows.len(), 6);
    for t in 0..6 {
        let row = &rows[&reference(t)];
        let created = &in_sandbox[&format!("Defect {t}")];
        assert_eq!(row["state"], "created");
        assert_eq!(row["project_id"], PROJECT);
        assert_eq!(row["ticket_id"], created.id.to_string());
        let keys: Vec<&str> = row["attachment_keys"]
            .split(';')
            .filter(|k| !k.is_empty())
            .collect();
        let expected: Vec<&str> = created.attachments.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, expected, "{}", reference(t));
        assert_eq!(row["error"], "");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_uploads_are_retried_by_ref_error_and_job_and_each_ticket_is_created_once() {
    let db = Db::new("retry");
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    let manifest = Manifest::new(4, |_| 2);
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");

    // The first file of tickets 0..3 disappears after it was checked: those uploads fail.
    let hidden = tempfile::tempdir().unwrap();
    for t in 0..3 {
        std::fs::rename(
            manifest.file(&reference(t), 0),
            hidden.path().join(t.to_string()),
        )
        .unwrap();
    }
    let out = output(with_token(&db, &["run", "--api-url", &api])).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("tickets: 1 created, 3 failed, 0 need review, 0 not finished"),
        "{out:?}"
    );
    assert_eq!(created_by_title(&sb), [("Defect 3".to_string(), 1)].into());

    let human = output(bin(&db, &["status"])).await;
    assert!(
        human.stdout.contains("tickets: 1 created, 3 failed"),
        "{human:?}"
    );
    assert!(
        human.stdout.contains("t0-f0.jpg") && human.stdout.contains("no longer exists"),
        "status names the reason: {human:?}"
    );
    let json = status_json(&db).await;
    assert_eq!(json[0]["jobs"]["failed"], 3);
    assert_eq!(
        json[0]["jobs"]["blocked"], 3,
        "their creates wait for the uploads"
    );
    let rows = report(&db).await;
    for t in 0..3 {
        let row = &rows[&reference(t)];
        assert_eq!(row["state"], "failed");
        assert!(
            row["error"].contains(&format!("t{t}-f0.jpg")),
            "report names the file: {row:?}"
        );
        assert_eq!(row["ticket_id"], "");
    }

    for t in 0..3 {
        std::fs::rename(
            hidden.path().join(t.to_string()),
            manifest.file(&reference(t), 0),
        )
        .unwrap();
    }

    // By ref: only that ticket goes back, and its create runs once the upload lands.
    let out = output(bin(&db, &["retry", "--ref", "DEF-0000"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("1 failed job of 1 ticket "),
        "{out:?}"
    );
    let out = output(with_token(&db, &["run", "--api-url", &api])).await;
    assert_eq!(out.code, 1, "two tickets are still failed: {out:?}");
    assert_eq!(created_by_title(&sb).get("Defect 0"), Some(&1));
    assert_eq!(created_by_title(&sb).len(), 2);

    // By error text.
    let out = output(bin(&db, &["retry", "--error-contains", "t1-f0.jpg"])).await;
    assert!(
        out.stdout.starts_with("1 failed job of 1 ticket "),
        "{out:?}"
    );

    // By job id.
    let pool = db.pool().await;
    let job: i64 = sqlx::query_scalar(
        "SELECT j.id FROM jobs j JOIN attachments a ON a.id = j.target_id
           JOIN tickets t ON t.id = a.ticket_id
          WHERE t.ref = 'DEF-0002' AND j.state = 'failed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let out = output(bin(&db, &["retry", "--job", &job.to_string()])).await;
    assert!(
        out.stdout.starts_with("1 failed job of 1 ticket "),
        "{out:?}"
    );

    let out = output(with_token(&db, &["run", "--api-url", &api])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(4));
    for t in sb.tickets() {
        assert_eq!(t.attachments.len(), 2, "{t:?}");
    }
    let rows = report(&db).await;
    assert!(rows.values().all(|r| r["state"] == "created"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_whose_create_answer_is_lost_needs_review_until_retry_force() {
    let db = Db::new("review");
    let lossy = start(SandboxConfig {
        drop_rate: 1.0,
        ..Default::default()
    })
    .await;
    let manifest = Manifest::new(1, |_| 0);
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &lossy.base_url()],
    ))
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("0 created, 0 failed, 1 needs review"),
        "{out:?}"
    );
    assert_eq!(status_json(&db).await[0]["tickets"]["needs_review"], 1);
    let human = output(bin(&db, &["status"])).await;
    assert!(human.stdout.contains("1 needs_review"), "{human:?}");
    assert!(human.stdout.contains("outcome unknown"), "{human:?}");
    assert_eq!(report(&db).await["DEF-0000"]["state"], "needs_review");

    let out = output(bin(&db, &["retry"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with("0 failed jobs of 0 tickets"),
        "{out:?}"
    );
    assert!(out.stdout.contains("1 ticket needs review"), "{out:?}");
    assert_eq!(status_json(&db).await[0]["tickets"]["needs_review"], 1);

    let out = output(bin(&db, &["retry", "--force"])).await;
    assert!(
        out.stdout.starts_with("1 failed job of 1 ticket "),
        "{out:?}"
    );
    let healthy = start(SandboxConfig::default()).await;
    let out = output(with_token(&db, &["run", "--api-url", &healthy.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&healthy), each_once(1));
    let row = &report(&db).await["DEF-0000"];
    assert_eq!(row["state"], "created");
    assert_eq!(row["ticket_id"], healthy.tickets()[0].id.to_string());
}

// ---------------------------------------------------------------------------------------
// Credentials and secrets
// ---------------------------------------------------------------------------------------

const CLIENT_ID: &str = "cli-test-client";
const CLIENT_SECRET: &str = "cs-7d1e0f-never-print-me";
const STATIC_TOKEN: &str = "tok-3b9a-never-print-me";

fn oauth_sandbox(token_ttl: Duration) -> SandboxConfig {
    SandboxConfig {
        clients: vec![(
            CLIENT_ID.into(),
            Secret::new(CLIENT_SECRET),
            "sandbox".into(),
        )],
        tokens: vec![(Secret::new(STATIC_TOKEN), "sandbox".into())],
        token_ttl,
        ..Default::default()
    }
}

fn with_client(db: &Db, secret: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = bin(db, args);
    cmd.env("VISIBUILD_CLIENT_ID", CLIENT_ID)
        .env("VISIBUILD_CLIENT_SECRET", secret);
    cmd
}

/// Every way a secret could show: the client secret, the static token, a token the
/// sandbox issued (`sbx_` + 40 characters), a presigned URL's signature.
fn assert_no_secrets(what: &str, text: &str) {
    assert!(
        !text.contains(CLIENT_SECRET),
        "{what}: client secret leaked"
    );
    assert!(!text.contains(STATIC_TOKEN), "{what}: static token leaked");
    assert!(
        !text.contains("X-Amz-Signature="),
        "{what}: presigned signature leaked"
    );
    for (i, _) in text.match_indices("sbx_") {
        let issued = text[i + 4..]
            .chars()
            .take(40)
            .filter(char::is_ascii_alphanumeric)
            .count();
        assert!(issued < 40, "{what}: an issued access token leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_tokens_are_refreshed_during_an_import_longer_than_their_lifetime() {
    let db = Db::new("oauth");
    let sb = start(oauth_sandbox(Duration::from_secs(2))).await;
    // 15 tickets with a file each: 30 API calls at 5/s, about 6 s, three token lifetimes.
    let manifest = Manifest::new(15, |_| 1);
    let out = output(with_client(
        &db,
        CLIENT_SECRET,
        &[
            "import",
            manifest.arg(),
            "--api-url",
            &sb.base_url(),
            "--api-rate",
            "5/s",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(15));
    let stats = sb.stats();
    assert!(
        stats.count("POST /oauth/token", 200) >= 2,
        "tokens were refreshed: {stats:?}"
    );
    assert_eq!(
        stats.count("POST /api/core/v1/tickets", 401),
        0,
        "{stats:?}"
    );
    assert_no_secrets("oauth import", &out.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_credentials_exit_2_with_a_plain_message_and_fail_no_ticket() {
    let db = Db::new("badsecret");
    let sb = start(oauth_sandbox(Duration::from_secs(3600))).await;
    let manifest = Manifest::new(2, |_| 1);
    let wrong = "wrong-secret-never-print-me";
    let mut cmd = with_client(
        &db,
        wrong,
        &["-vv", "import", manifest.arg(), "--api-url", &sb.base_url()],
    );
    cmd.env("RUST_LOG", "trace");
    let out = output(cmd).await;
    assert_eq!(out.code, 2, "{out:?}");
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: Visibuild refused the credentials (the client credentials were refused"
        ) && last.contains("check VISIBUILD_CLIENT_ID and VISIBUILD_CLIENT_SECRET"),
        "{out:?}"
    );
    assert!(!out.all().contains(wrong), "the wrong secret is not echoed");
    assert_no_secrets("refused credentials", &out.all());
    assert!(sb.tickets().is_empty());
    // Credentials are checked before anything is loaded: nothing failed, nothing loaded.
    let json = status_json(&db).await;
    assert_eq!(json, serde_json::json!([]), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_trace_level_logs_status_or_report() {
    let db = Db::new("secrets");
    let sb = start(oauth_sandbox(Duration::from_secs(2))).await;
    let api = sb.base_url();
    let trace = |mut cmd: tokio::process::Command| {
        cmd.env("RUST_LOG", "trace");
        cmd
    };

    // OAuth, trace level everywhere (reqwest, hyper, sqlx included).
    let manifest = Manifest::new(3, |_| 2);
    let out = output(trace(with_client(
        &db,
        CLIENT_SECRET,
        &["-vv", "import", manifest.arg(), "--api-url", &api],
    )))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.lines().count() > 100,
        "trace logs are on: {out:?}"
    );
    assert_no_secrets("oauth import at trace", &out.all());

    // A long-lived token.
    let second = Manifest::with_refs("TOK", 2, |_| 1);
    let mut cmd = trace(bin(
        &db,
        &[
            "-vv",
            "import",
            second.arg(),
            "--batch",
            "second",
            "--api-url",
            &api,
        ],
    ));
    cmd.env("VISIBUILD_TOKEN", STATIC_TOKEN);
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_no_secrets("token import at trace", &out.all());

    for args in [
        vec!["-vv", "status"],
        vec!["-vv", "status", "--json"],
        vec!["-vv", "report"],
    ] {
        let out = output(trace(bin(&db, &args))).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert_no_secrets(&args.join(" "), &out.all());
    }

    // An error path: S3 refuses every URL as expired (403), so uploads fail.
    let slow = start(SandboxConfig {
        url_ttl: Duration::from_secs(1),
        latency: Duration::from_millis(1200),
        tokens: vec![(Secret::new(STATIC_TOKEN), "sandbox".into())],
        ..Default::default()
    })
    .await;
    let third = Manifest::with_refs("EXP", 1, |_| 1);
    let mut cmd = trace(bin(
        &db,
        &[
            "-vv",
            "import",
            third.arg(),
            "--batch",
            "third",
            "--max-attempts",
            "1",
            "--api-url",
            &slow.base_url(),
        ],
    ));
    cmd.env("VISIBUILD_TOKEN", STATIC_TOKEN);
    let out = output(cmd).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("403 AccessDenied"), "{out:?}");
    assert_no_secrets("403 import at trace", &out.all());
    let out = output(trace(bin(&db, &["-vv", "report", "--batch", "third"]))).await;
    assert!(out.stdout.contains("403 AccessDenied"), "{out:?}");
    assert_no_secrets("403 report", &out.all());
}

// ---------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_143_holds_nothing_and_a_later_run_finishes_each_ticket_once() {
    let db = Db::new("sigterm");
    let sb = start(SandboxConfig {
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let manifest = Manifest::new(30, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let pool = db.pool().await;
    let p = &pool;

    let run = spawn(with_token(
        &db,
        &["run", "--api-url", &sb.base_url(), "--workers", "4"],
    ));
    eventually("some work is done", move || async move {
        count(p, "SELECT count(*) FROM jobs WHERE state = 'completed'").await > 0
    })
    .await;
    run.terminate();
    let out = run.wait().await;
    assert_eq!(out.code, 143, "{out:?}");
    assert!(
        out.stderr.contains("stopping: finishing in-flight work"),
        "{out:?}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs WHERE state = 'running'").await,
        0,
        "nothing is left locked"
    );
    assert!(sb.tickets().len() < 30, "interrupted before the end");

    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_a_later_run_still_finishes_each_ticket_once() {
    let db = Db::new("sigterm2");
    // Slow enough that in-flight requests are still waiting when the second signal comes.
    let sb = start(SandboxConfig {
        latency: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    let manifest = Manifest::new(5, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let pool = db.pool().await;
    let p = &pool;

    let run = spawn(with_token(
        &db,
        &["run", "--api-url", &sb.base_url(), "--lease-secs", "3"],
    ));
    eventually("jobs are in flight", move || async move {
        count(p, "SELECT count(*) FROM jobs WHERE state = 'running'").await > 0
    })
    .await;
    run.terminate();
    let r = &run;
    eventually("the first signal is taken", move || async move {
        r.stderr().contains("stopping: finishing in-flight work")
    })
    .await;
    run.terminate();
    let out = run.wait().await;
    assert_eq!(out.code, 143, "{out:?}");
    assert!(out.stderr.contains("second signal: exiting now"), "{out:?}");

    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_watch_serves_batches_enqueued_later_until_sigterm() {
    let db = Db::new("watch");
    let sb = start(SandboxConfig::default()).await;
    assert_eq!(output(bin(&db, &["migrate"])).await.code, 0);
    let watch = spawn(with_token(
        &db,
        &["run", "--watch", "--api-url", &sb.base_url()],
    ));
    let manifest = Manifest::new(3, |t| t);
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let sbr = &sb;
    eventually("the watcher created the tickets", move || async move {
        sbr.tickets().len() == 3
    })
    .await;
    let later = Manifest::with_refs("LATE", 2, |_| 1);
    let out = output(bin(&db, &["enqueue", later.arg(), "--batch", "later"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    eventually(
        "the watcher created the later tickets too",
        move || async move { sbr.tickets().len() == 5 },
    )
    .await;
    watch.terminate();
    let out = watch.wait().await;
    assert_eq!(out.code, 143, "{out:?}");
    let titles = created_by_title(&sb);
    assert_eq!(titles["Defect 0"], 2, "one per batch: {titles:?}");
    assert_eq!(titles["Defect 2"], 1, "{titles:?}");
}

// ---------------------------------------------------------------------------------------
// Progress and log formats
// ---------------------------------------------------------------------------------------

/// An import of 10 one-file tickets at 5 API calls a second: about 4 s.
async fn slow_import(db: &Db, sb: &Sandbox, flags: &[&str]) -> Out {
    let manifest = Manifest::new(10, |_| 1);
    let url = sb.base_url();
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([
        "import",
        manifest.arg(),
        "--api-url",
        &url,
        "--api-rate",
        "5/s",
    ]);
    let mut cmd = with_token(db, &args);
    cmd.env("VISIBUILD_PROGRESS_SECS", "1");
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_progress_is_a_plain_log_line_and_the_summary_goes_to_stdout() {
    let db = Db::new("progress");
    let sb = start(SandboxConfig::default()).await;
    let out = slow_import(&db, &sb, &[]).await;
    let progress: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("/10, files "))
        .collect();
    assert!(!progress.is_empty(), "a progress line: {out:?}");
    assert!(
        !out.stderr.contains('\x1b'),
        "no colour codes without a terminal"
    );
    assert!(!out.stdout.contains("/10, files "), "{out:?}");
    assert!(out.stdout.contains("tickets: 10 created"), "{out:?}");
    assert!(!out.stderr.contains("tickets: 10 created"), "{out:?}");
}

/// Every line of `stderr` as JSON; a line that is not JSON fails the test.
fn json_lines(out: &Out) -> Vec<serde_json::Value> {
    out.stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {out:?}")))
        .collect()
}

/// The first JSON line whose message contains `text`.
fn json_line<'a>(lines: &'a [serde_json::Value], text: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(text))
        })
        .unwrap_or_else(|| panic!("a line saying {text:?} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_only_json_lines_to_stderr() {
    let db = Db::new("json");
    let sb = start(SandboxConfig::default()).await;
    let out = slow_import(&db, &sb, &["--log-format", "json"]).await;
    let lines = json_lines(&out);
    // Progress carries its numbers as fields, not only as a message.
    let progress = json_line(&lines, "/10, files ");
    assert_eq!(progress["level"], "INFO");
    assert!(progress["timestamp"].is_string());
    let fields = &progress["fields"];
    assert_eq!(fields["tickets_total"], 10, "{progress}");
    assert_eq!(fields["files_total"], 10, "{progress}");
    for field in [
        "tickets",
        "files",
        "bytes",
        "files_per_sec",
        "retries",
        "rate_limited_429",
    ] {
        assert!(fields[field].is_number(), "{field} in {progress}");
    }
    // The load and the final summary are JSON lines too; nothing else is written.
    let loaded = json_line(&lines, "batch manifest.csv: 10 tickets");
    assert_eq!(loaded["fields"]["tickets_added"], 10);
    let summary = &json_line(&lines, "summary: ")["fields"]["summary"];
    assert_eq!(summary["tickets_created"], 10, "{summary}");
    assert_eq!(summary["files_uploaded"], 10, "{summary}");
    assert_eq!(summary["exit_code"], 0, "{summary}");
    assert_eq!(out.stdout, "", "{out:?}");

    // A fatal error and a manifest's problems are JSON too, with the exit code.
    let out = output(bin(
        &db,
        &[
            "--log-format",
            "json",
            "enqueue",
            "tests/manifests/bad_priority.csv",
        ],
    ))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    let lines = json_lines(&out);
    let problem = json_line(&lines, r#"priority: "urgent" is not one of"#);
    assert_eq!(problem["fields"]["line"], 3);
    assert_eq!(problem["fields"]["ref"], "D-2");
    let error = lines.last().unwrap();
    assert_eq!(error["level"], "ERROR");
    assert_eq!(error["fields"]["exit_code"], 2);
    assert!(
        error["fields"]["message"].as_str().unwrap().starts_with(
            "error: tests/manifests/bad_priority.csv has 1 problem; nothing was loaded"
        ),
        "{error}"
    );

    // So is a usage error clap finds, and an unreachable database.
    let out = output(bin(&db, &["--log-format", "json", "report", "--nope"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(json_lines(&out)[0]["fields"]["exit_code"], 2);
    let out = output(bin_on(
        "postgres://postgres@127.0.0.1:1/x",
        &["--log-format", "json", "status"],
    ))
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(json_lines(&out)[0]["fields"]["exit_code"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_covers_the_rehearsal_line_and_the_signal_lines() {
    let db = Db::new("json_rehearsal");
    // The rehearsal's own database, dropped with this fixture.
    let _rehearsal = db.rehearsal();
    let manifest = Manifest::new(2, |_| 1);
    let out = output(bin(
        &db,
        &[
            "--log-format",
            "json",
            "import",
            manifest.arg(),
            "--sandbox",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let lines = json_lines(&out);
    let rehearsal = json_line(&lines, "rehearsal: using the store");
    assert!(
        rehearsal["fields"]["database"]
            .as_str()
            .unwrap()
            .ends_with("_sandbox"),
        "{rehearsal}"
    );

    let sb = start(SandboxConfig {
        latency: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let manifest = Manifest::with_refs("SIG", 20, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let pool = db.pool().await;
    let p = &pool;
    let run = spawn(with_token(
        &db,
        &[
            "--log-format",
            "json",
            "run",
            "--api-url",
            &sb.base_url(),
            "--workers",
            "2",
        ],
    ));
    eventually("some work is done", move || async move {
        count(p, "SELECT count(*) FROM jobs WHERE state = 'completed'").await > 0
    })
    .await;
    run.terminate();
    let out = run.wait().await;
    assert_eq!(out.code, 143, "{out:?}");
    let lines = json_lines(&out);
    assert_eq!(
        json_line(&lines, "stopping: finishing in-flight work")["level"],
        "WARN"
    );
    let summary = &json_line(&lines, "summary: ")["fields"]["summary"];
    assert_eq!(summary["exit_code"], 143, "{summary}");
    assert_eq!(summary["outcome"], "interrupted", "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_json_writes_the_final_summary_for_a_scheduler_even_on_an_error() {
    let db = Db::new("summary_json");
    let sb = start(SandboxConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("last-run.json");
    let path = file.to_str().unwrap();
    let manifest = Manifest::new(3, |t| t);
    let out = output(with_token(
        &db,
        &[
            "import",
            manifest.arg(),
            "--api-url",
            &sb.base_url(),
            "--summary-json",
            path,
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(summary["batch"], "manifest.csv");
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["outcome"], "success");
    assert_eq!(summary["tickets_created"], 3);
    assert_eq!(summary["tickets_failed"], 0);
    assert_eq!(summary["tickets_needs_review"], 0);
    assert_eq!(summary["tickets_not_finished"], 0);
    assert_eq!(summary["files_uploaded"], 3);
    assert!(
        summary["bytes_uploaded"].as_u64().unwrap() > 9000,
        "{summary}"
    );
    assert_eq!(summary["requests"]["presign"], 3, "{summary}");
    assert_eq!(summary["requests"]["upload"], 3, "{summary}");
    assert_eq!(summary["requests"]["create"], 3, "{summary}");
    assert_eq!(summary["rate_limited_429"], 0);
    assert_eq!(summary["retries"], 0);
    assert!(summary["elapsed_seconds"].as_f64().unwrap() > 0.0);

    // `run` takes it too, and "-" is stdout: one line of JSON after the human summary.
    // The second file of B-0001 disappears after loading: that ticket fails.
    let second = Manifest::with_refs("B", 2, |_| 2);
    let out = output(bin(&db, &["enqueue", second.arg(), "--batch", "b"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    std::fs::remove_file(second.file("B-0001", 1)).unwrap();
    let out = output(with_token(
        &db,
        &[
            "run",
            "--batch",
            "b",
            "--api-url",
            &sb.base_url(),
            "--summary-json",
            "-",
        ],
    ))
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("tickets: 1 created, 1 failed"),
        "{out:?}"
    );
    let last: serde_json::Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["batch"], "b");
    assert_eq!(last["exit_code"], 1);
    assert_eq!(last["tickets_created"], 1);
    assert_eq!(last["tickets_failed"], 1);
    assert!(last["files_uploaded"].as_u64().unwrap() >= 2, "{last}");
    assert_eq!(last["top_errors"].as_array().unwrap().len(), 1, "{last}");

    // An error before any work (no credentials) still leaves the exit code and the reason.
    let out = output(bin(
        &db,
        &["run", "--api-url", &sb.base_url(), "--summary-json", path],
    ))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(summary["exit_code"], 2, "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .unwrap()
            .contains("VISIBUILD_TOKEN"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_shows_only_warnings_and_no_progress() {
    let db = Db::new("quiet");
    let sb = start(SandboxConfig::default()).await;
    let out = slow_import(&db, &sb, &["-q"]).await;
    assert!(
        !out.stderr.contains(" INFO ") && !out.stderr.contains("/10, files "),
        "{out:?}"
    );
    assert!(out.stdout.contains("tickets: 10 created"), "{out:?}");

    // A failure still shows its warning/error under -q.
    let manifest = Manifest::with_refs("Q", 1, |_| 1);
    assert_eq!(
        output(bin(&db, &["enqueue", manifest.arg(), "--batch", "b"]))
            .await
            .code,
        0
    );
    std::fs::remove_file(manifest.file("Q-0000", 0)).unwrap();
    let out = output(with_token(&db, &["-q", "run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ERROR"), "{out:?}");
    assert!(!out.stderr.contains(" INFO "), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Reports in a spreadsheet
// ---------------------------------------------------------------------------------------

/// What a spreadsheet would run as a formula (OWASP's CSV-injection list).
fn starts_like_a_formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

#[tokio::test]
async fn report_escapes_cells_a_spreadsheet_would_run_as_formulas() {
    let db = Db::new("formula");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.csv");
    let refs = [
        r#"=HYPERLINK("http://x","y")"#,
        "+SUM(1)",
        "@SUM(A1)",
        "-2+3",
        "PLAIN-1",
    ];
    let mut csv = String::from("ref,project_id,title\n");
    for (i, r) in refs.iter().enumerate() {
        csv.push_str(&format!(
            "\"{}\",{PROJECT},Defect {i}\n",
            r.replace('"', "\"\"")
        ));
    }
    std::fs::write(&manifest, csv).unwrap();
    let out = output(bin(
        &db,
        &["enqueue", manifest.to_str().unwrap(), "--batch", "=batch()"],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");

    let file = dir.path().join("report.csv");
    let out = output(bin(
        &db,
        &[
            "report",
            "--batch",
            "=batch()",
            "--out",
            file.to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let stdout = output(bin(&db, &["report", "--batch", "=batch()"])).await;
    assert_eq!(stdout.code, 0, "{stdout:?}");
    assert_eq!(
        stdout.stdout,
        std::fs::read_to_string(&file).unwrap(),
        "stdout and --out write the same CSV"
    );

    let mut reader = csv::Reader::from_path(&file).unwrap();
    let mut written = Vec::new();
    for record in reader.records() {
        let record = record.unwrap();
        for cell in record.iter() {
            assert!(!starts_like_a_formula(cell), "{cell:?} in {record:?}");
        }
        assert_eq!(&record[0], "'=batch()");
        written.push(record[1].to_string());
    }
    assert_eq!(
        written,
        [
            r#"'=HYPERLINK("http://x","y")"#,
            "'+SUM(1)",
            "'@SUM(A1)",
            "'-2+3",
            "PLAIN-1"
        ]
    );
}

#[tokio::test]
async fn report_out_refuses_to_overwrite_an_existing_file_unless_forced() {
    let db = Db::new("overwrite");
    let manifest = Manifest::new(2, |_| 0);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.csv");
    std::fs::write(&file, "the operator's notes\n").unwrap();
    let path = file.to_str().unwrap();

    let out = output(bin(&db, &["report", "--out", path])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!("error: {path} already exists; pass --force to overwrite it"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "the operator's notes\n"
    );

    let out = output(bin(&db, &["report", "--out", path, "--force"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(written.starts_with("batch,ref,"), "{written}");
    assert_eq!(written.lines().count(), 3, "{written}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["report.csv"], "no temporary file is left behind");
}

// ---------------------------------------------------------------------------------------
// The database: unreachable, malformed, TLS
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_database_exits_3_and_names_the_os_error_once() {
    // Port 1 on localhost refuses connections at once.
    let out = output(bin_on("postgres://postgres@127.0.0.1:1/x", &["status"])).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr
            .starts_with("error: cannot connect to postgres://postgres@127.0.0.1:1/x: "),
        "{out:?}"
    );
    assert_eq!(
        out.stderr.matches("Connection refused").count(),
        1,
        "{out:?}"
    );
}

#[tokio::test]
async fn a_malformed_database_url_a_missing_root_certificate_or_a_refused_login_exit_2() {
    let out = output(bin_on("postgres://127.0.0.1:notaport/x", &["status"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("is not a usable Postgres URL"),
        "{out:?}"
    );

    let url = "postgres://postgres@localhost:5432/x?sslmode=verify-full&sslrootcert=/nope/ca.pem";
    let out = output(bin_on(url, &["status"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        "error: cannot read the root certificate /nope/ca.pem (sslrootcert): \
         No such file or directory (os error 2)"
    );

    let url = "postgres://no_such_role@127.0.0.1:5432/x";
    let out = output(bin_on(url, &["status"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(r#"role "no_such_role" does not exist"#),
        "{out:?}"
    );
}

/// The database's URL with its host replaced and `query` appended.
fn with_tls(db: &Db, host: &str, query: &str) -> String {
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_host(Some(host)).unwrap();
    url.set_query(Some(query));
    url.to_string()
}

/// The server's certificate file; the TLS tests need the server to have `ssl = on`.
async fn server_cert(db: &Db) -> String {
    let master = PgPool::connect(&db.master).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&master)
        .await
        .unwrap();
    assert_eq!(ssl, "on", "the TLS tests need a Postgres with ssl = on");
    sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&master)
        .await
        .unwrap()
}

#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let db = Db::new("tls");
    server_cert(&db).await;
    let url = with_tls(&db, "127.0.0.1", "sslmode=require");
    let out = output(bin_on(&url, &["migrate"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = output(bin_on(&url, &["status"])).await;
    assert_eq!(out.code, 0, "{out:?}");

    let encrypted = |url: String| async move {
        let visibuild_queue::Store::Postgres(pool) = visibuild_import::store::connect_with(&url, 1)
            .await
            .unwrap()
        else {
            unreachable!("a postgres:// URL")
        };
        let ssl: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        ssl
    };
    assert!(encrypted(url).await, "sslmode=require encrypts");
    assert!(
        !encrypted(with_tls(&db, "127.0.0.1", "sslmode=disable")).await,
        "the check can tell"
    );
}

#[tokio::test]
async fn sslmode_verify_ca_and_verify_full_trust_the_given_root_certificate() {
    let db = Db::new("tls_root");
    let cert = server_cert(&db).await;
    // Debian's snakeoil certificate names localhost only. verify-ca should not check the
    // name, but sqlx 0.8.6 with rustls >= 0.23.24 does (sqlx issue 3793, fixed in 0.9):
    // verify-ca to 127.0.0.1 is refused for the name, so it is tested on localhost here.
    let url = with_tls(
        &db,
        "localhost",
        &format!("sslmode=verify-ca&sslrootcert={cert}"),
    );
    let out = output(bin_on(&url, &["migrate"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let url = with_tls(
        &db,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={cert}"),
    );
    let out = output(bin_on(&url, &["status"])).await;
    assert_eq!(out.code, 0, "{out:?}");
}

#[tokio::test]
async fn sslmode_verify_full_refuses_a_certificate_the_system_roots_do_not_trust_and_exits_3() {
    let db = Db::new("tls_refused");
    server_cert(&db).await;
    // Whatever the system trusts, the certificate does not name 127.0.0.1.
    let out = output(bin_on(
        &with_tls(&db, "127.0.0.1", "sslmode=verify-full"),
        &["status"],
    ))
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr
            .contains(r#"invalid peer certificate: certificate not valid for name "127.0.0.1""#),
        "{out:?}"
    );

    // The system's roots only: the bundle, and no certificate directory (Debian links its
    // snakeoil certificate into /etc/ssl/certs, which would make it a system root here).
    let no_dir = tempfile::tempdir().unwrap();
    let url = with_tls(&db, "localhost", "sslmode=verify-full");
    let mut cmd = bin_on(&url, &["status"]);
    cmd.env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
        .env("SSL_CERT_DIR", no_dir.path());
    let out = output(cmd).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");
    assert!(
        out.stderr.starts_with("error: cannot connect to "),
        "{out:?}"
    );
    assert_eq!(out.stderr.matches("UnknownIssuer").count(), 1, "{out:?}");
}

// ---------------------------------------------------------------------------------------
// retry that matches nothing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_of_an_unknown_ref_or_job_exits_2_and_of_a_healthy_one_says_there_is_nothing_to_do() {
    let db = Db::new("retry_none");
    let manifest = Manifest::new(1, |_| 0);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);

    let out = output(bin(&db, &["retry", "--ref", "NOPE"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.stderr.trim_end(), r#"error: no ticket with ref "NOPE""#);
    let out = output(bin(&db, &["retry", "--job", "999999"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.stderr.trim_end(), "error: no job 999999");

    let out = output(bin(&db, &["retry", "--ref", "DEF-0000"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim_end(),
        r#"nothing to retry: ticket "DEF-0000" has no failed work (it is pending)"#
    );
    let job: i64 = sqlx::query_scalar("SELECT id FROM jobs")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    let out = output(bin(&db, &["retry", "--job", &job.to_string()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.trim_end(),
        format!("nothing to retry: job {job} has not failed (it is available)")
    );
}

// ---------------------------------------------------------------------------------------
// Help, completions and the man page
// ---------------------------------------------------------------------------------------

/// The binary with no database at hand (these commands must not need one).
fn offline(args: &[&str]) -> tokio::process::Command {
    bin_on("postgres://postgres@127.0.0.1:1/unused", args)
}

#[tokio::test]
async fn help_names_the_credentials_groups_options_and_shows_an_example() {
    for command in ["import", "run"] {
        let out = output(offline(&[command, "--help"])).await;
        assert_eq!(out.code, 0, "{out:?}");
        for text in [
            "VISIBUILD_TOKEN",
            "VISIBUILD_CLIENT_ID",
            "VISIBUILD_CLIENT_SECRET",
            "\nVisibuild:\n",
            "\nThroughput:\n",
            "\nOutput:\n",
            "--summary-json",
            "--database-url",
            "[env: DATABASE_URL]",
            "Examples:\n  ",
        ] {
            assert!(
                out.stdout.contains(text),
                "{command} --help lacks {text:?}: {out:?}"
            );
        }
    }
    let out = output(offline(&["import", "--help"])).await;
    assert!(out.stdout.contains("\nManifest:\n"), "{out:?}");
    for command in [
        "enqueue",
        "check",
        "run",
        "status",
        "retry",
        "report",
        "sandbox",
        "migrate",
        "completions",
        "man",
    ] {
        let out = output(offline(&[command, "--help"])).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("Example"), "{command} --help: {out:?}");
    }
}

#[tokio::test]
async fn commands_that_do_not_use_the_store_do_not_offer_database_url() {
    for command in ["check", "sandbox", "completions", "man"] {
        let out = output(offline(&[command, "--help"])).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(!out.stdout.contains("--database-url"), "{command}: {out:?}");
        assert!(!out.stdout.contains("DATABASE_URL"), "{command}: {out:?}");
    }
    for command in [
        "import", "enqueue", "run", "status", "retry", "report", "migrate",
    ] {
        let out = output(offline(&[command, "--help"])).await;
        assert!(out.stdout.contains("--database-url"), "{command}: {out:?}");
    }
    // The flag is taken after the command; before it, it is a usage error.
    let out = output(offline(&[
        "check",
        "--database-url",
        "x",
        "samples/manifest.csv",
    ]))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = output(offline(&[
        "status",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/flag",
    ]))
    .await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("127.0.0.1:1/flag"),
        "the flag wins over the env: {out:?}"
    );
}

#[tokio::test]
async fn completions_print_a_script_naming_the_subcommands_for_each_shell() {
    let out = output(offline(&["completions", "bash"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("complete -F"), "{out:?}");
    for sub in [
        "import",
        "enqueue",
        "check",
        "run",
        "status",
        "retry",
        "report",
        "completions",
    ] {
        assert!(out.stdout.contains(sub), "bash completion lacks {sub}");
    }
    assert!(out.stdout.contains("--summary-json") && out.stdout.contains("--failed-only"));
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let out = output(offline(&["completions", shell])).await;
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("visibuild-import"), "{shell}: {out:?}");
        assert!(out.stdout.contains("enqueue"), "{shell}: {out:?}");
    }
    let out = output(offline(&["completions", "tcsh"])).await;
    assert_eq!(out.code, 2, "{out:?}");
}

#[tokio::test]
async fn man_prints_a_roff_page() {
    let out = output(offline(&["man"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(".TH visibuild-import 1"), "{out:?}");
    assert!(out.stdout.contains(".SH NAME"), "{out:?}");
    assert!(out.stdout.contains("enqueue"), "{out:?}");
    assert!(out.stdout.contains("VISIBUILD_CLIENT_SECRET"), "{out:?}");
    // Each command's own options, not only the list of commands.
    assert!(out.stdout.contains(".SH \"COMMANDS IN DETAIL\""), "{out:?}");
    assert!(
        out.stdout.contains(".SS \"visibuild-import report\""),
        "{out:?}"
    );
    assert!(out.stdout.contains("failed\\-only"), "{out:?}");
    assert_eq!(out.stderr, "", "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Report modes
// ---------------------------------------------------------------------------------------

/// A CSV's rows as column → value.
fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_shows_lines_failed_only_files_and_refs_changed_since_loading() {
    let db = Db::new("report_modes");
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::with_refs("R", 3, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    std::fs::remove_file(manifest.file("R-0002", 0)).unwrap();
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 1, "{out:?}");

    // Per ticket: the manifest line, and nothing changed yet.
    let report = output(bin(&db, &["report"])).await;
    assert_eq!(report.code, 0, "{report:?}");
    let rows = csv_rows(&report.stdout);
    let lines: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["ref"].as_str(), r["line"].as_str()))
        .collect();
    assert_eq!(lines, [("R-0000", "2"), ("R-0001", "3"), ("R-0002", "4")]);
    assert!(
        rows.iter().all(|r| r["changed_fields"].is_empty()),
        "{rows:?}"
    );

    // --failed-only: the failed ticket only.
    let out = output(bin(&db, &["report", "--failed-only"])).await;
    let failed = csv_rows(&out.stdout);
    assert_eq!(failed.len(), 1, "{out:?}");
    assert_eq!(failed[0]["ref"], "R-0002");
    assert_eq!(failed[0]["state"], "failed");
    assert!(failed[0]["error"].contains("t2-f0.jpg"), "{failed:?}");

    // --files: a row per file, with its size, MD5, key and state.
    let out = output(bin(&db, &["report", "--files"])).await;
    let files = csv_rows(&out.stdout);
    assert_eq!(
        out.stdout.lines().next().unwrap(),
        "batch,ref,line,path,size,md5,key,state,error,file_changes"
    );
    assert_eq!(files.len(), 3, "{out:?}");
    let uploaded = &files[0];
    assert_eq!(uploaded["ref"], "R-0000");
    assert_eq!(uploaded["path"], "files/t0-f0.jpg");
    assert_eq!(
        uploaded["size"],
        std::fs::metadata(manifest.file("R-0000", 0))
            .unwrap()
            .len()
            .to_string()
    );
    assert_eq!(
        uploaded["md5"].len(),
        24,
        "base64 of 16 bytes: {uploaded:?}"
    );
    assert!(!uploaded["key"].is_empty(), "{uploaded:?}");
    assert_eq!(uploaded["state"], "uploaded");
    assert_eq!(files[2]["state"], "failed");
    assert!(files[2]["error"].contains("t2-f0.jpg"), "{files:?}");
    let out = output(bin(&db, &["report", "--files", "--failed-only"])).await;
    let failed_files = csv_rows(&out.stdout);
    assert_eq!(failed_files.len(), 1, "{out:?}");
    assert_eq!(failed_files[0]["path"], "files/t2-f0.jpg");

    // R-0001's title changes in the manifest: loading it again keeps the ticket as it was
    // and records which field differed, on which line.
    let original = std::fs::read_to_string(&manifest.path).unwrap();
    std::fs::write(&manifest.path, original.replace("Defect 1,", "Defect one,")).unwrap();
    std::fs::write(manifest.file("R-0002", 0), b"back again").unwrap();
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(r#"ref "R-0001""#), "{out:?}");
    assert!(out.stdout.contains("1 changed ref reported"), "{out:?}");
    let rows = csv_rows(&output(bin(&db, &["report"])).await.stdout);
    let changed = format!("title ({}:3)", manifest.path.display());
    assert_eq!(rows[1]["changed_fields"], changed, "{rows:?}");
    assert_eq!(rows[0]["changed_fields"], "", "{rows:?}");
    let human = output(bin(&db, &["status"])).await;
    assert!(
        human
            .stdout
            .contains("changed since loading: 1 ref kept as first loaded"),
        "{human:?}"
    );
    assert!(
        human.stdout.contains(&format!("R-0001: {changed}")),
        "{human:?}"
    );
    assert_eq!(status_json(&db).await[0]["changed_since_load"], 1);

    // Loaded again as it first was: the note goes.
    std::fs::write(&manifest.path, original).unwrap();
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert!(out.stdout.contains("0 changed refs reported"), "{out:?}");
    let rows = csv_rows(&output(bin(&db, &["report"])).await.stdout);
    assert!(
        rows.iter().all(|r| r["changed_fields"].is_empty()),
        "{rows:?}"
    );
}

/// The README's first command on a fresh machine: no `DATABASE_URL`, no server — the queue
/// is an embedded file in the state directory, the rehearsal's beside the real one, and
/// `status --sandbox` reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_database_url_the_queue_is_an_embedded_file_in_the_state_directory() {
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join(".local/state/visibuild-import");
    let run = |args: &[&str]| {
        let mut cmd = bin_on("", args);
        cmd.env_remove("DATABASE_URL")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", home.path());
        cmd
    };
    let out = output(run(&["import", "samples/manifest.csv", "--sandbox"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("tickets: 12 created"), "{out:?}");
    let rehearsal = state.join("queue-sandbox.db");
    assert!(
        rehearsal.is_file(),
        "the rehearsal's store is {rehearsal:?}"
    );
    assert!(
        out.stderr
            .contains(&format!("store: {}", rehearsal.display())),
        "the path is printed: {out:?}"
    );
    assert!(
        !state.join("queue.db").exists(),
        "the real queue is untouched"
    );

    let out = output(run(&["status", "--sandbox"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("tickets: 12 created"), "{out:?}");
    let out = output(run(&["status"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("no batches yet"), "{out:?}");
    assert!(
        state.join("queue.db").is_file(),
        "the real queue, created on first use"
    );

    // A file that is not a store is a configuration error, said with its path.
    let junk = home.path().join("junk.db");
    std::fs::write(&junk, "not a database, not even close; ".repeat(200)).unwrap();
    let out = output(bin_on(&format!("sqlite:{}", junk.display()), &["status"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "cannot open the embedded store {}",
            junk.display()
        )),
        "{out:?}"
    );

    // XDG_STATE_HOME wins over HOME.
    let xdg = tempfile::tempdir().unwrap();
    let mut cmd = run(&["migrate"]);
    cmd.env("XDG_STATE_HOME", xdg.path());
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(xdg.path().join("visibuild-import/queue.db").is_file());
}

/// Several worker processes on one host share the embedded file: two `run`s at once (with
/// lost create answers and 5xx, so that retries and reviews cross), every ticket once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_sharing_one_embedded_file_create_each_ticket_once() {
    let db = Db::sqlite("shared");
    let sb = start(SandboxConfig {
        fail_rate: 0.05,
        latency: Duration::from_millis(5),
        seed: Some(11),
        ..SandboxConfig::default()
    })
    .await;
    let api = sb.base_url();
    let manifest = Manifest::new(60, |t| 1 + t % 3);
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let args = ["run", "--api-url", &api, "--workers", "4"];
    let first = spawn(with_token(&db, &args));
    let second = spawn(with_token(&db, &args));
    let (a, b) = (first.wait().await, second.wait().await);
    assert_eq!((a.code, b.code), (0, 0), "{a:?}\n{b:?}");
    assert_eq!(created_by_title(&sb), each_once(60));
    // Both did some of the work.
    let created = |out: &Out| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("this run: "))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        !created(&a).starts_with("0 files") && !created(&b).starts_with("0 files"),
        "{a:?}\n{b:?}"
    );
}
