//! A spreadsheet register (`.xlsx`, `.xls`, `.ods`): one sheet read whole with `calamine`,
//! its rows handed out as records at their spreadsheet row numbers, each cell as text the
//! way the spreadsheet shows it.

use std::path::Path;

use calamine::{Data, Range, Reader};

use crate::manifest::reader::{Field, Next, RecordSource, Unreadable};

/// The file extensions read as spreadsheets (lower case).
pub(crate) const EXTENSIONS: [&str; 5] = ["xlsx", "xlsm", "xlsb", "xls", "ods"];

/// Whether `path` names a spreadsheet (by its extension, in any case).
pub(crate) fn is_spreadsheet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Why a spreadsheet cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    #[error("cannot read {path} as a spreadsheet: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path} has no sheet {sheet:?} (its sheets: {sheets})")]
    NoSheet {
        path: String,
        sheet: String,
        sheets: String,
    },
    #[error("{path} has no sheet with any cell filled")]
    Empty { path: String },
}

/// One sheet, read whole.
pub(crate) struct Sheet {
    pub name: String,
    range: Range<Data>,
    /// The relative row handed out next.
    next: usize,
}

impl Sheet {
    /// Opens `path` and reads the sheet called `sheet` (default: the first).
    pub fn open(path: &Path, sheet: Option<&str>) -> Result<Sheet, SheetError> {
        let shown = path.display().to_string();
        let unreadable = |message: String| SheetError::Unreadable {
            path: shown.clone(),
            message,
        };
        let mut book = open_book(path).map_err(|e| unreadable(e.to_string()))?;
        let names = book.sheet_names();
        let name = match sheet {
            Some(wanted) => names
                .iter()
                .find(|n| *n == wanted)
                .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(wanted)))
                .cloned()
                .ok_or_else(|| SheetError::NoSheet {
                    path: shown.clone(),
                    sheet: wanted.to_owned(),
                    sheets: names.join(", "),
                })?,
            None => names.first().cloned().ok_or_else(|| SheetError::Empty {
                path: shown.clone(),
            })?,
        };
        let range = book
            .worksheet_range(&name)
            .map_err(|e| unreadable(format!("sheet {name:?}: {e}")))?;
        Ok(Sheet {
            name,
            range,
            next: 0,
        })
    }

    /// The first sheet with any cell filled (a register often opens on a cover sheet).
    pub fn open_first_filled(path: &Path) -> Result<Sheet, SheetError> {
        let shown = path.display().to_string();
        let mut book = open_book(path).map_err(|e| SheetError::Unreadable {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let names = book.sheet_names();
        for name in &names {
            if let Ok(range) = book.worksheet_range(name)
                && range.used_cells().next().is_some()
            {
                return Ok(Sheet {
                    name: name.clone(),
                    range,
                    next: 0,
                });
            }
        }
        Err(SheetError::Empty { path: shown })
    }

    /// Skips the rows above spreadsheet row `row` (from 1).
    pub fn start_at(&mut self, row: u64) {
        let first = self.first_row();
        self.next = row.saturating_sub(first) as usize;
    }

    /// The spreadsheet row (from 1) of the range's first row.
    fn first_row(&self) -> u64 {
        self.range.start().map_or(1, |(row, _)| u64::from(row) + 1)
    }

    /// Every row left, as text with its spreadsheet row (for the `map` command's guesses).
    pub fn into_text_rows(self) -> impl Iterator<Item = (u64, Vec<String>)> {
        let first = self.first_row();
        let range = self.range;
        (self.next..range.height()).map(move |r| {
            let cells = (0..range.width())
                .map(|c| match range.get((r, c)).map(cell) {
                    Some(Field::Text(t)) => t,
                    _ => String::new(),
                })
                .collect();
            (first + r as u64, cells)
        })
    }
}

impl RecordSource for Sheet {
    fn next_record(&mut self) -> Next {
        if self.next >= self.range.height() {
            return Next::End;
        }
        let r = self.next;
        self.next += 1;
        let fields = (0..self.range.width())
            .map(|c| {
                self.range
                    .get((r, c))
                    .map_or(Field::Text(String::new()), cell)
            })
            .collect();
        Next::Record {
            line: self.first_row() + r as u64,
            fields,
        }
    }
}

fn open_book(
    path: &Path,
) -> Result<calamine::Sheets<std::io::BufReader<std::fs::File>>, calamine::Error> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let open = |p: &Path| -> Result<_, calamine::Error> {
        Ok(match ext.as_deref() {
            Some("xls") => calamine::Sheets::Xls(calamine::open_workbook(p)?),
            Some("xlsb") => calamine::Sheets::Xlsb(calamine::open_workbook(p)?),
            Some("ods") => calamine::Sheets::Ods(calamine::open_workbook(p)?),
            _ => calamine::Sheets::Xlsx(calamine::open_workbook(p)?),
        })
    };
    open(path)
}

/// A cell as the spreadsheet shows it: `1001` not `1001.0`, a date as `YYYY-MM-DD`, a
/// formula by its cached value, an error cell as its code (`#N/A`).
pub(crate) fn cell(data: &Data) -> Field {
    let text = match data {
        Data::Empty => String::new(),
        Data::String(s) if s.contains('\0') => return Field::Unreadable(Unreadable::Nul),
        Data::String(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => number(*f),
        Data::Bool(true) => "TRUE".to_owned(),
        Data::Bool(false) => "FALSE".to_owned(),
        Data::DateTime(dt) if dt.is_datetime() => {
            let (y, mo, d, h, mi, s, ms) = dt.to_ymd_hms_milli();
            match (h, mi, s, ms) {
                (0, 0, 0, 0) => format!("{y:04}-{mo:02}-{d:02}"),
                (_, _, 0, 0) => format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}"),
                _ => format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
            }
        }
        Data::DateTime(dt) => number(dt.as_f64()),
        // ODS dates: `2025-03-04` or `2025-03-04T10:30:00`.
        Data::DateTimeIso(s) => match s.strip_suffix("T00:00:00") {
            Some(date) => date.to_owned(),
            None => s.replace('T', " "),
        },
        Data::DurationIso(s) => s.clone(),
        Data::Error(e) => e.to_string(),
    };
    Field::Text(text)
}

/// A number without a spurious `.0`: whole numbers as integers, others as the shortest
/// text that reads back the same.
fn number(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calamine::{CellErrorType, ExcelDateTime, ExcelDateTimeType};

    fn shown(data: Data) -> String {
        match cell(&data) {
            Field::Text(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cells_read_as_a_person_sees_them() {
        assert_eq!(shown(Data::Float(1001.0)), "1001");
        assert_eq!(shown(Data::Float(2.5)), "2.5");
        assert_eq!(shown(Data::Int(-3)), "-3");
        assert_eq!(shown(Data::Empty), "");
        assert_eq!(shown(Data::Bool(true)), "TRUE");
        let date = ExcelDateTime::new(45943.0, ExcelDateTimeType::DateTime, false);
        assert_eq!(shown(Data::DateTime(date)), "2025-10-13");
        let noon = ExcelDateTime::new(45943.5, ExcelDateTimeType::DateTime, false);
        assert_eq!(shown(Data::DateTime(noon)), "2025-10-13 12:00");
        assert_eq!(shown(Data::DateTimeIso("2025-03-04".into())), "2025-03-04");
        assert_eq!(shown(Data::Error(CellErrorType::NA)), "#N/A");
        assert_eq!(
            cell(&Data::String("a\0b".into())),
            Field::Unreadable(Unreadable::Nul)
        );
    }
}
