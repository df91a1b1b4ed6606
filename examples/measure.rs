//! Scripted measurements of the figures gitfeed promises, against servers on loopback started
//! here (the same ones the integration tests use).
//!
//! - `faults [N]`: N failed attempts per fault kind; descriptors, threads and child processes
//!   before the first attempt and after the feed stopped.
//! - `deadline`: how long an attempt against a server that accepts and never answers takes,
//!   against its configured timeout, per transport.
//! - `poll [N]`: the median wall time of a no-change poll in-process, against `git fetch` run as
//!   a process on an equivalent clone, per transport.
//! - `long [N] [large]`: N fetches that each bring new objects through one feed; pack count,
//!   cache size, descriptors, threads and resident memory (after the first update and as the
//!   fetches go on). With `large`, the repository also holds three 48 MiB files of random
//!   bytes, which every pack consolidation copies.
//! - `long-cli [N]`: the same N fetches through the `gitfeed watch` command (built beside this
//!   example), each asked for with `SIGHUP`; its resident memory as the fetches go on.
//! - `read [N]`: a commit of N files (default 2,000) read back through a [`gitfeed::Reader`]:
//!   the time to list them (at once and a file at a time), and to read every one of them by
//!   path, by blob id, and by path the way `Reader::read` did before it looked paths up (the
//!   whole commit listed for each file); in all and for the longest single call (the longest
//!   an executor running the reads would be held). Then every file read on one executor
//!   beside a task due every 10 ms, in one go and a file at a time: how late that task ran.
//!
//! Run with: cargo run --release --example measure -- faults 1000

#[path = "../tests/util/mod.rs"]
mod util;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gitfeed::{Event, Feed, Source, SourceState};
use smol::future::FutureExt;

use util::{
    Fault, FaultServer, GitDaemon, HttpServer, Remote, Sshd, child_pids, fd_count, settle,
    thread_count,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let count = args.next().and_then(|n| n.parse().ok());
    // Start smol's global reactor first: it lives as long as the process.
    smol::block_on(smol::Timer::after(Duration::from_millis(1)));
    match what.as_str() {
        "faults" => faults(count.unwrap_or(1000)),
        "deadline" => deadline(),
        "poll" => poll(count.unwrap_or(50)),
        "long" => long(
            count.unwrap_or(1000),
            args.next().is_some_and(|arg| arg == "large"),
        ),
        "long-cli" => long_cli(count.unwrap_or(1000)),
        "read" => read(count.unwrap_or(2000)),
        _ => eprintln!(
            "usage: measure faults [N] | deadline | poll [N] | long [N] [large] | long-cli [N] \
             | read [N]"
        ),
    }
}

fn source(name: &str, url: &str, timeout: Duration) -> Source {
    let mut source = Source::new(name, url);
    source.interval = Duration::from_millis(100);
    source.timeout = timeout;
    source.backoff_initial = Duration::from_millis(1);
    source.backoff_max = Duration::from_millis(16);
    source
}

fn next(events: &async_channel::Receiver<Event>, within: Duration) -> Event {
    let receive = async { events.recv().await.ok() };
    let timeout = async {
        smol::Timer::after(within).await;
        None
    };
    smol::block_on(receive.or(timeout)).expect("an event in time")
}

fn faults(attempts: usize) {
    println!(
        "| fault | attempts | seconds | fds before/after | threads before/after | children before/after |"
    );
    println!("|---|---|---|---|---|---|");
    let kinds = [
        ("http 500", Fault::Status500, 5_000),
        ("http reset", Fault::Reset, 5_000),
        ("http never answers", Fault::Silent, 1_000),
        ("http trickle", Fault::Trickle, 1_000),
        ("git ERR packet", Fault::Status500, 5_000),
        ("git reset", Fault::Reset, 5_000),
        ("git never answers", Fault::Silent, 150),
        ("git trickle", Fault::Trickle, 150),
    ];
    for (label, fault, timeout_ms) in kinds {
        let remote = Remote::new();
        if label.starts_with("http") {
            let server = HttpServer::start(&remote.root());
            server.set_fault(fault);
            run_outage(
                label,
                &server.url(remote.name()),
                timeout_ms,
                attempts,
                || server.set_fault(Fault::None),
            );
        } else {
            let daemon = GitDaemon::start(&remote.root());
            let front = FaultServer::in_front_of(daemon.port(), fault);
            run_outage(
                label,
                &front.url(remote.name()),
                timeout_ms,
                attempts,
                || front.set_fault(Fault::None),
            );
        }
    }
    for scheme in ["http", "git"] {
        run_outage(
            &format!("{scheme} refused"),
            &util::refused_url(scheme),
            5_000,
            attempts,
            || {},
        );
    }
}

fn run_outage(label: &str, url: &str, timeout_ms: u64, attempts: usize, heal: impl Fn()) {
    const SOURCES: usize = 4;
    let (fds, threads, children) = (fd_count(), thread_count(), child_pids().len());
    let cache = util::unique_dir();
    let feed = Feed::new(cache.path()).concurrent_fetches(SOURCES);
    for i in 0..SOURCES {
        feed.add(source(
            &format!("s{i}"),
            url,
            Duration::from_millis(timeout_ms),
        ))
        .expect("valid");
    }
    let events = feed.events();
    let handle = feed.handle();
    let started = Instant::now();
    let runner = std::thread::spawn(move || feed.run());
    let mut failed = 0;
    while failed < attempts {
        if let Event::State(state) = next(&events, Duration::from_secs(60))
            && state.state == SourceState::Backoff
        {
            failed += 1;
        }
    }
    let elapsed = started.elapsed();
    heal();
    handle.shutdown();
    runner.join().expect("feed thread");
    let settle_for = Duration::from_secs(5);
    println!(
        "| {label} | {failed} | {:.1} | {fds}/{} | {threads}/{} | {children}/{} |",
        elapsed.as_secs_f64(),
        settle(fd_count, fds, settle_for),
        settle(thread_count, threads, settle_for),
        child_pids().len()
    );
}

fn deadline() {
    println!("| transport | timeout | attempt took |");
    println!("|---|---|---|");
    let silent = FaultServer::start(Fault::Silent);
    let remote = Remote::new();
    let http = HttpServer::start(&remote.root());
    http.set_fault(Fault::Silent);
    let sshd = Sshd::start();
    let ssh_silent_url = format!("ssh://{}@127.0.0.1:{}/repo.git", sshd.user(), silent.port());
    let cases = [
        ("git://", silent.url("repo.git"), None),
        ("http://", http.url(remote.name()), None),
        ("ssh://", ssh_silent_url, Some(sshd.ssh_command())),
    ];
    for (label, url, ssh_command) in cases {
        for timeout in [Duration::from_secs(2), Duration::from_secs(5)] {
            let cache = util::unique_dir();
            let mut source = source("d", &url, timeout);
            source.ssh_command = ssh_command.clone();
            let started = Instant::now();
            let result = gitfeed::sync_once(cache.path(), &source);
            let took = started.elapsed();
            assert!(result.is_err(), "a silent server cannot serve an update");
            println!("| {label} | {:?} | {:.3} s |", timeout, took.as_secs_f64());
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn poll(rounds: usize) {
    let remote = Remote::new();
    for i in 0..50 {
        remote.commit(
            &[(
                &format!("dir{}/file{i}.txt", i % 5),
                Some(&format!("{i}\n")),
            )],
            "c",
        );
    }
    let daemon = GitDaemon::start(&remote.root());
    let http = HttpServer::start(&remote.root());
    println!("| transport | gitfeed in-process (median) | git fetch process (median) | ratio |");
    println!("|---|---|---|---|");
    for (label, url) in [
        ("file", remote.file_url()),
        ("git", daemon.url(remote.name())),
        ("http", http.url(remote.name())),
    ] {
        let cache = util::unique_dir();
        let source = source("p", &url, Duration::from_secs(10));
        let first = gitfeed::sync_once(cache.path(), &source)
            .expect("first sync")
            .expect("first update");
        gitfeed::acknowledge(cache.path(), &source, &first.new).expect("acknowledge");
        let ours: Vec<Duration> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let update = gitfeed::sync_once(cache.path(), &source).expect("poll");
                assert!(update.is_none());
                started.elapsed()
            })
            .collect();
        let clone = cache.path().join("cli.git");
        git(
            cache.path(),
            &["clone", "-q", "--bare", &url, &clone.to_string_lossy()],
        );
        let theirs: Vec<Duration> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                git(
                    &clone,
                    &["fetch", "-q", "origin", "+refs/heads/main:refs/heads/main"],
                );
                started.elapsed()
            })
            .collect();
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.2}× |",
            ours.as_secs_f64() * 1e3,
            theirs.as_secs_f64() * 1e3,
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .current_dir(dir)
        .args(["-c", "protocol.version=2"])
        .args(args)
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?}");
}

fn long(fetches: usize, large: bool) {
    let remote = Remote::new();
    if large {
        // The large files go in through a second repository whose history the remote takes
        // over, so that the remote's work clone (which makes the commits) stays small.
        let shape = util::device::Shape {
            small_files: 1_000,
            large_files: 3,
            large_mib: 48,
        };
        let scratch = util::unique_dir();
        let bare = util::device::large_file_repo(scratch.path(), "large.git", shape);
        let path = bare.to_string_lossy().into_owned();
        remote.git(&[
            "pull",
            "-q",
            "--no-rebase",
            "--allow-unrelated-histories",
            &path,
            "main",
        ]);
        remote.git(&["push", "-q", "origin", "HEAD:main"]);
    }
    let cache = util::unique_dir();
    let mut follow = source("long", &remote.file_url(), Duration::from_secs(30));
    follow.interval = Duration::from_secs(3600);
    let feed = Feed::new(cache.path());
    feed.add(follow).expect("valid");
    let events = feed.events();
    let handle = feed.handle();
    let runner = std::thread::spawn(move || feed.run());
    let wait_update = || loop {
        match next(&events, Duration::from_secs(60)) {
            Event::Update(update) => return update,
            Event::State(state) => panic!("unexpected failure: {state:?}"),
            _ => {}
        }
    };
    wait_update();
    let (fds, threads) = (fd_count(), thread_count());
    let first_rss = rss_kib();
    println!(
        "after the first update: RSS {first_rss} KiB (anonymous {} KiB, files {} KiB)",
        status_kib("RssAnon:"),
        status_kib("RssFile:")
    );
    let started = Instant::now();
    for i in 1..=fetches {
        let new = remote.commit(
            &[(&format!("f{}.txt", i % 13), Some(&format!("{i}\n")))],
            "next",
        );
        handle.trigger("long").expect("running");
        let update = wait_update();
        assert_eq!(update.new, new);
        if i % (fetches / 4).max(1) == 0 {
            let rss = rss_kib();
            println!(
                "after {i} fetches: {:.1} s, packs {}, cache {} KiB, fds {}, threads {}, \
                 RSS {rss} KiB ({:+.1}% of the first update's; anonymous {} KiB, files {} KiB)",
                started.elapsed().as_secs_f64(),
                packs(cache.path()),
                du(cache.path()) / 1024,
                fd_count(),
                thread_count(),
                (rss as f64 / first_rss as f64 - 1.0) * 100.0,
                status_kib("RssAnon:"),
                status_kib("RssFile:")
            );
        }
    }
    handle.shutdown();
    runner.join().expect("feed thread");
    println!(
        "fds {fds} -> {}, threads {threads} -> {}",
        fd_count(),
        thread_count()
    );
    // The bound on disk use: against a fresh bare clone of the same tip.
    let fresh = cache.path().join("fresh.git");
    git(
        cache.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &remote.file_url(),
            &fresh.to_string_lossy(),
        ],
    );
    let fresh_size = du(&fresh);
    let cache_size = du(cache.path()) - fresh_size;
    println!(
        "cache {} KiB, fresh clone {} KiB: {:.2}x",
        cache_size / 1024,
        fresh_size / 1024,
        cache_size as f64 / fresh_size as f64
    );
}

fn long_cli(fetches: usize) {
    use std::io::BufRead;

    let remote = Remote::new();
    let cache = util::unique_dir();
    let program = std::env::current_exe()
        .expect("own path")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/examples/measure")
        .join("gitfeed");
    let mut child = Command::new(&program)
        .args([
            "watch",
            &remote.file_url(),
            "--name",
            "long",
            "--interval",
            "1h",
        ])
        .arg("--cache-dir")
        .arg(cache.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("run {}: {err}", program.display()));
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut wait_update = |commit: Option<&str>| loop {
        let line = lines
            .next()
            .expect("gitfeed exited")
            .expect("read its output");
        if line.contains(r#""type":"update""#) && commit.is_none_or(|c| line.contains(c)) {
            return;
        }
        assert!(!line.contains(r#""state":"failed""#), "{line}");
    };
    wait_update(None);
    let status = |field| pid_status_kib(pid, field);
    let first_rss = status("VmRSS:");
    println!(
        "after the first update: RSS {first_rss} KiB (anonymous {} KiB, files {} KiB)",
        status("RssAnon:"),
        status("RssFile:")
    );
    let started = Instant::now();
    let hangup = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid");
    for i in 1..=fetches {
        let new = remote.commit(
            &[(&format!("f{}.txt", i % 13), Some(&format!("{i}\n")))],
            "next",
        );
        rustix::process::kill_process(hangup, rustix::process::Signal::HUP).expect("signal");
        wait_update(Some(&new));
        if i % (fetches / 4).max(1) == 0 {
            let rss = status("VmRSS:");
            println!(
                "after {i} fetches: {:.1} s, packs {}, RSS {rss} KiB ({:+.1}% of the first \
                 update's; anonymous {} KiB, files {} KiB), threads {}",
                started.elapsed().as_secs_f64(),
                packs(cache.path()),
                (rss as f64 / first_rss as f64 - 1.0) * 100.0,
                status("RssAnon:"),
                status("RssFile:"),
                status("Threads:"),
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read(count: usize) {
    let remote = Remote::new();
    let contents: Vec<(String, String)> = (0..count)
        .map(|i| (format!("dir{}/file{i}.txt", i % 20), format!("file {i}\n")))
        .collect();
    let files: Vec<(&str, Option<&str>)> = contents
        .iter()
        .map(|(path, text)| (path.as_str(), Some(text.as_str())))
        .collect();
    let commit = remote.commit(&files, "many files");
    let cache = util::unique_dir();
    let mut only = source("read", &remote.file_url(), Duration::from_secs(30));
    only.filter.directories = (0..20).map(|i| format!("dir{i}")).collect();
    gitfeed::sync_once(cache.path(), &only)
        .expect("sync")
        .expect("update");
    let reader = gitfeed::Reader::open(cache.path(), &only).expect("reader");
    let started = Instant::now();
    let listed = reader.files(&commit).expect("files");
    let listing = started.elapsed();
    assert_eq!(listed.len(), count);
    println!("| {count} files | calls | total | longest call |");
    println!("|---|---|---|---|");
    println!("| list (`files`) | 1 | {} | {} |", ms(listing), ms(listing));
    let mut walk = reader.walk(&commit).expect("walk");
    let (total, longest) = timed(&listed, |_| {
        walk.next().expect("a file").expect("a step").size as usize
    });
    println!(
        "| list a file at a time (`walk`) | {count} | {} | {} |",
        ms(total),
        ms(longest)
    );
    let rows: [(&str, ReadOne); 3] = [
        (
            "read each by path, listing the commit each time (`read` before)",
            &|file| {
                let found = reader
                    .files(&commit)
                    .expect("files")
                    .into_iter()
                    .find(|listed| listed.path == file.path)
                    .expect("listed");
                reader.read_blob(&found.id).expect("read").len()
            },
        ),
        ("read each by path (`read`)", &|file| {
            reader.read(&commit, &file.path).expect("read").len()
        }),
        ("read each by blob id (`read_blob`)", &|file| {
            reader.read_blob(&file.id).expect("read").len()
        }),
    ];
    for (label, read) in rows {
        let (total, longest) = timed(&listed, read);
        println!("| {label} | {count} | {} | {} |", ms(total), ms(longest));
    }
    println!();
    println!(
        "| reading every file on one executor, beside a task due every {} | reads took | the task ran late by at most |",
        ms(TICK)
    );
    println!("|---|---|---|");
    let (took, late) = beside_ticker(async {
        for file in reader.files(&commit).expect("files") {
            reader.read_blob(&file.id).expect("read");
        }
    });
    println!(
        "| in one go (`files`, then `read_blob` for each) | {} | {} |",
        ms(took),
        ms(late)
    );
    let (took, late) = beside_ticker(async {
        for file in reader.walk(&commit).expect("walk") {
            reader.read_blob(&file.expect("a step").id).expect("read");
            smol::future::yield_now().await;
        }
    });
    println!(
        "| a file at a time (`walk`, `read_blob`, then yield) | {} | {} |",
        ms(took),
        ms(late)
    );
}

/// How often the task beside the reads is due.
const TICK: Duration = Duration::from_millis(10);

/// Runs `work` on one `LocalExecutor` beside a task due every [`TICK`]: how long the work
/// took, and how late that task ran at most meanwhile.
fn beside_ticker(work: impl std::future::Future<Output = ()>) -> (Duration, Duration) {
    let done = std::cell::Cell::new(false);
    let late = std::cell::Cell::new(Duration::ZERO);
    let executor = smol::LocalExecutor::new();
    smol::block_on(executor.run(async {
        let ticker = executor.spawn(async {
            let mut due = Instant::now() + TICK;
            while !done.get() {
                smol::Timer::at(due).await;
                late.set(
                    late.get()
                        .max(Instant::now().saturating_duration_since(due)),
                );
                due += TICK;
            }
        });
        // The ticker's first turn: it is waiting on its timer before the work starts.
        smol::future::yield_now().await;
        let started = Instant::now();
        work.await;
        let took = started.elapsed();
        done.set(true);
        ticker.await;
        (took, late.get())
    }))
}

/// Reads one file; returns how many bytes it holds.
type ReadOne<'a> = &'a dyn Fn(&gitfeed::File) -> usize;

/// Runs `read` for each of `files`, checking each read returned the file's size; the total
/// time and the longest call.
fn timed(
    files: &[gitfeed::File],
    mut read: impl FnMut(&gitfeed::File) -> usize,
) -> (Duration, Duration) {
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    for file in files {
        let call = Instant::now();
        let size = read(file);
        longest = longest.max(call.elapsed());
        assert_eq!(size as u64, file.size, "{}", file.path);
    }
    (started.elapsed(), longest)
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

/// This process's resident memory, from `/proc/self/status`.
fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// A `/proc/self/status` field in KiB (0 when missing).
fn status_kib(field: &str) -> u64 {
    read_status_kib("/proc/self/status", field)
}

/// A `/proc/<pid>/status` field of another process in KiB (0 when missing); `Threads:` is a
/// count.
fn pid_status_kib(pid: u32, field: &str) -> u64 {
    read_status_kib(&format!("/proc/{pid}/status"), field)
}

/// A field of a `/proc/*/status` file in KiB (0 when missing).
fn read_status_kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn packs(dir: &Path) -> usize {
    walk(dir)
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == "pack"))
        .count()
}

fn du(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter_map(|path| path.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}
