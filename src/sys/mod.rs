//! The only module that makes raw fd, process and signal syscalls, mostly
//! through rustix (and libc for the calls rustix has no stable API for:
//! `clone`, `fork`, `execve`/`fexecve`, `sigaction`, `pthread_sigmask`).
//!
//! Most functions take `BorrowedFd`/`OwnedFd` and need no `unsafe`; the few
//! that must act on raw fd numbers, run in a child before exec, or run in a
//! signal handler keep it inside and say why it is sound.

mod fd;
pub(crate) mod passed;
pub(crate) mod process;
pub(crate) mod scm;
pub(crate) mod signal;
mod socket;
pub(crate) mod spawn;

pub(crate) use fd::*;
pub(crate) use socket::*;
