//! A map resolved against a register's header: each manifest field's column positions, and
//! each row turned into exactly the manifest's row (its eight fields) before the manifest's
//! own rules run. A value the map cannot translate stays on its row as a refusal.

use uuid::Uuid;

use super::map::{Map, Piece, Source};
use crate::domain::{Priority, ProjectId};
use crate::manifest::parse::Column;
use crate::manifest::reader::{Field, Next, RecordSource, Unreadable};

/// Where a field's value comes from, by column position.
#[derive(Debug, Clone)]
enum Resolved {
    /// Neither the map nor the register's header gives it.
    Absent,
    Column(usize),
    Template(Vec<Slot>),
    Columns(Vec<usize>),
}

#[derive(Debug, Clone)]
enum Slot {
    Text(String),
    Column(usize),
}

/// A problem of the header against the map: no row is read after one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderProblem {
    pub field: Option<Column>,
    pub message: String,
}

/// A map resolved against one register's header.
#[derive(Debug, Clone)]
pub(crate) struct Mapping {
    fields: Vec<Resolved>,
    defaults: Vec<Option<String>>,
    /// Lower-cased register value -> priority.
    priority: Vec<(String, Priority)>,
    priority_names: String,
    /// Lower-cased project name -> project.
    projects: Vec<(String, ProjectId)>,
    project_names: String,
}

impl Mapping {
    /// Resolves `map` against the register's header cells. Every column the map names must
    /// be in the header; a field the map does not name comes from the column of its own
    /// name, if there is one; ref, project_id and title must come from somewhere.
    pub fn resolve(map: &Map, header: &[Field]) -> Result<Mapping, Vec<HeaderProblem>> {
        let names: Vec<Option<&str>> = header.iter().map(Field::value).collect();
        let listing = {
            let named: Vec<&str> = names.iter().flatten().copied().collect();
            match named.is_empty() {
                true => "none".to_owned(),
                false => named.join(", "),
            }
        };
        let mut problems = Vec::new();
        let find = |name: &str| -> Result<usize, String> {
            let exact: Vec<usize> = (0..names.len())
                .filter(|&i| names[i] == Some(name))
                .collect();
            let found = match exact.len() {
                0 => (0..names.len())
                    .filter(|&i| names[i].is_some_and(|n| n.eq_ignore_ascii_case(name)))
                    .collect(),
                _ => exact,
            };
            match found.as_slice() {
                [one] => Ok(*one),
                [] => Err(format!(
                    "the map names column {name:?}, which the register does not have (its columns: {listing})"
                )),
                several => Err(format!(
                    "the map names column {name:?}, which the register has {} times (columns {}): rename one",
                    several.len(),
                    several
                        .iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        };
        let mut fields = vec![Resolved::Absent; Column::ALL.len()];
        for (column, source) in &map.columns {
            let mut resolve = |name: &str| match find(name) {
                Ok(i) => Some(i),
                Err(message) => {
                    problems.push(HeaderProblem {
                        field: Some(*column),
                        message,
                    });
                    None
                }
            };
            fields[*column as usize] = match source {
                Source::Column(name) => resolve(name).map_or(Resolved::Absent, Resolved::Column),
                Source::Columns(list) => {
                    Resolved::Columns(list.iter().filter_map(|n| resolve(n)).collect())
                }
                Source::Template(pieces) => Resolved::Template(
                    pieces
                        .iter()
                        .map(|p| match p {
                            Piece::Text(t) => Slot::Text(t.clone()),
                            Piece::Column(n) => Slot::Column(resolve(n).unwrap_or(usize::MAX)),
                        })
                        .collect(),
                ),
            };
        }
        let mut defaults = vec![None; Column::ALL.len()];
        for (column, value) in &map.defaults {
            defaults[*column as usize] = Some(value.clone());
        }
        for column in Column::ALL {
            let i = column as usize;
            if map.columns.iter().any(|(c, _)| *c == column) {
                continue;
            }
            let own = (0..names.len())
                .find(|&j| names[j].is_some_and(|n| n.eq_ignore_ascii_case(column.name())));
            if let Some(j) = own {
                fields[i] = Resolved::Column(j);
            } else if matches!(column, Column::Ref | Column::ProjectId | Column::Title)
                && defaults[i].is_none()
            {
                problems.push(HeaderProblem {
                    field: Some(column),
                    message: format!(
                        "required, and not mapped: the map's [columns] names no column for it and \
                         the register has no column {:?} (its columns: {listing})",
                        column.name()
                    ),
                });
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let names_of = |keys: Vec<&str>| match keys.is_empty() {
            true => "none".to_owned(),
            false => keys.join(", "),
        };
        Ok(Mapping {
            fields,
            defaults,
            priority_names: names_of(map.priority.iter().map(|(k, _)| k.as_str()).collect()),
            priority: map
                .priority
                .iter()
                .map(|(k, p)| (k.to_lowercase(), *p))
                .collect(),
            project_names: names_of(map.projects.iter().map(|(k, _)| k.as_str()).collect()),
            projects: map
                .projects
                .iter()
                .map(|(k, p)| (k.to_lowercase(), *p))
                .collect(),
        })
    }

    /// The manifest's row for a register's row: its eight fields, in the manifest's order.
    pub fn row(&self, cells: &[Field]) -> Vec<Field> {
        Column::ALL
            .into_iter()
            .map(|column| {
                let raw = self.raw(column, cells);
                let raw = match (&raw, &self.defaults[column as usize]) {
                    (Field::Text(t), Some(default)) if t.trim().is_empty() => {
                        Field::Text(default.clone())
                    }
                    _ => raw,
                };
                match column {
                    Column::Priority => self.priority_of(raw),
                    Column::ProjectId => self.project_of(raw),
                    _ => raw,
                }
            })
            .collect()
    }

    /// The field's value as the register gives it (before translation and defaults).
    fn raw(&self, column: Column, cells: &[Field]) -> Field {
        let cell = |i: usize| cells.get(i).cloned().unwrap_or(Field::Text(String::new()));
        let field = match &self.fields[column as usize] {
            Resolved::Absent => Field::Text(String::new()),
            Resolved::Column(i) => cell(*i),
            Resolved::Columns(list) => {
                let mut paths = Vec::new();
                for &i in list {
                    match cell(i) {
                        Field::Text(text) => paths.push(text),
                        unreadable => return unreadable,
                    }
                }
                Field::Text(paths.join("\n"))
            }
            Resolved::Template(slots) => {
                let mut text = String::new();
                let mut any = false;
                for slot in slots {
                    match slot {
                        Slot::Text(t) => text.push_str(t),
                        Slot::Column(i) => match cell(*i) {
                            Field::Text(value) => {
                                any |= !value.trim().is_empty();
                                text.push_str(value.trim());
                            }
                            unreadable => return unreadable,
                        },
                    }
                }
                // A template over blank cells is blank, not its punctuation.
                Field::Text(if any {
                    text.trim().to_owned()
                } else {
                    String::new()
                })
            }
        };
        match (column, field) {
            // A cell may hold several paths, one a line or ;-separated: the manifest's
            // attachments are ;-separated.
            (Column::Attachments, Field::Text(text)) => Field::Text(
                text.split(['\n', '\r', ';'])
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(";"),
            ),
            (_, field) => field,
        }
    }

    fn priority_of(&self, raw: Field) -> Field {
        let Some(value) = raw.value() else { return raw };
        if self.priority.is_empty() {
            return raw;
        }
        let key = value.to_lowercase();
        if let Some((_, p)) = self.priority.iter().find(|(k, _)| *k == key) {
            return Field::Text(p.as_str().to_owned());
        }
        // The manifest's own words need no translation.
        if value.parse::<Priority>().is_ok() {
            return raw;
        }
        Field::Unreadable(Unreadable::Refused(format!(
            "{value:?} is not in the map's [priority] ({})",
            self.priority_names
        )))
    }

    fn project_of(&self, raw: Field) -> Field {
        let Some(value) = raw.value() else { return raw };
        if Uuid::parse_str(value).is_ok() {
            return raw;
        }
        let key = value.to_lowercase();
        if let Some((_, p)) = self.projects.iter().find(|(k, _)| *k == key) {
            return Field::Text(p.to_string());
        }
        if self.projects.is_empty() {
            return raw; // the manifest's rule says it is not a UUID
        }
        Field::Unreadable(Unreadable::Refused(format!(
            "{value:?} is not a UUID nor a name in the map's [projects] ({})",
            self.project_names
        )))
    }
}

/// A register's records as the manifest's: the header as the manifest's own column names,
/// then every row mapped, each at its register line.
pub(crate) struct Mapped<S> {
    inner: S,
    mapping: Mapping,
    header_line: Option<u64>,
}

impl<S: RecordSource> Mapped<S> {
    /// Reads the register's header from `inner` and resolves the map against it: the
    /// header's line and its problems if it cannot be.
    pub fn start(mut inner: S, map: &Map) -> Result<Self, (u64, Vec<HeaderProblem>)> {
        let (line, header) = match inner.next_record() {
            Next::Record { line, fields } => (line, fields),
            Next::Malformed { line, message, .. } | Next::Fatal { line, message } => {
                return Err((
                    line,
                    vec![HeaderProblem {
                        field: None,
                        message,
                    }],
                ));
            }
            Next::End => {
                return Err((
                    map.header_row,
                    vec![HeaderProblem {
                        field: None,
                        message: format!(
                            "the register has no header row (looked from row {})",
                            map.header_row
                        ),
                    }],
                ));
            }
        };
        let mapping = Mapping::resolve(map, &header).map_err(|problems| (line, problems))?;
        Ok(Mapped {
            inner,
            mapping,
            header_line: Some(line),
        })
    }
}

impl<S: RecordSource> RecordSource for Mapped<S> {
    fn next_record(&mut self) -> Next {
        if let Some(line) = self.header_line.take() {
            let fields = Column::ALL
                .map(|c| Field::Text(c.name().to_owned()))
                .to_vec();
            return Next::Record { line, fields };
        }
        match self.inner.next_record() {
            Next::Record { line, fields } => Next::Record {
                line,
                fields: self.mapping.row(&fields),
            },
            Next::Malformed {
                line,
                message,
                fields,
            } => Next::Malformed {
                line,
                message,
                fields: self.mapping.row(&fields),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "6d1f3a52-8c47-4b9e-a0d2-71e5c9b3f804";

    fn text(values: &[&str]) -> Vec<Field> {
        values
            .iter()
            .map(|v| Field::Text((*v).to_owned()))
            .collect()
    }

    fn map() -> Map {
        Map::parse(
            "m.toml",
            &format!(
                r#"[columns]
ref = "Item #"
project_id = "Project"
title = "{{Description}} – {{Location}}"
address = "location"
priority = "Severity"
attachments = ["Photo 1", "Other Files"]
[priority]
Critical = "high"
Minor = "low"
[projects]
"Harbour View" = "{P}"
[defaults]
address = "Site"
"#
            ),
        )
        .unwrap()
    }

    const HEADER: &[&str] = &[
        "Item #",
        "Project",
        "Description",
        "Location",
        "Severity",
        "Photo 1",
        "Other Files",
        "contact_email",
        "Ignored",
    ];

    fn values(row: &[Field]) -> Vec<Option<&str>> {
        row.iter().map(Field::value).collect()
    }

    #[test]
    fn a_row_becomes_the_manifests_row_through_columns_templates_and_translations() {
        let mapping = Mapping::resolve(&map(), &text(HEADER)).unwrap();
        let row = mapping.row(&text(&[
            "1001",
            "harbour view",
            "Cracked tile",
            "Level 2",
            "CRITICAL",
            "a.jpg",
            "b.pdf\nc.png; d.png",
            "sam@example.com",
            "whatever",
        ]));
        assert_eq!(
            values(&row),
            vec![
                Some("1001"),
                Some(P),
                Some("Cracked tile – Level 2"),
                Some("Level 2"),
                Some("high"),
                None,
                Some("sam@example.com"),
                Some("a.jpg;b.pdf;c.png;d.png"),
            ]
        );
    }

    #[test]
    fn blank_cells_take_defaults_and_blank_templates_stay_blank() {
        let mapping = Mapping::resolve(&map(), &text(HEADER)).unwrap();
        let row = mapping.row(&text(&["1002", P, "", "", "", "", "", "", ""]));
        assert_eq!(
            values(&row),
            vec![
                Some("1002"),
                Some(P),
                None,
                Some("Site"),
                None,
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn an_unmapped_priority_or_project_name_is_refused_on_its_row_and_manifest_words_pass() {
        let mapping = Mapping::resolve(&map(), &text(HEADER)).unwrap();
        let row = mapping.row(&text(&[
            "1",
            "Elsewhere",
            "T",
            "",
            "Urgent",
            "",
            "",
            "",
            "",
        ]));
        assert_eq!(
            row[Column::Priority as usize],
            Field::Unreadable(Unreadable::Refused(
                "\"Urgent\" is not in the map's [priority] (Critical, Minor)".into()
            ))
        );
        assert_eq!(
            row[Column::ProjectId as usize],
            Field::Unreadable(Unreadable::Refused(
                "\"Elsewhere\" is not a UUID nor a name in the map's [projects] (Harbour View)"
                    .into()
            ))
        );
        let row = mapping.row(&text(&["1", P, "T", "", "Medium", "", "", "", ""]));
        assert_eq!(row[Column::Priority as usize].value(), Some("Medium"));
    }

    #[test]
    fn a_column_the_register_lacks_is_named_with_the_columns_it_has() {
        let map = Map::parse(
            "m.toml",
            "[columns]\nref = \"Item\"\ntitle = \"{Descr} at {Location}\"\n",
        )
        .unwrap();
        let problems =
            Mapping::resolve(&map, &text(&["Item #", "Location", "project_id"])).unwrap_err();
        assert_eq!(
            problems,
            vec![
                HeaderProblem {
                    field: Some(Column::Ref),
                    message: "the map names column \"Item\", which the register does not have \
                              (its columns: Item #, Location, project_id)"
                        .into()
                },
                HeaderProblem {
                    field: Some(Column::Title),
                    message: "the map names column \"Descr\", which the register does not have \
                              (its columns: Item #, Location, project_id)"
                        .into()
                },
            ]
        );
    }

    #[test]
    fn unnamed_fields_fall_back_to_the_manifests_own_columns_and_required_ones_must_exist() {
        let map = Map::parse("m.toml", "[columns]\nref = \"No\"\n").unwrap();
        let mapping =
            Mapping::resolve(&map, &text(&["No", "PROJECT_ID", "Title", "Other"])).unwrap();
        let row = mapping.row(&text(&["7", P, "Leak", "x"]));
        assert_eq!(&values(&row)[..3], &[Some("7"), Some(P), Some("Leak")]);
        let problems = Mapping::resolve(&map, &text(&["No", "Other"])).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, vec![Some(Column::ProjectId), Some(Column::Title)]);
        assert!(problems[0].message.contains("(its columns: No, Other)"));
    }
}
