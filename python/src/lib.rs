//! `gitfeed._gitfeed`, the extension module under the Python package `gitfeed`.
//!
//! It adds no rules of its own: sources arrive as the JSON of the config file's sources, events
//! and statuses leave as the JSON the command line prints, and every failure is the library's
//! [`gitfeed::Error`], raised as the package's `gitfeed.Error`. `gitfeed/__init__.py` turns
//! Python objects into that JSON and back. The interpreter's lock is released whenever Rust
//! waits or works: for an event, a fetch, a read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gitfeed::{Event, FeedHandle, Reader, Receiver, Source};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// How long a blocking wait goes without the interpreter's lock before it takes it back to
/// let Python run its signal handlers, so that Ctrl-C interrupts a wait within this.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// A feed running on a thread of its own, and the events it has sent.
#[pyclass(frozen, module = "gitfeed._gitfeed")]
struct Feed {
    cache_dir: PathBuf,
    handle: FeedHandle,
    events: Receiver<Event>,
    /// An event a wait took from the channel that nobody has been handed yet. A waiter whose
    /// caller has gone (a cancelled asyncio task) leaves it here, so no event is lost. Takers
    /// hold this lock while they take, from here first and then from the channel, so none is
    /// reordered.
    inbox: Mutex<Option<Event>>,
    /// The sources added and not removed, as they were added: what a read needs to know.
    sources: Mutex<HashMap<String, Source>>,
    /// A reader per source, with the commit it last read: it is reopened for a new commit,
    /// so a reader never outlives the packs of the fetch it was opened after.
    readers: Mutex<HashMap<String, (String, Reader)>>,
    runner: Mutex<Option<JoinHandle<()>>>,
}

#[pymethods]
impl Feed {
    #[new]
    #[pyo3(signature = (cache_dir, concurrent_fetches = None))]
    fn new(cache_dir: PathBuf, concurrent_fetches: Option<usize>) -> PyResult<Self> {
        let mut feed = gitfeed::Feed::new(&cache_dir);
        if let Some(n) = concurrent_fetches {
            feed = feed.concurrent_fetches(n);
        }
        let handle = feed.handle();
        let events = feed.events();
        let runner = std::thread::Builder::new()
            .name("gitfeed".into())
            .spawn(move || feed.run())
            .map_err(|err| PyRuntimeError::new_err(format!("cannot start the feed: {err}")))?;
        Ok(Self {
            cache_dir,
            handle,
            events,
            inbox: Mutex::new(None),
            sources: Mutex::default(),
            readers: Mutex::default(),
            runner: Mutex::new(Some(runner)),
        })
    }

    fn add(&self, py: Python<'_>, source: &str) -> PyResult<()> {
        let source = parse_source(py, source)?;
        let name = source.name.clone();
        self.handle
            .add(source.clone())
            .map_err(|err| raise(py, &err))?;
        lock(&self.readers).remove(&name);
        lock(&self.sources).insert(name, source);
        Ok(())
    }

    fn remove(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.handle.remove(name).map_err(|err| raise(py, &err))?;
        lock(&self.readers).remove(name);
        lock(&self.sources).remove(name);
        Ok(())
    }

    #[pyo3(signature = (name, commit = None))]
    fn trigger(&self, py: Python<'_>, name: &str, commit: Option<&str>) -> PyResult<()> {
        match commit {
            Some(commit) => self.handle.trigger_with_hint(name, commit),
            None => self.handle.trigger(name),
        }
        .map_err(|err| raise(py, &err))
    }

    fn acknowledge(&self, py: Python<'_>, name: &str, commit: &str) -> PyResult<()> {
        let handle = self.handle.clone();
        let (name, commit) = (name.to_owned(), commit.to_owned());
        // It writes and syncs a file: no reason to hold up other Python threads meanwhile.
        py.detach(move || handle.acknowledge(&name, &commit))
            .map_err(|err| raise(py, &err))
    }

    fn acknowledged(&self, py: Python<'_>, name: &str) -> PyResult<Option<String>> {
        let source = self.source(py, name)?;
        Ok(gitfeed::acknowledged(&self.cache_dir, &source))
    }

    /// The JSON list of the statuses of this feed's sources.
    fn status(&self, py: Python<'_>) -> PyResult<String> {
        let cache_dir = self.cache_dir.clone();
        let statuses = py
            .detach(move || gitfeed::status(cache_dir))
            .map_err(|err| raise(py, &err))?;
        let sources = lock(&self.sources);
        let ours: Vec<_> = statuses
            .into_iter()
            .filter(|status| sources.contains_key(&status.source))
            .collect();
        to_json(&ours)
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        commit: &str,
        path: &str,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let source = self.source(py, name)?;
        let cache_dir = self.cache_dir.clone();
        let readers = &self.readers;
        let bytes = py
            .detach(|| {
                let mut readers = lock(readers);
                let fresh = match readers.remove(name) {
                    Some((last, reader)) if last == commit => reader,
                    _ => Reader::open(&cache_dir, &source)?,
                };
                let bytes = fresh.read(commit, path);
                readers.insert(name.to_owned(), (commit.to_owned(), fresh));
                bytes
            })
            .map_err(|err| raise(py, &err))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The next event's JSON, waiting up to `timeout` seconds (`None`: until there is one).
    /// `None` when the time passed or the feed has stopped and every event was handed out.
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<String>> {
        let deadline = timeout.map(|seconds| Instant::now() + seconds_to_duration(seconds));
        loop {
            let slice = Instant::now() + SIGNAL_CHECK;
            let until = deadline.map_or(slice, |deadline| deadline.min(slice));
            if let Some(event) = py.detach(|| self.receive(until)) {
                return to_json(&event).map(Some);
            }
            if self.drained() || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Ok(None);
            }
            // Ctrl-C: the handler runs here, and `KeyboardInterrupt` ends the wait.
            py.check_signals()?;
        }
    }

    /// The next event's JSON if one is ready, without waiting (also not for another thread
    /// that is waiting for one: then `None`).
    fn try_next(&self) -> PyResult<Option<String>> {
        let Ok(mut inbox) = self.inbox.try_lock() else {
            return Ok(None);
        };
        let event = inbox.take().or_else(|| self.events.try_recv().ok());
        event.as_ref().map(to_json).transpose()
    }

    /// Waits, without the interpreter's lock, up to `timeout` seconds for an event to be ready
    /// or the feed to end, and takes nothing: a caller that has gone by then (a cancelled
    /// asyncio task) loses nothing, and [`Feed::try_next`] hands the event out.
    fn wait(&self, py: Python<'_>, timeout: f64) {
        let until = Instant::now() + seconds_to_duration(timeout);
        py.detach(|| {
            let mut inbox = lock(&self.inbox);
            if inbox.is_none() {
                *inbox = self.recv_until(until);
            }
        });
    }

    /// True once the feed has stopped and every event was handed out.
    fn drained(&self) -> bool {
        self.events.is_closed()
            && self.events.is_empty()
            && self.inbox.try_lock().is_ok_and(|inbox| inbox.is_none())
    }

    /// Stops the feed: attempts in flight are interrupted, and this returns once the feed's
    /// thread and every fetch thread have ended. Events sent before can still be taken.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.stop());
    }
}

impl Feed {
    fn source(&self, py: Python<'_>, name: &str) -> PyResult<Source> {
        lock(&self.sources).get(name).cloned().ok_or_else(|| {
            error(
                py,
                "not_found",
                false,
                &format!("there is no source named `{name}`"),
            )
        })
    }

    /// The next event, waiting for it up to `until`. Takers are served one at a time, so
    /// events are handed out in the order they were sent.
    fn receive(&self, until: Instant) -> Option<Event> {
        let mut inbox = lock(&self.inbox);
        inbox.take().or_else(|| self.recv_until(until))
    }

    /// The channel's next event, waiting for it up to `until`; call it holding `inbox`.
    fn recv_until(&self, until: Instant) -> Option<Event> {
        if let Ok(event) = self.events.try_recv() {
            return Some(event);
        }
        gitfeed::block_on(smol::future::or(
            async { self.events.recv().await.ok() },
            async {
                gitfeed::sleep_until(until).await;
                None
            },
        ))
    }

    fn stop(&self) {
        self.handle.shutdown();
        if let Some(runner) = lock(&self.runner).take() {
            // The feed's thread never panics on its own; if it did, the feed is over anyway.
            let _ = runner.join();
        }
        lock(&self.readers).clear();
    }
}

impl Drop for Feed {
    /// A feed nobody closed stops when its Python object goes: it is told to, and its thread
    /// ends by itself once the attempts in flight are interrupted. Nothing waits for that
    /// here, where the interpreter's lock is held; `close()` is the call that waits.
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Runs one attempt for `source` outside a feed: the update event since the acknowledged
/// commit, as JSON, or `None` when nothing moved.
#[pyfunction]
fn sync_once(py: Python<'_>, cache_dir: PathBuf, source: &str) -> PyResult<Option<String>> {
    let source = parse_source(py, source)?;
    let update = py
        .detach(move || gitfeed::sync_once(cache_dir, &source))
        .map_err(|err| raise(py, &err))?;
    // An update event, as a feed sends it.
    update
        .map(|update| to_json(&Event::Update(update)))
        .transpose()
}

#[pyfunction]
fn acknowledge(py: Python<'_>, cache_dir: PathBuf, source: &str, commit: &str) -> PyResult<()> {
    let source = parse_source(py, source)?;
    let commit = commit.to_owned();
    py.detach(move || gitfeed::acknowledge(cache_dir, &source, &commit))
        .map_err(|err| raise(py, &err))
}

#[pyfunction]
fn acknowledged(py: Python<'_>, cache_dir: PathBuf, source: &str) -> PyResult<Option<String>> {
    let source = parse_source(py, source)?;
    Ok(gitfeed::acknowledged(cache_dir, &source))
}

#[pyfunction]
fn read<'py>(
    py: Python<'py>,
    cache_dir: PathBuf,
    source: &str,
    commit: &str,
    path: &str,
) -> PyResult<Bound<'py, PyBytes>> {
    let source = parse_source(py, source)?;
    let bytes = py
        .detach(|| Reader::open(cache_dir, &source)?.read(commit, path))
        .map_err(|err| raise(py, &err))?;
    Ok(PyBytes::new(py, &bytes))
}

/// The JSON list of the statuses of every source in `cache_dir`.
#[pyfunction]
fn status(py: Python<'_>, cache_dir: PathBuf) -> PyResult<String> {
    let statuses = py
        .detach(move || gitfeed::status(cache_dir))
        .map_err(|err| raise(py, &err))?;
    to_json(&statuses)
}

#[pymodule]
fn _gitfeed(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<Feed>()?;
    module.add_function(wrap_pyfunction!(sync_once, module)?)?;
    module.add_function(wrap_pyfunction!(acknowledge, module)?)?;
    module.add_function(wrap_pyfunction!(acknowledged, module)?)?;
    module.add_function(wrap_pyfunction!(read, module)?)?;
    module.add_function(wrap_pyfunction!(status, module)?)?;
    Ok(())
}

/// A source from the JSON of a config file's source. A value that does not fit names its key
/// (`filter.extensions: invalid type: string "rego", expected a sequence`), as does an unknown
/// or a missing key; then the library checks the source as a whole.
fn parse_source(py: Python<'_>, json: &str) -> PyResult<Source> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|err| {
        error(
            py,
            "invalid_input",
            false,
            &format!("invalid source: {err}"),
        )
    })?;
    if !value.is_object() {
        return Err(error(
            py,
            "invalid_input",
            false,
            "invalid source: expected a dict of the config file's keys",
        ));
    }
    let source: Source = serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path == "." {
            // Unknown and missing keys: serde names them itself.
            format!("invalid source: {inner}")
        } else {
            format!("invalid source: `{path}`: {inner}")
        };
        error(py, "invalid_input", false, &message)
    })?;
    source.validate().map_err(|err| raise(py, &err))?;
    Ok(source)
}

/// The library's error as the package's exception, with its whole chain as the message.
fn raise(py: Python<'_>, err: &gitfeed::Error) -> PyErr {
    let retryable = err.kind() != gitfeed::ErrorKind::Permanent;
    error(py, err.reason().as_str(), retryable, &format!("{err:#}"))
}

/// `gitfeed.Error` (or the subclass that fits `reason`) for `reason` and `message`.
fn error(py: Python<'_>, reason: &str, retryable: bool, message: &str) -> PyErr {
    let made = py
        .import("gitfeed._errors")
        .and_then(|errors| errors.getattr("from_reason"))
        .and_then(|make| make.call1((message, reason, retryable)));
    match made {
        Ok(exception) => PyErr::from_value(exception),
        // The package is broken (its Python half is missing): say what was meant anyway.
        Err(_) => PyRuntimeError::new_err(format!("{reason}: {message}")),
    }
}

fn to_json(value: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(value)
        .map_err(|err| PyRuntimeError::new_err(format!("cannot write JSON: {err}")))
}

/// A timeout given in seconds, as Python gives them: a negative one is no wait at all, and an
/// enormous one is a very long wait rather than an error.
fn seconds_to_duration(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(Duration::from_secs(u32::MAX.into()))
}

/// Locks `mutex`, whether or not a thread panicked while holding it: what it guards stays
/// consistent at every await and return.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
