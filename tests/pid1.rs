//! The command's process duties: as PID 1 of a PID namespace it reaps the orphans its git
//! helpers leave behind, forwards signals to its worker and exits with the worker's status;
//! in any process, SIGHUP polls the source at once and SIGTERM or SIGINT end it with status 0.
//!
//! The namespace tests run gitfeed under `unshare --pid --fork --mount-proc` (util-linux), which
//! needs root. They fail when it cannot be done instead of skipping, so a machine that cannot
//! run them does not pass them unnoticed.

mod util;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use util::{Fault, FaultServer, Remote, unique_dir};

/// The environment variable that marks gitfeed's worker process (see `src/pid1.rs`). Setting it
/// on a gitfeed that is PID 1 turns its init duty off: the comparison run.
const WORKER_MARKER: &str = "GITFEED_PID1_WORKER";

/// Failed attempts made against the slow remote before counting zombies.
const ATTEMPTS: usize = 10;

/// How long a test waits for something gitfeed should do quickly.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A running `gitfeed watch`, directly or as PID 1 of a PID namespace, with its events.
struct Watch {
    /// `gitfeed` itself, or `unshare` when in a namespace.
    child: Child,
    /// In a namespace: gitfeed, PID 1 inside, as seen from here. Signals go to it.
    init: Option<u32>,
    events: mpsc::Receiver<Value>,
    _cache: TempDir,
}

impl Watch {
    /// Starts `gitfeed watch <url> <args>` with `env` added to its environment.
    fn start(url: &str, args: &[&str], env: &[(&str, &str)]) -> Watch {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gitfeed"));
        Watch::spawn(&mut command, url, args, env, false)
    }

    /// Like [`Watch::start`], as PID 1 of a new PID namespace.
    fn start_as_pid1(url: &str, args: &[&str], env: &[(&str, &str)]) -> Watch {
        require_unshare();
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_gitfeed"));
        Watch::spawn(&mut command, url, args, env, true)
    }

    fn spawn(
        command: &mut Command,
        url: &str,
        args: &[&str],
        env: &[(&str, &str)],
        in_namespace: bool,
    ) -> Watch {
        let cache = unique_dir();
        command
            .args(["watch", url, "--cache-dir"])
            .arg(cache.path())
            .args(args)
            // Only the comparison run may be marked, and it says so in `env`.
            .env_remove(WORKER_MARKER)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start gitfeed");
        let stdout = child.stdout.take().expect("gitfeed's stdout");
        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str(&line).expect("each line is a JSON event");
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        let mut watch = Watch {
            child,
            init: None,
            events,
            _cache: cache,
        };
        if in_namespace {
            watch.init = Some(watch.find_init());
        }
        watch
    }

    /// The pid (here) of gitfeed, PID 1 of the namespace `unshare` made.
    fn find_init(&mut self) -> u32 {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll unshare") {
                panic!(
                    "unshare exited ({status}) instead of running gitfeed as PID 1 of a new PID \
                     namespace; these tests need root and util-linux unshare"
                );
            }
            if let Some(&(pid, _)) = children_of(self.child.id()).first() {
                let inside = namespace_pid(pid);
                assert_eq!(inside, Some(1), "gitfeed should be PID 1 of its namespace");
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "unshare started no process in time"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process signals are sent to: gitfeed, or the namespace's PID 1.
    fn pid(&self) -> u32 {
        self.init.unwrap_or(self.child.id())
    }

    /// The next event, waiting at most `timeout`.
    fn next_event(&self, timeout: Duration) -> Value {
        self.events
            .recv_timeout(timeout)
            .unwrap_or_else(|err| panic!("no event within {timeout:?}: {err}"))
    }

    /// Events up to and including the first that satisfies `done`.
    fn events_until(&self, timeout: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next_event(left);
            let last = done(&event);
            seen.push(event);
            if last {
                return seen;
            }
        }
    }

    /// Sends `signal` (a name `kill` knows, like `HUP`) to [`Watch::pid`].
    fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits for the process (`unshare` in a namespace, which exits with its child's status) to
    /// end, at most `timeout`.
    fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll gitfeed") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gitfeed did not exit within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // Killing PID 1 of a namespace ends every process in it; `unshare` then exits.
            if let Some(init) = self.init {
                send_signal(init, "KILL");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Fails, loudly, when `unshare` is missing.
fn require_unshare() {
    let found = Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`unshare` (util-linux) is needed to run gitfeed as PID 1"
    );
}

/// `kill -<signal> <pid>`.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// `(pid, state)` of every process whose parent is `parent`, as `/proc/<pid>/stat` says; the
/// state is `Z` for a zombie.
fn children_of(parent: u32) -> Vec<(u32, char)> {
    let mut children: Vec<(u32, char)> = fs::read_dir("/proc")
        .expect("list /proc")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // The command name is in parentheses and may contain anything, so the fields are
            // read after the last `)`: state, then ppid.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state))
        })
        .collect();
    children.sort_unstable();
    children
}

/// The command name of `pid`, from `/proc/<pid>/comm`.
fn command_name(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| name.trim_end().to_owned())
        .unwrap_or_default()
}

/// `pid`'s number inside its own PID namespace: the last field of `NSpid` in its status.
fn namespace_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// A directory holding a `git-upload-pack` that answers only after `--timeout 1s` has passed,
/// and leaves a grandchild behind that outlives it by a little: each attempt orphans a
/// process, which becomes a zombie of PID 1 once it exits unless PID 1 reaps it. gitfeed runs
/// `git-upload-pack` from `PATH` for a `file://` remote, so this directory goes first in `PATH`.
fn slow_upload_pack() -> TempDir {
    let dir = unique_dir();
    let exec_path = util::git_in(Path::new("/"), &["--exec-path"]);
    let real = Path::new(&exec_path).join("git-upload-pack");
    let script = format!(
        "#!/bin/sh\n\
         # Outlives this script, so it is orphaned and handed to PID 1.\n\
         sleep 2 &\n\
         # Answers after the attempt's deadline.\n\
         sleep 1.5\n\
         exec {} \"$@\"\n",
        util::shell_quote(&real.to_string_lossy())
    );
    let path = dir.path().join("git-upload-pack");
    fs::write(&path, script).expect("write the slow git-upload-pack");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
        .expect("make the slow git-upload-pack executable");
    dir
}

/// Runs gitfeed as PID 1 against a remote whose every attempt times out, [`ATTEMPTS`] times,
/// waits until each orphan has exited, and returns how many zombies PID 1 holds. With `init`
/// false, gitfeed is marked as a worker, so it does not take up the duties of PID 1.
fn zombies_after_timeouts(init: bool) -> usize {
    let remote = Remote::new();
    let wrapper = slow_upload_pack();
    let path = format!(
        "{}:{}",
        wrapper.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = vec![("PATH", path.as_str()), ("RUST_LOG", "off")];
    if !init {
        env.push((WORKER_MARKER, "1"));
    }
    let max_failures = ATTEMPTS.to_string();
    let mut watch = Watch::start_as_pid1(
        &remote.file_url(),
        &[
            "--timeout",
            "1s",
            "--interval",
            "1h",
            "--backoff-initial",
            "100ms",
            "--backoff-max",
            "100ms",
            "--max-failures",
            &max_failures,
        ],
        &env,
    );
    let events = watch.events_until(Duration::from_secs(120), |event| event["state"] == "failed");
    let timeouts = events
        .iter()
        .filter(|event| {
            event["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out"))
        })
        .count();
    assert_eq!(
        timeouts, ATTEMPTS,
        "every attempt should time out: {events:?}"
    );

    let init_pid = watch.pid();
    let zombies = settled_zombies(init_pid);

    watch.signal("TERM");
    let status = watch.exit_within(PROMPTLY);
    assert!(
        status.success(),
        "SIGTERM should end gitfeed with 0: {status}"
    );
    zombies
}

/// Waits until no orphan of PID 1 is still running (each has exited, and either been reaped or
/// become a zombie), then returns the number of zombies.
fn settled_zombies(init: u32) -> usize {
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let orphans: Vec<(u32, char)> = children_of(init)
            .into_iter()
            .filter(|&(pid, _)| command_name(pid) != "gitfeed")
            .collect();
        let running = orphans.iter().filter(|&&(_, state)| state != 'Z').count();
        if running == 0 {
            return orphans.len();
        }
        assert!(
            Instant::now() < deadline,
            "orphans still running: {orphans:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pid1_reaps_the_orphans_of_timed_out_attempts() {
    // Both runs at once: each spends most of its time waiting for the slow remote.
    let without_init = thread::spawn(|| zombies_after_timeouts(false));
    let with_init = zombies_after_timeouts(true);
    let without_init = without_init.join().expect("the comparison run");
    eprintln!(
        "zombies after {ATTEMPTS} timed-out attempts: {with_init} with gitfeed as init, \
         {without_init} without"
    );
    assert!(
        without_init >= ATTEMPTS / 2,
        "the comparison run should leave zombies, or this test proves nothing: {without_init}"
    );
    assert_eq!(with_init, 0, "gitfeed as PID 1 should reap every orphan");
}

#[test]
fn pid1_exits_with_the_workers_status() {
    let remote = Remote::new();
    let watch_args = ["--interval", "1h"];
    let mut watch = Watch::start_as_pid1(&remote.file_url(), &watch_args, &[]);
    watch.next_event(PROMPTLY);
    let workers: Vec<u32> = children_of(watch.pid())
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|&pid| command_name(pid) == "gitfeed")
        .collect();
    assert_eq!(workers.len(), 1, "one worker under PID 1: {workers:?}");
    send_signal(workers[0], "KILL");
    let status = watch.exit_within(PROMPTLY);
    assert_eq!(status.code(), Some(128 + 9), "128 + SIGKILL: {status}");
}

/// SIGHUP makes gitfeed fetch now, long before its interval is up; SIGTERM then ends it with 0.
fn sighup_polls_now(watch: &mut Watch, remote: &Remote) {
    let first = watch.next_event(PROMPTLY);
    assert_eq!(first["type"], "update", "{first}");
    let new = remote.commit(&[("hup.txt", Some("hup\n"))], "hup");
    watch.signal("HUP");
    let next = watch.next_event(Duration::from_secs(5));
    assert_eq!(next["type"], "update", "{next}");
    assert_eq!(next["new"], new.as_str(), "{next}");
    watch.signal("TERM");
    let status = watch.exit_within(PROMPTLY);
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_polls_the_source() {
    let remote = Remote::new();
    let mut watch = Watch::start(&remote.file_url(), &["--interval", "1h"], &[]);
    sighup_polls_now(&mut watch, &remote);
}

#[test]
fn pid1_forwards_sighup_and_sigterm() {
    let remote = Remote::new();
    let mut watch = Watch::start_as_pid1(&remote.file_url(), &["--interval", "1h"], &[]);
    sighup_polls_now(&mut watch, &remote);
}

#[test]
fn sigterm_and_sigint_exit_0_promptly() {
    let remote = Remote::new();
    for signal in ["TERM", "INT"] {
        let mut watch = Watch::start(&remote.file_url(), &["--interval", "1h"], &[]);
        watch.next_event(PROMPTLY);
        let sent = Instant::now();
        watch.signal(signal);
        let status = watch.exit_within(Duration::from_secs(5));
        assert!(status.success(), "SIG{signal}: {status}");
        eprintln!("SIG{signal}: exited in {:?}", sent.elapsed());
    }
}

#[test]
fn sigterm_interrupts_an_attempt_in_flight() {
    let server = FaultServer::start(Fault::Silent);
    let mut watch = Watch::start(&server.url("repo.git"), &["--timeout", "60s"], &[]);
    let deadline = Instant::now() + PROMPTLY;
    while server.connections() == 0 {
        assert!(Instant::now() < deadline, "gitfeed never connected");
        thread::sleep(Duration::from_millis(20));
    }
    let sent = Instant::now();
    watch.signal("TERM");
    let status = watch.exit_within(Duration::from_secs(5));
    assert!(status.success(), "{status}");
    eprintln!("SIGTERM during an attempt: exited in {:?}", sent.elapsed());
}
