//! `check` against a corpus of bad (and good) manifests in `tests/manifests/`, each with
//! the exact problem lines it must produce, plus cases that need a temporary directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use visibuild_import::domain::{Priority, ProjectId};
use visibuild_import::ingest::check_all as check;
use visibuild_import::manifest::{
    Checked, MAX_FILE_SIZE, MAX_REF_LEN, ManifestError, ManifestOptions, render_problems,
};

const P: &str = "3f2b8c1e-5d4a-4e7b-9c1d-2a6f8e0b7c41";
const Q: &str = "8a1d6e2f-0b3c-4d5e-8f7a-9b0c1d2e3f4a";
const HEADER: &str = "ref,project_id,title,address,priority,contact_name,contact_email,attachments";
const COLUMNS: &str =
    "ref, project_id, title, address, priority, contact_name, contact_email, attachments";

fn check_corpus(name: &str) -> Checked {
    let path = Path::new("tests/manifests").join(name);
    check(&path, &ManifestOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn refs(checked: &Checked) -> Vec<&str> {
    checked
        .tickets
        .iter()
        .map(|t| t.reference.as_str())
        .collect()
}

/// (manifest, expected problem lines without the "tests/manifests/<name>:" prefix,
/// refs of the tickets that survive, refs skipped).
type Case = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

#[test]
fn every_bad_manifest_in_the_corpus_reports_exactly_its_problems() {
    let columns_hint = |s: &str| s.replace("{COLUMNS}", COLUMNS);
    let cases: &[Case] = &[
        (
            "missing_column.csv",
            &[r#"1: missing required column "project_id""#],
            &[],
            &[],
        ),
        (
            "unknown_column.csv",
            &[r#"1: unknown column "colour" (the columns are {COLUMNS})"#],
            &[],
            &["D-1"],
        ),
        (
            "duplicate_column.csv",
            &[r#"1: duplicate column "title" (columns 3 and 4)"#],
            &[],
            &["D-1"],
        ),
        (
            "missing_value.csv",
            &[
                "2: title: missing required value",
                "3: ref: missing required value",
                "4: project_id: missing required value",
            ],
            &["D-4"],
            &["D-1", "D-3"],
        ),
        (
            "bad_uuid.csv",
            &[r#"2: project_id: "not-a-uuid" is not a UUID"#],
            &["D-2"],
            &["D-1"],
        ),
        (
            "bad_priority.csv",
            &[r#"3: priority: "urgent" is not one of low, medium, high"#],
            &["D-1"],
            &["D-2"],
        ),
        (
            "bad_email.csv",
            &[r#"2: contact_email: "sam.example.com" is not an e-mail address"#],
            &["D-2"],
            &["D-1"],
        ),
        (
            "disagreeing_ref.csv",
            &[
                r#"4: title: "Broken door" disagrees with "Broken hinge" on line 2 (rows of one ticket must agree or leave it blank)"#,
            ],
            &["D-2"],
            &["D-1"],
        ),
        (
            // A value first given on a later row is named by that row's line.
            "late_value.csv",
            &[
                r#"6: address: "Unit 406, 123 Main St" disagrees with "Unit 405, 123 Main St" on line 4 (rows of one ticket must agree or leave it blank)"#,
            ],
            &["D-2"],
            &["D-1"],
        ),
        (
            "missing_file.csv",
            &[r#"2: attachments: "files/nope.jpg" does not exist"#],
            &[],
            &["D-1"],
        ),
        (
            "directory.csv",
            &[r#"2: attachments: "files/site-photos" is a directory, not a file"#],
            &[],
            &["D-1"],
        ),
        (
            "empty_file.csv",
            &[r#"2: attachments: "files/empty.jpg" is empty (0 bytes)"#],
            &[],
            &["D-1"],
        ),
        (
            "dotdot.csv",
            &[
                r#"2: attachments: "files/../files/photo.jpg" contains ".."; paths may not leave the files root (--allow-outside-root lifts this)"#,
            ],
            &[],
            &["D-1"],
        ),
        (
            "absolute.csv",
            &[
                r#"2: attachments: "/etc/passwd" is an absolute path; paths are relative to the files root (--allow-outside-root lifts this)"#,
            ],
            &[],
            &["D-1"],
        ),
        (
            "unterminated_quote.csv",
            &[
                r#"3: unterminated quoted field: a " opened on this line is never closed, so the rest of the file was read as one field"#,
            ],
            &["D-1"],
            &["D-2"],
        ),
        (
            "field_count.csv",
            &["3: expected 8 fields (as in the header), found 4"],
            &["D-1", "D-3"],
            &["D-2"],
        ),
        (
            "invalid_utf8.csv",
            &["3: title: not valid UTF-8 text (save the manifest as UTF-8)"],
            &["D-1", "D-3"],
            &["D-2"],
        ),
        (
            "not_a_csv.csv",
            &[
                "1: not a CSV file: its content is image/png; expected a UTF-8 header row ({COLUMNS})",
            ],
            &[],
            &[],
        ),
        (
            "empty.csv",
            &["1: the manifest is empty: expected a header row ({COLUMNS})"],
            &[],
            &[],
        ),
        (
            "no_header.csv",
            &[r#"1: no header row: expected columns {COLUMNS}; the first line starts with "D-1""#],
            &[],
            &[],
        ),
        ("bom.csv", &[], &["D-1"], &[]),
        ("case_insensitive_header.csv", &[], &["D-1"], &[]),
        ("merged_rows.csv", &[], &["D-1", "D-2", "D-1"], &[]),
    ];

    let mut failures = Vec::new();
    for (name, problems, tickets, skipped) in cases {
        let checked = check_corpus(name);
        let expected: Vec<String> = problems
            .iter()
            .map(|line| format!("tests/manifests/{name}:{}", columns_hint(line)))
            .collect();
        let actual: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
        if actual != expected
            || refs(&checked) != *tickets
            || checked.skipped_refs != *skipped
            || checked.is_clean() != problems.is_empty()
        {
            failures.push(format!(
                "{name}:\n  expected {expected:#?} tickets {tickets:?} skipped {skipped:?}\n  \
                 got {actual:#?} tickets {:?} skipped {:?}",
                refs(&checked),
                checked.skipped_refs
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rows_sharing_project_and_ref_merge_into_one_ticket_in_order() {
    let checked = check_corpus("merged_rows.csv");
    assert_eq!(checked.summary(), "3 tickets, 5 files, 78 B; 0 problems");
    let first = &checked.tickets[0];
    assert_eq!(first.line, 2);
    assert_eq!(first.project_id, ProjectId(P.parse().unwrap()));
    assert_eq!(first.title, "Broken hinge");
    assert_eq!(first.address.as_deref(), Some("Unit 405, 123 Main St"));
    assert_eq!(first.priority, Some(Priority::High));
    assert_eq!(first.contact_email.as_deref(), Some("sam@example.com"));
    let files: Vec<(&str, u64, &str, &str)> = first
        .attachments
        .iter()
        .map(|a| (&*a.path, a.line, &*a.filename, &*a.content_type))
        .collect();
    assert_eq!(
        files,
        vec![
            ("files/photo.jpg", 2, "photo.jpg", "image/jpeg"),
            ("files/plan.pdf", 4, "plan.pdf", "application/pdf"),
            (
                "files/cracked tile.jpg",
                4,
                "cracked tile.jpg",
                "image/jpeg"
            ),
            ("files/photo.jpg", 6, "photo.jpg", "image/jpeg"),
        ]
    );
    let root = Path::new("tests/manifests").canonicalize().unwrap();
    assert_eq!(
        *first.attachments[0].resolved,
        *root.join("files/photo.jpg")
    );
    assert_eq!(first.attachments[0].size, 22);

    // The same ref in another project is another ticket; its file is typed by its bytes.
    let other = &checked.tickets[2];
    assert_eq!(other.project_id, ProjectId(Q.parse().unwrap()));
    assert_eq!(other.line, 5);
    assert_eq!(&*other.attachments[0].content_type, "application/pdf");
}

#[test]
fn fields_digest_is_stable_and_changes_with_any_field_or_path() {
    let checked = check_corpus("merged_rows.csv");
    let ticket = checked.tickets[0].clone();
    assert_eq!(
        ticket.fields_digest(),
        check_corpus("merged_rows.csv").tickets[0].fields_digest()
    );
    assert_eq!(ticket.fields_digest().len(), 32);

    let mut retitled = ticket.clone();
    retitled.title.push('!');
    let mut no_address = ticket.clone();
    no_address.address = None;
    let mut fewer_files = ticket.clone();
    fewer_files.attachments.pop();
    for changed in [retitled, no_address, fewer_files] {
        assert_ne!(changed.fields_digest(), ticket.fields_digest());
    }
}

#[test]
fn problems_render_one_per_line() {
    let checked = check_corpus("missing_value.csv");
    let rendered = render_problems(&checked.problems);
    assert_eq!(rendered.lines().count(), 3);
    assert!(rendered.starts_with("tests/manifests/missing_value.csv:2: title: "));
    assert_eq!(checked.problems[1].reference, None);
    assert_eq!(checked.problems[2].reference.as_deref(), Some("D-3"));
    assert_eq!(checked.problems[2].field.as_deref(), Some("project_id"));
}

#[test]
fn a_manifest_that_cannot_be_opened_is_an_error_not_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = check(&dir.path().join("nope.csv"), &ManifestOptions::default());
    assert!(
        matches!(missing, Err(ManifestError::NotFound { .. })),
        "{missing:?}"
    );
    let directory = check(dir.path(), &ManifestOptions::default());
    assert!(
        matches!(directory, Err(ManifestError::IsDirectory { .. })),
        "{directory:?}"
    );
}

/// A temporary folder holding `manifest.csv` with the given rows under the header.
fn temp_manifest(rows: &[String]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.csv");
    fs::write(&manifest, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();
    (dir, manifest)
}

#[test]
fn a_symlink_escaping_the_files_root_is_refused_unless_allowed() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "not for upload").unwrap();
    let (dir, manifest) = temp_manifest(&[
        format!("D-1,{P},Broken hinge,,,,,link.jpg"),
        format!("D-2,{P},Fine,,,,,inside.jpg"),
    ]);
    fs::write(dir.path().join("inside.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        dir.path().join("link.jpg"),
    )
    .unwrap();

    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    let problems: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        vec![format!(
            "{}:2: attachments: \"link.jpg\" resolves to a file outside the files root (through a symlink)",
            manifest.display()
        )]
    );
    assert_eq!(refs(&checked), vec!["D-2"]);
    assert_eq!(checked.skipped_refs, vec!["D-1"]);

    let allowed = ManifestOptions {
        allow_outside_root: true,
        ..ManifestOptions::default()
    };
    let checked = check(&manifest, &allowed).unwrap();
    assert!(checked.is_clean(), "{:?}", checked.problems);
    let link = &checked.tickets[0].attachments[0];
    assert_eq!(
        *link.resolved,
        *outside.path().canonicalize().unwrap().join("secret.txt")
    );
    assert_eq!(&*link.filename, "link.jpg");
}

#[test]
fn a_symlink_inside_the_files_root_is_followed() {
    let (dir, manifest) = temp_manifest(&[format!("D-1,{P},Broken hinge,,,,,latest.png")]);
    fs::create_dir(dir.path().join("photos")).unwrap();
    fs::write(dir.path().join("photos/v2.png"), b"\x89PNG\r\n\x1A\n").unwrap();
    std::os::unix::fs::symlink("photos/v2.png", dir.path().join("latest.png")).unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert!(checked.is_clean(), "{:?}", checked.problems);
    let file = &checked.tickets[0].attachments[0];
    assert_eq!(
        *file.resolved,
        *dir.path().canonicalize().unwrap().join("photos/v2.png")
    );
    assert_eq!(
        (&*file.filename, &*file.content_type),
        ("latest.png", "image/png")
    );
}

#[test]
fn absolute_paths_and_dotdot_pass_when_outside_root_is_allowed() {
    let outside = tempfile::tempdir().unwrap();
    let plan = outside.path().join("plan.pdf");
    fs::write(&plan, "%PDF-1.4\n").unwrap();
    let (dir, manifest) = temp_manifest(&[format!("D-1,{P},Broken hinge,,,,,{}", plan.display())]);
    let sibling = dir.path().join("sub");
    fs::create_dir(&sibling).unwrap();
    let nested = sibling.join("manifest.csv");
    fs::write(
        &nested,
        format!("{HEADER}\nD-2,{P},Fine,,,,,../manifest.csv\n"),
    )
    .unwrap();

    let allowed = ManifestOptions {
        allow_outside_root: true,
        ..ManifestOptions::default()
    };
    let checked = check(&manifest, &allowed).unwrap();
    assert!(checked.is_clean(), "{:?}", checked.problems);
    assert_eq!(&*checked.tickets[0].attachments[0].filename, "plan.pdf");
    let checked = check(&nested, &allowed).unwrap();
    assert!(checked.is_clean(), "{:?}", checked.problems);
    assert_eq!(&*checked.tickets[0].attachments[0].content_type, "text/csv");
}

#[test]
fn files_root_option_replaces_the_manifest_folder() {
    let files = tempfile::tempdir().unwrap();
    fs::write(files.path().join("a.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    let (_dir, manifest) = temp_manifest(&[format!("D-1,{P},Broken hinge,,,,,a.jpg")]);
    assert!(
        !check(&manifest, &ManifestOptions::default())
            .unwrap()
            .is_clean()
    );
    let opts = ManifestOptions {
        files_root: Some(files.path().to_owned()),
        ..ManifestOptions::default()
    };
    let checked = check(&manifest, &opts).unwrap();
    assert!(checked.is_clean(), "{:?}", checked.problems);
    let missing_root = ManifestOptions {
        files_root: Some(files.path().join("nope")),
        ..ManifestOptions::default()
    };
    assert!(matches!(
        check(&manifest, &missing_root),
        Err(ManifestError::FilesRoot { .. })
    ));
}

#[test]
fn a_file_over_five_gib_is_refused_at_check_time() {
    let (dir, manifest) = temp_manifest(&[
        format!("D-1,{P},Drone survey,,,,,survey.mp4"),
        format!("D-2,{P},Exactly at the limit,,,,,limit.mp4"),
    ]);
    // Sparse files: no real 5 GiB is written.
    File::create(dir.path().join("survey.mp4"))
        .unwrap()
        .set_len(MAX_FILE_SIZE + 1)
        .unwrap();
    File::create(dir.path().join("limit.mp4"))
        .unwrap()
        .set_len(MAX_FILE_SIZE)
        .unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    let problems: Vec<String> = checked.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        vec![format!(
            "{}:2: attachments: \"survey.mp4\" is {} bytes, over the 5 GiB limit of a single upload",
            manifest.display(),
            MAX_FILE_SIZE + 1
        )]
    );
    assert_eq!(refs(&checked), vec!["D-2"]);
    assert_eq!(checked.bytes(), MAX_FILE_SIZE);
}

#[test]
fn every_problem_of_a_row_is_reported_in_one_pass() {
    let (_dir, manifest) = temp_manifest(&[format!(
        "D-1,{P},,,asap,Sam,sam@,missing-a.jpg; missing-b.jpg"
    )]);
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    let fields: Vec<_> = checked
        .problems
        .iter()
        .map(|p| p.field.as_deref())
        .collect();
    assert_eq!(
        fields,
        vec![
            Some("priority"),
            Some("contact_email"),
            Some("attachments"),
            Some("attachments"),
            Some("title"),
        ]
    );
    assert!(checked.problems.iter().all(|p| p.line == 2));
    assert_eq!(checked.skipped_refs, vec!["D-1"]);
}

#[test]
fn a_row_with_a_broken_key_drops_every_ticket_with_its_ref() {
    let (dir, manifest) = temp_manifest(&[
        format!("D-1,{P},Broken hinge,,,,,a.jpg"),
        "D-1,not-a-project,,,,,,b.jpg".to_owned(),
        format!("D-2,{P},Fine,,,,,"),
    ]);
    fs::write(dir.path().join("a.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    fs::write(dir.path().join("b.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert_eq!(checked.problems.len(), 1);
    assert_eq!(refs(&checked), vec!["D-2"]);
    assert_eq!(checked.skipped_refs, vec!["D-1"]);
}

#[test]
fn blank_rows_and_crlf_line_ends_keep_line_numbers_true() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    let text = format!(
        "{HEADER}\r\nD-1,{P},Fine,,,,,\r\n\r\n,,,,,,,\r\nD-2,{P},\"Two\r\nlines\",,,,,\r\nD-3,{P},Bad,,soon,,,\r\n"
    );
    fs::write(&manifest, text).unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    let lines: Vec<u64> = checked.tickets.iter().map(|t| t.line).collect();
    assert_eq!(lines, vec![2, 5]);
    assert_eq!(checked.tickets[1].title, "Two\r\nlines");
    assert_eq!(checked.problems.len(), 1);
    assert_eq!(checked.problems[0].line, 7);
}

#[test]
fn the_sample_manifest_checks_clean() {
    let checked = check(
        Path::new("samples/manifest.csv"),
        &ManifestOptions::default(),
    )
    .unwrap();
    assert!(checked.is_clean(), "{}", render_problems(&checked.problems));
    assert!(checked.tickets.len() >= 10, "{}", checked.summary());
    let projects: std::collections::HashSet<_> =
        checked.tickets.iter().map(|t| t.project_id).collect();
    assert_eq!(projects.len(), 2);
    assert!(checked.tickets.iter().any(|t| t.attachments.is_empty()));
    assert!(checked.tickets.iter().any(|t| t.attachments.len() >= 3));
    assert!(
        checked
            .tickets
            .iter()
            .flat_map(|t| &t.attachments)
            .any(|a| a.filename.contains(' '))
    );
    let types: std::collections::HashSet<&str> = checked
        .tickets
        .iter()
        .flat_map(|t| &t.attachments)
        .map(|a| &*a.content_type)
        .collect();
    for expected in ["image/jpeg", "image/png", "application/pdf"] {
        assert!(types.contains(expected), "{types:?}");
    }
}

/// Random inputs built from CSV-ish pieces (and raw bytes) never make `check` panic or
/// fail to answer, and what it answers is consistent.
#[test]
fn random_input_never_panics_and_always_yields_a_consistent_answer() {
    const PIECES: &[&[u8]] = &[
        b",",
        b",",
        b"\"",
        b"\"\"",
        b"\n",
        b"\r\n",
        b"\r",
        b";",
        b" ",
        b"ref",
        b"project_id",
        b"title",
        b"attachments",
        b"priority",
        b"contact_email",
        b"REF",
        b"high",
        b"urgent",
        b"3f2b8c1e-5d4a-4e7b-9c1d-2a6f8e0b7c41",
        b"a.jpg",
        b"../a.jpg",
        b"/etc/passwd",
        b"dir",
        b"empty.jpg",
        b"@",
        b"x@y.z",
        b"\xEF\xBB\xBF",
        b"\0",
        b"\xFF\xD8\xFF",
        b"\xE9",
        b"\x89PNG\r\n\x1A\n",
        b"\xF0\x9F\x8F\x97",
    ];
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    fs::write(dir.path().join("empty.jpg"), b"").unwrap();
    fs::create_dir(dir.path().join("dir")).unwrap();
    let manifest = dir.path().join("fuzz.csv");
    let mut rng = StdRng::seed_from_u64(0x5EED_CA5E);
    for round in 0..400 {
        let mut input = Vec::new();
        if round % 2 == 0 {
            input.extend_from_slice(HEADER.as_bytes());
            input.push(b'\n');
        }
        for _ in 0..rng.random_range(0..120) {
            if rng.random_bool(0.1) {
                input.push(rng.random());
            } else {
                input.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
            }
        }
        fs::write(&manifest, &input).unwrap();
        let checked = check(&manifest, &ManifestOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: {e} for {input:?}"));
        for problem in &checked.problems {
            assert!(problem.line >= 1, "round {round}: {problem}");
            assert!(
                problem
                    .to_string()
                    .starts_with(&manifest.display().to_string())
            );
        }
        assert!(
            checked.problems.is_sorted_by_key(|p| p.line),
            "round {round}"
        );
        if checked.is_clean() {
            assert!(checked.skipped_refs.is_empty(), "round {round}: {input:?}");
        }
        for ticket in &checked.tickets {
            assert!(!ticket.title.is_empty(), "round {round}");
            assert!(
                ticket
                    .attachments
                    .iter()
                    .all(|a| a.size > 0 && a.size <= MAX_FILE_SIZE)
            );
        }
    }
}

#[test]
fn a_manifest_can_be_read_from_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    let fifo = dir.path().join("manifest.csv");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let rows = format!("{HEADER}\nD-1,{P},Broken hinge,,,,,a.jpg\nD-2,{P},Bad,,soon,,,\n");
            fs::write(fifo, rows).unwrap();
        })
    };
    let checked = check(&fifo, &ManifestOptions::default()).unwrap();
    writer.join().unwrap();
    assert_eq!(refs(&checked), vec!["D-1"]);
    assert_eq!(checked.problems.len(), 1);
    assert_eq!(checked.problems[0].line, 3);
}

fn problem_lines(checked: &Checked) -> Vec<String> {
    checked.problems.iter().map(ToString::to_string).collect()
}

const NUL: &str = "contains a NUL byte (0x00), which the store cannot hold";

#[test]
fn a_nul_byte_in_a_field_is_a_problem_on_its_line_and_column() {
    let (dir, manifest) = temp_manifest(&[
        format!("D-1,{P},Crack\0ed tile,,,,,a.jpg"),
        format!("D-2,{P},Fine,,,,,a.jpg"),
    ]);
    fs::write(dir.path().join("a.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert_eq!(
        problem_lines(&checked),
        vec![format!("{}:2: title: {NUL}", manifest.display())]
    );
    assert_eq!(refs(&checked), vec!["D-2"]);
    assert_eq!(checked.skipped_refs, vec!["D-1"]);
}

#[test]
fn a_nul_byte_late_in_a_large_manifest_is_found_by_check() {
    // Line n holds ref D-n; the header is line 1.
    let rows: Vec<String> = (2..=3000)
        .map(|line| match line {
            2002 => format!("D-{line},{P},Crack\0ed tile,,,,,a.jpg"),
            2500 => format!("D-{line},{P},Fine,,,,,a.jpg;b\0.jpg"),
            2750 => format!("D-{line},{P},Fine,,,Sam\0,,a.jpg"),
            2999 => format!("D-{line}\0,{P},Fine,,,,,a.jpg"),
            _ => format!("D-{line},{P},Ticket {line},,,,,a.jpg"),
        })
        .collect();
    let (dir, manifest) = temp_manifest(&rows);
    fs::write(dir.path().join("a.jpg"), b"\xFF\xD8\xFF\xD9").unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    let m = manifest.display();
    assert_eq!(
        problem_lines(&checked),
        vec![
            format!("{m}:2002: title: {NUL}"),
            format!("{m}:2500: attachments: {NUL}"),
            format!("{m}:2750: contact_name: {NUL}"),
            format!("{m}:2999: ref: {NUL}"),
        ]
    );
    assert_eq!(checked.tickets.len(), 2995);
    assert_eq!(checked.skipped_refs, vec!["D-2002", "D-2500", "D-2750"]);
}

#[test]
fn a_nul_byte_in_the_header_line_means_the_file_is_not_a_csv() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    let not_csv = |content: &str| {
        format!(
            "{}:1: not a CSV file: {content}; expected a UTF-8 header row ({COLUMNS})",
            manifest.display()
        )
    };

    fs::write(&manifest, format!("ref,project_id,ti\0tle\nD-1,{P},Fine\n")).unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert_eq!(
        problem_lines(&checked),
        vec![not_csv("it has binary content")]
    );

    // What Excel's "Unicode text" writes: UTF-16 with a BOM, a NUL beside every letter.
    let utf16: Vec<u8> = "\u{FEFF}ref,project_id,title\nD-1,x,y\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    fs::write(&manifest, utf16).unwrap();
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert_eq!(problem_lines(&checked), vec![not_csv("it is UTF-16 text")]);
}

#[test]
fn a_ref_too_long_for_the_stores_index_is_refused_at_check() {
    let (_dir, manifest) = temp_manifest(&[
        format!("{},{P},At the limit,,,,,", "a".repeat(MAX_REF_LEN)),
        format!("{},{P},Over the limit,,,,,", "b".repeat(MAX_REF_LEN + 1)),
    ]);
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert_eq!(
        problem_lines(&checked),
        vec![format!(
            "{}:3: ref: is 1001 bytes long; a ref may be at most 1000 bytes (the store indexes it)",
            manifest.display()
        )]
    );
    assert_eq!(checked.tickets.len(), 1);
    assert_eq!(checked.tickets[0].reference.len(), MAX_REF_LEN);
}

#[test]
fn continuation_rows_with_a_blank_project_join_their_refs_ticket() {
    let checked = check_corpus("continuation_rows.csv");
    assert!(checked.is_clean(), "{}", render_problems(&checked.problems));
    assert_eq!(refs(&checked), vec!["D-1", "D-2", "D-3"]);

    // Continuations after the first row: fields from the first row, files in line order.
    let first = &checked.tickets[0];
    assert_eq!(first.line, 2);
    assert_eq!(first.project_id, ProjectId(P.parse().unwrap()));
    assert_eq!(first.title, "Broken hinge");
    assert_eq!(first.address.as_deref(), Some("Unit 405, 123 Main St"));
    assert_eq!(first.priority, Some(Priority::High));
    let files = |ticket: &visibuild_import::manifest::TicketSpec| -> Vec<(String, u64)> {
        ticket
            .attachments
            .iter()
            .map(|a| (a.path.to_string(), a.line))
            .collect()
    };
    let owned = |list: &[(&str, u64)]| -> Vec<(String, u64)> {
        list.iter().map(|(p, l)| (p.to_string(), *l)).collect()
    };
    assert_eq!(
        files(first),
        owned(&[
            ("files/photo.jpg", 2),
            ("files/plan.pdf", 3),
            ("files/cracked tile.jpg", 5),
        ])
    );

    // Continuations before the row that gives the project: one ticket from its first line.
    let before = &checked.tickets[2];
    assert_eq!(before.line, 6);
    assert_eq!(before.project_id, ProjectId(Q.parse().unwrap()));
    assert_eq!(before.title, "Loose tile");
    assert_eq!(
        files(before),
        owned(&[
            ("files/photo.jpg", 6),
            ("files/scan", 7),
            ("files/plan.pdf", 8),
        ])
    );
}

#[test]
fn a_blank_project_is_an_error_when_its_ref_has_two_projects() {
    let checked = check_corpus("continuation_two_projects.csv");
    let expected: Vec<String> = [
        // The second project comes after the continuation row.
        format!(
            r#"4: project_id: blank, but ref "A-1" exists under two projects ({P} on line 2, {Q} on line 5); give the project_id"#
        ),
        // Continuation rows first: the projects are named where they are given.
        format!(
            r#"6: project_id: blank, but ref "A-3" exists under two projects ({P} on line 8, {Q} on line 9); give the project_id"#
        ),
        format!(
            r#"7: project_id: blank, but ref "A-3" exists under two projects ({P} on line 8, {Q} on line 9); give the project_id"#
        ),
        // A ref no row gives a project stays a missing value, on every row.
        "10: project_id: missing required value".to_owned(),
        "11: project_id: missing required value".to_owned(),
    ]
    .iter()
    .map(|line| format!("tests/manifests/continuation_two_projects.csv:{line}"))
    .collect();
    assert_eq!(problem_lines(&checked), expected);
    assert_eq!(refs(&checked), vec!["A-2"]);
    assert_eq!(checked.skipped_refs, vec!["A-1", "A-3", "A-5"]);
}

#[test]
fn a_blank_project_names_the_first_two_of_more_projects() {
    const R: &str = "0c4e8b1a-7f3d-4a2e-9b5c-6d1e2f3a4b5c";
    let (_dir, manifest) = temp_manifest(&[
        format!("A-1,{P},One,,,,,"),
        format!("A-1,{Q},Two,,,,,"),
        format!("A-1,{R},Three,,,,,"),
        "A-1,,,,,,,".to_owned(),
        format!("A-2,{P},Fine,,,,,"),
    ]);
    let checked = check(&manifest, &ManifestOptions::default()).unwrap();
    assert_eq!(
        problem_lines(&checked),
        vec![format!(
            r#"{}:5: project_id: blank, but ref "A-1" exists under 3 projects ({P} on line 2, {Q} on line 3, ...); give the project_id"#,
            manifest.display()
        )]
    );
    assert_eq!(refs(&checked), vec!["A-2"]);
    assert_eq!(checked.skipped_refs, vec!["A-1"]);
}
