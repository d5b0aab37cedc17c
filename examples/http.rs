//! An HTTP/1.1 server with graceful shutdown and hot restart.
//!
//! ```text
//! cargo run --example http -- --listen 127.0.0.1:8080 --pid-file /tmp/http.pid
//! curl -i http://127.0.0.1:8080/            # x-generation: <pid>
//! kill -HUP $(cat /tmp/http.pid)            # hot restart: a new pid serves
//! kill -TERM $(cat /tmp/http.pid)           # graceful shutdown
//! ```
//!
//! See `examples/common/http_server.rs` for the routes and options.

#[path = "common/http_server.rs"]
mod http_server;

use std::process::ExitCode;

fn main() -> ExitCode {
    match http_server::main_with_args(std::env::args().skip(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[{}] error: {e}", std::process::id());
            ExitCode::FAILURE
        }
    }
}
