//! The command line of the small stack examples (`async_std`,
//! `custom_runtime`, `udp`, `unix`, `tls`): `--listen ADDR_OR_PATH
//! [--pid-file PATH]`.

use std::path::PathBuf;
use std::time::Duration;

use seamless::handoff::Options;
use seamless::Shutdown;

/// How long a drain may take, in every example.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// How long a `hold` request waits for the drain at most.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(60);

pub struct Args {
    pub listen: String,
    pub pid_file: Option<PathBuf>,
}

impl Args {
    /// Parses the process's arguments; exits with a usage line on a bad one.
    pub fn parse(default_listen: &str) -> Args {
        let mut args = Args {
            listen: default_listen.to_owned(),
            pid_file: None,
        };
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            let value = argv.next();
            match (arg.as_str(), value) {
                ("--listen", Some(value)) => args.listen = value,
                ("--pid-file", Some(value)) => args.pid_file = Some(value.into()),
                _ => {
                    eprintln!("bad argument {arg:?}\nusage: --listen ADDR [--pid-file PATH]");
                    std::process::exit(2);
                }
            }
        }
        args
    }

    /// The coordinator, with the drain deadline every example uses.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown::builder().drain_timeout(DEADLINE).build()
    }

    /// Upgrader options: the pid file.
    pub fn options(&self) -> Options {
        let options = Options::default();
        match &self.pid_file {
            Some(path) => options.pid_file(path),
            None => options,
        }
    }
}

/// The answer to one line: this generation's pid, then the line.
pub fn reply(line: &str) -> String {
    format!("{} {}\n", std::process::id(), line.trim_end())
}

/// Whether a line asks to be held until this generation drains (a request
/// that spans a hot restart). Such a line is answered twice: `<pid> holding`
/// at once, and `<pid> hold` once this generation drains (at most after
/// [`HOLD_AT_MOST`]).
pub fn is_hold(line: &str) -> bool {
    line.trim_end() == "hold"
}
