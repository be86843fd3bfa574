//! The two protocols of the example servers, as herder-reactor [`Service`]s.
//!
//! - [`Echo`] writes back every byte it receives.
//! - [`Http`] answers every HTTP/1.1 request with `200 OK` and the body
//!   `Hello, world!`: a real parser (request line, headers, `Content-Length` bodies,
//!   pipelining, keep-alive, `Connection: close`), `400` for malformed requests, `431`
//!   for oversized headers, `413` for oversized bodies, `408` for a request whose
//!   headers take too long.
//!
//! When the server drains, [`Http`] is at a boundary between requests and closes
//! there (the request in flight is answered with `Connection: close`); [`Echo`] is a
//! byte stream with no boundary, served until the peer closes it or the drain
//! deadline passes. When the server moves its connections to another process
//! instead (a reload), both move: [`Echo`] at any point, [`Http`] between requests.

use herder_reactor::{Flow, Input, Move, Output, Service};
use std::time::{Duration, Instant};

/// Writes back every byte.
///
/// A byte stream: it keeps [`Service::on_drain`]'s default, so a draining server
/// never cuts it; it ends when the peer closes it or at the drain deadline.
///
/// # Examples
///
/// ```
/// use herder_demo::protocol::Echo;
/// use herder_reactor::{Server, ServerConfig};
/// let server = Server::new(ServerConfig::default(), |_| Echo)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Service for Echo {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        out.write(input.data());
        input.consume(input.len());
        Flow::Continue
    }

    /// Stateless: it moves whenever the server asks.
    fn on_move(&mut self) -> Move {
        Move::Now(Vec::new())
    }
}

/// The largest request head (request line and headers) accepted: 8 KiB.
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body accepted: 1 MiB.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long the head of one request may take to arrive: 10 s.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The response body.
pub const BODY: &[u8] = b"Hello, world!";

/// An HTTP/1.1 server that answers `200 OK`, `Hello, world!` to every request.
///
/// Draining ([`Service::on_drain`]), it closes a connection between requests at
/// once, and answers the request in flight (or a connection's first) with
/// `Connection: close` and closes after it.
///
/// # Examples
///
/// ```
/// use herder_demo::protocol::Http;
///
/// // A server calls it as a Service; `respond` is the parser underneath.
/// let mut http = Http::default();
/// let mut out = Vec::new();
/// let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
/// let (responses, close) = http.respond(req, &mut out);
/// assert_eq!(responses.consumed, req.len());
/// assert!(close);
/// assert_eq!(out.windows(13).filter(|w| *w == b"Hello, world!").count(), 2);
/// ```
#[derive(Debug)]
pub struct Http {
    /// When the first byte of the request being read arrived.
    started: Option<Instant>,
    /// While a body is arriving: how many bytes of the request were there, and when
    /// that count last grew.
    body_progress: Option<(usize, Instant)>,
    head_timeout: Duration,
    /// The server drains: the next response is the last.
    draining: bool,
    /// The last close was the client's own (`Connection: close`): it sends nothing
    /// more.
    client_done: bool,
}

impl Default for Http {
    fn default() -> Http {
        Http::with_head_timeout(HEAD_TIMEOUT)
    }
}

/// What [`Http::respond`] did with its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes of whole requests consumed.
    pub consumed: usize,
    /// Responses written.
    pub responses: usize,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    HeadTooLarge,
    BodyTooLarge,
    NotImplemented,
    Timeout,
}

impl Refusal {
    fn status(self) -> &'static str {
        match self {
            Refusal::BadRequest => "400 Bad Request",
            Refusal::HeadTooLarge => "431 Request Header Fields Too Large",
            Refusal::BodyTooLarge => "413 Content Too Large",
            Refusal::NotImplemented => "501 Not Implemented",
            Refusal::Timeout => "408 Request Timeout",
        }
    }
}

/// One parsed request head.
struct Head {
    len: usize,
    body: usize,
    close: bool,
    head_only: bool,
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the head at the start of `buf`: `Ok(None)` if it is not complete yet.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Refusal> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(Refusal::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    if end + 4 > MAX_HEAD {
        return Err(Refusal::HeadTooLarge);
    }
    let head = &buf[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().ok_or(Refusal::BadRequest)?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) => (m, t, v),
        _ => return Err(Refusal::BadRequest),
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return Err(Refusal::BadRequest);
    }
    if target.is_empty() || target.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(Refusal::BadRequest);
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return Err(Refusal::BadRequest),
    };
    let mut body: Option<usize> = None;
    let mut close = http10;
    for line in lines {
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Refusal::BadRequest)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(Refusal::BadRequest);
        }
        let value = value.trim_ascii();
        if value.iter().any(|&b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(Refusal::BadRequest);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n: usize = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or(Refusal::BadRequest)?;
            if body.is_some_and(|b| b != n) {
                return Err(Refusal::BadRequest);
            }
            if n > MAX_BODY {
                return Err(Refusal::BodyTooLarge);
            }
            body = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Refusal::NotImplemented);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        }
    }
    Ok(Some(Head {
        len: end + 4,
        body: body.unwrap_or(0),
        close,
        head_only: method == b"HEAD",
    }))
}

fn response(out: &mut Vec<u8>, status: &str, close: bool, head_only: bool) {
    let body = if status.starts_with("200") {
        BODY
    } else {
        status.as_bytes()
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

impl Http {
    /// A service whose requests must have their head complete within `timeout` of
    /// its first byte (default [`HEAD_TIMEOUT`]), and whose bodies must not pause for
    /// longer than `timeout`; a slower request gets `408` and the connection is
    /// closed. As a [`Service`] this is enforced by a timer
    /// ([`Service::deadline`]), so a client that goes silent halfway through a
    /// request is answered at the timeout, not at the server's idle timeout.
    pub fn with_head_timeout(timeout: Duration) -> Http {
        Http {
            started: None,
            body_progress: None,
            head_timeout: timeout,
            draining: false,
            client_done: false,
        }
    }

    /// When the request being read must have progressed by: its head complete, or
    /// more of its body arrived. `None` between requests.
    pub fn deadline(&self) -> Option<Instant> {
        let since = match (self.body_progress, self.started) {
            (Some((_, at)), _) => at,
            (None, Some(started)) => started,
            (None, None) => return None,
        };
        since.checked_add(self.head_timeout)
    }

    /// Answers every complete request at the start of `input`, appending responses to
    /// `out`. Returns what was consumed, and whether the connection must close (the
    /// client asked, a request was refused, or the server drains: then the first
    /// response says `Connection: close` and the requests after it are left).
    pub fn respond(&mut self, input: &[u8], out: &mut Vec<u8>) -> (Parsed, bool) {
        let mut parsed = Parsed {
            consumed: 0,
            responses: 0,
        };
        loop {
            let rest = &input[parsed.consumed..];
            if rest.is_empty() {
                self.started = None;
                self.body_progress = None;
                return (parsed, false);
            }
            let started = *self.started.get_or_insert_with(Instant::now);
            let head = match parse_head(rest) {
                Ok(Some(head)) => head,
                Ok(None) if started.elapsed() > self.head_timeout => {
                    return self.refuse(Refusal::Timeout, parsed, out);
                }
                Ok(None) => return (parsed, false),
                Err(refusal) => return self.refuse(refusal, parsed, out),
            };
            if rest.len() < head.len + head.body {
                // The body is still coming; the clock restarts whenever more arrives.
                if self
                    .body_progress
                    .is_none_or(|(seen, _)| seen != rest.len())
                {
                    self.body_progress = Some((rest.len(), Instant::now()));
                }
                return (parsed, false);
            }
            let close = head.close || self.draining;
            self.client_done = head.close;
            response(out, "200 OK", close, head.head_only);
            parsed.consumed += head.len + head.body;
            parsed.responses += 1;
            self.started = None;
            self.body_progress = None;
            if close {
                return (parsed, true);
            }
        }
    }

    fn refuse(&mut self, why: Refusal, parsed: Parsed, out: &mut Vec<u8>) -> (Parsed, bool) {
        response(out, why.status(), true, false);
        self.started = None;
        self.body_progress = None;
        (
            Parsed {
                consumed: parsed.consumed,
                responses: parsed.responses + 1,
            },
            true,
        )
    }
}

impl Service for Http {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        let mut buf = Vec::new();
        let (parsed, close) = self.respond(input.data(), &mut buf);
        let everything = parsed.consumed == input.len();
        input.consume(parsed.consumed);
        out.write(&buf);
        match close {
            false => Flow::Continue,
            // The client asked to close and sent nothing after: no need to linger.
            true if self.client_done && everything => Flow::Done,
            true => Flow::Close,
        }
    }

    fn on_input_limit(&mut self, out: &mut Output<'_>) -> Flow {
        let mut buf = Vec::new();
        response(&mut buf, Refusal::HeadTooLarge.status(), true, false);
        out.write(&buf);
        Flow::Close
    }

    fn deadline(&self) -> Option<Instant> {
        Http::deadline(self)
    }

    /// A request that did not complete in time gets `408`.
    fn on_deadline(&mut self, out: &mut Output<'_>) -> Flow {
        if self.deadline().is_none_or(|d| d > Instant::now()) {
            return Flow::Continue; // the request completed meanwhile
        }
        self.started = None;
        self.body_progress = None;
        let mut buf = Vec::new();
        response(&mut buf, Refusal::Timeout.status(), true, false);
        out.write(&buf);
        Flow::Close
    }

    /// Between requests is a boundary: close now. Otherwise the request in flight
    /// (or the first, on a connection that has sent nothing yet) is the last: its
    /// response says `Connection: close`, so the client knows to go elsewhere for the
    /// next one rather than see its connection cut.
    fn on_drain(&mut self, idle: bool, _out: &mut Output<'_>) -> Flow {
        self.draining = true;
        if idle { Flow::Close } else { Flow::Continue }
    }

    /// Between requests it moves, and keeps nothing the new process needs (a
    /// partial next request travels as unconsumed input); a request being read
    /// moves after its response.
    fn on_move(&mut self) -> Move {
        if self.draining {
            // Drained here already: it closes at its boundary.
            Move::Never
        } else if self.started.is_none() && self.body_progress.is_none() {
            Move::Now(Vec::new())
        } else {
            Move::Later
        }
    }

    /// A client silent in the middle of a request gets `408` (when the idle timeout
    /// is shorter than the request timeout); an idle keep-alive connection is closed
    /// without a word.
    fn on_idle(&mut self, out: &mut Output<'_>) -> Flow {
        if self.started.is_some() {
            let mut buf = Vec::new();
            response(&mut buf, Refusal::Timeout.status(), true, false);
            out.write(&buf);
        }
        Flow::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(req: &[u8]) -> (String, Parsed, bool) {
        let mut out = Vec::new();
        let (p, close) = Http::default().respond(req, &mut out);
        (String::from_utf8(out).unwrap(), p, close)
    }

    #[test]
    fn keep_alive_pipelining_and_close() {
        let (out, p, close) = run(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert_eq!(p.responses, 3);
        assert!(close);
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3);
        assert_eq!(out.matches("Connection: close").count(), 1);
        assert!(out.ends_with("Connection: close\r\n\r\nHello, world!"));
    }

    #[test]
    fn partial_requests_wait() {
        for req in [
            &b"GET / HT"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            let (out, p, close) = run(req);
            assert_eq!(
                (out.as_str(), p.consumed, close),
                ("", 0, false),
                "{:?}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(run(b"GET / HTTP/1.0\r\n\r\n").2);
        assert!(!run(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").2);
    }

    #[test]
    fn head_has_no_body() {
        let (out, _, _) = run(b"HEAD / HTTP/1.1\r\n\r\n");
        assert!(out.ends_with("Content-Length: 13\r\n\r\n"));
    }

    #[test]
    fn malformed_requests_get_400_and_close() {
        for req in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"G(ET / HTTP/1.1\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"\x00\x01\x02\r\n\r\n",
        ] {
            let (out, _, close) = run(req);
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request"),
                "{:?} -> {out}",
                String::from_utf8_lossy(req)
            );
            assert!(close);
        }
    }

    #[test]
    fn oversized_heads_and_bodies_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert!(
            run(&big).0.starts_with("HTTP/1.1 431"),
            "no end of head yet, but too long already"
        );
        big.extend_from_slice(b"\r\n\r\n");
        assert!(run(&big).0.starts_with("HTTP/1.1 431"));
        let (out, _, close) = run(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 413") && close);
        assert!(
            run(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .0
                .starts_with("HTTP/1.1 501")
        );
    }

    #[test]
    fn a_head_that_takes_too_long_gets_408() {
        let mut http = Http::with_head_timeout(Duration::from_millis(30));
        let mut out = Vec::new();
        let (p, close) = http.respond(b"GET / HTTP/1.1\r\nHo", &mut out);
        assert_eq!((p.consumed, close, out.len()), (0, false, 0));
        // The slow client's next bytes come after the deadline.
        std::thread::sleep(Duration::from_millis(40));
        let (_, close) = http.respond(b"GET / HTTP/1.1\r\nHost: slow", &mut out);
        assert!(
            close && out.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // A complete head is answered however late its request began: only heads wait.
        let mut http = Http::with_head_timeout(Duration::from_millis(30));
        let mut out = Vec::new();
        http.respond(b"GET / HTTP/1.1\r\n", &mut out);
        std::thread::sleep(Duration::from_millis(40));
        let (_, close) = http.respond(b"GET / HTTP/1.1\r\n\r\n", &mut out);
        assert!(!close && out.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn the_deadline_follows_the_request_being_read() {
        let t = Duration::from_secs(5);
        let mut http = Http::with_head_timeout(t);
        let mut out = Vec::new();
        assert_eq!(http.deadline(), None);
        let before = Instant::now();
        http.respond(b"GET / HTTP/1.1\r\n", &mut out);
        let head = http.deadline().expect("a head is being read");
        assert!(head >= before + t && head <= Instant::now() + t);
        // More of the head does not move it: the whole head must come in time.
        http.respond(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut out);
        assert_eq!(http.deadline(), Some(head));
        // Once the head is complete, each arrival of body bytes restarts the clock.
        let req = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab";
        http.respond(req, &mut out);
        let body = http.deadline().expect("a body is being read");
        assert!(body >= head);
        http.respond(req, &mut out);
        assert_eq!(http.deadline(), Some(body), "no new bytes, same deadline");
        let (p, _) = http.respond(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd",
            &mut out,
        );
        assert_eq!(p.responses, 1);
        assert_eq!(http.deadline(), None, "between requests");
    }

    #[test]
    fn a_passed_deadline_answers_408_and_a_stale_one_does_not() {
        use herder_reactor::Service as _;
        let mut http = Http::with_head_timeout(Duration::from_millis(1));
        let mut buf = Vec::new();
        http.respond(b"GET / HT", &mut buf);
        assert!(buf.is_empty());
        // Let the deadline pass.
        while http.deadline().is_some_and(|d| d > Instant::now()) {
            std::thread::yield_now();
        }
        let mut out = Vec::new();
        let flow = http.on_deadline(&mut herder_reactor::Output::new(&mut out));
        assert_eq!(flow, Flow::Close);
        assert!(out.starts_with(b"HTTP/1.1 408"));
        assert_eq!(http.deadline(), None);
        let mut out = Vec::new();
        let flow = http.on_deadline(&mut herder_reactor::Output::new(&mut out));
        assert_eq!((flow, out.len()), (Flow::Continue, 0));
    }

    fn drain(svc: &mut impl Service, idle: bool) -> Flow {
        let mut out = Vec::new();
        let flow = svc.on_drain(idle, &mut herder_reactor::Output::new(&mut out));
        assert!(out.is_empty(), "nothing written on drain");
        flow
    }

    fn data(svc: &mut impl Service, bytes: &[u8]) -> (Flow, usize, String) {
        let mut out = Vec::new();
        let mut input = Input::new(bytes);
        let flow = svc.on_data(&mut input, &mut herder_reactor::Output::new(&mut out));
        (flow, input.len(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn draining_http_closes_between_requests() {
        assert_eq!(drain(&mut Http::default(), true), Flow::Close);
        assert_eq!(
            drain(&mut Protocol::Http(Http::default()), true),
            Flow::Close
        );
    }

    /// Drains `svc` halfway through a request, then completes it with a pipelined
    /// second one behind it: the first is answered as the last.
    fn drain_in_flight(svc: &mut impl Service) {
        let (flow, left, out) = data(svc, b"GET / HTTP/1.1\r\nHo");
        assert_eq!((flow, left, out.as_str()), (Flow::Continue, 18, ""));
        assert_eq!(drain(svc, false), Flow::Continue);
        let (flow, left, out) = data(
            svc,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!((flow, left), (Flow::Close, 27));
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 1);
        assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
    }

    #[test]
    fn draining_http_answers_the_request_in_flight_with_connection_close() {
        drain_in_flight(&mut Http::default());
        drain_in_flight(&mut Protocol::Http(Http::default()));
    }

    #[test]
    fn draining_echo_keeps_the_stream() {
        for idle in [true, false] {
            assert_eq!(drain(&mut Echo, idle), Flow::Continue);
            assert_eq!(drain(&mut Protocol::Echo(Echo), idle), Flow::Continue);
        }
        // Still served after the drain began.
        let mut svc = Protocol::Echo(Echo);
        drain(&mut svc, true);
        assert_eq!(
            data(&mut svc, b"more"),
            (Flow::Continue, 0, "more".to_string())
        );
    }

    #[test]
    fn any_prefix_of_any_input_is_handled() {
        let inputs: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"\r\n\r\n\r\n",
            b"GET \xff\xfe HTTP/1.1\r\n\r\n",
        ];
        for input in inputs {
            for cut in 0..=input.len() {
                let (_, p, _) = run(&input[..cut]);
                assert!(p.consumed <= cut);
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Feeds `input` in pieces cut at `cuts`, as a connection would deliver it,
        /// keeping what was not consumed; returns the output and the responses.
        fn feed(input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize, bool) {
            let mut http = Http::default();
            let (mut buf, mut out, mut responses) = (Vec::new(), Vec::new(), 0);
            let mut at = 0;
            let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            ends.push(input.len());
            ends.sort_unstable();
            for end in ends {
                buf.extend_from_slice(&input[at..end.max(at)]);
                at = end.max(at);
                let (p, close) = http.respond(&buf, &mut out);
                assert!(p.consumed <= buf.len(), "consumed more than the input");
                buf.drain(..p.consumed);
                responses += p.responses;
                if close {
                    return (out, responses, true);
                }
            }
            (out, responses, false)
        }

        fn request() -> impl Strategy<Value = (Vec<u8>, bool)> {
            let method = prop_oneof![
                Just("GET"),
                Just("HEAD"),
                Just("POST"),
                Just("PUT"),
                Just("DELETE")
            ];
            let header = ("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,24}").prop_filter(
                "a header with a meaning of its own",
                |(n, _)| {
                    ![
                        "content-length",
                        "connection",
                        "transfer-encoding",
                        "expect",
                    ]
                    .contains(&n.to_ascii_lowercase().as_str())
                },
            );
            (
                method,
                "/[a-z0-9/._-]{0,16}",
                proptest::collection::vec(header, 0..6),
                proptest::collection::vec(any::<u8>(), 0..64),
            )
                .prop_map(|(method, path, headers, body)| {
                    let mut r = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
                    for (n, v) in headers {
                        r.extend_from_slice(format!("{n}: {}\r\n", v.trim()).as_bytes());
                    }
                    let with_body = method == "POST" || method == "PUT";
                    if with_body {
                        r.extend_from_slice(
                            format!("Content-Length: {}\r\n", body.len()).as_bytes(),
                        );
                    }
                    r.extend_from_slice(b"\r\n");
                    if with_body {
                        r.extend_from_slice(&body);
                    }
                    (r, method == "HEAD")
                })
        }

        proptest! {
            /// Arbitrary bytes from a client, cut anywhere: no panic, nothing consumed
            /// beyond the input, and the output is whole responses only.
            #[test]
            fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2048),
                                            cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
                let (out, responses, _) = feed(&input, &cuts);
                let text = String::from_utf8_lossy(&out);
                prop_assert_eq!(text.matches("HTTP/1.1 ").count(), responses);
                prop_assert!(out.len() <= responses * 160);
            }

            /// Well-formed pipelined requests, delivered in arbitrary pieces, get one
            /// 200 each, in order, whatever the cuts.
            #[test]
            fn pipelined_requests_are_all_answered(reqs in proptest::collection::vec(request(), 1..12),
                                                   cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
                let input: Vec<u8> = reqs.iter().flat_map(|(r, _)| r.clone()).collect();
                let (out, responses, close) = feed(&input, &cuts);
                prop_assert!(!close);
                prop_assert_eq!(responses, reqs.len());
                let text = String::from_utf8_lossy(&out);
                prop_assert_eq!(text.matches("HTTP/1.1 200 OK").count(), reqs.len());
                let heads = reqs.iter().filter(|(_, head)| *head).count();
                prop_assert_eq!(text.matches("Hello, world!").count(), reqs.len() - heads);
            }
        }
    }
}

/// Either protocol, chosen at run time (`--protocol echo|http`).
#[derive(Debug)]
pub enum Protocol {
    /// [`Echo`].
    Echo(Echo),
    /// [`Http`].
    Http(Http),
}

impl Protocol {
    /// A fresh service for `name` (`echo` or `http`).
    ///
    /// # Errors
    ///
    /// The unknown name, for any other.
    pub fn named(name: &str) -> Result<Protocol, String> {
        match name {
            "echo" => Ok(Protocol::Echo(Echo)),
            "http" => Ok(Protocol::Http(Http::default())),
            other => Err(format!("unknown protocol {other:?} (echo or http)")),
        }
    }
}

impl Service for Protocol {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        match self {
            Protocol::Echo(s) => s.on_data(input, out),
            Protocol::Http(s) => s.on_data(input, out),
        }
    }

    fn on_input_limit(&mut self, out: &mut Output<'_>) -> Flow {
        match self {
            Protocol::Echo(s) => s.on_input_limit(out),
            Protocol::Http(s) => s.on_input_limit(out),
        }
    }

    fn on_idle(&mut self, out: &mut Output<'_>) -> Flow {
        match self {
            Protocol::Echo(s) => s.on_idle(out),
            Protocol::Http(s) => s.on_idle(out),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            Protocol::Echo(s) => s.deadline(),
            Protocol::Http(s) => Service::deadline(s),
        }
    }

    fn on_deadline(&mut self, out: &mut Output<'_>) -> Flow {
        match self {
            Protocol::Echo(s) => s.on_deadline(out),
            Protocol::Http(s) => s.on_deadline(out),
        }
    }

    fn on_eof(&mut self, out: &mut Output<'_>) -> Flow {
        match self {
            Protocol::Echo(s) => s.on_eof(out),
            Protocol::Http(s) => s.on_eof(out),
        }
    }

    // Each protocol has its own drain rule: HTTP has boundaries, a byte stream none.
    fn on_drain(&mut self, idle: bool, out: &mut Output<'_>) -> Flow {
        match self {
            Protocol::Echo(s) => s.on_drain(idle, out),
            Protocol::Http(s) => s.on_drain(idle, out),
        }
    }

    fn on_move(&mut self) -> Move {
        match self {
            Protocol::Echo(s) => s.on_move(),
            Protocol::Http(s) => s.on_move(),
        }
    }

    fn on_arrive(&mut self, state: &[u8]) -> bool {
        match self {
            Protocol::Echo(s) => s.on_arrive(state),
            Protocol::Http(s) => s.on_arrive(state),
        }
    }

    fn on_close(&mut self, reason: &herder_reactor::CloseReason) {
        match self {
            Protocol::Echo(s) => s.on_close(reason),
            Protocol::Http(s) => s.on_close(reason),
        }
    }
}
