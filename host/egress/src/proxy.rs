//! The proxy itself: the agent-facing HTTP/1.1 proxy leg (CONNECT and plain
//! `http://`), TLS interception with per-host leaf certificates, identity
//! checks, route matching, DLP, injection and forwarding.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{now_rfc3339, Audit, AuditRecord};
use crate::body_override;
use crate::ca::LeafMinter;
use crate::config::{DlpMode, ProxyConfig};
use crate::dlp::Dlp;
use crate::dlp_body::{self, Refused};
use crate::error::EgressError;
use crate::headers::{
    authority_port, is_ws_switch, is_ws_upgrade, repeated_bytes, strip_hop_by_hop,
    strip_other_names,
};
use crate::held_writes::HeldWrites;
use crate::in_flight::InFlight;
use crate::listener::{Accepted, AsyncListener};
use crate::reflected::{Masker, Secrets};
use crate::route::{self, canon_host, match_route, normalise_path, RouteMatch};
use crate::tunnel::{splice, watch};
use crate::upstream::{self, Body, BoxError, Dialer};
use crate::workers;

/// HTTP/2 streams per client connection.
const MAX_STREAMS: u32 = 128;
/// Response bytes an HTTP/2 stream buffers for a client that does not
/// read them. hyper's default, 400 KiB, let one connection whose client
/// opened 128 large downloads and read nothing hold ~150 MB.
const SEND_BUF_PER_STREAM: usize = 64 * 1024;
/// Bytes of header fields an HTTP/2 request may repeat (the same name and
/// value again). HPACK sends a field already in the connection's table (up
/// to 4 KiB) as one byte, so ~50 bytes on the wire made a 64 KiB head for
/// the proxy to scan, encode and send upstream: ~15 times the CPU a byte
/// of ordinary requests (found by review).
/// Clients do not repeat a field they already sent; past this, `431`.
const MAX_REPEATED_HEADER_BYTES: usize = 4 * 1024;
/// Most of a request body read before a local response answers it.
const LOCAL_BODY_MAX: usize = 64 * 1024;
/// The audit note of a tunnel a reload ended.
const RELOADED: &str = "closed by a config reload that no longer allows it";

/// Everything a connection needs, built once.
pub(crate) struct Shared {
    cfg: ProxyConfig,
    minter: LeafMinter,
    dialer: Dialer,
    /// One pooled upstream client per worker thread, so a request only
    /// ever borrows upstream connections that live on its own thread.
    clients: Vec<Client<Dialer, Body>>,
    /// One copy of the DLP rules per worker thread (see `Dlp`).
    dlps: Vec<Arc<Dlp>>,
    audit: Audit,
    /// Bytes of request bodies held for the DLP scan, across requests.
    dlp_budget: Arc<Semaphore>,
    /// Per route: the headers it sets, values marked sensitive.
    inject: Vec<Vec<(HeaderName, HeaderValue)>>,
    /// Per route: the injected values its responses must not carry back.
    reflected: Vec<Arc<Secrets>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("bottle", &self.cfg.bottle_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(cfg: ProxyConfig) -> Result<Arc<Self>, EgressError> {
        cfg.validate()?;
        let minter = LeafMinter::new(&cfg.ca.cert_pem, &cfg.ca.key_pem)?;
        let dialer = Dialer::new(&cfg)?;
        let clients = (0..workers::count())
            .map(|_| upstream::client(dialer.clone()))
            .collect();
        let dlp = Dlp::new(&cfg)?;
        let dlps = (0..workers::count())
            .map(|_| Arc::new(dlp.clone()))
            .collect();
        let cfg_max_body = cfg.dlp.max_body_bytes;
        let audit = Audit::open(&cfg.audit)?;
        let mut inject = Vec::with_capacity(cfg.routes.len());
        let mut reflected = Vec::with_capacity(cfg.routes.len());
        for (i, r) in cfg.routes.iter().enumerate() {
            let mut hs = Vec::new();
            // The tokens filled in (a static value is no secret).
            let mut secrets: Vec<Vec<u8>> = Vec::new();
            for h in &r.inject {
                let name = HeaderName::from_bytes(h.header.as_bytes()).map_err(|_| {
                    EgressError::ConfigInvalid {
                        message: format!("routes[{i}] header {:?} is not a valid name", h.header),
                    }
                })?;
                let value = match &h.token_ref {
                    Some(tr) => {
                        let tok = cfg
                            .tokens
                            .get(tr)
                            .ok_or_else(|| EgressError::ConfigInvalid {
                                message: format!(
                                    "routes[{i}] needs token ref {tr}, which has no value"
                                ),
                            })?;
                        let filled = h.value.replace("{token}", tok.expose());
                        // The token alone: the filled value holds it, and
                        // a page that quotes either shows it.
                        secrets.push(tok.expose().as_bytes().to_vec());
                        filled
                    }
                    None => h.value.clone(),
                };
                let mut value = HeaderValue::from_str(&value).map_err(|_| EgressError::ConfigInvalid {
                    message: format!(
                        "routes[{i}] header {}: the filled template is not a valid header value (value not shown)",
                        h.header
                    ),
                })?;
                value.set_sensitive(true);
                hs.push((name, value));
            }
            inject.push(hs);
            reflected.push(Arc::new(Secrets::new(secrets.iter().map(Vec::as_slice))));
        }
        Ok(Arc::new(Self {
            cfg,
            minter,
            dialer,
            clients,
            dlps,
            audit,
            inject,
            reflected,
            dlp_budget: dlp_body::budget(cfg_max_body),
        }))
    }

    /// The upstream client of the calling worker thread.
    fn client(&self) -> &Client<Dialer, Body> {
        &self.clients[workers::index() % self.clients.len()]
    }

    /// This worker thread's copy of the DLP rules.
    fn dlp(&self) -> &Arc<Dlp> {
        &self.dlps[workers::index() % self.dlps.len()]
    }

    fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.limits.header_read_timeout_ms.max(1))
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.cfg.limits.idle_timeout_ms.max(1))
    }

    fn max_buf(&self) -> usize {
        self.cfg.limits.max_header_bytes.max(8192)
    }

    fn record(&self, method: &str, host: &str, port: u16, path: String) -> AuditRecord {
        AuditRecord {
            time: now_rfc3339(),
            bottle: self.cfg.bottle_id.clone(),
            method: method.to_owned(),
            host: host.to_owned(),
            port,
            path,
            ..Default::default()
        }
    }
}

/// The current config, swapped whole on reload (SIGHUP). Every request reads
/// the current one, so a kept-alive agent connection gets rotated tokens on
/// its next request; a tunnel that outlives requests (passthrough,
/// WebSocket) watches it and ends when a reload no longer allows it
/// ([`Live::revoked`]).
pub(crate) struct Live {
    cur: tokio::sync::watch::Sender<Arc<Shared>>,
    /// Client connections served at once, across every worker thread.
    conns: Arc<Semaphore>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

impl Live {
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            conns: Arc::new(Semaphore::new(shared.cfg.limits.max_connections)),
            cur: tokio::sync::watch::Sender::new(shared),
        })
    }

    pub(crate) fn get(&self) -> Arc<Shared> {
        self.cur.borrow().clone()
    }

    pub(crate) fn set(&self, shared: Arc<Shared>) {
        self.cur.send_replace(shared);
    }

    /// Completes once the current config fails `allows`: checked now (a
    /// reload may have come since the tunnel's request read its config) and
    /// after every reload. A tunnel opened under a config lives no longer
    /// than a config that allows it: a reload that removes its host, or
    /// rotates the credential its upgrade carried, ends it.
    pub(crate) async fn revoked(&self, allows: impl Fn(&Shared) -> bool) {
        let mut rx = self.cur.subscribe();
        loop {
            if !allows(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// Accepts connections until the listener fails for good (worker 0); the
/// other workers serve what it hands them (`workers`) and wait here.
pub(crate) async fn run(
    live: Arc<Live>,
    listener: Option<AsyncListener>,
) -> Result<(), EgressError> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let shared = live.get();
    let sem = live.conns.clone();
    let addr = listener.describe();
    tracing::info!(%addr, bottle = %shared.cfg.bottle_id, routes = shared.cfg.routes.len(), "egress proxy listening");
    loop {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return Ok(());
        };
        let accepted = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A Unix client is not checked: whoever reaches the socket's file
        // is the bottle's agent.
        if let Accepted::Tcp(tcp, peer) = &accepted {
            let allowed = &live.get().cfg.allowed_clients;
            if !allowed.is_empty() && !allowed.iter().any(|net| net.contains(&peer.ip())) {
                // Not from the bottle's network: drop it before reading a
                // byte.
                tracing::debug!(%peer, "refused a connection from outside the bottle's network");
                continue;
            }
            let _ = tcp.set_nodelay(true);
        }
        let slot = Slot {
            _permit: permit,
            load: workers::place(),
        };
        let w = slot.load.worker();
        if w == workers::index() {
            spawn_client(live.clone(), slot, accepted);
            continue;
        }
        let live = live.clone();
        match accepted.into_std() {
            Ok(conn) => {
                let job = move || match conn.into_async() {
                    Ok(a) => spawn_client(live, slot, a),
                    Err(e) => tracing::warn!(error = %e, "could not take over a connection"),
                };
                // Should that worker's queue be gone, serve it here.
                if let Err(job) = workers::hand_over(w, job) {
                    job();
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not hand over a connection"),
        }
    }
}

/// A client connection's hold on the proxy, shared by the connection and
/// any tunnel it hands over to, and released when the last of them ends:
/// its slot of `limits.max_connections` (tunnels count against the limit
/// like any client) and its count in its worker's load.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    load: workers::Load,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("worker", &self.load.worker())
            .finish_non_exhaustive()
    }
}

fn spawn_client(live: Arc<Live>, slot: Slot, conn: Accepted) {
    match conn {
        Accepted::Tcp(tcp, _) => tokio::spawn(serve_client(live, slot, tcp)),
        Accepted::Unix(unix) => tokio::spawn(serve_client(live, slot, unix)),
    };
}

/// Serves one client connection: HTTP/1.1 with upgrades (CONNECT,
/// WebSocket), until it closes or idles out.
async fn serve_client<T>(live: Arc<Live>, slot: Slot, io: T)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A CONNECT hands the connection over to a tunnel task and this
    // function returns, so the tunnel holds a share of the slot.
    let permit = Arc::new(slot);
    // Its limits only: held for the connection's life, the config would
    // keep tokens a reload replaced in memory as long as the agent likes.
    let (header_timeout, max_buf, idle) = {
        let shared = live.get();
        (shared.header_timeout(), shared.max_buf(), shared.idle())
    };
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf)
        // A client may shut its write side once the request is sent and
        // still wait for the answer (see half_close below).
        .half_close(true)
        .keep_alive(true);
    let svc = service_fn(move |req| {
        let l = live.clone();
        let p = permit.clone();
        async move { Ok::<_, Infallible>(outer(l, p, req).await) }
    });
    let (io, dog) = watch(io, idle);
    tokio::select! {
        r = b.serve_connection(TokioIo::new(io), svc).with_upgrades() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "client connection ended");
            }
        }
        _ = dog => tracing::debug!("idle client connection closed"),
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|n| match n {}).boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The agent-facing proxy leg. `permit` is the connection's slot, moved
/// into any tunnel the request opens.
async fn outer(live: Arc<Live>, permit: Arc<Slot>, req: Request<Incoming>) -> Response<Body> {
    let shared = live.get();
    let start = Instant::now();
    if req.method() == Method::CONNECT {
        let Some(auth) = req.uri().authority().cloned() else {
            return text(
                StatusCode::BAD_REQUEST,
                "bot-bottle egress: CONNECT needs host:port\n".into(),
            );
        };
        // CONNECT's target is host:port alone (RFC 9110 §9.3.6); user
        // information there was dropped silently, where `Host` and
        // `:authority` with one are refused: refused here too.
        if auth.as_str().contains('@') {
            return text(
                StatusCode::BAD_REQUEST,
                "bot-bottle egress: CONNECT needs host:port, without user information\n".into(),
            );
        }
        let host = canon_host(auth.host());
        let Some(port) = authority_port(&auth, 443) else {
            return text(
                StatusCode::BAD_REQUEST,
                "bot-bottle egress: CONNECT needs host:port with a port from 0 to 65535\n".into(),
            );
        };
        // Before any route is matched or certificate minted.
        if !route::is_host(&host) {
            return text(
                StatusCode::BAD_REQUEST,
                "bot-bottle egress: CONNECT needs host:port with a host name or an IP address\n"
                    .into(),
            );
        }
        let mut rec = shared.record("CONNECT", &host, port, String::new());
        if route::passthrough_for(&shared.cfg, &host, port).is_some() {
            return match shared.dialer.tcp(&host, port).await {
                Ok(up) => {
                    rec.decision = "passthrough".into();
                    rec.status = 200;
                    let s = shared.clone();
                    let live = live.clone();
                    tokio::spawn(async move {
                        let _slot = permit;
                        match hyper::upgrade::on(req).await {
                            Ok(c) => {
                                let mut c = TokioIo::new(c);
                                let mut up = up;
                                match passthrough_hello(&mut c, &host, s.header_timeout()).await {
                                    Ok(hello) => {
                                        if up.write_all(&hello).await.is_ok() {
                                            let gone = live.revoked(|n| {
                                                route::passthrough_for(&n.cfg, &host, port)
                                                    .is_some()
                                            });
                                            let (o, i, revoked) =
                                                splice(c, up, s.idle(), gone).await;
                                            rec.bytes_out = o + hello.len() as u64;
                                            rec.bytes_in = i;
                                            if revoked {
                                                rec.note = RELOADED.into();
                                            }
                                        }
                                    }
                                    Err(why) => {
                                        rec.decision = "identity_mismatch".into();
                                        rec.status = 0;
                                        rec.note = why;
                                    }
                                }
                            }
                            Err(e) => rec.note = format!("upgrade failed: {e}"),
                        }
                        rec.duration_ms = ms(start);
                        s.audit.write(&rec);
                    });
                    Response::new(empty())
                }
                Err(e) => {
                    if let Some(r) = upstream::dial_refused(&e) {
                        return refuse_internal(&shared, rec, r, start);
                    }
                    rec.decision = "error".into();
                    rec.status = 502;
                    rec.note = format!("upstream: {e}");
                    rec.duration_ms = ms(start);
                    shared.audit.write(&rec);
                    text(
                        StatusCode::BAD_GATEWAY,
                        format!("bot-bottle egress: cannot reach {host}:{port}: {e}\n"),
                    )
                }
            };
        }
        if route::connect_allowed(&shared.cfg.routes, &host, port)
            || (port == 443
                && shared
                    .cfg
                    .local_responses
                    .iter()
                    .any(|l| route::host_matches(&l.host, &host)))
        {
            let s = shared.clone();
            // The tunnel task takes a share of the connection's slot.
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(c) => intercept(live, s, c, host, port, permit).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            });
            return Response::new(empty());
        }
        let (why, body) = if route::host_allowed(&shared.cfg.routes, &host) {
            // The credential of a route for api.example.com is for its
            // HTTPS port, not for whatever else listens on the host.
            let why = format!("no [[egress.route]] for this host allows port {port}");
            let body = route::deny_port_body(&host, port, &why);
            (why, body)
        } else {
            let why = "no [[egress.route]] names this host";
            (why.to_string(), route::deny_body(&host, "CONNECT", "", why))
        };
        rec.decision = "deny".into();
        rec.status = 403;
        rec.note = why;
        rec.duration_ms = ms(start);
        shared.audit.write(&rec);
        return text(StatusCode::FORBIDDEN, body);
    }
    match (req.uri().scheme_str(), req.uri().authority()) {
        (Some("http"), Some(a)) => {
            let host = canon_host(a.host());
            let Some(port) = authority_port(a, 80) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "bot-bottle egress: the URL's port is not a number from 0 to 65535\n".into(),
                );
            };
            if !route::is_host(&host) {
                return text(
                    StatusCode::BAD_REQUEST,
                    "bot-bottle egress: the URL's host is neither a host name nor an IP address\n"
                        .into(),
                );
            }
            handle(shared, req, Target::new(false, host, port, permit, live)).await
        }
        (Some(_), Some(_)) => text(
            StatusCode::BAD_REQUEST,
            "bot-bottle egress: send https:// requests through CONNECT\n".into(),
        ),
        _ => text(
            StatusCode::BAD_REQUEST,
            "bot-bottle egress: this is a forward proxy (set HTTPS_PROXY/HTTP_PROXY to it); it has no other interface\n"
                .into(),
        ),
    }
}

/// Reads the client's TLS ClientHello on a passthrough tunnel without
/// decrypting anything, and checks its SNI against the CONNECT host: a
/// tunnel to an allowed host must not carry a hello for another name
/// (domain fronting through a shared front end). Returns the bytes read, to
/// be sent upstream first.
async fn passthrough_hello<T: AsyncRead + Unpin>(
    c: &mut T,
    host: &str,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut acc = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = c
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the TLS hello: {e}"))?;
            if n == 0 {
                return Err("the client closed before its TLS hello".to_string());
            }
            seen.extend_from_slice(&buf[..n]);
            acc.read_tls(&mut &buf[..n])
                .map_err(|e| format!("not a TLS hello: {e}"))?;
            match acc.accept() {
                Ok(Some(a)) => return Ok(a.client_hello().server_name().map(canon_host)),
                Ok(None) if seen.len() <= 64 * 1024 => continue,
                Ok(None) => return Err("TLS hello too large".to_string()),
                Err((e, _)) => return Err(format!("not a TLS hello: {e}")),
            }
        }
    };
    let sni = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "no TLS hello in time".to_string())??;
    match sni {
        Some(sni) if sni == host => Ok(seen),
        Some(sni) => Err(format!("TLS SNI {sni:?} differs from the CONNECT target")),
        None if host.parse::<std::net::IpAddr>().is_ok() => Ok(seen),
        None => Err("TLS hello without SNI on a passthrough tunnel to a named host".into()),
    }
}

#[derive(Debug, Clone)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as upstream requests carry it, built once per
    /// connection rather than formatted and parsed again per request.
    /// `None` when the pair is not a valid authority (requests then get 400).
    authority: Option<http::uri::Authority>,
    /// The client connection's slot of `limits.max_connections`. A
    /// WebSocket outlives the connection task that upgraded it; holding the
    /// target holds the slot.
    _slot: Arc<Slot>,
    /// The live config, which a WebSocket watches (`Live::revoked`).
    live: Arc<Live>,
}

impl Target {
    fn new(tls: bool, host: String, port: u16, slot: Arc<Slot>, live: Arc<Live>) -> Arc<Self> {
        let default_port = if tls { 443 } else { 80 };
        let h = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let text = if port == default_port {
            h
        } else {
            format!("{h}:{port}")
        };
        let authority = http::uri::Authority::from_maybe_shared(Bytes::from(text)).ok();
        Arc::new(Self {
            tls,
            host,
            port,
            authority,
            _slot: slot,
            live,
        })
    }
}

/// TLS interception of one CONNECT tunnel to an allow-listed host.
async fn intercept(
    live: Arc<Live>,
    shared: Arc<Shared>,
    upgraded: hyper::upgrade::Upgraded,
    host: String,
    port: u16,
    slot: Arc<Slot>,
) {
    let start = Instant::now();
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        HeldWrites::new(TokioIo::new(upgraded)),
    );
    let hs = match tokio::time::timeout(shared.header_timeout(), acceptor).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %host, "client TLS hello failed");
            tls_failed(
                &shared,
                &host,
                port,
                start,
                format!("client TLS hello: {e}"),
            );
            return;
        }
        Err(_) => {
            tls_failed(
                &shared,
                &host,
                port,
                start,
                "no TLS ClientHello in time".into(),
            );
            return;
        }
    };
    if let Some(sni) = hs.client_hello().server_name() {
        if canon_host(sni) != host {
            let mut rec = shared.record("CONNECT", &host, port, String::new());
            rec.decision = "identity_mismatch".into();
            rec.note = format!("TLS SNI {sni:?} differs from the CONNECT target");
            rec.duration_ms = ms(start);
            shared.audit.write(&rec);
            return;
        }
    }
    let tls_cfg = match shared.minter.server_config(&host) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, %host, "cannot mint a leaf certificate");
            return;
        }
    };
    // The session tickets go with the first answer (crate::held_writes).
    let mut accept = hs.into_stream(tls_cfg);
    if let Some(io) = accept.get_mut() {
        io.hold_handshake();
    }
    let tls = match tokio::time::timeout(shared.header_timeout(), accept.into_fallible()).await {
        Ok(Ok(mut t)) => {
            let tls13 = t.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
            t.get_mut().0.handshake_done(tls13);
            t
        }
        Ok(Err((e, mut io))) => {
            // What the handshake held (an alert naming the failure) goes.
            let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            // Most often: the agent does not trust the bottle CA (alert
            // UnknownCA / BadCertificate), i.e. its CA variables are unset.
            tracing::debug!(error = %e, %host, "client TLS handshake failed");
            tls_failed(
                &shared,
                &host,
                port,
                start,
                format!("client TLS handshake: {e}"),
            );
            return;
        }
        Err(_) => {
            tls_failed(
                &shared,
                &host,
                port,
                start,
                "TLS handshake not finished in time".into(),
            );
            return;
        }
    };
    let target = Target::new(true, host, port, slot, live.clone());
    // The limits only, as in `serve_client`: the tunnel may outlive this
    // config by far.
    let (header_timeout, max_buf, idle) =
        (shared.header_timeout(), shared.max_buf(), shared.idle());
    let max_header_list = shared.cfg.limits.max_header_bytes.min(u32::MAX as usize) as u32;
    drop(shared);
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    // HTTP/2 only: hyper closes idle HTTP/1.1 connections itself.
    let in_flight = (alpn.as_deref() == Some(b"h2")).then(|| Arc::new(InFlight::default()));
    let flight = in_flight.clone();
    let svc = service_fn(move |req| {
        let s = live.get();
        let t = target.clone();
        let guard = flight.as_ref().map(|f| f.enter());
        async move {
            let r = handle(s, req, t).await;
            drop(guard);
            Ok::<_, Infallible>(r)
        }
    });
    let (io, dog) = watch(tls, idle);
    let io = TokioIo::new(io);
    // ALPN chose the protocol: HTTP/2 over TLS exists only through ALPN
    // (RFC 9113, 3.3), so a client without it speaks HTTP/1.1. (hyper-util's
    // `auto` builder, used before, read the first bytes to guess instead,
    // and then put every read of the connection through a rewind buffer.)
    let served = async {
        if let Some(in_flight) = in_flight {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_concurrent_streams(MAX_STREAMS)
                .max_send_buf_size(SEND_BUF_PER_STREAM)
                .max_header_list_size(max_header_list);
            let conn = b.serve_connection(io, svc);
            tokio::pin!(conn);
            // No request for as long as a request head may take: GOAWAY,
            // and the connection ends once its open streams have.
            tokio::select! {
                r = conn.as_mut() => return r,
                _ = in_flight.idle_for(header_timeout) => {
                    conn.as_mut().graceful_shutdown();
                }
            }
            conn.await
        } else {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(max_buf)
                // hyper's default drops the request of a client that shuts
                // its write side after sending it (`curl` does not, shell
                // pipes and some libraries do): nothing went upstream and
                // no audit line was written.
                .half_close(true);
            b.serve_connection(io, svc).with_upgrades().await
        }
    };
    tokio::select! {
        r = served => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "intercepted connection ended");
            }
        }
        _ = dog => tracing::debug!("idle intercepted connection closed"),
    }
}

/// Audit line for a tunnel whose client-side TLS never came up.
fn tls_failed(shared: &Shared, host: &str, port: u16, start: Instant, note: String) {
    let mut rec = shared.record("CONNECT", host, port, String::new());
    rec.decision = "tls_error".into();
    rec.note = note;
    rec.duration_ms = ms(start);
    shared.audit.write(&rec);
}

fn ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// Checks every authority the request claims against the connection's.
/// The request's absolute URI upstream: the connection's scheme and
/// authority (built once per connection) and the request's path and query.
/// Assembled from parts: no formatting and no parsing per request.
fn absolute_uri(t: &Target, pq: Option<&http::uri::PathAndQuery>) -> Option<Uri> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if t.tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    uri.authority = Some(t.authority.clone()?);
    uri.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(uri).ok()
}

fn check_identity<B>(req: &Request<B>, t: &Target) -> Result<(), String> {
    // Every name the request gives itself: the request target's authority
    // (absolute form, HTTP/2 `:authority`) and each `Host` header. Checked
    // in place: this runs on every request.
    let mut named = false;
    let default = if t.tls { 443 } else { 80 };
    let agrees = |c: &str| -> Result<(), String> {
        let a: http::uri::Authority = c
            .parse()
            .map_err(|_| format!("{c:?} is not a host[:port]"))?;
        if a.as_str().contains('@') {
            return Err("userinfo in the authority is refused".into());
        }
        let port = authority_port(&a, default)
            .ok_or_else(|| format!("{c:?} has a port that is not a number from 0 to 65535"))?;
        if port != t.port || canon_host(a.host()) != t.host {
            return Err(format!(
                "the request names {c} but the connection is to {}:{}",
                t.host, t.port
            ));
        }
        Ok(())
    };
    if let Some(a) = req.uri().authority() {
        named = true;
        agrees(a.as_str())?;
    }
    for v in req.headers().get_all(header::HOST) {
        named = true;
        agrees(
            v.to_str()
                .map_err(|_| "the Host header is not text".to_string())?,
        )?;
    }
    if !named {
        return Err("the request names no host (Host / :authority)".into());
    }
    Ok(())
}

/// One request inside an intercepted tunnel (or a plain `http://` one).
async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>, t: Arc<Target>) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let ws_h2 = method == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let ws_h1 = req.version() == Version::HTTP_11 && is_ws_upgrade(req.headers());
    let path = normalise_path(req.uri().path());
    let mut rec = shared.record(method.as_str(), &t.host, t.port, path.clone());
    let done =
        |mut rec: AuditRecord, status: StatusCode, decision: &str, note: String, body: String| {
            rec.status = status.as_u16();
            rec.decision = decision.into();
            rec.note = note;
            rec.duration_ms = ms(start);
            shared.audit.write(&rec);
            text(status, body)
        };

    // Before anything reads the head (see `MAX_REPEATED_HEADER_BYTES`).
    // HTTP/1.1 sends every copy: no cheaper than sending a long head.
    if req.version() == Version::HTTP_2 {
        let repeated = repeated_bytes(req.headers());
        if repeated > MAX_REPEATED_HEADER_BYTES {
            let why = format!(
                "{repeated} bytes of header fields repeat an earlier field (at most \
                 {MAX_REPEATED_HEADER_BYTES})"
            );
            return done(
                rec,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "deny",
                why.clone(),
                format!("bot-bottle egress: refused, nothing sent: {why}\n"),
            );
        }
    }
    if let Err(why) = check_identity(&req, &t) {
        return done(
            rec,
            StatusCode::MISDIRECTED_REQUEST,
            "identity_mismatch",
            why.clone(),
            format!("bot-bottle egress: refused, nothing injected: {why}\n"),
        );
    }
    // Hop-by-hop headers go now, before any check reads the headers: what
    // `Connection` lists never reaches the upstream, so a check must not
    // read it either (`Connection: content-type` sent a form body read as
    // JSON here to Rack without its content-type, which Rack reads as a
    // form: its `_method` field unchecked).
    strip_hop_by_hop(req.headers_mut(), ws_h1);
    if route::always_refused(method.as_str()) {
        let m = method.as_str().to_ascii_uppercase();
        return done(
            rec,
            StatusCode::METHOD_NOT_ALLOWED,
            "deny",
            format!("{m} is refused"),
            format!("bot-bottle egress: {m} is refused\n"),
        );
    }
    // Inside TLS only, as `check` says and the CONNECT gate admits them.
    if let Some(lr) = shared.cfg.local_responses.iter().find(|l| {
        t.tls
            && route::host_matches(&l.host, &t.host)
            && normalise_path(&l.path) == path
            && l.method.eq_ignore_ascii_case(method.as_str())
    }) {
        // Answered here, never forwarded: the body holds dummies only.
        // The request body (a token refresh: small) is read first. Answered
        // mid-upload, an HTTP/2 stream ends with RST_STREAM(NO_ERROR),
        // which curl 7.88 reports as a framing error (seen in the Claude
        // Docker test).
        let drain = http_body_util::Limited::new(req.into_body(), LOCAL_BODY_MAX).collect();
        let _ = tokio::time::timeout(shared.header_timeout(), drain).await;
        rec.status = lr.status;
        rec.decision = "local".into();
        rec.duration_ms = ms(start);
        shared.audit.write(&rec);
        let mut r = Response::new(full(lr.body.clone()));
        *r.status_mut() = StatusCode::from_u16(lr.status).unwrap_or(StatusCode::OK);
        if let Ok(v) = HeaderValue::from_str(&lr.content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return r;
    }
    if method.as_str().eq_ignore_ascii_case("CONNECT") && !ws_h2 {
        return done(
            rec,
            StatusCode::METHOD_NOT_ALLOWED,
            "deny",
            "CONNECT inside a tunnel".into(),
            "bot-bottle egress: CONNECT inside a tunnel is refused\n".into(),
        );
    }
    let match_method = if ws_h2 { "GET" } else { method.as_str() };
    let (idx, r) = match match_route(
        &shared.cfg.routes,
        (&t.host, t.port, t.tls),
        req.uri().path(),
        &path,
        match_method,
    ) {
        RouteMatch::Allowed(i, r) => (i, r),
        RouteMatch::HostOnly(miss) => {
            return done(
                rec,
                StatusCode::FORBIDDEN,
                "deny",
                miss.why(method.as_str()),
                route::deny_miss_body(&t.host, method.as_str(), &path, &miss),
            );
        }
        RouteMatch::NoHost => {
            let why = "no [[egress.route]] names this host";
            return done(
                rec,
                StatusCode::FORBIDDEN,
                "deny",
                why.into(),
                route::deny_body(&t.host, method.as_str(), &path, why),
            );
        }
    };
    rec.route = Some(idx);
    // A refusal the agent's user can lift: `fix` says how.
    let deny_fix = |rec: AuditRecord, status: StatusCode, why: String, fix: &str| {
        let text = route::deny_fix_body(&t.host, method.as_str(), &path, &why, fix);
        done(rec, status, "deny", why, text)
    };
    // An override the route does not allow: `where_` says where it was.
    let refused_override = |m: &str| route::refuses_override(r, m);
    let deny_override = |rec: AuditRecord, m: &str, where_: &str| {
        // The agent's text: shown only if it looks like a method.
        let m = if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) {
            m
        } else {
            "(not a method)"
        };
        deny_fix(
            rec,
            StatusCode::FORBIDDEN,
            format!("the request asks for method {m} ({where_}), which the route does not allow"),
            "To allow it, add the method to the route's `methods`, if the agent should have it",
        )
    };
    if let Some(m) =
        route::method_override(req.headers(), req.uri().query()).find(|m| refused_override(m))
    {
        return deny_override(rec, &m, "a method override");
    }
    if !t.tls && !r.plain_http {
        return deny_fix(
            rec,
            StatusCode::FORBIDDEN,
            "plain HTTP is refused unless the route sets plain_http = true".into(),
            "Use https://, or set `plain_http = true` on the route if the credential may \
             travel unencrypted",
        );
    }

    let on_client = (ws_h1 || ws_h2).then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    let has_body = !body.is_end_stream();

    // DLP, before anything is injected.
    let req_bytes = Arc::new(AtomicU64::new(0));
    let mut body: Body = CountedBody {
        inner: body,
        n: req_bytes.clone(),
    }
    .boxed_unsync();

    // A `_method` field in a POST's body, where the route limits methods
    // (crate::body_override): read before any of the body is sent, or, for
    // JSON past the cap, as it goes (a refused one stops it).
    let kinds = if !r.methods.is_empty() && has_body {
        body_override::kinds(&parts.method, &parts.headers)
    } else {
        Vec::new()
    };
    let override_stopped: body_override::Stopped = Default::default();
    if kinds.contains(&body_override::Kind::Json) {
        if let Some(cs) = body_override::unread_json_charset(&parts.headers) {
            return deny_fix(
                rec,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a JSON body in charset {cs:?}, on a route that limits methods, cannot be read for a _method field"
                ),
                "Express decodes it before it reads a _method field, which asks servers for \
                 another method. Send it as UTF-8",
            );
        }
    }
    if !kinds.is_empty() {
        let cap = shared.dlp().max_body;
        let mut abandoned = DropAudit {
            rec: Some(rec.clone()),
            shared: shared.clone(),
            start,
            req_bytes: req_bytes.clone(),
            decision: "error",
            note: "client went away while its body was held to read its _method field; nothing was sent",
        };
        let held =
            dlp_body::hold_whole(body, cap, &shared.dlp_budget, shared.header_timeout()).await;
        abandoned.rec = None;
        let whole = match held {
            Ok((b, whole)) => {
                body = b;
                whole
            }
            Err(e) => {
                let (status, decision, why, text) = held_refusal(e, &shared, &t.host);
                return done(rec, status, decision, why, text);
            }
        };
        let enc = content_encoding(&parts.headers);
        let too_big = |rec: AuditRecord, what: &str| {
            deny_fix(
                rec,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{what} over {cap} bytes, on a route that limits methods, cannot be read for a _method field"
                ),
                "A _method field in a form or JSON body asks servers for another method. Send a \
                 smaller or uncompressed body, or raise dlp.max_body_bytes in [egress]",
            )
        };
        let decodes = body_override::express_decodes(enc.as_deref());
        match whole {
            None if decodes => return too_big(rec, "a compressed body"),
            None if kinds.iter().any(|k| *k != body_override::Kind::Json) => {
                return too_big(rec, "a form body")
            }
            None => {
                let this_route = r.clone();
                let refused = Box::new(move |m: &str| route::refuses_override(&this_route, m));
                body = body_override::WatchedJson::new(body, refused, override_stopped.clone())
                    .boxed_unsync();
                add_note(
                    &mut rec,
                    &format!(
                        "a JSON body over {cap} bytes was read for a _method field as it streamed"
                    ),
                );
            }
            Some(raw) => {
                // As sent, and as Express reads it once decoded.
                let mut texts = vec![raw.clone()];
                if decodes {
                    match body_override::decoded(&raw, enc.as_deref(), cap) {
                        Ok(Some(d)) => texts.push(Bytes::from(d)),
                        Ok(None) => {}
                        Err(()) => return too_big(rec, "a body that decodes"),
                    }
                }
                for kind in &kinds {
                    for text in &texts {
                        let asked =
                            match body_override::methods_in(kind, text.clone()).await {
                                Ok(asked) => asked,
                                Err(e) => return deny_fix(
                                    rec,
                                    StatusCode::BAD_REQUEST,
                                    format!(
                                        "a multipart body whose _method fields cannot be read for \
                                         certain ({e}), on a route that limits methods"
                                    ),
                                    "Its fields are read for a _method field, which asks servers \
                                     for another method",
                                ),
                            };
                        let mut asked = asked.iter().flat_map(|v| v.split(',')).map(str::trim);
                        if let Some(m) = asked.find(|m| refused_override(m)) {
                            return deny_override(rec, m, "the body's _method field");
                        }
                    }
                }
            }
        }
    }
    // Rule ids found in a body streamed past the cap (`block` mode).
    let streamed_block: dlp_body::Blocked = Default::default();
    if shared.dlp().mode != DlpMode::Off {
        let mut findings = Vec::new();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        shared.dlp().scan_head(pq, &parts.headers, &mut findings);
        if !body.is_end_stream() {
            // Every line, as a server reads them: `identity` and `gzip` on
            // two lines are `identity, gzip` (stacked: not decodable here).
            let enc = content_encoding(&parts.headers);
            // A request the agent abandons while its body is held or
            // scanned still gets its audit line.
            let mut abandoned = DropAudit {
                rec: Some(AuditRecord {
                    dlp: findings.clone(),
                    ..rec.clone()
                }),
                shared: shared.clone(),
                start,
                req_bytes: req_bytes.clone(),
                decision: "error",
                note: "client went away while its body was held for the DLP scan; nothing was sent",
            };
            let held = dlp_body::hold_and_scan(
                body,
                enc.as_deref(),
                shared.dlp(),
                &shared.dlp_budget,
                shared.header_timeout(),
                &mut findings,
                &streamed_block,
            )
            .await;
            abandoned.rec = None;
            // Refused or not, the line names what the scan found.
            rec.dlp.clone_from(&findings);
            match held {
                Ok((b, note)) => {
                    body = b;
                    if let Some(note) = note {
                        add_note(&mut rec, &note);
                    }
                }
                Err(e) => {
                    // The DLP's hold read a JSON body that its `_method`
                    // check stopped.
                    if let Some(m) = take_stopped(&override_stopped) {
                        return deny_override(rec, &m, "the body's _method field");
                    }
                    let (status, decision, why, text) = held_refusal(e, &shared, &t.host);
                    return done(rec, status, decision, why, text);
                }
            }
        }
        if !findings.is_empty() {
            tracing::warn!(host = %t.host, rules = ?findings, "DLP findings in an outbound request");
            rec.dlp = findings.clone();
            if shared.dlp().mode == DlpMode::Block {
                return done(
                    rec,
                    StatusCode::FORBIDDEN,
                    "dlp_block",
                    String::new(),
                    format!(
                        "bot-bottle egress: request to {} blocked by DLP rule(s) {}; it was not sent\n",
                        t.host,
                        findings.join(", ")
                    ),
                );
            }
        }
    }

    // Injection: replace, never merge. (Hop-by-hop headers are gone
    // already.)
    parts.headers.remove(header::HOST);
    strip_other_names(&mut parts.headers);
    // The agent's `Expect: 100-continue` was for the proxy, which answered
    // it when it read the body. Passed on, it lets a server answer 417 and
    // leave the body unread on the connection.
    parts.headers.remove(header::EXPECT);
    if has_body && on_client.is_none() {
        // An HTTP/1.1 upstream connection that carried a body is closed
        // after it, not pooled: a server that leaves a body unread (a GET's,
        // or one it answered early) reads what is left as the start of the
        // next request on that connection, which carries the injected
        // credential — the agent's body could swallow it, or be a request
        // of its own that the credential completes. HTTP/2 frames each
        // stream, and hyper drops this header there.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let inject = &shared.inject[idx];
    // The agent's copies, in every spelling a CGI-style server reads as the
    // same header (`x_api_key` is `x-api-key` to Puma and PHP), so the
    // server sees only the injected value.
    let copies: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| {
            inject
                .iter()
                .any(|(n, _)| route::same_cgi_name(k.as_str(), n.as_str()))
        })
        .cloned()
        .collect();
    for n in copies {
        parts.headers.remove(n);
    }
    for (n, v) in inject {
        parts.headers.append(n.clone(), v.clone());
    }
    rec.injected = !inject.is_empty();
    rec.injected_headers = r.inject.iter().map(|h| h.header.clone()).collect();
    // The response is searched for the injected values (crate::reflected),
    // which compressed bytes would hide.
    let secrets = shared.reflected[idx].clone();
    if !secrets.is_empty() {
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    let Some(uri) = absolute_uri(&t, parts.uri.path_and_query()) else {
        return done(
            rec,
            StatusCode::BAD_REQUEST,
            "error",
            "bad URI".into(),
            "bot-bottle egress: bad request URI\n".into(),
        );
    };

    if let Some(on_client) = on_client {
        return websocket(
            shared.clone(),
            parts,
            on_client,
            t,
            uri,
            ws_h2,
            rec,
            start,
            secrets,
        )
        .await;
    }

    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let up_req = Request::from_parts(parts, body);
    // If the agent goes away while upstream is still answering, this future
    // is dropped: the guard still writes the request's audit line.
    let mut guard = DropAudit {
        rec: Some(rec),
        shared: shared.clone(),
        start,
        req_bytes: req_bytes.clone(),
        decision: "allow",
        note: "client went away before upstream answered",
    };
    let answer = shared.client().request(up_req).await;
    let Some(mut rec) = guard.rec.take() else {
        unreachable!("only the guard's drop takes the record")
    };
    match answer {
        Ok(resp) => {
            let (mut p, b) = resp.into_parts();
            let (mask, masked) = reflected_in(&mut p, &secrets, &mut rec);
            strip_hop_by_hop(&mut p.headers, false);
            p.version = client_version;
            rec.status = p.status.as_u16();
            rec.decision = "allow".into();
            // `block` mode may still stop the request body after this
            // answer (an upstream that answers before it reads the whole
            // upload): the audit line, written when the answer ends, says so.
            let blocked = (shared.dlp().mode == DlpMode::Block).then_some(streamed_block);
            let body = AuditBody {
                inner: b,
                n: 0,
                rec: Some(rec),
                shared: shared.clone(),
                start,
                req_bytes,
                blocked,
                mask,
                masked,
                waiting: None,
            };
            Response::from_parts(p, body.boxed_unsync())
        }
        Err(e) => {
            if let Some(m) = take_stopped(&override_stopped) {
                return deny_override(
                    rec,
                    &m,
                    "the body's _method field, read as it streamed: the request was abandoned \
                     before the rest of the body was sent",
                );
            }
            let stopped =
                std::mem::take(&mut *streamed_block.lock().unwrap_or_else(|p| p.into_inner()));
            if !stopped.is_empty() {
                rec.dlp = stopped.clone();
                return done(
                    rec,
                    StatusCode::FORBIDDEN,
                    "dlp_block",
                    "found while the body streamed; the request was abandoned before those bytes".into(),
                    format!(
                        "bot-bottle egress: request to {} blocked by DLP rule(s) {}; it was not completed\n",
                        t.host,
                        stopped.join(", ")
                    ),
                );
            }
            if let Some(r) = upstream::dial_refused(&e) {
                return refuse_internal(&shared, rec, r, start);
            }
            let why = error_chain(&e);
            tracing::debug!(host = %t.host, error = %why, "upstream request failed");
            done(
                rec,
                StatusCode::BAD_GATEWAY,
                "error",
                format!("upstream: {why}"),
                format!("bot-bottle egress: upstream {} failed: {why}\n", t.host),
            )
        }
    }
}

/// The answer, and the audit line, for a dial the internal-address check
/// refused. The body names the host, the kind of address and the manifest
/// keys that would allow it; the address itself goes only to the audit log
/// (an agent on a wildcard route could otherwise map internal names).
fn refuse_internal(
    shared: &Shared,
    mut rec: AuditRecord,
    r: &upstream::DialRefused,
    start: Instant,
) -> Response<Body> {
    rec.status = 403;
    rec.decision = "internal_address".into();
    // No connection was made: nothing, and no credential, was sent.
    rec.injected = false;
    rec.injected_headers.clear();
    rec.note = format!("{r}; [egress] allow_internal (or resolve) would allow it");
    rec.duration_ms = ms(start);
    shared.audit.write(&rec);
    let host = &r.host;
    let metadata = if r.class == crate::addr::AddrClass::Metadata {
        "A cloud metadata address is allowed only when listed on its own \
         (169.254.169.254/32, fd00:ec2::254/128, 168.63.129.16/32...): a wider network \
         does not include it.\n"
    } else {
        ""
    };
    text(
        StatusCode::FORBIDDEN,
        format!(
            "bot-bottle egress: {host} resolves to {class}; the proxy does not dial \
             internal addresses for a name it resolves itself (a DNS answer could otherwise \
             point a route at cloud metadata, the proxy's own machine or its network). \
             The audit log (`bottle logs --egress`) names the address.\n\
             If {host} really lives on an internal network (a corporate mirror), allow that \
             network in bottle.toml:\n  [egress]\n  allow_internal = [\"10.20.0.0/16\"]\n\
             or pin the host to its address: [egress] resolve = {{ \"{host}\" = \"IP:PORT\" }}.\n\
             {metadata}",
            class = r.class.an_address(),
        ),
    )
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The request's `content-encoding`, all its lines joined (`None` without
/// one).
fn content_encoding(h: &HeaderMap) -> Option<String> {
    let lines: Vec<_> = h
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// Counts the data bytes of a request body, and drops its trailers: they
/// would reach an HTTP/2 upstream past the injection (a client's copy of an
/// injected header beside ours) and past the DLP scan of the head. Agents'
/// requests do not use them (gRPC's trailers are the response's), and an
/// HTTP/1.1 upstream never got them (hyper does not send request trailers).
struct CountedBody {
    inner: Incoming,
    n: Arc<AtomicU64>,
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => match f.data_ref() {
                Some(d) => {
                    self.n.fetch_add(d.len() as u64, Ordering::Relaxed);
                    Poll::Ready(Some(Ok(f)))
                }
                // Trailers are the last frame a body has.
                None => Poll::Ready(None),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Streams a response body frame by frame (SSE is never buffered) and writes
/// the audit line when the body ends or is dropped.
struct AuditBody {
    inner: Incoming,
    n: u64,
    rec: Option<AuditRecord>,
    shared: Arc<Shared>,
    start: Instant,
    req_bytes: Arc<AtomicU64>,
    /// Rule ids that stopped the request body as it streamed (`block`
    /// mode only).
    blocked: Option<dlp_body::Blocked>,
    /// On a route that injects a credential: masks copies of it the
    /// upstream sends back.
    mask: Option<Masker>,
    /// Copies masked in the response's headers.
    masked: usize,
    /// A frame that comes after the masker's held bytes (trailers, or the
    /// end when `Some(None)`).
    waiting: Option<Option<Frame<Bytes>>>,
}

impl AuditBody {
    fn finish(&mut self, note: Option<String>) {
        if let Some(mut rec) = self.rec.take() {
            rec.bytes_in = self.n;
            rec.bytes_out = self.req_bytes.load(Ordering::Relaxed);
            rec.duration_ms = ms(self.start);
            if let Some(n) = note {
                add_note(&mut rec, &n);
            }
            note_masked(
                &mut rec,
                self.masked + self.mask.as_ref().map_or(0, |m| m.masked),
            );
            let stopped = self
                .blocked
                .as_ref()
                .map(|b| std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner())));
            if let Some(found) = stopped.filter(|f| !f.is_empty()) {
                add_note(
                    &mut rec,
                    "found in the request body after the upstream answered; \
                     the body was cut off before those bytes",
                );
                rec.decision = "dlp_block".into();
                rec.dlp = found;
            }
            self.shared.audit.write(&rec);
        }
    }
}

impl Drop for AuditBody {
    fn drop(&mut self) {
        let note = (!self.inner.is_end_stream())
            .then(|| "client went away before the response ended".to_string());
        self.finish(note);
    }
}

impl hyper::body::Body for AuditBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.waiting.take() {
            if f.is_none() {
                this.finish(None);
            }
            return Poll::Ready(f.map(Ok));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    let f = match (this.mask.as_mut(), f.into_data()) {
                        (None, Ok(d)) => Frame::data(d),
                        (None, Err(f)) => f,
                        (Some(m), Ok(d)) => {
                            let d = m.feed(d);
                            if d.is_empty() {
                                // All of it waits for what comes next.
                                continue;
                            }
                            Frame::data(d)
                        }
                        (Some(m), Err(mut f)) => {
                            if let Some(t) = f.trailers_mut() {
                                this.masked += m.secrets().mask_headers(t);
                            }
                            match m.finish() {
                                Some(rest) => {
                                    this.waiting = Some(Some(f));
                                    Frame::data(rest)
                                }
                                None => f,
                            }
                        }
                    };
                    if let Some(d) = f.data_ref() {
                        this.n += d.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let note = format!("upstream body: {e}");
                    this.finish(Some(note));
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    if let Some(rest) = this.mask.as_mut().and_then(Masker::finish) {
                        this.n += rest.len() as u64;
                        this.waiting = Some(None);
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    this.finish(None);
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.waiting.is_none()
            && self.inner.is_end_stream()
            && self.mask.as_ref().is_none_or(Masker::is_idle)
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Masks copies of the route's injected values in an answer's head (its
/// headers, and the HTTP/1 reason phrase, which hyper passes on to an
/// HTTP/1 agent) (crate::reflected), and gives the masker for its body:
/// `None` on a route that injects nothing. Every body is searched as it
/// came: one that says it is encoded (the route asked for identity) is
/// noted on the audit line, since a copy inside compressed bytes is not
/// found, and searched all the same (a stored block, or an encoding that
/// is none at all, `none`, carries the token as it is). Runs before the
/// hop-by-hop headers go, to see a `Transfer-Encoding` other than
/// chunked. Also how many copies the head had.
fn reflected_in(
    p: &mut http::response::Parts,
    secrets: &Arc<Secrets>,
    rec: &mut AuditRecord,
) -> (Option<Masker>, usize) {
    if secrets.is_empty() {
        return (None, 0);
    }
    let masked = secrets.mask_headers(&mut p.headers) + secrets.mask_reason(&mut p.extensions);
    let coded = |name: HeaderName, plain: &[u8]| {
        p.headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(plain))
        })
    };
    if coded(header::CONTENT_ENCODING, b"identity") || coded(header::TRANSFER_ENCODING, b"chunked")
    {
        add_note(
            rec,
            "the response came encoded although identity was asked for: \
             a copy of the route's credential inside the encoded bytes was not found",
        );
    }
    (Some(Masker::new(secrets.clone())), masked)
}

/// Writes an audit line for a request whose future was dropped (the client
/// went away) before an answer came back.
/// Why a held body was not sent: status, audit decision and note, and the
/// text for the agent.
fn held_refusal(
    e: Refused,
    shared: &Shared,
    host: &str,
) -> (StatusCode, &'static str, String, String) {
    match e {
        Refused::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            "error",
            "request body stalled".into(),
            format!(
                "bot-bottle egress: the request body stopped arriving for {} ms; nothing was sent\n",
                shared.cfg.limits.header_read_timeout_ms
            ),
        ),
        Refused::Unreadable(e) => (
            StatusCode::BAD_REQUEST,
            "error",
            format!("request body: {e}"),
            "bot-bottle egress: the request body could not be read\n".into(),
        ),
        Refused::Unscannable { status, why } => (
            status,
            "dlp_block",
            format!("cannot scan {why}"),
            format!(
                "bot-bottle egress: DLP (block) cannot scan {why} to {host}; it was not sent (send it uncompressed, or set dlp = \"log\" in [egress])\n"
            ),
        ),
    }
}

/// The method a streamed JSON body's `_method` asked for that stopped it.
fn take_stopped(stopped: &body_override::Stopped) -> Option<String> {
    stopped.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Adds `note` to the audit line's note (one request can earn two).
/// Says on the audit line (and in a warning) how many copies of the
/// injected credential the upstream sent back, if any.
fn note_masked(rec: &mut AuditRecord, masked: usize) {
    if masked == 0 {
        return;
    }
    tracing::warn!(host = %rec.host, copies = masked, "the upstream sent back the credential the proxy injected; masked");
    add_note(
        rec,
        &format!(
            "the upstream sent back the route's credential: {masked} cop{} masked",
            if masked == 1 { "y" } else { "ies" }
        ),
    );
}

fn add_note(rec: &mut AuditRecord, note: &str) {
    if rec.note.is_empty() {
        rec.note = note.into();
    } else {
        rec.note = format!("{}; {note}", rec.note);
    }
}

struct DropAudit {
    rec: Option<AuditRecord>,
    shared: Arc<Shared>,
    start: Instant,
    req_bytes: Arc<AtomicU64>,
    /// The line's decision and note if the request is dropped here.
    decision: &'static str,
    note: &'static str,
}

impl Drop for DropAudit {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            rec.decision = self.decision.into();
            rec.status = 0;
            rec.note = self.note.into();
            rec.bytes_out = self.req_bytes.load(Ordering::Relaxed);
            rec.duration_ms = ms(self.start);
            self.shared.audit.write(&rec);
        }
    }
}

/// A WebSocket: HTTP/1.1 upgrade, or HTTP/2 extended CONNECT (RFC 8441)
/// translated to an HTTP/1.1 upgrade upstream. The credential is injected
/// into the upgrade request; frames are then spliced untouched.
#[allow(clippy::too_many_arguments)]
async fn websocket(
    shared: Arc<Shared>,
    mut parts: http::request::Parts,
    on_client: hyper::upgrade::OnUpgrade,
    t: Arc<Target>,
    uri: Uri,
    from_h2: bool,
    mut rec: AuditRecord,
    start: Instant,
    secrets: Arc<Secrets>,
) -> Response<Body> {
    let fail = |mut rec: AuditRecord, why: String| {
        rec.status = 502;
        rec.decision = "error".into();
        rec.note = why.clone();
        rec.duration_ms = ms(start);
        shared.audit.write(&rec);
        text(
            StatusCode::BAD_GATEWAY,
            format!("bot-bottle egress: websocket upstream failed: {why}\n"),
        )
    };
    let dialled = if t.tls {
        shared
            .dialer
            .tls(&t.host, t.port, true)
            .await
            .map(|(s, _)| upstream::UpstreamIo::Tls(Box::new(TokioIo::new(s)), false))
    } else {
        shared
            .dialer
            .tcp(&t.host, t.port)
            .await
            .map(|s| upstream::UpstreamIo::Plain(TokioIo::new(s)))
    };
    let io = match dialled {
        Ok(io) => io,
        Err(e) => {
            if let Some(r) = upstream::dial_refused(&e) {
                return refuse_internal(&shared, rec, r, start);
            }
            return fail(rec, e.to_string());
        }
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await {
            Ok(x) => x,
            Err(e) => return fail(rec, e.to_string()),
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if shared.dlp().mode != DlpMode::Off || !secrets.is_empty() {
        // No permessage-deflate while DLP is on or the upstream's frames
        // are searched for the injected credential: frames stay readable.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    // The upgrade goes with no body: a length the agent sent would say
    // otherwise.
    parts.headers.remove(header::CONTENT_LENGTH);
    // WebSocket and nothing else: an agent's `Upgrade: h2c, websocket` must
    // not let the upstream switch to a protocol whose requests the routes
    // would never see.
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if from_h2 {
        parts.method = Method::GET;
        let key: [u8; 16] = rand::random();
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        if let Ok(v) = HeaderValue::from_str(&key) {
            parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
        }
        parts
            .headers
            .entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    if let Some(a) = uri.authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // Origin form on the upgrade connection.
    parts.uri = uri
        .path_and_query()
        .cloned()
        .map(Uri::from)
        .unwrap_or_default();
    parts.version = Version::HTTP_11;
    let up_req = Request::from_parts(parts, Empty::new());
    let mut resp = match sender.send_request(up_req).await {
        Ok(r) => r,
        Err(e) => return fail(rec, error_chain(&e)),
    };
    rec.status = resp.status().as_u16();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused by upstream: pass its answer back.
        let (mut p, b) = resp.into_parts();
        let (mask, masked) = reflected_in(&mut p, &secrets, &mut rec);
        strip_hop_by_hop(&mut p.headers, false);
        p.version = if from_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        rec.decision = "allow".into();
        let body = AuditBody {
            inner: b,
            n: 0,
            rec: Some(rec),
            shared: shared.clone(),
            start,
            req_bytes: Arc::new(AtomicU64::new(0)),
            blocked: None,
            mask,
            masked,
            waiting: None,
        };
        return Response::from_parts(p, body.boxed_unsync());
    }
    if !is_ws_switch(resp.headers()) {
        return fail(
            rec,
            "the upstream's 101 switched to a protocol other than WebSocket".into(),
        );
    }
    let on_up = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(empty());
    for name in [
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    if from_h2 {
        *out.status_mut() = StatusCode::OK;
    } else {
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        out.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = resp.headers().get(header::SEC_WEBSOCKET_ACCEPT) {
            out.headers_mut()
                .insert(header::SEC_WEBSOCKET_ACCEPT, v.clone());
        }
    }
    // The headers the agent gets of the upstream's 101, masked once all
    // are in (`Sec-WebSocket-Accept` too: it is the upstream's, copied as
    // it came).
    let masked_head = secrets.mask_headers(out.headers_mut());
    rec.decision = "allow".into();
    let s = shared.clone();
    // What the upgrade was let through with: the socket lives while a
    // reloaded config still routes it there with the same headers injected
    // (a rotated token ends it: the upstream session was opened with the
    // old one).
    let injected = rec
        .route
        .and_then(|i| shared.inject.get(i))
        .cloned()
        .unwrap_or_default();
    let (raw_path, path) = (uri.path().to_owned(), rec.path.clone());
    tokio::spawn(async move {
        // The client connection's slot stays taken while the socket lives.
        let t = t;
        let gone = t.live.revoked(|n| {
            match match_route(
                &n.cfg.routes,
                (&t.host, t.port, t.tls),
                &raw_path,
                &path,
                "GET",
            ) {
                RouteMatch::Allowed(i, r) => {
                    (t.tls || r.plain_http) && n.inject.get(i) == Some(&injected)
                }
                _ => false,
            }
        });
        let dlp = (s.dlp().mode != DlpMode::Off).then(|| s.dlp().clone());
        let secrets = (!secrets.is_empty()).then_some(secrets);
        match tokio::try_join!(on_client, on_up) {
            Ok((c, u)) => {
                if dlp.is_none() && secrets.is_none() {
                    let (o, i, revoked) =
                        splice(TokioIo::new(c), TokioIo::new(u), s.idle(), gone).await;
                    rec.bytes_out = o;
                    rec.bytes_in = i;
                    if revoked {
                        rec.note = RELOADED.into();
                    }
                } else {
                    let w = crate::ws::splice_scanned(
                        TokioIo::new(c),
                        TokioIo::new(u),
                        dlp,
                        secrets,
                        s.idle(),
                        gone,
                    )
                    .await;
                    rec.bytes_out = w.bytes_out;
                    rec.bytes_in = w.bytes_in;
                    if w.revoked {
                        rec.note = RELOADED.into();
                    }
                    note_masked(&mut rec, masked_head + w.masked);
                    if let Some(why) = w.upstream_error {
                        add_note(
                            &mut rec,
                            &format!("WebSocket closed (1002): the upstream sent {why}"),
                        );
                    }
                    if !w.findings.is_empty() {
                        tracing::warn!(host = %rec.host, rules = ?w.findings, "DLP findings in WebSocket frames");
                        rec.dlp = w.findings;
                    }
                    // Added to the note, not put in its place: what the
                    // upstream sent back before (above) must stay on it.
                    if w.blocked {
                        rec.decision = "dlp_block".into();
                        add_note(
                            &mut rec,
                            "WebSocket closed (1008) before the frame was sent",
                        );
                    } else if let Some(why) = w.protocol_error {
                        add_note(
                            &mut rec,
                            &format!("WebSocket closed (1002) before {why} was sent"),
                        );
                    }
                }
            }
            Err(e) => rec.note = format!("websocket upgrade failed: {e}"),
        }
        rec.duration_ms = ms(start);
        s.audit.write(&rec);
    });
    out
}
