//! The operations dashboard in a real browser (headless Chromium driven through
//! chromedriver), `/metrics` and `/healthz` from a running worker, and the dashboard's
//! guards: a token off loopback, CSRF and Origin checks on actions, no secrets shown.

mod common;

use common::*;
use fantoccini::{ClientBuilder, Locator};
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use visibuild_import::secret::Secret;
use visibuild_import::ui::{self, UiConfig};
use visibuild_sandbox::SandboxConfig;

// ---------------------------------------------------------------------------------------
// A real browser
// ---------------------------------------------------------------------------------------

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver in a process group of its own (Chromium joins it), killed whole on drop.
struct Driver {
    child: std::process::Child,
    port: u16,
    _profile: tempfile::TempDir,
    profile_dir: PathBuf,
    chromium: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

const INSTALL: &str = "install them with `apt-get update && apt-get install -y chromium chromium-driver` \
     (.ci/run does this when they are missing)";

/// Start chromedriver on a free port. Fails the test, never skips it, when the browser or
/// its driver is not installed.
async fn driver() -> Driver {
    use std::os::unix::process::CommandExt;
    let chromedriver = on_path(&["chromedriver"]).unwrap_or_else(|| {
        panic!("chromedriver is not installed: the dashboard test drives a real browser; {INSTALL}")
    });
    let chromium =
        on_path(&["chromium", "chromium-browser", "google-chrome"]).unwrap_or_else(|| {
            panic!("chromium is not installed: the dashboard test drives a real browser; {INSTALL}")
        });
    let port = free_port();
    let profile = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        port,
        profile_dir: profile.path().to_path_buf(),
        _profile: profile,
        chromium,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not start listening"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    driver
}

/// A headless Chromium session with a fresh profile.
async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": driver.chromium,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,1900",
                format!("--user-data-dir={}", driver.profile_dir.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver")
}

/// The dashboard router over `pool`, served in-process on port 0.
async fn serve(pool: PgPool, config: UiConfig) -> (String, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let router = ui::router(visibuild_queue::Store::Postgres(pool), config);
    tokio::spawn(ui::serve(listener, router, stop.clone()));
    (base, stop)
}

fn config(db: &Db) -> UiConfig {
    UiConfig {
        token: None,
        retry_attempts: 8,
        database_url: db.url.clone(),
    }
}

/// Where a screenshot goes: always beside the build, and to `docs/dashboard.png` when
/// `VISIBUILD_UPDATE_SCREENSHOT` is set (so a plain test run leaves the tree as it was).
fn save_screenshot(png: &[u8]) {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&target, png).unwrap();
    if std::env::var_os("VISIBUILD_UPDATE_SCREENSHOT").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join("dashboard.png"), png).unwrap();
    }
}

/// Wait for the page that says, in its flash line, what the last action did.
async fn flash(client: &fantoccini::Client, says: &str) {
    let xpath = format!("//p[@class='flash' and contains(., '{says}')]");
    if let Err(e) = client.wait().for_element(Locator::XPath(&xpath)).await {
        panic!(
            "no flash saying {says:?} ({e}): {}",
            page_text(client).await
        );
    }
}

async fn page_text(client: &fantoccini::Client) -> String {
    client
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_failures_by_reason_in_a_browser_and_puts_a_group_back_in_the_queue() {
    let db = Db::new("dash");
    // One ticket whose create answer is lost: it needs review.
    let lossy = start(SandboxConfig {
        drop_rate: 1.0,
        ..Default::default()
    })
    .await;
    let review = Manifest::with_refs("REV", 1, |_| 0);
    let out = output(bin(&db, &["enqueue", review.arg(), "--batch", "site-a"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = output(with_token(&db, &["run", "--api-url", &lossy.base_url()])).await;
    assert_eq!(out.code, 1, "{out:?}");

    // Six tickets; three files vanish and one is emptied after loading.
    let manifest = Manifest::new(6, |t| if t < 4 { 2 } else { 1 });
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--batch", "site-a"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    for (r, i) in [(0, 0), (1, 1), (2, 0)] {
        std::fs::remove_file(manifest.file(&reference(r), i)).unwrap();
    }
    std::fs::write(manifest.file(&reference(3), 0), b"").unwrap();
    let sb = start(SandboxConfig::default()).await;
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 1, "{out:?}");

    // The work is over: move it two minutes back, so that the page does not reload itself
    // (it does while work is going on) under the clicks below.
    let pool = db.pool().await;
    sqlx::query(
        "UPDATE attachments SET uploaded_at = uploaded_at - interval '2 minutes'
          WHERE uploaded_at IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE tickets SET finished_at = finished_at - interval '2 minutes'
          WHERE finished_at IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE minute_counters SET minute = minute - interval '2 minutes'")
        .execute(&pool)
        .await
        .unwrap();
    let (base, stop) = serve(pool.clone(), config(&db)).await;
    let driver = driver().await;
    let client = browser(&driver).await;

    client.goto(&format!("{base}/")).await.unwrap();
    let text = page_text(&client).await;
    assert!(text.contains("site-a"), "{text}");
    assert!(text.contains("2 created"), "{text}");
    client
        .find(Locator::LinkText("site-a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    if let Err(e) = client.wait().for_element(Locator::Id("failures")).await {
        panic!("{e}: {}", client.source().await.unwrap());
    }
    let text = page_text(&client).await;
    assert!(text.contains("Failures by reason (2)"), "{text}");
    assert!(text.contains("‹file›: no longer exists"), "{text}");
    assert!(text.contains("3 jobs · 3 tickets"), "{text}");
    assert!(text.contains("1 job · 1 ticket "), "{text}");
    assert!(
        text.contains("‹file›: the file is empty (0 bytes)"),
        "{text}"
    );
    assert!(text.contains("Needs review (1)"), "{text}");
    assert!(text.contains("REV-0000"), "{text}");
    assert!(
        text.contains("Throughput (this batch), per minute"),
        "{text}"
    );
    let charts = client.find_all(Locator::Css(".chart svg")).await.unwrap();
    assert_eq!(charts.len(), 3);
    save_screenshot(&client.screenshot().await.unwrap());

    // The ticket list finds the failed tickets by reason (a file's error) and state.
    client
        .goto(&format!(
            "{base}/tickets?reason=no+longer+exists&state=failed"
        ))
        .await
        .unwrap();
    let listed = client
        .find(Locator::Id("tickets"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for t in 0..3 {
        assert!(listed.contains(&reference(t)), "{listed}");
    }
    assert!(!listed.contains(&reference(3)), "{listed}");
    client.back().await.unwrap();
    client
        .wait()
        .for_element(Locator::Id("failures"))
        .await
        .unwrap();

    // Retry the "no longer exists" group: its three upload jobs go back in the queue.
    client
        .find(Locator::XPath(
            "//form[input[@name='group' and @value='‹file›: no longer exists']]//button",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    flash(&client, "3 failed jobs of 3 tickets back in the queue").await;
    let text = page_text(&client).await;
    assert!(text.contains("Failures by reason (1)"), "{text}");
    assert!(!text.contains("‹file›: no longer exists"), "{text}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE kind = 'upload' AND state = 'available'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE kind = 'upload' AND state = 'failed'"
        )
        .await,
        1
    );

    // Retry one ticket: the emptied file's.
    client
        .find(Locator::XPath(
            "//tr[td[text()='DEF-0003']]//button[text()='Retry ticket']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    flash(&client, "1 failed job of 1 ticket back in the queue").await;
    assert!(page_text(&client).await.contains("Failures by reason (0)"));
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs WHERE kind = 'upload' AND state = 'failed'"
        )
        .await,
        0
    );

    // Re-send the ticket needing review, through its confirm step.
    client
        .find(Locator::LinkText("Re-send…"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = page_text(&client).await;
    assert!(text.contains("Re-send ticket REV-0000?"), "{text}");
    assert!(text.contains("Check first"), "{text}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets WHERE state = 'needs_review'"
        )
        .await,
        1,
        "the confirm page alone changes nothing"
    );
    client
        .find(Locator::Css("button.danger"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    flash(&client, "REV-0000 is back in the queue").await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets t JOIN jobs j ON j.target_id = t.id
              WHERE t.ref = 'REV-0000' AND t.state = 'pending'
                AND j.kind = 'create_ticket' AND j.state = 'available'"
        )
        .await,
        1
    );

    client.close().await.unwrap();
    stop.cancel();
}

// ---------------------------------------------------------------------------------------
// /metrics and /healthz
// ---------------------------------------------------------------------------------------

/// Poll `f` until it gives a value, or fail after a minute.
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_metrics_and_healthz_while_it_runs() {
    let db = Db::new("metrics");
    let sb = start(SandboxConfig::default()).await;
    let manifest = Manifest::new(3, |_| 2);
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = spawn(with_token(
        &db,
        &[
            "run",
            "--watch",
            "--listen",
            &listen,
            "--api-url",
            &sb.base_url(),
            "--api-rate",
            "50/s",
            "--upload-rate",
            "40/s",
        ],
    ));
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");

    let health = until("/healthz answers", || async {
        let r = http.get(format!("{base}/healthz")).send().await.ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    })
    .await;
    assert_eq!(health, (200, "ok\n".to_string()));

    // Counters reach the store within a flush (every few seconds).
    let text = until(
        "the created tickets and their requests show in /metrics",
        || async {
            let text = http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let done = sample(&text, r#"visibuild_tickets{state="created"}"#) == Some(3.0)
                && sample(
                    &text,
                    r#"visibuild_api_requests_total{endpoint="upload",status="200"}"#,
                ) == Some(6.0);
            done.then_some(text)
        },
    )
    .await;
    assert_eq!(
        sample(&text, r#"visibuild_jobs{kind="upload",state="completed"}"#),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"visibuild_jobs{kind="create_ticket",state="completed"}"#
        ),
        Some(3.0),
        "{text}"
    );
    let presigned = text
        .lines()
        .filter(|l| l.starts_with(r#"visibuild_api_requests_total{endpoint="presign",status="2"#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(presigned, 6.0, "{text}");
    assert_eq!(
        sample(&text, "visibuild_rate_limited_total"),
        Some(0.0),
        "{text}"
    );
    let bytes: u64 = (0..3)
        .flat_map(|t| (0..2).map(move |f| (t, f)))
        .map(|(t, f)| {
            std::fs::metadata(manifest.file(&reference(t), f))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(
        sample(&text, "visibuild_uploaded_bytes_total"),
        Some(bytes as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"visibuild_rate_budget_per_second{limit="api"}"#),
        Some(50.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"visibuild_rate_budget_per_second{limit="upload"}"#),
        Some(40.0),
        "{text}"
    );
    let last = sample(&text, "visibuild_last_ticket_created_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 600.0, "{last} vs {now}");

    worker.terminate();
    let out = worker.wait().await;
    assert_eq!(out.code, 143, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("dashboard listening on http://{listen}/")),
        "{out:?}"
    );
}

#[tokio::test]
async fn healthz_is_503_when_the_store_cannot_be_reached() {
    let db = Db::new("health");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    let (base, stop) = serve(pool, config(&db)).await;
    let response = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.unwrap(), "store unreachable\n");
    stop.cancel();
}

// ---------------------------------------------------------------------------------------
// Guards
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ui_and_run_refuse_a_non_loopback_address_without_a_token_and_exit_2() {
    let db = Db::new("exposed");
    let out = output(bin(&db, &["ui", "--listen", "0.0.0.0:0"])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("--listen 0.0.0.0:0 is not a loopback address: set --ui-token"),
        "{out:?}"
    );
    let out = output(with_token(
        &db,
        &[
            "run",
            "--listen",
            "0.0.0.0:0",
            "--api-url",
            "http://127.0.0.1:1",
        ],
    ))
    .await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("VISIBUILD_UI_TOKEN"), "{out:?}");
    let mut short = bin(&db, &["ui", "--listen", "0.0.0.0:0"]);
    short.env("VISIBUILD_UI_TOKEN", "short");
    let out = output(short).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("at least 16 characters"), "{out:?}");
}

const UI_TOKEN: &str = "correct-horse-battery-staple";

/// The value of the hidden CSRF field in a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=csrf value=\"").expect("a CSRF field") + "name=csrf value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_every_page_asks_for_it_and_actions_need_this_servers_form() {
    let db = Db::new("guard");
    let manifest = Manifest::new(1, |_| 1);
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--batch", "b"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let pool = db.pool().await;
    let batch: uuid::Uuid = sqlx::query_scalar("SELECT id FROM batches")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut shown = db.url.replace("postgres@", "postgres:hunter2@");
    shown.push_str("?password=hunter3");
    let (base, stop) = serve(
        pool,
        UiConfig {
            token: Some(Secret::new(UI_TOKEN)),
            database_url: shown,
            ..config(&db)
        },
    )
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let bearer = format!("Bearer {UI_TOKEN}");

    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/metrics"))
        .header("authorization", "Bearer wrong-token-of-some-length")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/metrics"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("visibuild_tickets"));
    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "liveness needs no token");

    // Signing in: a wrong token is refused, the right one sets a strict session cookie.
    let login = http
        .get(format!("{base}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&login);
    let r = http
        .post(format!("{base}/login"))
        .form(&[("csrf", csrf.as_str()), ("token", "not-the-token-at-all")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{base}/login"))
        .form(&[("csrf", csrf.as_str()), ("token", UI_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(UI_TOKEN),
        "the cookie is a session, not the token"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/batches/{batch}"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Batch b"), "{page}");
    for secret in ["hunter2", "hunter3", UI_TOKEN] {
        assert!(!page.contains(secret), "{secret} shown in {page}");
    }

    // An action needs this server's CSRF token, and no other site's Origin.
    let retry = format!("{base}/batches/{batch}/retry");
    let r = http
        .post(&retry)
        .header("cookie", &session)
        .form(&[("csrf", "forged"), ("group", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(&retry)
        .header("cookie", &session)
        .header("origin", "http://evil.example")
        .form(&[("csrf", csrf.as_str()), ("group", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(&retry)
        .header("cookie", &session)
        .header("origin", &base)
        .form(&[("csrf", csrf.as_str()), ("group", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .contains("retried=0"),
        "{r:?}"
    );
    stop.cancel();
}

#[tokio::test]
async fn without_a_token_only_loopback_host_names_are_answered() {
    let db = Db::new("rebind");
    assert_eq!(output(bin(&db, &["migrate"])).await.code, 0);
    let (base, stop) = serve(db.pool().await, config(&db)).await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421, "a DNS-rebound name is refused");
    stop.cancel();
}

#[tokio::test]
async fn the_page_reloads_itself_only_while_work_is_going_on() {
    let db = Db::new("live");
    let manifest = Manifest::new(1, |_| 1);
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--batch", "b"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let pool = db.pool().await;
    let (base, stop) = serve(pool.clone(), config(&db)).await;
    let refreshes = |page: &str| page.contains("http-equiv=\"refresh\"");
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!refreshes(&page), "queued work alone is not work going on");
    sqlx::query("UPDATE jobs SET state = 'running', locked_until = now() + interval '1 minute' WHERE kind = 'upload'")
        .execute(&pool)
        .await
        .unwrap();
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(refreshes(&page), "a job held by a worker is");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_serves_the_dashboard_until_a_signal() {
    visibuild_import::visibuild::use_ring_for_tls();
    let db = Db::new("uibin");
    let manifest = Manifest::new(1, |_| 1);
    let out = output(bin(&db, &["enqueue", manifest.arg(), "--batch", "night-1"])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let server = spawn(bin(&db, &["ui", "--listen", "127.0.0.1:0"]));
    let base = until("ui says on stderr where it listens", || async {
        let stderr = std::fs::read_to_string(&server.stderr).unwrap_or_default();
        let at = stderr.find("dashboard listening on ")? + "dashboard listening on ".len();
        Some(
            stderr[at..]
                .split('/')
                .take(3)
                .collect::<Vec<_>>()
                .join("/"),
        )
    })
    .await;
    let page = reqwest::get(format!("{base}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("night-1"), "{page}");
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    server.terminate();
    let out = server.wait().await;
    assert_eq!(out.code, 0, "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Operating it: pause / resume, cancel, retry, prune, the ticket list and a ticket's page
// ---------------------------------------------------------------------------------------

/// Moves every finished thing two minutes back, so that pages do not reload themselves
/// (they do for half a minute after work) under the clicks that follow.
async fn age(pool: &PgPool) {
    for sql in [
        "UPDATE attachments SET uploaded_at = uploaded_at - interval '2 minutes'
          WHERE uploaded_at IS NOT NULL",
        "UPDATE tickets SET finished_at = finished_at - interval '2 minutes'
          WHERE finished_at IS NOT NULL",
        "UPDATE jobs SET finished_at = finished_at - interval '2 minutes'
          WHERE finished_at IS NOT NULL",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

/// Follow the link (or button) with this id, expecting a confirmation page that changes
/// nothing by itself, then confirm, and wait for the page saying what was done.
async fn confirmed(client: &fantoccini::Client, id: &str, question: &str, says: &str) {
    confirmation(client, id, question).await;
    confirm(client, says).await;
}

/// Follow the link (or button) with this id and wait for the confirmation page asking
/// `question` (it changes nothing by itself).
async fn confirmation(client: &fantoccini::Client, id: &str, question: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id} ({e})"))
        .click()
        .await
        .unwrap();
    if let Err(e) = client.wait().for_element(Locator::Id("confirm")).await {
        panic!(
            "no confirmation for #{id} ({e}): {}",
            page_text(client).await
        );
    }
    let text = page_text(client).await;
    assert!(text.contains(question), "{text}");
}

/// Press the confirmation page's button and wait for the page saying what was done.
async fn confirm(client: &fantoccini::Client, says: &str) {
    client
        .find(Locator::Id("confirm"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    flash(client, says).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_cancels_retries_and_prunes_in_a_browser() {
    let db = Db::new("dashops");
    let sb = start(SandboxConfig::default()).await;
    let api = sb.base_url();
    let first = Manifest::with_refs("ONE", 2, |_| 1);
    let second = Manifest::with_refs("TWO", 2, |_| 1);
    for (m, name) in [(&first, "first"), (&second, "second")] {
        let out = output(bin(&db, &["enqueue", m.arg(), "--batch", name])).await;
        assert_eq!(out.code, 0, "{out:?}");
    }
    let run = || async {
        let out = output(with_token(&db, &["run", "--api-url", &api])).await;
        assert_eq!(out.code, 0, "{out:?}");
        out
    };
    let pool = db.pool().await;
    let (base, stop) = serve(pool.clone(), config(&db)).await;
    let driver = driver().await;
    let client = browser(&driver).await;

    // Pause everything: the confirmation alone changes nothing; a run then sends nothing.
    client.goto(&format!("{base}/")).await.unwrap();
    confirmation(&client, "pause", "Pause everything?").await;
    assert_eq!(count(&pool, "SELECT count(*) FROM queue_pauses").await, 0);
    client.goto(&format!("{base}/")).await.unwrap();
    confirmed(&client, "pause", "Pause everything?", "Paused everything").await;
    assert!(page_text(&client).await.contains("Everything is paused"));
    let out = run().await;
    assert!(out.stderr.contains("paused: 4 jobs waiting"), "{out:?}");
    assert!(sb.tickets().is_empty());
    confirmed(
        &client,
        "resume",
        "Resume everything?",
        "Resumed everything",
    )
    .await;
    assert_eq!(count(&pool, "SELECT count(*) FROM queue_pauses").await, 0);

    // Pause the second batch: the first one finishes alone.
    client
        .find(Locator::LinkText("second"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    confirmed(
        &client,
        "pause",
        "Pause batch second?",
        "Paused batch second",
    )
    .await;
    assert!(page_text(&client).await.contains("This batch is paused"));
    run().await;
    assert_eq!(sb.tickets().len(), 2);
    age(&pool).await;

    // Cancel it, resume it: nothing of it is sent.
    client.refresh().await.unwrap();
    confirmed(
        &client,
        "cancel",
        "Cancel batch second?",
        "Cancelled 2 tickets",
    )
    .await;
    confirmed(
        &client,
        "resume",
        "Resume batch second?",
        "Resumed batch second",
    )
    .await;
    run().await;
    assert_eq!(
        sb.tickets().len(),
        2,
        "nothing of a cancelled batch is sent"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets WHERE state = 'cancelled'"
        )
        .await,
        2
    );
    age(&pool).await;

    // The overview counts them; retry it: each of its tickets created once.
    client.goto(&format!("{base}/")).await.unwrap();
    let text = page_text(&client).await;
    assert!(text.contains("2 cancelled"), "{text}");
    client
        .find(Locator::LinkText("second"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    confirmed(
        &client,
        "retry",
        "Retry batch second?",
        "4 jobs of 2 tickets back in the queue",
    )
    .await;
    run().await;
    let twice: std::collections::BTreeMap<String, usize> =
        (0..2).map(|t| (format!("Defect {t}"), 2)).collect();
    assert_eq!(created_by_title(&sb), twice);
    age(&pool).await;

    // The ticket list, filtered; a ticket's page with its attempts.
    client.goto(&format!("{base}/tickets")).await.unwrap();
    let filters = client.form(Locator::Id("filters")).await.unwrap();
    filters.set_by_name("ref", "TWO-0001").await.unwrap();
    client
        .find(Locator::Css("select[name=state] option[value=created]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    filters.submit().await.unwrap();
    client
        .wait()
        .for_element(Locator::LinkText("TWO-0001"))
        .await
        .unwrap();
    let rows = client.find_all(Locator::Css("#tickets tr")).await.unwrap();
    assert_eq!(rows.len(), 2, "a header and one ticket");
    client
        .find(Locator::LinkText("TWO-0001"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id("attempts"))
        .await
        .unwrap();
    let text = page_text(&client).await;
    assert!(text.contains("Ticket TWO-0001"), "{text}");
    assert!(text.contains("Attempts (2)"), "{text}");
    let attempts = client
        .find(Locator::Id("attempts"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(attempts.contains("upload files/t1-f0.jpg"), "{attempts}");
    assert!(attempts.contains("create"), "{attempts}");

    // Prune: every job of the finished batches goes; the tickets stay.
    client.goto(&format!("{base}/")).await.unwrap();
    confirmation(&client, "prune", "Prune old history?").await;
    let form = client
        .form(Locator::Css("form[action='/actions/prune']"))
        .await
        .unwrap();
    form.set_by_name("older_than", "0s").await.unwrap();
    confirm(&client, "Pruned 2 finished batches: 8 jobs").await;
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM attempts").await, 0);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM tickets WHERE state = 'created'"
        )
        .await,
        4
    );

    // A form from elsewhere is refused.
    let forged = reqwest::Client::new()
        .post(format!("{base}/actions/pause"))
        .form(&[("csrf", "not-this-servers")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(count(&pool, "SELECT count(*) FROM queue_pauses").await, 0);

    client.close().await.unwrap();
    stop.cancel();
}
