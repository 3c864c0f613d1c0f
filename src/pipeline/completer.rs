//! Settles finished uploads in batches, as River's completer does: whatever finished while the
//! last batch was being written goes into the next single transaction, so a busy pool commits
//! once per batch instead of once per upload, and an idle one adds no delay.

use tokio::sync::{mpsc, oneshot};

use crate::store::tickets::{self, UploadDone};
use crate::store::{Store, StoreError};

/// Most uploads settled in one transaction.
const MAX_BATCH: usize = 128;

/// A handle to the completer task; the task ends when every handle is dropped.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Item>,
}

struct Item {
    done: UploadDone,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

impl Completer {
    pub fn spawn(db: Store) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(db, rx));
        Self { tx }
    }

    /// Settles one finished upload with whatever others are waiting; `Err(Fenced)` when its
    /// claim no longer held.
    pub async fn finish(&self, done: UploadDone) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Item { done, reply }).await.is_err() {
            return Err(StoreError::Batch("the completer has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Batch("the completer has stopped".into())))
    }
}

async fn run(db: Store, mut rx: mpsc::Receiver<Item>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (done, replies): (Vec<UploadDone>, Vec<_>) =
            batch.drain(..).map(|i| (i.done, i.reply)).unzip();
        match settle(&db, &done).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let why = crate::outage::describe(&e);
                let outage = e.is_outage();
                for reply in replies {
                    let e = if outage {
                        StoreError::Unavailable(why.clone())
                    } else {
                        StoreError::Batch(why.clone())
                    };
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
}

async fn settle(
    db: &Store,
    done: &[UploadDone],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = db.begin().await?;
    let results = tickets::finish_uploads(&mut tx.conn(), done).await?;
    tx.commit().await?;
    Ok(results)
}
