//! An HTTP/1.1 server on hyper 1 and smol (through smol-hyper), with
//! graceful shutdown and hot restart by seamless.
//!
//! ```text
//! seamless-hyper [--listen ADDR] [--pid-file PATH] [--ready-timeout-ms N]
//!                [--drain-timeout-ms N] [--idle-grace-ms N] [--first-byte-grace-ms N]
//!                [--header-read-timeout-ms N] [--verbose]
//! ```
//!
//! - `GET /` answers `200 ok`; `GET /sleep?ms=N` answers `200 ok` after N ms;
//!   anything else is a 404 (405 for methods other than GET and HEAD). Every
//!   response has `content-length` and `x-generation: <pid>`.
//! - A response written while draining says `connection: close`.
//! - SIGHUP (or SIGUSR2) starts the next generation, which inherits the
//!   listening socket; SIGTERM (or SIGINT) drains; a second SIGTERM stops at
//!   once.
//!
//! On stdout it prints `listening on ADDR` once bound. On stderr it logs one
//! line per event, each starting with `[pid]`, as the hand-written example
//! (`examples/common/http_server.rs`) does; `--verbose` adds one line per
//! connection accepted, per request and per connection closed.

use std::io::{self, Write};
use std::process::ExitCode;

/// Writes one log line to stderr in a single `write`, so that lines from
/// several generations sharing the same pipe never interleave.
fn log(message: std::fmt::Arguments<'_>) {
    let line = format!("[{}] {message}\n", std::process::id());
    let _ = io::stderr().write_all(line.as_bytes());
}

macro_rules! log {
    ($($arg:tt)*) => { $crate::log(format_args!($($arg)*)) };
}

mod args;
mod server;
mod service;

fn main() -> ExitCode {
    let outcome = args::parse(std::env::args().skip(1)).and_then(server::run);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
