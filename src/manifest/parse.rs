//! Header and rows of a manifest into typed tickets: each value parsed once, rows sharing
//! `(project_id, ref)` merged, and every problem kept with its line and column.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::files::Files;
use super::reader::{Field, Next, Records};
use super::{AttachmentSpec, Checked, Problem, TicketSpec};
use crate::domain::{Priority, ProjectId};

/// The manifest's columns, in the order they are listed to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Ref,
    ProjectId,
    Title,
    Address,
    Priority,
    ContactName,
    ContactEmail,
    Attachments,
}

impl Column {
    const ALL: [Column; 8] = [
        Column::Ref,
        Column::ProjectId,
        Column::Title,
        Column::Address,
        Column::Priority,
        Column::ContactName,
        Column::ContactEmail,
        Column::Attachments,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::Ref => "ref",
            Column::ProjectId => "project_id",
            Column::Title => "title",
            Column::Address => "address",
            Column::Priority => "priority",
            Column::ContactName => "contact_name",
            Column::ContactEmail => "contact_email",
            Column::Attachments => "attachments",
        }
    }

    fn required(self) -> bool {
        matches!(self, Column::Ref | Column::ProjectId | Column::Title)
    }

    fn from_header(name: &str) -> Option<Column> {
        Column::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

/// `"ref, project_id, title, address, ..."`: the columns a manifest may have.
pub(crate) fn column_list() -> String {
    Column::ALL.map(Column::name).join(", ")
}

const MISSING: &str = "missing required value";

/// Where each column sits in a record.
#[derive(Default, Clone, Copy)]
struct Columns([Option<usize>; Column::ALL.len()]);

impl Columns {
    fn get(&self, column: Column) -> Option<usize> {
        self.0[column as usize]
    }

    fn set(&mut self, column: Column, index: usize) {
        self.0[column as usize] = Some(index);
    }
}

/// A ticket being assembled from its rows. Each value keeps the line it came from, to
/// name it when a later row disagrees.
struct Draft {
    line: u64,
    reference: String,
    project_id: ProjectId,
    title: Option<(String, u64)>,
    address: Option<(String, u64)>,
    priority: Option<(Priority, u64)>,
    contact_name: Option<(String, u64)>,
    contact_email: Option<(String, u64)>,
    attachments: Vec<AttachmentSpec>,
    bad: bool,
    /// A row's title could not be read (bad UTF-8), already reported.
    title_unreadable: bool,
}

/// One pass over a manifest's records.
pub(crate) struct Parser {
    file: PathBuf,
    files: Files,
    columns: Columns,
    /// Unknown, duplicate or unnamed columns: no ticket can be trusted.
    header_broken: bool,
    problems: Vec<Problem>,
    drafts: Vec<Draft>,
    by_key: HashMap<(ProjectId, String), usize>,
    /// Refs of rows too broken to say which ticket they belong to, with the first line:
    /// every ticket with that ref is dropped.
    poisoned: Vec<(u64, String)>,
    poisoned_set: HashSet<String>,
}

impl Parser {
    pub fn new(file: &Path, files: Files) -> Self {
        Self {
            file: file.to_owned(),
            files,
            columns: Columns::default(),
            header_broken: false,
            problems: Vec::new(),
            drafts: Vec::new(),
            by_key: HashMap::new(),
            poisoned: Vec::new(),
            poisoned_set: HashSet::new(),
        }
    }

    pub fn run(mut self, mut records: Records) -> Checked {
        if self.header(records.next_record()) {
            loop {
                match records.next_record() {
                    Next::Record { line, fields } => {
                        if fields
                            .iter()
                            .any(|f| *f == Field::NotUtf8 || f.value().is_some())
                        {
                            self.row(line, &fields);
                        }
                    }
                    Next::Malformed {
                        line,
                        message,
                        fields,
                    } => {
                        let reference = self.column_text(&fields, Column::Ref).map(str::to_owned);
                        self.problem(line, None, message, reference.as_deref());
                        if let Some(reference) = reference {
                            self.poison(line, reference);
                        }
                    }
                    Next::Fatal { line, message } => {
                        self.problem(line, None, message, None);
                        break;
                    }
                    Next::End => break,
                }
            }
        }
        self.finish()
    }

    /// Reads the header; false when the rows cannot be read against it.
    fn header(&mut self, first: Next) -> bool {
        let (line, fields) = match first {
            Next::Record { line, fields } => (line, fields),
            Next::End => {
                let message = format!(
                    "the manifest is empty: expected a header row ({})",
                    column_list()
                );
                self.problem(1, None, message, None);
                return false;
            }
            Next::Malformed { line, message, .. } | Next::Fatal { line, message } => {
                self.problem(line, None, message, None);
                return false;
            }
        };
        let known = fields
            .iter()
            .filter_map(|f| f.value().and_then(Column::from_header))
            .count();
        if known == 0 {
            let first = fields.first().and_then(Field::value).unwrap_or_default();
            let message = format!(
                "no header row: expected columns {}; the first line starts with {:?}",
                column_list(),
                first.chars().take(40).collect::<String>()
            );
            self.problem(line, None, message, None);
            return false;
        }
        for (index, field) in fields.iter().enumerate() {
            let position = index + 1;
            let name = match field {
                Field::NotUtf8 => {
                    let message = format!("column {position}: the name is not valid UTF-8");
                    self.problem(line, None, message, None);
                    self.header_broken = true;
                    continue;
                }
                Field::Text(_) => field.value().unwrap_or_default(),
            };
            match Column::from_header(name) {
                Some(column) => match self.columns.get(column) {
                    Some(earlier) => {
                        let message = format!(
                            "duplicate column {:?} (columns {} and {position})",
                            column.name(),
                            earlier + 1
                        );
                        self.problem(line, None, message, None);
                        self.header_broken = true;
                    }
                    None => self.columns.set(column, index),
                },
                None if name.is_empty() => {
                    let message = format!("column {position} has no name");
                    self.problem(line, None, message, None);
                    self.header_broken = true;
                }
                None => {
                    let message = format!(
                        "unknown column {name:?} (the columns are {})",
                        column_list()
                    );
                    self.problem(line, None, message, None);
                    self.header_broken = true;
                }
            }
        }
        let mut complete = true;
        for column in Column::ALL.into_iter().filter(|c| c.required()) {
            if self.columns.get(column).is_none() {
                let message = format!("missing required column {:?}", column.name());
                self.problem(line, None, message, None);
                complete = false;
            }
        }
        complete
    }

    fn row(&mut self, line: u64, fields: &[Field]) {
        let reference = self.column_text(fields, Column::Ref).map(str::to_owned);
        let reference = reference.as_deref();
        let mut bad = false;
        let mut report = |parser: &mut Self, column: Column, message: String| {
            parser.problem(line, Some(column), message, reference);
            bad = true;
        };

        for column in Column::ALL {
            let index = self.columns.get(column);
            if index.and_then(|i| fields.get(i)) == Some(&Field::NotUtf8) {
                let message = "not valid UTF-8 text (save the manifest as UTF-8)".to_owned();
                report(self, column, message);
            }
        }
        let columns = self.columns;
        let text = |column: Column| Self::text_at(&columns, fields, column);
        if reference.is_none() && !self.not_utf8(fields, Column::Ref) {
            report(self, Column::Ref, MISSING.to_owned());
        }
        let project_id = match text(Column::ProjectId) {
            Some(value) => match Uuid::parse_str(value) {
                Ok(uuid) => Some(ProjectId(uuid)),
                Err(_) => {
                    report(self, Column::ProjectId, format!("{value:?} is not a UUID"));
                    None
                }
            },
            None => {
                if !self.not_utf8(fields, Column::ProjectId) {
                    report(self, Column::ProjectId, MISSING.to_owned());
                }
                None
            }
        };
        let title = text(Column::Title).map(str::to_owned);
        let address = text(Column::Address).map(str::to_owned);
        let contact_name = text(Column::ContactName).map(str::to_owned);
        let priority = match text(Column::Priority).map(str::parse::<Priority>) {
            Some(Ok(priority)) => Some(priority),
            Some(Err(err)) => {
                report(self, Column::Priority, err.to_string());
                None
            }
            None => None,
        };
        let contact_email = match text(Column::ContactEmail) {
            Some(email) if looks_like_email(email) => Some(email.to_owned()),
            Some(email) => {
                report(
                    self,
                    Column::ContactEmail,
                    format!("{email:?} is not an e-mail address"),
                );
                None
            }
            None => None,
        };
        let paths: Vec<String> = text(Column::Attachments)
            .map(|list| {
                list.split(';')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut attachments = Vec::with_capacity(paths.len());
        for path in paths {
            match self.files.check(&path) {
                Ok(info) => attachments.push(AttachmentSpec {
                    line,
                    filename: filename(&path, &info.resolved),
                    path,
                    resolved: info.resolved,
                    content_type: info.content_type,
                    size: info.size,
                }),
                Err(message) => report(self, Column::Attachments, message),
            }
        }

        let title_unreadable = self.not_utf8(fields, Column::Title);
        let (Some(reference), Some(project_id)) = (reference, project_id) else {
            if let Some(reference) = reference {
                self.poison(line, reference.to_owned());
            }
            return;
        };
        let key = (project_id, reference.to_owned());
        let index = match self.by_key.get(&key) {
            Some(&index) => index,
            None => {
                self.drafts.push(Draft {
                    line,
                    reference: reference.to_owned(),
                    project_id,
                    title: None,
                    address: None,
                    priority: None,
                    contact_name: None,
                    contact_email: None,
                    attachments: Vec::new(),
                    bad: false,
                    title_unreadable: false,
                });
                self.by_key.insert(key, self.drafts.len() - 1);
                self.drafts.len() - 1
            }
        };
        let Some(draft) = self.drafts.get_mut(index) else {
            return;
        };
        let mut disagreements = Vec::new();
        let out = &mut disagreements;
        merge(&mut draft.title, title, Column::Title, line, out);
        merge(&mut draft.address, address, Column::Address, line, out);
        merge(&mut draft.priority, priority, Column::Priority, line, out);
        merge(
            &mut draft.contact_name,
            contact_name,
            Column::ContactName,
            line,
            out,
        );
        merge(
            &mut draft.contact_email,
            contact_email,
            Column::ContactEmail,
            line,
            out,
        );
        // Moved, not extended: `extend` into an empty Vec reserves room for four.
        if draft.attachments.is_empty() {
            draft.attachments = attachments;
        } else {
            draft.attachments.extend(attachments);
        }
        draft.title_unreadable |= title_unreadable;
        draft.bad |= bad || !disagreements.is_empty();
        for (column, message) in disagreements {
            self.problem(line, Some(column), message, Some(reference));
        }
    }

    fn finish(mut self) -> Checked {
        let mut tickets = Vec::new();
        let mut skipped: Vec<(u64, String)> = std::mem::take(&mut self.poisoned);
        for draft in std::mem::take(&mut self.drafts) {
            let Some((title, _)) = draft.title else {
                if !draft.title_unreadable {
                    let message = MISSING.to_owned();
                    self.problem(
                        draft.line,
                        Some(Column::Title),
                        message,
                        Some(&draft.reference),
                    );
                }
                skipped.push((draft.line, draft.reference));
                continue;
            };
            if draft.bad || self.header_broken || self.poisoned_set.contains(&draft.reference) {
                skipped.push((draft.line, draft.reference));
                continue;
            }
            tickets.push(TicketSpec {
                line: draft.line,
                reference: draft.reference,
                project_id: draft.project_id,
                title,
                address: draft.address.map(|(v, _)| v),
                priority: draft.priority.map(|(v, _)| v),
                contact_name: draft.contact_name.map(|(v, _)| v),
                contact_email: draft.contact_email.map(|(v, _)| v),
                attachments: draft.attachments,
            });
        }
        skipped.sort_by_key(|(line, _)| *line);
        let mut seen = HashSet::new();
        let skipped_refs = skipped
            .into_iter()
            .map(|(_, reference)| reference)
            .filter(|reference| seen.insert(reference.clone()))
            .collect();
        self.problems.sort_by_key(|p| p.line);
        Checked {
            tickets,
            problems: self.problems,
            skipped_refs,
        }
    }

    fn poison(&mut self, line: u64, reference: String) {
        if self.poisoned_set.insert(reference.clone()) {
            self.poisoned.push((line, reference));
        }
    }

    fn problem(
        &mut self,
        line: u64,
        field: Option<Column>,
        message: String,
        reference: Option<&str>,
    ) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            field: field.map(|c| c.name().to_owned()),
            message,
            reference: reference.map(str::to_owned),
        });
    }

    fn column_text<'f>(&self, fields: &'f [Field], column: Column) -> Option<&'f str> {
        Self::text_at(&self.columns, fields, column)
    }

    fn text_at<'f>(columns: &Columns, fields: &'f [Field], column: Column) -> Option<&'f str> {
        columns
            .get(column)
            .and_then(|i| fields.get(i))
            .and_then(Field::value)
    }

    fn not_utf8(&self, fields: &[Field], column: Column) -> bool {
        self.columns.get(column).and_then(|i| fields.get(i)) == Some(&Field::NotUtf8)
    }
}

/// Merges one row's value of a column into a ticket's: blank inherits, equal agrees,
/// anything else is a disagreement naming the line of the first value.
fn merge<T: PartialEq + fmt::Display>(
    slot: &mut Option<(T, u64)>,
    new: Option<T>,
    column: Column,
    line: u64,
    out: &mut Vec<(Column, String)>,
) {
    let Some(new) = new else { return };
    match slot {
        None => *slot = Some((new, line)),
        Some((old, _)) if *old == new => {}
        Some((old, first)) => out.push((
            column,
            format!(
                "{:?} disagrees with {:?} on line {first} (rows of one ticket must agree or leave it blank)",
                new.to_string(),
                old.to_string()
            ),
        )),
    }
}

/// The file name to announce: the last part of the path as written.
fn filename(written: &str, resolved: &Path) -> String {
    Path::new(written)
        .file_name()
        .or_else(|| resolved.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| written.to_owned())
}

/// The shape of an address: `local@domain.tld`, no spaces, one `@`.
fn looks_like_email(text: &str) -> bool {
    let Some((local, domain)) = text.split_once('@') else {
        return false;
    };
    let allowed = |c: char| !c.is_whitespace() && !c.is_control() && !"@,;:<>()[]\\\"".contains(c);
    !local.is_empty()
        && local.chars().all(allowed)
        && domain.chars().all(allowed)
        && domain.contains('.')
        && domain
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_shape_accepts_ordinary_addresses_and_refuses_the_rest() {
        for good in ["sam@example.com", "j.o'brien+site@builder.com.au"] {
            assert!(looks_like_email(good), "{good}");
        }
        for bad in [
            "sam",
            "sam@",
            "@x.com",
            "sam@localhost",
            "a b@x.com",
            "a@b@c.com",
            "a@x..com",
        ] {
            assert!(!looks_like_email(bad), "{bad}");
        }
    }

    #[test]
    fn columns_match_case_insensitively() {
        assert_eq!(Column::from_header("Project_ID"), Some(Column::ProjectId));
        assert_eq!(Column::from_header("colour"), None);
    }
}
