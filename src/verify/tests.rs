//! Tests of signature verification.

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

    let pgp =
        "-----BEGIN PGP SIGNATURE-----\n\niHUEABYKAB0WIQQ=\n=abcd\n-----END PGP SIGNATURE-----\n";
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
    let extra = "gpgsig-sha256 -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n";
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
    let raw =
        b"tree t\nparent p\ngpgsig A\n B\n C\ngpgsig-sha256 X\n Y\nauthor a\n\n body\ngpgsig x\n";
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
