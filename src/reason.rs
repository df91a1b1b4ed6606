//! Why an attempt failed, independent of the transport it failed on.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::machine::ErrorKind;

/// Why an attempt failed.
///
/// The same fault gives the same reason on every transport: a host name that does not resolve
/// is [`Reason::NameResolution`] over `git://`, HTTP(S) and ssh alike. Each reason has one
/// class, [`Reason::kind`], which decides whether the source backs off or fails. In events and
/// in the status it is written in snake case (`"connection_refused"`); that spelling is part of
/// the event contract. Reasons a newer gitfeed adds read as [`Reason::Other`].
///
/// ```
/// use gitfeed::{ErrorKind, Reason};
///
/// assert_eq!(Reason::NameResolution.kind(), ErrorKind::Transient);
/// assert_eq!(Reason::RepositoryNotFound.kind(), ErrorKind::Permanent);
/// assert_eq!(Reason::CloneCorrupt.kind(), ErrorKind::Corrupt);
/// assert_eq!(serde_json::to_string(&Reason::HostKey).unwrap(), r#""host_key""#);
/// assert_eq!(Reason::HostKey.to_string(), "host_key");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// The remote's host name did not resolve (no network yet, DNS down, a typo). Transient:
    /// a device often starts before its network.
    NameResolution,
    /// Nothing accepted the connection: refused, or the host or its network is unreachable.
    /// Transient.
    ConnectionRefused,
    /// The connection broke in the middle of the exchange: reset, closed early, or a TLS
    /// handshake cut short. Transient.
    ConnectionReset,
    /// The attempt ran out of time: its deadline, a connect timeout or a stalled transfer.
    /// Transient.
    Timeout,
    /// The server failed on its side: an HTTP 5xx status, or an `ERR` message that names no
    /// other reason. Transient.
    ServerError,
    /// The server answered HTTP with a status gitfeed does not expect and that no other reason
    /// covers (a redirect it may not follow, `400`, `429`, …). Transient.
    HttpStatus,
    /// The remote broke the git protocol: malformed or unexpected data, a pack without the
    /// commit it promised, a negotiation that does not end. Transient.
    Protocol,
    /// The server refused the credentials, or asked for some and got none (HTTP 401 or 403,
    /// ssh "Permission denied"). Permanent, except for a secret read from a file, which may be
    /// rotated: then transient.
    AuthenticationRefused,
    /// The credentials configured for the source could not be read (a token file that is
    /// missing, an unset variable). Permanent, except for a secret read from a file, as above.
    Credentials,
    /// The ssh host key is unknown or changed. Permanent.
    HostKey,
    /// The HTTPS server's certificate is not trusted. Permanent.
    Certificate,
    /// No repository at that path on the remote (HTTP 404, a git daemon that does not export
    /// it, "does not appear to be a git repository"). Permanent.
    RepositoryNotFound,
    /// The followed branch or ref does not exist on the remote, and the source never delivered
    /// it. Permanent.
    RefNotFound,
    /// The followed branch or ref was deleted on the remote after the source delivered it: it
    /// may come back. Transient.
    RefDeleted,
    /// The remote does not serve the pinned commit ("not our ref"). Permanent.
    ObjectNotAdvertised,
    /// The remote's ref cannot be followed: it names no commit yet, points to something other
    /// than a commit, has an invalid name, or the repository uses another object hash; or the
    /// source is shallow and the remote does not speak protocol v2. Permanent.
    UnsupportedRemote,
    /// The remote sent more than the source allows (`max_pack_size`, or a ref advertisement
    /// over 32 MiB). Permanent.
    RemoteTooLarge,
    /// A snapshot or a file in it is over `max_snapshot_size` or `max_file_size`. Permanent.
    SnapshotTooLarge,
    /// Commit signatures could not be checked: the allowed-signers file is unreadable, too many
    /// new commits, or a build without the `verify` feature. Permanent.
    Verification,
    /// The source's settings cannot work: an invalid URL or filter, a helper program (`ssh`,
    /// `git-upload-pack`) that cannot be run, a transport that refuses its options.
    /// Permanent.
    Configuration,
    /// The local clone is broken. Corrupt: it is deleted and cloned afresh.
    CloneCorrupt,
    /// Another process holds the clone longer than gitfeed waits for it. Transient.
    CloneBusy,
    /// The cache directory is read-only or forbidden to this user. Permanent.
    CacheNotWritable,
    /// Any other local failure: a full disk, a thread or file that could not be created.
    /// Transient.
    LocalIo,
    /// The attempt was stopped because the feed is shutting down. Transient.
    Cancelled,
    /// The source's `exec` command did not finish with exit status 0 within its
    /// `exec_timeout`: it failed, was killed, timed out or could not be started. The update
    /// stays unacknowledged and is delivered again after the backoff. Transient.
    ExecFailed,
    /// Input given to a call that gitfeed cannot take: a source that does not validate, a
    /// duration or credentials written wrong, a text that is not a commit id. Only calls
    /// return it; nothing was fetched. Permanent.
    InvalidInput,
    /// A call named something that is not there: a source that was never added (or was
    /// removed), a clone not made yet, a commit, file or blob not in the cache. Permanent.
    NotFound,
    /// The feed has shut down; the call had no effect. Permanent.
    Stopped,
    /// A failure gitfeed cannot place. Transient.
    #[serde(other)]
    Other,
}

impl Reason {
    /// The class of a failure for this reason: whether the source backs off and retries
    /// ([`ErrorKind::Transient`]), fails until it is probed again, triggered or changed
    /// ([`ErrorKind::Permanent`]), or deletes its clone and retries ([`ErrorKind::Corrupt`]).
    ///
    /// This is the only place a class comes from, with one exception made by the source, not
    /// the reason: refused or unreadable credentials read from a file are retried as transient,
    /// since the file may be rotated.
    pub fn kind(self) -> ErrorKind {
        use Reason::*;
        match self {
            NameResolution | ConnectionRefused | ConnectionReset | Timeout | ServerError
            | HttpStatus | Protocol | RefDeleted | CloneBusy | LocalIo | Cancelled | ExecFailed
            | Other => ErrorKind::Transient,
            AuthenticationRefused
            | Credentials
            | HostKey
            | Certificate
            | RepositoryNotFound
            | RefNotFound
            | ObjectNotAdvertised
            | UnsupportedRemote
            | RemoteTooLarge
            | SnapshotTooLarge
            | Verification
            | Configuration
            | CacheNotWritable
            | InvalidInput
            | NotFound
            | Stopped => ErrorKind::Permanent,
            CloneCorrupt => ErrorKind::Corrupt,
        }
    }

    /// The reason of a local filesystem failure of this kind: `cache_not_writable` when only
    /// the operator can fix it, `clone_busy` for a lock held elsewhere, `local_io` otherwise.
    fn of_local(kind: std::io::ErrorKind) -> Reason {
        use std::io::ErrorKind::*;
        match kind {
            ReadOnlyFilesystem | PermissionDenied => Reason::CacheNotWritable,
            WouldBlock => Reason::CloneBusy,
            _ => Reason::LocalIo,
        }
    }

    /// The reason of a local filesystem failure of `kind` while doing what `words` say, and
    /// the words to tell it: for `cache_not_writable`, with what the operator must fix.
    pub(crate) fn of_local_failure(kind: std::io::ErrorKind, words: String) -> (Reason, String) {
        match Reason::of_local(kind) {
            Reason::CacheNotWritable => (
                Reason::CacheNotWritable,
                format!("{words}; the cache directory must be writable"),
            ),
            reason => (reason, words),
        }
    }

    /// The plain words for `reason`, when nothing more is known.
    pub(crate) fn words(self) -> &'static str {
        use Reason::*;
        match self {
            NameResolution => "could not resolve the remote's host name",
            ConnectionRefused => "could not connect to the remote (refused or unreachable)",
            ConnectionReset => "the connection to the remote was cut off",
            Timeout => "timed out",
            ServerError => "the remote reported an error",
            HttpStatus => "the server answered with an HTTP status gitfeed does not expect",
            Protocol => "the remote's answer is not valid git protocol",
            AuthenticationRefused => "the remote refused authentication; check the credentials",
            Credentials => "cannot read the credentials",
            HostKey => "the ssh host key is unknown or has changed; check known_hosts",
            Certificate => "the server's TLS certificate is not trusted; check the CA file",
            RepositoryNotFound => "there is no git repository at this URL",
            RefNotFound => "the ref to follow does not exist on the remote; check the branch",
            RefDeleted => "the followed ref was deleted on the remote",
            ObjectNotAdvertised => "the remote does not serve the wanted commit",
            UnsupportedRemote => "the remote's ref cannot be followed",
            RemoteTooLarge => "the remote sent more than the source allows",
            SnapshotTooLarge => "the snapshot is over its size limit",
            Verification => "commit signatures could not be checked",
            Configuration => "the transport could not start; check the URL and the ssh command",
            CloneCorrupt => "the cached clone is damaged; it is cloned afresh",
            CloneBusy => "the clone is in use by another process",
            CacheNotWritable => "the cache directory is not writable",
            LocalIo => "a local file operation failed",
            Cancelled => "the feed is shutting down",
            _ => "the attempt failed",
        }
    }

    /// The reason as it is written in events and the status, like `connection_refused`.
    pub fn as_str(self) -> &'static str {
        use Reason::*;
        match self {
            NameResolution => "name_resolution",
            ConnectionRefused => "connection_refused",
            ConnectionReset => "connection_reset",
            Timeout => "timeout",
            ServerError => "server_error",
            HttpStatus => "http_status",
            Protocol => "protocol",
            AuthenticationRefused => "authentication_refused",
            Credentials => "credentials",
            HostKey => "host_key",
            Certificate => "certificate",
            RepositoryNotFound => "repository_not_found",
            RefNotFound => "ref_not_found",
            RefDeleted => "ref_deleted",
            ObjectNotAdvertised => "object_not_advertised",
            UnsupportedRemote => "unsupported_remote",
            RemoteTooLarge => "remote_too_large",
            SnapshotTooLarge => "snapshot_too_large",
            Verification => "verification",
            Configuration => "configuration",
            CloneCorrupt => "clone_corrupt",
            CloneBusy => "clone_busy",
            CacheNotWritable => "cache_not_writable",
            LocalIo => "local_io",
            Cancelled => "cancelled",
            ExecFailed => "exec_failed",
            InvalidInput => "invalid_input",
            NotFound => "not_found",
            Stopped => "stopped",
            Other => "other",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Reason; 30] = [
        Reason::NameResolution,
        Reason::ConnectionRefused,
        Reason::ConnectionReset,
        Reason::Timeout,
        Reason::ServerError,
        Reason::HttpStatus,
        Reason::Protocol,
        Reason::AuthenticationRefused,
        Reason::Credentials,
        Reason::HostKey,
        Reason::Certificate,
        Reason::RepositoryNotFound,
        Reason::RefNotFound,
        Reason::RefDeleted,
        Reason::ObjectNotAdvertised,
        Reason::UnsupportedRemote,
        Reason::RemoteTooLarge,
        Reason::SnapshotTooLarge,
        Reason::Verification,
        Reason::Configuration,
        Reason::CloneCorrupt,
        Reason::CloneBusy,
        Reason::CacheNotWritable,
        Reason::LocalIo,
        Reason::Cancelled,
        Reason::ExecFailed,
        Reason::InvalidInput,
        Reason::NotFound,
        Reason::Stopped,
        Reason::Other,
    ];

    #[test]
    fn serde_spelling_is_as_str() {
        for reason in ALL {
            let json = serde_json::to_string(&reason).expect("serializes");
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            assert_eq!(
                serde_json::from_str::<Reason>(&json).expect("parses"),
                reason
            );
        }
    }

    #[test]
    fn unknown_reasons_read_as_other() {
        let reason: Reason = serde_json::from_str(r#""a_reason_from_the_future""#).expect("parses");
        assert_eq!(reason, Reason::Other);
    }

    #[test]
    fn only_a_broken_clone_is_corrupt() {
        for reason in ALL {
            assert_eq!(
                reason.kind() == ErrorKind::Corrupt,
                reason == Reason::CloneCorrupt,
                "{reason}"
            );
        }
    }
}
