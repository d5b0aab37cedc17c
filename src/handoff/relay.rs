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
//! channel from the predecessor). Until the successor has said whether it
//! took what was sent, and until what the predecessor sent has gone on,
//! a guard holds off this generation's `Stopped`. Every socket of the channels is polled
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
#[non_exhaustive]
pub struct HandoverStats {
    /// Connections of this generation its successor took, alive.
    pub handed_over: u64,
    /// Connections that were to move on but were closed instead: the
    /// successor did not take them (it died or refused the channel), or,
    /// received from the predecessor, no listener of this generation could
    /// take them.
    pub fell_back: u64,
    /// Connections this generation received from its predecessor.
    pub received: u64,
    /// Of those, the ones its own successor took, because this generation
    /// was draining for an upgrade itself.
    pub forwarded: u64,
    /// Connections sent to the successor that it has not yet said it took
    /// (or not): a gauge, not a count; zero once everything sent is
    /// settled.
    pub in_flight: u64,
    /// Connections sent to the successor that this generation stopped
    /// before learning whether it took them (the deadline came first, or
    /// the channel failed): left to the successor, never closed here.
    pub unconfirmed: u64,
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
    unconfirmed: AtomicU64,
}

struct Outbound {
    sender: Sender,
    acks: Acks,
    /// The connections sent and not yet taken, by sequence number: if the
    /// successor turns out not to take them, they are still ours to close
    /// gracefully.
    in_flight: BTreeMap<u64, InFlight>,
    /// Held while `in_flight` is not empty: a generation that stopped now
    /// could only drop its copies, never close them, and would not learn
    /// (nor count) whether they went.
    guard: Option<Guard>,
}

struct InFlight {
    /// Our duplicate; `None` if there was no fd to make one (the
    /// connection is still the successor's; only a graceful close on its
    /// failure is lost).
    copy: Option<OwnedFd>,
    /// Received from the predecessor, rather than one of ours.
    forwarded: bool,
}

impl Outbound {
    fn send(&mut self, seq: u64, in_flight: InFlight, shutdown: &Shutdown) {
        self.in_flight.insert(seq, in_flight);
        if self.guard.is_none() {
            self.guard = Some(shutdown.guard());
        }
    }

    /// The successor took every message below `taken`: our copies are
    /// dropped, never shut down. Returns the guard once nothing is left in
    /// flight: drop it after unlocking.
    #[must_use = "drop the guard after unlocking"]
    fn taken(&mut self, taken: u64, stats: &Stats) -> Option<Guard> {
        let rest = self.in_flight.split_off(&taken);
        for (_, went) in std::mem::replace(&mut self.in_flight, rest) {
            match went.forwarded {
                true => stats.forwarded.fetch_add(1, Ordering::SeqCst),
                false => stats.handed_over.fetch_add(1, Ordering::SeqCst),
            };
        }
        match self.in_flight.is_empty() {
            true => self.guard.take(),
            false => None,
        }
    }
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
        let previous = outbound.take().and_then(|out| self.close_outbound(out));
        *outbound = Some(Outbound {
            sender,
            acks,
            in_flight: BTreeMap::new(),
            guard: None,
        });
        self.outbound_open.store(true, Ordering::SeqCst);
        drop(outbound);
        drop(previous);
        self.wakers.wake_all();
    }

    pub(crate) fn stats(&self) -> HandoverStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        HandoverStats {
            handed_over: get(&self.stats.handed_over),
            fell_back: get(&self.stats.fell_back),
            received: get(&self.stats.received),
            forwarded: get(&self.stats.forwarded),
            unconfirmed: get(&self.stats.unconfirmed),
            in_flight: lock(&self.outbound)
                .as_ref()
                .map_or(0, |out| out.in_flight.len() as u64),
        }
    }

    /// The predecessor's application state once known: `Some(None)` if it
    /// sent none, or there is no predecessor channel.
    pub(crate) fn poll_app_state(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        self.wakers.register(cx.waker());
        let mut inbound = lock(&self.inbound);
        self.drive_inbound(&mut inbound);
        let state = inbound.app_state.clone();
        let done = inbound.done();
        drop(inbound);
        drop(done);
        match state {
            Some(state) => Poll::Ready(state),
            None => Poll::Pending,
        }
    }

    /// Takes what arrived from the predecessor: connections to their
    /// listeners' inboxes (or on to the successor), the application state,
    /// the end of the channel.
    fn drive_inbound(&self, inbound: &mut Inbound) {
        let waker = self.wakers.waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..PER_POLL {
            let Some(receiver) = &mut inbound.receiver else {
                return;
            };
            let received = match receiver.poll_recv(&mut cx) {
                Poll::Pending => return,
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
                    return;
                }
            }
        }
        waker.wake_by_ref();
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
    /// acknowledgements. Returns the outbound guard once nothing is in
    /// flight: drop it after unlocking.
    #[must_use = "drop the guard after unlocking"]
    fn drive_outbound(&self, inbound: &mut Inbound) -> Option<Guard> {
        let waker = self.wakers.waker();
        let mut cx = Context::from_waker(&waker);
        let mut outbound = lock(&self.outbound);
        let Some(out) = outbound.as_mut() else {
            for connection in inbound.forwarding.drain(..) {
                let error = io::Error::new(io::ErrorKind::NotConnected, "no successor");
                self.fell_back(&connection.listener, &error);
                close_gracefully(connection.fd);
            }
            return None;
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
                    let went = InFlight {
                        copy: Some(connection.fd),
                        forwarded: true,
                    };
                    out.send(seq, went, &self.shutdown);
                }
                Err(e) => {
                    self.fell_back(&connection.listener, &e);
                    close_gracefully(connection.fd);
                }
            }
        }
        let mut released = None;
        for _ in 0..PER_POLL {
            match out.acks.poll_next(&mut cx) {
                Poll::Pending => return released,
                Poll::Ready(Ok(AckEvent::Taken(taken))) => {
                    released = released.or(out.taken(taken, &self.stats));
                }
                Poll::Ready(ended) => {
                    if let Err(e) = &ended {
                        tracing::warn!(%e, "the handoff channel to the next generation failed");
                    }
                    let out = outbound.take().expect("checked above");
                    return released.or(self.close_outbound(out));
                }
            }
        }
        waker.wake_by_ref();
        released
    }

    /// The successor takes nothing more. Only its word that the channel
    /// closed makes what it did not take ours to close; without it (the
    /// channel failed, or this generation stops first) the successor may
    /// still take them, so our copies are only dropped. Returns the
    /// outbound guard: drop it after unlocking.
    #[must_use = "drop the guard after unlocking"]
    fn close_outbound(&self, mut out: Outbound) -> Option<Guard> {
        self.outbound_open.store(false, Ordering::SeqCst);
        // What the successor has said already; no waiting.
        let mut cx = Context::from_waker(Waker::noop());
        let mut closed = None;
        // The caller holds the lock on `outbound`: the guard goes back to
        // it, never dropped here (dropping the last one runs the hooks,
        // which take that lock).
        let mut released = None;
        for _ in 0..PER_POLL {
            match out.acks.poll_next(&mut cx) {
                Poll::Ready(Ok(AckEvent::Taken(taken))) => {
                    released = released.or(out.taken(taken, &self.stats));
                }
                Poll::Ready(Ok(AckEvent::Closed { taken })) => {
                    closed = Some(taken);
                    break;
                }
                _ => break,
            }
        }
        let Some(taken) = closed else {
            let left = out.in_flight.len() as u64;
            if left > 0 {
                tracing::warn!(
                    left,
                    "stopped before the next generation said whether it took them; left to it"
                );
            }
            self.stats.unconfirmed.fetch_add(left, Ordering::SeqCst);
            return released.or(out.guard.take());
        };
        released = released.or(out.taken(taken, &self.stats));
        for (_, went) in std::mem::take(&mut out.in_flight) {
            let error = io::Error::new(
                io::ErrorKind::NotConnected,
                "the next generation did not take it",
            );
            self.fell_back("(in flight)", &error);
            if let Some(fd) = went.copy {
                close_gracefully(fd);
            }
        }
        released.or(out.guard.take())
    }
}

impl Inbound {
    /// Returns the inbound guard once the predecessor's channel has ended
    /// and nothing received waits to go on: what the predecessor sent is
    /// ours alone (it dropped its copies when we took them), so this
    /// generation must not stop before it is forwarded. Drop it after the
    /// lock on `inbound` (dropping the last guard stops the coordinator,
    /// whose hooks take that lock).
    #[must_use = "drop the guard after unlocking"]
    fn done(&mut self) -> Option<Guard> {
        match self.receiver.is_none() && self.forwarding.is_empty() {
            true => self.guard.take(),
            false => None,
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
        // Our own copy, until the successor says it took it.
        let went = InFlight {
            copy: sys::dup_at_least(fd, 0).ok(),
            forwarded: false,
        };
        out.send(seq, went, &self.shutdown);
        Poll::Ready(Ok(()))
    }

    fn fell_back(&self, listener: &str, error: &io::Error) {
        self.stats.fell_back.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(listener, %error, "a connection could not be handed over; closed instead");
    }

    fn poll_received(&self, cx: &mut Context<'_>, listener: &str) -> Option<(OwnedFd, Vec<u8>)> {
        self.wakers.register(cx.waker());
        let mut inbound = lock(&self.inbound);
        self.drive_inbound(&mut inbound);
        let connection = inbound
            .inboxes
            .get_mut(listener)
            .and_then(VecDeque::pop_front);
        let done = inbound.done();
        drop(inbound);
        drop(done);
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
        let mut outbound = lock(&self.outbound);
        let guard = outbound.take().and_then(|out| {
            // Say it is over, if the channel has room now; otherwise the
            // successor sees the channel end without it, which is as safe.
            let waker = Waker::noop();
            let _ = out.sender.poll_finish(&mut Context::from_waker(waker));
            self.close_outbound(out)
        });
        drop(outbound);
        drop(guard);
    }

    fn poll_work(&self, cx: &mut Context<'_>) {
        self.wakers.register(cx.waker());
        let mut inbound = lock(&self.inbound);
        self.drive_inbound(&mut inbound);
        let sent = self.drive_outbound(&mut inbound);
        let done = inbound.done();
        drop(inbound);
        drop((sent, done));
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

#[cfg(all(
    test,
    any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly",
    )
))]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::super::channel::pair;
    use super::*;

    fn noop() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Everything queued for `receiver` now, acknowledged; the connections'
    /// fds, by listener.
    fn take_all(receiver: &mut Receiver) -> Vec<Connection> {
        let mut taken = Vec::new();
        for _ in 0..100_000 {
            match receiver.poll_recv(&mut noop()) {
                Poll::Ready(Ok(Received::Connection(c))) => taken.push(c),
                Poll::Pending => return taken,
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the channel never emptied");
    }

    /// A generation draining into its successor receives its predecessor's
    /// last connection and the end of that channel in one go, while the
    /// successor's channel is full. It must not stop (and close what waits
    /// to go on: the predecessor's copy is gone) before the connection has
    /// gone on and the successor has taken it.
    #[test]
    fn a_draining_generation_stops_only_once_what_it_received_has_gone_on() {
        let shutdown = Shutdown::new();
        let (a_end, b_in) = pair().unwrap();
        let (from_a, _a_acks) = Sender::new(a_end).unwrap();
        let relay = Relay::new(&shutdown, Some(b_in));
        relay.add_listener("main");

        // The successor's channel, full: it has not read yet.
        let (b_out, c_in) = pair().unwrap();
        let (to_c, c_acks) = Sender::new(b_out).unwrap();
        let mut c = Receiver::new(c_in).unwrap();
        let (filler, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let full = (0..100_000).find(|_| {
            to_c.poll_send_connection(&mut noop(), "main", &[], filler.as_fd())
                .is_pending()
        });
        assert!(full.is_some(), "the channel never filled");
        relay.set_outbound(to_c, c_acks);
        shutdown.hand_over();

        // The predecessor's last connection, with a request queued, then
        // its end.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let sent = from_a.poll_send_connection(&mut noop(), "main", &[], server.as_fd());
        assert!(matches!(sent, Poll::Ready(Ok(_))), "{sent:?}");
        assert!(from_a.poll_finish(&mut noop()).is_ready());
        drop(server);

        relay.poll_work(&mut noop());
        assert!(
            !shutdown.is_stopped(),
            "stopped with a connection to forward"
        );
        client.set_nonblocking(true).unwrap();
        let read = client.read(&mut [0; 8]);
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "the connection is left alone, not {read:?}"
        );

        // Room: it goes on, and once the successor has taken it, the
        // generation stops.
        assert!(!take_all(&mut c).is_empty());
        relay.poll_work(&mut noop());
        assert!(
            !shutdown.is_stopped(),
            "stopped before the successor took it"
        );
        let mut forwarded = take_all(&mut c);
        assert_eq!(forwarded.len(), 1);
        // One poll reads a bounded number of acknowledgements.
        let stopped = (0..10_000).find(|_| {
            relay.poll_work(&mut noop());
            shutdown.is_stopped()
        });
        assert!(stopped.is_some(), "{:?}", relay.stats());
        let stats = relay.stats();
        assert_eq!((stats.forwarded, stats.fell_back), (1, 0), "{stats:?}");

        let mut moved = TcpStream::from(forwarded.pop().unwrap().fd);
        let mut request = [0; 4];
        moved.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"ping");
    }
}
