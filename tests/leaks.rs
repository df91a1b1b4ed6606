//! Failed attempts give back everything they took: after 200 failures of each kind, the
//! process holds the same descriptors, threads and child processes as before the first, and
//! the update made during the outage is delivered once the fault is removed.
//!
//! These tests count the whole process's descriptors and threads, so they live in a test binary
//! of their own and run one at a time.

#[allow(dead_code)]
mod harness;
mod util;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use gitfeed::{Event, SourceState};

use harness::{Running, quick_source};
use util::{
    Fault, FaultServer, GitDaemon, HttpServer, Remote, child_pids, fd_count, refused_url, settle,
    thread_count,
};

static SERIAL: Mutex<()> = Mutex::new(());

const ATTEMPTS: usize = 200;
const SOURCES: usize = 4;

struct Outage<'a> {
    url: String,
    timeout: Duration,
    remote: &'a Remote,
    /// Removes the fault; `None` when it cannot be removed (nothing listens).
    heal: Option<&'a dyn Fn()>,
}

/// Taken first by every test, before it starts any server, so no other test's servers or
/// feeds are counted.
///
/// It also starts smol's global reactor (an epoll descriptor, a notifier and a thread), which
/// lives as long as the process, so that it is not mistaken for something an attempt kept.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static REACTOR: std::sync::Once = std::sync::Once::new();
    REACTOR.call_once(|| {
        smol::block_on(smol::Timer::after(Duration::from_millis(1)));
    });
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn survive(outage: Outage<'_>) {
    let fds = fd_count();
    let threads = thread_count();
    let mut children = child_pids();
    children.sort_unstable();

    let sources: Vec<_> = (0..SOURCES)
        .map(|i| {
            let mut source = quick_source(&format!("s{i}"), &outage.url);
            source.timeout = outage.timeout;
            source.backoff_initial = Duration::from_millis(1);
            source.backoff_max = Duration::from_millis(16);
            source
        })
        .collect();
    // The documented schedule: min(backoff_max, backoff_initial × 2^(n-1)), then jitter.
    let (initial, max) = (sources[0].backoff_initial, sources[0].backoff_max);
    let backoff_base = |attempt: u32| (initial * 2u32.pow(attempt.min(20) - 1)).min(max);
    let feed = Running::start_with(sources, |feed| feed.concurrent_fetches(SOURCES));

    // Every failed attempt is one backoff event; attempts count up per source and the delays
    // grow (within their jitter bounds) up to the cap.
    let mut attempts: HashMap<String, u32> = HashMap::new();
    let mut total = 0;
    let patience = outage.timeout * 4 + Duration::from_secs(10);
    while total < ATTEMPTS {
        let state = feed.state(patience);
        assert_eq!(state.state, SourceState::Backoff, "{state:?}");
        let attempt = state.attempt.expect("backoff has an attempt");
        let previous = attempts.insert(state.source.clone(), attempt).unwrap_or(0);
        assert_eq!(attempt, previous + 1, "attempts count up: {state:?}");
        let base = backoff_base(attempt).as_millis() as u64;
        let retry = state.retry_in_ms.expect("backoff has a delay");
        assert!(
            retry >= base / 2 && retry <= base,
            "delay {retry} ms outside [{}, {base}] for attempt {attempt}",
            base / 2
        );
        if attempt >= 2 {
            let previous_base = backoff_base(attempt - 1).as_millis() as u64;
            assert!(base >= previous_base);
        }
        assert!(state.error.as_deref().is_some_and(|e| !e.is_empty()));
        total += 1;
    }
    assert!(
        attempts.values().all(|&n| n >= 2),
        "every source failed repeatedly: {attempts:?}"
    );

    // The remote moves during the outage; once it is over every source delivers that update.
    let head = outage
        .remote
        .commit(&[("during-outage.txt", Some("x\n"))], "during the outage");
    if let Some(heal) = outage.heal {
        heal();
        let mut pending: HashMap<String, (bool, bool)> = (0..SOURCES)
            .map(|i| (format!("s{i}"), (false, false)))
            .collect();
        while pending.values().any(|&(update, idle)| !(update && idle)) {
            match feed.next(patience, "the update after the outage") {
                Event::Update(update) => {
                    assert_eq!(update.new, head);
                    assert_eq!(update.old, None);
                    assert!(update.changes.iter().any(|c| c.path == "during-outage.txt"));
                    pending.get_mut(&update.source).expect("known source").0 = true;
                }
                Event::State(state) if state.state == SourceState::Idle => {
                    pending.get_mut(&state.source).expect("known source").1 = true;
                }
                Event::State(state) => assert_eq!(state.state, SourceState::Backoff),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    feed.stop();

    // Test servers close their side of a connection a moment after the client does.
    let settle_for = Duration::from_secs(5);
    assert_eq!(settle(fd_count, fds, settle_for), fds, "descriptors leaked");
    assert_eq!(
        settle(thread_count, threads, settle_for),
        threads,
        "threads leaked"
    );
    let mut after = child_pids();
    after.sort_unstable();
    assert_eq!(after, children, "child processes left behind");
}

fn http(fault: Fault, timeout: Duration) {
    let _serial = serial();
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    server.set_fault(fault);
    survive(Outage {
        url: server.url(remote.name()),
        timeout,
        remote: &remote,
        heal: Some(&|| server.set_fault(Fault::None)),
    });
}

fn git(fault: Fault, timeout: Duration) {
    let _serial = serial();
    let remote = Remote::new();
    let daemon = GitDaemon::start(&remote.root());
    let front = FaultServer::in_front_of(daemon.port(), fault);
    survive(Outage {
        url: front.url(remote.name()),
        timeout,
        remote: &remote,
        heal: Some(&|| front.set_fault(Fault::None)),
    });
}

#[test]
fn http_500() {
    http(Fault::Status500, Duration::from_secs(5));
}

#[test]
fn http_reset() {
    http(Fault::Reset, Duration::from_secs(5));
}

#[test]
fn http_never_answers() {
    // curl's stall detector counts whole seconds: 1 s is the shortest HTTP deadline.
    http(Fault::Silent, Duration::from_secs(1));
}

#[test]
fn http_trickles() {
    http(Fault::Trickle, Duration::from_secs(1));
}

#[test]
fn http_refused() {
    let _serial = serial();
    let remote = Remote::new();
    survive(Outage {
        url: refused_url("http"),
        timeout: Duration::from_secs(5),
        remote: &remote,
        heal: None,
    });
}

#[test]
fn git_error_packet() {
    git(Fault::Status500, Duration::from_secs(5));
}

#[test]
fn git_reset() {
    git(Fault::Reset, Duration::from_secs(5));
}

#[test]
fn git_never_answers() {
    git(Fault::Silent, Duration::from_millis(150));
}

#[test]
fn git_trickles() {
    git(Fault::Trickle, Duration::from_millis(150));
}

#[test]
fn git_refused() {
    let _serial = serial();
    let remote = Remote::new();
    survive(Outage {
        url: refused_url("git"),
        timeout: Duration::from_secs(5),
        remote: &remote,
        heal: None,
    });
}
