//! The duties of PID 1, for when `gitfeed` is the first process of a container.
//!
//! The kernel hands every orphaned process of a PID namespace to its PID 1, and only PID 1 can
//! reap them. gitfeed's helpers leave orphans behind when an attempt ends early (a killed
//! `git-upload-pack` or `ssh` abandons whatever it started), and without a reaper each of them
//! stays a zombie, holding a pid, for as long as the container runs. The kernel also delivers
//! to PID 1 only the signals it installed a handler for, so the default "terminate" of SIGTERM
//! never happens there.
//!
//! So when gitfeed starts as PID 1 it runs itself again as a child (the worker, which does the
//! real work), and stays behind as a minimal init: it reaps every child that exits, forwards
//! termination signals to the worker, and exits with the worker's status once the worker is
//! gone. Exiting also ends everything else in the namespace, since the kernel kills the rest
//! of a PID namespace when its PID 1 exits.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions, WaitStatus};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

/// Set in the worker's environment, so that it does the work instead of starting another
/// worker, whatever pid it finds itself with.
pub const WORKER_MARKER: &str = "GITFEED_PID1_WORKER";

/// The signals passed on to the worker: the ones a container runtime or a terminal uses to stop
/// or reload a process.
const FORWARDED: [i32; 4] = [SIGTERM, SIGINT, SIGHUP, SIGQUIT];

/// Exit status when the worker could not be supervised to its end.
const FAILURE: u8 = 1;

/// When this process is PID 1, supervises a copy of itself until it exits and returns the exit
/// status the process should end with; otherwise (or if the copy cannot be started) returns
/// `None` and gitfeed does its work in this process.
pub fn run_as_init() -> Option<ExitCode> {
    if !rustix::process::getpid().is_init() || std::env::var_os(WORKER_MARKER).is_some() {
        return None;
    }
    // Handlers go in before the worker starts: a signal that arrives in between is kept and
    // forwarded, where without a handler PID 1 would silently drop it.
    let signals = match Signals::new(FORWARDED) {
        Ok(signals) => Some(signals),
        Err(err) => {
            eprintln!("gitfeed: as PID 1, cannot forward signals: {err}");
            None
        }
    };
    let worker = match spawn_worker() {
        Ok(worker) => worker,
        Err(err) => {
            eprintln!("gitfeed: as PID 1, cannot start the worker process: {err}");
            eprintln!("gitfeed: running without reaping orphaned processes");
            return None;
        }
    };
    let worker = Worker::new(worker);
    if let Some(signals) = signals {
        forward_signals(signals, worker.clone());
    }
    Some(reap_until_worker_exits(&worker))
}

/// Starts this program again with the same arguments, standard streams and environment, plus
/// the marker.
fn spawn_worker() -> std::io::Result<Pid> {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("gitfeed"));
    let program = program_path(&arg0);
    let child = Command::new(program)
        .arg0(&arg0)
        .args(args)
        .env(WORKER_MARKER, "1")
        .spawn()?;
    // The `Child` is dropped without being waited for: the reaping loop collects its status
    // along with every other child's.
    Ok(Pid::from_child(&child))
}

/// The file this process runs, so that the worker is the same program even if `arg0` is a
/// bare name or a path relative to a directory changed since.
fn program_path(arg0: &OsString) -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from(arg0))
}

/// The worker's pid, shared by the reaping loop and the signal thread, and cleared as the
/// worker is reaped.
///
/// A reaped pid may be handed to a new process, so the signal thread must never signal it
/// after the reap; the reaping loop reaps only while holding the lock and clears the pid
/// before releasing it, and the signal thread signals only while holding it.
#[derive(Clone)]
struct Worker(Arc<Mutex<Option<Pid>>>);

impl Worker {
    fn new(pid: Pid) -> Worker {
        Worker(Arc::new(Mutex::new(Some(pid))))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Pid>> {
        // Neither holder panics while holding the lock, and the pid stays meaningful if one did.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `signal` to the worker, unless it has been reaped already.
    fn signal(&self, signal: Signal) {
        if let Some(pid) = *self.lock() {
            // ESRCH cannot happen before the reap; nothing else can fail for our own child.
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
}

/// Forwards each of the [`FORWARDED`] signals to the worker, on a thread of its own that runs
/// until this process exits.
fn forward_signals(mut signals: Signals, worker: Worker) {
    let forward = move || {
        for raw in signals.forever() {
            if let Some(signal) = Signal::from_named_raw(raw) {
                worker.signal(signal);
            }
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("gitfeed-init-signals".into())
        .spawn(forward)
    {
        eprintln!("gitfeed: as PID 1, cannot forward signals: {err}");
    }
}

/// Reaps every child that exits, blocking in between, until the worker is among them; returns
/// the status to exit with.
fn reap_until_worker_exits(worker: &Worker) -> ExitCode {
    loop {
        // Waiting without reaping lets the reap itself happen under the worker's lock (see
        // `Worker`), without holding the lock while blocked, which would hold up signals.
        match rustix::process::waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(err) => return lost_worker(err),
        }
        match reap_exited(worker) {
            Ok(Some(status)) => return exit_code(status),
            Ok(None) => {}
            Err(err) => return lost_worker(err),
        }
    }
}

/// Reaps every child that has exited by now; returns the worker's status if it was one of them.
fn reap_exited(worker: &Worker) -> rustix::io::Result<Option<WaitStatus>> {
    loop {
        let mut pid = worker.lock();
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((reaped, status))) if Some(reaped) == *pid => {
                *pid = None;
                return Ok(Some(status));
            }
            Ok(Some(_)) | Err(Errno::INTR) => {}
            Ok(None) => return Ok(None),
            Err(err) => return Err(err),
        }
    }
}

/// The status a shell would report for the worker: its exit code, or 128 plus the signal that
/// killed it.
fn exit_code(status: WaitStatus) -> ExitCode {
    ExitCode::from(shell_status(
        status.exit_status(),
        status.terminating_signal(),
    ))
}

/// [`exit_code`] on the two parts of a wait status, as a number.
fn shell_status(exit_code: Option<i32>, signal: Option<i32>) -> u8 {
    let code = match (exit_code, signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => i32::from(FAILURE),
    };
    u8::try_from(code).unwrap_or(FAILURE)
}

/// Waiting failed while the worker still runs (it cannot, for our own child): give up with an
/// error rather than spin.
fn lost_worker(err: Errno) -> ExitCode {
    eprintln!("gitfeed: as PID 1, cannot wait for the worker process: {err}");
    ExitCode::from(FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(shell_status(Some(0), None), 0);
        assert_eq!(shell_status(Some(3), None), 3);
        assert_eq!(shell_status(None, Some(SIGTERM)), 143);
        assert_eq!(shell_status(None, Some(9)), 137);
        assert_eq!(shell_status(None, None), FAILURE);
    }
}
