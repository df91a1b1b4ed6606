//! Which events a consumer gets: a warning with every sending of the update it is about, and
//! no update when there is nothing to apply.

use std::time::Duration;

use crate::harness::{Running, quick_source};
use crate::util::{Remote, unique_dir};

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn a_warning_goes_with_every_sending_of_its_update() {
    let remote = Remote::new();
    // A symlink out of the tree: the snapshot leaves it out and says so.
    std::os::unix::fs::symlink("/etc/passwd", remote.work_path().join("out")).expect("symlink");
    let new = remote.commit(&[("a.txt", Some("a\n"))], "a link out");
    let cache = unique_dir();
    let root = unique_dir();
    let mut source = quick_source("w", &remote.file_url());
    source.checkout = Some(root.path().join("checkout"));
    for run in 1..=2 {
        // Never acknowledged: a restart sends the update again, with its snapshot kept.
        let running = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
        let warning = running.warning(WITHIN);
        assert_eq!(warning.commit.as_deref(), Some(new.as_str()), "run {run}");
        assert!(
            warning.message.contains("`out`"),
            "run {run}: {}",
            warning.message
        );
        let update = running.update(WITHIN);
        assert_eq!(update.new, new, "run {run}");
        let _ = running.stop();
    }
}

#[test]
fn an_update_with_nothing_to_apply_is_never_sent() {
    let remote = Remote::new();
    let mut source = quick_source("n", &remote.file_url());
    source.interval = Duration::from_secs(3600);
    source.filter.extensions = vec!["rego".into()];
    let running = Running::start(vec![source.clone()]);
    let status = |running: &Running| gitfeed::status(running.cache_dir()).expect("status");
    // No .rego file at all: not even a first update.
    crate::util::settle(
        || {
            usize::from(
                status(&running).first().and_then(|s| s.current.clone()) != Some(remote.head()),
            )
        },
        0,
        WITHIN,
    );
    running.assert_quiet(Duration::from_millis(300));
    let first = remote.head();
    assert_eq!(
        status(&running)[0].acknowledged.as_deref(),
        Some(first.as_str())
    );

    let rego = remote.commit(&[("p.rego", Some("package p\n"))], "policy");
    running.handle.trigger("n").expect("running");
    let update = running.update(WITHIN);
    assert_eq!(update.old.as_deref(), Some(first.as_str()));
    assert_eq!(update.new, rego);
    running.handle.acknowledge("n", &rego).expect("running");

    // A change and its revert: the tree is back where it was, so nothing is sent, and the
    // status shows the commit reached.
    remote.commit(&[("p.rego", Some("package q\n"))], "change");
    let revert = remote.commit(&[("p.rego", Some("package p\n"))], "revert");
    running.handle.trigger("n").expect("running");
    crate::util::settle(
        || usize::from(status(&running)[0].current.as_deref() != Some(revert.as_str())),
        0,
        WITHIN,
    );
    running.assert_quiet(Duration::from_millis(300));
    // Nothing to apply, and the consumer had applied everything before: acknowledged for it.
    crate::util::settle(
        || usize::from(status(&running)[0].acknowledged.as_deref() != Some(revert.as_str())),
        0,
        WITHIN,
    );
    // The next change starts from the revert.
    let next = remote.commit(&[("q.rego", Some("package q\n"))], "q");
    running.handle.trigger("n").expect("running");
    let update = running.update(WITHIN);
    assert_eq!(update.old.as_deref(), Some(revert.as_str()));
    assert_eq!(update.new, next);
}

#[test]
fn acknowledge_checks_what_it_is_given_and_records_before_it_returns() {
    use gitfeed::Reason;
    let reason = |result: Result<(), gitfeed::Error>| result.err().map(|err| err.reason());
    let remote = Remote::new();
    let source = quick_source("a", &remote.file_url());
    let running = Running::start(vec![source.clone()]);
    let update = running.update(WITHIN);
    let handle = running.handle.clone();
    let unknown = handle.acknowledge("nobody", &update.new).unwrap_err();
    assert_eq!(unknown.reason(), Reason::NotFound, "{unknown}");
    assert_eq!(unknown.to_string(), "there is no source named `nobody`");
    let not_a_commit = handle.acknowledge("a", "not-a-commit").unwrap_err();
    assert_eq!(
        not_a_commit.reason(),
        Reason::InvalidInput,
        "{not_a_commit}"
    );
    assert_eq!(
        not_a_commit.to_string(),
        "`not-a-commit` is not a commit id"
    );
    assert_eq!(gitfeed::acknowledged(running.cache_dir(), &source), None);
    handle.acknowledge("a", &update.new).expect("acknowledged");
    // On disk when it returns, not some time later.
    assert_eq!(
        gitfeed::acknowledged(running.cache_dir(), &source),
        Some(update.new.clone())
    );
    handle.remove("a").expect("running");
    assert_eq!(
        reason(handle.acknowledge("a", &update.new)),
        Some(Reason::NotFound)
    );
    let _ = running.stop();
    assert_eq!(
        reason(handle.acknowledge("a", &update.new)),
        Some(Reason::Stopped)
    );
}

#[test]
fn trigger_and_remove_check_the_source_and_the_hint() {
    use gitfeed::Reason;
    let reason = |result: Result<(), gitfeed::Error>| result.err().map(|err| err.reason());
    let remote = Remote::new();
    let running = Running::start(vec![quick_source("a", &remote.file_url())]);
    let update = running.update(WITHIN);
    let handle = running.handle.clone();
    assert_eq!(reason(handle.trigger("nobody")), Some(Reason::NotFound));
    assert_eq!(
        reason(handle.trigger_with_hint("nobody", &update.new)),
        Some(Reason::NotFound)
    );
    assert_eq!(reason(handle.remove("nobody")), Some(Reason::NotFound));
    let bad_hint = handle.trigger_with_hint("a", "main").unwrap_err();
    assert_eq!(bad_hint.reason(), Reason::InvalidInput, "{bad_hint}");
    assert_eq!(bad_hint.to_string(), "`main` is not a commit id");
    handle.trigger("a").expect("a known source");
    handle
        .trigger_with_hint("a", &update.new.to_uppercase())
        .expect("a commit id, in either case");
    handle.remove("a").expect("a known source");
    assert_eq!(reason(handle.trigger("a")), Some(Reason::NotFound));
    assert_eq!(reason(handle.remove("a")), Some(Reason::NotFound));
    let _ = running.stop();
    assert_eq!(reason(handle.trigger("a")), Some(Reason::Stopped));
    assert_eq!(reason(handle.remove("a")), Some(Reason::Stopped));
}
