//! Test parts: a local HTTPS upstream that records what it receives, a test
//! CA, the proxy started on 127.0.0.1:0, and a Rust client that tunnels
//! through it. Loopback only.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bot_bottle_egress::config::{
    AuditConfig, CaMaterial, DlpConfig, Limits, ProxyConfig, UpstreamConfig,
};
use bot_bottle_egress::BottleCa;
use bot_bottle_plugin_api::{EgressRoute, HeaderInjection, Secret};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// The real token: a canary that must never appear in any proxy output.
pub const CANARY: &str = "canary-REAL-7f3a9c1e5b2d4f60";
/// A guard against hangs; never a performance assertion.
pub const HANG: Duration = Duration::from_secs(30);

pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub sni: Option<String>,
}

impl Seen {
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A test CA and the upstream's certificate.
pub struct TestPki {
    pub ca_pem: String,
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

pub fn test_pki() -> TestPki {
    test_pki_for(&[
        "api.test",
        "other.test",
        "ws.test",
        "pass.test",
        "a.wild.test",
        "chain.test",
        // Reached by its DNS answer, not a `resolve` override (the
        // internal-address tests).
        "localhost",
    ])
}

/// A CA and one leaf for all of `names`, for a test upstream.
pub fn test_pki_for(names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "egress test upstream CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert: leaf.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub release: Arc<Notify>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

/// Starts the recording HTTPS upstream (h2 and http/1.1).
pub async fn start_upstream(pki: &TestPki) -> Upstream {
    start_upstream_alpn(pki, &[b"h2", b"http/1.1"]).await
}

/// A TLS acceptor with the test upstream's leaf, offering `alpn`.
pub fn upstream_acceptor(pki: &TestPki, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(pki.key.clone_key()),
        )
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// The recording upstream, offering the protocols `alpn` names.
pub async fn start_upstream_alpn(pki: &TestPki, alpn: &[&[u8]]) -> Upstream {
    let acceptor = upstream_acceptor(pki, alpn);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let release = Arc::new(Notify::new());
    let (seen2, rel2) = (seen.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let (seen, release) = (seen2.clone(), rel2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(|s| s.to_string());
                let svc = service_fn(move |req| {
                    upstream_handle(req, seen.clone(), release.clone(), sni.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen,
        release,
    }
}

async fn upstream_handle(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    sni: Option<String>,
) -> Result<Response<Body>, Infallible> {
    let mut headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let ws_key = req.headers().get("sec-websocket-key").cloned();
    if let Some(key) = ws_key {
        let auth = req
            .headers()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        // A subprotocol that names the credential the upgrade carried.
        let protocol = req
            .headers()
            .get("sec-websocket-protocol")
            .is_some_and(|v| v == "echo-auth")
            .then(|| auth.clone());
        seen.lock().unwrap().push(Seen {
            method,
            path,
            version,
            headers,
            body: vec![],
            sni,
        });
        let on = hyper::upgrade::on(&mut req);
        let ws_seen = seen.clone();
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() || m.is_binary() {
                    ws_seen.lock().unwrap().push(Seen {
                        method: "WS".into(),
                        path: String::new(),
                        version: String::new(),
                        headers: vec![],
                        body: m.clone().into_data().to_vec(),
                        sni: None,
                    });
                }
                if m.is_text() && ws_sends_back(&mut ws, &m, &auth).await {
                    continue;
                }
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept);
        if let Some(p) = protocol {
            resp = resp.header("sec-websocket-protocol", p);
        }
        return Ok(resp.body(full("")).unwrap());
    }
    if path.starts_with("/early") {
        // Answers before reading the request body (a streaming-duplex
        // API): one event now, the second once the body has ended or
        // failed; the body is recorded as far as it came.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let mut body = req.into_body();
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: early\n\n"))))
                .await;
            let mut got = Vec::new();
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    got.extend_from_slice(d);
                }
            }
            seen.lock().unwrap().push(Seen {
                method,
                path,
                version,
                headers,
                body: got,
                sni,
            });
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: done\n\n"))))
                .await;
        });
        return Ok(event_stream(rx));
    }
    if path.starts_with("/big") {
        seen.lock().unwrap().push(Seen {
            method,
            path,
            version,
            headers,
            body: vec![],
            sni,
        });
        // 64 MiB, made as it is sent (a download a client may never read).
        let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
        let frames = futures_util::stream::repeat_with(move || {
            Ok::<_, Infallible>(Frame::data(chunk.clone()))
        })
        .take(4096);
        return Ok(Response::builder()
            .header("content-length", (64u64 << 20).to_string())
            .body(BodyExt::boxed(StreamBody::new(frames)))
            .unwrap());
    }
    let is_h1 = req_is_h1(&headers);
    let (body, trailers) = match req.into_body().collect().await {
        Ok(b) => {
            let trailers = b.trailers().cloned().unwrap_or_default();
            (b.to_bytes().to_vec(), trailers)
        }
        Err(_) => Default::default(),
    };
    // Trailers, if any came, are recorded with the headers as `trailer:NAME`.
    headers.extend(trailers.iter().map(|(n, v)| {
        (
            format!("trailer:{n}"),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )
    }));
    seen.lock().unwrap().push(Seen {
        method,
        path: path.clone(),
        version: version.clone(),
        headers,
        body,
        sni,
    });
    if path.starts_with("/sse") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await;
            release.notified().await;
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
                .await;
        });
        return Ok(event_stream(rx));
    }
    if path.starts_with("/echo") {
        // An echo service, or an error page that quotes the request: the
        // request's authorization comes back in a header, in the body
        // (split into 5-byte pieces, each sent on its own) and in a
        // trailer. `/echo?gzip` compresses the body whatever was asked;
        // `/echo?quirks` adds odd places (below).
        let auth = seen
            .lock()
            .unwrap()
            .last()
            .and_then(|s| s.header_all("authorization").into_iter().next())
            .unwrap_or_default();
        if path.contains("hold") {
            // Answered once the test releases it (after a reload, say).
            release.notified().await;
        }
        let text = format!(
            r#"{{"you sent":"{auth}","escaped":"{}"}}"#,
            auth.replace('/', "\\/")
        );
        let mut b = Response::builder().header("x-echo-auth", auth.as_str());
        if path.contains("quirks") {
            // Upstreams that quote the request where no one looks: the
            // HTTP/1 reason phrase, a header's name, and a body whose
            // `content-encoding: none` says it is encoded (it is not).
            let token = auth
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            b = b
                .header(format!("x-{token}"), "1")
                .header("content-encoding", "none")
                .extension(hyper::ext::ReasonPhrase::try_from(auth.as_bytes()).unwrap());
        }
        if path.contains("gzip") {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(text.as_bytes()).unwrap();
            b = b.header("content-encoding", "gzip");
            return Ok(b.body(full(gz.finish().unwrap())).unwrap());
        }
        let mut frames: Vec<Result<Frame<Bytes>, Infallible>> = text
            .as_bytes()
            .chunks(5)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo-trailer", auth.parse().unwrap());
        frames.push(Ok(Frame::trailers(trailers)));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for f in frames {
                if tx.send(f).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        return Ok(b.body(BodyExt::boxed(StreamBody::new(stream))).unwrap());
    }
    if path.starts_with("/hold") {
        release.notified().await;
    }
    if path.starts_with("/redirect") {
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "https://other.test/landing")
            .body(full("moved"))
            .unwrap());
    }
    let mut b = Response::builder().header("x-upstream-version", version);
    if is_h1 {
        b = b.header("keep-alive", "timeout=5");
    }
    Ok(b.body(full(format!("ok {path}"))).unwrap())
}

/// A `text/event-stream` answer whose events are what `rx` receives, each
/// sent as it comes (never buffered).
/// The WebSocket upstream's answers that send back the upgrade's
/// `authorization` (`auth`), as an echo service or an error might: to
/// `whoami`, a message holding it; to `whoami-split`, the same message in
/// 3-byte frames with a ping holding it among them; to `whoami-close`, a
/// close frame whose reason holds it. Whether `m` was one of these.
async fn ws_sends_back<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    m: &tokio_tungstenite::tungstenite::Message,
    auth: &str,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    use tokio_tungstenite::tungstenite::Message;
    let text = format!("you are {auth}");
    match m.to_text().unwrap_or_default() {
        "whoami" => {
            let _ = ws.send(Message::text(text)).await;
        }
        "whoami-split" => {
            let pieces: Vec<&[u8]> = text.as_bytes().chunks(3).collect();
            for (i, p) in pieces.iter().enumerate() {
                let kind = if i == 0 { Data::Text } else { Data::Continue };
                let last = i == pieces.len() - 1;
                let f = Frame::message(p.to_vec(), OpCode::Data(kind), last);
                let _ = ws.feed(Message::Frame(f)).await;
                if i == 4 {
                    let ping = Frame::ping(format!("ping {auth}").into_bytes());
                    let _ = ws.feed(Message::Frame(ping)).await;
                }
            }
            let _ = ws.flush().await;
        }
        "whoami-close" => {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Policy,
                    reason: format!("bad {auth}").into(),
                }))
                .await;
        }
        _ => return false,
    }
    true
}

fn event_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> Response<Body> {
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn req_is_h1(h: &[(String, String)]) -> bool {
    h.iter().any(|(n, _)| n == "host")
}

pub fn inject(header: &str, value: &str) -> HeaderInjection {
    HeaderInjection {
        header: header.into(),
        value: value.into(),
        token_ref: Some("REAL_TOKEN".into()),
    }
}

/// The standard test config: routes for api.test (Bearer), other.test
/// (/open only, nothing injected), ws.test (Bearer), *.wild.test (GET,
/// x-api-key), chain.test (Bearer); passthrough pass.test.
pub fn config(pki: &TestPki, up: SocketAddr, audit: &std::path::Path) -> ProxyConfig {
    let hosts: Vec<String> = [
        "api.test",
        "other.test",
        "ws.test",
        "*.wild.test",
        "chain.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ca = BottleCa::generate("bb-test", &hosts).unwrap();
    let mut api = EgressRoute::allow("api.test");
    api.inject = vec![inject("Authorization", "Bearer {token}")];
    let mut other = EgressRoute::allow("other.test");
    other.path_prefix = Some("/open".into());
    let mut ws = EgressRoute::allow("ws.test");
    ws.inject = vec![inject("Authorization", "Bearer {token}")];
    let mut wild = EgressRoute::allow("*.wild.test");
    wild.methods = vec!["GET".into()];
    wild.inject = vec![inject("x-api-key", "{token}")];
    let mut chain = EgressRoute::allow("chain.test");
    chain.inject = vec![inject("Authorization", "Bearer {token}")];
    let mut resolve = BTreeMap::new();
    for h in [
        "api.test",
        "other.test",
        "ws.test",
        "pass.test",
        "a.wild.test",
        "chain.test",
    ] {
        resolve.insert(h.to_string(), up);
    }
    ProxyConfig {
        schema: 1,
        bottle_id: "bb-test".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        routes: vec![api, other, ws, wild, chain],
        tls_passthrough: vec!["pass.test".into()],
        local_responses: vec![],
        tokens: [("REAL_TOKEN".to_string(), Secret::new(CANARY))]
            .into_iter()
            .collect(),
        ca: CaMaterial {
            cert_pem: ca.cert_pem,
            key_pem: ca.key_pem,
        },
        upstream: UpstreamConfig {
            extra_ca_pem: Some(pki.ca_pem.clone()),
            proxy: None,
            proxy_auth_ref: None,
            resolve,
            allow_internal: Vec::new(),
            host_addresses: Vec::new(),
        },
        dlp: DlpConfig::default(),
        limits: Limits::default(),
        audit: AuditConfig {
            path: Some(audit.to_owned()),
        },
        allowed_clients: Vec::new(),
    }
}

/// Starts the proxy in this process on its own runtime; returns its address.
pub fn start_proxy(cfg: ProxyConfig) -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Err(e) = bot_bottle_egress::serve_with_listener(cfg, l) {
            panic!("proxy failed: {e}");
        }
    });
    addr
}

/// Sends CONNECT; returns the status, the head and the stream (after the head).
pub async fn connect(proxy: SocketAddr, target: &str) -> (u16, String, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, s)
}

pub async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

pub fn roots(pem: &str) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
        r.add(c.unwrap()).unwrap();
    }
    r
}

/// A TLS client over `tcp` (any stream: TCP, or the proxy's Unix socket).
pub async fn tls<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tcp: S,
    sni: &str,
    trust_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    let mut c = rustls::ClientConfig::builder()
        .with_root_certificates(roots(trust_pem))
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(c))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
}

/// A response with its body read whole.
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 request on `io` (a TLS stream through the proxy, say).
pub async fn h1_send<S, B>(io: S, req: Request<B>) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(c);
    s.send_request(req).await.unwrap()
}

/// An HTTP/2 connection through the proxy to `host:443`: CONNECT (which
/// must succeed), TLS trusting `trust_pem` with ALPN h2, the connection's
/// task spawned.
pub async fn h2_through<B>(
    proxy: SocketAddr,
    host: &str,
    trust_pem: &str,
) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (st, head, tcp) = connect(proxy, &format!("{host}:443")).await;
    assert_eq!(st, 200, "CONNECT {host}:443: {head}");
    let t = tls(tcp, host, trust_pem, &[b"h2"])
        .await
        .expect("TLS through the proxy");
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t))
        .await
        .unwrap();
    tokio::spawn(c);
    s
}

/// One request through the proxy with the Rust client, its response as it
/// comes (body unread: its trailers can be read too). `h2` picks the ALPN.
pub async fn send_for_response<B>(
    proxy: SocketAddr,
    connect_to: &str,
    sni: &str,
    trust_pem: &str,
    h2: bool,
    req: Request<B>,
) -> http::Response<hyper::body::Incoming>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (st, head, tcp) = connect(proxy, connect_to).await;
    assert_eq!(st, 200, "CONNECT {connect_to}: {head}");
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let t = tls(tcp, sni, trust_pem, alpn)
        .await
        .expect("TLS through the proxy");
    if h2 {
        assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }
    send_on(t, h2, req).await
}

/// One request on `io` (a TLS stream through the proxy, say), over HTTP/2
/// or HTTP/1.1; its response as it comes.
pub async fn send_on<S, B>(
    io: S,
    h2: bool,
    req: Request<B>,
) -> http::Response<hyper::body::Incoming>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !h2 {
        return h1_send(io, req).await;
    }
    let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(c);
    s.send_request(req).await.unwrap()
}

/// One request through the proxy with the Rust client. `h2` picks the ALPN.
pub async fn send<B>(
    proxy: SocketAddr,
    connect_to: &str,
    sni: &str,
    trust_pem: &str,
    h2: bool,
    req: Request<B>,
) -> Got
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = send_for_response(proxy, connect_to, sni, trust_pem, h2, req).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A GET: absolute URI (HTTP/2 `:authority`) or origin-form with `Host`.
pub fn get(uri: &str, host: &str, h2: bool) -> Request<Full<Bytes>> {
    let b = if h2 {
        Request::builder().uri(uri)
    } else {
        let u: http::Uri = uri.parse().unwrap();
        Request::builder()
            .uri(u.path_and_query().unwrap().as_str())
            .header("host", host)
    };
    b.body(Full::new(Bytes::new())).unwrap()
}

/// The audit file's text. The proxy's workers write their lines when they
/// run out of work, a moment after the response went out, so this waits
/// until the file has stopped growing (at most 2 s).
pub fn audit_text(path: &std::path::Path) -> String {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut text = read();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = read();
        let settled = again == text;
        text = again;
        if settled || std::time::Instant::now() > deadline {
            return text;
        }
    }
}

/// The audit file's lines, once it has settled ([`audit_text`]).
pub fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    audit_text(path)
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// `curl -sS` through the proxy at `proxy`, trusting the bottle CA in the
/// file `ca`, with any proxy of the test's own environment removed.
pub fn curl_via(proxy: std::net::SocketAddr, ca: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("curl");
    c.args(["-sS", "--proxy", &format!("http://{proxy}"), "--cacert"])
        .arg(ca)
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY");
    c
}

/// Runs `curl` (from [`curl_via`], options added) against `url`, asserts it
/// succeeded (`what` names the run) and returns its output, which ends in
/// `STATUS HTTP_VERSION` (e.g. `200 2`).
pub async fn curl_status(mut curl: tokio::process::Command, url: &str, what: &str) -> String {
    let out = curl
        .args(["-w", "\n%{http_code} %{http_version}", url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether curl can run here. In CI its absence is a failure.
pub fn have_curl() -> bool {
    let ok = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("curl is required in CI (apt-get install curl)");
        }
        eprintln!("SKIP: curl is not installed");
    }
    ok
}
