//! A running feed: events, health, triggers, several sources on one executor, shutdown.

use std::time::{Duration, Instant};

use gitfeed::{Event, SourceState};

use crate::harness::{Running, clone_dir, quick_source};
use crate::util::{Fault, FaultServer, HttpServer, Remote, refused_url};

const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn polls_emit_only_changes() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    let feed = Running::start(vec![quick_source("p", &server.url(remote.name()))]);
    let first = feed.update(PATIENCE);
    assert_eq!(first.old, None);
    assert_eq!(first.source, "p");

    // Several polls find nothing new and say nothing.
    let polls_before = server.connections();
    feed.assert_quiet(Duration::from_millis(600));
    assert!(
        server.connections() >= polls_before + 2,
        "the feed kept polling"
    );

    let new = remote.commit(&[("b.txt", Some("b\n"))], "b");
    let update = feed.update(PATIENCE);
    assert_eq!(update.old.as_deref(), Some(first.new.as_str()));
    assert_eq!(update.new, new);
    assert_eq!(update.changes.len(), 1);
    feed.stop();
}

#[test]
fn hung_source_does_not_delay_another() {
    let hung = FaultServer::start(Fault::Silent);
    let remote = Remote::new();
    let mut stuck = quick_source("stuck", &hung.url("repo.git"));
    stuck.timeout = Duration::from_secs(30);
    let mut healthy = quick_source("healthy", &remote.file_url());
    healthy.interval = Duration::from_millis(300);
    let feed = Running::start(vec![stuck, healthy.clone()]);
    assert_eq!(feed.update(PATIENCE).source, "healthy");
    for _ in 0..3 {
        remote.commit(
            &[("tick.txt", Some(&format!("{:?}\n", Instant::now())))],
            "tick",
        );
        let committed = Instant::now();
        let update = feed.update(PATIENCE);
        assert_eq!(update.source, "healthy");
        let lag = committed.elapsed();
        assert!(
            lag < healthy.interval + Duration::from_millis(700),
            "the healthy source's update took {lag:?} while the other source hung"
        );
    }
    assert!(
        hung.connections() >= 1,
        "the stuck source was really stuck on its server"
    );
    let took = feed.stop();
    assert!(
        took < Duration::from_secs(2),
        "shutdown waited {took:?} for a hung git:// fetch"
    );
}

#[test]
fn shutdown_interrupts_a_hung_http_fetch() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    server.set_fault(Fault::Silent);
    let mut source = quick_source("p", &server.url(remote.name()));
    source.timeout = Duration::from_secs(60);
    let feed = Running::start(vec![source]);
    crate::util::settle(|| usize::from(server.connections() == 0), 0, PATIENCE);
    assert!(server.connections() >= 1, "the attempt reached the server");
    let took = feed.stop();
    assert!(
        took < Duration::from_secs(7),
        "shutdown waited {took:?} for a hung HTTP fetch"
    );
}

#[test]
fn missing_branch_fails_until_triggered() {
    let remote = Remote::new();
    let mut source = quick_source("p", &remote.file_url());
    source.reference = Some("later".into());
    let feed = Running::start(vec![source]);
    let failed = feed.state(PATIENCE);
    assert_eq!(failed.state, SourceState::Failed);
    assert_eq!(failed.attempt, Some(1));
    let error = failed.error.unwrap_or_default();
    assert!(
        error.contains("branch `later` not found on remote"),
        "{error}"
    );

    // Failed stays failed: no polling, no events, even once the branch exists.
    remote.push_branch("later", "HEAD");
    feed.assert_quiet(Duration::from_millis(500));

    feed.handle.trigger("p").expect("feed running");
    let update = feed.update(PATIENCE);
    assert_eq!(update.reference, "refs/heads/later");
    assert_eq!(feed.state(PATIENCE).state, SourceState::Idle);
    feed.stop();
}

#[test]
fn gives_up_after_max_failures() {
    let mut source = quick_source("p", &refused_url("git"));
    source.max_failures = Some(3);
    let feed = Running::start(vec![source]);
    for attempt in 1..=2 {
        let state = feed.state(PATIENCE);
        assert_eq!(
            (state.state, state.attempt),
            (SourceState::Backoff, Some(attempt))
        );
    }
    let state = feed.state(PATIENCE);
    assert_eq!((state.state, state.attempt), (SourceState::Failed, Some(3)));
    assert!(state.error.unwrap_or_default().contains("refused"));
    feed.assert_quiet(Duration::from_millis(300));
    feed.stop();
}

#[test]
fn broken_clone_is_deleted_and_recloned() {
    let remote = Remote::new();
    let cache = crate::util::unique_dir();
    let source = quick_source("p", &remote.file_url());
    let first = gitfeed::sync_once(cache.path(), &source)
        .expect("first sync")
        .expect("first update");
    gitfeed::acknowledge(cache.path(), &source, &first.new).expect("acknowledge");
    let git_dir = clone_dir(cache.path()).join("repo.git");

    // A clone that cannot even be opened: the feed reports it, deletes it and clones afresh.
    std::fs::write(git_dir.join("HEAD"), "garbage").expect("corrupt HEAD");
    std::fs::remove_dir_all(git_dir.join("refs")).expect("remove refs");
    let feed = Running::start_in(cache, vec![source], |feed| feed);
    let state = feed.state(PATIENCE);
    assert_eq!(state.state, SourceState::Backoff, "{state:?}");
    assert!(state.error.unwrap_or_default().contains("unusable"));
    assert_eq!(feed.state(PATIENCE).state, SourceState::Idle);

    // The delivered commit survives the reclone: the next update starts from it.
    let new = remote.commit(&[("c.txt", Some("c\n"))], "c");
    let update = feed.update(PATIENCE);
    assert_eq!(update.old.as_deref(), Some(first.new.as_str()));
    assert_eq!(update.new, new);
    feed.stop();
}

#[test]
fn unacknowledged_updates_are_sent_again_after_a_restart() {
    let remote = Remote::new();
    let cache = crate::util::unique_dir();
    let source = quick_source("p", &remote.file_url());

    // Sent but never acknowledged: sent again by the next run.
    let run = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
    let first = run.update(PATIENCE);
    run.stop();
    let run = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
    let again = run.update(PATIENCE);
    assert_eq!((again.old.as_ref(), &again.new), (None, &first.new));
    run.handle.acknowledge("p", &again.new).expect("running");
    run.stop();

    // Acknowledged: the next run is quiet until the remote moves, then starts from it.
    let run = Running::start_at(cache.path(), vec![source], |feed| feed);
    run.assert_quiet(Duration::from_millis(400));
    let new = remote.commit(&[("n.txt", Some("n\n"))], "n");
    let update = run.update(PATIENCE);
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(first.new.as_str()), new.as_str())
    );
    run.stop();
}

#[test]
fn sources_are_added_and_removed_while_running() {
    let a = Remote::new();
    let b = Remote::new();
    let feed = Running::start(vec![]);
    feed.handle
        .add(quick_source("a", &a.file_url()))
        .expect("add a");
    assert_eq!(feed.update(PATIENCE).source, "a");
    feed.handle
        .add(quick_source("b", &b.file_url()))
        .expect("add b");
    assert_eq!(feed.update(PATIENCE).source, "b");
    feed.handle.remove("a").expect("remove a");
    a.commit(&[("x", Some("x"))], "x");
    let new_b = b.commit(&[("y", Some("y"))], "y");
    let update = feed.update(PATIENCE);
    assert_eq!(
        (update.source.as_str(), update.new.as_str()),
        ("b", new_b.as_str())
    );
    feed.assert_quiet(Duration::from_millis(400));
    let invalid = quick_source("", &a.file_url());
    assert!(feed.handle.add(invalid).is_err());
    feed.stop();
    assert!(feed_stopped_rejects_commands());
}

#[test]
fn changed_settings_take_effect_at_the_next_attempt() {
    let remote = Remote::new();
    // Polled only when triggered: an hour is longer than the test.
    let mut source = quick_source("p", &remote.file_url());
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source.clone()]);
    let first = feed.update(PATIENCE);
    // The same source with another filter: the running source takes the new settings.
    source.filter.extensions = vec!["rego".into()];
    feed.handle.add(source).expect("change p");
    let new = remote.commit(
        &[("policy.rego", Some("allow\n")), ("notes.txt", Some("n\n"))],
        "two files",
    );
    feed.handle.trigger("p").expect("trigger p");
    let update = feed.update(PATIENCE);
    assert_eq!(update.old.as_deref(), Some(first.new.as_str()));
    assert_eq!(update.new, new);
    let paths: Vec<&str> = update.changes.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(paths, ["policy.rego"], "the new filter applies");
    feed.stop();
}

fn feed_stopped_rejects_commands() -> bool {
    let feed = Running::start(vec![]);
    let handle = feed.handle.clone();
    feed.stop();
    handle.trigger("a").is_err() && handle.add(quick_source("a", "/tmp/x")).is_err()
}

#[test]
fn many_fetches_bringing_new_objects() {
    // Each fetch adds a pack; the repository handle must stay usable across far more fetches
    // than gix has pack slots by default (32).
    let remote = Remote::new();
    let mut source = quick_source("p", &remote.file_url());
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source]);
    let mut last = feed.update(PATIENCE).new;
    for i in 0..150 {
        let new = remote.commit(
            &[(&format!("f{}.txt", i % 7), Some(&format!("{i}\n")))],
            "next",
        );
        feed.handle.trigger("p").expect("feed running");
        let update = feed.update(PATIENCE);
        assert_eq!(update.old.as_deref(), Some(last.as_str()), "fetch {i}");
        assert_eq!(update.new, new, "fetch {i}");
        last = new;
    }
    // Packs are consolidated as they pile up (gix has no gc of its own); this runs before the
    // update is sent, so it has happened by now.
    let packs = walk_packs(feed.cache_dir());
    assert!(packs <= 9, "{packs} packs after 150 fetches");
    // The consolidated clone is a sound repository holding everything the tip reaches (the
    // feed is idle: its next poll is an hour away).
    let clone = clone_dir(feed.cache_dir()).join("repo.git");
    crate::util::git_in(&clone, &["fsck", "--full", "--strict", "--no-dangling"]);
    crate::util::git_in(&clone, &["rev-list", "--objects", &last]);
    feed.stop();
}

#[test]
fn shallow_source_keeps_diffing_against_the_delivered_commit() {
    let remote = Remote::new();
    let mut source = quick_source("p", &remote.file_url());
    source.depth = Some(1);
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source]);
    let mut last = feed.update(PATIENCE).new;
    for i in 0..30 {
        let new = remote.commit(
            &[(&format!("d{}/f.txt", i % 3), Some(&format!("{i}\n")))],
            "next",
        );
        feed.handle.trigger("p").expect("feed running");
        let update = feed.update(PATIENCE);
        assert_eq!(update.old.as_deref(), Some(last.as_str()), "fetch {i}");
        let mut expected = crate::util::name_status(&remote.bare_path(), &last, &new);
        expected.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(crate::harness::letters(&update), expected, "fetch {i}");
        feed.handle.acknowledge("p", &new).expect("running");
        last = new;
    }
    // The clone stays shallow: fetching with a depth never deepens it, and consolidation
    // drops commits nobody needs any more.
    let clone = clone_dir(feed.cache_dir()).join("repo.git");
    let tip_ref = crate::harness::tip_ref(&clone);
    let count = crate::util::git_in(&clone, &["rev-list", "--count", &tip_ref]);
    let count: usize = count.trim().parse().expect("a count");
    assert!(
        count <= 3,
        "{count} commits of history in a depth-1 clone after 30 updates"
    );
    feed.stop();
}

fn walk_packs(dir: &std::path::Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).expect("readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            count += walk_packs(&path);
        } else if path.extension().is_some_and(|e| e == "pack") {
            count += 1;
        }
    }
    count
}

#[test]
fn events_serialize_as_the_contract_says() {
    let remote = Remote::new();
    let feed = Running::start(vec![quick_source("p", &remote.file_url())]);
    let update = feed.update(PATIENCE);
    let json: serde_json::Value =
        serde_json::to_value(Event::Update(update)).expect("serializable");
    assert_eq!(json["type"], "update");
    for key in ["source", "url", "ref", "old", "new", "forced", "changes"] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    assert_eq!(json["changes"][0]["kind"], "added");
    feed.stop();
}

#[test]
fn leftovers_of_a_killed_fetch_are_removed() {
    let remote = Remote::new();
    let cache = crate::util::unique_dir();
    let source = quick_source("p", &remote.file_url());
    let first = gitfeed::sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    gitfeed::acknowledge(cache.path(), &source, &first.new).expect("ack");
    let git_dir = clone_dir(cache.path()).join("repo.git");
    let leftovers = [
        git_dir.join("packed-refs.lock"),
        crate::harness::tip_ref_file(&git_dir).with_extension("lock"),
        git_dir.join("objects/pack/tmp_pack_a1b2c3"),
        git_dir.join("objects/pack/.tmpXyZ123"),
    ];
    for leftover in &leftovers {
        std::fs::write(leftover, vec![0u8; 1 << 20]).expect("plant a leftover");
    }
    // A consolidation killed midway, and a fetch killed between moving its pack into place
    // and updating the ref.
    let staging = git_dir.join("objects/pack/.tmp-consolidate-1-2");
    std::fs::create_dir_all(&staging).expect("staging dir");
    std::fs::write(staging.join("pack-x.pack"), vec![0u8; 1 << 20]).expect("staged pack");
    let pack = std::fs::read_dir(git_dir.join("objects/pack"))
        .expect("pack dir")
        .flatten()
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .expect("a pack");
    let keep = pack.with_extension("keep");
    std::fs::write(&keep, "").expect("keep file");
    let new = remote.commit(&[("n.txt", Some("n\n"))], "n");
    let update = gitfeed::sync_once(cache.path(), &source)
        .expect("sync despite leftovers")
        .expect("update");
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(first.new.as_str()), new.as_str())
    );
    for leftover in leftovers.iter().chain([&staging, &keep]) {
        assert!(!leftover.exists(), "{} survived", leftover.display());
    }
}

#[test]
fn one_process_writes_a_cache_entry_at_a_time() {
    let remote = Remote::new();
    let cache = crate::util::unique_dir();
    let source = quick_source("p", &remote.file_url());
    gitfeed::sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let entry = clone_dir(cache.path());
    // Another writer holds the clone's lock. flock(2) locks belong to an open file, so a
    // second open in this process conflicts just as another process would.
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(entry.join("lock"))
        .expect("open the lock file");
    holder.try_lock().expect("take the lock");
    let err = gitfeed::sync_once(cache.path(), &source).expect_err("the entry is busy");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(holder);
    assert!(gitfeed::sync_once(cache.path(), &source).is_ok());
}
