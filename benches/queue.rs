//! Queue throughput: bulk-enqueue no-op jobs, then drain them with concurrent workers that
//! claim in batches and complete in batches (one `apply` of many transitions), fencing
//! intact. Run: `cargo bench --bench queue`.
//!
//! The store is `QUEUE_BENCH_STORE`: `postgres` (default; a fresh database
//! `visibuild_import_bench_<pid>` on the server of `DATABASE_URL`, dropped at the end) or
//! `sqlite` (a fresh file in a temporary folder). Knobs: `QUEUE_BENCH_JOBS` (20000),
//! `QUEUE_BENCH_WORKERS` (10), `QUEUE_BENCH_BATCH` (200).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sqlx::Postgres;
use sqlx::migrate::MigrateDatabase;
use visibuild_import::domain::{JobKind, JobState};
use visibuild_import::store;
use visibuild_queue::{self as queue, NewJob, Outcome, Transition};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/visibuild_import";
const ENQUEUE_CHUNK: usize = 5000;
const LEASE: Duration = Duration::from_secs(60);

fn knob(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

fn per_second(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test --all-targets` runs harness-less benches too; only measure under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("queue bench: skipped (run it with `cargo bench --bench queue`)");
        return Ok(());
    }
    let jobs = knob("QUEUE_BENCH_JOBS", 20_000)?;
    let workers = knob("QUEUE_BENCH_WORKERS", 10)?;
    let batch = knob("QUEUE_BENCH_BATCH", 200)?;
    let kind = std::env::var("QUEUE_BENCH_STORE").unwrap_or_else(|_| "postgres".into());

    let dir = tempfile::tempdir()?;
    let url = match kind.as_str() {
        "postgres" => {
            let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
            let mut url = url::Url::parse(&base).context("DATABASE_URL")?;
            url.set_path(&format!("/visibuild_import_bench_{}", std::process::id()));
            let url = url.to_string();
            if Postgres::database_exists(&url).await? {
                Postgres::force_drop_database(&url).await?;
            }
            url
        }
        "sqlite" => store::sqlite_url(&dir.path().join("queue.db")),
        other => anyhow::bail!("QUEUE_BENCH_STORE={other}: postgres or sqlite"),
    };
    let db = store::connect_with(&url, workers as u32 + 2).await?;
    let upload = JobKind::Upload.as_str();

    let started = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(ENQUEUE_CHUNK);
        queue::enqueue(&db, &vec![NewJob::available(upload); n]).await?;
        left -= n;
    }
    let enqueue_time = started.elapsed();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("bench-{w}");
            let mut done = 0usize;
            loop {
                let claimed =
                    queue::claim(&db, None, &[upload], batch as i64, &name, LEASE).await?;
                if claimed.is_empty() {
                    return anyhow::Ok(done);
                }
                let complete: Vec<_> = claimed
                    .iter()
                    .map(|j| Transition::complete(j.job_ref()))
                    .collect();
                let outcomes = queue::apply(&db, &complete).await?;
                ensure!(
                    outcomes.iter().all(|o| *o == Outcome::Done),
                    "fenced out: {outcomes:?}"
                );
                done += complete.len();
            }
        }));
    }
    let mut processed = 0;
    for task in tasks {
        processed += task.await??;
    }
    let process_time = started.elapsed();

    let counts = queue::counts_by_state(&db, None).await?;
    ensure!(
        counts == vec![(upload.to_string(), JobState::Completed, jobs as i64)] && processed == jobs,
        "not every job completed exactly once: processed {processed}, counts {counts:?}"
    );

    println!("store: {kind}, jobs: {jobs}, workers: {workers}, claim/complete batch: {batch}");
    println!(
        "enqueue: {:.0} jobs/s ({jobs} in {:.3}s)",
        per_second(jobs, enqueue_time),
        enqueue_time.as_secs_f64()
    );
    println!(
        "processed: {:.0} jobs/s ({processed} in {:.3}s)",
        per_second(processed, process_time),
        process_time.as_secs_f64()
    );
    println!("total: {:.3}s", (enqueue_time + process_time).as_secs_f64());
    db.close().await;
    if kind == "postgres" {
        Postgres::force_drop_database(&url).await?;
    }
    Ok(())
}
