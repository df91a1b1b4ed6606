//! Whether a commit carries a valid SSH signature by a signer that an allowed-signers file admits.
//!
//! The file is the one git reads through `gpg.ssh.allowedSignersFile`, in the format of
//! `ssh-keygen(1)`, section ALLOWED SIGNERS: one `principals [options] keytype base64-key
//! [comment]` entry a line, with `#` comments and blank lines. The verdict is the one
//! `git verify-commit` reaches with the same file, with these differences:
//!
//! - Key validity (`valid-after`, `valid-before`) is judged at the time the caller passes, not at
//!   the commit's committer date as git does: that date is written by whoever made the commit, so
//!   trusting it would let the holder of an expired key backdate new commits.
//! - Times without a `Z` or `UTC` suffix are read as UTC; ssh-keygen reads them in the local time
//!   zone, which this process cannot learn without platform code.
//! - A malformed line makes the whole file fail to parse, where ssh-keygen skips it: a typo is
//!   then reported where it is instead of silently disabling a signer.
//! - `cert-authority` lines are parsed and then skipped, so they admit nothing: signatures made with
//!   SSH certificates are not supported (the signature library cannot read them, so such a commit
//!   is untrusted as "ssh signature is malformed"). Plain keys on other lines still work.
//! - Only Ed25519, ECDSA P-256 (also as FIDO security keys) and RSA keys are verified; a
//!   signature by any other key type is untrusted.
//!
//! Like git with OpenSSH's `ssh-keygen -Y find-principals`, the first line listing the signing key
//! that is valid at the given time names the principals, and the signature is trusted when some
//! line admits one of those principals with that key for the `git` namespace. So when a key is
//! listed twice, the order of the lines matters exactly as it does for git.

use std::path::Path;

use ssh_key::public::KeyData;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, PublicKey, SshSig};

/// The signature namespace git signs commits in.
const NAMESPACE: &str = "git";

/// The commit header that holds a signature in a SHA-1 repository.
const SIGNATURE_HEADER: &[u8] = b"gpgsig";

/// OpenSSH matches no pattern of this length or longer (its pattern buffer holds 1023 bytes);
/// refusing them too keeps the two from disagreeing.
const MAX_PATTERN_LEN: usize = 1023;

/// The parsed allowed-signers file: which keys may sign, for whom, for what and when.
#[derive(Debug, Clone)]
pub(crate) struct AllowedSigners {
    /// The entries in file order, which matters when a key is listed more than once.
    entries: Vec<Entry>,
}

/// One line of the allowed-signers file.
#[derive(Debug, Clone)]
struct Entry {
    /// The comma-separated principal pattern list, quotes removed.
    principals: String,
    /// The public key (the line's comment dropped).
    key: KeyData,
    /// Set by `cert-authority`: the key signs certificates, not commits.
    cert_authority: bool,
    /// The pattern list of namespaces the key may sign in; `None` allows every namespace.
    namespaces: Option<String>,
    /// Unix time before which the key is not valid.
    valid_after: Option<u64>,
    /// Unix time after which the key is not valid.
    valid_before: Option<u64>,
}

/// Why a commit is not trusted, or who signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A valid signature by an allowed signer.
    Trusted {
        /// The principal the signer is allowed as, as git reports it.
        principal: String,
        /// The signing key's fingerprint, as `SHA256:<base64>`.
        key_fingerprint: String,
    },
    /// Why the commit is not trusted, in lowercase words.
    Untrusted(String),
}

impl AllowedSigners {
    /// Parses the file's text; errors name the line number and problem.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if let Some(entry) = parse_line(line).map_err(|e| format!("line {number}: {e}"))? {
                entries.push(entry);
            }
        }
        Ok(Self { entries })
    }

    /// Reads and parses the file at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read allowed signers file {shown}: {e}"))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("allowed signers file {shown} is not valid UTF-8"))?;
        Self::parse(&text).map_err(|e| format!("allowed signers file {shown}: {e}"))
    }
}

impl Entry {
    /// Whether the key may sign at unix time `now`; both bounds are inclusive, as in ssh-keygen.
    fn valid_at(&self, now: u64) -> bool {
        self.valid_after.is_none_or(|after| now >= after)
            && self.valid_before.is_none_or(|before| now <= before)
    }

    /// Whether the key may sign in git's namespace.
    fn allows_git(&self) -> bool {
        self.namespaces
            .as_deref()
            .is_none_or(|list| pattern_list_matches(list, NAMESPACE))
    }
}

/// Decides whether `raw_commit`, a commit object's bytes exactly as stored (what
/// `git cat-file commit <id>` prints), carries a valid SSH signature in the `git` namespace by a
/// signer that `signers` allows at unix time `now`.
pub(crate) fn verify_commit(raw_commit: &[u8], signers: &AllowedSigners, now: u64) -> Verdict {
    match check_commit(raw_commit, signers, now) {
        Ok((principal, key_fingerprint)) => Verdict::Trusted {
            principal,
            key_fingerprint,
        },
        Err(reason) => Verdict::Untrusted(reason),
    }
}

/// [`verify_commit`] with `?`: the principal and fingerprint, or why the commit is untrusted.
fn check_commit(
    raw_commit: &[u8],
    signers: &AllowedSigners,
    now: u64,
) -> Result<(String, String), String> {
    let signed = split_commit(raw_commit);
    match signed.headers {
        0 => return Err("commit is not signed".into()),
        1 => {}
        // git would glue the blocks together into something no verifier reads as one signature.
        _ => return Err("commit has more than one gpgsig header".into()),
    }
    let armor = &signed.signature;
    if !armor.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        let kind = if armor.starts_with(b"-----BEGIN PGP SIGNATURE-----")
            || armor.starts_with(b"-----BEGIN PGP MESSAGE-----")
        {
            "gpg"
        } else if armor.starts_with(b"-----BEGIN SIGNED MESSAGE-----") {
            "x509"
        } else {
            "unknown format"
        };
        return Err(format!("signature is not an ssh signature ({kind})"));
    }
    let sig = SshSig::from_pem(armor).map_err(|e| {
        format!(
            "ssh signature is malformed: {}",
            e.to_string().to_lowercase()
        )
    })?;
    if sig.namespace() != NAMESPACE {
        return Err(format!(
            "signature is for namespace {:?}, not {NAMESPACE}",
            sig.namespace()
        ));
    }
    let signer = sig.public_key();
    if !supported(signer) {
        return Err(format!(
            "signature uses an unsupported key type ({})",
            signer.algorithm()
        ));
    }
    // Check the mathematics before consulting the file, so that a forged signature is reported as
    // such rather than by the name of a key it merely claims to come from.
    PublicKey::from(signer.clone())
        .verify(NAMESPACE, &signed.payload, &sig)
        .map_err(|_| String::from("signature does not verify"))?;
    let fingerprint = signer.fingerprint(HashAlg::Sha256).to_string();
    let listed: Vec<&Entry> = signers
        .entries
        .iter()
        .filter(|e| !e.cert_authority && &e.key == signer)
        .collect();
    let Some(first) = listed.first() else {
        return Err(format!(
            "signed by a key not in the allowed signers file ({fingerprint})"
        ));
    };
    // As `ssh-keygen -Y find-principals`: the first line with this key that is valid now names
    // the candidate principals, whatever its namespaces.
    let Some(found) = listed.iter().find(|e| e.valid_at(now)) else {
        let reason = if first.valid_after.is_some_and(|after| now < after) {
            "key not yet valid"
        } else {
            "key expired"
        };
        return Err(reason.into());
    };
    // As `ssh-keygen -Y verify -I <principal> -n git` for each candidate in turn: any line with
    // this key whose principal patterns match it, and that allows git now, admits it.
    for principal in found.principals.split(',').filter(|p| !p.is_empty()) {
        let admitted = listed.iter().any(|e| {
            pattern_list_matches(&e.principals, principal) && e.allows_git() && e.valid_at(now)
        });
        if admitted {
            return Ok((principal.to_string(), fingerprint));
        }
    }
    Err(format!("signer not allowed for namespace {NAMESPACE}"))
}

/// Whether the crate's enabled features can verify signatures by keys of this kind; asked first
/// so that such a signature is reported as unsupported rather than as not verifying.
fn supported(key: &KeyData) -> bool {
    matches!(
        key.algorithm(),
        Algorithm::Ed25519
            | Algorithm::SkEd25519
            | Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256
            }
            | Algorithm::SkEcdsaSha2NistP256
            | Algorithm::Rsa { .. }
    )
}

/// A commit split into what was signed and the signature.
#[derive(Debug)]
struct SignedCommit {
    /// The commit without its signature headers: the bytes the signer signed.
    payload: Vec<u8>,
    /// The `gpgsig` header's value, continuation lines joined with their leading space removed.
    signature: Vec<u8>,
    /// How many `gpgsig` headers the commit has.
    headers: usize,
}

/// Splits a raw commit the way git does before verifying it.
///
/// Among the headers (up to the first empty line), a `gpgsig ` line and the lines after it that
/// begin with a space form the signature. Every header whose name begins with `gpgsig`, such as
/// `gpgsig-sha256`, is dropped from the payload together with its continuation lines, because the
/// signer signed the commit before any signature was added. The message is kept byte for byte.
fn split_commit(raw: &[u8]) -> SignedCommit {
    let mut signed = SignedCommit {
        payload: Vec::with_capacity(raw.len()),
        signature: Vec::new(),
        headers: 0,
    };
    let mut in_signature = false;
    let mut in_other_signature = false;
    let mut rest = raw;
    while let Some(&first) = rest.first() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let (line, after) = rest.split_at(end);
        let value = if in_signature && first == b' ' {
            line.get(1..)
        } else if let Some(value) = line
            .strip_prefix(SIGNATURE_HEADER)
            .and_then(|v| v.strip_prefix(b" "))
        {
            signed.headers += 1;
            in_other_signature = false;
            Some(value)
        } else {
            if line.starts_with(SIGNATURE_HEADER) {
                in_other_signature = true;
            } else if first != b' ' {
                in_other_signature = false;
            }
            None
        };
        match value {
            Some(value) => {
                signed.signature.extend_from_slice(value);
                in_signature = true;
            }
            None if first == b'\n' => {
                // The empty line ends the headers; the message is copied whole.
                signed.payload.extend_from_slice(rest);
                break;
            }
            None => {
                if !in_other_signature {
                    signed.payload.extend_from_slice(line);
                }
                in_signature = false;
            }
        }
        rest = after;
    }
    signed
}

/// Parses one line: `None` for blank and comment lines.
fn parse_line(line: &str) -> Result<Option<Entry>, String> {
    let line = line.trim_matches(is_space);
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (principals, rest) = split_principals(line)?;
    if principals.is_empty() {
        return Err("empty principals".into());
    }
    let (first, _) = split_word(rest);
    if first.is_empty() {
        return Err("missing key".into());
    }
    // ssh-keygen tells options from the key by whether a key type comes first; doing the same
    // keeps lines without options working.
    let (options, rest) = if is_key_type(first) {
        (Options::default(), rest)
    } else {
        let (token, rest) = split_options(rest)?;
        (parse_options(token)?, rest)
    };
    let (key_type, rest) = split_word(rest);
    let (blob, _comment) = split_word(rest);
    if key_type.is_empty() {
        return Err("missing key".into());
    }
    if !is_key_type(key_type) {
        return Err(format!("unknown key type `{key_type}`"));
    }
    if key_type.ends_with("-cert-v01@openssh.com") {
        return Err(
            "a certificate cannot be an allowed signer's key; list the certificate \
                    authority's key with cert-authority instead"
                .into(),
        );
    }
    if blob.is_empty() {
        return Err(format!("missing base64 key data after `{key_type}`"));
    }
    let key = PublicKey::from_openssh(&format!("{key_type} {blob}"))
        .map_err(|e| format!("invalid {key_type} key: {e}"))?;
    Ok(Some(Entry {
        principals,
        key: key.key_data().clone(),
        cert_authority: options.cert_authority,
        namespaces: options.namespaces,
        valid_after: options.valid_after,
        valid_before: options.valid_before,
    }))
}

/// The whitespace that separates fields, as in ssh-keygen.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits off the first whitespace-separated word; the rest has its leading whitespace removed.
fn split_word(text: &str) -> (&str, &str) {
    let end = text.find(is_space).unwrap_or(text.len());
    let (word, rest) = text.split_at(end);
    (word, rest.trim_start_matches(is_space))
}

/// Splits off the principals field, which may be put in double quotes to hold spaces.
fn split_principals(line: &str) -> Result<(String, &str), String> {
    let end = line.find(|c| is_space(c) || c == '"').unwrap_or(line.len());
    let (head, tail) = line.split_at(end);
    let Some(quoted) = tail.strip_prefix('"') else {
        return Ok((head.to_string(), tail.trim_start_matches(is_space)));
    };
    let close = quoted
        .find('"')
        .ok_or("principals have an opening quote but no closing one")?;
    let (inside, after) = quoted.split_at(close);
    let after = after.get(1..).unwrap_or_default();
    if after.starts_with(|c: char| !is_space(c)) {
        return Err("unexpected text after the quoted principals".into());
    }
    Ok((
        format!("{head}{inside}"),
        after.trim_start_matches(is_space),
    ))
}

/// Splits off the options field, which ends at whitespace outside double quotes (`\"` is a quote
/// inside a value).
fn split_options(text: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = text[i..].starts_with("\\\"");
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && is_space(c) {
            return Ok((&text[..i], text[i..].trim_start_matches(is_space)));
        }
    }
    if quoted {
        return Err("options have an unterminated quote".into());
    }
    Err("missing key after the options".into())
}

/// Whether `word` names an SSH public key type (certificate types included) rather than options.
fn is_key_type(word: &str) -> bool {
    /// The plain key types OpenSSH knows.
    const PLAIN: [&str; 8] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-dss",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    PLAIN.contains(&word)
        || word
            .strip_suffix("-cert-v01@openssh.com")
            .is_some_and(|base| {
                PLAIN.contains(&base) || PLAIN.iter().any(|p| p.replace("@openssh.com", "") == base)
            })
}

/// The options of one line.
#[derive(Debug, Default)]
struct Options {
    /// `cert-authority` was given.
    cert_authority: bool,
    /// The value of `namespaces=`.
    namespaces: Option<String>,
    /// The value of `valid-after=`, as unix time.
    valid_after: Option<u64>,
    /// The value of `valid-before=`, as unix time.
    valid_before: Option<u64>,
}

/// Parses a comma-separated options field; option names are case-insensitive and values must be
/// in double quotes, as ssh-keygen requires.
fn parse_options(field: &str) -> Result<Options, String> {
    let mut options = Options::default();
    let mut rest = field;
    loop {
        if let Some(after) = strip_prefix_ignore_case(rest, "cert-authority") {
            options.cert_authority = true;
            rest = after;
        } else if let Some(after) = strip_prefix_ignore_case(rest, "namespaces=") {
            if options.namespaces.is_some() {
                return Err("namespaces given twice".into());
            }
            let (value, after) = dequote(after, "namespaces")?;
            options.namespaces = Some(value);
            rest = after;
        } else if let Some(after) = strip_prefix_ignore_case(rest, "valid-after=") {
            if options.valid_after.is_some() {
                return Err("valid-after given twice".into());
            }
            let (value, after) = dequote(after, "valid-after")?;
            options.valid_after = Some(parse_time(&value, "valid-after")?);
            rest = after;
        } else if let Some(after) = strip_prefix_ignore_case(rest, "valid-before=") {
            if options.valid_before.is_some() {
                return Err("valid-before given twice".into());
            }
            let (value, after) = dequote(after, "valid-before")?;
            options.valid_before = Some(parse_time(&value, "valid-before")?);
            rest = after;
        } else {
            let name = rest.split([',', '=']).next().unwrap_or_default();
            return Err(format!("unknown option or key type `{name}`"));
        }
        if rest.is_empty() {
            break;
        }
        let Some(after) = rest.strip_prefix(',') else {
            let name = rest.split([',', '=']).next().unwrap_or_default();
            return Err(format!("unknown option `{name}`"));
        };
        if after.is_empty() {
            return Err("options end with a comma".into());
        }
        rest = after;
    }
    if let (Some(after), Some(before)) = (options.valid_after, options.valid_before)
        && before <= after
    {
        return Err("valid-before is not later than valid-after".into());
    }
    Ok(options)
}

/// `text` without the ASCII `prefix`, compared ignoring case.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// Reads a double-quoted option value (`\"` stands for a quote) and returns it with the text
/// after the closing quote.
fn dequote<'a>(text: &'a str, option: &str) -> Result<(String, &'a str), String> {
    let Some(inner) = text.strip_prefix('"') else {
        return Err(format!("the value of {option} must be in double quotes"));
    };
    let mut value = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &inner[i + 1..])),
            '\\' if inner[i + 1..].starts_with('"') => {
                value.push('"');
                chars.next();
            }
            _ => value.push(c),
        }
    }
    Err(format!("the value of {option} has no closing quote"))
}

/// Parses a `valid-after`/`valid-before` time, `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]` (`UTC` may
/// stand for `Z`), into unix time. Times without a suffix are read as UTC too (see the module
/// documentation).
fn parse_time(text: &str, option: &str) -> Result<u64, String> {
    let invalid =
        || format!("invalid {option} time `{text}` (expected YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z])");
    let digits = if text.len() > 1 && text.ends_with(['z', 'Z']) {
        &text[..text.len() - 1]
    } else if text.len() > 3
        && text
            .get(text.len() - 3..)
            .is_some_and(|s| s.eq_ignore_ascii_case("utc"))
    {
        &text[..text.len() - 3]
    } else {
        text
    };
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let field = |range: std::ops::Range<usize>| -> u64 {
        digits
            .get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = (field(8..10), field(10..12), field(12..14));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(invalid()),
    };
    // ssh-keygen cannot represent times before 1970, and treats 0 as "no limit" and so refuses it.
    if year < 1970 || day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return Err(invalid());
    }
    // Leap years in 1..=y, to count the days from 1970 to the start of the year.
    let leaps = |y: u64| y / 4 - y / 100 + y / 400;
    /// Days in a common year before each month.
    const DAYS_BEFORE_MONTH: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_index = usize::try_from(month - 1).map_err(|_| invalid())?;
    let days = 365 * (year - 1970)
        + (leaps(year - 1) - leaps(1969))
        + DAYS_BEFORE_MONTH
            .get(month_index)
            .copied()
            .unwrap_or_default()
        + u64::from(leap && month > 2)
        + (day - 1);
    let time = days * 86_400 + hour * 3_600 + minute * 60 + second;
    if time == 0 {
        return Err(invalid());
    }
    Ok(time)
}

/// Whether `text` matches the OpenSSH pattern list `list`: comma-separated patterns with `*` and
/// `?` wildcards, where a pattern starting with `!` excludes what it matches. Matching is
/// case-sensitive and by byte, as ssh-keygen matches principals and namespaces.
fn pattern_list_matches(list: &str, text: &str) -> bool {
    let mut positive = false;
    for pattern in list.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if pattern.len() >= MAX_PATTERN_LEN {
            return false;
        }
        if wildcard_matches(pattern.as_bytes(), text.as_bytes()) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

/// Whether `text` matches `pattern`, where `*` matches any run of bytes and `?` any one byte.
///
/// Greedy with a single backtrack point, which is exact for these two wildcards and linear in
/// practice, unlike plain recursion on hostile patterns such as `*a*a*a*a*b`.
fn wildcard_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and where in the text its match currently ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    // Let the last `*` swallow one more byte and retry after it.
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Command, Output};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// The current unix time.
    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs()
    }

    /// Runs `command`, failing the test with its stderr when it fails.
    fn run(command: &mut Command) -> Vec<u8> {
        let out = command.output().expect("command starts");
        assert!(
            out.status.success(),
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A temporary directory with a git repository and keys, isolated from the user's config.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        /// A fresh directory holding an empty repository `repo`.
        fn new() -> Self {
            let fixture = Self {
                dir: tempfile::tempdir().expect("temp dir"),
            };
            run(fixture
                .git()
                .args(["init", "-q", "repo"])
                .current_dir(fixture.path()));
            fixture
        }

        /// The temporary directory.
        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// The repository's work tree.
        fn repo(&self) -> PathBuf {
            self.path().join("repo")
        }

        /// A git command in the repository, with no user, system or agent configuration.
        fn git(&self) -> Command {
            let mut command = Command::new("git");
            command
                .current_dir(self.repo())
                .env("HOME", self.path())
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env_remove("GIT_DIR")
                .env_remove("GIT_WORK_TREE")
                .env_remove("GIT_INDEX_FILE")
                .env_remove("SSH_AUTH_SOCK")
                .args(["-c", "user.name=t", "-c", "user.email=t@t"]);
            command
        }

        /// Makes a key pair; returns the private key's path and the public key's
        /// `keytype base64` text.
        fn key(&self, name: &str, kind: &str) -> (PathBuf, String) {
            let path = self.path().join(name);
            let mut keygen = Command::new("ssh-keygen");
            keygen.args(["-q", "-t", kind, "-N", "", "-C", "comment here"]);
            if kind == "rsa" {
                keygen.args(["-b", "2048"]);
            }
            run(keygen.arg("-f").arg(&path));
            let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
            let fields: Vec<&str> = public.split_whitespace().take(2).collect();
            (path, fields.join(" "))
        }

        /// The SHA256 fingerprint ssh-keygen prints for a private key's public half.
        fn fingerprint(&self, key: &Path) -> String {
            let out = run(Command::new("ssh-keygen")
                .arg("-lf")
                .arg(key.with_extension("pub")));
            let out = String::from_utf8(out).expect("utf-8");
            out.split_whitespace()
                .nth(1)
                .expect("fingerprint")
                .to_string()
        }

        /// Commits with message `msg`, signed with `key` if given; returns the id and raw bytes.
        fn commit(&self, key: Option<&Path>, msg: &str) -> (String, Vec<u8>) {
            let mut git = self.git();
            if let Some(key) = key {
                git.args(["-c", "gpg.format=ssh", "-c"])
                    .arg(format!("user.signingkey={}", key.display()));
            }
            git.args(["commit", "-q", "--allow-empty", "-m", msg]);
            if key.is_some() {
                git.arg("-S");
            }
            run(&mut git);
            let id = run(self.git().args(["rev-parse", "HEAD"]));
            let id = String::from_utf8(id).expect("utf-8").trim().to_string();
            let raw = run(self.git().args(["cat-file", "commit", &id]));
            (id, raw)
        }

        /// Stores `raw` as a commit object, unchecked, and returns its id.
        fn store(&self, raw: &[u8]) -> String {
            let mut child = self
                .git()
                .args([
                    "hash-object",
                    "-t",
                    "commit",
                    "-w",
                    "--literally",
                    "--stdin",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("git starts");
            std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), raw).expect("write");
            let out = child.wait_with_output().expect("git ends");
            assert!(out.status.success());
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_string()
        }

        /// What `git verify-commit` says about `id` with `signers` as the allowed signers file:
        /// `Some(principal)` when it trusts the commit.
        fn git_verdict(&self, id: &str, signers: &str) -> Option<String> {
            let file = self.path().join("allowed_signers");
            std::fs::write(&file, signers).expect("write signers");
            let out: Output = self
                .git()
                .arg("-c")
                .arg(format!("gpg.ssh.allowedSignersFile={}", file.display()))
                .args(["verify-commit", id])
                .output()
                .expect("git starts");
            if !out.status.success() {
                return None;
            }
            let text = String::from_utf8_lossy(&out.stderr);
            let principal = text
                .split("signature for ")
                .nth(1)
                .and_then(|rest| rest.split(" with ").next())
                .expect("git names the principal");
            Some(principal.to_string())
        }

        /// Checks our verdict on `raw` (stored as `id`) against git's, and returns ours.
        fn verdict(&self, id: &str, raw: &[u8], signers: &str) -> Verdict {
            let parsed = AllowedSigners::parse(signers).expect("signers parse");
            let ours = verify_commit(raw, &parsed, now());
            let git = self.git_verdict(id, signers);
            match (&ours, &git) {
                (Verdict::Trusted { principal, .. }, Some(theirs)) => assert_eq!(principal, theirs),
                (Verdict::Untrusted(_), None) => {}
                _ => panic!("we say {ours:?}, git says {git:?}"),
            }
            ours
        }
    }

    /// Puts a `gpgsig` header holding `armor` at the end of an unsigned commit's headers.
    fn with_signature(raw: &[u8], armor: &str) -> Vec<u8> {
        let split = raw
            .windows(2)
            .position(|w| w == b"\n\n")
            .expect("headers end")
            + 1;
        let mut header = String::from("gpgsig");
        for line in armor.lines() {
            header.push(' ');
            header.push_str(line);
            header.push('\n');
        }
        [&raw[..split], header.as_bytes(), &raw[split..]].concat()
    }

    /// The reason of an untrusted verdict; fails the test on a trusted one.
    fn untrusted(verdict: &Verdict) -> &str {
        match verdict {
            Verdict::Untrusted(reason) => reason,
            Verdict::Trusted { .. } => panic!("unexpectedly trusted: {verdict:?}"),
        }
    }

    /// A commit signed by a listed key is trusted as the line's principal.
    #[test]
    fn allowed_signer_is_trusted() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let (id, raw) = fx.commit(Some(&key), "msg");
        let signers = format!("# team\n\nalice@example.com {public} alice's laptop\n");
        assert_eq!(
            fx.verdict(&id, &raw, &signers),
            Verdict::Trusted {
                principal: "alice@example.com".into(),
                key_fingerprint: fx.fingerprint(&key),
            }
        );
    }

    /// ECDSA P-256 and RSA signatures verify too.
    #[test]
    fn other_key_types_are_trusted() {
        let fx = Fixture::new();
        for kind in ["ecdsa", "rsa"] {
            let (key, public) = fx.key(kind, kind);
            let (id, raw) = fx.commit(Some(&key), kind);
            let signers = format!("{kind}@x {public}\n");
            assert_eq!(
                fx.verdict(&id, &raw, &signers),
                Verdict::Trusted {
                    principal: format!("{kind}@x"),
                    key_fingerprint: fx.fingerprint(&key),
                }
            );
        }
    }

    /// A key missing from the file is named by its fingerprint.
    #[test]
    fn unknown_signer_is_named_by_fingerprint() {
        let fx = Fixture::new();
        let (_, allowed) = fx.key("k1", "ed25519");
        let (other, _) = fx.key("k2", "ed25519");
        let (id, raw) = fx.commit(Some(&other), "msg");
        let verdict = fx.verdict(&id, &raw, &format!("alice@example.com {allowed}\n"));
        assert_eq!(
            untrusted(&verdict),
            format!(
                "signed by a key not in the allowed signers file ({})",
                fx.fingerprint(&other)
            )
        );
    }

    /// A commit without a signature is untrusted.
    #[test]
    fn unsigned_commit_is_untrusted() {
        let fx = Fixture::new();
        let (_, public) = fx.key("k1", "ed25519");
        let (id, raw) = fx.commit(None, "msg");
        let verdict = fx.verdict(&id, &raw, &format!("a@x {public}\n"));
        assert_eq!(untrusted(&verdict), "commit is not signed");
    }

    /// Changing the signed bytes breaks the signature.
    #[test]
    fn tampered_commit_does_not_verify() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let (_, raw) = fx.commit(Some(&key), "pay alice 10");
        let text = String::from_utf8(raw).expect("utf-8");
        let tampered = text.replace("pay alice 10", "pay alice 99").into_bytes();
        let id = fx.store(&tampered);
        let verdict = fx.verdict(&id, &tampered, &format!("a@x {public}\n"));
        assert_eq!(untrusted(&verdict), "signature does not verify");
    }

    /// A `namespaces` option must admit `git`.
    #[test]
    fn namespace_restriction_is_enforced() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let (id, raw) = fx.commit(Some(&key), "msg");
        let verdict = fx.verdict(&id, &raw, &format!("a@x namespaces=\"file\" {public}\n"));
        assert_eq!(untrusted(&verdict), "signer not allowed for namespace git");
        let verdict = fx.verdict(
            &id,
            &raw,
            &format!("a@x namespaces=\"file,g?t\" {public}\n"),
        );
        assert!(matches!(verdict, Verdict::Trusted { .. }), "{verdict:?}");
        let verdict = fx.verdict(&id, &raw, &format!("a@x namespaces=\"*,!git\" {public}\n"));
        assert_eq!(untrusted(&verdict), "signer not allowed for namespace git");
    }

    /// `valid-after` and `valid-before` bound when a key may sign.
    #[test]
    fn validity_window_is_enforced() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let (id, raw) = fx.commit(Some(&key), "msg");
        let expired = format!("a@x valid-before=\"20200101Z\" {public}\n");
        assert_eq!(untrusted(&fx.verdict(&id, &raw, &expired)), "key expired");
        let early = format!("a@x valid-after=\"29990101\" {public}\n");
        assert_eq!(
            untrusted(&fx.verdict(&id, &raw, &early)),
            "key not yet valid"
        );
        let window =
            format!("a@x valid-after=\"20200101Z\",valid-before=\"29990101000000Z\" {public}\n");
        assert!(matches!(
            fx.verdict(&id, &raw, &window),
            Verdict::Trusted { .. }
        ));
    }

    /// Which principal is reported, and how repeated keys combine, as git decides.
    #[test]
    fn principals_and_repeated_keys_follow_git() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let (id, raw) = fx.commit(Some(&key), "msg");
        let principal = |signers: &str| match fx.verdict(&id, &raw, signers) {
            Verdict::Trusted { principal, .. } => Some(principal),
            Verdict::Untrusted(_) => None,
        };
        // The first of several principals is the one reported.
        assert_eq!(
            principal(&format!("a@x,b@y {public}\n")).as_deref(),
            Some("a@x")
        );
        assert_eq!(
            principal(&format!("\"a b@x\" {public}\n")).as_deref(),
            Some("a b@x")
        );
        // An expired line is passed over for a later valid one.
        let signers = format!("a@x valid-before=\"20200101\" {public}\nc@z {public}\n");
        assert_eq!(principal(&signers).as_deref(), Some("c@z"));
        // The first valid line names the principals, even when it does not allow git...
        let signers = format!("a@x namespaces=\"file\" {public}\nc@z {public}\n");
        assert_eq!(principal(&signers), None);
        // ...but a later line for the same principal may.
        let signers = format!("a@x namespaces=\"file\" {public}\na@x {public}\n");
        assert_eq!(principal(&signers).as_deref(), Some("a@x"));
        let signers = format!("c@z {public}\na@x namespaces=\"file\" {public}\n");
        assert_eq!(principal(&signers).as_deref(), Some("c@z"));
        // A certificate authority line is no plain signer.
        let signers = format!("*@x cert-authority {public}\n");
        assert_eq!(principal(&signers), None);
    }

    /// PGP signatures, other namespaces and doubled headers are refused; a hand-made signature over git's payload is accepted.
    #[test]
    fn other_signature_formats_are_untrusted() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let signers = format!("a@x {public}\n");
        let (_, unsigned) = fx.commit(None, "msg");

        let pgp = "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQQ=\n=abcd\n-----END PGP SIGNATURE-----\n";
        let raw = with_signature(&unsigned, pgp);
        let id = fx.store(&raw);
        let reason = untrusted(&fx.verdict(&id, &raw, &signers)).to_string();
        assert_eq!(reason, "signature is not an ssh signature (gpg)");

        // A valid SSH signature over the payload, but made for another namespace.
        let payload = fx.path().join("payload");
        std::fs::write(&payload, &unsigned).expect("write payload");
        run(Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "file", "-f"])
            .arg(&key)
            .arg(&payload));
        let armor = std::fs::read_to_string(payload.with_extension("sig")).expect("signature");
        let raw = with_signature(&unsigned, &armor);
        let id = fx.store(&raw);
        let reason = untrusted(&fx.verdict(&id, &raw, &signers)).to_string();
        assert_eq!(reason, "signature is for namespace \"file\", not git");

        // The same for namespace git verifies: the payload is what git signs.
        std::fs::remove_file(payload.with_extension("sig")).expect("remove");
        run(Command::new("ssh-keygen")
            .args(["-q", "-Y", "sign", "-n", "git", "-f"])
            .arg(&key)
            .arg(&payload));
        let armor = std::fs::read_to_string(payload.with_extension("sig")).expect("signature");
        let raw = with_signature(&unsigned, &armor);
        let id = fx.store(&raw);
        assert!(matches!(
            fx.verdict(&id, &raw, &signers),
            Verdict::Trusted { .. }
        ));

        // Two signature headers are refused.
        let doubled = with_signature(&raw, &armor);
        let signers = AllowedSigners::parse(&signers).expect("parse");
        assert_eq!(
            untrusted(&verify_commit(&doubled, &signers, now())),
            "commit has more than one gpgsig header"
        );
    }

    /// A `gpgsig-sha256` header is no signature here and is not part of the payload.
    #[test]
    fn sha256_signature_header_is_ignored() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let signers = format!("a@x {public}\n");
        let (_, raw) = fx.commit(Some(&key), "msg");
        // A gpgsig-sha256 header added after signing is left out of the payload, as by git.
        let text = String::from_utf8(raw).expect("utf-8");
        let extra =
            "gpgsig-sha256 -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n";
        let with_extra = text
            .replacen("gpgsig ", &format!("{extra}gpgsig "), 1)
            .into_bytes();
        let id = fx.store(&with_extra);
        assert!(matches!(
            fx.verdict(&id, &with_extra, &signers),
            Verdict::Trusted { .. }
        ));
        // Alone, it is no signature for a SHA-1 repository.
        let (_, unsigned) = fx.commit(None, "msg");
        let text = String::from_utf8(unsigned).expect("utf-8");
        let only = text
            .replacen("committer ", &format!("{extra}committer "), 1)
            .into_bytes();
        let id = fx.store(&only);
        assert_eq!(
            untrusted(&fx.verdict(&id, &only, &signers)),
            "commit is not signed"
        );
    }

    /// The payload is the commit without its signature headers, message untouched.
    #[test]
    fn split_commit_removes_exactly_the_signature_headers() {
        let raw = b"tree t\nparent p\ngpgsig A\n B\n C\ngpgsig-sha256 X\n Y\nauthor a\n\n body\ngpgsig x\n";
        let signed = split_commit(raw);
        assert_eq!(signed.headers, 1);
        assert_eq!(signed.signature, b"A\nB\nC\n");
        assert_eq!(
            signed.payload,
            b"tree t\nparent p\nauthor a\n\n body\ngpgsig x\n"
        );
        let unsigned = split_commit(b"tree t\n\nmsg");
        assert_eq!(
            (unsigned.headers, unsigned.payload.as_slice()),
            (0, &b"tree t\n\nmsg"[..])
        );
    }

    /// A real public key for parser tests.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBRV2Lsm8zVE1hVdZ4gbuwxFydb2kxpwST2mitRKOCNh";

    /// Comments, blank lines, quoting, option case and multiple principals.
    #[test]
    fn parser_reads_comments_blanks_and_fields() {
        let text = format!(
            "# comment\n\n   \n  # indented comment\r\n\
             a@x,b@y {KEY}\n\
             \"quoted principal@x\" {KEY} trailing comment words\r\n\
             *@x NAMESPACES=\"git,file\",Valid-After=\"20240101\",valid-before=\"202501011230Z\" {KEY}\n\
             c@z namespaces=\"a b,\\\"q\\\"\",cert-authority {KEY}\n\t d@w\t{KEY}\n"
        );
        let signers = AllowedSigners::parse(&text).expect("parses");
        let e = &signers.entries;
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].principals, "a@x,b@y");
        assert!(e[0].namespaces.is_none() && !e[0].cert_authority);
        assert_eq!(e[1].principals, "quoted principal@x");
        assert_eq!(e[2].namespaces.as_deref(), Some("git,file"));
        assert_eq!(e[2].valid_after, Some(1_704_067_200));
        assert_eq!(e[2].valid_before, Some(1_735_734_600));
        assert_eq!(e[3].namespaces.as_deref(), Some("a b,\"q\""));
        assert!(e[3].cert_authority);
        assert_eq!(e[4].principals, "d@w");
        assert!(AllowedSigners::parse("").expect("empty").entries.is_empty());
    }

    /// Each malformed line is reported with its number and problem.
    #[test]
    fn parser_errors_name_the_line() {
        let cases = [
            (format!("# ok\na@x {KEY}\nb@y\n"), "line 3: missing key"),
            (
                format!("\n\nb@y bogus {KEY}\n"),
                "line 3: unknown option or key type `bogus`",
            ),
            (
                format!("b@y namespaces=git {KEY}"),
                "line 1: the value of namespaces must be in double quotes",
            ),
            (
                format!("b@y namespaces=\"git {KEY}"),
                "line 1: options have an unterminated quote",
            ),
            (
                format!("\"b@y {KEY}"),
                "line 1: principals have an opening quote but no closing one",
            ),
            (
                format!("b@y valid-after=\"2024\" {KEY}"),
                "line 1: invalid valid-after time `2024`",
            ),
            (
                format!("b@y valid-after=\"20240230\" {KEY}"),
                "line 1: invalid valid-after time",
            ),
            (
                format!("b@y valid-after=\"19700101Z\" {KEY}"),
                "line 1: invalid valid-after time",
            ),
            (
                format!("b@y valid-after=\"20250101\",valid-before=\"20240101\" {KEY}"),
                "line 1: valid-before is not later than valid-after",
            ),
            (
                format!("b@y namespaces=\"a\",namespaces=\"b\" {KEY}"),
                "line 1: namespaces given twice",
            ),
            (
                format!("b@y cert-authority, {KEY}"),
                "line 1: options end with a comma",
            ),
            (
                format!("b@y cert-authorityx {KEY}"),
                "line 1: unknown option `x`",
            ),
            (
                "b@y ssh-ed25519 AAAA!!!".to_string(),
                "line 1: invalid ssh-ed25519 key",
            ),
            (
                "b@y ssh-ed25519".to_string(),
                "line 1: missing base64 key data",
            ),
            (
                "b@y cert-authority ssh-foo AAAA".to_string(),
                "line 1: unknown key type `ssh-foo`",
            ),
            (
                "b@y cert-authority".to_string(),
                "line 1: missing key after the options",
            ),
            (
                "b@y ssh-ed25519-cert-v01@openssh.com AAAA".to_string(),
                "line 1: a certificate cannot be an allowed signer's key",
            ),
            // The blob must hold the key type it is labelled with.
            (
                format!("b@y ssh-rsa {}", KEY.split(' ').nth(1).unwrap_or_default()),
                "line 1: invalid ssh-rsa key",
            ),
        ];
        for (text, expected) in cases {
            let error = AllowedSigners::parse(&text).expect_err(&text);
            assert!(
                error.starts_with(expected),
                "{text:?}: got {error:?}, want {expected:?}"
            );
        }
    }

    /// Reading errors and parse errors name the file.
    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let error = AllowedSigners::load(&missing).expect_err("missing file");
        assert!(
            error.starts_with("cannot read allowed signers file "),
            "{error}"
        );
        assert!(error.contains("missing"), "{error}");
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "a@x nonsense").expect("write");
        let error = AllowedSigners::load(&bad).expect_err("bad file");
        assert!(
            error.ends_with("bad: line 1: missing key after the options"),
            "{error}"
        );
        let good = dir.path().join("good");
        std::fs::write(&good, format!("a@x {KEY}\n")).expect("write");
        assert_eq!(AllowedSigners::load(&good).expect("loads").entries.len(), 1);
    }

    /// Times in the formats ssh-keygen accepts, and nonsense refused.
    #[test]
    fn times_parse_like_ssh_keygen() {
        assert_eq!(parse_time("20000101", "t"), Ok(946_684_800));
        assert_eq!(parse_time("20000101Z", "t"), Ok(946_684_800));
        assert_eq!(parse_time("200002291200utc", "t"), Ok(951_825_600));
        assert_eq!(parse_time("20380119031408Z", "t"), Ok(2_147_483_648));
        assert_eq!(parse_time("19700101000001", "t"), Ok(1));
        for bad in [
            "",
            "Z",
            "2000010",
            "2000010100",
            "20001301",
            "19000229",
            "2000010124000",
            "2000-1-1",
        ] {
            assert!(parse_time(bad, "t").is_err(), "{bad}");
        }
    }

    /// Wildcards and negation in pattern lists.
    #[test]
    fn patterns_match_like_openssh() {
        assert!(pattern_list_matches("git", "git"));
        assert!(pattern_list_matches("file,git", "git"));
        assert!(pattern_list_matches("g*", "git"));
        assert!(pattern_list_matches("?i?", "git"));
        assert!(pattern_list_matches("*", ""));
        assert!(!pattern_list_matches("Git", "git"));
        assert!(!pattern_list_matches("gi", "git"));
        assert!(!pattern_list_matches("*,!git", "git"));
        assert!(!pattern_list_matches("!git", "git"));
        assert!(!pattern_list_matches("", "git"));
        assert!(pattern_list_matches("*@example.com", "alice@example.com"));
        assert!(wildcard_matches(b"*a*a*b", b"aaaaaaaaaaaab"));
        assert!(!wildcard_matches(b"*a*a*a*a*a*a*b", &[b'a'; 200]));
        assert!(!pattern_list_matches(&"*".repeat(MAX_PATTERN_LEN), "git"));
    }

    /// A small deterministic generator for the property test.
    struct XorShift(u64);

    impl XorShift {
        /// The next pseudo-random number.
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A pseudo-random number below `n`.
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random and mutated input never panics, and a changed payload is never trusted.
    #[test]
    fn arbitrary_input_never_panics() {
        let fx = Fixture::new();
        let (key, public) = fx.key("k1", "ed25519");
        let (_, signed) = fx.commit(Some(&key), "msg");
        let signers = AllowedSigners::parse(&format!("a@x {public}\n")).expect("parse");
        let original_payload = split_commit(&signed).payload;
        let now = now();
        let pieces: [&[u8]; 24] = [
            b" ",
            b"\t",
            b"\n",
            b"\r",
            b",",
            b"\"",
            b"\\\"",
            b"=",
            b"#",
            b"!",
            b"*",
            b"?",
            b"a@x",
            b"namespaces=",
            b"valid-after=",
            b"VALID-BEFORE=",
            b"cert-authority",
            b"20240101Z",
            b"ssh-ed25519",
            b"gpgsig ",
            b"gpgsig-sha256 ",
            b"-----BEGIN SSH SIGNATURE-----",
            public.as_bytes(),
            "é".as_bytes(),
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..6000 {
            let mut input = Vec::new();
            match round % 3 {
                // Raw bytes.
                0 => (0..rng.below(200)).for_each(|_| input.push(rng.next() as u8)),
                // Fragments of the formats, to reach deeper into both parsers.
                1 => (0..rng.below(30))
                    .for_each(|_| input.extend_from_slice(pieces[rng.below(pieces.len())])),
                // A real signed commit with a few bytes changed, inserted or removed.
                _ => {
                    input = signed.clone();
                    for _ in 0..=rng.below(4) {
                        let at = rng.below(input.len() + 1);
                        match rng.below(3) {
                            0 if at < input.len() => input[at] = rng.next() as u8,
                            1 => input.insert(at, rng.next() as u8),
                            _ if at < input.len() => {
                                input.remove(at);
                            }
                            _ => {}
                        }
                    }
                }
            }
            let _ = AllowedSigners::parse(&String::from_utf8_lossy(&input));
            let verdict = verify_commit(&input, &signers, now);
            // Whatever the change, a different payload must never pass as signed.
            if split_commit(&input).payload != original_payload {
                assert!(matches!(verdict, Verdict::Untrusted(_)), "{input:?}");
            }
        }
    }
}
