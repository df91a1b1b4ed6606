//! What to follow: a [`Source`] and its validation.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::auth::Auth;
use crate::error::Error;
use crate::git;
use crate::machine::Policy;

/// One repository branch to follow, and the limits of every attempt to fetch it.
///
/// Build one with [`Source::new`] and adjust its public fields, or deserialize it from JSON;
/// durations in JSON are strings such as `"250ms"`, `"30s"` or `"5m"`:
///
/// ```
/// let source: gitfeed::Source = serde_json::from_str(
///     r#"{"name": "policies", "url": "https://example.org/p.git", "ref": "main", "interval": "10s"}"#,
/// ).unwrap();
/// assert!(source.validate().is_ok());
/// ```
///
/// A [`Feed`](crate::Feed) validates a source before it touches the network; see
/// [`Source::validate`] for what is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Source {
    /// A unique name within its feed, used in events and in the cache directory's layout.
    pub name: String,
    /// The remote: a local path, `file://`, `git://`, `http://`, `https://`, `ssh://` or an
    /// scp-like `user@host:path`.
    pub url: String,
    /// More URLs serving the same repository, tried in order within the same attempt when the
    /// ones before failed transiently. A mirror that is behind never moves the delivered commit
    /// backwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<String>,
    /// The branch or tag (`main`, `v1`: a bare name resolves as `git clone --branch` does, to
    /// the branch of that name, else the tag), full ref name (`refs/heads/main`,
    /// `refs/tags/v1`), `HEAD`, or commit id (40 hex digits: pinned, synced once and then no
    /// longer polled) to follow; `None` or `HEAD` follows the remote's default branch (the
    /// branch its `HEAD` names). An annotated tag resolves to its commit, and a moved tag is an
    /// update.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Time between the end of one successful poll and the start of the next, at most: each
    /// poll comes up to a fifth early, at random, so sources started together drift apart.
    #[serde(default = "defaults::interval", with = "duration_serde")]
    pub interval: Duration,
    /// The longest one attempt (connect, negotiate, receive, diff) may take.
    #[serde(default = "defaults::timeout", with = "duration_serde")]
    pub timeout: Duration,
    /// The delay after the first failed attempt; it doubles with every further failure.
    #[serde(default = "defaults::backoff_initial", with = "duration_serde")]
    pub backoff_initial: Duration,
    /// The longest delay between two failed attempts.
    #[serde(default = "defaults::backoff_max", with = "duration_serde")]
    pub backoff_max: Duration,
    /// After this many consecutive transient failures the source is `failed`; `None` retries
    /// with backoff for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// How long a `failed` source waits before it probes the remote again, at most (each
    /// probe comes up to a fifth early, at random); a trigger or a changed source probes at
    /// once. A failed source is never left for good: a device that starts before its network,
    /// or a remote that is fixed, recovers by itself.
    #[serde(default = "defaults::failed_interval", with = "duration_serde")]
    pub failed_interval: Duration,
    /// Fetch only this many commits of history (a shallow clone); `None` fetches all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// The ssh program and its options, as git's `core.sshCommand` (for example
    /// `ssh -i /etc/agent/key -o UserKnownHostsFile=/etc/agent/known_hosts`); `None` runs `ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    /// The private key ssh authenticates with (`-i`, and no other identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<PathBuf>,
    /// The known_hosts file that ssh checks the server's host key against, strictly: an
    /// unknown or changed host key is a permanent error. `None` uses ssh's own files, still
    /// strictly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// Deliver only commits with a valid SSH signature by an allowed signer. Needs the
    /// `verify` feature (on by default); a build without it refuses a source that sets this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// Credentials for HTTPS remotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// A PEM file of CA certificates to trust for HTTPS instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Do not check HTTPS certificates. Never on by accident: only this explicit setting turns
    /// checking off, and every attempt logs a warning while it is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_tls_verify: bool,
    /// Which files to deliver; changes, contents and snapshots all honour it. By default,
    /// every file.
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
    /// Attach the content of every added or modified file up to this many bytes to its
    /// [`Change`](crate::Change); larger files say why their content was left out. `None`
    /// attaches no content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<u64>,
    /// Write each new commit's filtered tree to `<checkout>/.snapshots/<commit>/` and point the
    /// symlink `<checkout>/current` at it before the update is sent. `None` writes nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<PathBuf>,
    /// How many snapshots to keep in `checkout`, the current one included.
    #[serde(default = "defaults::keep_snapshots")]
    pub keep_snapshots: usize,
    /// The largest file a snapshot or a read may hold, in bytes.
    #[serde(default = "defaults::max_file_size")]
    pub max_file_size: u64,
    /// The largest total size of a snapshot's files, in bytes.
    #[serde(default = "defaults::max_snapshot_size")]
    pub max_snapshot_size: u64,
    /// The largest pack a remote may send in one attempt, in bytes; a remote sending more is
    /// cut off and the source fails with the reason.
    #[serde(default = "defaults::max_pack_size")]
    pub max_pack_size: u64,
    /// Threads that resolve the deltas of a received pack (and of the pack written when the
    /// cache's packs are consolidated); `0` uses one per core. Objects stored whole are hashed
    /// as they arrive whatever this is; each thread holds one object and its delta base at a
    /// time, so memory grows with the thread count while speed grows only for packs with many
    /// deltas.
    #[serde(default = "defaults::index_threads")]
    pub index_threads: usize,
    /// Start with a full listing: the first update after the source starts (a feed's start, a
    /// [`Follower`](crate::Follower)'s or [`sync_once`](crate::sync_once)'s every attempt) has
    /// `old: None` and lists every file of the commit reached, the acknowledged one when the
    /// remote has not moved. For a consumer that keeps its state in memory: after a restart it
    /// is handed the whole state instead of nothing (acknowledged updates are not sent again).
    /// Once the listing is applied and acknowledged, updates are incremental as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub list_on_start: bool,
    /// A shell command (run by `sh -c`) for each update, after the snapshot swap when there
    /// is a [`checkout`](Source::checkout). It gets the update's JSON on stdin and
    /// `GITFEED_SOURCE`, `GITFEED_REF`, `GITFEED_OLD` (empty on a first update),
    /// `GITFEED_NEW` and, with a checkout, `GITFEED_CHECKOUT` (the snapshot's resolved path) in
    /// its environment; its output goes to the log, line by line, prefixed with the source.
    ///
    /// The update counts as acknowledged only when the command exits with status 0: the feed
    /// records it then, and ignores [`FeedHandle::acknowledge`](crate::FeedHandle::acknowledge)
    /// for this source. Otherwise the source backs off with reason
    /// [`Reason::ExecFailed`](crate::Reason::ExecFailed) and the update is delivered, and the
    /// command run, again; after a restart too. The command runs in a process group of its
    /// own, which is killed when the command exits (nothing it started in the background
    /// outlives it), when `exec_timeout` passes, and when the feed shuts down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// The longest the [`exec`](Source::exec) command may run.
    #[serde(default = "defaults::exec_timeout", with = "duration_serde")]
    pub exec_timeout: Duration,
}

/// Which commits a source may deliver: those signed with SSH (namespace `git`) by a key in an
/// allowed-signers file, in the format of git's `gpg.ssh.allowedSignersFile`. An unsigned or
/// badly signed commit is not delivered: the source stays on its last good commit and a
/// `warning` names the commit and the reason.
///
/// ```
/// let verify: gitfeed::Verify =
///     serde_json::from_str(r#"{"allowed_signers": "/etc/agent/allowed_signers"}"#).unwrap();
/// assert!(!verify.all_commits);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Verify {
    /// The allowed-signers file, read on every attempt.
    pub allowed_signers: PathBuf,
    /// Check every commit between the last delivered one and the tip, not only the tip.
    #[serde(default)]
    pub all_commits: bool,
}

impl Verify {
    /// Deliver only commits whose tip is signed by a key in `allowed_signers`; set
    /// `all_commits` to check every new commit.
    pub fn new(allowed_signers: impl Into<PathBuf>) -> Self {
        Verify {
            allowed_signers: allowed_signers.into(),
            all_commits: false,
        }
    }
}

/// Why a source with [`Source::verify`] is refused by a build without signature checks.
pub(crate) const VERIFY_MISSING: &str =
    "verify needs gitfeed built with the `verify` feature; this build checks no signatures";

/// Which files of the repository a source delivers.
///
/// A file is delivered when it lies under one of `directories` (if any), has one of
/// `extensions` or matches `include` (if either is given: `extensions: ["rego"]` with
/// `include: ["data.json"]` delivers both kinds), and does not match `exclude`. Patterns
/// follow gitignore rules: a pattern without `/` matches a name at any depth, a leading `/`
/// anchors it at the root, a trailing `/` matches a directory and everything in it, `**`
/// spans directories, and a later `!pattern` re-includes what an earlier one matched.
///
/// ```
/// let filter: gitfeed::Filter = serde_json::from_str(
///     r#"{"directories": ["policies"], "extensions": ["rego"], "exclude": ["*_test.rego"]}"#,
/// ).unwrap();
/// assert!(!filter.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Filter {
    /// Subtrees to deliver, like `policies` or `config/prod`.
    pub directories: Vec<String>,
    /// Patterns of files to deliver, besides those with one of `extensions`.
    pub include: Vec<String>,
    /// Patterns a file must not match.
    pub exclude: Vec<String>,
    /// File extensions to deliver (with or without the dot), besides the files `include`
    /// matches.
    pub extensions: Vec<String>,
}

impl Filter {
    /// The filter compiled for the git layer; an invalid pattern is reported with its text.
    pub(crate) fn matcher(&self) -> Result<git::Matcher, String> {
        git::Matcher::new(git::Patterns {
            directories: &self.directories,
            include: &self.include,
            exclude: &self.exclude,
            extensions: &self.extensions,
        })
    }

    /// True when the filter delivers every file.
    pub fn is_empty(&self) -> bool {
        self.directories.is_empty()
            && self.include.is_empty()
            && self.exclude.is_empty()
            && self.extensions.is_empty()
    }
}

mod defaults {
    use std::time::Duration;

    pub fn interval() -> Duration {
        Duration::from_secs(30)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn backoff_initial() -> Duration {
        Duration::from_secs(1)
    }
    pub fn backoff_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn failed_interval() -> Duration {
        Duration::from_secs(600)
    }
    pub fn keep_snapshots() -> usize {
        2
    }
    pub fn max_file_size() -> u64 {
        64 << 20
    }
    pub fn max_snapshot_size() -> u64 {
        1 << 30
    }
    pub fn max_pack_size() -> u64 {
        4 << 30
    }
    pub fn index_threads() -> usize {
        1
    }
    pub fn exec_timeout() -> Duration {
        Duration::from_secs(60)
    }
}

/// A source with an empty name and URL and every default; set at least `name` and `url`
/// (or use [`Source::new`]).
impl Default for Source {
    fn default() -> Self {
        Source::new("", "")
    }
}

impl Source {
    /// A source named `name` following the default branch of `url`, with the defaults: poll
    /// every 30 s, 60 s per attempt, backoff from 1 s up to 5 min, retrying for ever, a failed
    /// source probed every 10 min, full history.
    ///
    /// ```
    /// let mut source = gitfeed::Source::new("policies", "git://127.0.0.1/p.git");
    /// source.reference = Some("main".into());
    /// source.interval = std::time::Duration::from_secs(5);
    /// assert!(source.validate().is_ok());
    /// ```
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            mirrors: Vec::new(),
            reference: None,
            interval: defaults::interval(),
            timeout: defaults::timeout(),
            backoff_initial: defaults::backoff_initial(),
            backoff_max: defaults::backoff_max(),
            max_failures: None,
            failed_interval: defaults::failed_interval(),
            depth: None,
            ssh_command: None,
            ssh_key: None,
            known_hosts: None,
            verify: None,
            auth: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            filter: Filter::default(),
            contents: None,
            checkout: None,
            keep_snapshots: defaults::keep_snapshots(),
            max_file_size: defaults::max_file_size(),
            max_snapshot_size: defaults::max_snapshot_size(),
            max_pack_size: defaults::max_pack_size(),
            index_threads: defaults::index_threads(),
            list_on_start: false,
            exec: None,
            exec_timeout: defaults::exec_timeout(),
        }
    }

    /// Checks everything that can be checked without the network.
    ///
    /// Rejects an empty name or one with control characters, a malformed URL, a scheme other
    /// than those listed on [`Source::url`], a malformed ref name, a zero interval, timeout,
    /// initial backoff, `failed_interval` or `exec_timeout`, a backoff cap below the initial
    /// backoff, a zero `max_failures`, a zero `depth`, an invalid filter pattern, a zero
    /// `keep_snapshots`, an empty `exec` command, an `https://` URL when the build's libcurl
    /// has no TLS, and a [`verify`](Source::verify) setting in a build without the `verify`
    /// feature.
    ///
    /// ```
    /// let source = gitfeed::Source::new("p", "ftp://example.org/p.git");
    /// assert_eq!(
    ///     source.validate().unwrap_err().to_string(),
    ///     "source `p`: unsupported url scheme `ftp`; use a path, file://, git://, http(s):// or ssh://"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |problem: String| {
            Err(Error::invalid(format!(
                "source `{}`: {problem}",
                self.name.escape_debug()
            )))
        };
        if self.name.trim().is_empty() {
            return fail("name is empty".into());
        }
        if self.name.chars().any(char::is_control) {
            return fail("name contains a control character".into());
        }
        for url in std::iter::once(&self.url).chain(&self.mirrors) {
            if let Err(problem) = git::check_url(url) {
                return fail(problem);
            }
        }
        if let Some(reference) = &self.reference
            && let Err(problem) = git::check_ref(reference)
        {
            return fail(problem);
        }
        for (what, value) in [
            ("interval", self.interval),
            ("timeout", self.timeout),
            ("backoff_initial", self.backoff_initial),
            ("failed_interval", self.failed_interval),
            ("exec_timeout", self.exec_timeout),
        ] {
            if value.is_zero() {
                return fail(format!("{what} must be greater than zero"));
            }
        }
        if self.backoff_max < self.backoff_initial {
            return fail("backoff_max must not be less than backoff_initial".into());
        }
        if self.max_failures == Some(0) {
            return fail("max_failures must be at least 1".into());
        }
        if self.depth == Some(0) {
            return fail("depth must be at least 1".into());
        }
        if let Some(auth) = &self.auth
            && let Err(problem) = auth.check()
        {
            return fail(problem.to_string());
        }
        if !cfg!(feature = "verify") && self.verify.is_some() {
            return fail(VERIFY_MISSING.into());
        }
        if let Err(problem) = self.filter.matcher() {
            return fail(problem);
        }
        if self.keep_snapshots == 0 {
            return fail("keep_snapshots must be at least 1".into());
        }
        if self
            .checkout
            .as_ref()
            .is_some_and(|dir| dir.as_os_str().is_empty())
        {
            return fail("checkout directory is empty".into());
        }
        if self
            .exec
            .as_ref()
            .is_some_and(|command| command.trim().is_empty())
        {
            return fail("exec command is empty".into());
        }
        Ok(())
    }

    /// The ref name this source's identity in the cache is made of, when one was given: a
    /// bare name counts as the branch it names first (`main` → `refs/heads/main`), as it did
    /// before bare tag names were accepted, so existing caches keep their delivery state.
    pub(crate) fn full_ref(&self) -> Option<String> {
        self.reference.as_deref().map(git::full_ref_name)
    }

    /// What the remote is asked for: a full ref or commit id as given, a bare name as it is
    /// (resolved on the remote as a branch first, then as a tag), and `None` for `HEAD` or no
    /// ref (the remote's `HEAD`).
    pub(crate) fn wanted_ref(&self) -> Option<String> {
        self.reference
            .as_deref()
            .filter(|name| *name != "HEAD")
            .map(str::to_owned)
    }

    /// The directory name of this source's cache entry, which holds its delivery state:
    /// readable, and different whenever anything that changes what is delivered (URL, ref,
    /// depth) changes, so a changed source never starts from another one's acknowledged commit.
    pub(crate) fn cache_key(&self) -> String {
        // Mirrors serve the same repository, so they share the clone: not part of the key.
        let identity = format!(
            "{}\0{}\0{}",
            self.url,
            self.full_ref().unwrap_or_default(),
            self.depth.unwrap_or(0)
        );
        format!(
            "{}-{:016x}",
            readable(&self.name),
            fnv1a(identity.as_bytes())
        )
    }

    /// The directory name of the clone this source reads, under `<cache_dir>/clones/`.
    ///
    /// Every full-history source of one URL shares one clone, whatever ref or commit it
    /// follows. A shallow source (`depth`) keeps a clone of its own: git's `shallow` file is
    /// repository-wide, so a depth-limited fetch would cut the history that a full source of
    /// the same clone walks (forced-update detection, signature checks of every commit, the
    /// commit a diff starts from), and a full fetch does not undo another source's cut.
    pub(crate) fn clone_key(&self) -> String {
        let repository = self
            .url
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or_default();
        let repository = repository.strip_suffix(".git").unwrap_or(repository);
        match self.depth.filter(|depth| *depth > 0) {
            None => format!(
                "{}-{:016x}",
                readable(repository),
                fnv1a(self.url.as_bytes())
            ),
            Some(depth) => {
                let identity = format!(
                    "{}\0{}\0{depth}",
                    self.url,
                    self.full_ref().unwrap_or_default()
                );
                format!(
                    "{}-{:016x}-depth{depth}",
                    readable(repository),
                    fnv1a(identity.as_bytes())
                )
            }
        }
    }

    /// The ref in the clone that holds this source's fetched tip. Each source has its own, so
    /// sources of one clone never move each other's tips, and a pinned commit stays reachable
    /// from its source's ref however the branches around it are rewritten.
    pub(crate) fn tip_ref(&self) -> String {
        format!("{TIP_REFS}{}", self.cache_key())
    }

    /// Moves a password in the URL's userinfo into `auth`, so that it never appears in an
    /// event, a log line or the cache. Sources are added through this.
    pub(crate) fn normalized(&self) -> Source {
        let mut source = self.clone();
        source.take_url_secret();
        source
    }

    pub(crate) fn take_url_secret(&mut self) {
        if let Some((user, secret)) = crate::auth::take_url_password(&mut self.url) {
            let auth = self.auth.get_or_insert_with(Auth::default);
            if auth.username.is_none() {
                auth.username = Some(user);
            }
            auth.inline_password = Some(secret);
        }
    }

    /// The commit this source is pinned to, if its ref is a commit id.
    pub(crate) fn pinned_commit(&self) -> Option<&str> {
        self.reference.as_deref().filter(|r| git::is_commit_id(r))
    }

    pub(crate) fn policy(&self) -> Policy {
        // A pinned commit is synced once; its next poll is so far away it never comes.
        const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        Policy {
            interval: if self.pinned_commit().is_some() {
                NEVER
            } else {
                self.interval
            },
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            max_failures: self.max_failures,
            failed_interval: Some(self.failed_interval),
        }
    }
}

/// Where the sources' tip refs live in a clone: each is this followed by the source's
/// [`Source::cache_key`], so the key names the entry the ref belongs to.
pub(crate) const TIP_REFS: &str = "refs/gitfeed/sources/";

/// `text` with anything but ASCII letters, digits, `-` and `_` replaced, at most 48 characters:
/// safe as a directory name and as a ref name component.
fn readable(text: &str) -> String {
    let readable: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    if readable.is_empty() {
        "repo".to_owned()
    } else {
        readable
    }
}

/// A stable hash: the cache layout must not change between builds, which rules out std's
/// `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Parses a duration written as a whole number followed by a unit: `ms`, `s`, `m` or `h`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(gitfeed::parse_duration("250ms").ok(), Some(Duration::from_millis(250)));
/// assert_eq!(gitfeed::parse_duration("5m").ok(), Some(Duration::from_secs(300)));
/// let err = gitfeed::parse_duration("5").unwrap_err();
/// assert_eq!(err.reason(), gitfeed::Reason::InvalidInput);
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        Error::invalid(format!(
            "invalid duration `{}`; write it like 250ms, 30s, 5m or 1h",
            text.escape_debug()
        ))
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(invalid)
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest exact unit.
fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis > 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

mod duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for text in ["250ms", "1s", "30s", "5m", "2h", "1500ms", "0ms"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed), text);
        }
        for bad in [
            "",
            "s",
            "5",
            "5 s",
            "-1s",
            "1.5s",
            "5d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn validation_rejects_bad_input() {
        let good = Source::new("p", "https://example.org/p.git");
        good.validate().unwrap();
        let cases: Vec<(Source, &str)> = vec![
            (
                Source {
                    name: " ".into(),
                    ..good.clone()
                },
                "name is empty",
            ),
            (
                Source {
                    url: "".into(),
                    ..good.clone()
                },
                "url is empty",
            ),
            (
                Source {
                    url: "ftp://h/p".into(),
                    ..good.clone()
                },
                "unsupported url scheme `ftp`",
            ),
            (
                Source {
                    url: "ext::sh -c x".into(),
                    ..good.clone()
                },
                "unsupported url scheme `ext`",
            ),
            (
                Source {
                    url: "http://".into(),
                    ..good.clone()
                },
                "malformed url",
            ),
            (
                Source {
                    reference: Some("a..b".into()),
                    ..good.clone()
                },
                "invalid ref name",
            ),
            (
                Source {
                    interval: Duration::ZERO,
                    ..good.clone()
                },
                "interval must be greater than zero",
            ),
            (
                Source {
                    timeout: Duration::ZERO,
                    ..good.clone()
                },
                "timeout must be greater than zero",
            ),
            (
                Source {
                    backoff_max: Duration::from_millis(1),
                    ..good.clone()
                },
                "backoff_max must not be less",
            ),
            (
                Source {
                    max_failures: Some(0),
                    ..good.clone()
                },
                "max_failures must be at least 1",
            ),
            (
                Source {
                    depth: Some(0),
                    ..good.clone()
                },
                "depth must be at least 1",
            ),
        ];
        for (source, expected) in cases {
            let message = source.validate().unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "{message:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn verify_needs_its_feature() {
        let mut source = Source::new("p", "git://example.org/p.git");
        source.verify = Some(Verify {
            allowed_signers: "/etc/agent/allowed_signers".into(),
            all_commits: false,
        });
        let result = source.validate();
        if cfg!(feature = "verify") {
            assert!(result.is_ok(), "{result:?}");
        } else {
            assert_eq!(
                result.unwrap_err().to_string(),
                "source `p`: verify needs gitfeed built with the `verify` feature; \
                 this build checks no signatures"
            );
        }
    }

    #[test]
    fn json_defaults_and_unknown_fields() {
        let source: Source = serde_json::from_str(r#"{"name":"a","url":"/srv/a.git"}"#).unwrap();
        assert_eq!(source, Source::new("a", "/srv/a.git"));
        let again: Source = serde_json::from_str(&serde_json::to_string(&source).unwrap()).unwrap();
        assert_eq!(again, source);
        assert!(
            serde_json::from_str::<Source>(r#"{"name":"a","url":"/a","intervl":"1s"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<Source>(r#"{"name":"a","url":"/a","interval":"1"}"#).is_err()
        );
    }

    #[test]
    fn cache_key_follows_identity() {
        let a = Source::new("policies/prod", "https://example.org/p.git");
        assert!(a.cache_key().starts_with("policies_prod-"));
        let mut b = a.clone();
        b.interval = Duration::from_secs(1);
        assert_eq!(a.cache_key(), b.cache_key());
        b.reference = Some("dev".into());
        assert_ne!(a.cache_key(), b.cache_key());
        assert_ne!(a.tip_ref(), b.tip_ref());
    }

    #[test]
    fn full_history_sources_of_one_url_share_a_clone() {
        let a = Source::new("a", "https://example.org/policies.git");
        assert!(a.clone_key().starts_with("policies-"), "{}", a.clone_key());
        let mut pinned = a.clone();
        pinned.name = "b".into();
        pinned.reference = Some("0123456789abcdef0123456789abcdef01234567".into());
        assert_eq!(a.clone_key(), pinned.clone_key());
        let mut other = a.clone();
        other.url = "https://example.org/other.git".into();
        assert_ne!(a.clone_key(), other.clone_key());
        let mut shallow = a.clone();
        shallow.depth = Some(1);
        assert_ne!(a.clone_key(), shallow.clone_key());
        let mut shallow_dev = shallow.clone();
        shallow_dev.reference = Some("dev".into());
        assert_ne!(shallow.clone_key(), shallow_dev.clone_key());
        assert_eq!(
            Source::new("x", "/").clone_key().split('-').next(),
            Some("repo")
        );
    }
}
