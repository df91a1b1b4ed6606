//! Filters, contents in updates, and the snapshot directory, including hostile trees.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use gitfeed::{ChangeKind, Encoding, Filter, Reader, Reason, Source, sync_once};

use crate::harness::{Running, quick_source};
use crate::util::{Remote, git_command, unique_dir};

const PATIENCE: Duration = Duration::from_secs(20);

fn paths(update: &gitfeed::Update) -> Vec<&str> {
    update.changes.iter().map(|c| c.path.as_str()).collect()
}

fn files_remote() -> Remote {
    let remote = Remote::new();
    remote.commit(
        &[
            ("policies/authz.rego", Some("package authz\n")),
            ("policies/authz_test.rego", Some("package authz_test\n")),
            ("policies/keep_test.rego", Some("package keep\n")),
            ("policies/data/roles.json", Some("{}\n")),
            ("vendor/lib.rego", Some("package lib\n")),
            ("docs/index.md", Some("# docs\n")),
        ],
        "files",
    );
    remote
}

fn first_update_with(filter: Filter) -> Vec<String> {
    let remote = files_remote();
    let cache = unique_dir();
    let mut source = quick_source("f", &remote.file_url());
    source.filter = filter;
    let update = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    paths(&update).into_iter().map(str::to_owned).collect()
}

#[test]
fn filter_by_directory() {
    let mut filter = Filter::default();
    filter.directories = vec!["policies/data".into(), "docs/".into()];
    assert_eq!(
        first_update_with(filter),
        ["docs/index.md", "policies/data/roles.json"]
    );
}

#[test]
fn filter_by_extension() {
    let mut filter = Filter::default();
    filter.extensions = vec!["rego".into()];
    assert_eq!(
        first_update_with(filter),
        [
            "policies/authz.rego",
            "policies/authz_test.rego",
            "policies/keep_test.rego",
            "vendor/lib.rego"
        ]
    );
}

#[test]
fn filter_by_globs() {
    let mut filter = Filter::default();
    filter.include = vec!["*.rego".into(), "*.json".into()];
    filter.exclude = vec![
        "*_test.rego".into(),
        "!keep_test.rego".into(),
        "vendor/".into(),
    ];
    assert_eq!(
        first_update_with(filter),
        [
            "policies/authz.rego",
            "policies/data/roles.json",
            "policies/keep_test.rego"
        ]
    );
}

/// Source `f` following only `policies/` of `remote`, polled when triggered.
fn policies_only(remote: &Remote) -> Source {
    let mut source = quick_source("f", &remote.file_url());
    source.filter.directories = vec!["policies".into()];
    source.interval = Duration::from_secs(3600);
    source
}

#[test]
fn updates_outside_the_filter_are_not_emitted_but_acknowledged() {
    let remote = files_remote();
    let source = policies_only(&remote);
    let cache = unique_dir();
    let feed = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
    let first = feed.update(PATIENCE);
    feed.handle.acknowledge("f", &first.new).expect("running");
    let outside = remote.commit(&[("docs/index.md", Some("# changed\n"))], "docs only");
    feed.handle.trigger("f").expect("running");
    feed.assert_quiet(Duration::from_millis(500));
    let inside = remote.commit(
        &[("policies/authz.rego", Some("package authz2\n"))],
        "policy",
    );
    feed.handle.trigger("f").expect("running");
    let update = feed.update(PATIENCE);
    assert_eq!(
        update.old.as_deref(),
        Some(outside.as_str()),
        "the filtered-out commit counts as seen"
    );
    assert_eq!(
        (update.new.as_str(), paths(&update)),
        (inside.as_str(), vec!["policies/authz.rego"])
    );
    feed.stop();
    // The commit nobody had to apply was acknowledged on the consumer's behalf.
    let mut later = source;
    later.filter = Filter::default();
    remote.commit(&[("docs/index.md", Some("# again\n"))], "docs again");
    let next = sync_once(cache.path(), &later)
        .expect("sync")
        .expect("update");
    assert_eq!(next.old.as_deref(), Some(outside.as_str()));
}

#[test]
fn contents_for_text_binary_and_oversized_files() {
    let remote = Remote::new();
    let cache = unique_dir();
    let mut source = quick_source("c", &remote.file_url());
    source.contents = Some(64);
    let first = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    gitfeed::acknowledge(cache.path(), &source, &first.new).expect("ack");

    let binary: Vec<u8> = vec![0, 159, 146, 150, 255, b'\n'];
    std::fs::write(remote.work_path().join("blob.bin"), &binary).expect("write binary");
    remote.commit(
        &[
            ("text.txt", Some("héllo\n")),
            ("big.txt", Some(&"x".repeat(65))),
            ("README.md", None),
        ],
        "contents",
    );
    let update = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let by_path: BTreeMap<&str, &gitfeed::Change> = update
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c))
        .collect();
    let text = by_path["text.txt"];
    assert_eq!(
        (text.content.as_deref(), text.encoding),
        (Some("héllo\n"), Some(Encoding::Utf8))
    );
    let bin = by_path["blob.bin"];
    assert_eq!(bin.encoding, Some(Encoding::Base64));
    assert_eq!(bin.bytes().as_deref(), Some(&binary[..]));
    let big = by_path["big.txt"];
    assert_eq!(big.content, None);
    assert!(
        big.omitted
            .as_deref()
            .is_some_and(|why| why.contains("65 bytes") && why.contains("64")),
        "{big:?}"
    );
    let deleted = by_path["README.md"];
    assert_eq!(
        (
            deleted.kind,
            deleted.content.as_ref(),
            deleted.omitted.as_ref()
        ),
        (ChangeKind::Deleted, None, None)
    );
    let json = serde_json::to_value(&update).expect("json");
    assert_eq!(json["changes"].as_array().map(Vec::len), Some(4));
}

#[test]
fn reader_lists_and_reads_without_a_worktree() {
    let remote = files_remote();
    let cache = unique_dir();
    let mut source = quick_source("r", &remote.file_url());
    source.filter.extensions = vec!["rego".into()];
    source.max_file_size = 14;
    let update = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let reader = Reader::open(cache.path(), &source).expect("open");
    let files = reader.files(&update.new).expect("files");
    assert_eq!(files.len(), 4);
    assert_eq!(
        reader.read(&update.new, "vendor/lib.rego").expect("read"),
        b"package lib\n"
    );
    let err = reader
        .read(&update.new, "policies/authz_test.rego")
        .expect_err("over the limit");
    assert_eq!(err.reason(), Reason::SnapshotTooLarge, "{err}");
    let err = reader
        .read(&update.new, "docs/index.md")
        .expect_err("filtered out");
    assert_eq!(err.reason(), Reason::NotFound);
    // Another repository, never synced into this cache, has no clone to read.
    let elsewhere = crate::util::Remote::named("elsewhere.git");
    let missing = quick_source("never-synced", &elsewhere.file_url());
    assert_eq!(
        Reader::open(cache.path(), &missing)
            .expect_err("no clone")
            .reason(),
        Reason::NotFound
    );
    // A source of the same repository shares the clone, synced or not.
    let sibling = quick_source("sibling", &remote.file_url());
    let shared = Reader::open(cache.path(), &sibling).expect("the shared clone");
    assert_eq!(shared.files(&update.new).expect("files").len(), 8);
}

#[test]
fn checkout_swaps_current_to_each_commit() {
    let remote = files_remote();
    use std::os::unix::fs::PermissionsExt;
    let script = remote.work_path().join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let with_script = remote.commit(&[], "script");
    let dir = unique_dir();
    let mut source = quick_source("s", &remote.file_url());
    source.checkout = Some(dir.path().join("out"));
    source.filter.exclude = vec!["vendor/".into()];
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source]);
    let first = feed.update(PATIENCE);
    assert_eq!(first.new, with_script);
    let current = std::fs::canonicalize(dir.path().join("out/current")).expect("current resolves");
    assert!(current.ends_with(format!(".snapshots/{with_script}")));
    assert_eq!(
        std::fs::read_to_string(current.join("policies/authz.rego")).expect("read"),
        "package authz\n"
    );
    assert!(
        !current.join("vendor").exists(),
        "the filter applies to snapshots"
    );
    let mode = std::fs::metadata(current.join("run.sh"))
        .expect("script")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit is kept");
    let link = std::fs::read_link(dir.path().join("out/current")).expect("link");
    assert!(link.is_relative(), "{link:?}");

    let second = remote.commit(
        &[("policies/authz.rego", Some("package authz2\n"))],
        "second",
    );
    feed.handle.trigger("s").expect("running");
    assert_eq!(feed.update(PATIENCE).new, second);
    let current = std::fs::canonicalize(dir.path().join("out/current")).expect("current resolves");
    assert_eq!(
        std::fs::read_to_string(current.join("policies/authz.rego")).expect("read"),
        "package authz2\n"
    );
    feed.stop();
}

/// What the snapshot `current` points at in the checkout `dir` holds: each path with its
/// kind, permission bits and contents (a symlink's target).
fn snapshot_of(dir: &Path) -> BTreeMap<String, (char, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let root = std::fs::canonicalize(dir.join("current")).expect("current resolves");
    let mut found = BTreeMap::new();
    let mut pending = vec![root.clone()];
    while let Some(next) = pending.pop() {
        for item in std::fs::read_dir(&next).expect("list") {
            let path = item.expect("entry").path();
            let metadata = std::fs::symlink_metadata(&path).expect("stat");
            let mode = metadata.permissions().mode() & 0o777;
            let (kind, contents) = if metadata.is_dir() {
                pending.push(path.clone());
                ('d', Vec::new())
            } else if metadata.is_symlink() {
                let target = std::fs::read_link(&path).expect("readlink");
                ('l', target.into_os_string().into_encoded_bytes())
            } else {
                ('f', std::fs::read(&path).expect("read"))
            };
            let name = path.strip_prefix(&root).expect("inside");
            found.insert(name.to_string_lossy().into_owned(), (kind, mode, contents));
        }
    }
    found
}

/// A checkout that follows commit after commit, each snapshot written from what changed since
/// the one before where that suffices, holds at each commit what a first snapshot of that
/// commit holds: through files changed, added and removed, a directory emptied, a mode,
/// names that fold alike, a symlink, and a filter that changes.
#[test]
fn snapshots_written_from_changes_match_first_snapshots() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let remote = files_remote();
    let root = unique_dir();
    let cache = root.path().join("cache");
    let checkout = root.path().join("checkout");
    let mut source = quick_source("s", &remote.file_url());
    source.checkout = Some(checkout.clone());
    let work = remote.work_path();
    let check = |source: &Source, round: usize| {
        let update = sync_once(&cache, source).expect("sync").expect("an update");
        gitfeed::acknowledge(&cache, source, &update.new).expect("acknowledge");
        let fresh = root.path().join(format!("fresh-{round}"));
        let mut first = source.clone();
        first.checkout = Some(fresh.join("checkout"));
        sync_once(fresh.join("cache"), &first)
            .expect("sync")
            .expect("an update");
        assert_eq!(
            snapshot_of(&checkout),
            snapshot_of(&fresh.join("checkout")),
            "round {round}"
        );
    };
    check(&source, 0);
    let steps: [&dyn Fn(); 6] = [
        &|| {
            remote.commit(
                &[
                    ("policies/authz.rego", Some("package authz2\n")),
                    ("policies/new/deep.rego", Some("package deep\n")),
                    ("docs/index.md", None),
                ],
                "change, add, empty a directory",
            );
        },
        &|| {
            remote.commit(
                &[("Policies/other.rego", Some("package other\n"))],
                "a name that folds like another",
            );
        },
        &|| {
            remote.commit(
                &[
                    ("Policies/other.rego", None),
                    ("policies/authz.rego", Some("package authz3\n")),
                ],
                "unfold",
            );
        },
        &|| {
            symlink("authz.rego", work.join("policies/link.rego")).expect("symlink");
            remote.commit(&[], "a symlink");
        },
        &|| {
            let script = work.join("vendor/lib.rego");
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            remote.commit(&[("policies/data/roles.json", Some("[]\n"))], "a mode");
        },
        &|| {
            remote.commit(
                &[
                    ("policies/new/deep.rego", None),
                    ("policies/new.rego", Some("x\n")),
                ],
                "a directory becomes a file's neighbour",
            );
        },
    ];
    for (round, step) in steps.iter().enumerate() {
        step();
        check(&source, round + 1);
    }
    source.filter.exclude = vec!["vendor/".into()];
    remote.commit(
        &[("policies/authz.rego", Some("package authz4\n"))],
        "filtered",
    );
    check(&source, steps.len() + 1);
    assert!(!checkout.join("current/vendor").exists());
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect();
    names.sort();
    names
}

/// Whatever someone else put in `DIR/.snapshots` is gone after the next snapshot, whatever
/// it is, and nothing a symlink there leads to is touched; snapshots go on and are pruned.
#[test]
fn foreign_entries_in_the_snapshot_directory_are_removed() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let remote = files_remote();
    let root = unique_dir();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("keep.txt"), "not gitfeed's\n").expect("write");
    let checkout = root.path().join("checkout");
    let mut source = quick_source("s", &remote.file_url());
    source.checkout = Some(checkout.clone());
    source.keep_snapshots = 2;
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source]);
    let first = feed.update(PATIENCE).new;

    let snapshots = checkout.join(".snapshots");
    std::fs::write(snapshots.join("notes.txt"), "x").expect("write");
    std::fs::create_dir_all(snapshots.join("junk/deeper")).expect("mkdir");
    std::fs::write(snapshots.join("junk/deeper/file"), "x").expect("write");
    symlink(&outside, snapshots.join("elsewhere")).expect("symlink");
    let locked = snapshots.join("locked");
    std::fs::create_dir_all(locked.join("inner")).expect("mkdir");
    std::fs::write(locked.join("inner/file"), "x").expect("write");
    for dir in [locked.join("inner"), locked.clone()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    }
    std::fs::write(snapshots.join("0".repeat(40)), "x").expect("write");
    std::fs::remove_file(snapshots.join("order")).expect("rm");
    std::fs::create_dir(snapshots.join("order")).expect("mkdir");

    let second = remote.commit(&[("policies/authz.rego", Some("package b\n"))], "second");
    feed.handle.trigger("s").expect("running");
    assert_eq!(feed.update(PATIENCE).new, second);
    let mut expected = vec![
        first.clone(),
        format!("{first}.manifest"),
        second.clone(),
        format!("{second}.manifest"),
        "order".to_owned(),
    ];
    expected.sort();
    assert_eq!(names_in(&snapshots), expected);
    assert_eq!(names_in(&outside), ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(outside.join("keep.txt")).expect("read"),
        "not gitfeed's\n"
    );

    let third = remote.commit(&[("policies/authz.rego", Some("package c\n"))], "third");
    feed.handle.trigger("s").expect("running");
    assert_eq!(feed.update(PATIENCE).new, third);
    feed.stop();
    let mut expected = vec![
        ".spare".to_owned(),
        second.clone(),
        format!("{second}.manifest"),
        third.clone(),
        format!("{third}.manifest"),
        "order".to_owned(),
    ];
    expected.sort();
    assert_eq!(names_in(&snapshots), expected);
    assert_eq!(
        std::fs::read_to_string(snapshots.join("order")).expect("order"),
        format!("{second}\n{third}\n")
    );
    let current = std::fs::canonicalize(checkout.join("current")).expect("current");
    assert_eq!(
        std::fs::read_to_string(current.join("policies/authz.rego")).expect("read"),
        "package c\n"
    );
}

/// Writes a tree object from raw entries, bypassing every check git makes.
fn raw_tree(bare: &Path, entries: &[(&str, &[u8], String)]) -> String {
    let mut raw = Vec::new();
    for (mode, name, id) in entries {
        raw.extend_from_slice(mode.as_bytes());
        raw.push(b' ');
        raw.extend_from_slice(name);
        raw.push(0);
        let hex = id.trim();
        raw.extend(
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")),
        );
    }
    hash_object(bare, &["-t", "tree", "--literally"], &raw)
}

fn blob(bare: &Path, content: &str) -> String {
    hash_object(bare, &[], content.as_bytes())
}

/// `git hash-object -w` of `bytes`, with `options`; the new object's id.
fn hash_object(bare: &Path, options: &[&str], bytes: &[u8]) -> String {
    let mut child = git_command()
        .current_dir(bare)
        .arg("hash-object")
        .args(options)
        .args(["-w", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn git");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write the object");
    let out = child.wait_with_output().expect("git");
    assert!(out.status.success(), "git hash-object {options:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn hostile_trees_never_write_outside_the_checkout() {
    let remote = Remote::new();
    let bare = remote.bare_path();
    let ok = blob(&bare, "fine\n");
    let evil = blob(&bare, "evil\n");
    let outside_target = blob(&bare, "../../../../../../../tmp/escaped");
    let absolute_target = blob(&bare, "/etc/passwd");
    let inner = raw_tree(&bare, &[("100644", b"config", evil.clone())]);
    let tree = raw_tree(
        &bare,
        &[
            ("100644", b"..", evil.clone()),
            ("40000", b".git", inner.clone()),
            ("100644", b".GIT", evil.clone()),
            ("100644", b"README", ok.clone()),
            ("120000", b"abs", absolute_target),
            ("120000", b"escape", outside_target),
            ("100644", b"a/b", evil.clone()),
            ("100644", b"ok.txt", ok.clone()),
            ("100644", b"readme", evil.clone()),
            ("160000", b"sub", remote.head()),
        ],
    );
    let parent = remote.head();
    let commit = git_command()
        .current_dir(&bare)
        .args(["commit-tree", &tree, "-p", &parent, "-m", "hostile"])
        .output()
        .expect("commit-tree");
    let commit = String::from_utf8(commit.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    crate::util::git_in(&bare, &["update-ref", "refs/heads/main", &commit]);

    let root = unique_dir();
    let checkout = root.path().join("checkout");
    let mut source = quick_source("h", &remote.file_url());
    source.checkout = Some(checkout.clone());
    let feed = Running::start(vec![source]);
    // Warnings come before the update they concern.
    let mut said = String::new();
    let update = loop {
        match feed.next(PATIENCE, "warnings, then the update") {
            gitfeed::Event::Warning(warning) => said.push_str(&warning.message),
            gitfeed::Event::Update(update) => break update,
            other => panic!("unexpected {other:?}"),
        }
    };
    for name in [
        "`..`",
        "`.git/config`",
        "`.GIT`",
        "`abs`",
        "`escape`",
        "`sub`",
        "`readme`",
        "`a/b`",
    ] {
        assert!(
            said.contains(name),
            "{name} should be reported as skipped: {said}"
        );
    }
    // The update names no path the snapshot refused for its name.
    let listed: Vec<&str> = paths(&update);
    for refused in ["..", ".GIT", ".git/config", "a/b"] {
        assert!(!listed.contains(&refused), "{refused} in {listed:?}");
    }
    assert!(listed.contains(&"ok.txt"));
    assert_eq!(update.new, commit);
    feed.stop();

    let current = std::fs::canonicalize(checkout.join("current")).expect("current");
    assert_eq!(
        std::fs::read_to_string(current.join("ok.txt")).expect("ok.txt"),
        "fine\n"
    );
    assert_eq!(
        std::fs::read_to_string(current.join("README")).expect("README"),
        "fine\n"
    );
    for absent in ["readme", ".git", ".GIT", "abs", "escape", "sub", "a"] {
        assert!(
            std::fs::symlink_metadata(current.join(absent)).is_err(),
            "{absent} must not be written"
        );
    }
    let beside: Vec<_> = std::fs::read_dir(root.path())
        .expect("root")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        beside,
        vec![std::ffi::OsString::from("checkout")],
        "nothing is written beside the checkout"
    );
    assert!(!Path::new("/tmp/escaped").exists());
}

#[test]
fn a_filtered_out_commit_never_acknowledges_an_update_still_pending() {
    let remote = files_remote();
    let source = policies_only(&remote);
    let cache = unique_dir();
    let feed = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
    let first = feed.update(PATIENCE);
    // Not acknowledged: the consumer has not applied it yet. Then a commit outside the filter.
    let outside = remote.commit(&[("docs/index.md", Some("# later\n"))], "docs only");
    feed.handle.trigger("f").expect("running");
    feed.assert_quiet(Duration::from_millis(400));
    feed.stop();
    // After a restart the unacknowledged update is delivered again, now up to the new tip.
    let feed = Running::start_at(cache.path(), vec![source], |feed| feed);
    let again = feed.update(PATIENCE);
    assert_eq!(
        (again.old.as_ref(), again.new.as_str()),
        (None, outside.as_str())
    );
    assert_eq!(paths(&again), paths(&first));
    feed.stop();
}

/// Submodules (gitlinks) are left out of changes, contents, snapshots and the reader's listing
/// alike; an update that adds, moves or deletes one says so in one warning naming them all, and
/// polls that find nothing new say nothing.
#[test]
fn submodules_are_left_out_everywhere_and_reported_once_per_update() {
    let remote = Remote::new();
    let other = Remote::named("other.git");
    let work = remote.work_path();
    // An uninitialized submodule is an empty directory, which `git add -A` leaves alone.
    let gitlink = |path: &str, commit: &str| {
        std::fs::create_dir_all(work.join(path)).expect("submodule directory");
        remote.git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ]);
    };
    gitlink("deps/lib", &other.head());
    gitlink("deps/tool", &other.head());
    let first = remote.commit(&[("a.txt", Some("a\n"))], "two submodules");

    let root = unique_dir();
    let checkout = root.path().join("checkout");
    let mut source = quick_source("s", &remote.file_url());
    source.contents = Some(1 << 20);
    source.checkout = Some(checkout.clone());
    let feed = Running::start(vec![source.clone()]);
    let warning = feed.warning(PATIENCE);
    assert_eq!(warning.commit.as_deref(), Some(first.as_str()));
    let said = warning.message.clone();
    assert!(said.contains(&first), "{said}");
    assert!(said.contains("2 submodules"), "{said}");
    assert!(said.contains("`deps/lib` (added)"), "{said}");
    assert!(said.contains("`deps/tool` (added)"), "{said}");
    // One warning: the next event is the update itself.
    let update = feed.update(PATIENCE);
    assert_eq!(update.new, first);
    assert!(
        update.changes.iter().all(|c| !c.path.starts_with("deps")),
        "{:?}",
        update.changes
    );
    assert!(paths(&update).contains(&"a.txt"));
    for change in &update.changes {
        assert!(change.content.is_some(), "{change:?}");
        assert_eq!(change.omitted, None, "{change:?}");
    }
    let current = std::fs::canonicalize(checkout.join("current")).expect("current");
    assert_eq!(
        std::fs::read_to_string(current.join("a.txt")).expect("a.txt"),
        "a\n"
    );
    assert!(!current.join("deps").exists(), "no submodule is written");

    // An update that leaves the submodules alone says nothing about them.
    let second = remote.commit(&[("b.txt", Some("b\n"))], "no submodule moves");
    let update = feed.update(PATIENCE);
    assert_eq!(
        (update.new.as_str(), paths(&update)),
        (second.as_str(), vec!["b.txt"])
    );

    // One that moves one names that one only.
    let moved = other.commit(&[("x.txt", Some("x\n"))], "newer");
    gitlink("deps/lib", &moved);
    let third = remote.commit(&[("c.txt", Some("c\n"))], "one submodule moves");
    let warning = feed.warning(PATIENCE);
    let said = warning.message.clone();
    assert_eq!(warning.commit.as_deref(), Some(third.as_str()));
    assert!(
        said.contains("1 submodule ") && said.contains(&third),
        "{said}"
    );
    assert!(said.contains("`deps/lib` (modified)"), "{said}");
    assert!(!said.contains("deps/tool"), "{said}");
    let update = feed.update(PATIENCE);
    assert_eq!(
        (update.new.as_str(), paths(&update)),
        (third.as_str(), vec!["c.txt"])
    );
    // Later polls find nothing new and repeat nothing.
    feed.assert_quiet(Duration::from_millis(600));
    feed.stop();

    // Outside a feed, as the reader lists them.
    source.checkout = None;
    let cache = unique_dir();
    let synced = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    assert!(synced.changes.iter().all(|c| !c.path.starts_with("deps")));
    let reader = Reader::open(cache.path(), &source).expect("open");
    let files = reader.files(&third).expect("files");
    let listed: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert!(listed.contains(&"c.txt"), "{listed:?}");
    assert!(!listed.iter().any(|p| p.starts_with("deps")), "{listed:?}");
    let err = reader.read(&third, "deps/lib").expect_err("a submodule");
    assert_eq!(err.reason(), Reason::NotFound, "{err}");
    assert!(err.to_string().contains("submodule"), "{err}");
}

/// A source of `remote` reading only `*.rego`, with `max_file_size` 14, synced once; its
/// update and a reader on its cache.
fn rego_reader(remote: &Remote, cache: &Path) -> (gitfeed::Update, Reader) {
    let mut source = quick_source("r", &remote.file_url());
    source.filter.extensions = vec!["rego".into()];
    source.max_file_size = 14;
    let update = sync_once(cache, &source).expect("sync").expect("update");
    let reader = Reader::open(cache, &source).expect("open");
    (update, reader)
}

#[test]
fn reader_reads_blobs_by_the_id_a_change_carries() {
    let remote = files_remote();
    let cache = unique_dir();
    let (update, reader) = rego_reader(&remote, cache.path());
    let mut read = 0;
    for change in &update.changes {
        let id = change.id.as_deref().expect("an added file has an id");
        match reader.read(&update.new, &change.path) {
            Ok(bytes) => {
                assert_eq!(reader.read_blob(id).expect("read by id"), bytes);
                let mut streamed = Vec::new();
                let size = reader.read_blob_to(id, &mut streamed).expect("stream");
                assert_eq!((size, &streamed), (bytes.len() as u64, &bytes));
                read += 1;
            }
            Err(err) => {
                assert_eq!(err.reason(), Reason::SnapshotTooLarge, "{err}");
                let by_id = reader.read_blob(id).expect_err("over max_file_size");
                assert_eq!(by_id.reason(), Reason::SnapshotTooLarge, "{by_id}");
                assert!(
                    by_id.to_string().contains("over the limit of 14"),
                    "{by_id}"
                );
            }
        }
    }
    assert_eq!(read, 3, "all but authz_test.rego are small enough");

    // A blob id names content, not a path: the filter does not apply to it.
    let docs = remote.git_bare(&["rev-parse", "main:docs/index.md"]);
    assert_eq!(reader.read_blob(&docs).expect("docs"), b"# docs\n");

    // A writer that fails: its error is the cause, not only words in the message.
    let mut full = std::io::Cursor::new([0u8; 2]);
    let err = reader
        .read_blob_to(&docs, &mut full)
        .expect_err("the writer has room for two bytes");
    assert_eq!(err.reason(), Reason::LocalIo, "{err}");
    assert_eq!(err.to_string(), format!("cannot write blob {docs}"));
    let cause = std::error::Error::source(&err)
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .expect("the writer's error as the source");
    assert_eq!(cause.kind(), std::io::ErrorKind::WriteZero, "{cause}");

    let not_found = |id: &str, says: &str| {
        let err = reader.read_blob(id).expect_err(id);
        assert_eq!(err.reason(), Reason::NotFound, "{id}: {err}");
        assert!(err.to_string().contains(says), "{id}: {err}");
    };
    not_found(&"1".repeat(40), "is not in the cache");
    for malformed in ["", "abc", &"a".repeat(39), &"g".repeat(40), &"a".repeat(41)] {
        not_found(malformed, "is not a blob id");
    }
    not_found(
        &remote.git_bare(&["rev-parse", "main^{tree}"]),
        "is a tree, not a blob",
    );
    not_found(
        &remote.git_bare(&["rev-parse", "main:policies"]),
        "is a tree, not a blob",
    );
    not_found(&update.new, "is a commit, not a blob");

    // A writer that fails is an IO error.
    let lib = remote.git_bare(&["rev-parse", "main:vendor/lib.rego"]);
    let err = reader
        .read_blob_to(&lib, &mut Refusing)
        .expect_err("the writer fails");
    assert_eq!(err.reason(), Reason::LocalIo, "{err}");
}

/// A writer that refuses every write.
struct Refusing;

impl Write for Refusing {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("full"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn reader_reads_paths_in_nested_directories() {
    let remote = Remote::new();
    let commit = remote.commit(
        &[
            ("a-b", Some("a-b\n")),
            ("a.txt", Some("a.txt\n")),
            ("a/x", Some("a/x\n")),
            ("a/b/c/deep.txt", Some("deep\n")),
            ("a0", Some("a0\n")),
            ("secret/key.txt", Some("key\n")),
            ("notes.txt/file", Some("a directory named like a file\n")),
        ],
        "nested",
    );
    let cache = unique_dir();
    let mut source = quick_source("n", &remote.file_url());
    source.filter.exclude = vec!["secret/".into()];
    sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let reader = Reader::open(cache.path(), &source).expect("open");
    for path in [
        "a-b",
        "a.txt",
        "a/x",
        "a/b/c/deep.txt",
        "a0",
        "notes.txt/file",
        "README.md",
        "src/lib.txt",
    ] {
        let expected = remote.git_bare(&["cat-file", "blob", &format!("main:{path}")]);
        let bytes = reader.read(&commit, path).expect(path);
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8").trim_end(),
            expected,
            "{path}"
        );
    }
    let not_found = |path: &str, says: &str| {
        let err = reader.read(&commit, path).expect_err(path);
        assert_eq!(err.reason(), Reason::NotFound, "{path}: {err}");
        assert!(err.to_string().contains(says), "{path}: {err}");
    };
    // Filtered out, missing, or not a usable path: all the same to the caller.
    not_found("secret/key.txt", "no file `secret/key.txt`");
    for missing in [
        "missing.txt",
        "a/missing",
        "a/b/c/deep.txt/more",
        "a.txt/x",
        "A.TXT",
        "",
        "/a.txt",
        "a//x",
        "a/./x",
        "a/../a.txt",
        "a/x/",
        ".git/config",
    ] {
        not_found(missing, "no file");
    }
    for directory in ["a", "a/b", "a/b/c", "notes.txt", "src"] {
        not_found(directory, "is a directory");
    }
    let unknown = "1".repeat(40);
    not_found(&unknown, "no file");
    let err = reader.read(&unknown, "a.txt").expect_err("no such commit");
    assert_eq!(err.reason(), Reason::NotFound, "{err}");
    assert!(err.to_string().contains("not in the cache"), "{err}");

    // The listing is sorted by path components, which is not git's tree order (`a-b`, `a.txt`,
    // `a/`, `a0`); walking gives the same files in the same order.
    let files = reader.files(&commit).expect("files");
    let listed: Vec<&str> = files.iter().map(|file| file.path.as_str()).collect();
    assert_eq!(
        listed,
        [
            "README.md",
            "a/b/c/deep.txt",
            "a/x",
            "a-b",
            "a.txt",
            "a0",
            "notes.txt/file",
            "src/lib.txt"
        ]
    );
    // The walk borrows the reader only, not the text it was given.
    let walk = reader.walk(&commit.clone()).expect("walk");
    let walked: Vec<gitfeed::File> = walk.collect::<Result<_, _>>().expect("every step");
    assert_eq!(walked, files);
    assert_eq!(
        reader.walk(&unknown).err().map(|err| err.reason()),
        Some(Reason::NotFound)
    );
}

/// The clone a cache holds for its only repository.
fn cached_clone(cache: &Path) -> std::path::PathBuf {
    let clones: Vec<_> = std::fs::read_dir(cache.join("clones"))
        .expect("clones")
        .map(|entry| entry.expect("entry").path().join("repo.git"))
        .filter(|git_dir| git_dir.exists())
        .collect();
    assert_eq!(clones.len(), 1, "{clones:?}");
    clones.into_iter().next().expect("one clone")
}

/// A read by path reads only the trees along the path: a commit whose other directory is
/// missing from the cache can still be read where it is whole, while listing it fails and
/// a walk stops at the damage.
#[test]
fn reading_a_path_reads_no_other_directory() {
    let remote = Remote::new();
    remote.commit(&[("ok.txt", Some("fine\n"))], "files");
    let cache = unique_dir();
    let source = quick_source("d", &remote.file_url());
    sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let clone = cached_clone(cache.path());
    let fine = blob(&clone, "fine\n");
    // A commit written into the cache itself, whose directory `lost` names a tree the cache
    // does not have.
    let lost = "2".repeat(40);
    let tree = raw_tree(
        &clone,
        &[
            ("100644", b"a.txt", fine.clone()),
            ("40000", b"lost", lost),
            ("100644", b"ok.txt", fine),
        ],
    );
    let commit = crate::util::git_in(&clone, &["commit-tree", &tree, "-m", "damaged"]);
    let reader = Reader::open(cache.path(), &source).expect("open");
    assert_eq!(reader.read(&commit, "ok.txt").expect("ok.txt"), b"fine\n");
    let err = reader.read(&commit, "lost/file").expect_err("not there");
    assert_eq!(err.reason(), Reason::CloneCorrupt, "{err}");
    let err = reader.files(&commit).expect_err("a tree is missing");
    assert_eq!(err.reason(), Reason::CloneCorrupt, "{err}");
    let steps: Vec<Result<String, Reason>> = reader
        .walk(&commit)
        .expect("walk")
        .map(|step| step.map(|file| file.path).map_err(|err| err.reason()))
        .collect();
    assert_eq!(
        steps,
        [Ok("a.txt".to_owned()), Err(Reason::CloneCorrupt)],
        "the walk ends at the damage"
    );
}

/// A hostile tree may repeat a name: reading by path finds what the listing lists first,
/// and the files of two subtrees of one name are listed together, sorted.
#[test]
fn reader_on_a_tree_that_repeats_names() {
    let remote = Remote::new();
    let bare = remote.bare_path();
    let (one, two, three) = (blob(&bare, "1\n"), blob(&bare, "2\n"), blob(&bare, "3\n"));
    let first = raw_tree(
        &bare,
        &[("100644", b"b", one.clone()), ("100644", b"d", two.clone())],
    );
    let second = raw_tree(&bare, &[("100644", b"c", three.clone())]);
    let under_x = raw_tree(&bare, &[("100644", b"y", one.clone())]);
    let tree = raw_tree(
        &bare,
        &[
            ("40000", b"d", first),
            ("40000", b"d", second),
            ("40000", b"x", under_x),
            ("100644", b"x", two.clone()),
            ("100644", b"z", three.clone()),
            ("100644", b"z", one.clone()),
        ],
    );
    let parent = remote.head();
    let commit = crate::util::git_in(&bare, &["commit-tree", &tree, "-p", &parent, "-m", "r"]);
    crate::util::git_in(&bare, &["update-ref", "refs/heads/main", &commit]);
    let cache = unique_dir();
    let source = quick_source("r", &remote.file_url());
    sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let reader = Reader::open(cache.path(), &source).expect("open");
    let files = reader.files(&commit).expect("files");
    let listed: Vec<(&str, &str)> = files
        .iter()
        .map(|file| (file.path.as_str(), file.id.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("d/b", one.as_str()),
            ("d/c", three.as_str()),
            ("d/d", two.as_str()),
            ("x", two.as_str()),
            ("x/y", one.as_str()),
            ("z", three.as_str()),
            ("z", one.as_str()),
        ]
    );
    for (path, content) in [
        ("d/c", "3\n"),
        ("d/d", "2\n"),
        ("x", "2\n"),
        ("x/y", "1\n"),
        ("z", "3\n"),
    ] {
        assert_eq!(
            reader.read(&commit, path).expect(path),
            content.as_bytes(),
            "{path}"
        );
    }
}

/// Trees nested more than 256 deep are refused, as the listing refuses them; a path that
/// stays within that depth is read, and so is the rest of the commit.
#[test]
fn reader_refuses_paths_nested_too_deep() {
    let remote = Remote::new();
    let cache = unique_dir();
    let source = quick_source("deep", &remote.file_url());
    sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    let clone = cached_clone(cache.path());
    let fine = blob(&clone, "fine\n");
    // The tree 257 directories down holds `f`; the one 256 down holds `g` and that tree.
    let mut tree = raw_tree(&clone, &[("100644", b"f", fine.clone())]);
    tree = raw_tree(
        &clone,
        &[("40000", b"d", tree), ("100644", b"g", fine.clone())],
    );
    for _ in 1..256 {
        tree = raw_tree(&clone, &[("40000", b"d", tree)]);
    }
    let root = raw_tree(
        &clone,
        &[("40000", b"d", tree), ("100644", b"ok.txt", fine)],
    );
    let commit = crate::util::git_in(&clone, &["commit-tree", &root, "-m", "deep"]);
    let reader = Reader::open(cache.path(), &source).expect("open");
    let within = format!("{}g", "d/".repeat(256));
    let beyond = format!("{}f", "d/".repeat(257));
    assert_eq!(reader.read(&commit, "ok.txt").expect("ok.txt"), b"fine\n");
    assert_eq!(reader.read(&commit, &within).expect("within"), b"fine\n");
    let err = reader.read(&commit, &beyond).expect_err("too deep");
    assert_eq!(err.reason(), Reason::SnapshotTooLarge, "{err}");
    let err = reader.files(&commit).expect_err("too deep");
    assert_eq!(err.reason(), Reason::SnapshotTooLarge, "{err}");
}
