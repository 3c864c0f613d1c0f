//! One notion of outage for a run: what is down — Visibuild's API, S3, the queue's store, the
//! process's file descriptors —, since when and why. Fed by every call that meets one; read by
//! the pool, which pauses, probes, and past the outage limit exits 3 naming the oldest.

use std::sync::Mutex;
use std::time::Instant;

/// What can be down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// Visibuild's API: no connection, or no answer within the answer timeout.
    Api = 0,
    /// S3 (the presigned URLs' host): no connection, or an upload that stopped progressing.
    Uploads = 1,
    /// The queue's store: unreachable, refusing connections, or its disk full.
    Store = 2,
    /// This process: out of file descriptors (EMFILE/ENFILE).
    Descriptors = 3,
}

impl Down {
    const ALL: [Down; 4] = [Down::Api, Down::Uploads, Down::Store, Down::Descriptors];

    /// What is down, in words for the operator's last line.
    pub fn describe(self) -> &'static str {
        match self {
            Down::Api => "the Visibuild API",
            Down::Uploads => "S3 (uploads)",
            Down::Store => "the queue's store",
            Down::Descriptors => "this process's file descriptors",
        }
    }

    /// A short name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Down::Api => "api",
            Down::Uploads => "uploads",
            Down::Store => "store",
            Down::Descriptors => "file_descriptors",
        }
    }
}

/// One outage: what, since when (monotonic and wall clock), and the last reason seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub what: Down,
    pub since: Instant,
    pub since_wall: time::OffsetDateTime,
    pub reason: String,
}

/// The outages of a run. Each kind begins at its first failure and ends at the first success
/// of that same kind.
#[derive(Debug, Default)]
pub struct Outages {
    state: Mutex<[Option<Outage>; 4]>,
}

impl Outages {
    /// `what` failed: its outage begins (or goes on, keeping its start).
    pub fn begin(&self, what: Down, reason: impl Into<String>) {
        let mut state = self.lock();
        let slot = &mut state[what as usize];
        let reason = reason.into();
        match slot {
            Some(outage) => outage.reason = reason,
            None => {
                *slot = Some(Outage {
                    what,
                    since: Instant::now(),
                    since_wall: time::OffsetDateTime::now_utc(),
                    reason,
                })
            }
        }
    }

    /// `what` answered: its outage, if any, is over. True when one was.
    pub fn end(&self, what: Down) -> bool {
        self.lock()[what as usize].take().is_some()
    }

    /// Whether `what` is down now.
    pub fn is_down(&self, what: Down) -> bool {
        self.lock()[what as usize].is_some()
    }

    /// The oldest outage going on, if any.
    pub fn oldest(&self) -> Option<Outage> {
        let state = self.lock();
        Down::ALL
            .iter()
            .filter_map(|d| state[*d as usize].clone())
            .min_by_key(|o| o.since)
    }

    /// Forget every outage of the remote services: nothing is left to try, so nothing can
    /// show they ended. The store's and the process's own are kept (the pool's next call
    /// tells).
    pub fn forget_remote(&self) {
        let mut state = self.lock();
        state[Down::Api as usize] = None;
        state[Down::Uploads as usize] = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Option<Outage>; 4]> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether an I/O error says the process (EMFILE) or the system (ENFILE) is out of file
/// descriptors: not the file's fault, nor the service's.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::EMFILE || code == libc::ENFILE)
}

/// Whether any error in `e`'s cause chain is [`is_out_of_descriptors`].
pub fn chain_is_out_of_descriptors(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if is_out_of_descriptors(io) {
                return true;
            }
            // A wrapped I/O error answers `source()` with its inner error's source.
            if let Some(inner) = io.get_ref() {
                cause = Some(inner);
                continue;
            }
        }
        cause = c.source();
    }
    false
}

/// An error and its causes on one line, each said once (a cause whose text the one before
/// already contains is skipped: sqlx repeats its source's message in its own).
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut said: Vec<String> = Vec::new();
    let mut cause = Some(error);
    while let Some(c) = cause {
        let text = c.to_string();
        if !said.last().is_some_and(|last| last.contains(&text)) {
            said.push(text);
        }
        cause = c.source();
    }
    said.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_keeps_its_start_until_the_same_kind_answers() {
        let outages = Outages::default();
        assert!(outages.oldest().is_none());
        outages.begin(Down::Store, "disk full");
        let first = outages.oldest().unwrap();
        outages.begin(Down::Store, "still full");
        outages.begin(Down::Api, "no answer");
        let oldest = outages.oldest().unwrap();
        assert_eq!(oldest.what, Down::Store);
        assert_eq!(oldest.since, first.since);
        assert_eq!(oldest.reason, "still full");
        assert!(!outages.end(Down::Uploads));
        assert!(outages.end(Down::Store));
        assert_eq!(outages.oldest().unwrap().what, Down::Api);
        outages.forget_remote();
        assert!(outages.oldest().is_none());
    }

    #[test]
    fn out_of_descriptors_is_found_in_a_cause_chain() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_out_of_descriptors(&emfile));
        let wrapped = std::io::Error::other(emfile);
        assert!(chain_is_out_of_descriptors(&wrapped));
        let other = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert!(!chain_is_out_of_descriptors(&other));
    }
}
