//! Graceful shutdown and hot restart for network services, on any async
//! runtime.
//!
//! `seamless` lets a service stop, or hand its listening sockets to a new
//! copy of itself, without refusing a connection or cutting a request in
//! flight. It works with smol, async-std, a plain `futures` executor or a
//! home-grown event loop, and has no tokio dependency.
//!
//! **What happens to my in-flight request?** It finishes. When draining
//! starts, the listener stops accepting, idle keep-alive connections are
//! closed cleanly (the peer sees EOF, never a reset), brand-new connections
//! get a short grace for their first request to arrive, and busy connections
//! are left alone until their request is done, or until the deadline.
//!
//! # Implementation
//!
//! Nothing here spawns a task or needs an executor handle: the library hands
//! out futures and your runtime polls them.
//!
//! - **Wakeups**: `event-listener` for the coordinator's phase changes, and
//!   a lock-free waker slot per connection (`atomic-waker`) so a drain can
//!   wake an idle connection's read without a lock on the per-request path.
//! - **Time**: [`async_io::Timer`], so async-io's reactor must run (its own
//!   thread, or `async_io::block_on`), as it does under smol and async-std.
//!   **Time is enforced only while someone awaits [`Shutdown::stopped`]**
//!   (or [`Tracker::report_drain`]): the drain deadline, and the end of a
//!   pre-drain delay. Always await it, usually in `main`.
//! - **Threads**: a hot restart creates the next generation on a
//!   short-lived thread of its own (`clone` with `CLONE_VM|CLONE_VFORK` on
//!   Linux), so the executor never waits for the child's `exec` and no page
//!   table is copied; a child killed while it had not been reaped yet is
//!   reaped by another short-lived thread.
//! - **Syscalls**: every raw fd, process and signal syscall goes through one
//!   private module, `sys`, mostly through `rustix`; it is the only place
//!   with `unsafe`.
//!
//! At drain, each idle connection's pending read is woken and returns
//! `Ok(0)` after a lingering close, so the application's own read loop ends
//! with no change to its code.
//!
//! # Examples
//!
//! Two ordering contracts:
//!
//! 1. **Subscribe to the shutdown before checking whether it has happened.**
//!    [`Shutdown::draining`] and [`TrackedListener::accept`] do both in the
//!    right order for you; never check `is_draining()` and then wait.
//! 2. **Inherit or bind every listener before calling
//!    [`ready()`](Upgrader::ready).** Once you are ready, your parent
//!    generation stops accepting.
//!
//! ```
//! use std::net::TcpStream;
//! use std::time::Duration;
//! use async_io::Async;
//! use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
//! use seamless::handoff::Options;
//! use seamless::{Shutdown, Tracker, Upgrader};
//!
//! # future::block_on(async {
//! let shutdown = Shutdown::new();
//! let upgrader = Upgrader::new(&shutdown, Options::default())?;
//! let tracker = Tracker::new(&shutdown);
//! // Inherited from the previous generation if there is one, bound if not...
//! let listener = upgrader.tcp_listener("echo", "127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//! let mut listener = tracker.listen(Async::new(listener)?);
//! upgrader.ready()?; // ...and only then ready.
//!
//! let server = async {
//!     // `None` once draining has started: the accept loop ends.
//!     while let Some((mut conn, _)) = listener.accept().await? {
//!         let mut buf = [0; 64];
//!         // A drained idle connection reads `Ok(0)`: this loop ends by itself.
//!         while let Ok(n @ 1..) = conn.read(&mut buf).await {
//!             conn.write_all(&buf[..n]).await?;
//!         }
//!     }
//!     std::io::Result::Ok(())
//! };
//! let client = async {
//!     let mut stream = Async::<TcpStream>::connect(addr).await?;
//!     stream.write_all(b"hello").await?;
//!     let mut reply = [0; 5];
//!     stream.read_exact(&mut reply).await?;
//!     shutdown.graceful(Duration::from_secs(5)); // the connection is idle now
//!     let mut rest = Vec::new();
//!     stream.read_to_end(&mut rest).await?; // a clean EOF, not a reset
//!     shutdown.stopped().await;
//!     std::io::Result::Ok(reply)
//! };
//! let ((), reply) = future::try_zip(server, client).await?;
//! assert_eq!(&reply, b"hello");
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]
// Only `sys` makes raw syscalls; its modules that need `unsafe` opt back in
// and say why in a `# Safety` module doc.
#![deny(unsafe_code)]

pub mod conn;
pub mod handoff;
mod sd;
pub mod shutdown;
#[cfg(feature = "signals")]
pub mod signals;
mod sys;
#[cfg(feature = "systemd")]
pub mod systemd;

pub use conn::{Tracked, TrackedListener, Tracker};

/// The parsers of bytes that come from another process, for the fuzz
/// targets under `fuzz/` only (built with `--cfg fuzzing`). Not an API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz_bridge {
    pub use crate::handoff::env::{
        parse_listen_env, render_listen_env, Activation, EnvError, MAX_FD_NAME_LEN, MAX_LISTEN_FDS,
        SD_LISTEN_FDS_START,
    };
    pub use crate::handoff::ready::{ReadyError, ReadyReader, ReadyStatus, READY_MESSAGE};

    pub use crate::handoff::channel::stream::{AckTracker, Delivery, Ending, Inbound, StreamError};
    pub use crate::handoff::channel::wire::{
        app_state_chunks, check_listener_name, decode, Kind, Message, WireError, CHUNK_HEADER_LEN,
        MAX_APP_STATE_LEN, MAX_CHUNK_LEN, MAX_CONNECTION_STATE_LEN, MAX_LISTENER_NAME_LEN,
        MAX_MESSAGE_LEN, VERSION,
    };
}
pub use handoff::Upgrader;
pub use shutdown::{Guard, Phase, Reason, Shutdown};

// Compiles the README's examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
