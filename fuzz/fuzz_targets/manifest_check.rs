//! Fuzz target: `manifest::check` on arbitrary bytes must return (problems or an error),
//! never panic. Odd first bytes put a valid header in front, so the fuzzer reaches the rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use visibuild_import::manifest::{self, ManifestOptions};

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

const HEADER: &[u8] = b"ref,project_id,title,address,priority,contact_name,contact_email,attachments\n";

fuzz_target!(|data: &[u8]| {
    let (_, manifest) = root();
    let bytes = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => [HEADER, rest].concat(),
        _ => data.to_vec(),
    };
    std::fs::write(manifest, &bytes).expect("write the manifest");
    let _ = manifest::check(manifest, &ManifestOptions::default());
});
