//! systemd's readiness and watchdog notifications (`sd_notify`): one datagram per message to
//! the socket named by `NOTIFY_SOCKET`, so no library is needed.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Where to send notifications, when gitfeed runs under a service manager that asks for them.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// How often to tell the watchdog gitfeed is alive: half its timeout, as systemd advises.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, with the watchdog of `WATCHDOG_USEC` when
    /// `WATCHDOG_PID` is unset or names this process. `None` outside a service manager.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET").filter(|path| !path.is_empty())?;
        let address = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => abstract_address(name),
            None => SocketAddr::from_pathname(&path),
        };
        let address = address
            .inspect_err(|err| log::warn!("NOTIFY_SOCKET is not a usable address: {err}"))
            .ok()?;
        let socket = UnixDatagram::unbound()
            .inspect_err(|err| log::warn!("cannot notify the service manager: {err}"))
            .ok()?;
        let for_us = std::env::var("WATCHDOG_PID")
            .map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(|usec| Duration::from_micros(usec) / 2);
        Some(Notifier {
            socket,
            address,
            watchdog,
        })
    }

    /// Sends one message, like `READY=1`. A service manager that is gone is not an error
    /// worth more than a debug line.
    pub fn send(&self, message: &str) {
        if let Err(err) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            log::debug!("cannot notify the service manager ({message}): {err}");
        }
    }

    /// Reports readiness once the feed runs, then feeds the watchdog for as long as the task
    /// runs, that is as long as the feed's loop does. Ready means the sources are added and
    /// followed, not that they are reachable: a device that starts before its network is
    /// ready all the same, and its sources retry.
    pub async fn run(self) {
        self.send("READY=1");
        let Some(every) = self.watchdog else {
            return;
        };
        loop {
            self.send("WATCHDOG=1");
            gitfeed::sleep_until(Instant::now() + every).await;
        }
    }
}

/// An address in Linux's abstract socket namespace, which `NOTIFY_SOCKET` names with a leading
/// `@`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}
