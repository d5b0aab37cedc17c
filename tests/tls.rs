//! TLS (futures-rustls, ring provider) over `Tracked`, on 127.0.0.1.
//!
//! - An idle TLS connection that the drain ends says goodbye first: the
//!   server's `ConnHandle::ending` resolves, it sends `close_notify` and
//!   closes, and the client reads a clean TLS EOF (no truncation error, no
//!   reset). The server's read loop ends cleanly.
//! - A connection that has finished its handshake but sent no request is
//!   New again after `ConnHandle::handshake_done`: the drain gives it the
//!   first-byte grace, not the idle grace, and a request sent within it is
//!   served.
//!
//! The certificates in `tests/tls/` are for these tests only: a CA
//! (`ca.pem`, its key discarded) and a server certificate for `localhost`
//! and 127.0.0.1 (`server.pem`, `server.key`), valid 2020-2120. Made with
//! `openssl ca` (P-256).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use futures_rustls::{TlsAcceptor, TlsConnector};
use seamless::conn::{Config, ConnHandle, Counts, Ending};
use seamless::{Shutdown, Tracked, TrackedListener, Tracker};
use smol::channel;

mod common;
use common::{counts, wait_counts, wait_exact, within};

type Conn = Tracked<Async<TcpStream>>;
type ClientTls = futures_rustls::client::TlsStream<Async<TcpStream>>;

/// Long enough that no test reaches it unless it means to.
const DEADLINE: Duration = Duration::from_secs(15);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor() -> TlsAcceptor {
    let certs =
        vec![CertificateDer::from_pem_slice(include_bytes!("tls/server.pem")).expect("server.pem")];
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("tls/server.key")).expect("server.key");
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    TlsAcceptor::from(Arc::new(config))
}

fn connector() -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(include_bytes!("tls/ca.pem")).expect("ca.pem"))
        .expect("CA");
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

struct Server {
    shutdown: Shutdown,
    tracker: Tracker,
    listener: TrackedListener<Async<TcpListener>>,
    addr: SocketAddr,
}

fn server(config: Config) -> Server {
    let shutdown = Shutdown::new();
    let tracker = Tracker::with_config(&shutdown, config);
    let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
    let addr = listener.get_ref().local_addr().expect("local_addr");
    Server {
        listener: tracker.listen(listener),
        shutdown,
        tracker,
        addr,
    }
}

/// How the server's loop on one connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The client closed with `close_notify`: a read returned `Ok(0)`.
    ClientClosed,
    /// The drain ended the connection; we said goodbye and closed cleanly.
    SaidGoodbye,
}

/// The server side: TLS handshake, then echoes lines until the client
/// closes or the drain ends the connection, which it does the way a TLS
/// server must: `close_notify`, then the transport's lingering close.
/// `handshaken` learns when the handshake is done.
async fn serve_tls(
    conn: Conn,
    acceptor: &TlsAcceptor,
    handshaken: channel::Sender<()>,
) -> io::Result<(End, usize)> {
    // Taken before the stream disappears into the TLS layer.
    let handle: ConnHandle = conn.handle();
    let tls = acceptor.accept(conn).await?;
    // The handshake's reads and writes were no request and response.
    handle.handshake_done();
    handshaken.send(()).await.expect("handshaken");
    let mut tls = BufReader::new(tls);
    let mut served = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let read = future::or(async { Some(tls.read_line(&mut line).await) }, async {
            let ending = handle.ending().await;
            assert_eq!(ending, Ending::Close);
            assert!(ending.says_goodbye());
            None
        });
        match read.await {
            Some(Ok(0)) => return Ok((End::ClientClosed, served)),
            Some(Ok(_)) => {
                tls.get_mut().write_all(line.as_bytes()).await?;
                served += 1;
            }
            Some(Err(e)) => return Err(e),
            None => {
                tls.get_mut().close().await?;
                return Ok((End::SaidGoodbye, served));
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> ClientTls {
    let tcp = within("connect", Async::<TcpStream>::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    within("TLS handshake", connector().connect(name, tcp))
        .await
        .expect("TLS handshake")
}

async fn ask(client: &mut ClientTls, line: &str) {
    client.write_all(line.as_bytes()).await.expect("send");
    client.flush().await.expect("flush");
    let mut buf = vec![0; line.len()];
    within("reply", client.read_exact(&mut buf))
        .await
        .expect("reply");
    assert_eq!(String::from_utf8_lossy(&buf), line);
}

/// A clean TLS end: `close_notify`, then EOF. A bare FIN would read as an
/// `UnexpectedEof` error (truncation), a reset as `ConnectionReset`.
async fn expect_close_notify(client: &mut ClientTls) {
    let mut rest = Vec::new();
    match within("close_notify", client.read_to_end(&mut rest)).await {
        Ok(_) => assert!(rest.is_empty(), "bytes before the close: {rest:?}"),
        Err(e) => panic!("expected close_notify and EOF, got {e} ({:?})", e.kind()),
    }
}

/// No RST reached the client. Call once the server side has closed.
fn assert_no_reset(client: &ClientTls) {
    let error = client.get_ref().0.get_ref().take_error().expect("SO_ERROR");
    assert!(
        error.is_none(),
        "the server reset the connection: {error:?}"
    );
}

/// An idle TLS connection ended by the drain gets `close_notify` before our
/// FIN: the client reads a clean EOF, no truncation, no reset; the server's
/// loop ends cleanly and its close returns `Ok`.
async fn idle_tls_connection_says_goodbye() {
    let linger = Duration::from_secs(5);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(
        Config::default()
            .idle_grace(Duration::from_millis(50))
            .linger(linger),
    );
    let acceptor = acceptor();
    let (handshaken, handshake_done) = channel::unbounded();
    let server = async {
        let (conn, _) = within("accept", listener.accept())
            .await
            .expect("accept")
            .expect("not draining yet");
        serve_tls(conn, &acceptor, handshaken).await
    };
    let client = async {
        let mut client = connect(addr).await;
        within("handshake done", handshake_done.recv())
            .await
            .expect("handshaken");
        ask(&mut client, "hello\n").await;
        wait_exact(&tracker, counts(0, 0, 1, 0)).await;

        let start = Instant::now();
        shutdown.graceful(DEADLINE);
        expect_close_notify(&mut client).await;
        assert!(
            start.elapsed() < linger,
            "the goodbye came only after {:?}: the fallback, not the handle",
            start.elapsed()
        );
        // Our own close_notify and FIN end the server's lingering close.
        client.close().await.expect("client close");
        within("stopped", shutdown.stopped()).await;
        assert!(start.elapsed() < DEADLINE / 2, "held until the deadline");
        client
    };
    let (served, client) = within("scenario", future::zip(server, client)).await;
    assert_eq!(served.expect("server"), (End::SaidGoodbye, 1));
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// A connection that has finished its TLS handshake but sent no request is
/// New (after `handshake_done`): the drain gives it the first-byte grace, so
/// it is still open well after the idle grace, and a request it sends within
/// the first-byte grace is served; then it gets its goodbye.
async fn handshake_only_connection_gets_first_byte_grace() {
    let idle_grace = Duration::from_millis(50);
    let first_byte_grace = Duration::from_secs(10);
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(
        Config::default()
            .idle_grace(idle_grace)
            .first_byte_grace(first_byte_grace),
    );
    let acceptor = acceptor();
    let (handshaken, handshake_done) = channel::unbounded();
    let server = async {
        let (conn, _) = within("accept", listener.accept())
            .await
            .expect("accept")
            .expect("not draining yet");
        serve_tls(conn, &acceptor, handshaken).await
    };
    let client = async {
        let mut client = connect(addr).await;
        within("handshake done", handshake_done.recv())
            .await
            .expect("handshaken");
        // The handshake counts as no request: New, and it stays New while
        // the server waits for the first one.
        wait_exact(&tracker, counts(1, 0, 0, 0)).await;

        let start = Instant::now();
        shutdown.graceful(DEADLINE);
        // An observation window many idle graces long: nothing may happen.
        Timer::after(idle_grace * 10).await;
        assert_eq!(
            tracker.counts(),
            counts(1, 0, 0, 0),
            "closed as if idle after the handshake"
        );
        ask(&mut client, "first request\n").await;
        assert!(
            start.elapsed() < first_byte_grace,
            "the test itself was too slow"
        );
        expect_close_notify(&mut client).await;
        client.close().await.expect("client close");
        within("stopped", shutdown.stopped()).await;
        client
    };
    let (served, client) = within("scenario", future::zip(server, client)).await;
    assert_eq!(served.expect("server"), (End::SaidGoodbye, 1));
    assert_no_reset(&client);
    assert_eq!(tracker.counts(), Counts::default());
}

/// A request in flight on a TLS connection when the drain starts is
/// answered; the connection then goes idle and gets its goodbye.
async fn busy_tls_request_completes_then_goodbye() {
    let Server {
        shutdown,
        tracker,
        mut listener,
        addr,
    } = server(Config::default().idle_grace(Duration::from_millis(50)));
    let acceptor = acceptor();
    let (handshaken, handshake_done) = channel::unbounded();
    let server = async {
        let (conn, _) = within("accept", listener.accept())
            .await
            .expect("accept")
            .expect("not draining yet");
        serve_tls(conn, &acceptor, handshaken).await
    };
    let client = async {
        let mut client = connect(addr).await;
        within("handshake done", handshake_done.recv())
            .await
            .expect("handshaken");
        // Half a line: the server has data and waits for the rest.
        client.write_all(b"in fli").await.expect("send");
        client.flush().await.expect("flush");
        wait_exact(&tracker, counts(0, 1, 0, 0)).await;
        shutdown.graceful(DEADLINE);
        wait_counts(&tracker, "drain seen", |_| shutdown.is_draining()).await;
        assert_eq!(tracker.counts(), counts(0, 1, 0, 0));
        client.write_all(b"ght\n").await.expect("send");
        client.flush().await.expect("flush");
        let mut reply = [0; 10];
        within("reply", client.read_exact(&mut reply))
            .await
            .expect("reply");
        assert_eq!(&reply, b"in flight\n");
        expect_close_notify(&mut client).await;
        client.close().await.expect("client close");
        within("stopped", shutdown.stopped()).await;
        client
    };
    let (served, client) = within("scenario", future::zip(server, client)).await;
    assert_eq!(served.expect("server"), (End::SaidGoodbye, 1));
    assert_no_reset(&client);
}

macro_rules! executors {
    ($($scenario:ident),* $(,)?) => {
        mod async_io_block_on {
            $(#[test] fn $scenario() { async_io::block_on(super::$scenario()) })*
        }
        mod smol_executor {
            $(#[test] fn $scenario() { smol::block_on(smol::spawn(super::$scenario())) })*
        }
    };
}

executors!(
    idle_tls_connection_says_goodbye,
    handshake_only_connection_gets_first_byte_grace,
    busy_tls_request_completes_then_goodbye,
);
