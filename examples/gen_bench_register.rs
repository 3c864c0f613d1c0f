//! Writes a large register for `bench/register.sh`: `register.xlsx` and/or a `;`-separated
//! `register.csv` of N rows in a site team's columns, their map, and 100 small shared files
//! the rows name round-robin (so a huge register costs little disk).
//!
//!     cargo run --release --example gen_bench_register -- DIR ROWS xlsx|csv

use std::io::Write;
use std::path::Path;

use rust_xlsxwriter::{Workbook, XlsxError};

const PROJECT: &str = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804";
const HEADER: [&str; 9] = [
    "Item #",
    "Project",
    "Description",
    "Location",
    "Severity",
    "Raised By",
    "Raised By Email",
    "Photo 1",
    "Other Files",
];
const SEVERITIES: [&str; 3] = ["Critical", "Major", "Minor"];
const SHARED: usize = 100;

fn cells(i: usize) -> [String; 9] {
    [
        (100_000 + i).to_string(),
        "Harbour View Stage 2".to_owned(),
        format!("Defect number {i} found on inspection"),
        format!("Level {} unit {}", i % 40, i % 12),
        SEVERITIES[i % 3].to_owned(),
        "Sam Lee".to_owned(),
        "sam@example.com".to_owned(),
        format!("files/f{:03}.jpg", i % SHARED),
        if i.is_multiple_of(4) {
            format!(
                "files/f{:03}.jpg\nfiles/f{:03}.jpg",
                (i + 1) % SHARED,
                (i + 2) % SHARED
            )
        } else {
            String::new()
        },
    ]
}

fn main() -> Result<(), XlsxError> {
    let args: Vec<String> = std::env::args().collect();
    let (dir, rows, kind) = (
        Path::new(&args[1]),
        args[2].parse::<usize>().unwrap(),
        &args[3],
    );
    std::fs::create_dir_all(dir.join("files"))?;
    for f in 0..SHARED {
        std::fs::write(
            dir.join(format!("files/f{f:03}.jpg")),
            [0xFFu8, 0xD8, 0xFF, 0xE0, f as u8],
        )?;
    }
    std::fs::write(
        dir.join("register.map.toml"),
        format!(
            "sheet = \"Defects\"\nheader_row = 2\n\n[columns]\nref = \"Item #\"\nproject_id = \"Project\"\n\
             title = \"{{Description}} – {{Location}}\"\naddress = \"Location\"\npriority = \"Severity\"\n\
             contact_name = \"Raised By\"\ncontact_email = \"Raised By Email\"\n\
             attachments = [\"Photo 1\", \"Other Files\"]\n\n[priority]\nCritical = \"high\"\n\
             Major = \"medium\"\nMinor = \"low\"\n\n[projects]\n\"Harbour View Stage 2\" = \"{PROJECT}\"\n"
        ),
    )?;
    if kind == "xlsx" {
        let mut book = Workbook::new();
        let sheet = book.add_worksheet();
        sheet.set_name("Defects")?;
        sheet.write_string(0, 0, "Defect register")?;
        for (c, name) in HEADER.iter().enumerate() {
            sheet.write_string(1, c as u16, *name)?;
        }
        for i in 0..rows {
            let r = 2 + i as u32;
            for (c, text) in cells(i).iter().enumerate() {
                if c == 0 {
                    sheet.write_number(r, 0, (100_000 + i) as f64)?;
                } else if !text.is_empty() {
                    sheet.write_string(r, c as u16, text)?;
                }
            }
        }
        book.save(dir.join("register.xlsx"))?;
    } else {
        let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("register.csv"))?);
        writeln!(out, "Defect register")?;
        writeln!(out, "{}", HEADER.join(";"))?;
        for i in 0..rows {
            let mut c = cells(i);
            c[8] = format!("\"{}\"", c[8]);
            writeln!(out, "{}", c.join(";"))?;
        }
        out.flush()?;
    }
    Ok(())
}
