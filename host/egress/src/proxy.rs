//! The proxy's connections: the agent-facing HTTP/1.1 proxy leg (CONNECT
//! and plain `http://`), passthrough tunnels, and TLS interception with
//! per-host leaf certificates, serving each intercepted tunnel over HTTP/1.1
//! or HTTP/2. What happens to one request inside (checks, DLP, injection,
//! forwarding) is in [`request`]; WebSockets in [`websocket`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{now_rfc3339, Audit, AuditRecord};
use crate::ca::LeafMinter;
use crate::config::ProxyConfig;
use crate::dlp::Dlp;
use crate::dlp_body::{self};
use crate::error::EgressError;
use crate::headers::authority_port;
use crate::held_writes::HeldWrites;
use crate::in_flight::InFlight;
use crate::listener::{Accepted, AsyncListener};
use crate::reflected::Secrets;
use crate::route::{self, canon_host};
use crate::tunnel::{splice, watch};
use crate::upstream::{self, Body, Dialer};
use crate::workers;

mod request;
mod websocket;

use request::{handle, refuse_internal};

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
