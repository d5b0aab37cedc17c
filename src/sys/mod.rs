//! The only module that makes raw fd syscalls, all through rustix.
//!
//! Everything here takes `BorrowedFd`/`OwnedFd`, so it needs no `unsafe`
//! itself; the few places that must turn a raw fd number into a borrowed fd
//! say why that is sound where they do it.

mod socket;

pub(crate) use socket::*;
