//! The rules of one source, in simulated time: instants are moved by hand, attempts and
//! commands end when a test says so, and nothing touches a network, a disk or a clock.

use super::*;
use crate::event::{Change, ChangeKind};

const URL: &str = "https://user:secret@example.org/s.git";
/// [`URL`] as status, events and logs show it.
const SHOWN: &str = "https://user@example.org/s.git";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Commit number `n`.
fn c(n: u64) -> ObjectId {
    git::commit_id(&format!("{n:040x}")).expect("40 hex digits")
}

/// `c3` for commit 3; `-` for none.
fn name(commit: Option<&str>) -> String {
    commit.map_or("-".into(), |hex| {
        format!("c{}", u64::from_str_radix(hex, 16).expect("a test commit"))
    })
}

fn named(commit: Option<ObjectId>) -> String {
    name(commit.map(|commit| commit.to_string()).as_deref())
}

fn source() -> Source {
    let mut source = Source::new("s", URL);
    source.interval = secs(60);
    source.backoff_initial = secs(1);
    source.backoff_max = secs(8);
    source.failed_interval = secs(600);
    source.timeout = secs(10);
    source
}

fn with_exec() -> Source {
    let mut source = source();
    source.exec = Some("apply".into());
    source
}

/// Every effect the tracker has for now, in order.
fn effects(tracker: &mut Tracker) -> Vec<Effect> {
    std::iter::from_fn(|| tracker.poll_effect()).collect()
}

/// The effects, each as one short line.
fn drain(tracker: &mut Tracker) -> Vec<String> {
    effects(tracker).iter().map(show).collect()
}

fn show(effect: &Effect) -> String {
    match effect {
        Effect::Attempt(order) => format!(
            "attempt from {} (acknowledged {})",
            named(order.seen.sent),
            named(order.seen.acknowledged)
        ),
        Effect::TearDown => "tear down".into(),
        Effect::Send(Event::Update(update)) => format!(
            "update {}..{} {:?}",
            name(update.old.as_deref()),
            name(Some(&update.new)),
            paths(update)
        ),
        Effect::Send(Event::Warning(warning)) => format!(
            "warning about {}: {}",
            name(warning.commit.as_deref()),
            warning.message
        ),
        Effect::Send(Event::State(change)) => format!(
            "state {:?} #{} ({})",
            change.state,
            change.attempt.unwrap_or(0),
            change
                .reason
                .map_or("-".into(), |reason| reason.to_string())
        ),
        Effect::Execute { update, command } => format!(
            "execute `{command}` on {}..{}",
            name(update.old.as_deref()),
            name(Some(&update.new))
        ),
        Effect::RecordAcknowledged(commit) => format!("record {}", named(Some(*commit))),
        Effect::WriteStatus(status) => format!(
            "status {} #{} acknowledged {}",
            status.state,
            status.attempt,
            name(status.acknowledged.as_deref())
        ),
    }
}

fn paths(update: &Update) -> Vec<&str> {
    update
        .changes
        .iter()
        .map(|change| change.path.as_str())
        .collect()
}

fn added(path: &str) -> Change {
    Change {
        path: path.into(),
        kind: ChangeKind::Added,
        id: Some(format!("{:040x}", 0xb10b)),
        content: None,
        encoding: None,
        omitted: None,
    }
}

/// An attempt that found the ref moved from `old` to `new`, changing `files`.
fn moved(old: Option<u64>, new: u64, files: &[&str]) -> Report {
    Report {
        result: Ok(Fetched {
            tip: Some(c(new)),
            served_by: URL.into(),
            synced: Some(Synced {
                url: URL.into(),
                reference: "refs/heads/main".into(),
                new: c(new),
                old: old.map(c),
                forced: false,
                changes: files.iter().copied().map(added).collect(),
            }),
        }),
        warnings: Vec::new(),
        ended_ms: 1_000,
    }
}

/// An attempt that found the ref where the consumer has it.
fn unchanged(tip: u64) -> Report {
    Report {
        result: Ok(Fetched {
            tip: Some(c(tip)),
            served_by: URL.into(),
            synced: None,
        }),
        warnings: Vec::new(),
        ended_ms: 1_000,
    }
}

fn failing(reason: Reason) -> Report {
    Report {
        result: Err(broken(reason)),
        warnings: Vec::new(),
        ended_ms: 1_000,
    }
}

fn broken(reason: Reason) -> FetchError {
    let mut err = FetchError::new(reason, "it broke");
    err.detail = Some("what the server said".into());
    err
}

fn warned(mut report: Report, warnings: &[&str]) -> Report {
    report.warnings = warnings.iter().map(|&warning| warning.to_owned()).collect();
    report
}

/// A tracker whose first attempt, asked for at `t0`, is out.
fn attempting(source: Source, acknowledged: Option<u64>, t0: Instant) -> Tracker {
    let mut tracker = Tracker::new(source, acknowledged.map(c), t0);
    tracker.handle_timeout(t0);
    let attempt = effects(&mut tracker);
    assert!(
        matches!(attempt.as_slice(), [Effect::Attempt(_)]),
        "{attempt:?}"
    );
    tracker
}

/// Moves on to the tracker's next timeout, which must be due, and returns what it leads to.
fn next(tracker: &mut Tracker) -> Vec<String> {
    let due = tracker.poll_timeout().expect("a timeout");
    tracker.handle_timeout(due);
    drain(tracker)
}

#[test]
fn the_first_attempt_is_due_at_once_and_may_take_the_timeout_of_every_url() {
    let t0 = Instant::now();
    let mut source = source();
    source.mirrors = vec!["https://a.example/s.git".into(), "/srv/s.git".into()];
    let mut tracker = Tracker::new(source, Some(c(1)), t0);
    assert_eq!(drain(&mut tracker), Vec::<String>::new());
    assert_eq!(tracker.poll_timeout(), Some(t0));
    tracker.handle_timeout(t0 + secs(2));
    match effects(&mut tracker).as_slice() {
        [Effect::Attempt(order)] => assert_eq!(
            order,
            &Order {
                seen: Seen {
                    sent: Some(c(1)),
                    acknowledged: Some(c(1)),
                },
                due: Some(t0),
                limit: secs(30),
            }
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        tracker.poll_timeout(),
        None,
        "nothing is timed during an attempt"
    );
    tracker.handle_timeout(t0 + secs(3600));
    assert_eq!(
        drain(&mut tracker),
        Vec::<String>::new(),
        "one attempt at a time"
    );
}

#[test]
fn a_restart_starts_from_the_acknowledged_commit() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    tracker.handle_attempt(t0, moved(Some(1), 2, &["a"]), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [r#"update c1..c2 ["a"]"#, "status idle #0 acknowledged c1"]
    );

    // The consumer never acknowledged c2: a restart sends it again.
    let mut again = Tracker::new(source(), Some(c(1)), t0);
    assert_eq!(next(&mut again), ["attempt from c1 (acknowledged c1)"]);

    // Nothing acknowledged yet: everything is new.
    let mut fresh = Tracker::new(source(), None, t0);
    assert_eq!(next(&mut fresh), ["attempt from - (acknowledged -)"]);
}

#[test]
fn a_source_that_lists_on_start_lists_first_then_sends_changes() {
    let t0 = Instant::now();
    let mut source = source();
    source.list_on_start = true;
    let mut tracker = Tracker::new(source, Some(c(1)), t0);
    assert_eq!(next(&mut tracker), ["attempt from - (acknowledged c1)"]);
    tracker.handle_attempt(t0, moved(None, 2, &["a", "b"]), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            r#"update -..c2 ["a", "b"]"#,
            "status idle #0 acknowledged c1"
        ]
    );
    tracker.handle_control(t0, Control::Acknowledged(c(2)));
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c2"]);
    assert_eq!(next(&mut tracker), ["attempt from c2 (acknowledged c2)"]);
}

#[test]
fn an_update_not_acknowledged_is_sent_again_after_a_restart_with_its_warnings() {
    let t0 = Instant::now();
    let run = || {
        let mut tracker = attempting(source(), Some(1), t0);
        let report = warned(moved(Some(1), 2, &["a"]), &["c2 left out 1 submodule: `m`"]);
        tracker.handle_attempt(t0, report, 0.0);
        effects(&mut tracker)
    };
    let first = run();
    assert_eq!(
        first.iter().map(show).collect::<Vec<_>>(),
        [
            "warning about c2: c2 left out 1 submodule: `m`",
            r#"update c1..c2 ["a"]"#,
            "status idle #0 acknowledged c1"
        ]
    );
    // The acknowledgement was lost: the next start sends the same events again.
    assert_eq!(run(), first);
}

#[test]
fn a_failed_command_gets_the_same_update_again_with_its_warnings() {
    let t0 = Instant::now();
    let mut tracker = attempting(with_exec(), Some(1), t0);
    let report = || warned(moved(Some(1), 2, &["a"]), &["left out `out`"]);
    tracker.handle_attempt(t0, report(), 0.0);
    let first = effects(&mut tracker);
    assert_eq!(
        first.iter().map(show).collect::<Vec<_>>(),
        [
            "warning about c2: left out `out`",
            "execute `apply` on c1..c2"
        ]
    );
    assert_eq!(
        tracker.poll_timeout(),
        None,
        "nothing is timed while it runs"
    );

    tracker.handle_exec_done(t0, Err(broken(Reason::ExecFailed)), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "status backoff #1 acknowledged c1",
            "state Backoff #1 (exec_failed)"
        ]
    );
    assert_eq!(tracker.seen().sent, Some(c(1)), "not applied, so not sent");

    // After the backoff: from c1 again, so the attempt finds the same update.
    assert_eq!(
        next(&mut tracker),
        ["tear down", "attempt from c1 (acknowledged c1)"]
    );
    tracker.handle_attempt(t0 + secs(1), report(), 0.0);
    assert_eq!(effects(&mut tracker), first, "the same warning and update");
    tracker.handle_exec_done(t0 + secs(2), Ok(()), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "record c2",
            "status idle #0 acknowledged c2",
            "state Idle #0 (-)"
        ]
    );
}

#[test]
fn a_command_that_cannot_be_given_its_update_counts_as_failed() {
    let t0 = Instant::now();
    let mut tracker = attempting(with_exec(), None, t0);
    tracker.handle_attempt(t0, moved(None, 1, &["a"]), 0.0);
    assert_eq!(drain(&mut tracker), ["execute `apply` on -..c1"]);
    tracker.handle_exec_done(t0, Err(broken(Reason::LocalIo)), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "status backoff #1 acknowledged -",
            "state Backoff #1 (local_io)"
        ]
    );
    assert_eq!(next(&mut tracker)[1], "attempt from - (acknowledged -)");
}

#[test]
fn a_late_acknowledgement_does_not_move_the_acknowledged_commit_back() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    tracker.handle_attempt(t0, moved(Some(1), 2, &["a"]), 0.0);
    drain(&mut tracker);
    assert_eq!(next(&mut tracker), ["attempt from c2 (acknowledged c1)"]);
    tracker.handle_attempt(t0, moved(Some(2), 3, &["b"]), 0.0);
    drain(&mut tracker);

    // c3 first, then c2, which was sent before it: c3 stays, and is written again, since the
    // feed recorded c2 before telling the source.
    tracker.handle_control(t0, Control::Acknowledged(c(3)));
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c3"]);
    tracker.handle_control(t0, Control::Acknowledged(c(2)));
    assert_eq!(drain(&mut tracker), ["record c3"]);
    // So is the commit acknowledged before the start.
    tracker.handle_control(t0, Control::Acknowledged(c(1)));
    assert_eq!(drain(&mut tracker), ["record c3"]);
    assert_eq!(tracker.seen().acknowledged, Some(c(3)));
    assert_eq!(next(&mut tracker), ["attempt from c3 (acknowledged c3)"]);

    // A commit it never sent is the consumer's to choose.
    tracker.handle_attempt(t0, unchanged(3), 0.0);
    drain(&mut tracker);
    tracker.handle_control(t0, Control::Acknowledged(c(9)));
    assert_eq!(
        drain(&mut tracker),
        ["record c9", "status idle #0 acknowledged c9"],
        "written again: c3 was written over whatever the feed had recorded"
    );
}

#[test]
fn an_acknowledgement_recorded_while_a_late_one_waited_is_written_again() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    for (old, new) in [(1, 2), (2, 3), (3, 4)] {
        tracker.handle_attempt(t0, moved(Some(old), new, &["a"]), 0.0);
        drain(&mut tracker);
        if new < 4 {
            next(&mut tracker);
        }
    }
    // The consumer acknowledged c3, c2 and c4 in that order, each recorded by the feed on
    // the consumer's thread before the source heard of it. The cache holds c4 until the late
    // c2 is answered by writing c3 again over it; c4 must then be written once more.
    tracker.handle_control(t0, Control::Acknowledged(c(3)));
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c3"]);
    tracker.handle_control(t0, Control::Acknowledged(c(2)));
    assert_eq!(drain(&mut tracker), ["record c3"]);
    tracker.handle_control(t0, Control::Acknowledged(c(4)));
    assert_eq!(
        drain(&mut tracker),
        ["record c4", "status idle #0 acknowledged c4"]
    );
    assert_eq!(tracker.seen().acknowledged, Some(c(4)));
}

#[test]
fn acknowledgements_in_order_each_move_the_acknowledged_commit() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), None, t0);
    tracker.handle_attempt(t0, moved(None, 1, &["a"]), 0.0);
    drain(&mut tracker);
    next(&mut tracker);
    tracker.handle_attempt(t0, moved(Some(1), 2, &["b"]), 0.0);
    drain(&mut tracker);
    tracker.handle_control(t0, Control::Acknowledged(c(1)));
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c1"]);
    tracker.handle_control(t0, Control::Acknowledged(c(2)));
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c2"]);
    tracker.handle_control(t0, Control::Acknowledged(c(2)));
    assert_eq!(drain(&mut tracker), Vec::<String>::new(), "nothing new");
}

#[test]
fn an_update_with_nothing_to_apply_is_acknowledged_for_a_consumer_that_is_caught_up() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    // Caught up: acknowledged on the consumer's behalf, and nothing is sent.
    tracker.handle_attempt(t0, moved(Some(1), 2, &[]), 0.0);
    assert_eq!(
        drain(&mut tracker),
        ["record c2", "status idle #0 acknowledged c2"]
    );
    next(&mut tracker);
    tracker.handle_attempt(t0, moved(Some(2), 3, &["a"]), 0.0);
    drain(&mut tracker);

    // c3 is not acknowledged yet: an empty update after it must not be acknowledged for the
    // consumer, or c3 would be lost if the consumer never applied it and the feed restarted.
    next(&mut tracker);
    tracker.handle_attempt(t0, moved(Some(3), 4, &[]), 0.0);
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c2"]);
    assert_eq!(
        tracker.seen().sent,
        Some(c(4)),
        "the next update starts at c4"
    );
    tracker.handle_control(t0, Control::Acknowledged(c(3)));
    assert_eq!(drain(&mut tracker), ["status idle #0 acknowledged c3"]);
    assert_eq!(next(&mut tracker), ["attempt from c4 (acknowledged c3)"]);
}

#[test]
fn a_warning_without_an_update_is_news_once() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    let unsigned = "commit c2 was not delivered: no signature";
    let mut attempt = |warnings: &[&str]| {
        tracker.handle_attempt(t0, warned(unchanged(1), warnings), 0.0);
        let effects = drain(&mut tracker);
        next(&mut tracker);
        effects
    };
    let status = "status idle #0 acknowledged c1";
    assert_eq!(
        attempt(&[unsigned]),
        [format!("warning about -: {unsigned}").as_str(), status]
    );
    // Nor is the status, which says the same as the one written.
    assert_eq!(attempt(&[unsigned]), [""; 0], "the same again: not news");
    assert_eq!(attempt(&["another"]), ["warning about -: another"]);
    assert_eq!(
        attempt(&[unsigned]),
        [format!("warning about -: {unsigned}").as_str()],
        "differs from the last one sent"
    );
}

#[test]
fn a_healthy_poll_writes_no_status_until_an_hour_has_passed() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    let mut poll = |ended_ms: u64, report: Report| {
        tracker.handle_attempt(t0, Report { ended_ms, ..report }, 0.0);
        let effects = drain(&mut tracker);
        next(&mut tracker);
        effects
    };
    let status = "status idle #0 acknowledged c1";
    assert_eq!(
        poll(1_000, unchanged(1)),
        [status],
        "the first says what is there"
    );
    assert_eq!(poll(2_000, unchanged(1)), [""; 0], "nothing new");
    let hour = crate::status::REFRESH_MS;
    assert_eq!(
        poll(hour, unchanged(1)),
        [""; 0],
        "not yet an hour after the first"
    );
    assert_eq!(
        poll(1_000 + hour, unchanged(1)),
        [status],
        "an hour after it"
    );
    // A failure is news, and so is the recovery.
    assert_eq!(
        poll(2_000 + hour, failing(Reason::ServerError)),
        [
            "status backoff #1 acknowledged c1",
            "state Backoff #1 (server_error)"
        ]
    );
    assert_eq!(
        poll(3_000 + hour, unchanged(1)),
        [status, "state Idle #0 (-)"],
        "healthy again"
    );
    assert_eq!(poll(4_000 + hour, unchanged(1)), [""; 0]);
    // So is a new commit reached, even when nothing in it is delivered.
    let reached = Report {
        result: Ok(Fetched {
            tip: Some(c(2)),
            served_by: URL.into(),
            synced: None,
        }),
        ..unchanged(1)
    };
    assert_eq!(poll(5_000 + hour, reached), [status]);
}

#[test]
fn a_status_already_on_disk_is_not_written_again() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    tracker.handle_attempt(t0, unchanged(1), 0.0);
    let written = effects(&mut tracker)
        .into_iter()
        .find_map(|effect| match effect {
            Effect::WriteStatus(status) => Some(status),
            _ => None,
        })
        .expect("the first attempt writes its status");

    // A feed restarted over that status, and a single attempt that starts from it: their
    // first no-change poll has nothing to tell.
    let restarted = Tracker::new(source(), Some(c(1)), t0).with_written(Some(written.clone()));
    let alone = Tracker::once(source(), Some(c(1)), Some(written), t0);
    for mut tracker in [restarted, alone] {
        tracker.handle_timeout(t0);
        drain(&mut tracker);
        tracker.handle_attempt(
            t0,
            Report {
                ended_ms: 9_000,
                ..unchanged(1)
            },
            0.0,
        );
        assert_eq!(drain(&mut tracker), [""; 0]);
    }
}

#[test]
fn a_trigger_for_the_commit_sent_last_fetches_nothing() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);
    tracker.handle_attempt(t0, moved(Some(1), 2, &["a"]), 0.0);
    drain(&mut tracker);
    let poll = tracker.poll_timeout();
    assert_eq!(poll, Some(t0 + secs(60)));

    tracker.handle_control(t0, Control::Trigger(Some(c(2))));
    assert_eq!(drain(&mut tracker), Vec::<String>::new());
    assert_eq!(tracker.poll_timeout(), poll, "the schedule is unchanged");

    tracker.handle_control(t0, Control::Trigger(Some(c(3))));
    assert_eq!(drain(&mut tracker), ["attempt from c2 (acknowledged c1)"]);
    tracker.handle_attempt(t0, unchanged(2), 0.0);
    drain(&mut tracker);
    tracker.handle_control(t0, Control::Trigger(None));
    assert_eq!(drain(&mut tracker), ["attempt from c2 (acknowledged c1)"]);
}

#[test]
fn the_status_follows_failures_and_the_recovery() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), Some(1), t0);

    tracker.handle_attempt(t0, failing(Reason::ConnectionRefused), 0.0);
    let after_one = effects(&mut tracker);
    assert_eq!(
        after_one.iter().map(show).collect::<Vec<_>>(),
        [
            "status backoff #1 acknowledged c1",
            "state Backoff #1 (connection_refused)"
        ]
    );
    let headline =
        format!("s ({SHOWN}): could not connect to example.org (refused or unreachable)");
    match &after_one[..] {
        [
            Effect::WriteStatus(status),
            Effect::Send(Event::State(change)),
        ] => {
            assert_eq!(status.source, "s");
            assert_eq!(status.url, SHOWN, "no secret");
            assert_eq!(status.last_attempt_ms, Some(1_000));
            assert_eq!(status.last_error.as_deref(), Some(headline.as_str()));
            assert_eq!(status.reason, Some(Reason::ConnectionRefused));
            assert_eq!(status.detail.as_deref(), Some("what the server said"));
            assert_eq!(
                change.error.as_deref(),
                Some(format!("{headline}; will retry in 1s").as_str())
            );
            assert_eq!(change.detail.as_deref(), Some("what the server said"));
            assert_eq!(change.retry_in_ms, Some(1_000));
        }
        other => panic!("{other:?}"),
    }

    // A permanent failure gives the handle back at once, and stays failed until the probe.
    assert_eq!(
        next(&mut tracker),
        ["tear down", "attempt from c1 (acknowledged c1)"]
    );
    tracker.handle_attempt(t0 + secs(1), failing(Reason::RefNotFound), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "tear down",
            "status failed #2 acknowledged c1",
            "state Failed #2 (ref_not_found)"
        ]
    );
    assert_eq!(tracker.poll_timeout(), Some(t0 + secs(601)));

    // The probe succeeds: the failure is cleared and the tip shown.
    assert_eq!(
        next(&mut tracker),
        ["tear down", "attempt from c1 (acknowledged c1)"]
    );
    let mut report = moved(Some(1), 2, &["a"]);
    report.ended_ms = 2_000;
    tracker.handle_attempt(t0 + secs(601), report, 0.0);
    match &effects(&mut tracker)[..] {
        [
            Effect::Send(Event::Update(_)),
            Effect::WriteStatus(status),
            Effect::Send(Event::State(change)),
        ] => {
            assert_eq!((status.state.as_str(), status.attempt), ("idle", 0));
            assert_eq!(status.last_error, None);
            assert_eq!(status.reason, None);
            assert_eq!(status.detail, None);
            assert_eq!(status.current, Some(c(2).to_string()));
            assert_eq!(status.served_by.as_deref(), Some(SHOWN));
            assert_eq!(status.last_success_ms, Some(2_000));
            assert_eq!(change.state, SourceState::Idle);
            assert_eq!((change.reason, &change.detail), (None, &None));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broken_clone_gives_its_handle_back_at_once() {
    let t0 = Instant::now();
    let mut tracker = attempting(source(), None, t0);
    tracker.handle_attempt(t0, failing(Reason::CloneCorrupt), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "tear down",
            "status backoff #1 acknowledged -",
            "state Backoff #1 (clone_corrupt)"
        ]
    );
    assert_eq!(
        next(&mut tracker),
        ["tear down", "attempt from - (acknowledged -)"]
    );
}

#[test]
fn controls_that_arrive_during_an_attempt_are_applied_when_it_ends() {
    let t0 = Instant::now();
    let mut tracker = attempting(with_exec(), Some(1), t0);
    tracker.handle_control(t0, Control::Acknowledged(c(1)));
    tracker.handle_control(t0, Control::Trigger(None));
    let mut changed = source();
    changed.interval = secs(5);
    tracker.handle_control(t0, Control::Change(Box::new(changed)));
    assert_eq!(drain(&mut tracker), Vec::<String>::new(), "held");
    assert!(tracker.source().exec.is_some(), "not changed yet");

    // The attempt fails; then the trigger cuts the backoff short, after the state event.
    tracker.handle_attempt(t0, failing(Reason::Timeout), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "status backoff #1 acknowledged c1",
            "state Backoff #1 (timeout)",
            "tear down",
            "attempt from c1 (acknowledged c1)"
        ]
    );
    assert_eq!(
        tracker.source().exec,
        None,
        "the new settings are in effect"
    );
    assert_eq!(tracker.source().interval, secs(5));

    // Held during a command too.
    let mut tracker = attempting(with_exec(), Some(1), t0);
    tracker.handle_attempt(t0, moved(Some(1), 2, &["a"]), 0.0);
    drain(&mut tracker);
    tracker.handle_control(t0, Control::Trigger(None));
    assert_eq!(drain(&mut tracker), Vec::<String>::new());
    tracker.handle_exec_done(t0, Ok(()), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [
            "record c2",
            "status idle #0 acknowledged c2",
            "attempt from c2 (acknowledged c2)"
        ]
    );
}

#[test]
fn reports_that_come_unasked_change_nothing() {
    let t0 = Instant::now();
    let mut tracker = Tracker::new(source(), None, t0);
    tracker.handle_attempt(t0, moved(None, 1, &["a"]), 0.0);
    tracker.handle_exec_done(t0, Ok(()), 0.0);
    assert_eq!(drain(&mut tracker), Vec::<String>::new());
    assert_eq!(tracker.poll_timeout(), Some(t0));
}

#[test]
fn one_attempt_outside_a_feed_carries_on_from_the_status_it_left() {
    let t0 = Instant::now();
    // No status yet: an attempt at once, and an update.
    let mut tracker = Tracker::once(source(), None, None, t0);
    assert_eq!(drain(&mut tracker), ["attempt from - (acknowledged -)"]);
    tracker.handle_attempt(t0, moved(None, 1, &["a"]), 0.0);
    assert_eq!(
        drain(&mut tracker),
        [r#"update -..c1 ["a"]"#, "status idle #0 acknowledged -"]
    );

    // After a permanent failure: the handle goes first, and failures count on.
    let left = Status {
        state: "failed".into(),
        attempt: 1,
        reason: Some(Reason::RefNotFound),
        last_success_ms: Some(500),
        ..Status::default()
    };
    let mut tracker = Tracker::once(source(), Some(c(1)), Some(left), t0);
    assert_eq!(
        drain(&mut tracker),
        ["tear down", "attempt from c1 (acknowledged c1)"]
    );
    tracker.handle_attempt(t0, failing(Reason::RefNotFound), 0.0);
    let effects = effects(&mut tracker);
    assert_eq!(
        effects.iter().map(show).collect::<Vec<_>>(),
        [
            "tear down",
            "status failed #2 acknowledged c1",
            "state Failed #2 (ref_not_found)"
        ]
    );
    match &effects[1] {
        Effect::WriteStatus(status) => {
            assert_eq!(status.source, "s");
            assert_eq!(
                status.last_success_ms,
                Some(500),
                "the last success is kept"
            );
        }
        other => panic!("{other:?}"),
    }

    // A command that fails: backing off, as a feed's source would; the handle goes at once,
    // since no schedule follows to tear it down on the way out.
    let mut tracker = Tracker::once(with_exec(), None, None, t0);
    drain(&mut tracker);
    tracker.handle_attempt(t0, moved(None, 1, &["a"]), 0.0);
    assert_eq!(drain(&mut tracker), ["execute `apply` on -..c1"]);
    tracker.handle_exec_done(t0, Err(broken(Reason::ExecFailed)), 0.0);
    let after = drain(&mut tracker);
    assert_eq!(
        after[..2],
        ["tear down", "status backoff #1 acknowledged -"]
    );

    // So does a transient failure, which in a feed keeps the handle until the backoff ends.
    let mut tracker = Tracker::once(source(), None, None, t0);
    drain(&mut tracker);
    tracker.handle_attempt(t0, failing(Reason::ConnectionRefused), 0.0);
    assert_eq!(
        drain(&mut tracker)[..2],
        ["tear down", "status backoff #1 acknowledged -"]
    );
    let mut tracker = attempting(source(), None, t0);
    tracker.handle_attempt(t0, failing(Reason::ConnectionRefused), 0.0);
    assert_eq!(drain(&mut tracker)[0], "status backoff #1 acknowledged -");
}
