//! The one table "this failure → that next step", for both kinds of job. Pure: it is
//! unit-tested without a database or a network.

use crate::domain::{JobKind, TicketId};
use crate::visibuild::ApiError;
use std::time::Duration;

/// What the worker does after a failed call.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Try again later, using up an attempt (backoff, or the server's delay if it gave one).
    Retry { after: Option<Duration> },
    /// Wait and try again without using up an attempt (a 429's `Retry-After`).
    Wait { after: Duration },
    /// No connection to Visibuild or S3: put the job back without using an attempt; the pool
    /// pauses until the service answers again (or gives up after the outage limit).
    Outage,
    /// Give up now: the reason is for the operator.
    Fail,
    /// Upload: the URL expired or its signature is refused — presign again.
    Presign,
    /// Upload: the bytes do not match what was presigned — hash again, presign again.
    Rehash,
    /// Create: Visibuild lacks these keys (all of ours when empty) — upload them again.
    Reupload { keys: Vec<String> },
    /// Create: an earlier attempt of ours landed (our keys are already linked).
    AlreadyCreated,
    /// Create, no attachments, outcome unknown: an operator must decide (`retry --force`).
    Review,
    /// Create: the server refused the ticket's project (`422` on `projectId`, `403`, `404`):
    /// this ticket fails, and so does every other ticket of the project, at once.
    ProjectRefused,
    /// The project's first ticket has not been answered yet: wait (blocked, no attempt
    /// used) until the project's gate opens or is refused. Not an answer of the server's:
    /// the project gate decides it ([`crate::pipeline::gate`]).
    AwaitProject { ticket: TicketId },
    /// The credentials are refused: no job can succeed. Put this one back untouched and stop
    /// the run, so nothing is marked failed for what is an operator's fix.
    Halt,
}

/// What the decision may depend on besides the error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// A create request for this ticket left earlier (before this attempt).
    pub sent_before: bool,
    /// The last create request that left got no definite answer: it may have landed.
    pub unanswered: bool,
    /// The ticket has attachments (so a repeat create is safe: Visibuild links a key once).
    pub has_attachments: bool,
    /// The refused keys' files were already uploaded again after the same kind of refusal:
    /// uploading once more will not help.
    pub reuploaded_after_refusal: bool,
}

pub fn decide(kind: JobKind, error: &ApiError, ctx: Context) -> Next {
    use ApiError::*;
    match (kind, error) {
        (_, Transient { retry_after, .. }) => Next::Retry {
            after: *retry_after,
        },
        (_, RateLimited { retry_after }) => Next::Wait {
            after: retry_after.unwrap_or(Duration::from_secs(1)),
        },
        // No connection, or no answer: the service is down, not this job. No attempt is used;
        // a create keeps its "may have landed" mark for the next attempt to weigh.
        (_, Unreachable { .. } | NoAnswer { .. }) => Next::Outage,
        (_, Unauthorized { .. }) => Next::Halt,
        (_, Permanent { .. } | OtherCompany { .. }) => Next::Fail,
        (JobKind::CreateTicket, Refused { status, error }) if refuses_project(*status, error) => {
            Next::ProjectRefused
        }
        (_, Refused { .. }) => Next::Fail,
        // One fresh upload of the refused files; the same answer after it is final.
        (JobKind::CreateTicket, KeyRefused { .. }) if ctx.reuploaded_after_refusal => Next::Fail,
        (JobKind::CreateTicket, KeyRefused { keys, .. }) => Next::Reupload { keys: keys.clone() },
        (JobKind::Upload, KeyRefused { .. }) => Next::Fail,
        (JobKind::Upload, UploadUrlRejected { .. }) => Next::Presign,
        (JobKind::Upload, UploadContentMismatch { .. }) => Next::Rehash,
        (JobKind::Upload, OutcomeUnknown { .. }) => Next::Retry { after: None },
        (JobKind::CreateTicket, OutcomeUnknown { .. }) if ctx.has_attachments => {
            Next::Retry { after: None }
        }
        (JobKind::CreateTicket, OutcomeUnknown { .. }) => Next::Review,
        // Every key would be replaced while an earlier create may have landed with them:
        // new keys would lose the only proof (`already associated`) of that create.
        (JobKind::CreateTicket, KeyNotFound { keys }) if keys.is_empty() && ctx.unanswered => {
            Next::Review
        }
        (JobKind::CreateTicket, KeyNotFound { keys }) => Next::Reupload { keys: keys.clone() },
        (JobKind::CreateTicket, AlreadyAssociated { .. }) if ctx.sent_before => {
            Next::AlreadyCreated
        }
        (JobKind::CreateTicket, AlreadyAssociated { .. }) => Next::Fail,
        // A kind of error the other kind of call cannot produce: not ours to guess at.
        (JobKind::Upload, KeyNotFound { .. } | AlreadyAssociated { .. }) => Next::Fail,
        (JobKind::CreateTicket, UploadUrlRejected { .. } | UploadContentMismatch { .. }) => {
            Next::Fail
        }
    }
}

/// A create refused for its project, not for the ticket: a `422` on the `projectId` field,
/// or a `403`/`404` the server explained (a bare 404 is an origin that is not the API).
fn refuses_project(status: u16, error: &crate::visibuild::error::ServerError) -> bool {
    match status {
        403 | 404 => true,
        422 => error
            .field
            .as_deref()
            .is_some_and(|f| f.eq_ignore_ascii_case("projectId")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobKind::{CreateTicket, Upload};

    fn transient() -> ApiError {
        ApiError::Transient {
            reason: "503".into(),
            retry_after: None,
        }
    }

    const WITH_FILES: Context = Context {
        sent_before: false,
        unanswered: false,
        has_attachments: true,
        reuploaded_after_refusal: false,
    };
    const RESENT_WITH_FILES: Context = Context {
        sent_before: true,
        unanswered: true,
        has_attachments: true,
        reuploaded_after_refusal: false,
    };
    const RESENT_NO_FILES: Context = Context {
        sent_before: true,
        unanswered: true,
        has_attachments: false,
        reuploaded_after_refusal: false,
    };

    fn server_error(field: Option<&str>) -> crate::visibuild::error::ServerError {
        crate::visibuild::error::ServerError {
            code: Some("invalid_field".into()),
            message: "projectId is not a project of this company".into(),
            field: field.map(str::to_string),
            key: None,
        }
    }

    #[test]
    fn a_refused_project_fails_the_whole_project_other_refusals_only_the_ticket() {
        for status in [403, 404] {
            let e = ApiError::Refused {
                status,
                error: server_error(None),
            };
            assert_eq!(decide(CreateTicket, &e, WITH_FILES), Next::ProjectRefused);
        }
        let on_project = ApiError::Refused {
            status: 422,
            error: server_error(Some("projectId")),
        };
        assert_eq!(
            decide(CreateTicket, &on_project, WITH_FILES),
            Next::ProjectRefused
        );
        assert_eq!(decide(Upload, &on_project, WITH_FILES), Next::Fail);
        let on_title = ApiError::Refused {
            status: 422,
            error: server_error(Some("title")),
        };
        assert_eq!(decide(CreateTicket, &on_title, WITH_FILES), Next::Fail);
    }

    #[test]
    fn a_key_refused_for_an_undocumented_reason_is_uploaded_again_once_then_fails() {
        let e = ApiError::KeyRefused {
            keys: vec!["k1".into()],
            error: server_error(None),
        };
        assert_eq!(
            decide(CreateTicket, &e, WITH_FILES),
            Next::Reupload {
                keys: vec!["k1".into()]
            }
        );
        let again = Context {
            reuploaded_after_refusal: true,
            ..WITH_FILES
        };
        assert_eq!(decide(CreateTicket, &e, again), Next::Fail);
    }

    #[test]
    fn transient_failures_retry_with_backoff_or_the_servers_delay() {
        assert_eq!(
            decide(Upload, &transient(), WITH_FILES),
            Next::Retry { after: None }
        );
        let slow = ApiError::Transient {
            reason: "SlowDown".into(),
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            decide(CreateTicket, &slow, WITH_FILES),
            Next::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
    }

    #[test]
    fn a_429_waits_without_using_an_attempt() {
        let e = ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            decide(Upload, &e, WITH_FILES),
            Next::Wait {
                after: Duration::from_secs(7)
            }
        );
        let e = ApiError::RateLimited { retry_after: None };
        assert_eq!(
            decide(CreateTicket, &e, WITH_FILES),
            Next::Wait {
                after: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn refusals_fail_at_once() {
        for e in [
            ApiError::Permanent {
                status: 400,
                reason: "x".into(),
            },
            ApiError::OtherCompany { keys: vec![] },
        ] {
            assert_eq!(decide(CreateTicket, &e, WITH_FILES), Next::Fail, "{e}");
            assert_eq!(decide(Upload, &e, WITH_FILES), Next::Fail, "{e}");
        }
    }

    #[test]
    fn refused_credentials_halt_the_run_instead_of_failing_tickets() {
        let e = ApiError::Unauthorized { reason: "x".into() };
        assert_eq!(decide(Upload, &e, WITH_FILES), Next::Halt);
        assert_eq!(decide(CreateTicket, &e, RESENT_NO_FILES), Next::Halt);
    }

    #[test]
    fn s3_403_presigns_again_and_bad_digest_hashes_again() {
        let expired = ApiError::UploadUrlRejected {
            status: 403,
            code: "AccessDenied".into(),
            reason: "Request has expired".into(),
        };
        assert_eq!(decide(Upload, &expired, WITH_FILES), Next::Presign);
        let digest = ApiError::UploadContentMismatch {
            status: 400,
            code: "BadDigest".into(),
            reason: "x".into(),
        };
        assert_eq!(decide(Upload, &digest, WITH_FILES), Next::Rehash);
    }

    #[test]
    fn key_not_found_uploads_those_keys_again() {
        let e = ApiError::KeyNotFound {
            keys: vec!["k1".into()],
        };
        assert_eq!(
            decide(CreateTicket, &e, WITH_FILES),
            Next::Reupload {
                keys: vec!["k1".into()]
            }
        );
    }

    #[test]
    fn an_unknown_create_outcome_is_retried_only_when_keys_make_it_safe() {
        let e = ApiError::OutcomeUnknown {
            reason: "reset".into(),
        };
        assert_eq!(
            decide(CreateTicket, &e, RESENT_WITH_FILES),
            Next::Retry { after: None }
        );
        assert_eq!(decide(CreateTicket, &e, RESENT_NO_FILES), Next::Review);
    }

    #[test]
    fn already_associated_after_an_earlier_send_means_that_send_landed() {
        let e = ApiError::AlreadyAssociated { keys: vec![] };
        assert_eq!(
            decide(CreateTicket, &e, RESENT_WITH_FILES),
            Next::AlreadyCreated
        );
        assert_eq!(decide(CreateTicket, &e, WITH_FILES), Next::Fail);
    }

    #[test]
    fn no_connection_is_an_outage_for_either_kind_never_an_unknown_outcome() {
        let e = ApiError::Unreachable {
            reason: "connection refused".into(),
        };
        let sent = Context {
            sent_before: true,
            unanswered: true,
            has_attachments: false,
            reuploaded_after_refusal: false,
        };
        assert_eq!(decide(Upload, &e, Context::default()), Next::Outage);
        assert_eq!(decide(CreateTicket, &e, sent), Next::Outage);
    }

    #[test]
    fn an_unnamed_key_not_found_after_an_unanswered_create_goes_to_review_not_new_keys() {
        let e = ApiError::KeyNotFound { keys: vec![] };
        let unanswered = Context {
            sent_before: true,
            unanswered: true,
            has_attachments: true,
            reuploaded_after_refusal: false,
        };
        assert_eq!(decide(CreateTicket, &e, unanswered), Next::Review);
        let answered = Context {
            unanswered: false,
            ..unanswered
        };
        assert_eq!(
            decide(CreateTicket, &e, answered),
            Next::Reupload { keys: vec![] }
        );
        let named = ApiError::KeyNotFound {
            keys: vec!["k1".into()],
        };
        assert_eq!(
            decide(CreateTicket, &named, unanswered),
            Next::Reupload {
                keys: vec!["k1".into()]
            }
        );
    }
}
