//! `sync_once` against servers that lie, over git:// and smart HTTP.
//!
//! Every attempt must end in an error with a clear one-line message, within its timeout plus a
//! second, without the process growing by more than [`MEMORY_BOUND`], without writing outside
//! the cache directory, and without leaving a tip ref (`refs/gitfeed/…`) in the cache (the
//! servers never deliver a usable commit, so any tip there would be bogus). An honest script run
//! through the same servers first shows that the failures come from the lies, not from the
//! servers.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use gitfeed::{Error, Source, Update};
use gix::bstr::ByteSlice;

use crate::servers::{HostileServer, Next, Out, Script, Transport};
use crate::util::unique_dir;
use crate::wire::{self, BlobStream, DELIM, FLUSH, Kind, pkt, sideband};

/// Each attempt's timeout: short, so the suite stays quick, and long enough for a debug build
/// to finish an honest fetch.
const TIMEOUT: Duration = Duration::from_secs(2);

/// How far past its timeout an attempt may run.
const GRACE: Duration = Duration::from_secs(1);

/// The most the process may grow while one attempt runs.
const MEMORY_BOUND: u64 = 200 << 20;

/// The most a failed attempt may leave in its cache directory: a small empty clone, not a
/// partial pack.
const LEFTOVER_BOUND: u64 = 16 << 20;

/// A well-formed commit id that no server here ever delivers.
const BOGUS: &str = "1234567890abcdef1234567890abcdef12345678";

/// The remote tests measure process-wide memory and time: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Scripts

/// Which protocol a script answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    V0,
    V2,
}

/// One advertised ref: its id, name, and for `HEAD` the branch it points to.
#[derive(Clone, Debug)]
struct Ref {
    id: String,
    name: String,
    symref: Option<String>,
}

fn reference(id: &str, name: &str) -> Ref {
    Ref {
        id: id.to_owned(),
        name: name.to_owned(),
        symref: None,
    }
}

fn head(id: &str, target: &str) -> Ref {
    Ref {
        id: id.to_owned(),
        name: "HEAD".to_owned(),
        symref: Some(target.to_owned()),
    }
}

/// The refs a script advertises.
#[derive(Clone)]
enum Refs {
    /// These refs, then a flush.
    Listed(Arc<Vec<Ref>>),
    /// `HEAD`, then new refs as fast as the client reads, never a flush.
    Endless,
}

/// What a script answers to `fetch` (or to v0 wants).
#[derive(Clone)]
enum Fetch {
    Close,
    Hold,
    /// An `ERR` packet, as git-upload-pack sends for a want it does not have.
    Refuse,
    /// These bytes as the packfile section's side-band data.
    Pack(Arc<Vec<u8>>),
    /// A pack header promising this many objects, then distinct blobs as fast as the client
    /// reads, for ever.
    EndlessPack(u32),
}

/// A server that advertises `refs` and answers a fetch with `fetch`.
struct Liar {
    protocol: Protocol,
    refs: Refs,
    fetch: Fetch,
}

/// Ref lines as `ls-refs` (v2) or the first response (v0) writes them.
fn ref_lines(protocol: Protocol, refs: &[Ref]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, r) in refs.iter().enumerate() {
        let line = match protocol {
            Protocol::V2 => {
                let target = r
                    .symref
                    .as_ref()
                    .map(|target| format!(" symref-target:{target}"))
                    .unwrap_or_default();
                format!("{} {}{target}\n", r.id, r.name)
            }
            Protocol::V0 if index == 0 => {
                let symref = refs
                    .iter()
                    .find_map(|r| r.symref.as_ref().map(|t| format!(" symref=HEAD:{t}")))
                    .unwrap_or_default();
                format!(
                    "{} {}\0multi_ack_detailed side-band-64k thin-pack ofs-delta no-progress \
                     agent=hostile/1{symref}\n",
                    r.id, r.name
                )
            }
            Protocol::V0 => format!("{} {}\n", r.id, r.name),
        };
        out.extend(pkt(line));
    }
    out
}

/// Ref lines for ever: a chunk of 4096 new branches per call.
fn endless_ref_lines() -> impl FnMut() -> Vec<u8> {
    let mut next = 0u64;
    move || {
        let mut chunk = Vec::with_capacity(4096 * 72);
        for _ in 0..4096 {
            next += 1;
            chunk.extend(pkt(format!("{BOGUS} refs/heads/flood/{next:016}\n")));
        }
        chunk
    }
}

impl Script for Liar {
    fn advertise(&self, out: &mut Out<'_>) -> io::Result<Next> {
        match self.protocol {
            Protocol::V2 => {
                let mut caps = Vec::new();
                for line in [
                    "version 2\n",
                    "agent=hostile/1\n",
                    "ls-refs\n",
                    "fetch\n",
                    "object-format=sha1\n",
                ] {
                    caps.extend(pkt(line));
                }
                caps.extend_from_slice(FLUSH);
                out.send(&caps)?;
                Ok(Next::Continue)
            }
            Protocol::V0 => {
                if out.transport == Transport::Http {
                    let mut preamble = pkt("# service=git-upload-pack\n");
                    preamble.extend_from_slice(FLUSH);
                    out.send(&preamble)?;
                }
                match &self.refs {
                    Refs::Listed(refs) => {
                        let mut lines = ref_lines(Protocol::V0, refs);
                        lines.extend_from_slice(FLUSH);
                        out.send(&lines)?;
                        Ok(Next::Continue)
                    }
                    Refs::Endless => {
                        out.send(&ref_lines(Protocol::V0, &[head(BOGUS, "refs/heads/main")]))?;
                        out.flood(endless_ref_lines());
                        Ok(Next::Close)
                    }
                }
            }
        }
    }

    fn command(
        &self,
        name: Option<&str>,
        request: &[Vec<u8>],
        out: &mut Out<'_>,
    ) -> io::Result<Next> {
        match (self.protocol, name) {
            (Protocol::V2, Some("ls-refs")) => match &self.refs {
                Refs::Listed(refs) => {
                    let mut lines = ref_lines(Protocol::V2, refs);
                    lines.extend_from_slice(FLUSH);
                    out.send(&lines)?;
                    Ok(Next::Continue)
                }
                Refs::Endless => {
                    out.send(&ref_lines(Protocol::V2, &[head(BOGUS, "refs/heads/main")]))?;
                    out.flood(endless_ref_lines());
                    Ok(Next::Close)
                }
            },
            (Protocol::V2, Some("fetch")) => self.fetch(request, out),
            (Protocol::V0, None) => match self.fetch {
                Fetch::Hold => Ok(Next::Hold),
                Fetch::Refuse => {
                    out.send(&refusal())?;
                    Ok(Next::Close)
                }
                // v0 packs are not scripted: every pack case speaks v2.
                _ => Ok(Next::Close),
            },
            _ => Ok(Next::Close),
        }
    }
}

impl Liar {
    fn fetch(&self, request: &[Vec<u8>], out: &mut Out<'_>) -> io::Result<Next> {
        let preamble = || {
            // Without `done` the client expects acknowledgments first; `ready` moves straight
            // on to the pack either way.
            let done = request.iter().any(|line| line.as_slice() == b"done\n");
            let mut bytes = Vec::new();
            if !done {
                bytes.extend(pkt("acknowledgments\n"));
                bytes.extend(pkt("ready\n"));
                bytes.extend_from_slice(DELIM);
            }
            bytes.extend(pkt("packfile\n"));
            bytes
        };
        match &self.fetch {
            Fetch::Close => Ok(Next::Close),
            Fetch::Hold => Ok(Next::Hold),
            Fetch::Refuse => {
                out.send(&refusal())?;
                Ok(Next::Close)
            }
            Fetch::Pack(pack) => {
                let mut bytes = preamble();
                bytes.extend(sideband(1, pack));
                bytes.extend_from_slice(FLUSH);
                out.send(&bytes)?;
                Ok(Next::Close)
            }
            Fetch::EndlessPack(count) => {
                let mut bytes = preamble();
                bytes.extend(sideband(1, &wire::pack_header(*count)));
                out.send(&bytes)?;
                let mut blobs = BlobStream::new(16 * 1024);
                out.flood(|| {
                    let mut data = Vec::with_capacity(1 << 20);
                    while data.len() < (1 << 20) - 20_000 {
                        data.extend(blobs.next_entry());
                    }
                    sideband(1, &data)
                });
                Ok(Next::Close)
            }
        }
    }
}

fn refusal() -> Vec<u8> {
    pkt(format!("ERR upload-pack: not our ref {BOGUS}\n"))
}

/// Another script's answers, the first one only after `delay`: a slow server, honest so far.
struct Slow {
    delay: Duration,
    inner: Box<dyn Script>,
}

impl Script for Slow {
    fn advertise(&self, out: &mut Out<'_>) -> io::Result<Next> {
        if !out.pause(self.delay) {
            return Ok(Next::Close);
        }
        self.inner.advertise(out)
    }

    fn command(
        &self,
        name: Option<&str>,
        request: &[Vec<u8>],
        out: &mut Out<'_>,
    ) -> io::Result<Next> {
        self.inner.command(name, request, out)
    }
}

fn garbage(bytes: Vec<u8>, then: Next) -> Box<dyn Script> {
    Box::new(Garbage { bytes, then })
}

/// Sends fixed bytes as the advertisement, then closes or holds.
struct Garbage {
    bytes: Vec<u8>,
    then: Next,
}

impl Script for Garbage {
    fn advertise(&self, out: &mut Out<'_>) -> io::Result<Next> {
        out.send(&self.bytes)?;
        Ok(self.then)
    }

    fn command(&self, _: Option<&str>, _: &[Vec<u8>], _: &mut Out<'_>) -> io::Result<Next> {
        Ok(Next::Close)
    }
}

// ---------------------------------------------------------------------------------------------
// Attempts and their checks

/// One attempt to run: a name, the script the server follows, and how the source differs
/// from the default (following the remote's `HEAD`, timeout [`TIMEOUT`]).
#[derive(Clone)]
struct Case {
    name: String,
    reference: Option<String>,
    max_pack_size: Option<u64>,
    timeout: Duration,
    script: Arc<dyn Fn() -> Box<dyn Script>>,
}

fn case(name: &str, script: impl Fn() -> Box<dyn Script> + 'static) -> Case {
    Case {
        name: name.to_owned(),
        reference: None,
        max_pack_size: None,
        timeout: TIMEOUT,
        script: Arc::new(script),
    }
}

impl Case {
    fn following(mut self, reference: &str) -> Case {
        self.reference = Some(reference.to_owned());
        self
    }

    fn max_pack_size(mut self, bytes: u64) -> Case {
        self.max_pack_size = Some(bytes);
        self
    }

    fn timeout(mut self, timeout: Duration) -> Case {
        self.timeout = timeout;
        self
    }
}

fn liar(protocol: Protocol, refs: Vec<Ref>, fetch: Fetch) -> Box<dyn Script> {
    Box::new(Liar {
        protocol,
        refs: Refs::Listed(Arc::new(refs)),
        fetch,
    })
}

/// What one attempt did.
struct Outcome {
    case: String,
    result: Result<Option<Update>, Error>,
    timeout: Duration,
    elapsed: Duration,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    /// Connections the server accepted: HTTP makes one per request.
    connections: usize,
    /// CPU time the whole process used during the attempt.
    cpu: Duration,
    /// Holds the cache directory and nothing else; removed on drop.
    sandbox: tempfile::TempDir,
}

/// More requests than any honest fetch makes: a client that keeps asking is in a loop.
const MAX_CONNECTIONS: usize = 20;

impl Outcome {
    fn cache(&self) -> PathBuf {
        self.sandbox.path().join("cache")
    }

    fn summary(&self) -> String {
        let result = match &self.result {
            Ok(Some(update)) => format!("update to {} on {:?}", update.new, update.reference),
            Ok(None) => "nothing new".to_owned(),
            Err(err) => format!("error ({:?}): {}", err.kind(), clip(&err.to_string(), 300)),
        };
        format!(
            "{}: {:.2} s (cpu {:.2} s), rss {} -> peak {} -> {} MiB, {} connection(s), cache {} \
             KiB: {result}",
            self.case,
            self.elapsed.as_secs_f64(),
            self.cpu.as_secs_f64(),
            self.rss_before >> 20,
            self.rss_peak >> 20,
            self.rss_after >> 20,
            self.connections,
            tree_size(&self.cache()) >> 10,
        )
    }

    /// Every promise the attempt broke, each on one line. `must_fail`: the server never
    /// delivers a usable commit, so the attempt must fail and keep no tip.
    fn violations(&self, must_fail: bool) -> Vec<String> {
        let mut broken = Vec::new();
        let case = &self.case;
        match &self.result {
            Err(err) => broken.extend(
                message_problems(&err.to_string())
                    .into_iter()
                    .map(|problem| format!("{case}: {problem}")),
            ),
            Ok(result) if must_fail => {
                broken.push(format!("{case}: the attempt succeeded: {result:?}"));
            }
            Ok(_) => {}
        }
        if self.elapsed > self.timeout + GRACE {
            broken.push(format!(
                "{case}: the attempt took {:.2} s with a {} s timeout",
                self.elapsed.as_secs_f64(),
                self.timeout.as_secs()
            ));
        }
        let grown = self.rss_peak.saturating_sub(self.rss_before);
        if grown > MEMORY_BOUND {
            broken.push(format!(
                "{case}: the process grew by {} MiB during the attempt",
                grown >> 20
            ));
        }
        if self.connections > MAX_CONNECTIONS {
            broken.push(format!(
                "{case}: {} connections for one attempt",
                self.connections
            ));
        }
        let outside: Vec<String> = fs::read_dir(self.sandbox.path())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name != "cache")
                    .collect()
            })
            .unwrap_or_default();
        if !outside.is_empty() {
            broken.push(format!(
                "{case}: written beside the cache directory: {outside:?}"
            ));
        }
        if must_fail {
            for tip in tips(&self.cache()) {
                broken.push(format!("{case}: the cache kept a bogus tip: {tip}"));
            }
            let left = tree_size(&self.cache());
            if left > LEFTOVER_BOUND {
                broken.push(format!(
                    "{case}: the failed attempt left {} MiB in the cache",
                    left >> 20
                ));
            }
        }
        broken
    }
}

/// What makes an error message unclear: empty, several lines, control characters (a remote's
/// terminal escapes reach the log), huge, a raw byte dump, or a thread that died.
fn message_problems(message: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let shown = clip(message, 300);
    if message.trim().is_empty() {
        problems.push("the error message is empty".to_owned());
    }
    if message.contains(['\n', '\r']) {
        problems.push(format!("the error message spans lines: {shown:?}"));
    }
    if message
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r'))
    {
        problems.push(format!(
            "the error message carries control characters: {shown:?}"
        ));
    }
    if message.len() > 4096 {
        problems.push(format!("the error message is {} bytes long", message.len()));
    }
    if has_byte_dump(message) {
        problems.push(format!(
            "the error message shows bytes as a list of numbers: {shown:?}"
        ));
    }
    // What gitfeed says when the attempt's thread panicked instead of returning.
    if message.contains("ended without an outcome") {
        problems.push(format!("the fetch thread panicked: {shown:?}"));
    }
    problems
}

/// `[114, 101, 102, …]`: a byte string printed with `{:?}` on a `Vec<u8>`.
fn has_byte_dump(message: &str) -> bool {
    message.split('[').skip(1).any(|rest| {
        let inside = rest.split(']').next().unwrap_or_default();
        let numbers = inside.split(", ").collect::<Vec<_>>();
        numbers.len() >= 8 && numbers.iter().all(|n| n.parse::<u8>().is_ok())
    })
}

fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Runs one attempt of `case` over `transport` and prints what it did.
fn attempt(case: &Case, transport: Transport) -> Outcome {
    let server = HostileServer::start(transport, (case.script)());
    let sandbox = unique_dir();
    let cache = sandbox.path().join("cache");
    let mut source = Source::new("hostile", server.url());
    source.reference = case.reference.clone();
    source.timeout = case.timeout;
    if let Some(bytes) = case.max_pack_size {
        source.max_pack_size = bytes;
    }
    let sampler = Sampler::start();
    let cpu_before = cpu_time();
    let started = Instant::now();
    let result = gitfeed::sync_once(&cache, &source);
    let elapsed = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    let (rss_before, rss_peak) = sampler.stop();
    let connections = server.connections();
    // The server's threads end here (a flood is cut off by the shutdown), before memory is read
    // again.
    drop(server);
    let outcome = Outcome {
        case: format!("{} {}", transport.name(), case.name),
        result,
        timeout: case.timeout,
        elapsed,
        rss_before,
        rss_peak,
        rss_after: rss(),
        connections,
        cpu,
        sandbox,
    };
    println!("{}", outcome.summary());
    outcome
}

/// Runs every case over git:// and HTTP; fails with every broken promise at once.
fn expect_failures(cases: &[Case]) {
    expect_failures_and(cases, |_| Vec::new());
}

/// [`expect_failures`], with `more` checks of each outcome.
fn expect_failures_and(cases: &[Case], more: impl Fn(&Outcome) -> Vec<String>) {
    let _serial = serial();
    let mut broken = Vec::new();
    for transport in [Transport::Git, Transport::Http] {
        for case in cases {
            let outcome = attempt(case, transport);
            broken.extend(outcome.violations(true));
            broken.extend(more(&outcome));
        }
    }
    assert!(broken.is_empty(), "broken promises:\n{}", broken.join("\n"));
}

/// The process's resident memory in bytes, from `/proc/self/status`.
fn rss() -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

/// CPU time (user and system) the whole process has used, from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // the first, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Samples resident memory every few milliseconds while an attempt runs: the peak is what
/// matters on a small device, and the allocator may have returned it by the time the attempt
/// is over.
struct Sampler {
    before: u64,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<u64>,
}

impl Sampler {
    fn start() -> Sampler {
        let before = rss();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = before;
            while !flag.load(Ordering::SeqCst) {
                peak = peak.max(rss());
                // A sampling period, not a wait for some state.
                thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss())
        });
        Sampler {
            before,
            stop,
            thread,
        }
    }

    /// `(before, peak)`.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let peak = self.thread.join().expect("the memory sampler ends");
        (self.before, peak)
    }
}

/// Every tip ref (`refs/gitfeed/…`) under `dir`, loose or packed, with what it points to.
fn tips(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    walk(dir, &mut |path| {
        let text = || String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
        if path.to_string_lossy().contains("/refs/gitfeed/") && path.is_file() {
            found.push(format!("{} -> {}", path.display(), text().trim()));
        } else if path.file_name().is_some_and(|name| name == "packed-refs") {
            for line in text().lines().filter(|line| line.contains("refs/gitfeed/")) {
                found.push(format!("{}: {line}", path.display()));
            }
        }
    });
    found
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    walk(dir, &mut |path| {
        total += fs::symlink_metadata(path).map_or(0, |meta| meta.len());
    });
    total
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk(&path, visit),
            Ok(_) => visit(&path),
            Err(_) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Objects for packs

const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

fn commit_body(tree: &str) -> Vec<u8> {
    format!(
        "tree {tree}\nauthor Hostile <h@example.org> 0 +0000\n\
         committer Hostile <h@example.org> 0 +0000\n\nhostile\n"
    )
    .into_bytes()
}

/// A valid commit of one file (an update with nothing in it is not sent), and a pack holding
/// the commit, its tree and the file.
fn honest_pack() -> (String, Arc<Vec<u8>>) {
    let blob: &[u8] = b"honest\n";
    let mut tree = b"100644 honest.txt\0".to_vec();
    let blob_id = wire::object_id(Kind::Blob, blob);
    let raw: Vec<u8> = (0..blob_id.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&blob_id[at..at + 2], 16).expect("hex"))
        .collect();
    tree.extend_from_slice(&raw);
    let commit = commit_body(&wire::object_id(Kind::Tree, &tree));
    let id = wire::object_id(Kind::Commit, &commit);
    let pack = wire::pack(&[
        (Kind::Blob, blob),
        (Kind::Tree, &tree),
        (Kind::Commit, &commit),
    ]);
    (id, Arc::new(pack))
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The servers themselves speak the protocol: an honest answer through them is followed over
/// both transports. Without this, every failure below could be the test servers' fault.
#[test]
fn honest_scripts_are_followed() {
    let _serial = serial();
    let (id, pack) = honest_pack();
    let honest = case("honest v2", move || {
        liar(
            Protocol::V2,
            vec![
                head(&id, "refs/heads/main"),
                reference(&id, "refs/heads/main"),
            ],
            Fetch::Pack(Arc::clone(&pack)),
        )
    });
    let (id, _) = honest_pack();
    let mut broken = Vec::new();
    for transport in [Transport::Git, Transport::Http] {
        let outcome = attempt(&honest, transport);
        match &outcome.result {
            Ok(Some(update)) if update.new == id && update.reference == "refs/heads/main" => {}
            other => broken.push(format!("{}: {other:?}", outcome.case)),
        }
        broken.extend(outcome.violations(false));
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn garbage_pkt_lines() {
    let mut random = vec![0u8; 4096];
    fastrand::Rng::with_seed(7).fill(&mut random);
    let mut v2_then_garbage = pkt("version 2\n");
    v2_then_garbage.extend_from_slice(b"zz\x00\xffls-refs\n0000");
    let fixed = |name: &str, bytes: &[u8], then: Next| {
        let bytes = bytes.to_vec();
        case(name, move || garbage(bytes.clone(), then))
    };
    let mut oversized = b"ffff".to_vec();
    oversized.extend(vec![b'a'; 65531]);
    expect_failures(&[
        fixed("invalid hex length", b"zzzz0000", Next::Close),
        fixed("length 0003", b"0003abc", Next::Close),
        fixed("length 0002 then data", b"0002refs/heads/main", Next::Close),
        fixed("length above 65520", &oversized, Next::Close),
        fixed("random bytes", &random, Next::Close),
        fixed("truncated line, closed", b"00ff1234", Next::Close),
        fixed("truncated line, held open", b"00ff1234", Next::Hold),
        fixed("flush only", FLUSH, Next::Close),
        fixed(
            "v2 then garbage capabilities",
            &v2_then_garbage,
            Next::Close,
        ),
        fixed("nothing at all, held open", b"", Next::Hold),
    ]);
}

/// An `ERR` packet is the remote's own text: it may hold line breaks and terminal escapes,
/// which must not reach the one-line error (and from there a terminal or a log) as they are.
#[test]
fn remote_error_text_is_one_clean_line() {
    let err_line = pkt("ERR access \x1b[31mdenied\x1b[0m\nfatal: line two\r\n\x07");
    expect_failures(&[case("ERR with escapes and line breaks", move || {
        garbage(err_line.clone(), Next::Close)
    })]);
}

/// A ref line that does not parse is reported readably, not as a list of byte values.
#[test]
fn malformed_ref_lines_are_reported_readably() {
    let (id, _) = honest_pack();
    expect_failures(&[
        case("v0 ref line without id", || {
            let mut bytes = pkt("refs/heads/main\0side-band-64k\n");
            bytes.extend_from_slice(FLUSH);
            garbage(bytes, Next::Close)
        }),
        case("v2 ref name with a space", move || {
            liar(
                Protocol::V2,
                vec![
                    head(&id, "refs/heads/a b"),
                    reference(&id, "refs/heads/a b"),
                ],
                Fetch::Close,
            )
        }),
    ]);
}

/// 200,000 refs in one advertisement: gitfeed may take it in, but must end on time and give
/// the memory back.
#[test]
fn oversized_ref_advertisement() {
    let mut refs = vec![
        head(BOGUS, "refs/heads/main"),
        reference(BOGUS, "refs/heads/main"),
    ];
    refs.extend((0..200_000).map(|i| reference(BOGUS, &format!("refs/heads/b{i:07}"))));
    let refs = Arc::new(refs);
    let scripted = |protocol| {
        let refs = Arc::clone(&refs);
        move || -> Box<dyn Script> {
            Box::new(Liar {
                protocol,
                refs: Refs::Listed(Arc::clone(&refs)),
                // Refused the way git-upload-pack refuses: what is measured is the
                // advertisement (see v0_wants_answered_by_a_close for a plain close).
                fetch: Fetch::Refuse,
            })
        }
    };
    expect_failures(&[
        case("200k refs, v0", scripted(Protocol::V0)),
        case("200k refs, v2", scripted(Protocol::V2)).following("main"),
    ]);
}

fn endless_refs(protocol: Protocol) -> impl Fn() -> Box<dyn Script> {
    move || {
        Box::new(Liar {
            protocol,
            refs: Refs::Endless,
            fetch: Fetch::Close,
        })
    }
}

/// An endless ref advertisement, in protocols v0 and v2, against `transport`, within
/// `timeout` if given; the promises broken.
fn endless_refs_over(transport: Transport, label: &str, timeout: Option<Duration>) -> Vec<String> {
    let mut broken = Vec::new();
    for protocol in [Protocol::V0, Protocol::V2] {
        let mut endless = case(&format!("{label}, {protocol:?}"), endless_refs(protocol));
        if let Some(timeout) = timeout {
            endless = endless.timeout(timeout);
        }
        broken.extend(attempt(&endless, transport).violations(true));
    }
    broken
}

/// A ref advertisement that never ends, streamed as fast as gitfeed reads it (up to 128 MiB/s)
/// for up to ten seconds: the socket is shut down at the deadline.
#[test]
fn endless_ref_advertisement_over_git() {
    let _serial = serial();
    let broken = endless_refs_over(Transport::Git, "endless refs", None);
    assert!(broken.is_empty(), "broken promises:\n{}", broken.join("\n"));
}

/// Over git:// the deadline ends the flood, but nothing caps what is taken in before it: the
/// refs pile up in memory at the rate they are parsed (about 40 MiB/s in a debug build), so
/// with a longer timeout the growth passes any bound. 8 s here; the default timeout is 60 s.
#[test]
fn endless_ref_advertisement_with_a_longer_timeout() {
    let _serial = serial();
    let broken = endless_refs_over(
        Transport::Git,
        "endless refs for 8 s",
        Some(Duration::from_secs(8)),
    );
    assert!(broken.is_empty(), "broken promises:\n{}", broken.join("\n"));
}

/// The same over HTTP, where gitfeed cannot shut the socket down: only curl's low-speed limit
/// and gix's interrupt flag can end the transfer, and a fast advertisement trips neither.
#[test]
fn endless_ref_advertisement_over_http() {
    let _serial = serial();
    let broken = endless_refs_over(Transport::Http, "endless refs", None);
    assert!(broken.is_empty(), "broken promises:\n{}", broken.join("\n"));
}

/// Names no branch can have, and ids no object has; the fetch is then refused by closing (v2),
/// by an `ERR` packet (v0, see v0_wants_answered_by_a_close for a close) or by silence.
#[test]
fn hostile_ref_names() {
    let long = format!("refs/heads/{}", "a".repeat(65_000));
    let names = || {
        vec![
            head(BOGUS, "refs/heads/../../etc"),
            reference(BOGUS, "refs/heads/../../etc"),
            reference(BOGUS, "refs/heads/\x1b[31mred\x07"),
            reference(BOGUS, "refs/heads/tab\there"),
            reference(BOGUS, "refs/heads/main"),
        ]
    };
    let escapes = "refs/heads/\x1b]0;owned\x07\x1b[2J";
    let (honest_id, _) = honest_pack();
    let long_v0 = long.clone();
    expect_failures(&[
        case("HEAD -> refs/heads/../../etc, v2", move || {
            liar(Protocol::V2, names(), Fetch::Close)
        }),
        case("HEAD -> refs/heads/../../etc, v0", move || {
            liar(Protocol::V0, names(), Fetch::Refuse)
        }),
        case("main at a bogus id, fetch closed", move || {
            liar(Protocol::V2, names(), Fetch::Close)
        })
        .following("main"),
        case("main at a bogus id, fetch silent", move || {
            liar(Protocol::V2, names(), Fetch::Hold)
        })
        .following("main"),
        case("control characters in the followed name", move || {
            liar(
                Protocol::V2,
                vec![head(BOGUS, escapes), reference(BOGUS, escapes)],
                Fetch::Close,
            )
        }),
        case("65,000-byte name, v2", move || {
            liar(
                Protocol::V2,
                vec![head(BOGUS, &long), reference(BOGUS, &long)],
                Fetch::Close,
            )
        }),
        case("65,000-byte name, v0", move || {
            liar(
                Protocol::V0,
                vec![head(BOGUS, &long_v0), reference(BOGUS, &long_v0)],
                Fetch::Refuse,
            )
        }),
        case("ids that are not hex", || {
            liar(
                Protocol::V2,
                vec![reference(&"z".repeat(40), "refs/heads/main")],
                Fetch::Close,
            )
        })
        .following("main"),
        case("short id", || {
            liar(
                Protocol::V2,
                vec![reference("abc123", "refs/heads/main")],
                Fetch::Close,
            )
        })
        .following("main"),
        case("null id", || {
            liar(
                Protocol::V2,
                vec![reference(&"0".repeat(40), "refs/heads/main")],
                Fetch::Close,
            )
        })
        .following("main"),
        case("main listed twice at different ids", move || {
            liar(
                Protocol::V2,
                vec![
                    reference(&honest_id, "refs/heads/main"),
                    reference(BOGUS, "refs/heads/main"),
                ],
                Fetch::Close,
            )
        })
        .following("main"),
    ]);
}

/// A v0 server that reads the client's wants and closes without a word. Over git:// the
/// client must fail at once (not spin until the deadline); over HTTP, where each round is a
/// request, it must not keep asking.
#[test]
#[ignore = "bug: over git:// gix keeps negotiating on an empty answer and spins a core until \
            the deadline (bounded by it, no IO); over HTTP the attempt now stops after 16 requests"]
fn v0_wants_answered_by_a_close() {
    expect_failures_and(
        &[case("v0 wants answered by a close", || {
            liar(
                Protocol::V0,
                vec![
                    head(BOGUS, "refs/heads/main"),
                    reference(BOGUS, "refs/heads/main"),
                ],
                Fetch::Close,
            )
        })],
        |outcome| {
            // Half a core over the attempt is far more than waiting on a socket costs.
            let spinning = outcome.elapsed > Duration::from_millis(500)
                && outcome.cpu.as_secs_f64() > 0.5 * outcome.elapsed.as_secs_f64();
            if spinning {
                vec![format!(
                    "{}: used {:.2} s of CPU in {:.2} s",
                    outcome.case,
                    outcome.cpu.as_secs_f64(),
                    outcome.elapsed.as_secs_f64()
                )]
            } else {
                Vec::new()
            }
        },
    );
}

/// A server that is slow to advertise and then goes silent. gitfeed cannot interrupt a curl
/// transfer; it ends when curl's low-speed window (the timeout, at most 5 s) has passed since
/// the silent request began, so an attempt whose silence starts late can run to nearly twice
/// its timeout (README: "that stall window is also the longest a shutdown waits").
#[test]
#[ignore = "limitation (documented for shutdown): over HTTP a silence that starts late in the \
            attempt is cut off a whole stall window after it began, past timeout + 1 s"]
fn silence_late_in_the_attempt() {
    expect_failures(&[case("silent after a slow advertisement", || {
        Box::new(Slow {
            delay: Duration::from_millis(1500),
            inner: liar(Protocol::V2, main_at(BOGUS), Fetch::Hold),
        })
    })
    .following("main")]);
}

fn pack_case(name: &str, refs: Vec<Ref>, pack: Vec<u8>) -> Case {
    let pack = Arc::new(pack);
    case(name, move || {
        liar(Protocol::V2, refs.clone(), Fetch::Pack(Arc::clone(&pack)))
    })
}

fn main_at(id: &str) -> Vec<Ref> {
    vec![
        head(id, "refs/heads/main"),
        reference(id, "refs/heads/main"),
    ]
}

/// Packs that arrive whole but do not hold what the ref promises: nothing, the wrong object, a
/// commit whose tree is missing; and packs that are broken: a bad checksum, fewer objects than
/// the header says.
#[test]
fn packs_that_do_not_hold_the_tip() {
    let blob: &[u8] = b"not a commit\n";
    let orphan = commit_body(BOGUS);
    let orphan_id = wire::object_id(Kind::Commit, &orphan);
    let (honest_id, honest) = honest_pack();
    let mut bad_trailer = honest.to_vec();
    let last = bad_trailer.len() - 1;
    bad_trailer[last] ^= 0xff;
    let mut short = wire::pack_header(5);
    short.extend(wire::pack_entry(Kind::Blob, blob));
    let trailer = wire::sha1(&short);
    short.extend_from_slice(&trailer);
    expect_failures(&[
        pack_case("empty pack for a bogus id", main_at(BOGUS), wire::pack(&[])),
        pack_case(
            "unrelated blob for a bogus id",
            main_at(BOGUS),
            wire::pack(&[(Kind::Blob, blob)]),
        ),
        pack_case(
            "commit without its tree",
            main_at(&orphan_id),
            wire::pack(&[(Kind::Commit, &orphan)]),
        ),
        pack_case("pack checksum broken", main_at(&honest_id), bad_trailer),
        pack_case("pack shorter than its header", main_at(&honest_id), short),
    ]);
}

/// A branch pointing at a blob or a tree, delivered in a valid pack: the fetch "succeeds" in
/// gix, gitfeed then finds no commit and fails, and must not keep the ref.
#[test]
fn tip_that_is_not_a_commit_is_not_kept() {
    let blob: &[u8] = b"not a commit\n";
    let blob_id = wire::object_id(Kind::Blob, blob);
    expect_failures(&[
        pack_case(
            "tip is a blob",
            main_at(&blob_id),
            wire::pack(&[(Kind::Blob, blob)]),
        ),
        pack_case(
            "tip is a tree",
            main_at(EMPTY_TREE),
            wire::pack(&[(Kind::Tree, b"")]),
        ),
    ]);
}

/// An endless pack: a header promising `count` objects, then distinct 16 KiB blobs as fast as
/// gitfeed takes them (up to 128 MiB/s) for up to ten seconds.
fn endless_pack(count: u32) -> impl Fn() -> Box<dyn Script> {
    move || {
        Box::new(Liar {
            protocol: Protocol::V2,
            refs: Refs::Listed(Arc::new(main_at(BOGUS))),
            fetch: Fetch::EndlessPack(count),
        })
    }
}

/// An endless pack is stopped by the attempt's deadline (or by `max_pack_size`), and leaves
/// neither a grown process nor a partial pack behind.
#[test]
fn endless_pack_ends_on_time() {
    expect_failures(&[
        // gix sizes its index for the promised count up front: 4 billion objects fail at once.
        case(
            "endless pack promising 2^32-1 objects",
            endless_pack(u32::MAX),
        ),
        // A count it can plan for, so only the deadline ends the transfer (the default
        // max_pack_size of 4 GiB is not reached in 2 s).
        case("endless pack promising 1M objects", endless_pack(1_000_000)),
        case("endless pack, max_pack_size 8 MiB", endless_pack(1_000_000)).max_pack_size(8 << 20),
    ]);
}

/// An honest commit behind a hostile `HEAD`: the update may be delivered, but the `ref` it
/// names is the remote's claim, so it must at least be a valid ref name without control
/// characters.
#[test]
fn hostile_symref_in_front_of_an_honest_commit() {
    let _serial = serial();
    let mut broken = Vec::new();
    for transport in [Transport::Git, Transport::Http] {
        for target in ["refs/heads/../../etc", "refs/heads/\x1b[2Jowned"] {
            let (id, pack) = honest_pack();
            let hostile = case(&format!("HEAD -> {target:?}"), move || {
                liar(
                    Protocol::V2,
                    vec![head(&id, target), reference(&id, target)],
                    Fetch::Pack(Arc::clone(&pack)),
                )
            });
            let outcome = attempt(&hostile, transport);
            broken.extend(outcome.violations(false));
            if let Ok(Some(update)) = &outcome.result
                && (gix::validate::reference::name(update.reference.as_bytes().as_bstr()).is_err()
                    || update.reference.chars().any(char::is_control))
            {
                broken.push(format!(
                    "{}: delivered an update naming the invalid ref {:?}",
                    outcome.case, update.reference
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// End to end: what ssh would be given for URLs whose user or host starts with `-`. The ssh
/// command is a recorder (a shell `printf` into a file), so nothing is run; an argument that
/// starts with `-` where ssh expects its destination would be read by ssh as an option
/// (`-oProxyCommand=…` runs any command).
#[test]
fn ssh_destination_is_never_an_option() {
    let mut broken = Vec::new();
    for url in [
        "ssh://-oProxyCommand=id/p.git",
        "ssh://-oProxyCommand=id@example.org/p.git",
        "ssh://%2DoProxyCommand=id/p.git",
        "ssh://-F/p.git",
        "-oProxyCommand=id:/srv/p.git",
        "-oProxyCommand=id@example.org:/srv/p.git",
        "git@-oProxyCommand=id:/srv/p.git",
    ] {
        let sandbox = unique_dir();
        let argv = sandbox.path().join("argv");
        let mut source = Source::new("ssh", url);
        source.timeout = TIMEOUT;
        source.ssh_command = Some(format!(
            "printf '%s\\n' >{}",
            crate::util::shell_quote(&argv.to_string_lossy())
        ));
        if let Err(err) = source.validate() {
            println!("{url}: rejected: {err}");
            continue;
        }
        let result = gitfeed::sync_once(sandbox.path().join("cache"), &source);
        let recorded = fs::read_to_string(&argv).unwrap_or_default();
        let args: Vec<&str> = recorded.lines().collect();
        // The recorder's arguments end with the destination and the remote command.
        let destination = args
            .len()
            .checked_sub(2)
            .map(|i| args[i])
            .unwrap_or_default();
        println!(
            "{url}: accepted; ssh argv {args:?}; result {:?}",
            result.as_ref().map_err(ToString::to_string)
        );
        if destination.starts_with('-') {
            broken.push(format!(
                "{url}: accepted, and ssh is given `{destination}` where its destination \
                 belongs"
            ));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A local path starting with `-` is accepted, and harmless: gitfeed makes a relative path
/// absolute before git-upload-pack sees it, so git reads it as a path, not as an option.
#[test]
fn local_path_starting_with_a_dash_is_not_an_option() {
    for url in ["--help", "--upload-pack=touch pwned", "-h"] {
        let sandbox = unique_dir();
        let mut source = Source::new("local", url);
        source.timeout = TIMEOUT;
        // What git-upload-pack said is the error's detail.
        let message = match gitfeed::sync_once(sandbox.path().join("cache"), &source) {
            Ok(update) => panic!("{url}: synced from nowhere: {update:?}"),
            Err(err) => format!("{} ({})", err, err.detail().unwrap_or_default()),
        };
        println!("{url}: {message}");
        let absolute = std::env::current_dir()
            .expect("the current directory")
            .join(url);
        assert!(
            !message.to_lowercase().contains("usage")
                && message.contains(&*absolute.to_string_lossy()),
            "{url}: git-upload-pack did not get the absolute path {}: {message}",
            absolute.display()
        );
    }
}
