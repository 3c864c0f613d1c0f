//! The manifest reader on a few thousand seeded random inputs — CSV-shaped noise and
//! mutations of the example manifests — in a few seconds: never a panic, always an answer,
//! nothing accepted that points outside the files root, and every ticket it accepts loads
//! into the real store. (The long, coverage-guided run is `fuzz/`, with cargo-fuzz.)

#[macro_use]
mod common;

use common::Db;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use visibuild_import::manifest::{ManifestOptions, TicketSpec};
use visibuild_import::store::tickets;

const CASES: usize = 3_000;
/// Loads into Postgres at most, to keep the test to seconds (each one a few milliseconds).
const MAX_LOADS: usize = 600;

/// Pieces a manifest is made of, so random inputs reach the row parser, not just the sniffer.
const TOKENS: &[&[u8]] = &[
    b"ref",
    b"project_id",
    b"title",
    b"address",
    b"priority",
    b"contact_name",
    b"contact_email",
    b"attachments",
    b"REF",
    b"a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    b"A-1",
    b"low",
    b"high",
    b"jo@example.com",
    b"files/a.jpg",
    b"files/b.pdf",
    b"files/empty.txt",
    b"files/",
    b"../etc/passwd",
    b"/etc/passwd",
    b"files/../files/a.jpg",
    b"C:\\x",
    b",",
    b",",
    b",",
    b";",
    b"\"",
    b"\"\"",
    b"\n",
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
    b"\xC3\x28",
    b"\x00",
    b"\xE2\x82\xAC",
    b"%PDF-",
];

fn noise(rng: &mut StdRng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.random_bool(0.7) {
        out.extend_from_slice(
            b"ref,project_id,title,address,priority,contact_name,contact_email,attachments\n",
        );
    }
    for _ in 0..rng.random_range(0..120) {
        if rng.random_bool(0.8) {
            out.extend_from_slice(TOKENS[rng.random_range(0..TOKENS.len())]);
        } else {
            out.push(rng.random());
        }
    }
    out
}

/// Rows whose fields are drawn from good (first in each list) and bad values: reaches
/// merging, paths and files.
fn rows(rng: &mut StdRng) -> Vec<u8> {
    const REFS: &[&str] = &["A-1", "A-2", "\"A,3\"", "", " A-1 ", "Ä-4", "A\u{0}5"];
    const PROJECTS: &[&str] = &[
        "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        "nope",
        "",
        "c3d4e5f6-a1b2-4c3d-8e9f-0a1b2c3d4e5f",
    ];
    const TITLES: &[&str] = &[
        "Crack",
        "\"Leak, \"\"bad\"\"\"",
        "",
        "Ünïcode ✓",
        "Crack\u{0}ed",
    ];
    const PRIORITIES: &[&str] = &["", "low", "medium", "high", "urgent"];
    const EMAILS: &[&str] = &["", "jo@example.com", "not-an-email"];
    const FILES: &[&str] = &[
        "",
        "files/a.jpg",
        "files/b.pdf",
        "files/a.jpg;files/b.pdf",
        "files/empty.txt",
        "files/missing.png",
        "files",
        "../x",
        "/etc/hostname",
        "files/a.jpg;;",
        "files/a.jpg;files/b\u{0}.pdf",
    ];
    let mut out = String::from("ref,project_id,title,priority,contact_email,attachments\n");
    for _ in 0..rng.random_range(1..6) {
        // Now and then a ref around the store's limits (the check's, and Postgres' index
        // row), of characters no compression shrinks.
        let long_ref = rng.random_bool(0.05).then(|| {
            let len = rng.random_range(900..3_000);
            (0..len)
                .map(|_| char::from(rng.random_range(b'!'..=b'~')))
                .filter(|c| !matches!(c, ',' | '"'))
                .collect::<String>()
        });
        let mut pick = |pool: &[&str]| -> String {
            if rng.random_bool(0.6) {
                pool[0].to_string()
            } else {
                pool[rng.random_range(0..pool.len())].to_string()
            }
        };
        let row = [
            long_ref.unwrap_or_else(|| pick(REFS)),
            pick(PROJECTS),
            pick(TITLES),
            pick(PRIORITIES),
            pick(EMAILS),
            pick(FILES),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out.into_bytes()
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.random_range(1..8) {
        let at = rng.random_range(0..=out.len());
        match rng.random_range(0..4) {
            0 if !out.is_empty() => {
                let end = (at + rng.random_range(1..16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            1 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 if at < out.len() => out[at] = rng.random(),
            _ => {
                let copy: Vec<u8> = out[at..].iter().take(40).copied().collect();
                out.splice(at..at, copy);
            }
        }
    }
    out
}

/// Loads tickets as `app::enqueue` does, in a transaction that is then rolled back, so that
/// every case starts from an empty store.
async fn load(
    store: &visibuild_queue::Store,
    manifest: &Path,
    specs: &[TicketSpec],
) -> Result<(), visibuild_import::store::StoreError> {
    let mut tx = store.begin().await?;
    let mut conn = tx.conn();
    let name = manifest.to_string_lossy();
    let batch = tickets::upsert_batch(&mut conn, "fuzz", &name, "files").await?;
    // With receipts: a receipt carries the ref, so a ref the store takes must make one too.
    let receipts = tickets::ReceiptSource {
        manifest: name.to_string(),
        batch: "fuzz".into(),
    };
    let loaded = tickets::load_tickets(&mut conn, batch, specs, 3, &name, Some(&receipts)).await?;
    assert_eq!(loaded.tickets_added, specs.len() as u64);
    tx.rollback().await?;
    Ok(())
}

on_both!(random_and_mangled_manifests_get_an_answer_and_what_check_accepts_loads);
async fn random_and_mangled_manifests_get_an_answer_and_what_check_accepts_loads(db: Db) {
    let pool = db.store().await;
    let root = tempfile::tempdir().unwrap();
    let files = root.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("a.jpg"), b"\xFF\xD8\xFF\xE0 not much of a jpeg").unwrap();
    std::fs::write(files.join("b.pdf"), b"%PDF-1.4 not much of a pdf").unwrap();
    std::fs::write(files.join("empty.txt"), b"").unwrap();
    let canonical_root = root.path().canonicalize().unwrap();

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests");
    let mut paths: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "csv"))
        .collect();
    // In a fixed order, so that a case number names the same input everywhere.
    paths.sort();
    let seeds: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(
        !seeds.is_empty(),
        "example manifests in {}",
        examples.display()
    );

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let manifest = root.path().join("manifest.csv");
    let (mut accepted, mut rejected, mut loads) = (0, 0, 0);
    for case in 0..CASES {
        let bytes = if case % 3 == 0 {
            noise(&mut rng)
        } else if case % 3 == 1 {
            rows(&mut rng)
        } else {
            let seed = &seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, seed)
        };
        std::fs::write(&manifest, &bytes).unwrap();
        let checked = visibuild_import::ingest::check_all(&manifest, &ManifestOptions::default())
            .unwrap_or_else(|e| panic!("case {case}: a readable manifest got {e}: {bytes:?}"));
        for problem in &checked.problems {
            assert!(problem.line >= 1, "case {case}: {problem}");
        }
        for attachment in checked.tickets.iter().flat_map(|t| &t.attachments) {
            assert!(
                attachment.resolved.starts_with(&canonical_root) && attachment.size > 0,
                "case {case}: accepted {attachment:?} from {bytes:?}"
            );
        }
        if checked.is_clean() && !checked.tickets.is_empty() {
            accepted += 1;
        } else {
            rejected += 1;
        }
        // What check accepts, enqueue loads: a clean manifest whole, and the valid tickets
        // of one with problems (`--skip-invalid`).
        if !checked.tickets.is_empty() && loads < MAX_LOADS {
            loads += 1;
            load(&pool, &manifest, &checked.tickets)
                .await
                .unwrap_or_else(|e| {
                    let text = String::from_utf8_lossy(&bytes);
                    panic!("case {case}: check accepted {text:?} but loading it failed: {e}")
                });
        }
    }
    // The generator is worth its time only if it reaches both outcomes.
    eprintln!("{CASES} cases: {accepted} clean, {rejected} with problems; {loads} loaded");
    assert!(
        accepted > 0 && rejected > 0,
        "{accepted} clean, {rejected} with problems"
    );
}
