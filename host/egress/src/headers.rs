//! What the proxy reads in and strips from headers, on its own: hop-by-hop
//! headers, headers that would name another host or path to a server
//! behind a trusted proxy, the WebSocket upgrade and switch, and an
//! authority's port as the proxy reads it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::route;

/// Hop-by-hop headers, never forwarded either way.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Runs twice per request, and most messages carry none of these: one
    // pass over the names decides, instead of a hashed removal per name.
    let hop = |n: &HeaderName| {
        n == header::CONNECTION || n == header::UPGRADE || HOP_BY_HOP.iter().any(|x| x == n)
    };
    if !h.keys().any(hop) {
        if keep_upgrade {
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        if keep_upgrade && n == header::UPGRADE {
            continue;
        }
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// The port an authority names, `default` if none (or an empty one, as
/// RFC 3986 allows); `None` for one that is no port (`host:99999`), which
/// `Authority::port_u16` reads as absent and so as the default.
pub(crate) fn authority_port(a: &http::uri::Authority, default: u16) -> Option<u16> {
    // What follows the host, which starts right after any userinfo (the
    // host's text found again further on, as in `4:4434`, is not it).
    let s = a.as_str();
    let after = s[s.rfind('@').map_or(0, |i| i + 1)..].strip_prefix(a.host())?;
    match after.strip_prefix(':') {
        None if after.is_empty() => Some(default),
        Some("") => Some(default),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
        _ => None,
    }
}

/// Headers in which a request names another host or path than its own,
/// read by servers behind a proxy they trust: Rack and Rails take
/// `X-Forwarded-Host` for `request.host` (host-constrained routes,
/// tenants), Express (`trust proxy`), Django and Spring do when told to;
/// IIS rewrites and older Symfony and Zend took `X-Original-URL`. The
/// identity check and the routes see only `Host`/`:authority` and the
/// path, so these are dropped, in either spelling (`_` for `-`, as
/// CGI-style servers read them).
const OTHER_NAMES: [&str; 8] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-original-host",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
];

/// Framing headers in their `_` spelling: no client sends one, and an old
/// CGI-style server could take one for the real header, framing the body
/// otherwise than the proxy did. (The `-` spellings are hyper's to set.)
const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

pub(crate) fn strip_other_names(h: &mut HeaderMap) {
    let named = |n: &HeaderName| {
        OTHER_NAMES
            .iter()
            .any(|o| route::same_cgi_name(n.as_str(), o))
            || (n.as_str().contains('_')
                && FRAMING.iter().any(|f| route::same_cgi_name(n.as_str(), f)))
    };
    let gone: Vec<HeaderName> = h.keys().filter(|n| named(n)).cloned().collect();
    for n in gone {
        h.remove(n);
    }
}

/// Hop-by-hop headers besides `Connection`, the ones it lists, and
/// `Upgrade` (kept for a WebSocket upgrade).
const HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Bytes (name and value) of the fields in `h` that repeat an earlier field
/// exactly. Most heads name no field twice: one comparison of counts.
pub(crate) fn repeated_bytes(h: &HeaderMap) -> usize {
    if h.len() == h.keys_len() {
        return 0;
    }
    let mut total = 0;
    for name in h.keys() {
        let mut values: Vec<&[u8]> = h.get_all(name).iter().map(HeaderValue::as_bytes).collect();
        values.sort_unstable();
        for pair in values.windows(2) {
            if pair[0] == pair[1] {
                total += name.as_str().len() + pair[1].len();
            }
        }
    }
    total
}

/// Whether header `name` lists `tok` (comma-separated, without case).
fn lists(h: &HeaderMap, name: HeaderName, tok: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(tok))
}

pub(crate) fn is_ws_upgrade(h: &HeaderMap) -> bool {
    lists(h, header::UPGRADE, "websocket") && lists(h, header::CONNECTION, "upgrade")
}

/// Whether an upstream's 101 switched to WebSocket: `Upgrade: websocket`
/// and nothing else (RFC 6455 §4.1).
pub(crate) fn is_ws_switch(h: &HeaderMap) -> bool {
    let mut ups = h.get_all(header::UPGRADE).iter();
    matches!(
        (ups.next(), ups.next()),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_ports_out_of_range_are_refused_not_defaulted() {
        let port = |a: &str| authority_port(&a.parse().unwrap(), 443);
        assert_eq!(port("h.test"), Some(443));
        assert_eq!(port("h.test:"), Some(443));
        assert_eq!(port("h.test:8443"), Some(8443));
        assert_eq!(port("[::1]:8443"), Some(8443));
        assert_eq!(port("[::1]"), Some(443));
        assert_eq!(port("u@h.test:1"), Some(1));
        assert_eq!(port("h.test:99999"), None);
        assert_eq!(port("h.test:65536"), None);
        // A host whose text the port ends with is not found in the port.
        assert_eq!(port("4:4434"), Some(4434));
        assert_eq!(port("43:8443"), Some(8443));
        assert_eq!(port("u@1:21"), Some(21));
    }

    #[test]
    fn repeated_bytes_counts_exact_repeats_only() {
        let mut h = HeaderMap::new();
        h.append("accept", HeaderValue::from_static("a"));
        h.append("x-y", HeaderValue::from_static("b"));
        assert_eq!(repeated_bytes(&h), 0);
        // Another value under the same name is no repeat.
        h.append("accept", HeaderValue::from_static("c"));
        assert_eq!(repeated_bytes(&h), 0);
        h.append("accept", HeaderValue::from_static("a"));
        h.append("accept", HeaderValue::from_static("a"));
        assert_eq!(repeated_bytes(&h), 2 * "accept".len() + 2);
    }
}
