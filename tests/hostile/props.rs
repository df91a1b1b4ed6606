//! Generated hostile input for everything gitfeed reads from configuration and writes as
//! events: URLs, source JSON, durations and the event lines themselves.
//!
//! Every target runs [`cases`] inputs from a seeded generator, so a run is repeatable: a
//! failure names the seed and the case number, and `HOSTILE_SEED=<seed> HOSTILE_CASES=<n>`
//! replays the run (case `i` draws from its own seed, so case numbers are stable whatever
//! `HOSTILE_CASES` is). A panic inside gitfeed is caught and reported like any other violated
//! property, with the input that caused it.

use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use fastrand::Rng;
use gitfeed::{ChangeKind, Encoding, Event, Source, SourceState, parse_duration};
use gix::bstr::ByteSlice;
use serde_json::{Map, Value, json};

/// Inputs per target unless `HOSTILE_CASES` says otherwise.
const DEFAULT_CASES: usize = 200_000;

/// The run's seed: `HOSTILE_SEED` (decimal or 0x-hex) to replay a run, else a fixed one so
/// that every run tries the same inputs.
fn base_seed() -> u64 {
    match std::env::var("HOSTILE_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.expect("HOSTILE_SEED is a number")
        }
        Err(_) => 0x6769_7466_6565_6421,
    }
}

fn cases() -> usize {
    std::env::var("HOSTILE_CASES")
        .ok()
        .map(|text| text.trim().parse().expect("HOSTILE_CASES is a number"))
        .unwrap_or(DEFAULT_CASES)
}

/// The seed of case `index` of `target`: mixed (splitmix64) so neighbouring cases and targets
/// draw unrelated inputs.
fn case_seed(base: u64, target: &str, index: usize) -> u64 {
    let mut x = base ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for byte in target.bytes() {
        x = (x ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Runs `check` on `cases()` inputs from `generate`. `check` returns whether gitfeed accepted
/// the input, or the property it broke. Prints `target: N inputs tried, M accepted` and fails
/// with the first violations (and how to replay them) if any.
fn run<T: Debug>(
    target: &str,
    generate: impl Fn(&mut Rng) -> T,
    check: impl Fn(&T) -> Result<bool, String>,
) -> Counts {
    let base = base_seed();
    let total = cases();
    let started = Instant::now();
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for index in 0..total {
        let mut rng = Rng::with_seed(case_seed(base, target, index));
        let input = generate(&mut rng);
        let verdict = catch_unwind(AssertUnwindSafe(|| check(&input)))
            .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_text(&*panic))));
        counts.tried += 1;
        match verdict {
            Ok(accepted) => counts.accepted += usize::from(accepted),
            Err(why) => {
                counts.failed += 1;
                if failures.len() < 8 {
                    failures.push(format!("  case {index}: {why}\n    input: {input:?}"));
                }
            }
        }
    }
    counts.elapsed = started.elapsed();
    println!(
        "{target}: {} inputs tried, {} accepted ({:.1} s, seed {base:#x})",
        counts.tried,
        counts.accepted,
        counts.elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{target}: {} of {} inputs broke a property (replay: HOSTILE_SEED={base:#x} \
         HOSTILE_CASES={total}); the first ones:\n{}",
        counts.failed,
        counts.tried,
        failures.join("\n")
    );
    counts
}

#[derive(Debug, Default)]
struct Counts {
    tried: usize,
    accepted: usize,
    failed: usize,
    elapsed: Duration,
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

// ---------------------------------------------------------------------------------------------
// Strings

/// A character a hostile input likes: structure, quoting, controls, line breaks that are not
/// `\n`, byte-order marks, the last scalar value, or any scalar value at all.
fn nasty_char(rng: &mut Rng) -> char {
    const SPECIAL: &[char] = &[
        '"',
        '\\',
        '/',
        '\'',
        '`',
        '$',
        '%',
        ':',
        '@',
        '-',
        '.',
        '[',
        ']',
        '{',
        '}',
        ',',
        ' ',
        '\t',
        '\n',
        '\r',
        '\0',
        '\u{7f}',
        '\u{85}',
        '\u{a0}',
        '\u{2028}',
        '\u{2029}',
        '\u{200b}',
        '\u{202e}',
        '\u{feff}',
        '\u{fffd}',
        '\u{fffe}',
        '\u{ffff}',
        '\u{10ffff}',
        'é',
        'ß',
        'ﬀ',
        '٣',
        '３',
        '𝟘',
        '😀',
    ];
    match rng.u8(0..10) {
        0..=3 => rng.char(' '..='~'),
        4 => char::from(rng.u8(0..0x20)),
        5 => rng.char('\u{80}'..='\u{9f}'),
        6..=7 => SPECIAL[rng.usize(..SPECIAL.len())],
        _ => rng.char(..),
    }
}

fn nasty_string(rng: &mut Rng, max_len: usize) -> String {
    let len = rng.usize(0..=max_len);
    (0..len).map(|_| nasty_char(rng)).collect()
}

/// A char boundary of `text`, uniformly among its characters' starts and its end.
fn boundary(rng: &mut Rng, text: &str) -> usize {
    let count = text.chars().count();
    let nth = rng.usize(0..=count);
    text.char_indices()
        .nth(nth)
        .map_or(text.len(), |(index, _)| index)
}

/// One random edit of `text`: insert a token or a character, delete or replace a stretch,
/// repeat a stretch, or truncate.
fn mutate(rng: &mut Rng, text: &mut String, tokens: &[&str]) {
    match rng.u8(0..8) {
        0 | 1 => {
            let at = boundary(rng, text);
            let token = tokens[rng.usize(..tokens.len())];
            text.insert_str(at, token);
        }
        2 => {
            let at = boundary(rng, text);
            text.insert(at, nasty_char(rng));
        }
        3 => {
            let (a, b) = (boundary(rng, text), boundary(rng, text));
            text.replace_range(a.min(b)..a.max(b), "");
        }
        4 => {
            let (a, b) = (boundary(rng, text), boundary(rng, text));
            let token = tokens[rng.usize(..tokens.len())];
            text.replace_range(a.min(b)..a.max(b), token);
        }
        5 => {
            // Very long: a stretch repeated, or one character thousands of times.
            let at = boundary(rng, text);
            let filler = if rng.bool() {
                let end = boundary(rng, &text[at..]) + at;
                text[at..end].to_owned()
            } else {
                nasty_char(rng).to_string()
            };
            let repeated = filler.repeat(rng.usize(1..=(4096 / filler.len().max(1)).max(1)));
            text.insert_str(at, &repeated);
        }
        6 => {
            let at = boundary(rng, text);
            text.truncate(at);
        }
        _ => {
            let at = boundary(rng, text);
            let bytes: Vec<u8> = (0..rng.usize(1..16)).map(|_| rng.u8(..)).collect();
            text.insert_str(at, &String::from_utf8_lossy(&bytes));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// URLs

const VALID_URLS: &[&str] = &[
    "/srv/p.git",
    "./p",
    "../p.git",
    "p",
    "file:///srv/p.git",
    "git://127.0.0.1:9418/p.git",
    "git://example.org/~user/p.git",
    "http://127.0.0.1:8080/p.git",
    "https://example.org/p.git",
    "https://user:secret@example.org:8443/org/p.git?x=1#frag",
    "ssh://git@example.org:2222/p.git",
    "ssh://example.org/~/p.git",
    "ssh://[::1]:22/p.git",
    "git@example.org:org/p.git",
    "example.org:p.git",
    "[::1]:p.git",
    "user@[::1]:p.git",
];

const URL_TOKENS: &[&str] = &[
    "::",
    "ext::",
    "fd::",
    "ext::sh -c touch% /tmp/pwned",
    "fd::3",
    "%",
    "%2d",
    "%2D",
    "%00",
    "%0a",
    "%25",
    "%40",
    "%3a",
    "\0",
    " ",
    "\t",
    "\n",
    "-",
    "--",
    "--upload-pack=touch /tmp/pwned",
    "--upload-pack=touch%20/tmp/pwned",
    "-oProxyCommand=touch /tmp/pwned",
    "-oProxyCommand=id",
    "-oProxyCommand=sh%20-c%20id",
    "-F/dev/null",
    "-V",
    "@",
    ":",
    "://",
    "//",
    "/",
    "\\",
    "[",
    "]",
    "[::1]",
    "'",
    "\"",
    "$(id)",
    "`id`",
    ";",
    "|",
    "&",
    "~",
    "..",
    ".git",
    "?",
    "#",
    "é",
    "\u{2028}",
    "\u{feff}",
    "\u{10ffff}",
    "ssh://",
    "git://",
    "http://",
    "https://",
    "file://",
    "ftp://",
    "git+ssh://",
    "ssh+git://",
    "HTTP://",
    "user@",
    "-user@",
    "host:",
    ":22",
    ":0",
    ":65536",
    ":-1",
];

/// A mutated valid URL, a URL built from option-injection templates, or random text.
fn url(rng: &mut Rng) -> String {
    match rng.u8(0..16) {
        0..=10 => {
            let mut text = VALID_URLS[rng.usize(..VALID_URLS.len())].to_owned();
            for _ in 0..rng.usize(1..=4) {
                mutate(rng, &mut text, URL_TOKENS);
            }
            text
        }
        11..=14 => injection_url(rng),
        _ => nasty_string(rng, 64),
    }
}

/// A URL whose user, host or whole text starts with `-`, in every form gitfeed accepts.
fn injection_url(rng: &mut Rng) -> String {
    const OPTIONS: &[&str] = &[
        "-oProxyCommand=touch%20/tmp/pwned",
        "-oProxyCommand=id",
        "-oProxyCommand=touch /tmp/pwned",
        "-oLocalCommand=id",
        "-F/dev/null",
        "-V",
        "-",
        "--",
        "-x",
        "%2doProxyCommand=id",
        "%2DoProxyCommand=id",
        "--upload-pack=touch /tmp/pwned",
        "--upload-pack=id",
        "--help",
    ];
    const SAFE: &[&str] = &["git", "example.org", "127.0.0.1", "[::1]", "h"];
    let option = OPTIONS[rng.usize(..OPTIONS.len())];
    let safe = SAFE[rng.usize(..SAFE.len())];
    let port = [":22", ":2222", ""][rng.usize(..3)];
    let path = ["/p.git", "/~/p.git", "/srv/p", "/-p"][rng.usize(..4)];
    let scheme = ["ssh", "git", "http", "https", "file", "git+ssh", "ssh+git"][rng.usize(..7)];
    let mut text = match rng.u8(0..6) {
        0 => format!("{scheme}://{option}{port}{path}"),
        1 => format!("{scheme}://{option}@{safe}{port}{path}"),
        2 => format!("{scheme}://{safe}@{option}{port}{path}"),
        3 => format!("{option}:{}", path.trim_start_matches('/')),
        4 => format!("{option}@{safe}:{}", path.trim_start_matches('/')),
        _ => option.to_owned(),
    };
    if rng.u8(0..4) == 0 {
        mutate(rng, &mut text, URL_TOKENS);
    }
    text
}

/// A source whose only possible fault is its URL.
fn url_source(url: &str) -> Source {
    Source::new("p", url)
}

/// The scheme a URL names, the way git reads it: a remote helper (`name::address`) first,
/// then `scheme://`; `None` for a path or an scp-like address.
fn named_scheme(url: &str) -> Option<String> {
    let helper_end = url
        .char_indices()
        .find(|&(index, c)| {
            !(c.is_ascii_alphanumeric() || (index > 0 && matches!(c, '+' | '-' | '.')))
        })
        .map_or(url.len(), |(index, _)| index);
    if helper_end > 0 && url[helper_end..].starts_with("::") {
        return Some(url[..helper_end].to_owned());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Some(scheme.to_owned());
    }
    if url.contains("::") {
        return Some("::".into());
    }
    None
}

#[test]
fn urls_never_panic_and_keep_to_supported_schemes() {
    run("url", url, |url| {
        let accepted = url_source(url).validate().is_ok();
        if accepted
            && let Some(scheme) = named_scheme(url)
            && !matches!(scheme.as_str(), "file" | "git" | "http" | "https" | "ssh")
        {
            return Err(format!("accepted a URL with scheme `{scheme}`"));
        }
        if accepted && url.trim().is_empty() {
            return Err("accepted an empty URL".into());
        }
        Ok(accepted)
    });
}

/// What gitfeed's ssh helper would receive as its destination argument, or its
/// `git-upload-pack` its repository argument, for an accepted URL: computed with gix's URL
/// parser, the one gitfeed takes the host, user and path from.
fn helper_argument(url: &str) -> Option<(&'static str, String)> {
    let parsed = gix::url::parse(url.as_bytes().as_bstr()).ok()?;
    match parsed.scheme {
        gix::url::Scheme::Ssh => {
            let host = parsed.host()?;
            let destination = match parsed.user() {
                Some(user) => format!("{user}@{host}"),
                None => host.to_owned(),
            };
            Some(("ssh destination", destination))
        }
        gix::url::Scheme::File => {
            let path = String::from_utf8_lossy(&parsed.path).into_owned();
            // gitfeed resolves a relative path against the current directory before it runs
            // git-upload-pack (README: "a path"), so only an absolute path reaches it as is;
            // an absolute one cannot start with `-`.
            Some(("git-upload-pack path", path))
        }
        _ => None,
    }
}

/// A URL whose ssh user or host starts with `-` puts an option where ssh expects its
/// destination (`ssh -oProxyCommand=…` runs a command): it must be rejected before any program
/// sees it. A local path starting with `-` is harmless (gitfeed hands git-upload-pack an
/// absolute path); those are counted, not failed.
#[test]
fn urls_never_start_an_option() {
    let local = std::sync::atomic::AtomicUsize::new(0);
    run("url-option-injection", injection_url, |url| {
        if url_source(url).validate().is_err() {
            return Ok(false);
        }
        match helper_argument(url) {
            Some(("ssh destination", destination)) if destination.starts_with('-') => Err(format!(
                "accepted; ssh would be run with the option `{destination}`"
            )),
            Some(("git-upload-pack path", path)) if path.starts_with('-') => {
                local.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(true)
            }
            _ => Ok(true),
        }
    });
    println!(
        "url-option-injection: {} accepted local paths start with `-`",
        local.into_inner()
    );
}

// ---------------------------------------------------------------------------------------------
// Source JSON

const SOURCE_JSON: &str = r#"{"name": "policies", "url": "https://git.example.org/policies.git", "ref": "main",
 "interval": "10s", "timeout": "30s", "backoff_initial": "1s", "backoff_max": "5m",
 "max_failures": 20, "depth": 1, "mirrors": ["https://mirror.example.org/policies.git"],
 "filter": {"directories": ["policies"], "extensions": ["rego"], "exclude": ["*_test.rego"]},
 "contents": 65536, "checkout": "/var/lib/agent/policies", "keep_snapshots": 2,
 "max_file_size": 67108864, "max_snapshot_size": 1073741824}"#;

const SOURCE_FIELDS: &[&str] = &[
    "name",
    "url",
    "mirrors",
    "ref",
    "interval",
    "timeout",
    "backoff_initial",
    "backoff_max",
    "max_failures",
    "depth",
    "ssh_command",
    "filter",
    "contents",
    "checkout",
    "keep_snapshots",
    "max_file_size",
    "max_snapshot_size",
];

const JSON_TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "true",
    "-",
    "0",
    "-1",
    "1e999",
    "-0",
    "0.5",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "\\",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "\\n",
    "\"\":",
    "\"url\":",
    "\"name\":",
    "\"interval\":",
    "\"x\":1,",
    "\u{feff}",
    " ",
    "//",
    "/*",
];

/// A duration as a hostile config writes it.
fn duration_text(rng: &mut Rng) -> String {
    const UNITS: &[&str] = &[
        "ms", "s", "m", "h", "", "d", "us", "µs", "ns", "MS", "S", "M", "H", "sec", "min", "mss",
        "hh", "s ", "m\n", "ms ms", ".5s", "e3s", "s5",
    ];
    const NUMBERS: &[&str] = &[
        "0",
        "1",
        "00",
        "007",
        "250",
        "18446744073709551615",
        "18446744073709551616",
        "18446744073709551",
        "18446744073709552",
        "5124095576030431",
        "5124095576030432",
        "307445734561825860",
        "307445734561825861",
        "99999999999999999999999999999999999999999",
        "-1",
        "+1",
        "1.5",
        "1_000",
        "٣",
        "３",
        "0x10",
        " 1",
    ];
    match rng.u8(0..10) {
        0..=5 => {
            let number = if rng.bool() {
                NUMBERS[rng.usize(..NUMBERS.len())].to_owned()
            } else {
                let digits = rng.usize(0..=22);
                (0..digits).map(|_| rng.digit(10)).collect()
            };
            let unit = UNITS[rng.usize(..UNITS.len())];
            let pad = [
                "", "", "", " ", "\t", "\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{200b}", "\0",
            ];
            format!(
                "{}{number}{unit}{}",
                pad[rng.usize(..pad.len())],
                pad[rng.usize(..pad.len())]
            )
        }
        6..=8 => {
            let mut text = format!("{}{}", rng.u64(..10_000), UNITS[rng.usize(..UNITS.len())]);
            for _ in 0..rng.usize(1..=3) {
                mutate(
                    rng,
                    &mut text,
                    &["0", "9", "ms", "s", "m", "h", " ", "-", "."],
                );
            }
            text
        }
        _ => nasty_string(rng, 24),
    }
}

/// A JSON value of any type, nested a little.
fn json_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.u8(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => json!(rng.u64(..)),
        3 => json!(rng.i64(..)),
        4 => json!(rng.f64() * 1e10 - 5e9),
        5 => json!(rng.u32(..5)),
        6 | 7 => Value::String(duration_text(rng)),
        8 => Value::String(nasty_string(rng, 40)),
        9 => Value::String(url(rng)),
        10 if depth < 3 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| json_value(rng, depth + 1))
                .collect(),
        ),
        _ if depth < 3 => {
            let mut map = Map::new();
            for _ in 0..rng.usize(0..4) {
                let key = if rng.bool() {
                    ["directories", "include", "exclude", "extensions", "x"][rng.usize(..5)]
                        .to_owned()
                } else {
                    nasty_string(rng, 8)
                };
                map.insert(key, json_value(rng, depth + 1));
            }
            Value::Object(map)
        }
        _ => Value::String(String::new()),
    }
}

/// A value that fits `field`'s type most of the time, so validation (not just parsing) is
/// reached with hostile content.
fn field_value(rng: &mut Rng, field: &str) -> Value {
    if rng.u8(0..4) == 0 {
        return json_value(rng, 0);
    }
    match field {
        "interval" | "timeout" | "backoff_initial" | "backoff_max" => {
            Value::String(duration_text(rng))
        }
        "url" => Value::String(url(rng)),
        "mirrors" => Value::Array((0..rng.usize(0..3)).map(|_| json!(url(rng))).collect()),
        "filter" => {
            let mut map = Map::new();
            for key in ["directories", "include", "exclude", "extensions"] {
                if rng.bool() {
                    let patterns = (0..rng.usize(0..3))
                        .map(|_| {
                            let mut pattern = ["*.rego", "/top.json", "vendor/", "**/x", "!a"]
                                [rng.usize(..5)]
                            .to_owned();
                            mutate(rng, &mut pattern, &["*", "**", "[", "]", "!", "\\", "/"]);
                            json!(pattern)
                        })
                        .collect();
                    map.insert(key.into(), Value::Array(patterns));
                }
            }
            Value::Object(map)
        }
        "max_failures" | "depth" => json!([0, 1, 2, u32::MAX as u64, 1 << 32][rng.usize(..5)]),
        "contents" | "max_file_size" | "max_snapshot_size" | "keep_snapshots" => {
            json!([0, 1, u64::MAX, 65536][rng.usize(..4)])
        }
        "ref" => {
            let mut name =
                ["main", "refs/heads/main", "refs/tags/v1", "a/b"][rng.usize(..4)].to_owned();
            mutate(
                rng,
                &mut name,
                &["..", "@{", "~", "^", ":", "?", "*", "[", ".lock", "/", " "],
            );
            Value::String(name)
        }
        _ => Value::String(nasty_string(rng, 40)),
    }
}

fn source_json(rng: &mut Rng) -> String {
    static BASE: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let base = BASE
        .get_or_init(|| serde_json::from_str(SOURCE_JSON).expect("the README's example parses"))
        .clone();
    if rng.u8(0..3) == 0 {
        // Text-level damage: what a truncated or hand-edited file looks like.
        let mut text = if rng.bool() {
            SOURCE_JSON.to_owned()
        } else {
            serde_json::to_string(&base).expect("a JSON value serializes")
        };
        for _ in 0..rng.usize(1..=4) {
            mutate(rng, &mut text, JSON_TOKENS);
        }
        return text;
    }
    let Value::Object(mut map) = base else {
        unreachable!("the example is an object")
    };
    for _ in 0..rng.usize(1..=4) {
        let field = SOURCE_FIELDS[rng.usize(..SOURCE_FIELDS.len())];
        match rng.u8(0..8) {
            0 => {
                map.remove(field);
            }
            1 => {
                map.insert(nasty_string(rng, 12), json_value(rng, 0));
            }
            _ => {
                map.insert(field.to_owned(), field_value(rng, field));
            }
        }
    }
    serde_json::to_string(&Value::Object(map)).expect("a JSON value serializes")
}

#[test]
fn source_json_never_panics() {
    let parsed = std::sync::atomic::AtomicUsize::new(0);
    let counts = run("source-json", source_json, |text| {
        let Ok(source) = serde_json::from_str::<Source>(text) else {
            return Ok(false);
        };
        parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if source.validate().is_err() {
            return Ok(false);
        }
        // What validation promises, and that an accepted source survives being written back.
        if source.timeout.is_zero() || source.interval.is_zero() {
            return Err("accepted a zero interval or timeout".into());
        }
        if source.backoff_max < source.backoff_initial {
            return Err("accepted backoff_max below backoff_initial".into());
        }
        let written = serde_json::to_string(&source).map_err(|err| err.to_string())?;
        let again: Source = serde_json::from_str(&written)
            .map_err(|err| format!("its own serialization {written:?} does not parse: {err}"))?;
        if again != source {
            return Err(format!("does not survive a round trip through {written:?}"));
        }
        Ok(true)
    });
    println!(
        "source-json: {} of {} parsed as a Source",
        parsed.into_inner(),
        counts.tried
    );
}

// ---------------------------------------------------------------------------------------------
// Durations

/// What `parse_duration` must return, worked out independently: surrounding whitespace is
/// ignored, then ASCII digits and exactly one of the four units, and the total in milliseconds
/// must fit in a u64.
fn expected_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let per_unit: u128 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    // More than 39 digits overflows even u128, and certainly u64 milliseconds.
    let number: u128 = number.parse().ok()?;
    let millis = u64::try_from(number.checked_mul(per_unit)?).ok()?;
    Some(Duration::from_millis(millis))
}

#[test]
fn durations_parse_exactly_and_round_trip() {
    run("duration", duration_text, |text| {
        let parsed = parse_duration(text);
        let expected = expected_duration(text);
        match (&parsed, expected) {
            (Ok(got), Some(want)) if *got == want => {}
            (Err(_), None) => return Ok(false),
            _ => {
                return Err(format!(
                    "parse_duration gave {parsed:?}, expected {expected:?}"
                ));
            }
        }
        let duration = parsed.expect("checked above");
        // An accepted duration must come back unchanged when a source is written and read.
        let mut source = Source::new("p", "/srv/p.git");
        source.interval = duration;
        source.backoff_max = duration.max(source.backoff_initial);
        let written = serde_json::to_string(&source).map_err(|err| err.to_string())?;
        let again: Source = serde_json::from_str(&written)
            .map_err(|err| format!("{written:?} does not parse back: {err}"))?;
        if again.interval != duration {
            return Err(format!(
                "{duration:?} written as {written:?} reads back as {:?}",
                again.interval
            ));
        }
        Ok(true)
    });
}

// ---------------------------------------------------------------------------------------------
// Events

fn maybe<T>(rng: &mut Rng, make: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    rng.bool().then(|| make(rng))
}

fn text(rng: &mut Rng) -> String {
    let max = if rng.u8(0..100) == 0 { 600 } else { 12 };
    nasty_string(rng, max)
}

fn event(rng: &mut Rng) -> Event {
    // Built through JSON: the event types are not constructed outside the crate.
    let event = match rng.u8(..3) {
        0 => serde_json::json!({
            "type": "warning",
            "source": text(rng),
            "commit": maybe(rng, text),
            "message": text(rng),
        }),
        1 => {
            let changes: Vec<serde_json::Value> = (0..rng.usize(0..4))
                .map(|_| {
                    serde_json::json!({
                        "path": text(rng),
                        "kind": ([ChangeKind::Added, ChangeKind::Modified, ChangeKind::Deleted]
                            [rng.usize(..3)]),
                        "id": maybe(rng, text),
                        "content": maybe(rng, text),
                        "encoding": maybe(rng, |rng| {
                            if rng.bool() {
                                Encoding::Utf8
                            } else {
                                Encoding::Base64
                            }
                        }),
                        "omitted": maybe(rng, text),
                    })
                })
                .collect();
            serde_json::json!({
                "type": "update",
                "source": text(rng),
                "url": text(rng),
                "ref": text(rng),
                "old": maybe(rng, text),
                "new": text(rng),
                "forced": rng.bool(),
                "changes": changes,
            })
        }
        _ => serde_json::json!({
            "type": "state",
            "source": text(rng),
            "state": ([SourceState::Idle, SourceState::Backoff, SourceState::Failed][rng.usize(..3)]),
            "attempt": maybe(rng, |rng| rng.u32(..)),
            "reason": (maybe(rng, |rng| {
                [
                    gitfeed::Reason::NameResolution,
                    gitfeed::Reason::AuthenticationRefused,
                    gitfeed::Reason::CloneCorrupt,
                    gitfeed::Reason::Other,
                ][rng.usize(..4)]
            })),
            "error": maybe(rng, text),
            "detail": maybe(rng, text),
            "retry_in_ms": maybe(rng, |rng| rng.u64(..)),
        }),
    };
    serde_json::from_value(event).expect("a valid event")
}

/// Characters some line readers break on although JSON allows them raw inside strings.
fn has_other_line_break(line: &str) -> bool {
    line.contains(['\u{85}', '\u{2028}', '\u{2029}'])
}

#[test]
fn events_are_one_line_and_round_trip() {
    let other_breaks = std::sync::atomic::AtomicUsize::new(0);
    run("event", event, |event| {
        let line = serde_json::to_string(event).map_err(|err| err.to_string())?;
        if line.contains(['\n', '\r']) {
            return Err(format!("serialized with a raw line break: {line:?}"));
        }
        if has_other_line_break(&line) {
            other_breaks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // Framed as the command line writes it, read back as a consumer would.
        let framed = format!("{line}\n");
        let lines: Vec<&str> = framed.lines().collect();
        if lines.len() != 1 {
            return Err(format!("{line:?} reads as {} lines", lines.len()));
        }
        let again: Event = serde_json::from_str(lines[0])
            .map_err(|err| format!("{line:?} does not parse back: {err}"))?;
        if again != *event {
            return Err(format!("{line:?} reads back as {again:?}"));
        }
        Ok(true)
    });
    // Valid JSON and one line by the contract's `\n` framing, but worth knowing about: a
    // consumer splitting on Unicode line breaks (Python's str.splitlines) would cut these.
    println!(
        "event: {} lines carry a raw U+0085, U+2028 or U+2029",
        other_breaks.into_inner()
    );
}
