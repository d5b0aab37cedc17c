//! The routes, and the one line of the recipe that lives in the service:
//! a response written while draining says `connection: close`.

use std::time::Duration;

use async_io::Timer;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use seamless::Shutdown;

/// Longest `/sleep` accepted.
const MAX_SLEEP_MS: u64 = 60_000;

/// Answers `request`.
///
/// - `GET /`: `200 ok`; `GET /sleep?ms=N`: `200 ok` after N ms (at most
///   [`MAX_SLEEP_MS`]); anything else 404, or 405 for methods other than GET
///   and HEAD.
/// - Every response has `x-generation: <pid>`; hyper adds `content-length`
///   (a `String` body has an exact size) and leaves the body out for HEAD.
/// - If `shutdown` is draining when the response is made, it says
///   `connection: close`, and hyper closes the connection once the response
///   is written: the client learns it must reconnect without racing a close.
pub async fn respond(request: Request<Incoming>, shutdown: &Shutdown) -> Response<String> {
    let status = route(&request).await;
    let body = match status {
        StatusCode::OK => "ok\n",
        StatusCode::BAD_REQUEST => "bad request\n",
        StatusCode::NOT_FOUND => "not found\n",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed\n",
        _ => "error\n",
    };
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert("x-generation", HeaderValue::from(std::process::id()));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    // Decided now, after the handler: a drain that started while the request
    // was handled still gets its goodbye.
    if shutdown.is_draining() {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn route(request: &Request<Incoming>) -> StatusCode {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    match request.uri().path() {
        "/" => StatusCode::OK,
        "/sleep" => match sleep_ms(request.uri().query().unwrap_or("")) {
            Some(ms) => {
                Timer::after(Duration::from_millis(ms)).await;
                StatusCode::OK
            }
            None => StatusCode::BAD_REQUEST,
        },
        _ => StatusCode::NOT_FOUND,
    }
}

/// The `ms=N` of a `/sleep` query, if valid.
fn sleep_ms(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms <= MAX_SLEEP_MS)
}

#[cfg(test)]
mod tests {
    use super::sleep_ms;

    #[test]
    fn sleep_query() {
        assert_eq!(sleep_ms("ms=200"), Some(200));
        assert_eq!(sleep_ms("x=1&ms=0"), Some(0));
        assert_eq!(sleep_ms("ms=60001"), None);
        assert_eq!(sleep_ms("ms=-1"), None);
        assert_eq!(sleep_ms(""), None);
    }
}
