//! List, then watch: a source that lists on start hands a restarted consumer its whole state.

use std::time::Duration;

use crate::harness::{Running, quick_source};
use crate::util::{Remote, unique_dir};

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn a_restarted_consumer_gets_a_listing_then_updates() {
    let remote = Remote::new();
    remote.commit(
        &[("a.txt", Some("a\n")), ("b.txt", Some("b\n"))],
        "two files",
    );
    let cache = unique_dir();
    let mut source = quick_source("l", &remote.file_url());
    source.list_on_start = true;
    let paths = |update: &gitfeed::Update| -> Vec<String> {
        update
            .changes
            .iter()
            .map(|change| change.path.clone())
            .collect()
    };
    let start = || Running::start_at(cache.path(), vec![source.clone()], |feed| feed);

    let running = start();
    let first = running.update(WITHIN);
    assert_eq!(first.old, None);
    running
        .handle
        .acknowledge("l", &first.new)
        .expect("running");
    let _ = running.stop();
    assert_eq!(
        gitfeed::acknowledged(cache.path(), &source),
        Some(first.new.clone())
    );

    // Nothing moved: the listing is of the acknowledged commit.
    let running = start();
    let listing = running.update(WITHIN);
    assert_eq!(listing.old, None);
    assert_eq!(listing.new, first.new);
    assert_eq!(
        paths(&listing),
        ["README.md", "a.txt", "b.txt", "src/lib.txt"]
    );
    running
        .handle
        .acknowledge("l", &listing.new)
        .expect("running");
    let _ = running.stop();

    // The remote moved while the consumer was down: one listing of the new tip.
    let moved = remote.commit(&[("a.txt", None), ("c.txt", Some("c\n"))], "moved");
    let running = start();
    let listing = running.update(WITHIN);
    assert_eq!(listing.old, None);
    assert_eq!(listing.new, moved);
    assert_eq!(
        paths(&listing),
        ["README.md", "b.txt", "c.txt", "src/lib.txt"]
    );
    running
        .handle
        .acknowledge("l", &listing.new)
        .expect("running");
    // Then incremental updates, as usual.
    let next = remote.commit(&[("d.txt", Some("d\n"))], "d");
    let update = running.update(WITHIN);
    assert_eq!(update.old.as_deref(), Some(moved.as_str()));
    assert_eq!(update.new, next);
    assert_eq!(paths(&update), ["d.txt"]);
    running.handle.acknowledge("l", &next).expect("running");
    crate::util::settle(
        || usize::from(gitfeed::acknowledged(cache.path(), &source).as_deref() != Some(&next)),
        0,
        WITHIN,
    );
    let _ = running.stop();

    // Without the option, a restart with nothing new sends nothing.
    source.list_on_start = false;
    let running = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
    running.assert_quiet(Duration::from_millis(500));
    let _ = running.stop();
}

#[test]
fn a_follower_lists_on_every_poll() {
    let remote = Remote::new();
    let cache = unique_dir();
    let mut source = quick_source("f", &remote.file_url());
    source.list_on_start = true;
    let mut follower = gitfeed::Follower::new(cache.path(), &source).expect("valid");
    let first = follower.poll().expect("poll").expect("an update");
    follower.acknowledge(&first.new).expect("acknowledge");
    assert_eq!(follower.acknowledged(), Some(first.new.clone()));
    let again = follower.poll().expect("poll").expect("a listing again");
    assert_eq!(again.old, None);
    assert_eq!(again.new, first.new);
}

/// `examples/agent.rs` keeps its files in memory: after a restart, and a commit while it was
/// down, it holds every file again, not only the one that changed.
#[test]
fn the_agent_example_holds_every_file_after_a_restart() {
    use std::io::BufRead;
    let remote = Remote::new();
    remote.commit(&[("a.txt", Some("a\n"))], "a");
    let cache = unique_dir();
    let run = || {
        let mut child = std::process::Command::new(crate::util::example("agent"))
            .arg(remote.file_url())
            .env("AGENT_CACHE_DIR", cache.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run the agent");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = send.send(line);
            }
        });
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the agent applies an update");
        let _ = child.kill();
        let _ = child.wait();
        line
    };
    let first = run();
    assert!(
        first.ends_with("+3 ~0 -0 -> 3 files, 40 bytes held"),
        "{first}"
    );
    remote.commit(&[("a.txt", Some("changed\n"))], "change a");
    let after = run();
    assert!(
        after.ends_with("+3 ~0 -0 -> 3 files, 46 bytes held"),
        "{after}"
    );
}
