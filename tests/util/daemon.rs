//! `git daemon` serving the git:// protocol on a loopback port.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::proc::{StartError, kill_tree, wait_listening};
use super::repo::git_command;

/// How many fresh ports to try when another process takes the chosen one
/// before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// Starts the command `make(port)` builds on free ports until one of them
/// ends up listening, and returns the running child with its port.
///
/// stdout and stderr go to `log` (appended), so server chatter does not mix
/// into test output but is available for failure messages.
pub(crate) fn spawn_listening(
    what: &str,
    log: &Path,
    mut make: impl FnMut(u16) -> Command,
) -> (Child, u16) {
    let mut last_error = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = super::free_port();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the server log file");
        let err = out.try_clone().expect("duplicate the server log handle");
        let mut child = make(port)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        match wait_listening(&mut child, port) {
            Ok(()) => return (child, port),
            Err(StartError::Exited(status)) => {
                // Most likely the port was taken meanwhile: try another one.
                last_error = format!("{what} exited with {status}");
                let _ = child.wait();
            }
            Err(StartError::Timeout) => {
                kill_tree(&mut child);
                last_error = format!("{what} did not listen on port {port} in time");
            }
        }
    }
    panic!(
        "{last_error}; log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// A `git daemon` exporting every repository under one directory on
/// `git://127.0.0.1:<port>/`. Killed (with its per-connection processes)
/// and reaped on drop.
pub struct GitDaemon {
    child: Child,
    port: u16,
    log: PathBuf,
    /// Holds the log file; removed on drop.
    _dir: tempfile::TempDir,
}

impl GitDaemon {
    /// Serves every repository below `base`: `git://127.0.0.1:P/<path>`
    /// maps to `base/<path>`. Returns once the daemon accepts connections.
    ///
    /// Runs with `--verbose`, so [`GitDaemon::log`] shows each request and
    /// the protocol version the client asked for.
    pub fn start(base: &Path) -> GitDaemon {
        let dir = super::unique_dir();
        let log = dir.path().join("daemon.log");
        let base_arg = format!("--base-path={}", base.display());
        let (child, port) = spawn_listening("git daemon", &log, |port| {
            let mut cmd = git_command();
            cmd.args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                "--verbose",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &base_arg,
            ])
            .arg(base);
            cmd
        });
        GitDaemon {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port the daemon listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `git://127.0.0.1:<port>/<name>`, `name` being relative to the base
    /// directory.
    pub fn url(&self, name: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
            self.port,
            name.trim_start_matches('/')
        )
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}
