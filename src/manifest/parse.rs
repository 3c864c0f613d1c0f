//! Header and rows of a manifest, one row at a time: each value parsed once, every problem
//! of a row reported with its line and column. Nothing is kept between rows: the rules that
//! need several rows (a ticket's rows merged, continuation rows) are applied in staging.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::files::Files;
use super::reader::{Field, Next, RecordSource, Unreadable};
use super::{AttachmentSpec, MAX_REF_LEN, Problem, Row};
use crate::domain::{Priority, ProjectId};

/// The manifest's columns, in the order they are listed to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Column {
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
    pub(crate) const ALL: [Column; 8] = [
        Column::Ref,
        Column::ProjectId,
        Column::Title,
        Column::Address,
        Column::Priority,
        Column::ContactName,
        Column::ContactEmail,
        Column::Attachments,
    ];

    pub(crate) fn name(self) -> &'static str {
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

    pub(crate) fn from_header(name: &str) -> Option<Column> {
        Column::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

/// `"ref, project_id, title, address, ..."`: the columns a manifest may have.
pub(crate) fn column_list() -> String {
    Column::ALL.map(Column::name).join(", ")
}

pub(crate) const MISSING: &str = "missing required value";

/// Why a value cannot be read, for its row's problem.
fn unreadable_message(why: &Unreadable) -> &str {
    match why {
        Unreadable::NotUtf8 => "not valid UTF-8 text (save the manifest as UTF-8)",
        Unreadable::Nul => "contains a NUL byte (0x00), which the store cannot hold",
        Unreadable::Refused(message) => message,
    }
}

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

/// How a row's `project_id` cell reads.
enum ProjectCell {
    Given(ProjectId),
    /// Blank, on a row with a ref: a continuation of that ref's ticket.
    Blank,
    /// Not a UUID, unreadable, or blank without a ref: already reported.
    Bad,
}

/// Where the rows of a manifest go as they are read, one at a time: nothing here is kept.
pub(crate) trait RowSink {
    /// A row that belongs to a ticket (it has a ref, and a project or a blank one).
    fn row(&mut self, row: Row);
    /// A problem of one row or of the header (never of a ticket: those need every row).
    fn problem(&mut self, problem: Problem);
    /// A row too broken to say which ticket it belongs to: every ticket with its ref is
    /// dropped.
    fn poison(&mut self, line: u64, reference: String);
    /// Whoever takes the rows stopped taking them: reading on is pointless.
    fn stopped(&self) -> bool {
        false
    }
}

/// What a pass over the rows leaves for the rules that need all of them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Parsed {
    /// Unknown, duplicate or unnamed columns: no ticket can be trusted.
    pub header_broken: bool,
    /// The line of the last record read.
    pub last_line: u64,
}

/// One pass over a manifest's records, each row parsed and checked on its own. Rules that
/// need several rows (merging, continuation rows, disagreements) are the staging's.
pub(crate) struct Parser<'s, S> {
    file: PathBuf,
    files: Files,
    columns: Columns,
    header_broken: bool,
    last_line: u64,
    sink: &'s mut S,
}

impl<'s, S: RowSink> Parser<'s, S> {
    pub fn new(file: &Path, files: Files, sink: &'s mut S) -> Self {
        Self {
            file: file.to_owned(),
            files,
            columns: Columns::default(),
            header_broken: false,
            last_line: 0,
            sink,
        }
    }

    pub fn run(mut self, mut records: impl RecordSource) -> Parsed {
        if self.header(records.next_record()) {
            while !self.sink.stopped() {
                match records.next_record() {
                    Next::Record { line, fields } => {
                        self.last_line = line;
                        if fields
                            .iter()
                            .any(|f| f.unreadable().is_some() || f.value().is_some())
                        {
                            self.row(line, &fields);
                        }
                    }
                    Next::Malformed {
                        line,
                        message,
                        fields,
                    } => {
                        self.last_line = line;
                        let reference = self.column_text(&fields, Column::Ref).map(str::to_owned);
                        self.problem(line, None, message, reference.as_deref());
                        if let Some(reference) = reference {
                            self.sink.poison(line, reference);
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
        Parsed {
            header_broken: self.header_broken,
            last_line: self.last_line,
        }
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
                Field::Unreadable(why) => {
                    let message = match why {
                        Unreadable::NotUtf8 => {
                            format!("column {position}: the name is not valid UTF-8")
                        }
                        Unreadable::Nul => {
                            format!("column {position}: the name contains a NUL byte (0x00)")
                        }
                        Unreadable::Refused(message) => format!("column {position}: {message}"),
                    };
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
            if let Some(why) = self.unreadable(fields, column).cloned() {
                let message = unreadable_message(&why).to_owned();
                report(self, column, message);
            }
        }
        let columns = self.columns;
        let text = |column: Column| Self::text_at(&columns, fields, column);
        if reference.is_none() && self.unreadable(fields, Column::Ref).is_none() {
            report(self, Column::Ref, MISSING.to_owned());
        }
        if let Some(long) = reference.filter(|r| r.len() > MAX_REF_LEN) {
            let message = format!(
                "is {} bytes long; a ref may be at most {MAX_REF_LEN} bytes (the store indexes it)",
                long.len()
            );
            report(self, Column::Ref, message);
        }
        let project = match text(Column::ProjectId) {
            Some(value) => match Uuid::parse_str(value) {
                Ok(uuid) => ProjectCell::Given(ProjectId(uuid)),
                Err(_) => {
                    report(self, Column::ProjectId, format!("{value:?} is not a UUID"));
                    ProjectCell::Bad
                }
            },
            None if self.unreadable(fields, Column::ProjectId).is_some() => ProjectCell::Bad,
            None if reference.is_some() => ProjectCell::Blank,
            None => {
                report(self, Column::ProjectId, MISSING.to_owned());
                ProjectCell::Bad
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
        let paths = || {
            text(Column::Attachments)
                .into_iter()
                .flat_map(|list| list.split(';'))
                .map(str::trim)
                .filter(|p| !p.is_empty())
        };
        // Sized exactly: a ticket keeps this Vec as it is.
        let mut attachments = Vec::with_capacity(paths().count());
        for path in paths() {
            match self.files.check(path) {
                Ok(info) => attachments.push(AttachmentSpec {
                    line,
                    path: info.path,
                    resolved: info.resolved,
                    confine: info.confine,
                    filename: info.filename,
                    content_type: info.content_type,
                    size: info.size,
                    mtime_ns: info.mtime_ns,
                }),
                Err(message) => report(self, Column::Attachments, message),
            }
        }

        let title_unreadable = self.unreadable(fields, Column::Title).is_some();
        let Some(reference) = reference else { return };
        let project_id = match project {
            ProjectCell::Given(project_id) => Some(project_id),
            ProjectCell::Blank => None,
            ProjectCell::Bad => {
                self.sink.poison(line, reference.to_owned());
                return;
            }
        };
        self.sink.row(Row {
            line,
            reference: reference.to_owned(),
            project_id,
            title,
            address,
            priority,
            contact_name,
            contact_email,
            attachments,
            bad,
            title_unreadable,
        });
    }

    fn problem(
        &mut self,
        line: u64,
        field: Option<Column>,
        message: String,
        reference: Option<&str>,
    ) {
        self.sink.problem(Problem {
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

    fn unreadable<'f>(&self, fields: &'f [Field], column: Column) -> Option<&'f Unreadable> {
        self.columns
            .get(column)
            .and_then(|i| fields.get(i))
            .and_then(Field::unreadable)
    }
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
