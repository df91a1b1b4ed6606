//! Process bookkeeping read from `/proc`: counters for leak assertions, and
//! the plumbing the servers use to stop the external programs they start.

use std::collections::HashMap;
use std::fs;
use std::net::TcpStream;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

/// Number of file descriptors open in this process.
///
/// The directory handle used to list `/proc/self/fd` shows up in its own
/// listing; it is not counted.
pub fn fd_count() -> usize {
    let listed = fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count();
    listed.saturating_sub(1)
}

/// Number of threads in this process (entries of `/proc/self/task`).
pub fn thread_count() -> usize {
    fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .count()
}

/// Number of threads of process `pid` (entries of `/proc/<pid>/task`); 0 once it is gone.
pub fn threads_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| tasks.count())
}

/// Pids whose parent is this process, including exited children that were
/// never waited for (zombies), which is exactly what a reaping bug leaves.
pub fn child_pids() -> Vec<u32> {
    children_of(std::process::id())
}

/// Pids whose parent is `parent`, zombies included.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = process_table()
        .into_iter()
        .filter(|&(_, ppid)| ppid == parent)
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Number of file descriptors open in process `pid`; 0 once it is gone.
pub fn fds_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count())
}

/// Polls `measure` until it returns at most `target` or `timeout` passes,
/// and returns the last value measured.
///
/// Leak assertions need this because the kernel finishes tearing down a
/// thread slightly after `JoinHandle::join` returns (the joiner is woken
/// before the task leaves `/proc/self/task`), so an immediate count can see
/// a thread that is already gone for every other purpose.
pub fn settle(mut measure: impl FnMut() -> usize, target: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let now = measure();
        if now <= target || Instant::now() >= deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `(pid, ppid)` of every process visible in `/proc`. Processes that exit
/// while the table is read are skipped.
fn process_table() -> Vec<(u32, u32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, stat_ppid(&stat)?))
        })
        .collect()
}

/// The ppid field of a `/proc/<pid>/stat` line. The command name before it
/// is in parentheses and may itself contain spaces and `)`, so parsing
/// starts after the last `)`: what follows is `state ppid pgrp ...`.
fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and all of its descendants, parents before children.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in process_table() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

unsafe extern "C" {
    // std links the C library anyway but only exposes signalling for its own
    // `Child` handles; the grandchildren of a server (a git daemon's
    // per-connection helpers, sshd's per-connection processes) need kill(2).
    fn kill(pid: i32, sig: i32) -> i32;
}

const SIGKILL: i32 = 9;

/// Kills `child` together with every process it started, then reaps
/// `child`.
///
/// Killing only the server process would leave its per-connection helpers
/// serving open connections, so a test that drops a server mid-transfer
/// would not see the transfer fail. The tree is collected before anything is
/// signalled: once the parent is dead its children are reparented and can no
/// longer be found through it.
pub fn kill_tree(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    for pid in process_tree(child.id()).into_iter().skip(1) {
        if let Ok(pid) = i32::try_from(pid) {
            // SAFETY: kill(2) takes plain integers and touches no memory of
            // ours; a pid that already exited just yields ESRCH.
            unsafe {
                kill(pid, SIGKILL);
            }
        }
    }
    // Errors mean the process already exited, which is what we want anyway.
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether a process in `pid`'s tree holds the socket listening on
/// 127.0.0.1:`port`.
///
/// A free port can be taken by somebody else between our probe and the
/// server's bind; a successful connect alone would then report a stranger
/// as our server. `/proc/net/tcp` maps the listener to a socket inode and
/// `/proc/<pid>/fd` tells who holds that inode.
pub fn owns_listener(pid: u32, port: u16) -> bool {
    let Some(inode) = listening_inode(port) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    process_tree(pid).into_iter().any(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
                    .any(|target| target.as_os_str() == wanted.as_str())
            })
            .unwrap_or(false)
    })
}

/// Socket inode of the IPv4 listener bound to 127.0.0.1:`port` or
/// 0.0.0.0:`port`.
fn listening_inode(port: u16) -> Option<String> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let loopback = format!("0100007F:{port:04X}");
    let any = format!("00000000:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode.
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        let listening = *state == "0A";
        (listening && (*local == loopback || *local == any)).then(|| inode.to_string())
    })
}

/// How long an external server gets to start listening.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// Why waiting for a server to listen failed.
#[derive(Debug)]
pub enum StartError {
    /// The process exited, typically because the port was taken meanwhile;
    /// a new port may work.
    Exited(String),
    /// It neither listened nor exited in time.
    Timeout,
}

/// Waits until `child` accepts connections on 127.0.0.1:`port`.
///
/// Polling with a short sleep is the only option here: the program is
/// external and offers no readiness signal.
pub fn wait_listening(child: &mut Child, port: u16) -> Result<(), StartError> {
    let deadline = Instant::now() + START_DEADLINE;
    let addr = super::loopback(port);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited(status.to_string()));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && owns_listener(child.id(), port)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartError::Timeout);
        }
        thread::sleep(Duration::from_millis(20));
    }
}
