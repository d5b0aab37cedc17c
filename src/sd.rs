//! The library's own sd_notify messages: systemd's with the `systemd`
//! feature, nothing without it. The one place that feature is checked.

#[cfg(feature = "systemd")]
pub(crate) use crate::systemd::{main_pid_ready, ready, reloading, status, stopping};

#[cfg(not(feature = "systemd"))]
pub(crate) use off::*;

#[cfg(not(feature = "systemd"))]
mod off {
    use std::io;

    pub(crate) fn ready() -> io::Result<bool> {
        Ok(false)
    }

    pub(crate) fn reloading() -> io::Result<bool> {
        Ok(false)
    }

    pub(crate) fn stopping() -> io::Result<bool> {
        Ok(false)
    }

    pub(crate) fn main_pid_ready(_pid: u32) -> io::Result<bool> {
        Ok(false)
    }

    pub(crate) fn status(_text: &str) -> io::Result<bool> {
        Ok(false)
    }
}
