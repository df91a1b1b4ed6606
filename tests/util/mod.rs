//! Shared helpers for the integration tests: throw-away git repositories,
//! local git servers for every transport gitfeed speaks (git daemon, smart
//! HTTP through `git http-backend`, sshd), servers that misbehave on purpose,
//! and process-level counters for leak assertions.
//!
//! Everything listens on 127.0.0.1 only, on ports the kernel hands out, and
//! every server stops its threads and reaps its child processes when dropped,
//! so tests can run in parallel and leave nothing behind.
//!
//! Each file under `tests/` that says `mod util;` compiles its own copy of
//! this module and uses only part of it, hence the blanket allow below.
#![allow(dead_code, unused_imports)]

/// `git daemon` on a loopback port.
pub mod daemon;
/// Repositories with large files and memory cgroups, as on a small device.
pub mod device;
/// Fault-injecting servers and the accept loop they share.
pub mod fault;
/// Smart HTTP through `git http-backend`.
pub mod http;
/// `/proc` counters and child-process cleanup.
pub mod proc;
/// Bare repositories with a work clone for making commits.
pub mod repo;
/// A private sshd.
pub mod ssh;
/// Smart HTTP behind TLS, with a test CA.
pub mod tls;

pub use daemon::GitDaemon;
pub use fault::{Fault, FaultServer, refused_url};
pub use http::{HttpServer, RequestLog};
pub use proc::{child_pids, children_of, fd_count, fds_of, settle, thread_count, threads_of};
pub use repo::{Remote, git_command, git_in, name_status};
pub use ssh::Sshd;
pub use tls::HttpsServer;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The only address any test server binds or any test client dials.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A fresh temporary directory, removed when the returned value is dropped.
/// Each test takes its own so parallel tests never share files.
pub fn unique_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gitfeed-test-")
        .tempdir()
        .expect("create a temporary directory for the test")
}

/// A loopback port that nothing listened on a moment ago.
///
/// The kernel picks it (bind to port 0) and the listener is dropped right
/// away so an external program can bind it. Another process may grab it in
/// between; callers that start external servers detect that and retry with a
/// new port (see `daemon::spawn_listening`).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(SocketAddrV4::new(LOOPBACK, 0))
        .expect("bind 127.0.0.1:0 to obtain a free port");
    listener
        .local_addr()
        .expect("read the address of a freshly bound listener")
        .port()
}

/// The loopback socket address for `port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(LOOPBACK, port))
}

/// Quotes `s` for a POSIX shell if it contains anything but plainly safe
/// characters. git runs `core.sshCommand` / `GIT_SSH_COMMAND` through `sh`,
/// so paths embedded there must survive word splitting.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The executable of example `name`, built once per test run by the cargo that runs the
/// tests, in the profile of this test binary. `cargo test` builds the examples already (then this is a
/// no-op), `cargo test --test tests` does not, and examples have no `CARGO_BIN_EXE_*`.
///
/// The variables cargo sets for the package under test are left out: build scripts that
/// watch one of them (`CARGO_PKG_VERSION`) would otherwise see a change and rebuild, here and
/// again at the next build from a shell.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = built.entry(name.to_owned()).or_insert_with(|| {
        // target/<profile dir>/deps/<this binary>
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile = match exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .and_then(|dir| dir.to_str())
        {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let mut cargo = Command::new(env!("CARGO"));
        for (var, _) in std::env::vars_os() {
            let var = var.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .iter()
            .any(|prefix| var.starts_with(prefix))
            {
                cargo.env_remove(&*var);
            }
        }
        let out = cargo
            .args(["build", "--example", name, "--profile", &profile])
            .args([
                "--message-format",
                "json-render-diagnostics",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .output()
            .unwrap_or_else(|err| panic!("cannot run cargo build --example {name}: {err}"));
        assert!(
            out.status.success(),
            "cargo build --example {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|message| {
                message["reason"] == "compiler-artifact" && message["target"]["name"] == name
            })
            .and_then(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the example's executable")
    });
    path.clone()
}
