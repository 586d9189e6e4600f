//! The interceptor adapter: the only door between a microVM guest and the
//! network.
//!
//! smolvm, started with `--egress-interceptor ADDR`, connects every admitted
//! guest TCP flow to `ADDR` (a loopback listener in the gate process) and
//! prefixes it with a `SMOLICPT` preamble: magic, version, the 32-byte token
//! of this launch, address family, destination port and IP. It then waits for
//! one verdict byte, which the guest sees as the result of its own
//! `connect()`: `0`, or a Linux errno.
//!
//! The adapter
//! * authenticates the preamble (constant-time token comparison, in
//!   [`smolvm_protocol::intercept::InterceptEndpoint::read_preamble`]); a
//!   wrong token is dropped without a verdict;
//! * splices flows addressed to the proxy alias (what the guest's
//!   `HTTPS_PROXY` names) to the bottle's egress proxy on host loopback;
//! * for a direct flow (a client that ignored the proxy variables) answers
//!   the verdict from the destination port alone (443, 80 and the ports
//!   routes name may go on), then reads the first bytes: the TLS SNI or the HTTP `Host`. The
//!   name is checked against the same routes as the proxy's; an allowed TLS
//!   flow becomes a `CONNECT name:port` to the proxy, an allowed plain-HTTP
//!   request is re-sent to the proxy in absolute form, so injection, identity
//!   checks and the audit line all happen in the one proxy. Anything else is
//!   closed and audited here.
//!
//! The IP the guest dialled is never trusted: a direct flow goes to the name
//! it presented, or nowhere.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bot_bottle_egress::{AuditRecord, ProxyConfig};
use smolvm_protocol::intercept::{self, InterceptEndpoint, HEADER_LEN, TOKEN_LEN};
use smolvm_protocol::sni::{self, Peek};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `ECONNREFUSED` as the guest (always Linux) reads it.
pub const VERDICT_REFUSED: u8 = 111;
/// How long a flow has to send its preamble, and a direct flow its first
/// bytes (ClientHello or request head).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head or ClientHello a direct flow may send before a name
/// is found.
const MAX_SNIFF: usize = sni::MAX_CLIENT_HELLO;

/// One launch's adapter: the token, where the proxy is, and the routes.
pub struct Adapter {
    endpoint: InterceptEndpoint,
    /// The proxy and its routes; replaced as one on a live config update.
    target: std::sync::RwLock<(SocketAddr, Arc<ProxyConfig>)>,
    proxy_alias: SocketAddr,
    audit: Option<Mutex<std::fs::File>>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("endpoint", &self.endpoint)
            .field("proxy_alias", &self.proxy_alias)
            .finish_non_exhaustive()
    }
}

/// What the adapter did with one flow (returned for tests and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The preamble was malformed or carried the wrong token: dropped, no
    /// verdict.
    Rejected,
    /// Refused at connect time (verdict = errno).
    Refused(u8),
    /// Spliced to the proxy (proxy alias, or a direct flow turned into a
    /// proxy request for this name).
    Proxied(Option<String>),
    /// A direct flow whose name (or lack of one) is not allowed: closed.
    Denied(String),
    /// The peer went away.
    Closed,
}

impl Adapter {
    /// An adapter for one launch. `audit` is the file the proxy appends its
    /// audit lines to; the adapter appends its own refusals there too.
    pub fn new(
        token: [u8; TOKEN_LEN],
        proxy: SocketAddr,
        proxy_alias: SocketAddr,
        config: Arc<ProxyConfig>,
        audit: Option<std::fs::File>,
    ) -> Self {
        Self {
            endpoint: InterceptEndpoint { addr: proxy, token },
            target: std::sync::RwLock::new((proxy, config)),
            proxy_alias,
            audit: audit.map(Mutex::new),
        }
    }

    /// Points new flows at another proxy with another config (live
    /// credential rotation); flows already spliced keep theirs.
    pub fn retarget(&self, proxy: SocketAddr, config: Arc<ProxyConfig>) {
        *self.target.write().unwrap_or_else(|p| p.into_inner()) = (proxy, config);
    }

    fn proxy(&self) -> SocketAddr {
        self.target.read().unwrap_or_else(|p| p.into_inner()).0
    }

    fn config(&self) -> Arc<ProxyConfig> {
        self.target
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Accepts flows until the listener fails.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let outcome = me.handle(stream).await;
                tracing::debug!(?outcome, "intercepted flow");
            });
        }
    }

    /// Handles one flow from the engine, start to finish.
    pub async fn handle(&self, mut guest: TcpStream) -> Outcome {
        let _ = guest.set_nodelay(true);
        let dst = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, self.read_preamble(&mut guest))
            .await
        {
            Ok(Ok(dst)) => dst,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "intercepted flow without a valid preamble; dropped");
                return Outcome::Rejected;
            }
            Err(_) => return Outcome::Rejected,
        };

        if dst == self.proxy_alias {
            let up = TcpStream::connect(self.proxy()).await;
            let verdict = intercept::connect_verdict(&up);
            if guest.write_all(&[verdict]).await.is_err() {
                return Outcome::Closed;
            }
            let Ok(mut up) = up else {
                return Outcome::Refused(verdict);
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut guest, &mut up).await;
            return Outcome::Proxied(None);
        }

        if dst.ip() == self.proxy_alias.ip()
            || !bot_bottle_egress::port_admitted(&self.config(), dst.port())
        {
            let _ = guest.write_all(&[VERDICT_REFUSED]).await;
            self.audit_deny(
                &dst.ip().to_string(),
                dst.port(),
                "",
                "direct connection refused: only ports 443, 80 and those a route names \
                 may leave, and only by name",
            );
            return Outcome::Refused(VERDICT_REFUSED);
        }

        // Direct flow: the guest's connect succeeds, then its first bytes
        // say which name it wants.
        if guest
            .write_all(&[intercept::VERDICT_CONNECTED])
            .await
            .is_err()
        {
            return Outcome::Closed;
        }
        let first = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&mut guest)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Outcome::Closed,
            Err(_) => Sniffed::Unknown,
        };
        match first {
            Sniffed::Tls { name, bytes } => self.direct_tls(guest, dst, name, bytes).await,
            Sniffed::Http(req) => self.direct_http(guest, dst, req).await,
            Sniffed::Unknown => {
                let why = "direct connection without a TLS server name or HTTP Host";
                self.audit_deny(&dst.ip().to_string(), dst.port(), "", why);
                Outcome::Denied(why.into())
            }
        }
    }

    async fn read_preamble(&self, guest: &mut TcpStream) -> std::io::Result<SocketAddr> {
        let mut buf = vec![0u8; HEADER_LEN];
        guest.read_exact(&mut buf).await?;
        let total = intercept::preamble_len(&buf).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad address family")
        })?;
        buf.resize(total, 0);
        guest.read_exact(&mut buf[HEADER_LEN..]).await?;
        self.endpoint.read_preamble(&buf[..])
    }

    async fn direct_tls(
        &self,
        mut guest: TcpStream,
        dst: SocketAddr,
        name: String,
        bytes: Vec<u8>,
    ) -> Outcome {
        if !bot_bottle_egress::host_admitted(&self.config(), &name) {
            let why = "direct TLS connection to a host no route or tls_passthrough names";
            self.audit_deny(&name, dst.port(), "", why);
            return Outcome::Denied(why.into());
        }
        let mut up = match self.proxy_connect(&name, dst.port()).await {
            Ok(up) => up,
            Err(e) => return Outcome::Denied(e),
        };
        if up.write_all(&bytes).await.is_err() {
            return Outcome::Closed;
        }
        let _ = tokio::io::copy_bidirectional(&mut guest, &mut up).await;
        Outcome::Proxied(Some(name))
    }

    async fn direct_http(&self, mut guest: TcpStream, dst: SocketAddr, req: HttpHead) -> Outcome {
        let Some((host, port)) = req.host.as_deref().and_then(split_host_port) else {
            let why = "plain HTTP request without a valid Host header";
            self.audit_deny(&dst.ip().to_string(), dst.port(), &req.path, why);
            let _ = guest.write_all(&forbidden("(none)", why)).await;
            return Outcome::Denied(why.into());
        };
        if port.unwrap_or(80) != dst.port() {
            let why = "the Host header's port differs from the port the guest dialled";
            self.audit_deny(&host, dst.port(), &req.path, why);
            let _ = guest.write_all(&forbidden(&host, why)).await;
            return Outcome::Denied(why.into());
        }
        let url = format!("http://{host}:{}{}", dst.port(), req.path);
        let decision = bot_bottle_egress::check(&self.config(), &req.method, &url);
        if !decision.allowed {
            self.audit_deny(&host, dst.port(), &decision.path, &decision.reason);
            let _ = guest.write_all(&forbidden(&host, &decision.reason)).await;
            return Outcome::Denied(decision.reason);
        }
        let Ok(mut up) = TcpStream::connect(self.proxy()).await else {
            return Outcome::Closed;
        };
        if up
            .write_all(&req.absolute_form(&host, dst.port()))
            .await
            .is_err()
        {
            return Outcome::Closed;
        }
        let _ = tokio::io::copy_bidirectional(&mut guest, &mut up).await;
        Outcome::Proxied(Some(host))
    }

    /// Opens a `CONNECT name:port` tunnel through the proxy.
    async fn proxy_connect(&self, name: &str, port: u16) -> Result<TcpStream, String> {
        let mut up = TcpStream::connect(self.proxy())
            .await
            .map_err(|e| format!("egress proxy unreachable: {e}"))?;
        let _ = up.set_nodelay(true);
        let req = format!("CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n");
        up.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 || up.read(&mut byte).await.map_err(|e| e.to_string())? == 0 {
                return Err("egress proxy closed the tunnel".into());
            }
            head.push(byte[0]);
        }
        let status_ok = head
            .split(|b| *b == b' ')
            .nth(1)
            .is_some_and(|s| s == b"200");
        if status_ok {
            Ok(up)
        } else {
            Err("egress proxy refused the tunnel".into())
        }
    }

    fn audit_deny(&self, host: &str, port: u16, path: &str, why: &str) {
        tracing::info!(host, port, why, "direct guest connection refused");
        let Some(out) = &self.audit else { return };
        let rec = AuditRecord {
            time: rfc3339_now(),
            bottle: self.config().bottle_id.clone(),
            method: "CONNECT".into(),
            host: host.to_string(),
            port,
            path: path.to_string(),
            decision: "deny".into(),
            note: format!("interceptor: {why}"),
            ..Default::default()
        };
        if let Ok(mut line) = serde_json::to_vec(&rec) {
            line.push(b'\n');
            use std::io::Write;
            let mut f = out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = f.write_all(&line);
        }
    }
}

/// The name as the proxy compares it: lower case, no trailing dot.
fn canon(h: &str) -> String {
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// A DNS name a guest may present: letters, digits, `-` and `.`.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn split_host_port(h: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port.parse().ok()?)),
        _ => (h, None),
    };
    valid_name(host).then(|| (canon(host), port))
}

#[derive(Debug)]
enum Sniffed {
    Tls { name: String, bytes: Vec<u8> },
    Http(HttpHead),
    Unknown,
}

#[derive(Debug)]
struct HttpHead {
    method: String,
    path: String,
    host: Option<String>,
    /// Header lines other than the request line, `Connection` and
    /// `Proxy-Connection`.
    headers: Vec<String>,
    /// Bytes after the head (the start of a body).
    rest: Vec<u8>,
}

impl HttpHead {
    /// The request as a forward proxy wants it: absolute-form target, and
    /// `Connection: close` so that a second request on the connection
    /// cannot arrive in origin form.
    fn absolute_form(&self, host: &str, port: u16) -> Vec<u8> {
        let mut out = format!(
            "{} http://{host}:{port}{} HTTP/1.1\r\n",
            self.method, self.path
        );
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.rest);
        out
    }
}

async fn sniff(guest: &mut TcpStream) -> std::io::Result<Sniffed> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = guest.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf[0] == 0x16 {
            match sni::peek_client_hello(&buf) {
                Peek::Incomplete if buf.len() < MAX_SNIFF => continue,
                Peek::ServerName(name) if valid_name(&name) => {
                    return Ok(Sniffed::Tls {
                        name: canon(&name),
                        bytes: buf,
                    })
                }
                _ => return Ok(Sniffed::Unknown),
            }
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            return Ok(parse_http(&buf, end).map_or(Sniffed::Unknown, Sniffed::Http));
        }
        if buf.len() >= MAX_SNIFF || !buf[0].is_ascii_uppercase() {
            return Ok(Sniffed::Unknown);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_http(buf: &[u8], end: usize) -> Option<HttpHead> {
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !version.starts_with("HTTP/1.")
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    let mut host = None;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "host" => host = Some(value.trim().to_string()),
            "connection" | "proxy-connection" => continue,
            _ => {}
        }
        headers.push(line.to_string());
    }
    Some(HttpHead {
        method: method.to_string(),
        path: target.to_string(),
        host,
        headers,
        rest: buf[end + 4..].to_vec(),
    })
}

fn forbidden(host: &str, why: &str) -> Vec<u8> {
    let body = format!("bot-bottle egress: {host} is not allowed from this bottle: {why}\n");
    format!(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The time now, RFC 3339 UTC, to the second.
pub fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_heads_parse_and_rewrite() {
        let raw = b"GET /v1/x?y=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: keep-alive\r\nX-A: b\r\n\r\nBODY";
        let end = find(raw, b"\r\n\r\n").unwrap();
        let h = parse_http(raw, end).unwrap();
        assert_eq!(h.host.as_deref(), Some("api.example.com"));
        let out = String::from_utf8(h.absolute_form("api.example.com", 80)).unwrap();
        assert!(out.starts_with("GET http://api.example.com:80/v1/x?y=1 HTTP/1.1\r\n"));
        assert!(out.contains("X-A: b\r\n") && out.ends_with("Connection: close\r\n\r\nBODY"));
        assert!(!out.contains("keep-alive"));
        assert!(parse_http(b"GET http://x/ HTTP/1.1\r\n\r\n", 23).is_none());
    }

    #[test]
    fn names_are_validated() {
        assert!(valid_name("api.example.com"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("x\r\nHost: y"));
        assert_eq!(
            split_host_port("API.example.com:8080"),
            Some(("api.example.com".into(), Some(8080)))
        );
        assert_eq!(split_host_port("[::1]:80"), None);
    }

    #[test]
    fn rfc3339_is_well_formed() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
