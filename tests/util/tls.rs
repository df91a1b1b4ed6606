//! Smart HTTP behind TLS: a [`super::HttpServer`] with a TLS front on another loopback port,
//! whose certificate a test CA made for this server alone has signed.
//!
//! The certificates are made with the `openssl` command line when the server starts, so
//! nothing secret or expiring is kept in the repository; clients are told the CA through
//! [`HttpsServer::ca_file`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::HttpServer;
use super::fault::{Acceptor, Ctx, Fault, Service};

/// A client that stalls this long in the handshake or between reads is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `https://127.0.0.1:<port>/`: TLS in front of an [`HttpServer`] serving the same
/// repositories. Stops and joins its threads on drop.
pub struct HttpsServer {
    acceptor: Acceptor,
    http: HttpServer,
    ca_file: PathBuf,
    /// Holds the certificates; removed on drop.
    _dir: tempfile::TempDir,
}

impl HttpsServer {
    /// Serves the repositories below `root` over HTTPS; ready when this returns.
    pub fn start(root: &Path) -> HttpsServer {
        let dir = super::unique_dir();
        let (certs, key) = make_certificates(dir.path());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the test certificate and key match");
        let http = HttpServer::start(root);
        let front = TlsFront {
            config: Arc::new(config),
            backend: http.port(),
        };
        HttpsServer {
            acceptor: Acceptor::start(Arc::new(front), Fault::None),
            http,
            ca_file: dir.path().join("ca.pem"),
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:<port>/<name>`, `name` being relative to the root.
    pub fn url(&self, name: &str) -> String {
        format!(
            "https://127.0.0.1:{}/{}",
            self.acceptor.port(),
            name.trim_start_matches('/')
        )
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The plain HTTP server behind the TLS front, with its request log.
    pub fn http(&self) -> &HttpServer {
        &self.http
    }
}

/// Makes a CA and a certificate for `127.0.0.1` signed by it in `dir` (`ca.pem`, `server.pem`,
/// `server.key`); returns the server's chain and key.
fn make_certificates(dir: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (is it installed?)");
        assert!(
            out.status.success(),
            "openssl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p256 = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &p256,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=gitfeed test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &p256,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the certificate extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .expect("read server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse server.pem");
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).expect("parse server.key");
    (certs, key)
}

/// Ends TLS and relays the plain bytes to the HTTP server on `backend`.
struct TlsFront {
    config: Arc<rustls::ServerConfig>,
    backend: u16,
}

impl Service for TlsFront {
    fn serve(&self, ctx: &Ctx, client: TcpStream) {
        let _ = self.relay(ctx, &client);
        super::fault::close_politely(client);
    }

    fn fail(&self, ctx: &Ctx, stream: TcpStream) {
        // Faults are injected on the plain server behind; the front only relays.
        self.serve(ctx, stream);
    }

    fn trickle_preamble(&self, _ctx: &Ctx, _stream: &TcpStream) -> io::Result<()> {
        Ok(())
    }
}

impl TlsFront {
    fn relay(&self, ctx: &Ctx, client: &TcpStream) -> io::Result<()> {
        client.set_read_timeout(Some(READ_TIMEOUT))?;
        client.set_nodelay(true)?;
        let mut tls =
            rustls::ServerConnection::new(Arc::clone(&self.config)).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut &*client)?;
        }
        let backend = TcpStream::connect(super::loopback(self.backend))?;
        backend.set_nodelay(true)?;
        let Some(_tracked) = ctx.track(&backend) else {
            return Ok(());
        };
        // Both directions use the one TLS session; each holds it only while it turns records
        // into bytes or bytes into records, never while it waits for a socket.
        let tls = Mutex::new(tls);
        let lock = || tls.lock().unwrap_or_else(PoisonError::into_inner);
        thread::scope(|scope| {
            scope.spawn(|| {
                let _ = client_to_backend(client, &backend, &tls);
                let _ = backend.shutdown(Shutdown::Write);
            });
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = match (&backend).read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                let mut tls = lock();
                if tls.writer().write_all(&buffer[..read]).is_err() {
                    break;
                }
                if flush(&mut tls, client).is_err() {
                    break;
                }
            }
            let mut tls = lock();
            tls.send_close_notify();
            let _ = flush(&mut tls, client);
            drop(tls);
            let _ = client.shutdown(Shutdown::Write);
        });
        Ok(())
    }
}

/// Decrypts what the client sends and passes it to the backend until the client is done.
fn client_to_backend(
    client: &TcpStream,
    backend: &TcpStream,
    tls: &Mutex<rustls::ServerConnection>,
) -> io::Result<()> {
    let mut buffer = vec![0; 64 * 1024];
    // The handshake may have read the first request already.
    let mut read = 0;
    loop {
        let mut plain = Vec::new();
        let mut closed = false;
        {
            let mut tls = tls.lock().unwrap_or_else(PoisonError::into_inner);
            let mut records = &buffer[..read];
            loop {
                if !records.is_empty() {
                    tls.read_tls(&mut records)?;
                }
                let state = tls.process_new_packets().map_err(io::Error::other)?;
                closed |= state.peer_has_closed();
                match tls.reader().read_to_end(&mut plain) {
                    Ok(_) => closed = true,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
                if records.is_empty() {
                    break;
                }
            }
            flush(&mut tls, client)?;
        }
        (&*backend).write_all(&plain)?;
        if closed {
            return Ok(());
        }
        read = (&*client).read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
    }
}

/// Sends every TLS record the session has ready.
fn flush(tls: &mut rustls::ServerConnection, client: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        tls.write_tls(&mut &*client)?;
    }
    Ok(())
}
