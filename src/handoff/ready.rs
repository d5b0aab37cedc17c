//! The readiness pipe: how a new generation tells its parent it is ready.
//!
//! The parent passes the write end of a pipe to the child. When the child
//! is ready to serve, it writes exactly [`READY_MESSAGE`] and may then close
//! its end. Anything else is a failed upgrade: other bytes are garbage, and
//! end-of-file before the whole message means the child exited or gave up.
//!
//! The parent reads whatever chunks the pipe yields and feeds them to a
//! [`ReadyReader`], a pure incremental checker with a fixed-size state, so
//! a misbehaving child cannot make the parent buffer without bound.

use std::fmt;
use std::io;
use std::os::fd::AsFd;

/// What the child writes when it is ready.
pub const READY_MESSAGE: &[u8] = b"ready\n";

/// How many received bytes an error keeps, for its message.
const MAX_RECEIVED: usize = 32;

/// Checks the bytes read from the readiness pipe, chunk by chunk.
#[derive(Debug, Default)]
pub struct ReadyReader {
    /// How many bytes of [`READY_MESSAGE`] have arrived so far. Everything
    /// received is a prefix of the message until an error, so this is the
    /// whole state.
    matched: usize,
    /// Set once, and then returned by every later call.
    error: Option<ReadyError>,
}

/// How far the child has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyStatus {
    /// A prefix of [`READY_MESSAGE`] has arrived, but not all of it.
    Incomplete,
    /// The whole message has arrived, and nothing else.
    Ready,
}

/// What went wrong on the readiness pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadyError {
    /// The child wrote something other than `ready\n`, or more after
    /// it.
    Garbage {
        /// The first bytes received (at most 32), for the message.
        received: Vec<u8>,
    },
    /// The pipe reached end-of-file before the whole message arrived: the
    /// child exited, or closed its end without being ready.
    ClosedEarly {
        /// The bytes received before end-of-file, a prefix of the message.
        received: Vec<u8>,
    },
}

impl fmt::Display for ReadyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyError::Garbage { received } => write!(
                f,
                "child wrote garbage on the readiness pipe: \"{}\"",
                received.escape_ascii()
            ),
            ReadyError::ClosedEarly { received } if received.is_empty() => {
                f.write_str("child closed the readiness pipe without saying it was ready")
            }
            ReadyError::ClosedEarly { received } => write!(
                f,
                "child closed the readiness pipe after writing only \"{}\"",
                received.escape_ascii()
            ),
        }
    }
}

impl std::error::Error for ReadyError {}

impl ReadyReader {
    /// A reader that has received nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next chunk read from the pipe.
    ///
    /// An empty chunk changes nothing (it is not end-of-file: call
    /// [`finish`](Self::finish) for that).
    ///
    /// # Errors
    ///
    /// [`ReadyError::Garbage`] if a byte does not continue
    /// [`READY_MESSAGE`], including any byte after the complete message.
    /// Once an error is returned, every later call returns it again.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<ReadyStatus, ReadyError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let expected = &READY_MESSAGE[self.matched..];
        let n = chunk.len().min(expected.len());
        if chunk.len() > expected.len() || chunk[..n] != expected[..n] {
            // Keep what arrived, bounded, so the error can show it.
            let mut received = READY_MESSAGE[..self.matched].to_vec();
            let room = MAX_RECEIVED - received.len();
            received.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let error = ReadyError::Garbage { received };
            self.error = Some(error.clone());
            return Err(error);
        }
        self.matched += n;
        Ok(self.status())
    }

    /// Says the pipe has reached end-of-file.
    ///
    /// # Errors
    ///
    /// [`ReadyError::ClosedEarly`] if the whole message had not arrived, or
    /// the error [`feed`](Self::feed) already returned.
    pub fn finish(&self) -> Result<(), ReadyError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match self.status() {
            ReadyStatus::Ready => Ok(()),
            ReadyStatus::Incomplete => Err(ReadyError::ClosedEarly {
                received: READY_MESSAGE[..self.matched].to_vec(),
            }),
        }
    }

    fn status(&self) -> ReadyStatus {
        if self.matched == READY_MESSAGE.len() {
            ReadyStatus::Ready
        } else {
            ReadyStatus::Incomplete
        }
    }
}

/// Writes [`READY_MESSAGE`] to `fd`, the child's end of the readiness pipe.
///
/// Interrupted and partial writes are retried until the whole message is
/// written. (A pipe write this short is atomic, so a partial write should not
/// happen, but nothing is lost by handling it.)
///
/// # Errors
///
/// Any error from `write(2)`: for example `EPIPE` if the parent has closed
/// its end (it gave up waiting), or `EAGAIN` if `fd` is non-blocking and the
/// pipe is full.
pub fn write_ready(fd: impl AsFd) -> io::Result<()> {
    crate::sys::write_all(fd, READY_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn garbage(received: &[u8]) -> Result<ReadyStatus, ReadyError> {
        Err(ReadyError::Garbage {
            received: received.to_vec(),
        })
    }

    #[test]
    fn whole_message() {
        let mut r = ReadyReader::new();
        assert_eq!(
            r.finish(),
            Err(ReadyError::ClosedEarly { received: vec![] })
        );
        assert_eq!(r.feed(b""), Ok(ReadyStatus::Incomplete));
        assert_eq!(r.feed(b"ready\n"), Ok(ReadyStatus::Ready));
        assert_eq!(r.feed(b""), Ok(ReadyStatus::Ready));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn every_split() {
        for i in 0..=READY_MESSAGE.len() {
            for j in i..=READY_MESSAGE.len() {
                let mut r = ReadyReader::new();
                r.feed(&READY_MESSAGE[..i]).unwrap();
                r.feed(&READY_MESSAGE[i..j]).unwrap();
                let last = r.feed(&READY_MESSAGE[j..]);
                assert_eq!(last, Ok(ReadyStatus::Ready), "{i} {j}");
                assert_eq!(r.finish(), Ok(()));
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut r = ReadyReader::new();
        for (i, b) in READY_MESSAGE.iter().enumerate() {
            let want = if i + 1 == READY_MESSAGE.len() {
                ReadyStatus::Ready
            } else {
                ReadyStatus::Incomplete
            };
            assert_eq!(r.feed(&[*b]), Ok(want));
        }
    }

    #[test]
    fn garbage_is_kept_and_repeated() {
        let mut r = ReadyReader::new();
        assert_eq!(r.feed(b"rea"), Ok(ReadyStatus::Incomplete));
        assert_eq!(r.feed(b"lly"), garbage(b"really"));
        // Sticky, even for bytes that would have been right.
        assert_eq!(r.feed(b"dy\n"), garbage(b"really"));
        assert_eq!(r.feed(b""), garbage(b"really"));
        assert_eq!(r.finish(), garbage(b"really").map(drop));
    }

    #[test]
    fn bytes_after_the_message_are_garbage() {
        let mut r = ReadyReader::new();
        assert_eq!(r.feed(b"ready\nready\n"), garbage(b"ready\nready\n"));

        let mut r = ReadyReader::new();
        assert_eq!(r.feed(b"ready\n"), Ok(ReadyStatus::Ready));
        assert_eq!(r.feed(b"x"), garbage(b"ready\nx"));
        assert!(r.finish().is_err());
    }

    #[test]
    fn near_misses() {
        for bad in [
            &b"READY\n"[..],
            b"ready\r\n",
            b"ready",
            b"\0",
            b"readyy",
            b"r\n",
        ] {
            let mut r = ReadyReader::new();
            let fed = r.feed(bad);
            let end = r.finish();
            assert!(fed.is_err() || end.is_err(), "{:?}", bad.escape_ascii());
        }
        let mut r = ReadyReader::new();
        assert_eq!(r.feed(b"read"), Ok(ReadyStatus::Incomplete));
        assert_eq!(
            r.finish(),
            Err(ReadyError::ClosedEarly {
                received: b"read".to_vec()
            })
        );
    }

    #[test]
    fn received_is_bounded() {
        let mut r = ReadyReader::new();
        r.feed(b"rea").unwrap();
        let Err(ReadyError::Garbage { received }) = r.feed(&[b'x'; 10_000]) else {
            panic!("expected garbage");
        };
        assert_eq!(received.len(), MAX_RECEIVED);
        assert!(received.starts_with(b"reax"));
    }

    #[test]
    fn messages() {
        let mut r = ReadyReader::new();
        let e = r.feed(b"hello\n\x01").unwrap_err();
        assert_eq!(
            e.to_string(),
            "child wrote garbage on the readiness pipe: \"hello\\n\\x01\""
        );
        assert_eq!(
            ReadyReader::new().finish().unwrap_err().to_string(),
            "child closed the readiness pipe without saying it was ready"
        );
        let mut r = ReadyReader::new();
        r.feed(b"rea").unwrap();
        assert_eq!(
            r.finish().unwrap_err().to_string(),
            "child closed the readiness pipe after writing only \"rea\""
        );
    }

    #[test]
    fn write_ready_over_a_real_pipe() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        write_ready(&write).unwrap();
        drop(write);

        let mut r = ReadyReader::new();
        let mut buf = [0u8; 64];
        loop {
            let n = rustix::io::read(&read, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            r.feed(&buf[..n]).unwrap();
        }
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn write_ready_to_a_closed_pipe_fails() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        drop(read);
        // The test harness ignores SIGPIPE, as every Rust program does.
        let err = write_ready(&write).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
