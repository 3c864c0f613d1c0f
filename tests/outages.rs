//! Outages as an unattended nightly run meets them, each made real: a TCP forwarder that
//! stops passing bytes is a hung API, one that is killed is a lost database host, a small
//! private tmpfs is a full disk, a listener that answers 404 is the wrong origin, a
//! `kill -9` while a slow rate holds a create back. Each ends as SPEC's Guarantees say: exit
//! 3 past the outage limit (2 for the wrong origin), no attempt used, nothing in review that
//! was never in doubt, and the next run finishes every ticket exactly once.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use visibuild_sandbox::SandboxConfig;

// ---------------------------------------------------------------------------------------
// A TCP forwarder the test can silence or kill
// ---------------------------------------------------------------------------------------

/// Forwards 127.0.0.1:`port` to `target`. Silenced, it passes no more bytes either way on
/// any connection (a server that accepts and never answers); killed, its listener and every
/// connection are gone (a host lost).
struct Forwarder {
    port: u16,
    target: String,
    silent: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Forwarder {
    async fn start(target: &str) -> Self {
        Self::on_port(0, target).await
    }

    async fn on_port(port: u16, target: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let (target_owned, quiet) = (target.to_string(), silent.clone());
        tasks.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (target, quiet) = (target_owned.clone(), quiet.clone());
                connections.spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pipe(cr, sw, quiet.clone()), pipe(sr, cw, quiet));
                });
            }
        });
        Self {
            port,
            target: target.to_string(),
            silent,
            tasks,
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    fn resume(&self) {
        self.silent.store(false, Ordering::SeqCst);
    }

    /// The listener and every connection closed at once.
    async fn kill(mut self) -> (u16, String) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        (self.port, self.target.clone())
    }
}

/// Copy `from` to `to` while not silenced; silenced, hold what was read and pass nothing.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while silent.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A manifest of `tickets` tickets without files.
fn fileless(tickets: usize) -> Manifest {
    Manifest::new(tickets, |_| 0)
}

async fn in_store(db: &Db, sql: &'static str) -> i64 {
    count_in(&db.store().await, sql).await
}

/// Nothing failed, nothing needs review, no attempt used up.
async fn nothing_was_failed_for_it(db: &Db) {
    assert_eq!(
        in_store(
            db,
            "SELECT count(*) FROM tickets WHERE state IN ('failed', 'needs_review')"
        )
        .await,
        0,
        "no ticket failed or sent to review for an outage"
    );
    assert_eq!(
        in_store(
            db,
            "SELECT count(*) FROM jobs WHERE state = 'failed' OR attempt >= max_attempts"
        )
        .await,
        0,
        "no job failed, no attempt used up"
    );
}

// ---------------------------------------------------------------------------------------
// An API that accepts connections and never answers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_api_at_the_start_exits_3_before_anything_is_loaded() {
    let db = Db::sqlite("silent-start");
    let sb = start(SandboxConfig::default()).await;
    let forwarder = Forwarder::start(&sb.base_url()[7..]).await;
    forwarder.silence();
    let manifest = Manifest::new(5, |_| 1);
    let mut cmd = with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &forwarder.origin()],
    );
    cmd.env("VISIBUILD_OUTAGE_SECS", "5");
    let started = Instant::now();
    let out = output(cmd).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5 + 30 + 30),
        "within the outage limit plus an answer timeout (and its probe): {:?}",
        started.elapsed()
    );
    assert!(
        out.stderr.contains("the Visibuild API down"),
        "names what is down: {out:?}"
    );
    assert!(out.stderr.contains("nothing was loaded or sent"), "{out:?}");
    assert!(sb.tickets().is_empty());
}

on_both!(an_api_that_stops_answering_mid_run_pauses_uses_no_attempt_and_exits_3);
async fn an_api_that_stops_answering_mid_run_pauses_uses_no_attempt_and_exits_3(db: Db) {
    let sb = start(SandboxConfig {
        latency: Duration::from_millis(40),
        ..SandboxConfig::default()
    })
    .await;
    let forwarder = Forwarder::start(&sb.base_url()[7..]).await;
    let manifest = Manifest::new(60, |_| 1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let mut cmd = with_token(
        &db,
        &["run", "--api-url", &forwarder.origin(), "--workers", "4"],
    );
    cmd.env("VISIBUILD_OUTAGE_SECS", "8");
    let run = spawn(cmd);
    eventually("some tickets are created", || async {
        sb.tickets().len() >= 5
    })
    .await;
    forwarder.silence();
    let silenced = Instant::now();
    let out = run.wait().await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        silenced.elapsed() < Duration::from_secs(8 + 30 + 30),
        "exits within the outage limit plus an answer timeout: {:?}",
        silenced.elapsed()
    );
    assert!(
        out.stderr.contains("the Visibuild API down since"),
        "{out:?}"
    );
    nothing_was_failed_for_it(&db).await;
    assert_eq!(
        in_store(&db, "SELECT count(*) FROM jobs WHERE state = 'running'").await,
        0,
        "in-flight jobs released"
    );

    // Answering again: the same queue finishes, each ticket once.
    forwarder.resume();
    let out = output(with_token(&db, &["run", "--api-url", &forwarder.origin()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(60));
}

// ---------------------------------------------------------------------------------------
// The Postgres host lost mid-run
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_host_exits_3_and_the_next_run_resumes_at_once() {
    let direct = Db::new("host-lost");
    let forwarder = Forwarder::start("127.0.0.1:5432").await;
    let mut url = url::Url::parse(&direct.url).unwrap();
    url.set_port(Some(forwarder.port)).unwrap();
    let via = url.to_string();
    let sb = start(SandboxConfig {
        latency: Duration::from_millis(40),
        ..SandboxConfig::default()
    })
    .await;
    let manifest = Manifest::new(60, |t| t % 2);
    assert_eq!(
        output(bin_on(&via, &["enqueue", manifest.arg()]))
            .await
            .code,
        0
    );
    let mut cmd = bin_on(
        &via,
        &["run", "--api-url", &sb.base_url(), "--workers", "4"],
    );
    cmd.env("VISIBUILD_TOKEN", "sandbox-token")
        .env("VISIBUILD_OUTAGE_SECS", "8");
    let run = spawn(cmd);
    eventually("some tickets are created", || async {
        sb.tickets().len() >= 5
    })
    .await;
    let (port, target) = forwarder.kill().await;
    let lost = Instant::now();
    let out = run.wait().await;
    assert_eq!(
        out.code, 3,
        "the store lost is an outage, not a failure: {out:?}"
    );
    assert!(
        lost.elapsed() < Duration::from_secs(8 + 30 + 30),
        "within the outage limit plus a request timeout: {:?}",
        lost.elapsed()
    );
    assert!(
        out.stderr.contains("the queue's store down since"),
        "{out:?}"
    );

    // The host is back: the next run takes back the dead run's leases at once (not after
    // the 2-minute lease) and finishes every ticket once.
    let _back = Forwarder::on_port(port, &target).await;
    nothing_was_failed_for_it(&direct).await;
    let mut cmd = bin_on(&via, &["run", "--api-url", &sb.base_url()]);
    cmd.env("VISIBUILD_TOKEN", "sandbox-token");
    let resumed = Instant::now();
    let out = output(cmd).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        resumed.elapsed() < Duration::from_secs(100),
        "resumed without waiting out a 120 s lease: {:?}",
        resumed.elapsed()
    );
    assert_eq!(created_by_title(&sb), each_once(60));
}

// ---------------------------------------------------------------------------------------
// The embedded store's disk full
// ---------------------------------------------------------------------------------------

/// The importer on a store in a 16 MiB tmpfs of its own mount namespace: loaded, then run;
/// the disk is filled while it runs and freed after it gave up; then run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_embedded_store_loses_no_answer() {
    let sb = start(SandboxConfig::default()).await;
    let manifest = fileless(150);
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("full.sh");
    let disk = work.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    std::fs::write(
        &script,
        r#"set -u
mount -t tmpfs -o size=16m tmpfs "$DISK" || exit 90
export DATABASE_URL="sqlite:$DISK/queue.db"
"$BIN" enqueue "$MANIFEST" >"$OUT/enqueue.log" 2>&1 || exit 91
"$BIN" run --api-url "$API" --api-rate 25/s >"$OUT/first.log" 2>&1 &
run=$!
# Fill the disk once the run is under way, and keep it full until the run gives up.
for _ in $(seq 1 200); do
  n=$(curl -s "$API/sandbox/tickets" | grep -o '"id"' | wc -l)
  [ "$n" -ge 10 ] && break
  sleep 0.05
done
dd if=/dev/zero of="$DISK/fill" bs=4k >/dev/null 2>&1
wait $run
echo "first=$?" >"$OUT/codes"
rm -f "$DISK/fill"
"$BIN" run --api-url "$API" >"$OUT/second.log" 2>&1
echo "second=$?" >>"$OUT/codes"
"$BIN" status --json >"$OUT/status.json" 2>"$OUT/status.log"
"#,
    )
    .unwrap();
    let status = tokio::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh"])
        .arg(&script)
        .env("DISK", &disk)
        .env("BIN", BIN)
        .env("MANIFEST", manifest.arg())
        .env("API", sb.base_url())
        .env("OUT", work.path())
        .env("VISIBUILD_TOKEN", "sandbox-token")
        .env("VISIBUILD_OUTAGE_SECS", "6")
        .env_remove("RUST_LOG")
        .status()
        .await
        .expect("unshare runs (the tests run as root)");
    let log = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    assert!(
        status.success(),
        "the script ran: {status:?}\n{}",
        log("enqueue.log")
    );
    let codes = log("codes");
    assert!(
        codes.contains("first=3"),
        "a full disk is an outage: exit 3\n{codes}\n{}",
        log("first.log")
    );
    assert!(
        log("first.log").contains("the queue's store down since"),
        "{}",
        log("first.log")
    );
    assert!(
        codes.contains("second=0"),
        "the next run finishes\n{codes}\n{}",
        log("second.log")
    );
    assert_eq!(created_by_title(&sb), each_once(150), "each ticket once");
    let status: serde_json::Value = serde_json::from_str(&log("status.json"))
        .unwrap_or_else(|e| panic!("{e}: {}", log("status.log")));
    let tickets = &status[0]["tickets"];
    assert_eq!(tickets["created"], 150, "{status}");
    assert_eq!(
        tickets["needs_review"].as_i64().unwrap_or(0),
        0,
        "an answer received while the disk was full was recorded, not sent to review: {status}"
    );
}

// ---------------------------------------------------------------------------------------
// An origin that does not serve the API
// ---------------------------------------------------------------------------------------

/// Answers 404 to every request.
async fn not_found_origin() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = "HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nNot Found";
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}")
}

on_both!(an_origin_that_answers_404_is_refused_before_any_ticket_fails);
async fn an_origin_that_answers_404_is_refused_before_any_ticket_fails(db: Db) {
    let origin = not_found_origin().await;
    let manifest = Manifest::new(4, |t| t % 2);
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &origin],
    ))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("this origin does not serve the Visibuild API"),
        "{out:?}"
    );
    // `run` on a loaded queue: refused the same way, nothing failed.
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let out = output(with_token(&db, &["run", "--api-url", &origin])).await;
    assert_eq!(out.code, 2, "{out:?}");
    nothing_was_failed_for_it(&db).await;
}

// ---------------------------------------------------------------------------------------
// kill -9 while a create waits for its rate slot
// ---------------------------------------------------------------------------------------

on_both!(a_create_waiting_for_its_rate_slot_is_not_marked_sent);
async fn a_create_waiting_for_its_rate_slot_is_not_marked_sent(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let manifest = fileless(6);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    // One call every 4 s: every create but the first waits seconds for its turn.
    let cmd = with_token(
        &db,
        &["run", "--api-url", &sb.base_url(), "--api-rate", "15/min"],
    );
    let mut run = spawn(cmd);
    eventually("the first create landed", || async {
        !sb.tickets().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = run.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = run.child.wait().await;
    let sent = sb.tickets().len() as i64;
    assert_eq!(
        in_store(
            &db,
            "SELECT count(*) FROM tickets WHERE create_sent_at IS NOT NULL"
        )
        .await,
        sent,
        "only creates that left are marked as possibly landed"
    );

    // The next run (at full speed) creates the rest; nothing needs review.
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(created_by_title(&sb), each_once(6));
}

// ---------------------------------------------------------------------------------------
// A process sharing the rate budget dies
// ---------------------------------------------------------------------------------------

/// How many processes `status` says share the API budget.
async fn api_budget_processes(db: &Db) -> Option<usize> {
    let json = status_json(db).await;
    let budgets = json[0]["rate_budgets"].as_array()?;
    let api = budgets.iter().find(|b| b["name"] == "api")?;
    api["processes"].as_array().map(Vec::len)
}

on_both!(a_dead_processs_low_rate_stops_counting_at_once);
async fn a_dead_processs_low_rate_stops_counting_at_once(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    let manifest = fileless(1);
    assert_eq!(output(bin(&db, &["enqueue", manifest.arg()])).await.code, 0);
    let watch = |rate: &str| {
        with_token(
            &db,
            &["run", "--watch", "--api-url", &api, "--api-rate", rate],
        )
    };
    let mut slow = spawn(watch("2/s"));
    let fast = spawn(watch("20/s"));
    eventually("both processes share the budget", || async {
        api_budget_processes(&db).await == Some(2)
    })
    .await;
    let pid = slow.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = slow.child.wait().await;
    let gone = Instant::now();
    eventually("the dead process no longer shares the budget", || async {
        api_budget_processes(&db).await == Some(1)
    })
    .await;
    // A silent member is forgotten after 20 s; a dead one at the survivor's next check-in.
    assert!(
        gone.elapsed() < Duration::from_secs(12),
        "the dead process's rate counted for {:?}",
        gone.elapsed()
    );
    fast.terminate();
    let fast = fast.wait().await;
    assert!(
        fast.stderr
            .contains("a process sharing the rate budget is gone"),
        "{fast:?}"
    );
}
