//! The server: seamless owns the listener and the connections' lifetimes,
//! hyper speaks HTTP/1.1 on each tracked connection.
//!
//! The whole recipe, beyond a plain hyper-on-smol server:
//!
//! 1. accept through a [`TrackedListener`](seamless::TrackedListener), so
//!    each connection is a [`Tracked`] stream, and hand that stream to hyper
//!    through smol-hyper's [`FuturesIo`];
//! 2. in the service, answer `connection: close` while draining
//!    ([`service::respond`]).
//!
//! Nothing else: no wrapper around the stream, no call to hyper's
//! `graceful_shutdown()`. seamless sees each connection's state through its
//! reads and writes: an idle keep-alive connection gets the idle grace and
//! then reads a clean EOF (hyper ends the connection as if the client had
//! closed it), a brand-new one gets the first-byte grace, a busy one is left
//! alone until its response is out.

use std::cell::Cell;
use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::future;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use seamless::conn::{Config, Counts};
use seamless::handoff::{Options, Upgrader};
use seamless::signals::{self, SignalHandler};
use seamless::{Shutdown, Tracked, TrackedListener, Tracker};
use seamless_test_support::events::{self, Event};
use smol::LocalExecutor;
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::args::Args;
use crate::{emit, service};

/// How often drain progress is reported.
const REPORT_EVERY: Duration = Duration::from_millis(100);
/// seamless's default first-byte grace (`conn::Config::first_byte_grace`),
/// which has no getter.
const DEFAULT_FIRST_BYTE_GRACE: Duration = Duration::from_secs(1);

/// Serves until the shutdown has stopped: after an upgrade or a SIGTERM,
/// once the last connection is gone or the drain deadline has passed.
pub fn run(args: Args) -> io::Result<()> {
    let started = Instant::now();
    // The coordinator owns the drain deadline, after an upgrade and on
    // SIGTERM alike.
    let shutdown = Shutdown::builder()
        .drain_timeout(args.drain_timeout)
        .build();
    // First, before anything else opens an fd: take what the parent passed.
    let mut options = Options::default().ready_timeout(args.ready_timeout);
    if let Some(path) = &args.pid_file {
        options = options.pid_file(path);
    }
    let upgrader = Upgrader::new(&shutdown, options).map_err(io::Error::other)?;
    let config = conn_config(&args)?;
    let tracker = Tracker::with_config(&shutdown, config);
    let http = http1_builder(&args);

    let listener = upgrader.tcp_listener("http", args.listen.as_str())?;
    let addr = listener.local_addr()?;
    let listener = tracker.listen(Async::new(listener)?);
    let mut signals = SignalHandler::new(&shutdown)?.upgrader(upgrader.clone());

    let how = if upgrader.has_parent() {
        "inherited"
    } else {
        "new socket"
    };
    log!("listening on {addr} ({how}), hyper http1");
    emit(|pid| Event::Listening {
        pid,
        addr,
        inherited: upgrader.has_parent(),
    });
    {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }
    // Only now: once we are ready, our parent stops accepting.
    upgrader.ready()?;
    log!("ready in {} ms", started.elapsed().as_millis());
    emit(|pid| Event::Ready {
        pid,
        ms: started.elapsed().as_millis() as u64,
    });

    let executor = LocalExecutor::new();
    let drain = Rc::new(DrainLog::default());
    smol::block_on(executor.run(async {
        let accepting = accept_loop(listener, &executor, &http, args.verbose);
        let reporting = tracker.report_drain(REPORT_EVERY, |counts| drain.report(counts));
        let handling_signals = async {
            loop {
                let event = signals.next().await;
                log!("{event}");
                emit(|pid| signal_event(&event, pid));
            }
        };
        // The accept loop ends when draining starts and the reporter when the
        // shutdown stops; the signal loop never ends. `stopped()` both waits
        // for the end and enforces the drain deadline, so it decides.
        let work = async {
            future::zip(accepting, reporting).await;
            future::pending::<()>().await
        };
        future::or(shutdown.stopped(), future::or(work, handling_signals)).await;
    }));
    drain.finish(&tracker.counts());
    log!("stopped");
    emit(|pid| Event::Stopped { pid });
    Ok(())
}

/// The event line for what the signal handler did.
fn signal_event(event: &signals::Event, pid: u32) -> Event {
    match event {
        signals::Event::Graceful { signal } | signals::Event::Immediate { signal } => {
            Event::Stopping {
                pid,
                signal: format!("{signal:?}"),
                immediate: matches!(event, signals::Event::Immediate { .. }),
            }
        }
        signals::Event::UpgradeStarted { signal } => Event::Upgrading {
            pid,
            signal: format!("{signal:?}"),
        },
        signals::Event::Upgraded { pid: child } => Event::Upgraded { pid, child: *child },
        signals::Event::UpgradeFailed(e) => Event::UpgradeFailed {
            pid,
            reason: e.to_string(),
        },
        other => Event::Notice {
            pid,
            text: other.to_string(),
        },
    }
}

/// seamless's tuning from the options.
fn conn_config(args: &Args) -> io::Result<Config> {
    let mut config = Config::default();
    if let Some(grace) = args.idle_grace {
        config = config.idle_grace(grace);
    }
    let first_byte_grace = args.first_byte_grace.unwrap_or(DEFAULT_FIRST_BYTE_GRACE);
    config = config.first_byte_grace(first_byte_grace);
    // hyper counts its header timeout from the connection's first read: a
    // shorter one would close a new connection inside seamless's first-byte
    // grace, the very request the grace is there to let in.
    if args.header_read_timeout < first_byte_grace {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--header-read-timeout-ms ({} ms) must not be shorter than the first-byte grace ({} ms)",
                args.header_read_timeout.as_millis(),
                first_byte_grace.as_millis()
            ),
        ));
    }
    Ok(config)
}

/// hyper's HTTP/1 settings.
///
/// hyper (1.4 and later) defaults to a 30 s `header_read_timeout` but only
/// enforces it when it has a timer, and panics if one is configured without
/// a timer. smol-hyper's [`SmolTimer`] (async-io's timer) makes it work, so a
/// client that never finishes its request head cannot hold a connection
/// forever; the drain does not rely on it.
fn http1_builder(args: &Args) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(SmolTimer::new())
        .header_read_timeout(args.header_read_timeout)
        .keep_alive(true);
    builder
}

async fn accept_loop(
    mut listener: TrackedListener<Async<TcpListener>>,
    executor: &LocalExecutor<'_>,
    http: &http1::Builder,
    verbose: bool,
) {
    loop {
        match listener.accept().await {
            Ok(Some((stream, peer))) => {
                if verbose {
                    log!("accepted {peer}");
                    emit(|pid| Event::Accepted { pid, peer });
                }
                let http = http.clone();
                executor
                    .spawn(async move { serve(&http, stream, peer, verbose).await })
                    .detach();
            }
            // Draining: this process takes no more connections.
            Ok(None) => return,
            // Usually transient (EMFILE, ECONNABORTED): back off a little.
            Err(e) => {
                log!("accept: {e}");
                emit(|pid| Event::AcceptFailed {
                    pid,
                    reason: e.to_string(),
                });
                Timer::after(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection with hyper until either side ends it.
async fn serve(
    http: &http1::Builder,
    stream: Tracked<Async<TcpStream>>,
    peer: SocketAddr,
    verbose: bool,
) {
    // The service reads the drain state from the connection's coordinator.
    let shutdown = stream.shutdown().clone();
    let service = service_fn(move |request| {
        if verbose {
            log!("request {} {} from {peer}", request.method(), request.uri());
            emit(|pid| Event::Request {
                pid,
                peer,
                method: request.method().to_string(),
                target: request.uri().to_string(),
            });
        }
        let shutdown = shutdown.clone();
        async move { Ok::<_, Infallible>(service::respond(request, &shutdown).await) }
    });
    let outcome = http.serve_connection(FuturesIo::new(stream), service).await;
    if verbose {
        match &outcome {
            Ok(()) => log!("closed {peer}"),
            Err(e) => log!("closed {peer}: {e}"),
        }
        emit(|pid| Event::Closed {
            pid,
            peer,
            error: outcome.err().map(|e| e.to_string()),
        });
    }
}

/// Drain progress, logged when it changes.
#[derive(Default)]
struct DrainLog {
    /// When draining started, and how many connections were open then.
    start: Cell<Option<(Instant, usize)>>,
    last: Cell<Option<Counts>>,
}

impl DrainLog {
    fn report(&self, counts: Counts) {
        if self.start.get().is_none() {
            self.start.set(Some((Instant::now(), counts.total)));
        }
        let text = format!(
            "draining: {} connections (busy {}, idle {}, new {}, closing {})",
            counts.total, counts.busy, counts.idle, counts.new, counts.closing
        );
        // Outside systemd this sends nothing.
        let _ = seamless::systemd::status(&text);
        if self.last.replace(Some(counts)) != Some(counts) {
            log!("{text}");
            emit(|pid| Event::Draining {
                pid,
                counts: events::Counts {
                    total: counts.total,
                    busy: counts.busy,
                    idle: counts.idle,
                    new: counts.new,
                    closing: counts.closing,
                },
            });
        }
    }

    /// Logs the summary. Without a report, the drain found no connection at
    /// all and ended at once.
    fn finish(&self, left: &Counts) {
        let (start, open) = self.start.get().unwrap_or((Instant::now(), 0));
        let ms = start.elapsed().as_millis() as u64;
        log!(
            "drained {open} connections in {ms} ms ({} left at the deadline)",
            left.total
        );
        // hyper keeps its own read buffer and connection state, which the
        // tracker cannot see: this server does not opt in to the live
        // handoff, and its idle connections are closed at a drain.
        emit(|pid| Event::Drained {
            pid,
            connections: open,
            ms,
            left: left.total,
            handed_over: 0,
            fell_back: 0,
        });
    }
}
