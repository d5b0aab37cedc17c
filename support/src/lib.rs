//! Test support for `seamless`, shared by its tests, its demo and the hyper
//! package's tests. Never published; the library depends on it only as a
//! dev-dependency.
//!
//! - [`events`]: the event lines the example servers write with `--events`,
//!   and their parser. With [`args`] (their command-line options), the
//!   modules available without the default `harness` feature, for the
//!   servers themselves.
//! - `server`: a server binary run as a real process, and every
//!   generation it turns into, seen through its events and its pid file.
//! - `load`: the HTTP load client (which generation answered, the
//!   keep-alive race told apart from real failures).
//! - `scenario`: hot restarts under load, then a graceful shutdown,
//!   measured into a report.
//! - `client`: a blocking HTTP/1.1 client for one connection at a time.
//! - `procs`: processes seen from outside (signals, reaping, fds, TCP
//!   queues), Linux.
//! - `build`: example binaries built on demand.
//!
//! Everything connects to loopback addresses only, and every wait is
//! bounded.
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod args;
pub mod events;

#[cfg(feature = "harness")]
pub mod build;
#[cfg(feature = "harness")]
pub mod client;
#[cfg(feature = "harness")]
pub mod load;
#[cfg(feature = "harness")]
pub mod procs;
#[cfg(feature = "harness")]
pub mod scenario;
#[cfg(feature = "harness")]
pub mod server;
