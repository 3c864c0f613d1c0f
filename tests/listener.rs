//! The dashboard's listener cannot hurt the worker: a flood of idle and half-sent connections
//! against `run --watch --listen` under a low open-files limit leaves every ticket created and
//! is closed by the server; every answer carries the security headers; wrong tokens are slowed.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use visibuild_import::secret::Secret;
use visibuild_import::ui::{self, UiConfig};
use visibuild_sandbox::SandboxConfig;

/// The worker's open-files limit in the flood test.
const WORKER_OPEN_FILES: u64 = 256;
/// Idle connections the test opens against it: many more than it may hold.
const IDLE_CONNECTIONS: usize = 2_000;
const UI_TOKEN: &str = "a-dashboard-token-of-some-length";

/// Lets this test process hold the flood's sockets (the soft limit up to the hard one).
fn raise_own_open_files(needed: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if limit.current.is_some_and(|soft| soft < needed) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(needed.min(hard)),
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    assert!(
        soft >= needed,
        "this test holds {IDLE_CONNECTIONS} sockets: it needs an open-files limit of {needed}, \
         the hard limit is {hard}"
    );
}

/// The binary under `ulimit -n limit`, on `db`, with the sandbox's token.
fn limited(limit: u64, db: &Db, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &db.url)
        .env("VISIBUILD_TOKEN", "sandbox-token")
        .kill_on_drop(true);
    for var in [
        "RUST_LOG",
        "VISIBUILD_CLIENT_ID",
        "VISIBUILD_CLIENT_SECRET",
        "VISIBUILD_API_URL",
        "VISIBUILD_REGION",
        "VISIBUILD_LOG_FORMAT",
        "VISIBUILD_FILES_ROOT",
        "VISIBUILD_OUTAGE_SECS",
        "VISIBUILD_UI_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Poll `f` until it gives a value, or fail after `within`.
async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The "Max open files" line of `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string()
}

/// How many files `pid` holds open.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether the server closed `socket`: it reads to the end (or is reset) before `deadline`.
async fn closed_by_server(
    mut socket: tokio::net::TcpStream,
    deadline: tokio::time::Instant,
) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue, // an answer to half a request (408/400), then the end
        }
    }
}

async fn a_flood_of_idle_connections_leaves_the_worker_its_file_descriptors(db: Db) {
    raise_own_open_files(IDLE_CONNECTIONS as u64 + 1_024);
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    let worker = spawn(limited(
        WORKER_OPEN_FILES,
        &db,
        &[
            "run",
            "--watch",
            "--listen",
            "127.0.0.1:0",
            "--api-url",
            &api,
            "--api-rate",
            "100/s",
            "--upload-rate",
            "100/s",
        ],
    ));
    let pid = worker.child.id().unwrap();
    let listen: SocketAddr = until(
        "the worker says where it listens",
        Duration::from_secs(60),
        || async {
            let stderr = worker.stderr();
            let at = stderr.find("dashboard listening on http://")?
                + "dashboard listening on http://".len();
            stderr[at..].split('/').next()?.parse().ok()
        },
    )
    .await;
    assert!(
        open_files_limit(pid).contains(&WORKER_OPEN_FILES.to_string()),
        "{}",
        open_files_limit(pid)
    );

    // The flood: idle connections, every tenth with half a request's headers. Bounded in
    // time: a listener that stops accepting would otherwise stall every connect.
    let mut flood = Vec::with_capacity(IDLE_CONNECTIONS);
    let mut refused = 0;
    let flood_ends = Instant::now() + Duration::from_secs(60);
    for i in 0..IDLE_CONNECTIONS {
        if Instant::now() > flood_ends {
            refused += IDLE_CONNECTIONS - i;
            break;
        }
        match tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(listen),
        )
        .await
        {
            Ok(Ok(mut socket)) => {
                if i % 10 == 0 {
                    let _ = socket
                        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                        .await;
                }
                flood.push(socket);
            }
            _ => refused += 1,
        }
    }
    let flooded = Instant::now();
    let held = open_files(pid);

    // A batch with files, loaded while the flood holds.
    let tickets = 12;
    let manifest = Manifest::new(tickets, |t| 1 + t % 3);
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    until(
        "every ticket is created",
        Duration::from_secs(120),
        || async { (sb.tickets().len() >= tickets).then_some(()) },
    )
    .await;
    assert_eq!(created_by_title(&sb), each_once(tickets));
    assert!(
        flood.len() as u64 >= 4 * WORKER_OPEN_FILES,
        "{} connections opened, {refused} not",
        flood.len()
    );
    assert!(
        (held as u64) < WORKER_OPEN_FILES * 3 / 4,
        "the worker held {held} files with the flood on"
    );

    // Every idle socket was closed by the server: the header-read timeout (10 s), with a
    // generous margin.
    let deadline = tokio::time::Instant::from_std(flooded) + Duration::from_secs(60);
    let mut closing = tokio::task::JoinSet::new();
    for socket in flood {
        closing.spawn(closed_by_server(socket, deadline));
    }
    let still_open = closing
        .join_all()
        .await
        .into_iter()
        .filter(|closed| !closed)
        .count();
    assert_eq!(
        still_open, 0,
        "connections the server left open a minute on"
    );

    // And the dashboard answers again once they are gone.
    let http = reqwest::Client::new();
    let health = until(
        "/healthz answers after the flood",
        Duration::from_secs(30),
        || async {
            let r = http
                .get(format!("http://{listen}/healthz"))
                .send()
                .await
                .ok()?;
            Some(r.status().as_u16())
        },
    )
    .await;
    assert_eq!(health, 200);

    let rows = report(&db).await;
    assert_eq!(rows.len(), tickets);
    assert!(rows.values().all(|r| r["state"] == "created"), "{rows:?}");
    worker.terminate();
    let out = worker.wait().await;
    assert_eq!(out.code, 143, "{out:?}");
    assert!(
        !out.all().contains("Too many open files"),
        "the worker ran out of file descriptors: {out:?}"
    );
    assert!(
        out.stderr.contains("too many open connections"),
        "the refusals are said: {out:?}"
    );
}
on_both!(a_flood_of_idle_connections_leaves_the_worker_its_file_descriptors);

// ---------------------------------------------------------------------------------------
// In-process: headers and wrong tokens
// ---------------------------------------------------------------------------------------

/// The dashboard over an embedded store of the test's own, served on port 0.
async fn serve(db: &Db, token: Option<&str>) -> (String, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let router = ui::router(
        db.store().await,
        UiConfig {
            token: token.map(Secret::new),
            retry_attempts: 3,
            database_url: db.url.clone(),
        },
    );
    tokio::spawn(ui::serve(listener, router, stop.clone()));
    (base, stop)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[track_caller]
fn assert_guarded(r: &reqwest::Response, status: u16) {
    assert_eq!(r.status().as_u16(), status, "{} {r:?}", r.url());
    let h = r.headers();
    assert_eq!(
        h.get("content-security-policy")
            .map(|v| v.to_str().unwrap()),
        Some(ui::CONTENT_SECURITY_POLICY),
        "{} {status}",
        r.url()
    );
    assert_eq!(h["x-content-type-options"], "nosniff", "{}", r.url());
    assert_eq!(h["x-frame-options"], "DENY", "{}", r.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_content_policy_nosniff_and_frame_denial() {
    let db = Db::sqlite("headers");
    let http = no_redirects();

    let (base, stop) = serve(&db, None).await;
    assert_guarded(&http.get(format!("{base}/")).send().await.unwrap(), 200);
    assert_guarded(
        &http.get(format!("{base}/metrics")).send().await.unwrap(),
        200,
    );
    assert_guarded(
        &http.get(format!("{base}/healthz")).send().await.unwrap(),
        200,
    );
    assert_guarded(
        &http
            .get(format!("{base}/no/such/page"))
            .send()
            .await
            .unwrap(),
        404,
    );
    let missing = format!("{base}/batches/{}", uuid::Uuid::new_v4());
    assert_guarded(&http.get(&missing).send().await.unwrap(), 404);
    let r = http
        .get(format!("{base}/"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 421);
    let r = http
        .post(format!("{base}/batches/{}/retry", uuid::Uuid::new_v4()))
        .header("origin", "http://evil.example")
        .form(&[("csrf", "x"), ("group", "x")])
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 403);
    stop.cancel();

    let (base, stop) = serve(&db, Some(UI_TOKEN)).await;
    assert_guarded(&http.get(format!("{base}/")).send().await.unwrap(), 303);
    assert_guarded(
        &http.get(format!("{base}/login")).send().await.unwrap(),
        200,
    );
    assert_guarded(
        &http.get(format!("{base}/metrics")).send().await.unwrap(),
        401,
    );
    let r = http
        .get(format!("{base}/metrics"))
        .bearer_auth(UI_TOKEN)
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 200);
    stop.cancel();
}

/// The login page's CSRF field.
async fn csrf_of(http: &reqwest::Client, base: &str) -> String {
    let page = http
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find("name=csrf value=\"").unwrap() + "name=csrf value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_five_wrong_tokens_an_address_must_wait_before_its_next_try() {
    let db = Db::sqlite("throttle");
    let (base, stop) = serve(&db, Some(UI_TOKEN)).await;
    let http = no_redirects();
    let metrics = format!("{base}/metrics");

    for _ in 0..5 {
        let r = http
            .get(&metrics)
            .bearer_auth("wrong-token-of-some-length")
            .send()
            .await
            .unwrap();
        assert_guarded(&r, 401);
    }
    // Now even the right token is not looked at until the wait is over.
    let r = http
        .get(&metrics)
        .bearer_auth(UI_TOKEN)
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 429);
    let wait = retry_after(&r);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    let csrf = csrf_of(&http, &base).await;
    let r = http
        .post(format!("{base}/login"))
        .form(&[("csrf", csrf.as_str()), ("token", UI_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 429);
    // Pages without a token still lead to the sign-in form; other addresses are not slowed.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_guarded(&r, 303);
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = elsewhere
        .get(&metrics)
        .bearer_auth(UI_TOKEN)
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 200);

    // Once the wait the server named is over, the right token is taken and forgets the count.
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(300)).await;
    let r = http
        .get(&metrics)
        .bearer_auth(UI_TOKEN)
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 200);
    let r = http
        .get(&metrics)
        .bearer_auth("wrong-token-of-some-length")
        .send()
        .await
        .unwrap();
    assert_guarded(&r, 401);

    // Wrong tokens in the sign-in form count the same way.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let csrf = csrf_of(&other, &base).await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = other
            .post(format!("{base}/login"))
            .form(&[("csrf", csrf.as_str()), ("token", "not-the-token-at-all")])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(retry_after(&r) >= 1);
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    stop.cancel();
}
