//! `check` and `enqueue` stream a manifest through staging a chunk at a time: the rules
//! between rows hold however far apart the rows are (chunks of one row), a load is all or
//! nothing, changed refs are found against what is loaded, concurrent loads keep their
//! staging apart, and staging leaves nothing behind — on both stores.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use common::{BIN, Db, count_in, eventually};
use visibuild_import::ingest::{self, Changed, Load, LoadOutput, Loaded};
use visibuild_import::manifest::{self, ManifestOptions, Problem};
use visibuild_queue::Store;

const P: &str = "3f2b8c1e-5d4a-4e7b-9c1d-2a6f8e0b7c41";
const Q: &str = "8a1d6e2f-0b3c-4d5e-8f7a-9b0c1d2e3f4a";
const HEADER: &str = "ref,project_id,title,address,priority,contact_name,contact_email,attachments";

/// A manifest whose rules between rows reach across it: a continuation row before its
/// project (line 4, adopted on line 7), one far after it (6), a title given late (8, 10), a
/// disagreement eight lines on (11), a ref under two projects and a blank one (12–14), a
/// poisoned ref (15–16), a continuation of nothing (17).
fn spread() -> Vec<String> {
    [
        format!("A-1,{P},Hinge,,high,,,files/a.jpg"),
        format!("B-1,{P},Door,,,,,"),
        "C-1,,,,,,,files/a.jpg".to_owned(),
        format!("D-1,{P},Tile,,,,,"),
        "A-1,,,,,,,files/b.pdf".to_owned(),
        format!("C-1,{Q},Crack,,,,,"),
        format!("E-1,{P},,,,,,"),
        format!("B-1,{P},Door,Unit 2,,,,"),
        format!("E-1,{P},Leak,,,,,"),
        format!("B-1,{P},Gate,,,,,"),
        format!("F-1,{P},Pipe,,,,,"),
        format!("F-1,{Q},Pipe,,,,,"),
        "F-1,,,,,,,files/a.jpg".to_owned(),
        format!("G-1,{P},Vent,,,,,"),
        "G-1,not-a-uuid,Vent,,,,,".to_owned(),
        "H-1,,,,,,,files/a.jpg".to_owned(),
    ]
    .into()
}

const SPREAD_PROBLEMS: [&str; 4] = [
    r#"11: title: "Gate" disagrees with "Door" on line 3 (rows of one ticket must agree or leave it blank)"#,
    "14: project_id: blank, but ref \"F-1\" exists under two projects ({P} on line 12, {Q} on line 13); give the project_id",
    r#"16: project_id: "not-a-uuid" is not a UUID"#,
    "17: project_id: missing required value",
];

/// A folder with `manifest.csv` (the header, then `rows`) and two small files.
fn manifest(rows: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/a.jpg"), b"\xFF\xD8\xFF jpeg").unwrap();
    std::fs::write(dir.path().join("files/b.pdf"), b"%PDF-1.4").unwrap();
    let path = dir.path().join("manifest.csv");
    std::fs::write(&path, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
    (dir, path)
}

fn open(path: &Path) -> manifest::Opened {
    manifest::open(path, &ManifestOptions::default()).unwrap()
}

fn expected(path: &Path, lines: &[&str]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            format!(
                "{}:{}",
                path.display(),
                l.replace("{P}", P).replace("{Q}", Q)
            )
        })
        .collect()
}

#[tokio::test]
async fn every_chunk_size_gives_the_answer_of_one_pass_over_the_whole_manifest() {
    let (_dir, spread) = manifest(&spread());
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    paths.sort();
    paths.push(spread.clone());
    for path in &paths {
        let whole = ingest::check_collected(open(path), 1_000_000)
            .await
            .unwrap();
        for chunk in [1, 2, 3, 5] {
            let chunked = ingest::check_collected(open(path), chunk).await.unwrap();
            let what = format!("{} in chunks of {chunk}", path.display());
            assert_eq!(chunked.problems, whole.problems, "{what}");
            assert_eq!(chunked.tickets, whole.tickets, "{what}");
            assert_eq!(chunked.skipped_refs, whole.skipped_refs, "{what}");
        }
    }

    let checked = ingest::check_collected(open(&spread), 1).await.unwrap();
    let problems: Vec<String> = checked.problems.iter().map(Problem::to_string).collect();
    assert_eq!(problems, expected(&spread, &SPREAD_PROBLEMS));
    let tickets: Vec<(&str, u64, &str, Vec<u64>)> = checked
        .tickets
        .iter()
        .map(|t| {
            let lines = t.attachments.iter().map(|a| a.line).collect();
            (t.reference.as_str(), t.line, t.title.as_str(), lines)
        })
        .collect();
    assert_eq!(
        tickets,
        vec![
            ("A-1", 2, "Hinge", vec![2, 6]),
            ("C-1", 4, "Crack", vec![4]),
            ("D-1", 5, "Tile", vec![]),
            ("E-1", 8, "Leak", vec![]),
        ]
    );
    assert_eq!(checked.tickets[1].project_id.to_string(), Q);
    assert_eq!(checked.skipped_refs, ["B-1", "F-1", "G-1", "H-1"]);
    assert_eq!(
        checked.summary(),
        "8 tickets (4 valid, 4 with problems), 3 files, 24 B; 4 problems"
    );
}

#[tokio::test]
async fn rows_of_a_ref_no_row_gives_a_project_still_report_their_disagreements() {
    let (_dir, path) = manifest(&["X-1,,Leak,,,,,".into(), "X-1,,Crack,,,,,".into()]);
    for chunk in [1, 1_000] {
        let checked = ingest::check_collected(open(&path), chunk).await.unwrap();
        let problems: Vec<String> = checked.problems.iter().map(Problem::to_string).collect();
        assert_eq!(
            problems,
            expected(
                &path,
                &[
                    "2: project_id: missing required value",
                    r#"3: title: "Crack" disagrees with "Leak" on line 2 (rows of one ticket must agree or leave it blank)"#,
                    "3: project_id: missing required value",
                ]
            ),
            "in chunks of {chunk}"
        );
        assert_eq!(checked.skipped_refs, ["X-1"]);
    }
}

#[tokio::test]
async fn check_of_a_manifest_of_several_chunks_reports_rows_thousands_of_lines_apart() {
    // 4,500 tickets (three default chunks), then a continuation row of the first ticket
    // and a row that disagrees with the second.
    let mut rows: Vec<String> = (0..4_500)
        .map(|t| format!("T-{t},{P},Defect {t},,,,,"))
        .collect();
    rows.push("T-0,,,,,,,files/a.jpg".into());
    rows.push(format!("T-1,{P},Another title,,,,,"));
    let (_dir, path) = manifest(&rows);
    let out = tokio::process::Command::new(BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "{}:4503: title: \"Another title\" disagrees with \"Defect 1\" on line 3 (rows of one \
             ticket must agree or leave it blank)\n\
             errors: 4500 tickets (4499 valid, 1 with problems), 1 file, 8 B; 1 problem\n",
            path.display()
        )
    );
}

/// What a load said, in order.
#[derive(Debug, Default)]
struct Said {
    problems: Vec<String>,
    skipped: Option<(u64, Vec<String>)>,
    changed: Vec<(u64, String, Vec<String>)>,
}

impl LoadOutput for Said {
    fn problem(&mut self, problem: Problem) {
        self.problems.push(problem.to_string());
    }

    fn skipped(&mut self, total: u64, refs: Vec<String>) {
        assert!(self.skipped.is_none(), "said once");
        self.skipped = Some((total, refs));
    }

    fn changed(&mut self, changed: Changed) {
        self.changed
            .push((changed.line, changed.reference, changed.fields));
    }
}

fn load(batch: &str, skip_invalid: bool) -> Load {
    Load {
        batch: batch.to_owned(),
        source: "manifest.csv".to_owned(),
        skip_invalid,
        max_attempts: 3,
        receipts: None,
    }
}

async fn enqueue(store: &Store, path: &Path, load: &Load, chunk: usize) -> (Loaded, Said) {
    let mut said = Said::default();
    let loaded = ingest::enqueue(store, open(path), load, chunk, &mut said)
        .await
        .unwrap();
    (loaded, said)
}

/// Rows in the importer's tables and the queue's.
async fn loaded_rows(store: &Store) -> [i64; 4] {
    [
        count_in(store, "SELECT count(*) FROM batches").await,
        count_in(store, "SELECT count(*) FROM tickets").await,
        count_in(store, "SELECT count(*) FROM attachments").await,
        count_in(store, "SELECT count(*) FROM jobs").await,
    ]
}

/// No staging table is left: in Postgres none in the catalogue (a TEMP table of any
/// session shows there until its session ends); in SQLite none on any pooled connection.
async fn assert_no_staging_left(store: &Store) {
    match store {
        Store::Postgres(pool) => {
            eventually("the staging session has ended", || async {
                let left: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_class WHERE relname LIKE 'stage%' AND relpersistence = 't'",
                )
                .fetch_one(pool)
                .await
                .unwrap();
                left == 0
            })
            .await;
        }
        Store::Sqlite(pool) => {
            let mut conns = Vec::new();
            for _ in 0..pool.size() {
                conns.push(pool.acquire().await.unwrap());
            }
            for conn in &mut conns {
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM temp.sqlite_master")
                    .fetch_one(&mut **conn)
                    .await
                    .unwrap();
                assert_eq!(left, 0, "a pooled connection keeps staging tables");
            }
        }
    }
}

on_both!(a_problem_on_the_last_line_loads_nothing_though_earlier_pages_were_ready);
async fn a_problem_on_the_last_line_loads_nothing_though_earlier_pages_were_ready(db: Db) {
    let store = db.store().await;
    let mut rows: Vec<String> = (0..40)
        .map(|t| format!("T-{t},{P},Defect {t},,,,,files/a.jpg"))
        .collect();
    rows.push(format!("T-0,{P},Not the same,,,,,"));
    let (_dir, path) = manifest(&rows);

    let (loaded, said) = enqueue(&store, &path, &load("b", false), 3).await;
    assert!(matches!(loaded, Loaded::Refused { .. }), "{loaded:?}");
    assert_eq!(
        said.problems,
        expected(
            &path,
            &[
                r#"42: title: "Not the same" disagrees with "Defect 0" on line 2 (rows of one ticket must agree or leave it blank)"#
            ]
        )
    );
    assert_eq!(loaded_rows(&store).await, [0, 0, 0, 0]);
    assert_no_staging_left(&store).await;

    // A problem of a row's own is found before any page: nothing loaded either.
    let (_dir, bad) = manifest(&[
        format!("T-0,{P},Defect 0,,urgent,,,"),
        format!("T-1,{P},Defect 1,,,,,"),
    ]);
    let (loaded, said) = enqueue(&store, &bad, &load("b", false), 1).await;
    assert!(matches!(loaded, Loaded::Refused { .. }), "{loaded:?}");
    assert_eq!(said.problems.len(), 1, "{said:?}");
    assert_eq!(loaded_rows(&store).await, [0, 0, 0, 0]);
    assert_no_staging_left(&store).await;
}

on_both!(skip_invalid_loads_every_valid_ticket_of_rows_spread_over_pages);
async fn skip_invalid_loads_every_valid_ticket_of_rows_spread_over_pages(db: Db) {
    let store = db.store().await;
    let (_dir, path) = manifest(&spread());
    let (loaded, said) = enqueue(&store, &path, &load("b", true), 2).await;
    let Loaded::Done { added, counts, .. } = loaded else {
        panic!("{loaded:?}")
    };
    assert_eq!((added.tickets, added.files), (4, 3));
    assert_eq!((counts.valid, counts.skipped, counts.problems), (4, 4, 4));
    assert_eq!(said.problems, expected(&path, &SPREAD_PROBLEMS));
    assert_eq!(
        said.skipped,
        Some((4, ["B-1", "F-1", "G-1", "H-1"].map(String::from).to_vec()))
    );
    let tickets: Vec<(String, i64, i64)> = match &store {
        Store::Postgres(pool) => sqlx::query_as(
            "SELECT t.ref, t.line, (SELECT count(*) FROM attachments a WHERE a.ticket_id = t.id)
               FROM tickets t ORDER BY t.line",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Store::Sqlite(pool) => sqlx::query_as(
            "SELECT t.ref, t.line, (SELECT count(*) FROM attachments a WHERE a.ticket_id = t.id)
               FROM tickets t ORDER BY t.line",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    };
    let expected: Vec<(String, i64, i64)> =
        [("A-1", 2, 2), ("C-1", 4, 1), ("D-1", 5, 0), ("E-1", 8, 0)]
            .map(|(r, l, f)| (r.to_owned(), l, f))
            .to_vec();
    assert_eq!(tickets, expected);
    // One create job per ticket, one upload per file.
    assert_eq!(loaded_rows(&store).await, [1, 4, 3, 7]);
    assert_no_staging_left(&store).await;
}

on_both!(refs_changed_since_they_were_loaded_are_reported_by_line_across_pages);
async fn refs_changed_since_they_were_loaded_are_reported_by_line_across_pages(db: Db) {
    let store = db.store().await;
    let first: Vec<String> = (0..10)
        .map(|t| format!("T-{t},{P},Defect {t},,,,,files/a.jpg"))
        .collect();
    let (_dir, path) = manifest(&first);
    let (loaded, _) = enqueue(&store, &path, &load("b", false), 3).await;
    assert!(matches!(loaded, Loaded::Done { .. }), "{loaded:?}");

    // Ticket 3 retitled; ticket 7 gets a second file on a continuation row at the end.
    let mut again = first.clone();
    again[3] = format!("T-3,{P},Defect three,,,,,files/a.jpg");
    again.push("T-7,,,,,,,files/b.pdf".into());
    let (_dir, path) = manifest(&again);
    let (loaded, said) = enqueue(&store, &path, &load("b", false), 2).await;
    let Loaded::Done { added, .. } = loaded else {
        panic!("{loaded:?}")
    };
    assert_eq!(
        (added.tickets, added.unchanged, added.changed),
        (0, 8, 2),
        "{said:?}"
    );
    assert_eq!(
        said.changed,
        vec![
            (5, "T-3".to_owned(), vec!["title".to_owned()]),
            (9, "T-7".to_owned(), vec!["attachments".to_owned()]),
        ]
    );
    let noted = count_in(
        &store,
        "SELECT count(*) FROM tickets WHERE changed_since_load IS NOT NULL",
    )
    .await;
    assert_eq!(noted, 2);
    assert_eq!(loaded_rows(&store).await, [1, 10, 10, 20]);
    assert_no_staging_left(&store).await;
}

on_both!(concurrent_enqueues_of_two_manifests_keep_their_staging_apart);
async fn concurrent_enqueues_of_two_manifests_keep_their_staging_apart(db: Db) {
    let store = db.store().await;
    let rows = |prefix: &str| -> Vec<String> {
        (0..300)
            .map(|t| format!("{prefix}-{t},{P},Defect {t},,,,,files/a.jpg"))
            .collect()
    };
    let (_a, a) = manifest(&rows("A"));
    let (_b, b) = manifest(&rows("B"));
    let (load_a, load_b) = (load("a", false), load("b", false));
    let ((loaded_a, _), (loaded_b, _)) = tokio::join!(
        enqueue(&store, &a, &load_a, 7),
        enqueue(&store, &b, &load_b, 11)
    );
    for loaded in [loaded_a, loaded_b] {
        let Loaded::Done { added, .. } = loaded else {
            panic!("{loaded:?}")
        };
        assert_eq!((added.tickets, added.files), (300, 300));
    }
    assert_eq!(loaded_rows(&store).await, [2, 600, 600, 1200]);
    let mixed = count_in(
        &store,
        "SELECT count(*) FROM tickets t JOIN batches b ON b.id = t.batch_id
          WHERE substr(t.ref, 1, 1) <> upper(b.name)",
    )
    .await;
    assert_eq!(mixed, 0, "each batch has its own manifest's tickets");
    assert_no_staging_left(&store).await;
}

on_both!(a_load_refused_for_its_receipts_changes_nothing_and_leaves_no_staging);
async fn a_load_refused_for_its_receipts_changes_nothing_and_leaves_no_staging(db: Db) {
    let store = db.store().await;
    let (_dir, path) = manifest(&[format!("T-0,{P},Defect 0,,,,,")]);
    let mut with_receipts = load("b", false);
    with_receipts.receipts = Some(visibuild_import::store::tickets::ReceiptSource {
        manifest: "manifest.csv".into(),
        batch: "b".into(),
    });
    let (loaded, _) = enqueue(&store, &path, &with_receipts, 2).await;
    assert!(matches!(loaded, Loaded::Done { .. }), "{loaded:?}");
    let before = loaded_rows(&store).await;

    let (_dir, more) = manifest(&[
        format!("T-0,{P},Defect 0,,,,,"),
        format!("T-1,{P},Defect 1,,,,,"),
    ]);
    let (loaded, _) = enqueue(&store, &more, &load("b", false), 2).await;
    assert!(
        matches!(loaded, Loaded::ReceiptsDiffer { batch_has: true }),
        "{loaded:?}"
    );
    assert_eq!(loaded_rows(&store).await, before);
    assert_no_staging_left(&store).await;
}
