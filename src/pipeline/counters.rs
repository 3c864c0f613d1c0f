//! Flushes the client's request counters (by endpoint and status, with bytes) into the
//! store's per-minute rows every few seconds, so the dashboard sees every process's 429s.

use crate::store::{Store, StoreError, dashboard};
use crate::visibuild::{Answered, Client, Endpoint};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a pool writes its counters, by default.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(5);

/// What was already written: the next flush writes only what came since.
#[derive(Debug, Default)]
pub struct Flushed {
    written: BTreeMap<(Endpoint, u16), Answered>,
}

impl Flushed {
    /// The counts in `now` not yet written, as rows to add.
    pub fn since(&self, now: &BTreeMap<(Endpoint, u16), Answered>) -> Vec<dashboard::RequestCount> {
        now.iter()
            .filter_map(|(&(endpoint, status), total)| {
                let before = self.written.get(&(endpoint, status)).copied();
                let before = before.unwrap_or_default();
                let requests = total.requests.saturating_sub(before.requests);
                let bytes = total.bytes.saturating_sub(before.bytes);
                (requests > 0 || bytes > 0).then(|| dashboard::RequestCount {
                    endpoint: endpoint.as_str(),
                    status: i16::try_from(status).unwrap_or(i16::MAX),
                    requests: i64::try_from(requests).unwrap_or(i64::MAX),
                    bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
                })
            })
            .collect()
    }

    /// Write what came since the last flush, in one transaction; nothing is marked written
    /// unless it was.
    pub async fn flush(&mut self, db: &Store, client: &Client) -> Result<(), StoreError> {
        let now = client.counters.answers();
        let rows = self.since(&now);
        if !rows.is_empty() {
            let mut tx = db.begin().await?;
            dashboard::add_minute_counts(&mut tx.conn(), &rows).await?;
            tx.commit().await?;
        }
        self.written = now;
        Ok(())
    }
}

/// Flush every `every` until `stop`, then once more. A failed flush is tried again at the
/// next tick (the counts wait in memory).
pub fn spawn(
    db: Store,
    client: Arc<Client>,
    every: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut flushed = Flushed::default();
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.tick().await;
        loop {
            let last = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = flushed.flush(&db, &client).await {
                if last {
                    tracing::warn!(error = %e, "could not write the last request counters");
                } else {
                    tracing::debug!(error = %e, "could not write the request counters; trying again");
                }
            }
            if last {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_writes_only_what_came_since_the_last_one() {
        let mut now = BTreeMap::new();
        now.insert(
            (Endpoint::Upload, 200),
            Answered {
                requests: 3,
                bytes: 300,
            },
        );
        now.insert(
            (Endpoint::Create, 429),
            Answered {
                requests: 1,
                bytes: 0,
            },
        );
        let mut flushed = Flushed::default();
        assert_eq!(flushed.since(&now).len(), 2);
        flushed.written = now.clone();
        assert!(flushed.since(&now).is_empty());
        now.insert(
            (Endpoint::Upload, 200),
            Answered {
                requests: 5,
                bytes: 700,
            },
        );
        assert_eq!(
            flushed.since(&now),
            vec![dashboard::RequestCount {
                endpoint: "upload",
                status: 200,
                requests: 2,
                bytes: 400,
            }]
        );
    }
}
