//! The live handoff as one generation runs it: the channel from its
//! predecessor (connections routed to the listeners that opted in, or
//! forwarded to its own successor while it drains for an upgrade), and the
//! channel to its successor (connections sent, and our duplicates kept
//! until the successor has taken them).
//!
//! Nothing here runs by itself. The work is driven from the futures the
//! application already polls: an opted-in listener's `accept()` (received
//! connections), each idle connection's own read (sending it), and
//! [`Shutdown::stopped`] (acknowledgements, forwarding, the end of the
//! channel from the predecessor). Every socket of the channels is polled
//! with one waker that wakes all of them ([`Wakers`]), so no poller's
//! registration is lost to another's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use event_listener::Event;

use super::channel::{AckEvent, Acks, Connection, Received, Receiver, Sender};
use crate::conn::handover::Successor;
use crate::shutdown::{lock, Guard, PhaseHook, Shutdown};
use crate::sys;

/// The name of the channel among the passed fds.
pub(crate) const CHANNEL_NAME: &str = "seamless-handoff";

/// How many messages one poll takes off a channel before yielding.
const PER_POLL: usize = 64;

/// What the live handoff did in this generation. See
/// [`Upgrader::handover_stats`](super::Upgrader::handover_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoverStats {
    /// Connections this generation handed, alive, to its successor.
    pub handed_over: u64,
    /// Connections that were to move on but were closed instead: the
    /// successor did not take them (it died, refused the channel, or the
    /// deadline came first), or, received from the predecessor, no listener
    /// of this generation could take them.
    pub fell_back: u64,
    /// Connections this generation received from its predecessor.
    pub received: u64,
    /// Of those, the ones it passed straight on to its own successor,
    /// because it was draining for an upgrade itself.
    pub forwarded: u64,
}

pub(crate) struct Relay {
    shutdown: Shutdown,
    /// Set while a channel to a successor is open; connections move on
    /// once this generation drains.
    outbound_open: AtomicBool,
    outbound: Mutex<Option<Outbound>>,
    inbound: Mutex<Inbound>,
    wakers: Arc<Wakers>,
    /// Notified when the predecessor's application state is known.
    state_known: Event,
    /// The listeners that opted in, by the name they are passed on under.
    listeners: Mutex<Vec<String>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    handed_over: AtomicU64,
    fell_back: AtomicU64,
    received: AtomicU64,
    forwarded: AtomicU64,
}

struct Outbound {
    sender: Sender,
    acks: Acks,
    /// Our duplicates of the connections sent and not yet taken, by
    /// sequence number: if the successor turns out not to take them, they
    /// are still ours to close gracefully.
    in_flight: BTreeMap<u64, OwnedFd>,
}

#[derive(Default)]
struct Inbound {
    receiver: Option<Receiver>,
    /// Holds off this generation's `Stopped` while its predecessor may
    /// still send: no connection in flight is lost.
    guard: Option<Guard>,
    inboxes: HashMap<String, VecDeque<Connection>>,
    /// Received while this generation drains for an upgrade: for the
    /// successor, waiting for room on its channel.
    forwarding: VecDeque<Connection>,
    /// The predecessor's application state: `None` until known.
    app_state: Option<Option<Vec<u8>>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// The relay of a generation that inherited `channel` from its
    /// predecessor (if it did).
    pub(crate) fn new(shutdown: &Shutdown, channel: Option<OwnedFd>) -> Arc<Relay> {
        let receiver = channel.and_then(|fd| {
            Receiver::new(fd)
                .inspect_err(|e| tracing::warn!(%e, "the handoff channel is unusable; ignored"))
                .ok()
        });
        let inbound = Inbound {
            guard: receiver.as_ref().map(|_| shutdown.guard()),
            app_state: if receiver.is_some() { None } else { Some(None) },
            receiver,
            ..Inbound::default()
        };
        let relay = Arc::new(Relay {
            shutdown: shutdown.clone(),
            outbound_open: AtomicBool::new(false),
            outbound: Mutex::new(None),
            inbound: Mutex::new(inbound),
            wakers: Arc::new(Wakers::default()),
            state_known: Event::new(),
            listeners: Mutex::new(Vec::new()),
            stats: Stats::default(),
        });
        let hook: Arc<dyn PhaseHook> = relay.clone();
        shutdown.add_hook(Arc::downgrade(&hook));
        relay
    }

    /// A listener passed on as `name` opted in.
    pub(crate) fn add_listener(&self, name: &str) {
        let mut listeners = lock(&self.listeners);
        if !listeners.iter().any(|n| n == name) {
            listeners.push(name.to_owned());
        }
    }

    /// Whether a next generation needs a channel: a listener opted in.
    pub(crate) fn wanted(&self) -> bool {
        !lock(&self.listeners).is_empty()
    }

    /// The channel to a successor that is ready: connections go there once
    /// this generation drains. Replaces (and closes) an earlier one.
    pub(crate) fn set_outbound(&self, sender: Sender, acks: Acks) {
        let mut outbound = lock(&self.outbound);
        if let Some(previous) = outbound.take() {
            self.close_outbound(previous);
        }
        *outbound = Some(Outbound {
            sender,
            acks,
            in_flight: BTreeMap::new(),
        });
        self.outbound_open.store(true, Ordering::SeqCst);
        drop(outbound);
        self.wakers.wake_all();
    }

    pub(crate) fn stats(&self) -> HandoverStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        HandoverStats {
            handed_over: get(&self.stats.handed_over),
            fell_back: get(&self.stats.fell_back),
            received: get(&self.stats.received),
            forwarded: get(&self.stats.forwarded),
        }
    }

    /// The predecessor's application state once known: `Some(None)` if it
    /// sent none, or there is no predecessor channel.
    pub(crate) fn poll_app_state(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        self.wakers.register(cx.waker());
        let mut inbound = lock(&self.inbound);
        let ended = self.drive_inbound(&mut inbound);
        let state = inbound.app_state.clone();
        drop(inbound);
        drop(ended);
        match state {
            Some(state) => Poll::Ready(state),
            None => Poll::Pending,
        }
    }

    /// Takes what arrived from the predecessor: connections to their
    /// listeners' inboxes (or on to the successor), the application state,
    /// the end of the channel. Returns the guard to drop once the channel
    /// has ended: drop it after the lock on `inbound` (dropping the last
    /// guard stops the coordinator, whose hooks take that lock).
    #[must_use = "drop the guard after unlocking"]
    fn drive_inbound(&self, inbound: &mut Inbound) -> Option<Guard> {
        let waker = self.wakers.waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..PER_POLL {
            let Some(receiver) = &mut inbound.receiver else {
                return None;
            };
            let received = match receiver.poll_recv(&mut cx) {
                Poll::Pending => return None,
                Poll::Ready(received) => received,
            };
            match received {
                Ok(Received::Connection(connection)) => {
                    self.stats.received.fetch_add(1, Ordering::SeqCst);
                    self.route(inbound, connection);
                }
                Ok(Received::AppState(state)) => {
                    inbound.app_state = Some((!state.is_empty()).then_some(state));
                    self.state_known.notify(usize::MAX);
                }
                ended => {
                    match ended {
                        Ok(Received::Abandoned { received }) => tracing::warn!(
                            received,
                            "the previous generation's handoff channel ended early"
                        ),
                        Err(e) => {
                            tracing::warn!(%e, "the previous generation's handoff channel failed")
                        }
                        _ => {}
                    }
                    inbound.receiver = None;
                    inbound.app_state.get_or_insert(None);
                    self.state_known.notify(usize::MAX);
                    self.wakers.wake_all();
                    return inbound.guard.take();
                }
            }
        }
        waker.wake_by_ref();
        None
    }

    /// Where a received connection goes.
    fn route(&self, inbound: &mut Inbound, connection: Connection) {
        if self.takes() {
            inbound.forwarding.push_back(connection);
            return;
        }
        let known = lock(&self.listeners).contains(&connection.listener);
        if known && !self.shutdown.is_draining() {
            inbound
                .inboxes
                .entry(connection.listener.clone())
                .or_default()
                .push_back(connection);
            self.wakers.wake_all();
        } else {
            let error = io::Error::new(
                io::ErrorKind::NotConnected,
                match known {
                    true => "this generation is stopping",
                    false => "no listener of this generation takes it",
                },
            );
            self.fell_back(&connection.listener, &error);
            close_gracefully(connection.fd);
        }
    }

    /// Sends what waits to be forwarded, and reads the successor's
    /// acknowledgements.
    fn drive_outbound(&self, inbound: &mut Inbound) {
        let waker = self.wakers.waker();
        let mut cx = Context::from_waker(&waker);
        let mut outbound = lock(&self.outbound);
        let Some(out) = outbound.as_mut() else {
            for connection in inbound.forwarding.drain(..) {
                let error = io::Error::new(io::ErrorKind::NotConnected, "no successor");
                self.fell_back(&connection.listener, &error);
                close_gracefully(connection.fd);
            }
            return;
        };
        while let Some(connection) = inbound.forwarding.front() {
            let fd = connection.fd.as_fd();
            let sent = out.sender.poll_send_connection(
                &mut cx,
                &connection.listener,
                &connection.state,
                fd,
            );
            let Poll::Ready(sent) = sent else { break };
            let connection = inbound.forwarding.pop_front().expect("front exists");
            match sent {
                Ok(seq) => {
                    self.stats.forwarded.fetch_add(1, Ordering::SeqCst);
                    out.in_flight.insert(seq, connection.fd);
                }
                Err(e) => {
                    self.fell_back(&connection.listener, &e);
                    close_gracefully(connection.fd);
                }
            }
        }
        for _ in 0..PER_POLL {
            match out.acks.poll_next(&mut cx) {
                Poll::Pending => return,
                Poll::Ready(Ok(AckEvent::Taken(taken))) => {
                    // Ours no more: drop our copies, never shut them down.
                    out.in_flight = out.in_flight.split_off(&taken);
                }
                Poll::Ready(closed) => {
                    if let Err(e) = &closed {
                        tracing::warn!(%e, "the handoff channel to the next generation failed");
                    }
                    let out = outbound.take().expect("checked above");
                    self.close_outbound(out);
                    return;
                }
            }
        }
        waker.wake_by_ref();
    }

    /// The successor takes nothing more: what it has not taken is ours to
    /// close. Acknowledgements already in the socket are read first, so a
    /// connection the successor took is never shut down under it.
    fn close_outbound(&self, mut out: Outbound) {
        self.outbound_open.store(false, Ordering::SeqCst);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..PER_POLL {
            match out.acks.poll_next(&mut cx) {
                Poll::Ready(Ok(AckEvent::Taken(_))) => continue,
                _ => break,
            }
        }
        let taken = out.sender.taken();
        for (_, fd) in out.in_flight.into_iter().filter(|(seq, _)| *seq >= taken) {
            let error = io::Error::new(
                io::ErrorKind::NotConnected,
                "the next generation did not take it",
            );
            self.fell_back("(in flight)", &error);
            close_gracefully(fd);
        }
    }
}

impl Successor for Relay {
    fn takes(&self) -> bool {
        self.outbound_open.load(Ordering::SeqCst) && self.shutdown.is_draining()
    }

    fn poll_hand_over(
        &self,
        cx: &mut Context<'_>,
        listener: &str,
        state: &[u8],
        fd: BorrowedFd<'_>,
    ) -> Poll<io::Result<()>> {
        self.wakers.register(cx.waker());
        let waker = self.wakers.waker();
        let mut channel_cx = Context::from_waker(&waker);
        let mut outbound = lock(&self.outbound);
        let Some(out) = outbound.as_mut() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no next generation takes connections",
            )));
        };
        let seq = std::task::ready!(out.sender.poll_send_connection(
            &mut channel_cx,
            listener,
            state,
            fd
        ))?;
        self.stats.handed_over.fetch_add(1, Ordering::SeqCst);
        // Our own copy, until the successor says it took it. Without one
        // (out of fds) the connection is still the successor's; only a
        // graceful close on its failure is lost.
        if let Ok(copy) = sys::dup_at_least(fd, 0) {
            out.in_flight.insert(seq, copy);
        }
        Poll::Ready(Ok(()))
    }

    fn fell_back(&self, listener: &str, error: &io::Error) {
        self.stats.fell_back.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(listener, %error, "a connection could not be handed over; closed instead");
    }

    fn poll_received(&self, cx: &mut Context<'_>, listener: &str) -> Option<(OwnedFd, Vec<u8>)> {
        self.wakers.register(cx.waker());
        let mut inbound = lock(&self.inbound);
        let ended = self.drive_inbound(&mut inbound);
        let connection = inbound
            .inboxes
            .get_mut(listener)
            .and_then(VecDeque::pop_front);
        drop(inbound);
        drop(ended);
        connection.map(|c| (c.fd, c.state))
    }
}

impl PhaseHook for Relay {
    fn on_draining(&self) {
        // The listeners accept no more. What waits in their inboxes goes on
        // to the successor if this generation drains for an upgrade (as
        // what arrives from now on does), or is closed if it stops.
        let takes = self.takes();
        let mut inbound = lock(&self.inbound);
        let waiting: Vec<Connection> = inbound.inboxes.drain().flat_map(|(_, c)| c).collect();
        for connection in waiting {
            if takes {
                inbound.forwarding.push_back(connection);
            } else {
                let error = io::Error::new(io::ErrorKind::NotConnected, "this generation stops");
                self.fell_back(&connection.listener, &error);
                close_gracefully(connection.fd);
            }
        }
        drop(inbound);
        self.wakers.wake_all();
    }

    fn on_stopped(&self) {
        let mut inbound = lock(&self.inbound);
        for connection in inbound.forwarding.drain(..) {
            let error = io::Error::new(io::ErrorKind::TimedOut, "stopped before it went");
            self.fell_back(&connection.listener, &error);
            close_gracefully(connection.fd);
        }
        inbound.receiver = None;
        let guard = inbound.guard.take();
        drop(inbound);
        drop(guard);
        if let Some(out) = lock(&self.outbound).take() {
            // Say it is over, if the channel has room now; otherwise the
            // successor sees the channel end without it, which is as safe.
            let waker = Waker::noop();
            let _ = out.sender.poll_finish(&mut Context::from_waker(waker));
            self.close_outbound(out);
        }
    }

    fn poll_work(&self, cx: &mut Context<'_>) {
        self.wakers.register(cx.waker());
        let mut inbound = lock(&self.inbound);
        let ended = self.drive_inbound(&mut inbound);
        self.drive_outbound(&mut inbound);
        drop(inbound);
        drop(ended);
    }
}

/// Closes a connection this generation will not serve without resetting
/// the peer: our FIN, and what is queued thrown away. (There is no task to
/// linger in, so data the peer sends after this may still draw an RST.)
fn close_gracefully(fd: OwnedFd) {
    let _ = sys::shutdown(fd.as_fd(), sys::How::Write);
    sys::discard_queued(fd.as_fd());
}

/// Every waker that polled a channel, woken together: the channels'
/// sockets keep one waker each, and several tasks poll them.
#[derive(Default)]
struct Wakers {
    wakers: Mutex<Vec<Waker>>,
}

impl Wakers {
    fn register(&self, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for waker in wakers {
            waker.wake();
        }
    }

    /// A waker that wakes them all.
    fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}
