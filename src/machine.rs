//! The schedule of one followed source: when to fetch, how long to back off after a failure, and
//! when to give up.
//!
//! [`Machine`] performs no IO and reads no clock. Its owner feeds it events together with the
//! current time and carries out the [`Action`]s it asks for, which keeps every timing decision
//! reproducible and testable without a network or a repository.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a failed fetch attempt is classed, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A failure that may go away by itself, such as a network error, a server error or a
    /// timeout. The attempt is retried after a backoff.
    Transient,
    /// A failure that retrying cannot fix, such as a missing ref, refused credentials or an
    /// invalid URL. The source fails at once and stays failed until it is triggered or changed.
    Permanent,
    /// The local clone is broken. Retried after a backoff like [`ErrorKind::Transient`], but the
    /// clone is deleted before the retry so that it is cloned afresh.
    Corrupt,
}

/// Timing settings of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Time from the end of a successful fetch to the start of the next one, at most: each
    /// poll comes up to a fifth early, at random, so that sources started together drift
    /// apart instead of polling their servers in step.
    pub interval: Duration,
    /// Backoff before the first retry; each further consecutive failure doubles it.
    pub backoff_initial: Duration,
    /// Ceiling of the backoff, applied before jitter. It also caps `backoff_initial`.
    pub backoff_max: Duration,
    /// Consecutive failures after which the source gives up instead of backing off again.
    /// `None` retries forever.
    pub max_failures: Option<u32>,
    /// Time from a failure that left the source [`State::Failed`] to the next attempt, the
    /// probe, at most: like polls, each probe comes up to a fifth early, at random. `None`
    /// stays failed until a trigger or a settings change.
    pub failed_interval: Option<Duration>,
}

/// Where a [`Machine`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Healthy, waiting for the next poll.
    Idle {
        /// When the next fetch is due.
        next_poll: Instant,
    },
    /// A fetch attempt is running.
    Fetching {
        /// Consecutive failures before this attempt.
        failures: u32,
        /// When the attempt started.
        since: Instant,
    },
    /// The last attempt failed; waiting before the retry.
    Backoff {
        /// When the retry is due.
        until: Instant,
        /// Consecutive failures so far, including the last attempt.
        failures: u32,
        /// Description of the last failure.
        error: String,
        /// Class of the last failure.
        kind: ErrorKind,
    },
    /// Given up: a failure retrying soon cannot fix. Left by a probe at `probe_at`, or by
    /// [`Machine::handle_trigger`] or [`Machine::handle_policy_changed`].
    Failed {
        /// Consecutive failures so far, including the last attempt.
        failures: u32,
        /// Description of the failure that ended the retries.
        error: String,
        /// Class of the failure that ended the retries.
        kind: ErrorKind,
        /// When the next attempt is due, one [`Policy::failed_interval`] after the failure;
        /// `None` when the policy has no such interval.
        probe_at: Option<Instant>,
    },
}

/// Work a [`Machine`] asks its owner to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Drop the source's repository handle and its in-memory cache entry; when `delete_clone`,
    /// also delete the on-disk clone.
    ///
    /// Always directly followed by [`Action::Fetch`], which must not start before the teardown
    /// has finished.
    TearDown {
        /// Whether the on-disk clone must be deleted too, because the last failure was
        /// [`ErrorKind::Corrupt`].
        delete_clone: bool,
    },
    /// Start one fetch attempt. The owner reports its end with [`Machine::handle_fetch_done`].
    Fetch,
    /// Tell the consumer the source's health changed.
    Emit(Health),
}

/// Health of a source as reported to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// An attempt failed and will be retried.
    Backoff {
        /// Consecutive failures so far, 1 for the first.
        attempt: u32,
        /// Description of the failure.
        error: String,
        /// Time until the retry.
        retry_in: Duration,
    },
    /// An attempt failed and no retry will follow soon: the next attempt is a probe after
    /// `retry_in`, if the policy has a [`Policy::failed_interval`].
    Failed {
        /// Consecutive failures so far, 1 for the first.
        attempt: u32,
        /// Description of the failure.
        error: String,
        /// Time until the probe, or `None` when only a trigger or a settings change leads to
        /// another attempt.
        retry_in: Option<Duration>,
    },
    /// The source recovered: a fetch succeeded after a reported failure.
    Idle,
}

/// How a fetch attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The attempt succeeded.
    Success,
    /// The attempt failed.
    Failure {
        /// Class of the failure.
        kind: ErrorKind,
        /// Description of the failure, passed on to the consumer.
        error: String,
    },
}

/// The fetch schedule of one source.
///
/// # Driving contract
///
/// - After every `handle_*` call, drain [`Machine::poll_action`] until it returns `None`,
///   carrying out the actions in order. An [`Action::TearDown`] must finish before the
///   [`Action::Fetch`] that follows it starts.
/// - At most one attempt runs at a time. When the attempt started by an [`Action::Fetch`] ends,
///   call [`Machine::handle_fetch_done`] with its outcome and a random value in `[0, 1)`.
/// - After every `handle_*` call, read [`Machine::poll_timeout`] again and arrange for
///   [`Machine::handle_timeout`] to be called once that instant is reached. Early or repeated
///   calls do nothing, so a timer that fires too soon is harmless.
/// - Call [`Machine::handle_trigger`] when a fetch is wanted now, and
///   [`Machine::handle_policy_changed`] when the source's settings changed.
///
/// A failed source is not a dead end: with a [`Policy::failed_interval`], the timeout of the
/// failed state starts a probe, which tears down like every other way out of a failure. A
/// probe that fails again stays failed (unless its failure is transient and the limit of
/// failures is not reached, when it backs off) and reports when the next probe is due; one
/// that succeeds reports the recovery.
///
/// A trigger or a settings change that arrives while an attempt runs is remembered (at most
/// once) and answered once the attempt ends:
///
/// - If the attempt succeeds, the next attempt starts right away, within the same
///   `handle_fetch_done` call, rather than via a zero timeout.
/// - If the attempt fails, a remembered trigger is dropped and the failure takes its usual
///   course: the attempt started before the trigger but failing now says the remote or the clone
///   is unhealthy right now, and retrying at once would defeat the backoff. A later trigger still
///   cuts the backoff short or leaves the failed state.
/// - If the attempt fails and the settings changed meanwhile, the failure belongs to the old
///   settings: it is not counted or reported, and a new attempt starts at once, after a
///   teardown.
///
/// The test `a_walk_through` in this module's tests drives a machine through a failure and a
/// recovery, as a driver does.
#[derive(Debug, Clone)]
pub struct Machine {
    policy: Policy,
    state: State,
    actions: VecDeque<Action>,
    /// A trigger or settings change that arrived while fetching.
    pending: Option<Pending>,
    /// Whether the last health the consumer heard of is a failure, so that recovery is reported
    /// exactly once.
    unhealthy: bool,
}

impl Machine {
    /// A new machine whose first fetch is due at `now`.
    pub fn new(policy: Policy, now: Instant) -> Self {
        Self {
            policy,
            state: State::Idle { next_poll: now },
            actions: VecDeque::new(),
            pending: None,
            unhealthy: false,
        }
    }

    /// A machine whose attempt starts at `now`, continuing a count of `failures` consecutive
    /// failures, the last of class `after`: one attempt outside a feed carries on from the
    /// status the attempt before it left. As every way out of a failure does, it tears down
    /// first when `after` is set.
    pub fn resume(policy: Policy, now: Instant, failures: u32, after: Option<ErrorKind>) -> Self {
        let mut machine = Self::new(policy, now);
        machine.unhealthy = after.is_some();
        machine.start(now, failures, after);
        machine
    }

    /// Where the machine stands.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The settings in effect.
    #[cfg(test)]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Time passed.
    ///
    /// Call when `now >= poll_timeout()`; spurious or early calls are no-ops, so calling again
    /// with the same `now` does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Idle { next_poll } if now >= next_poll => self.start(now, 0, None),
            State::Backoff {
                until,
                failures,
                kind,
                ..
            } if now >= until => self.start(now, failures, Some(kind)),
            // The probe keeps the count, so a probe that fails transiently after
            // `max_failures` goes straight back to failed instead of backing off anew.
            State::Failed {
                probe_at: Some(at),
                failures,
                kind,
                ..
            } if now >= at => self.start(now, failures, Some(kind)),
            _ => {}
        }
    }

    /// The attempt started by the last [`Action::Fetch`] ended with `outcome`.
    ///
    /// `jitter` is a random value in `[0, 1)` supplied by the owner (values outside are
    /// clamped): it takes up to a fifth off the interval before the next poll or probe, or up
    /// to half off a backoff. Ignored unless an attempt is running.
    pub fn handle_fetch_done(&mut self, now: Instant, outcome: Outcome, jitter: f64) {
        let State::Fetching { failures, .. } = self.state else {
            return;
        };
        let pending = self.pending.take();

        let (kind, error) = match outcome {
            Outcome::Success => {
                if self.unhealthy {
                    self.unhealthy = false;
                    self.actions.push_back(Action::Emit(Health::Idle));
                }
                match pending {
                    Some(_) => self.start(now, 0, None),
                    None => {
                        self.state = State::Idle {
                            next_poll: deadline(
                                now,
                                jittered(self.policy.interval, jitter, POLL_SPREAD),
                            ),
                        }
                    }
                }
                return;
            }
            Outcome::Failure { kind, error } => (kind, error),
        };

        if pending == Some(Pending::Changed) {
            self.start(now, failures, Some(kind));
            return;
        }

        let failures = failures.saturating_add(1);
        self.unhealthy = true;
        let exhausted = self.policy.max_failures.is_some_and(|max| failures >= max);
        if kind == ErrorKind::Permanent || exhausted {
            let retry_in = self
                .policy
                .failed_interval
                .map(|interval| jittered(interval, jitter, POLL_SPREAD));
            self.actions.push_back(Action::Emit(Health::Failed {
                attempt: failures,
                error: error.clone(),
                retry_in,
            }));
            self.state = State::Failed {
                failures,
                error,
                kind,
                probe_at: retry_in.map(|retry_in| deadline(now, retry_in)),
            };
            return;
        }

        let retry_in = jittered(backoff_base(&self.policy, failures), jitter, BACKOFF_SPREAD);
        self.actions.push_back(Action::Emit(Health::Backoff {
            attempt: failures,
            error: error.clone(),
            retry_in,
        }));
        self.state = State::Backoff {
            until: deadline(now, retry_in),
            failures,
            error,
            kind,
        };
    }

    /// Fetch now.
    ///
    /// From idle, fetches at once. From a backoff, tears down and fetches, keeping the failure
    /// count. From the failed state, tears down and fetches with the failure count reset. While
    /// fetching, fetches again once the running attempt ends (see the type docs); several
    /// triggers during one attempt count as one.
    pub fn handle_trigger(&mut self, now: Instant) {
        self.trigger(now, Pending::Trigger);
    }

    /// The source's settings changed: adopt `policy`, then behave like
    /// [`Machine::handle_trigger`].
    ///
    /// This also leaves the failed state, since the failure may have been caused by the old
    /// settings. An identical `policy` is treated the same way.
    pub fn handle_policy_changed(&mut self, now: Instant, policy: Policy) {
        self.policy = policy;
        self.trigger(now, Pending::Changed);
    }

    /// Next action to carry out, in order. Drain until `None` after every `handle_*` call.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Machine::handle_timeout`] must next be called; `None` while fetching, or
    /// failed without a [`Policy::failed_interval`], when nothing is timed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle { next_poll } => Some(next_poll),
            State::Backoff { until, .. } => Some(until),
            State::Failed { probe_at, .. } => probe_at,
            State::Fetching { .. } => None,
        }
    }

    fn trigger(&mut self, now: Instant, why: Pending) {
        match self.state {
            State::Idle { .. } => self.start(now, 0, None),
            State::Fetching { .. } => self.pending = self.pending.max(Some(why)),
            State::Backoff { failures, kind, .. } => self.start(now, failures, Some(kind)),
            State::Failed { kind, .. } => self.start(now, 0, Some(kind)),
        }
    }

    /// Starts an attempt. `after` is the class of the failure being left behind, if any: the
    /// handle that failed may hold state that caused the failure, so it is not reused.
    fn start(&mut self, now: Instant, failures: u32, after: Option<ErrorKind>) {
        if let Some(kind) = after {
            self.actions.push_back(Action::TearDown {
                delete_clone: kind == ErrorKind::Corrupt,
            });
        }
        self.actions.push_back(Action::Fetch);
        self.state = State::Fetching {
            failures,
            since: now,
        };
    }
}

/// The delay before retry number `failures` (1-based), before jitter.
///
/// This is `min(backoff_max, backoff_initial * 2^(failures - 1))`, saturating rather than
/// overflowing for any `failures`; `0` is treated like `1`.
pub fn backoff_base(policy: &Policy, failures: u32) -> Duration {
    // Zero times any power of two is zero, even one too large to compute.
    if policy.backoff_initial.is_zero() {
        return Duration::ZERO;
    }
    2u32.checked_pow(failures.saturating_sub(1))
        .and_then(|factor| policy.backoff_initial.checked_mul(factor))
        .unwrap_or(Duration::MAX)
        .min(policy.backoff_max)
}

/// Which of the events that can arrive while fetching is remembered; a settings change
/// outranks a trigger because it also survives a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    Trigger,
    Changed,
}

/// Jitter takes up to half off a backoff ("equal jitter"): sources failing together spread
/// their retries while each still waits at least half the base delay.
const BACKOFF_SPREAD: u32 = 2;

/// Jitter takes up to a fifth off the poll interval.
const POLL_SPREAD: u32 = 5;

/// Takes up to `base / spread` off `base`, in proportion to `jitter`.
fn jittered(base: Duration, jitter: f64, spread: u32) -> Duration {
    // NaN survives `clamp`; treat it like no jitter.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let most = base / spread.max(2);
    // Float rounding may land slightly above `most`; capping keeps the result at least
    // `base - most`, which is never zero for a nonzero `base`.
    let cut =
        Duration::try_from_secs_f64(most.as_secs_f64() * jitter).map_or(most, |cut| cut.min(most));
    base - cut
}

/// `now + delay`, or the farthest of a few fallbacks if that instant cannot be represented:
/// a delay that large means "not in any foreseeable future" and must not panic.
fn deadline(now: Instant, delay: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);
    const FALLBACKS: [Duration; 4] = [
        YEAR.saturating_mul(100),
        YEAR,
        Duration::from_secs(24 * 60 * 60),
        Duration::from_secs(60 * 60),
    ];
    now.checked_add(delay)
        .or_else(|| {
            FALLBACKS
                .iter()
                .find_map(|&fallback| now.checked_add(fallback))
        })
        .unwrap_or(now)
}

#[cfg(test)]
mod tests;
