//! Starting the next generation: fork, place the passed fds at 3, 4, ...,
//! mark everything else close-on-exec, write the child's own pid into
//! `LISTEN_PID`, exec.
//!
//! # Safety
//!
//! `LISTEN_PID` must be the child's pid, which is only known after fork, and
//! a forked child must not allocate. So the whole `execve` input (program,
//! argv, envp with a `LISTEN_PID` slot of spare digits) is built before fork,
//! and the child only writes digits into that slot through a raw pointer,
//! then execs. The `pre_exec` closure owns every buffer the pointers point
//! into, so they stay valid for as long as the child can use them.
#![allow(unsafe_code)]

use std::ffi::{c_char, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command};

use super::env::{render_listen_env, SD_LISTEN_FDS_START};
use crate::sys;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for any `u32` pid.
const PID_DIGITS: usize = 10;

/// The variables we set for the child; the parent's own are not passed on.
pub(crate) const ACTIVATION_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Test hook: set to `1` in a generation's environment, its next upgrade's
/// child stops itself (SIGSTOP) just before exec. Never passed on.
const STOP_BEFORE_EXEC_VAR: &str = "SEAMLESS_TEST_STOP_BEFORE_EXEC";

/// Starts `program` with `args` (argv\[0\] included), this process's
/// environment, and `fds` at 3, 4, ... described by the socket-activation
/// variables.
pub(crate) fn spawn(
    program: &Path,
    args: &[OsString],
    fds: &[(&str, BorrowedFd<'_>)],
) -> io::Result<Child> {
    let names: Vec<&str> = fds.iter().map(|(name, _)| *name).collect();
    let (listen_fds, listen_fdnames) =
        render_listen_env(&names).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;

    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(key, _)| !ACTIVATION_VARS.iter().any(|var| key == OsStr::new(var)))
        .filter(|(key, _)| key != STOP_BEFORE_EXEC_VAR)
        .map(|(key, value)| [key.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    env.push(format!("LISTEN_FDS={listen_fds}").into_bytes());
    env.push(format!("LISTEN_FDNAMES={listen_fdnames}").into_bytes());

    // Sources sit above the targets, so placing one never clobbers another.
    let first_free = SD_LISTEN_FDS_START + fds.len() as RawFd;
    let sources = fds
        .iter()
        .map(|(_, fd)| sys::dup_at_least(fd, first_free))
        .collect::<io::Result<Vec<OwnedFd>>>()?;

    let mut exec = Exec::new(program, args, env, sources)?;
    let stop = std::env::var_os(STOP_BEFORE_EXEC_VAR).is_some_and(|v| v == "1");
    let mut command = Command::new(program);
    // SAFETY: the closure runs in the forked child and only makes
    // async-signal-safe calls, none of which allocates (see `Exec::run`).
    unsafe {
        command.pre_exec(move || {
            if stop {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::STOP,
                );
            }
            exec.run()
        });
    }
    command.spawn()
}

/// Everything `execve` needs, built before fork.
struct Exec {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` and room for the digits, NUL-terminated.
    _pid_slot: Vec<u8>,
    envp_ptrs: Vec<*const c_char>,
    /// Points at the first digit in `_pid_slot`.
    pid_digits: *mut u8,
    sources: Vec<OwnedFd>,
}

// SAFETY: the raw pointers point into heap buffers owned by this same value
// (moving it does not move them), and they are dereferenced only in the
// forked child, which has a single thread.
unsafe impl Send for Exec {}
// SAFETY: as above; `&Exec` gives no access through the pointers.
unsafe impl Sync for Exec {}

impl Exec {
    fn new(
        program: &Path,
        args: &[OsString],
        env: Vec<Vec<u8>>,
        sources: Vec<OwnedFd>,
    ) -> io::Result<Exec> {
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                let shown = String::from_utf8_lossy(bytes);
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NUL byte in {shown:?}"),
                )
            })
        };
        let program = cstring(program.as_os_str().as_bytes())?;
        let argv = args
            .iter()
            .map(|arg| cstring(arg.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let env = env
            .iter()
            .map(|entry| cstring(entry))
            .collect::<io::Result<Vec<_>>>()?;
        // "LISTEN_PID=0000000000\0": the child overwrites the digits. A Vec,
        // never resized after this, so pointers into it stay valid.
        let mut pid_slot = LISTEN_PID_PREFIX.to_vec();
        pid_slot.resize(LISTEN_PID_PREFIX.len() + PID_DIGITS + 1, 0);
        pid_slot[LISTEN_PID_PREFIX.len()..][..PID_DIGITS].fill(b'0');
        let slot_start = pid_slot.as_mut_ptr();
        // SAFETY: the prefix is shorter than the slot.
        let pid_digits = unsafe { slot_start.add(LISTEN_PID_PREFIX.len()) };
        let pointers = |strings: &[CString]| {
            let mut ptrs: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(std::ptr::null());
            ptrs
        };
        let mut envp_ptrs = pointers(&env);
        envp_ptrs.insert(env.len(), slot_start as *const c_char);
        Ok(Exec {
            argv_ptrs: pointers(&argv),
            envp_ptrs,
            program,
            _argv: argv,
            _env: env,
            _pid_slot: pid_slot,
            pid_digits,
            sources,
        })
    }

    /// Runs in the forked child. Returns only on failure.
    fn run(&mut self) -> io::Result<()> {
        self.write_pid(rustix::process::getpid().as_raw_nonzero().get() as u32);
        for (target, source) in (SD_LISTEN_FDS_START..).zip(&self.sources) {
            sys::process::dup_onto(source.as_fd(), target)?;
        }
        let first_free = SD_LISTEN_FDS_START + self.sources.len() as RawFd;
        // SAFETY: a forked child has exactly one thread.
        unsafe { sys::process::cloexec_from(first_free) };
        sys::process::block_startup_signals(true)?;
        // SAFETY: both arrays are null-terminated and point into CStrings
        // owned by `self`, alive for the call.
        Err(unsafe {
            sys::process::execve(
                &self.program,
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        })
    }

    /// Writes `pid` in decimal into the `LISTEN_PID` slot, NUL-terminated.
    fn write_pid(&mut self, pid: u32) {
        let mut digits = [0u8; PID_DIGITS];
        let mut n = pid;
        let mut start = PID_DIGITS;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let len = PID_DIGITS - start;
        // SAFETY: the slot has PID_DIGITS digit bytes and a NUL after them;
        // we write at most PID_DIGITS bytes plus one NUL inside that range.
        unsafe {
            std::ptr::copy_nonoverlapping(digits[start..].as_ptr(), self.pid_digits, len);
            *self.pid_digits.add(len) = 0;
        }
    }
}
