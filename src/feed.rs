//! The public entry point: a [`Feed`] of sources and its [`FeedHandle`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use async_channel::{Receiver, Sender};
use smol::LocalExecutor;
use smol::lock::Semaphore;

use crate::driver::{self, Control, Shared};
use crate::error::Error;
use crate::event::{Event, Update};
use crate::git::ObjectId;
use crate::progress::{Outlet, Progress};
use crate::reason::Reason;
use crate::source::Source;
use crate::work::Plan;

/// How many fetch attempts run at once by default. Each runs on a thread of its own that ends
/// with the attempt, so this also bounds the feed's threads.
pub const DEFAULT_CONCURRENT_FETCHES: usize = 4;

/// Follows a set of sources and sends their [`Event`]s on a channel.
///
/// Build it with [`Feed::new`], keep [`Feed::events`] and a [`Feed::handle`], then run it:
/// [`Feed::run`] on a thread of its own, or [`Feed::run_async`] as a task beside your own. Sources
/// can be added, changed, triggered and removed before and while it runs, from any thread.
///
/// ```no_run
/// use gitfeed::{Event, Feed, Source};
///
/// let feed = Feed::new("/var/cache/gitfeed");
/// let events = feed.events();
/// let handle = feed.handle();
/// handle.add(Source::new("config", "git://10.0.0.1/config.git"))?;
/// let runner = std::thread::spawn(move || feed.run());
/// if let Ok(Event::Update(update)) = events.recv_blocking() {
///     println!("{} changes", update.changes.len());
/// }
/// handle.shutdown();
/// runner.join().unwrap();
/// # Ok::<(), gitfeed::Error>(())
/// ```
#[derive(Debug)]
pub struct Feed {
    cache_dir: PathBuf,
    concurrent_fetches: usize,
    handle: FeedHandle,
    commands: Receiver<Command>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    shutdown_rx: Receiver<()>,
    progress: Outlet,
}

/// Controls a [`Feed`] from anywhere: cheap to clone, `Send` and `Sync`.
#[derive(Debug, Clone)]
pub struct FeedHandle {
    commands: Sender<Command>,
    shutdown: Sender<()>,
    cache_dir: PathBuf,
    /// The sources added and not removed, by name, so that an acknowledgement is checked and
    /// recorded by the caller, at once.
    sources: Arc<Mutex<HashMap<String, Registered>>>,
}

/// What [`FeedHandle::acknowledge`] needs to know of a source.
#[derive(Debug, Clone)]
struct Registered {
    /// Its entry in the cache, where the acknowledged commit is kept.
    key: String,
    /// Whether its `exec` command acknowledges its updates instead of the consumer.
    by_exec: bool,
}

#[derive(Debug)]
enum Command {
    Add(Box<Source>),
    Remove(String),
    Trigger(String, Option<ObjectId>),
    Acknowledge(String, ObjectId),
}

impl Feed {
    /// A feed keeping its clones and delivery state under `cache_dir` (created on first use).
    pub fn new(cache_dir: impl AsRef<Path>) -> Self {
        let (commands_tx, commands) = async_channel::unbounded();
        let (shutdown, shutdown_rx) = async_channel::bounded(1);
        // Bounded, so a consumer that stops reading holds the feed back instead of letting
        // events pile up in memory.
        let (events_tx, events_rx) = async_channel::bounded(256);
        Self {
            cache_dir: cache_dir.as_ref().to_owned(),
            concurrent_fetches: DEFAULT_CONCURRENT_FETCHES,
            handle: FeedHandle {
                commands: commands_tx,
                shutdown,
                cache_dir: cache_dir.as_ref().to_owned(),
                sources: Default::default(),
            },
            commands,
            events_tx,
            events_rx,
            shutdown_rx,
            progress: Outlet::default(),
        }
    }

    /// At most `n` fetch attempts (and so fetch threads) run at once; at least one.
    pub fn concurrent_fetches(mut self, n: usize) -> Self {
        self.concurrent_fetches = n.max(1);
        self
    }

    /// The channel of events. Every clone receives a share of the events, not a copy of each.
    /// It closes when the feed has stopped.
    pub fn events(&self) -> Receiver<Event> {
        self.events_rx.clone()
    }

    /// The channel of progress samples: how each attempt that receives a pack for longer than
    /// a second is getting on, about once a second per source (see [`Progress`]). Apart from
    /// the events, so progress never holds an event back.
    ///
    /// Nothing is sampled until this is called, nor once every receiver it handed out is
    /// dropped. The channel holds the latest 64 samples: when the consumer falls behind, the
    /// oldest are dropped, and the fetch never waits for it. Every clone receives a share of
    /// the samples, not a copy of each. It closes when the feed has stopped.
    ///
    /// ```no_run
    /// let feed = gitfeed::Feed::new("/var/cache/gitfeed");
    /// let progress = feed.progress();
    /// std::thread::spawn(move || {
    ///     while let Ok(sample) = progress.recv_blocking() {
    ///         eprintln!("{sample}"); // policies: receiving objects 12,345/45,000, 61.2 MiB
    ///     }
    /// });
    /// ```
    pub fn progress(&self) -> Receiver<Progress> {
        self.progress.receiver()
    }

    /// A handle to add, remove and trigger sources and to shut the feed down.
    pub fn handle(&self) -> FeedHandle {
        self.handle.clone()
    }

    /// Adds a source, or replaces the source of the same name; see [`FeedHandle::add`].
    pub fn add(&self, source: Source) -> Result<(), Error> {
        self.handle.add(source)
    }

    /// Runs the feed on a `LocalExecutor` of its own on the calling thread, until
    /// [`FeedHandle::shutdown`]. While no attempt runs, the feed holds that thread alone: its
    /// timers need no reactor thread, and each attempt's thread ends with the attempt.
    pub fn run(self) {
        crate::clock::block_on(self.run_async());
    }

    /// The feed as a future: whatever polls it runs the feed, and it completes after
    /// [`FeedHandle::shutdown`], once every attempt has been interrupted and every fetch thread
    /// has ended. It borrows nothing, so it can be spawned as a task on your executor, or
    /// driven directly. Driven by [`block_on`](crate::block_on) (alone or with your
    /// `LocalExecutor`), the feed holds no thread but the calling one while idle; driven by
    /// another runtime, its timers are smol's, whose reactor keeps a thread of its own.
    ///
    /// ```no_run
    /// let feed = gitfeed::Feed::new("/var/cache/gitfeed");
    /// let events = feed.events();
    /// let executor = smol::LocalExecutor::new();
    /// executor.spawn(feed.run_async()).detach();
    /// gitfeed::block_on(executor.run(async {
    ///     while let Ok(event) = events.recv().await {
    ///         println!("{event:?}");
    ///     }
    /// }));
    /// ```
    pub async fn run_async(self) {
        // The source tasks run on an executor of the feed's own, which this future drives: the
        // feed never depends on the caller running an executor it was handed.
        let executor = LocalExecutor::new();
        executor.run(self.serve(&executor)).await
    }

    async fn serve(self, executor: &LocalExecutor<'_>) {
        let Feed {
            cache_dir,
            concurrent_fetches,
            handle,
            commands,
            events_tx,
            events_rx: _,
            shutdown_rx,
            progress,
        } = self;
        // Only the handles given out keep the command channel open; the feed's own copy must
        // not, or the loop below would never see the last handle go away.
        drop(handle);
        let shared = Rc::new(Shared {
            cache_dir,
            fetch_slots: Semaphore::new(concurrent_fetches),
            kept_handles: Default::default(),
            clone_turns: Default::default(),
            shutdown: shutdown_rx,
            progress,
        });
        // Per source: its cache key and its task's control channel.
        let mut sources: HashMap<String, (String, Sender<Control>)> = HashMap::new();
        let mut tasks = Vec::new();
        loop {
            let command = async { commands.recv().await.ok() };
            let stop = async {
                let _ = shared.shutdown.recv().await;
                None
            };
            let Some(command) = smol::future::or(command, stop).await else {
                break;
            };
            match command {
                Command::Add(source) => {
                    let key = source.cache_key();
                    if let Some((old_key, control)) = sources.get(&source.name)
                        && *old_key == key
                    {
                        let _ = control.try_send(Control::Change(source));
                        continue;
                    }
                    // A new source, or one that now names a different repository: its old
                    // task (if any) ends when its control channel closes.
                    let (control_tx, control_rx) = async_channel::unbounded();
                    let name = source.name.clone();
                    // Held before the old task can end and release what it used.
                    let (paths, claim) = driver::claim(&shared, &source);
                    tasks.push(executor.spawn(driver::follow(
                        Rc::clone(&shared),
                        events_tx.clone(),
                        *source,
                        paths,
                        claim,
                        control_rx,
                    )));
                    sources.insert(name, (key, control_tx));
                }
                Command::Remove(name) => {
                    sources.remove(&name);
                }
                Command::Trigger(name, hint) => {
                    if let Some((_, control)) = sources.get(&name) {
                        let _ = control.try_send(Control::Trigger(hint));
                    }
                }
                Command::Acknowledge(name, commit) => {
                    // Recorded by the caller already (see `FeedHandle::acknowledge`); the
                    // source's task only needs to know.
                    if let Some((_, control)) = sources.get(&name) {
                        let _ = control.try_send(Control::Acknowledged(commit));
                    }
                }
            }
            tasks.retain(|task| !task.is_finished());
        }
        shared.shutdown.close();
        drop(sources);
        for task in tasks {
            task.await;
        }
        events_tx.close();
        shared.progress.close();
    }
}

impl FeedHandle {
    /// Adds a source after validating it, or replaces the source of the same name.
    ///
    /// A replaced source keeps its task and delivery state when its URL, ref and depth are
    /// unchanged (its new timing takes effect at once, and it leaves `failed`); otherwise it
    /// starts afresh with new delivery state, still reading the clone every full-history
    /// source of its URL shares, and the old settings are released as
    /// [`remove`](FeedHandle::remove) releases a source. Nothing touches the network before
    /// validation passes.
    pub fn add(&self, source: Source) -> Result<(), Error> {
        let source = source.normalized();
        source.validate()?;
        let name = source.name.clone();
        let registered = Registered {
            key: source.cache_key(),
            by_exec: source.exec.is_some(),
        };
        self.commands
            .try_send(Command::Add(Box::new(source)))
            .map_err(|_| stopped())?;
        self.registry().insert(name, registered);
        Ok(())
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops following the source named `name` and releases it. An attempt in flight is
    /// finished first. Then its delivery state and status are deleted, and its clone too when
    /// no other source in the cache reads it and no feed, [`Follower`], [`Reader`](crate::Reader)
    /// or attempt of any process has it open; a clone that stays loses the source's tip ref,
    /// and the objects only the source needed go at the clone's next consolidation (at once
    /// when nobody is writing it). Added again, the source starts afresh: its first update
    /// lists every file. Another process that follows the very same source (same name, URL,
    /// ref and depth) keeps it all. A feed that shuts down releases nothing.
    ///
    /// Fails with [`Reason::NotFound`] when the feed has no source named `name`, and with
    /// [`Reason::Stopped`] once the feed has stopped.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        self.registered(name)?;
        self.commands
            .try_send(Command::Remove(name.to_owned()))
            .map_err(|_| stopped())?;
        self.registry().remove(name);
        Ok(())
    }

    /// Fetches the source named `name` now: cuts a backoff short and leaves `failed`.
    ///
    /// Fails with [`Reason::NotFound`] when the feed has no source named `name`, and with
    /// [`Reason::Stopped`] once the feed has stopped.
    pub fn trigger(&self, name: &str) -> Result<(), Error> {
        self.send_trigger(name, None)
    }

    /// Like [`FeedHandle::trigger`], with the commit a webhook announced: when that commit
    /// is already here (delivered, or in the clone), nothing is fetched. A `commit` that is
    /// not a commit id (40 hex digits) fails with [`Reason::InvalidInput`] and triggers
    /// nothing; call [`FeedHandle::trigger`] to fetch anyway.
    pub fn trigger_with_hint(&self, name: &str, commit: &str) -> Result<(), Error> {
        let hint = check_commit(commit)?;
        self.send_trigger(name, Some(hint))
    }

    fn send_trigger(&self, name: &str, hint: Option<ObjectId>) -> Result<(), Error> {
        self.registered(name)?;
        self.commands
            .try_send(Command::Trigger(name.to_owned(), hint))
            .map_err(|_| stopped())
    }

    /// The source named `name`; fails when the feed has stopped or has no such source.
    fn registered(&self, name: &str) -> Result<Registered, Error> {
        if self.commands.is_closed() {
            return Err(stopped());
        }
        self.registry().get(name).cloned().ok_or_else(|| {
            Error::new(
                Reason::NotFound,
                format!("there is no source named `{name}`"),
            )
        })
    }

    /// Records that the consumer has applied the update of source `name` to `commit` (the
    /// update's `new`). The acknowledged commit is kept in the cache: after a restart, the
    /// first update starts from it, so an update that was sent but never acknowledged is sent
    /// again. Delivery is at least once; a consumer can deduplicate on `new`.
    ///
    /// The commit is written to the cache (atomically, and synced) before this returns, on the
    /// calling thread: once it returns `Ok`, a crash can no longer lose it. It fails for a
    /// source that was not added, for a text that is not a commit id, for a feed that has
    /// stopped, and when the cache cannot be written.
    ///
    /// A source with an [`exec`](Source::exec) command is acknowledged by the command's
    /// success alone; acknowledging it here has no effect.
    pub fn acknowledge(&self, name: &str, commit: &str) -> Result<(), Error> {
        let id = check_commit(commit)?;
        let registered = self.registered(name)?;
        if registered.by_exec {
            log::debug!("{name}: acknowledged by its exec command, not the consumer");
            return Ok(());
        }
        crate::cache::Entry::new(&self.cache_dir, &registered.key)
            .set_delivered(id)
            .map_err(|err| Error::io("cannot record the acknowledgement", err))?;
        // The source's task learns of it (for what it acknowledges on the consumer's behalf);
        // a feed that stopped meanwhile has nothing left to tell.
        let _ = self
            .commands
            .try_send(Command::Acknowledge(name.to_owned(), id));
        Ok(())
    }

    /// Stops the feed: attempts in flight are interrupted, and the feed's run returns once
    /// every fetch thread has ended. The event channel then closes.
    pub fn shutdown(&self) {
        self.shutdown.close();
        self.commands.close();
    }
}

/// Runs one attempt for `source` outside any feed, within the source's timeout for each of
/// its URLs (the source's and every mirror's): fetches, and returns the update since the
/// commit last acknowledged in this cache (`None` when nothing moved). Call [`acknowledge`]
/// once the update is applied; until then, the next call returns the same update again.
///
/// Each call opens the cached clone afresh; to poll one source again and again, keep a
/// [`Follower`].
///
/// A source's name is its identity in the cache: the first attempt of a source releases what
/// other settings of the same name (another pin, depth or URL) left in it, unless a feed,
/// follower or reader holds them, as [`FeedHandle::remove`] releases a source. A source pinned
/// to one release after another keeps one clone.
///
/// ```no_run
/// let source = gitfeed::Source::new("p", "https://example.org/p.git");
/// if let Some(update) = gitfeed::sync_once("/var/cache/gitfeed", &source)? {
///     println!("{} files changed", update.changes.len());
///     gitfeed::acknowledge("/var/cache/gitfeed", &source, &update.new)?;
/// }
/// # Ok::<(), gitfeed::Error>(())
/// ```
pub fn sync_once(cache_dir: impl AsRef<Path>, source: &Source) -> Result<Option<Update>, Error> {
    Follower::new(cache_dir, source)?.poll()
}

/// Follows one source on the caller's thread, without a feed or an executor: each
/// [`poll`](Follower::poll) is one attempt, as [`sync_once`] runs it, but the cached clone
/// stays open between polls (it is reopened after a failure).
///
/// ```no_run
/// let source = gitfeed::Source::new("p", "https://example.org/p.git");
/// let mut follower = gitfeed::Follower::new("/var/cache/gitfeed", &source)?;
/// loop {
///     if let Some(update) = follower.poll()? {
///         println!("{} files changed", update.changes.len());
///         follower.acknowledge(&update.new)?;
///     }
///     std::thread::sleep(std::time::Duration::from_secs(30));
/// }
/// # Ok::<(), gitfeed::Error>(())
/// ```
#[derive(Debug)]
pub struct Follower {
    shared: Shared,
    /// The source's settings as its polls use them, built once.
    plan: Arc<Plan>,
    handle: Option<crate::git::Repo>,
    warnings: Vec<String>,
    // Never closed while the follower lives: `shared.shutdown` only closes with it.
    _running: Sender<()>,
    /// Keeps the source's entry and clone from being released by a run of other settings of
    /// the same name, or removed by [`gc`](crate::gc), while the follower lives.
    _claim: crate::cache::Claim,
}

impl Follower {
    /// Checks `source` and prepares to follow it in `cache_dir`; nothing is fetched yet. Its
    /// entry and clone are held until the follower is dropped, and the first poll releases what
    /// other settings of the same name left in the cache (see [`sync_once`]).
    pub fn new(cache_dir: impl AsRef<Path>, source: &Source) -> Result<Self, Error> {
        let source = source.normalized();
        source.validate()?;
        let (running, shutdown) = async_channel::bounded(1);
        let claim = crate::cache::claim(
            &crate::cache::Entry::new(cache_dir.as_ref(), &source.cache_key()),
            &crate::cache::CloneDir::new(cache_dir.as_ref(), &source.clone_key()),
            &source.name,
        )
        .map_err(|err| Error::io("cannot open the cache", err))?;
        Ok(Self {
            shared: Shared {
                cache_dir: cache_dir.as_ref().to_owned(),
                fetch_slots: Semaphore::new(1),
                kept_handles: Default::default(),
                clone_turns: Default::default(),
                shutdown,
                progress: Outlet::default(),
            },
            plan: Arc::new(Plan::new(source)),
            handle: None,
            warnings: Vec::new(),
            _running: running,
            _claim: claim,
        })
    }

    /// Fetches, within the source's timeout for each of its URLs, and returns the update since
    /// the commit last acknowledged (`None` when nothing moved). Until
    /// [`acknowledge`](Follower::acknowledge) is called, the next poll returns the same update
    /// again.
    pub fn poll(&mut self) -> Result<Option<Update>, Error> {
        crate::clock::block_on(driver::once(
            &self.shared,
            &self.plan,
            &mut self.handle,
            &mut self.warnings,
        ))
    }

    /// What the last [`poll`](Follower::poll) left out, as a feed's `warning` events say it:
    /// submodules an update moved, entries a snapshot refused to write, a commit refused for
    /// its signature. Empty after a poll that left nothing out.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The commit last acknowledged; see [`acknowledged`].
    pub fn acknowledged(&self) -> Option<String> {
        acknowledged(&self.shared.cache_dir, self.plan.source())
    }

    /// The channel of progress samples of this follower's polls, as [`Feed::progress`] gives
    /// them: about once a second while a poll receives a pack for longer than a second, ending
    /// with a [`Finished`](crate::ProgressPhase::Finished) sample. [`poll`](Follower::poll)
    /// holds the calling thread, so read it on another one. It closes when the follower is
    /// dropped.
    ///
    /// ```no_run
    /// let source = gitfeed::Source::new("p", "https://example.org/p.git");
    /// let mut follower = gitfeed::Follower::new("/var/cache/gitfeed", &source)?;
    /// let progress = follower.progress();
    /// let shown = std::thread::spawn(move || {
    ///     while let Ok(sample) = progress.recv_blocking() {
    ///         eprintln!("{sample}");
    ///     }
    /// });
    /// let update = follower.poll()?;
    /// drop(follower);
    /// shown.join().unwrap();
    /// # Ok::<(), gitfeed::Error>(())
    /// ```
    pub fn progress(&self) -> Receiver<Progress> {
        self.shared.progress.receiver()
    }

    /// Records that the consumer has applied the update to `commit`.
    pub fn acknowledge(&self, commit: &str) -> Result<(), Error> {
        acknowledge(&self.shared.cache_dir, self.plan.source(), commit)
    }
}

/// The commit the consumer last acknowledged for `source` in `cache_dir` (by
/// [`FeedHandle::acknowledge`], [`acknowledge`] or an `exec` command's success), if any: where
/// the source's next update starts. It needs no running feed, and `None` also means the cache
/// has never seen the source.
///
/// ```no_run
/// let source = gitfeed::Source::new("p", "https://example.org/p.git");
/// match gitfeed::acknowledged("/var/cache/gitfeed", &source) {
///     Some(commit) => println!("applied up to {commit}"),
///     None => println!("nothing applied yet"),
/// }
/// ```
pub fn acknowledged(cache_dir: impl AsRef<Path>, source: &Source) -> Option<String> {
    crate::cache::Entry::new(cache_dir.as_ref(), &source.normalized().cache_key())
        .delivered()
        .map(|commit| commit.to_string())
}

/// Records, outside any feed, that the consumer has applied `source`'s update to `commit`;
/// see [`FeedHandle::acknowledge`].
pub fn acknowledge(
    cache_dir: impl AsRef<Path>,
    source: &Source,
    commit: &str,
) -> Result<(), Error> {
    let id = check_commit(commit)?;
    crate::cache::Entry::new(cache_dir.as_ref(), &source.normalized().cache_key())
        .set_delivered(id)
        .map_err(|err| Error::io("cannot record the acknowledgement", err))
}

/// The commit id written as `commit`.
fn check_commit(commit: &str) -> Result<ObjectId, Error> {
    crate::git::commit_id(commit)
        .ok_or_else(|| Error::invalid(format!("`{}` is not a commit id", commit.escape_debug())))
}

/// The error of a call to a feed that has shut down.
fn stopped() -> Error {
    Error::new(Reason::Stopped, "the feed has stopped")
}
