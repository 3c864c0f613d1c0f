//! Writes `samples/register.xlsx`: the sample defect register as a site team keeps it — a
//! title row above the header, its own columns, project names, severities in its own words,
//! photos over two columns and a multi-line "Other Files" cell — naming the sample files.
//!
//!     cargo run --example make_sample_register
//!
//! Its map is `samples/register.map.toml` (written by hand from `visibuild-import map`).

use rust_xlsxwriter::{Format, Workbook, XlsxError};

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

/// Item, project, description, location, severity, raised by, e-mail, photo 1, photo 2,
/// other files (one a line), days after 2025-10-13.
type Item = (
    f64,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
);

const ITEMS: [Item; 6] = [
    (
        1001.0,
        "Harbourview Apartments",
        "Kitchen cabinet door hinge broken",
        "Unit 405",
        "Major",
        "Priya Sharma",
        "priya.sharma@example.com.au",
        "files/photos/hv-0101-hinge-1.jpg",
        "files/photos/hv-0101-hinge-2.jpg",
        "",
        0.0,
    ),
    (
        1002.0,
        "Harbourview Apartments",
        "Cracked floor tile in bathroom",
        "Unit 405",
        "Critical",
        "Priya Sharma",
        "priya.sharma@example.com.au",
        "files/photos/hv-0102 cracked tile.jpg",
        "",
        "files/plans/harbourview-level-4-floor-plan.pdf",
        0.0,
    ),
    (
        1003.0,
        "Harbourview Apartments",
        "Balcony balustrade glass panel chipped",
        "Unit 712",
        "Critical",
        "Tom Nguyen",
        "tom.nguyen@example.com.au",
        "files/photos/hv-0104-balustrade-1.jpg",
        "files/photos/hv-0104-balustrade-2.jpg",
        "files/photos/hv-0104-balustrade-3.jpg\nfiles/markup/hv-0104-balustrade-markup.png",
        1.0,
    ),
    (
        1004.0,
        "Harbourview Apartments",
        "Paint scuff on corridor wall near lift",
        "Level 4 corridor",
        "Minor",
        "",
        "",
        "",
        "",
        "",
        2.0,
    ),
    (
        2001.0,
        "Parramatta Rd Townhouses",
        "Garage roller door misaligned",
        "Townhouse 3",
        "Major",
        "Mei Chen",
        "mei.chen@example.com.au",
        "files/photos/pr-2001-roller-door-1.jpg",
        "files/photos/pr-2001-roller-door-2.jpg",
        "",
        3.0,
    ),
    (
        2002.0,
        "Parramatta Rd Townhouses",
        "Smoke alarm missing in upstairs hallway",
        "Townhouse 4",
        "Critical",
        "Jack Murphy",
        "jack.murphy@example.com.au",
        "",
        "",
        "files/plans/parramatta-rd-ground-floor-plan.pdf",
        3.0,
    ),
];

fn main() -> Result<(), XlsxError> {
    let mut book = Workbook::new();
    let sheet = book.add_worksheet();
    sheet.set_name("Defects")?;
    let bold = Format::new().set_bold();
    sheet.merge_range(0, 0, 0, 4, "Defect register – exported 2025-10-20", &bold)?;
    for (c, name) in HEADER.iter().enumerate() {
        sheet.write_string_with_format(2, c as u16, *name, &bold)?;
    }
    let date = Format::new().set_num_format("dd/mm/yyyy");
    let wrap = Format::new().set_text_wrap();
    for (i, item) in ITEMS.iter().enumerate() {
        let r = 3 + i as u32;
        let (number, project, description, location, severity, by, email, p1, p2, other, day) =
            *item;
        sheet.write_number(r, 0, number)?;
        for (c, text) in [
            (1, project),
            (2, description),
            (3, location),
            (4, severity),
            (5, by),
            (6, email),
            (7, p1),
            (8, p2),
        ] {
            if !text.is_empty() {
                sheet.write_string(r, c, text)?;
            }
        }
        if !other.is_empty() {
            sheet.write_string_with_format(r, 9, other, &wrap)?;
        }
        sheet.write_number_with_format(r, 10, 45943.0 + day, &date)?;
    }
    sheet.autofit();
    let out = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/register.xlsx");
    book.save(out)?;
    println!("wrote {out}");
    Ok(())
}
