//! Readiness and watchdog notifications to a service manager (`NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`), as systemd's `Type=notify` and `WatchdogSec=` ask for.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Remote, shell_quote, unique_dir};

/// The next message on `socket`, or `None` when none comes within `within`.
fn message(socket: &UnixDatagram, within: Duration) -> Option<String> {
    socket.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn spawn(remote: &Remote, cache: &std::path::Path, env: &[(&str, String)], exec: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args([
            "watch",
            &remote.file_url(),
            "--interval",
            "1h",
            "--exec",
            exec,
        ])
        .arg("--cache-dir")
        .arg(cache)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gitfeed")
}

fn terminate(child: &mut Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(child.wait().expect("reap").success());
}

#[test]
fn ready_then_the_watchdog_then_stopping() {
    let remote = Remote::new();
    let dir = unique_dir();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind");
    let env_seen = dir.path().join("env");
    let exec = format!(
        "env | grep -E '^(NOTIFY_SOCKET|WATCHDOG_)' > {}; true",
        shell_quote(&env_seen.display().to_string())
    );
    let env = [
        ("NOTIFY_SOCKET", path.display().to_string()),
        // A ping every 100 ms.
        ("WATCHDOG_USEC", "200000".to_owned()),
    ];
    let mut child = spawn(&remote, dir.path(), &env, &exec);
    let ready = message(&socket, Duration::from_secs(20));
    assert_eq!(ready.as_deref(), Some("READY=1"));
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(
            message(&socket, Duration::from_secs(5)).as_deref(),
            Some("WATCHDOG=1")
        );
    }
    // Five pings, the first at once: about 400 ms, never much faster.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // The first update's command has run (it runs once: nothing else is committed).
    crate::util::settle(
        || usize::from(!env_seen.exists()),
        0,
        Duration::from_secs(20),
    );
    terminate(&mut child);
    // Pings may be on their way; STOPPING comes before gitfeed ends.
    let mut rest = Vec::new();
    while let Some(message) = message(&socket, Duration::from_millis(100)) {
        rest.push(message);
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
    // The command ran, without the service manager's variables.
    assert_eq!(
        std::fs::read_to_string(&env_seen).expect("the command ran"),
        ""
    );
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let remote = Remote::new();
    let dir = unique_dir();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).expect("bind");
    let env = [
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", "200000".to_owned()),
        ("WATCHDOG_PID", "1".to_owned()),
    ];
    let mut child = spawn(&remote, dir.path(), &env, "true");
    assert_eq!(
        message(&socket, Duration::from_secs(20)).as_deref(),
        Some("READY=1")
    );
    assert_eq!(message(&socket, Duration::from_millis(500)), None);
    terminate(&mut child);
}
