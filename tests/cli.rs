//! The `gitfeed` command line.

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};

use crate::util::{Remote, unique_dir};

fn gitfeed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gitfeed"))
}

#[test]
fn help_documents_every_flag() {
    let out = gitfeed().arg("--help").output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--branch",
        "--name",
        "--cache-dir",
        "--interval",
        "--timeout",
        "--backoff-initial",
        "--backoff-max",
        "--max-failures",
        "--depth",
        "--ssh-command",
        "--mirror",
        "--ssh-key",
        "--known-hosts",
        "--token-file",
        "--token-env",
        "--username",
        "--password-file",
        "--password-env",
        "--ca-file",
        "--allowed-signers",
        "--verify-all-commits",
        "--insecure-skip-tls-verify",
        "gitfeed status",
        "gitfeed gc",
        "--unused-for",
        "SIGHUP",
        "--dir",
        "--include",
        "--exclude",
        "--ext",
        "--contents",
        "--contents-limit",
        "--checkout",
        "--keep-snapshots",
        "--index-threads",
        "--once",
        "--list-on-start",
        "--exec",
        "--exec-timeout",
        "GITFEED_CHECKOUT",
        "gitfeed run",
        "--config",
        "RUST_LOG",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for args in [
        vec![],
        vec!["watch"],
        vec!["watch", "/x", "--interval", "soon"],
        vec!["watch", "/x", "--interval", "0s"],
        vec!["watch", "ftp://h/x"],
        vec!["watch", "/x", "--frobnicate"],
        vec!["run"],
        vec!["run", "--config"],
        vec!["run", "--config", "c.json", "extra"],
        vec!["status", "--frobnicate"],
        vec!["status", "--json=yes"],
        vec!["gc", "--unused-for", "soon"],
        vec!["gc", "--table"],
    ] {
        let out = gitfeed().args(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("gitfeed: "), "{args:?}: {stderr}");
        assert!(
            stderr.ends_with("(see `gitfeed --help`)\n"),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// `watch --help` is the whole usage text; `run`, `status` and `gc` add their own options to it.
#[test]
fn each_command_has_help() {
    let help = |args: &[&str]| {
        let out = gitfeed().args(args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let whole = help(&["--help"]);
    assert_eq!(help(&["watch", "--help"]), whole);
    assert_eq!(help(&["watch", "/x", "-h"]), whole);
    for (command, options) in [
        ("run", &["--config <FILE>", "--cache-dir <D>"][..]),
        ("status", &["--cache-dir <D>", "--json", "--table"]),
        ("gc", &["--cache-dir <D>", "--unused-for <T>"]),
    ] {
        let text = help(&[command, "--help"]);
        let own = format!("\nOptions of `gitfeed {command}`:\n");
        let (before, after) = text.split_once(&own).expect("its options");
        assert!(whole.starts_with(before), "{command}");
        let (section, tail) = after.split_once("\n\n").expect("the rest");
        assert!(whole.ends_with(tail), "{command}");
        for option in options {
            assert!(
                section
                    .lines()
                    .any(|line| line.starts_with(&format!("  {option} "))),
                "{command} --help does not list {option}: {section}"
            );
        }
    }
}

#[test]
fn version_as_a_flag_and_a_command() {
    for arg in ["--version", "-V", "version"] {
        let out = gitfeed().arg(arg).output().expect("run");
        assert!(out.status.success(), "{arg}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("gitfeed {}\n", env!("CARGO_PKG_VERSION")),
            "{arg}"
        );
        assert!(out.stderr.is_empty(), "{arg}");
    }
}

#[test]
fn once_prints_the_update_then_nothing() {
    let remote = Remote::new();
    let cache = unique_dir();
    let once = || {
        gitfeed()
            .args(["watch", &remote.file_url(), "--once", "--cache-dir"])
            .arg(cache.path())
            .output()
            .expect("run")
    };
    let out = once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1);
    let event: gitfeed::Event = serde_json::from_str(stdout.trim()).expect("an event");
    assert!(matches!(event, gitfeed::Event::Update(ref u) if u.new == remote.head()));

    let out = once();
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "nothing new: nothing printed");
}

/// The README's first command, `gitfeed watch .`, run in a working copy (with `--once`).
#[test]
fn watch_dot_follows_the_working_copy() {
    let remote = Remote::new();
    let cache = unique_dir();
    let out = gitfeed()
        .current_dir(remote.work_path())
        .args(["watch", ".", "--once", "--cache-dir"])
        .arg(cache.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let event: gitfeed::Event = serde_json::from_str(stdout.trim()).expect("an event");
    assert!(matches!(event, gitfeed::Event::Update(ref u) if u.new == remote.head()));
}

#[test]
fn once_fails_with_one_line() {
    let remote = Remote::new();
    let cache = unique_dir();
    let out = gitfeed()
        .args([
            "watch",
            &remote.file_url(),
            "--once",
            "--branch",
            "nope",
            "--cache-dir",
        ])
        .arg(cache.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("branch `nope` not found"), "{stderr}");
}

/// `gitfeed watch` of `url` as source `name`, polling every `interval`, and its stdout lines.
fn spawn_watch(
    url: &str,
    name: &str,
    interval: &str,
    cache: &std::path::Path,
) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = gitfeed()
        .args([
            "watch",
            url,
            "--name",
            name,
            "--interval",
            interval,
            "--cache-dir",
        ])
        .arg(cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

#[test]
fn watch_streams_updates_as_lines() {
    let remote = Remote::new();
    let cache = unique_dir();
    let (mut child, mut lines) = spawn_watch(&remote.file_url(), "w", "100ms", cache.path());
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["source"], "w");
    let new = remote.commit(&[("n.txt", Some("n\n"))], "n");
    let second: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(second["new"], new.as_str());
    assert_eq!(second["old"], first["new"]);
    child.kill().expect("kill");
    child.wait().expect("reap");
}

#[test]
fn status_prints_each_source() {
    let remote = Remote::new();
    let cache = unique_dir();
    let out = gitfeed()
        .args([
            "watch",
            &remote.file_url(),
            "--once",
            "--name",
            "s",
            "--cache-dir",
        ])
        .arg(cache.path())
        .output()
        .expect("run");
    assert!(out.status.success());
    // A one-shot sync keeps its status (see `once_writes_the_status_like_watch`); so does a
    // short watch.
    let (mut child, mut lines) = spawn_watch(&remote.file_url(), "w", "1h", cache.path());
    let _ = lines.next();
    let status_out = || {
        gitfeed()
            .args(["status", "--cache-dir"])
            .arg(cache.path())
            .output()
            .expect("run status")
    };
    // The status is written once the first attempt has ended, the acknowledgement once the
    // update's line was flushed. The one-shot source `s` has acknowledged it already.
    let acknowledged = format!("\"acknowledged\":\"{}\"", remote.head());
    let watched_acknowledged = || {
        String::from_utf8_lossy(&status_out().stdout)
            .lines()
            .any(|line| line.contains("\"source\":\"w\"") && line.contains(&acknowledged))
    };
    crate::util::settle(
        || usize::from(!watched_acknowledged()),
        0,
        std::time::Duration::from_secs(10),
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    let out = status_out();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let all: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("json"))
        .collect();
    // One line per source, sorted by name.
    assert_eq!(all.len(), 2, "{text}");
    assert_eq!(all[0]["source"], "s");
    let status = &all[1];
    assert_eq!(status["source"], "w");
    assert_eq!(status["state"], "idle");
    assert_eq!(status["current"], remote.head().as_str());
    assert_eq!(status["acknowledged"], remote.head().as_str());
    let bad = gitfeed().args(["status", "--bogus"]).output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_hung_local_helper_is_killed_with_its_children_at_the_deadline() {
    let remote = Remote::new();
    let cache = unique_dir();
    let bin = unique_dir();
    // A git-upload-pack that starts a child of its own and then never answers.
    let marker = format!("gitfeed-hung-{}", std::process::id());
    let wrapper = bin.path().join("git-upload-pack");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nsh -c 'sleep 300; : {marker}' &\nexec sh -c 'sleep 300; : {marker}'\n"),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = std::time::Instant::now();
    let out = gitfeed()
        .args([
            "watch",
            &remote.file_url(),
            "--once",
            "--timeout",
            "1s",
            "--cache-dir",
        ])
        .arg(cache.path())
        .env("PATH", path)
        .output()
        .expect("run");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{out:?}"
    );
    assert!(
        took < std::time::Duration::from_millis(2500),
        "the attempt took {took:?}"
    );
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&marker))
        .collect();
    assert!(
        survivors.is_empty(),
        "helpers outlived the attempt: {survivors:?}"
    );
}

#[test]
fn gc_removes_an_unused_clone_and_prints_what_it_did() {
    let remote = Remote::new();
    let cache = unique_dir();
    let once = || {
        gitfeed()
            .args([
                "watch",
                &remote.file_url(),
                "--once",
                "--name",
                "g",
                "--cache-dir",
            ])
            .arg(cache.path())
            .output()
            .expect("run")
    };
    let first = once();
    assert!(first.status.success());
    assert!(!first.stdout.is_empty(), "the first run prints the update");
    let gc = |unused_for: &str| {
        let out = gitfeed()
            .args(["gc", "--unused-for", unused_for, "--cache-dir"])
            .arg(cache.path())
            .output()
            .expect("run gc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        report
    };
    let kept = gc("1h");
    assert_eq!(kept["removed"].as_array().map(Vec::len), Some(0), "{kept}");
    let removed = gc("0s");
    assert_eq!(
        removed["removed"].as_array().map(Vec::len),
        Some(1),
        "{removed}"
    );
    assert!(
        removed["bytes_freed"]
            .as_u64()
            .is_some_and(|bytes| bytes > 0)
    );
    // The acknowledged update is not printed again after the clone is rebuilt.
    let again = once();
    assert!(again.status.success());
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let bad = gitfeed()
        .args(["gc", "--unused-for", "soon"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
}

/// `watch --once` writes the source's status as `watch` does, after a success and after a
/// failure, so `gitfeed status` shows it afterwards; failures count up across runs.
#[test]
fn once_writes_the_status_like_watch() {
    let remote = Remote::new();
    let cache = unique_dir();
    let once = |name: &str, url: &str, extra: &[&str]| {
        gitfeed()
            .args(["watch", url, "--once", "--name", name, "--timeout", "10s"])
            .args(extra)
            .arg("--cache-dir")
            .arg(cache.path())
            .output()
            .expect("run")
    };
    let status = || -> Vec<serde_json::Value> {
        let out = gitfeed()
            .args(["status", "--cache-dir"])
            .arg(cache.path())
            .output()
            .expect("run status");
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).expect("json"))
            .collect()
    };
    let of = |all: &[serde_json::Value], name: &str| {
        all.iter()
            .find(|status| status["source"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no status for {name}: {all:?}"))
    };

    let url = remote.file_url();
    assert!(once("good", &url, &[]).status.success());
    let good = of(&status(), "good");
    assert_eq!(good["state"], "idle", "{good}");
    assert_eq!(good["attempt"], 0, "{good}");
    assert_eq!(good["url"], url.as_str(), "{good}");
    assert_eq!(good["current"], remote.head().as_str(), "{good}");
    assert_eq!(good["acknowledged"], remote.head().as_str(), "{good}");
    assert!(good["last_success_ms"].as_u64().is_some(), "{good}");
    assert_eq!(good.get("last_error"), None, "{good}");

    // A permanent failure: `failed`, with the reason and the one-line error the run printed.
    for attempt in 1..=2 {
        let out = once("bad", &url, &["--branch", "nope"]);
        assert_eq!(out.status.code(), Some(1));
        let printed = String::from_utf8_lossy(&out.stderr).trim_end().to_owned();
        let bad = of(&status(), "bad");
        assert_eq!(bad["state"], "failed", "{bad}");
        assert_eq!(bad["attempt"], attempt, "{bad}");
        assert_eq!(bad["reason"], "ref_not_found", "{bad}");
        let error = bad["last_error"].as_str().expect("last_error");
        assert!(
            error.starts_with(&format!("bad ({url}): branch `nope` not found")),
            "{bad}"
        );
        assert_eq!(printed, format!("gitfeed: {error}"));
        assert_eq!(bad.get("last_success_ms"), None, "{bad}");
    }

    // A failure that may clear: `backoff`, and the last success is kept.
    let refused = format!("git://127.0.0.1:{}/repo.git", crate::util::free_port());
    let out = once("good", &refused, &[]);
    assert_eq!(out.status.code(), Some(1));
    let all = status();
    let flaky = all
        .iter()
        .find(|status| status["url"] == refused.as_str())
        .unwrap_or_else(|| panic!("no status for {refused}: {all:?}"));
    assert_eq!(flaky["state"], "backoff", "{flaky}");
    assert_eq!(flaky["attempt"], 1, "{flaky}");
    assert_eq!(flaky["reason"], "connection_refused", "{flaky}");
    assert!(
        flaky["last_error"]
            .as_str()
            .is_some_and(|error| error.starts_with(&format!("good ({refused}): could not connect"))),
        "{flaky}"
    );
    assert!(
        flaky["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty()),
        "{flaky}"
    );
    // A name is a source's identity in a cache: the latest settings of `good` released the
    // earlier ones, status and all.
    assert!(
        !all.iter()
            .any(|status| status["url"] == url.as_str() && status["source"] == "good"),
        "the earlier settings of good are still there: {all:?}"
    );
}

/// `watch --once` prints what an update left out as `watch` does: a warning line before the
/// update it concerns.
#[test]
fn once_prints_warnings_before_the_update() {
    let remote = Remote::new();
    let other = Remote::named("other.git");
    std::fs::create_dir_all(remote.work_path().join("deps/lib")).expect("submodule directory");
    remote.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{},deps/lib", other.head()),
    ]);
    let new = remote.commit(&[], "a submodule");
    let cache = unique_dir();
    let out = gitfeed()
        .args(["watch", &remote.file_url(), "--once", "--cache-dir"])
        .arg(cache.path())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let events: Vec<gitfeed::Event> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event"))
        .collect();
    let [
        gitfeed::Event::Warning(warning),
        gitfeed::Event::Update(update),
    ] = &events[..]
    else {
        panic!("expected a warning, then the update: {stdout}");
    };
    assert_eq!(warning.commit.as_deref(), Some(new.as_str()));
    assert!(
        warning.message.contains("`deps/lib` (added)"),
        "{warning:?}"
    );
    assert_eq!(update.new, new);
    assert!(update.changes.iter().all(|c| c.path != "deps/lib"));
}

#[test]
fn an_argument_that_is_not_utf8_is_a_usage_error() {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::OsStr::from_bytes(b"/srv/\xffrepo");
    for command in [
        &["watch"][..],
        &["run", "--config"],
        &["status", "--cache-dir"],
    ] {
        let out = gitfeed().args(command).arg(path).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{command:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("is not valid UTF-8"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// Idle, `gitfeed watch` holds two threads: the feed's, which also waits for signals, and the
/// printer's. Signals still act: SIGHUP polls at once, SIGTERM ends it with status 0.
#[test]
fn watch_idles_on_two_threads_and_acts_on_signals() {
    let remote = Remote::new();
    let cache = unique_dir();
    // An hour between polls: only the signal polls within the test.
    let (mut child, mut lines) = spawn_watch(&remote.file_url(), "w", "1h", cache.path());
    let first: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["new"], remote.head().as_str());
    let pid = child.id();
    let idle = || crate::util::threads_of(pid);
    // The attempt's own thread ends just after the update is printed.
    let threads = crate::util::settle(idle, 2, std::time::Duration::from_secs(10));
    assert!(threads <= 2, "{threads} threads while idle");

    let new = remote.commit(&[("n.txt", Some("n\n"))], "n");
    let signal = |signal| {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    };
    signal(rustix::process::Signal::HUP);
    let second: serde_json::Value =
        serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json");
    assert_eq!(second["new"], new.as_str());
    let threads = crate::util::settle(idle, 2, std::time::Duration::from_secs(10));
    assert!(threads <= 2, "{threads} threads while idle after SIGHUP");

    signal(rustix::process::Signal::TERM);
    let status = child.wait().expect("reap");
    assert!(status.success(), "{status:?}");
    assert!(lines.next().is_none(), "stdout closed with nothing more");
}
