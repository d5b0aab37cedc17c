//! The connection tracker: wraps listeners and streams, knows which
//! connections are idle or busy, and drains them without cutting a request.
//!
//! - A [`TrackedListener`] stops accepting and closes its fd as soon as
//!   draining starts.
//! - A [`Tracked`] stream keeps a per-connection state, **New**, **Busy** or
//!   **Idle**, and at drain ends idle connections: the application's pending
//!   `read` returns `Ok(0)` after a lingering close.
//! - The [`Tracker`] ties them to a [`Shutdown`] and counts connections.
//! - A [`ConnHandle`], taken from a stream before a protocol layer (TLS)
//!   wraps it, lets that layer say goodbye before the drain's FIN, and mark a
//!   handshake done.
//!
//! [`Accept`] is implemented for async-io's (and smol's) listeners,
//! async-net's (as `Arc<Async<_>>`) and any stream of connections
//! ([`Incoming`]); async-std's listeners convert into std's. [`Async`] is
//! re-exported, so none of these needs a direct async-io dependency.
//!
//! Nothing here spawns a task. The drain wakes each connection's pending
//! read (a lock-free waker slot per connection), and the close and its timers
//! run inside the application's own reads.
//!
//! # Why not `shutdown(SHUT_RD)`
//!
//! Half-closing the read side would wake the application's read through the
//! kernel, with no waker at all. But Linux answers any byte that reaches a
//! socket whose read side is shut, once our FIN is out, with an RST
//! (`TCPAbortOnData`): exactly the reset a lingering close must avoid. So the
//! read side stays open, and the lingering read sees the peer's own FIN.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::shutdown::{PhaseHook, Shutdown};
use crate::sys;

mod handle;
pub(crate) mod handover;
mod listener;
mod registry;
mod stream;

pub use async_io::Async;
pub use handle::{ConnHandle, Ending};
pub use listener::{Accept, Accepted, Incoming, TrackedListener};
pub use stream::{BusyGuard, Tracked};

use registry::{ConnState, Registry};

/// How a connection's Busy/Idle state is decided.
///
/// # What the automatic policy assumes
///
/// It sees only the transport: reads that return data, bytes written, reads
/// that find nothing. A connection is **Busy** from a read that returns data,
/// and **Idle** once bytes were written since then, no write or flush is
/// still blocked, and a read of the transport finds nothing. That is right
/// when every request is answered by one response, written without pauses,
/// and the application reads again only when it wants the next request. It
/// holds through stacks that:
///
/// - flush with nothing buffered or write zero bytes (neither is a response);
/// - split a response over many writes, or write vectored;
/// - block on a write or flush while polling a read (a response still on its
///   way out is not done);
/// - read ahead into a buffer they serve from before reading the transport
///   again (a `BufReader`): the second request stays Busy;
/// - wrap the stream in a handshake, once the handshake is declared done
///   with [`ConnHandle::handshake_done`] (TLS: otherwise the handshake looks
///   like a request and its response, and the connection counts as Idle).
///
/// It is wrong, and needs a [`BusyGuard`] held while a request is handled (or
/// the manual policy), when:
///
/// - a response is written in pieces with pauses while a read is pending
///   (streaming, server-sent events, long polling, a slow body, hyper's
///   chunked bodies): Idle mid-response, and a drain may close it;
/// - something is written before the request is complete, while a read is
///   pending: an interim `100 Continue` before the body, a TLS layer's own
///   write (a `KeyUpdate` answer), an HTTP/2 or WebSocket control frame;
/// - a stack polls the transport while it serves a request it read ahead
///   (hyper with pipelined HTTP/1 requests, HTTP/2 streams);
/// - a read brings a message that gets no answer (a stray CRLF between
///   HTTP/1 requests, a TLS `KeyUpdate`, an HTTP/2 `WINDOW_UPDATE`): the
///   connection is Busy until its next response, so a drain waits for it
///   until the deadline;
/// - the application's own buffer holds part of the next request (read
///   together with the previous one) when it reads again: the tracker sees
///   a response and a read that finds nothing, and counts it Idle. Hold a
///   busy guard while a partial request sits in your buffer, as the
///   examples do (`let _partial = (!buf.is_empty()).then(|| conn.busy());`):
///   closed, or handed to the next generation, under it, that request would
///   be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// A read that returns data makes the connection Busy; bytes written
    /// since then, followed by a read that finds nothing, make it Idle (see
    /// above for exactly when). Right for request/response protocols such as
    /// HTTP/1.
    #[default]
    Automatic,
    /// The connection is Busy exactly while the application holds a
    /// [`BusyGuard`] (see [`Tracked::busy`], [`ConnHandle::busy`]). For
    /// streaming, server push or pipelined RPC, where the automatic heuristic
    /// would be wrong.
    Manual,
}

/// Tuning for a [`Tracker`].
///
/// ```
/// use std::time::Duration;
/// use seamless::conn::{Config, Policy};
/// use seamless::{Shutdown, Tracker};
///
/// let config = Config::default()
///     .first_byte_grace(Duration::from_millis(500))
///     .policy(Policy::Manual);
/// let tracker = Tracker::with_config(&Shutdown::new(), config);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Config {
    first_byte_grace: Duration,
    idle_grace: Duration,
    linger: Duration,
    policy: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            first_byte_grace: Duration::from_secs(1),
            idle_grace: Duration::from_millis(250),
            linger: Duration::from_millis(500),
            policy: Policy::Automatic,
        }
    }
}

impl Config {
    /// How long a connection that has not sent its first byte yet is given,
    /// once draining starts, before it is closed (default 1 s, never past the
    /// deadline). A client that has just connected has usually sent its
    /// request already; this lets it arrive.
    pub fn first_byte_grace(mut self, grace: Duration) -> Self {
        self.first_byte_grace = grace;
        self
    }

    /// How long an idle connection is given, once draining starts, for a
    /// next request that may already be on the wire (default 250 ms, counted
    /// from when it went idle or from the drain's start, whichever is
    /// earlier; never past the deadline).
    ///
    /// A keep-alive client that sends its next request just as the server
    /// closes the connection loses it (the keep-alive race); clients that do
    /// not retry, such as `wrk` and many RPC clients, count it as an error.
    /// Waiting about one round trip plus the client's own pause avoids most
    /// of them, at the cost of that much more drain time. Zero closes idle
    /// connections at once.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// How long a drained connection keeps discarding what the peer still
    /// sends after our FIN, before it closes (default 500 ms, never past the
    /// deadline). Closing with unread data would reset the peer.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How Busy and Idle are decided (default [`Policy::Automatic`]).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

/// A snapshot of the tracker's connection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Every tracked connection that is still alive.
    pub total: usize,
    /// Accepted, no byte read yet.
    pub new: usize,
    /// A request is in progress.
    pub busy: usize,
    /// Waiting for the next request.
    pub idle: usize,
    /// Being closed by the drain (lingering after our FIN).
    pub closing: usize,
}

pub(crate) const NEW: u8 = 0;
pub(crate) const BUSY: u8 = 1;
pub(crate) const IDLE: u8 = 2;
pub(crate) const CLOSING: u8 = 3;
/// Unregistered: no longer counted.
const GONE: u8 = 4;

/// Tracks the connections of one service and drains them when its
/// [`Shutdown`] starts draining.
///
/// Cloning is cheap; all clones share the same connections and counts.
///
/// # Examples
///
/// ```no_run
/// use std::net::TcpListener;
/// use async_io::Async;
/// use futures_lite::{AsyncReadExt, AsyncWriteExt};
/// use seamless::{Shutdown, Tracker};
///
/// # futures_lite::future::block_on(async {
/// let shutdown = Shutdown::new();
/// let tracker = Tracker::new(&shutdown);
/// let mut listener = tracker.listen(Async::<TcpListener>::bind(([127, 0, 0, 1], 0))?);
///
/// // `None` means draining has started: leave the accept loop.
/// while let Some((mut stream, _peer)) = listener.accept().await? {
///     let mut buf = [0; 1024];
///     // A drained idle connection reads `Ok(0)`, ending this loop by itself.
///     while let Ok(n @ 1..) = stream.read(&mut buf).await {
///         stream.write_all(&buf[..n]).await?;
///     }
/// }
/// # std::io::Result::Ok(()) });
/// ```
#[derive(Clone)]
pub struct Tracker {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) shutdown: Shutdown,
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    counts: [AtomicUsize; 4],
    drain_started: OnceLock<Instant>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("config", &self.shared.config)
            .field("counts", &self.counts())
            .finish()
    }
}

impl Tracker {
    /// A tracker with the default [`Config`].
    pub fn new(shutdown: &Shutdown) -> Self {
        Self::with_config(shutdown, Config::default())
    }

    /// A tracker with the given [`Config`].
    pub fn with_config(shutdown: &Shutdown, config: Config) -> Self {
        let shared = Arc::new(Shared {
            shutdown: shutdown.clone(),
            config,
            registry: Registry::default(),
            counts: Default::default(),
            drain_started: OnceLock::new(),
        });
        let hook: Arc<dyn PhaseHook> = shared.clone();
        shutdown.add_hook(Arc::downgrade(&hook));
        Tracker { shared }
    }

    /// Wraps a listener, so that it stops accepting when draining starts and
    /// hands out [`Tracked`] streams.
    pub fn listen<L: Accept>(&self, listener: L) -> TrackedListener<L> {
        TrackedListener::new(listener, self.clone())
    }

    /// Tracks a stream accepted some other way.
    pub fn track<S: AsFd>(&self, stream: S) -> Tracked<S> {
        Tracked::new(stream, self.shared.clone())
    }

    /// The current counts. Cheap: a few atomic loads.
    pub fn counts(&self) -> Counts {
        let get = |state: u8| self.shared.counts[state as usize].load(Ordering::SeqCst);
        let (new, busy, idle, closing) = (get(NEW), get(BUSY), get(IDLE), get(CLOSING));
        Counts {
            total: new + busy + idle + closing,
            new,
            busy,
            idle,
            closing,
        }
    }

    /// The coordinator this tracker drains with.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shared.shutdown
    }

    /// Reports drain progress: waits until draining starts, then calls
    /// `report` with the counts at once and every `every` until the
    /// coordinator stops, and a last time when it has.
    ///
    /// Run it beside your accept loop, for example to print how many
    /// connections are left or to send systemd a `STATUS=` line. It ends by
    /// itself right after the last report, and enforces the deadline as
    /// [`Shutdown::stopped`] does, so it can stand in for it; racing it
    /// against `stopped()` would lose that last report.
    pub async fn report_drain(&self, every: Duration, mut report: impl FnMut(Counts)) {
        let shutdown = self.shutdown();
        shutdown.draining().await;
        while !shutdown.is_stopped() {
            let counts = self.counts();
            tracing::debug!(
                total = counts.total,
                busy = counts.busy,
                idle = counts.idle,
                new = counts.new,
                closing = counts.closing,
                "drain progress"
            );
            report(counts);
            futures_lite::future::or(shutdown.stopped(), async {
                async_io::Timer::after(every).await;
            })
            .await;
        }
        report(self.counts());
    }
}

impl Shared {
    /// When this tracker first saw the drain start.
    pub(crate) fn drain_started(&self) -> Instant {
        *self.drain_started.get_or_init(Instant::now)
    }

    pub(crate) fn register(&self, fd: &impl AsFd) -> (u32, Arc<ConnState>) {
        let fd = fd.as_fd();
        let socket = sys::socket_id(fd);
        let conn = Arc::new(ConnState::new(fd.as_raw_fd(), socket, NEW));
        self.counts[NEW as usize].fetch_add(1, Ordering::SeqCst);
        let id = self.registry.insert(conn.clone());
        // Registered after the stop sweep ran: stop it ourselves.
        if self.shutdown.is_stopped() {
            let _ = sys::shutdown(fd, sys::How::Both);
        }
        (id, conn)
    }

    pub(crate) fn unregister(&self, id: u32, conn: &ConnState, discard: bool) {
        self.registry.remove(id, discard);
        let from = conn.state.swap(GONE, Ordering::SeqCst);
        if from != GONE {
            self.counts[from as usize].fetch_sub(1, Ordering::SeqCst);
        }
        // Whoever awaits the end through a handle is not left waiting.
        conn.end(Ending::Close);
    }

    /// Moves `conn` from exactly `from` to `to`; says whether it did.
    pub(crate) fn set_state_from(&self, conn: &ConnState, from: u8, to: u8) -> bool {
        let moved = conn
            .state
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if moved && from != to {
            self.counts[from as usize].fetch_sub(1, Ordering::SeqCst);
            self.counts[to as usize].fetch_add(1, Ordering::SeqCst);
        }
        moved
    }

    /// Moves `conn` to `to`, keeping the counts right even when a busy guard
    /// on another task races with the stream. An unregistered connection
    /// stays unregistered.
    pub(crate) fn set_state(&self, conn: &ConnState, to: u8) {
        let mut from = conn.state.load(Ordering::SeqCst);
        loop {
            if from == GONE || from == to {
                return;
            }
            match conn
                .state
                .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => from = actual,
            }
        }
        self.counts[from as usize].fetch_sub(1, Ordering::SeqCst);
        self.counts[to as usize].fetch_add(1, Ordering::SeqCst);
    }
}

impl PhaseHook for Shared {
    fn on_draining(&self) {
        self.drain_started();
        // Each pending read looks at its connection: an idle one ends it, a
        // new one starts its first-byte grace, a busy one goes on.
        self.registry.wake_all();
    }

    fn on_stopped(&self) {
        self.registry.shutdown_all();
    }
}
