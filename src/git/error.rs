//! Turning gix's errors into gitfeed's classed [`FetchError`].

use std::io;

use super::{Cancel, Target};
use crate::machine::ErrorKind;

/// Why an attempt failed, and whether another attempt could do better.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchError {
    /// Transient (retry), permanent (stop until changed) or corrupt (delete the clone, retry).
    pub kind: ErrorKind,
    /// A one-line description for the consumer. Never contains credentials.
    pub message: String,
}

impl FetchError {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: one_line(message.into()),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: one_line(message.into()),
        }
    }

    pub fn corrupt(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Corrupt,
            message: one_line(message.into()),
        }
    }

    /// A local filesystem problem (disk full, permissions). It may clear by itself, so it is
    /// retried, but it is not the remote's fault.
    pub fn local(message: impl Into<String>) -> Self {
        Self::transient(message)
    }

    /// A local filesystem failure: permanent when only the operator can fix it (a read-only
    /// or forbidden cache directory), transient otherwise (a full disk may clear).
    pub fn io(context: impl std::fmt::Display, err: &io::Error) -> Self {
        let message = format!("{context}: {err}");
        match err.kind() {
            io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
                Self::permanent(format!("{message}; the cache directory must be writable"))
            }
            _ => Self::transient(message),
        }
    }
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

/// Classes a failed network operation.
///
/// gix's own classification is uneven across transports (curl errors and a refused git://
/// connection are not marked retryable), so the decision rests on what the failure means for
/// the user: only failures that retrying cannot fix are permanent.
pub(crate) fn classify(err: &gix::Error, target: &Target, cancel: &Cancel) -> FetchError {
    let message = describe(err);
    if cancel.is_cancelled() {
        return FetchError::transient(format!(
            "timed out after {} ms ({message})",
            target.timeout.as_millis()
        ));
    }
    let lower = message.to_lowercase();
    let permanent_markers = [
        "permission denied",
        "authentication",
        "host key verification failed",
        "access denied",
        "not exported",
        "repository not found",
        "does not appear to be a git repository",
        "received http status 401",
        "received http status 403",
        "received http status 404",
        "could not resolve host",
    ];
    if err.is_unauthenticated() || err.is_permission_denied() {
        return FetchError::permanent(format!("authentication refused: {message}"));
    }
    if permanent_markers
        .iter()
        .any(|marker| lower.contains(marker))
    {
        return FetchError::permanent(message);
    }
    let io_kind = err
        .iter_errors()
        .find_map(|cause| cause.downcast_ref::<io::Error>().map(io::Error::kind));
    match io_kind {
        Some(io::ErrorKind::ReadOnlyFilesystem) => {
            FetchError::permanent(format!("{message}; the cache directory must be writable"))
        }
        _ => FetchError::transient(message),
    }
}

/// Adds what a helper process (`git-upload-pack`, `ssh`) said on stderr to a failure, and
/// classes failures the helper explains as permanent (authentication, host keys, no such
/// repository).
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
    err.message = one_line(format!("{}: {}", err.message, said.join("; ")));
    let lower = stderr.to_lowercase();
    let permanent = [
        "permission denied",
        "host key verification failed",
        "no matching host key",
        "does not appear to be a git repository",
        "not a git repository",
        "could not resolve hostname",
    ];
    if err.kind == ErrorKind::Transient && permanent.iter().any(|marker| lower.contains(marker)) {
        err.kind = ErrorKind::Permanent;
    }
    err
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_lists_become_text() {
        assert_eq!(
            super::readable_bytes("[114, 101, 102] could not be parsed [1] [a, b]"),
            "\"ref\" could not be parsed [1] [a, b]"
        );
    }
}
