//! Servers that fail on purpose, and the accept loop shared with the HTTP
//! server.
//!
//! A server built on [`Acceptor`] decides per accepted connection how to
//! (mis)behave, from a [`Fault`] that tests can switch at any time. Every
//! connection is handled on its own thread; all of them, and the accept
//! thread, are stopped and joined when the server is dropped.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::LOOPBACK;

/// How a fault-injecting server treats the connections it accepts.
///
/// The fault is sampled once per connection, when it is accepted: changing
/// it affects later connections only, except that connections held open by
/// [`Fault::Silent`] are closed as soon as the fault is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Normal service. For [`FaultServer`] without a backend: like
    /// [`Fault::Close`].
    None,
    /// A server-side error: HTTP answers `500 Internal Server Error`;
    /// git:// answers an `ERR` packet, which git reports as
    /// `remote error: ...`.
    Status500,
    /// The connection is reset (the client's read fails with
    /// `ECONNRESET`) as soon as the client has sent something.
    ///
    /// std cannot set `SO_LINGER` to zero, so the reset comes from the
    /// kernel rule that closing a socket with unread received data sends RST
    /// instead of FIN: the server waits until request bytes arrive, peeks at
    /// them without consuming, and closes. A client that sends nothing
    /// within 5 s gets an ordinary close instead.
    Reset,
    /// The request is read and the connection closed cleanly (FIN) without
    /// any reply: "empty reply" / "the remote end hung up unexpectedly".
    Close,
    /// Accepted and then ignored: nothing is read or written and the socket
    /// stays open until the fault is changed or the server is dropped. No
    /// thread is kept per silent connection.
    Silent,
    /// An answer that never completes: HTTP sends a `200 OK` status line and
    /// headers promising a large body; then, on either protocol, one byte of
    /// body per second for as long as the client listens or the server
    /// lives. The bytes open a pkt-line of 65520 bytes (`fff0`, then `0`s),
    /// so a git client keeps waiting instead of failing on a parse error.
    Trickle,
}

/// What a protocol-specific server does with a connection; the fault
/// dispatch itself lives in [`Acceptor`].
pub(crate) trait Service: Send + Sync + 'static {
    /// Handles a connection under [`Fault::None`].
    fn serve(&self, ctx: &Ctx, stream: TcpStream);
    /// Handles a connection under [`Fault::Status500`].
    fn fail(&self, ctx: &Ctx, stream: TcpStream);
    /// Writes whatever precedes the trickled bytes under [`Fault::Trickle`]
    /// (for HTTP: read the request, send status line and headers).
    fn trickle_preamble(&self, ctx: &Ctx, stream: &TcpStream) -> io::Result<()>;
}

/// State shared by the accept thread, the connection threads and the
/// server handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Signalled when the fault changes or the server stops, so waiting
    /// connection threads react at once instead of after their timeout.
    changed: Condvar,
    connections: AtomicUsize,
}

struct State {
    fault: Fault,
    /// Connections left before the fault reverts to `Fault::None`.
    remaining: Option<usize>,
    stopping: bool,
    /// Connections accepted under `Fault::Silent`.
    held: Vec<TcpStream>,
    /// Clones of every socket a connection thread is using, so shutdown can
    /// unblock reads and writes that would otherwise wait for the peer.
    live: HashMap<u64, TcpStream>,
    next_id: u64,
    workers: Vec<JoinHandle<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A connection thread that panicked must not take the whole server
        // (and the test's cleanup) down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a socket for shutdown; `None` if the server is stopping.
    fn track(self: &Arc<Self>, stream: &TcpStream) -> Option<Tracked> {
        let clone = stream.try_clone().ok()?;
        let mut state = self.lock();
        if state.stopping {
            return None;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.live.insert(id, clone);
        Some(Tracked {
            shared: Arc::clone(self),
            id,
        })
    }
}

/// Removes a socket from the shutdown list when its user is done with it.
pub(crate) struct Tracked {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.shared.lock().live.remove(&self.id);
    }
}

/// What a [`Service`] may ask of the server while handling a connection.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
}

impl Ctx {
    /// Waits up to `timeout`; returns `false` if the server is stopping
    /// (the caller should give up). Wakes early on shutdown.
    pub(crate) fn pause(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if state.stopping {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Registers an extra socket (say, a connection to a backend) to be shut
    /// down with the server. `None` if the server is already stopping.
    pub(crate) fn track(&self, stream: &TcpStream) -> Option<Tracked> {
        self.shared.track(stream)
    }
}

/// A loopback listener with an accept thread, a thread per connection and
/// a switchable [`Fault`]. Stops and joins everything on drop.
pub(crate) struct Acceptor {
    shared: Arc<Shared>,
    port: u16,
    accept_thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Binds 127.0.0.1 on a port the kernel picks and starts accepting.
    pub(crate) fn start(service: Arc<dyn Service>, fault: Fault) -> Acceptor {
        let listener = TcpListener::bind(SocketAddrV4::new(LOOPBACK, 0))
            .expect("bind a loopback listener for a test server");
        let port = listener
            .local_addr()
            .expect("read the test server's address")
            .port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault,
                remaining: None,
                stopping: false,
                held: Vec::new(),
                live: HashMap::new(),
                next_id: 0,
                workers: Vec::new(),
            }),
            changed: Condvar::new(),
            connections: AtomicUsize::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("test-server-{port}"))
            .spawn(move || accept_loop(listener, accept_shared, service))
            .expect("spawn the accept thread");
        Acceptor {
            shared,
            port,
            accept_thread: Some(accept_thread),
        }
    }

    /// The port the server listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Applies `fault` to every connection from now on.
    pub(crate) fn set_fault(&self, fault: Fault) {
        self.set(fault, None);
    }

    /// Applies `fault` to the next `connections` connections, then reverts
    /// to [`Fault::None`] by itself.
    pub(crate) fn set_fault_for(&self, fault: Fault, connections: usize) {
        if connections == 0 {
            self.set(Fault::None, None);
        } else {
            self.set(fault, Some(connections));
        }
    }

    fn set(&self, fault: Fault, remaining: Option<usize>) {
        let released = {
            let mut state = self.shared.lock();
            state.fault = fault;
            state.remaining = remaining;
            std::mem::take(&mut state.held)
        };
        // Closed outside the lock; their requests were never read, so the
        // clients see a reset.
        drop(released);
        self.shared.changed.notify_all();
    }

    /// The fault the next connection will get.
    pub(crate) fn fault(&self) -> Fault {
        self.shared.lock().fault
    }

    /// Connections accepted so far, whatever the fault.
    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Stops accepting, closes every connection and joins all threads.
    /// Idempotent; also done on drop.
    pub(crate) fn shutdown(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        let held = {
            let mut state = self.shared.lock();
            state.stopping = true;
            for stream in state.live.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut state.held)
        };
        drop(held);
        self.shared.changed.notify_all();
        // accept() cannot be interrupted with std alone; a connection of our
        // own wakes it, and it then sees `stopping`. If this connect fails,
        // the listener is already gone and the thread is not in accept().
        let _ = TcpStream::connect_timeout(&super::loopback(self.port), Duration::from_secs(5));
        let _ = accept_thread.join();
        let workers = std::mem::take(&mut self.shared.lock().workers);
        for worker in workers {
            let _ = worker.join();
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, service: Arc<dyn Service>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue;
            }
            // Anything else (out of descriptors, ...) would repeat forever;
            // stop serving and let the test fail visibly.
            Err(_) => return,
        };
        let mut state = shared.lock();
        if state.stopping {
            return;
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let fault = state.fault;
        if let Some(left) = state.remaining.as_mut() {
            *left -= 1;
            if *left == 0 {
                state.fault = Fault::None;
                state.remaining = None;
            }
        }
        if fault == Fault::Silent {
            state.held.push(stream);
            continue;
        }
        // Registered here, under the lock that shutdown also takes, so no
        // connection can slip past shutdown's sweep of live sockets.
        let Some(tracked) = stream.try_clone().ok().map(|clone| {
            let id = state.next_id;
            state.next_id += 1;
            state.live.insert(id, clone);
            Tracked {
                shared: Arc::clone(&shared),
                id,
            }
        }) else {
            continue;
        };
        let ctx = Ctx {
            shared: Arc::clone(&shared),
        };
        let service = Arc::clone(&service);
        let spawned = thread::Builder::new()
            .name("test-server-conn".into())
            .spawn(move || {
                handle(&*service, &ctx, stream, fault);
                drop(tracked);
            });
        // Finished threads are joined as we go so a long test does not pile
        // up handles.
        state.workers.retain(|worker| !worker.is_finished());
        if let Ok(worker) = spawned {
            state.workers.push(worker);
        }
    }
}

fn handle(service: &dyn Service, ctx: &Ctx, stream: TcpStream, fault: Fault) {
    match fault {
        Fault::None => service.serve(ctx, stream),
        Fault::Status500 => service.fail(ctx, stream),
        Fault::Reset => reset(stream),
        Fault::Close => close_politely(stream),
        // Held by the accept loop; never dispatched here.
        Fault::Silent => {}
        Fault::Trickle => {
            if service.trickle_preamble(ctx, &stream).is_ok() {
                trickle(ctx, stream);
            }
        }
    }
}

/// Bytes sent by [`Fault::Trickle`]: the header of a 65520-byte pkt-line,
/// then its never-ending payload.
fn trickle_byte(index: usize) -> u8 {
    const HEADER: &[u8] = b"fff0";
    HEADER.get(index).copied().unwrap_or(b'0')
}

fn trickle(ctx: &Ctx, mut stream: TcpStream) {
    let mut sent = 0usize;
    loop {
        // A write fails once the client has gone away.
        if stream.write_all(&[trickle_byte(sent)]).is_err() {
            return;
        }
        sent = sent.saturating_add(1);
        if !ctx.pause(Duration::from_secs(1)) {
            return;
        }
    }
}

/// Closes with RST: see [`Fault::Reset`].
fn reset(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.peek(&mut [0u8; 1]);
    drop(stream);
}

/// Closes with FIN after draining what the client sent, so no unread data
/// turns the close into a reset.
pub(crate) fn close_politely(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// A git:// server that misbehaves according to a switchable [`Fault`].
///
/// Built with [`FaultServer::in_front_of`], it relays connections to a
/// real server (a [`super::GitDaemon`]) while the fault is
/// [`Fault::None`], so a test can break git:// for a while and then heal it.
pub struct FaultServer {
    acceptor: Acceptor,
}

struct GitFaults {
    backend: Option<u16>,
    /// Bytes a second the backend's answers are relayed at, at most; `None`: as fast as they
    /// come.
    rate: Option<u64>,
}

impl Service for GitFaults {
    fn serve(&self, ctx: &Ctx, stream: TcpStream) {
        match self.backend {
            Some(port) => relay(ctx, stream, port, self.rate),
            None => close_politely(stream),
        }
    }

    fn fail(&self, _ctx: &Ctx, mut stream: TcpStream) {
        // Read the request first so git is waiting for a reply; one read is
        // enough since the request is a single small pkt-line.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.read(&mut [0u8; 1024]);
        let message = "ERR gitfeed test server: injected failure\n";
        let packet = format!("{:04x}{message}", message.len() + 4);
        let _ = stream.write_all(packet.as_bytes());
        close_politely(stream);
    }

    fn trickle_preamble(&self, _ctx: &Ctx, _stream: &TcpStream) -> io::Result<()> {
        Ok(())
    }
}

/// Copies bytes both ways between `client` and the backend on `port` until
/// both directions are finished; what the backend sends goes at `rate` bytes
/// a second at most.
fn relay(ctx: &Ctx, client: TcpStream, port: u16, rate: Option<u64>) {
    let Ok(backend) = TcpStream::connect(super::loopback(port)) else {
        return close_politely(client);
    };
    let Some(_tracked) = ctx.track(&backend) else {
        return;
    };
    thread::scope(|scope| {
        scope.spawn(|| {
            let _ = io::copy(&mut &client, &mut &backend);
            let _ = backend.shutdown(Shutdown::Write);
        });
        let _ = match rate {
            Some(rate) => copy_slowly(ctx, &backend, &client, rate),
            None => io::copy(&mut &backend, &mut &client),
        };
        let _ = client.shutdown(Shutdown::Write);
    });
}

/// Copies `from` to `to` in slices of a tenth of `rate`, each sent when the
/// bytes before it have taken their time at `rate` bytes a second.
fn copy_slowly(ctx: &Ctx, from: &TcpStream, to: &TcpStream, rate: u64) -> io::Result<u64> {
    let started = Instant::now();
    let mut buf = vec![0u8; (rate / 10).max(1) as usize];
    let mut sent = 0u64;
    loop {
        let n = (&*from).read(&mut buf)?;
        if n == 0 {
            return Ok(sent);
        }
        let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        if !ctx.pause(due.saturating_duration_since(Instant::now())) {
            return Ok(sent);
        }
        (&*to).write_all(&buf[..n])?;
        sent += n as u64;
    }
}

impl FaultServer {
    /// A git:// server with nothing behind it, starting with `fault`.
    pub fn start(fault: Fault) -> FaultServer {
        let service = GitFaults {
            backend: None,
            rate: None,
        };
        FaultServer {
            acceptor: Acceptor::start(Arc::new(service), fault),
        }
    }

    /// A git:// server that relays to 127.0.0.1:`backend_port` (for example
    /// [`super::GitDaemon::port`]) under [`Fault::None`] and misbehaves
    /// otherwise. Starts with `fault`.
    pub fn in_front_of(backend_port: u16, fault: Fault) -> FaultServer {
        let service = GitFaults {
            backend: Some(backend_port),
            rate: None,
        };
        FaultServer {
            acceptor: Acceptor::start(Arc::new(service), fault),
        }
    }

    /// A git:// server that relays to 127.0.0.1:`backend_port` and sends
    /// what the backend answers at `bytes_per_second` at most: a clone of a
    /// few MiB then takes seconds on any machine.
    pub fn throttled(backend_port: u16, bytes_per_second: u64) -> FaultServer {
        let service = GitFaults {
            backend: Some(backend_port),
            rate: Some(bytes_per_second),
        };
        FaultServer {
            acceptor: Acceptor::start(Arc::new(service), Fault::None),
        }
    }

    /// `git://127.0.0.1:<port>/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
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
    /// to [`Fault::None`] by itself. Held silent connections stay open
    /// until the next `set_fault*` call or drop.
    pub fn set_fault_for(&self, fault: Fault, connections: usize) {
        self.acceptor.set_fault_for(fault, connections);
    }

    /// The fault the next connection will get.
    pub fn fault(&self) -> Fault {
        self.acceptor.fault()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.acceptor.connections()
    }

    /// Stops the server and joins its threads; also done on drop.
    pub fn shutdown(&mut self) {
        self.acceptor.shutdown();
    }
}

/// A `<scheme>://127.0.0.1:<port>/repo.git` URL on a port where nothing
/// listens, so connecting is refused.
///
/// The port was free a moment ago (bound and released); another process
/// could take it later, which on a test machine is unlikely enough.
pub fn refused_url(scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}/repo.git", super::free_port())
}
