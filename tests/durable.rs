//! Durable delivery: ref kinds, mirrors, triggers, status, and a damaged cache.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gitfeed::{ErrorKind, SourceState, acknowledge, sync_once};

use crate::harness::{Running, clone_dir, entry_dir, incompressible, quick_source};
use crate::util::{
    Fault, FaultServer, GitDaemon, HttpServer, Remote, git_in, name_status, refused_url, unique_dir,
};

const PATIENCE: Duration = Duration::from_secs(20);

#[test]
fn annotated_tag_resolves_to_its_commit_and_moves() {
    let remote = Remote::new();
    let tagged = remote.head();
    remote.git(&["tag", "-a", "v1", "-m", "release", &tagged]);
    remote.git(&["push", "-q", "origin", "v1"]);
    let cache = unique_dir();
    let mut source = quick_source("t", &remote.file_url());
    source.reference = Some("refs/tags/v1".into());
    let first = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    assert_eq!(
        (first.reference.as_str(), first.new.as_str()),
        ("refs/tags/v1", tagged.as_str())
    );
    acknowledge(cache.path(), &source, &first.new).expect("ack");

    let moved = remote.commit(&[("release.txt", Some("2\n"))], "next release");
    remote.git(&["tag", "-f", "-a", "v1", "-m", "release again", &moved]);
    remote.git(&["push", "-q", "--force", "origin", "v1"]);
    let update = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("the moved tag is an update");
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(tagged.as_str()), moved.as_str())
    );
    assert_eq!(
        crate::harness::letters(&update),
        name_status(&remote.bare_path(), &tagged, &moved)
    );
}

#[test]
fn pinned_commit_is_synced_once_then_never_polled() {
    let remote = Remote::new();
    let pinned = remote.head();
    let server = HttpServer::start(&remote.root());
    let mut source = quick_source("p", &server.url(remote.name()));
    source.reference = Some(pinned.clone());
    let feed = Running::start(vec![source]);
    let update = feed.update(PATIENCE);
    assert_eq!(
        (update.new.as_str(), update.reference.as_str()),
        (pinned.as_str(), pinned.as_str())
    );
    let requests = server.connections();
    remote.commit(&[("later.txt", Some("x\n"))], "later");
    feed.assert_quiet(Duration::from_millis(600));
    assert_eq!(
        server.connections(),
        requests,
        "a pinned source is not polled again"
    );
    feed.stop();
}

#[test]
fn deleted_branch_is_retried_until_it_returns() {
    let remote = Remote::new();
    remote.push_branch("feature", "HEAD");
    let mut source = quick_source("f", &remote.file_url());
    source.reference = Some("feature".into());
    source.backoff_max = Duration::from_millis(50);
    let feed = Running::start(vec![source]);
    let first = feed.update(PATIENCE);
    feed.handle.acknowledge("f", &first.new).expect("running");
    remote.delete_branch("feature");
    let state = feed.state(PATIENCE);
    assert_eq!(state.state, SourceState::Backoff, "{state:?}");
    assert!(
        state
            .error
            .unwrap_or_default()
            .contains("branch `feature` was deleted on the remote")
    );
    let returned = remote.commit(&[("back.txt", Some("b\n"))], "back");
    remote.push_branch("feature", "HEAD");
    let update = loop {
        match feed.next(PATIENCE, "the branch to return") {
            gitfeed::Event::Update(update) => break update,
            gitfeed::Event::State(state) => {
                assert_eq!(state.state, SourceState::Backoff, "{state:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(first.new.as_str()), returned.as_str())
    );
    assert_eq!(feed.state(PATIENCE).state, SourceState::Idle);
    feed.stop();
}

#[test]
fn mirror_serves_when_the_primary_is_down() {
    let remote = Remote::new();
    let cache = unique_dir();
    let mut source = quick_source("m", &refused_url("git"));
    source.mirrors = vec![remote.file_url()];
    let update = sync_once(cache.path(), &source)
        .expect("the mirror serves")
        .expect("update");
    assert_eq!(
        update.url,
        remote.file_url(),
        "the update names the URL that served it"
    );
    assert_eq!(update.new, remote.head());
}

#[test]
fn mirror_serves_when_the_primary_hangs() {
    let remote = Remote::new();
    let hung = FaultServer::start(Fault::Silent);
    let cache = unique_dir();
    let mut source = quick_source("m", &hung.url("repo.git"));
    source.timeout = Duration::from_secs(1);
    source.mirrors = vec![remote.file_url()];
    let started = std::time::Instant::now();
    let update = sync_once(cache.path(), &source)
        .expect("the mirror serves")
        .expect("update");
    assert_eq!(update.url, remote.file_url());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn mirror_behind_never_moves_delivery_backwards() {
    let primary = Remote::new();
    let daemon = GitDaemon::start(&primary.root());
    let mirror = Remote::new(); // same initial commit, nothing newer
    let cache = unique_dir();
    let mut source = quick_source("m", &daemon.url(primary.name()));
    source.mirrors = vec![mirror.file_url()];
    let ahead = primary.commit(&[("new.txt", Some("n\n"))], "ahead of the mirror");
    let first = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    assert_eq!(first.new, ahead);
    acknowledge(cache.path(), &source, &first.new).expect("ack");
    drop(daemon); // the primary goes down; the mirror is one commit behind
    assert_eq!(
        sync_once(cache.path(), &source).expect("the mirror answers"),
        None
    );
    let status_before =
        std::fs::read_to_string(entry_dir(cache.path()).join("state.json")).expect("state");
    assert!(
        status_before.contains(&ahead),
        "the acknowledged commit stays {ahead}: {status_before}"
    );
}

#[test]
fn trigger_with_a_known_commit_fetches_nothing() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    let mut source = quick_source("t", &server.url(remote.name()));
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source]);
    let first = feed.update(PATIENCE);
    let requests = server.connections();
    feed.handle
        .trigger_with_hint("t", &first.new)
        .expect("running");
    feed.assert_quiet(Duration::from_millis(400));
    assert_eq!(
        server.connections(),
        requests,
        "a known commit needs no fetch"
    );
    let new = remote.commit(&[("hook.txt", Some("h\n"))], "pushed");
    feed.handle.trigger_with_hint("t", &new).expect("running");
    assert_eq!(feed.update(PATIENCE).new, new);
    feed.stop();
}

#[test]
fn status_reports_each_source() {
    let remote = Remote::new();
    let cache = unique_dir();
    let good = quick_source("good", &remote.file_url());
    let mut bad = quick_source("bad", &refused_url("git"));
    bad.max_failures = Some(1);
    let feed = Running::start_at(cache.path(), vec![good, bad], |feed| feed);
    let mut seen_update = None;
    let mut seen_failed = false;
    while seen_update.is_none() || !seen_failed {
        match feed.next(PATIENCE, "an update and a failure") {
            gitfeed::Event::Update(update) => {
                feed.handle
                    .acknowledge("good", &update.new)
                    .expect("running");
                seen_update = Some(update);
            }
            gitfeed::Event::State(state) => seen_failed |= state.state == SourceState::Failed,
            other => panic!("unexpected {other:?}"),
        }
    }
    feed.stop();
    let update = seen_update.expect("update");
    let all = gitfeed::status(cache.path()).expect("status");
    assert_eq!(
        all.iter().map(|s| s.source.as_str()).collect::<Vec<_>>(),
        ["bad", "good"]
    );
    let (bad, good) = (&all[0], &all[1]);
    assert_eq!((bad.state.as_str(), bad.attempt), ("failed", 1));
    assert!(
        bad.last_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{bad:?}"
    );
    assert_eq!(bad.last_success_ms, None);
    assert_eq!(good.state, "idle");
    assert_eq!(good.current.as_deref(), Some(update.new.as_str()));
    assert_eq!(good.acknowledged.as_deref(), Some(update.new.as_str()));
    assert_eq!(good.served_by.as_deref(), Some(remote.file_url().as_str()));
    assert!(good.last_success_ms.is_some() && good.last_error.is_none());
}

/// Syncs once and acknowledges, damages the clone with `damage`, moves the remote, then
/// checks that the damage ends in a repair (a fresh clone) and a correct update.
fn survives(damage: impl FnOnce(&Path)) {
    let remote = Remote::new();
    let cache = unique_dir();
    let source = quick_source("d", &remote.file_url());
    let first = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    acknowledge(cache.path(), &source, &first.new).expect("ack");
    damage(&clone_dir(cache.path()).join("repo.git"));
    let new = remote.commit(
        &[("after.txt", Some("a\n")), ("README.md", None)],
        "after the damage",
    );
    let update = match sync_once(cache.path(), &source) {
        Ok(update) => update,
        Err(err) => {
            assert_eq!(
                err.kind(),
                ErrorKind::Corrupt,
                "damage is reported as such: {err}"
            );
            sync_once(cache.path(), &source).expect("the retry clones afresh")
        }
    }
    .expect("an update");
    assert_eq!(update.new, new);
    match update.old.as_deref() {
        Some(old) => {
            assert_eq!(old, first.new);
            assert_eq!(
                crate::harness::letters(&update),
                name_status(&remote.bare_path(), old, &new)
            );
        }
        // The acknowledged commit's objects were lost with the clone: a full listing.
        None => {
            let listed = remote.git_bare(&["ls-tree", "-r", "--name-only", &new]);
            let expected: Vec<(char, String)> =
                listed.lines().map(|p| ('A', p.to_owned())).collect();
            assert_eq!(crate::harness::letters(&update), expected);
        }
    }
}

fn packs(git_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(git_dir.join("objects/pack"))
        .expect("pack dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .collect()
}

#[test]
fn truncated_pack() {
    survives(|git_dir| {
        for pack in packs(git_dir) {
            let len = std::fs::metadata(&pack).expect("pack").len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&pack)
                .expect("open")
                .set_len(len / 2)
                .expect("truncate");
        }
    });
}

#[test]
fn deleted_pack() {
    survives(|git_dir| {
        for pack in packs(git_dir) {
            std::fs::remove_file(&pack).expect("remove pack");
            std::fs::remove_file(pack.with_extension("idx")).expect("remove idx");
        }
    });
}

#[test]
fn deleted_loose_object() {
    survives(|git_dir| {
        // Turn the pack into loose objects, then lose one of them.
        for pack in packs(git_dir) {
            let moved = git_dir.join("unpacked.pack");
            std::fs::rename(&pack, &moved).expect("move pack");
            std::fs::remove_file(pack.with_extension("idx")).expect("remove idx");
            let out = std::process::Command::new("git")
                .current_dir(git_dir)
                .args(["unpack-objects", "-q"])
                .stdin(std::fs::File::open(&moved).expect("pack"))
                .status()
                .expect("git unpack-objects");
            assert!(out.success());
            std::fs::remove_file(&moved).expect("remove moved pack");
        }
        let tip_ref = crate::harness::tip_ref(git_dir);
        let tip = git_in(git_dir, &["rev-parse", &format!("{tip_ref}^{{tree}}")]);
        let tip = tip.trim();
        std::fs::remove_file(git_dir.join("objects").join(&tip[..2]).join(&tip[2..]))
            .expect("remove a loose tree");
    });
}

#[test]
fn garbage_in_a_ref() {
    survives(|git_dir| {
        std::fs::write(crate::harness::tip_ref_file(git_dir), "not a commit id\n").expect("write");
    });
}

#[test]
fn garbage_in_head() {
    survives(|git_dir| {
        std::fs::write(git_dir.join("HEAD"), "ref: ../../../etc\n\0garbage").expect("write");
    });
}

#[test]
fn cache_removed_while_running() {
    let remote = Remote::new();
    let cache = unique_dir();
    let mut source = quick_source("r", &remote.file_url());
    source.interval = Duration::from_secs(3600);
    let feed = Running::start_at(cache.path(), vec![source], |feed| feed);
    let first = feed.update(PATIENCE);
    feed.handle.acknowledge("r", &first.new).expect("running");
    let state = entry_dir(cache.path()).join("state.json");
    crate::util::settle(
        || usize::from(!std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&first.new))),
        0,
        PATIENCE,
    );
    // The source's task writes its status file once it hears of the acknowledgement; removing
    // the directory while that file is being replaced would fail (a new file appears midway).
    let status = entry_dir(cache.path()).join("status.json");
    let acknowledged = format!("\"acknowledged\":\"{}\"", first.new);
    crate::util::settle(
        || usize::from(!std::fs::read_to_string(&status).is_ok_and(|s| s.contains(&acknowledged))),
        0,
        PATIENCE,
    );
    // Everything goes: clone, acknowledgement, the cache directory itself.
    if let Err(err) = std::fs::remove_dir_all(cache.path()) {
        let left: Vec<_> = walk(cache.path());
        panic!("remove the cache: {err}; left: {left:?}");
    }
    let new = remote.commit(&[("n.txt", Some("n\n"))], "n");
    feed.handle.trigger("r").expect("running");
    let update = loop {
        match feed.next(PATIENCE, "an update after the cache was removed") {
            gitfeed::Event::Update(update) => break update,
            gitfeed::Event::State(state) => {
                assert_ne!(state.state, SourceState::Failed, "{state:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(update.new, new);
    // Whatever the feed still knew, the update is consistent with git's view.
    match update.old.as_deref() {
        Some(old) => assert_eq!(
            crate::harness::letters(&update),
            name_status(&remote.bare_path(), old, &new)
        ),
        None => assert!(
            update
                .changes
                .iter()
                .all(|c| c.kind == gitfeed::ChangeKind::Added)
        ),
    }
    feed.stop();
}

/// Runs `script` with `sh` in a private mount namespace (so it may mount a small tmpfs) and
/// returns its stdout and stderr. `$GITFEED` names the binary. Fails loudly when the
/// namespace cannot be created: these tests must not pass by doing nothing.
fn in_mount_namespace(script: &str) -> (String, String) {
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .env("GITFEED", env!("CARGO_BIN_EXE_gitfeed"))
        .output()
        .expect("run unshare (util-linux) to get a private mount namespace");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the namespace script failed:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn read_only_cache_is_a_clear_permanent_error() {
    let remote = Remote::new();
    let dir = unique_dir();
    let script = format!(
        r#"set -u
mount -t tmpfs -o ro,size=1m tmpfs '{dir}'
"$GITFEED" watch '{url}' --once --cache-dir '{dir}/cache' 2>'{dir}.err'
echo "exit=$?"
umount '{dir}'"#,
        dir = dir.path().display(),
        url = remote.file_url(),
    );
    let (stdout, _) = in_mount_namespace(&script);
    assert!(stdout.contains("exit=1"), "{stdout}");
    let stderr = std::fs::read_to_string(format!("{}.err", dir.path().display())).expect("stderr");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("Read-only file system") && stderr.contains("must be writable"),
        "{stderr}"
    );
    std::fs::remove_file(format!("{}.err", dir.path().display())).expect("clean up");
}

#[test]
fn disk_full_during_a_fetch_leaves_nothing_and_recovers() {
    let remote = Remote::new();
    // Incompressible content: the pack cannot fit in the small filesystem.
    let noise = incompressible(1_000_000, 0x9e37_79b9_7f4a_7c15);
    let big = remote.commit(&[("big.txt", Some(&noise))], "big");
    let dir = unique_dir();
    let script = format!(
        r#"set -u
mount -t tmpfs -o size=256k tmpfs '{dir}'
"$GITFEED" watch '{url}' --once --cache-dir '{dir}/cache' >'{dir}.out1' 2>'{dir}.err1'
echo "first=$?"
echo "leftovers=$(find '{dir}/cache' -name 'tmp*' -o -name '.tmp*' -o -name '*.lock' -o -name '*.init' | wc -l)"
mount -o remount,size=64m '{dir}'
"$GITFEED" watch '{url}' --once --cache-dir '{dir}/cache' >'{dir}.out2' 2>'{dir}.err2'
echo "second=$?"
umount '{dir}'"#,
        dir = dir.path().display(),
        url = remote.file_url(),
    );
    let (stdout, _) = in_mount_namespace(&script);
    let read = |name: &str| {
        let path = format!("{}.{name}", dir.path().display());
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text
    };
    let (out1, err1, out2, err2) = (read("out1"), read("err1"), read("out2"), read("err2"));
    assert!(stdout.contains("first=1"), "{stdout}\n{err1}");
    assert!(out1.is_empty(), "no update from a failed fetch: {out1}");
    assert!(err1.contains("No space left"), "{err1}");
    assert!(stdout.contains("leftovers=0"), "{stdout}");
    assert!(stdout.contains("second=0"), "{stdout}\n{err2}");
    let update: gitfeed::Event = serde_json::from_str(out2.trim()).expect("one update");
    let gitfeed::Event::Update(update) = update else {
        panic!("expected an update: {out2}");
    };
    assert_eq!(update.new, big);
    assert!(update.changes.iter().any(|c| c.path == "big.txt"));
}

#[test]
fn a_pack_over_the_limit_is_refused_and_removed() {
    let remote = Remote::new();
    let noise = incompressible(2_000_000, 0x2545_f491_4f6c_dd1d);
    remote.commit(&[("big.txt", Some(&noise))], "big");
    let daemon = GitDaemon::start(&remote.root());
    let cache = unique_dir();
    let mut source = quick_source("p", &daemon.url(remote.name()));
    source.max_pack_size = 256 * 1024;
    let err = sync_once(cache.path(), &source).expect_err("too large");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("max_pack_size"), "{err}");
    let leftover: u64 = std::fs::read_dir(clone_dir(cache.path()).join("repo.git/objects/pack"))
        .expect("pack dir")
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .map(|metadata| metadata.len())
        .sum();
    assert!(leftover < 64 * 1024, "{leftover} bytes of pack left behind");
    source.max_pack_size = 64 << 20;
    assert!(
        sync_once(cache.path(), &source)
            .expect("within the limit")
            .is_some()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Every entry under `dir` with what a write, a create, a rename or a removal would change:
/// its inode, size and modification time (a directory's changes with its entries).
fn disk_state(dir: &Path) -> DiskState {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<_> = walk(dir)
        .into_iter()
        .chain([dir.to_owned()])
        .map(|path| match std::fs::symlink_metadata(&path) {
            Ok(metadata) => {
                let (inode, size) = (metadata.ino(), metadata.size());
                (path, inode, size, metadata.mtime(), metadata.mtime_nsec())
            }
            // Gone since it was listed: something is writing.
            Err(_) => (path, 0, 0, 0, 0),
        })
        .collect();
    entries.sort();
    entries
}

type DiskState = Vec<(PathBuf, u64, u64, i64, i64)>;

fn assert_unchanged(before: &DiskState, after: &DiskState, what: &str) {
    let changed: Vec<_> = after
        .iter()
        .filter(|entry| !before.contains(entry))
        .collect();
    let gone: Vec<_> = before
        .iter()
        .filter(|entry| !after.contains(entry))
        .collect();
    assert!(
        changed.is_empty() && gone.is_empty(),
        "{what} wrote to the cache: now {changed:?}, before {gone:?}"
    );
}

#[test]
fn no_change_polls_write_nothing_to_the_cache() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    let mut source = quick_source("q", &server.url(remote.name()));
    source.interval = Duration::from_millis(200);
    let dir = unique_dir();
    let cache = dir.path();
    let feed = Running::start_at(cache, vec![source.clone()], |feed| feed);
    let first = feed.update(PATIENCE);
    feed.handle.acknowledge("q", &first.new).expect("running");
    // The acknowledgement is news: its status is written once, then nothing more.
    let status = entry_dir(cache).join("status.json");
    let acknowledged = format!("\"acknowledged\":\"{}\"", first.new);
    crate::util::settle(
        || usize::from(!std::fs::read_to_string(&status).is_ok_and(|s| s.contains(&acknowledged))),
        0,
        PATIENCE,
    );
    let polled = server.connections();
    let before = disk_state(cache);
    // 20 polls, each one HTTP request (`transports::http_no_change_poll_is_one_request`),
    // then one more so that the 20th has ended.
    let polls = crate::util::settle(
        || (polled + 21).saturating_sub(server.connections()),
        0,
        PATIENCE,
    );
    assert_eq!(polls, 0, "the feed kept polling");
    assert_unchanged(&before, &disk_state(cache), "a no-change poll of a feed");
    feed.stop();

    // Outside a feed: a follower's polls and single attempts, each opening the clone afresh.
    // The first is news: the feed's shutdown cut an attempt short, and its status says so.
    let mut follower = gitfeed::Follower::new(cache, &source).expect("valid");
    assert_eq!(follower.poll().expect("a poll"), None);
    let before = disk_state(cache);
    for _ in 0..20 {
        assert_eq!(follower.poll().expect("a poll"), None);
    }
    drop(follower);
    for _ in 0..5 {
        assert_eq!(sync_once(cache, &source).expect("a poll"), None);
    }
    assert_unchanged(
        &before,
        &disk_state(cache),
        "a no-change poll outside a feed",
    );
}
