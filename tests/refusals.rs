//! Refusals found early, through the real binary and the sandbox on both stores: a refused
//! project costs at most one ticket's uploads and fails its tickets at once in the server's
//! words; `retry --project` re-opens it; several worker processes share one gate.

mod common;

use common::*;
use std::collections::BTreeMap;
use visibuild_sandbox::{Sandbox, SandboxConfig};

const BAD: &str = "0b0b0b0b-dead-4bad-8bad-0b0b0b0b0b0b";
const REFUSED: &str =
    "project refused: projectId is not a project of this company (field projectId)";

/// Tickets of two projects: `good` in [`PROJECT`] (refs `GOOD-i`, titles `Good i`) and `bad`
/// in [`BAD`] (refs `BAD-i`, titles `Bad i`), ticket i having `files_of(i)` files named
/// `{good|bad}-t{i}-f{f}.jpg`, bigger for later tickets.
struct TwoProjects {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl TwoProjects {
    fn new(good: usize, bad: usize, files_of: impl Fn(usize) -> usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("ref,project_id,title,attachments\n");
        for (name, title, project, count) in
            [("good", "Good", PROJECT, good), ("bad", "Bad", BAD, bad)]
        {
            for t in 0..count {
                let mut paths = Vec::new();
                for f in 0..files_of(t) {
                    let file = format!("{name}-t{t}-f{f}.jpg");
                    let bytes: Vec<u8> = (0..2000 + 500 * t + f)
                        .map(|i| ((i * 13 + t + f) % 251) as u8)
                        .collect();
                    std::fs::write(dir.path().join(&file), bytes).unwrap();
                    paths.push(file);
                }
                csv.push_str(&format!(
                    "{}-{t},{project},{title} {t},{}\n",
                    name.to_uppercase(),
                    paths.join(";")
                ));
            }
        }
        let path = dir.path().join("manifest.csv");
        std::fs::write(&path, csv).unwrap();
        Self { _dir: dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

async fn refusing_sandbox() -> Sandbox {
    start(SandboxConfig {
        refuse_projects: vec![BAD.parse().unwrap()],
        ..SandboxConfig::default()
    })
    .await
}

/// Objects the sandbox stored for the refused project's files.
fn bad_objects(sb: &Sandbox) -> usize {
    sb.objects()
        .iter()
        .filter(|o| o.key.contains("bad-"))
        .count()
}

fn titles_with(sb: &Sandbox, prefix: &str) -> BTreeMap<String, usize> {
    created_by_title(sb)
        .into_iter()
        .filter(|(title, _)| title.starts_with(prefix))
        .collect()
}

fn each_once_titled(prefix: &str, n: usize) -> BTreeMap<String, usize> {
    (0..n).map(|t| (format!("{prefix} {t}"), 1)).collect()
}

async fn a_refused_project_uploads_one_tickets_files_and_fails_the_rest_in_its_words(db: Db) {
    let sb = refusing_sandbox().await;
    // Every ticket has files; the refused project's smallest ticket (BAD-0) has 2.
    let manifest = TwoProjects::new(5, 6, |_| 2);
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    ))
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("tickets: 5 created, 6 failed, 0 need review"),
        "{out:?}"
    );
    assert_eq!(titles_with(&sb, "Good"), each_once_titled("Good", 5));
    assert!(titles_with(&sb, "Bad").is_empty());
    // The first ticket's two files went up; nothing of the other five tickets.
    assert_eq!(bad_objects(&sb), 2, "{:?}", sb.objects());
    let stats = sb.stats();
    assert_eq!(
        stats.count("POST /api/core/v1/attachments", 200),
        5 * 2 + 2,
        "presigns: the good project's 10 files and the refused project's first ticket's 2"
    );
    assert_eq!(stats.count("POST /api/core/v1/tickets", 422), 1);

    // One group, in the server's words, never JSON.
    let status = status_json(&db).await;
    let errors = &status[0]["top_errors"];
    assert_eq!(errors[0]["reason"], REFUSED, "{status}");
    assert_eq!(errors[0]["count"], 6, "{status}");
    // `--json` keeps the server's error structured.
    assert_eq!(
        errors[0]["server_error"],
        serde_json::json!({
            "code": "invalid_field",
            "message": "projectId is not a project of this company",
            "field": "projectId",
        }),
        "{status}"
    );
    let human = output(bin(&db, &["status"])).await;
    assert!(
        human.stdout.contains(&format!("6 × {REFUSED}")),
        "{human:?}"
    );
    assert!(!human.all().contains("{\"error\""), "{human:?}");
    let rows = report(&db).await;
    for t in 0..6 {
        let row = &rows[&format!("BAD-{t}")];
        assert_eq!(row["state"], "failed");
        assert_eq!(row["error"], REFUSED);
    }
}
on_both!(a_refused_project_uploads_one_tickets_files_and_fails_the_rest_in_its_words);

async fn a_refused_project_with_a_file_less_ticket_uploads_none_of_its_files(db: Db) {
    let sb = refusing_sandbox().await;
    // Ticket 3 of each project has no files: it goes first.
    let manifest = TwoProjects::new(4, 5, |t| if t == 3 { 0 } else { 1 + t % 2 });
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    ))
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(titles_with(&sb, "Good"), each_once_titled("Good", 4));
    assert_eq!(bad_objects(&sb), 0, "{:?}", sb.objects());
    let good_files: u64 = (0..4).map(|t| if t == 3 { 0 } else { 1 + t % 2 }).sum();
    assert_eq!(
        sb.stats().count("POST /api/core/v1/attachments", 200),
        good_files
    );
    assert_eq!(sb.stats().count("POST /api/core/v1/tickets", 422), 1);
    let status = status_json(&db).await;
    assert_eq!(status[0]["tickets"]["failed"], 5, "{status}");
    assert_eq!(status[0]["top_errors"][0]["reason"], REFUSED, "{status}");
}
on_both!(a_refused_project_with_a_file_less_ticket_uploads_none_of_its_files);

async fn retry_project_after_the_access_is_fixed_creates_every_ticket_once(db: Db) {
    let sb = refusing_sandbox().await;
    let manifest = TwoProjects::new(3, 4, |t| 1 + t % 2);
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    ))
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(titles_with(&sb, "Bad").is_empty());

    // Retried while still refused: the gate closes again after one ticket.
    let retried = output(bin(&db, &["retry", "--project", BAD])).await;
    assert_eq!(retried.code, 0, "{retried:?}");
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(sb.stats().count("POST /api/core/v1/tickets", 422), 2);

    sb.accept_project(BAD.parse().unwrap());
    let retried = output(bin(&db, &["retry", "--project", BAD])).await;
    assert_eq!(retried.code, 0, "{retried:?}");
    assert!(retried.stdout.contains("4 tickets"), "{retried:?}");
    let out = output(with_token(&db, &["run", "--api-url", &sb.base_url()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(titles_with(&sb, "Good"), each_once_titled("Good", 3));
    assert_eq!(titles_with(&sb, "Bad"), each_once_titled("Bad", 4));
    let status = status_json(&db).await;
    assert_eq!(status[0]["tickets"]["created"], 7, "{status}");
}
on_both!(retry_project_after_the_access_is_fixed_creates_every_ticket_once);

async fn several_worker_processes_share_one_gate_per_project(db: Db) {
    let sb = refusing_sandbox().await;
    let manifest = TwoProjects::new(12, 12, |t| 1 + t % 3);
    let out = output(bin(&db, &["enqueue", manifest.arg()])).await;
    assert_eq!(out.code, 0, "{out:?}");
    let runs: Vec<Running> = (0..3)
        .map(|_| {
            spawn(with_token(
                &db,
                &["run", "--api-url", &sb.base_url(), "--workers", "4"],
            ))
        })
        .collect();
    for run in runs {
        let out = run.wait().await;
        assert!(out.code == 0 || out.code == 1, "{out:?}");
    }
    assert_eq!(titles_with(&sb, "Good"), each_once_titled("Good", 12));
    assert!(titles_with(&sb, "Bad").is_empty());
    // One create asked the server about the refused project, whatever process sent it, and
    // only its (one-file) ticket's file went up.
    assert_eq!(sb.stats().count("POST /api/core/v1/tickets", 422), 1);
    assert_eq!(bad_objects(&sb), 1, "{:?}", sb.objects());
    let status = status_json(&db).await;
    assert_eq!(status[0]["tickets"]["failed"], 12, "{status}");
    assert_eq!(status[0]["tickets"]["created"], 12, "{status}");
}
on_both!(several_worker_processes_share_one_gate_per_project);

/// Three tickets in [`PROJECT`]: `Q-0` (the smallest: it goes first) with `evil.jpg`, whose
/// bytes hold the EICAR test string, and `fine.jpg`; `Q-1` and `Q-2` with one clean file.
fn quarantine_manifest() -> TwoProjects {
    let dir = tempfile::tempdir().unwrap();
    let mut evil = b"photo header ".to_vec();
    evil.extend_from_slice(visibuild_sandbox::EICAR);
    evil.extend_from_slice(b" trailer");
    std::fs::write(dir.path().join("evil.jpg"), evil).unwrap();
    std::fs::write(dir.path().join("fine.jpg"), vec![7u8; 100]).unwrap();
    for t in 1..3 {
        std::fs::write(
            dir.path().join(format!("clean-{t}.jpg")),
            vec![t as u8; 5000],
        )
        .unwrap();
    }
    let csv = format!(
        "ref,project_id,title,attachments\n\
         Q-0,{PROJECT},Quarantined 0,evil.jpg;fine.jpg\n\
         Q-1,{PROJECT},Quarantined 1,clean-1.jpg\n\
         Q-2,{PROJECT},Quarantined 2,clean-2.jpg\n"
    );
    let path = dir.path().join("manifest.csv");
    std::fs::write(&path, csv).unwrap();
    TwoProjects { _dir: dir, path }
}

fn evil_objects(sb: &Sandbox) -> usize {
    sb.objects()
        .iter()
        .filter(|o| o.key.contains("evil"))
        .count()
}

async fn a_quarantined_file_is_uploaded_once_more_then_fails_its_ticket_naming_it(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let manifest = quarantine_manifest();
    let out = output(with_token(
        &db,
        &["import", manifest.arg(), "--api-url", &sb.base_url()],
    ))
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    // The first ticket failed; the gate passed to the next one and the rest went through.
    assert_eq!(
        created_by_title(&sb),
        BTreeMap::from([
            ("Quarantined 1".to_string(), 1),
            ("Quarantined 2".to_string(), 1)
        ])
    );
    assert_eq!(
        evil_objects(&sb),
        2,
        "the first upload and one fresh upload"
    );
    assert_eq!(sb.stats().count("POST /api/core/v1/tickets", 422), 2);
    let rows = report(&db).await;
    let q0 = &rows["Q-0"];
    assert_eq!(q0["state"], "failed");
    assert!(q0["error"].contains("evil.jpg"), "{q0:?}");
    assert!(q0["error"].contains("attachment quarantined: "), "{q0:?}");
    assert!(!q0["error"].contains("{\""), "{q0:?}");
    assert_eq!(q0["skipped_files"], "");
}
on_both!(a_quarantined_file_is_uploaded_once_more_then_fails_its_ticket_naming_it);

async fn skip_quarantined_creates_the_ticket_without_the_file_and_reports_it(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let manifest = quarantine_manifest();
    let out = output(with_token(
        &db,
        &[
            "import",
            manifest.arg(),
            "--api-url",
            &sb.base_url(),
            "--skip-quarantined",
        ],
    ))
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        created_by_title(&sb),
        (0..3).map(|t| (format!("Quarantined {t}"), 1)).collect()
    );
    let q0 = sb
        .tickets()
        .into_iter()
        .find(|t| t.title == "Quarantined 0")
        .unwrap();
    let names: Vec<&str> = q0.attachments.iter().map(|a| a.filename.as_str()).collect();
    assert_eq!(names, ["fine.jpg"]);
    assert_eq!(
        evil_objects(&sb),
        2,
        "the first upload and one fresh upload"
    );
    let rows = report(&db).await;
    let q0 = &rows["Q-0"];
    assert_eq!(q0["state"], "created");
    assert!(q0["skipped_files"].starts_with("evil.jpg: "), "{q0:?}");
    assert!(
        q0["skipped_files"].contains("attachment quarantined"),
        "{q0:?}"
    );
    assert_eq!(q0["attachment_keys"].split(';').count(), 1, "{q0:?}");
    assert_eq!(rows["Q-1"]["skipped_files"], "");
}
on_both!(skip_quarantined_creates_the_ticket_without_the_file_and_reports_it);

async fn credentials_revoked_mid_run_stop_the_run_with_exit_2_and_fail_nothing(db: Db) {
    let sb = start(SandboxConfig {
        clients: vec![(
            "importer".into(),
            visibuild_sandbox::Secret::new("s3cret"),
            "sandbox".into(),
        )],
        latency: std::time::Duration::from_millis(20),
        ..SandboxConfig::default()
    })
    .await;
    let manifest = Manifest::new(40, |t| t % 2);
    let mut cmd = bin(
        &db,
        &[
            "import",
            manifest.arg(),
            "--api-url",
            &sb.base_url(),
            "--workers",
            "2",
        ],
    );
    cmd.env("VISIBUILD_CLIENT_ID", "importer")
        .env("VISIBUILD_CLIENT_SECRET", "s3cret");
    let run = spawn(cmd);
    eventually("a few tickets are created", || {
        let n = sb.tickets().len();
        async move { n >= 3 }
    })
    .await;
    sb.revoke_credentials();
    let out = run.wait().await;
    assert_eq!(out.code, 2, "{out:?}");
    let all = out.all();
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("refused the credentials"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {out:?}");
    let created = sb.tickets().len();
    assert!(created < 40, "stopped early: {created}");
    let status = status_json(&db).await;
    let tickets = &status[0]["tickets"];
    assert_eq!(tickets["created"], created as u64, "{status}");
    for state in ["failed", "needs_review"] {
        assert!(
            tickets[state].is_null() || tickets[state] == 0,
            "{state}: {status}"
        );
    }
}
on_both!(credentials_revoked_mid_run_stop_the_run_with_exit_2_and_fail_nothing);
