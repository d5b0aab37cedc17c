//! An owned handle to one tracked connection, for the layers stacked on top
//! of it (TLS, HTTP/2, WebSocket) once the [`Tracked`](super::Tracked) stream
//! itself is wrapped out of reach.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::registry::ConnState;
use super::stream::BusyGuard;
use super::{Shared, BUSY, IDLE, NEW};

/// How the tracker ends a connection. See [`ConnHandle::ending`].
///
/// More ways may come; match with a wildcard arm, or ask
/// [`says_goodbye`](Ending::says_goodbye).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[repr(u8)]
pub enum Ending {
    /// The connection is closed: say goodbye the protocol's way (TLS
    /// `close_notify`, HTTP/2 GOAWAY, a WebSocket close frame), then close
    /// the stream.
    Close = 0,
    /// The connection moved, alive, to the next generation (see
    /// [`Upgrader::hand_over`](crate::Upgrader::hand_over)): say nothing,
    /// the client goes on talking to the next generation.
    Handover = 1,
}

impl Ending {
    pub(crate) fn from_u8(value: u8) -> Option<Ending> {
        match value {
            0 => Some(Ending::Close),
            1 => Some(Ending::Handover),
            _ => None,
        }
    }

    /// Whether the protocol should say goodbye before the transport closes.
    pub fn says_goodbye(self) -> bool {
        match self {
            Ending::Close => true,
            Ending::Handover => false,
        }
    }
}

/// An owned handle to a tracked connection: Clone, Send and Sync, and no
/// borrow of the stream. Take it with [`Tracked::handle`](super::Tracked::handle)
/// *before* wrapping the stream (in a TLS stream, an HTTP/2 or WebSocket
/// connection), to learn when the drain ends the connection, to mark it busy,
/// or to say a handshake is done.
///
/// # Saying goodbye
///
/// While a handle is alive, a drain that ends an idle or new connection does
/// not send our FIN at once. It resolves [`ending`](ConnHandle::ending),
/// keeps the application's read pending, and gives the application up to the
/// linger time (never past the deadline) to write its goodbye and close the
/// stream (`close()`, which ends in the lingering close of
/// [`Tracked`](super::Tracked)'s `poll_close`). If it does not, or drops every
/// handle, the read falls back to the lingering close and returns `Ok(0)`,
/// as without a handle. So drop the handle if you will not say goodbye.
///
/// The read must be pending for the drain to act, as for any tracked
/// connection: race the read against `ending()`.
///
/// # Examples
///
/// ```no_run
/// # async fn serve(conn: seamless::Tracked<seamless::conn::Async<std::net::TcpStream>>,
/// #     acceptor: futures_rustls::TlsAcceptor) -> std::io::Result<()> {
/// use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
///
/// let handle = conn.handle(); // before the stream disappears into the TLS layer
/// let mut tls = acceptor.accept(conn).await?;
/// handle.handshake_done(); // the handshake was no request: New again
/// let mut buf = [0; 1024];
/// loop {
///     let read = future::or(async { Some(tls.read(&mut buf).await) }, async {
///         handle.ending().await;
///         None
///     });
///     match read.await {
///         Some(Ok(0)) => return Ok(()),
///         Some(Ok(n)) => tls.write_all(&buf[..n]).await?,
///         Some(Err(e)) => return Err(e),
///         // Ended by the drain: close_notify, then our FIN.
///         None => return tls.close().await,
///     }
/// }
/// # }
/// ```
pub struct ConnHandle {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
}

impl fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnHandle")
            .field("ending", &self.conn.ending())
            .finish_non_exhaustive()
    }
}

impl ConnHandle {
    pub(crate) fn new(shared: Arc<Shared>, conn: Arc<ConnState>) -> Self {
        conn.handles.fetch_add(1, Ordering::SeqCst);
        ConnHandle { shared, conn }
    }

    /// Waits until the tracker ends this connection, and says how.
    ///
    /// It resolves when the drain ends the connection (an idle one after its
    /// idle grace, a new one after its first-byte grace, a busy one once it
    /// is idle), when the deadline passes, or once the stream is dropped.
    /// Resolves at once if that has happened already.
    pub async fn ending(&self) -> Ending {
        self.conn.ended().await
    }

    /// Says that what was exchanged so far was a handshake (TLS, or any
    /// preamble both sides send before the first request), not a request:
    /// the connection is **New** again, and a drain gives it the first-byte
    /// grace for its first request rather than the idle grace.
    ///
    /// Without it, the handshake's own reads and writes look like a request
    /// and its response to the automatic policy, and a connection that has
    /// finished its TLS handshake but sent no request yet counts as idle.
    /// Call it right after the handshake completes. It does nothing to a
    /// connection held busy by a [`BusyGuard`], or one already closing.
    pub fn handshake_done(&self) {
        let (shared, conn) = (&*self.shared, &*self.conn);
        if conn.busy_guards.load(Ordering::SeqCst) > 0 {
            return;
        }
        for from in [BUSY, IDLE] {
            if shared.set_state_from(conn, from, NEW) {
                // A pending read looks again: its grace has changed.
                conn.reader.wake();
                return;
            }
        }
    }

    /// Keeps this connection from being handed to the next generation: the
    /// drain closes it instead. The same as
    /// [`Tracked::decline_handover`](super::Tracked::decline_handover).
    pub fn decline_handover(&self) {
        self.conn
            .declined
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Marks the connection Busy until the returned guard is dropped; the
    /// same as [`Tracked::busy`](super::Tracked::busy), for a stream wrapped
    /// out of reach.
    pub fn busy(&self) -> BusyGuard {
        BusyGuard::new(&self.shared, &self.conn)
    }
}

impl Clone for ConnHandle {
    fn clone(&self) -> Self {
        ConnHandle::new(self.shared.clone(), self.conn.clone())
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        if self.conn.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Nobody will say goodbye any more: a read waiting for it need
            // not wait out the linger time.
            self.conn.reader.wake();
        }
    }
}
