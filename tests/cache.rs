//! One clone per repository: sources that follow other refs, pins or depths of one URL share
//! it, consolidation by one source keeps every other source's commits, `gc` removes only unused
//! clones, and a cache of the layout before clones were shared is taken over without delivering
//! anything twice. The cache holds what the current sources need: a source no longer followed
//! takes its entry and clone with it, or its tip and the objects only it needed from a clone
//! other sources read, and a feed that shuts down releases nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gitfeed::{Follower, Source, acknowledge, sync_once};

use crate::harness::{Running, letters, quick_source};
use crate::util::{GitDaemon, Remote, git_command, git_in, settle, unique_dir};

/// How long a feed may take to release what a source left.
const WITHIN: Duration = Duration::from_secs(20);

/// The clone directories in `cache`.
fn clones(cache: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("clones"))
        .map(|listing| listing.flatten().map(|item| item.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The names of the directories in `dir` (the clones, or the entries), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|listing| {
            listing
                .flatten()
                .map(|item| item.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "clones")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until `done` holds, at most `WITHIN`; true when it did.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    settle(|| usize::from(!done()), 0, WITHIN) == 0
}

/// The tip refs in the clone at `git_dir`.
fn tip_refs(git_dir: &Path) -> Vec<String> {
    git_in(
        git_dir,
        &["for-each-ref", "--format=%(refname)", "refs/gitfeed/"],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// True when the clone at `git_dir` holds the object `id`.
fn has_object(git_dir: &Path, id: &str) -> bool {
    git_command()
        .arg("--git-dir")
        .arg(git_dir)
        .args(["cat-file", "-e", id])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run git cat-file")
        .success()
}

/// Bytes taken by the files under `path`, as `du -sb` counts them.
fn disk_usage(path: &Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-sb".as_ref(), path.as_os_str()])
        .output()
        .expect("run du");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|bytes| bytes.parse().ok())
        .expect("du prints a size")
}

fn pinned(name: &str, url: &str, commit: &str) -> Source {
    let mut source = quick_source(name, url);
    source.reference = Some(commit.to_owned());
    source
}

/// Syncs `source` and acknowledges the update; returns it.
fn sync_and_ack(cache: &Path, source: &Source) -> gitfeed::Update {
    let update = sync_once(cache, source)
        .unwrap_or_else(|err| panic!("{}: {err}", source.name))
        .unwrap_or_else(|| panic!("{}: an update", source.name));
    acknowledge(cache, source, &update.new).expect("acknowledge");
    update
}

#[test]
fn refs_pins_and_depths_of_one_url_share_clones() {
    let remote = Remote::new();
    let daemon = GitDaemon::start(&remote.root());
    let url = daemon.url(remote.name());
    let first = remote.head();
    let second = remote.commit(&[("b.txt", Some("b\n"))], "second");
    remote.push_branch("dev", &second);
    let third = remote.commit(&[("c.txt", Some("c\n"))], "third");
    let cache = unique_dir();

    let main = quick_source("main", &url);
    let mut dev = quick_source("dev", &url);
    dev.reference = Some("dev".into());
    let pin_first = pinned("pin", &url, &first);
    let pin_second = pinned("pin", &url, &second);
    let mut shallow = quick_source("shallow", &url);
    shallow.depth = Some(1);
    let mut shallow_dev = shallow.clone();
    shallow_dev.name = "shallow-dev".into();
    shallow_dev.reference = Some("dev".into());

    assert_eq!(sync_and_ack(cache.path(), &main).new, third);
    assert_eq!(sync_and_ack(cache.path(), &dev).new, second);
    assert_eq!(sync_and_ack(cache.path(), &pin_first).new, first);
    assert_eq!(sync_and_ack(cache.path(), &pin_second).new, second);
    assert_eq!(sync_and_ack(cache.path(), &shallow).new, third);
    assert_eq!(sync_and_ack(cache.path(), &shallow_dev).new, second);
    // Every full-history source reads one clone; each shallow source keeps its own (git's
    // `shallow` file is repository-wide). The second pin is the same source (`pin`) pinned
    // elsewhere: it released the first pin's entry and tip ref.
    let all = clones(cache.path());
    assert_eq!(all.len(), 3, "{all:?}");
    let full: Vec<&PathBuf> = all
        .iter()
        .filter(|dir| !dir.to_string_lossy().contains("-depth"))
        .collect();
    assert_eq!(full.len(), 1, "{all:?}");
    let git_dir = full[0].join("repo.git");
    assert!(
        !git_dir.join("shallow").exists(),
        "the shared clone is complete"
    );
    let refs = git_in(
        &git_dir,
        &["for-each-ref", "--format=%(refname)", "refs/gitfeed/"],
    );
    assert_eq!(refs.lines().count(), 3, "one tip ref per source:\n{refs}");

    // Each source moves on its own ref and gets exactly its own changes.
    let dev_next = remote.commit_to("dev", &second, &[("dev.txt", Some("dev\n"))], "on dev");
    let main_next = remote.commit(&[("b.txt", None)], "fourth");
    let update = sync_and_ack(cache.path(), &main);
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(third.as_str()), main_next.as_str())
    );
    assert_eq!(letters(&update), vec![('D', "b.txt".to_owned())]);
    let update = sync_and_ack(cache.path(), &dev);
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(second.as_str()), dev_next.as_str())
    );
    assert_eq!(letters(&update), vec![('A', "dev.txt".to_owned())]);
    assert!(!update.forced);
    let update = sync_and_ack(cache.path(), &shallow_dev);
    assert_eq!(update.new, dev_next);
    assert_eq!(letters(&update), vec![('A', "dev.txt".to_owned())]);
    let update = sync_and_ack(cache.path(), &shallow);
    assert_eq!(update.new, main_next);
    assert_eq!(letters(&update), vec![('D', "b.txt".to_owned())]);
    assert_eq!(
        sync_once(cache.path(), &pin_second).expect("pinned sync"),
        None
    );
    // Pinned back, the source starts afresh: its consumer has applied the second pin since.
    let back = sync_and_ack(cache.path(), &pin_first);
    assert_eq!((back.old, back.new), (None, first));
    assert_eq!(clones(cache.path()).len(), 3);
    git_in(&git_dir, &["fsck", "--full", "--strict", "--no-dangling"]);
}

#[test]
fn sources_of_one_feed_share_the_clone_and_each_get_their_updates() {
    let remote = Remote::new();
    let daemon = GitDaemon::start(&remote.root());
    let url = daemon.url(remote.name());
    let base = remote.head();
    remote.push_branch("dev", &base);
    let main = quick_source("main", &url);
    let mut dev = quick_source("dev", &url);
    dev.reference = Some("dev".into());
    let feed = Running::start(vec![main, dev]);
    let mut firsts: Vec<String> = (0..2)
        .map(|_| feed.update(Duration::from_secs(20)).source)
        .collect();
    firsts.sort();
    assert_eq!(firsts, ["dev", "main"]);
    let mut dev_tip = base;
    for round in 0..3 {
        let text = format!("{round}\n");
        let on_main = remote.commit(&[("m.txt", Some(&text))], "main");
        let on_dev = remote.commit_to("dev", &dev_tip, &[("d.txt", Some(&text))], "dev");
        dev_tip = on_dev.clone();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let update = feed.update(Duration::from_secs(20));
            feed.handle
                .acknowledge(&update.source, &update.new)
                .expect("running");
            seen.push((update.source.clone(), update.new.clone(), letters(&update)));
        }
        seen.sort();
        let kind = if round == 0 { 'A' } else { 'M' };
        assert_eq!(
            seen,
            vec![
                (
                    "dev".to_owned(),
                    on_dev.clone(),
                    vec![(kind, "d.txt".to_owned())]
                ),
                (
                    "main".to_owned(),
                    on_main.clone(),
                    vec![(kind, "m.txt".to_owned())]
                ),
            ],
            "round {round}"
        );
    }
    assert_eq!(clones(feed.cache_dir()).len(), 1);
    feed.stop();
}

#[test]
fn four_pins_take_about_one_clone() {
    let remote = Remote::new();
    let mut pins = Vec::new();
    for i in 0..4u64 {
        let blob = crate::harness::incompressible(256 << 10, i + 1);
        pins.push(remote.commit(&[(&format!("f{i}.bin"), Some(&blob))], "grow"));
    }
    let one = unique_dir();
    sync_and_ack(one.path(), &pinned("p", &remote.file_url(), &pins[3]));
    let four = unique_dir();
    for pin in &pins {
        sync_and_ack(four.path(), &pinned("p", &remote.file_url(), pin));
    }
    let (one, four) = (disk_usage(one.path()), disk_usage(four.path()));
    assert!(
        four as f64 <= 1.5 * one as f64,
        "four pins take {four} bytes, one takes {one}"
    );
}

/// Consolidation keeps what every source of the clone still needs: a commit another source
/// acknowledged that no ref reaches any more (its branch was rewritten) survives, so that
/// source's next update is still diffed from it.
#[test]
fn consolidation_by_one_source_keeps_the_commits_of_the_others() {
    let remote = Remote::new();
    let url = remote.file_url();
    let base = remote.head();
    let cache = unique_dir();
    let main = quick_source("main", &url);
    let mut dev = quick_source("dev", &url);
    dev.reference = Some("dev".into());
    sync_and_ack(cache.path(), &main);

    let doomed = remote.commit_to("dev", &base, &[("doomed.txt", Some("soon gone\n"))], "dev");
    assert_eq!(sync_and_ack(cache.path(), &dev).new, doomed);
    // dev is rewritten: `doomed` is now reachable only from dev's acknowledged commit.
    let rewritten = remote.commit_to("dev", &base, &[("other.txt", Some("instead\n"))], "dev");
    let pending = sync_once(cache.path(), &dev)
        .expect("sync dev")
        .expect("the rewrite");
    assert_eq!(pending.old.as_deref(), Some(doomed.as_str()));
    assert!(pending.forced);
    // Not acknowledged: the consumer has not applied it yet.

    let git_dir = clones(cache.path())[0].join("repo.git");
    let packs = || {
        std::fs::read_dir(git_dir.join("objects/pack"))
            .expect("pack dir")
            .flatten()
            .filter(|item| item.file_name().to_string_lossy().ends_with(".idx"))
            .count()
    };
    // main fetches until its packs pile up and it consolidates them.
    let mut consolidated = false;
    for round in 0..20 {
        let before = packs();
        remote.commit(&[("m.txt", Some(&format!("{round}\n")))], "main");
        sync_and_ack(cache.path(), &main);
        if packs() < before {
            consolidated = true;
            break;
        }
    }
    assert!(consolidated, "main never consolidated the clone's packs");
    git_in(&git_dir, &["cat-file", "-e", &format!("{doomed}^{{tree}}")]);
    git_in(&git_dir, &["fsck", "--full", "--strict", "--no-dangling"]);
    let again = sync_once(cache.path(), &dev)
        .expect("sync dev")
        .expect("the unacknowledged update again");
    assert_eq!(again.old.as_deref(), Some(doomed.as_str()));
    assert_eq!(again.new, rewritten);
    assert!(again.forced);
    assert_eq!(letters(&again), letters(&pending));
}

#[test]
fn gc_removes_only_unused_clones_and_keeps_delivery_state() {
    let kept = Remote::new();
    let idle = Remote::named("idle.git");
    let cache = unique_dir();
    let open = quick_source("open", &kept.file_url());
    let gone = quick_source("gone", &idle.file_url());
    let mut follower = Follower::new(cache.path(), &open).expect("follower");
    let update = follower.poll().expect("poll").expect("update");
    follower.acknowledge(&update.new).expect("ack");
    let delivered = sync_and_ack(cache.path(), &gone).new;
    assert_eq!(clones(cache.path()).len(), 2);

    // Recently used: a week's threshold removes nothing.
    let report = gitfeed::gc(cache.path(), Duration::from_secs(7 * 24 * 3600)).expect("gc");
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(clones(cache.path()).len(), 2);

    let report = gitfeed::gc(cache.path(), Duration::ZERO).expect("gc");
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(report.removed[0].to_string_lossy().contains("idle-"));
    assert_eq!(report.in_use.len(), 1, "{report:?}");
    assert!(report.bytes_freed > 0);
    let left = clones(cache.path());
    assert_eq!(left.len(), 1);
    assert!(left[0].join("repo.git").exists());
    // The follower's clone still works.
    assert_eq!(follower.poll().expect("poll after gc"), None);

    // The removed clone's source clones again and delivers nothing twice.
    assert_eq!(sync_once(cache.path(), &gone).expect("reclone"), None);
    let next = idle.commit(&[("n.txt", Some("n\n"))], "next");
    let update = sync_and_ack(cache.path(), &gone);
    assert_eq!(update.old.as_deref(), Some(delivered.as_str()));
    assert_eq!(update.new, next);
    assert_eq!(letters(&update), vec![('A', "n.txt".to_owned())]);

    drop(follower);
    let report = gitfeed::gc(cache.path(), Duration::ZERO).expect("gc");
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert!(clones(cache.path()).is_empty());
    // The delivery state outlives its clone.
    assert_eq!(sync_once(cache.path(), &open).expect("reclone"), None);
    assert_eq!(sync_once(cache.path(), &gone).expect("reclone"), None);
}

/// Turns a cache of today's layout into the layout before clones were shared: the clone back
/// in the source's own directory, its tip in `refs/gitfeed/tip`.
fn into_old_layout(cache: &Path, source_name: &str) {
    let entry = std::fs::read_dir(cache)
        .expect("cache")
        .flatten()
        .map(|item| item.path())
        .find(|path| {
            path.file_name().is_some_and(|name| {
                name.to_string_lossy()
                    .starts_with(&format!("{source_name}-"))
            })
        })
        .expect("the source's directory");
    let clone = clones(cache)
        .into_iter()
        .next()
        .expect("a clone")
        .join("repo.git");
    let tip_ref = crate::harness::tip_ref(&clone);
    let tip = git_in(&clone, &["rev-parse", &tip_ref]);
    git_in(&clone, &["update-ref", "refs/gitfeed/tip", tip.trim()]);
    git_in(&clone, &["update-ref", "-d", &tip_ref]);
    std::fs::rename(&clone, entry.join("repo.git")).expect("move the clone back");
    std::fs::write(entry.join("lock"), "").expect("the old lock file");
    std::fs::remove_dir_all(cache.join("clones")).expect("no shared clones");
}

#[test]
fn a_cache_of_the_old_layout_is_taken_over_without_redelivery() {
    let remote = Remote::new();
    let cache = unique_dir();
    let source = quick_source("p", &remote.file_url());
    let acknowledged = sync_and_ack(cache.path(), &source).new;
    into_old_layout(cache.path(), "p");
    let old_clone = std::fs::read_dir(cache.path())
        .expect("cache")
        .flatten()
        .map(|item| item.path().join("repo.git"))
        .find(|path| path.exists())
        .expect("the old clone");
    let objects_before = git_in(&old_clone, &["count-objects", "-v"]);

    // A reader finds the clone where it is before any attempt moved it.
    let reader = gitfeed::Reader::open(cache.path(), &source).expect("reader");
    assert!(!reader.files(&acknowledged).expect("files").is_empty());
    drop(reader);

    // After the upgrade: nothing new, so nothing is delivered again.
    assert_eq!(sync_once(cache.path(), &source).expect("sync"), None);
    assert!(!old_clone.exists(), "the old clone was moved");
    let shared = clones(cache.path());
    assert_eq!(shared.len(), 1);
    let git_dir = shared[0].join("repo.git");
    // Moved, not cloned again: the same objects, and the tip under the source's own ref.
    assert_eq!(git_in(&git_dir, &["count-objects", "-v"]), objects_before);
    assert_eq!(
        git_in(&git_dir, &["rev-parse", &crate::harness::tip_ref(&git_dir)]),
        acknowledged
    );
    let refs = git_in(&git_dir, &["for-each-ref", "--format=%(refname)"]);
    assert!(!refs.contains("refs/gitfeed/tip"), "{refs}");

    let next = remote.commit(&[("n.txt", Some("n\n"))], "next");
    let update = sync_and_ack(cache.path(), &source);
    assert_eq!(update.old.as_deref(), Some(acknowledged.as_str()));
    assert_eq!(update.new, next);
    assert_eq!(letters(&update), vec![('A', "n.txt".to_owned())]);
}

#[test]
fn a_feed_takes_over_two_old_entries_of_one_url() {
    let remote = Remote::new();
    let url = remote.file_url();
    let first = remote.head();
    let cache = unique_dir();
    let follow = quick_source("follow", &url);
    let pin = pinned("pin", &url, &first);
    // Two sources of the old layout, each with its own clone.
    let old = unique_dir();
    sync_and_ack(old.path(), &follow);
    into_old_layout(old.path(), "follow");
    let other = unique_dir();
    sync_and_ack(other.path(), &pin);
    into_old_layout(other.path(), "pin");
    for dir in [old.path(), other.path()] {
        for item in std::fs::read_dir(dir).expect("cache").flatten() {
            std::fs::rename(item.path(), cache.path().join(item.file_name())).expect("merge");
        }
    }
    let next = remote.commit(&[("n.txt", Some("n\n"))], "next");
    let feed = Running::start_at(cache.path(), vec![follow, pin], |feed| feed);
    let update = feed.update(Duration::from_secs(20));
    assert_eq!(update.source, "follow");
    assert_eq!(update.old.as_deref(), Some(first.as_str()));
    assert_eq!(update.new, next);
    // The pinned source acknowledged its commit before: it delivers nothing again.
    feed.assert_quiet(Duration::from_millis(500));
    feed.stop();
    assert_eq!(clones(cache.path()).len(), 1);
    let legacy: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .expect("cache")
        .flatten()
        .map(|item| item.path().join("repo.git"))
        .filter(|path| path.exists())
        .collect();
    assert!(legacy.is_empty(), "old clones left: {legacy:?}");
}

/// A poll that finds nothing new writes nothing, so it does not wait for a clone another
/// attempt (here: another process) is writing; a poll that must fetch still waits its turn.
#[test]
fn a_no_change_poll_does_not_wait_for_a_busy_clone() {
    let remote = Remote::new();
    let cache = unique_dir();
    let source = quick_source("p", &remote.file_url());
    let mut follower = Follower::new(cache.path(), &source).expect("follower");
    let update = follower.poll().expect("poll").expect("update");
    follower.acknowledge(&update.new).expect("ack");
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(clones(cache.path())[0].join("lock"))
        .expect("open the lock file");
    holder.try_lock().expect("take the lock");
    let started = std::time::Instant::now();
    assert_eq!(follower.poll().expect("a no-change poll"), None);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    remote.commit(&[("n.txt", Some("n\n"))], "next");
    let err = follower.poll().expect_err("the clone is busy");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    drop(holder);
    let update = follower.poll().expect("poll").expect("the update");
    assert_eq!(letters(&update), vec![('A', "n.txt".to_owned())]);
}

#[test]
fn a_removed_source_takes_its_entry_and_clone_with_it() {
    let (a, b) = (Remote::named("a.git"), Remote::named("b.git"));
    let feed = Running::start(vec![
        quick_source("a", &a.file_url()),
        quick_source("b", &b.file_url()),
    ]);
    for _ in 0..2 {
        let update = feed.update(WITHIN);
        feed.handle
            .acknowledge(&update.source, &update.new)
            .expect("running");
    }
    let cache = feed.cache_dir().to_owned();
    let clones_dir = cache.join("clones");
    assert_eq!(names(&clones_dir).len(), 2);
    assert_eq!(names(&cache).len(), 2);

    feed.handle.remove("a").expect("remove a");
    let only_b = |dir: &Path| {
        let names = names(dir);
        names.len() == 1 && names[0].starts_with("b-")
    };
    assert!(
        eventually(|| only_b(&clones_dir) && only_b(&cache)),
        "a's clone and entry are still there: {:?} {:?}",
        names(&clones_dir),
        names(&cache)
    );
    // b goes on, from where it was.
    let new = b.commit(&[("n.txt", Some("n\n"))], "next");
    let update = feed.update(WITHIN);
    assert_eq!(
        (update.source.as_str(), update.new.as_str()),
        ("b", new.as_str())
    );
    assert_eq!(letters(&update), vec![('A', "n.txt".to_owned())]);
    feed.stop();
}

#[test]
fn a_source_replaced_by_another_depth_releases_its_old_clone() {
    let remote = Remote::new();
    let daemon = GitDaemon::start(&remote.root());
    let mut source = quick_source("p", &daemon.url(remote.name()));
    source.depth = Some(1);
    let feed = Running::start(vec![source.clone()]);
    feed.update(WITHIN);
    let clones_dir = feed.cache_dir().join("clones");
    let before = names(&clones_dir);
    assert!(
        before.len() == 1 && before[0].ends_with("-depth1"),
        "{before:?}"
    );

    source.depth = Some(2);
    feed.handle.add(source).expect("replace p");
    // Other settings: a first update again, from a clone of their own.
    assert_eq!(feed.update(WITHIN).old, None);
    assert!(
        eventually(|| {
            let now = names(&clones_dir);
            now.len() == 1 && now[0].ends_with("-depth2")
        }),
        "the depth-1 clone is still there: {:?}",
        names(&clones_dir)
    );
    assert_eq!(names(feed.cache_dir()).len(), 1, "one entry");
    feed.stop();
}

/// A commit only `main` reaches, with a file only it has: returns the commit and the file's
/// blob.
fn main_only(remote: &Remote) -> (String, String) {
    let noise = crate::harness::incompressible(64 << 10, 7);
    let commit = remote.commit(&[("only-main.bin", Some(&noise))], "main only");
    let blob = remote.git_bare(&["rev-parse", &format!("{commit}:only-main.bin")]);
    (commit, blob)
}

#[test]
fn a_removed_source_leaves_a_clone_another_follower_holds_and_its_tip_goes_at_the_next_attempt() {
    let remote = Remote::new();
    let base = remote.head();
    remote.push_branch("dev", &base);
    let (main_tip, blob) = main_only(&remote);
    let url = remote.file_url();
    let cache = unique_dir();
    let mut dev = quick_source("dev", &url);
    dev.reference = Some("dev".into());
    let mut follower = Follower::new(cache.path(), &dev).expect("follower");
    let update = follower.poll().expect("poll").expect("dev's first update");
    follower.acknowledge(&update.new).expect("ack");
    let feed = Running::start_at(cache.path(), vec![quick_source("main", &url)], |feed| feed);
    let update = feed.update(WITHIN);
    assert_eq!(update.new, main_tip);
    feed.handle
        .acknowledge("main", &update.new)
        .expect("running");
    let clone = clones(cache.path())[0].clone();
    let git_dir = clone.join("repo.git");
    assert_eq!(tip_refs(&git_dir).len(), 2);
    assert!(has_object(&git_dir, &blob));

    // An attempt of another process writes the clone: the release cannot prune it now.
    let writing = std::fs::OpenOptions::new()
        .write(true)
        .open(clone.join("lock"))
        .expect("open the lock file");
    // main's polls take the lock too, briefly: wait for one to end.
    writing.lock().expect("take the lock");
    feed.handle.remove("main").expect("remove main");
    assert!(
        eventually(|| names(cache.path()).len() == 1 && clone.join("prune").exists()),
        "main was not released: {:?}",
        names(cache.path())
    );
    assert!(git_dir.is_dir(), "dev still reads the clone");
    assert_eq!(tip_refs(&git_dir).len(), 2, "pruned under the lock only");
    drop(writing);

    // The follower's next attempt prunes it, though nothing moved for dev.
    assert_eq!(follower.poll().expect("poll"), None);
    assert_eq!(tip_refs(&git_dir), [crate::harness::tip_ref(&git_dir)]);
    assert!(!has_object(&git_dir, &blob), "main's blob outlived its tip");
    assert!(!has_object(&git_dir, &main_tip));
    assert!(!clone.join("prune").exists());
    git_in(&git_dir, &["fsck", "--full", "--strict", "--no-dangling"]);
    // dev carries on from its acknowledged commit.
    let next = remote.commit_to("dev", &base, &[("d.txt", Some("d\n"))], "on dev");
    let update = follower.poll().expect("poll").expect("dev's next update");
    assert_eq!(update.new, next);
    assert_eq!(letters(&update), vec![('A', "d.txt".to_owned())]);
    feed.stop();
}

#[test]
fn a_removed_source_leaves_a_clone_another_process_holds_and_its_tip_goes() {
    let remote = Remote::new();
    let base = remote.head();
    remote.push_branch("dev", &base);
    let (main_tip, blob) = main_only(&remote);
    let url = remote.file_url();
    let cache = unique_dir();
    let feed = Running::start_at(cache.path(), vec![quick_source("main", &url)], |feed| feed);
    assert_eq!(feed.update(WITHIN).new, main_tip);
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["watch", &url, "--name", "dev", "--branch", "dev"])
        .args(["--interval", "100ms", "--cache-dir"])
        .arg(cache.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gitfeed watch");
    let stdout = std::io::BufReader::new(watch.stdout.take().expect("stdout"));
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stdout).map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let first = received.recv_timeout(WITHIN).expect("dev's first update");
    assert!(first.contains(&base), "{first}");
    let git_dir = clones(cache.path())[0].join("repo.git");
    assert_eq!(tip_refs(&git_dir).len(), 2);

    feed.handle.remove("main").expect("remove main");
    assert!(
        eventually(|| tip_refs(&git_dir).len() == 1 && !has_object(&git_dir, &blob)),
        "main's tip or blob is still there: {:?}",
        tip_refs(&git_dir)
    );
    assert_eq!(names(cache.path()).len(), 1, "dev's entry");
    assert_eq!(clones(cache.path()).len(), 1, "dev's clone");
    feed.stop();
    let _ = watch.kill();
    let _ = watch.wait();
    reader.join().expect("the reader ends with the process");
    git_in(&git_dir, &["fsck", "--full", "--strict", "--no-dangling"]);
}

#[test]
fn a_feed_that_shuts_down_releases_nothing() {
    let remote = Remote::new();
    let cache = unique_dir();
    let feed = Running::start_at(
        cache.path(),
        vec![quick_source("p", &remote.file_url())],
        |f| f,
    );
    let update = feed.update(WITHIN);
    feed.handle.acknowledge("p", &update.new).expect("running");
    feed.stop();
    assert_eq!(names(cache.path()).len(), 1);
    let clones = clones(cache.path());
    assert_eq!(clones.len(), 1);
    assert_eq!(tip_refs(&clones[0].join("repo.git")).len(), 1);
    // It carries on where it stopped.
    let source = quick_source("p", &remote.file_url());
    assert_eq!(
        gitfeed::acknowledged(cache.path(), &source),
        Some(update.new)
    );
    assert_eq!(sync_once(cache.path(), &source).expect("sync"), None);
}

#[test]
fn twenty_once_runs_of_a_shallow_source_pinned_to_twenty_tags_keep_one_clone() {
    let remote = Remote::new();
    let daemon = GitDaemon::start(&remote.root());
    let url = daemon.url(remote.name());
    let files = 4u64;
    for tag in 0..20u64 {
        let blobs: Vec<(String, String)> = (0..files)
            .map(|file| {
                let text = crate::harness::incompressible(32 << 10, tag * files + file + 1);
                (format!("f{file}.bin"), text)
            })
            .collect();
        let changes: Vec<(&str, Option<&str>)> = blobs
            .iter()
            .map(|(path, text)| (path.as_str(), Some(text.as_str())))
            .collect();
        let commit = remote.commit(&changes, "release");
        remote.git_bare(&["tag", &format!("v{tag}"), &commit]);
    }
    let pinned_to = |tag: u64| {
        let mut source = quick_source("p", &url);
        source.depth = Some(1);
        source.reference = Some(format!("v{tag}"));
        source
    };
    let cache = unique_dir();
    for tag in 0..20 {
        sync_and_ack(cache.path(), &pinned_to(tag));
        assert_eq!(clones(cache.path()).len(), 1, "after v{tag}");
        assert_eq!(names(cache.path()).len(), 1, "after v{tag}");
    }
    let one = unique_dir();
    sync_and_ack(one.path(), &pinned_to(19));
    let (twenty, one) = (disk_usage(cache.path()), disk_usage(one.path()));
    eprintln!("twenty pins: {twenty} bytes; one pin: {one} bytes");
    assert!(
        twenty as f64 <= 1.5 * one as f64,
        "twenty pins take {twenty} bytes, one takes {one}"
    );
}

/// A full-history source holds the history git's own clone holds, and little more: what
/// rewound commits and the packs of fetches since the last consolidation add is bounded by that
/// consolidation, not by a timer.
#[test]
fn a_full_source_over_300_updates_with_rewinds_holds_about_what_git_clone_holds() {
    let remote = Remote::new();
    let cache = unique_dir();
    let source = quick_source("p", &remote.file_url());
    let mut follower = Follower::new(cache.path(), &source).expect("follower");
    // Policy-sized text: twenty files of about 2 KiB, one line of one of them changed per
    // commit, and every tenth update a rewind of the last three commits.
    let base: Vec<String> = (0..20u64)
        .map(|file| crate::harness::incompressible(2 << 10, file + 1))
        .collect();
    let initial: Vec<(String, String)> = base
        .iter()
        .enumerate()
        .map(|(file, text)| (format!("p/{file}.rego"), text.clone()))
        .collect();
    let files: Vec<(&str, Option<&str>)> = initial
        .iter()
        .map(|(path, text)| (path.as_str(), Some(text.as_str())))
        .collect();
    remote.commit(&files, "policies");
    // The most the cache held after any update.
    let mut most = 0;
    for round in 0..300u64 {
        if round % 10 == 9 {
            remote.force_push_to("HEAD~3");
        }
        let file = (round * 7 % 20) as usize;
        let text = format!("{}\nround {round}\n", base[file]);
        remote.commit(&[(&format!("p/{file}.rego"), Some(&text))], "change");
        let update = follower.poll().expect("poll").expect("an update");
        follower.acknowledge(&update.new).expect("ack");
        most = most.max(disk_usage(cache.path()));
    }
    let work = unique_dir();
    let bare = work.path().join("bare.git");
    git_in(
        work.path(),
        &[
            "clone".to_owned(),
            "-q".to_owned(),
            "--bare".to_owned(),
            remote.file_url(),
            bare.display().to_string(),
        ],
    );
    let git = disk_usage(&bare);
    eprintln!(
        "after 300 updates: the cache takes {} bytes, at most {most}; git's clone {git}",
        disk_usage(cache.path())
    );
    assert!(
        most as f64 <= 1.2 * git as f64,
        "the cache took up to {most} bytes, git's clone takes {git}"
    );
    git_in(
        &clones(cache.path())[0].join("repo.git"),
        &["fsck", "--full", "--strict", "--no-dangling"],
    );
}
