//! The driver: one async task per source, carrying out what its [`Machine`] decides.
//!
//! The task owns the source's repository handle (its in-memory cache entry), sleeps until the
//! machine's next timeout, and runs each fetch attempt on a thread of its own. A semaphore
//! bounds how many attempts run at once across the feed, and every attempt thread is joined
//! before the task moves on, so no thread outlives its attempt and none idles in a pool.

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
use crate::event::{Event, SourceState, StateChange, Update, Warning};
use crate::failure::{self, Told};
use crate::feed::SyncError;
use crate::git::{self, Cancel, FetchError, ObjectId, Repo};
use crate::machine::{Action, ErrorKind, Health, Machine, Outcome, State};
use crate::reason::Reason;
use crate::source::Source;
use crate::status::{Status, now_ms};
use crate::work::{self, Attempt, Fetched, Seen, Synced};

/// What the feed tells a running source task.
#[derive(Debug)]
pub(crate) enum Control {
    /// Fetch now (a webhook, SIGHUP), unless the hinted commit is already here.
    Trigger(Option<ObjectId>),
    /// New settings for the same cache entry.
    Change(Box<Source>),
    /// The consumer has applied the update to this commit; the feed has recorded it.
    Acknowledged(ObjectId),
}

/// Everything the source tasks of one feed share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cache_dir: std::path::PathBuf,
    pub events: Sender<Event>,
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

/// Follows one source until the feed shuts down or the source is removed (its control channel
/// closes). The cache directory stays on disk either way.
pub(crate) async fn follow(shared: Rc<Shared>, mut source: Source, control: Receiver<Control>) {
    let mut paths = work::Paths::new(&shared.cache_dir, &source);
    paths.turn = shared.clone_turn(paths.clone.dir());
    let entry = paths.entry.clone();
    // Held while the source runs: `gc` never removes a clone a running source has open.
    let _user = paths
        .clone
        .hold()
        .inspect_err(|err| {
            log::warn!(
                "{}: cannot register as a user of its clone: {err}",
                source.name
            )
        })
        .ok();
    let mut machine = Machine::new(source.policy(), Instant::now());
    let mut handle = Kept {
        repo: None,
        shared: Rc::clone(&shared),
    };
    // After a restart the next update starts from what the consumer acknowledged, so an
    // update that was sent but never acknowledged is sent again.
    let mut seen = Seen::at_start(&entry, &source);
    let mut status = Status {
        source: source.name.clone(),
        url: git::redact_url(&source.url),
        reference: source.reference.clone(),
        state: "idle".into(),
        acknowledged: hex(seen.acknowledged),
        ..Status::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut pending: Vec<Control> = Vec::new();
    let mut last_warning: Option<String> = None;
    // When the timer that started the coming attempt was due, for the schedule's debug log.
    let mut due: Option<Instant> = None;
    // Why the last attempt failed, for the state event the machine asks for next.
    let mut reason: Option<Reason> = None;
    let mut detail: Option<String> = None;
    // Outlives reopened clones: see `Target::many_refs`.
    let many_refs = Arc::new(AtomicBool::new(false));
    loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::TearDown { delete_clone } => {
                    // A broken clone was already deleted by the attempt that found it broken,
                    // while it held the clone's lock (see `work::sync`).
                    handle.take();
                    if delete_clone {
                        log::debug!("{}: dropped the handle of a broken clone", source.name);
                    }
                }
                Action::Fetch => {
                    let Some(attempt) = attempt(
                        &shared,
                        &source,
                        &paths,
                        handle.take(),
                        &seen,
                        due.take(),
                        &many_refs,
                    )
                    .await
                    else {
                        return; // shut down while waiting for a fetch slot
                    };
                    handle.keep(attempt.handle);
                    status.last_attempt_ms = Some(now_ms());
                    if let Ok(fetched) = &attempt.result {
                        status.record_success(fetched.tip, &fetched.served_by);
                    }
                    let result = match attempt.result {
                        Ok(fetched) => {
                            let synced = fetched.synced;
                            let delivering = synced.as_ref().is_some_and(|s| !s.is_empty());
                            let about = synced.as_ref().map(|synced| synced.new.to_string());
                            // Warnings first: the consumer hears what was left out before it
                            // applies the update.
                            for warning in attempt.warnings {
                                // A warning about an update goes with every sending of it; one
                                // with no update (an unsigned tip that stays, every poll) is
                                // news once.
                                if delivering || last_warning.as_ref() != Some(&warning) {
                                    last_warning = Some(warning.clone());
                                    emit_warning(&shared, &source.name, about.clone(), warning)
                                        .await;
                                }
                            }
                            match synced {
                                Some(synced) => {
                                    let caught_up = seen.acknowledged == synced.old;
                                    seen.sent = Some(synced.new);
                                    if synced.is_empty() {
                                        // Nothing the consumer wants moved: nothing to apply.
                                        // It is acknowledged on the consumer's behalf only when
                                        // the consumer has acknowledged everything before it,
                                        // or an update still unacknowledged would be lost on
                                        // restart.
                                        if caught_up {
                                            record_acknowledged(
                                                &entry,
                                                &source.name,
                                                &mut seen,
                                                synced.new,
                                            );
                                        }
                                        Ok(())
                                    } else {
                                        deliver(&shared, &source, &entry, &mut seen, synced).await
                                    }
                                }
                                None => Ok(()),
                            }
                        }
                        Err(err) => Err(err),
                    };
                    let outcome = match result {
                        Ok(()) => Outcome::Success,
                        Err(err) => {
                            let told = failure::tell(&source, &err);
                            if shared.shutdown.is_closed() {
                                // Interrupted on purpose: the feed is stopping.
                                log::debug!("{}", told.headline);
                            } else {
                                log::warn!("{}", told.headline);
                            }
                            if let Some(detail) = &told.detail {
                                log::debug!("{}: {detail}", source.name);
                            }
                            status.last_error = Some(told.headline.clone());
                            status.reason = Some(err.reason);
                            status.detail.clone_from(&told.detail);
                            reason = Some(err.reason);
                            detail = told.detail;
                            if err.kind != ErrorKind::Transient {
                                handle.take();
                            }
                            Outcome::Failure {
                                kind: err.kind,
                                error: told.headline,
                            }
                        }
                    };
                    machine.handle_fetch_done(Instant::now(), outcome, rng.f64());
                    status.acknowledged = hex(seen.acknowledged);
                    record_status(&entry, &machine, &mut status);
                    if shared.shutdown.is_closed() {
                        return;
                    }
                    // Controls that arrived during the attempt are applied now, in order.
                    while let Ok(message) = control.try_recv() {
                        pending.push(message);
                    }
                }
                Action::Emit(health) => {
                    emit_health(&shared, &source.name, health, reason, detail.clone()).await
                }
            }
            for message in pending.drain(..) {
                apply(
                    &mut machine,
                    &mut source,
                    &mut seen,
                    handle.repo.as_ref(),
                    message,
                );
            }
            note_acknowledged(&entry, &machine, &mut status, &seen);
        }
        let timeout = machine.poll_timeout();
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
            Wake::Removed
        };
        match wake.or(message).or(shutdown).await {
            Wake::Timeout => {
                due = timeout;
                machine.handle_timeout(Instant::now());
            }
            Wake::Control(message) => apply(
                &mut machine,
                &mut source,
                &mut seen,
                handle.repo.as_ref(),
                message,
            ),
            Wake::Removed => return,
        }
        note_acknowledged(&entry, &machine, &mut status, &seen);
    }
}

/// Writes the status again when the consumer has acknowledged something since it was written.
fn note_acknowledged(entry: &cache::Entry, machine: &Machine, status: &mut Status, seen: &Seen) {
    if status.acknowledged != hex(seen.acknowledged) {
        status.acknowledged = hex(seen.acknowledged);
        record_status(entry, machine, status);
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
}

fn apply(
    machine: &mut Machine,
    source: &mut Source,
    seen: &mut Seen,
    handle: Option<&Repo>,
    message: Control,
) {
    match message {
        Control::Acknowledged(commit) => seen.acknowledged = Some(commit),
        Control::Trigger(Some(hint))
            if seen.sent == Some(hint)
                || handle.is_some_and(|repo| repo.reaches(&source.tip_ref(), hint)) =>
        {
            log::debug!("{}: trigger for {hint}, which is already here", source.name);
        }
        Control::Trigger(_) => machine.handle_trigger(Instant::now()),
        Control::Change(changed) => {
            *source = *changed;
            machine.handle_policy_changed(Instant::now(), source.policy());
        }
    }
}

/// Runs one fetch attempt on its own thread and waits for it, at most until the attempt's
/// deadline; then cancels it and still waits for the thread to end, so the attempt gives back
/// its thread, handles and descriptors before this returns. `None` when the feed shut down
/// before the attempt could start.
async fn attempt(
    shared: &Shared,
    source: &Source,
    paths: &work::Paths,
    handle: Option<Repo>,
    seen: &Seen,
    due: Option<Instant>,
    many_refs: &Arc<AtomicBool>,
) -> Option<Attempt> {
    let slot = async { Some(shared.fetch_slots.acquire().await) };
    let closed = async {
        let _ = shared.shutdown.recv().await;
        None
    };
    let _slot = slot.or(closed).await?;
    if let Some(due) = due {
        // How far behind its schedule the feed runs: the timer's lateness includes the
        // executor's, and the rest is the wait for a fetch slot.
        log::debug!(
            target: "gitfeed::schedule",
            "{}: attempt started late_us={} after its timer was due",
            source.name,
            Instant::now().saturating_duration_since(due).as_micros()
        );
    }

    let mut target = work::target(source);
    target.many_refs = Arc::clone(many_refs);
    let counter = Arc::clone(&target.progress);
    let cancel = Arc::new(Cancel::default());
    let holding = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = async_channel::bounded(1);
    let work = {
        let cancel = Arc::clone(&cancel);
        let holding = Arc::clone(&holding);
        let paths = paths.clone();
        let seen = *seen;
        let source = source.clone();
        move || {
            let outcome = work::sync(handle, &paths, &source, &target, &seen, &cancel, &holding);
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
        clock::sleep_until(started + attempt_limit(source)).await;
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
                    format!(
                        "timed out after {}",
                        failure::duration(attempt_limit(source))
                    ),
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

/// Sends the update, and runs the source's `exec` command for it if it has one: the update
/// is acknowledged when the command succeeds, and sent again after the backoff when it fails.
async fn deliver(
    shared: &Shared,
    source: &Source,
    entry: &cache::Entry,
    seen: &mut Seen,
    synced: Synced,
) -> Result<(), FetchError> {
    log::info!(
        "{}: {} -> {} ({} changes{})",
        source.name,
        hex(synced.old).as_deref().unwrap_or("nothing"),
        synced.new,
        synced.changes.len(),
        if synced.forced { ", forced" } else { "" }
    );
    let (old, new) = (synced.old, synced.new);
    let update = into_update(source, synced);
    let exec = match &source.exec {
        Some(command) => {
            let input = crate::exec::Input::stage(source, &update, entry.dir())?;
            Some((command, input, old, new))
        }
        None => None,
    };
    // A consumer that dropped its receiver gets nothing more.
    let _ = shared.events.send(Event::Update(update)).await;
    if let Some((command, input, old, new)) = exec {
        if let Err(err) = crate::exec::run(source, command, input, &shared.shutdown).await {
            // Not applied: the next attempt starts where this update started (a listing stays
            // a listing), so the same update is delivered again.
            seen.sent = old;
            return Err(err);
        }
        record_acknowledged(entry, &source.name, seen, new);
    }
    Ok(())
}

async fn emit_warning(shared: &Shared, name: &str, commit: Option<String>, message: String) {
    log::warn!("{name}: {message}");
    let warning = Warning {
        source: name.to_owned(),
        commit,
        message,
    };
    let _ = shared.events.send(Event::Warning(warning)).await;
}

fn record_acknowledged(entry: &cache::Entry, name: &str, seen: &mut Seen, commit: ObjectId) {
    match entry.set_delivered(commit) {
        Ok(()) => seen.acknowledged = Some(commit),
        Err(err) => log::warn!("{name}: cannot record the acknowledged commit: {err}"),
    }
}

fn into_update(source: &Source, synced: Synced) -> Update {
    Update {
        source: source.name.clone(),
        url: git::redact_url(&synced.url),
        reference: synced.reference,
        old: hex(synced.old),
        new: synced.new.to_string(),
        forced: synced.forced,
        changes: synced.changes,
    }
}

/// Sends the state event for `health`; `reason` is why the last attempt failed and `detail`
/// what was said underneath. The error says what happens next, after what failed.
async fn emit_health(
    shared: &Shared,
    name: &str,
    health: Health,
    reason: Option<Reason>,
    detail: Option<String>,
) {
    let change = match health {
        Health::Backoff {
            attempt,
            error,
            retry_in,
        } => StateChange {
            source: name.to_owned(),
            state: SourceState::Backoff,
            attempt: Some(attempt),
            reason,
            error: Some(format!(
                "{error}; will retry in {}",
                failure::duration(retry_in)
            )),
            detail,
            retry_in_ms: Some(millis(retry_in)),
        },
        Health::Failed {
            attempt,
            error,
            retry_in,
        } => {
            let error = match retry_in {
                Some(retry_in) => format!(
                    "{error}; gave up, will probe again in {}",
                    failure::duration(retry_in)
                ),
                None => format!("{error}; gave up until triggered or changed"),
            };
            log::error!("{error}");
            StateChange {
                source: name.to_owned(),
                state: SourceState::Failed,
                attempt: Some(attempt),
                reason,
                error: Some(error),
                detail,
                retry_in_ms: retry_in.map(millis),
            }
        }
        Health::Idle => {
            log::info!("{name}: healthy again");
            StateChange {
                source: name.to_owned(),
                state: SourceState::Idle,
                attempt: None,
                reason: None,
                error: None,
                detail: None,
                retry_in_ms: None,
            }
        }
    };
    let _ = shared.events.send(Event::State(change)).await;
}

/// Writes the source's status snapshot, with the state the machine is in now.
fn record_status(entry: &cache::Entry, machine: &Machine, status: &mut Status) {
    let (state, failures) = match machine.state() {
        State::Idle { .. } => ("idle", 0),
        State::Fetching { failures, .. } => ("fetching", *failures),
        State::Backoff { failures, .. } => ("backoff", *failures),
        State::Failed { failures, .. } => ("failed", *failures),
    };
    status.state = state.into();
    status.attempt = failures;
    if let Err(err) = status.write(entry.dir()) {
        log::debug!("{}: cannot write its status: {err}", status.source);
    }
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

fn attempt_limit(source: &Source) -> Duration {
    let urls = u32::try_from(1 + source.mirrors.len()).unwrap_or(u32::MAX);
    source.timeout.saturating_mul(urls)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One attempt outside any feed: fetch and diff against the acknowledged commit. `handle` is
/// the clone kept from the previous attempt, if any, and is left holding what this one keeps.
/// The source's status is written as a feed writes it, so `gitfeed status` shows the attempt.
/// `warnings` is left holding what was left out of the update (or why there is none).
pub(crate) async fn once(
    shared: &Shared,
    source: &Source,
    handle: &mut Option<Repo>,
    many_refs: &Arc<AtomicBool>,
    warnings: &mut Vec<String>,
) -> Result<Option<Update>, SyncError> {
    let mut paths = work::Paths::new(&shared.cache_dir, source);
    paths.turn = shared.clone_turn(paths.clone.dir());
    let entry = &paths.entry;
    let seen = Seen::at_start(entry, source);
    let attempt = attempt(
        shared,
        source,
        &paths,
        handle.take(),
        &seen,
        None,
        many_refs,
    )
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
    record_once(entry, source, &attempt);
    // As in a feed: a failure gives the handle back (and the attempt deleted a corrupt clone).
    if attempt.result.is_ok() {
        *handle = attempt.handle;
    }
    let synced = match attempt.result {
        Ok(Fetched {
            synced: Some(synced),
            ..
        }) => synced,
        Ok(_) => return Ok(None),
        Err(err) => return Err(sync_error(source, &err)),
    };
    let mut seen = seen;
    if synced.is_empty() {
        record_acknowledged(entry, &source.name, &mut seen, synced.new);
        return Ok(None);
    }
    let new = synced.new;
    let update = into_update(source, synced);
    if let Some(command) = &source.exec {
        // As in a feed, the command's success acknowledges the update; its failure leaves the
        // update to the next attempt.
        let input = crate::exec::Input::stage(source, &update, entry.dir())
            .map_err(|err| sync_error(source, &err))?;
        if let Err(err) = crate::exec::run(source, command, input, &shared.shutdown).await {
            // The status shows what a feed's would: backing off, for the command.
            let mut status = Status::read(entry.dir()).unwrap_or_default();
            count_failure(&mut status, source, &err);
            if let Err(err) = status.write(entry.dir()) {
                log::debug!("{}: cannot write its status: {err}", source.name);
            }
            return Err(sync_error(source, &err));
        }
        record_acknowledged(entry, &source.name, &mut seen, new);
    }
    Ok(Some(update))
}

/// A failure outside any feed, told as a feed tells it; what was said underneath goes to the
/// log.
fn sync_error(source: &Source, err: &FetchError) -> SyncError {
    let Told { headline, detail } = failure::tell(source, err);
    if let Some(detail) = &detail {
        log::info!("{}: {detail}", source.name);
    }
    SyncError {
        reason: err.reason,
        kind: err.kind,
        message: headline,
        detail,
    }
}

/// Writes the status of a source after one attempt outside any feed, continuing from the
/// status it had: failures count up across attempts and the last success is remembered. The
/// state is what a feed would be in: `backoff` after a failure that may clear, `failed` after
/// one that will not fix itself soon or once `max_failures` is reached.
fn record_once(entry: &cache::Entry, source: &Source, attempt: &Attempt) {
    let mut status = Status::read(entry.dir()).unwrap_or_default();
    status.source.clone_from(&source.name);
    status.url = git::redact_url(&source.url);
    status.reference.clone_from(&source.reference);
    status.last_attempt_ms = Some(now_ms());
    status.acknowledged = hex(entry.delivered());
    match &attempt.result {
        Ok(fetched) => {
            status.state = "idle".into();
            status.attempt = 0;
            status.record_success(fetched.tip, &fetched.served_by);
        }
        Err(err) => count_failure(&mut status, source, err),
    }
    if let Err(err) = status.write(entry.dir()) {
        log::debug!("{}: cannot write its status: {err}", source.name);
    }
}

/// Counts a failure outside any feed in the source's status.
fn count_failure(status: &mut Status, source: &Source, err: &FetchError) {
    let told = failure::tell(source, err);
    status.attempt = status.attempt.saturating_add(1);
    let given_up = source.max_failures.is_some_and(|max| status.attempt >= max);
    status.state = if err.kind == ErrorKind::Permanent || given_up {
        "failed"
    } else {
        "backoff"
    }
    .into();
    status.last_error = Some(told.headline);
    status.reason = Some(err.reason);
    status.detail = told.detail;
}

/// `commit` as the hex text the events and the status file carry.
fn hex(commit: Option<ObjectId>) -> Option<String> {
    commit.map(|commit| commit.to_string())
}
