//! Who is on the other end of a request: the connection's peer address, or, when that peer is
//! one of `trusted_proxies`, the client the proxy names in `Forwarded` (RFC 7239) or
//! `X-Forwarded-For`, and whether the browser spoke HTTPS to it (`proto=https`,
//! `X-Forwarded-Proto: https`).
//!
//! Forwarding headers are believed only from a trusted proxy, and read from the right (the hop
//! nearest this server) leftwards past every trusted address: whatever a client writes into the
//! header itself sits further left and is never reached while a trusted proxy appended the real
//! address after it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;

use crate::state::AppState;

/// Where a request came from. Extracted by handlers (never fails); built by [`client_origin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOrigin {
    /// The client's address: the peer's, or the one a trusted proxy forwarded; `None` when the
    /// connection has no peer address (never over TCP).
    pub address: Option<IpAddr>,
    /// The browser spoke HTTPS: to this server (`tls` configured) or to a trusted proxy that
    /// says so.
    pub https: bool,
}

impl ClientOrigin {
    /// The address as throttles and the audit log record it (`unknown` without one).
    pub fn source(&self) -> String {
        self.address
            .map_or_else(|| "unknown".to_string(), |a| a.to_string())
    }
}

/// The origin of a request whose peer is in `extensions` (axum's `ConnectInfo`), given its
/// headers and the server's `trusted_proxies`; `tls`: this server speaks HTTPS itself.
pub fn client_origin(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
    tls: bool,
) -> ClientOrigin {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| canonical(c.0.ip()));
    let trusted = |a: IpAddr| trusted_proxies.iter().any(|net| net.contains(&a));
    let Some(peer) = peer.filter(|p| trusted(*p)) else {
        return ClientOrigin {
            address: peer,
            https: tls,
        };
    };
    let (hops, proto) = forwarded(headers);
    // From the nearest hop leftwards: the first address not a trusted proxy is the client. A
    // hop that cannot be read (obfuscated, `unknown`, garbage) ends the walk at the last
    // trusted proxy, which is then all that is known.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(address) if trusted(*address) => client = *address,
            Some(address) => {
                client = *address;
                break;
            }
            None => break,
        }
    }
    ClientOrigin {
        address: Some(client),
        https: tls || proto.is_some_and(|p| p.eq_ignore_ascii_case("https")),
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, a dual-stack listener's view of an IPv4
/// peer) as the IPv4 address it is, so that IPv4 CIDRs match it.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarded chain (leftmost: the original client; `None`: a hop that cannot be read) and
/// the protocol the nearest proxy was spoken to with: from `Forwarded` when present, else from
/// `X-Forwarded-For` and `X-Forwarded-Proto`. Repeated headers are one list, in order.
fn forwarded(headers: &HeaderMap) -> (Vec<Option<IpAddr>>, Option<String>) {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let elements = values("forwarded");
    if !elements.is_empty() {
        let mut hops = Vec::new();
        let mut proto = None;
        for element in &elements {
            let mut hop = None;
            // `for=…;proto=…;by=…`, names case-insensitive, values maybe quoted.
            for pair in element.split(';') {
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match name.trim().to_ascii_lowercase().as_str() {
                    "for" => hop = Some(node_address(value)),
                    "proto" => proto = Some(value.to_string()),
                    _ => {}
                }
            }
            hops.push(hop.flatten());
        }
        return (hops, proto);
    }
    let hops = values("x-forwarded-for")
        .iter()
        .map(|v| node_address(v))
        .collect();
    (hops, values("x-forwarded-proto").pop())
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`; `None` for `unknown`, obfuscated names (`_hidden`) and anything else.
fn node_address(value: &str) -> Option<IpAddr> {
    if let Ok(address) = value.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = value.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .and_then(|v| v.parse::<IpAddr>().ok())
        .map(canonical)
}

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(client_origin(
            &parts.extensions,
            &parts.headers,
            &state.settings().trusted_proxies,
            state.settings().tls.is_some(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn origin(peer: &str, headers: &[(&str, &str)], trusted: &[&str]) -> ClientOrigin {
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let trusted: Vec<IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client_origin(&extensions, &map, &trusted, false)
    }

    fn address(o: ClientOrigin) -> String {
        o.source()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let xff = [
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ];
        // Nobody trusted: the peer, whatever it claims.
        let o = origin("198.51.100.7:5000", &xff, &[]);
        assert_eq!(address(o), "198.51.100.7");
        assert!(!o.https);
        // A stranger outside the trusted range: the same.
        assert_eq!(
            address(origin("198.51.100.7:5000", &xff, &["10.0.0.0/8"])),
            "198.51.100.7"
        );
        // The trusted proxy: its client, and HTTPS.
        let o = origin("10.1.2.3:5000", &xff, &["10.0.0.0/8"]);
        assert_eq!(address(o), "203.0.113.9");
        assert!(o.https);
        // A trusted proxy sending no header: the proxy itself.
        assert_eq!(
            address(origin("10.1.2.3:5000", &[], &["10.0.0.0/8"])),
            "10.1.2.3"
        );
    }

    #[test]
    fn a_client_cannot_forge_its_address_through_a_trusted_proxy() {
        // The client wrote 127.0.0.1 itself; the proxy appended what it saw.
        let o = origin(
            "10.1.2.3:5000",
            &[("x-forwarded-for", "127.0.0.1, 203.0.113.9")],
            &["10.0.0.0/8"],
        );
        assert_eq!(address(o), "203.0.113.9");
        // Two trusted proxies in a row: the first untrusted address from the right.
        let o = origin(
            "10.1.2.3:5000",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.9, 10.9.9.9"),
            ],
            &["10.0.0.0/8"],
        );
        assert_eq!(address(o), "203.0.113.9");
        // An unreadable hop stops the walk at the nearest trusted proxy.
        let o = origin(
            "10.1.2.3:5000",
            &[("x-forwarded-for", "203.0.113.9, garbage")],
            &["10.0.0.0/8"],
        );
        assert_eq!(address(o), "10.1.2.3");
    }

    #[test]
    fn forwarded_header_rfc_7239() {
        let trusted = ["10.0.0.0/8", "fd00::/8"];
        let o = origin(
            "10.1.2.3:5000",
            &[
                ("forwarded", r#"for="[2001:db8:cafe::17]:4711";proto=https"#),
                ("x-forwarded-for", "6.6.6.6"),
            ],
            &trusted,
        );
        assert_eq!(address(o), "2001:db8:cafe::17");
        assert!(o.https);
        let o = origin(
            "[fd00::1]:5000",
            &[("forwarded", "for=192.0.2.60;proto=http, For=10.0.0.7")],
            &trusted,
        );
        assert_eq!(address(o), "192.0.2.60");
        assert!(!o.https);
        assert_eq!(
            address(origin(
                "10.1.2.3:1",
                &[("forwarded", "for=_hidden")],
                &trusted
            )),
            "10.1.2.3"
        );
        // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses.
        assert_eq!(
            address(origin(
                "[::ffff:10.1.2.3]:5000",
                &[("x-forwarded-for", "198.51.100.1")],
                &trusted
            )),
            "198.51.100.1"
        );
    }
}
