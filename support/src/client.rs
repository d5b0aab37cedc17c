//! A small blocking HTTP/1.1 client for scenarios that look at one
//! connection at a time: what went over the wire, a clean EOF, a reset.
//! Every read and write is bounded by [`LONG`]. Loopback only.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::server::LONG;

/// A response, read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names in lower case, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`content-length` bytes).
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it says `connection: close`.
    pub fn says_close(&self) -> bool {
        self.header("connection").is_some_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
        })
    }

    /// The `x-generation` that answered, if any.
    pub fn generation(&self) -> Option<u32> {
        self.header("x-generation")?.parse().ok()
    }
}

/// A new connection to `addr`, with read and write timeouts of [`LONG`].
///
/// # Panics
///
/// If `addr` is not a loopback address.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    assert!(addr.ip().is_loopback(), "connect: not a loopback address");
    let stream = TcpStream::connect_timeout(&addr, LONG)?;
    stream.set_read_timeout(Some(LONG))?;
    stream.set_write_timeout(Some(LONG))?;
    Ok(stream)
}

/// Sends `GET path` (keep-alive unless `close`).
pub fn send_get(stream: &mut TcpStream, path: &str, close: bool) -> io::Result<()> {
    let connection = if close { "connection: close\r\n" } else { "" };
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{connection}\r\n");
    stream.write_all(request.as_bytes())
}

/// Reads one response with a `content-length` body, and nothing after it.
pub fn read_response(stream: &mut TcpStream) -> io::Result<Response> {
    let invalid = |message: String| io::Error::new(ErrorKind::InvalidData, message);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "EOF after {} bytes of a response: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => continue,
            Ok(httparse::Status::Partial) => return Err(invalid("response head too long".into())),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let headers: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).trim().to_owned(),
                )
            })
            .collect();
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .ok_or_else(|| invalid("no content-length".into()))?;
        let status = parsed.code.unwrap_or(0);
        let mut body = buf.split_off(head_len);
        while body.len() < length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "EOF inside the body",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        if body.len() > length {
            return Err(invalid("bytes after the body".into()));
        }
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// Reads until the server's FIN and returns what came before it. A reset
/// (seen in the read or in `SO_ERROR` afterwards), or no EOF within
/// [`LONG`], is an error saying so.
pub fn read_to_eof(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Ok(_) => match stream.take_error() {
            Ok(None) => Ok(data),
            Ok(Some(e)) | Err(e) => Err(format!("{e} after {} bytes", data.len())),
        },
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            Err(format!("no EOF within {LONG:?} ({} bytes)", data.len()))
        }
        Err(e) => Err(format!("{e} ({:?}) after {} bytes", e.kind(), data.len())),
    }
}

/// Reads on until the server's FIN: a clean EOF with nothing before it.
///
/// # Panics
///
/// On bytes before the EOF, a reset, or no EOF within [`LONG`].
pub fn expect_eof(stream: &mut TcpStream) {
    match read_to_eof(stream) {
        Ok(rest) => assert!(
            rest.is_empty(),
            "unexpected bytes before EOF: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Err(e) => panic!("expected a clean EOF, got {e}"),
    }
}

/// No RST reached the client. Call once the server side has closed.
///
/// # Panics
///
/// If `SO_ERROR` shows a reset (or cannot be read).
pub fn assert_no_reset(stream: &TcpStream) {
    let error = stream.take_error().expect("SO_ERROR");
    assert!(
        error.is_none(),
        "the server reset the connection (SO_ERROR is {error:?})"
    );
}
