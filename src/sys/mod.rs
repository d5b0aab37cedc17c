//! The only module that makes raw fd syscalls, all through rustix (and
//! libc for the two calls rustix lacks, in [`process`]).
//!
//! Most functions take `BorrowedFd`/`OwnedFd` and need no `unsafe`; the few
//! that must act on raw fd numbers keep it inside and say why it is sound.

mod fd;
pub(crate) mod process;
pub(crate) mod scm;
mod socket;

pub(crate) use fd::*;
pub(crate) use socket::*;
