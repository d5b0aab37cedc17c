//! The channel over real sockets: TCP connections on 127.0.0.1 handed
//! over with bytes still queued, thousands of concurrent senders, clean and
//! abandoned ends, and a peer that breaks the protocol.
#![cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
))]

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use async_io::Timer;
use futures::stream::{FuturesUnordered, StreamExt};
use futures_lite::future;
use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};

use super::stream::StreamError;
use super::wire::{self, Message, WireError, MAX_MESSAGE_LEN};
use super::*;
use crate::sys::scm::tests::{is_cloexec, Probe};

/// Runs `f` on this thread's reactor, failing the test after a generous
/// bound instead of hanging.
fn run<F: Future>(f: F) -> F::Output {
    async_io::block_on(future::or(f, async {
        Timer::after(Duration::from_secs(60)).await;
        panic!("test timed out");
    }))
}

fn channel() -> (Sender, Acks, Receiver) {
    let (a, b) = pair().unwrap();
    let (tx, acks) = Sender::new(a).unwrap();
    (tx, acks, Receiver::new(b).unwrap())
}

/// A connected TCP pair on 127.0.0.1: (client, server side).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    (client, server)
}

fn inode(fd: impl AsFd) -> u64 {
    rustix::fs::fstat(fd).unwrap().st_ino as u64
}

/// How many fds of this process refer to the socket with this inode.
#[cfg(target_os = "linux")]
fn socket_copies(ino: u64) -> usize {
    let target = format!("socket:[{ino}]");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|link| link.as_os_str() == target.as_str())
        .count()
}

fn stream_error(e: &io::Error) -> Option<&StreamError> {
    e.get_ref()?.downcast_ref::<StreamError>()
}

async fn expect_connection(rx: &mut Receiver) -> Connection {
    match rx.recv().await.unwrap() {
        Received::Connection(c) => c,
        other => panic!("expected a connection, got {other:?}"),
    }
}

#[test]
fn a_tcp_connection_travels_with_its_queued_bytes() {
    let (mut client, server) = tcp_pair();
    let ino = inode(&server);
    // The request is on the wire before the handover.
    client.write_all(b"GET /first ").unwrap();

    let (tx, mut acks, mut rx) = channel();
    let conn = run(async {
        let seq = tx
            .send_connection("http", b"keep-alive", server.as_fd())
            .await?;
        assert_eq!(seq, 0);
        let conn = expect_connection(&mut rx).await;
        // Acknowledged before it was handed out.
        assert_eq!(acks.next().await?, AckEvent::Taken(1));
        assert_eq!(tx.taken(), 1);
        io::Result::Ok(conn)
    })
    .unwrap();
    // The sender's copy is no longer needed: the receiver has it.
    drop(server);
    assert_eq!(conn.listener, "http");
    assert_eq!(conn.state, b"keep-alive");
    assert!(is_cloexec(conn.fd.as_fd()), "received fds must be CLOEXEC");
    assert_eq!(inode(&conn.fd), ino, "the same socket, not a copy");

    client.write_all(b"and more").unwrap();
    let mut server = TcpStream::from(conn.fd);
    let mut request = [0u8; 19];
    server.read_exact(&mut request).unwrap();
    assert_eq!(&request, b"GET /first and more");
    server.write_all(b"200 OK").unwrap();
    let mut response = [0u8; 6];
    client.read_exact(&mut response).unwrap();
    assert_eq!(&response, b"200 OK");

    // Ours was the last copy: closing it reaches the client as EOF.
    drop(server);
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
    #[cfg(target_os = "linux")]
    assert_eq!(socket_copies(ino), 0);
}

#[test]
fn a_draining_generation_forwards_to_its_successor() {
    let (mut client, server) = tcp_pair();
    let ino = inode(&server);
    client.write_all(b"ping").unwrap();
    // Generation A hands to B, and B, draining at once, to C.
    let (a_tx, mut a_acks, mut b_rx) = channel();
    let (b_tx, mut b_acks, mut c_rx) = channel();
    let conn = run(async {
        a_tx.send_connection("api", b"", server.as_fd()).await?;
        a_tx.finish().await?;
        let in_b = expect_connection(&mut b_rx).await;
        b_tx.send_connection(&in_b.listener, &in_b.state, in_b.fd.as_fd())
            .await?;
        b_tx.finish().await?;
        let in_c = expect_connection(&mut c_rx).await;
        // Each sender learns its message, and its end marker, were taken.
        assert_eq!(b_acks.next().await?, AckEvent::Taken(1));
        assert_eq!(a_acks.next().await?, AckEvent::Taken(1));
        drop(in_b);
        // B may not finish draining before A's channel closes.
        drop((a_tx, a_acks));
        assert!(matches!(b_rx.recv().await?, Received::Finished));
        drop((b_tx, b_acks));
        assert!(matches!(c_rx.recv().await?, Received::Finished));
        io::Result::Ok(in_c)
    })
    .unwrap();
    drop(server);
    let mut server = TcpStream::from(conn.fd);
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    #[cfg(target_os = "linux")]
    assert_eq!(socket_copies(ino), 1);
}

#[test]
fn end_marker_then_eof_is_finished() {
    let (tx, mut acks, mut rx) = channel();
    let mut probes: Vec<Probe> = (0..2).map(|_| Probe::new()).collect();
    run(async {
        for (i, probe) in probes.iter().enumerate() {
            assert_eq!(
                tx.send_connection("l", b"", probe.write_end()).await?,
                i as u64
            );
        }
        let end = tx.finish().await?;
        assert_eq!(end, 2);
        // Idempotent, and nothing may follow.
        assert_eq!(tx.finish().await?, 2);
        let err = tx
            .send_connection("l", b"", probes[0].write_end())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        let first = expect_connection(&mut rx).await;
        let second = expect_connection(&mut rx).await;
        drop((first, second));
        // The receiver acknowledges the end marker while it waits for EOF.
        let receiving = async {
            let received = rx.recv().await;
            assert!(matches!(received, Ok(Received::Finished)), "{received:?}");
        };
        let acknowledged = async {
            loop {
                match acks.next().await.unwrap() {
                    AckEvent::Taken(3) => break,
                    AckEvent::Taken(_) => {}
                    AckEvent::Closed { taken } => panic!("closed at {taken}"),
                }
            }
            assert_eq!(tx.sent(), 3);
            drop(tx);
            drop(acks);
        };
        future::zip(receiving, acknowledged).await;
        assert!(matches!(rx.recv().await?, Received::Finished));
        io::Result::Ok(())
    })
    .unwrap();
    for probe in &mut probes {
        assert!(!probe.other_write_end_open());
    }
}

#[test]
fn eof_without_end_marker_is_abandoned_and_queued_connections_still_arrive() {
    let (tx, acks, mut rx) = channel();
    let probes: Vec<Probe> = (0..2).map(|_| Probe::new()).collect();
    run(async {
        for probe in &probes {
            tx.send_connection("l", b"x", probe.write_end()).await?;
        }
        // The sender dies: both its ends close without an end marker.
        drop((tx, acks));
        // Both were in the queue: they are this generation's now, though
        // their acknowledgements have no one to go to.
        let _first = expect_connection(&mut rx).await;
        let _second = expect_connection(&mut rx).await;
        assert!(matches!(
            rx.recv().await?,
            Received::Abandoned { received: 2 }
        ));
        assert!(matches!(
            rx.recv().await?,
            Received::Abandoned { received: 2 }
        ));
        io::Result::Ok(())
    })
    .unwrap();
}

#[test]
fn a_receiver_that_closes_leaves_untaken_connections_to_the_sender() {
    let (tx, mut acks, mut rx) = channel();
    let mut probes: Vec<Probe> = (0..3).map(|_| Probe::new()).collect();
    run(async {
        for probe in &probes {
            tx.send_connection("l", b"", probe.write_end()).await?;
        }
        let taken = expect_connection(&mut rx).await;
        drop(rx);
        assert_eq!(acks.next().await?, AckEvent::Taken(1));
        assert_eq!(acks.next().await?, AckEvent::Closed { taken: 1 });
        assert_eq!(acks.next().await?, AckEvent::Closed { taken: 1 });
        // Sending now fails: the caller closes the connection itself.
        let err = tx
            .send_connection("l", b"", probes[0].write_end())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        drop(taken);
        io::Result::Ok(())
    })
    .unwrap();
    // The two untaken copies died with the receiver's queue: only ours is
    // left, and the sender may close it gracefully.
    for probe in &mut probes {
        assert!(!probe.other_write_end_open());
    }
}

#[test]
fn the_application_state_travels_in_chunks_between_connections() {
    let (tx, mut acks, mut rx) = channel();
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let probes: Vec<Probe> = (0..2).map(|_| Probe::new()).collect();
    run(async {
        let sending = async {
            let (state, conn) = future::zip(
                tx.send_app_state(&blob),
                tx.send_connection("l", b"1", probes[0].write_end()),
            )
            .await;
            let last = state?;
            conn?;
            tx.send_connection("l", b"2", probes[1].write_end()).await?;
            let err = tx.send_app_state(b"again").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let end = tx.finish().await?;
            assert!(last < end);
            while acks.taken() <= end {
                if let AckEvent::Closed { .. } = acks.next().await? {
                    panic!("receiver closed early");
                }
            }
            drop(tx);
            drop(acks);
            io::Result::Ok(())
        };
        let receiving = async {
            let mut state = None;
            let mut conns = Vec::new();
            loop {
                match rx.recv().await? {
                    Received::AppState(s) => {
                        assert!(state.is_none());
                        state = Some(s);
                    }
                    Received::Connection(c) => conns.push(c.state),
                    Received::Finished => break,
                    Received::Abandoned { .. } => panic!("abandoned"),
                }
            }
            io::Result::Ok((state, conns))
        };
        let ((), (state, mut conns)) = future::try_zip(sending, receiving).await?;
        assert_eq!(state.as_deref(), Some(&blob[..]));
        conns.sort();
        assert_eq!(conns, [b"1", b"2"]);
        io::Result::Ok(())
    })
    .unwrap();

    let (tx, _acks, _rx) = channel();
    let too_big = vec![0u8; wire::MAX_APP_STATE_LEN + 1];
    let err = run(tx.send_app_state(&too_big)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    // An empty blob is a blob.
    let (tx, _acks, mut rx) = channel();
    run(async {
        tx.send_app_state(b"").await?;
        assert!(matches!(rx.recv().await?, Received::AppState(s) if s.is_empty()));
        io::Result::Ok(())
    })
    .unwrap();
}

#[test]
fn invalid_names_and_states_are_refused_before_sending() {
    let (tx, _acks, _rx) = channel();
    let probe = Probe::new();
    let long_state = vec![0u8; wire::MAX_CONNECTION_STATE_LEN + 1];
    for (name, state) in [
        ("", &b""[..]),
        ("a:b", b""),
        ("tab\there", b""),
        ("ok", &long_state[..]),
    ] {
        let err = run(tx.send_connection(name, state, probe.write_end())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        assert!(err.get_ref().unwrap().downcast_ref::<WireError>().is_some());
    }
    assert_eq!(tx.sent(), 0);
}

/// A raw end that writes whatever a broken or foreign peer might.
fn raw_channel() -> (OwnedFd, Receiver) {
    let (a, b) = pair().unwrap();
    (a, Receiver::new(b).unwrap())
}

fn encode(message: Message<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    message.encode(&mut bytes).unwrap();
    bytes
}

#[test]
fn extra_fds_beyond_the_header_are_closed_and_reported() {
    let (raw, mut rx) = raw_channel();
    let mut probes: Vec<Probe> = (0..3).map(|_| Probe::new()).collect();
    let fds: Vec<_> = probes.iter().map(Probe::write_end).collect();
    let header = encode(Message::Connection {
        listener: "l",
        state: b"",
    });
    scm::send_with_fds(raw.as_fd(), &header, &fds).unwrap();
    drop(fds);
    let err = run(rx.recv()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        matches!(
            stream_error(&err),
            Some(StreamError::WrongFds {
                expected: 1,
                received: 3,
                ..
            })
        ),
        "{err}"
    );
    // None of the three is open anywhere but in the probes.
    for probe in &mut probes {
        assert!(!probe.other_write_end_open());
    }
    // The error sticks, and the channel is shut down for the sender.
    assert_eq!(
        run(rx.recv()).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    let err = scm::send_with_fds(raw.as_fd(), &header, &[]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
}

#[test]
fn malformed_messages_are_refused_with_their_fds_closed() {
    let mut probe = Probe::new();
    type Check = fn(&StreamError) -> bool;
    let cases: Vec<(Vec<u8>, usize, Check)> = vec![
        (vec![2, 1, 1, b'l', 0, 0], 1, |e| {
            matches!(
                e,
                StreamError::Wire(WireError::UnsupportedVersion { found: 2 })
            )
        }),
        (vec![1, 9], 0, |e| {
            matches!(e, StreamError::Wire(WireError::UnknownKind { found: 9 }))
        }),
        (
            encode(Message::Connection {
                listener: "l",
                state: b"",
            }),
            0,
            |e| matches!(e, StreamError::WrongFds { received: 0, .. }),
        ),
        (encode(Message::End { sent: 0 }), 1, |e| {
            matches!(e, StreamError::WrongFds { received: 1, .. })
        }),
        (encode(Message::End { sent: 5 }), 0, |e| {
            matches!(
                e,
                StreamError::EndCount {
                    sent: 5,
                    received: 0
                }
            )
        }),
        (encode(Message::Ack { received: 0 }), 0, |e| {
            matches!(e, StreamError::WrongDirection { .. })
        }),
        (vec![1; MAX_MESSAGE_LEN + 1], 1, |e| {
            matches!(e, StreamError::Wire(WireError::TooLong { .. }))
        }),
    ];
    for (bytes, fds, expected) in cases {
        let (raw, mut rx) = raw_channel();
        let fds = if fds == 1 {
            vec![probe.write_end()]
        } else {
            vec![]
        };
        scm::send_with_fds(raw.as_fd(), &bytes, &fds).unwrap();
        drop(fds);
        let err = run(rx.recv()).unwrap_err();
        let e = stream_error(&err).unwrap_or_else(|| panic!("not a stream error: {err}"));
        assert!(expected(e), "{bytes:?}: {e}");
        assert!(!e.to_string().is_empty());
        drop(rx);
        assert!(!probe.other_write_end_open(), "{bytes:?} leaked its fd");
        probe = Probe::new();
    }
}

#[test]
fn acknowledgements_that_make_no_sense_shut_the_channel() {
    for bad in [
        encode(Message::Ack { received: 5 }),
        encode(Message::End { sent: 0 }),
        vec![1],
    ] {
        let (a, raw) = pair().unwrap();
        let (tx, mut acks) = Sender::new(a).unwrap();
        scm::send_with_fds(raw.as_fd(), &bad, &[]).unwrap();
        let err = run(acks.next()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{bad:?}");
        assert!(stream_error(&err).is_some());
        assert_eq!(
            run(acks.next()).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let probe = Probe::new();
        let err = run(tx.send_connection("l", b"", probe.write_end())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}

#[test]
fn only_seqpacket_unix_sockets_make_channel_ends() {
    let (a, _b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let err = Sender::new(a).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let (_client, server) = tcp_pair();
    let err = Receiver::new(server.into()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    const { assert!(AVAILABLE) };
}

/// How many connections the bulk test hands over: enough that the socket
/// fills many times, well within the 20,000-fd limit (each uses 3 fds at
/// the peak: our end, the end sent, and the end received).
const BULK: usize = 2000;

/// Senders on two threads, `count` at once, against one receiver: every
/// connection arrives once, with its own state. Returns how many times a
/// sender had to wait for room.
fn bulk_handover(count: usize) -> usize {
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..count)
        .map(|_| {
            socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .unwrap()
        })
        .collect();
    let index_of: HashMap<u64, usize> = pairs
        .iter()
        .enumerate()
        .map(|(i, (_, theirs))| (inode(theirs), i))
        .collect();
    let (tx, mut acks, mut rx) = channel();
    let pending = AtomicUsize::new(0);

    let received = std::thread::scope(|s| {
        let (left, right) = pairs.split_at(count / 2);
        let left = s.spawn(send_all(tx.clone(), left, 0, &pending));
        let right = s.spawn(send_all(tx.clone(), right, count / 2, &pending));
        let received = run(async {
            let receiving = async {
                let mut got = Vec::new();
                loop {
                    match rx.recv().await.unwrap() {
                        Received::Connection(c) => got.push(c),
                        Received::Finished => return got,
                        other => panic!("{other:?}"),
                    }
                }
            };
            let acknowledged = async {
                // Everything sent: then the end marker, and wait until it
                // too is taken before closing.
                let mut target = count as u64;
                let mut finished = false;
                loop {
                    while acks.taken() < target {
                        if let AckEvent::Closed { taken } = acks.next().await.unwrap() {
                            panic!("receiver closed after {taken}");
                        }
                    }
                    if finished {
                        break;
                    }
                    target = tx.finish().await.unwrap() + 1;
                    finished = true;
                }
                drop(acks);
            };
            let (got, ()) = future::zip(receiving, acknowledged).await;
            got
        });
        left.join().unwrap();
        right.join().unwrap();
        received
    });
    drop(tx);

    assert_eq!(received.len(), count);
    let mut seen = vec![false; count];
    for conn in &received {
        assert_eq!(conn.listener, "bulk");
        let i = index_of[&inode(&conn.fd)];
        assert_eq!(std::str::from_utf8(&conn.state).unwrap(), i.to_string());
        assert!(!seen[i], "connection {i} arrived twice");
        seen[i] = true;
        assert!(is_cloexec(conn.fd.as_fd()));
    }
    pending.into_inner()
}

/// Sends the second of each pair, all at once, with its index (from
/// `first`) as its state; counts the polls that had to wait for room.
fn send_all<'a>(
    tx: Sender,
    pairs: &'a [(OwnedFd, OwnedFd)],
    first: usize,
    pending: &'a AtomicUsize,
) -> impl FnOnce() + Send + 'a {
    move || {
        run(async {
            let mut sends: FuturesUnordered<_> = pairs
                .iter()
                .enumerate()
                .map(|(i, (_, theirs))| {
                    let tx = &tx;
                    let state = (first + i).to_string();
                    poll_fn(move |cx| {
                        let poll =
                            tx.poll_send_connection(cx, "bulk", state.as_bytes(), theirs.as_fd());
                        if poll.is_pending() {
                            pending.fetch_add(1, Ordering::Relaxed);
                        }
                        poll
                    })
                })
                .collect();
            while let Some(result) = sends.next().await {
                result.unwrap();
            }
        })
    }
}

/// Set in the child process that runs [`bulk_handover`] alone, where
/// `/proc/self/fd` can be counted exactly.
const BULK_CHILD: &str = "SEAMLESS_CHANNEL_BULK_CHILD";

#[test]
fn thousands_of_concurrent_senders_fill_the_socket_and_leak_no_fd() {
    if std::env::var_os(BULK_CHILD).is_none() {
        // Other tests open fds in parallel here: count in a process of our
        // own, running only this test.
        let name = concat!(
            module_path!(),
            "::thousands_of_concurrent_senders_fill_the_socket_and_leak_no_fd"
        );
        let name = name.split_once("::").unwrap().1;
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(BULK_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    // The reactor's own fds are opened once, on first use.
    bulk_handover(10);
    let before = open_fds();
    let waits = bulk_handover(BULK);
    let after = open_fds();
    assert_eq!(before, after, "fds leaked");
    assert!(
        waits > 0,
        "the socket never filled: the test proves nothing"
    );
    println!("{BULK} connections, {waits} waits for room");
}

fn open_fds() -> usize {
    #[cfg(target_os = "linux")]
    let dir = "/proc/self/fd";
    #[cfg(not(target_os = "linux"))]
    let dir = "/dev/fd";
    std::fs::read_dir(dir).unwrap().count()
}

/// Wakes nobody, counts nothing: a context to poll once by hand.
fn noop_context() -> std::task::Context<'static> {
    std::task::Context::from_waker(std::task::Waker::noop())
}

#[test]
fn a_connection_is_handed_out_only_once_acknowledged() {
    // A sender that never reads acknowledgements: once they fill its
    // queue, the receiver holds the next connection back.
    let (raw, mut rx) = raw_channel();
    let probe = Probe::new();
    let header = encode(Message::Connection {
        listener: "l",
        state: b"",
    });
    let mut handed_out = 0u64;
    let mut blocked = false;
    for _ in 0..10_000 {
        scm::send_with_fds(raw.as_fd(), &header, &[probe.write_end()]).unwrap();
        match rx.poll_recv(&mut noop_context()) {
            Poll::Ready(Ok(Received::Connection(_))) => handed_out += 1,
            Poll::Pending => {
                blocked = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(blocked, "the acknowledgements never filled the socket");
    assert!(handed_out > 0);
    // The sender was told of every connection handed out, and of no other.
    let mut buf = vec![0u8; MAX_MESSAGE_LEN];
    let mut last = 0;
    loop {
        match scm::recv_with_fds(raw.as_fd(), &mut buf, 0) {
            Ok(got) => match wire::decode(&buf[..got.len]).unwrap() {
                Message::Ack { received } => last = received,
                other => panic!("{other:?}"),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(last, handed_out);
    // Now there is room: the held connection comes out, acknowledged.
    let held = run(expect_connection(&mut rx));
    let got = scm::recv_with_fds(raw.as_fd(), &mut buf, 0).unwrap();
    assert_eq!(
        wire::decode(&buf[..got.len]),
        Ok(Message::Ack {
            received: handed_out + 1
        })
    );
    drop(held);
}

#[test]
fn a_sender_that_dies_mid_blob_is_abandoned() {
    let (raw, mut rx) = raw_channel();
    let blob = vec![7u8; wire::MAX_CHUNK_LEN + 1];
    let first = wire::app_state_chunks(&blob).unwrap().next().unwrap();
    scm::send_with_fds(raw.as_fd(), &encode(first), &[]).unwrap();
    drop(raw);
    assert!(matches!(
        run(rx.recv()).unwrap(),
        Received::Abandoned { received: 1 }
    ));
}
