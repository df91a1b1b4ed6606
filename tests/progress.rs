//! Progress of a slow clone: samples for the library's consumers, lines on the command line's
//! stderr.
//!
//! The remote is a git daemon behind a relay that sends 1 MiB a second, serving a repository
//! with 4 MiB of incompressible files, so every clone receives its pack for about four seconds
//! on any machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use async_channel::Receiver;
use gitfeed::{Follower, Progress, ProgressPhase};

use crate::harness::{Running, clone_dir, quick_source};
use crate::util::device::{self, Shape};
use crate::util::{FaultServer, GitDaemon, git_in, unique_dir};

const PATIENCE: Duration = Duration::from_secs(60);

/// Bytes a second the relay sends.
const RATE: u64 = 1 << 20;

const SHAPE: Shape = Shape {
    small_files: 300,
    large_files: 4,
    large_mib: 1,
};

/// A repository served slowly: the daemon, the relay in front of it and the bare repository.
struct Slow {
    _daemon: GitDaemon,
    relay: FaultServer,
    bare: PathBuf,
}

impl Slow {
    fn start(dir: &Path) -> Slow {
        let root = dir.join("srv");
        let bare = device::large_file_repo(&root, "big.git", SHAPE);
        let daemon = GitDaemon::start(&root);
        let relay = FaultServer::throttled(daemon.port(), RATE);
        Slow {
            _daemon: daemon,
            relay,
            bare,
        }
    }

    fn url(&self) -> String {
        self.relay.url("big.git")
    }

    /// Objects reachable in the repository: what a clone receives.
    fn objects(&self) -> u64 {
        git_in(&self.bare, &["rev-list", "--objects", "--all"])
            .lines()
            .count() as u64
    }
}

/// `n` as people read it: `12,345`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(digit);
    }
    text
}

/// Every sample waiting in `progress` now.
fn drain(progress: &Receiver<Progress>) -> Vec<Progress> {
    std::iter::from_fn(|| progress.try_recv().ok()).collect()
}

/// The sizes of the pack files in the clone of the cache at `cache`.
fn pack_sizes(cache: &Path) -> Vec<u64> {
    let pack_dir = clone_dir(cache).join("repo.git/objects/pack");
    std::fs::read_dir(&pack_dir)
        .expect("the clone's pack directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "pack"))
        .map(|path| std::fs::metadata(&path).expect("a pack").len())
        .collect()
}

/// The one pack file in the clone of the cache at `cache`.
fn pack_size(cache: &Path) -> u64 {
    let sizes = pack_sizes(cache);
    assert_eq!(sizes.len(), 1, "{sizes:?}");
    sizes[0]
}

/// The samples of one slow clone: a second apart at least (by the samples' own clock, which
/// is the one the feed schedules them by), counts that only grow, then one `finished` sample
/// with the whole pack, as it lies in the clone.
fn check_clone(samples: &[Progress], name: &str, objects: u64, pack_bytes: u64) {
    let last = check_transfer(samples, name, objects);
    assert_eq!(last.bytes, pack_bytes, "the whole pack was counted");
}

/// The samples of one slow transfer of a pack of `objects` objects, as [`check_clone`] says;
/// returns the last.
fn check_transfer<'a>(samples: &'a [Progress], name: &str, objects: u64) -> &'a Progress {
    let Some((last, during)) = samples.split_last() else {
        panic!("no progress for a transfer of several seconds");
    };
    assert!(
        during.len() >= 2,
        "a sample about every second while MiBs arrived at 1 MiB/s: {samples:#?}"
    );
    assert!(samples.iter().all(|sample| sample.source == name));
    assert_eq!(last.phase, ProgressPhase::Finished, "{samples:#?}");
    assert!(
        during
            .iter()
            .all(|sample| sample.phase != ProgressPhase::Finished),
        "{samples:#?}"
    );
    assert_eq!(
        (last.objects, last.total_objects),
        (objects, objects),
        "every object was counted"
    );
    assert!(during[0].elapsed_ms >= 1_000, "{samples:#?}");
    assert_eq!(during[0].phase, ProgressPhase::Receiving, "{samples:#?}");
    for pair in samples.windows(2) {
        assert!(pair[1].objects >= pair[0].objects, "{pair:#?}");
        assert!(pair[1].bytes >= pair[0].bytes, "{pair:#?}");
        assert!(pair[1].elapsed_ms > pair[0].elapsed_ms, "{pair:#?}");
        assert_eq!(pair[1].total_objects, objects, "{pair:#?}");
    }
    for pair in during.windows(2) {
        assert!(
            pair[1].elapsed_ms - pair[0].elapsed_ms >= 1_000,
            "samples less than a second apart: {pair:#?}"
        );
    }
    // Throttled to 1 MiB/s, the pack grew between the first two samples.
    assert!(during[1].bytes > during[0].bytes, "{samples:#?}");
    last
}

#[test]
fn feed_reports_a_slow_clone_and_no_poll_after_it() {
    let dir = unique_dir();
    let slow = Slow::start(dir.path());
    let mut source = quick_source("big", &slow.url());
    source.timeout = PATIENCE;
    let mut progress = None;
    let feed = Running::start_with(vec![source], |feed| {
        progress = Some(feed.progress());
        feed
    });
    let progress = progress.expect("a progress receiver");
    let update = feed.update(PATIENCE);
    assert_eq!(update.old, None);
    // The attempt sent every sample before its update.
    let samples = drain(&progress);
    check_clone(&samples, "big", slow.objects(), pack_size(feed.cache_dir()));

    // Polls that bring nothing (one every 100 ms) say nothing, here too.
    let polls = slow.relay.connections();
    feed.assert_quiet(Duration::from_millis(800));
    assert!(
        slow.relay.connections() >= polls + 2,
        "the feed kept polling"
    );
    assert_eq!(drain(&progress), Vec::new());
    feed.stop();
    assert!(progress.is_closed(), "the samples end with the feed");
}

#[test]
fn follower_reports_a_slow_clone() {
    let dir = unique_dir();
    let slow = Slow::start(dir.path());
    let cache = dir.path().join("cache");
    let mut source = quick_source("big", &slow.url());
    source.timeout = PATIENCE;
    let mut follower = Follower::new(&cache, &source).expect("a valid source");
    let progress = follower.progress();
    let update = follower.poll().expect("the clone").expect("a first update");
    let cloned = pack_size(&cache);
    check_clone(&drain(&progress), "big", slow.objects(), cloned);
    follower.acknowledge(&update.new).expect("acknowledged");

    assert_eq!(follower.poll().expect("a poll"), None);
    assert_eq!(drain(&progress), Vec::new(), "a poll that brings nothing");

    // An incremental fetch: a large file changed a little, which comes as a delta against the
    // copy the clone has (a thin pack, completed from the clone), and a new file of 3 MiB.
    let work = dir.path().join("work");
    git_in(
        dir.path(),
        &[Path::new("clone"), Path::new("-q"), &slow.bare, &work],
    );
    let changed = work.join("models/m0.bin");
    let mut bytes = std::fs::read(&changed).expect("a large file");
    bytes[..64].fill(0);
    std::fs::write(&changed, bytes).expect("change a large file");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(work.join("models/new.bin"), noise).expect("a new large file");
    git_in(&work, &["add", "-A"]);
    git_in(&work, &["commit", "-qm", "more models"]);
    git_in(&work, &["push", "-q", "origin", "main"]);
    let new_objects = git_in(&slow.bare, &["rev-list", "--objects", "main~1..main"])
        .lines()
        .count() as u64;
    let update = follower
        .poll()
        .expect("the fetch")
        .expect("a second update");
    assert_eq!(update.changes.len(), 2, "{update:?}");
    let samples = drain(&progress);
    let last = check_transfer(&samples, "big", new_objects);
    assert!(last.bytes > 3 << 20, "{last:?}");
    // Completed from the clone, the thin pack holds more than arrived: the changed file's
    // base, 1 MiB that does not compress.
    let mut sizes = pack_sizes(&cache);
    let first = sizes.iter().position(|&size| size == cloned);
    sizes.remove(first.expect("the clone's pack"));
    assert_eq!(sizes.len(), 1, "{sizes:?}");
    assert!(
        (last.bytes + (1 << 20)..last.bytes + (2 << 20)).contains(&sizes[0]),
        "a thin pack of {} bytes completed with a 1 MiB base: {}",
        last.bytes,
        sizes[0]
    );
    drop(follower);
    assert!(progress.is_closed(), "the samples end with the follower");
}

/// With info logging and stderr not a terminal, progress is info lines on stderr, about one a
/// second; stdout holds the events alone. By default (warnings only) stderr stays quiet.
#[test]
fn command_logs_progress_on_stderr_only() {
    let dir = unique_dir();
    let slow = Slow::start(dir.path());
    let url = slow.url();
    let run = |cache: &str, log: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gitfeed"));
        command
            .args(["watch", &url, "--once", "--timeout", "60s", "--cache-dir"])
            .arg(dir.path().join(cache))
            .stdin(Stdio::null())
            .env_remove("RUST_LOG");
        if let Some(level) = log {
            command.env("RUST_LOG", level);
        }
        let out = command.output().expect("run gitfeed");
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).expect("UTF-8 stdout"),
            String::from_utf8(out.stderr).expect("UTF-8 stderr"),
        )
    };

    let (stdout, stderr) = run("logged", Some("info"));
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line:?}\n{stdout}"))
        })
        .collect();
    assert_eq!(events.len(), 1, "{stdout}");
    assert_eq!(events[0]["type"], "update", "{stdout}");
    let receiving = stderr
        .lines()
        .filter(|line| line.starts_with("gitfeed info: big: receiving objects "))
        .count();
    assert!(receiving >= 2, "about one line a second:\n{stderr}");
    let received = format!(
        "gitfeed info: big: received {} objects, ",
        thousands(slow.objects())
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|line| line.starts_with(&received))
            .count(),
        1,
        "one line when the pack is in:\n{stderr}"
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains('\x1b'),
        "no terminal controls when stderr is not a terminal:\n{stderr:?}"
    );

    let (stdout, stderr) = run("quiet", None);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(stderr, "", "nothing on stderr by default");
}

/// `watch` shows progress as `--once` does, from the thread that prints its events, and ends
/// with the feed when told to.
#[test]
fn watch_logs_progress_beside_its_events() {
    use std::io::BufRead;
    let dir = unique_dir();
    let slow = Slow::start(dir.path());
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["watch", &slow.url(), "--interval", "1h", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn gitfeed");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let update: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(update["type"], "update", "{update}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(child.wait().expect("reap").success());
    let log = std::fs::read_to_string(&stderr).expect("stderr");
    let receiving = log
        .lines()
        .filter(|line| line.starts_with("gitfeed info: big: receiving objects "))
        .count();
    assert!(receiving >= 2, "about one line a second:\n{log}");
}
