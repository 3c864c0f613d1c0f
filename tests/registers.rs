//! Registers in their own shape, through the real binary: a site team's `.xlsx` (title row
//! above the header, its own columns, project names, severities, photos over several
//! columns and multi-line cells, a formula, a merged title) and the same register as a
//! semicolon CSV, imported with `--map` only against the sandbox on both stores.

#[macro_use]
mod common;

use common::{Db, bin, output, start, with_token};
use rust_xlsxwriter::{Format, Formula, Workbook};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use visibuild_sandbox::{Sandbox, SandboxConfig};

const PROJECT: &str = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804";

const HEADER: [&str; 11] = [
    "Item #",
    "Project",
    "Description",
    "Location",
    "Severity",
    "Raised By",
    "Raised By Email",
    "Photo 1",
    "Photo 2",
    "Other Files",
    "Date Raised",
];

/// One row of the register, as the site team typed it.
struct Item {
    number: f64,
    project: &'static str,
    description: &'static str,
    /// A formula's cached value in the spreadsheet (`None`: plain text below).
    location: &'static str,
    location_formula: bool,
    severity: &'static str,
    raised_by: &'static str,
    email: &'static str,
    photo1: &'static str,
    photo2: &'static str,
    other: &'static str,
}

fn items() -> Vec<Item> {
    vec![
        Item {
            number: 1001.0,
            project: "Harbour View Stage 2",
            description: "Cracked tile",
            location: "Level 2 bathroom",
            location_formula: false,
            severity: "Critical",
            raised_by: "Sam Lee",
            email: "sam@example.com",
            photo1: "photos/1001-a.jpg",
            photo2: "photos/1001-b.jpg",
            other: "docs/1001.pdf\nplans/level-2.pdf",
        },
        Item {
            number: 1002.0,
            project: "harbour view stage 2",
            description: "Loose handrail",
            location: "Stair 1",
            location_formula: false,
            severity: "minor",
            raised_by: "",
            email: "",
            photo1: "photos/1002.jpg",
            photo2: "",
            other: "",
        },
        Item {
            number: 1003.0,
            project: "Harbour View Stage 2",
            description: "Water stain",
            location: "Roof east",
            location_formula: true,
            severity: "MAJOR",
            raised_by: "Ana Ruiz",
            email: "",
            photo1: "",
            photo2: "",
            other: "docs/1003.pdf; photos/1003.jpg",
        },
        Item {
            number: 1004.0,
            project: "",
            description: "Scuffed door",
            location: "Unit 4",
            location_formula: false,
            severity: "",
            raised_by: "",
            email: "",
            photo1: "",
            photo2: "",
            other: "",
        },
    ]
}

fn extra() -> Item {
    Item {
        number: 1005.0,
        project: "Harbour View Stage 2",
        description: "Missing grout",
        location: "Kitchen",
        location_formula: false,
        severity: "Minor",
        raised_by: "",
        email: "",
        photo1: "photos/1005.jpg",
        photo2: "",
        other: "",
    }
}

const MAP: &str = r#"sheet = "Defects"
header_row = 3

[columns]
ref = "Item #"
project_id = "Project"
title = "{Description} – {Location}"
address = "Location"
priority = "Severity"
contact_name = "Raised By"
contact_email = "Raised By Email"
attachments = ["Photo 1", "Photo 2", "Other Files"]

[priority]
Critical = "high"
Major = "high"
Minor = "low"

[projects]
"Harbour View Stage 2" = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804"

[defaults]
project_id = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804"
"#;

/// A folder with the register's files and its map.
struct Register {
    dir: tempfile::TempDir,
}

impl Register {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in [
            ("photos/1001-a.jpg", &b"\xFF\xD8\xFF\xE0 tile a"[..]),
            ("photos/1001-b.jpg", b"\xFF\xD8\xFF\xE0 tile b, closer"),
            ("docs/1001.pdf", b"%PDF-1.4 report"),
            ("plans/level-2.pdf", b"%PDF-1.4 level 2 plan"),
            ("photos/1002.jpg", b"\xFF\xD8\xFF\xE0 handrail"),
            ("docs/1003.pdf", b"%PDF-1.4 roof"),
            ("photos/1003.jpg", b"\xFF\xD8\xFF\xE0 stain"),
            ("photos/1005.jpg", b"\xFF\xD8\xFF\xE0 grout"),
        ] {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        std::fs::write(dir.path().join("register.map.toml"), MAP).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn map(&self) -> String {
        self.path("register.map.toml").display().to_string()
    }

    /// `register.xlsx`: a merged title row, a blank row, the header on row 3, the items
    /// from row 4 (numbers as numbers, a date, a formula with its cached value).
    fn xlsx(&self, items: &[Item]) -> String {
        let mut book = Workbook::new();
        book.add_worksheet().set_name("Cover").unwrap();
        let sheet = book.add_worksheet();
        sheet.set_name("Defects").unwrap();
        sheet
            .merge_range(0, 0, 0, 3, "Harbour View – Defect Register", &Format::new())
            .unwrap();
        for (c, name) in HEADER.iter().enumerate() {
            sheet.write_string(2, c as u16, *name).unwrap();
        }
        let date = Format::new().set_num_format("dd/mm/yyyy");
        for (i, item) in items.iter().enumerate() {
            let r = 3 + i as u32;
            sheet.write_number(r, 0, item.number).unwrap();
            let texts = [
                (1, item.project),
                (2, item.description),
                (4, item.severity),
                (5, item.raised_by),
                (6, item.email),
                (7, item.photo1),
                (8, item.photo2),
                (9, item.other),
            ];
            for (c, text) in texts {
                if !text.is_empty() {
                    sheet.write_string(r, c, text).unwrap();
                }
            }
            if item.location_formula {
                let (a, b) = item.location.split_once(' ').unwrap();
                let formula = Formula::new(format!("=\"{a} \"&\"{b}\"")).set_result(item.location);
                sheet.write_formula(r, 3, formula).unwrap();
            } else {
                sheet.write_string(r, 3, item.location).unwrap();
            }
            sheet
                .write_number_with_format(r, 10, 45943.0 + i as f64, &date)
                .unwrap();
        }
        let path = self.path("register.xlsx");
        book.save(&path).unwrap();
        path.display().to_string()
    }

    /// `register.csv`: the same register as European Excel saves it, `;`-separated.
    fn csv(&self, items: &[Item]) -> String {
        let mut text = String::from("Harbour View – Defect Register\n\n");
        text.push_str(&HEADER.join(";"));
        text.push('\n');
        for (i, item) in items.iter().enumerate() {
            let cells = [
                format!("{}", item.number as i64),
                item.project.into(),
                item.description.into(),
                item.location.into(),
                item.severity.into(),
                item.raised_by.into(),
                item.email.into(),
                item.photo1.into(),
                item.photo2.into(),
                format!("\"{}\"", item.other),
                format!("2025-10-{}", 13 + i),
            ];
            text.push_str(&cells.join(";"));
            text.push('\n');
        }
        let path = self.path("register.csv");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

/// What a created ticket looks like, for comparing: title -> (priority, address, contact,
/// attachment filenames with sizes).
type Seen = BTreeMap<String, (String, String, String, Vec<(String, u64)>)>;

fn created(sb: &Sandbox) -> Seen {
    let mut seen = BTreeMap::new();
    for t in sb.tickets() {
        assert_eq!(t.project_id.to_string(), PROJECT, "{t:?}");
        let mut files: Vec<_> = t
            .attachments
            .iter()
            .map(|a| (a.filename.clone(), a.size))
            .collect();
        files.sort();
        let contact = t
            .contact
            .as_ref()
            .map(|c| format!("{:?}/{:?}", c.name, c.email))
            .unwrap_or_default();
        let value = (
            format!("{:?}", t.priority),
            t.address.clone().unwrap_or_default(),
            contact,
            files,
        );
        assert!(
            seen.insert(t.title.clone(), value).is_none(),
            "{} created twice",
            t.title
        );
    }
    seen
}

fn expected(with_extra: bool) -> Seen {
    let f = |name: &str, size: u64| (name.to_owned(), size);
    let mut want = BTreeMap::from([
        (
            "Cracked tile – Level 2 bathroom".to_owned(),
            (
                "Some(High)".to_owned(),
                "Level 2 bathroom".to_owned(),
                "Some(\"Sam Lee\")/Some(\"sam@example.com\")".to_owned(),
                vec![
                    f("1001-a.jpg", 11),
                    f("1001-b.jpg", 19),
                    f("1001.pdf", 15),
                    f("level-2.pdf", 21),
                ],
            ),
        ),
        (
            "Loose handrail – Stair 1".to_owned(),
            (
                "Some(Low)".to_owned(),
                "Stair 1".to_owned(),
                String::new(),
                vec![f("1002.jpg", 13)],
            ),
        ),
        (
            "Water stain – Roof east".to_owned(),
            (
                "Some(High)".to_owned(),
                "Roof east".to_owned(),
                "Some(\"Ana Ruiz\")/None".to_owned(),
                vec![f("1003.jpg", 10), f("1003.pdf", 13)],
            ),
        ),
        (
            "Scuffed door – Unit 4".to_owned(),
            (
                "None".to_owned(),
                "Unit 4".to_owned(),
                String::new(),
                vec![],
            ),
        ),
    ]);
    for files in want.values_mut() {
        files.3.sort();
    }
    if with_extra {
        want.insert(
            "Missing grout – Kitchen".to_owned(),
            (
                "Some(Low)".to_owned(),
                "Kitchen".to_owned(),
                String::new(),
                vec![f("1005.jpg", 10)],
            ),
        );
    }
    want
}

on_both!(an_xlsx_register_and_its_semicolon_csv_import_with_a_map_every_ticket_once);
async fn an_xlsx_register_and_its_semicolon_csv_import_with_a_map_every_ticket_once(db: Db) {
    let sb = start(SandboxConfig::default()).await;
    let register = Register::new();
    let xlsx = register.xlsx(&items());
    let map = register.map();
    let import = |file: String| {
        let args = ["import", &file, "--map", &map, "--api-url", &sb.base_url()].map(str::to_owned);
        output(with_token(&db, &args.each_ref().map(String::as_str)))
    };

    let out = import(xlsx).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("tickets: 4 created, 0 failed, 0 need review, 0 not finished"),
        "{out:?}"
    );
    assert_eq!(created(&sb), expected(false));
    let status = common::status_json(&db).await;
    assert_eq!(status[0]["batch"], "register.xlsx", "{status}");

    // The same register as a `;` CSV: the same (project, ref)s, nothing new.
    let csv = register.csv(&items());
    let out = import(csv.clone()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.all()
            .contains("0 tickets and 0 files added; 4 already known"),
        "{out:?}"
    );
    assert_eq!(created(&sb), expected(false));

    // A new row: only it is created.
    let mut more = items();
    more.push(extra());
    register.csv(&more);
    let out = import(csv).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.all()
            .contains("1 ticket and 1 file added; 4 already known"),
        "{out:?}"
    );
    assert_eq!(created(&sb), expected(true));
}

on_both!(an_unmapped_severity_is_reported_on_its_own_row_and_nothing_is_loaded);
async fn an_unmapped_severity_is_reported_on_its_own_row_and_nothing_is_loaded(db: Db) {
    let register = Register::new();
    let mut rows = items();
    rows.push(Item {
        severity: "Urgent",
        ..extra()
    });
    let xlsx = register.xlsx(&rows);
    let out = output(bin(&db, &["enqueue", &xlsx, "--map", &register.map()])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.all().contains(&format!(
            "{xlsx}:Defects:8: priority: \"Urgent\" is not in the map's [priority] (Critical, Major, Minor)"
        )),
        "{out:?}"
    );
    assert!(out.all().contains("nothing was loaded"), "{out:?}");
    let status = common::status_json(&db).await;
    assert_eq!(status.as_array().map(Vec::len), Some(0), "{status}");

    // The CSV says the same on its own line (the multi-line cell of 1001 spans two).
    let csv = register.csv(&rows);
    let out = output(bin(&db, &["check", &csv, "--map", &register.map()])).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "{csv}:9: priority: \"Urgent\" is not in the map's [priority] (Critical, Major, Minor)"
        )),
        "{out:?}"
    );
}

async fn check(args: &[&str]) -> common::Out {
    let db = Db::sqlite("unused");
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    output(bin(&db, &all)).await
}

#[tokio::test]
async fn a_map_naming_a_column_the_register_lacks_is_refused_before_any_row() {
    let register = Register::new();
    let xlsx = register.xlsx(&items());
    let bad = register.path("bad.toml");
    std::fs::write(
        &bad,
        MAP.replace("\"Raised By Email\"", "\"Email\"")
            .replace("{Location}", "{Where}"),
    )
    .unwrap();
    let out = check(&[&xlsx, "--map", bad.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out:?}");
    let columns = HEADER.join(", ");
    for line in [
        format!(
            "{xlsx}:Defects:3: title: the map names column \"Where\", which the register does not have (its columns: {columns})"
        ),
        format!(
            "{xlsx}:Defects:3: contact_email: the map names column \"Email\", which the register does not have (its columns: {columns})"
        ),
    ] {
        assert!(out.stdout.contains(&line), "{line}\n{out:?}");
    }
    assert!(out.stdout.contains("errors: 0 tickets"), "{out:?}");
}

#[tokio::test]
async fn a_missing_sheet_names_the_sheets_and_a_bad_map_names_its_line() {
    let register = Register::new();
    let xlsx = register.xlsx(&items());
    let other = register.path("other.toml");
    std::fs::write(&other, MAP.replace("\"Defects\"", "\"Defect\"")).unwrap();
    let out = check(&[&xlsx, "--map", other.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "{xlsx} has no sheet \"Defect\" (its sheets: Cover, Defects)"
        )),
        "{out:?}"
    );

    let typo = register.path("typo.toml");
    std::fs::write(&typo, MAP.replace("[priority]", "[priorities]")).unwrap();
    let out = check(&[&xlsx, "--map", typo.to_str().unwrap()]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!(
            "map {}:14: unknown field `priorities`",
            typo.display()
        )),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_unknown_project_name_is_refused_on_its_row() {
    let register = Register::new();
    let mut rows = items();
    rows.push(Item {
        project: "Harbour View Stage 3",
        ..extra()
    });
    let xlsx = register.xlsx(&rows);
    let out = check(&[&xlsx, "--map", &register.map()]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "{xlsx}:Defects:8: project_id: \"Harbour View Stage 3\" is not a UUID nor a name in the map's [projects] (Harbour View Stage 2)"
        )),
        "{out:?}"
    );
    assert!(out.stdout.contains("4 valid, 1 with problems"), "{out:?}");
}

#[tokio::test]
async fn the_manifests_own_columns_need_no_map_in_a_spreadsheet_or_a_semicolon_csv() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jpg"), b"\xFF\xD8\xFF\xE0").unwrap();
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    let header = ["ref", "project_id", "title", "priority", "attachments"];
    for (c, name) in header.iter().enumerate() {
        sheet.write_string(0, c as u16, *name).unwrap();
    }
    sheet.write_number(1, 0, 7.0).unwrap();
    sheet.write_string(1, 1, PROJECT).unwrap();
    sheet.write_string(1, 2, "Leak").unwrap();
    sheet.write_string(1, 3, "medium").unwrap();
    sheet.write_string(1, 4, "a.jpg").unwrap();
    let xlsx = dir.path().join("plain.xlsx");
    book.save(&xlsx).unwrap();
    let out = check(&[xlsx.to_str().unwrap(), "--preview", "1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ticket \"7\" (line 2)"), "{out:?}");
    assert!(
        out.stdout.contains("ok: 1 ticket, 1 file, 4 B; 0 problems"),
        "{out:?}"
    );

    let csv = dir.path().join("plain.csv");
    std::fs::write(
        &csv,
        format!("ref;project_id;title\n7;{PROJECT};Leak\n8;{PROJECT};\"Drip; slow\"\n"),
    )
    .unwrap();
    let out = check(&[csv.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ok: 2 tickets, 0 files"), "{out:?}");
}

#[tokio::test]
async fn preview_shows_the_first_tickets_as_they_would_be_sent() {
    let register = Register::new();
    let xlsx = register.xlsx(&items());
    let out = check(&[&xlsx, "--map", &register.map(), "--preview", "2"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let expected = format!(
        r#"ticket "1001" (line 4): POST /api/core/v1/tickets
{{
  "title": "Cracked tile – Level 2 bathroom",
  "projectId": "{PROJECT}",
  "address": "Level 2 bathroom",
  "priority": "high",
  "attachmentKeys": [
    "<key of photos/1001-a.jpg>",
    "<key of photos/1001-b.jpg>",
    "<key of docs/1001.pdf>",
    "<key of plans/level-2.pdf>"
  ],
  "contact": {{
    "name": "Sam Lee",
    "email": "sam@example.com"
  }}
}}
files (4, uploaded first):
  photos/1001-a.jpg  11 B (11)  image/jpeg
"#
    );
    assert!(out.stdout.starts_with(&expected), "{out:?}");
    assert!(out.stdout.contains("ticket \"1002\" (line 5)"), "{out:?}");
    assert!(!out.stdout.contains("ticket \"1003\""), "{out:?}");
    assert!(out.stdout.contains("ok: 4 tickets, 7 files"), "{out:?}");
}

#[tokio::test]
async fn map_writes_a_starting_map_that_checks_once_the_project_is_filled_in() {
    let register = Register::new();
    let xlsx = register.xlsx(&items());
    let db = Db::sqlite("unused");
    let out = output(bin(&db, &["map", &xlsx])).await;
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        // The first sheet is an empty cover: the register's sheet is the first with rows.
        "sheet = \"Defects\"",
        "header_row = 3",
        "ref = \"Item #\"",
        "project_id = \"Project\"",
        "title = \"Description\"",
        "address = \"Location\"",
        "priority = \"Severity\"",
        "contact_name = \"Raised By\"",
        "contact_email = \"Raised By Email\"",
        "attachments = [\"Photo 1\", \"Photo 2\", \"Other Files\"]",
        "# not used: Date Raised",
        "Critical = \"high\"",
        "MAJOR = \"high\"",
        "minor = \"low\"",
        "\"Harbour View Stage 2\" = \"\"  # fill in",
        "\"harbour view stage 2\" = \"\"  # fill in",
    ] {
        assert!(out.stdout.contains(line), "{line}\n{out:?}");
    }
    let filled = out
        .stdout
        .replace("= \"\"  # fill in", &format!("= \"{PROJECT}\""))
        .replace(
            "# project_id = \"\"  # e.g.",
            &format!("project_id = \"{PROJECT}\"  # e.g."),
        );
    let map = register.path("guessed.toml");
    std::fs::write(&map, filled).unwrap();
    let out = check(&[&xlsx, "--map", map.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("ok: 4 tickets, 7 files"), "{out:?}");

    // The same register as a `;` CSV: its delimiter and header line are found too.
    let csv = register.csv(&items());
    let out = output(bin(&db, &["map", &csv])).await;
    assert_eq!(out.code, 0, "{out:?}");
    for line in [
        "header_row = 3",
        "delimiter = \";\"",
        "attachments = [\"Photo 1\", \"Photo 2\", \"Other Files\"]",
        "MAJOR = \"high\"",
        "\"Harbour View Stage 2\" = \"\"  # fill in",
    ] {
        assert!(out.stdout.contains(line), "{line}\n{out:?}");
    }
    assert!(!out.stdout.contains("sheet ="), "{out:?}");
}

/// `.xls` and `.ods`: small fixtures made by `tests/registers/make_fixtures.py`.
#[tokio::test]
async fn xls_and_ods_registers_read_the_same_as_xlsx() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registers");
    for name in ["register.xls", "register.ods"] {
        let file = fixtures.join(name);
        let map = fixtures.join("register.map.toml");
        let out = check(&[
            file.to_str().unwrap(),
            "--map",
            map.to_str().unwrap(),
            "--preview",
            "3",
        ])
        .await;
        assert_eq!(out.code, 0, "{name}: {out:?}");
        for text in [
            "ticket \"1001\" (line 4)",
            "\"title\": \"Cracked tile – Level 2 bathroom\"",
            "\"priority\": \"high\"",
            "ticket \"1002\" (line 5)",
            "\"priority\": \"low\"",
            "photos/1001-a.jpg  11 B (11)  image/jpeg",
            "ok: 3 tickets, 4 files",
        ] {
            assert!(out.stdout.contains(text), "{name}: {text}\n{out:?}");
        }
    }
}

/// The map layer under random damage: maps and registers mutated byte by byte (braces,
/// quotes, delimiters, newlines, NULs) never panic `check`; each answer is a clean error or
/// problems in the register's coordinates, and whatever it accepts is a whole ticket.
#[test]
fn damaged_maps_and_registers_never_panic_and_answer_in_the_registers_coordinates() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use visibuild_import::manifest::ManifestOptions;

    let register = Register::new();
    let csv = register.csv(&items());
    let base_register = std::fs::read(&csv).unwrap();
    let base_map = MAP.as_bytes().to_vec();
    let noise: &[u8] = b"{}\";,\t|\n\r\0#[]= xX";
    let mut rng = StdRng::seed_from_u64(20);
    let (mut accepted, mut refused, mut problems) = (0, 0, 0);
    for case in 0..400 {
        let mut map = base_map.clone();
        let mut reg = base_register.clone();
        for _ in 0..rng.random_range(0..4) {
            let target = if rng.random_bool(0.5) {
                &mut map
            } else {
                &mut reg
            };
            let at = rng.random_range(0..=target.len());
            match rng.random_range(0..3) {
                0 => target.insert(at, noise[rng.random_range(0..noise.len())]),
                1 if at < target.len() => {
                    target.remove(at);
                }
                _ => target.truncate(at.max(1)),
            }
        }
        let map_path = register.path("fuzz.toml");
        std::fs::write(&map_path, &map).unwrap();
        std::fs::write(&csv, &reg).unwrap();
        let opts = ManifestOptions {
            map: Some(map_path),
            ..ManifestOptions::default()
        };
        match visibuild_import::ingest::check_all(Path::new(&csv), &opts) {
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty(), "case {case}");
            }
            Ok(checked) => {
                accepted += 1;
                problems += checked.problems.len();
                for p in &checked.problems {
                    assert_eq!(p.file, Path::new(&csv), "case {case}: {p}");
                }
                for t in &checked.tickets {
                    assert!(
                        !t.reference.is_empty() && !t.title.is_empty(),
                        "case {case}"
                    );
                }
            }
        }
    }
    assert!(
        accepted > 100 && refused > 10 && problems > 10,
        "{accepted} {refused} {problems}"
    );
}
