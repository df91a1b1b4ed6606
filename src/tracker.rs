//! One followed source's rules, pure: what was sent and what was acknowledged, which warnings go
//! out, the status, how long an attempt may take and when the repository handle goes.
//!
//! [`Tracker`] owns the source's [`Machine`] (when to fetch) and decides everything an attempt
//! leads to. It performs no IO and reads no clock and no randomness: events come in through
//! `handle_*` with the time (and the jitter) passed in, and what to do goes out as [`Effect`]s
//! through [`Tracker::poll_effect`]. `driver::follow` carries the effects out in a feed,
//! `driver::once` for one attempt outside it; the tests drive a tracker in simulated time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::event::{Event, SourceState, StateChange, Update, Warning};
use crate::failure;
use crate::git::{self, FetchError, ObjectId};
use crate::machine::{Action, ErrorKind, Health, Machine, Outcome, State};
use crate::reason::Reason;
use crate::source::Source;
use crate::status::Status;
use crate::work::{Fetched, Seen, Synced};

/// What the feed tells a running source.
#[derive(Debug)]
pub(crate) enum Control {
    /// Fetch now (a webhook, SIGHUP), unless the hinted commit is already here.
    Trigger(Option<ObjectId>),
    /// New settings for the same cache entry.
    Change(Box<Source>),
    /// The consumer has applied the update to this commit; the feed has recorded it.
    Acknowledged(ObjectId),
}

/// Work a [`Tracker`] asks its driver to carry out, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Start one attempt as `Order` says, and report its end with [`Tracker::handle_attempt`].
    Attempt(Order),
    /// Drop the repository handle kept between attempts: the next attempt opens the clone
    /// afresh. A clone found broken was deleted already, by the attempt that found it.
    TearDown,
    /// Send `event` to the consumer.
    Send(Event),
    /// Stage `update` for the source's `command`, send it, run the command, and report how it
    /// ended with [`Tracker::handle_exec_done`]. A failure to stage the update is the
    /// command's failure.
    Execute {
        /// The update, not yet sent.
        update: Update,
        /// The source's command.
        command: String,
    },
    /// Write `commit` to the cache as the acknowledged commit. The tracker counts it as
    /// acknowledged from now on; a write that fails is only logged, and a restart then begins
    /// from the commit on disk, which sends what came after it again.
    RecordAcknowledged(ObjectId),
    /// Write the status file.
    WriteStatus(Status),
}

/// How to run one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Order {
    /// What the consumer has: the attempt diffs against `seen.sent`.
    pub seen: Seen,
    /// When the timer that led to the attempt was due, if a timer did: for the schedule's log.
    pub due: Option<Instant>,
    /// How long the attempt may take, counted from its start: the wait for a fetch slot before
    /// it does not count. The driver cancels it at its start plus `limit`. Each URL (the
    /// source's and every mirror's) gets the whole timeout.
    pub limit: Duration,
}

/// How an attempt ended, as its driver reports it.
#[derive(Debug)]
pub(crate) struct Report {
    /// What the attempt found.
    pub result: Result<Fetched, FetchError>,
    /// What it left out, which the consumer should hear of.
    pub warnings: Vec<String>,
    /// When it ended, in milliseconds since the Unix epoch, for the status.
    pub ended_ms: u64,
}

/// How many of the commits sent last a tracker remembers, to tell an acknowledgement that
/// arrives late from a new one.
const SENT_REMEMBERED: usize = 64;

/// The rules of one followed source.
///
/// # Driving contract
///
/// - After every `handle_*` call, drain [`Tracker::poll_effect`] until it returns `None`,
///   carrying the effects out in order (the same is true after creating the tracker).
/// - An [`Effect::Attempt`] runs the attempt (on a thread of its own, after waiting for a fetch
///   slot) and cancels it once its [`Order::limit`] has passed since it started; its end is
///   reported once, with [`Tracker::handle_attempt`], with a random value in `[0, 1)` for the
///   schedule's jitter. An [`Effect::Execute`] is reported with [`Tracker::handle_exec_done`].
///   No other attempt is asked for until then.
/// - Read [`Tracker::poll_timeout`] after every `handle_*` call and call
///   [`Tracker::handle_timeout`] once that instant is reached; early or repeated calls do
///   nothing.
/// - Hand each [`Control`] to [`Tracker::handle_control`] as it arrives. One that arrives while
///   an attempt or its command runs is held and applied when that ends, in order. A trigger
///   hinting at a commit the source's clone already reaches is the driver's to drop: only it
///   can look into the clone (the tracker drops one for the commit it sent last).
///
/// # Rules
///
/// - **Sent and acknowledged.** Each update starts from the commit sent last (`seen.sent`);
///   after a start, from the acknowledged commit, or from nothing (a full listing) when the
///   source lists on start. An update whose command fails is not counted as sent: the next
///   attempt sends it again, from the same start.
/// - **Acknowledgements never go back.** The acknowledged commit moves to whatever the
///   consumer acknowledges, except to a commit this tracker sent before the one acknowledged
///   already: such an acknowledgement arrived late, and is ignored. The feed wrote it to the
///   cache on the caller's thread, so the newer commit is recorded again; and since that may
///   land over an acknowledgement the feed recorded meanwhile, every acknowledgement taken
///   after it is recorded again too. A commit the tracker never sent (or sent too long ago to
///   remember) is taken as the consumer says.
/// - **Nothing to apply.** An update without changes is never sent. Its commit is acknowledged
///   on the consumer's behalf when the consumer had acknowledged the commit the update starts
///   from; otherwise an update sent and not yet acknowledged could be lost at a restart.
/// - **Warnings.** A warning about an update goes out just before it, every time it is sent;
///   one with no update (an unsigned tip that stays) goes out when it differs from the last
///   one sent.
/// - **Failures.** The status records the failure and its reason; the next state event carries
///   the reason and what was said underneath. A failure that is not transient gives the
///   handle back at once; every way out of a failure tears it down before the next attempt.
/// - **Status.** Written once an attempt (and its command) has ended, before its state event,
///   and again whenever the acknowledged commit moves; but only when it tells a reader
///   something new (the state, a failure, the commit reached or acknowledged), or its times
///   are an hour newer than those on disk. A healthy poll that finds nothing new writes
///   nothing.
#[derive(Debug)]
pub(crate) struct Tracker {
    source: Source,
    machine: Machine,
    seen: Seen,
    /// The acknowledged commit at the start and the commits sent since, oldest first: at most
    /// [`SENT_REMEMBERED`], each repeat moved to the end.
    sent_order: VecDeque<ObjectId>,
    status: Status,
    /// What the status file holds, as far as this tracker knows: a status that tells a reader
    /// nothing new over it is not written (see [`Status::is_news_over`]).
    written: Option<Status>,
    /// Whether this is one attempt outside any feed ([`Tracker::once`]).
    alone: bool,
    /// Whether this tracker has written the acknowledged commit again over a late
    /// acknowledgement: from then on the cache may hold an older commit than one the feed
    /// recorded, so every acknowledgement it takes is written again.
    rerecorded: bool,
    /// The last warning sent, so that one with no update is news once.
    last_warning: Option<String>,
    /// Why the last attempt failed and what was said underneath, for the state event the
    /// machine asks for next.
    failure: Option<(Reason, Option<String>)>,
    /// When the timer that led to the coming attempt was due.
    due: Option<Instant>,
    phase: Phase,
    /// Controls that arrived while an attempt or its command ran.
    held: Vec<Control>,
    effects: VecDeque<Effect>,
}

/// Whether an attempt is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// None: waiting for the schedule or a control.
    Waiting,
    /// An attempt was asked for and has not been reported yet.
    Attempting,
    /// The attempt's update, from `old` to `new`, is with the source's command.
    Executing {
        old: Option<ObjectId>,
        new: ObjectId,
    },
}

impl Tracker {
    /// A tracker for `source` in a feed, whose first attempt is due at `now`. `acknowledged` is
    /// the commit the consumer acknowledged before, as the cache keeps it.
    pub fn new(source: Source, acknowledged: Option<ObjectId>, now: Instant) -> Self {
        let machine = Machine::new(source.policy(), now);
        let status = Status {
            state: "idle".into(),
            ..Status::default()
        };
        Self::with(source, machine, acknowledged, status)
    }

    /// A tracker for one attempt outside any feed, which starts at `now` and carries on from
    /// `status`, the status the source's attempt before it left (if any): failures count up
    /// across attempts, the last success is remembered, and an attempt after a failure tears
    /// the handle down first. A failed attempt (or command) gives its handle back at once,
    /// whatever the failure.
    pub fn once(
        source: Source,
        acknowledged: Option<ObjectId>,
        status: Option<Status>,
        now: Instant,
    ) -> Self {
        let written = status.clone();
        let status = status.unwrap_or_default();
        let after = status
            .reason
            .filter(|_| status.attempt > 0)
            .map(Reason::kind);
        let machine = Machine::resume(source.policy(), now, status.attempt, after);
        Self {
            alone: true,
            written,
            ..Self::with(source, machine, acknowledged, status)
        }
    }

    /// Tells the tracker what the status file holds already (the status a feed's source left
    /// before a restart), so that it is not written again unless something changed.
    pub fn with_written(mut self, written: Option<Status>) -> Self {
        self.written = written;
        self
    }

    fn with(
        source: Source,
        machine: Machine,
        acknowledged: Option<ObjectId>,
        mut status: Status,
    ) -> Self {
        status.source.clone_from(&source.name);
        status.url = git::redact_url(&source.url);
        status.reference.clone_from(&source.reference);
        status.acknowledged = hex(acknowledged);
        Self {
            seen: Seen {
                sent: acknowledged.filter(|_| !source.list_on_start),
                acknowledged,
            },
            sent_order: acknowledged.into_iter().collect(),
            source,
            machine,
            status,
            written: None,
            alone: false,
            rerecorded: false,
            last_warning: None,
            failure: None,
            due: None,
            phase: Phase::Waiting,
            held: Vec::new(),
            effects: VecDeque::new(),
        }
    }

    /// The source's settings in effect.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// What the consumer has been sent and has acknowledged.
    #[cfg(test)]
    pub fn seen(&self) -> Seen {
        self.seen
    }

    /// Time passed. Call when `now >= poll_timeout()`; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(due) = self.machine.poll_timeout()
            && now >= due
        {
            self.due = Some(due);
        }
        self.machine.handle_timeout(now);
    }

    /// The attempt asked for by the last [`Effect::Attempt`] ended as `report` says; `jitter`
    /// is a random value in `[0, 1)`. Ignored unless an attempt is out.
    pub fn handle_attempt(&mut self, now: Instant, report: Report, jitter: f64) {
        if self.phase != Phase::Attempting {
            return;
        }
        self.status.last_attempt_ms = Some(report.ended_ms);
        let fetched = match report.result {
            Ok(fetched) => fetched,
            Err(err) => return self.complete(now, Err(err), jitter),
        };
        self.status.record_success(fetched.tip, &fetched.served_by);
        let synced = fetched.synced;
        // Warnings first: the consumer hears what was left out before it applies the update.
        let delivering = synced.as_ref().is_some_and(|synced| !synced.is_empty());
        let about = synced.as_ref().map(|synced| synced.new.to_string());
        for message in report.warnings {
            if delivering || self.last_warning.as_ref() != Some(&message) {
                self.last_warning = Some(message.clone());
                self.effects.push_back(Effect::Send(Event::Warning(Warning {
                    source: self.source.name.clone(),
                    commit: about.clone(),
                    message,
                })));
            }
        }
        let Some(synced) = synced else {
            return self.complete(now, Ok(()), jitter);
        };
        let caught_up = self.seen.acknowledged == synced.old;
        self.sent(synced.new);
        if synced.is_empty() {
            if caught_up {
                self.record_acknowledged(synced.new);
            }
            return self.complete(now, Ok(()), jitter);
        }
        let (old, new) = (synced.old, synced.new);
        let update = self.update(synced);
        match self.source.exec.clone() {
            Some(command) => {
                self.phase = Phase::Executing { old, new };
                self.effects.push_back(Effect::Execute { update, command });
            }
            None => {
                self.effects.push_back(Effect::Send(Event::Update(update)));
                self.complete(now, Ok(()), jitter);
            }
        }
    }

    /// The command of the last [`Effect::Execute`] ended with `result` (`Ok` for exit status
    /// 0); `jitter` as for [`Tracker::handle_attempt`]. Its success acknowledges the update;
    /// its failure leaves the update to be sent again. Ignored unless a command runs.
    pub fn handle_exec_done(&mut self, now: Instant, result: Result<(), FetchError>, jitter: f64) {
        let Phase::Executing { old, new } = self.phase else {
            return;
        };
        match result {
            Ok(()) => self.record_acknowledged(new),
            // Not applied: the next attempt starts where this update started (a listing stays
            // a listing), so the same update is sent again.
            Err(_) => self.seen.sent = old,
        }
        self.complete(now, result, jitter);
    }

    /// `control` arrived from the feed.
    pub fn handle_control(&mut self, now: Instant, control: Control) {
        match self.phase {
            Phase::Waiting => self.apply(now, control),
            Phase::Attempting | Phase::Executing { .. } => self.held.push(control),
        }
    }

    /// Next effect to carry out, in order. Drain until `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<Effect> {
        if let Some(effect) = self.effects.pop_front() {
            return Some(effect);
        }
        // The machine's decisions come after the effects of what led to them: the status of
        // an attempt is written before its state event goes out.
        let effect = match self.machine.poll_action()? {
            Action::TearDown { delete_clone } => {
                if delete_clone {
                    log::debug!("{}: dropped the handle of a broken clone", self.source.name);
                }
                Effect::TearDown
            }
            Action::Fetch => {
                self.phase = Phase::Attempting;
                Effect::Attempt(Order {
                    seen: self.seen,
                    due: self.due.take(),
                    limit: self.attempt_limit(),
                })
            }
            Action::Emit(health) => Effect::Send(Event::State(self.state_change(health))),
        };
        Some(effect)
    }

    /// When [`Tracker::handle_timeout`] must next be called; `None` while an attempt or its
    /// command runs, or while failed with nothing timed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    /// Ends the attempt out with `result`: the machine decides what comes next, the status is
    /// written, and the controls held meanwhile are applied.
    fn complete(&mut self, now: Instant, result: Result<(), FetchError>, jitter: f64) {
        self.phase = Phase::Waiting;
        let outcome = match result {
            Ok(()) => Outcome::Success,
            Err(err) => self.failed(&err),
        };
        self.machine.handle_fetch_done(now, outcome, jitter);
        self.status.acknowledged = hex(self.seen.acknowledged);
        self.write_status();
        for control in std::mem::take(&mut self.held) {
            self.apply(now, control);
        }
    }

    /// Records the failure `err` in the status and for the next state event.
    fn failed(&mut self, err: &FetchError) -> Outcome {
        let told = failure::tell(&self.source, err);
        self.status.last_error = Some(told.headline.clone());
        self.status.reason = Some(err.reason);
        self.status.detail.clone_from(&told.detail);
        self.failure = Some((err.reason, told.detail));
        if err.kind != ErrorKind::Transient || self.alone {
            // The source may stay failed a long while: the handle, which may hold what caused
            // the failure, goes now rather than at the next attempt. Outside a feed no
            // schedule follows to tear it down on the way out of the failure, so it goes now
            // whatever the failure.
            self.effects.push_back(Effect::TearDown);
        }
        Outcome::Failure {
            kind: err.kind,
            error: told.headline,
        }
    }

    fn apply(&mut self, now: Instant, control: Control) {
        match control {
            Control::Acknowledged(commit) => self.acknowledged_by_consumer(commit),
            Control::Trigger(Some(hint)) if self.seen.sent == Some(hint) => {
                log::debug!(
                    "{}: trigger for {hint}, which is already here",
                    self.source.name
                );
            }
            Control::Trigger(_) => self.machine.handle_trigger(now),
            Control::Change(source) => {
                self.source = *source;
                self.machine
                    .handle_policy_changed(now, self.source.policy());
            }
        }
        let acknowledged = hex(self.seen.acknowledged);
        if self.status.acknowledged != acknowledged {
            self.status.acknowledged = acknowledged;
            self.write_status();
        }
    }

    /// The consumer acknowledged `commit` (the feed has recorded it).
    fn acknowledged_by_consumer(&mut self, commit: ObjectId) {
        if let Some(current) = self.seen.acknowledged
            && self.sent_before(commit, current)
        {
            log::debug!(
                "{}: the acknowledgement of {commit} came after that of {current}, which was \
                 sent later; {current} stays acknowledged",
                self.source.name
            );
            self.effects.push_back(Effect::RecordAcknowledged(current));
            self.rerecorded = true;
            return;
        }
        self.seen.acknowledged = Some(commit);
        if self.rerecorded {
            // The feed wrote `commit` before telling the source, perhaps before this tracker
            // wrote an older one again over it: it is written once more.
            self.effects.push_back(Effect::RecordAcknowledged(commit));
        }
    }

    /// True when both commits are remembered and `earlier` was sent before `later` (last
    /// sendings compared).
    fn sent_before(&self, earlier: ObjectId, later: ObjectId) -> bool {
        let position = |commit| self.sent_order.iter().rposition(|&sent| sent == commit);
        matches!(
            (position(earlier), position(later)),
            (Some(earlier), Some(later)) if earlier < later
        )
    }

    /// Acknowledges `commit` on the consumer's behalf.
    fn record_acknowledged(&mut self, commit: ObjectId) {
        self.seen.acknowledged = Some(commit);
        self.effects.push_back(Effect::RecordAcknowledged(commit));
    }

    /// The next update starts from `commit`.
    fn sent(&mut self, commit: ObjectId) {
        self.seen.sent = Some(commit);
        self.sent_order.retain(|&sent| sent != commit);
        self.sent_order.push_back(commit);
        if self.sent_order.len() > SENT_REMEMBERED {
            self.sent_order.pop_front();
        }
    }

    fn write_status(&mut self) {
        let (state, failures) = match self.machine.state() {
            State::Idle { .. } => ("idle", 0),
            State::Fetching { failures, .. } => ("fetching", *failures),
            State::Backoff { failures, .. } => ("backoff", *failures),
            State::Failed { failures, .. } => ("failed", *failures),
        };
        self.status.state = state.into();
        self.status.attempt = failures;
        if self
            .written
            .as_ref()
            .is_none_or(|written| self.status.is_news_over(written))
        {
            self.written = Some(self.status.clone());
            self.effects
                .push_back(Effect::WriteStatus(self.status.clone()));
        }
    }

    /// The whole time an attempt may take: every URL gets the source's timeout.
    fn attempt_limit(&self) -> Duration {
        let urls = u32::try_from(1 + self.source.mirrors.len()).unwrap_or(u32::MAX);
        self.source.timeout.saturating_mul(urls)
    }

    fn update(&self, synced: Synced) -> Update {
        Update {
            source: self.source.name.clone(),
            url: git::redact_url(&synced.url),
            reference: synced.reference,
            old: hex(synced.old),
            new: synced.new.to_string(),
            forced: synced.forced,
            changes: synced.changes,
        }
    }

    /// The state event for `health`, with the reason of the last failure and what was said
    /// underneath. The error says what happens next, after what failed.
    fn state_change(&self, health: Health) -> StateChange {
        let name = self.source.name.clone();
        let (reason, detail) = self.failure.clone().unzip();
        let detail = detail.flatten();
        match health {
            Health::Backoff {
                attempt,
                error,
                retry_in,
            } => StateChange {
                source: name,
                state: SourceState::Backoff,
                attempt: Some(attempt),
                reason,
                error: Some(format!(
                    "{error}; will retry in {}",
                    crate::clock::spoken(retry_in)
                )),
                detail,
                retry_in_ms: Some(millis(retry_in)),
            },
            Health::Failed {
                attempt,
                error,
                retry_in,
            } => StateChange {
                source: name,
                state: SourceState::Failed,
                attempt: Some(attempt),
                reason,
                error: Some(match retry_in {
                    Some(retry_in) => format!(
                        "{error}; gave up, will probe again in {}",
                        crate::clock::spoken(retry_in)
                    ),
                    None => format!("{error}; gave up until triggered or changed"),
                }),
                detail,
                retry_in_ms: retry_in.map(millis),
            },
            Health::Idle => StateChange {
                source: name,
                state: SourceState::Idle,
                attempt: None,
                reason: None,
                error: None,
                detail: None,
                retry_in_ms: None,
            },
        }
    }
}

/// `commit` as the hex text that events and the status carry.
fn hex(commit: Option<ObjectId>) -> Option<String> {
    commit.map(|commit| commit.to_string())
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
