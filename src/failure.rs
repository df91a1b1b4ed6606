//! How a failed attempt is told to a person: one line that names the source and its URL
//! (without credentials) and says in plain words what failed, built from the [`Reason`]. What
//! a transport, a helper program or a server said underneath is kept apart, as the detail.

use std::time::Duration;

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
        ) => words(reason).to_owned(),
        _ => return None,
    };
    Some(words)
}

/// The plain words for `reason`, when nothing more is known.
pub(crate) fn words(reason: Reason) -> &'static str {
    use Reason::*;
    match reason {
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

/// A duration as a person writes it: `850ms`, `1.6s`, `8s`, `10m`, `2h`.
pub(crate) fn duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => {
            let text = format!("{:.1}", duration.as_secs_f64());
            format!("{}s", text.strip_suffix(".0").unwrap_or(&text))
        }
        10_000..120_000 => format!("{}s", (ms + 500) / 1_000),
        120_000..7_200_000 => format!("{}m", (ms + 30_000) / 60_000),
        _ => format!("{}h", (ms + 1_800_000) / 3_600_000),
    }
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
            let err = FetchError::new(Reason::NameResolution, words(Reason::NameResolution))
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

    #[test]
    fn durations_read_as_people_write_them() {
        for (ms, text) in [
            (850, "850ms"),
            (1_600, "1.6s"),
            (8_000, "8s"),
            (2_020, "2s"),
            (30_400, "30s"),
            (600_000, "10m"),
            (7_200_000, "2h"),
        ] {
            assert_eq!(duration(Duration::from_millis(ms)), text);
        }
    }
}
