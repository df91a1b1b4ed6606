//! Turning gix's errors into gitfeed's [`FetchError`], with a [`Reason`] for every failure.
//!
//! A gix error is placed by the types in its chain first: gix's transport and protocol errors,
//! curl's error codes, `std::io` error kinds, gitfeed's own transport limits, and gix's
//! classification. Text is read in one place only, [`words`]: what a helper program (`ssh`,
//! `git-upload-pack`) or a git daemon's `ERR` line said, and the HTTP status that gix's curl
//! backend reports only in its message.

use std::io;

use gix::bstr::ByteSlice;

use super::transport::Cutoff;
use super::{Cancel, Target};
use crate::machine::ErrorKind;
use crate::reason::Reason;

/// Why an attempt failed, and whether another attempt could do better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchError {
    /// What went wrong, whatever the transport.
    pub reason: Reason,
    /// Transient (retry), permanent (stop until probed, triggered or changed) or corrupt
    /// (delete the clone, retry): the reason's class, [`Reason::kind`], unless the source
    /// overrides it (a secret read from a file, see `work::fetch_any`).
    pub kind: ErrorKind,
    /// What failed, on one line, in gitfeed's own words. Never contains credentials.
    pub message: String,
    /// What the transport, a helper program or the server said underneath, on one line, when
    /// it was not gitfeed's own words.
    pub detail: Option<String>,
    /// The URL the failure happened on, when it was a mirror's rather than the source's own.
    pub url: Option<String>,
}

impl FetchError {
    /// A failure for `reason`, classed by it.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            kind: reason.kind(),
            message: one_line(message.into()),
            detail: None,
            url: None,
        }
    }

    /// The same failure, with what was said underneath it.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        let detail = one_line(detail.into());
        self.detail = Some(match self.detail.take() {
            Some(before) => format!("{before}: {detail}"),
            None => detail,
        });
        self
    }

    /// The detail, or the message when gitfeed's own words are all there is.
    pub fn detail_or_message(&self) -> &str {
        self.detail.as_deref().unwrap_or(&self.message)
    }

    /// A local filesystem failure: permanent when only the operator can fix it (a read-only
    /// or forbidden cache directory), transient otherwise (a full disk may clear).
    pub fn io(context: impl std::fmt::Display, err: &io::Error) -> Self {
        let (reason, message) = Reason::of_local_failure(err.kind(), format!("{context}: {err}"));
        Self::new(reason, message)
    }
}

/// The host of a network remote's URL as a person names it, with the port when the URL
/// gives one (`example.org`, `127.0.0.1:9418`); `None` for a remote on this machine.
pub(crate) fn remote_host(url: &str) -> Option<String> {
    let parsed = gix::url::parse(url.as_bytes().as_bstr()).ok()?;
    let host = parsed.host()?;
    Some(match parsed.port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// `text` on one clean line: a remote's words (an `ERR` packet, a helper's stderr) may carry
/// newlines and terminal escapes, which must not reach a log line or an event as they are.
fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole chain of a gix error on one line, each distinct message once.
pub(crate) fn describe(err: &gix::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.iter_errors() {
        let text = cause.to_string();
        let text = text.trim();
        if !text.is_empty() && !parts.iter().any(|seen| seen.contains(text)) {
            parts.push(text.to_owned());
        }
    }
    let text = if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    };
    readable_bytes(&text)
}

/// gix shows some unparsable input as a list of byte values (`[114, 101, 102]`); shown as the
/// text it is, the message says what the remote sent.
fn readable_bytes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let bytes = after.find(']').and_then(|close| {
            let list = &after[..close];
            let values: Option<Vec<u8>> = list
                .split(',')
                .map(|v| v.trim().parse::<u8>().ok())
                .collect();
            values
                .filter(|values| values.len() >= 3)
                .map(|values| (values, close))
        });
        match bytes {
            Some((values, close)) => {
                out.push_str(&format!("{:?}", String::from_utf8_lossy(&values)));
                rest = &after[close + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The chain of a standard error on one line.
pub(crate) fn describe_std(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Classes a failed network operation by its [`Reason`]: the message is the reason's plain
/// words, gix's chain of errors the detail.
pub(crate) fn classify(err: &gix::Error, target: &Target, cancel: &Cancel) -> FetchError {
    let chain = describe(err);
    if cancel.is_cancelled() {
        return FetchError::new(
            Reason::Timeout,
            format!("timed out after {}", crate::clock::spoken(target.timeout)),
        )
        .with_detail(chain);
    }
    let reason = reason_of(err);
    let words = reason.words();
    // A local failure's own words (a full disk) say what to fix; the layers above them do not.
    let local = err
        .iter_errors()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .last()
        .filter(|_| matches!(reason, Reason::LocalIo | Reason::CacheNotWritable));
    let message = match local {
        Some(io) => format!("{words}: {io}"),
        None => words.to_owned(),
    };
    FetchError::new(reason, message).with_detail(chain)
}

/// The reason of a gix error, from the types in its chain, most telling first.
fn reason_of(err: &gix::Error) -> Reason {
    use gix::protocol::transport::client::{AuthenticationRequired, Error as TransportError};
    use gix::protocol::transport::packetline::read::Error as ErrLine;

    let mut io_kind = None;
    for cause in err.iter_errors() {
        if let Some(cutoff) = cause.downcast_ref::<Cutoff>() {
            return cutoff.reason();
        }
        if cause.is::<AuthenticationRequired>() {
            return Reason::AuthenticationRefused;
        }
        if let Some(line) = cause.downcast_ref::<ErrLine>() {
            // A git daemon's `ERR` line says why in words only.
            return words::reason(&line.message.to_str_lossy()).unwrap_or(Reason::ServerError);
        }
        if let Some(err) = cause.downcast_ref::<curl::Error>()
            && let Some(reason) = curl_reason(err)
        {
            return reason;
        }
        if let Some(err) = cause.downcast_ref::<TransportError>()
            && let Some(reason) = transport_reason(err)
        {
            return reason;
        }
        if let Some(status) = words::http_status(&cause.to_string()) {
            return http_reason(status);
        }
        if io_kind.is_none() {
            io_kind = cause.downcast_ref::<io::Error>().map(io::Error::kind);
        }
    }
    // gix's classification. A bare `std::io` permission error is a local file's; one that gix
    // classes explicitly is the server's answer (HTTP 403).
    let mut malformed = false;
    for class in err.classify() {
        match class.class() {
            gix::error::Class::Unauthenticated => return Reason::AuthenticationRefused,
            gix::error::Class::PermissionDenied if class.io_kind().is_none() => {
                return Reason::AuthenticationRefused;
            }
            gix::error::Class::Corruption | gix::error::Class::Validation => malformed = true,
            _ => {}
        }
    }
    if let Some(reason) = io_kind.and_then(io_reason) {
        return reason;
    }
    if malformed {
        return Reason::Protocol;
    }
    Reason::Other
}

/// The reason of a curl error, by its code.
fn curl_reason(err: &curl::Error) -> Option<Reason> {
    let reason = if err.is_couldnt_resolve_host() || err.is_couldnt_resolve_proxy() {
        Reason::NameResolution
    } else if err.is_couldnt_connect() {
        Reason::ConnectionRefused
    } else if err.is_operation_timedout() {
        Reason::Timeout
    } else if err.is_peer_failed_verification()
        || err.is_ssl_cacert()
        || err.is_ssl_cacert_badfile()
        || err.is_ssl_certproblem()
        || err.is_ssl_issuer_error()
    {
        Reason::Certificate
    } else if err.is_recv_error()
        || err.is_send_error()
        || err.is_got_nothing()
        || err.is_partial_file()
        || err.is_ssl_connect_error()
        || err.is_http2_error()
        || err.is_http2_stream_error()
    {
        Reason::ConnectionReset
    } else if err.is_too_many_redirects() {
        Reason::HttpStatus
    } else {
        return None;
    };
    Some(reason)
}

/// The reason of one of gix's transport errors, when the variant tells it.
fn transport_reason(err: &gix::protocol::transport::client::Error) -> Option<Reason> {
    use gix::protocol::transport::client::Error;
    Some(match err {
        Error::AuthenticationRefused(_) => Reason::AuthenticationRefused,
        Error::InvokeProgram { .. } | Error::SshInvocation(_) | Error::AmbiguousPath { .. } => {
            Reason::Configuration
        }
        Error::Capabilities { .. }
        | Error::LineDecode { .. }
        | Error::ExpectedLine(_)
        | Error::ExpectedDataLine
        | Error::UnsupportedProtocolVersion(_) => Reason::Protocol,
        // The cause underneath tells more.
        _ => return None,
    })
}

/// The reason of an HTTP error status.
fn http_reason(status: u16) -> Reason {
    match status {
        401 | 403 => Reason::AuthenticationRefused,
        404 | 410 => Reason::RepositoryNotFound,
        500..=599 => Reason::ServerError,
        _ => Reason::HttpStatus,
    }
}

/// The reason of a network `std::io` failure of this kind; local ones (a read-only cache)
/// have theirs too, since a fetch also writes the pack.
fn io_reason(kind: io::ErrorKind) -> Option<Reason> {
    use io::ErrorKind::*;
    Some(match kind {
        ConnectionRefused | HostUnreachable | NetworkUnreachable | NetworkDown
        | AddrNotAvailable => Reason::ConnectionRefused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected => {
            Reason::ConnectionReset
        }
        TimedOut | WouldBlock => Reason::Timeout,
        ReadOnlyFilesystem | PermissionDenied => Reason::CacheNotWritable,
        StorageFull | QuotaExceeded | OutOfMemory => Reason::LocalIo,
        InvalidData => Reason::Protocol,
        _ => return None,
    })
}

/// Adds what a helper process (`git-upload-pack`, `ssh`) said on stderr to a failure. When
/// the transport saw no more than a broken connection, the helper's words say why
/// (authentication, host keys, no such repository, a name that does not resolve).
pub(crate) fn with_helper_output(mut err: FetchError, stderr: &str) -> FetchError {
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .take(3)
        .collect();
    if said.is_empty() {
        return err;
    }
    if vague(err.reason)
        && let Some(reason) = words::reason(stderr)
    {
        err = retold(err, reason);
    }
    err.with_detail(said.join("; "))
}

/// `err` for the better `reason` its remote's words gave: gitfeed's words for that reason,
/// and everything said before as the detail.
fn retold(err: FetchError, reason: Reason) -> FetchError {
    let before = err.detail_or_message().to_owned();
    FetchError {
        url: err.url,
        ..FetchError::new(reason, reason.words()).with_detail(before)
    }
}

/// True for the reasons of a failure whose cause the remote's own words may tell better: a
/// helper that dies or a server that refuses shows on the connection only as its end or as
/// data gix cannot parse.
fn vague(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::ConnectionReset | Reason::Protocol | Reason::ServerError | Reason::Other
    )
}

/// Adds the `ERR` line an HTTP remote sent to a failure gix could only see as malformed
/// data, and takes its reason from the line: the remote refused, so without more telling
/// words it is the server's error, as an unexplained `ERR` line is over `git://`.
pub(crate) fn with_error_line(err: FetchError, line: &str) -> FetchError {
    if !vague(err.reason) {
        return err;
    }
    let reason = words::reason(line).unwrap_or(Reason::ServerError);
    retold(err, reason).with_detail(format!("the remote said: {line}"))
}

/// The only place gitfeed reads an error's words: what a helper program (`ssh`,
/// `git-upload-pack`) wrote on stderr, what a git daemon put in an `ERR` line, and the HTTP
/// status gix's curl backend names only in its message. Everything else is placed by type.
pub(crate) mod words {
    use crate::reason::Reason;

    /// Phrases of OpenSSH, git and git-daemon, lowercase, most telling first.
    const SAID: &[(&str, Reason)] = &[
        ("could not resolve hostname", Reason::NameResolution),
        ("name or service not known", Reason::NameResolution),
        (
            "temporary failure in name resolution",
            Reason::NameResolution,
        ),
        (
            "no address associated with hostname",
            Reason::NameResolution,
        ),
        ("host key verification failed", Reason::HostKey),
        ("no matching host key", Reason::HostKey),
        ("remote host identification has changed", Reason::HostKey),
        ("permission denied", Reason::AuthenticationRefused),
        (
            "too many authentication failures",
            Reason::AuthenticationRefused,
        ),
        ("not our ref", Reason::ObjectNotAdvertised),
        (
            "does not appear to be a git repository",
            Reason::RepositoryNotFound,
        ),
        ("not a git repository", Reason::RepositoryNotFound),
        ("repository not exported", Reason::RepositoryNotFound),
        ("repository not found", Reason::RepositoryNotFound),
        ("no such repository", Reason::RepositoryNotFound),
        ("connection refused", Reason::ConnectionRefused),
        ("no route to host", Reason::ConnectionRefused),
        ("network is unreachable", Reason::ConnectionRefused),
        ("timed out", Reason::Timeout),
        ("connection reset", Reason::ConnectionReset),
        ("connection closed", Reason::ConnectionReset),
        ("broken pipe", Reason::ConnectionReset),
    ];

    /// The reason a helper's or a daemon's words give, if they give one.
    pub fn reason(said: &str) -> Option<Reason> {
        let said = said.to_lowercase();
        SAID.iter()
            .find(|(phrase, _)| said.contains(phrase))
            .map(|&(_, reason)| reason)
    }

    /// The status in gix's curl backend's "Received HTTP status 404".
    pub fn http_status(message: &str) -> Option<u16> {
        message
            .trim()
            .strip_prefix("Received HTTP status ")?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::words;
    use crate::reason::Reason;

    #[test]
    fn helper_words_give_reasons() {
        for (said, reason) in [
            (
                "ssh: Could not resolve hostname x.invalid: Name or service not known",
                Some(Reason::NameResolution),
            ),
            (
                "ssh: connect to host 127.0.0.1 port 1: Connection refused",
                Some(Reason::ConnectionRefused),
            ),
            (
                "kex_exchange_identification: read: Connection reset by peer",
                Some(Reason::ConnectionReset),
            ),
            (
                "git@h: Permission denied (publickey).",
                Some(Reason::AuthenticationRefused),
            ),
            ("Host key verification failed.", Some(Reason::HostKey)),
            (
                "fatal: '/x' does not appear to be a git repository",
                Some(Reason::RepositoryNotFound),
            ),
            (
                "no such repository: /x.git",
                Some(Reason::RepositoryNotFound),
            ),
            (
                "upload-pack: not our ref 0123",
                Some(Reason::ObjectNotAdvertised),
            ),
            ("something else entirely", None),
        ] {
            assert_eq!(words::reason(said), reason, "{said}");
        }
    }

    #[test]
    fn http_status_comes_from_the_curl_backend_message() {
        assert_eq!(words::http_status("Received HTTP status 404"), Some(404));
        assert_eq!(words::http_status("Received HTTP status x"), None);
        assert_eq!(words::http_status("status 404"), None);
        assert_eq!(super::http_reason(404), Reason::RepositoryNotFound);
        assert_eq!(super::http_reason(403), Reason::AuthenticationRefused);
        assert_eq!(super::http_reason(502), Reason::ServerError);
        assert_eq!(super::http_reason(429), Reason::HttpStatus);
    }

    #[test]
    fn byte_lists_become_text() {
        assert_eq!(
            super::readable_bytes("[114, 101, 102] could not be parsed [1] [a, b]"),
            "\"ref\" could not be parsed [1] [a, b]"
        );
    }
}
