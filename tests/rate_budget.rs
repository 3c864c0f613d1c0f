//! One rate budget for every worker process sharing a store: several real `run` processes
//! against the strict sandbox (a token bucket with no burst, whole-second `Retry-After`),
//! on both stores. What the server saw is the judge: tickets created once each, and never
//! more API calls in any second than its limit (+1 for the window's edges).

mod common;

use common::*;
use std::time::Duration;
use visibuild_sandbox::SandboxConfig;

const LIMIT: u32 = 20;

async fn strict_sandbox() -> visibuild_sandbox::Sandbox {
    start(SandboxConfig {
        rate: Some(LIMIT),
        rate_burst: Some(1),
        ..SandboxConfig::default()
    })
    .await
}

fn run_at(db: &Db, api: &str, rate: &str, extra: &[&str]) -> tokio::process::Command {
    let mut args = vec![
        "run",
        "--api-url",
        api,
        "--api-rate",
        rate,
        "--upload-rate",
        "1000/s",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    with_token(db, &args)
}

on_both!(three_processes_at_the_servers_limit_share_it_and_create_each_ticket_once);
async fn three_processes_at_the_servers_limit_share_it_and_create_each_ticket_once(db: Db) {
    let manifest = Manifest::new(40, |t| t % 2);
    let sandbox = strict_sandbox().await;
    let api = sandbox.base_url();
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--quiet"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    // Each process is given the whole limit, as a user adding hosts would.
    let rate = format!("{LIMIT}/s");
    let runs: Vec<Running> = (0..3)
        .map(|_| spawn(run_at(&db, &api, &rate, &[])))
        .collect();
    for run in runs {
        let out = run.wait().await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    assert_eq!(created_by_title(&sandbox), each_once(40));
    let stats = sandbox.stats();
    let calls: u64 = stats
        .requests
        .iter()
        .filter(|(endpoint, _)| endpoint.starts_with("POST /api/"))
        .flat_map(|(_, by_status)| by_status.values())
        .sum();
    assert!(
        stats.api_peak_per_second <= u64::from(LIMIT) + 1,
        "{} API calls arrived within one second (limit {LIMIT}/s)",
        stats.api_peak_per_second
    );
    // The budget runs under the limit by a margin: 429s are rare, not a storm (a 429 pauses
    // every process for its Retry-After, so each one costs the whole run a second).
    assert!(
        stats.rate_limited * 20 <= calls,
        "{} of {calls} calls refused with 429",
        stats.rate_limited
    );
}

on_both!(processes_given_different_rates_share_the_lowest_and_say_so);
async fn processes_given_different_rates_share_the_lowest_and_say_so(db: Db) {
    let manifest = Manifest::new(12, |_| 1);
    let sandbox = strict_sandbox().await;
    let api = sandbox.base_url();
    // A slow worker watches the (empty) queue: it shares the budget at 5/s.
    let slow = spawn(run_at(&db, &api, "5/s", &["--watch"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = output(bin(&db, &["status"])).await;
        if out.stdout.contains("shared by 1 process") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watching worker does not show as sharing the budget: {out:?}; its stderr: {}",
            slow.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--quiet"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let fast = spawn(run_at(&db, &api, &format!("{LIMIT}/s"), &[]));
    let shown = output(bin(&db, &["status"])).await;
    let fast = fast.wait().await;
    assert_eq!(fast.code, 0, "{fast:?}");
    assert!(
        fast.stderr.contains("the lowest, 5/s, applies to all"),
        "the faster process names the rate that applies: {}",
        fast.stderr
    );
    assert!(
        sandbox.stats().api_peak_per_second <= 6,
        "{} API calls within one second at a shared 5/s",
        sandbox.stats().api_peak_per_second
    );
    assert_eq!(created_by_title(&sandbox), each_once(12));
    slow.terminate();
    let slow = slow.wait().await;
    assert_eq!(slow.code, 143, "{slow:?}");
    // While both ran, status named the budget and who shared it.
    assert!(
        shown.stdout.contains("api: ") && shown.stdout.contains("ceiling 5/s"),
        "{}",
        shown.stdout
    );
    let json = status_json(&db).await;
    let budgets = json[0]["rate_budgets"].as_array().expect("rate_budgets");
    let api_budget = budgets.iter().find(|b| b["name"] == "api").unwrap();
    assert_eq!(
        api_budget["processes"].as_array().map(Vec::len),
        Some(0),
        "both left when they stopped: {json}"
    );
}

on_both!(three_processes_never_put_more_files_in_a_second_than_the_upload_rate);
async fn three_processes_never_put_more_files_in_a_second_than_the_upload_rate(db: Db) {
    const UPLOADS: u32 = 10;
    // Two files a ticket, and every call slowed by latency: a presign that took long must
    // not send its PUT late into the slots of the uploads after it.
    let manifest = Manifest::new(24, |_| 2);
    let sandbox = start(SandboxConfig {
        latency: Duration::from_millis(30),
        ..SandboxConfig::default()
    })
    .await;
    let api = sandbox.base_url();
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--quiet"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let upload_rate = format!("{UPLOADS}/s");
    let runs: Vec<Running> = (0..3)
        .map(|_| {
            spawn(with_token(
                &db,
                &[
                    "run",
                    "--api-url",
                    &api,
                    "--api-rate",
                    "1000/s",
                    "--upload-rate",
                    &upload_rate,
                    "--quiet",
                ],
            ))
        })
        .collect();
    for run in runs {
        let out = run.wait().await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    assert_eq!(created_by_title(&sandbox), each_once(24));
    // Slots are the rate less a 3% margin apart, but the server counts arrivals: a PUT
    // that left its slot on time and was delayed on the way (a busy host: here two other
    // suites' processes beside the three) lands closer to the next. Measured: 11 in one
    // second, once in five full suites, never alone. The bound is the one the API's goal
    // sets for three processes (the limit + 1 in any second), and what the README promises.
    let peak = sandbox.stats().upload_peak_per_second;
    assert!(
        peak <= u64::from(UPLOADS) + 1,
        "{peak} PUTs arrived within one second at a shared {UPLOADS}/s"
    );
}

/// The `api` budget's learning as `status --json` shows it (`null` when it never learned).
async fn api_learning(db: &Db) -> serde_json::Value {
    let json = status_json(db).await;
    let budgets = json[0]["rate_budgets"].as_array().expect("rate_budgets");
    let api = budgets
        .iter()
        .find(|b| b["name"] == "api")
        .expect("api budget");
    api["learning"].clone()
}

on_both!(auto_finds_a_limit_nobody_gave_it_and_the_next_run_starts_from_it);
async fn auto_finds_a_limit_nobody_gave_it_and_the_next_run_starts_from_it(db: Db) {
    const TICKETS: usize = 80;
    let first = Manifest::new(TICKETS, |_| 1);
    let sandbox = strict_sandbox().await;
    let api = sandbox.base_url();
    let out = output(bin(&db, &["enqueue", first.arg(), "--quiet"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    // Nobody says the server allows 20/s.
    let out = run_at(&db, &api, "auto", &[]).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(created_by_title(&sandbox), each_once(TICKETS));
    let stats = sandbox.stats();
    let calls: u64 = stats
        .requests
        .iter()
        .filter(|(endpoint, _)| endpoint.starts_with("POST /api/"))
        .flat_map(|(_, by_status)| by_status.values())
        .sum();
    assert!(
        stats.rate_limited * 10 <= calls,
        "{} of {calls} calls refused with 429 while finding the limit",
        stats.rate_limited
    );
    // It climbed from a few calls a second to near the limit, and a 429 taught it where.
    let learned = api_learning(&db).await;
    assert_eq!(learned["origin"], api.trim_end_matches('/'), "{learned}");
    assert_eq!(learned["active"], false, "the run ended: {learned}");
    let limit = learned["limit_per_sec"].as_f64().expect("a learned limit");
    // (Loosely: on a loaded machine calls leave late and spread out, so the server takes
    // a little more than its limit on paper, or refuses a burst below it.)
    assert!(
        limit >= 0.5 * f64::from(LIMIT) && limit <= 1.25 * f64::from(LIMIT),
        "learned {limit}/s of a {LIMIT}/s server: {learned}"
    );
    let taught = learned["last_429_per_sec"]
        .as_f64()
        .expect("a 429 taught it");
    assert!(taught > 0.0, "{learned}");
    let shown = output(bin(&db, &["status"])).await;
    assert!(
        shown.stdout.contains("learned ") && shown.stdout.contains("last 429 at"),
        "{}",
        shown.stdout
    );

    // The next run (a watching worker, so that it can be looked at while it works) starts
    // from what was learned: no slow start from a few calls a second.
    let second = Manifest::with_refs("NEXT", TICKETS, |_| 1);
    let out = output(bin(&db, &["enqueue", second.arg(), "--quiet"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let refused_before = sandbox.stats().rate_limited;
    let next = spawn(run_at(&db, &api, "auto", &["--watch"]));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = api_learning(&db).await;
        if seen["active"] == true {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second run does not learn: {seen}; its stderr: {}",
            next.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(
        seen["phase"], "climbing",
        "it starts from what it learned: {seen}"
    );
    let resumed = seen["limit_per_sec"].as_f64().unwrap();
    assert!(
        resumed >= 0.9 * limit,
        "{resumed}/s, learned {limit}/s: {seen}"
    );
    eventually("the second manifest is created", || async {
        created_by_title(&sandbox).values().all(|n| *n == 2)
            && created_by_title(&sandbox).len() == TICKETS
    })
    .await;
    next.terminate();
    let next = next.wait().await;
    assert_eq!(next.code, 143, "{next:?}");
    let refused = sandbox.stats().rate_limited - refused_before;
    assert!(
        refused * 10 <= (2 * TICKETS) as u64,
        "{refused} 429s in a run of {} calls that started from the learned limit",
        2 * TICKETS
    );
}

#[test]
fn an_api_rate_that_is_neither_a_rate_nor_auto_is_refused_by_name() {
    let out = std::process::Command::new(BIN)
        .args([
            "run",
            "--api-rate",
            "auto:fast",
            "--api-url",
            "http://127.0.0.1:9",
        ])
        .env_remove("VISIBUILD_API_RATE")
        .env("VISIBUILD_TOKEN", "t")
        .env("DATABASE_URL", "sqlite::memory:")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--api-rate") && stderr.contains("auto:N/s"),
        "{stderr}"
    );
}
