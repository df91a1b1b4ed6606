//! Consolidation of repositories built with git, one pack per fetch: the objects that come out,
//! the delta chains of the new pack, and runs stopped at every step.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use gix::ObjectId;

use super::{
    CRASHED, ErrorKind, STOP, consolidate, entries::MAX_DELTA_DEPTH, install::STAGING_PREFIX,
    pack_count,
};

/// How a test stops a run at a [`super::stop_point()`].
pub(super) enum Stop {
    /// As if the process died there.
    Crash,
    /// By raising this interrupt flag, which the run was given.
    Interrupt(Arc<AtomicBool>),
}

/// Runs git in `dir` without user or system configuration and returns its output; panics when
/// git fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "a")
        .env("GIT_AUTHOR_EMAIL", "a@example.com")
        .env("GIT_COMMITTER_NAME", "a")
        .env("GIT_COMMITTER_EMAIL", "a@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("git prints text")
}

/// A repository commits are made in and a bare mirror that fetches them, keeping each fetch's
/// pack as it came (with the bases of its deltas appended), as gitfeed's clones do.
struct Fixture {
    /// Holds both repositories.
    dir: tempfile::TempDir,
    /// The repository commits are made in.
    work: PathBuf,
    /// The bare mirror that is consolidated.
    mirror: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let work = dir.path().join("work");
        let mirror = dir.path().join("mirror.git");
        git(dir.path(), &["init", "-q", "-b", "main", "work"]);
        git(
            dir.path(),
            &["init", "-q", "-b", "main", "--bare", "mirror.git"],
        );
        for (key, value) in [
            // Every fetch keeps its pack, however small.
            ("fetch.unpackLimit", "1"),
            ("gc.auto", "0"),
            ("maintenance.auto", "false"),
        ] {
            git(&mirror, &["config", key, value]);
        }
        Fixture { dir, work, mirror }
    }

    /// Several packs, loose objects and unreachable objects of both kinds:
    /// - `rounds` fetches, each bringing a pack with changes to a few files, some of them
    ///   deltas against the previous version;
    /// - a branch fetched and then deleted, whose commit stays behind in its pack, along with a
    ///   blob that a reachable one is a delta against;
    /// - an annotated tag, a tag of that tag and a commit made in the mirror itself, which are
    ///   loose, and a tag of a tree;
    /// - a loose blob nothing refers to;
    /// - a multi-pack index and a commit graph.
    fn several_packs(rounds: usize) -> Self {
        let fixture = Fixture::new();
        for round in 0..rounds {
            fixture.write("grows.txt", &numbered(100 + round * 10));
            fixture.write(&format!("dir{}/f.txt", round % 3), &format!("{round}\n"));
            fixture.commit(&format!("round {round}"));
            fixture.fetch();
        }
        // git makes the larger of two similar blobs the base, so main's next version becomes a
        // delta against the deleted branch's, and has to be stored whole once that is gone.
        git(&fixture.work, &["checkout", "-q", "-b", "gone"]);
        fixture.write("grows.txt", &numbered(520));
        fixture.write("gone.txt", "force-pushed away\n");
        fixture.commit("gone");
        git(&fixture.work, &["checkout", "-q", "main"]);
        fixture.write("grows.txt", &numbered(510));
        fixture.commit("after gone");
        fixture.fetch();
        git(&fixture.mirror, &["update-ref", "-d", "refs/heads/gone"]);

        git(
            &fixture.mirror,
            &["tag", "-a", "-m", "tagged", "v1", "main"],
        );
        let tree = git(&fixture.mirror, &["rev-parse", "main^{tree}"]);
        let side = git(
            &fixture.mirror,
            &["commit-tree", "-p", "main", "-m", "side", tree.trim()],
        );
        git(
            &fixture.mirror,
            &["update-ref", "refs/heads/side", side.trim()],
        );
        git(
            &fixture.mirror,
            &["tag", "-a", "-m", "tag of a tag", "v1-again", "v1"],
        );
        git(&fixture.mirror, &["tag", "tree", tree.trim()]);
        fixture.hash_loose("nobody refers to this\n");
        // Caches describing the packs and commits as they are now.
        git(&fixture.mirror, &["multi-pack-index", "write"]);
        git(&fixture.mirror, &["commit-graph", "write", "--reachable"]);
        fixture
    }

    /// A shallow mirror that fetched `rounds` times with depth 1: each fetch leaves a pack and
    /// adds its commit to the `shallow` file, while the previous commits become unreachable.
    fn shallow_fetches(rounds: usize) -> Self {
        let fixture = Fixture::new();
        let url = format!("file://{}", fixture.work.display());
        for round in 0..rounds {
            fixture.write("grows.txt", &numbered(100 + round * 10));
            fixture.write(&format!("f{round}.txt"), &format!("{round}\n"));
            fixture.commit(&format!("round {round}"));
            git(
                &fixture.mirror,
                &[
                    "fetch",
                    "-q",
                    "--depth",
                    "1",
                    &url,
                    "+refs/heads/*:refs/heads/*",
                ],
            );
        }
        fixture
    }

    /// Writes `text` to `path` in the working repository.
    fn write(&self, path: &str, text: &str) {
        let path = self.work.join(path);
        fs::create_dir_all(path.parent().expect("file in a directory")).expect("create directory");
        fs::write(path, text).expect("write file");
    }

    /// Commits everything in the working repository.
    fn commit(&self, message: &str) {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
    }

    /// Fetches every branch of the working repository into the mirror: one new pack.
    fn fetch(&self) {
        let work = self.work.to_str().expect("path is text");
        git(
            &self.mirror,
            &["fetch", "-q", work, "+refs/heads/*:refs/heads/*"],
        );
    }

    /// Writes `text` into the mirror as a loose blob and returns its id.
    fn hash_loose(&self, text: &str) -> String {
        let path = self.dir.path().join("loose.txt");
        fs::write(&path, text).expect("write file");
        let path = path.to_str().expect("path is text");
        git(&self.mirror, &["hash-object", "-w", path])
            .trim()
            .to_owned()
    }

    /// What gitfeed passes as tips: the target of every ref.
    fn tips(&self) -> Vec<ObjectId> {
        let mut tips: Vec<ObjectId> =
            git(&self.mirror, &["for-each-ref", "--format=%(objectname)"])
                .lines()
                .map(|line| ObjectId::from_hex(line.as_bytes()).expect("object id"))
                .collect();
        tips.sort();
        tips.dedup();
        tips
    }

    /// Every object the refs reach, according to git.
    fn reachable(&self) -> BTreeSet<String> {
        git(&self.mirror, &["rev-list", "--objects", "--all"])
            .lines()
            .map(|line| line[..40].to_owned())
            .collect()
    }

    /// Every object in the mirror, reachable or not, according to git.
    fn objects(&self) -> BTreeSet<String> {
        git(
            &self.mirror,
            &[
                "cat-file",
                "--batch-all-objects",
                "--batch-check=%(objectname)",
            ],
        )
        .lines()
        .map(ToOwned::to_owned)
        .collect()
    }

    /// Consolidates the mirror, keeping what the refs reach.
    fn consolidate(&self, should_interrupt: &AtomicBool) -> Result<super::Stats, super::Error> {
        consolidate(&self.mirror, &self.tips(), 1, should_interrupt)
    }

    /// Consolidates the mirror with a stop armed at the `step`th stop point. Returns the result
    /// and whether the stop was reached.
    fn consolidate_stopped(
        &self,
        step: usize,
        stop: Stop,
        should_interrupt: &AtomicBool,
    ) -> (Result<super::Stats, super::Error>, bool) {
        let tips = self.tips();
        STOP.set(Some((step, stop)));
        CRASHED.set(false);
        let result = consolidate(&self.mirror, &tips, 1, should_interrupt);
        let reached = STOP.take().is_none();
        CRASHED.set(false);
        (result, reached)
    }

    /// A copy of the mirror's directory (timestamps included, as they order the packs), so
    /// that a run can start from the same state again.
    fn save(&self) -> PathBuf {
        let saved = self.dir.path().join("saved.git");
        copy_tree(&self.mirror, &saved);
        saved
    }

    /// Puts the mirror back as [`Fixture::save`] found it.
    fn restore(&self, saved: &Path) {
        fs::remove_dir_all(&self.mirror).expect("remove the mirror");
        copy_tree(saved, &self.mirror);
    }

    /// The commits the `shallow` file lists.
    fn shallow(&self) -> Vec<String> {
        match fs::read_to_string(self.mirror.join("shallow")) {
            Ok(text) => text.lines().map(ToOwned::to_owned).collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => panic!("read the shallow file: {err}"),
        }
    }

    /// Checks what every completed run must leave: exactly the objects the refs reach (`want`),
    /// in one pack, a repository git finds sound, a `shallow` file listing only commits that
    /// are there, no other file below `objects/` and no lock file anywhere.
    fn assert_consolidated(&self, want: &BTreeSet<String>, context: &str) {
        assert_eq!(&self.objects(), want, "{context}: objects");
        git(&self.mirror, &["fsck", "--strict", "--no-progress"]);
        assert_eq!(
            pack_count(&self.mirror).expect("count packs"),
            1,
            "{context}"
        );
        for commit in self.shallow() {
            assert!(want.contains(&commit), "{context}: shallow lists {commit}");
        }
        let entries = entries_below(&self.mirror.join("objects"));
        let names: Vec<&str> = entries.keys().map(String::as_str).collect();
        let [info, pack_dir, index, data] = names[..] else {
            panic!("{context}: stray entries {names:?}");
        };
        assert_eq!([info, pack_dir], ["info", "pack"], "{context}: {names:?}");
        let stem = index.strip_suffix(".idx").expect("an index");
        assert!(stem.starts_with("pack/pack-"), "{context}: {names:?}");
        assert_eq!(data, format!("{stem}.pack"), "{context}: {names:?}");
        let locks: Vec<String> = entries_below(&self.mirror)
            .into_keys()
            .filter(|name| name.ends_with(".lock"))
            .collect();
        assert!(locks.is_empty(), "{context}: {locks:?}");
        self.assert_gix_finds(want, context);
    }

    /// Checks that gix, which is what gitfeed reads with, finds each of `want`.
    fn assert_gix_finds(&self, want: &BTreeSet<String>, context: &str) {
        let repo = gix::open_opts(&self.mirror, gix::open::Options::isolated()).expect("open");
        for id in want {
            let id = ObjectId::from_hex(id.as_bytes()).expect("object id");
            assert!(repo.find_object(id).is_ok(), "{context}: gix misses {id}");
        }
    }

    /// The new pack's index.
    fn pack_index(&self) -> PathBuf {
        let entries = entries_below(&self.mirror.join("objects"));
        let index = entries
            .keys()
            .find(|name| name.ends_with(".idx"))
            .expect("a pack");
        self.mirror.join("objects").join(index)
    }
}

/// Lines `1` to `n`, one number each: versions of a file that differ by a few lines.
fn numbered(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

/// Copies the directory tree at `from` to `to`, timestamps included.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Every file and directory below `dir`, by path relative to it, with the size and
/// modification time of files (directories change theirs whenever an entry comes or goes).
fn entries_below(dir: &Path) -> BTreeMap<String, Option<(u64, SystemTime)>> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).expect("list directory") {
            let entry = entry.expect("list directory");
            let metadata = entry.metadata().expect("inspect");
            let path = entry.path();
            let name = path
                .strip_prefix(dir)
                .expect("below dir")
                .display()
                .to_string();
            if metadata.is_dir() {
                pending.push(path);
                entries.insert(name, None);
            } else {
                let stamp = metadata.modified().expect("modification time");
                entries.insert(name, Some((metadata.len(), stamp)));
            }
        }
    }
    entries
}

/// Every entry of `objects/` and `objects/pack/` that no run of gitfeed or git would leave
/// there on success: temporary files and staging directories.
fn leftovers(git_dir: &Path) -> Vec<PathBuf> {
    let objects = git_dir.join("objects");
    let mut found = Vec::new();
    for dir in [objects.clone(), objects.join("pack")] {
        for entry in fs::read_dir(&dir).expect("list directory") {
            let entry = entry.expect("list directory");
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp") || name.starts_with("tmp_") {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Makes `paths` look untouched for two hours, as leftovers of a crash long ago.
fn age(paths: &[PathBuf]) {
    let then = SystemTime::now() - Duration::from_secs(2 * 3600);
    for path in paths {
        fs::File::open(path)
            .and_then(|file| file.set_modified(then))
            .expect("set the modification time");
    }
}

/// The ids an index lists.
fn index_ids(index: &Path) -> BTreeSet<String> {
    let index = gix_pack::index::File::at(index, gix::hash::Kind::Sha1).expect("open index");
    index.iter().map(|entry| entry.oid.to_string()).collect()
}

/// The longest delta chain in the pack whose index is `index`, as `git verify-pack` counts it.
fn longest_delta_chain(dir: &Path, index: &Path) -> usize {
    let index = index.to_str().expect("path is text");
    git(dir, &["verify-pack", "-v", index])
        .lines()
        .filter_map(|line| line.strip_prefix("chain length = "))
        .map(|rest| {
            let (length, _) = rest.split_once(':').expect("chain length line");
            length.parse::<usize>().expect("chain length")
        })
        .max()
        .unwrap_or(0)
}

/// Seven fetches' packs, loose objects and unreachable ones come out as one pack holding exactly
/// what the refs reach, and a second run changes nothing.
#[test]
fn several_packs_become_one_with_exactly_the_reachable_objects() {
    let fixture = Fixture::several_packs(6);
    let want = fixture.reachable();
    let before = fixture.objects();
    let unreachable: Vec<&String> = before.difference(&want).collect();
    // The deleted branch's commit, tree and two blobs, and the loose blob.
    assert_eq!(unreachable.len(), 5, "{unreachable:?}");
    assert!(want.is_subset(&before));
    let packs = pack_count(&fixture.mirror).unwrap();
    assert_eq!(packs, 7);

    let never = AtomicBool::new(false);
    let stats = fixture.consolidate(&never).unwrap();
    fixture.assert_consolidated(&want, "first run");
    assert_eq!(stats.objects_written as usize, want.len());
    assert_eq!(stats.packs_removed, packs);
    // The two tags, the side commit and the unreferenced blob.
    assert_eq!(stats.loose_objects_removed, 4);
    assert_eq!(stats.packs_kept, 0);
    assert!(stats.bytes_after < stats.bytes_before, "{stats}");

    let stats = fixture.consolidate(&never).unwrap();
    fixture.assert_consolidated(&want, "second run");
    assert_eq!(stats.objects_written as usize, want.len());
    assert_eq!(stats.loose_objects_removed, 0);
}

/// A pack a `.keep` file protects stays as it is, and the objects of it that the refs reach are
/// copied into the new pack all the same.
#[test]
fn a_kept_pack_stays_and_its_objects_are_copied() {
    let fixture = Fixture::several_packs(3);
    let want = fixture.reachable();
    let pack_dir = fixture.mirror.join("objects/pack");
    let first = entries_below(&pack_dir)
        .into_keys()
        .find(|name| name.ends_with(".idx"))
        .expect("a pack");
    let kept = first.strip_suffix(".idx").expect("an index").to_owned();
    fs::write(pack_dir.join(format!("{kept}.keep")), "").unwrap();
    let kept_files: BTreeMap<_, _> = entries_below(&pack_dir)
        .into_iter()
        .filter(|(name, _)| name.starts_with(&kept))
        .collect();

    let stats = fixture.consolidate(&AtomicBool::new(false)).unwrap();
    assert_eq!(stats.packs_kept, 1);
    assert_eq!(pack_count(&fixture.mirror).unwrap(), 2);
    let after = entries_below(&pack_dir);
    for (name, file) in &kept_files {
        assert_eq!(after.get(name), Some(file), "{name}");
    }
    let new_index = after
        .keys()
        .find(|name| name.ends_with(".idx") && !name.starts_with(&kept))
        .expect("the new pack");
    let listed = index_ids(&pack_dir.join(new_index));
    assert_eq!(listed, want);
    git(&fixture.mirror, &["fsck", "--strict", "--no-progress"]);
}

/// Every fetch of a growing file brings its new version as a delta against the previous one,
/// so copying deltas across packs lengthens chains by one per fetch; the new pack stores an
/// object whole rather than let a chain grow past [`MAX_DELTA_DEPTH`].
#[test]
fn delta_chains_stay_within_the_limit() {
    let fixture = Fixture::new();
    let fetches = usize::from(MAX_DELTA_DEPTH) + 10;
    for round in 0..fetches {
        fixture.write("grows.txt", &numbered(100 + round));
        fixture.commit(&format!("round {round}"));
        fixture.fetch();
    }
    let want = fixture.reachable();

    fixture.consolidate(&AtomicBool::new(false)).unwrap();
    fixture.assert_consolidated(&want, "after fetches");
    let longest = longest_delta_chain(&fixture.mirror, &fixture.pack_index());
    // Reaching the limit shows the fixture builds chains long enough to need it.
    assert_eq!(longest, usize::from(MAX_DELTA_DEPTH));

    // Chains copied from the consolidated pack keep their depth: more fetches and another run
    // still stay within the limit.
    for round in fetches..fetches + 10 {
        fixture.write("grows.txt", &numbered(100 + round));
        fixture.commit(&format!("round {round}"));
        fixture.fetch();
    }
    let want = fixture.reachable();
    fixture.consolidate(&AtomicBool::new(false)).unwrap();
    fixture.assert_consolidated(&want, "after more fetches");
    let longest = longest_delta_chain(&fixture.mirror, &fixture.pack_index());
    assert!(
        longest <= usize::from(MAX_DELTA_DEPTH),
        "chain of {longest}"
    );
}

/// A run that dies at any step leaves every object readable, to git and to gix; the next run
/// completes, and once the crash's leftovers are an hour old a run removes them.
#[test]
fn a_run_that_dies_at_any_step_loses_nothing() {
    let steps = crash_at_every_step(&Fixture::several_packs(3));
    // Steps before the new pack is in place, the two renames, and removals of each old pack.
    assert!(steps > 12, "only {steps} steps");
}

/// The same in a shallow repository, whose `shallow` file is pruned last.
#[test]
fn a_shallow_run_that_dies_at_any_step_loses_nothing() {
    crash_at_every_step(&Fixture::shallow_fetches(4));
}

/// Crashes a run of consolidating `fixture`'s mirror at each step in turn, starting from the
/// same state every time, and checks the state each crash leaves and what the next runs do.
/// Returns the number of steps.
fn crash_at_every_step(fixture: &Fixture) -> usize {
    let want = fixture.reachable();
    let saved = fixture.save();
    let never = AtomicBool::new(false);
    for step in 1.. {
        let context = format!("crash at step {step}");
        fixture.restore(&saved);
        let (result, crashed) = fixture.consolidate_stopped(step, Stop::Crash, &never);
        if !crashed {
            result.unwrap();
            fixture.assert_consolidated(&want, &context);
            return step - 1;
        }
        let err = result.expect_err("a crash fails the run");
        assert_eq!(err.message, "simulated crash", "{context}");

        let objects = fixture.objects();
        assert!(want.is_subset(&objects), "{context}: objects lost");
        git(&fixture.mirror, &["fsck", "--strict", "--no-progress"]);
        fixture.assert_gix_finds(&want, &context);

        // The next run completes; what the crash left is young and might belong to a running
        // writer, so it stays.
        let young = leftovers(&fixture.mirror);
        fixture.consolidate(&never).unwrap();
        assert_eq!(fixture.objects(), want, "{context}: next run");
        git(&fixture.mirror, &["fsck", "--strict", "--no-progress"]);
        assert_eq!(leftovers(&fixture.mirror), young, "{context}");

        age(&young);
        fixture.consolidate(&never).unwrap();
        fixture.assert_consolidated(&want, &context);
    }
    unreachable!("a run has finitely many steps")
}

/// Depth-1 fetches leave a pack and a `shallow` entry each; consolidating keeps only the last
/// commit and its tree, and the `shallow` file only that commit.
#[test]
fn a_shallow_mirror_keeps_the_last_commit_and_its_boundary() {
    let fixture = Fixture::shallow_fetches(4);
    let want = fixture.reachable();
    assert_eq!(fixture.shallow().len(), 4);
    let tip = git(&fixture.mirror, &["rev-parse", "main"]);

    let stats = fixture.consolidate(&AtomicBool::new(false)).unwrap();
    fixture.assert_consolidated(&want, "shallow");
    assert_eq!(stats.shallow_entries_removed, 3);
    assert_eq!(fixture.shallow(), [tip.trim()]);
}

/// An interrupt at any step before the new pack is moved into place leaves the repository as
/// it was; after that the run ignores it and completes.
#[test]
fn an_interrupted_run_changes_nothing_until_the_new_pack_is_in_place() {
    let fixture = Fixture::several_packs(3);
    let want = fixture.reachable();
    let saved = fixture.save();
    let entries = entries_below(&fixture.mirror);
    let mut interrupted = 0;
    let mut completed = 0;
    for step in 1.. {
        let context = format!("interrupt at step {step}");
        fixture.restore(&saved);
        let flag = Arc::new(AtomicBool::new(false));
        let (result, reached) =
            fixture.consolidate_stopped(step, Stop::Interrupt(Arc::clone(&flag)), &flag);
        if !reached {
            result.unwrap();
            break;
        }
        assert!(flag.load(Ordering::Relaxed), "{context}");
        match result {
            Err(err) => {
                assert_eq!(err.kind, ErrorKind::Interrupted, "{context}: {err}");
                assert_eq!(completed, 0, "{context}: interrupted after completing");
                assert_eq!(entries_below(&fixture.mirror), entries, "{context}");
                interrupted += 1;
            }
            Ok(_) => {
                fixture.assert_consolidated(&want, &context);
                completed += 1;
            }
        }
    }
    // Interrupted after listing, walking, creating the staging directory, counting and writing.
    assert_eq!(interrupted, 5);
    assert!(completed > 0);
}

/// Temporary files and staging directories untouched for an hour are leftovers of writers
/// that died and go, along with fan-out directories they leave empty; younger ones may belong
/// to a writer still running and stay.
#[test]
fn stale_leftovers_go_and_young_ones_stay() {
    let fixture = Fixture::several_packs(2);
    let want = fixture.reachable();
    let objects = fixture.mirror.join("objects");
    let pack_dir = objects.join("pack");
    let staging = pack_dir.join(format!("{STAGING_PREFIX}1-2"));
    // `0a` and `0b` may hold the fixture's own loose objects already: ids are random.
    for dir in [objects.join("0a"), staging.clone()] {
        fs::create_dir_all(dir).unwrap();
    }
    let stale = [
        objects.join("0a/tmp_obj_stale"),
        pack_dir.join(".tmp-stale-pack"),
        pack_dir.join("tmp_pack_stale"),
        staging.join("pack-0.pack"),
    ];
    for path in &stale {
        fs::write(path, "partial").unwrap();
    }
    let young = [
        objects.join("0b/tmp_obj_young"),
        pack_dir.join(".tmp-young"),
    ];
    fs::create_dir_all(objects.join("0b")).unwrap();
    for path in &young {
        fs::write(path, "partial").unwrap();
    }
    age(&stale);
    age(&[objects.join("0a"), staging]);

    fixture.consolidate(&AtomicBool::new(false)).unwrap();
    for path in &young {
        fs::remove_file(path).expect("young leftovers stay");
    }
    // Gone with its last entry, unless the fixture's loose objects live there too.
    if fs::read_dir(objects.join("0b")).unwrap().next().is_none() {
        fs::remove_dir(objects.join("0b")).unwrap();
    }
    fixture.assert_consolidated(&want, "stale leftovers");
}
