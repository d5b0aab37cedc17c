//! An HTTP/1.1 server on hyper 1 and smol (through smol-hyper), with
//! graceful shutdown and hot restart by seamless.
//!
//! ```text
//! seamless-hyper [--listen ADDR] [--pid-file PATH] [--ready-timeout-ms N]
//!                [--drain-timeout-ms N] [--idle-grace-ms N] [--first-byte-grace-ms N]
//!                [--header-read-timeout-ms N] [--verbose] [--events]
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
//! line per event for people, each starting with `[pid]`, as the
//! hand-written example (`examples/common/http_server.rs`) does; `--verbose`
//! adds one line per connection accepted, per request and per connection
//! closed. With `--events` it also writes one machine-readable line per
//! event there, in the format of the library's test harness
//! (`seamless_test_support::events`, `support/src/events.rs`): the tests read
//! those, never the log text.

use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use seamless_test_support::events::{self, Event};

/// Writes one log line to stderr in a single `write`, so that lines from
/// several generations sharing the same pipe never interleave.
fn log(message: std::fmt::Arguments<'_>) {
    let line = format!("[{}] {message}\n", std::process::id());
    let _ = io::stderr().write_all(line.as_bytes());
}

macro_rules! log {
    ($($arg:tt)*) => { $crate::log(format_args!($($arg)*)) };
}

/// Whether `--events` was given.
static EVENTS: AtomicBool = AtomicBool::new(false);

/// With `--events`, writes `event` on stderr as a machine-readable line.
fn emit(event: impl FnOnce(u32) -> Event) {
    if EVENTS.load(Ordering::Relaxed) {
        events::emit(&event(std::process::id()));
    }
}

mod args;
mod server;
mod service;

fn main() -> ExitCode {
    let outcome = args::parse(std::env::args().skip(1)).and_then(|args| {
        EVENTS.store(args.events, Ordering::Relaxed);
        server::run(args)
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
