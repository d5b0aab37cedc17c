//! A TLS line server (futures-rustls) on smol, with graceful shutdown and
//! hot restart: the README's TLS recipe as a program.
//!
//! ```text
//! cargo run --example tls -- --listen 127.0.0.1:7443 --pid-file /tmp/tls.pid
//! openssl s_client -quiet -CAfile tests/tls/ca.pem -connect localhost:7443
//! kill -HUP $(cat /tmp/tls.pid)   # hot restart: new connections, a new pid
//! ```
//!
//! Each line is answered with this generation's pid; a line `hold` once
//! more when this generation drains. A connection the drain ends, idle or
//! between requests, gets `close_notify` before the transport's close, so
//! the client sees a clean end of the session, never a truncation.
//!
//! The listener does **not** opt in to the live handoff: a TLS session's
//! keys live in this process, and a raw socket handed to the next
//! generation would be garbage to it. Idle connections are closed
//! gracefully instead, as above.
//!
//! The certificate is the test one in `tests/tls/` (for `localhost` and
//! 127.0.0.1, signed by `ca.pem`): bring your own anywhere else.

#[path = "common/args.rs"]
mod args;

use std::io::{self, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::io::BufReader;
use futures_lite::{future, AsyncBufReadExt, AsyncWriteExt};
use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::{self, ServerConfig};
use futures_rustls::TlsAcceptor;
use seamless::conn::Async;
use seamless::signals::SignalHandler;
use seamless::{Shutdown, Tracked, Tracker, Upgrader};

use args::{is_hold, reply, Args, HOLD_AT_MOST};

fn main() -> ExitCode {
    let args = Args::parse("127.0.0.1:7443");
    match smol::block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[{}] error: {e}", std::process::id());
            ExitCode::FAILURE
        }
    }
}

fn acceptor() -> Result<TlsAcceptor, Box<dyn std::error::Error>> {
    let chain = vec![CertificateDer::from_pem_slice(include_bytes!(
        "../tests/tls/server.pem"
    ))?];
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../tests/tls/server.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let acceptor = acceptor()?;
    let shutdown = args.shutdown();
    let upgrader = Upgrader::new(&shutdown, args.options())?;
    let tracker = Tracker::new(&shutdown);
    let listener = upgrader.tcp_listener("tls", args.listen.as_str())?;
    let addr = listener.local_addr()?;
    let mut listener = tracker.listen(Async::new(listener)?);
    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());
    upgrader.ready()?;
    println!("listening on {addr}");
    io::stdout().flush()?;
    smol::spawn(async move {
        loop {
            eprintln!("[{pid}] {}", signals.next().await);
        }
    })
    .detach();

    loop {
        match listener.accept().await {
            Ok(Some((conn, _))) => {
                let (acceptor, shutdown) = (acceptor.clone(), shutdown.clone());
                smol::spawn(async move {
                    if let Err(e) = serve(conn, acceptor, shutdown).await {
                        eprintln!("[{pid}] connection error: {e}");
                    }
                })
                .detach()
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("[{pid}] accept error: {e}");
                async_io::Timer::after(Duration::from_millis(50)).await;
            }
        }
    }
    shutdown.stopped().await;
    eprintln!("[{pid}] stopped");
    Ok(())
}

async fn serve(
    conn: Tracked<Async<TcpStream>>,
    acceptor: TlsAcceptor,
    shutdown: Shutdown,
) -> io::Result<()> {
    // Taken before the stream disappears into the TLS layer.
    let handle = conn.handle();
    let tls = acceptor.accept(conn).await?;
    // The handshake was no request: from here the first-byte grace counts.
    handle.handshake_done();
    let mut tls = BufReader::new(tls);
    let mut line = String::new();
    loop {
        line.clear();
        let read = future::or(async { Some(tls.read_line(&mut line).await) }, async {
            handle.ending().await;
            None
        });
        match read.await {
            Some(Ok(0)) => return Ok(()),
            Some(Ok(_)) if is_hold(&line) => {
                // A request spanning a hot restart: answered once this
                // generation drains. Busy meanwhile, so the drain waits.
                let _busy = handle.busy();
                let tls = tls.get_mut();
                tls.write_all(reply("holding").as_bytes()).await?;
                tls.flush().await?;
                future::or(shutdown.draining(), async {
                    async_io::Timer::after(HOLD_AT_MOST).await;
                })
                .await;
                tls.write_all(reply(&line).as_bytes()).await?;
                tls.flush().await?;
            }
            Some(Ok(_)) => {
                let tls = tls.get_mut();
                tls.write_all(reply(&line).as_bytes()).await?;
                tls.flush().await?;
            }
            Some(Err(e)) => return Err(e),
            // The drain ends this connection: `close_notify`, then the
            // tracker's lingering close.
            None => return tls.get_mut().close().await,
        }
    }
}
