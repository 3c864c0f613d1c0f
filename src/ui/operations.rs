//! The dashboard's controls: pause / resume (everything or a batch), cancel and retry (a
//! batch or a ticket), prune — each a confirmation page whose form POSTs the action — and
//! the tickets: a filtered list (state, batch, ref, reason) and a page per ticket with every
//! attempt of its jobs.

use super::html::{self, csrf_field, esc};
use super::{AppState, Inner, UiError, check_csrf};
use crate::domain::{BatchId, TicketId, TicketState};
use crate::human::count;
use crate::store::attempts::{self, TicketFilter};
use crate::store::status::{self as stats, RetryScope};
use crate::store::{StoreError, control, dashboard};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use visibuild_queue as queue;

/// Tickets listed on one page of the ticket list.
const TICKETS_LISTED: i64 = 500;

/// An operator's action, as named in its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Pause,
    Resume,
    Cancel,
    Retry,
    Prune,
}

impl Action {
    fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "cancel" => Action::Cancel,
            "retry" => Action::Retry,
            "prune" => Action::Prune,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Retry => "retry",
            Action::Prune => "prune",
        }
    }
}

/// What an action acts on: everything, a batch, or one ticket (of its batch).
#[derive(Debug, Default, Deserialize)]
pub struct Target {
    batch: Option<BatchId>,
    ticket: Option<TicketId>,
}

/// The pause state and the buttons of the controls, for the overview (no batch) or a
/// batch's page.
pub async fn controls(state: &Inner, batch: Option<BatchId>) -> Result<String, UiError> {
    let pauses = queue::pauses(&state.db).await.map_err(StoreError::from)?;
    let all_paused = pauses.iter().any(|(g, _)| g.is_none());
    let this_paused = batch.is_some_and(|b| pauses.iter().any(|(g, _)| *g == Some(b.0)));
    let link = |action: Action, label: &str, class: &str| {
        let query = batch.map(|b| format!("?batch={b}")).unwrap_or_default();
        format!(
            "<a class=\"button {class}\" id=\"{}\" href=\"/confirm/{}{query}\">{label}</a> ",
            action.name(),
            action.name()
        )
    };
    let mut out = String::from("<section id=controls>");
    match batch {
        None => {
            if all_paused {
                out.push_str(
                    "<p class=\"pill warn\" id=paused>Everything is paused: no worker claims new work.</p> ",
                );
                out.push_str(&link(Action::Resume, "Resume everything…", "primary"));
            } else {
                out.push_str(&link(Action::Pause, "Pause everything…", ""));
            }
            out.push_str(&link(Action::Prune, "Prune old history…", ""));
            out.push_str("<a href=\"/tickets\">Find tickets</a>");
        }
        Some(_) => {
            if all_paused {
                out.push_str(
                    "<p class=\"pill warn\" id=paused>Everything is paused (resume it from the overview).</p> ",
                );
            }
            if this_paused {
                out.push_str("<p class=\"pill warn\" id=batch-paused>This batch is paused.</p> ");
                out.push_str(&link(Action::Resume, "Resume this batch…", "primary"));
            } else {
                out.push_str(&link(Action::Pause, "Pause this batch…", ""));
            }
            out.push_str(&link(Action::Cancel, "Cancel this batch…", "danger"));
            out.push_str(&link(Action::Retry, "Retry failed and cancelled…", ""));
            if let Some(b) = batch {
                out.push_str(&format!("<a href=\"/tickets?batch={b}\">Its tickets</a>"));
            }
        }
    }
    out.push_str("</section>");
    Ok(out)
}

/// A confirmation: what the action will do, and the button that does it.
pub async fn confirm(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Query(target): Query<Target>,
) -> Result<Html<String>, UiError> {
    let action = Action::parse(&action).ok_or(UiError::NoAction)?;
    let (what, back) = describe(&state, &target).await?;
    let (question, consequence, class) = match action {
        Action::Pause => (
            format!("Pause {what}?"),
            "No worker claims new work for it until it is resumed; work in flight finishes."
                .to_string(),
            "primary",
        ),
        Action::Resume => (
            format!("Resume {what}?"),
            "Workers claim its work again within seconds.".to_string(),
            "primary",
        ),
        Action::Cancel => (
            format!("Cancel {what}?"),
            "Nothing more is sent for its tickets not yet created; a create already in flight \
             completes. Retry brings them back."
                .to_string(),
            "danger",
        ),
        Action::Retry => (
            format!("Retry {what}?"),
            "Its failed and cancelled work goes back in the queue (tickets needing review stay: \
             re-send them one by one once checked)."
                .to_string(),
            "primary",
        ),
        Action::Prune => (
            "Prune old history?".to_string(),
            "Deletes the jobs and attempts of batches finished longer ago than this, and request \
             counters as old. Which tickets exist, and their Visibuild ids, are kept: loading the \
             same manifest again creates nothing twice. A pruned batch's failed work cannot be \
             retried."
                .to_string(),
            "danger",
        ),
    };
    if matches!(action, Action::Cancel | Action::Retry)
        && target.batch.is_none()
        && target.ticket.is_none()
    {
        return Err(UiError::NoBatch);
    }
    let hidden = |name: &str, value: Option<String>| {
        value
            .map(|v| format!("<input type=hidden name={name} value=\"{}\">", esc(&v)))
            .unwrap_or_default()
    };
    let age = if action == Action::Prune {
        "<p><label>Older than <input name=older_than value=\"30d\" size=6></label> \
         <span class=muted>(30d, 12h, 2w)</span></p>"
    } else {
        ""
    };
    let body = format!(
        "<p><a href=\"{back}\">← back</a></p><h1>{question}</h1><section><p>{consequence}</p>\
         <form method=post action=\"/actions/{name}\">{csrf}{batch}{ticket}{age}\
         <button class={class} type=submit id=confirm>Yes, {name}</button> \
         <a href=\"{back}\">No, go back</a></form></section>",
        question = esc(&question),
        name = action.name(),
        csrf = csrf_field(&state.csrf),
        batch = hidden("batch", target.batch.map(|b| b.to_string())),
        ticket = hidden("ticket", target.ticket.map(|t| t.to_string())),
    );
    Ok(html::layout(action.name(), false, &body, ""))
}

/// What a target is called on a page, and the page to go back to.
async fn describe(state: &Inner, target: &Target) -> Result<(String, String), UiError> {
    if let Some(ticket) = target.ticket {
        let t = attempts::ticket(&state.db, ticket)
            .await?
            .ok_or(UiError::NoTicket)?;
        return Ok((
            format!("ticket {} of batch {}", t.reference, t.batch),
            format!("/tickets/{ticket}"),
        ));
    }
    if let Some(batch) = target.batch {
        let b = dashboard::batch(&state.db, batch)
            .await?
            .ok_or(UiError::NoBatch)?;
        return Ok((format!("batch {}", b.name), format!("/batches/{batch}")));
    }
    Ok(("everything".to_string(), "/".to_string()))
}

/// An action's form: the CSRF token and its target.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: String,
    batch: Option<BatchId>,
    ticket: Option<TicketId>,
    older_than: Option<String>,
}

/// Does a confirmed action, then goes back to the page it concerns, saying what it did.
pub async fn act(
    State(state): State<AppState>,
    Path(action): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, UiError> {
    check_csrf(&state, &form.csrf)?;
    let action = Action::parse(&action).ok_or(UiError::NoAction)?;
    let target = Target {
        batch: form.batch,
        ticket: form.ticket,
    };
    let (what, back) = describe(&state, &target).await?;
    // A ticket's action is on its batch, limited to its ref.
    let ticket = match target.ticket {
        Some(t) => attempts::ticket(&state.db, t).await?,
        None => None,
    };
    let batch = ticket.as_ref().map(|t| t.batch_id).or(target.batch);
    let reference = ticket.as_ref().map(|t| t.reference.clone());
    let said = match action {
        Action::Pause => {
            queue::pause(&state.db, batch.map(|b| b.0))
                .await
                .map_err(StoreError::from)?;
            format!("Paused {what}: no worker claims new work for it; work in flight finishes.")
        }
        Action::Resume => {
            queue::resume(&state.db, batch.map(|b| b.0))
                .await
                .map_err(StoreError::from)?;
            queue::notify(&state.db).await.map_err(StoreError::from)?;
            format!("Resumed {what}.")
        }
        Action::Cancel => {
            let scope = control::CancelScope { batch, reference };
            let mut tx = state.db.begin().await.map_err(StoreError::from)?;
            let done = control::cancel(&mut tx.conn(), &scope).await?;
            tx.commit().await.map_err(StoreError::from)?;
            format!(
                "Cancelled {}: nothing more is sent for them.",
                count(done.tickets, "ticket")
            )
        }
        Action::Retry => {
            let scope = RetryScope {
                batch,
                reference,
                ..RetryScope::default()
            };
            let mut tx = state.db.begin().await.map_err(StoreError::from)?;
            let done = stats::retry(&mut tx.conn(), &scope, state.config.retry_attempts).await?;
            tx.commit().await.map_err(StoreError::from)?;
            format!(
                "{} of {} back in the queue.",
                count(done.jobs, "job"),
                count(done.tickets, "ticket")
            )
        }
        Action::Prune => {
            let text = form.older_than.as_deref().unwrap_or("30d");
            let age = crate::human::duration(text).map_err(UiError::BadAge)?;
            let pruned = control::prune(&state.db, age).await?;
            control::reclaim_space(&state.db).await?;
            format!(
                "Pruned {}: {}, {} and {} removed.",
                count(pruned.batches.len() as u64, "finished batch"),
                count(pruned.jobs, "job"),
                count(pruned.attempts, "attempt"),
                count(pruned.counters, "request counter")
            )
        }
    };
    tracing::info!(action = action.name(), target = %what, "dashboard: {said}");
    let said: String = url::form_urlencoded::byte_serialize(said.as_bytes()).collect();
    let (path, anchor) = back.split_once('#').unwrap_or((&back, ""));
    let anchor = if anchor.is_empty() {
        String::new()
    } else {
        format!("#{anchor}")
    };
    Ok(Redirect::to(&format!("{path}?did={said}{anchor}")).into_response())
}

/// What the last action did, carried in the redirect's query.
#[derive(Debug, Default, Deserialize)]
pub struct Did {
    did: Option<String>,
}

impl Did {
    pub fn html(&self) -> String {
        match &self.did {
            Some(text) => format!("<p class=flash role=status id=did>{}</p>", esc(text)),
            None => String::new(),
        }
    }
}

/// The ticket list's filters, from its form.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    batch: Option<String>,
    state: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    reason: Option<String>,
}

/// Tickets, filtered by state, batch, ref and reason.
pub async fn tickets(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Html<String>, UiError> {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    let filter = TicketFilter {
        batch: given(&query.batch)
            .and_then(|b| b.parse().ok())
            .map(BatchId),
        state: given(&query.state)
            .and_then(|s| TicketState::ALL.iter().copied().find(|t| t.as_str() == s)),
        reference: given(&query.reference).map(str::to_string),
        reason: given(&query.reason).map(str::to_string),
    };
    let batches = dashboard::batch_overviews(&state.db).await?;
    let rows = attempts::list_tickets(&state.db, &filter, TICKETS_LISTED).await?;
    let mut batch_options = String::from("<option value=\"\">any batch</option>");
    for b in &batches {
        batch_options.push_str(&format!(
            "<option value=\"{}\"{}>{}</option>",
            b.id,
            if filter.batch == Some(b.id) {
                " selected"
            } else {
                ""
            },
            esc(&b.name)
        ));
    }
    let mut state_options = String::from("<option value=\"\">any state</option>");
    for s in TicketState::ALL {
        state_options.push_str(&format!(
            "<option value=\"{s}\"{}>{}</option>",
            if filter.state == Some(*s) {
                " selected"
            } else {
                ""
            },
            s.as_str().replace('_', " ")
        ));
    }
    let mut body = format!(
        "<p><a href=\"/\">← all batches</a></p><h1>Tickets</h1>\
         <section><form method=get action=\"/tickets\" id=filters>\
         <select name=batch>{batch_options}</select> <select name=state>{state_options}</select> \
         <input name=ref placeholder=\"ref contains\" value=\"{reference}\"> \
         <input name=reason placeholder=\"reason contains\" value=\"{reason}\"> \
         <button type=submit>Filter</button></form></section>",
        reference = esc(filter.reference.as_deref().unwrap_or("")),
        reason = esc(filter.reason.as_deref().unwrap_or("")),
    );
    body.push_str(&format!(
        "<section><p class=muted>{}{}</p><table id=tickets><tr><th>batch</th><th>ref</th>\
         <th>title</th><th>state</th><th>last error</th></tr>",
        count(rows.len() as u64, "ticket"),
        if rows.len() as i64 >= TICKETS_LISTED {
            format!(" (the first {TICKETS_LISTED}; narrow the filters to see others)")
        } else {
            String::new()
        }
    ));
    for t in &rows {
        body.push_str(&format!(
            "<tr><td>{}</td><td><a href=\"/tickets/{}\">{}</a></td><td>{}</td><td>{}</td>\
             <td class=reason>{}</td></tr>",
            esc(&t.batch),
            t.id,
            esc(&t.reference),
            esc(&t.title),
            t.state,
            esc(t.last_error.as_deref().unwrap_or(""))
        ));
    }
    body.push_str("</table></section>");
    Ok(html::layout("tickets", false, &body, ""))
}

/// One ticket: where it stands, and every attempt kept of its jobs.
pub async fn ticket(
    State(state): State<AppState>,
    Path(ticket): Path<TicketId>,
    Query(did): Query<Did>,
) -> Result<Html<String>, UiError> {
    let t = attempts::ticket(&state.db, ticket)
        .await?
        .ok_or(UiError::NoTicket)?;
    let tried = attempts::of_ticket(&state.db, ticket).await?;
    let mut body = format!(
        "<p><a href=\"/batches/{batch_id}\">← batch {batch}</a> · <a href=\"/tickets?batch={batch_id}\">its tickets</a></p>\
         <h1>Ticket {reference}</h1>{did}<section><table>\
         <tr><th>title</th><td>{title}</td></tr><tr><th>state</th><td id=state>{state}</td></tr>\
         <tr><th>project</th><td>{project}</td></tr><tr><th>manifest line</th><td>{line}</td></tr>\
         <tr><th>Visibuild id</th><td>{vid}</td></tr>\
         <tr><th>last error</th><td class=reason>{error}</td></tr></table>\
         <p><a class=button href=\"/confirm/cancel?ticket={ticket}\" id=cancel>Cancel this ticket…</a> \
         <a class=button href=\"/confirm/retry?ticket={ticket}\" id=retry>Retry this ticket…</a></p></section>",
        batch_id = t.batch_id,
        batch = esc(&t.batch),
        reference = esc(&t.reference),
        did = did.html(),
        title = esc(&t.title),
        state = t.state,
        project = t.project_id,
        line = t.line,
        vid = esc(t.visibuild_id.as_deref().unwrap_or("")),
        error = esc(t.last_error.as_deref().unwrap_or("")),
    );
    body.push_str(&format!(
        "<h2>Attempts ({})</h2><section><table id=attempts><tr><th>when</th><th>step</th>\
         <th>job</th><th>attempt</th><th>outcome</th><th>answer</th></tr>",
        tried.len()
    ));
    if tried.is_empty() {
        body.push_str("<tr><td colspan=6 class=muted>No attempt recorded yet.</td></tr>");
    }
    for a in &tried {
        let step = match &a.file {
            Some(file) => format!("{} {}", a.step, esc(file)),
            None => a.step.clone(),
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{step}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td>\
             <td class=reason>{}</td></tr>",
            esc(&a.at),
            a.job_id,
            a.attempt,
            esc(&a.outcome),
            esc(a.answer.as_deref().unwrap_or(""))
        ));
    }
    body.push_str("</table></section>");
    Ok(html::layout(
        &format!("ticket {}", t.reference),
        false,
        &body,
        "",
    ))
}
