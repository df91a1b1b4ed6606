//! How a failed attempt is told to a person: one line that names the source and its URL
//! (without credentials) and says in plain words what failed, built from the [`Reason`]. What
//! a transport, a helper program or a server said underneath is kept apart, as the detail.

use crate::error::Error;
use crate::git::{self, FetchError};
use crate::reason::Reason;
use crate::source::Source;

/// A failed attempt, as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Told {
    /// `policies (https://example.org/p.git): could not resolve host example.org`
    pub headline: String,
    /// What was said underneath, when it was not gitfeed's own words.
    pub detail: Option<String>,
}

impl Told {
    /// The error a call returns for `err`, told as this.
    pub fn into_error(self, err: &FetchError) -> Error {
        Error::new(err.reason, self.headline)
            .with_detail(self.detail)
            .with_kind(err.kind)
    }
}

/// Tells `err`, a failed attempt of `source`. A failure on the network or at the remote is
/// worded by its reason alone, so the same fault reads the same on every transport; a failure
/// gitfeed found itself (a missing branch, a full disk, a limit) keeps gitfeed's own words,
/// which name what to change.
pub(crate) fn tell(source: &Source, err: &FetchError) -> Told {
    let url = err.url.as_deref().unwrap_or(&source.url);
    let named = format!("{} ({})", source.name, git::redact_url(url));
    match remote_words(err.reason, url, source) {
        Some(words) => Told {
            headline: format!("{named}: {words}"),
            detail: Some(err.detail_or_message().to_owned()),
        },
        None => Told {
            headline: format!("{named}: {}", err.message),
            detail: err.detail.clone(),
        },
    }
}

/// The plain words for a failure at the remote or on the way to it, naming the host where
/// that helps; `None` for the reasons gitfeed words itself where it finds them.
fn remote_words(reason: Reason, url: &str, source: &Source) -> Option<String> {
    let host = git::remote_host(url);
    let words = match (reason, host) {
        (Reason::NameResolution, Some(host)) => format!("could not resolve host {host}"),
        (Reason::ConnectionRefused, Some(host)) => {
            format!("could not connect to {host} (refused or unreachable)")
        }
        (Reason::ConnectionReset, Some(host)) => format!("the connection to {host} was cut off"),
        (Reason::ServerError, Some(host)) => format!("the server at {host} reported an error"),
        (Reason::HostKey, Some(host)) => {
            format!("the ssh host key of {host} is unknown or has changed; check known_hosts")
        }
        (Reason::Certificate, Some(host)) => {
            format!("the TLS certificate of {host} is not trusted; check the CA file")
        }
        (Reason::ObjectNotAdvertised, _) if source.pinned_commit().is_some() => format!(
            "the remote does not serve the pinned commit {}",
            source.pinned_commit().unwrap_or_default()
        ),
        (
            Reason::NameResolution
            | Reason::ConnectionRefused
            | Reason::ConnectionReset
            | Reason::ServerError
            | Reason::HttpStatus
            | Reason::Protocol
            | Reason::AuthenticationRefused
            | Reason::HostKey
            | Reason::Certificate
            | Reason::RepositoryNotFound
            | Reason::ObjectNotAdvertised,
            _,
        ) => reason.words().to_owned(),
        _ => return None,
    };
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn told(url: &str, err: FetchError) -> Told {
        tell(&Source::new("policies", url), &err)
    }

    #[test]
    fn remote_failures_read_the_same_whatever_the_transport_said() {
        for (url, said) in [
            (
                "https://u:s3cret@example.org/p.git",
                "Transport handshake failed: [6] Could not resolve hostname",
            ),
            ("git://example.org/p.git", "cannot resolve `example.org`"),
            ("git@example.org:p.git", "ssh: Could not resolve hostname"),
        ] {
            let err = FetchError::new(Reason::NameResolution, Reason::NameResolution.words())
                .with_detail(said);
            let told = told(url, err);
            assert!(
                told.headline.starts_with("policies (")
                    && told
                        .headline
                        .ends_with("): could not resolve host example.org"),
                "{told:?}"
            );
            assert!(!told.headline.contains("s3cret"), "{told:?}");
            assert_eq!(told.detail.as_deref(), Some(said));
        }
        let told = told(
            "https://u:s3cret@example.org/p.git",
            FetchError::new(Reason::ConnectionRefused, "cannot connect: os error 111"),
        );
        assert_eq!(
            told.headline,
            "policies (https://u@example.org/p.git): could not connect to example.org \
             (refused or unreachable)"
        );
        assert_eq!(told.detail.as_deref(), Some("cannot connect: os error 111"));
    }

    #[test]
    fn failures_found_locally_keep_their_words() {
        let told = told(
            "/srv/p.git",
            FetchError::new(
                Reason::RefNotFound,
                "branch `x` not found on remote; check --branch",
            ),
        );
        assert_eq!(
            told.headline,
            "policies (/srv/p.git): branch `x` not found on remote; check --branch"
        );
        assert_eq!(told.detail, None);
    }

    #[test]
    fn a_mirror_failure_names_the_mirror() {
        let mut err = FetchError::new(Reason::ConnectionRefused, "refused");
        err.url = Some("git://mirror.example.org:9418/p.git".into());
        assert_eq!(
            told("git://example.org/p.git", err).headline,
            "policies (git://mirror.example.org:9418/p.git): could not connect to \
             mirror.example.org:9418 (refused or unreachable)"
        );
    }
}
