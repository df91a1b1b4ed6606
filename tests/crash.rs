//! Crash safety of `gitfeed watch`: the process is killed with SIGKILL at random moments (during
//! clones, fetches, pack consolidation and acknowledgement writes) and restarted over the same
//! cache, round after round, while the remote keeps moving. Every line it printed must be a
//! correct event, the delivery chain must hold across restarts (at least once, never skipping
//! an unacknowledged update), and in the end the cache must have reached the remote's tip
//! without leftovers, within a bounded size, with every process reaped.
//!
//! The run is seeded: the seed is printed and `GITFEED_CRASH_SEED` replays the same sequence of
//! pushes and kill delays (the moments a kill lands on still depend on the machine's timing).
//! `GITFEED_CRASH_ROUNDS` changes the number of rounds (default 100).

mod util;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use gitfeed::{ChangeKind, Event, SourceState, Update};

use util::{GitDaemon, Remote, child_pids, git_command, git_in, name_status, unique_dir};

const DEFAULT_ROUNDS: usize = 100;

/// Files in the generated remote, and their size range: random bytes barely compress, so the
/// pack is about as large as the files (~16 MB), and a clone over git:// takes a few hundred
/// milliseconds with an optimized build (seconds with the unoptimized one tests use), long
/// enough for kills to land inside it.
const FILES: usize = 3000;
const FILE_BYTES: std::ops::Range<usize> = 1_000..10_000;

/// gitfeed consolidates its packs once a fetch leaves more than 8: a run that starts with this
/// many will most likely consolidate.
const PACKS_BEFORE_CONSOLIDATION: usize = 8;

/// After an update is printed, the kill comes within this many microseconds: the
/// acknowledgement (write, fsync, rename, fsync of the directory) happens then.
const ACK_KILL_SPREAD_US: u64 = 1_500;

/// The source's name in events, and so the readable part of its cache key.
const NAME: &str = "crash";

/// How long the pipes of a killed gitfeed may stay open. They close when the process dies
/// unless something it started still holds them, which would itself be a leak.
const PIPE_CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// Final `--once` runs allowed to reach the tip: a run can fail transiently, never repeatedly.
const FINAL_ATTEMPTS: usize = 5;

#[test]
fn converges_after_random_sigkills() {
    let seed = env_number("GITFEED_CRASH_SEED").unwrap_or_else(|| fastrand::u64(..));
    let rounds = env_number("GITFEED_CRASH_ROUNDS").map_or(DEFAULT_ROUNDS, |n| n as usize);
    println!("crash test: seed {seed}, {rounds} rounds (GITFEED_CRASH_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let mut upstream = Upstream::generate(&mut rng);
    println!(
        "generated the remote in {} ms",
        started.elapsed().as_millis()
    );
    let daemon = GitDaemon::start(&upstream.remote.root());
    let url = daemon.url(upstream.remote.name());
    let cache = unique_dir();
    let bare = upstream.remote.bare_path();

    let mut checker = Checker::new(bare.clone());
    let mut stats = Stats::default();

    // The kill windows scale with how long a clone takes with this build on this machine: an
    // unoptimized gix takes seconds for what an optimized one does in a tenth of a second.
    let windows = Windows::measure(&url);
    println!(
        "a clone takes {} ms: kill windows {} ms (clone), {} ms (consolidation), {} ms (poll)",
        windows.clone_took.as_millis(),
        windows.clone.as_millis(),
        windows.consolidation.as_millis(),
        windows.poll.as_millis()
    );

    // Rounds in a row that left work undone: an update to deliver that was not printed, or a
    // consolidation that did not complete.
    let mut stalled = 0i32;
    let mut staging_seen = HashSet::new();
    for round in 0..rounds {
        let entry = entry_dir(cache.path());
        let cloned = entry.as_deref().is_some_and(has_tip);
        let packs = entry.as_deref().map_or(0, pack_count);
        // What the run will be busy with: a clone, a fetch followed by pack consolidation, or a
        // fetch on a healthy clone and a few polls.
        let aim = if !cloned {
            stats.aimed_at_clone += 1;
            Aim::Clone
        } else if packs >= PACKS_BEFORE_CONSOLIDATION {
            stats.aimed_at_consolidation += 1;
            Aim::Consolidation
        } else {
            stats.aimed_at_poll += 1;
            Aim::Poll
        };
        // A quarter of the runs are killed as soon as they print an update, which lands the
        // kill in or around the acknowledgement write that follows the print, a few as soon as
        // they print anything, which cuts a large update's line. A run aimed at consolidation
        // prints only after it, so most of those are killed at a random moment instead.
        let kill = match (aim, rng.u8(..100)) {
            (Aim::Consolidation, 0..10) => Kill::OnUpdate,
            (Aim::Consolidation, _) => Kill::After,
            (_, 0..20) => Kill::OnUpdate,
            (_, 20..25) => Kill::OnOutput,
            _ => Kill::After,
        };
        let kill_on_print = kill != Kill::After;
        // Roughly half the other runs find new commits, so most restarts fetch a pack, and packs
        // pile up until consolidation runs; a run aimed at consolidation gets the pack that
        // starts it.
        let starts_consolidation = aim == Aim::Consolidation && packs == PACKS_BEFORE_CONSOLIDATION;
        if kill_on_print || starts_consolidation || rng.u8(..100) < 50 {
            upstream.push_change(&mut rng);
        }
        // Consolidation reads every pack, so its window grows with them; and every round in a
        // row that left its work undone widens the next window, so that the work completes
        // eventually.
        let growth = entry.as_deref().map_or(1.0, |entry| {
            (pack_bytes(entry) as f64 / windows.clone_bytes as f64).max(1.0)
        });
        let widen = 1.5f64.powi(stalled.min(4));
        let window = match aim {
            Aim::Clone => windows.clone.mul_f64(widen),
            Aim::Consolidation => windows.consolidation.mul_f64(growth * widen),
            // A large push takes a while to fetch.
            Aim::Poll => windows
                .poll
                .saturating_mul(1 << stalled.min(8))
                .min(windows.consolidation.mul_f64(growth)),
        };
        let delay = if kill_on_print {
            window
        } else {
            window.mul_f64(rng.f64())
        };
        // Sometimes the remote moves while the run is alive, so one run fetches several times.
        let push_during = !kill_on_print && rng.u8(..100) < 20;
        let push_after = delay.mul_f64(rng.f64());
        let acked_before = entry.as_deref().and_then(delivered);
        let behind = acked_before.as_deref() != Some(upstream.remote.head().as_str());

        let spawned_at = Instant::now();
        let mut child = watch(&url, cache.path())
            .spawn()
            .expect("spawn gitfeed watch");
        let stdout = lines_of(child.stdout.take().expect("piped stdout"));
        let stderr = lines_of(child.stderr.take().expect("piped stderr"));
        if push_during {
            sleep_until(spawned_at + push_after);
            upstream.push_change(&mut rng);
        }
        let mut out = Collected::default();
        if receive_until(&stdout, spawned_at + delay, kill, &mut out) {
            stats.killed_after_print += 1;
            thread::sleep(Duration::from_micros(rng.u64(0..ACK_KILL_SPREAD_US)));
        }
        child.kill().expect("SIGKILL gitfeed");
        let status = child.wait().expect("reap the killed gitfeed");
        collect(stdout, &mut out);
        let mut err = Collected::default();
        collect(stderr, &mut err);
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: gitfeed ended on its own ({status}) before the kill; stderr:\n{}",
            err.whole.join("\n")
        );

        stats.runs += 1;
        let entry = entry_dir(cache.path());
        let packs_after = entry.as_deref().map_or(0, pack_count);
        let consolidation_pending = packs_after > PACKS_BEFORE_CONSOLIDATION;
        if cloned && packs_after < packs {
            stats.consolidations_completed += 1;
        }
        // Only consolidation creates staging directories, each named after its process, and it
        // removes its own unless it is killed.
        for dir in entry.as_deref().map_or_else(Vec::new, staging_dirs) {
            if staging_seen.insert(dir) {
                stats.consolidations_killed += 1;
            }
        }
        if (behind && out.whole.is_empty()) || consolidation_pending {
            stalled += 1;
        } else {
            stalled = 0;
        }
        if out.whole.is_empty() {
            stats.killed_before_printing += 1;
        }
        stats.note_log(&err.whole);
        if out.torn.is_some() {
            // The kill landed inside a write: a consumer discards an unterminated line, and
            // gitfeed must not have acknowledged it (checked below).
            stats.torn_lines += 1;
        }
        let printed = checker.run(
            round,
            &out.whole,
            acked_before.as_deref(),
            &upstream.tips,
            &mut stats,
        );
        let acked_after = entry.as_deref().and_then(delivered);
        checker.acknowledgement(
            round,
            acked_before.as_deref(),
            acked_after.as_deref(),
            &printed,
        );

        stats.largest_cache = stats.largest_cache.max(disk_usage(cache.path()));
    }

    // The final runs are not killed: they must bring the acknowledged commit to the tip.
    let tip = upstream.remote.head();
    let mut acked = None;
    for attempt in 1..=FINAL_ATTEMPTS {
        let acked_before = entry_dir(cache.path()).as_deref().and_then(delivered);
        let mut once = watch(&url, cache.path());
        once.arg("--once");
        let output = once.output().expect("run gitfeed watch --once");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr_lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
        stats.note_log(&stderr_lines);
        assert!(
            stdout.is_empty() || stdout.ends_with('\n'),
            "a run that was not killed printed an unterminated line: {stdout:?}"
        );
        let lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
        let printed = checker.run(
            rounds + attempt,
            &lines,
            acked_before.as_deref(),
            &upstream.tips,
            &mut stats,
        );
        acked = entry_dir(cache.path()).as_deref().and_then(delivered);
        checker.acknowledgement(
            rounds + attempt,
            acked_before.as_deref(),
            acked.as_deref(),
            &printed,
        );
        stats.largest_cache = stats.largest_cache.max(disk_usage(cache.path()));
        if output.status.success() && acked.as_deref() == Some(tip.as_str()) {
            break;
        }
        println!(
            "final run {attempt} did not reach the tip ({}): {}",
            output.status,
            stderr.trim_end()
        );
    }

    let fresh = fresh_clone_size(&bare);
    let entry = entry_dir(cache.path()).expect("the cache holds the source's entry");
    let leftovers = leftovers(cache.path());
    let gitfeed_children: Vec<u32> = child_pids()
        .into_iter()
        .filter(|&pid| process_name(pid).as_deref() == Some("gitfeed"))
        .collect();

    println!(
        "summary: {} rounds, {} kills before anything was printed, {} updates seen \
         ({} full listings), {} redeliveries ({} from the acknowledged commit after the remote \
         moved), {} torn lines, {} state events, {} broken clones deleted (reclones), {} stale \
         leftovers removed, {} wrong updates, largest cache {} bytes vs fresh clone {} bytes \
         ({:.2}x); kills aimed at {} clones, {} consolidations ({} completed, {} killed midway) \
         and {} polls, {} as soon as it printed; {} pushes ({} forced); {} s",
        stats.runs,
        stats.killed_before_printing,
        stats.updates,
        stats.full_listings,
        stats.redeliveries,
        stats.rebased_redeliveries,
        stats.torn_lines,
        stats.states,
        stats.broken_clones_deleted,
        stats.stale_removed,
        checker.wrong.len(),
        stats.largest_cache,
        fresh,
        stats.largest_cache as f64 / fresh as f64,
        stats.aimed_at_clone,
        stats.aimed_at_consolidation,
        stats.consolidations_completed,
        stats.consolidations_killed,
        stats.aimed_at_poll,
        stats.killed_after_print,
        upstream.pushes,
        upstream.forced_pushes,
        started.elapsed().as_secs(),
    );

    // Every check is reported, not only the first that fails.
    let mut failures = Vec::new();
    if !checker.wrong.is_empty() {
        failures.push(format!(
            "{} wrong updates:\n{}",
            checker.wrong.len(),
            checker.wrong.join("\n")
        ));
    }
    if acked.as_deref() != Some(tip.as_str()) {
        failures.push(format!(
            "the acknowledged commit in {} is {acked:?}, not the remote's tip {tip}",
            entry.join("state.json").display()
        ));
    }
    if !leftovers.is_empty() {
        let listed: Vec<String> = leftovers
            .iter()
            .map(|path| format!("{} ({} bytes)", path.display(), disk_usage(path)))
            .collect();
        failures.push(format!(
            "temporary files or locks survived in the cache:\n{}",
            listed.join("\n")
        ));
    }
    if stats.largest_cache >= 3 * fresh {
        failures.push(format!(
            "the cache grew to {} bytes, over 3x a fresh bare clone ({fresh} bytes)",
            stats.largest_cache
        ));
    }
    if !gitfeed_children.is_empty() {
        failures.push(format!(
            "gitfeed processes left unreaped: {gitfeed_children:?}"
        ));
    }
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}

/// The remote the test pushes to: one big initial commit, then random changes.
struct Upstream {
    remote: Remote,
    /// Every commit `main` pointed to at some time: the only commits an update may name as new.
    tips: HashSet<String>,
    /// Commits on `main` after the big one, which a forced push may drop.
    rewritable: usize,
    next_file: usize,
    pushes: usize,
    forced_pushes: usize,
}

impl Upstream {
    fn generate(rng: &mut fastrand::Rng) -> Upstream {
        let remote = Remote::new();
        // No gc on the remote: commits dropped by forced pushes must stay readable, because
        // updates that were printed before the rewrite are checked against them.
        remote.git_bare(&["config", "gc.auto", "0"]);
        remote.git_bare(&["config", "receive.autogc", "false"]);
        let work = remote.work_path();
        for i in 0..FILES {
            let path = work.join(format!("d{:02}/f{i:04}.bin", i % 40));
            fs::create_dir_all(path.parent().expect("a file has a parent"))
                .expect("create a directory in the work clone");
            let len = rng.usize(FILE_BYTES);
            fs::write(&path, random_bytes(rng, len)).expect("write a generated file");
        }
        let mut upstream = Upstream {
            remote,
            tips: HashSet::new(),
            rewritable: 0,
            next_file: 0,
            pushes: 0,
            forced_pushes: 0,
        };
        upstream.tips.insert(upstream.remote.head());
        upstream.commit_and_push("generated files", false);
        upstream.rewritable = 0;
        upstream
    }

    /// Adds, modifies and deletes random files in one commit and pushes it; one push in five
    /// instead replaces the newest commit (a forced push).
    fn push_change(&mut self, rng: &mut fastrand::Rng) {
        let forced = self.rewritable > 0 && rng.u8(..100) < 20;
        if forced {
            self.remote.git(&["reset", "-q", "--hard", "HEAD~1"]);
        }
        let work = self.remote.work_path();
        let files: Vec<String> = self
            .remote
            .git(&["ls-files"])
            .lines()
            .map(str::to_owned)
            .collect();
        // Now and then a large change, so that some fetches take long enough to be killed.
        let modified = if rng.u8(..100) < 5 {
            rng.usize(100..300)
        } else {
            rng.usize(0..30)
        };
        for _ in 0..modified {
            let path = &files[rng.usize(..files.len())];
            let len = rng.usize(FILE_BYTES);
            fs::write(work.join(path), random_bytes(rng, len)).expect("modify a file");
        }
        for _ in 0..rng.usize(0..10) {
            let path = &files[rng.usize(..files.len())];
            // The same file may be picked twice.
            let _ = fs::remove_file(work.join(path));
        }
        // At least one new file, so that every push is a new tree.
        for _ in 0..rng.usize(1..10) {
            let path = work.join(format!(
                "new/n{:02}/g{}.bin",
                self.next_file % 17,
                self.next_file
            ));
            self.next_file += 1;
            fs::create_dir_all(path.parent().expect("a file has a parent"))
                .expect("create a directory in the work clone");
            let len = rng.usize(FILE_BYTES);
            fs::write(&path, random_bytes(rng, len)).expect("add a file");
        }
        self.commit_and_push(if forced { "rewrite" } else { "change" }, forced);
        if !forced {
            self.rewritable += 1;
        }
    }

    fn commit_and_push(&mut self, message: &str, forced: bool) {
        self.remote.git(&["add", "-A"]);
        self.remote
            .git(&["commit", "-q", "--no-verify", "-m", message]);
        let mut push = vec!["push", "-q"];
        if forced {
            push.push("--force");
            self.forced_pushes += 1;
        }
        push.extend(["origin", "HEAD:refs/heads/main"]);
        self.remote.git(&push);
        self.pushes += 1;
        self.tips.insert(self.remote.head());
    }
}

fn random_bytes(rng: &mut fastrand::Rng, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.u64(..).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// `gitfeed watch` on `url` over `cache`, logging at info so that repairs show on stderr.
fn watch(url: &str, cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitfeed"));
    cmd.args([
        "watch",
        url,
        "--name",
        NAME,
        "--interval",
        "100ms",
        "--timeout",
        "20s",
        "--cache-dir",
    ])
    .arg(cache)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

enum Piece {
    /// A line with its newline: written completely.
    Whole(String),
    /// Part of a line has arrived, the rest has not (yet): a write larger than the pipe.
    Partial,
    /// Bytes after the last newline when the pipe closed: a write cut short by the kill.
    Torn(String),
}

/// Reads `pipe` on a thread of its own and sends it on line by line, so that a killed process
/// never blocks the test; the channel disconnects once the pipe is closed.
fn lines_of(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<Piece> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut pending = Vec::new();
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let read = match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            pending.extend_from_slice(&chunk[..read]);
            let mut pieces = Vec::new();
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]).into_owned();
                pieces.push(Piece::Whole(text));
            }
            if !pending.is_empty() {
                pieces.push(Piece::Partial);
            }
            if pieces.into_iter().any(|piece| tx.send(piece).is_err()) {
                return;
            }
        }
        if !pending.is_empty() {
            let _ = tx.send(Piece::Torn(String::from_utf8_lossy(&pending).into_owned()));
        }
    });
    rx
}

/// What a run is expected to be busy with.
#[derive(Clone, Copy, PartialEq)]
enum Aim {
    Clone,
    Consolidation,
    Poll,
}

/// When a run is killed.
#[derive(Clone, Copy, PartialEq)]
enum Kill {
    /// After a random delay.
    After,
    /// As soon as an update has been printed: in or around its acknowledgement.
    OnUpdate,
    /// As soon as anything arrives: a large update is then cut in the middle of its line.
    OnOutput,
}

#[derive(Default)]
struct Collected {
    whole: Vec<String>,
    torn: Option<String>,
}

impl Collected {
    fn add(&mut self, piece: Piece) {
        match piece {
            Piece::Whole(line) => {
                assert!(self.torn.is_none(), "a line followed an unterminated one");
                self.whole.push(line);
            }
            Piece::Partial => {}
            Piece::Torn(fragment) => self.torn = Some(fragment),
        }
    }
}

/// Receives what a running gitfeed prints until `deadline`, or until what `kill` waits for has
/// arrived (then returns true).
fn receive_until(
    pieces: &mpsc::Receiver<Piece>,
    deadline: Instant,
    kill: Kill,
    into: &mut Collected,
) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(piece) = pieces.recv_timeout(left) else {
            return false;
        };
        let update =
            matches!(&piece, Piece::Whole(line) if line.starts_with(r#"{"type":"update""#));
        into.add(piece);
        if kill == Kill::OnOutput || (kill == Kill::OnUpdate && update) {
            return true;
        }
    }
}

/// Everything left in a pipe of a process that has been killed and reaped.
fn collect(pieces: mpsc::Receiver<Piece>, into: &mut Collected) {
    let deadline = Instant::now() + PIPE_CLOSE_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match pieces.recv_timeout(left) {
            Ok(piece) => into.add(piece),
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("a pipe of a killed gitfeed stayed open: something it started holds it")
            }
        }
    }
}

/// How long a run may live before it is killed, by what it is expected to be doing.
struct Windows {
    clone_took: Duration,
    /// The size of the packs that clone wrote.
    clone_bytes: u64,
    /// Covers a whole clone and the first update, so kills land in every phase of a first run.
    clone: Duration,
    /// Covers a fetch, the consolidation after it (which rewrites the whole pack and takes about
    /// as long as a clone) and the update, which is printed once consolidation is done.
    consolidation: Duration,
    /// Covers start-up, a small fetch on a healthy clone, the update and a few polls after it.
    poll: Duration,
}

impl Windows {
    /// Times a clone of `url` into a scratch cache that is thrown away.
    fn measure(url: &str) -> Windows {
        let scratch = unique_dir();
        let started = Instant::now();
        let mut once = watch(url, scratch.path());
        once.arg("--once");
        let output = once.output().expect("run gitfeed watch --once");
        let clone_took = started.elapsed();
        assert!(
            output.status.success(),
            "a clone without kills failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let entry = entry_dir(scratch.path()).expect("the clone made a cache entry");
        let floor = Duration::from_millis(300);
        Windows {
            clone_took,
            clone_bytes: pack_bytes(&entry).max(1),
            clone: clone_took.mul_f64(1.3).max(floor),
            consolidation: clone_took.mul_f64(2.0).max(floor) + Duration::from_millis(400),
            poll: Duration::from_millis(400),
        }
    }
}

fn sleep_until(at: Instant) {
    let left = at.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        thread::sleep(left);
    }
}

#[derive(Default)]
struct Stats {
    runs: usize,
    killed_before_printing: usize,
    updates: usize,
    full_listings: usize,
    redeliveries: usize,
    rebased_redeliveries: usize,
    torn_lines: usize,
    states: usize,
    broken_clones_deleted: usize,
    stale_removed: usize,
    largest_cache: u64,
    aimed_at_clone: usize,
    aimed_at_consolidation: usize,
    aimed_at_poll: usize,
    consolidations_completed: usize,
    consolidations_killed: usize,
    killed_after_print: usize,
}

impl Stats {
    fn note_log(&mut self, stderr: &[String]) {
        for line in stderr {
            if line.contains("deleted the broken clone") {
                self.broken_clones_deleted += 1;
            }
            if line.contains("removed stale") {
                self.stale_removed += 1;
            }
        }
    }
}

/// Checks every printed event against the git CLI's view of the remote and against the
/// delivery chain, collecting what is wrong instead of stopping at the first problem.
struct Checker {
    bare: PathBuf,
    /// The last update printed completely, by any run.
    last: Option<Update>,
    wrong: Vec<String>,
}

impl Checker {
    fn new(bare: PathBuf) -> Checker {
        Checker {
            bare,
            last: None,
            wrong: Vec::new(),
        }
    }

    /// Checks the lines one run printed; returns the updates among them.
    fn run(
        &mut self,
        round: usize,
        lines: &[String],
        acked_at_start: Option<&str>,
        tips: &HashSet<String>,
        stats: &mut Stats,
    ) -> Vec<Update> {
        let mut printed = Vec::new();
        for line in lines {
            match serde_json::from_str::<Event>(line) {
                Ok(Event::Update(update)) => {
                    stats.updates += 1;
                    let first_in_run = printed.is_empty();
                    let checked = if tips.contains(&update.new) {
                        self.update(&update, first_in_run, acked_at_start, stats)
                    } else {
                        Err("new was never the remote's tip".to_owned())
                    };
                    if let Err(problem) = checked {
                        self.wrong.push(format!(
                            "round {round}: {problem}: old {:?} new {} forced {} ({} changes)",
                            update.old,
                            update.new,
                            update.forced,
                            update.changes.len()
                        ));
                    }
                    self.last = Some(update.clone());
                    printed.push(update);
                }
                Ok(Event::State(state)) => {
                    stats.states += 1;
                    // Kills never break the remote, and a clone a kill left behind is repaired
                    // before it is opened: a run has no reason to give up.
                    if state.state == SourceState::Failed {
                        self.wrong.push(format!(
                            "round {round}: the source failed: {:?}",
                            state.error
                        ));
                    }
                }
                Ok(other) => self
                    .wrong
                    .push(format!("round {round}: unexpected event {other:?}")),
                Err(err) => self
                    .wrong
                    .push(format!("round {round}: unparsable line ({err}): {line}")),
            }
        }
        printed
    }

    /// Checks one update: its place in the delivery chain, then its content.
    fn update(
        &self,
        update: &Update,
        first_in_run: bool,
        acked_at_start: Option<&str>,
        stats: &mut Stats,
    ) -> Result<(), String> {
        if update.source != NAME || update.reference != "refs/heads/main" {
            return Err(format!(
                "wrong source or ref: {} {}",
                update.source, update.reference
            ));
        }
        let last = self.last.as_ref();
        // What the update must start from: after a restart the acknowledged commit (an update
        // printed but not acknowledged is sent again), within a run the update printed before.
        let expected_old = if first_in_run {
            acked_at_start
        } else {
            last.map(|last| last.new.as_str())
        };
        match update.old.as_deref() {
            None => {
                stats.full_listings += 1;
                // A full listing is right on the first delivery, and when the commit to start
                // from is gone after a rewrite; not when it is part of the new history.
                if let Some(from) = expected_old
                    && self.is_ancestor(from, &update.new)
                {
                    return Err(format!(
                        "full listing although {from} (the commit to start from) is in the new \
                         history"
                    ));
                }
            }
            Some(old) => {
                if Some(old) != expected_old {
                    return Err(format!(
                        "starts from {old}, expected {expected_old:?} (first in its run: \
                         {first_in_run})"
                    ));
                }
                // The same chain seen as the consumer's stream of printed lines: each update
                // continues the previous one, or repeats it after a kill.
                match last {
                    Some(last) if last.new == old => {}
                    Some(last) if last.old.as_deref() == Some(old) && first_in_run => {
                        stats.redeliveries += 1;
                        if last.new != update.new {
                            // Printed, killed before it was acknowledged, and the remote moved
                            // on before the restart: sent again from the acknowledged commit.
                            stats.rebased_redeliveries += 1;
                        }
                    }
                    _ => {
                        return Err(format!(
                            "does not follow the previous printed update ({:?} -> {:?})",
                            last.and_then(|last| last.old.clone()),
                            last.map(|last| last.new.clone())
                        ));
                    }
                }
            }
        }
        self.content(update)
    }

    /// The changes must be exactly what git sees between the two commits.
    fn content(&self, update: &Update) -> Result<(), String> {
        let tree = self.tree(&update.new);
        if !update.changes.windows(2).all(|w| w[0].path < w[1].path) {
            return Err("changes are not sorted by path".into());
        }
        let expected: Vec<(char, String)> = match update.old.as_deref() {
            None => tree.keys().map(|path| ('A', path.clone())).collect(),
            Some(old) => {
                let forced = !self.is_ancestor(old, &update.new);
                if update.forced != forced {
                    return Err(format!("forced is {}, git says {forced}", update.forced));
                }
                let mut diff = name_status(&self.bare, old, &update.new);
                diff.sort_by(|a, b| a.1.cmp(&b.1));
                diff
            }
        };
        let got: Vec<(char, String)> = update
            .changes
            .iter()
            .map(|change| {
                let letter = match change.kind {
                    ChangeKind::Added => 'A',
                    ChangeKind::Modified => 'M',
                    ChangeKind::Deleted => 'D',
                };
                (letter, change.path.clone())
            })
            .collect();
        if got != expected {
            let missing = expected.iter().filter(|e| !got.contains(e)).count();
            let extra = got.iter().filter(|g| !expected.contains(g)).count();
            return Err(format!(
                "changes differ from git's: {missing} missing, {extra} extra"
            ));
        }
        for change in &update.changes {
            let id = match change.kind {
                ChangeKind::Deleted => None,
                _ => tree.get(&change.path).cloned(),
            };
            if change.id != id {
                return Err(format!("wrong blob id for {}", change.path));
            }
        }
        Ok(())
    }

    /// Path → blob id of every file of `commit`, in the remote.
    fn tree(&self, commit: &str) -> BTreeMap<String, String> {
        let listing = git_in(&self.bare, &["ls-tree", "-r", "-z", commit]);
        listing
            .split('\0')
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let (meta, path) = entry.split_once('\t').expect("ls-tree: meta TAB path");
                let id = meta
                    .rsplit(' ')
                    .next()
                    .expect("ls-tree: the id ends the meta");
                (path.to_owned(), id.to_owned())
            })
            .collect()
    }

    fn is_ancestor(&self, ancestor: &str, of: &str) -> bool {
        let status = git_command()
            .current_dir(&self.bare)
            .args(["merge-base", "--is-ancestor", ancestor, of])
            .status()
            .expect("run git merge-base");
        match status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("git merge-base --is-ancestor {ancestor} {of} failed: {status}"),
        }
    }

    /// The acknowledged commit may only move to a commit that was printed completely: moving
    /// anywhere else would lose the updates in between.
    fn acknowledgement(
        &mut self,
        round: usize,
        before: Option<&str>,
        after: Option<&str>,
        printed: &[Update],
    ) {
        let allowed = after == before || printed.iter().any(|u| Some(u.new.as_str()) == after);
        if !allowed {
            self.wrong.push(format!(
                "round {round}: acknowledged commit moved from {before:?} to {after:?}, which \
                 was not printed"
            ));
        }
    }
}

/// The source's directory in the cache (there is exactly one), once something created it.
fn entry_dir(cache: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(cache)
        .expect("list the cache directory")
        .map(|entry| entry.expect("read a cache directory entry").path())
        .filter(|path| path.is_dir() && !path.ends_with("clones"))
        .collect();
    assert!(dirs.len() <= 1, "one source, one entry: {dirs:?}");
    dirs.pop()
}

/// The clone the source of `entry` reads: the only one in the cache.
fn git_dir(entry: &Path) -> PathBuf {
    let clones = entry.parent().expect("the cache directory").join("clones");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&clones)
        .map(|listing| listing.flatten().map(|item| item.path()).collect())
        .unwrap_or_default();
    assert!(dirs.len() <= 1, "one repository, one clone: {dirs:?}");
    dirs.pop().unwrap_or(clones).join("repo.git")
}

/// The acknowledged commit recorded in the entry's `state.json`.
fn delivered(entry: &Path) -> Option<String> {
    let text = fs::read_to_string(entry.join("state.json")).ok()?;
    let state: serde_json::Value =
        serde_json::from_str(&text).expect("state.json is never torn (it is replaced atomically)");
    state["delivered"].as_str().map(str::to_owned)
}

/// Whether the entry's clone has completed a fetch (its tip ref exists).
fn has_tip(entry: &Path) -> bool {
    let git_dir = git_dir(entry);
    fs::read_dir(git_dir.join("refs/gitfeed/sources")).is_ok_and(|mut refs| refs.next().is_some())
        || fs::read_to_string(git_dir.join("packed-refs"))
            .is_ok_and(|refs| refs.contains(" refs/gitfeed/sources/"))
}

/// Number of packs in the entry's clone.
fn pack_count(entry: &Path) -> usize {
    fs::read_dir(git_dir(entry).join("objects/pack")).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".idx"))
            .count()
    })
}

/// Names of the pack consolidation staging directories in the entry's clone.
fn staging_dirs(entry: &Path) -> Vec<String> {
    fs::read_dir(git_dir(entry).join("objects/pack")).map_or_else(
        |_| Vec::new(),
        |entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(".tmp-consolidate-"))
                .collect()
        },
    )
}

/// Total size of the entry clone's pack files.
fn pack_bytes(entry: &Path) -> u64 {
    fs::read_dir(git_dir(entry).join("objects/pack")).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".pack"))
            .filter_map(|entry| entry.metadata().ok())
            .map(|metadata| metadata.len())
            .sum()
    })
}

/// Total size of the files below `dir` (or of the file `dir`).
fn disk_usage(dir: &Path) -> u64 {
    if let Ok(metadata) = fs::metadata(dir)
        && metadata.is_file()
    {
        return metadata.len();
    }
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                stack.push(entry.path());
            } else {
                total += metadata.len();
            }
        }
    }
    total
}

/// Size of a fresh bare clone of the remote's `main`: what the cache would hold without any
/// crash.
fn fresh_clone_size(bare: &Path) -> u64 {
    let dir = unique_dir();
    let target = dir.path().join("fresh.git");
    git_in(
        dir.path(),
        &[
            "clone".as_ref(),
            "-q".as_ref(),
            "--bare".as_ref(),
            // A real transfer: a local clone would hard-link the remote's objects, including
            // the ones forced pushes left unreachable.
            "--no-local".as_ref(),
            bare.as_os_str(),
            target.as_os_str(),
        ],
    );
    disk_usage(&target)
}

/// What an interrupted write can leave behind. The entry's `lock` file is its flock and
/// belongs there.
fn leftovers(cache: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![cache.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).expect("list a cache directory");
        for entry in entries {
            let entry = entry.expect("read a cache directory entry");
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let in_pack_dir = dir.ends_with("objects/pack");
            let stale = name.ends_with(".lock")
                || name == "state.json.tmp"
                || name == "repo.init"
                || name.starts_with("tmp")
                || name.starts_with(".tmp")
                || (in_pack_dir && name.ends_with(".keep"));
            if stale {
                found.push(path);
            } else if entry.file_type().expect("file type").is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The command name of process `pid` (zombies keep theirs).
fn process_name(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    Some(stat[open + 1..close].to_owned())
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
    )
}
