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
//! deadline, never a stuck thread, a descriptor or a child process. The pure [`machine::Machine`]
//! decides when to fetch, how long to back off and when to give up; the driver carries its
//! decisions out.
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
//! # Ok::<(), gitfeed::SourceError>(())
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
mod base64;
mod cache;
mod clock;
mod driver;
mod event;
mod exec;
mod failure;
mod feed;
mod git;
pub mod machine;
mod progress;
mod reader;
mod reason;
mod snapshot;
mod source;
mod status;
#[cfg(feature = "verify")]
mod verify;
mod work;

pub use auth::Auth;
pub use cache::{GcReport, gc};
pub use clock::{block_on, sleep_until};
pub use event::{Change, ChangeKind, Encoding, Event, SourceState, StateChange, Update, Warning};
pub use feed::{
    DEFAULT_CONCURRENT_FETCHES, Feed, FeedError, FeedHandle, Follower, SyncError, acknowledge,
    acknowledged, sync_once,
};
pub use machine::ErrorKind;
pub use progress::{Progress, ProgressPhase};
pub use reader::{File, FileType, ReadError, ReadErrorKind, Reader};
pub use reason::Reason;
pub use source::{Filter, Source, SourceError, Verify, parse_duration};
pub use status::{Status, status};
