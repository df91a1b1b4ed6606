//! A per-source status snapshot, kept in the cache so that `gitfeed status` can show it for a
//! running or a stopped feed.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::git::ObjectId;
use crate::reason::Reason;

/// How a source is doing, as of its last attempt.
///
/// ```
/// let status: gitfeed::Status = serde_json::from_str(
///     r#"{"source":"p","url":"/srv/p.git","state":"backoff","attempt":2,
///         "last_error":"connection refused","reason":"connection_refused"}"#,
/// ).unwrap();
/// assert_eq!(status.attempt, 2);
/// assert_eq!(status.reason, Some(gitfeed::Reason::ConnectionRefused));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// The source's name.
    pub source: String,
    /// The source's URL, without credentials.
    pub url: String,
    /// The configured ref, if any.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// `idle`, `fetching`, `backoff` or `failed`.
    #[serde(default)]
    pub state: String,
    /// Consecutive failed attempts.
    #[serde(default)]
    pub attempt: u32,
    /// When the last attempt ended, in milliseconds since the Unix epoch. A poll that finds
    /// nothing new does not write the status, so for a healthy source this can be up to an
    /// hour older than its last poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_ms: Option<u64>,
    /// When the last successful attempt ended, in milliseconds since the Unix epoch; up to an
    /// hour old, as `last_attempt_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_ms: Option<u64>,
    /// Why the last failed attempt failed, until an attempt succeeds: one line naming the
    /// source and its URL and saying what failed in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The reason of `last_error`, the same on every transport, like `"timeout"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// What the transport, a helper program or the server said underneath `last_error`, when
    /// it was not gitfeed's own words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The last commit the consumer acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<String>,
    /// The commit the followed ref pointed to at the last successful attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// The URL (source or mirror) that answered the last successful attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
}

/// How old the status on disk may grow while nothing a reader needs changes: a no-change
/// poll writes nothing, so `last_attempt_ms` and `last_success_ms` on disk can lag by this
/// much. Flash storage without wear levelling would not survive a write per poll.
pub(crate) const REFRESH_MS: u64 = 3_600_000;

impl Status {
    /// True when writing `self` over `written` (what the status file holds) tells a reader
    /// something new: anything but the attempt's times differs, or those times are
    /// [`REFRESH_MS`] newer than the ones written.
    pub(crate) fn is_news_over(&self, written: &Status) -> bool {
        let untimed = |status: &Status| Status {
            last_attempt_ms: None,
            last_success_ms: None,
            ..status.clone()
        };
        let stale = match (self.last_attempt_ms, written.last_attempt_ms) {
            (Some(now), Some(then)) => now.saturating_sub(then) >= REFRESH_MS,
            (now, then) => now != then,
        };
        stale || untimed(self) != untimed(written)
    }

    /// The status kept in `entry_dir`, if there is a readable one.
    pub(crate) fn read(entry_dir: &Path) -> Option<Status> {
        let text = fs::read(entry_dir.join("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn write(&self, entry_dir: &Path) -> io::Result<()> {
        fs::create_dir_all(entry_dir)?;
        let temporary = entry_dir.join("status.json.tmp");
        fs::write(
            &temporary,
            serde_json::to_vec(self).map_err(io::Error::other)?,
        )?;
        // No fsync: a status lost in a crash is rewritten by the next attempt.
        fs::rename(&temporary, entry_dir.join("status.json"))
    }

    /// Records the success of the last attempt, which found `tip` at `served_by`: clears the
    /// failure fields and remembers the tip (`None` when the source has no commit yet).
    pub(crate) fn record_success(&mut self, tip: Option<ObjectId>, served_by: &str) {
        self.last_success_ms = self.last_attempt_ms;
        self.last_error = None;
        self.reason = None;
        self.detail = None;
        self.current = tip.map(|tip| tip.to_string());
        self.served_by = Some(crate::git::redact_url(served_by));
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The status of every source that has run with the cache at `cache_dir`, sorted by name.
/// Unreadable or missing status files are skipped, and a cache directory that does not exist
/// yet has no sources. It fails only when the directory cannot be read.
///
/// ```no_run
/// for status in gitfeed::status("/var/cache/gitfeed")? {
///     println!("{}: {} ({} failures)", status.source, status.state, status.attempt);
/// }
/// # Ok::<(), gitfeed::Error>(())
/// ```
pub fn status(cache_dir: impl AsRef<Path>) -> Result<Vec<Status>, Error> {
    let cache_dir = cache_dir.as_ref();
    let entries = match fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(Error::io(
                format!("cannot read the cache directory {}", cache_dir.display()),
                err,
            ));
        }
    };
    let mut all = Vec::new();
    for entry in entries.flatten() {
        let Ok(text) = fs::read(entry.path().join("status.json")) else {
            continue;
        };
        if let Ok(mut status) = serde_json::from_slice::<Status>(&text) {
            // The acknowledgement file is the authority: it may be newer than the snapshot.
            if let Some(acknowledged) = crate::cache::Entry::at(&entry.path()).delivered() {
                status.acknowledged = Some(acknowledged.to_string());
            }
            all.push(status);
        }
    }
    all.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(all)
}
