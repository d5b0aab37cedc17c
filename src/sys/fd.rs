//! Plain fd I/O for the readiness pipe: create, read, write, check type.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{fstat, FileType};
use rustix::io::Errno;
use rustix::pipe::{pipe_with, PipeFlags};

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(pipe_with(PipeFlags::CLOEXEC)?)
}

/// One `read(2)`.
pub(crate) fn read(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// Writes all of `bytes`, retrying interrupted and partial writes.
pub(crate) fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd.as_fd(), bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether `fd` is a pipe (FIFO).
pub(crate) fn is_fifo(fd: impl AsFd) -> bool {
    fstat(fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Fifo)
}
