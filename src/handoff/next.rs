//! The next generation, from its parent's side: start it with the passed
//! fds, wait until it says it is ready (or kill it), then watch it for the
//! probation time.
//!
//! Every path that gives up on a child kills and reaps it: the
//! [`NextChild`] handle does so when dropped, so cancelling the upgrade's
//! future (a stop asked for meanwhile) leaves nothing behind either.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::time::Duration;

use async_io::{Async, Timer};
use futures_lite::future;

use super::ready::{ReadyError, ReadyReader, ReadyStatus};
use super::spawn::{self, NextChild};
use crate::sys;

/// Why an upgrade did not happen, or did not last.
///
/// In every case but [`DiedInProbation`](UpgradeError::DiedInProbation)
/// this process goes on serving, untouched; in that one, a replacement it
/// started serves (or, if even that failed, the error says so).
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// This process has not called [`Upgrader::ready`](super::Upgrader::ready) yet.
    NotReady,
    /// Another upgrade is in progress.
    InProgress,
    /// A stop was already asked for: this process drains, or waits out its
    /// pre-drain delay.
    ShuttingDown,
    /// A stop (graceful or immediate) was asked for during the upgrade: the
    /// next generation was killed, or, if it had just become ready, told to
    /// stop too. Nothing is left of it.
    Aborted,
    /// The next generation became ready, then died within the
    /// [probation](super::Options::probation) time. This process started a
    /// replacement from its own executable, with the same sockets.
    DiedInProbation {
        /// The generation that died.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// The replacement's pid, or why it could not be started (then
        /// nothing serves once this process has drained).
        replacement: Result<u32, Box<UpgradeError>>,
    },
    /// The next generation could not be started.
    Spawn(io::Error),
    /// The next generation exited before it was ready.
    Exited(ExitStatus),
    /// The next generation was not ready in time; it was killed.
    Timeout(Duration),
    /// The next generation broke the readiness protocol; it was killed.
    Protocol(ReadyError),
    /// A syscall failed while waiting; the child was killed.
    Io(io::Error),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::NotReady => write!(f, "not ready yet: call ready() first"),
            UpgradeError::InProgress => write!(f, "an upgrade is already in progress"),
            UpgradeError::ShuttingDown => write!(f, "already shutting down"),
            UpgradeError::Aborted => write!(
                f,
                "a stop was asked for during the upgrade; the next generation was stopped"
            ),
            UpgradeError::DiedInProbation {
                pid,
                status,
                replacement,
            } => {
                write!(
                    f,
                    "the next generation ({pid}) died within its probation ({status}); "
                )?;
                match replacement {
                    Ok(new) => write!(
                        f,
                        "generation {new}, started from this one's own executable, serves instead"
                    ),
                    Err(e) if matches!(**e, UpgradeError::ShuttingDown) => {
                        write!(f, "no replacement: this generation was asked to stop")
                    }
                    Err(e) => write!(f, "starting a replacement failed too: {e}"),
                }
            }
            UpgradeError::Spawn(e) => write!(f, "could not start the next generation: {e}"),
            UpgradeError::Exited(status) => {
                write!(
                    f,
                    "the next generation exited before it was ready ({status})"
                )
            }
            UpgradeError::Timeout(t) => {
                write!(
                    f,
                    "the next generation was not ready within {t:?}; killed it"
                )
            }
            UpgradeError::Protocol(e) => write!(f, "{e}; killed it"),
            UpgradeError::Io(e) => write!(f, "waiting for the next generation: {e}"),
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpgradeError::Spawn(e) | UpgradeError::Io(e) => Some(e),
            UpgradeError::Protocol(e) => Some(e),
            UpgradeError::DiedInProbation {
                replacement: Err(e),
                ..
            } => Some(&**e),
            _ => None,
        }
    }
}

/// Starts a child with `spawn` (given the write end of a fresh readiness
/// pipe, to pass on) and waits until it is ready, for at most
/// `ready_timeout` from now, spawning included. Returns its pid and the
/// handle that still owns it. On any failure the child is killed and reaped.
pub(crate) async fn start_ready(
    ready_timeout: Duration,
    spawn: impl FnOnce(BorrowedFd<'_>) -> io::Result<NextChild>,
) -> Result<(u32, NextChild), UpgradeError> {
    let expired = Timer::after(ready_timeout);
    let (pipe_read, pipe_write) = sys::pipe_cloexec()
        .map_err(|e| UpgradeError::Spawn(spawn::context("creating the readiness pipe", e)))?;
    let pipe_read = Async::new(pipe_read).map_err(UpgradeError::Io)?;
    let child = spawn(pipe_write.as_fd()).map_err(UpgradeError::Spawn)?;
    // Only the child may hold the write end, so its exit reads as EOF.
    drop(pipe_write);
    // The child goes before the pipe, however this ends (the future dropped
    // included): a child still alive would take the closed pipe for a dead
    // parent, and carry on as the only generation.
    let mut starting = Starting { child, pipe_read };
    let waited = future::or(
        async {
            let pid = starting.child.exec().await.map_err(UpgradeError::Spawn)?;
            wait_ready(&starting.pipe_read, &mut starting.child)
                .await
                .map(|()| pid)
        },
        async {
            expired.await;
            Err(UpgradeError::Timeout(ready_timeout))
        },
    )
    .await;
    // Bound in this order, so that the child is dropped (killed) first
    // should this future be dropped while it is being killed.
    let Starting {
        pipe_read,
        mut child,
    } = starting;
    match waited {
        Ok(pid) => Ok((pid, child)),
        Err(error) => {
            let status = child.kill_and_reap().await;
            drop(pipe_read);
            Err(match (error, status) {
                (UpgradeError::Protocol(ReadyError::ClosedEarly { .. }), Ok(status)) => {
                    UpgradeError::Exited(status)
                }
                (error, _) => error,
            })
        }
    }
}

/// A child that is starting, and the pipe it says "ready" on: fields drop
/// in order, the child (killed and reaped) first.
struct Starting {
    child: NextChild,
    pipe_read: Async<OwnedFd>,
}

/// Reads the readiness pipe until the child says `ready`, closes it early,
/// or writes something else; or until the child exits (even if something
/// it started still holds the pipe open).
async fn wait_ready(pipe: &Async<OwnedFd>, child: &mut NextChild) -> Result<(), UpgradeError> {
    let read = async {
        let mut reader = ReadyReader::new();
        let mut buf = [0u8; 64];
        loop {
            let n = pipe
                .read_with(|fd| sys::read(fd, &mut buf))
                .await
                .map_err(UpgradeError::Io)?;
            if n == 0 {
                return reader.finish().map_err(UpgradeError::Protocol);
            }
            match reader.feed(&buf[..n]) {
                Ok(ReadyStatus::Ready) => return Ok(()),
                Ok(ReadyStatus::Incomplete) => {}
                Err(e) => return Err(UpgradeError::Protocol(e)),
            }
        }
    };
    let exited = async {
        Err(match child.exited().await {
            Ok(status) => UpgradeError::Exited(status),
            Err(e) => UpgradeError::Io(e),
        })
    };
    // The pipe first: a child that said ready and then exited did say it.
    future::or(read, exited).await
}

/// Watches a ready child for `probation`. Returns how it ended if it died
/// in that time: killed by a signal, or exited with a failure. A clean exit
/// (it handed over to a successor of its own, or was stopped on purpose)
/// ends the watch as a success.
pub(crate) async fn probation(child: &mut NextChild, probation: Duration) -> Option<ExitStatus> {
    future::or(
        async {
            match child.exited().await {
                Ok(status) if !status.success() => Some(status),
                _ => None,
            }
        },
        async {
            Timer::after(probation).await;
            None
        },
    )
    .await
}
