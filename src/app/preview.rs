//! `check --preview N`: a ticket as it would be sent — the create request's JSON body and
//! the files uploaded before it, with their sizes — after the register's map.

use std::fmt::Write as _;

use crate::manifest::TicketSpec;
use crate::visibuild::{Contact, NewTicket};

/// A ticket's preview block, ending with a blank line.
pub fn ticket(ticket: &TicketSpec) -> String {
    let body = NewTicket {
        title: ticket.title.clone(),
        project_id: ticket.project_id,
        address: ticket.address.clone(),
        priority: ticket.priority,
        // The keys are given by the presign of each upload; here, which file each will be.
        attachment_keys: ticket
            .attachments
            .iter()
            .map(|a| format!("<key of {}>", a.path))
            .collect(),
        contact: (ticket.contact_name.is_some() || ticket.contact_email.is_some()).then(|| {
            Contact {
                name: ticket.contact_name.clone(),
                email: ticket.contact_email.clone(),
            }
        }),
    };
    let json = serde_json::to_string_pretty(&body).unwrap_or_default();
    let mut out = format!(
        "ticket {:?} (line {}): POST /api/core/v1/tickets\n{json}\n",
        ticket.reference, ticket.line
    );
    match ticket.attachments.len() {
        0 => out.push_str("files: none\n"),
        n => {
            let _ = writeln!(out, "files ({n}, uploaded first):");
            for a in &ticket.attachments {
                let _ = writeln!(
                    out,
                    "  {}  {} ({})  {}",
                    a.path,
                    crate::human::bytes(a.size),
                    a.size,
                    a.content_type
                );
            }
        }
    }
    out.push('\n');
    out
}
