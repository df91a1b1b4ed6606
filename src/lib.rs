//! gitfeed keeps a local copy of a git branch in sync and tells its consumer exactly what changed.
//!
//! A [`Feed`] follows any number of [`Source`]s (a URL, a branch, a poll interval and the limits
//! of an attempt), runs on a smol executor, and sends [`Event`]s on a channel: an [`Update`]
//! listing the [`Change`]s between the last delivered commit and the new one, and a
//! [`StateChange`] whenever a source's health changes, with the [`Reason`] of a failure, which
//! is the same on every transport. A long clone or fetch reports its [`Progress`] on a channel
//! of its own, for a consumer that asks ([`Feed::progress`]).
//!
//! Every fetch attempt ends on time and gives back what it took: a hung remote costs one attempt
//! deadline, never a stuck thread, a descriptor or a child process. A pure state machine per
//! source decides when to fetch, how long to back off and when to give up; the driver carries
//! its decisions out.
//!
//! # Examples
//!
//! ```no_run
//! use gitfeed::{Event, Feed, Source};
//!
//! let feed = Feed::new("/var/cache/gitfeed");
//! let events = feed.events();
//! feed.add(Source::new("policies", "https://example.org/policies.git"))?;
//! std::thread::spawn(move || feed.run());
//! while let Ok(event) = events.recv_blocking() {
//!     if let Event::Update(update) = event {
//!         println!("{} moved to {}", update.source, update.new);
//!     }
//! }
//! # Ok::<(), gitfeed::Error>(())
//! ```
//!
//! # Acknowledging
//!
//! Delivery is at least once. Once an update is applied, acknowledge it with
//! [`FeedHandle::acknowledge`] (or [`acknowledge`] without a feed): the acknowledged commit is
//! kept in the cache, and after a restart the first update starts from it, so an update that was
//! sent but never acknowledged is sent again, with the same `new`. [`acknowledged`] says which
//! commit that is. A source with an [`exec`](Source::exec) command is acknowledged by the
//! command's success instead.
//!
//! # List, then watch
//!
//! A consumer that keeps its state in memory starts empty after a restart, and acknowledged
//! updates are not sent again. With [`Source::list_on_start`], the first update after a start
//! lists every file of the commit reached (`old: None`), then updates are incremental:
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use gitfeed::{ChangeKind, Event, Feed, Source};
//!
//! let mut source = Source::new("policies", "https://example.org/p.git");
//! source.list_on_start = true;
//! source.contents = Some(1 << 20); // the files' bytes ride along, up to 1 MiB each
//! let feed = Feed::new("/var/cache/agent");
//! let (events, handle) = (feed.events(), feed.handle());
//! handle.add(source)?;
//! std::thread::spawn(move || feed.run());
//!
//! let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
//! while let Ok(event) = events.recv_blocking() {
//!     match event {
//!         Event::Update(update) => {
//!             if update.old.is_none() {
//!                 files.clear(); // a full listing: the whole state
//!             }
//!             for change in &update.changes {
//!                 match (change.kind, change.bytes()) {
//!                     (ChangeKind::Deleted, _) => drop(files.remove(&change.path)),
//!                     (_, Some(bytes)) => drop(files.insert(change.path.clone(), bytes)),
//!                     (_, None) => eprintln!("{}: {:?}", change.path, change.omitted),
//!                 }
//!             }
//!             handle.acknowledge(&update.source, &update.new)?;
//!         }
//!         // Left out of the update that follows (a submodule, a hostile name): sent with
//!         // every sending of that update.
//!         Event::Warning(warning) => eprintln!("{}: {}", warning.source, warning.message),
//!         Event::State(state) => eprintln!("{} is {}", state.source, state.state),
//!         _ => {}
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Reading files
//!
//! Without [`Source::contents`], read what an update names from the cache with a [`Reader`]:
//! straight from the object database, honouring the source's filter and `max_file_size`.
//! [`Reader::read_blob`] reads a file by the blob id its [`Change`] carries, without reading
//! any tree; [`Reader::read`] by path reads only the trees along the path; [`Reader::walk`]
//! lists a commit's files one at a time, so a task on a shared executor can yield between
//! them. A [`Source::checkout`] writes each commit's files to a directory instead, for agents
//! that load files from disk.
//!
//! ```no_run
//! # fn apply(_: &str, _: &[u8]) {}
//! # let update: gitfeed::Update = unimplemented!();
//! let source = gitfeed::Source::new("policies", "https://example.org/p.git");
//! let reader = gitfeed::Reader::open("/var/cache/agent", &source)?;
//! for change in &update.changes {
//!     if let Some(id) = &change.id {
//!         apply(&change.path, &reader.read_blob(id)?);
//!     }
//! }
//! # Ok::<(), gitfeed::Error>(())
//! ```
//!
//! # Errors
//!
//! Every fallible call returns one type, [`Error`]. Its [`reason`](Error::reason) is the same
//! [`Reason`] a failed attempt carries in `state` events and the status (`connection_refused`,
//! `ref_not_found`, …), plus [`Reason::InvalidInput`], [`Reason::NotFound`] and
//! [`Reason::Stopped`] for what only a call meets; its [`kind`](Error::kind) says whether
//! trying again can help. What was said underneath (a transport's message, the system's error)
//! is its [`source`](std::error::Error::source); `{:#}` prints the whole chain on one line.
//!
//! ```no_run
//! use gitfeed::{ErrorKind, Reason, Source};
//!
//! match gitfeed::sync_once("/var/cache/gitfeed", &Source::new("p", "https://example.org/p.git")) {
//!     Ok(update) => println!("{update:?}"),
//!     Err(err) if err.reason() == Reason::NameResolution => println!("no network yet"),
//!     Err(err) if err.kind() == ErrorKind::Transient => println!("try again later: {err:#}"),
//!     Err(err) => eprintln!("cannot follow it: {err:#}"),
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

// gix's HTTP transport is chosen by a feature; without one gitfeed has no http(s):// at all.
#[cfg(not(any(feature = "https-rustls", feature = "https-system-curl")))]
compile_error!(
    "gitfeed needs an HTTPS backend: enable the `https-rustls` feature (the default) or \
     `https-system-curl`"
);

mod auth;
mod cache;
mod clock;
mod driver;
mod error;
mod event;
mod exec;
mod failure;
mod feed;
mod git;
mod machine;
mod progress;
mod reader;
mod reason;
mod snapshot;
mod source;
mod status;
mod tracker;
#[cfg(feature = "verify")]
mod verify;
mod work;

/// The channel types of [`Feed::events`], [`Feed::progress`] and [`Follower::progress`],
/// re-exported so that a consumer names them without depending on `async-channel` itself.
pub use async_channel::{Receiver, RecvError, TryRecvError};
pub use auth::Auth;
pub use cache::{GcReport, gc};
pub use clock::{block_on, readable, sleep_until};
pub use error::Error;
pub use event::{Change, ChangeKind, Encoding, Event, SourceState, StateChange, Update, Warning};
pub use feed::{
    DEFAULT_CONCURRENT_FETCHES, Feed, FeedHandle, Follower, acknowledge, acknowledged, sync_once,
};
pub use machine::ErrorKind;
pub use progress::{Progress, ProgressPhase};
pub use reader::{File, FileType, Reader};
pub use reason::Reason;
pub use source::{Filter, Source, Verify, parse_duration};
pub use status::{Status, status};

// The README's Rust examples are compiled with the doctests, so they keep up with the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
