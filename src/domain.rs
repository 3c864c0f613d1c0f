//! The vocabulary shared by every module: typed ids, priorities and the states of
//! tickets, attachments and jobs (each mirrored by a Postgres enum of the same name).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(transparent)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7): rows loaded together sit together in the
            /// primary-key index, so a 100,000-ticket load appends instead of scattering.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A loaded manifest.
    BatchId
);
uuid_id!(
    /// Our row for one manifest ticket (not Visibuild's id).
    TicketId
);
uuid_id!(
    /// Our row for one file of a ticket.
    AttachmentId
);
uuid_id!(
    /// A Visibuild project.
    ProjectId
);

pub use visibuild_queue::{JobId, JobState};

/// Visibuild's ticket priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a priority: the text that was not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of low, medium, high")]
pub struct BadPriority(pub String);

impl FromStr for Priority {
    type Err = BadPriority;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "low" => Ok(Priority::Low),
            "medium" => Ok(Priority::Medium),
            "high" => Ok(Priority::High),
            _ => Err(BadPriority(s.to_string())),
        }
    }
}

macro_rules! pg_enum {
    ($(#[$doc:meta])* $name:ident, $pg:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(type_name = $pg, rename_all = "snake_case")]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pg_enum!(
    /// Where a manifest ticket stands.
    TicketState, "ticket_state" {
        Pending => "pending",
        Creating => "creating",
        Created => "created",
        Failed => "failed",
        NeedsReview => "needs_review",
        Cancelled => "cancelled",
    }
);

pg_enum!(
    /// Where one file of a ticket stands.
    AttachmentState, "attachment_state" {
        Pending => "pending",
        Uploaded => "uploaded",
        Failed => "failed",
    }
);

/// What a job does: upload one attachment (hash, presign, PUT) or create one ticket. The
/// queue keeps it as text; its target is the attachment, or the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Upload,
    CreateTicket,
}

impl JobKind {
    pub const ALL: &'static [JobKind] = &[JobKind::Upload, JobKind::CreateTicket];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Upload => "upload",
            JobKind::CreateTicket => "create_ticket",
        }
    }

    /// The kind a job of the queue has, if it is one of ours.
    pub fn parse(kind: &str) -> Option<JobKind> {
        JobKind::ALL.iter().copied().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_parses_case_insensitively_and_names_the_bad_value() {
        assert_eq!("High".parse::<Priority>(), Ok(Priority::High));
        let err = "urgent".parse::<Priority>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""urgent" is not one of low, medium, high"#
        );
    }
}

/// What a file looked like when it was read: its size and modification time. A file whose
/// stamp differs was changed in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self {
            size: meta.len(),
            mtime_ns,
        }
    }
}

/// A job holder's name (`host:boot:pidns:pid:start`, see `pipeline::identity`) for people:
/// `host pid N` (the boot and namespace ids say nothing to a reader); an old-style `host:pid`
/// the same way; anything else as it is.
pub fn short_holder(holder: &str) -> String {
    let mut parts = holder.rsplitn(5, ':');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(_start), Some(pid), Some(_pidns), Some(_boot), Some(host)) => {
            format!("{host} pid {pid}")
        }
        _ => match holder.rsplit_once(':') {
            Some((host, pid)) if pid.parse::<u32>().is_ok() => format!("{host} pid {pid}"),
            _ => holder.to_string(),
        },
    }
}
