//! A source's `exec` command: run for each update by `sh -c`, in a process group of its own,
//! within `exec_timeout`, and never outliving its run.
//!
//! The command runs on a thread of its own, which spawns it, logs its output line by line and
//! reaps it. The source's task waits for that thread at most until the timeout or the feed's
//! shutdown; then it asks the thread to kill the group, and still waits for it, so a run gives
//! back its thread, descriptors and processes before the task moves on, as an attempt does.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use smol::future::FutureExt;

use crate::clock;
use crate::event::Update;
use crate::git::FetchError;
use crate::reason::Reason;
use crate::source::Source;

/// The longest line of output logged as one line; longer ones are logged in pieces.
const MAX_LINE: usize = 1000;
/// How many of the last lines of output a failure's detail repeats.
const TAIL_LINES: usize = 5;
/// How long output is still read after the command exited and its group was killed: only a
/// process that left the group (a daemon of its own session) can still hold the pipe then.
const DRAIN: Duration = Duration::from_secs(1);
/// How often the running thread looks at the command's exit and the stop request.
const TICK: Duration = Duration::from_millis(50);

/// What the command of one update is given: its stdin and its environment. Made before the
/// update is sent, so the update itself need not be kept (or copied) while the command runs.
#[derive(Debug)]
pub(crate) struct Input {
    stdin: std::fs::File,
    env: Vec<(&'static str, OsString)>,
}

impl Input {
    /// Stages `update` for `source`'s command; `scratch` is a directory where its JSON is
    /// written to an unlinked file.
    pub fn stage(source: &Source, update: &Update, scratch: &Path) -> Result<Input, FetchError> {
        let stdin = stage_input(update, scratch)
            .map_err(|err| FetchError::io("cannot stage the update for the exec command", &err))?;
        Ok(Input {
            stdin,
            env: environment(source, update),
        })
    }
}

/// Runs `source`'s command with `input`, at most for `source.exec_timeout`, and returns once
/// the command and everything in its process group are gone. `Ok` only for exit status 0.
pub(crate) async fn run(
    source: &Source,
    command: &str,
    input: Input,
    shutdown: &async_channel::Receiver<()>,
) -> Result<(), FetchError> {
    let spec = Spec {
        name: source.name.clone(),
        command: command.to_owned(),
        env: input.env,
        input: input.stdin,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = async_channel::bounded(1);
    let work = {
        let stop = Arc::clone(&stop);
        move || {
            let _ = done_tx.send_blocking(execute(spec, &stop));
        }
    };
    let thread = std::thread::Builder::new()
        .name(format!("gitfeed-exec-{}", source.name))
        .spawn(work)
        .map_err(|err| FetchError::io("cannot start the exec thread", &err))?;
    let started = Instant::now();
    let finished = async { Ended::Finished(done_rx.recv().await.ok()) };
    let deadline = async {
        clock::sleep_until(started + source.exec_timeout).await;
        Ended::TimedOut
    };
    let stopped = async {
        let _ = shutdown.recv().await;
        Ended::Stopped
    };
    let (ended, ran) = match finished.or(deadline).or(stopped).await {
        Ended::Finished(ran) => (Ended::Finished(()), ran),
        ended => {
            stop.store(true, Ordering::SeqCst);
            // The thread kills the group within a tick and reaps the command; wait for it.
            let ended = match ended {
                Ended::Stopped => Ended::Stopped,
                _ => Ended::TimedOut,
            };
            (ended, done_rx.recv().await.ok())
        }
    };
    let _ = thread.join();
    let ran = ran.ok_or_else(|| {
        FetchError::new(
            Reason::ExecFailed,
            "the exec thread ended without an outcome",
        )
    })?;
    let status = ran
        .status
        .map_err(|err| FetchError::io("cannot run the exec command", &err))
        .map_err(|err| FetchError {
            reason: Reason::ExecFailed,
            kind: Reason::ExecFailed.kind(),
            ..err
        })?;
    let problem = match ended {
        Ended::TimedOut => format!(
            "the exec command timed out after {}; its process group was killed",
            crate::clock::spoken(source.exec_timeout)
        ),
        Ended::Stopped => {
            return Err(FetchError::new(
                Reason::Cancelled,
                "the feed is shutting down; the exec command was killed",
            ));
        }
        _ if status.success() => return Ok(()),
        _ => match status.code() {
            Some(code) => format!("the exec command exited with status {code}"),
            None => "the exec command was killed by a signal".to_owned(),
        },
    };
    let mut err = FetchError::new(Reason::ExecFailed, problem);
    if !ran.tail.is_empty() {
        err.detail = Some(ran.tail);
    }
    Err(err)
}

/// Why the wait for a run ended.
enum Ended<T> {
    Finished(T),
    TimedOut,
    Stopped,
}

/// What the running thread needs.
struct Spec {
    name: String,
    command: String,
    env: Vec<(&'static str, OsString)>,
    input: std::fs::File,
}

/// How a run ended: the command's exit status, and the last lines it wrote.
struct Ran {
    status: std::io::Result<ExitStatus>,
    tail: String,
}

/// The update's JSON in an unlinked file, rewound: the command's stdin. A file rather than a
/// pipe, so a command that never reads its input cannot block the writer.
fn stage_input(update: &Update, scratch: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(scratch)?;
    // A name of this run's own: another process on the same cache (`watch --once` beside a
    // feed) never opens the same file.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let path = scratch.join(format!("exec-input.{}.{run}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let mut json = serde_json::to_vec(update).map_err(std::io::Error::other)?;
    json.push(b'\n');
    file.write_all(&json)?;
    file.rewind()?;
    Ok(file)
}

fn environment(source: &Source, update: &Update) -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        ("GITFEED_SOURCE", OsString::from(&update.source)),
        ("GITFEED_REF", OsString::from(&update.reference)),
        (
            "GITFEED_OLD",
            OsString::from(update.old.as_deref().unwrap_or_default()),
        ),
        ("GITFEED_NEW", OsString::from(&update.new)),
    ];
    if let Some(checkout) = &source.checkout {
        // `current` points at the update's snapshot: it was switched before the update was
        // sent. Resolved, so the command keeps reading this snapshot whatever comes next.
        let snapshot = std::fs::canonicalize(checkout.join("current"))
            .unwrap_or_else(|_| PathBuf::from(checkout).join(".snapshots").join(&update.new));
        env.push(("GITFEED_CHECKOUT", snapshot.into_os_string()));
    }
    env
}

/// Spawns the command and stays with it until it and its process group are gone.
fn execute(spec: Spec, stop: &AtomicBool) -> Ran {
    let name = spec.name.clone();
    let mut output = Output::new(&name);
    let status = supervise(spec, stop, &mut output);
    Ran {
        status,
        tail: output.tail(),
    }
}

fn supervise(spec: Spec, stop: &AtomicBool, output: &mut Output) -> std::io::Result<ExitStatus> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .envs(spec.env)
        // The service manager's channel is gitfeed's alone: a command must not report
        // readiness or liveness in its name.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::from(spec.input))
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let child = command.spawn()?;
    // The command's copies of the pipe's write end are the only ones left: the pipe ends
    // when every process of the group has gone.
    drop(command);
    let mut child = Group {
        group: Pid::from_child(&child),
        child: Some(child),
    };
    let mut chunk = [0u8; 8192];
    let mut open = true;
    let mut exited: Option<Instant> = None;
    loop {
        if open {
            let mut fds = [rustix::event::PollFd::new(
                &reader,
                rustix::event::PollFlags::IN,
            )];
            let tick = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: TICK.as_nanos() as _,
            };
            match rustix::event::poll(&mut fds, Some(&tick)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) => match reader.read(&mut chunk) {
                    Ok(0) => open = false,
                    Ok(n) => output.push(&chunk[..n]),
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => open = false,
                },
                Err(_) => open = false,
            }
        } else {
            std::thread::sleep(TICK);
        }
        if exited.is_none() && (child.has_exited() || stop.load(Ordering::SeqCst)) {
            // The command exited (or must end now): kill what it left behind in its group
            // while its id still names the group, that is before it is reaped.
            child.kill();
            exited = Some(Instant::now());
        }
        if let Some(at) = exited
            && (!open || at.elapsed() >= DRAIN)
        {
            break;
        }
    }
    output.finish();
    child.reap()
}

/// The command, the leader of its process group, until it is reaped.
struct Group {
    child: Option<std::process::Child>,
    group: Pid,
}

impl Group {
    /// True once the command has exited; it is left unreaped, so its id keeps naming the group.
    fn has_exited(&self) -> bool {
        matches!(
            rustix::process::waitid(
                WaitId::Pid(self.group),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
            ),
            Ok(Some(_))
        )
    }

    /// Kills every process of the group. Only while the command is unreaped: its id, which
    /// names the group, cannot be reused before.
    fn kill(&self) {
        if self.child.is_some() {
            let _ = rustix::process::kill_process_group(self.group, Signal::KILL);
        }
    }

    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(std::io::Error::other("the exec command was reaped already")),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // On every path out: nothing of the group outlives the run, and the command is reaped.
        self.kill();
        let _ = self.reap();
    }
}

/// The command's output: logged line by line with the source's name, and its last lines kept
/// for the error of a failed run.
struct Output<'a> {
    name: &'a str,
    line: Vec<u8>,
    tail: VecDeque<String>,
}

impl<'a> Output<'a> {
    fn new(name: &'a str) -> Self {
        Self {
            name,
            line: Vec::new(),
            tail: VecDeque::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.emit();
            } else {
                self.line.push(byte);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.line).trim_end().to_owned();
        self.line.clear();
        log::info!("{}: exec: {line}", self.name);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }

    fn tail(&self) -> String {
        // One line, as an error's detail is.
        let lines: Vec<&str> = self
            .tail
            .iter()
            .map(String::as_str)
            .filter(|line| !line.is_empty())
            .collect();
        lines.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long lines are cut into pieces, and only the last lines are kept for the error.
    #[test]
    fn output_lines_are_bounded() {
        let mut output = Output::new("s");
        output.push(&vec![b'x'; 2500]);
        output.push(b"\nlast\n");
        for n in 0..7 {
            output.push(format!("line {n}\n").as_bytes());
        }
        output.push(b"unterminated");
        output.finish();
        assert_eq!(output.tail.len(), TAIL_LINES);
        assert_eq!(
            output.tail(),
            "line 3 | line 4 | line 5 | line 6 | unterminated"
        );
        let mut output = Output::new("s");
        output.push(&vec![b'x'; 2500]);
        output.finish();
        let lengths: Vec<usize> = output.tail.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 500]);
    }
}
