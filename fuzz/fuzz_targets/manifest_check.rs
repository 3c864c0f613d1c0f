//! Fuzz target: `ingest::check_all` on arbitrary bytes (a manifest, or a register with a map
//! file when the first byte's bit 2 is set) must return (problems or an error),
//! never panic; and every ticket it accepts must load into the store as `enqueue` loads it,
//! when `FUZZ_DATABASE_URL` names a Postgres database (created and migrated on first use;
//! each load is rolled back). Odd first bytes put a valid header in front, so the fuzzer
//! reaches the rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio::runtime::Runtime;
use visibuild_import::manifest::{ManifestOptions, TicketSpec};
use visibuild_import::store::{self, StoreError, tickets};

/// A files root with a few real files for rows to name, made once per process.
fn root() -> &'static (tempfile::TempDir, PathBuf) {
    static ROOT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = dir.path().join("files");
        std::fs::create_dir_all(files.join("sub")).expect("files dir");
        std::fs::write(files.join("a.jpg"), b"\xFF\xD8\xFF\xE0 jpeg-ish").expect("a.jpg");
        std::fs::write(files.join("b.pdf"), b"%PDF-1.4 pdf-ish").expect("b.pdf");
        std::fs::write(files.join("sub/c"), b"\x89PNG\r\n\x1a\n png-ish").expect("c");
        std::fs::write(files.join("empty.txt"), b"").expect("empty.txt");
        let manifest = dir.path().join("manifest.csv");
        (dir, manifest)
    })
}

/// The store to load accepted tickets into, made once per process; `None` without
/// `FUZZ_DATABASE_URL` (then only "never a panic" is checked).
fn store() -> Option<&'static (Runtime, PgPool)> {
    static STORE: OnceLock<Option<(Runtime, PgPool)>> = OnceLock::new();
    let store = STORE.get_or_init(|| {
        let Ok(url) = std::env::var("FUZZ_DATABASE_URL") else {
            eprintln!(
                "FUZZ_DATABASE_URL is not set: tickets check accepts are not loaded into a store"
            );
            return None;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let pool = runtime
            .block_on(store::connect(&url))
            .expect("FUZZ_DATABASE_URL names a reachable Postgres");
        Some((runtime, pool))
    });
    store.as_ref()
}

/// Loads tickets as `app::enqueue` does, in a transaction that is then rolled back.
async fn load(pool: &PgPool, specs: &[TicketSpec]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let batch = tickets::upsert_batch(&mut *tx, "fuzz", "manifest.csv", "files").await?;
    tickets::load_tickets(&mut tx, batch, specs, 3, "fuzz", None).await?;
    tx.rollback().await?;
    Ok(())
}

const HEADER: &[u8] =
    b"ref,project_id,title,address,priority,contact_name,contact_email,attachments\n";

/// A register's map, for inputs whose mode asks for the map layer: the input's text up to
/// `\n---\n` is appended to it (more keys, or a broken map), the rest is the register.
const MAP: &[u8] = b"header_row = 1\n[columns]\nref = \"Item #\"\nproject_id = \"Project\"\n\
title = \"{Description} - {Location}\"\npriority = \"Severity\"\nattachments = [\"Photo\", \"Files\"]\n\
[priority]\nCritical = \"high\"\nMinor = \"low\"\n[projects]\n\"Harbour\" = \"6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804\"\n";
const REGISTER_HEADER: &[u8] = b"Item #;Project;Description;Location;Severity;Photo;Files\n";

fuzz_target!(|data: &[u8]| {
    let (dir, manifest) = root();
    let mut opts = ManifestOptions::default();
    let bytes = match data.split_first() {
        // The map layer: a map (the fixed one, plus whatever the input adds) and a register.
        Some((mode, rest)) if mode & 2 == 2 => {
            let split = rest.windows(5).position(|w| w == b"\n---\n");
            let (extra, register) = match split {
                Some(at) => (&rest[..at], &rest[at + 5..]),
                None => (&b""[..], rest),
            };
            let map = dir.path().join("register.map.toml");
            std::fs::write(&map, [MAP, extra].concat()).expect("write the map");
            opts.map = Some(map);
            match mode & 1 {
                1 => [REGISTER_HEADER, register].concat(),
                _ => register.to_vec(),
            }
        }
        Some((mode, rest)) if mode & 1 == 1 => [HEADER, rest].concat(),
        _ => data.to_vec(),
    };
    std::fs::write(manifest, &bytes).expect("write the manifest");
    let Ok(checked) = visibuild_import::ingest::check_all(manifest, &opts) else {
        return;
    };
    // What check accepts, enqueue loads (the valid tickets, as with --skip-invalid).
    if let Some((runtime, pool)) = store().filter(|_| !checked.tickets.is_empty()) {
        let loaded = runtime.block_on(load(pool, &checked.tickets));
        loaded.unwrap_or_else(|err| panic!("check accepted tickets the store refuses: {err}"));
    }
});
