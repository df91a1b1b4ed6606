//! `examples/policy_agent.rs` run as a process: a decision per commit, a broken commit that
//! leaves the last good policies in force, and restarts that lose nothing.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Remote, unique_dir};

/// How long one decision may take to appear: a poll, a fetch, a snapshot and an evaluation,
/// on a machine busy with other tests.
const DECISION_WITHIN: Duration = Duration::from_secs(30);

/// Allows when the data says the gate is open.
const OPEN_IF_DATA: &str =
    "package policy\n\ndefault allow := false\n\nallow if data.settings.open\n";
/// Allows when the data says the gate is closed.
const OPEN_IF_NOT_DATA: &str =
    "package policy\n\ndefault allow := false\n\nallow if not data.settings.open\n";
/// Does not parse: the rule's body is never closed.
const BROKEN: &str = "package policy\n\nallow if {\n";
const DATA_OPEN: &str = r#"{"settings": {"open": true}}"#;
const DATA_CLOSED: &str = r#"{"settings": {"open": false}}"#;

/// A running policy agent and what it prints.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl Agent {
    fn start(url: &str, state: &Path) -> Agent {
        let mut child = Command::new(crate::util::example("policy_agent"))
            .arg(url)
            .arg("data.policy.allow")
            .arg("--state")
            .arg(state)
            .args(["--interval", "100ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the policy agent");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let errors = lines_of(child.stderr.take().expect("stderr"));
        Agent {
            child,
            lines,
            errors,
        }
    }

    /// The next line on stdout, as JSON.
    fn line(&self, waiting_for: &str) -> Value {
        let line = self
            .lines
            .recv_timeout(DECISION_WITHIN)
            .unwrap_or_else(|_| {
                let stderr: Vec<String> = self.errors.try_iter().collect();
                panic!("no line within {DECISION_WITHIN:?} while waiting for {waiting_for}; stderr: {stderr:?}")
            });
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
    }

    /// Stderr lines until one contains `needle`.
    fn error_mentioning(&self, needle: &str) -> String {
        loop {
            let line = self
                .errors
                .recv_timeout(DECISION_WITHIN)
                .unwrap_or_else(|_| panic!("stderr never mentioned {needle}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Kills the agent at once, as a crash or a power cut would.
    fn kill(mut self) {
        self.child.kill().expect("kill the agent");
        self.child.wait().expect("reap the agent");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `pipe`'s lines on a channel from a thread of its own, so a read never outlasts its
/// deadline.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `line` says the policies of `commit` are in force, with `decision`.
fn assert_decision(line: &Value, commit: &str, decision: bool) {
    assert_eq!(
        line,
        &json!({"commit": commit, "policy": commit, "decision": decision}),
    );
}

#[test]
fn decides_on_every_commit_survives_a_broken_one_and_restarts() {
    let remote = Remote::new();
    let state = unique_dir();
    let url = remote.file_url();

    let open = remote.commit(
        &[
            ("policy/policy.rego", Some(OPEN_IF_DATA)),
            ("data.json", Some(DATA_OPEN)),
        ],
        "open",
    );
    let agent = Agent::start(&url, state.path());
    assert_decision(&agent.line("the first decision"), &open, true);

    // Data flips the decision, then the policy flips it back.
    let closed = remote.commit(&[("data.json", Some(DATA_CLOSED))], "close");
    assert_decision(&agent.line("the data's decision"), &closed, false);
    let inverted = remote.commit(&[("policy/policy.rego", Some(OPEN_IF_NOT_DATA))], "invert");
    assert_decision(&agent.line("the policy's decision"), &inverted, true);

    // A policy that does not parse is reported; the one before stays in force.
    let broken = remote.commit(&[("policy/policy.rego", Some(BROKEN))], "break");
    let line = agent.line("the broken commit's error");
    assert_eq!(line["commit"], broken.as_str(), "{line}");
    assert_eq!(line["policy"], inverted.as_str(), "{line}");
    assert_eq!(line["decision"], true, "{line}");
    let error = line["error"].as_str().expect("an error");
    assert!(error.contains("policy/policy.rego"), "{error}");
    agent.error_mentioning(&broken);
    agent.kill();

    // Fixed while the agent is down. On restart, the state before the fix comes first (the
    // broken commit read again, the last good policies in force), then the fix.
    let fixed = remote.commit(&[("policy/policy.rego", Some(OPEN_IF_DATA))], "fix");
    let agent = Agent::start(&url, state.path());
    let line = agent.line("the restored state");
    assert_eq!(line["restored"], true, "{line}");
    assert_eq!(line["commit"], broken.as_str(), "{line}");
    assert_eq!(line["policy"], inverted.as_str(), "{line}");
    assert_eq!(line["decision"], true, "{line}");
    assert!(line["error"].is_string(), "{line}");
    assert_decision(&agent.line("the fix's decision"), &fixed, false);
    agent.kill();

    // A plain restart: the saved policies, then the commit made while the agent was down.
    let reopened = remote.commit(&[("data.json", Some(DATA_OPEN))], "reopen");
    let agent = Agent::start(&url, state.path());
    assert_eq!(
        agent.line("the restored state"),
        json!({"commit": fixed, "policy": fixed, "decision": false, "restored": true}),
    );
    assert_decision(&agent.line("the reopening's decision"), &reopened, true);
    agent.kill();

    // The agent applied `reopened`, but its acknowledgement was lost in the crash, and the
    // branch went back to the commit acknowledged before it. gitfeed's snapshot still shows
    // `reopened`: without being told, it would see nothing new to send.
    gitfeed::acknowledge(
        state.path().join("cache"),
        &gitfeed::Source::new("policies", url.as_str()),
        &fixed,
    )
    .expect("move the acknowledgement back");
    assert_eq!(remote.force_push_to("HEAD~1"), fixed);
    let agent = Agent::start(&url, state.path());
    assert_eq!(
        agent.line("the restored state"),
        json!({"commit": reopened, "policy": reopened, "decision": true, "restored": true}),
    );
    assert_decision(&agent.line("the rewound branch's decision"), &fixed, false);
}
