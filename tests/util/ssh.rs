//! A private OpenSSH server on a loopback port, with its own host key and a
//! client key, so git can fetch over ssh without touching the machine's
//! ssh setup.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::daemon::spawn_listening;
use super::proc::kill_tree;
use super::shell_quote;

/// Where Debian's openssh-server installs the daemon; sshd must be started
/// by absolute path because it re-executes itself for every connection.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Host name that [`Sshd::ssh_config`] defines for scp-like URLs.
pub const HOST_ALIAS: &str = "gitfeed-test";

/// An sshd listening on 127.0.0.1 that lets the current user in with a
/// generated key and nothing else. Killed (with its per-connection
/// processes) and reaped on drop.
///
/// Repositories are addressed by absolute path: the login runs
/// `git-upload-pack '<path>'` as the current user.
pub struct Sshd {
    child: Child,
    port: u16,
    user: String,
    client_key: PathBuf,
    known_hosts: PathBuf,
    ssh_config: PathBuf,
    log: PathBuf,
    /// Keys, configuration and log; removed on drop.
    _dir: tempfile::TempDir,
}

impl Sshd {
    /// Generates keys, writes the configuration and starts sshd; returns
    /// once it accepts connections. Panics if OpenSSH is not installed
    /// (`.ci/install-test-deps` installs it).
    pub fn start() -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing; run .ci/install-test-deps to install openssh-server"
        );
        let dir = super::unique_dir();
        let path = |name: &str| dir.path().join(name);
        let host_key = path("host_ed25519");
        let client_key = path("client_ed25519");
        keygen(&host_key, "gitfeed-test-host");
        keygen(&client_key, "gitfeed-test-client");
        let authorized_keys = path("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized_keys)
            .expect("install the client key as authorized");
        let user = current_user();
        // sshd running as root insists on its privilege separation
        // directory; a non-root sshd does not need it (and cannot create it).
        let _ = fs::create_dir_all("/run/sshd");

        let config = path("sshd_config");
        let log = path("sshd.log");
        let (child, port) = spawn_listening("sshd", &log, |port| {
            let text = sshd_config(port, &host_key, &path("sshd.pid"), &authorized_keys);
            fs::write(&config, text).expect("write sshd_config");
            let mut cmd = Command::new(SSHD);
            // -D: stay in the foreground as our child; -e: log to stderr,
            // which goes to the log file.
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            cmd
        });

        let host_public =
            fs::read_to_string(host_key.with_extension("pub")).expect("read the host public key");
        // "<type> <base64>" without the comment.
        let host_public: Vec<&str> = host_public.split_whitespace().take(2).collect();
        let known_hosts = path("known_hosts");
        fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}\n", host_public.join(" ")),
        )
        .expect("write known_hosts");

        let ssh_config = path("ssh_config");
        fs::write(
            &ssh_config,
            format!(
                "Host {HOST_ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  \
                 IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  \
                 GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  LogLevel ERROR\n",
                config_quote(&client_key),
                config_quote(&known_hosts),
            ),
        )
        .expect("write ssh_config");

        Sshd {
            child,
            port,
            user,
            client_key,
            known_hosts,
            ssh_config,
            log,
            _dir: dir,
        }
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user that logs in (the one running the tests).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `ssh://<user>@127.0.0.1:<port><path>` for the repository at the
    /// absolute path `repo` (for example [`super::Remote::bare_path`]).
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            absolute(repo).display()
        )
    }

    /// `gitfeed-test:<path>`: the scp-like form, which cannot carry a port,
    /// so it only works with [`Sshd::ssh_command_with_config`], whose config
    /// file defines the `gitfeed-test` host.
    pub fn scp_url(&self, repo: &Path) -> String {
        format!("{HOST_ALIAS}:{}", absolute(repo).display())
    }

    /// The ssh command for git's `core.sshCommand` / `GIT_SSH_COMMAND`
    /// when using [`Sshd::url`]: the generated key, the generated
    /// known_hosts checked strictly, no prompts, and no user or system ssh
    /// configuration (`-F /dev/null`).
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR",
            shell_quote(&self.client_key.to_string_lossy()),
            shell_quote(&self.known_hosts.to_string_lossy()),
        )
    }

    /// The ssh command for [`Sshd::scp_url`]: reads [`Sshd::ssh_config`],
    /// which maps the `gitfeed-test` host to this server.
    pub fn ssh_command_with_config(&self) -> String {
        format!(
            "ssh -F {} -o BatchMode=yes",
            shell_quote(&self.ssh_config.to_string_lossy())
        )
    }

    /// The client private key (ed25519, no passphrase).
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The known_hosts file holding this server's host key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// The ssh client config that defines the `gitfeed-test` host.
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// What sshd logged so far (errors only).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        kill_tree(&mut self.child);
    }
}

fn sshd_config(port: u16, host_key: &Path, pid_file: &Path, authorized_keys: &Path) -> String {
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         AddressFamily inet\n\
         HostKey {host_key}\n\
         PidFile {pid_file}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin yes\n\
         StrictModes no\n\
         UsePAM no\n\
         LogLevel ERROR\n\
         # git sends the protocol version in this variable; without it ssh\n\
         # fetches silently fall back to protocol v0.\n\
         AcceptEnv GIT_PROTOCOL\n\
         PrintMotd no\n\
         PrintLastLog no\n\
         X11Forwarding no\n\
         AllowTcpForwarding no\n\
         UseDNS no\n\
         # Parallel tests may open many connections at once.\n\
         MaxStartups 100\n",
        host_key = config_quote(host_key),
        pid_file = config_quote(pid_file),
        authorized_keys = config_quote(authorized_keys),
    )
}

/// A path for an OpenSSH config file, which splits values on whitespace
/// unless they are double-quoted.
fn config_quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.contains(char::is_whitespace) {
        format!("\"{text}\"")
    } else {
        text.into_owned()
    }
}

fn keygen(key: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(key)
        .output()
        .expect("run ssh-keygen (is openssh-client installed?)");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(out.status.success(), "id -un failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .expect("read the current directory")
            .join(path)
    }
}
