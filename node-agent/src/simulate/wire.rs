//! The simulator's keep-alive pool for heartbeats to a plain-HTTP server, over hyper's HTTP/1.1
//! client (`hyper::client::conn::http1`): each connection (a "lane") goes back to its worker's
//! pool for the next report of any node (each request carries its own node's credential, so
//! any keep-alive connection can carry any node's report). HTTPS servers go through the
//! agent's own client instead.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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
    /// The heartbeat's path (origin form).
    path: Uri,
    host: HeaderValue,
    user_agent: HeaderValue,
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
            path: path
                .parse()
                .map_err(|e| anyhow::anyhow!("--server-url {server_url}: {e}"))?,
            host: HeaderValue::try_from(host_header)
                .map_err(|e| anyhow::anyhow!("--server-url {server_url}: {e}"))?,
            user_agent: HeaderValue::from_static(concat!(
                "hapulse-agent/",
                env!("CARGO_PKG_VERSION")
            )),
        }))
    }

    /// The `authorization` header of the node with `credential`: kept per node, so a report
    /// only clones it. Marked sensitive; holds the credential: never log it. A credential that
    /// cannot be a header value (never one the server issued) becomes an empty bearer, which
    /// the server refuses: the node's reports count as failed.
    pub fn head(&self, credential: &str) -> HeaderValue {
        let mut value = HeaderValue::try_from(format!("Bearer {credential}"))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer "));
        value.set_sensitive(true);
        value
    }
}

/// One connection to the server (opened when first needed, and again after a failure) and the
/// request it carries next.
#[derive(Default)]
pub struct Lane {
    sender: Option<SendRequest<Full<Bytes>>>,
    authorization: Option<HeaderValue>,
    body: Bytes,
    answer: Bytes,
    last_used: Option<Instant>,
}

/// A complete answer: its status (its body is the lane's, [`Lane::body`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
}

impl Lane {
    /// Makes the lane's next request: the node's `authorization` (from [`Target::head`]) and
    /// the report's `body`.
    pub fn request(&mut self, authorization: &HeaderValue, body: &[u8]) {
        self.authorization = Some(authorization.clone());
        self.body = Bytes::copy_from_slice(body);
    }

    /// True when the lane has not carried a request for longer than `idle`.
    pub fn idle_longer_than(&self, idle: Duration) -> bool {
        self.last_used.is_some_and(|t| t.elapsed() > idle)
    }

    /// The body of the answer this lane read last.
    pub fn body(&self, _answer: &Answer) -> &[u8] {
        &self.answer
    }

    /// Sends the lane's request to `target` and reads the answer, within `timeout`. A
    /// connection kept from earlier that turns out closed by the server (before an answer) is
    /// replaced by a new one once. On any error the connection is closed.
    pub async fn exchange(&mut self, target: &Target, timeout: Duration) -> io::Result<Answer> {
        let result = tokio::time::timeout(timeout, async {
            if self.idle_longer_than(MAX_IDLE)
                || self.sender.as_ref().is_some_and(|s| s.is_closed())
            {
                self.sender = None;
            }
            let reused = self.sender.is_some();
            match self.once(target).await {
                Err(e) if reused && stale(&e) => {
                    self.sender = None;
                    self.once(target).await
                }
                other => other,
            }
        })
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")));
        match &result {
            Ok(_) => self.last_used = Some(Instant::now()),
            Err(_) => {
                self.sender = None;
                self.last_used = None;
            }
        }
        result
    }

    /// One attempt: connect when needed, send, read the answer.
    async fn once(&mut self, target: &Target) -> io::Result<Answer> {
        let sender = match self.sender.take() {
            Some(s) => s,
            None => connect(target).await?,
        };
        let sender = self.sender.insert(sender);
        sender.ready().await.map_err(to_io)?;
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.path.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, target.host.clone());
        headers.insert(header::USER_AGENT, target.user_agent.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(authorization) = &self.authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        let response = sender.send_request(request).await.map_err(to_io)?;
        let status = response.status().as_u16();
        self.answer = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            .to_bytes();
        Ok(Answer { status })
    }
}

/// A new connection to `target`, its hyper connection driven by a task of its own (which ends
/// when the lane drops its sender or the server closes the connection).
async fn connect(target: &Target) -> io::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(to_io)?;
    tokio::spawn(async move {
        // Its end (closed by either side, or broken) shows in the sender's next request.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Marks a kept connection the server closed before answering, so the request goes again on
/// a new one.
#[derive(Debug)]
struct Stale(hyper::Error);

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server closed the connection before answering: {}",
            self.0
        )
    }
}

impl std::error::Error for Stale {}

fn to_io(e: hyper::Error) -> io::Error {
    if e.is_canceled() || e.is_closed() || e.is_incomplete_message() {
        io::Error::new(io::ErrorKind::ConnectionReset, Stale(e))
    } else {
        io::Error::other(e)
    }
}

fn stale(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Stale>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The offset just past the blank line that ends a head, if it is in `buf`.
    fn find_head_end(buf: &[u8]) -> Option<usize> {
        buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
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
        assert!(first[0].contains("\r\ncontent-length: 7\r\n"));
        assert!(first[0].ends_with("\r\n\r\n{\"a\":1}"));
        assert!(first[1].ends_with("\r\n\r\n{}") && second[0].ends_with("\r\n\r\n{}"));
    }

    #[tokio::test]
    async fn a_request_on_a_connection_closed_unanswered_goes_again_on_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target::of(&format!("http://{}", listener.local_addr().unwrap()))
            .await
            .unwrap()
            .unwrap();
        let server = tokio::spawn(async move {
            // The first connection answers one request, reads the second and closes without
            // answering it (as a server closing an idle connection just as a request comes).
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            drop(s);
            one_connection(
                &listener,
                1,
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext",
            )
            .await
        });
        let mut lane = Lane::default();
        let head = target.head("c");
        lane.request(&head, b"{}");
        let answer = lane
            .exchange(&target, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        lane.request(&head, b"{\"b\":2}");
        let answer = lane
            .exchange(&target, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(lane.body(&answer), b"next");
        let again = server.await.unwrap();
        assert!(again[0].ends_with("\r\n\r\n{\"b\":2}"));
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
