//! The two job handlers: upload one attachment (hash, presign, PUT) and create one ticket.
//! Each writes its own success in one transaction; failures go back as a [`Failure`].

use super::Shared;
use super::Subject;
use super::decide::{self, Context, Next};
use super::{hash, source};
use crate::domain::{AttachmentState, FileStamp, JobKind, Priority, TicketState};
use crate::store::{StoreError, tickets};
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
}

impl Failure {
    pub fn fail(reason: impl Into<String>) -> Self {
        Self {
            next: Next::Fail,
            reason: reason.into(),
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

fn api_failure(kind: JobKind, error: ApiError, ctx: Context) -> HandlerError {
    HandlerError::Job(Failure {
        next: decide::decide(kind, &error, ctx),
        reason: error.to_string(),
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
    let root = PathBuf::from(&work.files_root);
    let path = PathBuf::from(&work.resolved_path);
    let last = work.last_stamp();
    let mut cached = work.cached_hash();
    let inline = work.inline_content.map(bytes::Bytes::from);
    for round in 1..=UPLOAD_ROUNDS {
        let (body, stamp, md5) = match &inline {
            Some(bytes) => inline_body(bytes.clone()),
            None => {
                let (file, stamp, md5) = open_and_hash(&root, &path, cached.take()).await?;
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
        shared.client.upload_turn().await;
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
        match shared.client.put_file(&upload, body, stamp.size).await {
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
                shared.completer.finish(done).await?;
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
                    }
                    .into());
                }
                next => {
                    return Err(Failure {
                        next,
                        reason: e.to_string(),
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

/// Keep trying (for a few minutes) to record a ticket Visibuild created.
async fn record_created(shared: &Shared, ticket: crate::domain::TicketId, id: Option<&str>) {
    for _ in 0..180 {
        match tickets::record_created(&shared.db, ticket, id).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a created ticket yet; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
    tracing::error!(
        "could not record a ticket Visibuild created; its create job will find it unanswered"
    );
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
            // Out of file handles, a network share hiccup: may pass; uses an attempt.
            source::SourceError::Io { .. } => Failure {
                next: Next::Retry { after: None },
                reason: e.to_string(),
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
        let mut tx = shared.db.begin().await.map_err(StoreError::from)?;
        tickets::finish_create(&mut tx.conn(), job.job_ref(), ticket, None, None).await?;
        tx.commit().await.map_err(StoreError::from)?;
        return Ok(());
    }
    let keys: Vec<String> = work
        .attachments
        .iter()
        .filter_map(|(_, key, state)| (*state == AttachmentState::Uploaded).then(|| key.clone())?)
        .collect();
    if keys.len() != work.attachments.len() {
        return Err(Failure {
            next: Next::Reupload { keys: vec![] },
            reason: "not every attachment is uploaded".into(),
        }
        .into());
    }
    let ctx = Context {
        sent_before: t.create_sent_at.is_some(),
        unanswered: t.create_unanswered,
        has_attachments: !keys.is_empty(),
    };
    if ctx.unanswered && !ctx.has_attachments {
        return Err(Failure {
            next: Next::Review,
            reason: "an earlier create request left without an answer; the ticket may exist \
                     in Visibuild (check, then `retry --force` to send it again)"
                .into(),
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
    // Wait for the rate and a token first: the mark below says "this request may have
    // landed", so nothing that can stall may come between it and the request leaving.
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
                tx.commit().await?;
                Ok::<(), StoreError>(())
            }
            .await;
            if let Err(e) = finished {
                // The ticket exists whatever became of our claim (lease lost, database
                // down): record that, or a later attempt would take it for unknown.
                record_created(shared, ticket, id.as_deref()).await;
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
                tx.commit().await.map_err(StoreError::from)?;
                shared.progress.ticket_done();
                Ok(())
            }
            next => {
                if !matches!(e, ApiError::OutcomeUnknown { .. }) {
                    // A definite "no": nothing landed, so a later attempt may send again.
                    tickets::mark_create_answered(&shared.db, job.job_ref(), ticket).await?;
                }
                Err(Failure {
                    next,
                    reason: e.to_string(),
                }
                .into())
            }
        },
    }
}
