//! Fuzzes the parser of `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES`,
//! whose values come from another process.
//!
//! Input layout: one flag byte, four bytes of pid, then up to three values
//! separated by NUL (which no environment variable can contain).
#![no_main]

use libfuzzer_sys::fuzz_target;
use seamless::fuzz_bridge::{
    parse_listen_env, render_listen_env, Activation, EnvError, MAX_FD_NAME_LEN, MAX_LISTEN_FDS,
    SD_LISTEN_FDS_START,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (pid, rest) = rest.split_at(rest.len().min(4));
    let mut parts = rest.splitn(3, |&b| b == 0);
    let mut var = |bit: u8| {
        let value = parts.next().unwrap_or_default();
        (flags & bit != 0).then_some(value)
    };
    let listen_pid = var(1);
    let listen_fds = var(2);
    let listen_fdnames = var(4);
    // Half the time, make LISTEN_PID right so the rest gets checked too.
    let own_pid = match listen_pid.and_then(|p| std::str::from_utf8(p).ok()?.parse().ok()) {
        Some(p) if flags & 8 != 0 => p,
        _ => {
            let mut bytes = [0; 4];
            bytes[..pid.len()].copy_from_slice(pid);
            u32::from_le_bytes(bytes)
        }
    };

    let result = parse_listen_env(listen_pid, listen_fds, listen_fdnames, own_pid);
    let fds = match result {
        Ok(Activation::Fds(fds)) => fds,
        Ok(Activation::NotOurs { listen_pid: pid }) => {
            // Only when the fds are announced, and LISTEN_PID is unset or
            // names another process (as sd_listen_fds() ignores them).
            assert!(listen_fds.is_some());
            match (listen_pid, pid) {
                (None, None) => {}
                (Some(_), Some(pid)) => assert_ne!(pid, own_pid),
                other => panic!("NotOurs for {other:?}"),
            }
            return;
        }
        Err(e) => {
            check_error(&e);
            return;
        }
    };

    let Some(listen_fds) = listen_fds else {
        assert!(fds.is_empty(), "LISTEN_FDS unset but got {fds:?}");
        return;
    };
    // The count is plain decimal and says how many fds there are.
    assert!(listen_fds.iter().all(u8::is_ascii_digit));
    let count: u64 = std::str::from_utf8(listen_fds).unwrap().parse().unwrap();
    assert_eq!(count, fds.len() as u64);
    assert!(fds.len() <= MAX_LISTEN_FDS);
    // LISTEN_PID matched.
    let pid: u64 = std::str::from_utf8(listen_pid.unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pid, u64::from(own_pid));

    for (i, fd) in fds.iter().enumerate() {
        assert_eq!(
            fd.fd,
            SD_LISTEN_FDS_START + i as i32,
            "fds must be contiguous"
        );
        assert!(!fd.name.is_empty());
        assert!(fd.name.len() <= MAX_FD_NAME_LEN);
        assert!(!fd.name.contains(':'), "name {:?} has a ':'", fd.name);
        assert!(fd.name.bytes().all(|b| (b' '..=b'~').contains(&b)));
    }

    // What a parent renders from these names reads back the same.
    let names: Vec<&str> = fds.iter().map(|fd| fd.name.as_str()).collect();
    let (n, joined) = render_listen_env(&names).expect("parsed names must render");
    let again = parse_listen_env(
        listen_pid,
        Some(n.as_bytes()),
        Some(joined.as_bytes()),
        own_pid,
    );
    assert_eq!(again, Ok(Activation::Fds(fds)));
});

fn check_error(e: &EnvError) {
    let message = e.to_string();
    assert!(!message.is_empty());
    if let EnvError::BadName { name, .. } = e {
        assert!(!name.contains(':') || message.contains("':'"));
    }
}
