//! Tests of snapshots: crashes at every step, hostile trees, recycling and readers.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// A commit id made from `n`.
fn commit(n: u32) -> String {
    format!("{n:040x}")
}

/// An entry at the `/`-separated `path`.
fn entry(path: &str, kind: EntryKind, id: &str) -> Entry {
    raw(
        &path.split('/').map(str::as_bytes).collect::<Vec<_>>(),
        kind,
        id,
    )
}

/// An entry with the given raw components.
fn raw(components: &[&[u8]], kind: EntryKind, id: &str) -> Entry {
    Entry {
        components: components.iter().map(|c| c.to_vec()).collect(),
        kind,
        id: id.to_owned(),
        size: 0,
    }
}

/// A plain, non-executable file kind.
const FILE: EntryKind = EntryKind::File { executable: false };

/// Blob contents by id, served like the git layer would.
struct Blobs(HashMap<String, Vec<u8>>);

impl Blobs {
    /// A store holding each `(id, contents)` pair.
    fn new(pairs: &[(&str, &[u8])]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(id, data)| ((*id).to_owned(), data.to_vec()))
                .collect(),
        )
    }

    /// Streams blob `id` into `out`.
    fn read(&self, id: &str, out: &mut dyn Write) -> io::Result<()> {
        let data = self.0.get(id).ok_or(io::ErrorKind::NotFound)?;
        out.write_all(data)
    }
}

/// Every path below `dir`, relative to it, without following symlinks.
fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for item in fs::read_dir(&next).unwrap() {
            let item = item.unwrap();
            found.insert(item.path().strip_prefix(dir).unwrap().to_path_buf());
            if item.file_type().unwrap().is_dir() {
                pending.push(item.path());
            }
        }
    }
    found
}

/// The names in `dir/.snapshots`, sorted.
fn snapshot_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join(SNAPSHOTS))
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// What `.snapshots` holds when `commits` are the snapshots kept: each with its manifest,
/// and the order file; sorted.
fn kept(commits: &[String]) -> Vec<String> {
    let mut names: Vec<String> = commits
        .iter()
        .flat_map(|commit| [commit.clone(), format!("{commit}{MANIFEST}")])
        .chain([ORDER.to_owned()])
        .collect();
    names.sort();
    names
}

/// [`kept`], and the spare a pruned snapshot left.
fn kept_and_spare(commits: &[String]) -> Vec<String> {
    let mut names = kept(commits);
    names.push(SPARE.to_owned());
    names.sort();
    names
}

/// Names starting with `.tmp-` in `dir` and `dir/.snapshots`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    [dir.to_path_buf(), dir.join(SNAPSHOTS)]
        .iter()
        .flat_map(|dir| fs::read_dir(dir).unwrap())
        .map(|item| item.unwrap())
        .filter(|item| {
            item.file_name()
                .as_bytes()
                .starts_with(TMP_PREFIX.as_bytes())
        })
        .map(|item| item.path())
        .collect()
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

/// A tree with files, nested directories, an executable and inside symlinks is written as
/// it is; new commits swap `current` and old snapshots beyond `keep` go, never the current
/// one, oldest by when they became current.
#[test]
fn normal_tree() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    assert_eq!(snapshots.current(), None);

    let blobs = Blobs::new(&[
        ("readme", b"hello\n"),
        ("main", b"fn main() {}\n"),
        ("module", b"pub fn f() {}\n"),
        ("script", b"#!/bin/sh\necho hi\n"),
        ("docs", b"src/lib"),
        ("up", b"../README"),
        ("latin1", b"caf\xe9"),
    ]);
    let entries = vec![
        entry("README", FILE, "readme"),
        entry("src/main.rs", FILE, "main"),
        entry("src/lib/mod.rs", FILE, "module"),
        entry("bin/run", EntryKind::File { executable: true }, "script"),
        entry("docs", EntryKind::Symlink, "docs"),
        entry("src/up", EntryKind::Symlink, "up"),
        raw(&[b"caf\xe9", b"menu"], FILE, "latin1"),
    ];
    let first = commit(1);
    let report = snapshots
        .write(&first, &entries, &mut |id, out| blobs.read(id, out))
        .unwrap();
    assert_eq!(report.skipped, []);
    assert_eq!(report.written, 7);
    assert_eq!(snapshots.current(), Some(first.clone()));

    let resolved = fs::canonicalize(dir.join(CURRENT)).unwrap();
    assert_eq!(
        resolved,
        fs::canonicalize(dir.join(SNAPSHOTS).join(&first)).unwrap()
    );
    assert_eq!(
        fs::read_link(dir.join(CURRENT)).unwrap(),
        Path::new(SNAPSHOTS).join(&first)
    );
    assert_eq!(fs::read(resolved.join("README")).unwrap(), b"hello\n");
    assert_eq!(
        fs::read(resolved.join("src/main.rs")).unwrap(),
        b"fn main() {}\n"
    );
    assert_eq!(mode(&resolved.join("README")), 0o444);
    assert_eq!(mode(&resolved.join("bin/run")), 0o555);
    assert_eq!(mode(&resolved.join("src/lib")), 0o755);
    assert_eq!(
        fs::read_link(resolved.join("docs")).unwrap(),
        Path::new("src/lib")
    );
    assert_eq!(
        fs::read(resolved.join("docs/mod.rs")).unwrap(),
        b"pub fn f() {}\n"
    );
    assert_eq!(fs::read(resolved.join("src/up")).unwrap(), b"hello\n");
    let latin1 = resolved.join(OsStr::from_bytes(b"caf\xe9")).join("menu");
    assert_eq!(fs::read(latin1).unwrap(), b"caf\xe9");

    // Each later commit carries one file naming it.
    let reads = std::cell::Cell::new(0);
    let write = |n: u32| {
        let entries = [entry("id", FILE, &commit(n))];
        snapshots
            .write(&commit(n), &entries, &mut |id, out| {
                reads.set(reads.get() + 1);
                out.write_all(id.as_bytes())
            })
            .unwrap()
    };
    write(2);
    write(3);
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(2), commit(3)])
    );
    assert_eq!(snapshots.current(), Some(commit(3)));

    // Making 2 current again reuses its snapshot without reading, and makes it newer
    // than 3, which is the one to go next.
    reads.set(0);
    assert_eq!(write(2).written, 1);
    assert_eq!(reads.get(), 0);
    assert_eq!(snapshots.current(), Some(commit(2)));
    write(4);
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(2), commit(4)])
    );
    let resolved = fs::canonicalize(dir.join(CURRENT)).unwrap();
    assert_eq!(fs::read(resolved.join("id")).unwrap(), commit(4).as_bytes());

    // `keep` is at least 1: the current snapshot stays.
    let single = SnapshotDir::new(&dir, 0);
    let entries = [entry("id", FILE, "x")];
    single
        .write(&commit(5), &entries, &mut |_, out| out.write_all(b"5"))
        .unwrap();
    assert_eq!(snapshot_names(&dir), kept_and_spare(&[commit(5)]));
    assert_eq!(single.current(), Some(commit(5)));
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());
}

/// Every hostile entry is skipped with a reason, the rest is written, and nothing appears
/// outside the directory.
#[test]
fn hostile_entries() {
    let parent = tempfile::tempdir().unwrap();
    fs::write(parent.path().join("sentinel"), b"untouched").unwrap();
    let dir = parent.path().join("feed");
    let before = listing(parent.path());

    let long_target = vec![b'a'; MAX_TARGET + 1];
    let blobs = Blobs::new(&[
        ("data", b"payload"),
        ("to-etc", b"/etc"),
        ("to-outside", b"../../outside"),
        ("one-up-too-many", b"../../x"),
        ("to-sub", b"sub"),
        ("to-self", b"."),
        ("through-self", b"self/.."),
        ("nul", b"a\0b"),
        ("empty", b""),
        ("long", &long_target),
        ("inside", b"../ok"),
    ]);
    let link = EntryKind::Symlink;
    let hostile: Vec<(Entry, &str)> = vec![
        (raw(&[b".."], FILE, "data"), "path component is . or .."),
        (
            raw(&[b"..", b"x"], FILE, "data"),
            "path component is . or ..",
        ),
        (
            raw(&[b"a", b"..", b"..", b"x"], FILE, "data"),
            "path component is . or ..",
        ),
        (raw(&[b"."], FILE, "data"), "path component is . or .."),
        (raw(&[b"x/../../escape"], FILE, "data"), "contains a slash"),
        (raw(&[b"/etc/passwd"], FILE, "data"), "contains a slash"),
        (
            raw(&[b"", b"etc", b"passwd"], FILE, "data"),
            "empty path component",
        ),
        (raw(&[b"a\0b"], FILE, "data"), "contains a nul byte"),
        (
            raw(&[&[b'n'; MAX_NAME + 1]], FILE, "data"),
            "path component too long",
        ),
        (raw(&[], FILE, "data"), "empty path"),
        (entry(".git/config", FILE, "data"), "names .git"),
        (
            entry(
                ".GIT/hooks/post-checkout",
                EntryKind::File { executable: true },
                "data",
            ),
            "names .git",
        ),
        (entry(".git./x", FILE, "data"), "names .git"),
        (entry(".git /x", FILE, "data"), "names .git"),
        (entry("GIT~1/x", FILE, "data"), "names .git"),
        (entry(".g\u{200c}it/x", FILE, "data"), "names .git"),
        (entry("readme", FILE, "data"), "collides with \"README\""),
        (entry("a", FILE, "data"), "collides with \"A\""),
        (entry("ok/x", FILE, "data"), "inside file \"ok\""),
        (entry("etc", link, "to-etc"), "symlink target is absolute"),
        (
            entry("out", link, "to-outside"),
            "symlink target leaves the snapshot",
        ),
        (
            entry("sub/deep", link, "one-up-too-many"),
            "symlink target leaves the snapshot",
        ),
        (entry("link/x", FILE, "data"), "inside symlink \"link\""),
        (entry("up/y", FILE, "data"), "inside symlink \"Up\""),
        (
            entry("chain", link, "through-self"),
            "uses .. after another symlink",
        ),
        (
            entry("nul", link, "nul"),
            "symlink target contains a nul byte",
        ),
        (entry("empty", link, "empty"), "symlink target is empty"),
        (entry("long", link, "long"), "symlink target too long"),
        (entry("module", EntryKind::Gitlink, "data"), "submodule"),
    ];
    let fine = vec![
        entry("README", FILE, "data"),
        entry("A/x", FILE, "data"),
        entry("ok", FILE, "data"),
        entry("sub/file", FILE, "data"),
        entry("sub/back", link, "inside"),
        entry("link", link, "to-sub"),
        entry("Up", link, "to-sub"),
        entry("self", link, "to-self"),
        entry(".gitignore", FILE, "data"),
        entry("x.git", FILE, "data"),
    ];
    let entries: Vec<Entry> = hostile
        .iter()
        .map(|(entry, _)| entry.clone())
        .chain(fine.iter().cloned())
        .collect();

    let snapshots = SnapshotDir::new(&dir, 3);
    let report = snapshots
        .write(&commit(1), &entries, &mut |id, out| blobs.read(id, out))
        .unwrap();
    assert_eq!(report.written, fine.len(), "{report:#?}");
    assert_eq!(report.skipped.len(), hostile.len());
    for (entry, reason) in &hostile {
        let path = display(&entry.components);
        let found = report
            .skipped
            .iter()
            .find(|skipped| skipped.path == path && skipped.reason.contains(reason));
        assert!(
            found.is_some(),
            "{path:?} not skipped for {reason:?}: {report:#?}"
        );
    }

    // Nothing appeared next to the directory, and inside it only the fine entries.
    let after: BTreeSet<PathBuf> = listing(parent.path())
        .into_iter()
        .filter(|path| !path.starts_with("feed"))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        fs::read(parent.path().join("sentinel")).unwrap(),
        b"untouched"
    );
    let resolved = fs::canonicalize(dir.join(CURRENT)).unwrap();
    let written: BTreeSet<PathBuf> = listing(&resolved);
    let expected: BTreeSet<PathBuf> = [
        "README",
        "A",
        "A/x",
        "ok",
        "sub",
        "sub/file",
        "sub/back",
        "link",
        "Up",
        "self",
        ".gitignore",
        "x.git",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(written, expected);
    assert_eq!(fs::read(resolved.join("link/file")).unwrap(), b"payload");
    assert_eq!(fs::read(resolved.join("sub/back")).unwrap(), b"payload");
}

/// The check of `.git` names covers the spellings filesystems treat as `.git`, and only
/// those.
#[test]
fn git_names() {
    for name in [
        ".git",
        ".GIT",
        ".Git",
        ".git.",
        ".git ",
        ".git. .",
        "git~1",
        "\u{feff}.git",
    ] {
        assert!(crate::git::names_git(name.as_bytes()), "{name:?}");
    }
    for name in [".gitignore", "git", ".git~1", "x.git", ".gi", "..git"] {
        assert!(!crate::git::names_git(name.as_bytes()), "{name:?}");
    }
}

/// Resolving symlinks through the filesystem catches what following them would do, even
/// where each link on its own looks harmless.
#[test]
fn escapes_through_real_links() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    fs::create_dir(root.join("sub")).unwrap();
    let link = |name: &str, target: &str| {
        std::os::unix::fs::symlink(target, root.join(name)).unwrap();
    };
    link("self", ".");
    link("up", "self/..");
    link("down", "sub");
    link("sub/back", "../down");
    link("loop", "loop");
    link("missing", "nothing/here");
    let components =
        |path: &str| -> Vec<Vec<u8>> { path.split('/').map(|c| c.as_bytes().to_vec()).collect() };
    assert!(escapes(root, &components("up")));
    assert!(escapes(root, &components("loop")));
    assert!(!escapes(root, &components("self")));
    assert!(!escapes(root, &components("down")));
    assert!(!escapes(root, &components("sub/back")));
    assert!(!escapes(root, &components("missing")));
}

/// A crash between writing a snapshot and switching to it leaves leftovers that
/// `recover()`, and the next write, remove; `current` stays on the last complete
/// snapshot.
#[test]
fn crash_leftovers_are_removed() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let entries = [entry("id", FILE, "x")];
    snapshots
        .write(&commit(1), &entries, &mut |_, out| out.write_all(b"1"))
        .unwrap();

    let leave_leftovers = || {
        let half = dir
            .join(SNAPSHOTS)
            .join(format!(".tmp-{}-0123456789abcdef", commit(2)));
        fs::create_dir_all(half.join("deep")).unwrap();
        fs::write(half.join("deep/id"), b"2").unwrap();
        let next = dir.join(".tmp-current-0123456789abcdef");
        std::os::unix::fs::symlink(&half, &next).unwrap();
        fs::write(dir.join(SNAPSHOTS).join(".tmp-order-0123456789abcdef"), b"").unwrap();
        // Not ours: only temporary symlinks are removed from the root.
        fs::create_dir_all(dir.join(".tmp-someone-else")).unwrap();
    };
    leave_leftovers();
    assert_eq!(snapshots.current(), Some(commit(1)));
    snapshots.recover().unwrap();
    assert_eq!(leftovers(&dir), [dir.join(".tmp-someone-else")]);
    assert_eq!(snapshots.current(), Some(commit(1)));
    let resolved = fs::canonicalize(dir.join(CURRENT)).unwrap();
    assert_eq!(fs::read(resolved.join("id")).unwrap(), b"1");
    fs::remove_dir(dir.join(".tmp-someone-else")).unwrap();

    leave_leftovers();
    fs::remove_dir(dir.join(".tmp-someone-else")).unwrap();
    snapshots
        .write(&commit(3), &entries, &mut |_, out| out.write_all(b"3"))
        .unwrap();
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());
    assert_eq!(snapshots.current(), Some(commit(3)));

    // Nothing to recover in a directory never written to.
    SnapshotDir::new(parent.path().join("never"), 1)
        .recover()
        .unwrap();
}

/// A reader that resolves `current` once and reads two files through the resolved path
/// always gets both from the same commit while the writer swaps, and a file every commit
/// shares stays as it was.
#[test]
fn readers_never_see_a_mix() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 3);
    let write = |n: u32| {
        let id = commit(n);
        // Blob ids as git would have them: new content, new id.
        let entries = [
            entry("a", FILE, &format!("{id}-a")),
            entry("deep/b", FILE, &format!("{id}-b")),
            entry("deep/shared", FILE, "shared"),
        ];
        let report = snapshots
            .write(&id, &entries, &mut |blob, out| {
                out.write_all(blob.get(..40).unwrap_or(blob).as_bytes())
            })
            .unwrap();
        assert_eq!(report.shared, usize::from(n > 0));
    };
    write(0);

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let dir = dir.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let (mut consistent, mut gone) = (0, 0);
            while !done.load(atomic::Ordering::Relaxed) {
                let both = fs::canonicalize(dir.join(CURRENT)).and_then(|resolved| {
                    let a = fs::read(resolved.join("a"))?;
                    let b = fs::read(resolved.join("deep/b"))?;
                    let shared = fs::read(resolved.join("deep/shared"))?;
                    Ok((resolved, a, b, shared))
                });
                match both {
                    Ok((resolved, a, b, shared)) => {
                        let name = resolved.file_name().unwrap().as_bytes();
                        assert_eq!(a, name);
                        assert_eq!(b, name);
                        assert_eq!(shared, b"shared");
                        consistent += 1;
                    }
                    // Pruned after `keep` more swaps: resolve again.
                    Err(err) if err.kind() == io::ErrorKind::NotFound => gone += 1,
                    Err(err) => panic!("{err}"),
                }
            }
            (consistent, gone)
        })
    };
    for n in 1..=200 {
        write(n);
    }
    done.store(true, atomic::Ordering::Relaxed);
    let (consistent, _gone) = reader.join().unwrap();
    assert!(consistent > 0);
    assert_eq!(snapshots.current(), Some(commit(200)));
    assert_eq!(snapshot_names(&dir).len(), 3 * 2 + 2);
}

/// A blob that cannot be read fails the write, leaves nothing behind and `current` as it
/// was.
#[test]
fn failing_read_changes_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let entries = [
        entry("a", FILE, "a"),
        entry("b/c", FILE, "c"),
        entry("d", FILE, "d"),
        entry("l", EntryKind::Symlink, "l"),
    ];
    snapshots
        .write(&commit(1), &entries, &mut |id, out| {
            out.write_all(if id == "l" { b"a" } else { b"1" })
        })
        .unwrap();

    // Fails on the second file, after writing part of it. Every file changes, so none is
    // shared.
    let changed = [
        entry("a", FILE, "a2"),
        entry("b/c", FILE, "c2"),
        entry("d", FILE, "d2"),
        entry("l", EntryKind::Symlink, "l"),
    ];
    let mut calls = 0;
    let err = snapshots
        .write(&commit(2), &changed, &mut |id, out| {
            if id == "l" {
                return out.write_all(b"a");
            }
            calls += 1;
            out.write_all(b"partial")?;
            if calls == 2 {
                return Err(io::Error::other("connection reset"));
            }
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "could not write \"b/c\": connection reset");
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());
    assert!(!dir.join(SNAPSHOTS).join(commit(2)).exists());
    assert_eq!(snapshots.current(), Some(commit(1)));

    // So does a symlink target that cannot be read.
    let err = snapshots
        .write(&commit(3), &entries, &mut |id, out| {
            if id == "l" {
                Err(io::Error::other("gone"))
            } else {
                out.write_all(b"3")
            }
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "could not read symlink \"l\": gone");
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());
    assert_eq!(snapshots.current(), Some(commit(1)));
    assert_eq!(snapshot_names(&dir), kept(&[commit(1)]));
}

/// The files `root` holds, by path, with their contents (a symlink's as `-> target`).
fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    listing(root)
        .into_iter()
        .filter_map(|path| {
            let full = root.join(&path);
            let metadata = fs::symlink_metadata(&full).unwrap();
            let name = path.to_string_lossy().into_owned();
            if metadata.file_type().is_symlink() {
                let target = fs::read_link(&full).unwrap();
                Some((name, format!("-> {}", target.display()).into_bytes()))
            } else if metadata.is_file() {
                Some((name, fs::read(&full).unwrap()))
            } else {
                None
            }
        })
        .collect()
}

/// The tree `current` resolves to.
fn current_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    tree(&fs::canonicalize(dir.join(CURRENT)).unwrap())
}

/// The expected tree from `(path, contents)` pairs.
fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(path, contents)| ((*path).to_owned(), contents.as_bytes().to_vec()))
        .collect()
}

/// A blob store where every id's contents is the id itself, except symlinks (`l…`),
/// whose target follows the `:`.
fn by_id(id: &str, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(
        id.split_once(':')
            .map_or(id, |(_, target)| target)
            .as_bytes(),
    )
}

/// The inode of `path` in the snapshot of `commit`.
fn inode(dir: &Path, commit: &str, path: &str) -> u64 {
    fs::symlink_metadata(dir.join(SNAPSHOTS).join(commit).join(path))
        .unwrap()
        .ino()
}

/// A new snapshot links the files that did not change from the current one without
/// reading them, writes the others, and every file is read-only.
#[test]
fn unchanged_files_are_shared_read_only() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let exe = EntryKind::File { executable: true };
    let first = [
        entry("a", FILE, "a1"),
        entry("dir/b", FILE, "b1"),
        entry("dir/deeper/c", FILE, "c1"),
        entry("run", exe, "x1"),
        entry("link", EntryKind::Symlink, "l:dir/b"),
    ];
    let report = snapshots.write(&commit(1), &first, &mut by_id).unwrap();
    assert_eq!((report.written, report.shared), (5, 0));

    let second = [
        entry("a", FILE, "a2"),
        entry("dir/b", FILE, "b1"),
        entry("dir/deeper/c", FILE, "c1"),
        entry("run", exe, "x1"),
        entry("link", EntryKind::Symlink, "l:dir/b"),
        entry("new", FILE, "n1"),
    ];
    let mut read = Vec::new();
    let report = snapshots
        .write(&commit(2), &second, &mut |id, out| {
            read.push(id.to_owned());
            by_id(id, out)
        })
        .unwrap();
    assert_eq!((report.written, report.shared), (6, 3));
    read.sort();
    assert_eq!(read, ["a2", "l:dir/b", "n1"], "only changed files are read");
    assert_eq!(
        current_tree(&dir),
        expect(&[
            ("a", "a2"),
            ("dir/b", "b1"),
            ("dir/deeper/c", "c1"),
            ("link", "-> dir/b"),
            ("new", "n1"),
            ("run", "x1"),
        ])
    );
    for path in ["dir/b", "dir/deeper/c", "run"] {
        assert_eq!(inode(&dir, &commit(1), path), inode(&dir, &commit(2), path));
    }
    assert_ne!(inode(&dir, &commit(1), "a"), inode(&dir, &commit(2), "a"));
    let old = dir.join(SNAPSHOTS).join(commit(1));
    assert_eq!(fs::read(old.join("a")).unwrap(), b"a1");
    let new = dir.join(SNAPSHOTS).join(commit(2));
    assert_eq!(mode(&new.join("a")), 0o444);
    assert_eq!(mode(&new.join("dir/b")), 0o444);
    assert_eq!(mode(&new.join("run")), 0o555);
    assert_eq!(mode(&new.join("dir")), 0o755);
    assert!(
        OpenOptions::new()
            .write(true)
            .open(new.join("dir/b"))
            .is_err()
            || is_root()
    );
    assert_eq!(snapshot_names(&dir), kept(&[commit(1), commit(2)]));
}

/// A snapshot pruned beyond `keep` becomes the spare, holding only files other snapshots
/// share; the next snapshot starts from it, keeps only what it can prove is the current
/// snapshot's unchanged file for the same path, blob and mode, and removes the rest,
/// whatever was put into the spare meanwhile.
#[test]
fn pruned_snapshot_is_recycled() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let tree = |a: &str, b: &str| {
        [
            entry("a", FILE, a),
            entry("b", FILE, b),
            entry("dir/c", FILE, "c1"),
            entry("dir/deeper/d", FILE, "d1"),
            entry("link", EntryKind::Symlink, "l:dir/c"),
        ]
    };
    snapshots
        .write(&commit(1), &tree("a1", "b1"), &mut by_id)
        .unwrap();
    snapshots
        .write(&commit(2), &tree("a2", "b1"), &mut by_id)
        .unwrap();
    snapshots
        .write(&commit(3), &tree("a2", "b3"), &mut by_id)
        .unwrap();
    let spare = dir.join(SNAPSHOTS).join(SPARE);
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(2), commit(3)])
    );
    // Commit 1's own `a` is gone; the shared files stay, and so does the symlink (a few
    // bytes) until the spare is used.
    let listed: Vec<PathBuf> = listing(&spare).into_iter().collect();
    let names = ["b", "dir", "dir/c", "dir/deeper", "dir/deeper/d", "link"];
    assert_eq!(listed, names.map(PathBuf::from));
    for path in ["b", "dir/c", "dir/deeper/d"] {
        let metadata = fs::symlink_metadata(spare.join(path)).unwrap();
        assert!(metadata.nlink() >= 2, "{path} holds bytes of its own");
    }

    // Meanwhile: a stray file, a directory the next tree lacks, a symlink out, a
    // directory with other permissions, and a file with the right bytes at `b` that is
    // not the current snapshot's file.
    fs::write(spare.join("stray"), "x").unwrap();
    fs::create_dir(spare.join("extra")).unwrap();
    fs::write(spare.join("extra/file"), "x").unwrap();
    std::os::unix::fs::symlink("/etc", spare.join("dir/out")).unwrap();
    fs::set_permissions(spare.join("dir"), Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(spare.join("b")).unwrap();
    fs::write(spare.join("b"), "b3").unwrap();
    fs::set_permissions(spare.join("b"), Permissions::from_mode(MODE_FILE)).unwrap();

    let mut read = Vec::new();
    let report = snapshots
        .write(&commit(4), &tree("a4", "b3"), &mut |id, out| {
            read.push(id.to_owned());
            by_id(id, out)
        })
        .unwrap();
    read.sort();
    assert_eq!(
        read,
        ["a4", "l:dir/c"],
        "only changed files and symlinks are read"
    );
    assert_eq!((report.written, report.shared), (5, 3));
    assert_eq!(
        current_tree(&dir),
        expect(&[
            ("a", "a4"),
            ("b", "b3"),
            ("dir/c", "c1"),
            ("dir/deeper/d", "d1"),
            ("link", "-> dir/c"),
        ])
    );
    let new = dir.join(SNAPSHOTS).join(commit(4));
    let listed: Vec<PathBuf> = listing(&new).into_iter().collect();
    let names = [
        "a",
        "b",
        "dir",
        "dir/c",
        "dir/deeper",
        "dir/deeper/d",
        "link",
    ];
    assert_eq!(listed, names.map(PathBuf::from));
    for path in ["b", "dir/c", "dir/deeper/d"] {
        assert_eq!(inode(&dir, &commit(3), path), inode(&dir, &commit(4), path));
    }
    assert_eq!(mode(&new.join("dir")), MODE_DIR);
    assert_eq!(mode(&new.join("a")), MODE_FILE);
    // Commit 2 was pruned into a new spare; nothing else is left.
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(3), commit(4)])
    );
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());
    assert!(snapshots.manifest(&commit(4)).is_some());

    // A spare that is not a directory is removed and the snapshot written afresh. The spare
    // is moved away rather than removed: removing its links to the shared files would change
    // their status change time, and the next snapshot would no longer trust them.
    fs::rename(&spare, parent.path().join("old-spare")).unwrap();
    fs::write(&spare, "not a directory").unwrap();
    let report = snapshots
        .write(&commit(5), &tree("a5", "b3"), &mut by_id)
        .unwrap();
    assert_eq!((report.written, report.shared), (5, 3));
    assert_eq!(current_tree(&dir)["a"], b"a5");
    assert!(is_real_dir(&spare));
}

/// Whether the tests run as root, who may write read-only files.
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A file whose mode alone changes, or whose content alone changes, becomes a file of its
/// own; the snapshot before keeps its file as it was.
#[test]
fn mode_or_content_changed_in_place() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 3);
    let exe = EntryKind::File { executable: true };
    snapshots
        .write(&commit(1), &[entry("f", FILE, "f1")], &mut by_id)
        .unwrap();
    let report = snapshots
        .write(&commit(2), &[entry("f", exe, "f1")], &mut by_id)
        .unwrap();
    assert_eq!(report.shared, 0);
    let report = snapshots
        .write(&commit(3), &[entry("f", exe, "f2")], &mut by_id)
        .unwrap();
    assert_eq!(report.shared, 0);
    let snapshot = |n| dir.join(SNAPSHOTS).join(commit(n)).join("f");
    assert_eq!(mode(&snapshot(1)), 0o444);
    assert_eq!(mode(&snapshot(2)), 0o555);
    assert_eq!(mode(&snapshot(3)), 0o555);
    assert_eq!(fs::read(snapshot(1)).unwrap(), b"f1");
    assert_eq!(fs::read(snapshot(2)).unwrap(), b"f1");
    assert_eq!(fs::read(snapshot(3)).unwrap(), b"f2");
    let inodes: HashSet<u64> = (1..=3).map(|n| inode(&dir, &commit(n), "f")).collect();
    assert_eq!(inodes.len(), 3);
}

/// A file that becomes a symlink and then the same file again is written each time, and
/// every snapshot keeps its own kind of entry.
#[test]
fn file_becomes_symlink_and_back() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 3);
    let file = [entry("p", FILE, "p1"), entry("q", FILE, "q1")];
    let link = [
        entry("p", EntryKind::Symlink, "l:q"),
        entry("q", FILE, "q1"),
    ];
    snapshots.write(&commit(1), &file, &mut by_id).unwrap();
    let report = snapshots.write(&commit(2), &link, &mut by_id).unwrap();
    assert_eq!(report.shared, 1);
    assert_eq!(current_tree(&dir), expect(&[("p", "-> q"), ("q", "q1")]));
    let report = snapshots.write(&commit(3), &file, &mut by_id).unwrap();
    assert_eq!(
        report.shared, 1,
        "only q: p was a symlink in the snapshot before"
    );
    assert_eq!(current_tree(&dir), expect(&[("p", "p1"), ("q", "q1")]));
    let first = tree(&dir.join(SNAPSHOTS).join(commit(1)));
    assert_eq!(first, expect(&[("p", "p1"), ("q", "q1")]));
    let second = tree(&dir.join(SNAPSHOTS).join(commit(2)));
    assert_eq!(second, expect(&[("p", "-> q"), ("q", "q1")]));
}

/// A file of the current snapshot that was changed in place, replaced, or reached through
/// a directory swapped for a symlink is not shared: the new snapshot gets the blob's
/// contents.
#[test]
fn changed_files_are_not_shared() {
    let parent = tempfile::tempdir().unwrap();
    let outside = parent.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("c"), b"c1").unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let entries = [
        entry("a", FILE, "a1"),
        entry("b", FILE, "b1"),
        entry("d/c", FILE, "c1"),
        entry("e", FILE, "e1"),
        entry("g", FILE, "g1"),
    ];
    snapshots.write(&commit(1), &entries, &mut by_id).unwrap();
    let old = dir.join(SNAPSHOTS).join(commit(1));
    let edit = |name: &str, contents: &[u8]| {
        fs::set_permissions(old.join(name), Permissions::from_mode(0o644)).unwrap();
        fs::write(old.join(name), contents).unwrap();
        fs::set_permissions(old.join(name), Permissions::from_mode(0o444)).unwrap();
    };
    // In place, to another size.
    edit("a", b"changed");
    // In place, same size, later: only the modification time tells. (Within one tick
    // of the filesystem's clock it cannot tell; the test says when.)
    edit("g", b"G1");
    let later = SystemTime::now() + std::time::Duration::from_secs(10);
    File::options()
        .write(true)
        .open(old.join("g"))
        .and_then(|file| file.set_modified(later))
        .unwrap();
    // Replaced by another file, made while the old one still exists so it cannot take
    // its inode.
    fs::write(old.join("b.new"), b"B1").unwrap();
    fs::set_permissions(old.join("b.new"), Permissions::from_mode(0o444)).unwrap();
    fs::rename(old.join("b.new"), old.join("b")).unwrap();
    // A directory swapped for a symlink to a look-alike outside.
    fs::rename(old.join("d"), old.join("d-moved")).unwrap();
    std::os::unix::fs::symlink(&outside, old.join("d")).unwrap();

    let report = snapshots.write(&commit(2), &entries, &mut by_id).unwrap();
    assert_eq!(report.shared, 1, "only e is unchanged");
    assert_eq!(
        current_tree(&dir),
        expect(&[
            ("a", "a1"),
            ("b", "b1"),
            ("d/c", "c1"),
            ("e", "e1"),
            ("g", "g1")
        ])
    );
    assert_ne!(
        inode(&dir, &commit(2), "d/c"),
        fs::metadata(outside.join("c")).unwrap().ino()
    );
}

/// A directory gitfeed did not finish, under the name of the commit being written, is
/// never used: the snapshot is written in its place. So is a manifest that names another
/// directory, or a file or symlink under that name.
#[test]
fn foreign_directory_with_the_next_commits_name() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 3);
    let entries = [entry("a", FILE, "a1"), entry("d/b", FILE, "b1")];
    snapshots.write(&commit(1), &entries, &mut by_id).unwrap();
    let expected = expect(&[("a", "a1"), ("d/b", "b1")]);

    let names = dir.join(SNAPSHOTS);
    // Empty, and with someone else's files.
    fs::create_dir(names.join(commit(2))).unwrap();
    snapshots.write(&commit(2), &entries, &mut by_id).unwrap();
    assert_eq!(current_tree(&dir), expected);
    fs::create_dir_all(names.join(commit(3)).join("d")).unwrap();
    fs::write(names.join(commit(3)).join("planted"), b"x").unwrap();
    snapshots.write(&commit(3), &entries, &mut by_id).unwrap();
    assert_eq!(current_tree(&dir), expected);

    // A manifest copied from a finished snapshot names that one, not this directory.
    fs::create_dir(names.join(commit(4))).unwrap();
    fs::copy(
        names.join(format!("{}{MANIFEST}", commit(3))),
        names.join(format!("{}{MANIFEST}", commit(4))),
    )
    .unwrap();
    snapshots.write(&commit(4), &entries, &mut by_id).unwrap();
    assert_eq!(current_tree(&dir), expected);

    // A symlink to a complete-looking tree elsewhere.
    let elsewhere = parent.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, names.join(commit(5))).unwrap();
    snapshots.write(&commit(5), &entries, &mut by_id).unwrap();
    assert_eq!(current_tree(&dir), expected);
    assert!(is_real_dir(&names.join(commit(5))));
    assert!(elsewhere.exists());
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(3), commit(4), commit(5)])
    );
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());

    // A finished snapshot is made current again as it is.
    let report = snapshots.write(&commit(4), &entries, &mut by_id).unwrap();
    assert_eq!(snapshots.current(), Some(commit(4)));
    assert_eq!(report.written, 2);
}

/// A write that stops at any point between two of its steps, as if the process died,
/// leaves `current` on a complete snapshot, and the next write of the same commit
/// finishes it and leaves nothing behind.
#[test]
fn a_crash_between_any_two_steps() {
    let exe = EntryKind::File { executable: true };
    let commits = [
        vec![entry("a", FILE, "a1"), entry("d/b", FILE, "b1")],
        vec![
            entry("a", FILE, "a1"),
            entry("d/b", FILE, "b2"),
            entry("run", exe, "x1"),
        ],
        vec![
            entry("a", FILE, "a3"),
            entry("d/b", FILE, "b2"),
            entry("d/e/f", FILE, "f1"),
            entry("run", exe, "x1"),
            entry("link", EntryKind::Symlink, "l:d/b"),
        ],
    ];
    let trees = [
        expect(&[("a", "a1"), ("d/b", "b1")]),
        expect(&[("a", "a1"), ("d/b", "b2"), ("run", "x1")]),
        expect(&[
            ("a", "a3"),
            ("d/b", "b2"),
            ("d/e/f", "f1"),
            ("link", "-> d/b"),
            ("run", "x1"),
        ]),
    ];
    let mut finished = false;
    for step in 1..200 {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("feed");
        let snapshots = SnapshotDir::new(&dir, 2);
        // The first is pruned into the spare that the write below starts from.
        snapshots
            .write(&commit(9), &commits[1], &mut by_id)
            .unwrap();
        snapshots
            .write(&commit(0), &commits[0], &mut by_id)
            .unwrap();
        snapshots
            .write(&commit(1), &commits[1], &mut by_id)
            .unwrap();

        CRASH_IN.set(step);
        let result = snapshots.write(&commit(2), &commits[2], &mut by_id);
        let crashed = CRASHED.replace(false);
        CRASH_IN.set(0);

        let current = snapshots.current().expect("current survives");
        let index = [commit(1), commit(2)]
            .iter()
            .position(|id| *id == current)
            .expect("current is the old or the new commit");
        assert_eq!(current_tree(&dir), trees[index + 1], "step {step}");
        if !crashed {
            result.unwrap();
            assert!(step > 10, "the write has steps to crash between");
            finished = true;
        }

        // The next run writes the same commit again.
        let report = snapshots
            .write(&commit(2), &commits[2], &mut by_id)
            .unwrap();
        assert_eq!(report.written, 5);
        assert_eq!(current_tree(&dir), trees[2], "step {step}");
        assert!(snapshots.manifest(&commit(2)).is_some(), "step {step}");
        assert_eq!(leftovers(&dir), Vec::<PathBuf>::new(), "step {step}");
        assert_eq!(
            snapshot_names(&dir),
            kept_and_spare(&[commit(1), commit(2)]),
            "step {step}"
        );
        if finished {
            break;
        }
    }
    assert!(finished);
}

/// Anything but a full lowercase object id is refused before the disk is touched.
#[test]
fn invalid_commit_rejected() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 1);
    let bad = [
        String::new(),
        "abc".to_owned(),
        commit(1).to_uppercase().replace('0', "A"),
        format!("{}0", commit(1)),
        format!("../../{}", &commit(1)[6..]),
        "g".repeat(40),
        format!("{}/", &commit(1)[1..]),
    ];
    for id in &bad {
        let err = snapshots.write(id, &[], &mut |_, _| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "invalid commit id");
    }
    assert!(!dir.exists());

    let sha256 = "ab".repeat(32);
    let report = snapshots.write(&sha256, &[], &mut |_, _| Ok(())).unwrap();
    assert_eq!(report, Report::default());
    assert_eq!(snapshots.current(), Some(sha256));
}

/// The variable that makes a test run its scenario in the directory it names, as the
/// unprivileged copy of itself that [`unprivileged`] starts.
const UNPRIVILEGED: &str = "GITFEED_TEST_UNPRIVILEGED_DIR";

/// Runs the unit test `name` again, as user and group 65534 (`nobody`), in a process of its
/// own told by [`UNPRIVILEGED`] to work in a new directory it owns. Root enters, lists and
/// changes any directory whatever its mode, so what a mode does to gitfeed only shows
/// without that privilege. Panics if the copy fails; returns quietly if the test binary
/// cannot be started as that user (it lies where only root may read).
fn unprivileged(name: &str) {
    const NOBODY: u32 = 65534;
    let parent = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(parent.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let spawned = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(UNPRIVILEGED, parent.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    let output = match spawned {
        Ok(output) => output,
        Err(err) => {
            eprintln!("{name} not run as user {NOBODY}: {err}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} as user {NOBODY}: {}\n{stdout}\n{stderr}",
        output.status
    );
}

/// Sets the permission bits of `path`.
fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
}

/// Makes a FIFO at `path`.
fn fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}

/// What `read` returns, or a panic if it takes more than a few seconds, as reading a FIFO
/// nobody writes to would.
fn promptly<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(read()));
    receiver
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("read without waiting for a writer")
}

/// Every entry of `.snapshots` gitfeed did not write is gone after the next snapshot,
/// whatever its type: files, directories, symlinks (never followed: what they lead to
/// stays), directories nobody may enter, a FIFO, and names of gitfeed's own of another type
/// (a commit's name on a file, a symlink or a directory no manifest names; an `order` that is
/// a directory). A spare nobody may enter is recycled all the same. Snapshots go on and are
/// pruned as before. Run as root, it runs again without root's privileges.
#[test]
fn foreign_entries_are_removed_at_the_next_snapshot() {
    if let Some(dir) = std::env::var_os(UNPRIVILEGED) {
        return foreign_entries_scenario(Path::new(&dir));
    }
    let parent = tempfile::tempdir().unwrap();
    foreign_entries_scenario(parent.path());
    if is_root() {
        unprivileged("snapshot::tests::foreign_entries_are_removed_at_the_next_snapshot");
    }
}

/// [`foreign_entries_are_removed_at_the_next_snapshot`] in `parent`.
fn foreign_entries_scenario(parent: &Path) {
    let outside = parent.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"not gitfeed's").unwrap();
    let outside_listing = listing(&outside);
    let outside_modes = (mode(&outside), mode(&outside.join("keep")));

    let dir = parent.join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let tree = |a: &str| [entry("a", FILE, a), entry("d/b", FILE, "b1")];
    for n in 1..=3 {
        snapshots
            .write(&commit(n), &tree(&format!("a{n}")), &mut by_id)
            .unwrap();
    }
    let names = dir.join(SNAPSHOTS);
    let spare = names.join(SPARE);
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(2), commit(3)])
    );

    let symlink = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, names.join(name)).unwrap();
    };
    fs::write(names.join("notes.txt"), b"x").unwrap();
    fs::create_dir_all(names.join("junk/deeper")).unwrap();
    fs::write(names.join("junk/deeper/f"), b"x").unwrap();
    symlink(&outside, "out");
    symlink(&outside.join("keep"), "out-file");
    symlink(Path::new("missing"), "dangling");
    fifo(&names.join("fifo"));
    // Directories nobody may enter, one inside the other; as a leftover, such a directory
    // made every write fail.
    for locked in ["locked", ".tmp-locked"] {
        let locked = names.join(locked);
        fs::create_dir_all(locked.join("inner")).unwrap();
        fs::write(locked.join("f"), b"x").unwrap();
        fs::write(locked.join("inner/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, locked.join("inner/out")).unwrap();
        chmod(&locked.join("inner"), 0o000);
        chmod(&locked, 0o000);
    }
    // gitfeed's names, on entries of another type or that no manifest names.
    fs::write(names.join(commit(7)), b"x").unwrap();
    symlink(&outside, &commit(8));
    fs::create_dir(names.join(commit(9))).unwrap();
    fs::write(names.join(commit(9)).join("f"), b"x").unwrap();
    fs::create_dir(names.join(format!("{}{MANIFEST}", commit(9)))).unwrap();
    symlink(&outside.join("keep"), &format!("{}{MANIFEST}", commit(6)));
    fs::remove_file(names.join(ORDER)).unwrap();
    fs::create_dir(names.join(ORDER)).unwrap();
    fs::write(names.join(ORDER).join(commit(3)), b"").unwrap();
    // In the spare: a directory nobody may enter, and the spare itself.
    fs::create_dir_all(spare.join("junk/inner")).unwrap();
    fs::write(spare.join("junk/inner/f"), b"x").unwrap();
    chmod(&spare.join("junk/inner"), 0o000);
    chmod(&spare.join("junk"), 0o000);
    chmod(&spare, 0o000);

    let report = snapshots
        .write(&commit(4), &tree("a4"), &mut by_id)
        .unwrap();
    assert_eq!(report.shared, 1, "d/b comes from the spare");
    assert_eq!(current_tree(&dir), expect(&[("a", "a4"), ("d/b", "b1")]));
    assert_eq!(mode(&names.join(commit(4))), MODE_DIR);
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(3), commit(4)])
    );
    assert_eq!(listing(&outside), outside_listing);
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"not gitfeed's");
    assert_eq!((mode(&outside), mode(&outside.join("keep"))), outside_modes);

    // The order, a directory a moment ago, is kept again: the oldest goes first.
    snapshots
        .write(&commit(5), &tree("a5"), &mut by_id)
        .unwrap();
    assert_eq!(
        snapshot_names(&dir),
        kept_and_spare(&[commit(4), commit(5)])
    );
    assert_eq!(read_order(&names), [commit(4), commit(5)]);
}

/// A tree nested too deep to remove is left where it is and logged; the rest of the sweep
/// and the write go on.
#[test]
fn what_cannot_be_removed_is_left() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let entries = [entry("a", FILE, "a1")];
    snapshots.write(&commit(1), &entries, &mut by_id).unwrap();
    let names = dir.join(SNAPSHOTS);
    let mut deep = names.join("deep");
    for _ in 0..sweep::MAX_DEPTH + 1 {
        deep.push("d");
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(names.join("notes.txt"), b"x").unwrap();

    snapshots.write(&commit(2), &entries, &mut by_id).unwrap();
    assert_eq!(snapshots.current(), Some(commit(2)));
    let mut expected = kept(&[commit(1), commit(2)]);
    expected.push("deep".to_owned());
    expected.sort();
    assert_eq!(snapshot_names(&dir), expected);
    assert!(deep.is_dir(), "nothing at the bottom was removed");
}

/// A `.snapshots` that is a symlink is refused, not swept: the directory it leads to keeps
/// everything in it.
#[test]
fn snapshots_symlink_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let elsewhere = parent.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::write(elsewhere.join("precious"), b"x").unwrap();
    let dir = parent.path().join("feed");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join(SNAPSHOTS)).unwrap();
    let snapshots = SnapshotDir::new(&dir, 2);

    let err = snapshots
        .write(&commit(1), &[entry("a", FILE, "a1")], &mut by_id)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "could not clean the snapshot directory: {} is a symlink, which gitfeed does not \
             follow; replace it with a directory",
            dir.join(SNAPSHOTS).display()
        )
    );
    assert_eq!(
        listing(&elsewhere),
        BTreeSet::from([PathBuf::from("precious")])
    );
    assert!(snapshots.recover().is_err());
    assert_eq!(snapshots.current(), None);
}

/// Manifests and the order file are read only as regular files: not through a symlink,
/// even to a valid one, not from a FIFO (without waiting for a writer), and not beyond a
/// size.
#[test]
fn manifests_and_order_are_read_only_as_regular_files() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 3);
    let entries = [entry("a", FILE, "a1")];
    snapshots.write(&commit(1), &entries, &mut by_id).unwrap();
    snapshots.write(&commit(2), &entries, &mut by_id).unwrap();
    let names = dir.join(SNAPSHOTS);
    let manifest = |n| names.join(format!("{}{MANIFEST}", commit(n)));
    assert!(snapshots.manifest(&commit(1)).is_some());
    assert_eq!(read_order(&names), [commit(1), commit(2)]);

    // The very manifest and order, moved away and linked back.
    let moved = parent.path().join("moved");
    fs::create_dir(&moved).unwrap();
    fs::rename(manifest(1), moved.join("manifest")).unwrap();
    std::os::unix::fs::symlink(moved.join("manifest"), manifest(1)).unwrap();
    fs::rename(names.join(ORDER), moved.join(ORDER)).unwrap();
    std::os::unix::fs::symlink(moved.join(ORDER), names.join(ORDER)).unwrap();
    assert!(snapshots.manifest(&commit(1)).is_none());
    assert_eq!(read_order(&names), Vec::<String>::new());

    fs::remove_file(manifest(2)).unwrap();
    fifo(&manifest(2));
    fs::remove_file(names.join(ORDER)).unwrap();
    fifo(&names.join(ORDER));
    let reader = snapshots.clone();
    assert!(promptly(move || reader.manifest(&commit(2)).is_none()));
    let order = names.clone();
    assert_eq!(promptly(move || read_order(&order)), Vec::<String>::new());

    let file = parent.path().join("sized");
    fs::write(&file, b"12345").unwrap();
    assert_eq!(sweep::read_own(&file, 5).unwrap(), b"12345");
    let err = sweep::read_own(&file, 4).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
}

/// A directory's components and a name in it as filesystems that ignore case see it.
type Folded = (Vec<Vec<u8>>, Vec<u8>);

/// The changes from the tree `before` to the tree `after` as the git layer finds them, each
/// crowded when a name on its path folds like another of its directory in either tree.
fn changes(before: &[Entry], after: &[Entry]) -> Vec<Change> {
    let by_path = |entries: &[Entry]| -> BTreeMap<Vec<Vec<u8>>, Entry> {
        entries
            .iter()
            .map(|entry| (entry.components.clone(), entry.clone()))
            .collect()
    };
    // Each directory's names, raw, by their folded form.
    let names = |entries: &[Entry]| {
        let mut names: HashMap<Folded, BTreeSet<Vec<u8>>> = HashMap::new();
        for entry in entries {
            for (depth, name) in entry.components.iter().enumerate() {
                let directory = entry.components[..depth].to_vec();
                names
                    .entry((directory, fold(name)))
                    .or_default()
                    .insert(name.clone());
            }
        }
        names
    };
    let (old, new) = (by_path(before), by_path(after));
    let (old_names, new_names) = (names(before), names(after));
    let crowded = |components: &[Vec<u8>]| {
        (0..components.len()).any(|depth| {
            let key = (components[..depth].to_vec(), fold(&components[depth]));
            [&old_names, &new_names]
                .iter()
                .any(|names| names.get(&key).is_some_and(|raw| raw.len() > 1))
        })
    };
    let paths: BTreeSet<&Vec<Vec<u8>>> = old.keys().chain(new.keys()).collect();
    paths
        .into_iter()
        .filter(|path| old.get(*path) != new.get(*path))
        .map(|path| Change {
            components: path.clone(),
            old: old.get(path).map(|entry| (entry.kind, entry.size)),
            new: new
                .get(path)
                .map(|entry| (entry.kind, entry.id.clone(), entry.size)),
            crowded: crowded(path),
        })
        .collect()
}

/// An update written from the changes alone holds what the whole tree written afresh does,
/// reports the same, and reads only the blobs that changed (and symlink targets, which are
/// written again); changes it cannot take alone are refused before anything is written.
#[test]
fn updates_from_changes_write_what_a_whole_tree_does() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2).listed_with(7);
    let exe = EntryKind::File { executable: true };
    let link = EntryKind::Symlink;
    let trees: Vec<Vec<Entry>> = vec![
        vec![
            entry("a", FILE, "a1"),
            entry("d/b", FILE, "b1"),
            entry("d/e/c", FILE, "c1"),
            entry("gone/only", FILE, "o1"),
            entry("run", FILE, "r1"),
            entry("to-c", link, "l:d/e/c"),
            entry(".git/config", FILE, "hook"),
        ],
        // Changed, added in a new directory, the last file of a directory removed, a mode
        // changed, and a name nobody may write added.
        vec![
            entry("a", FILE, "a2"),
            entry("d/b", FILE, "b1"),
            entry("d/e/c", FILE, "c1"),
            entry("new/deep/f", FILE, "f1"),
            entry("run", exe, "r1"),
            entry("to-c", link, "l:d/e/c"),
            entry(".git/config", FILE, "hook"),
            entry("x/.GIT/hooks", FILE, "hook"),
        ],
        // A file becomes a directory.
        vec![
            entry("a/inside", FILE, "i1"),
            entry("d/b", FILE, "b3"),
            entry("d/e/c", FILE, "c1"),
            entry("new/deep/f", FILE, "f1"),
            entry("run", exe, "r1"),
            entry("to-c", link, "l:d/e/c"),
            entry(".git/config", FILE, "hook"),
            entry("x/.GIT/hooks", FILE, "hook"),
        ],
    ];
    let mut read = Vec::new();
    let mut reader = |id: &str, out: &mut dyn Write| {
        read.push(id.to_owned());
        by_id(id, out)
    };
    snapshots.write(&commit(0), &trees[0], &mut reader).unwrap();
    for (n, pair) in trees.windows(2).enumerate() {
        let n = n as u32 + 1;
        read.clear();
        let mut reader = |id: &str, out: &mut dyn Write| {
            read.push(id.to_owned());
            by_id(id, out)
        };
        let base = snapshots.base().expect("the current snapshot is a base");
        assert_eq!(base.commit, commit(n - 1));
        let found = changes(&pair[0], &pair[1]);
        let report = snapshots
            .update(&commit(n), base, &found, &mut reader)
            .unwrap()
            .expect("written from the changes");

        let fresh = parent.path().join(format!("fresh-{n}"));
        let whole = SnapshotDir::new(&fresh, 2)
            .write(&commit(n), &pair[1], &mut by_id)
            .unwrap();
        assert_eq!(current_tree(&dir), current_tree(&fresh), "commit {n}");
        assert_eq!(
            (report.written, &report.skipped),
            (whole.written, &whole.skipped),
            "commit {n}"
        );
        let listed = |root: &Path| -> Vec<(PathBuf, u32)> {
            let resolved = fs::canonicalize(root.join(CURRENT)).unwrap();
            listing(&resolved)
                .into_iter()
                .map(|path| (path.clone(), mode(&resolved.join(path))))
                .collect()
        };
        assert_eq!(listed(&dir), listed(&fresh), "commit {n}: names and modes");
        let mut wanted: Vec<String> = found
            .iter()
            .filter_map(|change| change.new.as_ref())
            .filter(|new| !new.1.starts_with("hook"))
            .map(|new| new.1.clone())
            .chain(["l:d/e/c".to_owned()])
            .collect();
        wanted.sort();
        read.sort();
        assert_eq!(read, wanted, "commit {n}: only what changed is read");
    }
    assert_eq!(
        current_tree(&dir),
        expect(&[
            ("a/inside", "i1"),
            ("d/b", "b3"),
            ("d/e/c", "c1"),
            ("new/deep/f", "f1"),
            ("run", "r1"),
            ("to-c", "-> d/e/c"),
        ])
    );

    // Names that fold alike, a symlink that changes, a path the base left out, and an
    // added path the base holds all need the whole tree; nothing is written for them.
    let last = trees.last().unwrap();
    let mut collide = last.clone();
    collide.push(entry("D/other", FILE, "x"));
    let mut relinked = last.clone();
    relinked[5] = entry("to-c", link, "l:d/b");
    let mut unhidden = last.clone();
    unhidden.retain(|entry| entry.components[0] != b".git");
    let refused = [
        changes(last, &collide),
        changes(last, &relinked),
        changes(last, &unhidden),
        vec![Change {
            components: vec![b"run".to_vec()],
            old: None,
            new: Some((FILE, "r9".into(), 0)),
            crowded: false,
        }],
    ];
    let before = fs::canonicalize(dir.join(CURRENT)).unwrap();
    for found in refused {
        let base = snapshots.base().unwrap();
        let report = snapshots.update(&commit(9), base, &found, &mut by_id);
        assert!(report.unwrap().is_none(), "{found:?}");
    }
    assert_eq!(fs::canonicalize(dir.join(CURRENT)).unwrap(), before);
    assert!(!dir.join(SNAPSHOTS).join(commit(9)).exists());
}

/// Only a snapshot written with the same settings is a base, and a new one records its own.
#[test]
fn a_base_is_listed_with_the_same_settings() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let entries = [entry("a", FILE, "a1")];
    SnapshotDir::new(&dir, 2)
        .listed_with(1)
        .write(&commit(1), &entries, &mut by_id)
        .unwrap();
    assert!(SnapshotDir::new(&dir, 2).listed_with(2).base().is_none());
    let base = SnapshotDir::new(&dir, 2).listed_with(1).base().unwrap();
    assert_eq!(base.commit, commit(1));

    SnapshotDir::new(&dir, 2)
        .listed_with(2)
        .write(&commit(2), &entries, &mut by_id)
        .unwrap();
    assert!(SnapshotDir::new(&dir, 2).listed_with(1).base().is_none());
    assert!(SnapshotDir::new(&dir, 2).listed_with(2).base().is_some());
}

/// Snapshots of `a{n}` and `b1` for commits 1 to 3 in `dir`, keeping 2: the current one
/// shares `b` with the spare.
fn three_snapshots(dir: &Path) -> SnapshotDir {
    let snapshots = SnapshotDir::new(dir, 2);
    for n in 1..=3 {
        let entries = [entry("a", FILE, &format!("a{n}")), entry("b", FILE, "b1")];
        snapshots.write(&commit(n), &entries, &mut by_id).unwrap();
    }
    assert!(dir.join(SNAPSHOTS).join(SPARE).join("b").exists());
    snapshots
}

/// Commit 4 of [`three_snapshots`] written from its one change; what it read.
fn fourth(snapshots: &SnapshotDir) -> (Report, Vec<String>) {
    let before = [entry("a", FILE, "a3"), entry("b", FILE, "b1")];
    let after = [entry("a", FILE, "a4"), entry("b", FILE, "b1")];
    let mut read = Vec::new();
    let report = snapshots
        .update(
            &commit(4),
            snapshots.base().unwrap(),
            &changes(&before, &after),
            &mut |id, out| {
                read.push(id.to_owned());
                by_id(id, out)
            },
        )
        .unwrap()
        .unwrap();
    read.sort();
    (report, read)
}

/// Untouched, the file the spare shares with the current snapshot is kept as it is: the
/// spare's own name for it, not a new link (which would change its status change time).
#[test]
fn an_untouched_file_is_trusted() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = three_snapshots(&dir);
    let changed = |n| {
        let metadata = fs::symlink_metadata(dir.join(SNAPSHOTS).join(commit(n)).join("b"));
        let metadata = metadata.unwrap();
        (metadata.ctime(), metadata.ctime_nsec())
    };
    let before = changed(3);
    let (report, read) = fourth(&snapshots);
    assert_eq!((report.written, report.shared), (2, 1));
    assert_eq!(read, ["a4"]);
    assert_eq!(inode(&dir, &commit(3), "b"), inode(&dir, &commit(4), "b"));
    assert_eq!(changed(4), before);
}

/// A file edited in place with the same size, then given back its mode and modification
/// time, keeps everything a stat shows but its status change time: that is enough for it to
/// be written again from its blob.
#[test]
fn a_file_edited_in_place_with_the_same_size_and_time_is_written_again() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = three_snapshots(&dir);
    let b = dir.join(SNAPSHOTS).join(commit(3)).join("b");
    let modified = fs::metadata(&b).unwrap().modified().unwrap();
    chmod(&b, 0o644);
    fs::write(&b, "zz").unwrap();
    File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    chmod(&b, MODE_FILE);
    let spare = dir.join(SNAPSHOTS).join(SPARE).join("b");
    assert_eq!(
        fs::read(&spare).unwrap(),
        b"zz",
        "the spare shares the file"
    );

    let (report, read) = fourth(&snapshots);
    assert_eq!((report.written, report.shared), (2, 0));
    assert_eq!(read, ["a4", "b1"]);
    assert_eq!(current_tree(&dir), expect(&[("a", "a4"), ("b", "b1")]));
}

/// A record whose file changed no earlier than its manifest was written is racily clean:
/// an edit within the same tick of the filesystem's clock would not show, so the file is
/// written again.
#[test]
fn a_racily_clean_record_is_not_trusted() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = three_snapshots(&dir);
    let manifest = dir.join(SNAPSHOTS).join(format!("{}{MANIFEST}", commit(3)));
    let b = fs::metadata(dir.join(SNAPSHOTS).join(commit(3)).join("b")).unwrap();
    let changed =
        std::time::UNIX_EPOCH + std::time::Duration::new(b.ctime() as u64, b.ctime_nsec() as u32);
    File::options()
        .write(true)
        .open(&manifest)
        .unwrap()
        .set_modified(changed)
        .unwrap();

    let (report, read) = fourth(&snapshots);
    assert_eq!((report.written, report.shared), (2, 0));
    assert_eq!(read, ["a4", "b1"]);
    assert_eq!(current_tree(&dir), expect(&[("a", "a4"), ("b", "b1")]));
}

/// A manifest's records are written so that none is racily clean, however quick the write:
/// its time is moved past every file it records.
#[test]
fn a_new_manifest_outlasts_its_files() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    snapshots
        .write(&commit(1), &[entry("a", FILE, "a1")], &mut by_id)
        .unwrap();
    let manifest = snapshots.manifest(&commit(1)).unwrap();
    let file = fs::symlink_metadata(dir.join(SNAPSHOTS).join(commit(1)).join("a")).unwrap();
    let (_, record) = manifest.files[0];
    assert!(manifest.trusts(&record, &Seen::of(&file)));
}

/// The spare's files are kept wherever they lie, also in a directory that sorts before a file
/// beside it (`a/x` before `b`, though `b` is listed first).
#[test]
fn files_in_directories_and_beside_them_are_kept() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("feed");
    let snapshots = SnapshotDir::new(&dir, 2);
    let tree = |n: u32| {
        [
            entry("a/x", FILE, "x1"),
            entry("a/y/z", FILE, "z1"),
            entry("b", FILE, "b1"),
            entry("c", FILE, &format!("c{n}")),
        ]
    };
    for n in 1..=3 {
        snapshots.write(&commit(n), &tree(n), &mut by_id).unwrap();
    }
    let report = snapshots.write(&commit(4), &tree(4), &mut by_id).unwrap();
    assert_eq!((report.written, report.shared), (4, 3));
    for path in ["a/x", "a/y/z", "b"] {
        assert_eq!(inode(&dir, &commit(3), path), inode(&dir, &commit(4), path));
    }
    // The same from the changes alone.
    let found = changes(&tree(4), &tree(5));
    let mut read = Vec::new();
    let report = snapshots
        .update(
            &commit(5),
            snapshots.base().unwrap(),
            &found,
            &mut |id, out| {
                read.push(id.to_owned());
                by_id(id, out)
            },
        )
        .unwrap()
        .unwrap();
    assert_eq!((report.written, report.shared), (4, 3));
    assert_eq!(read, ["c5"]);
    for path in ["a/x", "a/y/z", "b"] {
        assert_eq!(inode(&dir, &commit(4), path), inode(&dir, &commit(5), path));
    }
    assert_eq!(
        current_tree(&dir),
        expect(&[("a/x", "x1"), ("a/y/z", "z1"), ("b", "b1"), ("c", "c5")])
    );
}
