//! The one error type of the public API.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

use crate::machine::ErrorKind;
use crate::reason::Reason;

/// Why a call into gitfeed failed.
///
/// Every fallible function of the API returns this one type. Its [`reason`](Error::reason) is
/// the same [`Reason`] that `state` events and the status carry for a failed attempt, plus the
/// reasons only a caller meets: [`Reason::InvalidInput`], [`Reason::NotFound`] and
/// [`Reason::Stopped`]. Its [`kind`](Error::kind) says whether trying again can help. It
/// displays as one line in plain words; what a transport, a helper program, the server or the
/// system said underneath is its [`source`](StdError::source), so the usual error reporters
/// print the whole chain.
///
/// ```
/// use gitfeed::{ErrorKind, Reason};
///
/// let err = gitfeed::parse_duration("5").unwrap_err();
/// assert_eq!(err.reason(), Reason::InvalidInput);
/// assert_eq!(err.kind(), ErrorKind::Permanent);
/// assert!(err.to_string().contains("invalid duration `5`"));
/// ```
#[derive(Clone)]
pub struct Error {
    reason: Reason,
    kind: ErrorKind,
    message: String,
    cause: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// An error for `reason`, classed by it, worded by `message`.
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            kind: reason.kind(),
            message: message.into(),
            cause: None,
        }
    }

    /// Input the caller gave that gitfeed cannot take.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Reason::InvalidInput, message)
    }

    /// A local filesystem failure while doing `context`, with the system's error as its cause:
    /// `cache_not_writable` when only the operator can fix it, `clone_busy` for a lock held
    /// elsewhere, `local_io` otherwise.
    pub(crate) fn io(context: impl fmt::Display, err: io::Error) -> Self {
        let (reason, message) = Reason::of_local_failure(err.kind(), context.to_string());
        Self::new(reason, message).with_cause(Arc::new(err))
    }

    /// Adds what was said underneath, as this error's cause.
    pub(crate) fn with_detail(mut self, detail: Option<String>) -> Self {
        if let Some(detail) = detail {
            self.cause = Some(Arc::new(Detail(detail)));
        }
        self
    }

    /// Adds `cause`, the error underneath, as this error's source.
    pub(crate) fn with_cause(mut self, cause: Arc<dyn StdError + Send + Sync + 'static>) -> Self {
        self.cause = Some(cause);
        self
    }

    /// Classes it as `kind` rather than by its reason.
    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Why it failed: the kind of failure. The same on every transport, and spelt in snake
    /// case where it is written out (`connection_refused`).
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// Whether trying again can help: [`ErrorKind::Transient`] for a failure that may clear
    /// by itself, [`ErrorKind::Permanent`] for one only a change can fix, [`ErrorKind::Corrupt`]
    /// for a broken clone (deleted, so the next attempt clones afresh). Mostly the reason's
    /// [`Reason::kind`]; a secret read from a file makes refused credentials transient, since
    /// the file may be rotated.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What was said underneath, when it was not gitfeed's own words: the transport's, a
    /// helper program's or the server's message. It is also this error's
    /// [`source`](StdError::source).
    pub fn detail(&self) -> Option<&str> {
        self.cause
            .as_deref()
            .and_then(|cause| cause.downcast_ref::<Detail>())
            .map(|detail| detail.0.as_str())
    }
}

/// What `fn main() -> Result<(), gitfeed::Error>` prints: the reason, the class and the whole
/// chain on one line, rather than the fields.
///
/// ```
/// let err = gitfeed::parse_duration("5").unwrap_err();
/// assert!(format!("{err:?}").starts_with("invalid_input (permanent): invalid duration `5`"));
/// ```
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Corrupt => "corrupt",
        };
        write!(f, "{} ({kind}): {self:#}", self.reason)
    }
}

/// One line in plain words. The alternate form (`{:#}`) adds the causes, each after a colon:
/// `cannot record the acknowledgement: Permission denied (os error 13)`.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            let mut cause = self.source();
            while let Some(err) = cause {
                write!(f, ": {err}")?;
                cause = err.source();
            }
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn StdError + 'static))
    }
}

/// Words a transport, a helper program or a server said: the cause of an [`Error`].
#[derive(Debug)]
struct Detail(String);

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for Detail {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_keep_the_system_error_as_their_source() {
        let err = Error::io(
            "cannot record the acknowledgement",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(err.reason(), Reason::CacheNotWritable);
        assert_eq!(err.kind(), ErrorKind::Permanent);
        let source = err.source().expect("a cause");
        assert_eq!(
            source.downcast_ref::<io::Error>().map(io::Error::kind),
            Some(io::ErrorKind::PermissionDenied)
        );
        assert_eq!(err.detail(), None);
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert_eq!(Error::io("writing", full).reason(), Reason::LocalIo);
    }

    #[test]
    fn a_detail_is_the_source() {
        let err = Error::new(
            Reason::ServerError,
            "p (https://h/p.git): the server failed",
        )
        .with_detail(Some("HTTP 502".into()));
        assert_eq!(err.detail(), Some("HTTP 502"));
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("HTTP 502")
        );
        assert_eq!(err.to_string(), "p (https://h/p.git): the server failed");
        assert_eq!(
            format!("{err:#}"),
            "p (https://h/p.git): the server failed: HTTP 502"
        );
    }

    #[test]
    fn errors_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }
}
