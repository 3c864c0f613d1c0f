//! The two job handlers: upload one attachment (hash, presign, PUT) and create one ticket.
//! Each writes its own success in one transaction; failures go back as a [`Failure`].

use super::Shared;
use super::Subject;
use super::decide::{self, Context, Next};
use super::gate::{self, Admission};
use super::{hash, journal, source};
use crate::domain::{AttachmentState, FileStamp, JobKind, Priority, TicketState};
use crate::outage::{Down, is_out_of_descriptors};
use crate::store::{StoreError, tickets};
use crate::visibuild::error::ServerError;
use crate::visibuild::{ApiError, Body, Contact, NewTicket, PresignRequest};
use std::path::PathBuf;
use visibuild_queue::ClaimedJob;

/// How many presign→PUT rounds one attempt makes when S3 refuses the URL or the bytes.
const UPLOAD_ROUNDS: u32 = 3;

/// A job that did not succeed: what to do next, and the reason an operator will read.
#[derive(Debug)]
pub struct Failure {
    pub next: Next,
    pub reason: String,
    /// The server's own error, when it gave one: kept structured for `--json` outputs.
    pub detail: Option<Box<ServerError>>,
}

impl Failure {
    pub fn fail(reason: impl Into<String>) -> Self {
        Self {
            next: Next::Fail,
            reason: reason.into(),
            detail: None,
        }
    }
}

/// Outcome of a handler: `Ok` means the handler already recorded success.
pub type HandlerResult = Result<(), HandlerError>;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("{}", .0.reason)]
    Job(Failure),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Failure> for HandlerError {
    fn from(f: Failure) -> Self {
        HandlerError::Job(f)
    }
}

/// A create refused for some of our files for a reason the vendor does not document (a
/// quarantined file): the first time, those files are uploaded once more; refused again,
/// the ticket fails naming them — or, with `--skip-quarantined`, is created without them.
async fn refused_files(
    shared: &Shared,
    ticket: crate::domain::TicketId,
    keys: &[String],
    error: &crate::visibuild::error::ServerError,
    next: Next,
) -> Result<(Next, String), HandlerError> {
    let words = error.to_string();
    let files = tickets::note_refused(&shared.db, ticket, keys, &words)
        .await?
        .join(", ");
    Ok(match next {
        Next::Fail if shared.skip_quarantined => {
            tickets::skip_files(&shared.db, ticket, keys, &words).await?;
            tracing::warn!(files = %files, error = %words,
                "refused again after a fresh upload; creating the ticket without it");
            (
                Next::Retry {
                    after: Some(std::time::Duration::ZERO),
                },
                format!("left out {files} ({words}); creating the ticket without it"),
            )
        }
        Next::Fail => (
            Next::Fail,
            format!("attachment {files}: {words} (refused again after a fresh upload)"),
        ),
        next => (
            next,
            format!("attachment {files}: {words}; uploading it once more"),
        ),
    })
}

/// Go on if the project's gate lets this ticket's work through; else wait, or fail.
async fn gated(
    shared: &Shared,
    project: crate::domain::ProjectId,
    ticket: crate::domain::TicketId,
) -> HandlerResult {
    match gate::admit(shared, project, ticket).await? {
        Admission::Go => Ok(()),
        Admission::Wait => Err(Failure {
            next: Next::AwaitProject { ticket },
            reason: gate::WAITING.into(),
            detail: None,
        }
        .into()),
        Admission::Refused(reason) => Err(Failure {
            next: Next::ProjectRefused,
            reason,
            detail: None,
        }
        .into()),
    }
}

fn api_failure(kind: JobKind, error: ApiError, ctx: Context) -> HandlerError {
    HandlerError::Job(Failure {
        next: decide::decide(kind, &error, ctx),
        reason: error.to_string(),
        detail: error.server_error().cloned().map(Box::new),
    })
}

pub async fn upload(shared: &Shared, job: &ClaimedJob) -> HandlerResult {
    let attachment = job
        .attachment()
        .ok_or_else(|| Failure::fail("upload job without an attachment"))?;
    let work = tickets::upload_work(&shared.db, attachment).await?;
    tracing::Span::current().record("ticket_ref", work.ticket_ref.as_str());
    if work.state == AttachmentState::Uploaded {
        let done = tickets::UploadDone {
            job: job.job_ref(),
            attachment,
            ticket: work.ticket_id,
            uploaded: None,
        };
        shared.completer.finish(done).await?;
        return Ok(());
    }
    // A project's first ticket goes first: nothing else of it is presigned meanwhile.
    gated(shared, work.project_id, work.ticket_id).await?;
    let root = PathBuf::from(&work.files_root);
    let path = PathBuf::from(&work.resolved_path);
    let last = work.last_stamp();
    let mut cached = work.cached_hash();
    let inline = work.inline_content.map(bytes::Bytes::from);
    for round in 1..=UPLOAD_ROUNDS {
        let (body, stamp, md5) = match &inline {
            Some(bytes) => inline_body(bytes.clone()),
            None => {
                let (file, stamp, md5) = match open_and_hash(&root, &path, cached.take()).await {
                    Ok(opened) => opened,
                    Err(f) if f.next == Next::Outage => {
                        // Out of file descriptors: the process's trouble, not the file's.
                        shared
                            .client
                            .outages()
                            .begin(Down::Descriptors, f.reason.clone());
                        return Err(f.into());
                    }
                    Err(f) => return Err(f.into()),
                };
                (Body::File(file), stamp, md5)
            }
        };
        let change = last
            .filter(|last| *last != stamp)
            .map(|last| describe_change(last, stamp));
        if let Some(change) = &change {
            tracing::warn!(file = %path.display(), %change,
                "the file changed since it was loaded; uploading it as it is now");
        }
        let request = PresignRequest {
            filename: work.filename.clone(),
            content_type: work.content_type.clone(),
            file_size: stamp.size,
            checksum: md5.clone(),
        };
        let ctx = Context::default();
        let turn = shared.client.upload_turn().await;
        let upload = shared
            .client
            .presign(&request)
            .await
            .map_err(|e| api_failure(JobKind::Upload, e, ctx))?;
        // The file must still be what we hashed; otherwise hash and presign again.
        if let Body::File(file) = &body
            && stamp_of(file, &path)? != stamp
        {
            continue;
        }
        match shared
            .client
            .put_file(&upload, body, stamp.size, turn)
            .await
        {
            Ok(()) => {
                shared.progress.file_done(stamp.size);
                let done = tickets::UploadDone {
                    job: job.job_ref(),
                    attachment,
                    ticket: work.ticket_id,
                    uploaded: Some(tickets::Uploaded {
                        key: upload.key.clone(),
                        resolved_path: work.resolved_path.clone(),
                        size: stamp.size as i64,
                        mtime_ns: stamp.mtime_ns,
                        md5,
                        change,
                    }),
                };
                if let Err(e) = shared.completer.finish(done.clone()).await {
                    if e.is_outage()
                        && let Some(uploaded) = &done.uploaded
                    {
                        // S3 has the file: kept until the store can take it.
                        shared
                            .journal
                            .record(journal::Entry::uploaded(attachment, uploaded));
                    }
                    return Err(e.into());
                }
                return Ok(());
            }
            Err(e) => match decide::decide(JobKind::Upload, &e, ctx) {
                Next::Presign if round < UPLOAD_ROUNDS => {
                    tracing::info!(error = %e, "presigning again");
                    cached = Some((stamp, md5));
                }
                Next::Rehash if round < UPLOAD_ROUNDS => {
                    tracing::info!(error = %e, "hashing and presigning again");
                }
                Next::Presign | Next::Rehash => {
                    return Err(Failure {
                        next: Next::Retry { after: None },
                        reason: e.to_string(),
                        detail: e.server_error().cloned().map(Box::new),
                    }
                    .into());
                }
                next => {
                    return Err(Failure {
                        next,
                        reason: e.to_string(),
                        detail: e.server_error().cloned().map(Box::new),
                    }
                    .into());
                }
            },
        }
    }
    Err(kept_changing(&path).into())
}

/// Bytes stored in the queue (a receipt): their stamp and MD5.
fn inline_body(bytes: bytes::Bytes) -> (Body, FileStamp, String) {
    let md5 = hash::md5_bytes(&bytes);
    let stamp = FileStamp {
        size: bytes.len() as u64,
        mtime_ns: 0,
    };
    (Body::Bytes(bytes), stamp, md5)
}

/// The file kept changing under us, round after round: try again later.
fn kept_changing(path: &std::path::Path) -> Failure {
    Failure {
        next: Next::Retry { after: None },
        reason: format!(
            "{} kept changing while it was being uploaded",
            path.display()
        ),
        detail: None,
    }
}

/// How a file differs from when it was last read, in words for the log and the report.
fn describe_change(before: FileStamp, now: FileStamp) -> String {
    if before.size != now.size {
        format!(
            "changed since it was loaded: {} bytes then, {} bytes when uploaded",
            before.size, now.size
        )
    } else {
        format!(
            "changed since it was loaded: same size ({} bytes), modified since",
            now.size
        )
    }
}

/// The open file's stamp now (`fstat` of the handle).
fn stamp_of(file: &std::fs::File, path: &std::path::Path) -> Result<FileStamp, Failure> {
    file.metadata()
        .map(|meta| FileStamp::of(&meta))
        .map_err(|e| Failure::fail(format!("{}: cannot be read: {e}", path.display())))
}

/// Open the file inside the files root and hash it from that handle (or reuse the known
/// MD5 while its stamp is unchanged): the handle, its stamp and the MD5 of its bytes.
async fn open_and_hash(
    root: &std::path::Path,
    path: &std::path::Path,
    known: Option<(FileStamp, String)>,
) -> Result<(std::fs::File, FileStamp, String), Failure> {
    let (root, path) = (root.to_path_buf(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let mut source = source::open(&root, &path).map_err(|e| match e {
            // Out of file descriptors: an outage of this process; no attempt is used.
            source::SourceError::Io { ref source, .. } if is_out_of_descriptors(source) => {
                Failure {
                    next: Next::Outage,
                    reason: e.to_string(),
                    detail: None,
                }
            }
            // A network share hiccup: may pass; uses an attempt.
            source::SourceError::Io { .. } => Failure {
                next: Next::Retry { after: None },
                reason: e.to_string(),
                detail: None,
            },
            _ => Failure::fail(e.to_string()),
        })?;
        for _ in 0..UPLOAD_ROUNDS {
            let before = source.stamp;
            if before.size == 0 {
                return Err(Failure::fail(format!(
                    "{}: the file is empty (0 bytes)",
                    path.display()
                )));
            }
            if let Some((stamp, md5)) = &known
                && *stamp == before
            {
                return Ok((source.file, before, md5.clone()));
            }
            let (size, md5) = hash::md5_file(&mut source.file)
                .map_err(|e| Failure::fail(format!("{}: cannot be read: {e}", path.display())))?;
            let after = stamp_of(&source.file, &path)?;
            if after == before && after.size == size {
                return Ok((source.file, after, md5));
            }
            // Changed while we read it: read it again.
            source.stamp = after;
        }
        Err(kept_changing(&path))
    })
    .await
    .map_err(|e| Failure::fail(format!("hashing stopped: {e}")))?
}

pub async fn create(shared: &Shared, job: &ClaimedJob) -> HandlerResult {
    let ticket = job
        .ticket()
        .ok_or_else(|| Failure::fail("create job without a ticket"))?;
    let mut conn = shared.db.acquire().await.map_err(StoreError::from)?;
    let work = tickets::create_work(&mut conn.conn(), ticket).await?;
    drop(conn);
    let t = &work.ticket;
    tracing::Span::current().record("ticket_ref", t.reference.as_str());
    if t.state == TicketState::Created {
        // Recorded created without its job (an answer kept in the journal while the store
        // was down): the job completes, and the project's gate opens as for any create.
        let mut tx = shared.db.begin().await.map_err(StoreError::from)?;
        tickets::finish_create(&mut tx.conn(), job.job_ref(), ticket, None, None).await?;
        gate::open(shared, &mut tx.conn(), t.project_id).await?;
        tx.commit().await.map_err(StoreError::from)?;
        gate::opened(shared, t.project_id);
        return Ok(());
    }
    gated(shared, t.project_id, t.id).await?;
    let keys: Vec<String> = work
        .attachments
        .iter()
        .filter_map(|(_, key, state)| (*state == AttachmentState::Uploaded).then(|| key.clone())?)
        .collect();
    if keys.len() != work.attachments.len() {
        return Err(Failure {
            next: Next::Reupload { keys: vec![] },
            reason: "not every attachment is uploaded".into(),
            detail: None,
        }
        .into());
    }
    let ctx = Context {
        sent_before: t.create_sent_at.is_some(),
        unanswered: t.create_unanswered,
        has_attachments: !keys.is_empty(),
        reuploaded_after_refusal: work.refused_before,
    };
    if ctx.unanswered && !ctx.has_attachments {
        return Err(Failure {
            next: Next::Review,
            reason: "an earlier create request left without an answer; the ticket may exist \
                     in Visibuild (check, then `retry --force` to send it again)"
                .into(),
            detail: None,
        }
        .into());
    }
    let request = NewTicket {
        title: t.title.clone(),
        project_id: t.project_id,
        address: t.address.clone(),
        priority: t
            .priority
            .as_deref()
            .and_then(|p| p.parse::<Priority>().ok()),
        attachment_keys: keys,
        contact: (t.contact_name.is_some() || t.contact_email.is_some()).then(|| Contact {
            name: t.contact_name.clone(),
            email: t.contact_email.clone(),
        }),
    };
    // Wait for a token and the rate's turn first: the mark below says "this request may
    // have landed", so it is written only once the request may leave, just before it does.
    let turn = shared
        .client
        .create_turn()
        .await
        .map_err(|e| api_failure(JobKind::CreateTicket, e, ctx))?;
    tickets::mark_create_sent(&shared.db, job.job_ref(), ticket).await?;
    match shared.client.create_ticket_in_turn(&request, turn).await {
        Ok(id) => {
            let finished = async {
                let mut tx = shared.db.begin().await?;
                tickets::finish_create(&mut tx.conn(), job.job_ref(), ticket, id.as_deref(), None)
                    .await?;
                gate::open(shared, &mut tx.conn(), t.project_id).await?;
                tx.commit().await?;
                gate::opened(shared, t.project_id);
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(e) = finished {
                // The ticket exists whatever became of our claim (lease lost, store down):
                // record that, or a later attempt would take it for unknown — now if the
                // store takes it, else through the journal when it is back.
                if let Err(not_now) =
                    tickets::record_created(&shared.db, ticket, id.as_deref()).await
                {
                    tracing::warn!(error = %not_now,
                        "the store cannot record a created ticket now; kept in the journal until it can");
                    shared.journal.record(journal::Entry::Created {
                        ticket,
                        visibuild_id: id.clone(),
                    });
                }
                return Err(e.into());
            }
            shared.progress.ticket_done();
            Ok(())
        }
        Err(e) => match decide::decide(JobKind::CreateTicket, &e, ctx) {
            Next::AlreadyCreated => {
                tracing::info!("keys already linked: an earlier create of this ticket landed");
                let mut tx = shared.db.begin().await.map_err(StoreError::from)?;
                let note =
                    "created by an earlier attempt whose answer was lost; Visibuild id unknown";
                tickets::finish_create(&mut tx.conn(), job.job_ref(), ticket, None, Some(note))
                    .await?;
                gate::open(shared, &mut tx.conn(), t.project_id).await?;
                tx.commit().await.map_err(StoreError::from)?;
                gate::opened(shared, t.project_id);
                shared.progress.ticket_done();
                Ok(())
            }
            next => {
                if !matches!(
                    e,
                    ApiError::OutcomeUnknown { .. } | ApiError::NoAnswer { .. }
                ) {
                    // A definite "no": nothing landed, so a later attempt may send again.
                    tickets::mark_create_answered(&shared.db, job.job_ref(), ticket).await?;
                }
                let (next, reason) = match (&e, next) {
                    (_, Next::ProjectRefused) => (Next::ProjectRefused, gate::refused_reason(&e)),
                    (ApiError::KeyRefused { keys, error }, next) => {
                        refused_files(shared, ticket, keys, error, next).await?
                    }
                    (_, next) => (next, e.to_string()),
                };
                let detail = e.server_error().cloned().map(Box::new);
                Err(Failure {
                    next,
                    reason,
                    detail,
                }
                .into())
            }
        },
    }
}
