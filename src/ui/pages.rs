//! The dashboard's pages and actions: batches with progress, one batch's failures by reason
//! (retry per group and per ticket), tickets needing review (re-send after a confirm step).

use super::failures::{self, FailureGroup};
use super::html::{self, bar, csrf_field, esc, pills};
use super::{
    AppState, Client, Inner, SESSION_COOKIE, UiError, charts, check_csrf, equal, operations,
};
use crate::domain::{BatchId, JobId, TicketId};
use crate::human::{bytes as human_bytes, count};
use crate::store::StoreError;
use crate::store::budgets::{self, BudgetStatus};
use crate::store::dashboard::{self, BatchOverview, FailedJob, ReviewTicket};
use crate::store::status::{self as stats, RetryScope};
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use std::collections::BTreeSet;
use time::OffsetDateTime;

/// Failed jobs read to group a batch's failures (a retry acts on the same set).
const FAILED_JOBS_READ: i64 = 20_000;
/// Tickets listed under one reason; the group's button retries all of them.
const TICKETS_PER_GROUP: usize = 25;
/// Tickets needing review listed on a batch's page.
const REVIEW_LISTED: i64 = 200;
/// Minutes of throughput charted.
const CHART_MINUTES: i32 = 60;

fn when(at: impl Into<OffsetDateTime>) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    at.into()
        .to_offset(time::UtcOffset::UTC)
        .format(&format)
        .map(|t| format!("{t} UTC"))
        .unwrap_or_default()
}

fn footer(state: &Inner) -> String {
    format!(
        "queue: {} · page drawn {} · <a href=\"/metrics\">/metrics</a> · <a href=\"/healthz\">/healthz</a>",
        esc(&state.database),
        when(OffsetDateTime::now_utc())
    )
}

/// The shared rate budgets: what each hands out now, its ceiling, 429s and who shares it.
fn budgets_section(budgets: &[BudgetStatus]) -> String {
    if budgets.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h2>Rate budgets</h2><section><table id=budgets><tr><th>limit</th>\
         <th class=n>now</th><th class=n>ceiling</th><th class=n>margin</th>\
         <th class=n>429s, last minute</th><th>learned (<code>--api-rate auto</code>)</th>\
         <th>shared by</th></tr>",
    );
    for b in budgets {
        let processes = if b.processes.is_empty() {
            "<span class=muted>no process running</span>".to_string()
        } else {
            b.processes
                .iter()
                .map(|p| format!("{} ({:.1}/s)", esc(&p.process), p.ceiling_per_sec))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let paused = if b.paused_for_secs > 0.0 {
            format!(" <span class=warn>paused {:.1} s</span>", b.paused_for_secs)
        } else {
            String::new()
        };
        let learned = match &b.learning {
            Some(l) => esc(&l.describe()),
            None => "<span class=muted>—</span>".to_string(),
        };
        out.push_str(&format!(
            "<tr><td>{name}</td><td class=n>{now:.1}/s{paused}</td><td class=n>{ceiling:.1}/s</td>\
             <td class=n>{margin:.0}%</td><td class=n>{limited}</td><td class=learned>{learned}</td>\
             <td>{processes}</td></tr>",
            name = esc(&b.name),
            now = b.rate_per_sec,
            ceiling = b.ceiling_per_sec,
            margin = b.margin * 100.0,
            limited = b.rate_limited_last_minute,
        ));
    }
    out.push_str("</table></section>");
    out
}

/// Every batch with its progress, and the throughput of all of them.
pub async fn overview(
    State(state): State<AppState>,
    Query(did): Query<operations::Did>,
) -> Result<Html<String>, UiError> {
    let mut connection = state.db.acquire().await.map_err(StoreError::from)?;
    let mut db = connection.conn();
    let batches = dashboard::batch_overviews(db.reborrow()).await?;
    let live = dashboard::work_in_progress(db.reborrow()).await?;
    let throughput = dashboard::throughput(&mut db, None, CHART_MINUTES).await?;
    drop(connection); // back to the pool before the page is drawn
    let budgets = budgets::status(&state.db).await?;
    let mut body = format!("<h1>Batches</h1>{}", did.html());
    body.push_str(&operations::controls(&state, None).await?);
    if batches.is_empty() {
        body.push_str(
            "<section><p>No batches yet: load one with <code>visibuild-import enqueue MANIFEST</code>.</p></section>",
        );
    } else {
        body.push_str(
            "<section><table><tr><th>batch</th><th>loaded</th><th>tickets</th><th></th>\
             <th>files</th><th class=n>uploaded</th><th>in flight</th></tr>",
        );
        for b in &batches {
            body.push_str(&overview_row(b));
        }
        body.push_str("</table></section>");
    }
    body.push_str(&throughput_section(&throughput, "all batches")?);
    body.push_str(&budgets_section(&budgets));
    Ok(html::layout("batches", live, &body, &footer(&state)))
}

fn overview_row(b: &BatchOverview) -> String {
    let pending = b.tickets - b.created - b.failed - b.needs_review - b.cancelled;
    let tickets = pills(
        [
            ("created", b.created),
            ("failed", b.failed),
            ("needs_review", b.needs_review),
            ("cancelled", b.cancelled),
            ("pending", pending),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0),
    );
    format!(
        "<tr><td><a href=\"/batches/{id}\">{name}</a></td><td class=muted>{loaded}</td>\
         <td>{tbar}<span class=muted>{done} of {total}</span></td><td>{tickets}</td>\
         <td>{fbar}<span class=muted>{fup} of {files} files</span></td>\
         <td class=n>{bup} of {bytes}</td><td>{running} running, {queued} queued</td></tr>",
        id = b.id,
        name = esc(&b.name),
        loaded = when(b.created_at),
        tbar = bar(
            b.tickets,
            &[
                (b.created, "ok"),
                (b.failed, "bad"),
                (b.needs_review, "warn")
            ]
        ),
        done = b.created,
        total = b.tickets,
        fbar = bar(
            b.files,
            &[(b.files_uploaded, "ok"), (b.files_failed, "bad")]
        ),
        fup = b.files_uploaded,
        files = b.files,
        bup = human_bytes(b.bytes_uploaded.max(0) as u64),
        bytes = human_bytes(b.bytes.max(0) as u64),
        running = b.running,
        queued = b.queued,
    )
}

fn throughput_section(rows: &[dashboard::MinuteThroughput], of: &str) -> Result<String, UiError> {
    let files: i64 = rows.iter().map(|r| r.files).sum();
    let tickets: i64 = rows.iter().map(|r| r.tickets).sum();
    let limited: i64 = rows.iter().map(|r| r.rate_limited).sum();
    let span = match (rows.first(), rows.last()) {
        (Some(a), Some(b)) => format!("{} to {}", when(a.minute), when(b.minute)),
        _ => String::new(),
    };
    Ok(format!(
        "<h2>Throughput ({of}), per minute</h2><p class=muted>{span}: {files} files, {tickets} tickets, \
         {limited} requests answered 429 (rate-limited)</p>{}",
        charts::throughput(rows)?
    ))
}

/// What the last action did, carried in the redirect's query.
#[derive(Debug, Default, Deserialize)]
pub struct Flash {
    retried: Option<u64>,
    tickets: Option<u64>,
    resent: Option<String>,
    /// What a confirmed action did ([`operations::act`]), in words.
    did: Option<String>,
}

impl Flash {
    fn html(&self) -> String {
        let text = match (self.retried, &self.resent) {
            (_, Some(reference)) => format!(
                "The create of ticket {} is back in the queue: a worker sends it again.",
                esc(reference)
            ),
            (Some(0), None) => {
                "Nothing to retry: that work is no longer failed (another operator or a worker got there first).".to_string()
            }
            (Some(jobs), None) => format!(
                "{} of {} back in the queue; a running worker picks them up (or start <code>visibuild-import run</code>).",
                count(jobs, "failed job"),
                count(self.tickets.unwrap_or(0), "ticket"),
            ),
            (None, None) => {
                return match &self.did {
                    Some(text) => format!("<p class=flash role=status id=did>{}</p>", esc(text)),
                    None => String::new(),
                };
            }
        };
        format!("<p class=flash role=status>{text}</p>")
    }
}

/// One batch: progress, failures by reason, tickets needing review, throughput.
pub async fn batch(
    State(state): State<AppState>,
    Path(batch): Path<BatchId>,
    Query(flash): Query<Flash>,
) -> Result<Html<String>, UiError> {
    let mut connection = state.db.acquire().await.map_err(StoreError::from)?;
    let mut db = connection.conn();
    let b = dashboard::batch(db.reborrow(), batch)
        .await?
        .ok_or(UiError::NoBatch)?;
    let status = stats::batch_status(&mut db, b.id, &b.name, b.created_at).await?;
    let failed = dashboard::failed_jobs(db.reborrow(), batch, None, FAILED_JOBS_READ).await?;
    let review = dashboard::review_tickets(db.reborrow(), batch, REVIEW_LISTED).await?;
    let throughput = dashboard::throughput(&mut db, Some(batch), CHART_MINUTES).await?;
    let live = dashboard::work_in_progress(db.reborrow()).await?;
    drop(connection); // back to the pool before the page is drawn

    let mut body = format!(
        "<p><a href=\"/\">← all batches</a></p><h1>Batch {}</h1>{}{}",
        esc(&b.name),
        flash.html(),
        operations::controls(&state, Some(batch)).await?
    );
    let ticket_total: i64 = status.tickets.values().sum();
    let in_state =
        |m: &std::collections::BTreeMap<String, i64>, k: &str| m.get(k).copied().unwrap_or(0);
    let j = &status.jobs;
    body.push_str(&format!(
        "<section><table>\
         <tr><th>tickets</th><td>{tbar}</td><td>{tickets}</td></tr>\
         <tr><th>files</th><td>{fbar}</td><td>{files} <span class=muted>{bup} of {bytes}</span></td></tr>\
         <tr><th>jobs</th><td></td><td>{waiting} waiting, {running} running, {retrying} retrying, \
         {blocked} blocked on uploads, {jfailed} failed, {completed} done, {cancelled} cancelled</td></tr>\
         <tr><th>last minute</th><td></td><td>{fmin} files, {tmin} tickets{eta}</td></tr>\
         </table>{retrying_why}</section>",
        tbar = bar(
            ticket_total,
            &[
                (in_state(&status.tickets, "created"), "ok"),
                (in_state(&status.tickets, "failed"), "bad"),
                (in_state(&status.tickets, "needs_review"), "warn"),
            ]
        ),
        tickets = pills(status.tickets.iter().map(|(k, v)| (k.as_str(), *v))),
        fbar = bar(
            status.files.values().sum(),
            &[
                (in_state(&status.files, "uploaded"), "ok"),
                (in_state(&status.files, "failed"), "bad")
            ]
        ),
        files = pills(status.files.iter().map(|(k, v)| (k.as_str(), *v))),
        bup = human_bytes(status.bytes_uploaded.max(0) as u64),
        bytes = human_bytes(status.bytes_total.max(0) as u64),
        waiting = j.waiting,
        running = j.running,
        retrying = j.retrying,
        blocked = j.blocked,
        jfailed = j.failed,
        completed = j.completed,
        cancelled = j.cancelled,
        fmin = status.files_last_minute,
        tmin = status.tickets_last_minute,
        eta = status
            .eta_seconds
            .map(|e| format!(", about {e}s to go"))
            .unwrap_or_default(),
        retrying_why = if status.retry_reasons.is_empty() {
            String::new()
        } else {
            let reasons: String = status
                .retry_reasons
                .iter()
                .map(|r| {
                    format!(
                        "<li>{} × <span class=reason>{}</span></li>",
                        r.count,
                        esc(&r.reason)
                    )
                })
                .collect();
            format!("<p class=muted>Waiting to run again because of:</p><ul>{reasons}</ul>")
        },
    ));

    let groups = failures::group(&failed);
    body.push_str(&failures_section(&state, batch, &groups, failed.len()));
    body.push_str(&review_section(batch, &review));
    body.push_str(&throughput_section(&throughput, "this batch")?);
    Ok(html::layout(&b.name, live, &body, &footer(&state)))
}

fn failures_section(state: &Inner, batch: BatchId, groups: &[FailureGroup], read: usize) -> String {
    let mut out = format!("<h2 id=failures>Failures by reason ({})</h2>", groups.len());
    if groups.is_empty() {
        out.push_str("<section><p class=muted>No failed work.</p></section>");
        return out;
    }
    if read as i64 >= FAILED_JOBS_READ {
        out.push_str(&format!(
            "<p class=muted>Showing the first {FAILED_JOBS_READ} failed jobs; retry these, or use <code>visibuild-import retry</code>, to see the rest.</p>"
        ));
    }
    let csrf = csrf_field(&state.csrf);
    for g in groups {
        let tickets: BTreeSet<TicketId> = g.tickets.iter().map(|t| t.ticket_id).collect();
        out.push_str(&format!(
            "<section class=group><p><span class=\"pill bad\">{} · {}</span> \
             <span class=reason>{key}</span></p>\
             <form class=inline method=post action=\"/batches/{batch}/retry\">{csrf}\
             <input type=hidden name=group value=\"{key}\">\
             <button class=primary type=submit>Retry these {jobs}</button></form>\
             <p class=muted>e.g. <span class=reason>{example}</span></p>\
             <table><tr><th>ref</th><th>title</th><th>reason</th><th></th></tr>",
            count(g.jobs.len() as u64, "job"),
            count(tickets.len() as u64, "ticket"),
            jobs = g.jobs.len(),
            key = esc(&g.key),
            example = esc(&g.example),
        ));
        for t in g.tickets.iter().take(TICKETS_PER_GROUP) {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=reason>{}</td><td>\
                 <form class=inline method=post action=\"/batches/{batch}/retry\">{csrf}\
                 <input type=hidden name=ticket value=\"{}\">\
                 <button type=submit>Retry ticket</button></form></td></tr>",
                esc(&t.reference),
                esc(&t.title),
                esc(&t.reasons.join("; ")),
                t.ticket_id,
            ));
        }
        out.push_str("</table>");
        if g.tickets.len() > TICKETS_PER_GROUP {
            out.push_str(&format!(
                "<p class=muted>and {} more tickets with this reason</p>",
                g.tickets.len() - TICKETS_PER_GROUP
            ));
        }
        out.push_str("</section>");
    }
    out
}

fn review_section(batch: BatchId, review: &[ReviewTicket]) -> String {
    let mut out = format!("<h2 id=review>Needs review ({})</h2>", review.len());
    if review.is_empty() {
        out.push_str("<section><p class=muted>No ticket needs review.</p></section>");
        return out;
    }
    out.push_str(
        "<section><p>A create request for each of these left, and no definite answer came back: \
         the ticket may exist in Visibuild. Check there first; re-send only the ones that are not.</p>\
         <table><tr><th>ref</th><th>title</th><th>project</th><th>create sent</th><th>why</th><th></th></tr>",
    );
    for t in review {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=reason>{}</td>\
             <td><a href=\"/batches/{batch}/review/{}\">Re-send…</a></td></tr>",
            esc(&t.reference),
            esc(&t.title),
            t.project_id,
            t.create_sent_at.map(when).unwrap_or_default(),
            esc(t.last_error.as_deref().unwrap_or("")),
            t.ticket_id
        ));
    }
    out.push_str("</table></section>");
    out
}

/// A retry: a group of failures (by its reason) or one ticket's failed jobs.
#[derive(Debug, Deserialize)]
pub struct RetryForm {
    csrf: String,
    group: Option<String>,
    ticket: Option<TicketId>,
}

pub async fn retry(
    State(state): State<AppState>,
    Path(batch): Path<BatchId>,
    Form(form): Form<RetryForm>,
) -> Result<Response, UiError> {
    check_csrf(&state, &form.csrf)?;
    dashboard::batch(&state.db, batch)
        .await?
        .ok_or(UiError::NoBatch)?;
    let failed = dashboard::failed_jobs(&state.db, batch, form.ticket, FAILED_JOBS_READ).await?;
    let chosen: Vec<&FailedJob> = match (&form.ticket, &form.group) {
        (Some(_), _) => failed.iter().collect(),
        (None, Some(key)) => failed
            .iter()
            .filter(|j| failures::reason_key(j) == *key)
            .collect(),
        (None, None) => Vec::new(),
    };
    let ids: Vec<JobId> = chosen.iter().map(|j| j.job_id).collect();
    let retried = retry_jobs(&state, batch, ids, false).await?;
    let (jobs, tickets) = (retried.jobs, retried.tickets);
    tracing::info!(%batch, jobs, tickets, "dashboard: failed work put back in the queue");
    Ok(Redirect::to(&format!(
        "/batches/{batch}?retried={jobs}&tickets={tickets}#failures"
    ))
    .into_response())
}

/// Put these failed jobs back, as `retry --job` would (and `--force` for a re-send), in one
/// transaction. Returns what was put back.
async fn retry_jobs(
    state: &Inner,
    batch: BatchId,
    jobs: Vec<JobId>,
    force: bool,
) -> Result<stats::Retried, UiError> {
    let scope = RetryScope {
        batch: Some(batch),
        jobs: Some(jobs),
        force,
        ..RetryScope::default()
    };
    let mut tx = state.db.begin().await.map_err(StoreError::from)?;
    let done = stats::retry(&mut tx.conn(), &scope, state.config.retry_attempts).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(done)
}

/// What to check before re-sending a ticket's create, and the button that does it.
pub async fn confirm_resend(
    State(state): State<AppState>,
    Path((batch, ticket)): Path<(BatchId, TicketId)>,
) -> Result<Html<String>, UiError> {
    let t = review_ticket(&state, batch, ticket).await?;
    let sent = t
        .create_sent_at
        .map(when)
        .unwrap_or_else(|| "(time not recorded)".into());
    let body = format!(
        "<p><a href=\"/batches/{batch}#review\">← back to the batch</a></p>\
         <h1>Re-send ticket {reference}?</h1><section>\
         <table><tr><th>ref</th><td>{reference}</td></tr><tr><th>title</th><td>{title}</td></tr>\
         <tr><th>project</th><td>{project}</td></tr><tr><th>manifest line</th><td>{line}</td></tr>\
         <tr><th>create sent</th><td>{sent}</td></tr>\
         <tr><th>why it needs review</th><td class=reason>{why}</td></tr></table></section>\
         <section><h2>Check first</h2><ol>\
         <li>In Visibuild, open project <b>{project}</b> and look for a ticket titled <b>{title}</b> \
         created around <b>{sent}</b>.</li>\
         <li>If it is there, <b>do not re-send</b>: the ticket exists, and sending again makes a \
         second one. Leave it here; it is reported as needing review.</li>\
         <li>If it is not there, re-send: the create is queued again and sent once.</li></ol>\
         <form method=post action=\"/batches/{batch}/review/{ticket}/resend\">{csrf}\
         <button class=danger type=submit>I checked: it is not in Visibuild. Re-send the create</button> \
         <a href=\"/batches/{batch}#review\">Cancel</a></form></section>",
        reference = esc(&t.reference),
        title = esc(&t.title),
        project = t.project_id,
        line = t.line,
        why = esc(t.last_error.as_deref().unwrap_or("")),
        csrf = csrf_field(&state.csrf),
    );
    Ok(html::layout(
        &format!("re-send {}", t.reference),
        false,
        &body,
        &footer(&state),
    ))
}

async fn review_ticket(
    state: &Inner,
    batch: BatchId,
    ticket: TicketId,
) -> Result<ReviewTicket, UiError> {
    dashboard::review_ticket(&state.db, ticket)
        .await?
        .filter(|t| t.batch_id == batch)
        .ok_or(UiError::NoTicket)
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `retry --force` for one ticket needing review: its create is sent again.
pub async fn resend(
    State(state): State<AppState>,
    Path((batch, ticket)): Path<(BatchId, TicketId)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, UiError> {
    check_csrf(&state, &form.csrf)?;
    let t = review_ticket(&state, batch, ticket).await?;
    let Some(job) = t.job_id else {
        return Err(UiError::NoTicket);
    };
    let jobs = retry_jobs(&state, batch, vec![job], true).await?.jobs;
    tracing::info!(%batch, ticket_ref = %t.reference, jobs, "dashboard: create re-sent on an operator's word");
    let reference: String = url::form_urlencoded::byte_serialize(t.reference.as_bytes()).collect();
    Ok(Redirect::to(&format!("/batches/{batch}?resent={reference}#review")).into_response())
}

pub async fn login_form(State(state): State<AppState>) -> Html<String> {
    login_page(&state, false)
}

fn login_page(state: &Inner, wrong: bool) -> Html<String> {
    let error = if wrong {
        "<p class=error>That is not the token this dashboard was started with.</p>"
    } else {
        ""
    };
    html::layout(
        "sign in",
        false,
        &format!(
            "<h1>Sign in</h1><section>{error}<form method=post action=\"/login\">{}\
             <label>Dashboard token (<code>--ui-token</code>) \
             <input type=password name=token autocomplete=current-password autofocus></label> \
             <button class=primary type=submit>Sign in</button></form></section>",
            csrf_field(&state.csrf)
        ),
        "",
    )
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    csrf: String,
    token: String,
}

/// Sign in; a wrong token counts against the client's address (the guard slows it down).
pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    Form(form): Form<LoginForm>,
) -> Response {
    if check_csrf(&state, &form.csrf).is_err() {
        return UiError::Forbidden.into_response();
    }
    let Some(token) = &state.config.token else {
        return Redirect::to("/").into_response();
    };
    if !equal(form.token.trim(), token.expose()) {
        state.throttle.failed(client, std::time::Instant::now());
        return (StatusCode::UNAUTHORIZED, login_page(&state, true)).into_response();
    }
    state.throttle.succeeded(client);
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{SESSION_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                    state.session
                ),
            ),
        ],
    )
        .into_response()
}
