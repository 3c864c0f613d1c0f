//! A map file (`--map FILE`, TOML): which column of a register gives each manifest field,
//! and how its values translate. Parsed once, every mistake said with the map's line.

use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use uuid::Uuid;

use crate::domain::{Priority, ProjectId};
use crate::manifest::parse::{Column, column_list};

/// A map file, checked: every field and value known, every template well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Map {
    /// Spreadsheets: the sheet to read (default: the first).
    pub sheet: Option<String>,
    /// The header's row, from 1; rows above it are ignored.
    pub header_row: u64,
    /// CSV only: the delimiter (default: detected from the header line).
    pub delimiter: Option<u8>,
    /// Where each named field comes from, in the map's order.
    pub columns: Vec<(Column, Source)>,
    /// Register value -> priority, in the map's order.
    pub priority: Vec<(String, Priority)>,
    /// Project name -> project, in the map's order.
    pub projects: Vec<(String, ProjectId)>,
    /// The value a field takes where its mapped cell is blank.
    pub defaults: Vec<(Column, String)>,
}

/// Where a field's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// One column, by its header.
    Column(String),
    /// Text with `{Column}` placeholders.
    Template(Vec<Piece>),
    /// Several columns (attachments only): every path of every cell.
    Columns(Vec<String>),
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(String),
    Column(String),
}

/// A map that cannot be used: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("map {file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct MapError {
    pub file: String,
    /// The map's line, when the mistake has one.
    pub line: Option<usize>,
    pub message: String,
}

/// The file as TOML gives it, before its values are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    sheet: Option<String>,
    header_row: Option<i64>,
    delimiter: Option<String>,
    #[serde(default)]
    columns: toml::Table,
    #[serde(default)]
    priority: toml::Table,
    #[serde(default)]
    projects: toml::Table,
    #[serde(default)]
    defaults: toml::Table,
}

impl Map {
    /// Reads and checks a map file.
    pub fn load(path: &Path) -> Result<Map, MapError> {
        let text = std::fs::read_to_string(path).map_err(|e| MapError {
            file: path.display().to_string(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        Map::parse(&path.display().to_string(), &text)
    }

    /// Checks a map's text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Map, MapError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: Raw = toml::from_str(text).map_err(|e| MapError {
            file: file.to_owned(),
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().trim().to_owned(),
        })?;
        // Where a key is written, for the errors about its value.
        let key_line = |table: &str, key: &str| -> Option<usize> {
            let start = text.find(&format!("[{table}]"))?;
            let rest = &text[start..];
            let quoted = format!("\"{key}\"");
            let at = rest
                .lines()
                .scan(0usize, |offset, line| {
                    let here = *offset;
                    *offset += line.len() + 1;
                    Some((here, line))
                })
                .find(|(_, line)| {
                    let l = line.trim_start();
                    l.starts_with(&quoted)
                        || l.strip_prefix(key)
                            .is_some_and(|r| r.trim_start().starts_with('='))
                })?
                .0;
            Some(line_of(start + at))
        };
        let fail = |line: Option<usize>, message: String| MapError {
            file: file.to_owned(),
            line,
            message,
        };
        let field = |table: &str, key: &str| -> Result<Column, MapError> {
            Column::from_header(key).ok_or_else(|| {
                fail(
                    key_line(table, key),
                    format!(
                        "[{table}]: unknown field {key:?} (the fields are {})",
                        column_list()
                    ),
                )
            })
        };
        let text_value =
            |table: &str, key: &str, value: &toml::Value| -> Result<String, MapError> {
                match value {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Err(fail(
                        key_line(table, key),
                        format!(
                            "[{table}] {key}: expected text in quotes, found {} {other}",
                            other.type_str()
                        ),
                    )),
                }
            };

        let header_row = match raw.header_row {
            None => 1,
            Some(row) if row >= 1 => row as u64,
            Some(row) => {
                return Err(fail(None, format!("header_row = {row}: rows count from 1")));
            }
        };
        let delimiter = match raw.delimiter.as_deref() {
            None => None,
            Some(d) if d.len() == 1 && d.is_ascii() && !matches!(d, "\"" | "\n" | "\r") => {
                Some(d.as_bytes()[0])
            }
            Some(d) => {
                return Err(fail(
                    None,
                    format!(
                        "delimiter = {d:?}: expected one character, such as \",\" \";\" \"\\t\" or \"|\""
                    ),
                ));
            }
        };

        let mut columns = Vec::new();
        for (key, value) in &raw.columns {
            let column = field("columns", key)?;
            let line = key_line("columns", key);
            let source = match value {
                toml::Value::String(text) => source_of(text).map_err(|why| {
                    fail(
                        line,
                        format!("[columns] {key}: bad template {text:?}: {why}"),
                    )
                })?,
                toml::Value::Array(items) if column == Column::Attachments => {
                    let mut names = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            toml::Value::String(name) if !name.trim().is_empty() => {
                                names.push(name.trim().to_owned())
                            }
                            other => {
                                return Err(fail(
                                    line,
                                    format!(
                                        "[columns] attachments: expected column names in quotes, found {other}"
                                    ),
                                ));
                            }
                        }
                    }
                    if names.is_empty() {
                        return Err(fail(
                            line,
                            "[columns] attachments: the list is empty".to_owned(),
                        ));
                    }
                    Source::Columns(names)
                }
                toml::Value::Array(_) => {
                    return Err(fail(
                        line,
                        format!("[columns] {key}: only attachments may list several columns"),
                    ));
                }
                other => {
                    return Err(fail(
                        line,
                        format!("[columns] {key}: expected a column name in quotes, found {other}"),
                    ));
                }
            };
            columns.push((column, source));
        }

        let mut priority = Vec::new();
        for (key, value) in &raw.priority {
            let target = text_value("priority", key, value)?;
            let parsed = Priority::from_str(target.trim()).map_err(|_| {
                fail(
                    key_line("priority", key),
                    format!("[priority] {key:?} = {target:?}: expected low, medium or high"),
                )
            })?;
            priority.push((key.trim().to_owned(), parsed));
        }

        let mut projects = Vec::new();
        for (key, value) in &raw.projects {
            let target = text_value("projects", key, value)?;
            let uuid = Uuid::parse_str(target.trim()).map_err(|_| {
                fail(
                    key_line("projects", key),
                    format!("[projects] {key:?} = {target:?}: expected the project's UUID"),
                )
            })?;
            projects.push((key.trim().to_owned(), ProjectId(uuid)));
        }

        let mut defaults = Vec::new();
        for (key, value) in &raw.defaults {
            let column = field("defaults", key)?;
            defaults.push((column, text_value("defaults", key, value)?));
        }

        Ok(Map {
            sheet: raw.sheet,
            header_row,
            delimiter,
            columns,
            priority,
            projects,
            defaults,
        })
    }
}

/// A column name, or a template when it holds a brace: `{Column}` placeholders, `{{` and
/// `}}` for braces.
fn source_of(text: &str) -> Result<Source, String> {
    if !text.contains(['{', '}']) {
        let name = text.trim();
        if name.is_empty() {
            return Err("no column named".to_owned());
        }
        return Ok(Source::Column(name.to_owned()));
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') => return Err("a { inside a placeholder".to_owned()),
                        Some(c) => name.push(c),
                        None => {
                            return Err("a { is never closed (write {{ for a brace)".to_owned());
                        }
                    }
                }
                let name = name.trim();
                if name.is_empty() {
                    return Err("an empty {} names no column".to_owned());
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Column(name.to_owned()));
            }
            '}' => return Err("a } closes nothing (write }} for a brace)".to_owned()),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    if !pieces.iter().any(|p| matches!(p, Piece::Column(_))) {
        return Err("it names no {Column}".to_owned());
    }
    Ok(Source::Template(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804";

    fn parse(text: &str) -> Result<Map, String> {
        Map::parse("m.toml", text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_spec_example_parses_into_sources_translations_and_defaults() {
        let map = parse(&format!(
            r#"sheet = "Defects"
header_row = 3
delimiter = ";"

[columns]
ref = "Item #"
title = "{{Description}} – {{Location}}"
priority = "Severity"
attachments = ["Photo 1", "Photo 2", "Other Files"]

[priority]
Critical = "high"
Minor = "LOW"

[projects]
"Harbour View Stage 2" = "{P}"

[defaults]
project_id = "{P}"
"#
        ))
        .unwrap();
        assert_eq!(map.sheet.as_deref(), Some("Defects"));
        assert_eq!((map.header_row, map.delimiter), (3, Some(b';')));
        assert_eq!(
            map.columns[0],
            (Column::Ref, Source::Column("Item #".into()))
        );
        assert_eq!(
            map.columns[1],
            (
                Column::Title,
                Source::Template(vec![
                    Piece::Column("Description".into()),
                    Piece::Text(" – ".into()),
                    Piece::Column("Location".into()),
                ])
            )
        );
        assert_eq!(
            map.columns[3].1,
            Source::Columns(vec![
                "Photo 1".into(),
                "Photo 2".into(),
                "Other Files".into()
            ])
        );
        assert_eq!(
            map.priority,
            vec![
                ("Critical".to_owned(), Priority::High),
                ("Minor".to_owned(), Priority::Low)
            ]
        );
        assert_eq!(map.projects[0].0, "Harbour View Stage 2");
        assert_eq!(map.defaults, vec![(Column::ProjectId, P.to_owned())]);
    }

    #[test]
    fn templates_take_doubled_braces_as_braces() {
        assert_eq!(
            source_of("{{{Item #}}} x").unwrap(),
            Source::Template(vec![
                Piece::Text("{".into()),
                Piece::Column("Item #".into()),
                Piece::Text("} x".into()),
            ])
        );
    }

    #[test]
    fn mistakes_are_named_with_the_maps_line() {
        let cases = [
            ("shete = \"x\"\n", "map m.toml:1: unknown field `shete`"),
            (
                "[columns]\ntitel = \"Description\"\n",
                "map m.toml:2: [columns]: unknown field \"titel\" (the fields are ref, project_id",
            ),
            (
                "[columns]\nref = \"Item #\"\ntitle = \"{Description\"\n",
                "map m.toml:3: [columns] title: bad template \"{Description\": a { is never closed",
            ),
            (
                "[columns]\ntitle = \"a } b {X}\"\n",
                "map m.toml:2: [columns] title: bad template \"a } b {X}\": a } closes nothing",
            ),
            (
                "[columns]\ntitle = [\"A\", \"B\"]\n",
                "map m.toml:2: [columns] title: only attachments may list several columns",
            ),
            (
                "[priority]\nCritical = \"urgent\"\n",
                "map m.toml:2: [priority] \"Critical\" = \"urgent\": expected low, medium or high",
            ),
            (
                "[projects]\n\"Harbour\" = \"nope\"\n",
                "map m.toml:2: [projects] \"Harbour\" = \"nope\": expected the project's UUID",
            ),
            (
                "header_row = 0\n",
                "map m.toml: header_row = 0: rows count from 1",
            ),
            (
                "delimiter = \";;\"\n",
                "map m.toml: delimiter = \";;\": expected one character",
            ),
            ("[columns\n", "map m.toml:1: "),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err}");
        }
    }
}
