//! Credentials for HTTPS remotes: where they come from, and keeping them secret.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Where a source's HTTPS credentials come from. Secrets are read on every attempt, so a
/// rotated token file takes effect without a restart; they are sent only in an
/// `Authorization` header and never written to the cache, a log line, an event, an error or
/// the status.
///
/// Exactly one secret source is given: `token_env` or `token_file` (sent as
/// `Authorization: Bearer <token>`), or `password_env` or `password_file` together with
/// `username` (sent as HTTP basic authentication).
///
/// ```
/// let auth: gitfeed::Auth = serde_json::from_str(r#"{"token_file": "/run/secrets/git-token"}"#).unwrap();
/// assert!(auth.check().is_ok());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Auth {
    /// The user name for basic authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// An environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file holding the password (surrounding whitespace is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding a bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// A file holding a bearer token (surrounding whitespace is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A password taken out of the source's URL (`https://user:secret@host/…`); never
    /// serialized.
    #[serde(skip)]
    pub(crate) inline_password: Option<Secret>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field(
                "inline_password",
                &self.inline_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A secret value: never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Auth {
    /// A bearer token read from the file at `path` on every attempt.
    pub fn token_file(path: impl Into<PathBuf>) -> Self {
        Self {
            token_file: Some(path.into()),
            ..Self::default()
        }
    }

    /// A bearer token read from the environment variable `name`.
    pub fn token_env(name: impl Into<String>) -> Self {
        Self {
            token_env: Some(name.into()),
            ..Self::default()
        }
    }

    /// Basic authentication as `username`, the password read from the file at `path` on every
    /// attempt.
    pub fn password_file(username: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            username: Some(username.into()),
            password_file: Some(path.into()),
            ..Self::default()
        }
    }

    /// Basic authentication as `username`, the password read from the environment variable
    /// `name`.
    pub fn password_env(username: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            username: Some(username.into()),
            password_env: Some(name.into()),
            ..Self::default()
        }
    }

    /// Checks that exactly one secret source is named, and a user name with a password.
    pub fn check(&self) -> Result<(), Error> {
        let sources = [
            self.password_env.is_some(),
            self.password_file.is_some(),
            self.token_env.is_some(),
            self.token_file.is_some(),
            self.inline_password.is_some(),
        ]
        .iter()
        .filter(|&&given| given)
        .count();
        if sources != 1 {
            return Err(Error::invalid(
                "auth needs exactly one of token_env, token_file, password_env, password_file",
            ));
        }
        let is_password = self.password_env.is_some()
            || self.password_file.is_some()
            || self.inline_password.is_some();
        if is_password && self.username.as_deref().is_none_or(str::is_empty) {
            return Err(Error::invalid("auth with a password needs a username"));
        }
        if !is_password && self.username.is_some() {
            return Err(Error::invalid("auth with a token takes no username"));
        }
        Ok(())
    }

    /// True when the secret comes from a file, which may be rotated between attempts.
    pub(crate) fn rotates(&self) -> bool {
        self.password_file.is_some() || self.token_file.is_some()
    }

    /// The `Authorization` header value for this attempt, reading the secret now.
    pub(crate) fn header(&self) -> Result<Secret, String> {
        let read_env = |name: &str| {
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))
        };
        let read_file = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|err| format!("cannot read the secret file {}: {err}", path.display()))
        };
        let token = match (&self.token_env, &self.token_file) {
            (Some(name), _) => Some(read_env(name)?),
            (None, Some(path)) => Some(read_file(path)?),
            (None, None) => None,
        };
        if let Some(token) = token {
            if token.is_empty() || token.contains(['\r', '\n']) {
                return Err("the token is empty or spans lines".into());
            }
            return Ok(Secret(format!("Authorization: Bearer {token}")));
        }
        let password = match (
            &self.password_env,
            &self.password_file,
            &self.inline_password,
        ) {
            (Some(name), _, _) => read_env(name)?,
            (None, Some(path), _) => read_file(path)?,
            (None, None, Some(secret)) => secret.0.clone(),
            (None, None, None) => return Err("no secret configured".into()),
        };
        let user = self.username.as_deref().unwrap_or_default();
        if password.contains(['\r', '\n']) {
            return Err("the password spans lines".into());
        }
        let pair = format!("{user}:{password}");
        Ok(Secret(format!(
            "Authorization: Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pair.as_bytes())
        )))
    }
}

/// Moves a password out of `url`'s userinfo (`https://user:secret@host/p` →
/// `https://user@host/p`), returning the user and the password.
pub(crate) fn take_url_password(url: &mut String) -> Option<(String, Secret)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    let taken = (user.to_owned(), Secret(password.to_owned()));
    *url = format!("{scheme}://{user}@{host}{path}");
    Some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_secret() {
        let token = Auth {
            token_env: Some("T".into()),
            ..Auth::default()
        };
        token.check().unwrap();
        assert!(Auth::default().check().is_err());
        let both = Auth {
            token_env: Some("T".into()),
            password_env: Some("P".into()),
            username: Some("u".into()),
            ..Auth::default()
        };
        assert!(both.check().is_err());
        let no_user = Auth {
            password_env: Some("P".into()),
            ..Auth::default()
        };
        assert!(no_user.check().is_err());
    }

    #[test]
    fn url_passwords_are_taken_out_and_never_printed() {
        let mut url = "https://agent:s3cr3t@example.org/p.git".to_owned();
        let (user, secret) = take_url_password(&mut url).unwrap();
        assert_eq!(
            (url.as_str(), user.as_str()),
            ("https://agent@example.org/p.git", "agent")
        );
        let auth = Auth {
            username: Some(user),
            inline_password: Some(secret),
            ..Auth::default()
        };
        assert!(!format!("{auth:?}").contains("s3cr3t"));
        assert_eq!(
            auth.header().unwrap().0,
            format!(
                "Authorization: Basic {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"agent:s3cr3t")
            )
        );
        assert!(
            serde_json::to_string(&auth)
                .unwrap()
                .find("s3cr3t")
                .is_none()
        );
        let mut plain = "https://example.org/p.git".to_owned();
        assert!(take_url_password(&mut plain).is_none());
    }
}
