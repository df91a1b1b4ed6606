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
mod tests;
