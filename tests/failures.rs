//! Every fault the test servers can inject, on every transport that can carry it: the failure
//! has the same reason, and so the same class, whatever the transport.

use std::time::Duration;

use gitfeed::{ErrorKind, Reason, Source};

use crate::harness::{Running, quick_source};
use crate::util::{
    Fault, FaultServer, GitDaemon, HttpServer, HttpsServer, Remote, Sshd, free_port, unique_dir,
};

/// A name that never resolves (RFC 6761 reserves `.invalid`).
const UNRESOLVABLE: &str = "gitfeed-test.invalid";

/// One fault on one transport, and what it must come to.
struct Case {
    transport: &'static str,
    fault: &'static str,
    source: Source,
    reason: Reason,
    class: ErrorKind,
}

/// What each fault must come to, whatever the transport.
fn expected(fault: &str) -> (Reason, ErrorKind) {
    match fault {
        "unresolvable host" => (Reason::NameResolution, ErrorKind::Transient),
        "refused" => (Reason::ConnectionRefused, ErrorKind::Transient),
        "reset" => (Reason::ConnectionReset, ErrorKind::Transient),
        "hang" => (Reason::Timeout, ErrorKind::Transient),
        "server error" => (Reason::ServerError, ErrorKind::Transient),
        "missing repository" => (Reason::RepositoryNotFound, ErrorKind::Permanent),
        "missing ref" => (Reason::RefNotFound, ErrorKind::Permanent),
        "commit not served" => (Reason::ObjectNotAdvertised, ErrorKind::Permanent),
        "authentication refused" => (Reason::AuthenticationRefused, ErrorKind::Permanent),
        "unknown host key" => (Reason::HostKey, ErrorKind::Permanent),
        other => panic!("no expectation for {other}"),
    }
}

/// The plain words each fault must be told in, whatever the transport said underneath.
fn told(fault: &str) -> String {
    match fault {
        "unresolvable host" => format!("could not resolve host {UNRESOLVABLE}"),
        "refused" => "could not connect to 127.0.0.1:".into(),
        "reset" => "was cut off".into(),
        "hang" => "timed out after 3s".into(),
        "server error" => "reported an error".into(),
        "missing repository" => "there is no git repository at this URL".into(),
        "missing ref" => "branch `no-such-branch` not found".into(),
        "commit not served" => {
            format!("the remote does not serve the pinned commit {ABSENT_COMMIT}")
        }
        "authentication refused" => "the remote refused authentication".into(),
        "unknown host key" => "is unknown or has changed; check known_hosts".into(),
        other => panic!("no wording for {other}"),
    }
}

/// What a transport says underneath, which a person should not have to read first.
const LAYERS: [&str; 5] = [
    "Transport handshake failed",
    "An IO error occurred",
    "failed to fill whole buffer",
    "Could not decode server reply",
    "os error",
];

/// Checks that `message`, the error of source `name` at `url`, is one line that names the
/// source and the URL and then says `words`; returns what is wrong, if anything.
fn wording_problem(message: &str, name: &str, url: &str, words: &str) -> Option<String> {
    let named = format!("{name} ({url}): ");
    if message.contains(['\n', '\r']) {
        Some("more than one line".into())
    } else if !message.starts_with(&named) {
        Some(format!("does not start with {named:?}"))
    } else if !message.contains(words) {
        Some(format!("does not say {words:?}"))
    } else {
        LAYERS
            .iter()
            .find(|layer| message.contains(*layer))
            .map(|layer| format!("carries {layer:?}"))
    }
}

/// A commit id no repository here has.
const ABSENT_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Servers that must outlive the cases that use them.
struct Servers {
    remote: Remote,
    daemon: GitDaemon,
    http: HttpServer,
    http_500: HttpServer,
    http_reset: HttpServer,
    http_silent: HttpServer,
    http_auth: HttpServer,
    git_500: FaultServer,
    reset: FaultServer,
    silent: FaultServer,
    sshd: Sshd,
}

impl Servers {
    fn start() -> Servers {
        let remote = Remote::new();
        let http_with = |fault: Fault| {
            let server = HttpServer::start(&remote.root());
            server.set_fault(fault);
            server
        };
        let http_auth = HttpServer::start(&remote.root());
        http_auth.require_auth(&["Bearer not-what-the-source-sends"]);
        Servers {
            daemon: GitDaemon::start(&remote.root()),
            http: HttpServer::start(&remote.root()),
            http_500: http_with(Fault::Status500),
            http_reset: http_with(Fault::Reset),
            http_silent: http_with(Fault::Silent),
            http_auth,
            git_500: FaultServer::start(Fault::Status500),
            reset: FaultServer::start(Fault::Reset),
            silent: FaultServer::start(Fault::Silent),
            sshd: Sshd::start(),
            remote,
        }
    }

    /// Every case, as a table: (transport, fault, URL, ssh command, ref).
    fn cases(&self) -> Vec<Case> {
        let remote = &self.remote;
        let name = remote.name();
        let missing_path = remote.root().join("missing.git");
        let missing_path = missing_path.to_string_lossy().into_owned();
        let user = self.sshd.user();
        let ssh = Some(self.sshd.ssh_command());
        // An ssh command that knows no host key at all.
        let ssh_without_host_keys = Some(format!(
            "ssh -F /dev/null -i {} -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes",
            crate::util::shell_quote(&self.sshd.client_key().to_string_lossy())
        ));
        let ssh_at = |port: u16| format!("ssh://{user}@127.0.0.1:{port}/srv/repo.git");
        let bare = remote.bare_path().to_string_lossy().into_owned();
        let table = vec![
            // path and file://
            (
                "path",
                "missing repository",
                missing_path.clone(),
                None,
                None,
            ),
            (
                "path",
                "missing ref",
                bare.clone(),
                None,
                Some("no-such-branch"),
            ),
            (
                "path",
                "commit not served",
                bare.clone(),
                None,
                Some(ABSENT_COMMIT),
            ),
            (
                "file",
                "missing repository",
                format!("file://{missing_path}"),
                None,
                None,
            ),
            (
                "file",
                "missing ref",
                remote.file_url(),
                None,
                Some("no-such-branch"),
            ),
            (
                "file",
                "commit not served",
                remote.file_url(),
                None,
                Some(ABSENT_COMMIT),
            ),
            // git://
            (
                "git",
                "unresolvable host",
                format!("git://{UNRESOLVABLE}/{name}"),
                None,
                None,
            ),
            (
                "git",
                "refused",
                format!("git://127.0.0.1:{}/{name}", free_port()),
                None,
                None,
            ),
            ("git", "reset", self.reset.url(name), None, None),
            ("git", "hang", self.silent.url(name), None, None),
            ("git", "server error", self.git_500.url(name), None, None),
            (
                "git",
                "missing repository",
                self.daemon.url("missing.git"),
                None,
                None,
            ),
            (
                "git",
                "missing ref",
                self.daemon.url(name),
                None,
                Some("no-such-branch"),
            ),
            (
                "git",
                "commit not served",
                self.daemon.url(name),
                None,
                Some(ABSENT_COMMIT),
            ),
            // http://
            (
                "http",
                "unresolvable host",
                format!("http://{UNRESOLVABLE}/{name}"),
                None,
                None,
            ),
            (
                "http",
                "refused",
                format!("http://127.0.0.1:{}/{name}", free_port()),
                None,
                None,
            ),
            ("http", "reset", self.http_reset.url(name), None, None),
            ("http", "hang", self.http_silent.url(name), None, None),
            ("http", "server error", self.http_500.url(name), None, None),
            (
                "http",
                "missing repository",
                self.http.url("missing.git"),
                None,
                None,
            ),
            (
                "http",
                "missing ref",
                self.http.url(name),
                None,
                Some("no-such-branch"),
            ),
            (
                "http",
                "commit not served",
                self.http.url(name),
                None,
                Some(ABSENT_COMMIT),
            ),
            (
                "http",
                "authentication refused",
                self.http_auth.url(name),
                None,
                None,
            ),
            // ssh://
            (
                "ssh",
                "unresolvable host",
                format!("ssh://{UNRESOLVABLE}/{name}"),
                ssh.clone(),
                None,
            ),
            ("ssh", "refused", ssh_at(free_port()), ssh.clone(), None),
            ("ssh", "reset", ssh_at(self.reset.port()), ssh.clone(), None),
            ("ssh", "hang", ssh_at(self.silent.port()), ssh.clone(), None),
            (
                "ssh",
                "missing repository",
                self.sshd.url(std::path::Path::new(&missing_path)),
                ssh.clone(),
                None,
            ),
            (
                "ssh",
                "missing ref",
                self.sshd.url(&remote.bare_path()),
                ssh.clone(),
                Some("no-such-branch"),
            ),
            (
                "ssh",
                "commit not served",
                self.sshd.url(&remote.bare_path()),
                ssh.clone(),
                Some(ABSENT_COMMIT),
            ),
            (
                "ssh",
                "authentication refused",
                self.sshd
                    .url(&remote.bare_path())
                    .replacen(user, "gitfeed-nobody", 1),
                ssh.clone(),
                None,
            ),
            (
                "ssh",
                "unknown host key",
                self.sshd.url(&remote.bare_path()),
                ssh_without_host_keys,
                None,
            ),
            // scp-like
            (
                "scp-like",
                "unresolvable host",
                format!("{user}@{UNRESOLVABLE}:{bare}"),
                ssh.clone(),
                None,
            ),
        ];
        table
            .into_iter()
            .map(|(transport, fault, url, ssh_command, reference)| {
                let mut source = Source::new("f", url);
                source.ssh_command = ssh_command;
                source.reference = reference.map(str::to_owned);
                // A hang costs the whole timeout; every other case has room on a loaded machine.
                source.timeout = if fault == "hang" {
                    Duration::from_secs(3)
                } else {
                    Duration::from_secs(20)
                };
                let (reason, class) = expected(fault);
                Case {
                    transport,
                    fault,
                    source,
                    reason,
                    class,
                }
            })
            .collect()
    }
}

#[test]
fn each_fault_has_one_reason_and_class_on_every_transport() {
    let servers = Servers::start();
    let mut wrong = Vec::new();
    for case in servers.cases() {
        let cache = unique_dir();
        let what = format!("{} on {}", case.fault, case.transport);
        match gitfeed::sync_once(cache.path(), &case.source) {
            Ok(update) => wrong.push(format!("{what}: succeeded with {update:?}")),
            Err(err) => {
                if err.reason() != case.reason || err.kind() != case.class {
                    wrong.push(format!(
                        "{what}: {} ({:?}), expected {} ({:?}): {}",
                        err.reason(),
                        err.kind(),
                        case.reason,
                        case.class,
                        err
                    ));
                }
                let words = told(case.fault);
                if let Some(problem) =
                    wording_problem(&err.to_string(), "f", &case.source.url, &words)
                {
                    wrong.push(format!("{what}: the message {problem}: {}", err));
                }
                if err.detail().is_some_and(str::is_empty) {
                    wrong.push(format!("{what}: an empty detail"));
                }
                assert_eq!(err.kind(), err.reason().kind(), "{what}: {err}");
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// The reason reaches the consumer in the state event, and the status beside the message.
#[test]
fn state_events_and_status_carry_the_reason() {
    let url = format!("git://{UNRESOLVABLE}/repo.git");
    let feed = Running::start(vec![quick_source("r", &url)]);
    let state = feed.state(Duration::from_secs(10));
    assert_eq!(state.state, gitfeed::SourceState::Backoff, "{state:?}");
    assert_eq!(state.reason, Some(Reason::NameResolution), "{state:?}");
    let line = serde_json::to_string(&gitfeed::Event::State(state)).expect("serializes");
    assert!(line.contains(r#""reason":"name_resolution""#), "{line}");
    // The status is written as the attempt ends, before its state event is sent.
    let cache = feed.cache_dir().to_owned();
    let status = gitfeed::status(&cache).expect("status");
    assert_eq!(status[0].reason, Some(Reason::NameResolution), "{status:?}");
}

/// The state event and the status tell a failure in one plain line naming the source and its
/// URL without the password, with what happens next in the event and what the transport said
/// apart, as the detail.
#[test]
fn errors_name_the_source_and_url_in_plain_words() {
    let url = format!("http://reader:s3cret@{UNRESOLVABLE}/repo.git");
    let shown = format!("http://reader@{UNRESOLVABLE}/repo.git");
    let mut source = quick_source("policies", &url);
    source.backoff_initial = Duration::from_secs(8);
    source.backoff_max = Duration::from_secs(8);
    let feed = Running::start(vec![source]);
    let state = feed.state(Duration::from_secs(20));
    assert_eq!(state.reason, Some(Reason::NameResolution), "{state:?}");
    let error = state.error.clone().unwrap_or_default();
    let words = format!("could not resolve host {UNRESOLVABLE}; will retry in ");
    if let Some(problem) = wording_problem(&error, "policies", &shown, &words) {
        panic!("the state event's error {problem}: {error}");
    }
    // Jittered below the 8 s the backoff allows.
    let retry_in = state.retry_in_ms.expect("a retry");
    assert!(error.ends_with('s') && retry_in <= 8_000, "{state:?}");
    let detail = state.detail.clone().expect("what curl said");
    assert!(detail.contains(UNRESOLVABLE), "{detail}");
    for text in [&error, &detail] {
        assert!(!text.contains("s3cret"), "{text}");
    }
    let status = gitfeed::status(feed.cache_dir()).expect("status");
    feed.stop();
    let last_error = status[0].last_error.clone().unwrap_or_default();
    assert_eq!(
        last_error,
        format!("policies ({shown}): could not resolve host {UNRESOLVABLE}")
    );
    assert_eq!(status[0].detail.as_deref(), Some(detail.as_str()));
}

/// When the source and its mirrors all fail, the error names the URL that failed last.
#[test]
fn an_error_names_the_mirror_that_failed_last() {
    let primary = format!("git://127.0.0.1:{}/repo.git", free_port());
    let mirror = format!("git://127.0.0.1:{}/repo.git", free_port());
    let mut source = quick_source("m", &primary);
    source.mirrors = vec![mirror.clone()];
    let err = gitfeed::sync_once(unique_dir().path(), &source).expect_err("nothing listens");
    assert_eq!(err.reason(), Reason::ConnectionRefused, "{err}");
    let port = mirror
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next());
    let words = format!("could not connect to 127.0.0.1:{}", port.expect("a port"));
    if let Some(problem) = wording_problem(&err.to_string(), "m", &mirror, &words) {
        panic!("the error {problem}: {err}");
    }
}

/// A server whose certificate no trusted CA signed is a `certificate` failure, permanent; the
/// same server with its CA given is fetched from.
#[test]
fn an_untrusted_certificate_is_a_certificate_failure() {
    let root = unique_dir();
    let remote = Remote::new_in(root.path(), "repo.git");
    let server = HttpsServer::start(root.path());
    let url = server.url("repo.git");
    let mut source = Source::new("f", &url);
    source.timeout = Duration::from_secs(10);
    let err = gitfeed::sync_once(unique_dir().path(), &source).expect_err("the CA is not trusted");
    assert_eq!(
        (err.reason(), err.kind()),
        (Reason::Certificate, ErrorKind::Permanent),
        "{err}"
    );
    assert!(
        err.to_string().starts_with(&format!("f ({url}): ")),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");

    source.ca_file = Some(server.ca_file().to_owned());
    let update = gitfeed::sync_once(unique_dir().path(), &source)
        .expect("the CA is given")
        .expect("a first update");
    assert_eq!(update.new, remote.head());
}

/// A failed source is not a dead end: it is probed again every `failed_interval`, each failed
/// state says when, and the probe that finds the remote fixed delivers and recovers.
#[test]
fn a_failed_source_is_probed_again_and_recovers() {
    const PATIENCE: Duration = Duration::from_secs(20);
    let remote = Remote::new();
    let mut source = quick_source("p", &remote.file_url());
    source.reference = Some("later".into());
    source.failed_interval = Duration::from_millis(300);
    let feed = Running::start(vec![source]);
    let probe_due = |state: &gitfeed::StateChange| {
        assert_eq!(state.state, gitfeed::SourceState::Failed, "{state:?}");
        assert_eq!(state.reason, Some(Reason::RefNotFound), "{state:?}");
        let due = state.retry_in_ms.expect("the next probe is announced");
        assert!((240..=300).contains(&due), "{state:?}");
    };
    let first = feed.state(PATIENCE);
    probe_due(&first);
    assert_eq!(first.attempt, Some(1));
    let error = first.error.clone().unwrap_or_default();
    let words = "branch `later` not found on remote; check --branch; gave up, will probe again in ";
    if let Some(problem) = wording_problem(&error, "p", &remote.file_url(), words) {
        panic!("the failed state's error {problem}: {error}");
    }
    // Still missing at the probe: failed again, counted, with the next probe due.
    let again = feed.state(PATIENCE);
    probe_due(&again);
    assert_eq!(again.attempt, Some(2));

    remote.push_branch("later", "HEAD");
    let update = loop {
        match feed.next(PATIENCE, "the update a probe delivers") {
            gitfeed::Event::Update(update) => break update,
            gitfeed::Event::State(state) => probe_due(&state),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(update.reference, "refs/heads/later");
    assert_eq!(update.new, remote.head());
    let healthy = feed.state(PATIENCE);
    assert_eq!(healthy.state, gitfeed::SourceState::Idle, "{healthy:?}");
    assert_eq!(healthy.reason, None);
    feed.stop();
}
