//! Operating the queue for months, through the real binary against the sandbox, on both
//! stores: pause / resume, cancel and retry, every attempt of a ticket, prune.

mod common;

use common::*;
use std::collections::BTreeMap;
use visibuild_sandbox::SandboxConfig;

/// Created tickets by title, as the sandbox saw them.
fn sent_titles(sb: &visibuild_sandbox::Sandbox) -> BTreeMap<String, usize> {
    created_by_title(sb)
}

/// S3 PUTs the sandbox answered, whatever the answer.
fn puts(sb: &visibuild_sandbox::Sandbox) -> u64 {
    sb.stats()
        .requests
        .get("PUT /s3")
        .map_or(0, |by_status| by_status.values().sum())
}

async fn ok(cmd: tokio::process::Command) -> Out {
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    out
}

fn batch_json<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["batch"] == name)
        .unwrap_or_else(|| panic!("no batch {name} in {status}"))
}

on_both!(a_paused_batch_waits_is_cancelled_unsent_and_retried_into_each_ticket_once);
async fn a_paused_batch_waits_is_cancelled_unsent_and_retried_into_each_ticket_once(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    let first = Manifest::with_refs("AAA", 3, |_| 1);
    let second = Manifest::with_refs("BBB", 3, |_| 1);
    ok(bin(&db, &["enqueue", first.arg(), "--batch", "first"])).await;
    ok(bin(&db, &["enqueue", second.arg(), "--batch", "second"])).await;

    let out = ok(bin(&db, &["pause", "--batch", "second"])).await;
    assert!(out.stdout.contains("batch \"second\" paused"), "{out:?}");
    let status = ok(bin(&db, &["status"])).await.stdout;
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("batch second (loaded") && l.ends_with("PAUSED")),
        "status shows the pause: {status}"
    );

    // The first batch finishes; the paused one waits, and the run says so and exits 0.
    let out = ok(with_token(&db, &["run", "--api-url", &api])).await;
    assert!(out.stderr.contains("paused: 3 jobs waiting"), "{out:?}");
    assert_eq!(sb.tickets().len(), 3);
    assert_eq!(puts(&sb), 3);
    let status = status_json(&db).await;
    assert_eq!(batch_json(&status, "first")["tickets"]["created"], 3);
    assert_eq!(batch_json(&status, "second")["paused"], true);
    assert_eq!(batch_json(&status, "second")["tickets"]["pending"], 3);

    // Cancelled, then resumed: nothing of it is sent.
    let out = ok(bin(&db, &["cancel", "--batch", "second"])).await;
    assert!(
        out.stdout.contains("3 tickets cancelled (6 queued jobs)"),
        "{out:?}"
    );
    ok(bin(&db, &["resume", "--batch", "second"])).await;
    let out = ok(with_token(&db, &["run", "--api-url", &api])).await;
    assert!(!out.stderr.contains("paused:"), "{out:?}");
    assert_eq!(
        sb.tickets().len(),
        3,
        "nothing of a cancelled batch is sent"
    );
    assert_eq!(puts(&sb), 3);
    let status = status_json(&db).await;
    let second_status = batch_json(&status, "second");
    assert_eq!(second_status["tickets"]["cancelled"], 3, "{second_status}");
    assert_eq!(second_status["jobs"]["cancelled"], 6, "{second_status}");
    assert_eq!(second_status["paused"], false);

    // Retried: all of it created, each ticket once.
    let out = ok(bin(&db, &["retry", "--batch", "second"])).await;
    assert!(
        out.stdout.contains("3 tickets back in the queue"),
        "{out:?}"
    );
    ok(with_token(&db, &["run", "--api-url", &api])).await;
    assert_eq!(sb.tickets().len(), 6);
    assert_eq!(puts(&sb), 6);
    let twice: BTreeMap<String, usize> = (0..3).map(|t| (format!("Defect {t}"), 2)).collect();
    assert_eq!(
        sent_titles(&sb),
        twice,
        "each manifest's Defect i created once"
    );
    let status = status_json(&db).await;
    assert_eq!(batch_json(&status, "second")["tickets"]["created"], 3);
}

on_both!(a_worker_obeys_pause_and_resume_of_everything_within_seconds);
async fn a_worker_obeys_pause_and_resume_of_everything_within_seconds(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    ok(bin(&db, &["pause"])).await;
    let manifest = Manifest::new(2, |_| 1);
    ok(bin(&db, &["enqueue", manifest.arg()])).await;
    // A run on a fully paused queue says so and exits 0, sending nothing.
    let out = ok(with_token(&db, &["run", "--api-url", &api])).await;
    assert!(out.stderr.contains("paused: 2 jobs waiting"), "{out:?}");
    assert!(sb.tickets().is_empty() && puts(&sb) == 0);

    let worker = spawn(with_token(&db, &["run", "--watch", "--api-url", &api]));
    let out = ok(bin(&db, &["resume"])).await;
    assert!(out.stdout.contains("the queue resumed"), "{out:?}");
    eventually("the watching worker creates both tickets", || async {
        sb.tickets().len() == 2
    })
    .await;
    worker.terminate();
    let out = worker.wait().await;
    assert_ne!(out.code, 0, "stopped by a signal: {out:?}");
    assert_eq!(created_by_title(&sb), each_once(2));
}

on_both!(every_attempt_of_a_ticket_is_listed_with_the_servers_answer);
async fn every_attempt_of_a_ticket_is_listed_with_the_servers_answer(db: Db) {
    let project: uuid::Uuid = PROJECT.parse().unwrap();
    let sb = start(SandboxConfig {
        refuse_projects: vec![project],
        ..Default::default()
    })
    .await;
    let api = sb.base_url();
    let manifest = Manifest::new(1, |_| 0);
    ok(bin(&db, &["enqueue", manifest.arg()])).await;
    let out = output(with_token(&db, &["run", "--api-url", &api])).await;
    assert_eq!(out.code, 1, "the project is refused: {out:?}");
    sb.accept_project(project);
    ok(bin(&db, &["retry", "--ref", "DEF-0000"])).await;
    ok(with_token(&db, &["run", "--api-url", &api])).await;
    assert_eq!(created_by_title(&sb), each_once(1));

    let out = ok(bin(&db, &["status", "--ticket", "DEF-0000"])).await;
    assert!(
        out.stdout.contains("ticket DEF-0000 (batch manifest.csv"),
        "{out:?}"
    );
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("create (job"))
        .collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].contains("attempt 1): failed — ") && lines[0].contains("projectId"),
        "the refusal in the server's words: {out:?}"
    );
    assert!(lines[1].contains("attempt 2): done"), "{out:?}");

    let json = ok(bin(&db, &["status", "--ticket", "DEF-0000", "--json"])).await;
    let tickets: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let attempts = tickets[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{tickets}");
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[1]["outcome"], "done");
    assert_eq!(tickets[0]["state"], "created");

    let out = output(bin(&db, &["status", "--ticket", "NOPE-1"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("no ticket with ref \"NOPE-1\""),
        "{out:?}"
    );
}

on_both!(prune_removes_finished_batches_jobs_and_a_reload_creates_nothing_twice);
async fn prune_removes_finished_batches_jobs_and_a_reload_creates_nothing_twice(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    let done = Manifest::with_refs("OLD", 3, |_| 2);
    let waiting = Manifest::with_refs("NEW", 2, |_| 1);
    ok(with_token(&db, &["import", done.arg(), "--api-url", &api])).await;
    ok(bin(&db, &["enqueue", waiting.arg(), "--batch", "waiting"])).await;
    let store = db.store().await;
    assert_eq!(count_in(&store, "SELECT count(*) FROM jobs").await, 9 + 4);
    // One per job at least (files waiting for the project's first ticket add theirs).
    let attempts = count_in(&store, "SELECT count(*) FROM attempts").await;
    assert!(attempts >= 9, "{attempts}");

    let out = ok(bin(&db, &["prune", "--older-than", "30d"])).await;
    assert!(out.stdout.contains("no jobs removed"), "{out:?}");
    let out = ok(bin(&db, &["prune", "--older-than", "0s"])).await;
    let removed = format!("removed the history of 1 finished batch: 9 jobs, {attempts} attempts");
    assert!(out.stdout.contains(&removed), "{out:?}");
    assert_eq!(
        count_in(&store, "SELECT count(*) FROM jobs").await,
        4,
        "only the unfinished batch's jobs are left"
    );
    assert_eq!(count_in(&store, "SELECT count(*) FROM attempts").await, 0);
    assert_eq!(
        count_in(
            &store,
            "SELECT count(*) FROM tickets WHERE state = 'created' AND visibuild_id IS NOT NULL"
        )
        .await,
        3,
        "the tickets' identities are kept"
    );

    // Request counters older than 30 days go at the start of every run, unasked.
    execute(
        &store,
        match db.kind() {
            Kind::Postgres => {
                "INSERT INTO minute_counters (minute, endpoint, status, requests)
                 VALUES (date_trunc('minute', now() - interval '40 days'), 'old', 200, 1),
                        (date_trunc('minute', now() - interval '20 days'), 'recent', 200, 1)"
            }
            Kind::Sqlite => {
                "INSERT INTO minute_counters (minute, endpoint, status, requests)
                 VALUES (CAST(unixepoch('subsec') * 1000000 AS INTEGER) - 40 * 86400000000, 'old', 200, 1),
                        (CAST(unixepoch('subsec') * 1000000 AS INTEGER) - 20 * 86400000000, 'recent', 200, 1)"
            }
        },
    )
    .await;

    // The same manifest again: every ticket is known and done; nothing is sent.
    let out = ok(with_token(&db, &["import", done.arg(), "--api-url", &api])).await;
    assert!(out.stdout.contains("tickets: 3 created"), "{out:?}");
    assert_eq!(sb.tickets().len(), 3, "nothing created twice");
    assert_eq!(puts(&sb), 6, "nothing uploaded twice");
    assert_eq!(count_in(&store, "SELECT count(*) FROM jobs").await, 4);
    assert_eq!(
        count_in(
            &store,
            "SELECT count(*) FROM minute_counters WHERE endpoint IN ('old', 'recent')"
        )
        .await,
        1,
        "the 40-day-old counter went, the 20-day-old one stays"
    );
    store.close().await;
}

#[tokio::test]
async fn prune_ages_must_be_a_number_and_a_unit() {
    let db = Db::sqlite("age");
    for bad in ["30", "d", "3x", "-1d"] {
        let out = output(bin(&db, &["prune", "--older-than", bad])).await;
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(out.stderr.contains("--older-than"), "{bad}: {out:?}");
    }
    let out = output(bin(&db, &["cancel"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--batch"), "{out:?}");
}

/// A copy of the migrations in `dir` made before this version (those named before
/// `before`), as the previous version applied them.
fn migrations_before(dir: &str, before: &str) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < before {
            std::fs::copy(&path, copy.path().join(name)).unwrap();
        }
    }
    copy
}

#[tokio::test]
async fn an_embedded_store_of_the_previous_version_keeps_its_work_through_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let store = visibuild_queue::Store::open_sqlite(&path, 2).await.unwrap();
    let visibuild_queue::Store::Sqlite(pool) = &store else {
        unreachable!()
    };
    let queue_old = migrations_before("crates/queue/migrations/sqlite", "0023");
    let mut migrator = sqlx::migrate::Migrator::new(queue_old.path())
        .await
        .unwrap();
    migrator.dangerous_set_table_name("_queue_migrations");
    migrator.run(pool).await.unwrap();
    let app_old = migrations_before("migrations/sqlite", "20261203000023");
    sqlx::migrate::Migrator::new(app_old.path())
        .await
        .unwrap()
        .run(pool)
        .await
        .unwrap();
    let (batch, ticket, file) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    for (sql, binds) in [
        (
            "INSERT INTO batches (id, name, manifest_path, files_root) VALUES ($1, 'old', 'm.csv', '.')",
            vec![batch],
        ),
        (
            "INSERT INTO tickets (id, batch_id, project_id, ref, line, title, fields_digest, state,
                                  visibuild_id, error_detail)
             VALUES ($1, $2, $2, 'OLD-1', 2, 'Old', 'd', 'created', 'v-1', '{}')",
            vec![ticket, batch],
        ),
        (
            "INSERT INTO attachments (id, ticket_id, position, path, resolved_path, filename,
                                      content_type, size, state)
             VALUES ($1, $2, 0, 'a.jpg', '/a.jpg', 'a.jpg', 'image/jpeg', 3, 'uploaded')",
            vec![file, ticket],
        ),
        (
            "INSERT INTO jobs (id, kind, state, group_id, target_id, attempt)
             VALUES (41, 'create_ticket', 'completed', $1, $2, 2)",
            vec![batch, ticket],
        ),
    ] {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            q = q.bind(b);
        }
        q.execute(pool).await.unwrap();
    }
    // The highest id handed out goes before the upgrade, which must not hand it out again.
    sqlx::query("DELETE FROM jobs WHERE id = 41")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, kind, state, group_id, target_id, attempt)
         VALUES (40, 'create_ticket', 'completed', $1, $2, 2)",
    )
    .bind(batch)
    .bind(ticket)
    .execute(pool)
    .await
    .unwrap();

    visibuild_import::store::migrate(&store).await.unwrap();
    let kept: (String, String, Option<String>) =
        sqlx::query_as("SELECT ref, state, visibuild_id FROM tickets WHERE id = $1")
            .bind(ticket)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(kept, ("OLD-1".into(), "created".into(), Some("v-1".into())));
    let problems: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(pool)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let on: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(on, 1, "foreign keys are enforced again after the upgrade");
    // The job kept its id; an id once handed out (41, deleted) is never handed out again.
    let ids = visibuild_queue::enqueue(&store, &[visibuild_queue::NewJob::available("k")])
        .await
        .unwrap();
    assert_eq!(ids[0].0, 42);
    assert_eq!(
        visibuild_queue::job(&store, visibuild_queue::JobId(40))
            .await
            .unwrap()
            .unwrap()
            .state,
        visibuild_queue::JobState::Completed
    );
    // The rebuilt table takes the new state.
    sqlx::query("UPDATE tickets SET state = 'cancelled' WHERE id = $1")
        .bind(ticket)
        .execute(pool)
        .await
        .unwrap();
    store.close().await;
}

/// Runs one statement on either store.
async fn execute(store: &visibuild_queue::Store, sql: &'static str) {
    match store {
        visibuild_queue::Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(drop),
        visibuild_queue::Store::Sqlite(p) => sqlx::query(sql).execute(p).await.map(drop),
    }
    .unwrap();
}

on_both!(a_worker_gives_up_unsent_the_job_of_a_ticket_cancelled_after_it_was_queued);
async fn a_worker_gives_up_unsent_the_job_of_a_ticket_cancelled_after_it_was_queued(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(2, |t| t);
    ok(bin(&db, &["enqueue", manifest.arg()])).await;
    // A cancel that raced with a worker: the ticket is cancelled, its jobs are still queued
    // (as when they were running at the cancel and came back to the queue after).
    let store = db.store().await;
    execute(
        &store,
        "UPDATE tickets SET state = 'cancelled' WHERE ref IN ('DEF-0000', 'DEF-0001')",
    )
    .await;
    let out = ok(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert!(out.stdout.contains("2 cancelled"), "{out:?}");
    assert!(sb.tickets().is_empty(), "nothing sent");
    assert_eq!(puts(&sb), 0, "nothing uploaded");
    assert_eq!(
        count_in(
            &store,
            "SELECT count(*) FROM jobs WHERE state = 'cancelled'"
        )
        .await,
        2,
        "the available jobs were given up; the blocked create waits, cancelled with its ticket"
    );
    let out = ok(bin(&db, &["status", "--ticket", "DEF-0001"])).await;
    assert!(
        out.stdout.contains("upload files/t1-f0.jpg (job"),
        "{out:?}"
    );
    assert!(out.stdout.contains("attempt 1): cancelled"), "{out:?}");
    // Retried, both are created once.
    ok(bin(&db, &["retry"])).await;
    ok(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(created_by_title(&sb), each_once(2));
    store.close().await;
}
