//! The driver: one async task per source, carrying out what its [`Tracker`] decides.
//!
//! The task owns the source's repository handle (its in-memory cache entry), sleeps until the
//! tracker's next timeout, and runs each fetch attempt on a thread of its own. A semaphore
//! bounds how many attempts run at once across the feed, and every attempt thread is joined
//! before the task moves on, so no thread outlives its attempt and none idles in a pool. The
//! rules of a source (what is sent, acknowledged, warned of and written to its status) are
//! the tracker's; this module sends, writes and runs what it asks for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use smol::future::FutureExt;
use smol::lock::Semaphore;

use crate::cache;
use crate::clock;
use crate::error::Error;
use crate::event::{Event, SourceState, Update};
use crate::failure;
use crate::git::{Cancel, FetchError, ObjectId, Repo};
use crate::reason::Reason;
use crate::source::Source;
use crate::status::{Status, now_ms};
pub(crate) use crate::tracker::Control;
use crate::tracker::{Effect, Order, Report, Tracker};
use crate::work::{self, Attempt, Plan};

/// What the attempts of one feed's sources share, or of one [`Follower`](crate::Follower).
/// Where events go is not in it: a feed's sources send on the feed's channel, and a follower
/// returns its update.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cache_dir: std::path::PathBuf,
    pub fetch_slots: Semaphore,
    /// How many sources keep their clone open between attempts; see [`Kept`].
    pub kept_handles: AtomicUsize,
    /// Closed when the feed shuts down; receiving from it then fails at once.
    pub shutdown: Receiver<()>,
    /// One turn per clone: the attempts of sources of one feed that share a clone and must
    /// write it queue here instead of failing on the clone's file lock, which only has to keep
    /// other processes out.
    pub clone_turns: std::sync::Mutex<HashMap<PathBuf, Arc<std::sync::Mutex<()>>>>,
    /// Where progress samples go, when someone asked for them.
    pub progress: crate::progress::Outlet,
}

impl Shared {
    /// The turn of the clone at `dir`.
    fn clone_turn(&self, dir: &std::path::Path) -> Arc<std::sync::Mutex<()>> {
        let mut turns = self
            .clone_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(turns.entry(dir.to_owned()).or_default())
    }
}

/// Where `source`, about to be followed by a feed, reads and writes, and its hold on them:
/// taken before its task starts, so that the task of the settings it replaces, ending, cannot
/// release a clone this one is about to use. A failure to hold is logged: the source runs
/// anyway, and its first attempt says what is wrong with the cache.
pub(crate) fn claim(shared: &Shared, source: &Source) -> (work::Paths, Option<cache::Claim>) {
    let mut paths = work::Paths::new(&shared.cache_dir, source);
    paths.turn = shared.clone_turn(paths.clone.dir());
    let claim = cache::claim(&paths.entry, &paths.clone, &source.name)
        .inspect_err(|err| {
            log::warn!(
                "{}: cannot register as a user of its clone: {err}",
                source.name
            )
        })
        .ok();
    (paths, claim)
}

/// Follows one source until the feed shuts down or the source is removed (its control channel
/// closes), sending its events on `events`. `paths` and `claim` come from [`claim`].
///
/// A removed source is released once its last attempt has ended (see `work::release`): its
/// entry goes, and its clone too when no other source reads it and nobody has it open. A feed
/// that shuts down releases nothing: its sources are still configured.
pub(crate) async fn follow(
    shared: Rc<Shared>,
    events: Sender<Event>,
    source: Source,
    paths: work::Paths,
    claim: Option<cache::Claim>,
    control: Receiver<Control>,
) {
    // Built again only when the source's settings change: see `refresh`.
    let mut plan = Arc::new(Plan::new(source.clone()));
    let mut handle = Kept {
        repo: None,
        shared: Rc::clone(&shared),
    };
    let end = run(
        &shared,
        &events,
        source,
        &paths,
        &mut plan,
        &mut handle,
        &control,
    )
    .await;
    // Nothing of this process may keep the clone open or held when it is released.
    drop(handle);
    drop(claim);
    if end == End::Removed && !shared.shutdown.is_closed() {
        release(&shared, &plan, &paths).await;
    }
}

/// Why a source's task stopped following it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Removed,
    Shutdown,
}

/// The loop of [`follow`]: carries out the tracker's effects until the source is removed or the
/// feed shuts down.
async fn run(
    shared: &Rc<Shared>,
    events: &Sender<Event>,
    source: Source,
    paths: &work::Paths,
    plan: &mut Arc<Plan>,
    handle: &mut Kept,
    control: &Receiver<Control>,
) -> End {
    let entry = &paths.entry;
    let mut tracker = Tracker::new(source, entry.delivered(), Instant::now())
        .with_written(Status::read(entry.dir()));
    let mut rng = fastrand::Rng::new();
    loop {
        while let Some(effect) = tracker.poll_effect() {
            match effect {
                Effect::Attempt(order) => {
                    // A feed that is stopping starts nothing more.
                    if shared.shutdown.is_closed() {
                        return End::Shutdown;
                    }
                    if refresh(plan, tracker.source()) {
                        // The clone was opened with the old settings (curl's time limits
                        // among them): open it again with the new ones.
                        drop(handle.take());
                    }
                    let Some(Attempt {
                        handle: repo,
                        result,
                        warnings,
                    }) = attempt(shared, plan, paths, handle.take(), &order).await
                    else {
                        return End::Shutdown; // while waiting for a fetch slot
                    };
                    handle.keep(repo);
                    if let Err(err) = &result {
                        log_failure(shared, tracker.source(), err);
                    }
                    let report = Report {
                        result,
                        warnings,
                        ended_ms: now_ms(),
                    };
                    tracker.handle_attempt(Instant::now(), report, rng.f64());
                }
                Effect::TearDown => drop(handle.take()),
                Effect::Send(event) => {
                    if !send(shared, events, event).await {
                        return End::Shutdown;
                    }
                }
                Effect::Execute { update, command } => {
                    let source = tracker.source();
                    log_update(&source.name, &update);
                    let result = match crate::exec::Input::stage(source, &update, entry.dir()) {
                        Ok(input) => {
                            // A consumer that dropped its receiver gets nothing more.
                            let _ = events.send(Event::Update(update)).await;
                            crate::exec::run(source, &command, input, &shared.shutdown).await
                        }
                        Err(err) => Err(err),
                    };
                    if let Err(err) = &result {
                        log_failure(shared, source, err);
                    }
                    tracker.handle_exec_done(Instant::now(), result, rng.f64());
                }
                Effect::RecordAcknowledged(commit) => {
                    record_acknowledged(entry, &tracker.source().name, commit)
                }
                Effect::WriteStatus(status) => write_status(entry, &status),
            }
        }
        // Controls that arrived during an attempt or command are applied in order, once its
        // effects are carried out (a teardown among them: a trigger is then checked against
        // the clone the source still holds) and before any timer.
        if let Ok(message) = control.try_recv() {
            hand_over(&mut tracker, handle.repo.as_ref(), message);
            continue;
        }
        let timeout = tracker.poll_timeout();
        let wake = async {
            match timeout {
                Some(at) => {
                    clock::sleep_until(at).await;
                    Wake::Timeout
                }
                None => smol::future::pending().await,
            }
        };
        let message = async { control.recv().await.map_or(Wake::Removed, Wake::Control) };
        let shutdown = async {
            let _ = shared.shutdown.recv().await;
            Wake::Shutdown
        };
        match wake.or(message).or(shutdown).await {
            Wake::Timeout => tracker.handle_timeout(Instant::now()),
            Wake::Control(message) => hand_over(&mut tracker, handle.repo.as_ref(), message),
            Wake::Removed => return End::Removed,
            Wake::Shutdown => return End::Shutdown,
        }
    }
}

/// Releases a removed source on a thread of its own (it deletes directories and may
/// consolidate a shared clone), once a fetch slot is free, so that removing many sources at
/// once starts no more threads than fetching does. A feed that shuts down meanwhile interrupts
/// it and still waits for the thread.
async fn release(shared: &Shared, plan: &Arc<Plan>, paths: &work::Paths) {
    let slot = async { Some(shared.fetch_slots.acquire().await) };
    let closed = async {
        let _ = shared.shutdown.recv().await;
        None
    };
    let Some(_slot) = slot.or(closed).await else {
        return;
    };
    let cancel = Arc::new(Cancel::default());
    let (done_tx, done_rx) = async_channel::bounded(1);
    let work = {
        let cancel = Arc::clone(&cancel);
        let plan = Arc::clone(plan);
        let paths = paths.clone();
        move || {
            work::release(&paths, &plan, &cancel);
            let _ = done_tx.send_blocking(());
        }
    };
    let name = &plan.source().name;
    let thread = match thread::Builder::new()
        .name(format!("gitfeed-release-{name}"))
        .spawn(work)
    {
        Ok(thread) => thread,
        Err(err) => {
            log::warn!("{name}: cannot start a thread to release it: {err}");
            return;
        }
    };
    let finished = async {
        let _ = done_rx.recv().await;
        false
    };
    let stopped = async {
        let _ = shared.shutdown.recv().await;
        true
    };
    if finished.or(stopped).await {
        cancel.cancel();
        let _ = done_rx.recv().await;
    }
    // The thread sent its outcome as its last act; joining returns at once.
    let _ = thread.join();
}

/// Builds `plan` again when the tracker has taken new settings for the source since it was
/// built (a [`Control::Change`], applied at once or when the attempt or command running
/// then ended), so the attempt about to start uses them. True when it was built again.
fn refresh(plan: &mut Arc<Plan>, source: &Source) -> bool {
    if plan.source() == source {
        return false;
    }
    *plan = Arc::new(plan.rebuilt(source.clone()));
    true
}

/// Hands `message` to the tracker, unless it is a trigger hinting at a commit the source's
/// clone already reaches: only the driver can look into the clone.
fn hand_over(tracker: &mut Tracker, repo: Option<&Repo>, message: Control) {
    if let Control::Trigger(Some(hint)) = &message
        && repo.is_some_and(|repo| repo.reaches(&tracker.source().tip_ref(), *hint))
    {
        log::debug!(
            "{}: trigger for {hint}, which is already here",
            tracker.source().name
        );
        return;
    }
    tracker.handle_control(Instant::now(), message);
}

/// Sends `event` to the consumer, with its log line; false when the feed is stopping and a
/// state event would have gone out: a stopping feed reports no more health.
async fn send(shared: &Shared, events: &Sender<Event>, event: Event) -> bool {
    match &event {
        Event::State(_) if shared.shutdown.is_closed() => return false,
        Event::State(change) => match change.state {
            SourceState::Failed => log::error!("{}", change.error.as_deref().unwrap_or_default()),
            SourceState::Idle => log::info!("{}: healthy again", change.source),
            _ => {}
        },
        Event::Update(update) => log_update(&update.source, update),
        Event::Warning(warning) => log::warn!("{}: {}", warning.source, warning.message),
    }
    // A consumer that dropped its receiver gets nothing more.
    let _ = events.send(event).await;
    true
}

/// The one `info` line of an update.
fn log_update(name: &str, update: &Update) {
    log::info!(
        "{name}: {} -> {} ({} changes{})",
        update.old.as_deref().unwrap_or("nothing"),
        update.new,
        update.changes.len(),
        if update.forced { ", forced" } else { "" }
    );
}

/// Logs a failed attempt or command: a warning, unless the feed is stopping and interrupted
/// it on purpose.
fn log_failure(shared: &Shared, source: &Source, err: &FetchError) {
    let told = failure::tell(source, err);
    if shared.shutdown.is_closed() {
        log::debug!("{}", told.headline);
    } else {
        log::warn!("{}", told.headline);
    }
    if let Some(detail) = &told.detail {
        log::debug!("{}: {detail}", source.name);
    }
}

fn record_acknowledged(entry: &cache::Entry, name: &str, commit: ObjectId) {
    if let Err(err) = entry.set_delivered(commit) {
        log::warn!("{name}: cannot record the acknowledged commit: {err}");
    }
}

fn write_status(entry: &cache::Entry, status: &Status) {
    if let Err(err) = status.write(entry.dir()) {
        log::debug!("{}: cannot write its status: {err}", status.source);
    }
}

/// How many sources of one feed keep their clone open between attempts at most. An open clone
/// costs memory (about 60 KiB in gix's handles and maps, measured), and a source without one
/// reopens and checks its clone at the next attempt (about a millisecond), so a feed of a few
/// sources keeps them all and a feed of a thousand stays small.
pub(crate) const MAX_KEPT_HANDLES: usize = 64;

/// The clone a source keeps open between attempts, counted against [`MAX_KEPT_HANDLES`].
struct Kept {
    repo: Option<Repo>,
    shared: Rc<Shared>,
}

impl Kept {
    fn take(&mut self) -> Option<Repo> {
        let repo = self.repo.take();
        if repo.is_some() {
            self.shared.kept_handles.fetch_sub(1, Ordering::Relaxed);
        }
        repo
    }

    /// Keeps `repo` for the next attempt if the feed's budget allows.
    fn keep(&mut self, repo: Option<Repo>) {
        self.take();
        let counter = &self.shared.kept_handles;
        if repo.is_some() && counter.load(Ordering::Relaxed) < MAX_KEPT_HANDLES {
            counter.fetch_add(1, Ordering::Relaxed);
            self.repo = repo;
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.take();
    }
}

enum Wake {
    Timeout,
    Control(Control),
    Removed,
    Shutdown,
}

/// Runs the attempt `order` asks for on its own thread, once a fetch slot is free, and waits
/// for it at most until its limit has passed since it started; then cancels it and still waits
/// for the thread to end, so the attempt gives back its thread, handles and descriptors before
/// this returns. `None` when the feed shut down before the attempt could start.
async fn attempt(
    shared: &Shared,
    plan: &Arc<Plan>,
    paths: &work::Paths,
    handle: Option<Repo>,
    order: &Order,
) -> Option<Attempt> {
    let source = plan.source();
    let slot = async { Some(shared.fetch_slots.acquire().await) };
    let closed = async {
        let _ = shared.shutdown.recv().await;
        None
    };
    let _slot = slot.or(closed).await?;
    if let Some(due) = order.due {
        // How far behind its schedule the feed runs: the timer's lateness includes the
        // executor's, and the rest is the wait for a fetch slot.
        log::debug!(
            target: "gitfeed::schedule",
            "{}: attempt started late_us={} after its timer was due",
            source.name,
            Instant::now().saturating_duration_since(due).as_micros()
        );
    }

    let counter = Arc::new(crate::progress::Counter::default());
    let cancel = Arc::new(Cancel::default());
    let holding = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = async_channel::bounded(1);
    let work = {
        let cancel = Arc::clone(&cancel);
        let holding = Arc::clone(&holding);
        let paths = paths.clone();
        let seen = order.seen;
        let plan = Arc::clone(plan);
        let counter = Arc::clone(&counter);
        move || {
            let outcome = work::sync(handle, &paths, &plan, &seen, &cancel, &holding, &counter);
            cancel.release();
            let _ = done_tx.send_blocking(outcome);
        }
    };
    let started = Instant::now();
    let thread = match thread::Builder::new()
        .name(format!("gitfeed-fetch-{}", source.name))
        .spawn(work)
    {
        Ok(thread) => thread,
        Err(err) => {
            return Some(Attempt {
                handle: None,
                result: Err(FetchError::new(
                    Reason::LocalIo,
                    format!("cannot start a fetch thread: {err}"),
                )),
                warnings: Vec::new(),
            });
        }
    };
    let finished = async { done_rx.recv().await.ok() };
    let deadline = async {
        // Each URL (the source's and every mirror's) gets the whole timeout; a URL that hangs
        // runs into its transport's own limits before the next one is tried.
        clock::sleep_until(started + order.limit).await;
        None
    };
    let stopped = async {
        let _ = shared.shutdown.recv().await;
        None
    };
    let pack_dir = paths.clone.git_dir().join("objects/pack");
    // Until this attempt holds the clone's lock, a pack being received is another source's.
    let receiving = || {
        if holding.load(Ordering::SeqCst) {
            receiving_bytes(&pack_dir)
        } else {
            0
        }
    };
    let oversized = async {
        // gix has no limit on what a remote sends: watch the pack being received.
        loop {
            clock::sleep_until(Instant::now() + PACK_WATCH_INTERVAL).await;
            if receiving() > source.max_pack_size {
                return None;
            }
        }
    };
    // Samples of what the thread receives, about once a second, for whoever asked for them.
    let reporter = shared
        .progress
        .sender()
        .map(|sink| crate::progress::Reporter::new(sink, &source.name, &counter, started));
    let report = async {
        match &reporter {
            Some(reporter) => reporter.run().await,
            None => smol::future::pending().await,
        }
    };
    let mut outcome = finished
        .or(deadline)
        .or(stopped)
        .or(oversized)
        .or(report)
        .await;
    if outcome.is_none() {
        let too_large = receiving() > source.max_pack_size;
        cancel.cancel();
        // The thread ends promptly now: its socket is shut down, its helper killed, or the
        // transport's own low-speed limit trips. Wait for it, so the attempt really gives
        // everything back.
        outcome = done_rx.recv().await.ok();
        if let Some(finished) = outcome.as_mut() {
            finished.result = Err(if shared.shutdown.is_closed() {
                FetchError::new(Reason::Cancelled, "the feed is shutting down")
            } else if too_large {
                FetchError::new(
                    Reason::RemoteTooLarge,
                    format!(
                        "the remote sent more than max_pack_size ({} bytes); raise it if the \
                         repository really is that large",
                        source.max_pack_size
                    ),
                )
            } else {
                FetchError::new(
                    Reason::Timeout,
                    format!("timed out after {}", crate::clock::spoken(order.limit)),
                )
            });
        }
    }
    // The thread sent its outcome as its last act; joining returns at once.
    let _ = thread.join();
    if let Some(reporter) = &reporter {
        reporter.finish();
    }
    log::debug!(
        "{}: attempt took {} ms",
        source.name,
        started.elapsed().as_millis()
    );
    Some(outcome.unwrap_or_else(|| Attempt {
        handle: None,
        result: Err(FetchError::new(
            Reason::Other,
            "the fetch thread ended without an outcome",
        )),
        warnings: Vec::new(),
    }))
}

/// How often the pack being received is measured against `max_pack_size`.
const PACK_WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Bytes in the temporary files of packs being received.
fn receiving_bytes(pack_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(pack_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(".tmp") || name.starts_with("tmp")
                })
                .filter_map(|entry| entry.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// One attempt of `plan`'s source outside any feed: fetch and diff against the acknowledged
/// commit. The plan is the caller's, kept between attempts. `handle` is the clone kept from
/// the previous attempt, if any, and is left holding what this one keeps.
/// The source's status is written as a feed writes it, so `gitfeed status` shows the attempt.
/// `warnings` is left holding what was left out of the update (or why there is none).
pub(crate) async fn once(
    shared: &Shared,
    plan: &Arc<Plan>,
    handle: &mut Option<Repo>,
    warnings: &mut Vec<String>,
) -> Result<Option<Update>, Error> {
    let source = plan.source();
    let mut paths = work::Paths::new(&shared.cache_dir, source);
    paths.turn = shared.clone_turn(paths.clone.dir());
    let entry = &paths.entry;
    let mut tracker = Tracker::once(
        source.clone(),
        entry.delivered(),
        Status::read(entry.dir()),
        Instant::now(),
    );
    let mut update = None;
    let mut failure = None;
    // No schedule follows the attempt: its jitter changes nothing.
    let jitter = 0.0;
    while let Some(effect) = tracker.poll_effect() {
        match effect {
            Effect::Attempt(order) => {
                let attempt = attempt(shared, plan, &paths, handle.take(), &order)
                    .await
                    .unwrap_or_else(|| Attempt {
                        handle: None,
                        result: Err(FetchError::new(
                            Reason::Cancelled,
                            "the feed is shutting down",
                        )),
                        warnings: Vec::new(),
                    });
                for warning in &attempt.warnings {
                    log::warn!("{}: {warning}", source.name);
                }
                warnings.clone_from(&attempt.warnings);
                failure = attempt.result.as_ref().err().cloned();
                *handle = attempt.handle;
                let report = Report {
                    result: attempt.result,
                    warnings: attempt.warnings,
                    ended_ms: now_ms(),
                };
                tracker.handle_attempt(Instant::now(), report, jitter);
            }
            Effect::TearDown => *handle = None,
            Effect::Send(Event::Update(sent)) => update = Some(sent),
            // No one to send them to: the warnings are the caller's (above), the health is in
            // the status and the result.
            Effect::Send(_) => {}
            Effect::Execute {
                update: staged,
                command,
            } => {
                // As in a feed, the command's success acknowledges the update; its failure
                // leaves the update to the next attempt.
                let result = match crate::exec::Input::stage(source, &staged, entry.dir()) {
                    Ok(input) => crate::exec::run(source, &command, input, &shared.shutdown).await,
                    Err(err) => Err(err),
                };
                failure = result.as_ref().err().cloned();
                tracker.handle_exec_done(Instant::now(), result, jitter);
                update = Some(staged);
            }
            Effect::RecordAcknowledged(commit) => record_acknowledged(entry, &source.name, commit),
            Effect::WriteStatus(status) => write_status(entry, &status),
        }
    }
    match failure {
        Some(err) => Err(sync_error(source, &err)),
        None => Ok(update),
    }
}

/// A failure outside any feed, told as a feed tells it; what was said underneath goes to the
/// log.
fn sync_error(source: &Source, err: &FetchError) -> Error {
    let told = failure::tell(source, err);
    if let Some(detail) = &told.detail {
        log::info!("{}: {detail}", source.name);
    }
    told.into_error(err)
}
