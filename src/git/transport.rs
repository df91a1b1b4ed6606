//! Connections the driver can end: git:// over a socket gitfeed owns, and the cancel handle.

use std::io::Read;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::protocol::transport::Protocol;
use gix::protocol::transport::client::blocking_io::http::curl::Curl;
use gix::protocol::transport::client::blocking_io::http::{
    GetResponse, Http, PostBodyDataKind, PostResponse,
};
use gix::protocol::transport::client::git::ConnectMode;
use gix::protocol::transport::client::git::blocking_io::Connection;
use rustix::process::Pid;

use super::FetchError;
use crate::reason::Reason;

/// Ends one attempt from another thread.
///
/// gix checks the interrupt flag only while receiving a pack; a handshake blocked on a silent
/// server ignores it. So the handle also keeps a clone of the git:// socket and shuts it down,
/// which makes the blocked read return at once.
#[derive(Debug, Default)]
pub(crate) struct Cancel {
    /// Shared with the attempt's connections, whose reads fail once it is set.
    interrupted: Arc<AtomicBool>,
    socket: Mutex<Option<TcpStream>>,
    group: Mutex<Option<Pid>>,
}

impl Cancel {
    /// The flag handed to gix.
    pub fn flag(&self) -> &AtomicBool {
        &self.interrupted
    }

    /// The flag, for a connection to check on every read.
    fn shared(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.interrupted)
    }

    /// True once [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Interrupts the attempt: sets the flag, shuts down its socket and kills its helper
    /// process group, if any.
    pub fn cancel(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        if let Ok(socket) = self.socket.lock()
            && let Some(socket) = socket.as_ref()
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
        if let Ok(group) = self.group.lock()
            && let Some(group) = *group
        {
            // The helper is reaped only by its `Spawned` guard, after this lock is released by
            // `release`, so the group id still names the attempt's helper here.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }

    fn watch_group(&self, group: Pid) {
        if let Ok(mut slot) = self.group.lock() {
            *slot = Some(group);
        }
    }

    /// Drops the socket clone, so the attempt's descriptor is freed as soon as gix drops its
    /// own.
    pub fn release(&self) {
        if let Ok(mut socket) = self.socket.lock() {
            socket.take();
        }
        self.forget_helper();
    }

    /// Forgets the helper's process group; call before the helper is reaped.
    pub fn forget_helper(&self) {
        if let Ok(mut group) = self.group.lock() {
            group.take();
        }
    }

    fn watch(&self, socket: TcpStream) {
        if let Ok(mut slot) = self.socket.lock() {
            if self.is_cancelled() {
                let _ = socket.shutdown(Shutdown::Both);
            }
            *slot = Some(socket);
        }
    }
}

/// For a git:// URL, connects to the daemon with deadlines and returns the transport; `None`
/// for every other scheme.
///
/// gix's own git:// connection has a fixed 5 s connect timeout and no read timeout, so a daemon
/// that accepts and never answers would hold the attempt for ever. `TCP_NODELAY` avoids a
/// delayed-ACK stall of about 40 ms in every request-response exchange.
pub(crate) fn git_daemon_stream(
    url: &str,
    timeout: Duration,
    max_pack_size: u64,
    protocol: Protocol,
    cancel: &Cancel,
) -> Result<Option<DaemonConnection>, FetchError> {
    let Ok(parsed) = gix::url::parse(url.as_bytes().as_bstr()) else {
        return Ok(None);
    };
    if parsed.scheme != gix::url::Scheme::Git {
        return Ok(None);
    }
    let host = parsed
        .host()
        .ok_or_else(|| FetchError::new(Reason::Configuration, format!("no host in `{url}`")))?
        .to_owned();
    let port = parsed.port.unwrap_or(9418);
    let addresses = (host.as_str(), port).to_socket_addrs().map_err(|err| {
        FetchError::new(
            Reason::NameResolution,
            format!("cannot resolve `{host}`: {err}"),
        )
    })?;
    let mut last_error = None;
    let mut connected = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => {
                connected = Some(stream);
                break;
            }
            Err(err) => last_error = Some(err),
        }
    }
    let stream = connected.ok_or_else(|| match last_error {
        Some(err) => FetchError::new(
            match err.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Reason::Timeout,
                _ => Reason::ConnectionRefused,
            },
            format!("cannot connect to {host}:{port}: {err}"),
        ),
        None => FetchError::new(Reason::NameResolution, format!("`{host}` has no address")),
    })?;
    let setup = |stream: &TcpStream| -> std::io::Result<TcpStream> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.try_clone()
    };
    let (writer, watched) = setup(&stream)
        .and_then(|writer| Ok((writer, stream.try_clone()?)))
        .map_err(|err| {
            FetchError::new(
                Reason::ConnectionReset,
                format!("cannot set up the connection to {host}:{port}: {err}"),
            )
        })?;
    cancel.watch(watched);
    let reader = std::io::BufReader::with_capacity(READ_BUFFER, QuickAck(stream));
    // A request leaves in one piece when gix flushes it, before it reads the answer: a daemon
    // that refuses a request (`ERR upload-pack: not our ref`) and hangs up is then heard,
    // where line-by-line writes could meet the closed socket first and fail with a broken
    // pipe that says nothing.
    let writer = std::io::BufWriter::with_capacity(WRITE_BUFFER, writer);
    let (reader, writer) = bounded(reader, writer, max_pack_size, cancel);
    Ok(Some(Connection::new(
        reader,
        writer,
        protocol,
        parsed.path.clone(),
        Some((host, parsed.port)),
        ConnectMode::Daemon,
        false,
    )))
}

/// The protocol spoken over a helper process's pipes.
pub(crate) type HelperConnection = Connection<Bounded<ChildStdout>, Watched<ChildStdin>>;

/// The protocol spoken over a git:// socket.
pub(crate) type DaemonConnection =
    Connection<Bounded<std::io::BufReader<QuickAck>>, Watched<std::io::BufWriter<TcpStream>>>;

/// How much of a git:// answer is read from the socket at once.
const READ_BUFFER: usize = 64 * 1024;

/// How much of a git:// request is gathered before it is sent, at most: wants and haves for
/// one ref fit many times over.
const WRITE_BUFFER: usize = 64 * 1024;

/// A git:// socket that acknowledges what it receives at once. `git upload-pack` writes each
/// `ACK` line of a negotiation on its own, with Nagle's algorithm on: once a few are in
/// flight it holds the next until they are acknowledged, and a receiver that delays its
/// acknowledgements (40 ms on Linux) stalls every fetch that brings something new by that much.
/// Linux leaves quick-ack mode on its own, so it is asked for again after every read.
pub(crate) struct QuickAck(TcpStream);

impl std::io::Read for QuickAck {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.0.read(buf)?;
        if read > 0 {
            // Only a latency hint: a socket that refuses it still works.
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.0, true);
        }
        Ok(read)
    }
}

/// A helper process gitfeed started itself (`git-upload-pack` for local remotes, `ssh` for
/// ssh remotes), in a process group of its own so that it and everything it started can be
/// killed together, and always reaped.
pub(crate) struct Spawned {
    child: Child,
    group: Pid,
}

impl Spawned {
    /// Kills the helper's whole process group and reaps the helper; returns what it wrote on
    /// stderr, for error messages. Called once the transport is dropped.
    pub fn finish(mut self) -> String {
        self.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            // Everything in the group is dead, so the pipe is at its end; a grandchild that
            // left the group could still hold it, hence the cap.
            let _ = (&mut pipe).take(64 * 1024).read_to_string(&mut stderr);
        }
        stderr.trim().to_owned()
    }

    fn kill(&self) {
        // The group id is the helper's pid, which stays reserved until the helper is reaped,
        // so this cannot hit an unrelated process.
        let _ = rustix::process::kill_process_group(self.group, rustix::process::Signal::KILL);
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.wait();
    }
}

/// For a local (`file://` or path) or ssh remote, starts the helper process gitfeed talks the
/// protocol with, registered with `cancel` so that a deadline kills it (gix's own spawning
/// offers no way to end a helper that hangs, nor its children). `None` for other schemes.
pub(crate) fn spawn_helper(
    url: &gix::Url,
    ssh_command: &str,
    max_pack_size: u64,
    cancel: &Cancel,
) -> Result<Option<(HelperConnection, Spawned)>, FetchError> {
    use gix::url::Scheme;
    let path = url.path.to_str_lossy().into_owned();
    let mut command = match url.scheme {
        Scheme::File => {
            // Not `--strict`: like git itself, a path may name a working copy, whose
            // repository is its `.git` (`gitfeed watch .`).
            let mut command = Command::new("git-upload-pack");
            command.arg(&path);
            command
        }
        Scheme::Ssh => {
            // A host or user that looks like an option would be read by ssh as one
            // (`-oProxyCommand=…` runs a command): refused, and `--` ends ssh's options anyway.
            let host = url.host_argument_safe().ok_or_else(|| {
                FetchError::new(
                    Reason::Configuration,
                    "the ssh host is missing or looks like an option",
                )
            })?;
            let destination = match url.user() {
                Some(_) => {
                    let user = url.user_argument_safe().ok_or_else(|| {
                        FetchError::new(Reason::Configuration, "the ssh user looks like an option")
                    })?;
                    format!("{user}@{host}")
                }
                None => host.to_owned(),
            };
            let mut command = Command::new("sh");
            // The ssh command is a shell snippet, as git's core.sshCommand is.
            command
                .arg("-c")
                .arg(format!("{ssh_command} \"$@\""))
                .arg("gitfeed-ssh")
                .args(["-o", "SendEnv=GIT_PROTOCOL"]);
            if let Some(port) = url.port {
                command.args(["-p", &port.to_string()]);
            }
            command
                .arg("--")
                .arg(destination)
                .arg(format!("git-upload-pack {}", shell_quote(&path)));
            command
        }
        _ => return Ok(None),
    };
    command
        .env("GIT_PROTOCOL", "version=2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let program = if url.scheme == Scheme::Ssh {
        "ssh"
    } else {
        "git-upload-pack"
    };
    let child = command.spawn().map_err(|err| {
        FetchError::new(
            Reason::Configuration,
            format!("cannot run `{program}`: {err}; is it installed?"),
        )
    })?;
    let group = Pid::from_child(&child);
    // From here on the guard kills and reaps the helper on every path out.
    let mut spawned = Spawned { child, group };
    let (Some(stdin), Some(stdout)) = (spawned.child.stdin.take(), spawned.child.stdout.take())
    else {
        return Err(FetchError::new(
            Reason::LocalIo,
            format!("`{program}` started without pipes"),
        ));
    };
    cancel.watch_group(group);
    if cancel.is_cancelled() {
        cancel.forget_helper();
        return Err(FetchError::new(Reason::Cancelled, "cancelled"));
    }
    let (stdout, stdin) = bounded(stdout, stdin, max_pack_size, cancel);
    let connection = Connection::new(
        stdout,
        stdin,
        Protocol::V2,
        url.path.clone(),
        None::<(String, Option<u16>)>,
        ConnectMode::Process,
        false,
    );
    Ok(Some((connection, spawned)))
}

/// Quotes `text` as one word for a POSIX shell (the remote side of ssh runs one).
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The most a remote may send before the client asks for a pack: capabilities and the ref
/// advertisement. gix holds all of it in memory, so a remote that never stops advertising
/// would otherwise exhaust it.
const MAX_ADVERTISEMENT: u64 = 32 << 20;

/// How often a read may find the connection closed before the exchange is given up: gix
/// reads the end more than once while it winds down, but not without limit.
const MAX_ENDS_SEEN: u64 = 64;

/// The most bytes one attempt sends to the remote.
const MAX_SENT: u64 = 16 << 20;

/// The most HTTP requests one attempt makes; a real negotiation needs a handful.
const MAX_HTTP_REQUESTS: u64 = 16;

/// Why a connection stopped an exchange on gitfeed's side: the remote went past a limit, or
/// the attempt was cancelled. Carried inside the `std::io::Error` a read or write returns, so
/// that the failure is classed by this type rather than by its words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cutoff {
    /// The attempt was cancelled (its deadline passed, or the feed is stopping).
    Cancelled,
    /// The remote sent more than `what` allows.
    TooLarge { what: &'static str, limit: u64 },
    /// The remote closed the connection again and again in the middle of the exchange.
    EndedEarly,
    /// The client sent more than [`MAX_SENT`]: the negotiation does not end.
    TooMuchSent,
    /// More than [`MAX_HTTP_REQUESTS`] HTTP requests.
    TooManyRequests,
}

impl Cutoff {
    /// Why the attempt failed.
    pub fn reason(&self) -> Reason {
        match self {
            Cutoff::Cancelled => Reason::Timeout,
            Cutoff::TooLarge { .. } => Reason::RemoteTooLarge,
            Cutoff::EndedEarly => Reason::ConnectionReset,
            Cutoff::TooMuchSent | Cutoff::TooManyRequests => Reason::Protocol,
        }
    }
}

impl std::fmt::Display for Cutoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cutoff::Cancelled => f.write_str("the attempt was cancelled"),
            Cutoff::TooLarge { what, limit } => {
                write!(f, "the remote sent more than {what} ({limit} bytes)")
            }
            Cutoff::EndedEarly => {
                f.write_str("the remote closed the connection in the middle of the exchange")
            }
            Cutoff::TooMuchSent => {
                f.write_str("the negotiation with the remote does not end; giving up")
            }
            Cutoff::TooManyRequests => write!(
                f,
                "the remote needed more than {MAX_HTTP_REQUESTS} requests; giving up"
            ),
        }
    }
}

impl std::error::Error for Cutoff {}

/// What a connection has received, and what it may still receive.
#[derive(Debug)]
struct Budget {
    received: AtomicU64,
    /// Reads that found the connection closed, and HTTP requests made: a remote that closes or
    /// answers nothing can make gix's negotiation go round and round.
    ends_seen: AtomicU64,
    requests: AtomicU64,
    /// Bytes sent: wants and haves for one ref stay far below [`MAX_SENT`].
    sent: AtomicU64,
    /// Set once the client asked for a pack: from then on the pack limit applies.
    asked_for_pack: AtomicBool,
    max_pack_size: u64,
    /// The last bytes received, kept only for HTTP, where gix cannot tell an `ERR` line in a
    /// response from a malformed one: see [`RemoteWords`].
    tail: Option<std::sync::Mutex<Vec<u8>>>,
    /// The attempt's interrupt flag: once it is set, every read fails. gix checks the flag only
    /// while it receives a pack, and a remote that keeps sending (an endless advertisement over
    /// HTTP, whose socket gitfeed does not own) would otherwise hold the attempt past its
    /// deadline until a limit is reached.
    cancelled: Arc<AtomicBool>,
}

/// The reading half of a connection, which fails once the remote sends more than it may.
#[derive(Debug)]
pub(crate) struct Bounded<R> {
    inner: R,
    budget: Arc<Budget>,
    /// Bytes the last `fill_buf` offered that are not consumed yet.
    buffered: usize,
}

/// The writing half of a connection, which notices when the client asks for a pack.
#[derive(Debug)]
pub(crate) struct Watched<W> {
    inner: W,
    budget: Arc<Budget>,
}

fn bounded<R, W>(
    reader: R,
    writer: W,
    max_pack_size: u64,
    cancel: &Cancel,
) -> (Bounded<R>, Watched<W>) {
    let budget = Budget::new(max_pack_size, cancel);
    (
        Bounded {
            inner: reader,
            budget: Arc::clone(&budget),
            buffered: 0,
        },
        Watched {
            inner: writer,
            budget,
        },
    )
}

impl<R: std::io::Read> std::io::Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.buffered = 0;
        let read = self.inner.read(buf)?;
        if read == 0 && !buf.is_empty() {
            let ends = self.budget.ends_seen.fetch_add(1, Ordering::Relaxed) + 1;
            if ends > MAX_ENDS_SEEN {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    Cutoff::EndedEarly,
                ));
            }
        }
        self.budget
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        self.budget.remember(&buf[..read]);
        self.over_budget()?;
        Ok(read)
    }
}

impl<W: std::io::Write> std::io::Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // `command=fetch` (protocol 2) or `want ` (older protocols) is where the client asks
        // for the pack; the advertisement is over.
        if !self.budget.asked_for_pack.load(Ordering::Relaxed)
            && (contains(buf, b"command=fetch") || contains(buf, b"want "))
        {
            self.budget.asked_for_pack.store(true, Ordering::Relaxed);
            self.budget.received.store(0, Ordering::Relaxed);
        }
        let sent = self
            .budget
            .sent
            .fetch_add(buf.len() as u64, Ordering::Relaxed)
            + buf.len() as u64;
        if sent > MAX_SENT {
            return Err(std::io::Error::other(Cutoff::TooMuchSent));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

impl<R: std::io::BufRead> std::io::BufRead for Bounded<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.over_budget()?;
        let buffered = self.inner.fill_buf()?;
        self.buffered = buffered.len();
        Ok(buffered)
    }

    fn consume(&mut self, amount: usize) {
        self.budget
            .received
            .fetch_add(amount as u64, Ordering::Relaxed);
        if self.budget.tail.is_some() && amount > 0 && amount <= self.buffered {
            // The bytes consumed are still buffered, so asking for them again reads nothing.
            if let Ok(buffered) = self.inner.fill_buf() {
                let consumed = &buffered[..amount.min(buffered.len())];
                self.budget.remember(consumed);
            }
        }
        self.buffered = self.buffered.saturating_sub(amount);
        self.inner.consume(amount);
    }
}

impl<R> Bounded<R> {
    fn over_budget(&self) -> std::io::Result<()> {
        if self.budget.cancelled.load(Ordering::Relaxed) {
            // Not `ErrorKind::Interrupted`: std's readers retry on that.
            return Err(std::io::Error::other(Cutoff::Cancelled));
        }
        let total = self.budget.received.load(Ordering::Relaxed);
        let (limit, what) = self.budget.limit();
        if total > limit {
            return Err(std::io::Error::other(Cutoff::TooLarge { what, limit }));
        }
        Ok(())
    }
}

impl Budget {
    fn new(max_pack_size: u64, cancel: &Cancel) -> Arc<Self> {
        Self::with_tail(max_pack_size, cancel, false)
    }

    fn with_tail(max_pack_size: u64, cancel: &Cancel, tail: bool) -> Arc<Self> {
        Arc::new(Self {
            tail: tail.then(|| std::sync::Mutex::new(Vec::new())),
            cancelled: cancel.shared(),
            received: AtomicU64::new(0),
            ends_seen: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            asked_for_pack: AtomicBool::new(false),
            max_pack_size,
        })
    }

    /// Keeps the last [`TAIL`] bytes received, if this connection keeps any.
    fn remember(&self, bytes: &[u8]) {
        let Some(tail) = &self.tail else {
            return;
        };
        let mut tail = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = &bytes[bytes.len().saturating_sub(TAIL)..];
        let keep = TAIL - bytes.len();
        let drop = tail.len().saturating_sub(keep);
        tail.drain(..drop);
        tail.extend_from_slice(bytes);
    }

    fn limit(&self) -> (u64, &'static str) {
        if self.asked_for_pack.load(Ordering::Relaxed) {
            // The pack plus the negotiation around it.
            (
                self.max_pack_size.saturating_add(MAX_ADVERTISEMENT),
                "max_pack_size",
            )
        } else {
            (MAX_ADVERTISEMENT, "the advertisement limit")
        }
    }
}

/// How many of the last bytes received an HTTP connection keeps.
const TAIL: usize = 1024;

/// The `ERR` line an HTTP remote sent, if any. Over HTTP, git's upload-pack reports a refused
/// fetch (`not our ref`) in an `ERR` line of the response, which gix reads as a malformed
/// side-band line ("non-side channel line … 69") and whose words it drops.
#[derive(Debug)]
pub(crate) struct RemoteWords(Arc<Budget>);

impl RemoteWords {
    /// The text of the last `ERR` line among the last bytes received.
    pub fn error_line(&self) -> Option<String> {
        let tail = self.0.tail.as_ref()?;
        let tail = tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        error_line(&tail)
    }
}

/// The text of the last `ERR` pkt-line in `bytes`: `ERR ` after four hex digits of length.
fn error_line(bytes: &[u8]) -> Option<String> {
    let at = (4..bytes.len()).rev().find(|&at| {
        bytes[at..].starts_with(b"ERR ") && bytes[at - 4..at].iter().all(u8::is_ascii_hexdigit)
    })?;
    let length = std::str::from_utf8(&bytes[at - 4..at])
        .ok()
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())?;
    let end = (at - 4 + length).clamp(at + 4, bytes.len());
    let text = String::from_utf8_lossy(&bytes[at + 4..end])
        .trim()
        .to_owned();
    (!text.is_empty()).then_some(text)
}

/// gix's curl backend with every response bounded like the other transports: gix holds a
/// ref advertisement in memory, and curl's low-speed limit cannot stop a remote that sends
/// one fast and for ever.
pub(crate) struct BoundedHttp {
    inner: Curl,
    budget: Arc<Budget>,
}

impl BoundedHttp {
    pub fn new(max_pack_size: u64, cancel: &Cancel) -> Self {
        Self {
            inner: Curl::default(),
            budget: Budget::with_tail(max_pack_size, cancel, true),
        }
    }

    /// What the remote put in an `ERR` line of its responses, readable after the transport
    /// is gone.
    pub fn words(&self) -> RemoteWords {
        RemoteWords(Arc::clone(&self.budget))
    }

    fn bounded<B>(&self, body: B) -> Bounded<B> {
        Bounded {
            inner: body,
            budget: Arc::clone(&self.budget),
            buffered: 0,
        }
    }
}

impl Http for BoundedHttp {
    type Headers = <Curl as Http>::Headers;
    type ResponseBody = Bounded<<Curl as Http>::ResponseBody>;
    type PostBody = Watched<<Curl as Http>::PostBody>;

    fn get(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> gix::Result<GetResponse<Self::Headers, Self::ResponseBody>> {
        let response = self.inner.get(url, base_url, headers)?;
        Ok(GetResponse {
            headers: response.headers,
            body: self.bounded(response.body),
        })
    }

    fn post(
        &mut self,
        url: &str,
        base_url: &str,
        headers: impl IntoIterator<Item = impl AsRef<str>>,
        body: PostBodyDataKind,
    ) -> gix::Result<PostResponse<Self::Headers, Self::ResponseBody, Self::PostBody>> {
        let requests = self.budget.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if requests > MAX_HTTP_REQUESTS {
            return Err(gix::Error::from_error(std::io::Error::other(
                Cutoff::TooManyRequests,
            )));
        }
        let response = self.inner.post(url, base_url, headers, body)?;
        Ok(PostResponse {
            post_body: Watched {
                inner: response.post_body,
                budget: Arc::clone(&self.budget),
            },
            headers: response.headers,
            body: self.bounded(response.body),
        })
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::Result {
        self.inner.configure(config)
    }

    fn redirected_base_url(&self) -> Option<String> {
        self.inner.redirected_base_url()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_last_err_line_is_found_among_other_bytes() {
        let said = b"\x01PACK\x00\x020026ERR upload-pack: not our ref 1234\n0000";
        assert_eq!(
            super::error_line(said).as_deref(),
            Some("upload-pack: not our ref 1234")
        );
        // The line is cut where its length says, and a cut-off line still counts.
        assert_eq!(
            super::error_line(b"000dERR shortXXXX").as_deref(),
            Some("short")
        );
        assert_eq!(super::error_line(b"00ffERR no").as_deref(), Some("no"));
        assert_eq!(super::error_line(b"ERR without a length"), None);
        assert_eq!(super::error_line(b"00zzERR not hex"), None);
    }
}
