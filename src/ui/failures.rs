//! Failed jobs grouped by reason: the same error on different files is one group (the
//! file's path and any URL are taken out of the reason), so one button retries them all.

use crate::domain::{JobId, TicketId};
use crate::store::dashboard::FailedJob;
use std::collections::BTreeMap;

/// One reason and the failed jobs that gave it.
#[derive(Debug, Clone)]
pub struct FailureGroup {
    /// The reason with the file and URLs taken out; names the group in a retry form.
    pub key: String,
    /// One full reason, as recorded.
    pub example: String,
    pub jobs: Vec<JobId>,
    /// The tickets, in manifest order, with this group's reasons for each.
    pub tickets: Vec<FailedTicket>,
}

#[derive(Debug, Clone)]
pub struct FailedTicket {
    pub ticket_id: TicketId,
    pub reference: String,
    pub title: String,
    pub reasons: Vec<String>,
}

/// What is placed where a group's reason named the job's own file, or a URL.
pub const FILE: &str = "‹file›";
pub const URL: &str = "‹url›";

/// What a job failed on, as recorded: the job's own error, else its ticket's.
pub fn reason(job: &FailedJob) -> &str {
    job.job_error
        .as_deref()
        .or(job.ticket_error.as_deref())
        .unwrap_or("(no reason recorded)")
}

/// The reason with the job's own file (as loaded, or as written in the manifest) and any
/// URL replaced by placeholders, so that one error on many files is one group.
pub fn reason_key(job: &FailedJob) -> String {
    let mut text = reason(job).to_string();
    for path in [job.resolved_path.as_deref(), job.path.as_deref()]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
    {
        text = text.replace(path, FILE);
    }
    text.split(' ')
        .map(|word| {
            if word.starts_with("http://") || word.starts_with("https://") {
                URL
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Groups of failed jobs, the largest first (then by reason).
pub fn group(jobs: &[FailedJob]) -> Vec<FailureGroup> {
    let mut groups: BTreeMap<String, FailureGroup> = BTreeMap::new();
    for job in jobs {
        let key = reason_key(job);
        let group = groups.entry(key.clone()).or_insert_with(|| FailureGroup {
            key,
            example: reason(job).to_string(),
            jobs: Vec::new(),
            tickets: Vec::new(),
        });
        group.jobs.push(job.job_id);
        match group.tickets.last_mut() {
            Some(t) if t.ticket_id == job.ticket_id => t.reasons.push(reason(job).to_string()),
            _ => group.tickets.push(FailedTicket {
                ticket_id: job.ticket_id,
                reference: job.reference.clone(),
                title: job.title.clone(),
                reasons: vec![reason(job).to_string()],
            }),
        }
    }
    let mut groups: Vec<FailureGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| b.jobs.len().cmp(&a.jobs.len()).then(a.key.cmp(&b.key)));
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobKind, TicketState};

    fn job(id: i64, ticket: u128, error: &str, path: Option<(&str, &str)>) -> FailedJob {
        FailedJob {
            job_id: JobId(id),
            kind: JobKind::Upload,
            attempt: 1,
            job_error: Some(error.to_string()),
            ticket_id: TicketId(uuid::Uuid::from_u128(ticket)),
            reference: format!("DEF-{ticket}"),
            title: format!("Defect {ticket}"),
            ticket_state: TicketState::Failed,
            ticket_error: None,
            path: path.map(|p| p.0.to_string()),
            resolved_path: path.map(|p| p.1.to_string()),
        }
    }

    #[test]
    fn one_error_on_many_files_is_one_group_and_other_errors_are_their_own() {
        let jobs = [
            job(
                1,
                1,
                "/data/m/files/a.jpg: no longer exists",
                Some(("files/a.jpg", "/data/m/files/a.jpg")),
            ),
            job(
                2,
                1,
                "/data/m/files/b.jpg: no longer exists",
                Some(("files/b.jpg", "/data/m/files/b.jpg")),
            ),
            job(
                3,
                2,
                "/data/m/files/c.jpg: no longer exists",
                Some(("files/c.jpg", "/data/m/files/c.jpg")),
            ),
            job(
                4,
                3,
                "S3 answered 400 Bad Request X: http://s3.local/bucket/key1?*** nope",
                Some(("files/d.jpg", "/data/m/files/d.jpg")),
            ),
            job(
                5,
                4,
                "S3 answered 400 Bad Request X: http://s3.local/bucket/key2?*** nope",
                Some(("files/e.jpg", "/data/m/files/e.jpg")),
            ),
            job(6, 5, "422: project not found", None),
        ];
        let groups = group(&jobs);
        let summary: Vec<(&str, Vec<i64>, usize)> = groups
            .iter()
            .map(|g| {
                (
                    g.key.as_str(),
                    g.jobs.iter().map(|j| j.0).collect(),
                    g.tickets.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("‹file›: no longer exists", vec![1, 2, 3], 2),
                ("S3 answered 400 Bad Request X: ‹url› nope", vec![4, 5], 2),
                ("422: project not found", vec![6], 1),
            ]
        );
        assert_eq!(groups[0].tickets[0].reasons.len(), 2);
        assert_eq!(groups[0].example, "/data/m/files/a.jpg: no longer exists");
    }
}
