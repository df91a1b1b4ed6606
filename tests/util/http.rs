//! A minimal HTTP/1.1 server that runs `git http-backend` as a CGI program,
//! giving tests a smart-HTTP git server (protocol v0, v1 and v2) whose
//! failures they can inject.
//!
//! Each connection carries one request: every response says
//! `Connection: close` and its body ends when the connection does, which
//! spares the server keep-alive and response chunking.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use super::fault::{Acceptor, Ctx, Fault, Service};

/// Longest request line or header line accepted.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 100;
/// A client that stalls this long while sending its request is dropped; a
/// server shutdown unblocks such reads much sooner.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One request as the server saw it, for assertions such as "the client
/// asked for protocol v2" or "large requests were sent chunked".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    /// `GET` or `POST`.
    pub method: String,
    /// Path part of the request target, still percent-encoded.
    pub path: String,
    /// Query string without the `?`; empty if there was none.
    pub query: String,
    /// Value of the `Git-Protocol` header (`version=2` for protocol v2).
    pub git_protocol: Option<String>,
    /// Value of the `Content-Encoding` header (`gzip` for compressed
    /// request bodies).
    pub content_encoding: Option<String>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Length of the request body as received (after de-chunking, before
    /// any decompression).
    pub body_len: usize,
    /// Status code the server answered with.
    pub status: u16,
}

/// Smart-HTTP git server on `http://127.0.0.1:<port>/`, serving every
/// repository below one directory through `git http-backend`, with a
/// switchable [`Fault`]. Stops and joins its threads on drop.
pub struct HttpServer {
    acceptor: Acceptor,
    backend: Arc<Backend>,
    /// Holds the CGI error log; removed on drop.
    _dir: tempfile::TempDir,
}

impl HttpServer {
    /// Serves the repositories below `root`: `http://127.0.0.1:P/<path>`
    /// maps to `root/<path>`. Ready when this returns.
    pub fn start(root: &Path) -> HttpServer {
        let dir = super::unique_dir();
        let log_path = dir.path().join("http-backend.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create the http-backend log file");
        let backend = Arc::new(Backend {
            root: root.to_path_buf(),
            log,
            log_path,
            requests: Mutex::new(Vec::new()),
            accepted_auth: Mutex::new(Vec::new()),
            seen_auth: Mutex::new(Vec::new()),
        });
        let acceptor = Acceptor::start(backend.clone(), Fault::None);
        HttpServer {
            acceptor,
            backend,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<port>/<name>`, `name` being relative to the root.
    pub fn url(&self, name: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port(),
            name.trim_start_matches('/')
        )
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.acceptor.port()
    }

    /// Applies `fault` to every connection from now on; closes connections
    /// held by [`Fault::Silent`].
    pub fn set_fault(&self, fault: Fault) {
        self.acceptor.set_fault(fault);
    }

    /// Applies `fault` to the next `connections` connections, then reverts
    /// to [`Fault::None`] by itself. Note that one git fetch over HTTP makes
    /// at least two requests (ref discovery, then the fetch itself), each on
    /// its own connection. Held silent connections stay open until the next
    /// `set_fault*` call or drop.
    pub fn set_fault_for(&self, fault: Fault, connections: usize) {
        self.acceptor.set_fault_for(fault, connections);
    }

    /// The fault the next connection will get.
    pub fn fault(&self) -> Fault {
        self.acceptor.fault()
    }

    /// Connections accepted so far, whatever the fault.
    pub fn connections(&self) -> usize {
        self.acceptor.connections()
    }

    /// From now on, answer 401 unless the request carries one of these `Authorization`
    /// header values (`Basic …` or `Bearer …`); an empty list turns the check off.
    pub fn require_auth(&self, accepted: &[&str]) {
        *self
            .backend
            .accepted_auth
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            accepted.iter().map(|value| value.to_string()).collect();
    }

    /// Every `Authorization` header value received so far.
    pub fn seen_auth(&self) -> Vec<String> {
        self.backend
            .seen_auth
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests answered so far (requests of faulty connections that were
    /// never answered are missing), oldest first.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.backend.lock_requests().clone()
    }

    /// What `git http-backend` wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.backend.log_path).unwrap_or_default()
    }

    /// Stops the server, closes all connections and joins its threads;
    /// also done on drop.
    pub fn shutdown(&mut self) {
        self.acceptor.shutdown();
    }
}

/// The CGI side: where the repositories are and what was served.
struct Backend {
    root: PathBuf,
    log: File,
    log_path: PathBuf,
    requests: Mutex<Vec<RequestLog>>,
    /// The `Authorization` header values accepted; empty accepts every request.
    accepted_auth: Mutex<Vec<String>>,
    /// Every `Authorization` header value received, for secret-leak checks.
    seen_auth: Mutex<Vec<String>>,
}

impl Backend {
    fn lock_requests(&self) -> std::sync::MutexGuard<'_, Vec<RequestLog>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, request: &Request, status: u16) {
        self.lock_requests().push(RequestLog {
            method: request.method.clone(),
            path: request.path().to_string(),
            query: request.query().to_string(),
            git_protocol: request.header("git-protocol").map(str::to_string),
            content_encoding: request.header("content-encoding").map(str::to_string),
            chunked: request.chunked(),
            body_len: request.body.len(),
            status,
        });
    }

    /// Runs `git http-backend` for `request` and relays its answer.
    /// Returns the status code sent.
    fn run_cgi(&self, request: &Request, peer: &str, stream: &TcpStream) -> io::Result<u16> {
        let mut cmd = Command::new("git");
        cmd.arg("http-backend")
            .current_dir(&self.root)
            // A clean environment: only what a web server would pass, so the
            // test process's own GIT_* variables cannot leak in.
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("LC_ALL", "C")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_PROJECT_ROOT", &self.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("GATEWAY_INTERFACE", "CGI/1.1")
            .env("SERVER_SOFTWARE", "gitfeed-test")
            .env("SERVER_PROTOCOL", "HTTP/1.1")
            .env("SERVER_NAME", "127.0.0.1")
            .env("REQUEST_METHOD", &request.method)
            .env("SCRIPT_NAME", "")
            .env("PATH_INFO", percent_decode(request.path()))
            .env("QUERY_STRING", request.query())
            .env("REMOTE_ADDR", peer)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(self.log.try_clone()?);
        if let Some(content_type) = request.header("content-type") {
            cmd.env("CONTENT_TYPE", content_type);
        }
        if request.method == "POST" || !request.body.is_empty() {
            // The body handed over is de-chunked, so its length is known even
            // when the client did not send Content-Length.
            cmd.env("CONTENT_LENGTH", request.body.len().to_string());
        }
        if let Some(protocol) = request.header("git-protocol") {
            // What makes protocol v2 work: http-backend hands GIT_PROTOCOL to
            // upload-pack, which then speaks v2.
            cmd.env("GIT_PROTOCOL", protocol);
        }
        for (name, value) in request.cgi_headers() {
            // HTTP_CONTENT_ENCODING=gzip is how http-backend learns that it
            // must inflate the body.
            cmd.env(name, value);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let message = format!("cannot run git http-backend: {e}\n");
                respond(stream, 502, "Bad Gateway", "text/plain", message.as_bytes())?;
                return Ok(502);
            }
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let result = thread::scope(|scope| {
            // Fed from its own thread so neither side can block the other on
            // a full pipe.
            scope.spawn(move || {
                if let Some(mut stdin) = stdin {
                    let _ = stdin.write_all(&request.body);
                }
            });
            let relayed = match stdout {
                Some(stdout) => relay_cgi_response(BufReader::new(stdout), stream),
                None => Err(io::Error::other("http-backend has no stdout")),
            };
            if relayed.is_err() {
                // The client went away (or the CGI spoke nonsense): stop the
                // backend so the stdin feeder and wait() below finish.
                let _ = child.kill();
            }
            relayed
        });
        let _ = child.wait();
        result
    }
}

/// A 401 answer that asks for basic authentication.
fn stream_write_401(mut stream: &TcpStream) -> io::Result<()> {
    stream.write_all(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"gitfeed-test\"\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
}

impl Service for Backend {
    fn serve(&self, _ctx: &Ctx, stream: TcpStream) {
        // As web servers do (nginx's `tcp_nodelay on`): small answers go out at once instead
        // of waiting for the client to acknowledge the previous segment.
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map(|addr| addr.ip().to_string())
            .unwrap_or_else(|_| "127.0.0.1".into());
        match read_request(&stream) {
            Ok(Some(request)) => {
                let given = request.header("authorization").map(str::to_string);
                if let Some(value) = &given {
                    self.seen_auth
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(value.clone());
                }
                let accepted = self
                    .accepted_auth
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if !accepted.is_empty() && !given.is_some_and(|value| accepted.contains(&value)) {
                    let _ = stream_write_401(&stream);
                    self.record(&request, 401);
                    finish(stream);
                    return;
                }
                // On error part of the response may be out already, so the
                // connection is just closed: the client sees a truncated
                // answer, as from a crashing server.
                if let Ok(status) = self.run_cgi(&request, &peer, &stream) {
                    self.record(&request, status);
                }
            }
            Ok(None) => {}
            Err(_) => {
                let _ = respond(
                    &stream,
                    400,
                    "Bad Request",
                    "text/plain",
                    b"malformed request\n",
                );
            }
        }
        finish(stream);
    }

    fn fail(&self, _ctx: &Ctx, stream: TcpStream) {
        if let Ok(Some(request)) = read_request(&stream) {
            let _ = respond(
                &stream,
                500,
                "Internal Server Error",
                "text/plain",
                b"injected fault\n",
            );
            self.record(&request, 500);
        }
        finish(stream);
    }

    fn trickle_preamble(&self, _ctx: &Ctx, stream: &TcpStream) -> io::Result<()> {
        let request = read_request(stream)?.ok_or(io::ErrorKind::UnexpectedEof)?;
        let content_type = match (request.path().rsplit('/').next(), request.query()) {
            (Some("refs"), query) if query.contains("service=git-upload-pack") => {
                "application/x-git-upload-pack-advertisement"
            }
            (Some("git-upload-pack"), _) => "application/x-git-upload-pack-result",
            _ => "application/octet-stream",
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\n\
             Content-Length: 1000000000\r\nConnection: close\r\n\r\n"
        );
        (&*stream).write_all(head.as_bytes())?;
        self.record(&request, 200);
        Ok(())
    }
}

/// Ends a connection after the response: FIN, then a short drain so
/// nothing left unread turns the close into a reset.
fn finish(stream: TcpStream) {
    super::fault::close_politely(stream);
}

/// A parsed request with its body already read (and de-chunked).
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    }

    /// Request headers as CGI `HTTP_*` variables, leaving out those the CGI
    /// spec maps elsewhere and the hop-by-hop ones this server consumed.
    fn cgi_headers(&self) -> Vec<(String, String)> {
        const SKIP: &[&str] = &[
            "content-type",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "expect",
            "te",
            "trailer",
            "upgrade",
        ];
        let mut vars: Vec<(String, String)> = Vec::new();
        for (name, value) in &self.headers {
            if SKIP.iter().any(|skip| name.eq_ignore_ascii_case(skip)) {
                continue;
            }
            let var = format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_"));
            match vars.iter_mut().find(|(existing, _)| *existing == var) {
                // Repeated headers combine into one list, as HTTP allows.
                Some((_, joined)) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                None => vars.push((var, value.clone())),
            }
        }
        vars
    }
}

/// Reads one request. `Ok(None)` if the client closed without sending one.
fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let request_line = read_line(&mut reader)?;
    if request_line.is_empty() {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(invalid("unsupported HTTP version"));
    }
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("malformed header"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body: Vec::new(),
    };
    if request
        .header("expect")
        .is_some_and(|expect| expect.eq_ignore_ascii_case("100-continue"))
    {
        // The client holds the body back until told to go on.
        stream
            .try_clone()?
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    request.body = if request.chunked() {
        read_chunked(&mut reader)?
    } else if let Some(length) = request.header("content-length") {
        let length: u64 = length.parse().map_err(|_| invalid("bad Content-Length"))?;
        let mut body = Vec::new();
        reader.by_ref().take(length).read_to_end(&mut body)?;
        if body.len() as u64 != length {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body
    } else {
        Vec::new()
    };
    Ok(Some(request))
}

/// Decodes a `Transfer-Encoding: chunked` body, discarding any trailers.
fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| invalid("bad chunk size"))?;
        if size == 0 {
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        let before = body.len();
        reader.by_ref().take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !read_line(reader)?.is_empty() {
            return Err(invalid("chunk not followed by CRLF"));
        }
    }
}

/// One line without its line ending; empty at end of input.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)?;
    if !line.is_empty() && !line.ends_with(b"\n") {
        return Err(invalid("line too long or truncated"));
    }
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("line is not UTF-8"))
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Turns the CGI's response into an HTTP response on `stream`: its
/// `Status:` header becomes the status line, the other headers pass
/// through, the body is copied until the CGI exits. Returns the status.
fn relay_cgi_response(mut cgi: impl BufRead, stream: &TcpStream) -> io::Result<u16> {
    let mut status = None;
    let mut has_location = false;
    let mut headers = String::new();
    loop {
        let line = read_line(&mut cgi)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid("malformed CGI header"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = Some(value.to_string());
            continue;
        }
        if ["connection", "transfer-encoding"]
            .iter()
            .any(|skip| name.eq_ignore_ascii_case(skip))
        {
            continue;
        }
        has_location |= name.eq_ignore_ascii_case("location");
        headers.push_str(name);
        headers.push_str(": ");
        headers.push_str(value);
        headers.push_str("\r\n");
    }
    // CGI/1.1: no Status means 200, or 302 for a redirect.
    let status =
        status.unwrap_or_else(|| if has_location { "302 Found" } else { "200 OK" }.to_string());
    let code = status
        .split_whitespace()
        .next()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("malformed CGI Status"))?;
    // Chunked, so the body streams as the CGI writes it and every client (libgit2 among
    // them) sees where it ends without relying on the connection closing.
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut out = stream;
    out.write_all(head.as_bytes())?;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match cgi.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        // One write per chunk: with TCP_NODELAY (below) each becomes a segment of its own
        // instead of three, as from a web server that buffers its output.
        let mut chunk = format!("{n:x}\r\n").into_bytes();
        chunk.extend_from_slice(&buffer[..n]);
        chunk.extend_from_slice(b"\r\n");
        out.write_all(&chunk)?;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()?;
    Ok(code)
}

/// Writes a complete small response.
fn respond(
    stream: &TcpStream,
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let mut out = stream;
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

/// Decodes `%XX` escapes; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
