//! `gitfeed run --config FILE`: many sources in one process, the file applied again when it
//! changes and on SIGHUP.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::util::{GitDaemon, Remote, settle, unique_dir};

const WITHIN: Duration = Duration::from_secs(20);

/// `gitfeed run --config`, its stdout lines arriving on a channel.
struct Run {
    child: Child,
    lines: Receiver<serde_json::Value>,
}

impl Run {
    fn start(config: &Path, stderr: &Path) -> Run {
        Run::start_with(config, stderr, &[])
    }

    /// Like [`Run::start`], with `env` added to gitfeed's environment.
    fn start_with(config: &Path, stderr: &Path, env: &[(&str, &str)]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(stderr).expect("stderr file"))
            .spawn()
            .expect("spawn gitfeed");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line).expect("every line is JSON");
                if send.send(event).is_err() {
                    break;
                }
            }
        });
        Run { child, lines }
    }

    fn next(&self, what: &str) -> serde_json::Value {
        self.lines
            .recv_timeout(WITHIN)
            .unwrap_or_else(|_| panic!("no event within {WITHIN:?} while waiting for {what}"))
    }

    /// The next event and how long it took to come.
    fn timed(&self, what: &str) -> (serde_json::Value, Duration) {
        let started = Instant::now();
        let event = self.next(what);
        (event, started.elapsed())
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the file in one step, as a configuration manager does.
fn write_config(path: &Path, cache: &Path, sources: &[(&str, &Remote, &str)]) {
    let sources: Vec<serde_json::Value> = sources
        .iter()
        .map(|(name, remote, interval)| {
            serde_json::json!({"name": name, "url": remote.file_url(), "interval": interval})
        })
        .collect();
    let config = serde_json::json!({"cache_dir": cache, "sources": sources});
    write_text(path, &config.to_string());
}

fn write_text(path: &Path, text: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).expect("write config");
    std::fs::rename(&staged, path).expect("rename config");
}

#[test]
fn sources_come_and_go_with_the_file_and_unchanged_ones_keep_their_state() {
    let (a, b, c) = (Remote::named("a"), Remote::named("b"), Remote::named("c"));
    let dir = unique_dir();
    let cache = dir.path().join("cache");
    let config = dir.path().join("gitfeed.json");
    let stderr = dir.path().join("stderr");
    write_config(&config, &cache, &[("a", &a, "100ms"), ("b", &b, "100ms")]);
    let run = Run::start(&config, &stderr);
    let mut first = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let update = run.next("the first updates");
        assert_eq!(update["type"], "update", "{update}");
        assert_eq!(update["old"], serde_json::Value::Null);
        first.insert(
            update["source"].as_str().expect("source").to_owned(),
            update,
        );
    }
    assert_eq!(first.keys().collect::<Vec<_>>(), ["a", "b"]);

    // b goes, c comes, a changes its interval: it keeps its delivery state.
    write_config(&config, &cache, &[("a", &a, "150ms"), ("c", &c, "100ms")]);
    let update = run.next("c's first update");
    assert_eq!(update["source"], "c", "{update}");
    assert_eq!(update["old"], serde_json::Value::Null);
    b.commit(&[("b.txt", Some("b\n"))], "b");
    let new_a = a.commit(&[("a.txt", Some("a\n"))], "a");
    let update = run.next("a's next update");
    assert_eq!(update["source"], "a", "{update}");
    assert_eq!(update["old"], first["a"]["new"], "a started afresh");
    assert_eq!(update["new"], new_a.as_str());
    let new_c = c.commit(&[("c.txt", Some("c\n"))], "c");
    let update = run.next("c's next update");
    assert_eq!(update["source"], "c", "b is still followed: {update}");
    assert_eq!(update["new"], new_c.as_str());

    // An invalid file changes nothing: a warning, and the sources go on.
    write_text(&config, r#"{"sources": [{"name": "a"}]}"#);
    let warning = run.next("the warning about the invalid file");
    assert_eq!(warning["type"], "warning");
    assert_eq!(warning["source"], config.display().to_string());
    assert_eq!(warning.get("commit"), None);
    let error = warning["message"].as_str().expect("message");
    assert!(error.contains("missing field `url`"), "{error}");
    assert!(
        error.ends_with("keeping the running configuration"),
        "{error}"
    );
    let newer_a = a.commit(&[("a.txt", Some("aa\n"))], "aa");
    let update = run.next("a's update under the kept configuration");
    assert_eq!(update["source"], "a", "{update}");
    assert_eq!(update["new"], newer_a.as_str());
    let log = std::fs::read_to_string(&stderr).expect("stderr");
    assert!(
        log.lines().any(|line| line.contains("missing field `url`")
            && line.ends_with("keeping the running configuration")),
        "{log}"
    );

    // `gitfeed status` covers every source the process follows; b was released when the file
    // dropped it, its status with it.
    let out = Command::new(env!("CARGO_BIN_EXE_gitfeed"))
        .args(["status", "--json", "--cache-dir"])
        .arg(&cache)
        .output()
        .expect("status");
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let status: serde_json::Value = serde_json::from_str(line).expect("json");
            status["source"].as_str().expect("source").to_owned()
        })
        .collect();
    assert_eq!(names, ["a", "c"]);

    run.signal(rustix::process::Signal::TERM);
    let mut run = run;
    let status = run.child.wait().expect("reap");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_dropped_source_or_a_changed_depth_leaves_no_clone_that_no_source_reads() {
    let (a, b) = (Remote::named("a.git"), Remote::named("b.git"));
    let daemon = GitDaemon::start(&a.root());
    let daemon_b = GitDaemon::start(&b.root());
    let dir = unique_dir();
    let cache = dir.path().join("cache");
    let config = dir.path().join("gitfeed.json");
    let stderr = dir.path().join("stderr");
    let write = |sources: serde_json::Value| {
        let config_text = serde_json::json!({"cache_dir": cache, "sources": sources});
        write_text(&config, &config_text.to_string());
    };
    let a_source =
        serde_json::json!({"name": "a", "url": daemon.url(a.name()), "interval": "100ms"});
    let b_at = |depth: u32| {
        serde_json::json!({"name": "b", "url": daemon_b.url(b.name()), "interval": "100ms",
                           "depth": depth})
    };
    write(serde_json::json!([a_source, b_at(1)]));
    let run = Run::start(&config, &stderr);
    for _ in 0..2 {
        assert_eq!(run.next("the first updates")["type"], "update");
    }
    let clones = || {
        let mut names: Vec<String> = std::fs::read_dir(cache.join("clones"))
            .map(|listing| {
                listing
                    .flatten()
                    .map(|item| item.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let entries = || {
        std::fs::read_dir(&cache)
            .map(|listing| {
                listing
                    .flatten()
                    .filter(|item| item.file_name() != "clones")
                    .count()
            })
            .unwrap_or_default()
    };
    let before = clones();
    assert!(
        before.len() == 2 && before[0].starts_with("a-") && before[1].ends_with("-depth1"),
        "{before:?}"
    );

    // a goes, b deepens: within 30 seconds the cache holds b's new clone and entry alone.
    write(serde_json::json!([b_at(2)]));
    let changed = std::time::Instant::now();
    assert_eq!(run.next("b's first update at depth 2")["source"], "b");
    let only_b = || {
        let now = clones();
        now.len() == 1 && now[0].starts_with("b-") && now[0].ends_with("-depth2") && entries() == 1
    };
    settle(|| usize::from(!only_b()), 0, Duration::from_secs(30));
    assert!(only_b(), "{:?}, {} entries", clones(), entries());
    eprintln!(
        "the cache held only what b reads {} ms after the file changed",
        changed.elapsed().as_millis()
    );
}

#[test]
fn sighup_reads_the_file_and_polls_every_source() {
    let (a, b) = (Remote::named("a"), Remote::named("b"));
    let dir = unique_dir();
    let cache = dir.path().join("cache");
    let config = dir.path().join("gitfeed.json");
    let stderr = dir.path().join("stderr");
    write_config(&config, &cache, &[("a", &a, "1h")]);
    let run = Run::start(&config, &stderr);
    assert_eq!(run.next("a's first update")["source"], "a");
    // Polled only on the signal: an hour is longer than the test.
    let new_a = a.commit(&[("a.txt", Some("a\n"))], "a");
    write_config(&config, &cache, &[("a", &a, "1h"), ("b", &b, "1h")]);
    run.signal(rustix::process::Signal::HUP);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let update = run.next("the updates after SIGHUP");
        assert_eq!(update["type"], "update", "{update}");
        seen.insert(
            update["source"].as_str().expect("source").to_owned(),
            update,
        );
    }
    assert_eq!(seen["a"]["new"], new_a.as_str());
    assert_eq!(seen["b"]["old"], serde_json::Value::Null);
}

#[test]
fn run_needs_a_valid_config_to_start() {
    let dir = unique_dir();
    let config = dir.path().join("gitfeed.json");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_gitfeed"))
            .arg("run")
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run needs --config <FILE>"));
    let out = run(&["--config".as_ref(), config.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read it"), "{stderr}");
    std::fs::write(
        &config,
        r#"{"sources": [{"name": "x", "url": "/a"}, {"name": "x", "url": "/b"}]}"#,
    )
    .expect("write");
    let out = run(&["--config".as_ref(), config.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("two sources are named `x`"), "{stderr}");
}

/// How soon a change to the file must be seen: well under the second the file was once looked
/// at, and well over the tenth of a second gitfeed lets a directory settle.
const SOON: Duration = Duration::from_millis(600);

/// A warning about an invalid file, `problem` in its message.
fn assert_invalid(warning: &serde_json::Value, problem: &str) {
    assert_eq!(warning["type"], "warning", "{warning}");
    let message = warning["message"].as_str().expect("message");
    assert!(message.contains(problem), "{warning}");
}

/// Idle, `gitfeed run` holds two threads, also while it shows progress (info logs): the
/// feed's, which also waits for signals and the file's changes, and the printer's. An edit is
/// seen at once, whether it renames a new file into place or writes the file in place; SIGHUP
/// reads the file even when it has not changed; SIGTERM ends it with status 0.
#[test]
fn run_idles_on_two_threads_and_sees_an_edit_at_once() {
    let a = Remote::named("a");
    let dir = unique_dir();
    let cache = dir.path().join("cache");
    let config = dir.path().join("gitfeed.json");
    let stderr = dir.path().join("stderr");
    write_config(&config, &cache, &[("a", &a, "1h")]);
    let run = Run::start_with(&config, &stderr, &[("RUST_LOG", "info")]);
    assert_eq!(run.next("a's first update")["source"], "a");
    let pid = run.child.id();
    let idle = || crate::util::threads_of(pid);
    let threads = crate::util::settle(idle, 2, Duration::from_secs(10));
    assert!(threads <= 2, "{threads} threads while idle");

    // Each edit is an invalid file, so that each is seen as a warning, with no fetch between
    // the edit and the event. Five in a row, replaced or written in place, each seen soon.
    for round in 0..5 {
        let text = format!(r#"{{"sources": [{{"name": "round{round}"}}]}}"#);
        if round % 2 == 0 {
            write_text(&config, &text);
        } else {
            std::fs::write(&config, &text).expect("write in place");
        }
        let (warning, took) = run.timed("the warning about the edited file");
        assert_invalid(&warning, "missing field `url`");
        assert!(
            took < SOON,
            "round {round}: the edit was seen after {took:?}"
        );
    }

    // The file has not changed since: only the signal makes gitfeed read it again.
    run.signal(rustix::process::Signal::HUP);
    assert_invalid(&run.next("the warning after SIGHUP"), "missing field `url`");
    let threads = crate::util::settle(idle, 2, Duration::from_secs(10));
    assert!(threads <= 2, "{threads} threads while idle after the edits");

    run.signal(rustix::process::Signal::TERM);
    let mut run = run;
    let status = run.child.wait().expect("reap");
    assert!(status.success(), "{status:?}");
}

/// A file mounted as Kubernetes mounts a ConfigMap: `gitfeed.json` a symlink through `..data`,
/// itself a symlink to the directory of the current version. A new version (a new directory,
/// `..data` renamed over) is seen at once, and so is an edit in place of the file the path
/// resolves to now, whose directory is not the path's.
#[test]
fn a_file_behind_swapped_symlinks_is_followed() {
    use std::os::unix::fs::symlink;
    let (a, b) = (Remote::named("a"), Remote::named("b"));
    let dir = unique_dir();
    let cache = dir.path().join("cache");
    let mount = dir.path().join("mount");
    let version = |name: &str| {
        let path = mount.join(name);
        std::fs::create_dir_all(&path).expect("version directory");
        path.join("gitfeed.json")
    };
    let first = version("..v1");
    write_config(&first, &cache, &[("a", &a, "1h")]);
    symlink("..v1", mount.join("..data")).expect("..data");
    let config = mount.join("gitfeed.json");
    symlink("..data/gitfeed.json", &config).expect("the file's symlink");
    let stderr = dir.path().join("stderr");
    let run = Run::start(&config, &stderr);
    assert_eq!(run.next("a's first update")["source"], "a");

    // A new version: its directory, then `..data` pointed at it in one rename.
    let second = version("..v2");
    write_text(&second, r#"{"sources": [{"name": "swapped"}]}"#);
    symlink("..v2", mount.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(mount.join("..v1")).expect("remove the old version");
    let (warning, took) = run.timed("the warning about the new version");
    assert_invalid(&warning, "missing field `url`");
    assert!(took < SOON, "the new version was seen after {took:?}");

    // Edited in place where it now lives: only a watch on that directory sees it soon.
    std::fs::write(&second, r#"{"sources": [{"name": "edited", "url": 1}]}"#).expect("edit");
    let (warning, took) = run.timed("the warning about the edit in place");
    assert_invalid(&warning, "invalid type");
    assert!(took < SOON, "the edit in place was seen after {took:?}");

    // And a valid version is applied.
    write_config(&second, &cache, &[("a", &a, "1h"), ("b", &b, "1h")]);
    let update = run.next("b's first update");
    assert_eq!(update["source"], "b", "{update}");
}

/// Bytes the files under `path` take on disk, in 4 KiB blocks.
fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(metadata) = item.path().symlink_metadata() else {
                continue;
            };
            if metadata.is_dir() {
                stack.push(item.path());
            }
            total += metadata.len().div_ceil(4096) * 4096;
        }
    }
    total
}

/// What `git clone --bare` of `url` takes (`args` added: a depth, a branch).
fn git_clone_size(url: &str, args: &[&str], scratch: &Path) -> u64 {
    let into = scratch.join("reference");
    let _ = std::fs::remove_dir_all(&into);
    let mut command = crate::util::git_command();
    command
        .args(["clone", "--quiet", "--bare", "--no-local"])
        .args(args);
    let status = command.arg(url).arg(&into).status().expect("git clone");
    assert!(status.success(), "git clone {url}");
    // Its sample hooks and description are not part of a clone's content.
    let _ = std::fs::remove_dir_all(into.join("hooks"));
    let size = disk_usage(&into.join("objects")) + disk_usage(&into.join("refs"));
    let _ = std::fs::remove_dir_all(&into);
    size
}

/// Twelve months of a device following one repository with `gitfeed run --config`: each month
/// the branches move, a release is tagged and the release source re-pinned to it, and now and
/// then `main` is rewound by a force push; a source comes in month 3 and goes after month 6,
/// and another is re-pointed between two refs and depths every month. After every month the
/// cache holds one clone per URL of the full-history sources and one per shallow source, no
/// entry of a source no longer followed, and stays within the README's sizing bound; the
/// process keeps its two idle threads, its descriptors and no child process.
#[test]
fn months_of_life_keep_the_cache_to_what_the_sources_need() {
    let remote = Remote::named("policies");
    let mut dev = remote.head();
    remote.push_branch("dev", &dev);
    let url = remote.file_url();
    let dir = unique_dir();
    let cache = dir.path().join("cache");
    let config = dir.path().join("gitfeed.json");
    let stderr = dir.path().join("stderr");
    let source = |name: &str, reference: &str, depth: Option<u32>| {
        let mut source = serde_json::json!({"name": name, "url": url, "ref": reference,
                                            "interval": "1h"});
        if let Some(depth) = depth {
            source["depth"] = depth.into();
        }
        source
    };

    let mut run: Option<Run> = None;
    let mut settled_fds = None;
    for month in 1..=12u32 {
        // The repository's month: work on main and dev, now and then a rewind, a release.
        for day in 0..3 {
            let text = format!("month {month} day {day}\n");
            remote.commit(&[(&format!("policies/p{day}.rego"), Some(&text))], "work");
        }
        if month % 4 == 0 {
            remote.force_push_rewrite(&[("policies/rewound.rego", Some("again\n"))], "redo");
        }
        dev = remote.commit_to(
            "dev",
            &dev,
            &[("dev.txt", Some(&format!("{month}\n")))],
            "dev",
        );
        let main = remote.head();
        let tag = format!("v{month}");
        remote.git(&["tag", "-f", &tag, &main]);
        remote.git(&[
            "push",
            "-q",
            "--force",
            "origin",
            &format!("refs/tags/{tag}"),
        ]);

        // This month's sources, and the commit each must be at.
        let mut sources = vec![
            (source("policy", "main", None), main.clone()),
            (source("release", &tag, Some(1)), main.clone()),
        ];
        if (3..=6).contains(&month) {
            sources.push((source("extra", "dev", Some(2)), dev.clone()));
        }
        sources.push(if month % 2 == 1 {
            (source("pointer", "main", Some(1)), main.clone())
        } else {
            (source("pointer", "dev", None), dev.clone())
        });
        let listed: Vec<_> = sources.iter().map(|(source, _)| source.clone()).collect();
        let text = serde_json::json!({"cache_dir": cache, "sources": listed});
        write_text(&config, &text.to_string());
        let running = match &run {
            Some(running) => {
                // Read again and every source polled now, not at its hourly interval.
                running.signal(rustix::process::Signal::HUP);
                running
            }
            None => run.insert(Run::start(&config, &stderr)),
        };
        let pid = running.child.id();

        let mut waiting: Vec<(String, String)> = sources
            .iter()
            .map(|(source, commit)| (source["name"].as_str().unwrap().to_owned(), commit.clone()))
            .collect();
        while !waiting.is_empty() {
            let event = running.next(&format!("month {month}: updates for {waiting:?}"));
            match event["type"].as_str() {
                Some("update") => waiting.retain(|(name, commit)| {
                    !(event["source"] == name.as_str() && event["new"] == commit.as_str())
                }),
                Some("state") => assert_ne!(event["state"], "failed", "month {month}: {event}"),
                _ => {}
            }
        }

        // What the cache holds once the releases are done (within 30 s of the change).
        let shallow = listed
            .iter()
            .filter(|source| source.get("depth").is_some())
            .count();
        let clones = || -> (usize, usize) {
            let names: Vec<String> = std::fs::read_dir(cache.join("clones"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|item| item.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect();
            let deep = names.iter().filter(|name| !name.contains("-depth")).count();
            (deep, names.len() - deep)
        };
        let entries = || {
            std::fs::read_dir(&cache)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|item| item.file_name() != "clones")
                .count()
        };
        let bounded = || clones() == (1, shallow) && entries() == listed.len();
        settle(|| usize::from(!bounded()), 0, Duration::from_secs(30));
        assert_eq!(
            clones(),
            (1, shallow),
            "month {month}: full and shallow clones"
        );
        assert_eq!(entries(), listed.len(), "month {month}: source entries");

        // The README's bound: per clone what git's clone of its refs takes, 8 packs of what
        // one fetch brings (its least, 8 KiB of blocks for a pack and its index: a month
        // brings a few small files here) and 48 KiB; 20 KiB per source.
        let scratch = dir.path().join("scratch");
        let mut bound = 20 * 1024 * listed.len() as u64;
        bound += git_clone_size(&url, &["--mirror"], &scratch) + 8 * 8 * 1024 + 48 * 1024;
        for source in listed.iter().filter(|source| source.get("depth").is_some()) {
            let depth = source["depth"].to_string();
            let reference = source["ref"].as_str().unwrap();
            let args = ["--depth", &depth, "--branch", reference];
            bound += git_clone_size(&url, &args, &scratch) + 8 * 8 * 1024 + 48 * 1024;
        }
        let used = disk_usage(&cache);
        assert!(
            used <= bound,
            "month {month}: the cache takes {used} bytes, over the bound of {bound}"
        );

        // Nothing piles up in the process: two threads and no child once idle, and the same
        // descriptors month after month.
        let threads = settle(|| crate::util::threads_of(pid), 2, Duration::from_secs(10));
        assert!(threads <= 2, "month {month}: {threads} threads while idle");
        let children = settle(
            || crate::util::children_of(pid).len(),
            0,
            Duration::from_secs(10),
        );
        assert_eq!(children, 0, "month {month}: child processes left");
        // Each running source holds two lock files (its entry's and its clone's `users`):
        // beyond those, the same descriptors as after month 1.
        let holds = 2 * listed.len();
        let fds = crate::util::fds_of(pid);
        let base = *settled_fds.get_or_insert(fds.saturating_sub(holds));
        let fds = settle(
            || crate::util::fds_of(pid),
            base + holds,
            Duration::from_secs(10),
        );
        assert!(
            fds <= base + holds,
            "month {month}: {fds} descriptors for {} sources, {base} besides their holds after month 1",
            listed.len()
        );
        eprintln!("month {month}: cache {used} bytes (bound {bound}), {fds} descriptors");
    }

    let mut run = run.expect("running");
    run.signal(rustix::process::Signal::TERM);
    let status = run.child.wait().expect("reap");
    assert!(status.success(), "{status:?}");
}
