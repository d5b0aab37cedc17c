//! What the tests share beyond the library's test harness
//! (`seamless_test_support`, in `support/`): how to start this package's
//! server, and waits on its connection events (`--verbose --events`).
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

pub use seamless_test_support::events::Event;
pub use seamless_test_support::server::{Launch, Server, LONG};

/// The server binary. It is this package's own `[[bin]]`, so cargo builds it
/// (from the same sources, with the same profile) before it runs the tests
/// and tells us where: never a stale binary.
pub fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_seamless-hyper"))
}

/// The server with `extra` options, and long ready and drain timeouts.
pub fn launch(name: &str, extra: &[&str]) -> Launch {
    Launch::new(name, server_binary())
        .args(["--ready-timeout-ms", "20000", "--drain-timeout-ms", "20000"])
        .args(extra.iter().copied())
}

/// Starts the server with `extra` options and waits until it is ready and
/// answers.
pub fn start(name: &str, extra: &[&str]) -> Server {
    launch(name, extra)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The first event `matches` accepts, waiting up to [`LONG`] for it; fails
/// the test naming `what` otherwise.
pub fn wait_event(server: &Server, what: &str, matches: impl FnMut(&Event) -> bool) -> Event {
    server
        .wait_event(0, LONG, matches)
        .unwrap_or_else(|| server.fail(&format!("no event: {what}")))
}

/// With `--verbose`: waits until `peer` is the only connection `pid` has
/// accepted and not yet closed (the readiness probes' are gone).
pub fn wait_only_open(server: &Server, pid: u32, peer: SocketAddr) {
    let only = server.wait(LONG, |seen| {
        let mut open = BTreeSet::new();
        for event in &seen.events {
            match *event {
                Event::Accepted { pid: p, peer } if p == pid => {
                    open.insert(peer);
                }
                Event::Closed { pid: p, peer, .. } if p == pid => {
                    open.remove(&peer);
                }
                _ => {}
            }
        }
        (open == BTreeSet::from([peer])).then_some(())
    });
    if only.is_none() {
        server.fail(&format!(
            "{pid} never had {peer} as its only open connection"
        ));
    }
}
