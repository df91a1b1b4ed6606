//! Connections the driver can end: git:// over a socket gitfeed owns, and the cancel handle.

use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::protocol::transport::Protocol;
use gix::protocol::transport::client::git::ConnectMode;
use gix::protocol::transport::client::git::blocking_io::Connection;

use super::FetchError;

/// Ends one attempt from another thread.
///
/// gix checks the interrupt flag only while receiving a pack; a handshake blocked on a silent
/// server ignores it. So the handle also keeps a clone of the git:// socket and shuts it down,
/// which makes the blocked read return at once.
#[derive(Debug, Default)]
pub(crate) struct Cancel {
    interrupted: AtomicBool,
    socket: Mutex<Option<TcpStream>>,
}

impl Cancel {
    /// The flag handed to gix.
    pub fn flag(&self) -> &AtomicBool {
        &self.interrupted
    }

    /// True once [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Interrupts the attempt: sets the flag and shuts down its socket, if any.
    pub fn cancel(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        if let Ok(socket) = self.socket.lock()
            && let Some(socket) = socket.as_ref()
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Drops the socket clone, so the attempt's descriptor is freed as soon as gix drops its own.
    pub fn release(&self) {
        if let Ok(mut socket) = self.socket.lock() {
            socket.take();
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
    cancel: &Cancel,
) -> Result<Option<Connection<TcpStream, TcpStream>>, FetchError> {
    let Ok(parsed) = gix::url::parse(url.as_bytes().as_bstr()) else {
        return Ok(None);
    };
    if parsed.scheme != gix::url::Scheme::Git {
        return Ok(None);
    }
    let host = parsed
        .host()
        .ok_or_else(|| FetchError::permanent(format!("no host in `{url}`")))?
        .to_owned();
    let port = parsed.port.unwrap_or(9418);
    let addresses = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|err| FetchError::transient(format!("cannot resolve `{host}`: {err}")))?;
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
    let stream = connected.ok_or_else(|| {
        FetchError::transient(match last_error {
            Some(err) => format!("cannot connect to {host}:{port}: {err}"),
            None => format!("`{host}` has no address"),
        })
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
            FetchError::transient(format!(
                "cannot set up the connection to {host}:{port}: {err}"
            ))
        })?;
    cancel.watch(watched);
    Ok(Some(Connection::new(
        stream,
        writer,
        Protocol::V2,
        parsed.path.clone(),
        Some((host, parsed.port)),
        ConnectMode::Daemon,
        false,
    )))
}
