//! Messages with fds attached (`SCM_RIGHTS`) over a unix `SOCK_SEQPACKET`
//! socket pair: the channel that hands connections to the next generation.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, and an fd always arrives with
//! the bytes it was sent with. Received fds are close-on-exec atomically
//! (`MSG_CMSG_CLOEXEC`), so none can leak into a process started meanwhile.
//!
//! Linux, Android and the BSDs have both. Elsewhere (macOS and the other
//! Apple systems have no `MSG_CMSG_CLOEXEC`, and no `SOCK_SEQPACKET` for
//! unix sockets) every function here fails with
//! [`io::ErrorKind::Unsupported`], and callers fall back to closing the
//! connections they would have handed over.
//!
//! No `unsafe` here: rustix's `sendmsg`/`recvmsg` own the control buffers.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// The most fds [`send_with_fds`] sends in one message.
pub(crate) const MAX_SEND_FDS: usize = 4;

/// Room for fds in one received message (at least this many: the control
/// buffer's alignment may leave room for a few more). Fds beyond the
/// caller's maximum that fit are closed and counted; beyond the room the
/// kernel drops them itself and says so with `MSG_CTRUNC`.
pub(crate) const RECV_FD_ROOM: usize = 8;

/// Whether this platform has what the channel needs.
pub(crate) const SUPPORTED: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
));

/// One message as [`recv_with_fds`] received it.
#[derive(Debug)]
pub(crate) struct Received {
    /// How many bytes were written to the buffer. Zero with no fds and no
    /// truncation is end-of-file.
    pub(crate) len: usize,
    /// The fds that came with it, close-on-exec, at most the caller's
    /// maximum.
    pub(crate) fds: Vec<OwnedFd>,
    /// Fds beyond the caller's maximum: they were closed here.
    pub(crate) extra_fds: usize,
    /// The message was longer than the buffer (`MSG_TRUNC`); the rest of it
    /// is lost.
    pub(crate) truncated: bool,
    /// Fds were dropped by the kernel (`MSG_CTRUNC`): more came than
    /// [`RECV_FD_ROOM`], or this process reached its fd limit.
    pub(crate) fds_truncated: bool,
}

impl Received {
    /// Whether this is end-of-file rather than a message. (A zero-length
    /// message reads the same; the channel never sends one.)
    pub(crate) fn is_eof(&self) -> bool {
        self.len == 0
            && self.fds.is_empty()
            && self.extra_fds == 0
            && !self.truncated
            && !self.fds_truncated
    }

    /// How many fds came with the message, counting the extra ones closed
    /// here (but not those the kernel dropped).
    pub(crate) fn fd_count(&self) -> usize {
        self.fds.len() + self.extra_fds
    }
}

pub(crate) use imp::*;

/// The error every function here returns where channels are unsupported.
pub(crate) fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "handing connections over needs SOCK_SEQPACKET unix sockets and \
         MSG_CMSG_CLOEXEC, which this platform lacks",
    )
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
))]
mod imp {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::mem::MaybeUninit;
    use std::os::fd::{BorrowedFd, OwnedFd};

    use rustix::io::Errno;
    use rustix::net::{
        self, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
        SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
    };

    use super::{Received, MAX_SEND_FDS, RECV_FD_ROOM};

    /// A connected pair of unix `SOCK_SEQPACKET` sockets, both
    /// close-on-exec and blocking. (`async_io::Async` makes its own end
    /// non-blocking; the end passed to a child is its own file description,
    /// which the child sets as it likes.)
    pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
        Ok(net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?)
    }

    /// Sends `bytes` as one message with `fds` attached, without blocking
    /// and without `SIGPIPE`. Interrupted calls are retried.
    ///
    /// # Errors
    ///
    /// - [`io::ErrorKind::WouldBlock`] if the socket's buffer is full.
    /// - `EPIPE` ([`io::ErrorKind::BrokenPipe`]) if the other end is closed.
    /// - `EMSGSIZE` if the message is larger than the socket allows.
    /// - `ETOOMANYREFS` if this user has too many fds in flight.
    /// - [`io::ErrorKind::InvalidInput`] for more than [`MAX_SEND_FDS`] fds.
    /// - [`io::ErrorKind::WriteZero`] if only part was sent, which a
    ///   `SOCK_SEQPACKET` socket never does.
    pub(crate) fn send_with_fds(
        socket: BorrowedFd<'_>,
        bytes: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        if fds.len() > MAX_SEND_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} fds in one message, over {MAX_SEND_FDS}", fds.len()),
            ));
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SEND_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            // Cannot happen: the buffer is sized for `MAX_SEND_FDS`.
            return Err(io::Error::other("control buffer too small"));
        }
        let iov = [IoSlice::new(bytes)];
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        loop {
            match net::sendmsg(socket, &iov, &mut control, flags) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message into `buf`, without blocking, keeping at most
    /// `max_fds` of the fds that came with it (all close-on-exec) and
    /// closing the others. Interrupted calls are retried.
    ///
    /// Never leaks an fd: every fd that arrived is either returned or
    /// closed, and a truncated message or control buffer is reported in the
    /// result rather than as an error.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::WouldBlock`] if no message is queued; any other
    /// error from `recvmsg(2)`.
    pub(crate) fn recv_with_fds(
        socket: BorrowedFd<'_>,
        buf: &mut [u8],
        max_fds: usize,
    ) -> io::Result<Received> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(RECV_FD_ROOM))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
        let msg = loop {
            let mut iov = [IoSliceMut::new(buf)];
            match net::recvmsg(socket, &mut iov, &mut control, flags) {
                Ok(msg) => break msg,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut received = Received {
            len: msg.bytes.min(buf.len()),
            fds: Vec::new(),
            extra_fds: 0,
            truncated: msg.flags.contains(ReturnFlags::TRUNC),
            fds_truncated: msg.flags.contains(ReturnFlags::CTRUNC),
        };
        // Draining takes every fd out of the buffer as an `OwnedFd`;
        // whatever is not kept is closed when dropped, here or by the
        // buffer's own drop.
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    if received.fds.len() < max_fds {
                        received.fds.push(fd);
                    } else {
                        received.extra_fds += 1;
                        drop(fd);
                    }
                }
            }
        }
        Ok(received)
    }
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
)))]
mod imp {
    use std::io;
    use std::os::fd::{BorrowedFd, OwnedFd};

    use super::{unsupported, Received};

    /// Unsupported here: see the module docs.
    pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
        Err(unsupported())
    }

    /// Unsupported here: see the module docs.
    pub(crate) fn send_with_fds(
        _socket: BorrowedFd<'_>,
        _bytes: &[u8],
        _fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        Err(unsupported())
    }

    /// Unsupported here: see the module docs.
    pub(crate) fn recv_with_fds(
        _socket: BorrowedFd<'_>,
        _buf: &mut [u8],
        _max_fds: usize,
    ) -> io::Result<Received> {
        Err(unsupported())
    }
}

/// Checks that `fd` is a unix `SOCK_SEQPACKET` socket, as a channel end
/// must be.
///
/// # Errors
///
/// [`io::ErrorKind::Unsupported`] where channels are not supported,
/// [`io::ErrorKind::InvalidInput`] for any other kind of fd, or the error
/// from asking (`EBADF` for an fd that is not open, `ENOTSOCK`).
pub(crate) fn check_seqpacket(fd: BorrowedFd<'_>) -> io::Result<()> {
    if !SUPPORTED {
        return Err(unsupported());
    }
    let info = super::socket_info(fd)?;
    if info.family == rustix::net::AddressFamily::UNIX
        && info.socket_type == rustix::net::SocketType::SEQPACKET
        && !info.listening
    {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a handoff channel must be a connected unix SOCK_SEQPACKET socket, not {:?} {:?}",
                info.family, info.socket_type
            ),
        ))
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
pub(crate) mod tests {
    use std::io::IoSlice;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::io::{fcntl_getfd, Errno, FdFlags};
    use rustix::net::{self, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use rustix::pipe::{pipe_with, PipeFlags};

    use super::*;

    /// A pipe whose read end says, without blocking, whether every copy of
    /// its write end is closed: an exact leak check that other tests running
    /// in parallel cannot disturb.
    pub(crate) struct Probe {
        read: OwnedFd,
        write: Option<OwnedFd>,
    }

    impl Probe {
        pub(crate) fn new() -> Probe {
            let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).unwrap();
            Probe {
                read,
                write: Some(write),
            }
        }

        pub(crate) fn write_end(&self) -> BorrowedFd<'_> {
            self.write.as_ref().unwrap().as_fd()
        }

        /// Closes our own write end, then tells whether another is open.
        pub(crate) fn other_write_end_open(&mut self) -> bool {
            self.write = None;
            match rustix::io::read(&self.read, &mut [0u8; 1]) {
                Ok(0) => false,
                Err(Errno::AGAIN) => true,
                other => panic!("unexpected read on probe: {other:?}"),
            }
        }
    }

    pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
        fcntl_getfd(fd).unwrap().contains(FdFlags::CLOEXEC)
    }

    #[test]
    fn pair_is_cloexec_seqpacket() {
        let (a, b) = seqpacket_pair().unwrap();
        for end in [&a, &b] {
            assert!(is_cloexec(end.as_fd()));
            check_seqpacket(end.as_fd()).unwrap();
        }
        let (r, _w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        assert!(check_seqpacket(r.as_fd()).is_err());
        let (s, _) = net::socketpair(
            net::AddressFamily::UNIX,
            net::SocketType::STREAM,
            net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let err = check_seqpacket(s.as_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn bytes_and_an_fd_arrive_together_close_on_exec() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut probe = Probe::new();
        send_with_fds(a.as_fd(), b"hello", &[probe.write_end()]).unwrap();

        let mut buf = [0u8; 64];
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert_eq!(got.fds.len(), 1);
        assert_eq!(
            (got.extra_fds, got.truncated, got.fds_truncated),
            (0, false, false)
        );
        assert!(
            is_cloexec(got.fds[0].as_fd()),
            "received fd must be CLOEXEC"
        );
        // It is the same pipe: a byte written through it arrives.
        crate::sys::write_all(&got.fds[0], b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&probe.read, &mut byte), Ok(1));
        assert!(probe.other_write_end_open());
        drop(got);
        assert!(!probe.other_write_end_open());
    }

    #[test]
    fn fds_beyond_the_maximum_are_closed_and_counted() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut probes: Vec<Probe> = (0..3).map(|_| Probe::new()).collect();
        let fds: Vec<_> = probes.iter().map(Probe::write_end).collect();
        send_with_fds(a.as_fd(), b"three", &fds).unwrap();

        let mut buf = [0u8; 64];
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!((got.fds.len(), got.extra_fds, got.fd_count()), (1, 2, 3));
        assert!(!got.fds_truncated);
        // The kept one is open; the two extras are closed already.
        assert!(probes[0].other_write_end_open());
        assert!(!probes[1].other_write_end_open());
        assert!(!probes[2].other_write_end_open());
        drop(got);
        assert!(!probes[0].other_write_end_open());
    }

    #[test]
    fn fds_beyond_the_room_are_dropped_and_reported() {
        let (a, b) = seqpacket_pair().unwrap();
        const SENT: usize = RECV_FD_ROOM + 4;
        let mut probes: Vec<Probe> = (0..SENT).map(|_| Probe::new()).collect();
        let fds: Vec<_> = probes.iter().map(Probe::write_end).collect();
        // More than `send_with_fds` allows: send them by hand.
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(SENT))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        net::sendmsg(
            &a,
            &[IoSlice::new(b"many")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        drop(fds);

        let mut buf = [0u8; 64];
        let got = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!(&buf[..got.len], b"many");
        assert!(got.fds_truncated, "MSG_CTRUNC must be reported");
        assert_eq!(got.fds.len(), 2);
        // Room for at least `RECV_FD_ROOM` (alignment may leave more).
        assert!((RECV_FD_ROOM..SENT).contains(&got.fd_count()));
        drop(got);
        // Every one is closed: the kept, the extras, and those the kernel
        // dropped.
        for (i, probe) in probes.iter_mut().enumerate() {
            assert!(!probe.other_write_end_open(), "fd {i} leaked");
        }
    }

    #[test]
    fn a_message_longer_than_the_buffer_is_reported_truncated() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut probe = Probe::new();
        send_with_fds(a.as_fd(), &[7u8; 100], &[probe.write_end()]).unwrap();
        send_with_fds(a.as_fd(), b"next", &[]).unwrap();

        let mut buf = [0u8; 10];
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert!(got.truncated);
        assert_eq!(got.len, 10);
        assert!(!got.is_eof());
        drop(got);
        assert!(!probe.other_write_end_open());
        // The rest of the long message is gone; the next one is whole.
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!(&buf[..got.len], b"next");
        assert!(!got.truncated);
    }

    #[test]
    fn empty_queue_would_block_and_closed_peer_is_eof() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = [0u8; 16];
        let err = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        send_with_fds(a.as_fd(), b"last", &[]).unwrap();
        drop(a);
        // What was queued before the close still arrives, then EOF.
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert_eq!(&buf[..got.len], b"last");
        assert!(recv_with_fds(b.as_fd(), &mut buf, 1).unwrap().is_eof());
        // Sending to a closed peer fails without SIGPIPE.
        let err = send_with_fds(b.as_fd(), b"x", &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_full_socket_would_block() {
        let (a, _b) = seqpacket_pair().unwrap();
        let mut sent = 0;
        let err = loop {
            match send_with_fds(a.as_fd(), &[0u8; 1024], &[]) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 100_000, "the socket never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(sent > 0);
    }

    #[test]
    fn too_many_fds_to_send_is_refused() {
        let (a, _b) = seqpacket_pair().unwrap();
        let probes: Vec<Probe> = (0..=MAX_SEND_FDS).map(|_| Probe::new()).collect();
        let fds: Vec<_> = probes.iter().map(Probe::write_end).collect();
        let err = send_with_fds(a.as_fd(), b"x", &fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
