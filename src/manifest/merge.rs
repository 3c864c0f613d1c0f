//! The rules of a ticket, applied to one ticket's rows at a time (in line order, as staging
//! hands them over): values merged, disagreements named by line, a ticket without a title,
//! with a bad row or a poisoned ref left out.

use std::fmt;
use std::path::Path;

use super::parse::{Column, MISSING};
use super::{Problem, Row, TicketSpec};
use crate::domain::ProjectId;

/// When a problem was found, which orders the problems of one line as a single pass over
/// the rows would have found them: a row's own problems, then its disagreements with earlier
/// rows, then what only the whole manifest tells (continuation rows, a ticket's title).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Row = 0,
    Merge = 1,
    Continuation = 2,
    Ticket = 3,
}

/// Every row of one ticket, in line order.
#[derive(Debug)]
pub(crate) struct TicketRows {
    /// The ticket's first line.
    pub line: u64,
    pub reference: String,
    /// `None`: only continuation rows, and no row gave the ref a project (reported already).
    pub project_id: Option<ProjectId>,
    /// A row with this ref could not say which ticket it belongs to (reported already).
    pub poisoned: bool,
    pub rows: Vec<Row>,
}

/// A ticket's fate: loaded, or left out; and what its rows together got wrong.
#[derive(Debug)]
pub(crate) struct Merged {
    pub ticket: Option<TicketSpec>,
    pub problems: Vec<(Phase, Problem)>,
}

/// Merges a ticket's rows. `header_broken`: the columns cannot be trusted, so no ticket is.
pub(crate) fn merge(file: &Path, ticket: TicketRows, header_broken: bool) -> Merged {
    let mut problems = Vec::new();
    let reference = ticket.reference;
    // A ticket whose ref no row gives a project is left out (its rows say so), but its rows
    // are merged all the same: their disagreements are problems too.
    let mut spec = TicketSpec {
        line: ticket.line,
        reference,
        project_id: ticket.project_id.unwrap_or(ProjectId(uuid::Uuid::nil())),
        title: String::new(),
        address: None,
        priority: None,
        contact_name: None,
        contact_email: None,
        attachments: Vec::new(),
    };
    let mut title = None;
    let mut later_lines = [None; Column::ALL.len()];
    let (mut bad, mut title_unreadable) = (false, false);
    for row in ticket.rows {
        let mut merge = Merge {
            first_line: ticket.line,
            line: row.line,
            later_lines: &mut later_lines,
            disagreements: Vec::new(),
        };
        merge.merge(&mut title, row.title, Column::Title);
        merge.merge(&mut spec.address, row.address, Column::Address);
        merge.merge(&mut spec.priority, row.priority, Column::Priority);
        merge.merge(
            &mut spec.contact_name,
            row.contact_name,
            Column::ContactName,
        );
        merge.merge(
            &mut spec.contact_email,
            row.contact_email,
            Column::ContactEmail,
        );
        // Moved, not extended: `extend` into an empty Vec reserves room for four.
        if spec.attachments.is_empty() {
            spec.attachments = row.attachments;
        } else {
            spec.attachments.extend(row.attachments);
        }
        title_unreadable |= row.title_unreadable;
        bad |= row.bad || !merge.disagreements.is_empty();
        for (column, message) in merge.disagreements {
            let problem = problem(file, row.line, column, message, &spec.reference);
            problems.push((Phase::Merge, problem));
        }
    }
    if ticket.project_id.is_none() {
        return Merged {
            ticket: None,
            problems,
        };
    }
    let Some(title) = title else {
        if !title_unreadable {
            let missing = problem(file, spec.line, Column::Title, MISSING, &spec.reference);
            problems.push((Phase::Ticket, missing));
        }
        return Merged {
            ticket: None,
            problems,
        };
    };
    spec.title = title;
    let keep = !(bad || header_broken || ticket.poisoned);
    Merged {
        ticket: keep.then_some(spec),
        problems,
    }
}

fn problem(
    file: &Path,
    line: u64,
    column: Column,
    message: impl Into<String>,
    reference: &str,
) -> Problem {
    Problem {
        file: file.to_owned(),
        line,
        field: Some(column.name().to_owned()),
        message: message.into(),
        reference: Some(reference.to_owned()),
    }
}

/// One row's values being merged into its ticket.
struct Merge<'a> {
    /// The ticket's first line: where its values came from unless `later_lines` says.
    first_line: u64,
    line: u64,
    /// The line of a value first given on a later row than the ticket's first, by column.
    later_lines: &'a mut [Option<u64>; Column::ALL.len()],
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
                    self.later_lines[column as usize] = Some(self.line);
                }
                *slot = Some(new);
            }
            Some(old) if *old == new => {}
            Some(old) => {
                let first = self.later_lines[column as usize].unwrap_or(self.first_line);
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
