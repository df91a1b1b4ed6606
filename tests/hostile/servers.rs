//! Lying git servers on loopback: the same [`Script`] served over git:// and over smart HTTP.
//!
//! A script decides what each step of the conversation answers: the first advertisement (a v0
//! ref list or v2 capabilities), then every command the client sends (`ls-refs`, `fetch`, or
//! v0 wants). Scripts may flood, which streams as fast as the client reads (at most
//! [`FLOOD_RATE`]) for at most [`FLOOD_CAP`]: long past any deadline under test, and yet every
//! test ends on its own even when the client never gives up.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::fault::{Acceptor, Ctx, Fault, Service, close_politely};
use crate::wire::{self, Packet};

/// The longest a flood or a held connection lasts: a client still connected then has
/// overrun its deadline many times over, and the test reports it.
pub const FLOOD_CAP: Duration = Duration::from_secs(10);

/// The fastest a flood goes. High enough that a client holding what it receives in memory
/// grows by hundreds of MiB within a 2 s deadline, low enough that an endless pack written to
/// disk stays a few hundred MiB.
pub const FLOOD_RATE: u64 = 128 << 20;

/// A write the client does not take for this long means it stopped reading: the flood ends.
const STALLED_WRITE: Duration = Duration::from_secs(5);

/// What happens to the connection after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the client's next command.
    Continue,
    /// Close cleanly.
    Close,
    /// Keep the connection open and say nothing until [`FLOOD_CAP`] or shutdown.
    Hold,
}

/// The transport a script is being served over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Git,
    Http,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Git => "git",
            Transport::Http => "http",
        }
    }
}

/// A hostile server's side of the conversation.
pub trait Script: Send + Sync + 'static {
    /// The first answer: a ref advertisement (protocol v0) or capabilities (v2). Over HTTP the
    /// server has already sent the response headers.
    fn advertise(&self, out: &mut Out<'_>) -> io::Result<Next>;

    /// The answer to a v2 command (`Some("ls-refs")`, `Some("fetch")`) or to v0 wants (`None`),
    /// given the request's pkt-lines.
    fn command(
        &self,
        name: Option<&str>,
        request: &[Vec<u8>],
        out: &mut Out<'_>,
    ) -> io::Result<Next>;
}

impl Script for Box<dyn Script> {
    fn advertise(&self, out: &mut Out<'_>) -> io::Result<Next> {
        (**self).advertise(out)
    }

    fn command(
        &self,
        name: Option<&str>,
        request: &[Vec<u8>],
        out: &mut Out<'_>,
    ) -> io::Result<Next> {
        (**self).command(name, request, out)
    }
}

/// The server's end of one connection, with the helpers scripts need.
pub struct Out<'a> {
    stream: &'a TcpStream,
    ctx: &'a Ctx,
    pub transport: Transport,
}

impl Out<'_> {
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut stream = self.stream;
        stream.write_all(bytes)
    }

    /// Writes `next()`'s chunks back to back until the client goes away, the server stops or
    /// [`FLOOD_CAP`] passes; paced to at most [`FLOOD_RATE`]. Returns the bytes written.
    pub fn flood(&mut self, mut next: impl FnMut() -> Vec<u8>) -> u64 {
        let started = Instant::now();
        let mut written = 0u64;
        let _ = self.stream.set_write_timeout(Some(STALLED_WRITE));
        while started.elapsed() < FLOOD_CAP {
            let chunk = next();
            if self.send(&chunk).is_err() {
                break;
            }
            written += chunk.len() as u64;
            // Ahead of the rate: wait until the clock catches up (the server paces itself;
            // the client's state is not involved).
            let due = Duration::from_secs_f64(written as f64 / FLOOD_RATE as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed())
                && !self.ctx.pause(ahead)
            {
                break;
            }
        }
        written
    }

    /// Waits `duration` to pace the answer; `false` when the server is stopping.
    pub fn pause(&self, duration: Duration) -> bool {
        self.ctx.pause(duration)
    }

    fn hold(&self) {
        let _ = self.ctx.pause(FLOOD_CAP);
    }
}

/// A running hostile server; stops and joins its threads when dropped.
pub struct HostileServer {
    acceptor: Acceptor,
    transport: Transport,
}

impl HostileServer {
    pub fn start(transport: Transport, script: impl Script) -> HostileServer {
        let service = Arc::new(Serve {
            transport,
            script: Box::new(script),
        });
        HostileServer {
            acceptor: Acceptor::start(service, Fault::None),
            transport,
        }
    }

    /// The URL of a repository on this server.
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}/hostile.git",
            self.transport.name(),
            self.acceptor.port()
        )
    }

    pub fn connections(&self) -> usize {
        self.acceptor.connections()
    }
}

struct Serve {
    transport: Transport,
    script: Box<dyn Script>,
}

impl Service for Serve {
    fn serve(&self, ctx: &Ctx, stream: TcpStream) {
        // A client that stops talking must not keep a server thread for ever.
        let _ = stream.set_read_timeout(Some(FLOOD_CAP));
        let next = match self.transport {
            Transport::Git => self.serve_git(ctx, &stream),
            Transport::Http => self.serve_http(ctx, &stream),
        };
        if let Ok(Next::Hold) = next {
            Out {
                stream: &stream,
                ctx,
                transport: self.transport,
            }
            .hold();
        }
        close_politely(stream);
    }

    fn fail(&self, _ctx: &Ctx, _stream: TcpStream) {}

    fn trickle_preamble(&self, _ctx: &Ctx, _stream: &TcpStream) -> io::Result<()> {
        Ok(())
    }
}

impl Serve {
    fn serve_git(&self, ctx: &Ctx, stream: &TcpStream) -> io::Result<Next> {
        let mut reader = BufReader::new(stream);
        let mut out = Out {
            stream,
            ctx,
            transport: Transport::Git,
        };
        // The daemon request: `git-upload-pack /path\0host=…\0\0version=2\0`.
        match wire::read_packet(&mut reader)? {
            Packet::Data(request) if request.starts_with(b"git-upload-pack ") => {}
            _ => return Ok(Next::Close),
        }
        let mut next = self.script.advertise(&mut out)?;
        while next == Next::Continue {
            let Some(request) = wire::read_message(&mut reader)? else {
                return Ok(Next::Close);
            };
            next = self
                .script
                .command(command_name(&request), &request, &mut out)?;
        }
        Ok(next)
    }

    /// One request per connection (every answer says `Connection: close`).
    fn serve_http(&self, ctx: &Ctx, stream: &TcpStream) -> io::Result<Next> {
        let mut reader = BufReader::new(stream);
        let Some((target, body)) = read_http_request(&mut reader, stream)? else {
            return Ok(Next::Close);
        };
        let path = target.split('?').next().unwrap_or_default();
        let mut out = Out {
            stream,
            ctx,
            transport: Transport::Http,
        };
        if path.ends_with("/info/refs") && target.contains("service=git-upload-pack") {
            out.send(&http_head("application/x-git-upload-pack-advertisement"))?;
            self.script.advertise(&mut out)
        } else if path.ends_with("/git-upload-pack") {
            let request: Vec<Vec<u8>> =
                wire::read_message(&mut body.as_slice())?.unwrap_or_default();
            out.send(&http_head("application/x-git-upload-pack-result"))?;
            let next = self
                .script
                .command(command_name(&request), &request, &mut out)?;
            // Each HTTP request is answered on its own connection; only holding matters here.
            Ok(if next == Next::Hold {
                Next::Hold
            } else {
                Next::Close
            })
        } else {
            out.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            Ok(Next::Close)
        }
    }
}

/// `ls-refs` from a v2 request's `command=ls-refs` line; `None` for v0 wants.
fn command_name(request: &[Vec<u8>]) -> Option<&str> {
    let first = std::str::from_utf8(request.first()?).ok()?;
    first.trim_end().strip_prefix("command=")
}

/// Response headers with no length: the body ends when the connection closes, so a script can
/// stream for as long as it likes.
fn http_head(content_type: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Reads one request: its target and its body (de-chunked). `None` when the client closed
/// first.
fn read_http_request(
    reader: &mut BufReader<&TcpStream>,
    stream: &TcpStream,
) -> io::Result<Option<(String, Vec<u8>)>> {
    let request_line = read_line(reader)?;
    if request_line.is_empty() {
        return Ok(None);
    }
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut length = None;
    let mut chunked = false;
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("expect") && value.eq_ignore_ascii_case("100-continue")
        {
            // curl holds the body back until told to go on.
            let mut out = stream;
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let size = read_line(reader)?;
            let size = size.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                while !read_line(reader)?.is_empty() {}
                break;
            }
            reader.by_ref().take(size).read_to_end(&mut body)?;
            read_line(reader)?;
        }
    } else if let Some(length) = length {
        reader.by_ref().take(length).read_to_end(&mut body)?;
    }
    Ok(Some((target, body)))
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(16 * 1024)
        .read_until(b'\n', &mut line)?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}
