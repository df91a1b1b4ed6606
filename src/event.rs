//! What a feed tells its consumer: the JSON event contract.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::reason::Reason;

/// One message from a feed. Serialized with `serde_json`, it is one line of the event contract
/// documented in the README (`{"type":"update",…}`, `{"type":"state",…}` or
/// `{"type":"warning",…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Event {
    /// The followed ref moved.
    Update(Update),
    /// A source's health changed.
    State(StateChange),
    /// Something was left out or refused; health is unchanged. A warning about an update is
    /// sent just before that update, every time the update is sent.
    Warning(Warning),
}

/// The followed ref moved from `old` to `new`.
///
/// ```
/// let line = r#"{"type":"update","source":"p","url":"/srv/p.git","ref":"refs/heads/main","old":null,"new":"1111111111111111111111111111111111111111","forced":false,"changes":[{"path":"a.rego","kind":"added","id":"2222222222222222222222222222222222222222"}]}"#;
/// let event: gitfeed::Event = serde_json::from_str(line).unwrap();
/// assert_eq!(serde_json::to_string(&event).unwrap(), line);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Update {
    /// The source's name.
    pub source: String,
    /// The URL that served the update, without credentials.
    pub url: String,
    /// The full name of the followed ref on the remote, like `refs/heads/main`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// The commit delivered before, or `None` on the first update the source ever delivers
    /// (then `changes` lists every file).
    pub old: Option<String>,
    /// The commit the ref points to now.
    pub new: String,
    /// True when `old` is not an ancestor of `new`: history was rewritten.
    pub forced: bool,
    /// Every file that differs between the trees of `old` and `new`, sorted by path.
    pub changes: Vec<Change>,
}

/// One file that differs between two commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Change {
    /// The path from the repository root, `/`-separated.
    pub path: String,
    /// What happened to it. A rename is a deletion plus an addition.
    pub kind: ChangeKind,
    /// The blob id of the new content, `None` for a deletion.
    pub id: Option<String>,
    /// The new content, when the source asks for contents and the file is within the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// How `content` is encoded: UTF-8 text as it is, anything else as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Why the content was left out, when the source asks for contents and it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<String>,
}

/// How a [`Change`]'s content is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Encoding {
    /// The file is valid UTF-8 and is given as it is.
    #[serde(rename = "utf-8")]
    Utf8,
    /// The file's bytes in standard base64 with padding.
    #[serde(rename = "base64")]
    Base64,
}

impl Change {
    /// The file's new bytes, decoded from `content`; `None` when no content is attached (or the
    /// base64 is malformed).
    ///
    /// ```
    /// let change: gitfeed::Change = serde_json::from_str(
    ///     r#"{"path":"a.bin","kind":"added","id":null,"content":"AAH/","encoding":"base64"}"#,
    /// ).unwrap();
    /// assert_eq!(change.bytes().unwrap(), vec![0, 1, 255]);
    /// ```
    pub fn bytes(&self) -> Option<Vec<u8>> {
        let content = self.content.as_ref()?;
        match self.encoding {
            Some(Encoding::Base64) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, content).ok()
            }
            _ => Some(content.clone().into_bytes()),
        }
    }
}

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// It is new in `new`.
    Added,
    /// Its content or mode changed.
    Modified,
    /// It is gone in `new`.
    Deleted,
}

impl ChangeKind {
    /// The word the event contract uses: `added`, `modified` or `deleted`.
    ///
    /// ```
    /// assert_eq!(gitfeed::ChangeKind::Modified.as_str(), "modified");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// The event contract's word, as [`ChangeKind::as_str`] gives it.
///
/// ```
/// assert_eq!(format!("{} a.rego", gitfeed::ChangeKind::Added), "added a.rego");
/// ```
impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source's health changed.
///
/// ```
/// let line = r#"{"type":"state","source":"p","state":"backoff","attempt":3,"reason":"server_error","error":"p (https://example.org/p.git): the server at example.org reported an error; will retry in 1.6s","detail":"Received HTTP status 500","retry_in_ms":1600}"#;
/// let event: gitfeed::Event = serde_json::from_str(line).unwrap();
/// assert_eq!(serde_json::to_string(&event).unwrap(), line);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StateChange {
    /// The source's name.
    pub source: String,
    /// The state the source is in now.
    pub state: SourceState,
    /// Consecutive failed attempts so far (`backoff` and `failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why the last attempt failed, the same on every transport (`backoff` and `failed` only).
    /// Written in snake case, like `"name_resolution"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// What failed, for people (`backoff` and `failed`), on one line: the source's name, its
    /// URL without credentials, what failed in plain words and what happens next, like
    /// `policies (https://example.org/p.git): could not resolve host example.org; will retry
    /// in 8s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the transport, a helper program or the server said underneath `error`, when it was
    /// not gitfeed's own words (`backoff` and `failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Milliseconds until the next attempt: the retry (`backoff`), or the probe of a failed
    /// source (`failed`; absent when nothing but a trigger or a change will try again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// The health of a source, as reported in [`StateChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum SourceState {
    /// Healthy again after one or more failures; polling at its interval.
    Idle,
    /// The last attempt failed; another follows after `retry_in_ms`.
    Backoff,
    /// A failure that will not fix itself soon: a permanent error, or `max_failures` reached.
    /// Polling stops; the remote is probed again after `retry_in_ms` (the source's
    /// `failed_interval`), or at once when the source is triggered or changed.
    Failed,
}

impl SourceState {
    /// The word the event contract and the status use: `idle`, `backoff` or `failed`.
    ///
    /// ```
    /// assert_eq!(gitfeed::SourceState::Backoff.as_str(), "backoff");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Idle => "idle",
            SourceState::Backoff => "backoff",
            SourceState::Failed => "failed",
        }
    }
}

/// The event contract's word, as [`SourceState::as_str`] gives it.
///
/// ```
/// assert_eq!(format!("now {}", gitfeed::SourceState::Failed), "now failed");
/// ```
impl fmt::Display for SourceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a source left out or refused, in plain words: submodules an update moved,
/// entries a snapshot refused to write, a commit refused for its signature, an invalid
/// configuration file on the command line.
///
/// ```
/// let line = r#"{"type":"warning","source":"p","commit":"1111111111111111111111111111111111111111","message":"1111111111111111111111111111111111111111 left out 1 submodule (submodules are not followed): `lib` (added)"}"#;
/// let event: gitfeed::Event = serde_json::from_str(line).unwrap();
/// assert_eq!(serde_json::to_string(&event).unwrap(), line);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Warning {
    /// The source's name (on the command line, a configuration file's path for a warning
    /// about that file).
    pub source: String,
    /// The commit of the update the warning is about, when it is about one: the update that
    /// follows it, or the commit reached when only what was left out moved. A refusal names
    /// the commit it refused in `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// What was left out or refused, and why, on one line.
    pub message: String,
}

impl Warning {
    /// A warning from `source`, about the update to `commit` if there is one.
    pub fn new(
        source: impl Into<String>,
        commit: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Warning {
            source: source.into(),
            commit,
            message: message.into(),
        }
    }
}
