//! Running a feed in a test and reading its events with deadlines.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::Receiver;
use gitfeed::{Event, Feed, FeedHandle, Source, StateChange, Update};
use smol::future::FutureExt;

/// A source that polls and retries quickly, for tests.
pub fn quick_source(name: &str, url: &str) -> Source {
    let mut source = Source::new(name, url);
    source.interval = Duration::from_millis(100);
    source.timeout = Duration::from_secs(10);
    source.backoff_initial = Duration::from_millis(10);
    source.backoff_max = Duration::from_millis(40);
    source
}

/// A feed running on a thread of its own, with a temporary cache.
pub struct Running {
    pub events: Receiver<Event>,
    pub handle: FeedHandle,
    thread: Option<JoinHandle<()>>,
    cache: Option<tempfile::TempDir>,
    cache_path: std::path::PathBuf,
}

impl Running {
    pub fn start(sources: Vec<Source>) -> Running {
        Running::start_with(sources, |feed| feed)
    }

    pub fn start_with(sources: Vec<Source>, configure: impl FnOnce(Feed) -> Feed) -> Running {
        Running::start_in(crate::util::unique_dir(), sources, configure)
    }

    /// Runs a feed over an existing cache directory, which it removes when dropped.
    pub fn start_in(
        cache: tempfile::TempDir,
        sources: Vec<Source>,
        configure: impl FnOnce(Feed) -> Feed,
    ) -> Running {
        let mut running = Running::start_at(cache.path(), sources, configure);
        running.cache = Some(cache);
        running
    }

    /// Runs a feed over the cache directory at `path`, which outlives it.
    pub fn start_at(
        path: &std::path::Path,
        sources: Vec<Source>,
        configure: impl FnOnce(Feed) -> Feed,
    ) -> Running {
        let feed = configure(Feed::new(path));
        for source in sources {
            feed.add(source).expect("valid source");
        }
        let events = feed.events();
        let handle = feed.handle();
        let thread = std::thread::spawn(move || feed.run());
        Running {
            events,
            handle,
            thread: Some(thread),
            cache: None,
            cache_path: path.to_owned(),
        }
    }

    /// The feed's cache directory.
    pub fn cache_dir(&self) -> &std::path::Path {
        &self.cache_path
    }

    /// The next event, or a panic naming `what` if none comes within `within`.
    pub fn next(&self, within: Duration, what: &str) -> Event {
        let receive = async { self.events.recv().await.ok() };
        let timeout = async {
            smol::Timer::after(within).await;
            None
        };
        smol::block_on(receive.or(timeout))
            .unwrap_or_else(|| panic!("no event within {within:?} while waiting for {what}"))
    }

    /// The next event, which must be an update.
    pub fn update(&self, within: Duration) -> Update {
        match self.next(within, "an update") {
            Event::Update(update) => update,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    /// The next event, which must be a state change.
    pub fn state(&self, within: Duration) -> StateChange {
        match self.next(within, "a state change") {
            Event::State(state) => state,
            other => panic!("expected a state change, got {other:?}"),
        }
    }

    /// The next event, which must be a warning.
    pub fn warning(&self, within: Duration) -> gitfeed::Warning {
        match self.next(within, "a warning") {
            Event::Warning(warning) => warning,
            other => panic!("expected a warning, got {other:?}"),
        }
    }

    /// Asserts that no event arrives for `quiet`.
    pub fn assert_quiet(&self, quiet: Duration) {
        let receive = async { self.events.recv().await.ok() };
        let timeout = async {
            smol::Timer::after(quiet).await;
            None
        };
        if let Some(event) = smol::block_on(receive.or(timeout)) {
            panic!("expected no event, got {event:?}");
        }
    }

    /// Shuts the feed down and waits for its thread; returns how long that took.
    pub fn stop(mut self) -> Duration {
        let started = Instant::now();
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the feed's thread does not panic");
        }
        started.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `(status letter, path)` pairs of an update's changes, for comparison with `git diff
/// --name-status`.
pub fn letters(update: &Update) -> Vec<(char, String)> {
    let mut pairs: Vec<(char, String)> = update
        .changes
        .iter()
        .map(|change| {
            let letter = match change.kind {
                gitfeed::ChangeKind::Added => 'A',
                gitfeed::ChangeKind::Modified => 'M',
                gitfeed::ChangeKind::Deleted => 'D',
            };
            (letter, change.path.clone())
        })
        .collect();
    pairs.sort_by(|a, b| a.1.cmp(&b.1));
    pairs
}

/// The source's directory in the cache, which holds its delivery state (tests use one source
/// per cache).
/// A feed creates it once the source's first attempt ends, which may come just after its
/// first update: this waits for it a little.
pub fn entry_dir(cache: &std::path::Path) -> std::path::PathBuf {
    let find = || {
        std::fs::read_dir(cache)
            .expect("cache")
            .map(|entry| entry.expect("entry").path())
            .find(|path| path.is_dir() && !path.ends_with("clones"))
    };
    crate::util::settle(|| usize::from(find().is_none()), 0, Duration::from_secs(10));
    find().expect("a source's directory in the cache")
}

/// The directory of the clone in the cache, which holds `repo.git` and its `lock` (tests use
/// one repository per cache).
pub fn clone_dir(cache: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(cache.join("clones"))
        .expect("the cache's clones")
        .map(|entry| entry.expect("entry").path())
        .find(|path| path.join("repo.git").exists())
        .expect("a clone in the cache")
}

/// `len` printable characters that do not compress: a pack of them is as large as they are.
pub fn incompressible(len: usize, seed: u64) -> String {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect()
}

/// The file of the one source's tip ref in the clone at `git_dir` (`refs/gitfeed/sources/<key>`;
/// gitfeed writes it loose).
pub fn tip_ref_file(git_dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(git_dir.join("refs/gitfeed/sources"))
        .expect("the sources' tip refs")
        .map(|entry| entry.expect("entry").path())
        .next()
        .expect("a source's tip ref")
}

/// The name of the one source's tip ref in the clone at `git_dir`.
pub fn tip_ref(git_dir: &std::path::Path) -> String {
    let file = tip_ref_file(git_dir);
    let name = file.file_name().expect("a ref file name").to_string_lossy();
    format!("refs/gitfeed/sources/{name}")
}
