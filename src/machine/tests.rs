//! The schedule's tests, in simulated time.

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn policy() -> Policy {
    Policy {
        interval: secs(60),
        backoff_initial: secs(1),
        backoff_max: secs(8),
        max_failures: None,
        failed_interval: None,
    }
}

fn failure(kind: ErrorKind) -> Outcome {
    Outcome::Failure {
        kind,
        error: format!("{kind:?} failure"),
    }
}

fn drain(machine: &mut Machine) -> Vec<Action> {
    std::iter::from_fn(|| machine.poll_action()).collect()
}

/// A machine whose first attempt is running, started at `t0`.
fn fetching(policy: Policy, t0: Instant) -> Machine {
    let mut machine = Machine::new(policy, t0);
    machine.handle_timeout(t0);
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    machine
}

fn backoff(attempt: u32, kind: ErrorKind, retry_in: Duration) -> Action {
    Action::Emit(Health::Backoff {
        attempt,
        error: format!("{kind:?} failure"),
        retry_in,
    })
}

fn failed(attempt: u32, kind: ErrorKind) -> Action {
    probe_due(attempt, kind, None)
}

/// The report of a failure that ends the retries, with its probe due after `retry_in`.
fn probe_due(attempt: u32, kind: ErrorKind, retry_in: Option<Duration>) -> Action {
    Action::Emit(Health::Failed {
        attempt,
        error: format!("{kind:?} failure"),
        retry_in,
    })
}

const TEAR_DOWN: Action = Action::TearDown {
    delete_clone: false,
};

#[test]
fn first_fetch_is_due_at_creation() {
    let t0 = Instant::now();
    let mut machine = Machine::new(policy(), t0);
    assert_eq!(machine.poll_timeout(), Some(t0));
    assert_eq!(machine.state(), &State::Idle { next_poll: t0 });
    assert_eq!(drain(&mut machine), vec![]);

    machine.handle_timeout(t0);
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0
        }
    );
    assert_eq!(machine.poll_timeout(), None);
    assert_eq!(machine.policy(), &policy());
}

#[test]
fn polls_come_up_to_a_fifth_early() {
    let t0 = Instant::now();
    for (jitter, early) in [(0.5, secs(6)), (0.999_999, secs(12)), (1.0, secs(12))] {
        let mut machine = fetching(policy(), t0);
        machine.handle_fetch_done(t0, Outcome::Success, jitter);
        let next = machine.poll_timeout().expect("idle");
        let expected = t0 + secs(60) - early;
        let off = next.max(expected) - next.min(expected);
        assert!(off < Duration::from_millis(1), "jitter {jitter}: {next:?}");
    }
}

#[test]
fn success_polls_again_after_interval() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0 + secs(2), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(
        machine.state(),
        &State::Idle {
            next_poll: t0 + secs(62)
        }
    );
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(62)));

    machine.handle_timeout(t0 + secs(61));
    assert_eq!(drain(&mut machine), vec![]);
    machine.handle_timeout(t0 + secs(62));
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0 + secs(62)
        }
    );
}

#[test]
fn success_after_failures_reports_recovery_once() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(1, ErrorKind::Transient, secs(1))]
    );
    machine.handle_timeout(t0 + secs(1));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(2, ErrorKind::Transient, secs(2))]
    );
    machine.handle_timeout(t0 + secs(3));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 2,
            since: t0 + secs(3)
        }
    );

    machine.handle_fetch_done(t0 + secs(4), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Emit(Health::Idle)]);
    assert_eq!(
        machine.state(),
        &State::Idle {
            next_poll: t0 + secs(64)
        }
    );

    machine.handle_timeout(t0 + secs(64));
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(65), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    let mut now = t0;
    for (attempt, expected) in [1, 2, 4, 8, 8, 8].into_iter().enumerate() {
        let attempt = attempt as u32 + 1;
        machine.handle_fetch_done(now, failure(ErrorKind::Transient), 0.0);
        assert_eq!(
            drain(&mut machine),
            vec![backoff(attempt, ErrorKind::Transient, secs(expected))]
        );
        assert_eq!(machine.poll_timeout(), Some(now + secs(expected)));
        now += secs(expected);
        machine.handle_timeout(now);
        assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    }
}

#[test]
fn backoff_base_saturates() {
    let policy = policy();
    assert_eq!(backoff_base(&policy, 0), secs(1));
    assert_eq!(backoff_base(&policy, 1), secs(1));
    assert_eq!(backoff_base(&policy, 3), secs(4));
    assert_eq!(backoff_base(&policy, 33), secs(8));
    assert_eq!(backoff_base(&policy, u32::MAX), secs(8));

    let unbounded = Policy {
        backoff_max: Duration::MAX,
        ..policy.clone()
    };
    assert_eq!(backoff_base(&unbounded, 32), secs(1 << 31));
    assert_eq!(backoff_base(&unbounded, 33), Duration::MAX);
    assert_eq!(backoff_base(&unbounded, u32::MAX), Duration::MAX);
    let huge = Policy {
        backoff_initial: Duration::MAX,
        ..unbounded.clone()
    };
    assert_eq!(backoff_base(&huge, 2), Duration::MAX);

    let zero = Policy {
        backoff_initial: Duration::ZERO,
        ..unbounded
    };
    assert_eq!(backoff_base(&zero, u32::MAX), Duration::ZERO);

    let inverted = Policy {
        backoff_initial: secs(10),
        backoff_max: secs(3),
        ..policy
    };
    assert_eq!(backoff_base(&inverted, 1), secs(3));
}

#[test]
fn jitter_takes_at_most_half() {
    let base = secs(4);
    assert_eq!(jittered(base, 0.0, BACKOFF_SPREAD), base);
    let most = jittered(base, 0.999, BACKOFF_SPREAD);
    assert!(most >= secs(2) && most <= ms(2_003), "{most:?}");
    assert_eq!(jittered(base, 1.0, BACKOFF_SPREAD), secs(2));
    assert_eq!(jittered(base, 7.0, BACKOFF_SPREAD), secs(2));
    assert_eq!(jittered(base, -3.0, BACKOFF_SPREAD), base);
    assert_eq!(jittered(base, f64::NAN, BACKOFF_SPREAD), base);
    assert_eq!(
        jittered(Duration::from_nanos(1), 1.0, BACKOFF_SPREAD),
        Duration::from_nanos(1)
    );
    assert_eq!(
        jittered(Duration::from_nanos(3), 1.0, BACKOFF_SPREAD),
        Duration::from_nanos(2)
    );
    assert_eq!(
        jittered(Duration::ZERO, 0.5, BACKOFF_SPREAD),
        Duration::ZERO
    );
    assert!(jittered(Duration::MAX, 1.0, BACKOFF_SPREAD) >= Duration::MAX / 2);
}

#[test]
fn jitter_applies_to_the_backoff() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.999);
    let actions = drain(&mut machine);
    let [Action::Emit(Health::Backoff { retry_in, .. })] = actions[..] else {
        panic!("unexpected actions: {actions:?}");
    };
    assert!(retry_in >= ms(500) && retry_in <= ms(501), "{retry_in:?}");
    assert_eq!(machine.poll_timeout(), Some(t0 + retry_in));

    machine.handle_timeout(t0 + retry_in);
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(2, ErrorKind::Transient, secs(2))]
    );
}

#[test]
fn max_failures_gives_up() {
    let t0 = Instant::now();
    let policy = Policy {
        max_failures: Some(3),
        ..policy()
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(1, ErrorKind::Transient, secs(1))]
    );
    machine.handle_timeout(t0 + secs(1));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(2, ErrorKind::Transient, secs(2))]
    );
    machine.handle_timeout(t0 + secs(3));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(3), failure(ErrorKind::Transient), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(3, ErrorKind::Transient)]);
    assert_eq!(
        machine.state(),
        &State::Failed {
            failures: 3,
            error: "Transient failure".into(),
            kind: ErrorKind::Transient,
            probe_at: None,
        }
    );
    assert_eq!(machine.poll_timeout(), None);
}

#[test]
fn zero_max_failures_gives_up_on_the_first_failure() {
    let t0 = Instant::now();
    let policy = Policy {
        max_failures: Some(0),
        ..policy()
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Corrupt), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(1, ErrorKind::Corrupt)]);
}

#[test]
fn permanent_failure_gives_up_at_once() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Permanent), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(1, ErrorKind::Permanent)]);
    assert_eq!(
        machine.state(),
        &State::Failed {
            failures: 1,
            error: "Permanent failure".into(),
            kind: ErrorKind::Permanent,
            probe_at: None,
        }
    );
    assert_eq!(machine.poll_timeout(), None);
}

#[test]
fn permanent_failure_after_transient_ones_counts_them() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(1));
    assert_eq!(
        drain(&mut machine),
        vec![
            backoff(1, ErrorKind::Transient, secs(1)),
            TEAR_DOWN,
            Action::Fetch
        ]
    );
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Permanent), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(2, ErrorKind::Permanent)]);
}

#[test]
fn failed_stays_failed_on_timeouts() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    drain(&mut machine);
    let state = machine.state().clone();
    for later in [secs(0), secs(1), secs(60), secs(1_000_000)] {
        machine.handle_timeout(t0 + later);
        assert_eq!(drain(&mut machine), vec![]);
        assert_eq!(machine.state(), &state);
        assert_eq!(machine.poll_timeout(), None);
    }
}

fn probing(failed_interval: Duration) -> Policy {
    Policy {
        failed_interval: Some(failed_interval),
        ..policy()
    }
}

#[test]
fn failed_is_probed_after_the_failed_interval() {
    let t0 = Instant::now();
    let mut machine = fetching(probing(secs(600)), t0);
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Permanent), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![probe_due(1, ErrorKind::Permanent, Some(secs(600)))]
    );
    assert_eq!(
        machine.state(),
        &State::Failed {
            failures: 1,
            error: "Permanent failure".into(),
            kind: ErrorKind::Permanent,
            probe_at: Some(t0 + secs(601)),
        }
    );
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(601)));

    // Early timeouts do nothing.
    machine.handle_timeout(t0 + secs(600));
    assert_eq!(drain(&mut machine), vec![]);

    // The probe leaves the failure like every other exit: teardown first.
    machine.handle_timeout(t0 + secs(601));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 1,
            since: t0 + secs(601)
        }
    );
    machine.handle_timeout(t0 + secs(601));
    assert_eq!(drain(&mut machine), vec![], "one probe per due time");

    machine.handle_fetch_done(t0 + secs(602), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Emit(Health::Idle)]);
    assert_eq!(
        machine.state(),
        &State::Idle {
            next_poll: t0 + secs(662)
        }
    );
}

#[test]
fn a_probe_that_fails_again_stays_failed() {
    let t0 = Instant::now();
    let policy = Policy {
        max_failures: Some(2),
        ..probing(secs(600))
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(1));
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![
            backoff(1, ErrorKind::Transient, secs(1)),
            TEAR_DOWN,
            Action::Fetch,
            probe_due(2, ErrorKind::Transient, Some(secs(600))),
        ]
    );

    // Still down at the probe: failed again at once, not a new round of backoffs, and the
    // next probe is one interval later.
    machine.handle_timeout(t0 + secs(601));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(602), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![probe_due(3, ErrorKind::Transient, Some(secs(600)))]
    );
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(1202)));

    // A permanent failure at the next probe stays failed too.
    machine.handle_timeout(t0 + secs(1202));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(1203), failure(ErrorKind::Permanent), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![probe_due(4, ErrorKind::Permanent, Some(secs(600)))]
    );
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(1803)));
}

#[test]
fn a_probe_that_fails_transiently_without_a_limit_backs_off() {
    let t0 = Instant::now();
    let mut machine = fetching(probing(secs(600)), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![probe_due(1, ErrorKind::Permanent, Some(secs(600)))]
    );
    machine.handle_timeout(t0 + secs(600));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    // The remote is fixed but the network is flaky: retried with backoff as usual.
    machine.handle_fetch_done(t0 + secs(600), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(2, ErrorKind::Transient, secs(2))]
    );
    machine.handle_timeout(t0 + secs(602));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
}

#[test]
fn probing_a_corrupt_failure_deletes_the_clone() {
    let t0 = Instant::now();
    let policy = Policy {
        max_failures: Some(1),
        ..probing(secs(60))
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Corrupt), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![probe_due(1, ErrorKind::Corrupt, Some(secs(60)))]
    );
    machine.handle_timeout(t0 + secs(60));
    assert_eq!(
        drain(&mut machine),
        vec![Action::TearDown { delete_clone: true }, Action::Fetch]
    );
}

#[test]
fn probes_come_up_to_a_fifth_early() {
    let t0 = Instant::now();
    for (jitter, early) in [(0.5, secs(60)), (1.0, secs(120))] {
        let mut machine = fetching(probing(secs(600)), t0);
        machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), jitter);
        let retry_in = secs(600) - early;
        assert_eq!(
            drain(&mut machine),
            vec![probe_due(1, ErrorKind::Permanent, Some(retry_in))]
        );
        assert_eq!(machine.poll_timeout(), Some(t0 + retry_in));
    }
}

#[test]
fn a_trigger_while_a_probe_is_due_probes_at_once() {
    let t0 = Instant::now();
    let mut machine = fetching(probing(secs(600)), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    drain(&mut machine);
    machine.handle_trigger(t0 + secs(5));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0 + secs(5)
        }
    );
    // The probe that was due is gone with the failed state.
    machine.handle_timeout(t0 + secs(600));
    assert_eq!(drain(&mut machine), vec![]);
}

#[test]
fn trigger_leaves_failed() {
    let t0 = Instant::now();
    let policy = Policy {
        max_failures: Some(2),
        ..policy()
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(1));
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![
            backoff(1, ErrorKind::Transient, secs(1)),
            TEAR_DOWN,
            Action::Fetch,
            failed(2, ErrorKind::Transient)
        ]
    );

    machine.handle_trigger(t0 + secs(100));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0 + secs(100)
        }
    );

    // The count starts over, so the next failure backs off again instead of failing.
    machine.handle_fetch_done(t0 + secs(101), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(1, ErrorKind::Transient, secs(1))]
    );
    machine.handle_trigger(t0 + secs(101));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(102), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Emit(Health::Idle)]);
}

#[test]
fn success_after_leaving_failed_reports_recovery() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(1, ErrorKind::Permanent)]);
    machine.handle_trigger(t0 + secs(5));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(6), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Emit(Health::Idle)]);
    assert_eq!(
        machine.state(),
        &State::Idle {
            next_poll: t0 + secs(66)
        }
    );
}

#[test]
fn trigger_cuts_backoff_short() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(1));
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    drain(&mut machine);
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(3)));

    machine.handle_trigger(t0 + ms(1_500));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 2,
            since: t0 + ms(1_500)
        }
    );

    // The failure count survives the trigger, so the backoff keeps growing.
    machine.handle_fetch_done(t0 + secs(2), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(3, ErrorKind::Transient, secs(4))]
    );
}

#[test]
fn trigger_from_idle_fetches_without_teardown() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, Outcome::Success, 0.0);
    machine.handle_trigger(t0 + secs(10));
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0 + secs(10)
        }
    );
}

#[test]
fn trigger_while_fetching_fetches_again_after_success() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_trigger(t0 + secs(1));
    machine.handle_trigger(t0 + secs(2));
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0
        }
    );

    machine.handle_fetch_done(t0 + secs(3), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0 + secs(3)
        }
    );

    // Both triggers were answered by that one extra attempt.
    machine.handle_fetch_done(t0 + secs(4), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(
        machine.state(),
        &State::Idle {
            next_poll: t0 + secs(64)
        }
    );
}

#[test]
fn trigger_while_fetching_recovers_then_fetches_again() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(1));
    drain(&mut machine);
    machine.handle_trigger(t0 + secs(1));
    machine.handle_fetch_done(t0 + secs(2), Outcome::Success, 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![Action::Emit(Health::Idle), Action::Fetch]
    );
}

#[test]
fn trigger_while_fetching_is_dropped_on_failure() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_trigger(t0 + secs(1));
    machine.handle_fetch_done(t0 + secs(2), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(1, ErrorKind::Transient, secs(1))]
    );
    machine.handle_timeout(t0 + secs(3));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);

    machine.handle_trigger(t0 + secs(3));
    machine.handle_fetch_done(t0 + secs(4), failure(ErrorKind::Permanent), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(2, ErrorKind::Permanent)]);
    assert_eq!(machine.poll_timeout(), None);

    // The earlier trigger is gone: the next attempt succeeding polls on schedule.
    machine.handle_trigger(t0 + secs(5));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(6), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Emit(Health::Idle)]);
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(66)));
}

#[test]
fn corrupt_failure_deletes_the_clone() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Corrupt), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(1, ErrorKind::Corrupt, secs(1))]
    );
    assert_eq!(
        machine.state(),
        &State::Backoff {
            until: t0 + secs(1),
            failures: 1,
            error: "Corrupt failure".into(),
            kind: ErrorKind::Corrupt
        }
    );
    machine.handle_timeout(t0 + secs(1));
    assert_eq!(
        drain(&mut machine),
        vec![Action::TearDown { delete_clone: true }, Action::Fetch]
    );

    // Only the last failure decides.
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(3));
    assert_eq!(
        drain(&mut machine),
        vec![
            backoff(2, ErrorKind::Transient, secs(2)),
            TEAR_DOWN,
            Action::Fetch
        ]
    );
}

#[test]
fn corrupt_failure_deletes_the_clone_when_leaving_failed() {
    let t0 = Instant::now();
    let policy = Policy {
        max_failures: Some(1),
        ..policy()
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Corrupt), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(1, ErrorKind::Corrupt)]);
    machine.handle_trigger(t0 + secs(1));
    assert_eq!(
        drain(&mut machine),
        vec![Action::TearDown { delete_clone: true }, Action::Fetch]
    );
}

#[test]
fn policy_change_adopts_the_policy_and_fetches() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, Outcome::Success, 0.0);
    let faster = Policy {
        interval: secs(5),
        ..policy()
    };
    machine.handle_policy_changed(t0 + secs(10), faster.clone());
    assert_eq!(machine.policy(), &faster);
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    machine.handle_fetch_done(t0 + secs(11), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(16)));
}

#[test]
fn policy_change_cuts_backoff_short() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Corrupt), 0.0);
    drain(&mut machine);
    let slower = Policy {
        backoff_initial: secs(10),
        backoff_max: secs(100),
        ..policy()
    };
    machine.handle_policy_changed(t0 + ms(100), slower);
    assert_eq!(
        drain(&mut machine),
        vec![Action::TearDown { delete_clone: true }, Action::Fetch]
    );
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(2, ErrorKind::Transient, secs(20))]
    );
}

#[test]
fn policy_change_leaves_failed() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    drain(&mut machine);
    machine.handle_policy_changed(t0 + secs(30), policy());
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 0,
            since: t0 + secs(30)
        }
    );
}

#[test]
fn policy_change_while_fetching_retries_a_stale_failure() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    machine.handle_timeout(t0 + secs(1));
    drain(&mut machine);

    machine.handle_policy_changed(t0 + secs(2), policy());
    machine.handle_trigger(t0 + secs(2));
    assert_eq!(drain(&mut machine), vec![]);
    machine.handle_fetch_done(t0 + secs(3), failure(ErrorKind::Permanent), 0.0);
    // Neither counted nor reported.
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 1,
            since: t0 + secs(3)
        }
    );

    machine.handle_fetch_done(t0 + secs(4), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(2, ErrorKind::Transient, secs(2))]
    );
}

#[test]
fn policy_change_while_fetching_fetches_again_after_success() {
    let t0 = Instant::now();
    let mut machine = fetching(policy(), t0);
    machine.handle_policy_changed(t0 + secs(1), policy());
    assert_eq!(drain(&mut machine), vec![]);
    machine.handle_fetch_done(t0 + secs(2), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
}

#[test]
fn spurious_timeouts_do_nothing() {
    let t0 = Instant::now();
    let mut machine = Machine::new(policy(), t0 + secs(10));
    machine.handle_timeout(t0 + secs(9));
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(
        machine.state(),
        &State::Idle {
            next_poll: t0 + secs(10)
        }
    );

    machine.handle_timeout(t0 + secs(10));
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    // Repeating the call that started the attempt must not start another one.
    machine.handle_timeout(t0 + secs(10));
    machine.handle_timeout(t0 + secs(1_000));
    assert_eq!(drain(&mut machine), vec![]);

    machine.handle_fetch_done(t0 + secs(10), failure(ErrorKind::Transient), 0.0);
    drain(&mut machine);
    let state = machine.state().clone();
    machine.handle_timeout(t0 + ms(10_999));
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(machine.state(), &state);
}

#[test]
fn fetch_done_without_an_attempt_is_ignored() {
    let t0 = Instant::now();
    let mut machine = Machine::new(policy(), t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(machine.state(), &State::Idle { next_poll: t0 });

    machine.handle_timeout(t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.0);
    drain(&mut machine);
    let state = machine.state().clone();
    machine.handle_fetch_done(t0, Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(machine.state(), &state);

    machine.handle_timeout(t0 + secs(1));
    machine.handle_fetch_done(t0 + secs(1), failure(ErrorKind::Permanent), 0.0);
    drain(&mut machine);
    let state = machine.state().clone();
    machine.handle_fetch_done(t0 + secs(1), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(machine.state(), &state);
}

#[test]
fn time_going_backwards_does_not_panic() {
    let t0 = Instant::now() + secs(100);
    let mut machine = Machine::new(policy(), t0);
    machine.handle_timeout(t0 - secs(50));
    assert_eq!(drain(&mut machine), vec![]);

    machine.handle_timeout(t0);
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    machine.handle_fetch_done(t0 - secs(30), Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![]);
    assert_eq!(machine.poll_timeout(), Some(t0 + secs(30)));

    machine.handle_timeout(t0 + secs(30));
    assert_eq!(drain(&mut machine), vec![Action::Fetch]);
    machine.handle_fetch_done(t0 - secs(100), failure(ErrorKind::Transient), 0.0);
    assert_eq!(
        drain(&mut machine),
        vec![backoff(1, ErrorKind::Transient, secs(1))]
    );
    assert_eq!(machine.poll_timeout(), Some(t0 - secs(99)));
    machine.handle_trigger(t0 - secs(100));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
}

#[test]
fn huge_durations_do_not_overflow() {
    let t0 = Instant::now();
    let policy = Policy {
        interval: Duration::MAX,
        backoff_initial: Duration::MAX,
        backoff_max: Duration::MAX,
        max_failures: None,
        failed_interval: Some(Duration::MAX),
    };
    let mut machine = fetching(policy, t0);
    machine.handle_fetch_done(t0, Outcome::Success, 0.0);
    let next_poll = machine.poll_timeout().expect("idle has a timeout");
    assert!(next_poll > t0 + secs(3_600));

    machine.handle_trigger(t0);
    machine.handle_fetch_done(t0, failure(ErrorKind::Transient), 0.9);
    let actions = drain(&mut machine);
    let [
        Action::Fetch,
        Action::Emit(Health::Backoff { retry_in, .. }),
    ] = actions[..]
    else {
        panic!("unexpected actions: {actions:?}");
    };
    assert!(retry_in >= Duration::MAX / 2);
    let until = machine.poll_timeout().expect("backoff has a timeout");
    assert!(until > t0 + secs(3_600));
    machine.handle_timeout(until);
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);

    machine.handle_fetch_done(until, failure(ErrorKind::Permanent), 0.0);
    drain(&mut machine);
    let probe_at = machine.poll_timeout().expect("failed has a probe");
    assert!(probe_at > until + secs(3_600));
}

/// `min(max, initial * 2^(failures - 1))`, computed by repeated doubling.
fn model_base(policy: &Policy, failures: u32) -> Duration {
    let mut base = policy.backoff_initial;
    for _ in 1..failures {
        if base >= policy.backoff_max {
            break;
        }
        base = base.saturating_mul(2);
    }
    base.min(policy.backoff_max)
}

fn random_duration(rng: &mut fastrand::Rng, max_ms: u64) -> Duration {
    match rng.u8(0..20) {
        0 => Duration::ZERO,
        1 => Duration::from_nanos(1),
        2 => Duration::MAX,
        _ => ms(rng.u64(1..=max_ms)),
    }
}

fn random_policy(rng: &mut fastrand::Rng) -> Policy {
    Policy {
        interval: random_duration(rng, 120_000),
        backoff_initial: random_duration(rng, 10_000),
        backoff_max: random_duration(rng, 120_000),
        max_failures: rng.bool().then(|| rng.u32(0..8)),
        failed_interval: rng.bool().then(|| random_duration(rng, 600_000)),
    }
}

fn random_outcome(rng: &mut fastrand::Rng) -> Outcome {
    match rng.u8(0..8) {
        0..=2 => Outcome::Success,
        3 => failure(ErrorKind::Permanent),
        4 => failure(ErrorKind::Corrupt),
        _ => failure(ErrorKind::Transient),
    }
}

fn random_jitter(rng: &mut fastrand::Rng) -> f64 {
    match rng.u8(0..20) {
        0 => 0.0,
        1 => 0.999_999,
        2 => -0.5,
        3 => 1.5,
        _ => rng.f64(),
    }
}

/// Drives one machine through a random sequence of events, as an owner honouring the
/// driving contract would, checking the invariants after every event.
fn run_sequence(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let base = Instant::now();
    // Leaves room for the clock to step backwards.
    let mut offset = secs(1_000);
    let mut machine = Machine::new(random_policy(&mut rng), base + offset);

    let mut outstanding = false;
    // Class of the last attempt's failure; `None` after a success or before any attempt.
    let mut last_failure: Option<ErrorKind> = None;
    let mut unhealthy = false;
    let mut previous: Option<Action> = None;

    for step in 0..200 {
        match rng.u8(0..10) {
            0 => offset = offset.saturating_sub(ms(rng.u64(0..5_000))),
            1..=3 => {
                if let Some(timeout) = machine.poll_timeout() {
                    offset = offset.max(timeout.saturating_duration_since(base));
                }
            }
            _ => offset += ms(rng.u64(0..20_000)),
        }
        let now = base + offset;
        let before = machine.state().clone();
        let timeout = machine.poll_timeout();

        let event = rng.u8(0..10);
        let mut done_after = None;
        match event {
            0..=3 => machine.handle_timeout(now),
            4..=6 if outstanding => {
                let outcome = random_outcome(&mut rng);
                last_failure = match &outcome {
                    Outcome::Success => None,
                    Outcome::Failure { kind, .. } => Some(*kind),
                };
                let State::Fetching { failures, .. } = before else {
                    panic!("step {step}: attempt outstanding in {before:?}");
                };
                done_after = Some(failures);
                outstanding = false;
                machine.handle_fetch_done(now, outcome, random_jitter(&mut rng));
            }
            4..=6 => {
                let outcome = random_outcome(&mut rng);
                machine.handle_fetch_done(now, outcome, random_jitter(&mut rng));
            }
            7 | 8 => machine.handle_trigger(now),
            _ => machine.handle_policy_changed(now, random_policy(&mut rng)),
        }

        let actions = drain(&mut machine);
        let spurious = match event {
            0..=3 => timeout.is_none_or(|timeout| now < timeout),
            4..=6 => done_after.is_none(),
            _ => false,
        };
        if spurious {
            assert_eq!(actions, vec![], "step {step}: spurious event acted");
            assert_eq!(
                machine.state(),
                &before,
                "step {step}: spurious event moved"
            );
        }

        for action in actions {
            if matches!(previous, Some(Action::TearDown { .. })) {
                assert_eq!(action, Action::Fetch, "step {step}: teardown without fetch");
            }
            match &action {
                Action::Fetch => {
                    // (1) One attempt at a time.
                    assert!(!outstanding, "step {step}: second fetch outstanding");
                    outstanding = true;
                    // (2) Fetches after a failure, and only those, start from scratch.
                    let expected = last_failure.map(|kind| Action::TearDown {
                        delete_clone: kind == ErrorKind::Corrupt,
                    });
                    let torn_down = previous
                        .as_ref()
                        .filter(|previous| matches!(previous, Action::TearDown { .. }));
                    assert_eq!(torn_down, expected.as_ref(), "step {step}");
                }
                Action::TearDown { delete_clone } => {
                    let kind = last_failure.expect("teardown without a failure");
                    assert_eq!(*delete_clone, kind == ErrorKind::Corrupt, "step {step}");
                }
                Action::Emit(Health::Backoff {
                    attempt, retry_in, ..
                }) => {
                    let policy = machine.policy();
                    // (3) Equal jitter within the cap.
                    let base = model_base(policy, *attempt);
                    assert_eq!(backoff_base(policy, *attempt), base, "step {step}");
                    assert!(*retry_in <= base, "step {step}: {retry_in:?} > {base:?}");
                    assert!(*retry_in >= base / 2, "step {step}: {retry_in:?} too short");
                    assert!(*retry_in <= policy.backoff_max, "step {step}");
                    assert!(!retry_in.is_zero() || base.is_zero(), "step {step}");
                    // (4) Giving up happens when the limit is reached.
                    if let Some(max) = policy.max_failures {
                        assert!(*attempt < max, "step {step}: backoff at {attempt}/{max}");
                    }
                    assert_eq!(Some(*attempt), done_after.map(|f| f + 1), "step {step}");
                    if let Some(until) = now.checked_add(*retry_in) {
                        assert_eq!(machine.poll_timeout(), Some(until), "step {step}");
                    }
                    unhealthy = true;
                }
                Action::Emit(Health::Failed {
                    attempt, retry_in, ..
                }) => {
                    assert_eq!(Some(*attempt), done_after.map(|f| f + 1), "step {step}");
                    // (6) A probe is due exactly when the policy asks for one, within its
                    // interval and no more than a fifth early.
                    let interval = machine.policy().failed_interval;
                    assert_eq!(retry_in.is_some(), interval.is_some(), "step {step}");
                    if let (Some(retry_in), Some(interval)) = (retry_in, interval) {
                        assert!(*retry_in <= interval, "step {step}");
                        assert!(*retry_in >= interval - interval / 5, "step {step}");
                        if let Some(at) = now.checked_add(*retry_in) {
                            assert_eq!(machine.poll_timeout(), Some(at), "step {step}");
                        }
                    }
                    unhealthy = true;
                }
                Action::Emit(Health::Idle) => {
                    assert!(unhealthy, "step {step}: recovery without a failure");
                    unhealthy = false;
                }
            }
            previous = Some(action);
        }

        // (5) Timed exactly when something is timed.
        let expected_timeout = match machine.state() {
            State::Idle { next_poll } => Some(*next_poll),
            State::Backoff { until, .. } => Some(*until),
            State::Failed { probe_at, .. } => *probe_at,
            State::Fetching { .. } => None,
        };
        assert_eq!(machine.poll_timeout(), expected_timeout, "step {step}");
        assert_eq!(
            outstanding,
            matches!(machine.state(), State::Fetching { .. }),
            "step {step}: {:?}",
            machine.state()
        );
    }
}

#[test]
fn random_sequences_keep_invariants() {
    for seed in 0..4_000 {
        if let Err(panic) = std::panic::catch_unwind(|| run_sequence(seed)) {
            eprintln!("failing seed: {seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn a_resumed_machine_fetches_at_once_and_keeps_counting() {
    let t0 = Instant::now();
    let mut fresh = Machine::resume(policy(), t0, 0, None);
    assert_eq!(drain(&mut fresh), vec![Action::Fetch]);
    fresh.handle_fetch_done(t0, Outcome::Success, 0.0);
    assert_eq!(drain(&mut fresh), vec![], "nothing to recover from");

    // After two failures, the last one permanent: tear down, fetch, and count on.
    let mut machine = Machine::resume(policy(), t0, 2, Some(ErrorKind::Permanent));
    assert_eq!(drain(&mut machine), vec![TEAR_DOWN, Action::Fetch]);
    assert_eq!(
        machine.state(),
        &State::Fetching {
            failures: 2,
            since: t0
        }
    );
    machine.handle_fetch_done(t0, failure(ErrorKind::Permanent), 0.0);
    assert_eq!(drain(&mut machine), vec![failed(3, ErrorKind::Permanent)]);

    let mut machine = Machine::resume(policy(), t0, 2, Some(ErrorKind::Corrupt));
    assert_eq!(
        drain(&mut machine),
        vec![Action::TearDown { delete_clone: true }, Action::Fetch]
    );
    machine.handle_fetch_done(t0, Outcome::Success, 0.0);
    assert_eq!(drain(&mut machine), vec![Action::Emit(Health::Idle)]);
}

/// A machine driven through a failure and a recovery, as a driver drives it.
#[test]
fn a_walk_through() {
    use std::time::{Duration, Instant};

    use super::{Action, ErrorKind, Machine, Outcome, Policy};

    let policy = Policy {
        interval: Duration::from_secs(60),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
        max_failures: Some(10),
        failed_interval: Some(Duration::from_secs(600)),
    };
    let mut now = Instant::now();
    let mut machine = Machine::new(policy, now);

    // Stand-ins for real fetch attempts: the first one fails, the rest succeed.
    let mut outcomes = vec![
        Outcome::Failure {
            kind: ErrorKind::Transient,
            error: "connection reset".into(),
        },
        Outcome::Success,
        Outcome::Success,
    ]
    .into_iter();

    loop {
        while let Some(action) = machine.poll_action() {
            match action {
                Action::TearDown { delete_clone } => {
                    // Drop the repository handle; also remove the clone if `delete_clone`.
                    let _ = delete_clone;
                }
                Action::Fetch => {
                    // A real owner starts the attempt and reports it when it ends.
                    let Some(outcome) = outcomes.next() else {
                        return;
                    };
                    let jitter = 0.5; // a random value in [0, 1)
                    machine.handle_fetch_done(now, outcome, jitter);
                }
                Action::Emit(health) => println!("health: {health:?}"),
            }
        }
        // A real owner sleeps until the timeout, or until a trigger arrives.
        if let Some(deadline) = machine.poll_timeout() {
            now = deadline;
            machine.handle_timeout(now);
        }
    }
}
