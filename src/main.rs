//! The `gitfeed` command: follow a git branch and print its events as NDJSON.

mod config;
mod control;
mod pid1;
mod progress_line;
mod systemd;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use async_channel::Receiver;
use gitfeed::{Event, Feed, FeedHandle, Source, Warning, parse_duration};
use smol::future::or;

use crate::control::Sources;
use crate::progress_line::ProgressLine;

/// The usage text before the options of `watch`.
const USAGE_HEAD: &str = r#"Follow a git branch and print what changed, one JSON event per line.

Usage: gitfeed watch <URL> [OPTIONS]
       gitfeed run --config <FILE> [--cache-dir <D>]
       gitfeed status [--cache-dir <D>] [--json | --table]
       gitfeed gc [--cache-dir <D>] [--unused-for <T>]
       gitfeed --version

<URL> is a path, file://, git://, http(s)://, ssh:// or scp-like user@host:path remote.

`run` follows every source of a JSON file, events from all of them on one stdout:
  {"cache_dir": "/var/cache/gitfeed", "concurrent_fetches": 4,
   "sources": [{"name": "policies", "url": "https://h/p.git", "checkout": "/srv/p",
                "exec": "reload-policies", "exec_timeout": "30s"}, …]}
Each source takes the options below by their long names with `_` for `-` (`ref` for
--branch, durations as strings); the README lists them. The file is applied again when it
changes and on SIGHUP: added, removed and changed sources take effect, unchanged ones keep
their clone, schedule and state, and an invalid file is reported (stderr and a `warning`
event) while the running configuration stays.

`status` prints the last known state of every source in the cache, one JSON object per
line, whether or not a feed is running; `watch --once` writes it too.

A running feed and a --once run release by themselves what a source they no longer follow
used (a removed source, other settings of a name). `gc` is for what no process runs any more:
it removes the clones that no source has used for --unused-for [default: 168h, a week] and
that no running feed or --once run has open; delivery state is kept. It prints one JSON object.

"#;

/// The usage text after the options of `watch`.
const USAGE_TAIL: &str = r#"
Durations are written like 250ms, 30s, 5m or 1h.

Events go to stdout, one line each; an update counts as acknowledged once its line is
written and flushed. Logs go to stderr, at the level set by RUST_LOG (error, warn, info,
debug, trace or off; default warn). A clone or fetch that receives a pack for longer than a
second shows its progress on stderr: one line rewritten in place on a terminal, otherwise an
info log line about once a second.

With --exec, CMD gets the update's JSON on stdin and GITFEED_SOURCE, GITFEED_REF,
GITFEED_OLD (empty on a first update), GITFEED_NEW and, with --checkout, GITFEED_CHECKOUT
(the snapshot's resolved path) in its environment. Its output goes to the log (RUST_LOG=info),
each line prefixed with the source. It runs in a process group of its own, killed when CMD
exits, times out or gitfeed stops; a failure is a `state` event with reason exec_failed.

Signals: SIGHUP makes `watch` and `run` poll at once (`run` reads its file first); SIGTERM and SIGINT stop it cleanly (exit 0).
Under a service manager (systemd's Type=notify), gitfeed reports readiness, stopping and,
with WATCHDOG_USEC, liveness on NOTIFY_SOCKET.
Started as PID 1 (in a container), gitfeed runs itself as a child and stays as a minimal
init: it reaps orphaned helper processes and forwards TERM, INT, HUP and QUIT.

Exit status: 0 on success; 1 when --once or status fails (the error is printed on
stderr); 2 for bad arguments."#;

/// One option of a command: its flag, the name of its value (`None` for a switch), its help
/// (one line of the usage text each), and what it sets.
struct Opt {
    flag: &'static str,
    value: Option<&'static str>,
    help: &'static str,
    set: fn(&mut Args, &str, String) -> Result<(), String>,
}

/// What a command's arguments set; each command's table sets only its own fields.
#[derive(Default)]
struct Args {
    /// The arguments that are not options: `watch`'s URL, and nothing for the other commands.
    operands: Vec<String>,
    source: Source,
    name: Option<String>,
    branch: Option<String>,
    cache_dir: Option<PathBuf>,
    once: bool,
    verify_all: bool,
    /// `run`'s file.
    config: Option<PathBuf>,
    /// `status`: a table (`--table`) or JSON lines (`--json`).
    table: Option<bool>,
    /// `gc`'s age of an unused clone.
    unused_for: Option<std::time::Duration>,
}

/// `--cache-dir`, the same for `watch`, `status` and `gc`.
const CACHE_DIR: Opt = Opt {
    flag: "--cache-dir",
    value: Some("<D>"),
    help: "where clones and delivery state live\n[default: $XDG_CACHE_HOME/gitfeed, or ~/.cache/gitfeed]",
    set: |a, _, v| {
        a.cache_dir = Some(PathBuf::from(v));
        Ok(())
    },
};

/// The options of each command, in the order `--help` lists them: the one place they are
/// defined. The parser and the usage text both come from these tables, and a test holds the
/// usage lines and the README's tables to them.
const WATCH_OPTIONS: &[Opt] = &[
    Opt {
        flag: "--branch",
        value: Some("<B>"),
        help: "branch or tag (main, v1: a branch first, then a tag), full ref\n(refs/tags/v1), HEAD or commit id (pinned: synced once) to follow\n[default: the remote's HEAD branch]",
        set: |a, _, v| {
            a.branch = Some(v);
            Ok(())
        },
    },
    Opt {
        flag: "--mirror",
        value: Some("<URL>"),
        help: "another URL serving the same repository, tried in order when the\nones before fail (repeatable)",
        set: |a, _, v| {
            a.source.mirrors.push(v);
            Ok(())
        },
    },
    Opt {
        flag: "--name",
        value: Some("<N>"),
        help: "the source's name in events [default: the URL's last path segment]",
        set: |a, _, v| {
            a.name = Some(v);
            Ok(())
        },
    },
    CACHE_DIR,
    Opt {
        flag: "--interval",
        value: Some("<T>"),
        help: "time between polls, at most (each comes up to a fifth early)\n[default: 30s]",
        set: |a, f, v| {
            a.source.interval = duration(f, &v)?;
            Ok(())
        },
    },
    Opt {
        flag: "--timeout",
        value: Some("<T>"),
        help: "the longest one attempt may take [default: 60s]",
        set: |a, f, v| {
            a.source.timeout = duration(f, &v)?;
            Ok(())
        },
    },
    Opt {
        flag: "--backoff-initial",
        value: Some("<T>"),
        help: "delay after the first failure, doubling after each [default: 1s]",
        set: |a, f, v| {
            a.source.backoff_initial = duration(f, &v)?;
            Ok(())
        },
    },
    Opt {
        flag: "--backoff-max",
        value: Some("<T>"),
        help: "the longest delay between failed attempts [default: 5m]",
        set: |a, f, v| {
            a.source.backoff_max = duration(f, &v)?;
            Ok(())
        },
    },
    Opt {
        flag: "--max-failures",
        value: Some("<N>"),
        help: "give up (failed) after N consecutive failures [default: never]",
        set: |a, f, v| {
            a.source.max_failures = Some(number(f, &v)?);
            Ok(())
        },
    },
    Opt {
        flag: "--failed-interval",
        value: Some("<T>"),
        help: "how long a failed source waits before it probes the remote again\n[default: 10m]",
        set: |a, f, v| {
            a.source.failed_interval = duration(f, &v)?;
            Ok(())
        },
    },
    Opt {
        flag: "--depth",
        value: Some("<N>"),
        help: "shallow clone with N commits of history [default: full history]",
        set: |a, f, v| {
            a.source.depth = Some(number(f, &v)?);
            Ok(())
        },
    },
    Opt {
        flag: "--ssh-command",
        value: Some("<CMD>"),
        help: "ssh program and options, as git's core.sshCommand [default: ssh]",
        set: |a, _, v| {
            a.source.ssh_command = Some(v);
            Ok(())
        },
    },
    Opt {
        flag: "--ssh-key",
        value: Some("<F>"),
        help: "private key for ssh remotes (and no other identity)",
        set: |a, _, v| {
            a.source.ssh_key = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--known-hosts",
        value: Some("<F>"),
        help: "known_hosts file for ssh remotes, checked strictly\n[default: ssh's own files, still strictly]",
        set: |a, _, v| {
            a.source.known_hosts = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--token-file",
        value: Some("<F>"),
        help: "HTTPS bearer token, read from F on every attempt (rotation-safe)",
        set: |a, _, v| {
            auth(&mut a.source).token_file = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--token-env",
        value: Some("<V>"),
        help: "HTTPS bearer token from environment variable V",
        set: |a, _, v| {
            auth(&mut a.source).token_env = Some(v);
            Ok(())
        },
    },
    Opt {
        flag: "--username",
        value: Some("<U>"),
        help: "HTTPS basic-auth user, with --password-file or --password-env",
        set: |a, _, v| {
            auth(&mut a.source).username = Some(v);
            Ok(())
        },
    },
    Opt {
        flag: "--password-file",
        value: Some("<F>"),
        help: "HTTPS basic-auth password, read from F on every attempt",
        set: |a, _, v| {
            auth(&mut a.source).password_file = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--password-env",
        value: Some("<V>"),
        help: "HTTPS basic-auth password from environment variable V",
        set: |a, _, v| {
            auth(&mut a.source).password_env = Some(v);
            Ok(())
        },
    },
    Opt {
        flag: "--allowed-signers",
        value: Some("<F>"),
        help: "deliver only commits SSH-signed by a key in F (git's\ngpg.ssh.allowedSignersFile format)",
        set: |a, _, v| {
            let all = a
                .source
                .verify
                .as_ref()
                .is_some_and(|verify| verify.all_commits);
            a.source.verify = Some(verify(PathBuf::from(v), all));
            Ok(())
        },
    },
    Opt {
        flag: "--verify-all-commits",
        value: None,
        help: "with --allowed-signers, check every new commit, not only the tip",
        set: |a, _, _| {
            a.verify_all = true;
            Ok(())
        },
    },
    Opt {
        flag: "--ca-file",
        value: Some("<F>"),
        help: "PEM file of CA certificates to trust for HTTPS",
        set: |a, _, v| {
            a.source.ca_file = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--insecure-skip-tls-verify",
        value: None,
        help: "do not check HTTPS certificates (logged loudly on every attempt)",
        set: |a, _, _| {
            a.source.insecure_skip_tls_verify = true;
            Ok(())
        },
    },
    Opt {
        flag: "--dir",
        value: Some("<D>"),
        help: "deliver only files under directory D (repeatable)",
        set: |a, _, v| {
            a.source.filter.directories.push(v);
            Ok(())
        },
    },
    Opt {
        flag: "--include",
        value: Some("<GLOB>"),
        help: "deliver only files matching GLOB, gitignore syntax (repeatable)",
        set: |a, _, v| {
            a.source.filter.include.push(v);
            Ok(())
        },
    },
    Opt {
        flag: "--exclude",
        value: Some("<GLOB>"),
        help: "leave out files matching GLOB, gitignore syntax (repeatable)",
        set: |a, _, v| {
            a.source.filter.exclude.push(v);
            Ok(())
        },
    },
    Opt {
        flag: "--ext",
        value: Some("<E>"),
        help: "deliver only files with extension E (repeatable)",
        set: |a, _, v| {
            a.source.filter.extensions.push(v);
            Ok(())
        },
    },
    Opt {
        flag: "--contents",
        value: None,
        help: "attach the content of added and modified files to updates",
        set: |a, _, _| {
            a.source.contents.get_or_insert(DEFAULT_CONTENTS_LIMIT);
            Ok(())
        },
    },
    Opt {
        flag: "--contents-limit",
        value: Some("<N>"),
        help: "largest file whose content is attached, in bytes [default: 1048576]",
        set: |a, f, v| {
            a.source.contents = Some(bytes(f, &v)?);
            Ok(())
        },
    },
    Opt {
        flag: "--checkout",
        value: Some("<DIR>"),
        help: "write each new commit's files to DIR/.snapshots/<commit>/ and point\nthe symlink DIR/current at it before printing the update",
        set: |a, _, v| {
            a.source.checkout = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        flag: "--keep-snapshots",
        value: Some("<N>"),
        help: "snapshots kept in the checkout directory [default: 2]",
        set: |a, f, v| {
            a.source.keep_snapshots = number(f, &v)? as usize;
            Ok(())
        },
    },
    Opt {
        flag: "--index-threads",
        value: Some("<N>"),
        help: "threads resolving the deltas of a received pack, 0 for one\nper core; each holds an object and its base [default: 1]",
        set: |a, f, v| {
            a.source.index_threads = number(f, &v)? as usize;
            Ok(())
        },
    },
    Opt {
        flag: "--list-on-start",
        value: None,
        help: "make the first update after a start a full listing (old: null) of\nthe commit reached, even when it was acknowledged before: the\nwhole state for a consumer that keeps it in memory",
        set: |a, _, _| {
            a.source.list_on_start = true;
            Ok(())
        },
    },
    Opt {
        flag: "--exec",
        value: Some("<CMD>"),
        help: "run CMD with `sh -c` for each update, after the snapshot swap;\nthe update counts as acknowledged only when CMD exits 0, and\nis delivered again after the backoff otherwise (see below)",
        set: |a, _, v| {
            a.source.exec = Some(v);
            Ok(())
        },
    },
    Opt {
        flag: "--exec-timeout",
        value: Some("<T>"),
        help: "the longest CMD may run before its process group is killed\n[default: 60s]",
        set: |a, f, v| {
            a.source.exec_timeout = duration(f, &v)?;
            Ok(())
        },
    },
    Opt {
        flag: "--once",
        value: None,
        help: "sync once, print the update if there is one (after the warnings\nabout what it left out), write the status, and exit",
        set: |a, _, _| {
            a.once = true;
            Ok(())
        },
    },
];

/// The options of `run`.
const RUN_OPTIONS: &[Opt] = &[
    Opt {
        flag: "--config",
        value: Some("<FILE>"),
        help: "the JSON file of sources, described above (required)",
        set: |a, _, v| {
            a.config = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Opt {
        help: "where clones and delivery state live, unless the file sets\ncache_dir [default: $XDG_CACHE_HOME/gitfeed, or ~/.cache/gitfeed]",
        ..CACHE_DIR
    },
];

/// The options of `status`.
const STATUS_OPTIONS: &[Opt] = &[
    CACHE_DIR,
    Opt {
        flag: "--json",
        value: None,
        help: "one JSON object per line [default: when stdout is no terminal]",
        set: |a, _, _| {
            a.table = Some(false);
            Ok(())
        },
    },
    Opt {
        flag: "--table",
        value: None,
        help: "a table for a person [default: when stdout is a terminal]",
        set: |a, _, _| {
            a.table = Some(true);
            Ok(())
        },
    },
];

/// The options of `gc`.
const GC_OPTIONS: &[Opt] = &[
    CACHE_DIR,
    Opt {
        flag: "--unused-for",
        value: Some("<T>"),
        help: "remove the clones no source has used for this long\n[default: 168h, a week]",
        set: |a, f, v| {
            a.unused_for = Some(duration(f, &v)?);
            Ok(())
        },
    },
];

/// The whole usage text, `watch`'s options rendered from [`WATCH_OPTIONS`]. With `command`,
/// the help of another command: the same text with that command's options added.
fn usage(command: Option<(&str, &[Opt])>) -> String {
    let mut text = String::from(USAGE_HEAD);
    text.push_str("Options:\n");
    push_options(&mut text, WATCH_OPTIONS);
    text.push_str("  -h, --help             print this help\n");
    if let Some((name, options)) = command {
        text.push_str(&format!("\nOptions of `gitfeed {name}`:\n"));
        push_options(&mut text, options);
    }
    text.push_str(USAGE_TAIL);
    text
}

/// One line for each option of `options`, and one more for each further line of its help.
fn push_options(text: &mut String, options: &[Opt]) {
    for opt in options {
        let head = match opt.value {
            Some(value) => format!("{} {value}", opt.flag),
            None => opt.flag.to_owned(),
        };
        let mut lines = opt.help.lines();
        let first = lines.next().unwrap_or_default();
        if head.len() <= 21 {
            text.push_str(&format!("  {head:<23}{first}\n"));
        } else {
            text.push_str(&format!("  {head}\n{:25}{first}\n", ""));
        }
        for line in lines {
            text.push_str(&format!("{:25}{line}\n", ""));
        }
    }
}

fn duration(flag: &str, text: &str) -> Result<std::time::Duration, String> {
    parse_duration(text).map_err(|err| format!("{flag}: {err}"))
}

fn number(flag: &str, text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .map_err(|_| format!("{flag}: `{text}` is not a whole number"))
}

fn bytes(flag: &str, text: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("{flag}: `{text}` is not a number of bytes"))
}

/// The largest file whose content `--contents` attaches, unless `--contents-limit` says.
const DEFAULT_CONTENTS_LIMIT: u64 = 1 << 20;

/// Keeps glibc's allocator from holding memory per thread that a long-running feed never
/// gives back. Every fetch attempt runs on a thread of its own, and gix indexes and counts
/// objects on threads of its own: with glibc's defaults each of them may get an arena of its
/// own, and each arena keeps freed memory, so a feed's resident memory rose by about a fifth
/// over its first hundred updates and stayed there. One arena, and giving memory back above
/// 128 KiB of free space at the top of the heap (which also stops glibc from raising its
/// mmap threshold after large frees), keep it within a few percent. The threads seldom
/// allocate at the same time, so sharing one arena costs nothing measurable. A program that
/// embeds the library can do the same, or set `MALLOC_ARENA_MAX=1` and
/// `MALLOC_TRIM_THRESHOLD_=131072` in the environment.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    if let Some(status) = pid1::run_as_init() {
        return status;
    }
    Logger::install();
    let command = match arguments().and_then(|args| parse(&args)) {
        Ok(command) => command,
        // One line: the problem, and where the whole usage is.
        Err(problem) => {
            eprintln!("gitfeed: {problem} (see `gitfeed --help`)");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("gitfeed {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Status { cache_dir, table } => {
            let table = table.unwrap_or_else(|| std::io::stdout().is_terminal());
            print_status(&cache_dir, table)
        }
        Command::Gc {
            cache_dir,
            unused_for,
        } => collect_garbage(&cache_dir, unused_for),
        Command::Run { config, cache_dir } => run_config(config, cache_dir),
        Command::Watch {
            source,
            cache_dir,
            once,
        } => {
            if let Err(err) = source.validate() {
                eprintln!("gitfeed: {err} (see `gitfeed --help`)");
                return ExitCode::from(2);
            }
            if once {
                watch_once(&cache_dir, &source)
            } else {
                watch(cache_dir, *source)
            }
        }
    }
}

fn watch_once(cache_dir: &std::path::Path, source: &Source) -> ExitCode {
    let mut follower = match gitfeed::Follower::new(cache_dir, source) {
        Ok(follower) => follower,
        Err(err) => {
            eprintln!("gitfeed: {err:#}");
            return ExitCode::from(1);
        }
    };
    let shown = ProgressLine::wanted().then(|| ProgressLine::start(follower.progress()));
    let polled = follower.poll();
    if let Some(shown) = shown {
        shown.stop();
    }
    match polled {
        Ok(update) => {
            // As `watch` prints them: what was left out, before the update it concerns.
            for message in follower.warnings() {
                let commit = update.as_ref().map(|update| update.new.clone());
                let warning = Warning::new(&source.name, commit, message);
                if print(&Event::Warning(warning)).is_err() {
                    return ExitCode::from(1);
                }
            }
            if let Some(update) = update {
                let new = update.new.clone();
                if print(&Event::Update(update)).is_err() {
                    return ExitCode::from(1);
                }
                if let Err(err) = gitfeed::acknowledge(cache_dir, source, &new) {
                    eprintln!("gitfeed: {err:#}");
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("gitfeed: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn watch(cache_dir: PathBuf, source: Source) -> ExitCode {
    let feed = Feed::new(cache_dir);
    let name = source.name.clone();
    if let Err(err) = feed.add(source) {
        eprintln!("gitfeed: {err} (see `gitfeed --help`)");
        return ExitCode::from(2);
    }
    serve(feed, Sources::One(name))
}

/// `gitfeed run --config FILE`: every source of the file in one feed, the file applied again
/// when it changes on disk or `SIGHUP` arrives.
fn run_config(path: PathBuf, cache_dir: Option<PathBuf>) -> ExitCode {
    let config = match config::Config::load(&path) {
        Ok(config) => config,
        Err(problem) => {
            eprintln!("gitfeed: {}: {problem}", path.display());
            return ExitCode::from(2);
        }
    };
    let cache_dir = config
        .cache_dir
        .clone()
        .or(cache_dir)
        .unwrap_or_else(default_cache_dir);
    let mut feed = Feed::new(cache_dir);
    if let Some(n) = config.concurrent_fetches {
        feed = feed.concurrent_fetches(n);
    }
    let applied = match config::Applied::start(path, config, &feed.handle()) {
        Ok(applied) => applied,
        Err(problem) => {
            eprintln!("gitfeed: {problem}");
            return ExitCode::from(1);
        }
    };
    serve(feed, Sources::File(Box::new(applied)))
}

/// Runs `feed` until a signal stops it or stdout closes: events are printed, and acknowledged
/// once printed.
///
/// Two threads while idle: the feed's, which also runs the control task (signals, the config
/// file) and the service manager's notifications, and the printer's, because writing to
/// stdout blocks while the consumer does not read, and the feed's deadlines must not wait for
/// it. The control task ends with the feed, on the feed's thread: its handlers, inotify and
/// sockets are gone before the printer is joined, so nothing outlives the feed.
fn serve(feed: Feed, sources: Sources) -> ExitCode {
    let signals = match control::Signals::install() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("gitfeed: cannot handle signals: {err}");
            return ExitCode::from(1);
        }
    };
    let handle = feed.handle();
    let (notes, printed_notes) = async_channel::unbounded();
    let printer = {
        let events = feed.events();
        let progress = ProgressLine::wanted().then(|| feed.progress());
        let handle = handle.clone();
        std::thread::spawn(move || print_events(events, printed_notes, progress, handle))
    };
    // The service manager's notifications are a task beside the feed: the watchdog is fed only
    // while the feed's loop runs.
    let executor = smol::LocalExecutor::new();
    let _notifier = systemd::Notifier::from_env().map(|notifier| executor.spawn(notifier.run()));
    let failed = std::cell::Cell::new(false);
    let control = async {
        let err = control::run(handle.clone(), sources, signals, notes).await;
        eprintln!("gitfeed: cannot wait for signals any more: {err}; stopping");
        failed.set(true);
        handle.shutdown();
        // The feed's future ends the race, once it has stopped.
        std::future::pending::<()>().await
    };
    gitfeed::block_on(executor.run(or(feed.run_async(), control)));
    let _ = printer.join();
    if failed.get() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The printer's thread: prints the feed's events and the control task's warnings, each line
/// flushed, acknowledges each update once printed, and shows the progress samples, until the
/// feed's events end or stdout closes.
fn print_events(
    events: Receiver<Event>,
    notes: Receiver<Event>,
    mut progress: Option<Receiver<gitfeed::Progress>>,
    feed: FeedHandle,
) {
    enum Next {
        Print(Event),
        Show(gitfeed::Progress),
        ProgressEnded,
        Done,
    }
    let terminal = std::io::stderr().is_terminal();
    // futures-lite's block_on parks the thread between wakeups, with no reactor.
    smol::future::block_on(async {
        loop {
            let event = async { events.recv().await.map_or(Next::Done, Next::Print) };
            let note = async {
                match notes.recv().await {
                    Ok(note) => Next::Print(note),
                    Err(_) => std::future::pending().await,
                }
            };
            let sample = async {
                match &progress {
                    Some(samples) => samples.recv().await.map_or(Next::ProgressEnded, Next::Show),
                    None => std::future::pending().await,
                }
            };
            let next = or(event, or(note, sample)).await;
            match next {
                Next::Print(event) => {
                    if print(&event).is_err() {
                        // Nobody reads stdout any more (a closed pipe): stop the feed.
                        feed.shutdown();
                        return;
                    }
                    if let Event::Update(update) = &event {
                        // A source with an exec command is acknowledged by the command
                        // instead.
                        let _ = feed.acknowledge(&update.source, &update.new);
                    }
                }
                Next::Show(sample) => progress_line::show(terminal, &sample),
                Next::ProgressEnded => progress = None,
                Next::Done => {
                    // Warnings that came as the feed stopped.
                    while let Ok(note) = notes.try_recv() {
                        if print(&note).is_err() {
                            break;
                        }
                    }
                    return;
                }
            }
        }
    });
    progress_line::clear();
}

/// Writes one event as a line and flushes it, so a consumer reading the pipe sees it at once.
fn print(event: &Event) -> std::io::Result<()> {
    progress_line::clear();
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&line)?;
    stdout.flush()
}

/// Prints every source's status snapshot, one JSON line each.
fn print_status(cache_dir: &std::path::Path, table: bool) -> ExitCode {
    match gitfeed::status(cache_dir) {
        Ok(all) if table => {
            let text = status_table(&all, std::time::SystemTime::now());
            if std::io::stdout().lock().write_all(text.as_bytes()).is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Ok(all) => {
            let mut stdout = std::io::stdout().lock();
            for status in all {
                let Ok(line) = serde_json::to_string(&status) else {
                    continue;
                };
                if writeln!(stdout, "{line}").is_err() {
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("gitfeed: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// The sources' status as a table for a person: one line per source, columns aligned.
fn status_table(all: &[gitfeed::Status], now: std::time::SystemTime) -> String {
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let ago = |ms: Option<u64>| match ms {
        None => "never".to_owned(),
        Some(ms) => {
            let seconds = now_ms.saturating_sub(ms) / 1000;
            match seconds {
                0..60 => format!("{seconds}s ago"),
                60..3600 => format!("{}m ago", seconds / 60),
                3600..86400 => format!("{}h ago", seconds / 3600),
                _ => format!("{}d ago", seconds / 86400),
            }
        }
    };
    let mut rows = vec![[
        "SOURCE".to_owned(),
        "STATE".to_owned(),
        "CURRENT".to_owned(),
        "LAST SUCCESS".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    for status in all {
        let current = status.current.as_deref().unwrap_or("-");
        rows.push([
            status.source.clone(),
            status.state.clone(),
            current.chars().take(12).collect(),
            ago(status.last_success_ms),
            status.last_error.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    let mut widths = [0; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &rows {
        for (width, cell) in widths.iter().zip(row) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        text.push_str(&row[4]);
        text.push('\n');
    }
    text
}

/// Removes unused clones and prints what was done, as one JSON object.
fn collect_garbage(cache_dir: &std::path::Path, unused_for: std::time::Duration) -> ExitCode {
    match gitfeed::gc(cache_dir, unused_for) {
        Ok(report) => {
            let Ok(line) = serde_json::to_string(&report) else {
                return ExitCode::from(1);
            };
            if writeln!(std::io::stdout().lock(), "{line}").is_err() {
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("gitfeed: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// How long a clone stays unused before `gitfeed gc` removes it, unless --unused-for says.
const DEFAULT_UNUSED_FOR: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Debug)]
enum Command {
    /// The usage text to print.
    Help(String),
    Version,
    Status {
        cache_dir: PathBuf,
        /// A table (`--table`) or JSON lines (`--json`); unset: a table on a terminal.
        table: Option<bool>,
    },
    Gc {
        cache_dir: PathBuf,
        unused_for: std::time::Duration,
    },
    Watch {
        source: Box<Source>,
        cache_dir: PathBuf,
        once: bool,
    },
    Run {
        config: PathBuf,
        cache_dir: Option<PathBuf>,
    },
}

/// The command line's arguments; one that is not UTF-8 is a usage error, not a panic.
fn arguments() -> Result<Vec<String>, String> {
    std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string().map_err(|arg| {
                format!(
                    "argument `{}` is not valid UTF-8",
                    arg.to_string_lossy().escape_debug()
                )
            })
        })
        .collect()
}

fn parse(args: &[String]) -> Result<Command, String> {
    let Some((command, args)) = args.split_first() else {
        return Err("no command given".into());
    };
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help(usage(None))),
        "-V" | "--version" | "version" => Ok(Command::Version),
        "watch" => parse_watch(args),
        "run" => parse_run(args),
        "status" => parse_status(args),
        "gc" => parse_gc(args),
        other => Err(format!("unknown command `{other}`")),
    }
}

/// What `args` set by the options of `command`, which takes at most `operands` arguments
/// that are not options; `None` when they ask for help.
fn parse_options(
    command: &str,
    options: &[Opt],
    operands: usize,
    args: &[String],
) -> Result<Option<Args>, String> {
    let mut parsed = Args::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if let Some(opt) = options.iter().find(|opt| opt.flag == flag) {
            let value = match (opt.value, inline) {
                (Some(_), Some(value)) => value,
                (Some(_), None) => args
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))?,
                (None, Some(_)) => return Err(format!("{flag} takes no value")),
                (None, None) => String::new(),
            };
            (opt.set)(&mut parsed, flag, value)?;
        } else if flag.starts_with('-') && flag.len() > 1 {
            return Err(format!("unknown option `{flag}` for {command}"));
        } else if parsed.operands.len() < operands {
            parsed.operands.push(arg.clone());
        } else {
            return Err(format!("unexpected argument `{arg}` for {command}"));
        }
    }
    Ok(Some(parsed))
}

/// The help of `command`: the whole usage text with the command's options added.
fn help(command: &str, options: &[Opt]) -> Command {
    Command::Help(usage(Some((command, options))))
}

fn parse_watch(args: &[String]) -> Result<Command, String> {
    let Some(parsed) = parse_options("watch", WATCH_OPTIONS, 1, args)? else {
        return Ok(Command::Help(usage(None)));
    };
    let Args {
        operands,
        mut source,
        name,
        branch,
        cache_dir,
        once,
        verify_all,
        ..
    } = parsed;
    let url = operands.into_iter().next().ok_or("watch needs a URL")?;
    if verify_all {
        let verify = source
            .verify
            .as_mut()
            .ok_or("--verify-all-commits needs --allowed-signers")?;
        verify.all_commits = true;
    }
    source.name = name.unwrap_or_else(|| default_name(&url));
    source.url = url;
    source.reference = branch;
    Ok(Command::Watch {
        source: Box::new(source),
        cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
        once,
    })
}

fn verify(allowed_signers: PathBuf, all_commits: bool) -> gitfeed::Verify {
    let mut verify = gitfeed::Verify::new(allowed_signers);
    verify.all_commits = all_commits;
    verify
}

fn auth(source: &mut Source) -> &mut gitfeed::Auth {
    source.auth.get_or_insert_with(gitfeed::Auth::default)
}

fn parse_run(args: &[String]) -> Result<Command, String> {
    let Some(parsed) = parse_options("run", RUN_OPTIONS, 0, args)? else {
        return Ok(help("run", RUN_OPTIONS));
    };
    Ok(Command::Run {
        config: parsed.config.ok_or("run needs --config <FILE>")?,
        cache_dir: parsed.cache_dir,
    })
}

fn parse_status(args: &[String]) -> Result<Command, String> {
    let Some(parsed) = parse_options("status", STATUS_OPTIONS, 0, args)? else {
        return Ok(help("status", STATUS_OPTIONS));
    };
    Ok(Command::Status {
        cache_dir: parsed.cache_dir.unwrap_or_else(default_cache_dir),
        table: parsed.table,
    })
}

fn parse_gc(args: &[String]) -> Result<Command, String> {
    let Some(parsed) = parse_options("gc", GC_OPTIONS, 0, args)? else {
        return Ok(help("gc", GC_OPTIONS));
    };
    Ok(Command::Gc {
        cache_dir: parsed.cache_dir.unwrap_or_else(default_cache_dir),
        unused_for: parsed.unused_for.unwrap_or(DEFAULT_UNUSED_FOR),
    })
}

/// `https://host/org/policies.git` → `policies`; a local path is named after its directory.
fn default_name(url: &str) -> String {
    if !url.contains("://")
        && let Ok(path) = std::fs::canonicalize(url)
        && let Some(name) = path.file_name()
    {
        return name.to_string_lossy().trim_end_matches(".git").to_owned();
    }
    let trimmed = url.trim_end_matches('/');
    let last = trimmed
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(trimmed)
        .trim_end_matches(".git");
    match last {
        "" | "." | ".." => "repo".to_owned(),
        name => name.to_owned(),
    }
}

/// The per-user cache location, as the XDG base directory specification names it.
fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("gitfeed");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(home).join(".cache").join("gitfeed");
    }
    std::env::temp_dir().join("gitfeed")
}

/// A logger for stderr whose level comes from `RUST_LOG`.
struct Logger;

impl Logger {
    fn install() {
        let level = match std::env::var("RUST_LOG").ok().as_deref().map(str::trim) {
            Some("off") => log::LevelFilter::Off,
            Some("error") => log::LevelFilter::Error,
            Some("info") => log::LevelFilter::Info,
            Some("debug") => log::LevelFilter::Debug,
            Some("trace") => log::LevelFilter::Trace,
            _ => log::LevelFilter::Warn,
        };
        if log::set_logger(&Logger).is_ok() {
            log::set_max_level(level);
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            progress_line::clear();
            let level = record.level().as_str().to_lowercase();
            let _ = writeln!(
                std::io::stderr().lock(),
                "gitfeed {level}: {}",
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table aligns its columns, shortens the commit, and says how long ago a success was.
    #[test]
    fn status_table_for_a_person() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let mut ok = gitfeed::Status::default();
        ok.source = "policies".into();
        ok.state = "idle".into();
        ok.current = Some("0123456789abcdef0123456789abcdef01234567".into());
        ok.last_success_ms = Some(1_000_000_000 - 90_000);
        let mut down = gitfeed::Status::default();
        down.source = "gw".into();
        down.state = "backoff".into();
        down.last_error = Some("gw (git://h/r.git): could not resolve host h".into());
        let table = status_table(&[ok, down], now);
        assert_eq!(
            table,
            "SOURCE    STATE    CURRENT       LAST SUCCESS  LAST ERROR\n\
             policies  idle     0123456789ab  1m ago        -\n\
             gw        backoff  -             never         gw (git://h/r.git): could not resolve host h\n"
        );
        assert!(matches!(
            parse(&args("status --table")),
            Ok(Command::Status {
                table: Some(true),
                ..
            })
        ));
        assert!(matches!(
            parse(&args("status --json")),
            Ok(Command::Status {
                table: Some(false),
                ..
            })
        ));
        assert!(matches!(
            parse(&args("status")),
            Ok(Command::Status { table: None, .. })
        ));
    }

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_every_flag() {
        let Ok(Command::Watch {
            source,
            cache_dir,
            once,
        }) = parse(&args(
            "watch git://h/p.git --branch dev --name n --cache-dir /c --interval 250ms \
             --timeout=2s --backoff-initial 1s --backoff-max 5m --max-failures 3 --depth 1 --once \
             --failed-interval 2m",
        ))
        else {
            panic!("should parse");
        };
        assert!(once);
        assert_eq!(cache_dir, PathBuf::from("/c"));
        assert_eq!(source.name, "n");
        assert_eq!(source.reference.as_deref(), Some("dev"));
        assert_eq!(source.interval, std::time::Duration::from_millis(250));
        assert_eq!(source.timeout, std::time::Duration::from_secs(2));
        assert_eq!(source.max_failures, Some(3));
        assert_eq!(source.failed_interval, std::time::Duration::from_secs(120));
        assert_eq!(source.depth, Some(1));
    }

    #[test]
    fn parses_gc() {
        let Ok(Command::Gc {
            cache_dir,
            unused_for,
        }) = parse(&args("gc --cache-dir /c --unused-for=2h"))
        else {
            panic!("should parse");
        };
        assert_eq!(cache_dir, PathBuf::from("/c"));
        assert_eq!(unused_for, std::time::Duration::from_secs(7200));
        let Ok(Command::Gc { unused_for, .. }) = parse(&args("gc")) else {
            panic!("should parse");
        };
        assert_eq!(unused_for, DEFAULT_UNUSED_FOR);
        assert!(parse(&args("gc --unused-for")).is_err());
        assert!(parse(&args("gc --unused-for soon")).is_err());
        assert!(parse(&args("gc extra")).is_err());
    }

    #[test]
    fn rejects_bad_arguments() {
        for line in [
            "",
            "fetch x",
            "watch",
            "watch a b",
            "watch a --interval",
            "watch a --interval 5",
            "watch a --bogus",
            "watch a --once=yes",
            "run",
            "run --config",
            "run c.json",
            "run --config c.json --bogus",
            "run --config c.json --unused-for 1h",
            "status extra",
            "status --json=yes",
            "status --cache-dir",
            "status --unused-for 1h",
            "gc --table",
            "gc --config c.json",
        ] {
            assert!(parse(&args(line)).is_err(), "{line:?} should be rejected");
        }
    }

    /// Every command with options, and its table.
    const COMMANDS: &[(&str, &[Opt])] = &[
        ("watch", WATCH_OPTIONS),
        ("run", RUN_OPTIONS),
        ("status", STATUS_OPTIONS),
        ("gc", GC_OPTIONS),
    ];

    /// Options as the documents write them: each flag and the name of its value, if any,
    /// without `<>`.
    type Written = std::collections::BTreeSet<(String, Option<String>)>;

    fn written(options: &[Opt]) -> Written {
        options
            .iter()
            .map(|opt| (opt.flag.to_owned(), opt.value.map(bare)))
            .collect()
    }

    fn bare(value: &str) -> String {
        value.trim_matches(['<', '>']).to_owned()
    }

    /// The options in `words`: each `--flag`, with the value name after it (`<D>` or `D`).
    fn mentioned<'a>(mut words: impl Iterator<Item = &'a str>) -> Written {
        let is_value = |word: &&str| {
            let name = bare(word);
            !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase())
        };
        let mut found = Written::new();
        let mut word = words.next();
        while let Some(flag) = word {
            word = words.next();
            if !flag.starts_with("--") {
                continue;
            }
            let value = word.filter(is_value);
            if value.is_some() {
                word = words.next();
            }
            found.insert((flag.trim_end_matches(',').to_owned(), value.map(bare)));
        }
        found
    }

    /// The options the usage text lists under `header`, one a line.
    fn listed(usage: &str, header: &str) -> Written {
        let section = usage.split(header).nth(1).expect("the section");
        let section = section.split("\n\n").next().unwrap_or_default();
        section
            .lines()
            .filter(|line| line.starts_with("  --"))
            .flat_map(|line| mentioned(line.split_whitespace().take(2)))
            .collect()
    }

    /// The options of the README's table for `command`.
    fn readme_table(command: &str) -> Written {
        let readme = include_str!("../README.md");
        let header = format!("| `{command}` option | default | meaning |\n");
        let table = readme.split(&header).nth(1).expect("a table");
        table
            .lines()
            .take_while(|line| line.starts_with('|'))
            .flat_map(|line| {
                let cell = line.split('|').nth(1).unwrap_or_default();
                let quoted = cell.split('`').skip(1).step_by(2);
                let words = quoted.filter(|part| part.starts_with("--"));
                words.flat_map(|part| mentioned(part.split_whitespace()))
            })
            .collect()
    }

    /// The options `text`'s synopsis line of `command` names (`gitfeed gc [--cache-dir <D>] …`).
    fn synopsis(text: &str, command: &str) -> Written {
        let start = format!("gitfeed {command} ");
        let line = text
            .lines()
            .map(str::trim_start)
            .map(|line| line.trim_start_matches("Usage: "))
            .find(|line| line.starts_with(&start))
            .expect("a synopsis line");
        mentioned(
            line.split([' ', '[', ']', '|'])
                .filter(|word| !word.is_empty()),
        )
    }

    /// The usage text, the README and the parser agree with each command's table: `--help`
    /// lists every option, the README's table and the synopsis lines name the same options with
    /// the same values, and each option parses.
    #[test]
    fn usage_readme_and_parser_agree() {
        assert!(WATCH_OPTIONS.len() > 30);
        let readme = include_str!("../README.md");
        for &(command, options) in COMMANDS {
            let table = written(options);
            let (help, header) = match command {
                "watch" => (usage(None), "\nOptions:\n".to_owned()),
                _ => (
                    usage(Some((command, options))),
                    format!("\nOptions of `gitfeed {command}`:\n"),
                ),
            };
            assert_eq!(listed(&help, &header), table, "--help of {command}");
            assert_eq!(readme_table(command), table, "the README's {command} table");
            if command != "watch" {
                assert_eq!(synopsis(&help, command), table, "{command}'s usage line");
                assert_eq!(synopsis(readme, command), table, "{command} in the README");
            }
            for opt in options {
                let mut line: Vec<String> = match command {
                    "watch" => vec!["watch".into(), "git://h/r.git".into()],
                    "run" => vec!["run".into(), "--config".into(), "c.json".into()],
                    _ => vec![command.into()],
                };
                match opt.flag {
                    "--verify-all-commits" => line.extend(["--allowed-signers".into(), "f".into()]),
                    "--username" => line.extend(["--password-env".into(), "P".into()]),
                    _ => {}
                }
                line.push(opt.flag.to_owned());
                line.extend(opt.value.map(|value| match value {
                    "<T>" => "5s".to_owned(),
                    "<N>" => "3".to_owned(),
                    _ => "x".to_owned(),
                }));
                let parsed = parse(&line);
                assert!(parsed.is_ok(), "{line:?} does not parse: {parsed:?}");
            }
        }
    }

    /// `watch` and the whole program print the same usage text; another command adds its own
    /// options to it.
    #[test]
    fn help_of_each_command() {
        let Ok(Command::Help(whole)) = parse(&args("--help")) else {
            panic!("--help is help");
        };
        for line in ["help", "-h", "watch --help", "watch git://h/r.git -h"] {
            assert!(
                matches!(parse(&args(line)), Ok(Command::Help(ref text)) if *text == whole),
                "{line}"
            );
        }
        for &(command, _) in &COMMANDS[1..] {
            let Ok(Command::Help(text)) = parse(&args(&format!("{command} --help"))) else {
                panic!("{command} --help is help");
            };
            let own = format!("\nOptions of `gitfeed {command}`:\n");
            assert!(text.contains(&own), "{text}");
            assert_eq!(
                text.replacen(&own, "\n", 1).len(),
                text.len() - own.len() + 1
            );
            let (before, after) = text.split_once(&own).expect("the section");
            assert!(
                whole.starts_with(before),
                "{command}: the usage text, then its options"
            );
            assert!(whole.ends_with(after.split_once("\n\n").expect("a tail").1));
        }
    }

    #[test]
    fn parses_run_and_status() {
        let Ok(Command::Run { config, cache_dir }) =
            parse(&args("run --config=/etc/g.json --cache-dir /c"))
        else {
            panic!("should parse");
        };
        assert_eq!(config, PathBuf::from("/etc/g.json"));
        assert_eq!(cache_dir, Some(PathBuf::from("/c")));
        assert!(matches!(
            parse(&args("run --config c.json")),
            Ok(Command::Run {
                cache_dir: None,
                ..
            })
        ));
        let Ok(Command::Status { cache_dir, table }) =
            parse(&args("status --table --cache-dir=/c --json"))
        else {
            panic!("should parse");
        };
        assert_eq!(cache_dir, PathBuf::from("/c"));
        assert_eq!(table, Some(false), "the last of --json and --table counts");
    }

    #[test]
    fn default_names() {
        assert_eq!(default_name("https://h/org/policies.git"), "policies");
        assert_eq!(default_name("git@h:org/cfg.git/"), "cfg");
        assert_eq!(default_name("/nonexistent/repo.git"), "repo");
        assert_eq!(default_name("/"), "repo");
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            default_name("."),
            here.file_name().unwrap().to_string_lossy()
        );
    }
}
