//! gitfeed against the git command line and libgit2 (through pygit2), side by side in one run,
//! on repositories generated here and served on loopback by `git daemon`, smart HTTP through
//! `git http-backend` (the integration tests' server) and `file://`.
//!
//! ```text
//! benches/run                      # everything, at the policy and the large size
//! benches/run --sizes tiny         # a quick check that the benchmark still works
//! cargo run --release --example bench -- --only poll,clone --sizes policy
//! ```
//!
//! `benches/run` builds this in release mode and installs pygit2 in a virtual environment;
//! without `GITFEED_BENCH_PYTHON` (a Python with pygit2) the libgit2 columns are left out.
//!
//! Sections (`--only`, comma-separated):
//! - `poll`: a no-change poll; gitfeed's [`Follower`] (clone kept open), `git fetch` run as a
//!   process on an equivalent bare clone, pygit2's `Remote.fetch` on one.
//! - `update`: one new commit: fetch plus the list of changed files.
//! - `clone`: an initial clone, full and depth 1; gitfeed's includes listing every file of the
//!   first update.
//! - `footprint`: an idle `gitfeed watch` with one source and a feed with 1,000 sources;
//!   resident memory, threads, descriptors and CPU while idle; the binary's size.
//! - `scale`: 1,000 sources polling every 10 s on one executor: how late each poll starts,
//!   how the start times spread, and the server's CPU per no-change poll.
//! - `device`: a repository with large files, as on a small device: peak RSS of a first clone
//!   (with and without a snapshot) against `git clone --bare`, and the smallest memory-cgroup
//!   limit under which each finishes (needs root for the cgroups). Not run by default.
//! - `cache`: the cache's size on disk (`du -sb`) after four `gitfeed watch --once` runs
//!   pinned to four commits of one URL, against one run and `git clone --bare`.
//!   `GITFEED_BENCH_GITFEED=<binary>` measures another build of gitfeed.

#[path = "../tests/util/mod.rs"]
mod util;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gitfeed::{Event, Feed, Follower, Source};

use util::{GitDaemon, HttpServer};

struct Options {
    sizes: Vec<Size>,
    only: Vec<String>,
    sources: usize,
    python: Option<String>,
    /// Short idle and scale windows: checks that the sections run, measures little.
    quick: bool,
}

impl Options {
    /// How long a process is watched idling.
    fn idle(&self) -> Duration {
        if self.quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(20)
        }
    }

    /// The poll interval of the scale runs.
    fn scale_interval(&self) -> Duration {
        if self.quick {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        }
    }

    /// How long the scale runs are watched once every source has its first update.
    fn scale_window(&self) -> Duration {
        if self.quick {
            Duration::from_secs(4)
        } else {
            Duration::from_secs(40)
        }
    }
}

#[derive(Clone, Copy)]
struct Size {
    name: &'static str,
    files: usize,
    commits: usize,
    /// Files changed by each commit after the first.
    touched: usize,
    poll_rounds: usize,
    update_rounds: usize,
    clone_rounds: usize,
}

const SIZES: [Size; 3] = [
    Size {
        name: "tiny",
        files: 30,
        commits: 10,
        touched: 2,
        poll_rounds: 3,
        update_rounds: 2,
        clone_rounds: 1,
    },
    Size {
        name: "policy",
        files: 300,
        commits: 200,
        touched: 3,
        poll_rounds: 51,
        update_rounds: 21,
        clone_rounds: 11,
    },
    Size {
        name: "large",
        files: 20_000,
        commits: 2_000,
        touched: 10,
        poll_rounds: 31,
        update_rounds: 11,
        clone_rounds: 5,
    },
];

fn main() {
    if let Some(sources) = std::env::var("GITFEED_BENCH_FEED")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        run_feed_child(sources);
    }
    let options = parse_args();
    // smol's global reactor lives as long as the process: start it before measuring.
    smol::block_on(smol::Timer::after(Duration::from_millis(1)));
    println!("# gitfeed benchmark");
    println!();
    println!("{}", machine_line());
    if let Some(python) = &options.python {
        println!("libgit2 through pygit2, run by {python}");
    } else {
        println!("GITFEED_BENCH_PYTHON is not set: no libgit2 columns");
    }
    let wants =
        |section: &str| options.only.is_empty() || options.only.iter().any(|s| s == section);
    let per_size = ["poll", "update", "clone"].iter().any(|s| wants(s));
    for size in options.sizes.iter().filter(|_| per_size) {
        let repos = Repos::generate(*size);
        let servers = Servers::start(&repos);
        println!();
        println!(
            "## {} repository: {} files, {} commits, pack {} KiB",
            size.name,
            size.files,
            size.commits,
            pack_bytes(&repos.bare()) / 1024
        );
        if wants("poll") {
            poll(&options, size, &repos, &servers);
        }
        if wants("update") {
            update(&options, size, &repos, &servers);
        }
        if wants("clone") {
            clone(&options, size, &servers);
        }
    }
    // Opt-in: it clones a large repository a few dozen times. `snapshots` runs only the
    // snapshot rows, which need no memory cgroup.
    if options.only.iter().any(|s| s == "device") {
        device(&options, &[MEMORY_ROWS, SNAPSHOT_ROWS].concat());
    } else if options.only.iter().any(|s| s == "snapshots") {
        device(&options, SNAPSHOT_ROWS);
    }
    if wants("footprint") || wants("scale") {
        let size = options.sizes.first().copied().unwrap_or(SIZES[1]);
        let repos = Repos::generate(size);
        repos.add_branches(options.sources);
        let daemon = GitDaemon::start(&repos.root);
        if wants("footprint") {
            footprint(&options, &repos, &daemon);
        }
        if wants("scale") {
            scale(&options, &repos, &daemon);
        }
    }
    if wants("cache") {
        let size = options.sizes.first().copied().unwrap_or(SIZES[1]);
        cache_after_pins(&Repos::generate(size));
    }
}

fn parse_args() -> Options {
    let mut options = Options {
        sizes: vec![SIZES[1], SIZES[2]],
        only: Vec::new(),
        sources: 1000,
        python: std::env::var("GITFEED_BENCH_PYTHON")
            .ok()
            .filter(|p| !p.is_empty()),
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--sizes" => {
                options.sizes = value()
                    .split(',')
                    .map(|name| {
                        *SIZES
                            .iter()
                            .find(|size| size.name == name)
                            .unwrap_or_else(|| usage(&format!("unknown size {name}")))
                    })
                    .collect();
            }
            "--quick" => options.quick = true,
            "--only" => options.only = value().split(',').map(str::to_owned).collect(),
            "--sources" => {
                options.sources = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--sources needs a number"))
            }
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    options
}

fn usage(problem: &str) -> ! {
    eprintln!("{problem}");
    eprintln!(
        "usage: bench [--sizes tiny,policy,large] \
         [--only poll,update,clone,footprint,scale,cache,device] \
         [--sources N] [--quick]"
    );
    std::process::exit(2)
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let git = command_output(Command::new("git").arg("--version"));
    format!(
        "machine: {cpu}, {cores} cores; {}; gitfeed built {}",
        git.trim(),
        if cfg!(debug_assertions) {
            "in debug mode (figures are not representative)"
        } else {
            "in release mode"
        }
    )
}

// ---------------------------------------------------------------------------------------------
// Repositories and servers

/// A generated bare repository `repo.git` under `root`, served from there.
struct Repos {
    _dir: tempfile::TempDir,
    root: PathBuf,
    size: Size,
    next: Mutex<usize>,
}

const REF: &str = "refs/heads/main";

impl Repos {
    /// Writes the history with `git fast-import` and packs it as a server would.
    fn generate(size: Size) -> Repos {
        let dir = util::unique_dir();
        let root = dir.path().join("srv");
        let bare = root.join("repo.git");
        std::fs::create_dir_all(&bare).expect("create the repository directory");
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        let repos = Repos {
            _dir: dir,
            root,
            size,
            next: Mutex::new(0),
        };
        let mut stream = Vec::new();
        for commit in 0..size.commits {
            let files: Vec<usize> = if commit == 0 {
                (0..size.files).collect()
            } else {
                (0..size.touched)
                    .map(|k| (commit * 7919 + k * 104_729) % size.files)
                    .collect()
            };
            // Within one stream, each commit follows the one before on the same branch.
            repos.commit_record(&mut stream, commit, &files, false);
        }
        repos.fast_import(&stream);
        git(&bare, &["repack", "-adq"]);
        *repos.next.lock().unwrap() = size.commits;
        repos
    }

    fn bare(&self) -> PathBuf {
        self.root.join("repo.git")
    }

    fn path_of(&self, file: usize) -> String {
        let dirs = (self.size.files / 40).max(1);
        format!("policies/d{:03}/s{}/rule{file}.rego", file % dirs, file % 3)
    }

    fn commit_record(&self, out: &mut Vec<u8>, commit: usize, files: &[usize], from_disk: bool) {
        let message = format!("commit {commit}\n");
        let _ = write!(
            out,
            "commit {REF}\ncommitter Bench <bench@example.org> {} +0000\ndata {}\n{message}",
            1_700_000_000 + commit,
            message.len()
        );
        if from_disk {
            let _ = writeln!(out, "from {REF}^0");
        }
        for &file in files {
            let mut text = String::new();
            for line in 0..8 {
                text.push_str(&format!(
                    "allow[{line}] if input.rule == {file} and input.version == {commit}\n"
                ));
            }
            let _ = write!(
                out,
                "M 100644 inline {}\ndata {}\n{text}\n",
                self.path_of(file),
                text.len()
            );
        }
        out.push(b'\n');
    }

    fn fast_import(&self, stream: &[u8]) {
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet", "--force"])
            .current_dir(self.bare())
            .stdin(Stdio::piped())
            .spawn()
            .expect("run git fast-import");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stream)
            .expect("feed git fast-import");
        assert!(child.wait().expect("git fast-import").success());
    }

    /// Commits a change to a few files on `main`; returns the new commit id.
    fn new_commit(&self) -> String {
        let mut next = self.next.lock().unwrap();
        let commit = *next;
        *next += 1;
        let files: Vec<usize> = (0..self.size.touched)
            .map(|k| (commit * 7919 + k * 104_729) % self.size.files)
            .collect();
        let mut stream = Vec::new();
        self.commit_record(&mut stream, commit, &files, true);
        self.fast_import(&stream);
        command_output(
            Command::new("git")
                .args(["rev-parse", REF])
                .current_dir(self.bare()),
        )
        .trim()
        .to_owned()
    }

    /// Branches `b0`…`b{n-1}` at `main`, one per source of the scale runs.
    fn add_branches(&self, n: usize) {
        let mut stream = Vec::new();
        for i in 0..n {
            let _ = write!(stream, "reset refs/heads/b{i}\nfrom {REF}^0\n\n");
        }
        self.fast_import(&stream);
    }
}

struct Servers {
    daemon: GitDaemon,
    http: HttpServer,
    file: String,
}

impl Servers {
    fn start(repos: &Repos) -> Servers {
        Servers {
            daemon: GitDaemon::start(&repos.root),
            http: HttpServer::start(&repos.root),
            file: format!("file://{}", repos.bare().display()),
        }
    }

    fn urls(&self) -> [(&'static str, String); 3] {
        [
            ("file", self.file.clone()),
            ("git", self.daemon.url("repo.git")),
            ("http", self.http.url("repo.git")),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

fn source(url: &str) -> Source {
    let mut source = Source::new("bench", url);
    source.reference = Some("main".into());
    source.timeout = Duration::from_secs(120);
    source.max_pack_size = 1 << 32;
    source
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(["-c", "protocol.version=2"])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?} in {}", dir.display());
}

/// `git fetch` of `main` into a bare clone, as git-sync runs it.
fn git_fetch(clone: &Path) {
    git(
        clone,
        &[
            "fetch",
            "-q",
            "origin",
            "+refs/heads/main:refs/remotes/origin/main",
        ],
    );
}

fn command_output(command: &mut Command) -> String {
    let output = command.output().expect("run a command");
    assert!(output.status.success(), "{command:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes back what earlier steps left dirty, so that no client pays for another's writes.
fn settle_disk() {
    let _ = Command::new("sync").status();
}

fn timed(run: impl FnOnce()) -> Duration {
    let started = Instant::now();
    run();
    started.elapsed()
}

/// Runs the pygit2 side; `None` without a Python to run it.
fn pygit2(options: &Options, args: &[&str]) -> Option<serde_json::Value> {
    let python = options.python.as_ref()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pygit2_bench.py");
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run the pygit2 benchmark");
    assert!(output.status.success(), "pygit2 {args:?}");
    Some(serde_json::from_slice(&output.stdout).expect("JSON from the pygit2 benchmark"))
}

fn pygit2_ms(value: &serde_json::Value, key: &str) -> Option<Duration> {
    value
        .get(key)?
        .as_f64()
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

fn ratio(ours: Duration, theirs: Option<Duration>) -> String {
    match theirs {
        Some(theirs) => format!("{:.2}×", ours.as_secs_f64() / theirs.as_secs_f64()),
        None => "–".into(),
    }
}

fn cell(value: Option<Duration>) -> String {
    value.map_or_else(|| "–".into(), ms)
}

fn table_header(columns: &[&str]) {
    println!();
    println!("| {} |", columns.join(" | "));
    println!("|{}", "---|".repeat(columns.len()));
}

// ---------------------------------------------------------------------------------------------
// Sections

fn comparison_header(theirs: &str) {
    table_header(&[
        "transport",
        "gitfeed",
        theirs,
        "pygit2",
        "gitfeed / git",
        "gitfeed / pygit2",
    ]);
}

/// A table row: medians, with the pygit2 cell given (it may say why there is no figure).
fn comparison_row(
    label: &str,
    ours: Duration,
    theirs: Duration,
    libgit2_cell: String,
    libgit2: Option<Duration>,
) {
    println!(
        "| {label} | {} | {} | {libgit2_cell} | {} | {} |",
        ms(ours),
        ms(theirs),
        ratio(ours, Some(theirs)),
        ratio(ours, libgit2)
    );
}

/// A follower of `url` in `work`, past its first update, which it acknowledged.
fn synced_follower(work: &Path, url: &str) -> (Follower, String) {
    let mut follower = Follower::new(work.join("cache"), &source(url)).expect("valid");
    let first = follower.poll().expect("first poll").expect("an update");
    follower.acknowledge(&first.new).expect("acknowledge");
    (follower, first.new)
}

fn poll(options: &Options, size: &Size, _repos: &Repos, servers: &Servers) {
    println!();
    println!("### No-change poll (median of {} rounds)", size.poll_rounds);
    comparison_header("git fetch (process)");
    for (label, url) in servers.urls() {
        let work = util::unique_dir();
        let (mut follower, _) = synced_follower(work.path(), &url);
        let ours = median(
            (0..size.poll_rounds)
                .map(|_| {
                    timed(|| {
                        let update = follower.poll().expect("poll");
                        assert!(update.is_none(), "nothing moved");
                    })
                })
                .collect(),
        );
        let clone = work.path().join("cli.git");
        git(
            work.path(),
            &["clone", "-q", "--bare", &url, &clone.to_string_lossy()],
        );
        let theirs = median(
            (0..size.poll_rounds)
                .map(|_| timed(|| git_fetch(&clone)))
                .collect(),
        );
        let pygit2_dir = work.path().join("pygit2.git");
        let libgit2 = pygit2(
            options,
            &[
                "poll",
                &url,
                &pygit2_dir.to_string_lossy(),
                &size.poll_rounds.to_string(),
            ],
        )
        .and_then(|value| pygit2_ms(&value, "median_ms"));
        comparison_row(label, ours, theirs, cell(libgit2), libgit2);
    }
}

fn update(options: &Options, size: &Size, repos: &Repos, servers: &Servers) {
    println!();
    println!(
        "### One new commit: fetch and list the changed files (median of {} rounds, {} files changed each)",
        size.update_rounds, size.touched
    );
    comparison_header("git fetch + git diff (processes)");
    for (label, url) in servers.urls() {
        let work = util::unique_dir();
        let (mut follower, first) = synced_follower(work.path(), &url);
        let clone = work.path().join("cli.git");
        git(
            work.path(),
            &["clone", "-q", "--bare", &url, &clone.to_string_lossy()],
        );
        git_fetch(&clone);
        let pygit2_dir = work.path().join("pygit2.git");
        let pygit2_dir = pygit2_dir.to_string_lossy();
        pygit2(options, &["poll", &url, &pygit2_dir, "0"]);
        let (mut ours, mut theirs, mut libgit2) = (Vec::new(), Vec::new(), Vec::new());
        let mut old = first;
        for round in 0..size.update_rounds {
            let new = repos.new_commit();
            // Each client goes first in turn, so none always runs after another's work.
            for step in 0..3 {
                settle_disk();
                match (round + step) % 3 {
                    0 => ours.push(timed(|| {
                        let update = follower.poll().expect("poll").expect("an update");
                        assert_eq!(update.new, new);
                        assert_eq!(update.changes.len(), size.touched.min(size.files));
                        follower.acknowledge(&update.new).expect("acknowledge");
                    })),
                    1 => theirs.push(timed(|| {
                        git_fetch(&clone);
                        let listed = command_output(
                            Command::new("git")
                                .args(["diff", "--name-only", "--no-renames", &old, &new])
                                .current_dir(&clone),
                        );
                        assert_eq!(listed.lines().count(), size.touched.min(size.files));
                    })),
                    _ => {
                        if let Some(value) = pygit2(options, &["update", &pygit2_dir, &url, &old]) {
                            assert_eq!(value["new"].as_str(), Some(new.as_str()));
                            libgit2.extend(pygit2_ms(&value, "ms"));
                        }
                    }
                }
            }
            old = new;
        }
        let ours = median(ours);
        let theirs = median(theirs);
        let libgit2 = (!libgit2.is_empty()).then(|| median(libgit2));
        comparison_row(label, ours, theirs, cell(libgit2), libgit2);
    }
}

fn clone(options: &Options, size: &Size, servers: &Servers) {
    for depth in [None, Some(1)] {
        println!();
        println!(
            "### Initial clone, {} (median of {} rounds)",
            if depth.is_some() {
                "depth 1"
            } else {
                "full history"
            },
            size.clone_rounds
        );
        comparison_header("git clone --bare");
        for (label, url) in servers.urls() {
            let (mut ours, mut theirs, mut libgit2) = (Vec::new(), Vec::new(), Vec::new());
            let mut libgit2_error = None;
            // Removed after the rounds: deleting a clone makes the file system busy for a
            // while, which would land on whichever client runs next.
            let mut done = Vec::new();
            for round in 0..size.clone_rounds {
                let work = util::unique_dir();
                let mut source = source(&url);
                source.depth = depth;
                let target = work.path().join("cli.git");
                let target_arg = target.to_string_lossy();
                let mut args = vec!["clone", "-q", "--bare"];
                if depth.is_some() {
                    args.extend(["--depth", "1"]);
                }
                args.extend([url.as_str(), &target_arg]);
                let pygit2_dir = work.path().join("pygit2.git");
                let depth_arg = depth.unwrap_or(0).to_string();
                // Each client goes first in turn, so none always runs after another's work.
                for step in 0..3 {
                    settle_disk();
                    match (round + step) % 3 {
                        0 => ours.push(timed(|| {
                            let update = gitfeed::sync_once(work.path().join("cache"), &source)
                                .expect("clone")
                                .expect("an update");
                            assert_eq!(update.changes.len(), size.files);
                        })),
                        1 => theirs.push(timed(|| git(work.path(), &args))),
                        _ => {
                            let args = ["clone", &url, &pygit2_dir.to_string_lossy(), &depth_arg];
                            if let Some(value) = pygit2(options, &args) {
                                match pygit2_ms(&value, "ms") {
                                    Some(took) => libgit2.push(took),
                                    None => {
                                        libgit2_error = value["error"].as_str().map(str::to_owned)
                                    }
                                }
                            }
                        }
                    }
                }
                done.push(work);
            }
            drop(done);
            let ours = median(ours);
            let theirs = median(theirs);
            let libgit2 = (!libgit2.is_empty()).then(|| median(libgit2));
            let libgit2_cell =
                libgit2_error.map_or_else(|| cell(libgit2), |err| format!("fails: {err}"));
            comparison_row(label, ours, theirs, libgit2_cell, libgit2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Footprint and scale

/// What `/proc` says about a process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    threads: usize,
    fds: usize,
    /// User plus system CPU, in clock ticks.
    cpu_ticks: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let cpu_ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Sample {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:") as usize,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        cpu_ticks,
    }
}

/// CPU time the whole machine spent busy, in clock ticks (all cores, from `/proc/stat`).
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum()
}

fn clock_ticks_per_second() -> u64 {
    command_output(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .unwrap_or(100)
}

fn footprint(options: &Options, repos: &Repos, daemon: &GitDaemon) {
    println!();
    println!("## Footprint");
    println!();
    let binary = sibling_binary("gitfeed");
    match std::fs::metadata(&binary) {
        Ok(meta) => println!(
            "gitfeed binary ({}): {} bytes ({:.2} MiB)",
            binary.display(),
            meta.len(),
            meta.len() as f64 / (1 << 20) as f64
        ),
        Err(err) => println!("gitfeed binary not found at {}: {err}", binary.display()),
    }
    table_header(&[
        "process",
        "sources",
        "RSS",
        "threads",
        "descriptors",
        &format!("CPU over {} s idle", options.idle().as_secs()),
    ]);
    let work = util::unique_dir();
    let url = daemon.url("repo.git");
    // The command-line tool with one source.
    let mut watch = Command::new(&binary)
        .args(["watch", &url, "--branch", "main", "--interval", "10s"])
        .arg("--cache-dir")
        .arg(work.path().join("watch"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gitfeed watch");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("\"update\""), "first line: {first}");
    idle_row("gitfeed watch", 1, watch.id(), options.idle());
    let _ = watch.kill();
    let _ = watch.wait();
    // The library: a feed in a process of its own, with one source and with many.
    for sources in [1, options.sources] {
        let mut feed = Command::new(std::env::current_exe().expect("own path"))
            .env("GITFEED_BENCH_FEED", sources.to_string())
            .env("GITFEED_BENCH_URL", &url)
            .env(
                "GITFEED_BENCH_CACHE",
                work.path().join(format!("feed-{sources}")),
            )
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a feed");
        let mut lines = BufReader::new(feed.stdout.take().expect("stdout")).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        assert_eq!(ready, "ready");
        idle_row("Feed (library)", sources, feed.id(), options.idle());
        let _ = feed.kill();
        let _ = feed.wait();
    }
    let _ = repos;
}

fn idle_row(label: &str, sources: usize, pid: u32, idle: Duration) {
    // Let the first round of work settle, then watch it idle.
    std::thread::sleep(Duration::from_secs(2));
    let before = sample(pid);
    std::thread::sleep(idle);
    let after = sample(pid);
    println!(
        "| {label} | {sources} | {:.1} MiB | {} | {} | {} ms |",
        after.rss_kib as f64 / 1024.0,
        after.threads,
        after.fds,
        (after.cpu_ticks - before.cpu_ticks) * 1000 / clock_ticks_per_second()
    );
}

/// A binary built next to this example (`target/<profile>/<name>`).
fn sibling_binary(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/examples/bench");
    profile_dir.join(name)
}

/// Runs as the feed process of the footprint section: follows branches `b0`… of the URL in
/// `GITFEED_BENCH_URL`, prints `ready` once every source delivered its first update, then idles.
/// Everything runs on one `LocalExecutor` on the main thread.
fn run_feed_child(sources: usize) -> ! {
    let url = std::env::var("GITFEED_BENCH_URL").expect("GITFEED_BENCH_URL");
    let cache = std::env::var("GITFEED_BENCH_CACHE").expect("GITFEED_BENCH_CACHE");
    let feed = Feed::new(cache);
    let events = feed.events();
    // A feed runs while a handle to it exists.
    let _handle = feed.handle();
    for source in scale_sources(&url, sources, Duration::from_secs(10)) {
        feed.add(source).expect("valid");
    }
    let executor = smol::LocalExecutor::new();
    executor
        .spawn(async move {
            let mut delivered = 0;
            while let Ok(event) = events.recv().await {
                if let Event::Update(_) = event {
                    delivered += 1;
                    if delivered == sources {
                        println!("ready");
                    }
                }
            }
        })
        .detach();
    gitfeed::block_on(executor.run(feed.run_async()));
    std::process::exit(0)
}

fn scale_sources(url: &str, count: usize, interval: Duration) -> impl Iterator<Item = Source> + '_ {
    (0..count).map(move |i| {
        let mut source = source(url);
        source.name = format!("s{i}");
        source.reference = Some(format!("b{i}"));
        source.interval = interval;
        source
    })
}

/// Collects the schedule's debug records: (when logged, how late the attempt started).
struct ScheduleLog {
    records: Mutex<Vec<(Instant, Duration)>>,
}

impl log::Log for ScheduleLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target() == "gitfeed::schedule" || metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if record.target() != "gitfeed::schedule" {
            if record.level() <= log::Level::Warn {
                eprintln!("{}: {}", record.level(), record.args());
            }
            return;
        }
        let text = record.args().to_string();
        let late = text
            .split_once("late_us=")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|us| us.parse().ok())
            .map(Duration::from_micros);
        if let Some(late) = late {
            self.records.lock().unwrap().push((Instant::now(), late));
        }
    }

    fn flush(&self) {}
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn scale(options: &Options, _repos: &Repos, daemon: &GitDaemon) {
    static LOG: ScheduleLog = ScheduleLog {
        records: Mutex::new(Vec::new()),
    };
    let _ = log::set_logger(&LOG);
    log::set_max_level(log::LevelFilter::Debug);
    println!();
    println!(
        "## {} sources, one `LocalExecutor`, every {} s, git:// on loopback",
        options.sources,
        options.scale_interval().as_secs()
    );
    println!();
    println!(
        "Lateness is from the moment a source's timer was due to the start of its attempt \
         (after it got a fetch slot), over {} s after every source delivered its first update. \
         Server CPU per poll is the machine's busy time less this process's, over the window, \
         divided by the attempts: `git daemon` and the `upload-pack` it runs for each poll.",
        options.scale_window().as_secs()
    );
    table_header(&[
        "concurrent fetches",
        "first updates of all sources",
        "attempts",
        "late p50",
        "late p99",
        "late max",
        "starts per second min/max",
        "server CPU per poll",
    ]);
    let url = daemon.url("repo.git");
    let concurrency_runs: &[usize] = if options.quick { &[4] } else { &[1, 4, 16] };
    for &concurrency in concurrency_runs {
        let work = util::unique_dir();
        let feed = Feed::new(work.path()).concurrent_fetches(concurrency);
        let events = feed.events();
        let handle = feed.handle();
        for source in scale_sources(&url, options.sources, options.scale_interval()) {
            feed.add(source).expect("valid");
        }
        let started = Instant::now();
        let runner = std::thread::spawn(move || feed.run());
        let mut delivered = 0;
        while delivered < options.sources {
            if let Ok(Event::Update(_)) = events.recv_blocking() {
                delivered += 1;
            }
        }
        let first_round = started.elapsed();
        LOG.records.lock().unwrap().clear();
        let busy_before = machine_busy_ticks();
        let own_before = sample(std::process::id()).cpu_ticks;
        let window_start = Instant::now();
        std::thread::sleep(options.scale_window());
        let records = std::mem::take(&mut *LOG.records.lock().unwrap());
        let server_ticks = (machine_busy_ticks() - busy_before)
            .saturating_sub(sample(std::process::id()).cpu_ticks - own_before);
        let server_ms = server_ticks as f64 * 1000.0 / clock_ticks_per_second() as f64;
        handle.shutdown();
        runner.join().expect("feed thread");
        let mut late: Vec<Duration> = records.iter().map(|(_, late)| *late).collect();
        late.sort_unstable();
        let mut per_second = vec![0usize; options.scale_window().as_secs() as usize];
        for (at, _) in &records {
            let second = at.saturating_duration_since(window_start).as_secs() as usize;
            if let Some(count) = per_second.get_mut(second) {
                *count += 1;
            }
        }
        println!(
            "| {concurrency} | {} | {} | {} | {} | {} | {}/{} | {:.2} ms |",
            ms(first_round),
            records.len(),
            ms(percentile(&late, 0.5)),
            ms(percentile(&late, 0.99)),
            ms(late.last().copied().unwrap_or_default()),
            per_second.iter().min().unwrap_or(&0),
            per_second.iter().max().unwrap_or(&0),
            server_ms / records.len().max(1) as f64
        );
    }
}

fn pack_bytes(bare: &Path) -> u64 {
    std::fs::read_dir(bare.join("objects/pack"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.path().extension().is_some_and(|e| e == "pack"))
                .filter_map(|entry| entry.metadata().ok())
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Device

/// The device section's repository (many small files and three large incompressible ones, as
/// on a device that receives models beside its policies), its server and the programs
/// compared. Each row of the table is one function of it: add a row by adding a function to
/// [`MEMORY_ROWS`] or [`SNAPSHOT_ROWS`].
struct Device {
    dir: tempfile::TempDir,
    _daemon: GitDaemon,
    url: String,
    shape: util::device::Shape,
    gitfeed: PathBuf,
    git: PathBuf,
    /// The snapshot rows' figures, measured once for all of them.
    snapshot_figures: std::cell::OnceCell<SnapshotFigures>,
}

/// One row of the device table: a figure for gitfeed and, where git has an equivalent, for git.
struct DeviceRow {
    label: String,
    ours: Option<f64>,
    theirs: Option<f64>,
    unit: &'static str,
}

/// The memory rows, in order.
const MEMORY_ROWS: &[fn(&Device) -> DeviceRow] = &[
    clone_peak_rss,
    checkout_peak_rss,
    contents_peak_rss,
    clone_smallest_limit,
    checkout_smallest_limit,
];

/// The snapshot rows, in order.
const SNAPSHOT_ROWS: &[fn(&Device) -> DeviceRow] = &[
    first_snapshot_time,
    first_snapshot_synced,
    one_file_update_time,
    snapshot_disk,
];

/// The device repository's name under the server's root.
const DEVICE_REPO: &str = "device.git";

/// Limits are searched in steps of this many bytes (the issue's table used 32 MiB).
const LIMIT_STEP: u64 = 4 << 20;

fn device(options: &Options, rows: &[fn(&Device) -> DeviceRow]) {
    let shape = if options.quick {
        util::device::Shape {
            small_files: 1_000,
            large_files: 3,
            large_mib: 8,
        }
    } else {
        util::device::Shape {
            small_files: 10_000,
            large_files: 3,
            large_mib: 48,
        }
    };
    let dir = util::unique_dir();
    let root = dir.path().join("srv");
    let bare = util::device::large_file_repo(&root, DEVICE_REPO, shape);
    let daemon = GitDaemon::start(&root);
    let device = Device {
        url: daemon.url(DEVICE_REPO),
        _daemon: daemon,
        dir,
        shape,
        gitfeed: sibling_binary("gitfeed"),
        git: util::device::on_path("git"),
        snapshot_figures: std::cell::OnceCell::new(),
    };
    println!();
    println!(
        "## Device: {} small files and {} files of {} MiB of random bytes, pack {} MiB, git://",
        shape.small_files,
        shape.large_files,
        shape.large_mib,
        pack_bytes(&bare) >> 20
    );
    println!();
    println!(
        "Peak RSS from `/usr/bin/time -f %M` (the largest process of the run: git's is \
         `index-pack`); the smallest limit is the smallest memory-cgroup limit, in steps of \
         {} MiB, under which the run finishes (the cgroup also counts page cache, which it \
         reclaims under pressure).",
        LIMIT_STEP >> 20
    );
    table_header(&["", "gitfeed", "git", "ratio"]);
    for row in rows {
        let row = row(&device);
        let show =
            |value: Option<f64>| value.map_or("—".to_owned(), |v| format!("{v:.0} {}", row.unit));
        let ratio = match (row.ours, row.theirs) {
            (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}×", ours / theirs),
            _ => "—".to_owned(),
        };
        println!(
            "| {} | {} | {} | {ratio} |",
            row.label,
            show(row.ours),
            show(row.theirs)
        );
    }
}

impl Device {
    /// A fresh directory for one run.
    fn scratch(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    /// `gitfeed watch <url> --once` with a fresh cache (and checkout, if asked), plus `extra`.
    fn gitfeed_args(&self, checkout: bool, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "watch".to_owned(),
            self.url.clone(),
            "--once".to_owned(),
            "--cache-dir".to_owned(),
            self.scratch("cache").to_string_lossy().into_owned(),
        ];
        if checkout {
            args.push("--checkout".to_owned());
            args.push(self.scratch("checkout").to_string_lossy().into_owned());
        }
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }

    /// `git clone --bare`, and with `checkout`, `git archive | tar -x` of its tip, as a shell
    /// command line.
    fn git_script(&self, checkout: bool) -> Vec<String> {
        let clone = self.scratch("git.git");
        let mut script = format!(
            "{} clone -q --bare {} {}",
            self.git.display(),
            self.url,
            clone.display()
        );
        if checkout {
            let out = self.scratch("git-checkout");
            script.push_str(&format!(
                " && mkdir {out} && {git} --git-dir {clone} archive main | tar -x -C {out}",
                out = out.display(),
                git = self.git.display(),
                clone = clone.display()
            ));
        }
        vec!["-c".to_owned(), script]
    }
}

fn clone_peak_rss(device: &Device) -> DeviceRow {
    DeviceRow {
        label: "peak RSS, first clone".into(),
        ours: peak_rss_mib(&device.gitfeed, &device.gitfeed_args(false, &[])),
        theirs: peak_rss_mib(Path::new("/bin/sh"), &device.git_script(false)),
        unit: "MiB",
    }
}

fn checkout_peak_rss(device: &Device) -> DeviceRow {
    DeviceRow {
        label: "peak RSS, first clone and `--checkout` (git: `archive \\| tar -x`)".into(),
        ours: peak_rss_mib(&device.gitfeed, &device.gitfeed_args(true, &[])),
        theirs: peak_rss_mib(Path::new("/bin/sh"), &device.git_script(true)),
        unit: "MiB",
    }
}

fn contents_peak_rss(device: &Device) -> DeviceRow {
    let limit = ((device.shape.large_mib as u64) << 20).to_string();
    DeviceRow {
        label: "peak RSS, first clone with `--contents-limit` above the large files".into(),
        ours: peak_rss_mib(
            &device.gitfeed,
            &device.gitfeed_args(false, &["--contents-limit", &limit]),
        ),
        theirs: None,
        unit: "MiB",
    }
}

fn clone_smallest_limit(device: &Device) -> DeviceRow {
    DeviceRow {
        label: "smallest cgroup limit, first clone".into(),
        ours: smallest_limit_mib(&device.gitfeed, || device.gitfeed_args(false, &[])),
        theirs: smallest_limit_mib(Path::new("/bin/sh"), || device.git_script(false)),
        unit: "MiB",
    }
}

fn checkout_smallest_limit(device: &Device) -> DeviceRow {
    DeviceRow {
        label: "smallest cgroup limit, first clone and `--checkout`".into(),
        ours: smallest_limit_mib(&device.gitfeed, || device.gitfeed_args(true, &[])),
        theirs: smallest_limit_mib(Path::new("/bin/sh"), || device.git_script(true)),
        unit: "MiB",
    }
}

/// The peak RSS of `program args` and its children, in MiB, from `/usr/bin/time -f %M`; `None`
/// when that is not installed or the run failed.
fn peak_rss_mib(program: &Path, args: &[String]) -> Option<f64> {
    let report = tempfile::NamedTempFile::new().ok()?;
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        eprintln!("{} {args:?} failed under /usr/bin/time", program.display());
        return None;
    }
    let kib: f64 = std::fs::read_to_string(report.path())
        .ok()?
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The smallest memory-cgroup limit under which `program args()` finishes, in MiB; `None` when
/// no cgroup can be created (not root) or the run needs more than 1 GiB.
fn smallest_limit_mib(program: &Path, args: impl Fn() -> Vec<String>) -> Option<f64> {
    let found = util::device::smallest_limit(LIMIT_STEP, 1 << 30, |limit| {
        let args = args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        util::device::run_limited(limit, program, &args)
    });
    match found {
        Ok(found) => found.map(|(limit, _)| (limit >> 20) as f64),
        Err(problem) => {
            eprintln!("{problem}");
            None
        }
    }
}

/// Rounds of each snapshot timing; the median is shown.
const SNAPSHOT_ROUNDS: usize = 3;

/// Updates before the timed ones, so that a spare exists as it does in a long-running feed.
const WARM_UPDATES: usize = 2;

fn first_snapshot_time(device: &Device) -> DeviceRow {
    let snapshots = device.snapshots();
    DeviceRow {
        label: "first snapshot (`--once --checkout` minus `--once`; git: `archive \\| tar -x`)"
            .into(),
        ours: Some(millis(snapshots.first)),
        theirs: Some(millis(snapshots.archive)),
        unit: "ms",
    }
}

fn first_snapshot_synced(device: &Device) -> DeviceRow {
    let snapshots = device.snapshots();
    DeviceRow {
        label: "first snapshot (git: `archive \\| tar -x` then `sync -f`)".into(),
        ours: Some(millis(snapshots.first)),
        theirs: Some(millis(snapshots.archive_synced)),
        unit: "ms",
    }
}

fn one_file_update_time(device: &Device) -> DeviceRow {
    let snapshots = device.snapshots();
    DeviceRow {
        label: "snapshot of a one-file update, from the third on (against the first snapshot)"
            .into(),
        ours: Some(millis(snapshots.update)),
        theirs: Some(millis(snapshots.first)),
        unit: "ms",
    }
}

fn snapshot_disk(device: &Device) -> DeviceRow {
    let snapshots = device.snapshots();
    DeviceRow {
        label: "two kept snapshots on disk (git: one tree from `archive \\| tar -x`)".into(),
        ours: Some(snapshots.kept_bytes as f64 / f64::from(1 << 20)),
        theirs: Some(snapshots.tree_bytes as f64 / f64::from(1 << 20)),
        unit: "MiB",
    }
}

/// The snapshot figures, measured once for the rows that show them.
#[derive(Debug, Clone, Copy)]
struct SnapshotFigures {
    /// What `--checkout` adds to a first `--once` run.
    first: Duration,
    /// What it adds to a `--once` run that brings a commit changing one line of one file.
    update: Duration,
    /// `git archive | tar -x` of the same tree.
    archive: Duration,
    /// The same, and `sync -f` of the tree's filesystem.
    archive_synced: Duration,
    /// `du` of the checkout directory holding two snapshots.
    kept_bytes: u64,
    /// `du` of the tree `git archive | tar -x` wrote.
    tree_bytes: u64,
}

impl Device {
    /// The snapshot figures: each `--once` run with `--checkout` is timed against the same run
    /// without it on an identical copy of the cache, so the fetch, the listing and any pack
    /// consolidation cancel out.
    fn snapshots(&self) -> SnapshotFigures {
        if let Some(figures) = self.snapshot_figures.get() {
            return *figures;
        }
        let bare = self.dir.path().join("srv").join(DEVICE_REPO);
        // A delivered clone, then its delivery state removed: the next run lists every file.
        let delivered = self.scratch("snap-cache");
        self.once(&delivered, None);
        let forget = |cache: &Path| remove_named(cache, "state.json");

        let mut first = Vec::new();
        let mut archive = Vec::new();
        let mut archive_synced = Vec::new();
        let tree = self.scratch("snap-tree");
        for _ in 0..SNAPSHOT_ROUNDS {
            let (plain, checked) = (self.scratch("snap-plain"), self.scratch("snap-checked"));
            copy_tree(&delivered, &plain);
            copy_tree(&delivered, &checked);
            forget(&plain);
            forget(&checked);
            let out = self.scratch("snap-out");
            settle_disk();
            let without = timed(|| self.once(&plain, None));
            settle_disk();
            let with = timed(|| self.once(&checked, Some(&out)));
            first.push(with.saturating_sub(without));
            for (samples, sync) in [(&mut archive, false), (&mut archive_synced, true)] {
                let _ = std::fs::remove_dir_all(&tree);
                std::fs::create_dir_all(&tree).expect("create the archive's directory");
                settle_disk();
                samples.push(timed(|| self.archive(&bare, &tree, sync)));
            }
        }

        // Two caches at the same commit, one with a checkout; each round brings both one
        // commit changing one line of one file.
        let (plain, checked) = (self.scratch("snap-plain"), self.scratch("snap-checked"));
        copy_tree(&delivered, &plain);
        copy_tree(&delivered, &checked);
        forget(&checked);
        let out = self.scratch("snap-out");
        self.once(&checked, Some(&out));
        let mut update = Vec::new();
        // The first updates, untimed, bring the checkout to how it runs from then on: two
        // snapshots kept and a spare (the third pruned) to start the next one from.
        for round in 0..WARM_UPDATES + SNAPSHOT_ROUNDS {
            change_one_line(&bare, round);
            settle_disk();
            let without = timed(|| self.once(&plain, None));
            settle_disk();
            let with = timed(|| self.once(&checked, Some(&out)));
            if round >= WARM_UPDATES {
                update.push(with.saturating_sub(without));
            }
        }
        let figures = SnapshotFigures {
            first: median(first),
            update: median(update),
            archive: median(archive),
            archive_synced: median(archive_synced),
            kept_bytes: disk_usage(&out),
            tree_bytes: disk_usage(&tree),
        };
        let _ = self.snapshot_figures.set(figures);
        figures
    }

    /// Runs `gitfeed watch --once` with `cache` (and `checkout`).
    fn once(&self, cache: &Path, checkout: Option<&Path>) {
        let mut command = Command::new(&self.gitfeed);
        command
            .args([
                "watch",
                &self.url,
                "--once",
                "--name",
                "device",
                "--cache-dir",
            ])
            .arg(cache);
        if let Some(checkout) = checkout {
            command.arg("--checkout").arg(checkout);
        }
        let status = command.stdout(Stdio::null()).status().expect("run gitfeed");
        assert!(status.success(), "gitfeed --once failed");
    }

    /// `git archive main | tar -x -C tree`, then `sync -f tree` when `sync`.
    fn archive(&self, bare: &Path, tree: &Path, sync: bool) {
        let mut script = format!(
            "{} --git-dir {} archive main | tar -x -C {}",
            self.git.display(),
            bare.display(),
            tree.display()
        );
        if sync {
            script.push_str(&format!(" && sync -f {}", tree.display()));
        }
        let status = Command::new("/bin/sh")
            .args(["-c", &script])
            .status()
            .expect("run git archive");
        assert!(status.success(), "git archive | tar -x failed");
    }
}

/// Adds a commit to `bare`'s main that changes one line of one small file.
fn change_one_line(bare: &Path, round: usize) {
    let text = format!("allow[0] if input.round == {round}\n");
    let stream = format!(
        "commit refs/heads/main\ncommitter Bench <bench@example.org> {} +0000\ndata 4\nedit\n\
         from refs/heads/main^0\nM 100644 inline policies/d000/rule0.rego\ndata {}\n{text}\n",
        1_700_000_001 + round,
        text.len()
    );
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run git fast-import");
    child
        .stdin
        .take()
        .expect("fast-import's stdin")
        .write_all(stream.as_bytes())
        .expect("feed git fast-import");
    assert!(child.wait().expect("wait for git fast-import").success());
}

/// Copies `from` to `to` as `cp -a` does, hard links included.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -a failed");
}

/// Removes every file named `name` below `dir`.
fn remove_named(dir: &Path, name: &str) {
    for item in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = item.path();
        if item.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_named(&path, name);
        } else if item.file_name() == name {
            std::fs::remove_file(&path).expect("remove a state file");
        }
    }
}

/// `duration` in milliseconds.
fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// Cache size

/// `gitfeed watch URL --once --branch <commit>` for four commits spread over the history,
/// oldest first, one after the other in one cache directory; the cache's size after each run,
/// against one run pinned to the newest of them in a cache of its own (one clone) and against
/// `git clone --bare`.
fn cache_after_pins(repos: &Repos) {
    println!();
    println!(
        "## Cache after pinned runs ({} repository, pack {} KiB)",
        repos.size.name,
        pack_bytes(&repos.bare()) / 1024
    );
    // A pin below a branch tip is fetched by its id, which git's upload-pack refuses unless
    // told otherwise (hosting services allow it).
    git(
        &repos.bare(),
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    let daemon = GitDaemon::start(&repos.root);
    let url = daemon.url("repo.git");
    // Another build (an older release, for a before/after figure) when named.
    let binary = std::env::var_os("GITFEED_BENCH_GITFEED")
        .map_or_else(|| sibling_binary("gitfeed"), PathBuf::from);
    println!();
    println!("gitfeed: {}", binary.display());
    let history = command_output(Command::new("git").current_dir(repos.bare()).args([
        "rev-list",
        "--first-parent",
        "--reverse",
        "main",
    ]));
    let history: Vec<&str> = history.lines().collect();
    // Oldest first, the last one the tip: each run brings history the runs before lack.
    let pins: Vec<&str> = (1..=4)
        .map(|k| history[k * (history.len() - 1) / 4])
        .collect();
    let work = util::unique_dir();
    let pinned_run = |cache: &Path, pin: &str| {
        let status = Command::new(&binary)
            .args(["watch", &url, "--once", "--branch", pin])
            .arg("--cache-dir")
            .arg(cache)
            .stdout(Stdio::null())
            .status()
            .expect("run gitfeed watch --once");
        assert!(status.success(), "gitfeed watch --once --branch {pin}");
        disk_usage(cache)
    };
    let bare = work.path().join("bare.git");
    git(
        work.path(),
        &["clone", "-q", "--bare", &url, &bare.to_string_lossy()],
    );
    let git_bytes = disk_usage(&bare);
    let one_clone = pinned_run(&work.path().join("one"), pins[pins.len() - 1]);
    table_header(&["cache", "du -sb", "x one clone", "x git clone --bare"]);
    let row = |label: &str, bytes: u64| {
        println!(
            "| {label} | {bytes} | {:.2}x | {:.2}x |",
            bytes as f64 / one_clone as f64,
            bytes as f64 / git_bytes as f64
        );
    };
    row("one run pinned to the tip (one clone)", one_clone);
    let cache = work.path().join("pins");
    for (run, pin) in pins.iter().enumerate() {
        let bytes = pinned_run(&cache, pin);
        row(&format!("after pinned run {} of 4", run + 1), bytes);
    }
    row("`git clone --bare`", git_bytes);
}

/// What `du -sb` reports for `path`.
fn disk_usage(path: &Path) -> u64 {
    command_output(Command::new("du").arg("-sb").arg(path))
        .split_whitespace()
        .next()
        .and_then(|bytes| bytes.parse().ok())
        .expect("du prints a size")
}
