//! What can go wrong in a consolidation run, and how gix's errors map onto it.

use std::{
    fmt, io,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

/// Broad category of an [`Error`], to decide between retrying later and repairing the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The interrupt flag was seen before the new pack was in place; nothing on disk changed.
    Interrupted,
    /// The arguments were unusable, for instance no tips at all.
    InvalidInput,
    /// Objects reachable from the tips are missing or malformed; retrying will not help.
    Corrupt,
    /// Reading or writing files failed; retrying later may succeed.
    Io,
}

/// Why [`consolidate()`](super::consolidate) failed. The repository stays readable whatever the
/// kind.
#[derive(Debug)]
pub(crate) struct Error {
    /// The category, for callers that react differently to each.
    pub kind: ErrorKind,
    /// Lowercase description including the underlying cause.
    pub message: String,
}

impl Error {
    /// An error of `kind` described by `message`.
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The error reported when the interrupt flag stopped the run.
    pub(super) fn interrupted() -> Self {
        Error::new(ErrorKind::Interrupted, "interrupted")
    }

    /// A file system failure on `path` while doing `what`.
    pub(super) fn io(what: &str, path: &Path, err: &io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{what} {}: {err}", path.display()))
    }

    /// A failure reported by gix while doing `what`, categorised by the classification gix
    /// attaches. An interrupt always wins as the error is then merely a consequence of it.
    pub(super) fn gix(
        what: &str,
        err: &(dyn std::error::Error + 'static),
        should_interrupt: &AtomicBool,
    ) -> Self {
        if should_interrupt.load(Ordering::Relaxed) {
            return Error::interrupted();
        }
        let class = gix::error::classify(err);
        let kind = match class.dominant_class() {
            Some(gix::error::Class::Cancelled) => ErrorKind::Interrupted,
            Some(gix::error::Class::Corruption | gix::error::Class::NotFound) => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("{what}: {}", chain(err)))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// `err` and its sources on one line, as gix nests the useful detail several levels deep.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut last = out.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their inner message verbatim; once is enough.
        if text != last && !last.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    out
}
