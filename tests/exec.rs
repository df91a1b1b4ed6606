//! A source's `exec` command: run for each update, acknowledging it only on exit status 0,
//! and never outliving its run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gitfeed::{Reason, SourceState};

use crate::harness::{Running, quick_source};
use crate::util::{Remote, shell_quote, unique_dir};

const WITHIN: Duration = Duration::from_secs(20);

/// The acknowledged commit recorded in the status of the cache's one source.
fn acknowledged(cache: &Path) -> Option<String> {
    gitfeed::status(cache)
        .expect("status")
        .into_iter()
        .next()
        .and_then(|status| status.acknowledged)
}

/// True while `pid` names a live process (a zombie is not one: it has ended).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .expect("the command wrote its pid")
        .trim()
        .parse()
        .expect("a pid")
}

#[test]
fn a_failing_command_is_retried_until_it_succeeds_and_only_then_acknowledged() {
    let remote = Remote::new();
    let work = unique_dir();
    let count = work.path().join("count");
    let mut source = quick_source("x", &remote.file_url());
    // Fails twice, then succeeds.
    source.exec = Some(format!(
        "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; \
         echo run $n; [ $n -ge 3 ]",
        count = shell_quote(&count.display().to_string())
    ));
    let running = Running::start(vec![source]);
    let head = remote.head();
    for run in 1..=2 {
        let update = running.update(WITHIN);
        assert_eq!(update.new, head);
        assert_eq!(update.old, None, "run {run}: sent again from the start");
        // The consumer's acknowledgement does not count for an exec source.
        running
            .handle
            .acknowledge("x", &update.new)
            .expect("running");
        let state = running.state(WITHIN);
        assert_eq!(state.state, SourceState::Backoff, "{state:?}");
        assert_eq!(state.reason, Some(Reason::ExecFailed));
        let error = state.error.expect("an error");
        assert!(error.contains("exited with status 1"), "{error}");
        assert_eq!(
            state.detail.as_deref(),
            Some(format!("run {run}").as_str()),
            "the command's last output is the detail"
        );
        assert_eq!(acknowledged(running.cache_dir()), None);
    }
    let update = running.update(WITHIN);
    assert_eq!(update.new, head);
    let state = running.state(WITHIN);
    assert_eq!(state.state, SourceState::Idle, "{state:?}");
    crate::util::settle(
        || usize::from(acknowledged(running.cache_dir()).as_deref() != Some(head.as_str())),
        0,
        WITHIN,
    );
    assert_eq!(acknowledged(running.cache_dir()), Some(head.clone()));
    assert_eq!(std::fs::read_to_string(&count).expect("count").trim(), "3");
    // The next update starts from the acknowledged commit.
    let next = remote.commit(&[("b.txt", Some("b\n"))], "b");
    let update = running.update(WITHIN);
    assert_eq!(update.old.as_deref(), Some(head.as_str()));
    assert_eq!(update.new, next);
}

#[test]
fn the_command_gets_the_update_on_stdin_and_in_its_environment() {
    let remote = Remote::new();
    let work = unique_dir();
    let checkout = work.path().join("checkout");
    let out = work.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let mut source = quick_source("envy", &remote.file_url());
    source.checkout = Some(checkout.clone());
    source.exec = Some(format!(
        "cd {out} && cat > stdin.json && env | grep ^GITFEED_ | sort > env.txt && \
         cat \"$GITFEED_CHECKOUT/README.md\" > seen.txt",
        out = shell_quote(&out.display().to_string())
    ));
    let running = Running::start(vec![source]);
    let update = running.update(WITHIN);
    crate::util::settle(
        || usize::from(acknowledged(running.cache_dir()).as_deref() != Some(update.new.as_str())),
        0,
        WITHIN,
    );
    let _ = running.stop();
    let stdin: gitfeed::Update =
        serde_json::from_slice(&std::fs::read(out.join("stdin.json")).expect("stdin"))
            .expect("the update's JSON");
    assert_eq!(stdin, update);
    let snapshot = std::fs::canonicalize(checkout.join("current")).expect("current");
    assert_eq!(
        std::fs::read_to_string(out.join("env.txt")).expect("env"),
        format!(
            "GITFEED_CHECKOUT={}\nGITFEED_NEW={}\nGITFEED_OLD=\nGITFEED_REF={}\nGITFEED_SOURCE=envy\n",
            snapshot.display(),
            update.new,
            update.reference
        )
    );
    assert_eq!(
        std::fs::read(out.join("seen.txt")).expect("seen"),
        std::fs::read(remote.work_path().join("README.md")).expect("README")
    );
}

#[test]
fn a_hanging_command_is_killed_with_its_group_at_the_timeout() {
    let remote = Remote::new();
    let work = unique_dir();
    let leader = work.path().join("leader");
    let child = work.path().join("child");
    let mut source = quick_source("hang", &remote.file_url());
    source.exec_timeout = Duration::from_millis(500);
    source.exec = Some(format!(
        "echo $$ > {leader}; sleep 600 & echo $! > {child}; wait",
        leader = shell_quote(&leader.display().to_string()),
        child = shell_quote(&child.display().to_string()),
    ));
    let running = Running::start(vec![source]);
    let _ = running.update(WITHIN);
    let started = Instant::now();
    let state = running.state(WITHIN);
    assert_eq!(state.state, SourceState::Backoff, "{state:?}");
    assert_eq!(state.reason, Some(Reason::ExecFailed));
    assert!(
        state
            .error
            .as_deref()
            .is_some_and(|error| error.contains("timed out after 500ms")),
        "{state:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(acknowledged(running.cache_dir()), None);
    let _ = running.stop();
    for pid in [read_pid(&leader), read_pid(&child)] {
        assert!(!alive(pid), "process {pid} of the command outlived it");
    }
}

#[test]
fn what_a_command_leaves_running_is_killed_when_it_exits() {
    let remote = Remote::new();
    let work = unique_dir();
    let orphan = work.path().join("orphan");
    let mut source = quick_source("orphans", &remote.file_url());
    // Exits at once, leaving a child that holds its output open.
    source.exec = Some(format!(
        "sleep 600 & echo $! > {orphan}; echo done",
        orphan = shell_quote(&orphan.display().to_string()),
    ));
    let running = Running::start(vec![source]);
    let update = running.update(WITHIN);
    crate::util::settle(
        || usize::from(acknowledged(running.cache_dir()).as_deref() != Some(update.new.as_str())),
        0,
        WITHIN,
    );
    let pid = read_pid(&orphan);
    crate::util::settle(|| usize::from(alive(pid)), 0, Duration::from_secs(5));
    assert!(
        !alive(pid),
        "the command's background child {pid} outlived it"
    );
}

#[test]
fn a_command_that_prints_a_lot_succeeds() {
    let remote = Remote::new();
    let mut source = quick_source("loud", &remote.file_url());
    // 20 MB in one line, then 200,000 short lines.
    source.exec = Some("head -c 20000000 /dev/zero | tr '\\0' x; echo; seq 1 200000".into());
    let running = Running::start(vec![source]);
    let update = running.update(WITHIN);
    crate::util::settle(
        || usize::from(acknowledged(running.cache_dir()).as_deref() != Some(update.new.as_str())),
        0,
        WITHIN,
    );
    assert_eq!(acknowledged(running.cache_dir()), Some(update.new));
}

/// `gitfeed watch --exec` of `remote`, its stderr (the log) read line by line.
fn spawn_watch(remote: &Remote, cache: &Path, exec: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["watch", &remote.file_url(), "--name", "w", "--exec", exec])
        .arg("--cache-dir")
        .arg(cache)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gitfeed")
}

#[test]
fn a_restart_while_the_command_runs_delivers_the_update_again() {
    use std::io::BufRead;
    let remote = Remote::new();
    let cache = unique_dir();
    let work = unique_dir();
    let pid_file = work.path().join("pid");
    let mut child = spawn_watch(
        &remote,
        cache.path(),
        &format!(
            "echo $$ > {}; echo started; sleep 600",
            shell_quote(&pid_file.display().to_string())
        ),
    );
    // The command says it started in the log: read the log on a thread, and wait for that
    // line with a deadline.
    let log = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in log.lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WITHIN;
    let started = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("w: exec: started") => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    if !started {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the command never started within {WITHIN:?}");
    }
    let command = read_pid(&pid_file);
    let stopping = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let status = child.wait().expect("reap");
    assert!(status.success(), "{status:?}");
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert!(!alive(command), "the command outlived gitfeed");
    assert_eq!(acknowledged(cache.path()), None);
    // After the restart the same update comes again, and this time the command succeeds.
    let got = work.path().join("got.json");
    let out = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["watch", &remote.file_url(), "--name", "w", "--once"])
        .args([
            "--exec",
            &format!("cat > {}", shell_quote(&got.display().to_string())),
        ])
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let update: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&got).expect("the command ran")).expect("json");
    assert_eq!(update["new"], remote.head().as_str());
    assert_eq!(update["old"], serde_json::Value::Null);
    assert_eq!(acknowledged(cache.path()), Some(remote.head()));
}

#[test]
fn once_fails_when_the_command_fails_and_records_it() {
    let remote = Remote::new();
    let cache = unique_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["watch", &remote.file_url(), "--name", "f", "--once"])
        .args(["--exec", "echo nope >&2; exit 7"])
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the exec command exited with status 7"),
        "{stderr}"
    );
    let status = gitfeed::status(cache.path()).expect("status");
    assert_eq!(status[0].state, "backoff");
    assert_eq!(status[0].reason, Some(Reason::ExecFailed));
    assert_eq!(status[0].detail.as_deref(), Some("nope"));
    assert_eq!(status[0].acknowledged, None);
}

/// A command that fails on a listing gets the listing again, not a diff from the commit
/// acknowledged before the start.
#[test]
fn a_failed_listing_is_sent_again_as_a_listing() {
    let remote = Remote::new();
    let cache = unique_dir();
    let work = unique_dir();
    let count = work.path().join("count");
    let mut source = quick_source("l", &remote.file_url());
    source.exec = Some("true".into());
    // The first run acknowledges the head through its command.
    let running = Running::start_at(cache.path(), vec![source.clone()], |feed| feed);
    let first = running.update(WITHIN);
    crate::util::settle(
        || usize::from(acknowledged(cache.path()).as_deref() != Some(first.new.as_str())),
        0,
        WITHIN,
    );
    let _ = running.stop();
    // The remote moves; the next start lists, and its command fails once.
    let moved = remote.commit(&[("b.txt", Some("b\n"))], "b");
    source.list_on_start = true;
    source.exec = Some(format!(
        "n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count}; [ $n -ge 2 ]",
        count = shell_quote(&count.display().to_string())
    ));
    let running = Running::start_at(cache.path(), vec![source], |feed| feed);
    let listing = running.update(WITHIN);
    assert_eq!(
        (listing.old.as_deref(), listing.new.as_str()),
        (None, moved.as_str())
    );
    let state = running.state(WITHIN);
    assert_eq!(state.reason, Some(Reason::ExecFailed), "{state:?}");
    let again = running.update(WITHIN);
    assert_eq!(again, listing, "the same update, a listing again");
    crate::util::settle(
        || usize::from(acknowledged(cache.path()).as_deref() != Some(moved.as_str())),
        0,
        WITHIN,
    );
    let _ = running.stop();
}
