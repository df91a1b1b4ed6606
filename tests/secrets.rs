//! Private repositories: HTTPS credentials that never leak, ssh keys and host keys.

use std::process::Command;
use std::time::Duration;

use gitfeed::{Auth, ErrorKind, SourceState, sync_once};

use crate::harness::{Running, quick_source};
use crate::util::{HttpServer, Remote, Sshd, unique_dir};

const PATIENCE: Duration = Duration::from_secs(20);

fn basic(user: &str, password: &str) -> String {
    // The same encoding the test expects on the wire, computed independently with base64(1).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' '{user}:{password}' | base64 -w0"))
        .output()
        .expect("base64");
    format!("Basic {}", String::from_utf8(out.stdout).expect("utf-8"))
}

/// Every place a secret could leak to: the cache (including its git config), events, and
/// the status and logs of a CLI run.
fn assert_nowhere(secret: &str, cache: &std::path::Path, texts: &[&str]) {
    for text in texts {
        assert!(!text.contains(secret), "the secret leaked into: {text}");
    }
    let out = Command::new("grep")
        .args(["-rl", secret])
        .arg(cache)
        .output()
        .expect("grep");
    assert!(
        out.stdout.is_empty(),
        "the secret is in the cache: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn basic_auth_from_the_url_is_used_and_never_shown() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    server.require_auth(&[&basic("agent", "pa55-in-url")]);
    let url = server
        .url(remote.name())
        .replace("http://", "http://agent:pa55-in-url@");
    let cache = unique_dir();
    let update = sync_once(cache.path(), &quick_source("s", &url))
        .expect("authenticated")
        .expect("update");
    assert_eq!(update.new, remote.head());
    let event = serde_json::to_string(&update).expect("json");
    assert!(
        update.url.starts_with("http://agent@127.0.0.1"),
        "{}",
        update.url
    );
    // The CLI: events, logs at the chattiest level, and the status output.
    let out = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["watch", &url, "--once", "--cache-dir"])
        .arg(cache.path())
        .env("RUST_LOG", "trace")
        .output()
        .expect("run");
    let status = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["status", "--cache-dir"])
        .arg(cache.path())
        .output()
        .expect("status");
    assert_nowhere(
        "pa55-in-url",
        cache.path(),
        &[
            &event,
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
            &String::from_utf8_lossy(&status.stdout),
        ],
    );
}

#[test]
fn wrong_password_is_refused_clearly() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    server.require_auth(&[&basic("agent", "right")]);
    std::env::var("GITFEED_TEST_NEVER_SET").expect_err("not set");
    let mut source = quick_source("s", &server.url(remote.name()));
    let secrets = unique_dir();
    source.auth = Some(Auth::password_file(
        "agent",
        write_secret(&secrets, "wrong"),
    ));
    let cache = unique_dir();
    let err = sync_once(cache.path(), &source).expect_err("refused");
    assert!(
        err.to_string().contains("401") || err.to_string().contains("authentication"),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong"), "{err}");
    // A missing environment variable is a configuration mistake: permanent.
    source.auth = Some(Auth::token_env("GITFEED_TEST_NEVER_SET"));
    let err = sync_once(cache.path(), &source).expect_err("no token");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("GITFEED_TEST_NEVER_SET"), "{err}");
}

/// Writes `text` to a secret file in `dir`.
fn write_secret(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{text}\n")).expect("write secret");
    path
}

#[test]
fn rotated_token_file_takes_effect_without_a_restart() {
    let remote = Remote::new();
    let server = HttpServer::start(&remote.root());
    server.require_auth(&["Bearer token-one"]);
    let secrets = unique_dir();
    let token_file = write_secret(&secrets, "token-one");
    let mut source = quick_source("t", &server.url(remote.name()));
    source.auth = Some(Auth::token_file(token_file.clone()));
    source.backoff_initial = Duration::from_millis(20);
    source.backoff_max = Duration::from_millis(50);
    let feed = Running::start(vec![source]);
    let first = feed.update(PATIENCE);
    feed.handle.acknowledge("t", &first.new).expect("running");

    // The server rotates: the old token is refused, and the feed keeps trying (a file may be
    // rewritten) rather than giving up.
    server.require_auth(&["Bearer token-two"]);
    let state = feed.state(PATIENCE);
    assert_eq!(state.state, SourceState::Backoff, "{state:?}");
    let new = remote.commit(&[("rotated.txt", Some("r\n"))], "after rotation");
    std::fs::write(&token_file, "token-two\n").expect("rotate");
    let update = loop {
        match feed.next(PATIENCE, "the update after rotation") {
            gitfeed::Event::Update(update) => break update,
            gitfeed::Event::State(state) => {
                assert_eq!(state.state, SourceState::Backoff, "{state:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(update.new, new);
    let cache = feed.cache_dir().to_owned();
    let mut seen = Vec::new();
    while let Ok(event) = feed.events.try_recv() {
        seen.push(serde_json::to_string(&event).expect("json"));
    }
    let statuses = serde_json::to_string(&gitfeed::status(&cache).expect("status")).expect("json");
    let texts: Vec<&str> = seen
        .iter()
        .map(String::as_str)
        .chain([statuses.as_str()])
        .collect();
    assert_nowhere("token-one", &cache, &texts);
    assert_nowhere("token-two", &cache, &texts);
    assert!(server.seen_auth().iter().any(|a| a == "Bearer token-two"));
    feed.stop();
}

fn ssh_source(sshd: &Sshd, remote: &Remote) -> gitfeed::Source {
    let mut source = quick_source("s", &sshd.url(&remote.bare_path()));
    // Only the key and the known_hosts file: no ssh config of the user or the system.
    source.ssh_command = Some("ssh -F /dev/null".into());
    source.ssh_key = Some(sshd.client_key().to_owned());
    source.known_hosts = Some(sshd.known_hosts().to_owned());
    source.timeout = Duration::from_secs(10);
    source
}

#[test]
fn ssh_with_a_known_host() {
    let remote = Remote::new();
    let sshd = Sshd::start();
    let cache = unique_dir();
    let update = sync_once(cache.path(), &ssh_source(&sshd, &remote))
        .expect("sync")
        .expect("update");
    assert_eq!(update.new, remote.head());
}

#[test]
fn ssh_unknown_host_is_permanent_and_names_it() {
    let remote = Remote::new();
    let sshd = Sshd::start();
    let empty = unique_dir();
    let mut source = ssh_source(&sshd, &remote);
    source.known_hosts = Some(empty.path().join("known_hosts"));
    std::fs::write(source.known_hosts.as_ref().expect("set"), "").expect("empty known_hosts");
    let err = sync_once(unique_dir().path(), &source).expect_err("unknown host");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("127.0.0.1:{}", sshd.port())),
        "{err}"
    );
}

#[test]
fn ssh_changed_host_key_is_permanent() {
    let remote = Remote::new();
    let sshd = Sshd::start();
    let dir = unique_dir();
    let other = dir.path().join("other");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let other_key = std::fs::read_to_string(other.with_extension("pub")).expect("public key");
    let known = dir.path().join("known_hosts");
    let key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port(), key.join(" ")),
    )
    .expect("write");
    let mut source = ssh_source(&sshd, &remote);
    source.known_hosts = Some(known);
    let err = sync_once(unique_dir().path(), &source).expect_err("changed host key");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("host key"), "{err}");
}

#[test]
fn ssh_key_with_a_passphrase_fails_without_waiting() {
    let remote = Remote::new();
    let sshd = Sshd::start();
    let dir = unique_dir();
    let locked = dir.path().join("locked");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "a passphrase", "-f"])
        .arg(&locked)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    let mut source = ssh_source(&sshd, &remote);
    source.ssh_key = Some(locked);
    let started = std::time::Instant::now();
    let err = sync_once(unique_dir().path(), &source).expect_err("no usable key");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(
        err.reason(),
        gitfeed::Reason::AuthenticationRefused,
        "{err}"
    );
    assert!(err.to_string().contains("refused authentication"), "{err}");
    assert!(
        err.detail()
            .is_some_and(|detail| detail.to_lowercase().contains("permission denied")),
        "{err:?}"
    );
}

/// A signing key and an allowed-signers file naming it, plus a second key nobody allowed.
struct Signers {
    dir: tempfile::TempDir,
}

impl Signers {
    fn new() -> Signers {
        let dir = unique_dir();
        for name in ["trusted", "stranger"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.path().join(name))
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        }
        let public = std::fs::read_to_string(dir.path().join("trusted.pub")).expect("public key");
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        std::fs::write(
            dir.path().join("allowed_signers"),
            format!("release@example.org namespaces=\"git\" {}\n", key.join(" ")),
        )
        .expect("allowed signers");
        Signers { dir }
    }

    fn verify(&self, all_commits: bool) -> gitfeed::Verify {
        serde_json::from_value(serde_json::json!({
            "allowed_signers": self.dir.path().join("allowed_signers"),
            "all_commits": all_commits,
        }))
        .expect("verify settings")
    }

    /// Commits on the remote's main, signed with `key` (`None`: unsigned); returns the id.
    fn commit(&self, remote: &Remote, file: &str, key: Option<&str>) -> String {
        std::fs::write(remote.work_path().join(file), file).expect("write");
        remote.git(&["add", "-A"]);
        let mut args = vec!["-c", "gpg.format=ssh"];
        let signing;
        if let Some(key) = key {
            signing = format!("user.signingkey={}", self.dir.path().join(key).display());
            args.extend(["-c", &signing, "commit", "-q", "-S", "-m", file]);
        } else {
            args.extend(["commit", "-q", "-m", file]);
        }
        remote.git(&args);
        remote.git(&["push", "-q", "origin", "HEAD:refs/heads/main"]);
        remote.head()
    }
}

#[test]
fn only_commits_signed_by_an_allowed_signer_are_delivered() {
    let remote = Remote::new();
    let signers = Signers::new();
    let good = signers.commit(&remote, "a.txt", Some("trusted"));
    let mut source = quick_source("v", &remote.file_url());
    source.verify = Some(signers.verify(false));
    source.interval = Duration::from_secs(3600);
    let feed = Running::start(vec![source]);
    assert_eq!(feed.update(PATIENCE).new, good);

    for (file, key, reason) in [
        ("b.txt", Some("stranger"), "not in the allowed signers file"),
        ("c.txt", None, "commit is not signed"),
    ] {
        let refused = signers.commit(&remote, file, key);
        feed.handle.trigger("v").expect("running");
        let warning = feed.warning(PATIENCE);
        assert_eq!(warning.commit, None, "no update follows a refusal");
        let said = warning.message;
        assert!(said.contains(&refused) && said.contains(reason), "{said}");
        feed.assert_quiet(Duration::from_millis(300));
    }
    // A good commit on top is delivered, starting from the last good one.
    let fixed = signers.commit(&remote, "d.txt", Some("trusted"));
    feed.handle.trigger("v").expect("running");
    let update = feed.update(PATIENCE);
    assert_eq!(
        (update.old.as_deref(), update.new.as_str()),
        (Some(good.as_str()), fixed.as_str())
    );
    feed.stop();
}

#[test]
fn all_commits_mode_refuses_an_unsigned_commit_in_between() {
    let remote = Remote::new();
    let signers = Signers::new();
    let good = signers.commit(&remote, "a.txt", Some("trusted"));
    let cache = unique_dir();
    let mut source = quick_source("v", &remote.file_url());
    source.verify = Some(signers.verify(true));
    let first = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    assert_eq!(first.new, good);
    gitfeed::acknowledge(cache.path(), &source, &good).expect("ack");
    let sneaked = signers.commit(&remote, "b.txt", None);
    signers.commit(&remote, "c.txt", Some("trusted"));
    assert_eq!(
        sync_once(cache.path(), &source).expect("nothing trusted to deliver"),
        None
    );
    // Verifying only the tip would have let it through.
    source.verify = Some(signers.verify(false));
    let update = sync_once(cache.path(), &source)
        .expect("sync")
        .expect("update");
    assert!(
        update.changes.iter().any(|c| c.path == "b.txt"),
        "{sneaked} is included"
    );
}

#[test]
fn tampered_commit_is_refused() {
    let remote = Remote::new();
    let signers = Signers::new();
    let signed = signers.commit(&remote, "a.txt", Some("trusted"));
    // Rewrite the signed commit's message, keeping its signature: the payload changes.
    let raw = remote.git_bare(&["cat-file", "commit", &signed]);
    let tampered_text = raw.replace("a.txt", "a.txt (tampered)");
    let mut child = Command::new("git")
        .current_dir(remote.bare_path())
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(tampered_text.as_bytes())
        .expect("write");
    let tampered = String::from_utf8(child.wait_with_output().expect("git").stdout).expect("utf-8");
    let tampered = tampered.trim();
    crate::util::git_in(
        &remote.bare_path(),
        &["update-ref", "refs/heads/main", tampered],
    );
    let mut source = quick_source("v", &remote.file_url());
    source.verify = Some(signers.verify(false));
    let cache = unique_dir();
    assert_eq!(
        sync_once(cache.path(), &source).expect("nothing to deliver"),
        None
    );
}
