//! The simulator's own HTTP/1.1 client for heartbeats to a plain-HTTP server: a request is
//! written from bytes the caller assembled in a reused buffer, the answer is read into another
//! reused buffer, and the connection (a "lane") goes back to its worker's pool for the next
//! report of any node (each request carries its own node's credential, so any keep-alive
//! connection can carry any node's report). No allocation per report once a lane's buffers have
//! grown to a report's size. HTTPS servers go through the agent's own client instead.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer head read, bytes.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body read, bytes (a heartbeat's acknowledgement is under 200 bytes, but it
/// may carry commands).
const MAX_BODY: usize = 1024 * 1024;
/// A lane idle longer than this is closed before it is used again: the server closes
/// connections idle for its `header_read_timeout` (30 s by default; a server set shorter closes
/// some first, and the request goes again on a new connection).
pub const MAX_IDLE: Duration = Duration::from_secs(20);

/// Where heartbeats go: the server's address, resolved once, and the request's fixed parts.
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    /// `POST PATH HTTP/1.1\r\nhost: …\r\nuser-agent: …\r\n`.
    start: String,
}

impl Target {
    /// The target for `server_url` when it is `http://…` (None for `https://`, which the
    /// caller serves with the agent's client). Resolves the host name once, here. Errors: not
    /// a URL, another scheme, or a host name that does not resolve.
    pub async fn of(server_url: &str) -> anyhow::Result<Option<Target>> {
        let url = reqwest::Url::parse(server_url)
            .map_err(|e| anyhow::anyhow!("--server-url {server_url}: {e}"))?;
        match url.scheme() {
            "https" => return Ok(None),
            "http" => {}
            other => {
                anyhow::bail!("--server-url {server_url}: the scheme {other} is not http or https")
            }
        }
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("--server-url {server_url}: no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let lookup = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((lookup, port))
            .await
            .map_err(|e| anyhow::anyhow!("--server-url {server_url}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("--server-url {server_url}: {host} has no address"))?;
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let path = format!(
            "{}{}",
            url.path().trim_end_matches('/'),
            hapulse_protocol::HEARTBEAT_PATH
        );
        Ok(Some(Target {
            addr,
            start: format!(
                "POST {path} HTTP/1.1\r\nhost: {host_header}\r\nuser-agent: hapulse-agent/{}\r\naccept: */*\r\ncontent-type: application/json\r\n",
                env!("CARGO_PKG_VERSION")
            ),
        }))
    }

    /// The head of a heartbeat request of the node with `credential`, up to its content length:
    /// kept per node, so a report only copies it. Holds the credential: never log it.
    pub fn head(&self, credential: &str) -> Box<[u8]> {
        format!("{}authorization: Bearer {credential}\r\n", self.start)
            .into_bytes()
            .into_boxed_slice()
    }
}

/// One connection to the server (opened when first needed, and again after a failure) and the
/// buffers of its request and answer.
#[derive(Default)]
pub struct Lane {
    stream: Option<TcpStream>,
    /// The request being sent: head, length and body.
    pub out: Vec<u8>,
    answer: Vec<u8>,
    last_used: Option<Instant>,
}

/// A complete answer: its status and where its body is in the lane's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    body: std::ops::Range<usize>,
}

impl Lane {
    /// Puts the request `head` (from [`Target::head`]) + `body` in the lane's buffer.
    pub fn request(&mut self, head: &[u8], body: &[u8]) {
        use std::io::Write;
        self.out.clear();
        self.out.extend_from_slice(head);
        // Writing into a Vec cannot fail.
        let _ = write!(self.out, "content-length: {}\r\n\r\n", body.len());
        self.out.extend_from_slice(body);
    }

    /// True when the lane has not carried a request for longer than `idle`.
    pub fn idle_longer_than(&self, idle: Duration) -> bool {
        self.last_used.is_some_and(|t| t.elapsed() > idle)
    }

    /// The body of `answer`, which this lane read last.
    pub fn body(&self, answer: &Answer) -> &[u8] {
        self.answer.get(answer.body.clone()).unwrap_or_default()
    }

    /// Sends the request in the lane's buffer to `target` and reads the answer, within
    /// `timeout`. A connection kept from earlier that turns out closed by the server (no byte
    /// of an answer) is replaced by a new one once. On any error the connection is closed.
    pub async fn exchange(&mut self, target: &Target, timeout: Duration) -> io::Result<Answer> {
        let result = tokio::time::timeout(timeout, async {
            if self.idle_longer_than(MAX_IDLE) {
                self.stream = None;
            }
            let reused = self.stream.is_some();
            match self.once(target).await {
                Err(Stale) if reused => {
                    self.stream = None;
                    self.once(target).await.map_err(Failure::into)
                }
                other => other.map_err(Failure::into),
            }
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")));
        match &result {
            Ok(_) => self.last_used = Some(Instant::now()),
            Err(_) => {
                self.stream = None;
                self.last_used = None;
            }
        }
        result
    }

    /// One attempt: connect when needed, write, read the answer.
    async fn once(&mut self, target: &Target) -> Result<Answer, Failure> {
        let stream = match self.stream.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(target.addr).await.map_err(Failure::Io)?;
                s.set_nodelay(true).map_err(Failure::Io)?;
                s
            }
        };
        let stream = self.stream.insert(stream);
        if let Err(e) = stream.write_all(&self.out).await {
            return Err(stale_or(e));
        }
        let (answer, keep) = read_answer(stream, &mut self.answer).await?;
        if !keep {
            self.stream = None;
        }
        Ok(answer)
    }
}

/// Why an attempt failed: the kept connection was closed before any answer (try a new one), or
/// anything else.
enum Failure {
    Stale,
    Io(io::Error),
}
use Failure::Stale;

impl From<Failure> for io::Error {
    fn from(f: Failure) -> io::Error {
        match f {
            Stale => io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the server closed the connection before answering",
            ),
            Failure::Io(e) => e,
        }
    }
}

fn stale_or(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof => Stale,
        _ => Failure::Io(e),
    }
}

/// Reads one answer into `buf` (cleared first): the head, then a body of its `content-length`.
/// Returns the answer and whether the connection may carry another request. Errors: a closed
/// connection before the first byte ([`Stale`]), a head or body over the limits, a chunked
/// body, or a malformed head.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(Answer, bool), Failure> {
    buf.clear();
    let head_end = loop {
        if let Some(i) = find_head_end(buf) {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("an answer head over 16 KiB"));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Err(Stale),
            Ok(0) => return Err(invalid("the connection closed within an answer head")),
            Ok(_) => {}
            Err(e) if buf.is_empty() => return Err(stale_or(e)),
            Err(e) => return Err(Failure::Io(e)),
        }
    };
    let head = parse_head(&buf[..head_end]).map_err(invalid)?;
    if head.chunked {
        return Err(invalid(
            "a chunked answer (the simulator reads only content-length)",
        ));
    }
    let keep = head.keep_alive && head.length.is_some();
    let length = match head.length {
        Some(n) if n > MAX_BODY => return Err(invalid("an answer body over 1 MiB")),
        Some(n) => n,
        None => usize::MAX, // until the server closes the connection
    };
    while buf.len() - head_end < length {
        if buf.len() - head_end > MAX_BODY {
            return Err(invalid("an answer body over 1 MiB"));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) if length == usize::MAX => break,
            Ok(0) => return Err(invalid("the connection closed within an answer body")),
            Ok(_) => {}
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    let end = buf.len().min(head_end.saturating_add(length));
    Ok((
        Answer {
            status: head.status,
            body: head_end..end,
        },
        keep,
    ))
}

fn invalid(message: &'static str) -> Failure {
    Failure::Io(io::Error::new(io::ErrorKind::InvalidData, message))
}

/// The offset just past the blank line that ends an answer's head, if it is in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What the simulator needs of an answer's head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

/// Parses `HTTP/1.x NNN reason` and the headers of an answer head (with its blank line).
fn parse_head(head: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "an answer head that is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line
        .split_once(' ')
        .ok_or("an answer without a status line")?;
    let status: u16 = rest
        .get(..3)
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or("an answer without a status")?;
    let mut parsed = Head {
        status,
        length: None,
        chunked: false,
        keep_alive: version == "HTTP/1.1",
    };
    if !version.starts_with("HTTP/1.") {
        return Err("an answer that is not HTTP/1");
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("a malformed answer header")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            parsed.length = Some(value.parse().map_err(|_| "a malformed content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                parsed.keep_alive = false;
            } else if value.contains("keep-alive") {
                parsed.keep_alive = true;
            }
        }
    }
    if matches!(status, 204 | 304) || (100..200).contains(&status) {
        parsed.length = Some(0);
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn heads_are_parsed() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\ncontent-type: application/json\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                length: Some(42),
                chunked: false,
                keep_alive: true
            }
        );
        let head = parse_head(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert!(head.chunked && !head.keep_alive && head.status == 503);
        assert!(
            parse_head(b"HTTP/1.0 204 No Content\r\n\r\n")
                .unwrap()
                .length
                == Some(0)
        );
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    /// A server that reads `requests` requests on one connection (each a head with a
    /// content-length and its body), answering each with `answer`, then closes it; returns the
    /// requests it read.
    async fn one_connection(
        listener: &TcpListener,
        requests: usize,
        answer: &'static [u8],
    ) -> Vec<String> {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        for _ in 0..requests {
            let end = loop {
                if let Some(end) = find_head_end(&buf) {
                    break end;
                }
                s.read_buf(&mut buf).await.unwrap();
            };
            let head = String::from_utf8(buf[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            while buf.len() < end + length {
                s.read_buf(&mut buf).await.unwrap();
            }
            seen.push(String::from_utf8(buf[..end + length].to_vec()).unwrap());
            buf.drain(..end + length);
            s.write_all(answer).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn a_lane_keeps_its_connection_and_replaces_a_closed_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/base/", listener.local_addr().unwrap());
        let target = Target::of(&url).await.unwrap().unwrap();
        let server = tokio::spawn(async move {
            // Two requests on the first connection, then it closes; the third comes on a new
            // one.
            let first = one_connection(
                &listener,
                2,
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            )
            .await;
            let second = one_connection(
                &listener,
                1,
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
            (first, second)
        });
        let mut lane = Lane::default();
        let head = target.head("cred-1");
        for body in [&b"{\"a\":1}"[..], b"{}"] {
            lane.request(&head, body);
            let answer = lane
                .exchange(&target, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            assert_eq!(lane.body(&answer), b"ok");
        }
        // The server has closed the first connection by now (it read its two requests).
        tokio::time::sleep(Duration::from_millis(100)).await;
        lane.request(&head, b"{}");
        let answer = lane
            .exchange(&target, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 401);
        let (first, second) = server.await.unwrap();
        assert!(first[0].starts_with("POST /base/api/agent/v1/heartbeat HTTP/1.1\r\n"));
        assert!(first[0].contains("\r\nauthorization: Bearer cred-1\r\n"));
        assert!(first[0].ends_with("content-length: 7\r\n\r\n{\"a\":1}"));
        assert!(first[1].ends_with("\r\n\r\n{}") && second[0].ends_with("\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::of(&format!("http://{}", listener.local_addr().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let _held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let mut lane = Lane::default();
        lane.request(&target.head("c"), b"{}");
        let e = lane
            .exchange(&target, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(Target::of("https://example.invalid")
            .await
            .unwrap()
            .is_none());
        assert!(Target::of("ftp://127.0.0.1").await.is_err());
    }
}
