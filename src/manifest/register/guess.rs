//! `visibuild-import map REGISTER`: a starting map guessed from a register's header, with
//! every value of its priority-like column and every project name listed to fill in.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use uuid::Uuid;

use super::sheet::{Sheet, is_spreadsheet};
use crate::manifest::ManifestError;
use crate::manifest::parse::Column;
use crate::manifest::reader::guess_delimiter;

/// The most distinct values listed under `[priority]` or `[projects]`.
const MAX_VALUES: usize = 200;
/// How many rows from the top may hold the header.
const HEADER_SEARCH: usize = 20;

/// Words that suggest a column holds a field, best first.
fn hints(column: Column) -> &'static [&'static str] {
    match column {
        Column::Ref => &[
            "ref",
            "item #",
            "item no",
            "defect #",
            "defect id",
            "id",
            "no.",
            "number",
            "item",
            "#",
        ],
        Column::ProjectId => &["project", "job", "site"],
        Column::Title => &[
            "title",
            "description",
            "defect",
            "issue",
            "summary",
            "comment",
        ],
        Column::Address => &["address", "location", "area", "room", "level"],
        Column::Priority => &["priority", "severity", "urgency", "risk", "category"],
        Column::ContactName => &[
            "contact",
            "raised by",
            "reported by",
            "inspector",
            "owner",
            "name",
        ],
        Column::ContactEmail => &["email", "e-mail", "mail"],
        Column::Attachments => &[
            "attachment",
            "photo",
            "file",
            "image",
            "picture",
            "document",
            "drawing",
        ],
    }
}

/// A register's rows as text: the first ones (where the header is looked for) with their
/// lines, and an iterator over the rest, streamed (a CSV of any size is never held whole).
struct Rows {
    sheet: Option<String>,
    /// A CSV's delimiter.
    delimiter: u8,
    head: Vec<(u64, Vec<String>)>,
    rest: Box<dyn Iterator<Item = Vec<String>>>,
}

fn rows(path: &Path) -> Result<Rows, ManifestError> {
    if is_spreadsheet(path) {
        let sheet = Sheet::open_first_filled(path)?;
        let name = sheet.name.clone();
        let mut all = sheet.into_text_rows();
        let head = all.by_ref().take(HEADER_SEARCH).collect();
        return Ok(Rows {
            sheet: Some(name),
            delimiter: b',',
            head,
            rest: Box::new(all.map(|(_, cells)| cells)),
        });
    }
    let unreadable = |source: std::io::Error| ManifestError::Unreadable {
        path: path.to_owned(),
        source,
    };
    // The first bytes: the delimiter, and the true lines of the first rows (the reader's
    // own count is off after blank lines).
    let mut start = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 1 << 20), &mut start))
        .map_err(unreadable)?;
    let delimiter = guess_delimiter(&start);
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut records = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file))
        .into_byte_records()
        .map_while(Result::ok);
    let text = |record: csv::ByteRecord| -> Vec<String> {
        record
            .iter()
            .map(|c| {
                String::from_utf8_lossy(c)
                    .trim_start_matches('\u{feff}')
                    .to_owned()
            })
            .collect()
    };
    let mut head = Vec::new();
    for record in records.by_ref().take(HEADER_SEARCH) {
        let mut at = record
            .position()
            .map_or(0, |p| p.byte() as usize)
            .min(start.len());
        // The reader's position may sit on the blank lines it skipped before the record.
        while start.get(at).is_some_and(|b| matches!(b, b'\n' | b'\r')) {
            at += 1;
        }
        let line = 1 + start[..at].iter().filter(|&&b| b == b'\n').count() as u64;
        head.push((line, text(record)));
    }
    Ok(Rows {
        sheet: None,
        delimiter,
        head,
        rest: Box::new(records.map(text)),
    })
}

/// The starting map for `register`, as commented TOML.
pub(crate) fn starting_map(register: &Path) -> Result<String, ManifestError> {
    let Rows {
        sheet,
        delimiter,
        head: rows,
        rest,
    } = rows(register)?;
    let filled = |cells: &Vec<String>| cells.iter().filter(|c| !c.trim().is_empty()).count();
    let widest = rows.iter().map(|(_, c)| filled(c)).max().unwrap_or(0);
    let Some(header_at) = rows
        .iter()
        .position(|(_, c)| widest > 0 && filled(c) == widest)
    else {
        return Err(ManifestError::Unreadable {
            path: register.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no header row in its first rows",
            ),
        });
    };
    let (header_row, header) = &rows[header_at];
    let names: Vec<String> = header.iter().map(|c| c.trim().to_owned()).collect();
    let body = rows[header_at + 1..]
        .iter()
        .map(|(_, cells)| cells.clone())
        .chain(rest);

    let mut used = vec![false; names.len()];
    let mut chosen: Vec<(Column, Vec<usize>)> = Vec::new();
    for column in Column::ALL {
        let lower = |i: usize| names[i].to_lowercase();
        let candidates = |i: usize| !used[i] && !names[i].is_empty();
        let exact = (0..names.len()).find(|&i| candidates(i) && lower(i) == column.name());
        let picked: Vec<usize> = match (exact, column) {
            (Some(i), _) => vec![i],
            (None, Column::Attachments) => (0..names.len())
                .filter(|&i| candidates(i) && hints(column).iter().any(|h| lower(i).contains(h)))
                .collect(),
            (None, _) => hints(column)
                .iter()
                .find_map(|h| {
                    (0..names.len()).find(|&i| {
                        candidates(i)
                            && (lower(i) == *h || (h.len() > 2 && lower(i).contains(h)))
                            && !(column == Column::ContactName && lower(i).contains("mail"))
                    })
                })
                .into_iter()
                .collect(),
        };
        for &i in &picked {
            used[i] = true;
        }
        chosen.push((column, picked));
    }
    // Every distinct value of the priority-like and the project column, in one pass.
    let column_of = |column: Column| {
        chosen
            .iter()
            .find(|(c, _)| *c == column)
            .and_then(|(_, picked)| picked.first().copied())
    };
    let (priority_at, project_at) = (column_of(Column::Priority), column_of(Column::ProjectId));
    let (mut priorities, mut project_values) = (BTreeSet::new(), BTreeSet::new());
    for cells in body {
        for (at, set) in [
            (priority_at, &mut priorities),
            (project_at, &mut project_values),
        ] {
            let value = at.and_then(|i| cells.get(i)).map(|v| v.trim());
            if let Some(value) = value.filter(|v| !v.is_empty())
                && set.len() < MAX_VALUES
                && !set.contains(value)
            {
                set.insert(value.to_owned());
            }
        }
    }
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    // A key bare where TOML allows it (`Critical = "high"`), quoted otherwise.
    let key = |s: &str| match !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        true => s.to_owned(),
        false => quote(s),
    };
    let name = register
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Map for {name}, guessed from its header: check every line, then"
    );
    let _ = writeln!(
        out,
        "#   visibuild-import check {name} --map THIS_FILE --preview 3"
    );
    let _ = writeln!(
        out,
        "# A field not listed under [columns] is read from a column of its own name."
    );
    if let Some(sheet) = &sheet {
        let _ = writeln!(out, "sheet = {}", quote(sheet));
    }
    let _ = writeln!(out, "header_row = {header_row}");
    if sheet.is_none() {
        let d = delimiter as char;
        let shown = if d == '\t' {
            "\\t".to_owned()
        } else {
            d.to_string()
        };
        let _ = writeln!(
            out,
            "delimiter = \"{shown}\"  # detected from the header line"
        );
    }
    let _ = writeln!(
        out,
        "\n[columns]  # manifest field = a column, \"{{A}} – {{B}}\" (a template), or a list (attachments)"
    );
    for (column, picked) in &chosen {
        let cols: Vec<&str> = picked.iter().map(|&i| names[i].as_str()).collect();
        let required = matches!(column, Column::Ref | Column::ProjectId | Column::Title);
        match (column, cols.as_slice()) {
            (_, []) if required => {
                let _ = writeln!(
                    out,
                    "# {} = \"\"  # REQUIRED: no column guessed; name one (or set it under [defaults])",
                    column.name()
                );
            }
            (_, []) => {
                let _ = writeln!(out, "# {} = \"\"  # no column guessed", column.name());
            }
            (Column::Attachments, cols) => {
                let list: Vec<String> = cols.iter().map(|c| quote(c)).collect();
                let _ = writeln!(
                    out,
                    "attachments = [{}]  # a cell may hold several paths, one a line or ;-separated",
                    list.join(", ")
                );
            }
            (_, [col]) => {
                let _ = writeln!(out, "{} = {}", column.name(), quote(col));
            }
            _ => {}
        }
    }
    let unused: Vec<&str> = (0..names.len())
        .filter(|&i| !used[i] && !names[i].is_empty())
        .map(|i| names[i].as_str())
        .collect();
    if !unused.is_empty() {
        let _ = writeln!(out, "# not used: {}", unused.join(", "));
    }

    let _ = writeln!(
        out,
        "\n[priority]  # each value of the register = \"low\", \"medium\" or \"high\"; blank stays blank"
    );
    if priorities.is_empty() {
        let _ = writeln!(out, "# (no priority column or no values found)");
    }
    for value in &priorities {
        let lower = value.to_lowercase();
        let guess = if ["critical", "urgent", "high", "major", "severe", "a", "1"]
            .iter()
            .any(|w| lower == *w || lower.starts_with(w) && w.len() > 1)
        {
            "high"
        } else if ["medium", "moderate", "normal", "b", "2"]
            .iter()
            .any(|w| lower == *w || lower.starts_with(w) && w.len() > 1)
        {
            "medium"
        } else if ["minor", "low", "cosmetic", "trivial", "c", "3"]
            .iter()
            .any(|w| lower == *w || lower.starts_with(w) && w.len() > 1)
        {
            "low"
        } else {
            ""
        };
        let note = if guess.is_empty() {
            "  # fill in"
        } else {
            "  # guessed"
        };
        let _ = writeln!(out, "{} = \"{guess}\"{note}", key(value));
    }

    let projects: Vec<String> = project_values
        .into_iter()
        .filter(|v| Uuid::parse_str(v).is_err())
        .collect();
    let _ = writeln!(
        out,
        "\n[projects]  # each project name of the register = its project's UUID in Visibuild"
    );
    if projects.is_empty() {
        let _ = writeln!(out, "# (no project names found: UUIDs pass as they are)");
    }
    for project in &projects {
        let _ = writeln!(out, "{} = \"\"  # fill in", key(project));
    }
    let _ = writeln!(
        out,
        "\n[defaults]  # a field's value where its cell is blank"
    );
    let _ = writeln!(
        out,
        "# project_id = \"\"  # e.g. the one project of a one-project register"
    );
    Ok(out)
}
