//! The worker pool: claims jobs under a lease, runs them within the configured concurrency,
//! keeps their leases alive, settles every outcome, and stops cleanly when asked.

pub mod completer;
pub mod counters;
pub mod decide;
pub mod gate;
pub mod hash;
pub mod identity;
pub mod jobs;
pub mod journal;
pub mod progress;
pub mod source;

use crate::domain::{
    AttachmentId, AttachmentState, BatchId, JobId, JobKind, TicketId, TicketState,
};
use crate::outage::{Down, Outage, Outages};
use crate::store::attempts::{self, AttemptOutcome};
use crate::store::{Store, StoreError, control, tickets};
use crate::visibuild::Client;
use decide::Next;
use jobs::{Failure, HandlerError};
pub use progress::Progress;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use visibuild_queue::{self as queue, Backoff, ClaimedJob, JobRef, Outcome, Transition};

/// How long the pool rides out a database or a Visibuild it cannot reach (a restart, a
/// failover, a network cut) before it gives up, by default. Leases keep what was in flight
/// safe meanwhile; no attempt is used up.
pub const DEFAULT_OUTAGE_LIMIT: Duration = Duration::from_secs(300);

/// While Visibuild cannot be reached: one line in the log this often, and one job tried
/// this often to see whether it is back.
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);
const OUTAGE_PROBE_EVERY: Duration = Duration::from_secs(2);

/// How long in-flight jobs may finish when the run ends for an outage.
const OUTAGE_GRACE: Duration = Duration::from_secs(5);

/// How often the pool looks for leases held by dead processes of this host.
const DEAD_HOLDERS_EVERY: Duration = Duration::from_secs(5);

/// How often a process with nothing to claim looks whether the jobs others run are done.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Evaluate a store call inside the claim loop: its failure begins (or continues) a store
/// outage, and the loop waits a second and goes round again (the loop's head gives up once
/// the outage has lasted the outage limit). A write's success ends the outage; a read's
/// (`@read`) does not, as a full disk still serves reads.
macro_rules! or_retry {
    (@read $call:expr, $outages:expr, $stop:ident) => {
        or_retry!(@inner $call, $outages, $stop, false)
    };
    ($call:expr, $outages:expr, $stop:ident) => {
        or_retry!(@inner $call, $outages, $stop, true)
    };
    (@inner $call:expr, $outages:expr, $stop:ident, $wrote:expr) => {
        match $call {
            Ok(value) => {
                if $wrote && $outages.end(Down::Store) {
                    tracing::info!("the queue's store answers again; resuming");
                }
                value
            }
            Err(e) => {
                store_down(&$outages, &e);
                tokio::select! {
                    _ = $stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        }
    };
}

/// Note the store down, with the error's whole cause chain as the reason.
fn store_down(outages: &Outages, e: &StoreError) {
    let reason = crate::outage::describe(e);
    if !outages.is_down(Down::Store) {
        tracing::warn!(error = %reason, "the queue's store is unavailable; paused (no attempts are used)");
    }
    outages.begin(Down::Store, reason);
}

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Jobs in flight at once (uploads and creates together).
    pub workers: usize,
    /// Uploads in flight at once; presigning happens inside an upload slot, just in time.
    pub upload_concurrency: usize,
    /// How long a claim holds a job before another worker may take it over.
    pub lease: Duration,
    pub backoff: Backoff,
    /// Our name in `jobs.locked_by`.
    pub worker_name: String,
    /// Work only on this batch (`import`); `None` = everything queued (`run`).
    pub batch: Option<BatchId>,
    /// Keep serving when the queue is empty (`run --watch`).
    pub watch: bool,
    /// Longest sleep between polls when idle (NOTIFY usually wakes us sooner).
    pub idle_poll: Duration,
    /// How long in-flight jobs may finish after a stop is asked for.
    pub shutdown_grace: Duration,
    /// How long the database or Visibuild may stay unreachable before the run gives up.
    pub outage_limit: Duration,
    /// How often the request counters are written to the store (for the dashboard).
    pub counters_every: Duration,
    /// Where answers the store cannot take yet are kept (see [`journal`]); `None`: in
    /// memory only.
    pub journal: Option<std::path::PathBuf>,
    /// A file refused again after one fresh upload (quarantined) is left out of its
    /// ticket's create instead of failing the ticket.
    pub skip_quarantined: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: 16,
            upload_concurrency: 8,
            lease: Duration::from_secs(120),
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
            },
            worker_name: identity::worker_name(),
            batch: None,
            watch: false,
            idle_poll: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(20),
            outage_limit: DEFAULT_OUTAGE_LIMIT,
            counters_every: counters::DEFAULT_FLUSH_EVERY,
            journal: None,
            skip_quarantined: false,
        }
    }
}

impl PoolConfig {
    /// The queue group claims are limited to: the batch's id, when one is set.
    fn group(&self) -> Option<uuid::Uuid> {
        self.batch.map(|b| b.0)
    }
}

/// What the handlers share.
pub struct Shared {
    pub db: Store,
    /// Settles finished uploads, many per transaction.
    pub completer: completer::Completer,
    /// Set when the credentials are refused: the pool stops claiming and ends the run.
    pub halted: Mutex<Option<String>>,
    /// Jobs whose outcome could not be written (the store was down): released as soon as
    /// the store answers again, or left to the dead-holder take-back of the next run.
    pub unsettled: Mutex<Vec<JobRef>>,
    /// Answers received that the store could not take yet.
    pub journal: Arc<journal::Journal>,
    pub client: Arc<Client>,
    pub progress: Arc<Progress>,
    pub backoff: Backoff,
    /// Projects whose gate this process saw open (open is for good).
    pub open_projects: gate::OpenProjects,
    /// See [`PoolConfig::skip_quarantined`].
    pub skip_quarantined: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// No runnable work left.
    Drained,
    /// Stopped by a signal; unfinished jobs were released.
    Interrupted,
    /// Visibuild refused the credentials (401 after a refresh); unfinished jobs were
    /// released, nothing was failed for it.
    CredentialsRefused { reason: String },
    /// Something the run needs (Visibuild, S3, the store, file descriptors) was down for
    /// longer than the outage limit; nothing was failed for it.
    Outage(Outage),
}

/// Run the pool until no runnable work is left (or forever with `watch`), or until `stop`.
pub async fn run(
    db: Store,
    client: Arc<Client>,
    progress: Arc<Progress>,
    config: PoolConfig,
    stop: CancellationToken,
) -> Result<RunEnd, StoreError> {
    let outages = client.outages().clone();
    let journal = Arc::new(match &config.journal {
        Some(base) => journal::Journal::open(base),
        None => journal::Journal::in_memory(),
    });
    let shared = Arc::new(Shared {
        halted: Mutex::new(None),
        unsettled: Mutex::default(),
        journal,
        db: db.clone(),
        completer: completer::Completer::spawn(db.clone()),
        client,
        progress,
        backoff: config.backoff,
        open_projects: gate::OpenProjects::default(),
        skip_quarantined: config.skip_quarantined,
    });
    let in_flight: InFlight = Arc::default();
    let workers = Arc::new(Semaphore::new(config.workers.max(1)));
    let uploads = Arc::new(Semaphore::new(config.upload_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let heartbeat = tokio::spawn(heartbeat(db.clone(), in_flight.clone(), config.lease));
    let flusher_stop = CancellationToken::new();
    let flusher = counters::spawn(
        db.clone(),
        shared.client.clone(),
        config.counters_every,
        flusher_stop.clone(),
    );
    let mut listener = queue::listen(&db).await.ok();

    let limit = config.outage_limit;
    let me = identity::Me::read();
    let mut dead_checked: Option<std::time::Instant> = None;
    let mut outage_logged: Option<std::time::Instant> = None;
    let mut probed: Option<std::time::Instant> = None;
    let end: Result<RunEnd, StoreError> = loop {
        if let Some(reason) = lock(&shared.halted).clone() {
            break Ok(RunEnd::CredentialsRefused { reason });
        }
        if stop.is_cancelled() {
            break Ok(RunEnd::Interrupted);
        }
        while let Some(done) = tasks.try_join_next() {
            log_panic(done);
        }
        // Past the outage limit, stop; meanwhile one line every half minute.
        let down = outages.oldest();
        if let Some(outage) = &down {
            if outage.since.elapsed() > limit {
                break Ok(RunEnd::Outage(outage.clone()));
            }
            if outage_logged.is_none_or(|at| at.elapsed() >= OUTAGE_LOG_EVERY) {
                outage_logged = Some(std::time::Instant::now());
                tracing::warn!(
                    down = outage.what.as_str(),
                    down_for_secs = outage.since.elapsed().as_secs(),
                    gives_up_after_secs = limit.as_secs(),
                    error = %outage.reason,
                    "{} is down; paused (no attempts are used), probing every {}s",
                    outage.what.describe(),
                    OUTAGE_PROBE_EVERY.as_secs()
                );
            }
        } else if outage_logged.take().is_some() {
            tracing::info!("everything answers again; resuming");
        }
        // Answers kept while the store was down go in first, then the jobs they belong to
        // go back to the queue: a released create finds its ticket created.
        if shared.journal.has_entries() {
            or_retry!(shared.journal.replay(&db).await, outages, stop);
        }
        let unsettled = std::mem::take(&mut *lock(&shared.unsettled));
        if !unsettled.is_empty() {
            let release: Vec<_> = unsettled.iter().copied().map(Transition::release).collect();
            match queue::apply(&db, &release).await {
                Ok(_) => {
                    outages.end(Down::Store);
                }
                Err(e) => {
                    lock(&shared.unsettled).extend(unsettled);
                    let e = StoreError::from(e);
                    or_retry!(Err::<(), _>(e), outages, stop);
                }
            }
        }
        if dead_checked.is_none_or(|at| at.elapsed() >= DEAD_HOLDERS_EVERY) {
            dead_checked = Some(std::time::Instant::now());
            or_retry!(@read take_back_from_dead(&db, &me).await, outages, stop);
        }
        // Something is down: no new work. Each kind is probed its own way, every few
        // seconds: the API with a call that changes nothing (never a create, which might
        // land unanswered), S3 with one upload, the process's descriptors by opening one,
        // the store by the loop's own calls.
        if let Some(outage) = &down {
            if probed.is_none_or(|at| at.elapsed() >= OUTAGE_PROBE_EVERY) {
                probed = Some(std::time::Instant::now());
                match outage.what {
                    Down::Api => spawn_api_probe(&mut tasks, &shared),
                    Down::Descriptors => {
                        if std::fs::File::open("/dev/null").is_ok() {
                            outages.end(Down::Descriptors);
                        }
                    }
                    Down::Uploads if workers.available_permits() > 0 => {
                        let probe = or_retry!(
                            claim(&db, &config, &[JobKind::Upload], 1).await,
                            outages,
                            stop
                        );
                        if probe.is_empty()
                            && tasks.is_empty()
                            && !or_retry!(@read
                                queue::has_available(&db, config.group())
                                    .await
                                    .map_err(StoreError::from),
                                outages,
                                stop
                            )
                        {
                            // Nothing left to try: nothing can show the outage ended, so stop
                            // pausing; the next call will tell.
                            outages.forget_remote();
                        }
                        for job in probe {
                            spawn_job(&mut tasks, &shared, &in_flight, &workers, &uploads, job);
                        }
                    }
                    // The store: one job claimed (a write) shows it takes writes again.
                    Down::Store if workers.available_permits() > 0 => {
                        let kinds = [JobKind::CreateTicket, JobKind::Upload];
                        let probe = or_retry!(claim(&db, &config, &kinds, 1).await, outages, stop);
                        for job in probe {
                            spawn_job(&mut tasks, &shared, &in_flight, &workers, &uploads, job);
                        }
                    }
                    Down::Uploads | Down::Store => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(done),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        // Creates first (they finish tickets), each batch spawned as soon as it is claimed:
        // a failing second claim must not strand jobs the first one already holds.
        let free = workers.available_permits();
        let mut got_work = false;
        // A claim that got all it asked for may have left more behind.
        let mut got_all = false;
        if free > 0 {
            let creates = or_retry!(
                claim(&db, &config, &[JobKind::CreateTicket], free).await,
                outages,
                stop
            );
            got_work |= !creates.is_empty();
            got_all |= creates.len() == free;
            for job in creates {
                spawn_job(&mut tasks, &shared, &in_flight, &workers, &uploads, job);
            }
        }
        let free_uploads = uploads.available_permits().min(workers.available_permits());
        if free_uploads > 0 {
            let claimed = or_retry!(
                claim(&db, &config, &[JobKind::Upload], free_uploads).await,
                outages,
                stop
            );
            got_work |= !claimed.is_empty();
            got_all |= claimed.len() == free_uploads;
            for job in claimed {
                spawn_job(&mut tasks, &shared, &in_flight, &workers, &uploads, job);
            }
        }
        if got_all && workers.available_permits() > 0 {
            continue;
        }
        let idle = !got_work && tasks.is_empty() && !config.watch;
        if idle
            && !or_retry!(@read
                queue::has_runnable(&db, config.group())
                    .await
                    .map_err(StoreError::from),
                outages,
                stop
            )
        {
            break Ok(RunEnd::Drained);
        }
        // Wait for a slot, a notification, the next scheduled job, or a stop. While jobs run,
        // each one's end wakes the loop anyway: the store is asked only when nothing runs.
        let wake = if tasks.is_empty() {
            or_retry!(@read next_wake(&db, &config).await, outages, stop)
        } else {
            config.idle_poll
        };
        // Idle while other processes finish the last jobs (an SQLite store notifies no one):
        // look often, so that this process ends soon after they do, not a poll later.
        let wake = if idle { wake.min(FOLLOW_POLL) } else { wake };
        tokio::select! {
            _ = stop.cancelled() => {}
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_panic(done),
            _ = notified(&mut listener), if got_work || workers.available_permits() > 0 => {}
            _ = tokio::time::sleep(wake) => {}
        }
    };

    if !matches!(end, Ok(RunEnd::Drained)) && !tasks.is_empty() {
        tracing::info!(
            in_flight = tasks.len(),
            "stopping: no new claims; letting in-flight jobs finish"
        );
        let drain = async {
            while let Some(done) = tasks.join_next().await {
                log_panic(done);
            }
        };
        // Past an outage limit, in-flight work is mostly waiting on what is down: a few
        // seconds for the answers that can still come (the journal keeps them), no more.
        let grace = match &end {
            Ok(RunEnd::Outage(_)) => config.shutdown_grace.min(OUTAGE_GRACE),
            _ => config.shutdown_grace,
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
    heartbeat.abort();
    // With the store down, the last writes are not tried: the journal keeps the answers and
    // the next run on this host takes back this process's leases at once.
    let store_down = outages.is_down(Down::Store);
    // Answers not yet recorded: now, if the store takes them; else they wait in the journal
    // for the next run, which reads it before anything else.
    if !store_down
        && shared.journal.has_entries()
        && let Err(e) = bounded(shared.journal.replay(&db)).await
    {
        tracing::warn!(error = %e, journal = %shared.journal.path().display(),
            "answers received while the store was down are kept in the journal for the next run");
    }
    // Whatever is still ours goes back to the queue now, not when its lease runs out (or,
    // with the store down, when the next run on this host takes back a dead process's work).
    let mut leftover = held_jobs(&in_flight);
    leftover.append(&mut lock(&shared.unsettled));
    if !store_down && !leftover.is_empty() {
        let release: Vec<_> = leftover.into_iter().map(Transition::release).collect();
        match bounded(async { Ok(queue::apply(&db, &release).await?) }).await {
            Ok(outcomes) => {
                let n = outcomes.iter().filter(|o| **o == Outcome::Done).count();
                tracing::info!(released = n, "released unfinished jobs")
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not release jobs; the next run on this host takes them back at once (else their leases expire)")
            }
        }
    }
    // The last counts, after the work is given back: a slow store delays only these.
    flusher_stop.cancel();
    let wait = if store_down {
        Duration::ZERO
    } else {
        LAST_WRITES
    };
    if tokio::time::timeout(wait, flusher).await.is_err() && !store_down {
        tracing::warn!("the last request counters were not written in time");
    }
    end
}

/// How long the pool's last writes may wait for the store when it is leaving.
const LAST_WRITES: Duration = Duration::from_secs(5);

/// A store call on the way out, bounded: a store that is down must not hold the exit.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(LAST_WRITES, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the store did not answer in time".into(),
            ))
        })
}

/// Ask the API, in a task of its own, whether it answers again: any answer ends its outage
/// (the client notes it), no answer continues it.
fn spawn_api_probe(tasks: &mut JoinSet<()>, shared: &Arc<Shared>) {
    let client = shared.client.clone();
    tasks.spawn(async move {
        if let Err(e) = client.probe_api().await {
            tracing::debug!(error = %e, "the API probe got no answer");
        }
    });
}

/// What a claimed job is for, read from the queue's kind and target: an upload's target is
/// its attachment, a create's its ticket.
pub trait Subject {
    fn job_kind(&self) -> Option<JobKind>;
    fn attachment(&self) -> Option<AttachmentId>;
    fn ticket(&self) -> Option<TicketId>;
    fn batch(&self) -> Option<BatchId>;
}

impl Subject for ClaimedJob {
    fn job_kind(&self) -> Option<JobKind> {
        JobKind::parse(&self.kind)
    }

    fn attachment(&self) -> Option<AttachmentId> {
        (self.job_kind() == Some(JobKind::Upload))
            .then_some(self.target_id)
            .flatten()
            .map(AttachmentId)
    }

    fn ticket(&self) -> Option<TicketId> {
        (self.job_kind() == Some(JobKind::CreateTicket))
            .then_some(self.target_id)
            .flatten()
            .map(TicketId)
    }

    fn batch(&self) -> Option<BatchId> {
        self.group_id.map(BatchId)
    }
}

/// End the leases of jobs held by processes of this host that are gone (`kill -9`, a crash),
/// so their work is taken back now rather than when the leases run out.
async fn take_back_from_dead(db: &Store, me: &identity::Me) -> Result<(), StoreError> {
    for holder in queue::holders(db).await? {
        if identity::is_dead(&holder, me) {
            let jobs = queue::expire_leases_of(db, &holder).await?;
            if jobs > 0 {
                tracing::info!(
                    holder = %holder,
                    jobs,
                    "taking back the jobs of a worker process of this host that is gone"
                );
            }
        }
    }
    Ok(())
}

type InFlight = Arc<Mutex<HashMap<JobId, i32>>>;

/// Run one claimed job in its own task, holding a worker slot (and an upload slot for an
/// upload) and a place in the heartbeat's list until it ends — however it ends.
fn spawn_job(
    tasks: &mut JoinSet<()>,
    shared: &Arc<Shared>,
    in_flight: &InFlight,
    workers: &Arc<Semaphore>,
    uploads: &Arc<Semaphore>,
    job: ClaimedJob,
) {
    let worker = workers
        .clone()
        .try_acquire_owned()
        .expect("claimed within free slots");
    let upload = (job.job_kind() == Some(JobKind::Upload)).then(|| {
        uploads
            .clone()
            .try_acquire_owned()
            .expect("claimed within free upload slots")
    });
    let held = Held::new(in_flight.clone(), job.job_ref());
    let shared = shared.clone();
    let span = tracing::info_span!(
        "job", job_id = %job.id, kind = %job.kind, attempt = job.attempt,
        batch = %job.batch().map(|b| b.to_string()).unwrap_or_default(),
        ticket_ref = tracing::field::Empty
    );
    tasks.spawn(
        async move {
            execute(&shared, &job).await;
            drop((held, worker, upload));
        }
        .instrument(span),
    );
}

/// The jobs this process holds now, with the attempts that claimed them.
fn held_jobs(in_flight: &InFlight) -> Vec<JobRef> {
    lock(in_flight)
        .iter()
        .map(|(&id, &attempt)| JobRef { id, attempt })
        .collect()
}

/// A job's place in the heartbeat list, removed when the task ends or unwinds. Keyed by job
/// and attempt: a later claim of the same job by this process keeps its own place.
struct Held {
    in_flight: InFlight,
    job: JobRef,
}

impl Held {
    fn new(in_flight: InFlight, job: JobRef) -> Self {
        lock(&in_flight).insert(job.id, job.attempt);
        Self { in_flight, job }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = lock(&self.in_flight);
        if map.get(&self.job.id) == Some(&self.job.attempt) {
            map.remove(&self.job.id);
        }
    }
}

async fn claim(
    db: &Store,
    config: &PoolConfig,
    kinds: &[JobKind],
    limit: usize,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    Ok(queue::claim(
        db,
        config.group(),
        &kinds,
        limit as i64,
        &config.worker_name,
        config.lease,
    )
    .await?)
}

/// How long to sleep when idle: until the next scheduled job, at most `idle_poll`.
async fn next_wake(db: &Store, config: &PoolConfig) -> Result<Duration, StoreError> {
    let next = queue::next_run_at(db, config.group()).await?;
    let now = time::OffsetDateTime::now_utc();
    let until = next
        .map(|at| (at.0 - now).try_into().unwrap_or(Duration::ZERO))
        .unwrap_or(config.idle_poll);
    Ok(until.clamp(Duration::from_millis(10), config.idle_poll))
}

async fn notified(listener: &mut Option<queue::Listener>) {
    match listener {
        Some(l) => l.notified().await,
        None => std::future::pending::<()>().await,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a job task panicked; its lease will expire and it will run again");
    }
}

/// Extend the leases of the jobs this process holds, every third of a lease.
async fn heartbeat(db: Store, in_flight: InFlight, lease: Duration) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        let refs = held_jobs(&in_flight);
        if !refs.is_empty()
            && let Err(e) = queue::heartbeat(&db, &refs, lease).await
        {
            tracing::warn!(error = %e, "lease heartbeat failed");
        }
    }
}

/// Run one job and settle its outcome. Nothing escapes: every error is recorded or logged.
async fn execute(shared: &Shared, job: &ClaimedJob) {
    if job.is_over_budget() {
        // Its previous holder lost the lease on the last attempt (killed, crashed, hung):
        // running it again could kill this worker too.
        let failure = Failure::fail(format!(
            "gave up: the worker holding attempt {} of {} stopped without an answer",
            job.attempt - 1,
            job.max_attempts
        ));
        if let Err(e) = settle(shared, job, &failure).await {
            tracing::error!(error = %e, "could not record an over-budget job");
        }
        return;
    }
    match cancelled(shared, job).await {
        Ok(false) => {}
        Ok(true) => return,
        Err(e) => {
            if e.is_outage() {
                store_down(shared.client.outages(), &e);
            }
            tracing::warn!(error = %e, "could not check whether the ticket was cancelled");
            lock(&shared.unsettled).push(job.job_ref());
            return;
        }
    }
    let result = match job.job_kind() {
        Some(JobKind::Upload) => jobs::upload(shared, job).await,
        Some(JobKind::CreateTicket) => jobs::create(shared, job).await,
        None => Err(HandlerError::Job(Failure::fail(format!(
            "unknown job kind {:?}",
            job.kind
        )))),
    };
    let failure = match result {
        Ok(()) => {
            if let Err(e) = record_attempt(shared, job, AttemptOutcome::Done, None).await {
                tracing::warn!(error = %e, "could not record a finished attempt");
            }
            return;
        }
        Err(HandlerError::Store(StoreError::Fenced { .. })) => {
            tracing::warn!("lease lost to another worker; dropping this attempt's result");
            return;
        }
        Err(HandlerError::Store(e)) if e.is_outage() => {
            // The store is down, not the job: no attempt is used; the job goes back when the
            // store answers.
            store_down(shared.client.outages(), &e);
            lock(&shared.unsettled).push(job.job_ref());
            return;
        }
        Err(HandlerError::Store(e)) => Failure {
            next: Next::Retry { after: None },
            reason: format!("database error: {e}"),
            detail: None,
        },
        Err(HandlerError::Job(f)) => f,
    };
    if let Err(e) = settle(shared, job, &failure).await {
        match e {
            StoreError::Fenced { .. } => {
                tracing::warn!("lease lost to another worker; dropping this attempt's result")
            }
            e if e.is_outage() => {
                store_down(shared.client.outages(), &e);
                lock(&shared.unsettled).push(job.job_ref());
            }
            e => tracing::error!(error = %e, reason = %failure.reason,
                "could not record a job's failure; it will run again when its lease expires"),
        }
    }
}

/// A job whose ticket an operator cancelled is given up unsent (cancelled, its attempt
/// kept): true when it was.
async fn cancelled(shared: &Shared, job: &ClaimedJob) -> Result<bool, StoreError> {
    let Some(target) = job.target_id else {
        return Ok(false);
    };
    if !control::target_cancelled(&shared.db, target).await? {
        return Ok(false);
    }
    let mut tx = shared.db.begin().await?;
    let mut conn = tx.conn();
    queue::apply_one(&mut conn, Transition::abandon(job.job_ref())).await?;
    attempts::record(&mut conn, job, AttemptOutcome::Cancelled, None).await?;
    tx.commit().await?;
    tracing::info!("the ticket was cancelled; not sent");
    Ok(true)
}

async fn record_attempt(
    shared: &Shared,
    job: &ClaimedJob,
    outcome: AttemptOutcome,
    answer: Option<&str>,
) -> Result<(), StoreError> {
    let mut connection = shared.db.acquire().await?;
    attempts::record(&mut connection.conn(), job, outcome, answer).await
}

/// Write what a failure means — retry, wait, fail (with the ticket), review or re-upload —
/// the job's transition and the importer's own writes in one transaction.
async fn settle(shared: &Shared, job: &ClaimedJob, failure: &Failure) -> Result<(), StoreError> {
    let job_ref = job.job_ref();
    let reason = failure.reason.as_str();
    let mut tx = shared.db.begin().await?;
    let mut conn = tx.conn();
    let mut outcome = AttemptOutcome::Failed;
    match &failure.next {
        Next::Wait { after } => {
            outcome = AttemptOutcome::Waiting;
            tracing::info!(wait = ?after, "rate limited; waiting without using an attempt");
            queue::apply_one(&mut conn, Transition::snooze(job_ref, *after, Some(reason))).await?;
        }
        Next::Outage => {
            outcome = AttemptOutcome::Waiting;
            // The pool logs the outage once every half minute; not once per job.
            tracing::debug!(error = reason, "a service is down; back in the queue");
            let snooze = Transition::snooze(job_ref, OUTAGE_PROBE_EVERY, Some(reason));
            queue::apply_one(&mut conn, snooze).await?;
        }
        Next::Retry { after } => {
            let retry = match after {
                Some(after) => Transition::retry_after(job_ref, *after, reason),
                None => Transition::retry(job_ref, &shared.backoff, reason),
            };
            match queue::apply_one(&mut conn, retry).await? {
                Outcome::Retrying { at } => {
                    outcome = AttemptOutcome::Retrying;
                    shared.progress.retried();
                    tracing::warn!(error = reason, retry_at = %at, "will retry")
                }
                _ => {
                    tracing::error!(error = reason, "out of attempts");
                    fail_subject(
                        &mut conn,
                        job,
                        &format!("gave up after {} attempts: {reason}", job.attempt),
                    )
                    .await?;
                }
            }
        }
        Next::Fail | Next::Presign | Next::Rehash | Next::AlreadyCreated => {
            tracing::error!(error = reason, "failed");
            queue::apply_one(&mut conn, Transition::fail(job_ref, reason)).await?;
            fail_subject(&mut conn, job, reason).await?;
        }
        Next::ProjectRefused => {
            tracing::error!(error = reason, "project refused");
            queue::apply_one(&mut conn, Transition::fail(job_ref, reason)).await?;
            gate::refused(&mut conn, job, reason, failure.detail.as_deref()).await?;
        }
        Next::AwaitProject { ticket } => {
            outcome = AttemptOutcome::Waiting;
            tracing::debug!("waiting for the project's first ticket");
            crate::store::gates::park(&mut conn, job_ref, *ticket, reason).await?;
        }
        Next::Halt => {
            outcome = AttemptOutcome::Waiting;
            tracing::error!(error = reason, "credentials refused; stopping the run");
            let back = Transition::snooze(job_ref, Duration::ZERO, Some(reason));
            queue::apply_one(&mut conn, back).await?;
            lock(&shared.halted).get_or_insert_with(|| reason.to_string());
        }
        Next::Review => {
            outcome = AttemptOutcome::NeedsReview;
            tracing::warn!(error = reason, "needs review");
            queue::apply_one(&mut conn, Transition::fail(job_ref, reason)).await?;
            if let Some(ticket) = job.ticket() {
                tickets::set_ticket_state(
                    &mut conn,
                    ticket,
                    TicketState::NeedsReview,
                    Some(reason),
                )
                .await?;
            }
        }
        Next::Reupload { keys } => {
            outcome = AttemptOutcome::Reupload;
            let ticket = job.ticket().expect("create jobs name their ticket");
            let work = tickets::create_work(&mut conn, ticket).await?;
            let named: Vec<_> = work
                .attachments
                .iter()
                .filter(|(_, key, _)| key.as_ref().is_some_and(|k| keys.contains(k)))
                .map(|(id, _, _)| *id)
                .collect();
            let not_uploaded: Vec<_> = work
                .attachments
                .iter()
                .filter(|(_, _, state)| *state != AttachmentState::Uploaded)
                .map(|(id, _, _)| *id)
                .collect();
            let again = if !named.is_empty() {
                named
            } else if !not_uploaded.is_empty() {
                not_uploaded
            } else {
                work.attachments.iter().map(|(id, _, _)| *id).collect()
            };
            tracing::warn!(error = reason, attachments = again.len(), "uploading again");
            tickets::reopen_uploads(&mut conn, job_ref, ticket, &again, reason).await?;
        }
    }
    if matches!(failure.next, Next::Fail | Next::Review) {
        let detail = failure.detail.as_deref().map(json_of);
        tickets::set_error_detail(&mut conn, job.attachment(), job.ticket(), detail).await?;
    }
    attempts::record(&mut conn, job, outcome, Some(reason)).await?;
    tx.commit().await?;
    Ok(())
}

fn json_of(detail: &crate::visibuild::error::ServerError) -> String {
    serde_json::to_string(detail).unwrap_or_default()
}

/// A job that will not run again fails what it was for: its attachment and ticket.
async fn fail_subject(
    conn: &mut crate::store::Conn<'_>,
    job: &ClaimedJob,
    reason: &str,
) -> Result<(), StoreError> {
    if let Some(attachment) = job.attachment() {
        return tickets::fail_attachment(conn, attachment, reason).await;
    }
    if let Some(ticket) = job.ticket() {
        return tickets::set_ticket_state(conn, ticket, TicketState::Failed, Some(reason)).await;
    }
    Ok(())
}
