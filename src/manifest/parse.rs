//! Header and rows of a manifest into typed tickets: each value parsed once, rows of one
//! ticket merged (a blank `project_id` joins its ref's), every problem kept with its line.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::files::Files;
use super::reader::{Field, Next, Records, Unreadable};
use super::{AttachmentSpec, Checked, MAX_REF_LEN, Problem, TicketSpec};
use crate::domain::{Priority, ProjectId};

/// The manifest's columns, in the order they are listed to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Why a value cannot be read, for its row's problem.
fn unreadable_message(why: Unreadable) -> &'static str {
    match why {
        Unreadable::NotUtf8 => "not valid UTF-8 text (save the manifest as UTF-8)",
        Unreadable::Nul => "contains a NUL byte (0x00), which the store cannot hold",
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

/// What the parser keeps about a ticket besides its `TicketSpec`, until `finish`.
#[derive(Default, Clone, Copy)]
struct Marks {
    /// A row had a problem: the ticket is left out.
    bad: bool,
    /// A row's title could not be read (bad UTF-8, a NUL), already reported.
    title_unreadable: bool,
    /// Made of continuation rows (blank `project_id`) whose ref no row has given a project
    /// yet; its `project_id` is a placeholder until one does.
    provisional: bool,
}

/// How a row's `project_id` cell reads.
enum ProjectCell {
    Given(ProjectId),
    /// Blank, on a row with a ref: a continuation of that ref's ticket.
    Blank,
    /// Not a UUID, unreadable, or blank without a ref: already reported.
    Bad,
}

/// A ref under more than one project, beside its first ticket.
struct OtherProjects {
    /// The ticket of the ref's second project.
    second: usize,
    /// Projects with the ref, the first included.
    count: usize,
}

/// Ticket positions by a 64-bit hash of a key, without a second copy of the key: a hash
/// points at a position, and the caller compares the ticket there in full.
#[derive(Default)]
struct KeyIndex {
    hasher: RandomState,
    first: HashMap<u64, usize>,
    /// Positions of later keys whose hash collided with an earlier one (almost never).
    collided: HashMap<u64, Vec<usize>>,
}

impl KeyIndex {
    fn hash(&self, key: impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The first position under `hash` whose ticket `is` the key.
    fn find(&self, hash: u64, is: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.first.get(&hash).copied().filter(|&index| is(index));
        first.or_else(|| {
            let mut later = self.collided.get(&hash)?.iter().copied();
            later.find(|&index| is(index))
        })
    }

    fn insert(&mut self, hash: u64, index: usize) {
        match self.first.entry(hash) {
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
            Entry::Occupied(_) => self.collided.entry(hash).or_default().push(index),
        }
    }
}

/// Tickets by ref alone, for continuation rows: the first ticket of each ref, and the other
/// projects of a ref that has several. Built at the first continuation row from the tickets
/// so far, so that a manifest without one pays nothing for it.
#[derive(Default)]
struct RefIndex {
    first: KeyIndex,
    /// By the first ticket of a ref that more than one project has.
    others: HashMap<usize, OtherProjects>,
    /// The line that gave a provisional ticket its project, by ticket.
    adopted: HashMap<usize, u64>,
}

impl RefIndex {
    fn build(tickets: &[TicketSpec]) -> Self {
        let mut index = Self::default();
        for position in 0..tickets.len() {
            index.add(tickets, position);
        }
        index
    }

    /// The first ticket with `reference`.
    fn first(&self, tickets: &[TicketSpec], reference: &str) -> Option<usize> {
        let hash = self.first.hash(reference);
        let same_ref = |index: usize| tickets.get(index).is_some_and(|t| t.reference == reference);
        self.first.find(hash, same_ref)
    }

    /// Adds a new ticket: the first of its ref, or one more project of it.
    fn add(&mut self, tickets: &[TicketSpec], position: usize) {
        let Some(reference) = tickets.get(position).map(|t| t.reference.as_str()) else {
            return;
        };
        match self.first(tickets, reference) {
            Some(first) => {
                let other = self.others.entry(first).or_insert(OtherProjects {
                    second: position,
                    count: 1,
                });
                other.count += 1;
            }
            None => {
                let hash = self.first.hash(reference);
                self.first.insert(hash, position);
            }
        }
    }
}

/// One pass over a manifest's records.
pub(crate) struct Parser {
    file: PathBuf,
    files: Files,
    columns: Columns,
    /// Unknown, duplicate or unnamed columns: no ticket can be trusted.
    header_broken: bool,
    problems: Vec<Problem>,
    /// Every ticket met so far, built in place from its rows (a title not yet given is
    /// empty); `finish` drops those with problems.
    tickets: Vec<TicketSpec>,
    /// Beside `tickets`, one per ticket.
    marks: Vec<Marks>,
    /// The line of a value first given on a later row than its ticket's first line, by
    /// ticket and column (any other value came from the first line).
    later_lines: HashMap<(usize, Column), u64>,
    /// Tickets by `(project_id, ref)`.
    by_key: KeyIndex,
    /// Tickets by ref, from the first continuation row on.
    by_ref: Option<RefIndex>,
    /// Continuation rows: the ticket each joined, and its line. Checked in `finish`, once
    /// every project of the ref is known.
    continuations: Vec<(usize, u64)>,
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
            tickets: Vec::new(),
            marks: Vec::new(),
            later_lines: HashMap::new(),
            by_key: KeyIndex::default(),
            by_ref: None,
            continuations: Vec::new(),
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
                Field::Unreadable(why) => {
                    let message = match why {
                        Unreadable::NotUtf8 => {
                            format!("column {position}: the name is not valid UTF-8")
                        }
                        Unreadable::Nul => {
                            format!("column {position}: the name contains a NUL byte (0x00)")
                        }
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
            if let Some(why) = self.unreadable(fields, column) {
                report(self, column, unreadable_message(why).to_owned());
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
        let index = match project {
            ProjectCell::Given(project_id) => self.ticket_of(line, project_id, reference),
            ProjectCell::Blank => {
                let index = self.continued_ticket(line, reference);
                self.continuations.push((index, line));
                index
            }
            ProjectCell::Bad => {
                self.poison(line, reference.to_owned());
                return;
            }
        };
        let (Some(ticket), Some(marks)) = (self.tickets.get_mut(index), self.marks.get_mut(index))
        else {
            return;
        };
        let mut merge = Merge {
            ticket: index,
            first_line: ticket.line,
            line,
            later_lines: &mut self.later_lines,
            disagreements: Vec::new(),
        };
        let mut given_title = Some(std::mem::take(&mut ticket.title)).filter(|t| !t.is_empty());
        merge.merge(&mut given_title, title, Column::Title);
        ticket.title = given_title.unwrap_or_default();
        merge.merge(&mut ticket.address, address, Column::Address);
        merge.merge(&mut ticket.priority, priority, Column::Priority);
        merge.merge(&mut ticket.contact_name, contact_name, Column::ContactName);
        merge.merge(
            &mut ticket.contact_email,
            contact_email,
            Column::ContactEmail,
        );
        // Moved, not extended: `extend` into an empty Vec reserves room for four.
        if ticket.attachments.is_empty() {
            ticket.attachments = attachments;
        } else {
            ticket.attachments.extend(attachments);
        }
        let disagreements = merge.disagreements;
        marks.title_unreadable |= title_unreadable;
        marks.bad |= bad || !disagreements.is_empty();
        for (column, message) in disagreements {
            self.problem(line, Some(column), message, Some(reference));
        }
    }

    /// The ticket of a row that gives `project_id`: the one with that key, else the
    /// provisional ticket of the ref's earlier continuation rows, else a new one.
    fn ticket_of(&mut self, line: u64, project_id: ProjectId, reference: &str) -> usize {
        let tickets = &self.tickets;
        let key_hash = self.by_key.hash((project_id, reference));
        let same_key = |index: usize| {
            tickets
                .get(index)
                .is_some_and(|t| t.project_id == project_id && t.reference == reference)
        };
        if let Some(index) = self.by_key.find(key_hash, same_key) {
            return index;
        }
        let provisional = self
            .by_ref
            .as_ref()
            .and_then(|by_ref| by_ref.first(tickets, reference))
            .filter(|&first| self.marks.get(first).is_some_and(|m| m.provisional));
        if let Some(first) = provisional {
            // The ref's continuation rows came first: their ticket is this project's.
            if let (Some(ticket), Some(marks)) =
                (self.tickets.get_mut(first), self.marks.get_mut(first))
            {
                ticket.project_id = project_id;
                marks.provisional = false;
            }
            self.by_key.insert(key_hash, first);
            if let Some(by_ref) = &mut self.by_ref {
                by_ref.adopted.insert(first, line);
            }
            return first;
        }
        let index = self.new_ticket(line, project_id, reference);
        self.by_key.insert(key_hash, index);
        if let Some(by_ref) = &mut self.by_ref {
            by_ref.add(&self.tickets, index);
        }
        index
    }

    /// The ticket a continuation row joins: the first with its ref, or a provisional one
    /// until a row gives the ref a project.
    fn continued_ticket(&mut self, line: u64, reference: &str) -> usize {
        let by_ref = self
            .by_ref
            .get_or_insert_with(|| RefIndex::build(&self.tickets));
        if let Some(first) = by_ref.first(&self.tickets, reference) {
            return first;
        }
        let index = self.new_ticket(line, ProjectId(Uuid::nil()), reference);
        if let Some(marks) = self.marks.get_mut(index) {
            marks.provisional = true;
        }
        if let Some(by_ref) = &mut self.by_ref {
            by_ref.add(&self.tickets, index);
        }
        index
    }

    fn new_ticket(&mut self, line: u64, project_id: ProjectId, reference: &str) -> usize {
        self.tickets.push(TicketSpec {
            line,
            reference: reference.to_owned(),
            project_id,
            title: String::new(),
            address: None,
            priority: None,
            contact_name: None,
            contact_email: None,
            attachments: Vec::new(),
        });
        self.marks.push(Marks::default());
        self.tickets.len() - 1
    }

    /// A continuation row needs its ref under exactly one project: none is a missing
    /// value, several is a row that cannot say which ticket it belongs to.
    fn check_continuations(&mut self) {
        let by_ref = self.by_ref.take().unwrap_or_default();
        for (index, line) in std::mem::take(&mut self.continuations) {
            let (Some(ticket), Some(marks)) = (self.tickets.get(index), self.marks.get(index))
            else {
                continue;
            };
            let reference = ticket.reference.clone();
            if marks.provisional {
                let message = MISSING.to_owned();
                self.problem(line, Some(Column::ProjectId), message, Some(&reference));
                continue;
            }
            let Some(other) = by_ref.others.get(&index) else {
                continue;
            };
            let Some(second) = self.tickets.get(other.second) else {
                continue;
            };
            let first_line = by_ref.adopted.get(&index).copied().unwrap_or(ticket.line);
            let (projects, more) = match other.count {
                2 => ("two".to_owned(), ""),
                count => (count.to_string(), ", ..."),
            };
            let message = format!(
                "blank, but ref {reference:?} exists under {projects} projects ({} on line \
                 {first_line}, {} on line {}{more}); give the project_id",
                ticket.project_id, second.project_id, second.line
            );
            self.problem(line, Some(Column::ProjectId), message, Some(&reference));
            self.poison(line, reference);
        }
    }

    fn finish(mut self) -> Checked {
        self.check_continuations();
        // What only the rows needed goes first, to make room for the result.
        self.by_key = KeyIndex::default();
        self.later_lines = HashMap::new();
        let mut skipped: Vec<(u64, String)> = std::mem::take(&mut self.poisoned);
        let mut marks = std::mem::take(&mut self.marks).into_iter();
        let mut tickets = std::mem::take(&mut self.tickets);
        tickets.retain_mut(|ticket| {
            let marks = marks.next().unwrap_or_default();
            if marks.provisional {
                // Its rows are reported: no row gave the ref a project.
                skipped.push((ticket.line, std::mem::take(&mut ticket.reference)));
                return false;
            }
            if ticket.title.is_empty() {
                if !marks.title_unreadable {
                    let message = MISSING.to_owned();
                    let line = ticket.line;
                    self.problem(line, Some(Column::Title), message, Some(&ticket.reference));
                }
                skipped.push((ticket.line, std::mem::take(&mut ticket.reference)));
                return false;
            }
            if marks.bad || self.header_broken || self.poisoned_set.contains(&ticket.reference) {
                skipped.push((ticket.line, std::mem::take(&mut ticket.reference)));
                return false;
            }
            // A ticket of several rows grew its attachments by doubling.
            ticket.attachments.shrink_to_fit();
            true
        });
        tickets.shrink_to_fit();
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
            files_root: self.files.root().to_path_buf(),
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

    fn unreadable(&self, fields: &[Field], column: Column) -> Option<Unreadable> {
        self.columns
            .get(column)
            .and_then(|i| fields.get(i))
            .and_then(Field::unreadable)
    }
}

/// One row's values being merged into its ticket.
struct Merge<'a> {
    ticket: usize,
    /// The ticket's first line: where its values came from unless `later_lines` says.
    first_line: u64,
    line: u64,
    later_lines: &'a mut HashMap<(usize, Column), u64>,
    disagreements: Vec<(Column, String)>,
}

impl Merge<'_> {
    /// Merges the row's value of a column into the ticket's: blank inherits, equal agrees,
    /// anything else is a disagreement naming the line of the first value.
    fn merge<T: PartialEq + fmt::Display>(
        &mut self,
        slot: &mut Option<T>,
        new: Option<T>,
        column: Column,
    ) {
        let Some(new) = new else { return };
        match slot {
            None => {
                if self.line != self.first_line {
                    self.later_lines.insert((self.ticket, column), self.line);
                }
                *slot = Some(new);
            }
            Some(old) if *old == new => {}
            Some(old) => {
                let first = self
                    .later_lines
                    .get(&(self.ticket, column))
                    .copied()
                    .unwrap_or(self.first_line);
                self.disagreements.push((
                    column,
                    format!(
                        "{:?} disagrees with {:?} on line {first} (rows of one ticket must agree or leave it blank)",
                        new.to_string(),
                        old.to_string()
                    ),
                ));
            }
        }
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
