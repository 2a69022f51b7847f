//! HTTPS for the emulator (`qbo-emulator --tls`), so the bridge's TLS is exercised as it is
//! against Intuit. A certificate authority of its own, made once per data folder and kept
//! there (`tls/ca.pem` is what a client trusts: the bridge's `--qbo-ca`), and a server
//! certificate it signed for 127.0.0.1 and localhost.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that connects and never finishes its handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes finished and not yet taken by the server.
const ACCEPTED_MAX: usize = 64;

/// The emulator's certificates, in `dir/tls`.
pub struct Certificates {
    pub ca_file: PathBuf,
    acceptor: TlsAcceptor,
}

fn made(dir: &Path) -> Result<(), String> {
    let err = |e: rcgen::Error| format!("making the emulator's TLS certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tillmesh QBO emulator CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut server =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(err)?;
    server
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    server.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The server's key last: its presence says the set is whole.
    for (name, text) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

impl Certificates {
    /// Loads the certificates kept in `data/tls`, making them the first time: a client that
    /// trusted the CA once trusts every later run on the same folder.
    pub fn load_or_make(data: &Path) -> Result<Certificates, String> {
        let dir = data.join("tls");
        if !dir.join("server.key").exists() {
            made(&dir)?;
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let bad = |name: &str, e: rustls::pki_types::pem::Error| {
            format!(
                "{}: {e}; delete the folder {} and start again to make new certificates",
                dir.join(name).display(),
                dir.display()
            )
        };
        let chain = CertificateDer::pem_slice_iter(&read("server.pem")?)
            .chain(CertificateDer::pem_slice_iter(&read("ca.pem")?))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("server.pem", e))?;
        let key = PrivateKeyDer::from_pem_slice(&read("server.key")?)
            .map_err(|e| bad("server.key", e))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("the emulator's TLS certificate: {e}"))?;
        // The API is served over HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Certificates {
            ca_file: dir.join("ca.pem"),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// A listener that hands the server connections whose TLS handshake is done. Handshakes
    /// run side by side, so a slow client holds up nobody.
    pub fn listen(&self, tcp: TcpListener) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(ACCEPTED_MAX);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                // Once the server is gone, so is the port.
                let accepted = tokio::select! {
                    a = tcp.accept() => a,
                    _ = tx.closed() => break,
                };
                let Ok((stream, peer)) = accepted else {
                    // Out of descriptors and the like: pause rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
