//! The upstream leg: dialling (resolve overrides, the internal-address
//! check, chaining through an HTTP proxy), TLS with system roots plus an
//! extra CA, ALPN h2/http1.1, and a pooled client.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use bot_bottle_plugin_api::Secret;

use crate::addr::{AddrClass, AddrPolicy};
use crate::config::ProxyConfig;
use crate::error::EgressError;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Name lookups running at once, process-wide.
///
/// Each runs `getaddrinfo` on a thread of the blocking pool, which keeps
/// it until the resolver answers or gives up (up to ~20 s with a resolver
/// that never answers); without a bound, every connection waiting for a
/// slow DNS held a thread. Each thread's stack (2 MiB) is a private
/// writable mapping: nearly nothing of it is resident, but the
/// smolmachines gate's data limit (`RLIMIT_DATA`, its memory bound)
/// counts it in full, so 150 connections to an allowed host whose DNS did
/// not answer took ~300 MiB of it and stopped the bottle as "out of
/// memory" with ~40 MiB resident.
const MAX_LOOKUPS: usize = 32;

/// Resolves `host:port` like `tokio::net::lookup_host`, at most
/// [`MAX_LOOKUPS`] at a time. The permit goes with the blocking task and
/// is returned when `getaddrinfo` returns, even if the connection was
/// dropped or timed out meanwhile (a blocking task cannot be stopped), so
/// abandoned lookups cannot pile up threads either.
async fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    static SLOTS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    let slot = SLOTS
        .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(MAX_LOOKUPS)))
        .clone()
        .acquire_owned()
        .await
        .expect("the lookup semaphore is never closed");
    let host = host.to_owned();
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).map(Iterator::collect)
    })
    .await
    .map_err(io::Error::other)?
}

/// `http://host:port` -> (host, port).
pub(crate) fn parse_proxy_url(s: &str) -> Result<(String, u16), String> {
    if s.contains('@') {
        // Userinfo. The URL lands in configs, plans and error messages; a
        // password in it would too, so it is refused before any message
        // below could quote it.
        return Err("credentials in the proxy URL are refused: put `user:password` in an environment variable and name it in upstream_proxy_auth_ref".into());
    }
    let uri: Uri = s.parse().map_err(|_| format!("{s:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{s:?}: only http:// proxies are supported (reached with CONNECT)"
        ));
    }
    let host = uri.host().ok_or_else(|| format!("{s:?} has no host"))?;
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(format!("{s:?}: a proxy URL has no path"));
    }
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_owned(),
        uri.port_u16().unwrap_or(80),
    ))
}

fn root_store(extra_pem: Option<&str>) -> Result<rustls::RootCertStore, EgressError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        // No system store (minimal images): fall back to the Mozilla roots
        // compiled in by webpki-roots.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = extra_pem {
        add_extra_roots(&mut roots, pem)
            .map_err(|m| EgressError::Trust(format!("upstream.extra_ca_pem {m}")))?;
    }
    Ok(roots)
}

/// Adds the certificates of `upstream.extra_ca_pem` to `roots`. At least
/// one must be there and every one must be a certificate a root store
/// takes; the error (to follow the name of the PEM text) says which is
/// wrong, never more of the text than that.
/// [`crate::config::check_extra_ca_pem`] runs this on an empty store, so a
/// config that would fail here is refused before the proxy listens.
pub(crate) fn add_extra_roots(
    roots: &mut rustls::RootCertStore,
    pem: &str,
) -> Result<usize, String> {
    let mut n = 0;
    for (i, c) in rustls_pemfile::certs(&mut pem.as_bytes()).enumerate() {
        let unusable = |e: &dyn std::fmt::Display| {
            format!(
                "holds a certificate that cannot be used (number {}): {e}",
                i + 1
            )
        };
        let c = c.map_err(|e| unusable(&e))?;
        roots.add(c).map_err(|e| unusable(&e))?;
        n += 1;
    }
    if n == 0 {
        return Err("holds no PEM certificate (no `-----BEGIN CERTIFICATE-----` block)".into());
    }
    Ok(n)
}

/// Dials upstream hosts the one way the config says.
#[derive(Clone)]
pub(crate) struct Dialer {
    inner: Arc<DialerInner>,
}

struct DialerInner {
    tls_any: TlsConnector,
    tls_h1: TlsConnector,
    resolve: BTreeMap<String, SocketAddr>,
    /// Which resolved addresses may be dialled.
    policy: AddrPolicy,
    /// IP-literal hosts a route or `tls_passthrough` entry names exactly:
    /// the user chose these addresses, as with `resolve`.
    named_ips: BTreeSet<IpAddr>,
    proxy: Option<ChainedProxy>,
}

/// A dial the internal-address check refused: `host` resolved to `addr`,
/// of class `class`, and no `allow_internal` network holds it.
#[derive(Debug, Clone)]
pub(crate) struct DialRefused {
    pub(crate) host: String,
    pub(crate) addr: IpAddr,
    pub(crate) class: AddrClass,
}

impl std::fmt::Display for DialRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolved to {}, {}, which the proxy does not dial",
            self.host,
            self.addr,
            self.class.an_address()
        )
    }
}

impl std::error::Error for DialRefused {}

/// The [`DialRefused`] somewhere in `e`'s chain (hyper's client wraps the
/// connector's `io::Error`, which wraps it).
pub(crate) fn dial_refused<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a DialRefused> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<DialRefused>() {
            return Some(r);
        }
        if let Some(r) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|i| i.downcast_ref::<DialRefused>())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// The HTTP proxy upstream connections are chained through.
struct ChainedProxy {
    host: String,
    port: u16,
    /// `Basic …` for `Proxy-Authorization`, when the proxy wants one.
    auth: Option<Secret>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proxy = self.inner.proxy.as_ref().map(|p| (&p.host, p.port));
        f.debug_struct("Dialer")
            .field("proxy", &proxy)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// The chained proxy's credentials come from the config's `tokens`; the
    /// IP literals its routes and passthrough entries name are dialled
    /// without the internal-address check.
    pub(crate) fn new(full: &ProxyConfig) -> Result<Self, EgressError> {
        let cfg = &full.upstream;
        let tokens = &full.tokens;
        let named_ips = full
            .routes
            .iter()
            .map(|r| r.host.as_str())
            .chain(full.tls_passthrough.iter().map(String::as_str))
            .filter_map(|h| crate::route::canon_host(h).parse::<IpAddr>().ok())
            .collect();
        let roots = Arc::new(root_store(cfg.extra_ca_pem.as_deref())?);
        let mk = |alpn: Vec<Vec<u8>>| {
            // Offers AES-128-GCM first (crate::tls); servers that honour
            // the client's order then hash the handshake with SHA-256.
            let mut c = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| EgressError::Trust(format!("TLS setup: {e}")))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn;
            Ok::<_, EgressError>(TlsConnector::from(Arc::new(c)))
        };
        let proxy = match &cfg.proxy {
            Some(p) => {
                let (host, port) = parse_proxy_url(p).map_err(EgressError::Trust)?;
                let auth = match &cfg.proxy_auth_ref {
                    Some(r) => {
                        let userpass = tokens.get(r).ok_or_else(|| EgressError::ConfigInvalid {
                            message: format!(
                                "upstream.proxy_auth_ref needs token ref {r}, which has no value"
                            ),
                        })?;
                        let b64 = base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            userpass.expose(),
                        );
                        Some(Secret::new(format!("Basic {b64}")))
                    }
                    None => None,
                };
                Some(ChainedProxy { host, port, auth })
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(DialerInner {
                tls_any: mk(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
                tls_h1: mk(vec![b"http/1.1".to_vec()])?,
                // Looked up by the host as every other check reads it
                // (`canon_host`): a key written `API.example.com.` still
                // pins `api.example.com`, rather than letting its DNS
                // answer be dialled instead.
                resolve: cfg
                    .resolve
                    .iter()
                    .map(|(h, a)| (crate::route::canon_host(h), *a))
                    .collect(),
                policy: AddrPolicy::new(&cfg.allow_internal, &cfg.host_addresses),
                named_ips,
                proxy,
            }),
        })
    }

    /// A TCP stream to `host:port` (through the chained proxy when there is
    /// one), with TCP_NODELAY.
    pub(crate) async fn tcp(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.tcp_inner(host, port))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    async fn tcp_inner(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let target = self.inner.resolve.get(host).copied();
        let s = match &self.inner.proxy {
            // The chained proxy resolves the name, so the internal-address
            // check cannot apply here (docs/egress.md says so).
            Some(p) => {
                let s = TcpStream::connect(&lookup(&p.host, p.port).await?[..]).await?;
                s.set_nodelay(true)?;
                let authority = match target {
                    Some(a) => a.to_string(),
                    None if host.contains(':') => format!("[{host}]:{port}"),
                    None => format!("{host}:{port}"),
                };
                connect_via_proxy(s, &authority, p.auth.as_ref()).await?
            }
            None => match target {
                Some(a) => TcpStream::connect(a).await?,
                None => self.connect_checked(host, port).await?,
            },
        };
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Resolves `host` once and connects to the first of its addresses the
    /// policy admits (in the resolver's order, trying the next when one does
    /// not answer). The address checked is the address dialled: nothing
    /// resolves the name again between the two, so a DNS answer that changes
    /// (rebinding) cannot slip an internal address past the check.
    async fn connect_checked(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            if self.inner.named_ips.contains(&ip) {
                return TcpStream::connect((ip, port)).await;
            }
        }
        let resolved = lookup(host, port).await?;
        let admitted = admit(&self.inner.policy, host, &resolved)
            .map_err(|r| io::Error::new(io::ErrorKind::PermissionDenied, r))?;
        let mut failed = None;
        for a in admitted {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    // A global address of this very machine (a VPS's public
                    // IPv4, a laptop's SLAAC IPv6) passes the classes but
                    // reaches whatever listens on all its interfaces. Seen
                    // only once connected: both ends have the same address.
                    if dialled_this_machine(&s, a) && !self.inner.policy.allows(a.ip()) {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            DialRefused {
                                host: host.to_owned(),
                                addr: a.ip(),
                                class: AddrClass::ThisMachine,
                            },
                        ));
                    }
                    return Ok(s);
                }
                Err(e) => failed = Some(e),
            }
        }
        Err(failed.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolved to no address"),
            )
        }))
    }

    /// A TLS stream to `host:port`, verified for `host`. Returns whether
    /// h2 was negotiated.
    pub(crate) async fn tls(
        &self,
        host: &str,
        port: u16,
        h1_only: bool,
    ) -> io::Result<(TlsStream<TcpStream>, bool)> {
        let tcp = self.tcp(host, port).await?;
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "invalid server name"))?;
        let conn = if h1_only {
            &self.inner.tls_h1
        } else {
            &self.inner.tls_any
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, conn.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((tls, h2))
    }
}

/// Whether connection `s`, dialled at `a`, reached this machine: Linux (and
/// the BSDs) source a connection to one of the machine's own addresses from
/// that same address, and one to an address routed locally without being
/// assigned (an "AnyIP" `local` route) from loopback. (Not seen: an address
/// inside a prefix assigned to `lo` but not itself assigned, which is
/// sourced from the assigned one.)
fn dialled_this_machine(s: &TcpStream, a: SocketAddr) -> bool {
    s.local_addr()
        .is_ok_and(|l| l.ip() == a.ip() || (l.ip().is_loopback() && !a.ip().is_loopback()))
}

/// The addresses of `resolved` that `policy` admits, in the resolver's
/// order; when it admits none (and there were some), the first refusal.
fn admit(
    policy: &AddrPolicy,
    host: &str,
    resolved: &[SocketAddr],
) -> Result<Vec<SocketAddr>, DialRefused> {
    let mut refused = None;
    let mut admitted = Vec::with_capacity(resolved.len());
    for a in resolved {
        match policy.check(a.ip()) {
            Ok(()) => admitted.push(*a),
            Err(class) => {
                refused.get_or_insert(DialRefused {
                    host: host.to_owned(),
                    addr: a.ip(),
                    class,
                });
            }
        }
    }
    match refused {
        Some(r) if admitted.is_empty() => Err(r),
        _ => Ok(admitted),
    }
}

/// Sends CONNECT on `s` (with `Proxy-Authorization: auth` when given) and
/// reads the proxy's answer.
async fn connect_via_proxy(
    mut s: TcpStream,
    authority: &str,
    auth: Option<&Secret>,
) -> io::Result<TcpStream> {
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(a) = auth {
        req.push_str("Proxy-Authorization: ");
        req.push_str(a.expose());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    // The request holds the credential: it is written, never logged or put
    // in an error.
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut b = [0u8; 1];
    // Byte by byte so nothing past the head (the tunnel's first bytes) is eaten.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || s.read(&mut b).await? == 0 {
            return Err(io::Error::other(
                "upstream proxy closed or sent an oversized answer to CONNECT",
            ));
        }
        head.push(b[0]);
    }
    let line = head.split(|&c| c == b'\n').next().unwrap_or_default();
    let ok = line
        .split(|&c| c == b' ')
        .nth(1)
        .is_some_and(|code| code.starts_with(b"2"));
    if !ok {
        let line = String::from_utf8_lossy(line).trim().to_owned();
        let hint = match (line.split(' ').nth(1), auth) {
            (Some("407"), None) => " (it wants credentials: set upstream_proxy_auth_ref to an env var holding user:password)",
            (Some("407"), Some(_)) => " (it did not accept the credentials of upstream_proxy_auth_ref)",
            _ => "",
        };
        return Err(io::Error::other(format!(
            "upstream proxy refused CONNECT: {line}{hint}"
        )));
    }
    Ok(s)
}

/// A connection from the pool: TLS or plain.
pub(crate) enum UpstreamIo {
    Tls(Box<TokioIo<TlsStream<TcpStream>>>, bool),
    Plain(TokioIo<TcpStream>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Tls(_, true) => Connected::new().negotiated_h2(),
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tls(s, _) => Pin::new(&mut **s).poll_read(cx, buf),
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tls(s, _) => Pin::new(&mut **s).poll_write(cx, buf),
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tls(s, _) => Pin::new(&mut **s).poll_flush(cx),
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tls(s, _) => Pin::new(&mut **s).poll_shutdown(cx),
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tls(s, _) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tls(s, _) => s.is_write_vectored(),
            UpstreamIo::Plain(s) => s.is_write_vectored(),
        }
    }
}

impl tower_service::Service<Uri> for Dialer {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_matches(|c| c == '[' || c == ']')
                .to_owned();
            if uri.scheme_str() == Some("http") {
                let s = this.tcp(&host, uri.port_u16().unwrap_or(80)).await?;
                Ok(UpstreamIo::Plain(TokioIo::new(s)))
            } else {
                let (s, h2) = this
                    .tls(&host, uri.port_u16().unwrap_or(443), false)
                    .await?;
                Ok(UpstreamIo::Tls(Box::new(TokioIo::new(s)), h2))
            }
        })
    }
}

/// An HTTP/2 upstream stream's receive window: what the proxy takes of an
/// answer its client has not read yet (hyper's default).
const H2_STREAM_WINDOW: u32 = 2 << 20;

/// An HTTP/2 upstream connection's receive window. Every request to a
/// host (on one worker) shares the connection, and h2 gives a stream's
/// bytes back to this window only once they are read: with hyper's
/// default, 5 MiB, three downloads whose client stopped reading took it
/// all, and every other request to that host waited until that client
/// went away. At 16 stream windows, sixteen such downloads are needed,
/// and they hold at most this much.
const H2_CONN_WINDOW: u32 = 16 * H2_STREAM_WINDOW;

/// The pooled client every forwarded request goes through.
pub(crate) fn client(dialer: Dialer) -> Client<Dialer, Body> {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .http2_initial_stream_window_size(H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(H2_CONN_WINDOW)
        .build(dialer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn a_connection_to_an_own_address_is_recognised() {
        // 127.0.0.1 stands in for a global address of the machine (its
        // class refuses it before any dial; this is the check after).
        let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let own: SocketAddr = ([127, 0, 0, 1], port).into();
        let s = TcpStream::connect(own).await.unwrap();
        assert!(dialled_this_machine(&s, own));
        // Another loopback address is sourced from 127.0.0.1: the two ends
        // differ, as for any address that is not the machine's.
        let other: SocketAddr = ([127, 0, 0, 2], port).into();
        let s = TcpStream::connect(other).await.unwrap();
        assert!(!dialled_this_machine(&s, other));
    }

    #[test]
    fn only_admitted_addresses_are_dialled_and_a_full_refusal_names_the_first() {
        let p = AddrPolicy::default();
        // A name answering with internal and global addresses: only the
        // global ones, in order.
        let got = admit(
            &p,
            "mixed.example",
            &addrs(&[
                "[::1]:443",
                "8.8.8.8:443",
                "127.0.0.1:443",
                "[2606:4700::1111]:443",
            ]),
        )
        .unwrap();
        assert_eq!(got, addrs(&["8.8.8.8:443", "[2606:4700::1111]:443"]));
        let r = admit(
            &p,
            "evil.example",
            &addrs(&["169.254.169.254:80", "10.0.0.1:80"]),
        )
        .unwrap_err();
        assert_eq!(r.addr, "169.254.169.254".parse::<IpAddr>().unwrap());
        assert_eq!(r.class, AddrClass::Metadata);
        assert_eq!(r.host, "evil.example");
        let allowed = AddrPolicy::new(&["10.0.0.0/8".parse().unwrap()], &[]);
        assert_eq!(
            admit(
                &allowed,
                "evil.example",
                &addrs(&["169.254.169.254:80", "10.0.0.1:80"])
            )
            .unwrap(),
            addrs(&["10.0.0.1:80"])
        );
        assert_eq!(admit(&p, "none.example", &[]).unwrap(), vec![]);
    }
}
