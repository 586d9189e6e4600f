//! `bottle egress check` against the real proxy: a few hundred generated
//! requests (a method and a URL, nothing else) go through the proxy, and
//! each outcome must be what [`bot_bottle_egress::check`] says for the same
//! method and URL. The proxy is the authority; `check` must describe it.
//!
//! The outcome read from the proxy: the CONNECT status if the tunnel is
//! refused; else the response status, and what the recording upstream got
//! (whether it got the request at all, over TLS or not, and which headers
//! carry the real token, each route's value naming its route as `rN `).
//! They agree when:
//! - `allowed == false`: the CONNECT got 400 or 403, or the request 400,
//!   403, 405 or 421, and nothing reached the upstream;
//! - `intercept` (`plain_http`): the upstream got the request over TLS
//!   (plain HTTP), with the method as sent, answered 200, and the headers
//!   that carry the token are `inject_headers`, set by route `route_index`;
//! - `passthrough`: the upstream got it over TLS, no token in it;
//! - `local_response`: the proxy answered the local response's status and
//!   nothing reached the upstream.
//!
//! What the agent's client adds (a body's `_method`, override headers) is
//! not what `check` is told, and not sent here. Loopback only.

mod harness;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bot_bottle_egress::config::{CaMaterial, ProxyConfig};
use bot_bottle_egress::{check, Action, BottleCa, Decision};
use bot_bottle_plugin_api::{EgressRoute, HeaderInjection, LocalResponse};
use bytes::Bytes;
use harness::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Status of a local response, unlike any the upstream or the proxy sends.
const LOCAL_STATUS: u16 = 203;

/// Names the upstream's certificate carries (and `resolve` sends to it):
/// every host a case may reach, near misses too, so that a request the
/// proxy lets through by mistake reaches the recording upstream rather
/// than the system's resolver.
const UPSTREAM_NAMES: &[&str] = &[
    "api.test",
    "other.test",
    "a.wild.test",
    "b.a.wild.test",
    "x_y.wild.test",
    "xn--bcher-kva.wild.test",
    "wild.test",
    "awild.test",
    "a.wild.test.evil",
    "methods.test",
    "port.test",
    "plain.test",
    "del.test",
    "both.test",
    "pass.test",
    "a.pw.test",
    "pw.test",
    "unknown.test",
    "127.0.0.2",
];

/// What the upstream got.
#[derive(Debug, Clone)]
struct Arrived {
    tls: bool,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

type Log = Arc<Mutex<Vec<Arrived>>>;

/// An upstream on one port for TLS (intercepted and passthrough requests)
/// and plain HTTP (`plain_http` routes), told apart by the first byte; it
/// records every request and answers `200 ok`.
async fn start_recorder(pki: &TestPki, log: Log) -> SocketAddr {
    let acceptor = upstream_acceptor(pki, &[b"h2", b"http/1.1"]);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if tcp.peek(&mut first).await.unwrap_or(0) == 0 {
                    return;
                }
                let auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if first[0] == 0x16 {
                    let Ok(t) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| record(req, true, log.clone()));
                    let _ = auto.serve_connection(TokioIo::new(t), svc).await;
                } else {
                    let svc = service_fn(move |req| record(req, false, log.clone()));
                    let _ = auto.serve_connection(TokioIo::new(tcp), svc).await;
                }
            });
        }
    });
    addr
}

async fn record(
    req: http::Request<hyper::body::Incoming>,
    tls: bool,
    log: Log,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    // No body to a HEAD (hyper's HTTP/2 server would send one, which an
    // HTTP/2 client, the proxy's included, takes for a protocol error).
    let body: &'static [u8] = if req.method() == http::Method::HEAD {
        b""
    } else {
        b"ok"
    };
    log.lock().unwrap().push(Arrived {
        tls,
        method: req.method().to_string(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    Ok(http::Response::new(Full::new(Bytes::from_static(body))))
}

/// A route injecting `header` with a value that names route `index`.
fn injecting(host: &str, index: usize, header: &str) -> EgressRoute {
    let mut r = EgressRoute::allow(host);
    r.inject = vec![HeaderInjection {
        header: header.into(),
        value: format!("r{index} {{token}}"),
        token_ref: Some("REAL_TOKEN".into()),
    }];
    r
}

fn local(host: &str, path: &str, method: &str) -> LocalResponse {
    LocalResponse {
        host: host.into(),
        path: path.into(),
        method: method.into(),
        status: LOCAL_STATUS,
        content_type: "application/json".into(),
        body: "{}".into(),
    }
}

/// The routes the cases are checked against: each kind of rule once
/// (host, wildcard, path prefix, methods, two routes for one host, ports,
/// plain HTTP, an IP address, local responses, passthrough).
fn routes() -> Vec<EgressRoute> {
    let api = injecting("api.test", 0, "Authorization");
    let mut other = EgressRoute::allow("other.test");
    other.path_prefix = Some("/open".into());
    let mut wild = injecting("*.wild.test", 2, "x-api-key");
    wild.methods = vec!["GET".into()];
    let mut methods = injecting("methods.test", 3, "x-token");
    methods.path_prefix = Some("/v1".into());
    methods.methods = vec!["GET".into(), "post".into()];
    // Any method, further in: what route 3 refuses, this one may allow.
    let mut public = injecting("methods.test", 4, "x-token");
    public.path_prefix = Some("/v1/public".into());
    let mut port = injecting("port.test", 5, "x-port");
    port.ports = vec![8443];
    let mut plain = injecting("plain.test", 6, "x-plain");
    plain.plain_http = true;
    let ip = injecting("127.0.0.2", 7, "x-ip");
    let mut del = injecting("del.test", 8, "x-del");
    del.methods = vec!["delete".into()];
    let mut both = injecting("both.test", 9, "x-both");
    both.ports = vec![443, 8443];
    both.plain_http = true;
    both.methods = vec!["GET".into(), "HEAD".into()];
    vec![
        api, other, wild, methods, public, port, plain, ip, del, both,
    ]
}

fn proxy_config(pki: &TestPki, up: SocketAddr, audit: &std::path::Path) -> ProxyConfig {
    // The harness's config for everything but the rules and the upstream.
    let harness_pki = test_pki();
    let mut cfg = config(&harness_pki, up, audit);
    cfg.routes = routes();
    cfg.tls_passthrough = vec!["pass.test".into(), "*.pw.test".into()];
    cfg.local_responses = vec![
        local("api.test", "/oauth/token", "POST"),
        local("port.test", "/token", "POST"),
        local("plain.test", "/local", "GET"),
    ];
    let hosts: Vec<String> = cfg
        .routes
        .iter()
        .map(|r| r.host.clone())
        .chain(cfg.tls_passthrough.iter().cloned())
        .collect();
    let ca = BottleCa::generate("bb-check", &hosts).unwrap();
    cfg.ca = CaMaterial {
        cert_pem: ca.cert_pem,
        key_pem: ca.key_pem,
    };
    cfg.upstream.extra_ca_pem = Some(pki.ca_pem.clone());
    cfg.upstream.resolve = UPSTREAM_NAMES
        .iter()
        .map(|h| (h.to_string(), up))
        .collect::<BTreeMap<_, _>>();
    cfg
}

/// A request as an agent's client sends it for `method` and a URL made of
/// these parts.
#[derive(Debug, Clone)]
struct Case {
    method: String,
    scheme: &'static str,
    /// As written in the URL (case, trailing dot, brackets).
    host: String,
    /// The port as written, without `:` (`Some("")` for `host:`).
    port: Option<String>,
    /// Path and query as written.
    target: String,
    /// Over HTTP/2 if it can be ([`Case::uses_h2`]).
    h2: bool,
}

impl Case {
    fn authority(&self) -> String {
        match &self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }

    fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority(), self.target)
    }

    fn tls(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("https")
    }

    /// The request line's target: origin-form in a tunnel, the URL for
    /// plain HTTP (absolute-form), `/` for an empty path.
    fn request_target(&self) -> String {
        let t = if self.target.is_empty() || self.target.starts_with('?') {
            format!("/{}", self.target)
        } else {
            self.target.clone()
        };
        if self.tls() {
            t
        } else {
            format!("{}://{}{t}", self.scheme, self.authority())
        }
    }

    /// The CONNECT target: the host as written and the port, 443 when the
    /// URL names none (as curl sends it).
    fn connect_target(&self) -> String {
        let port = match self.port.as_deref() {
            None | Some("") => "443",
            Some(p) => p,
        };
        format!("{}:{port}", self.host)
    }

    /// Whether the case goes over HTTP/2: drawn so, HTTPS, a URL the
    /// `http` crate reads (the client's request is made from it) and not a
    /// CONNECT (which HTTP/2 sends without a path).
    fn uses_h2(&self) -> bool {
        self.h2 && self.tls() && self.method != "CONNECT" && self.url().parse::<http::Uri>().is_ok()
    }

    /// The head of the request itself: the method, the target, `Host` as
    /// the URL's authority; `Connection: close` so that the answer ends.
    fn head(&self) -> String {
        format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.method,
            self.request_target(),
            self.authority()
        )
    }
}

/// What the proxy did with one case.
#[derive(Debug)]
enum Outcome {
    /// The CONNECT was answered with this status, not 200.
    TunnelRefused(u16),
    /// The tunnel opened but TLS did not come up.
    TlsFailed(String),
    /// No answer with a status came.
    Failed(String),
    /// The request's answer, and what the upstream got meanwhile.
    Answered { status: u16, upstream: Vec<Arrived> },
}

/// A TLS client that checks no certificate: the cases are about what the
/// proxy decides, not about the leaf it mints.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Writes `head` on `io`, reads the answer to its end and returns its status.
async fn exchange<S>(mut io: S, head: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    // An end without close_notify is an end here.
    let _ = tokio::time::timeout(HANG, io.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

/// The case over HTTP/2 on `io`: `:authority` is the URL's, `:path` its
/// path and query. Returns the answer's status.
async fn h2_exchange<S>(io: S, case: &Case) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let req = http::Request::builder()
        .method(case.method.as_str())
        .uri(case.url())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(c);
    let resp = tokio::time::timeout(HANG, s.send_request(req))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

async fn run(case: &Case, proxy: SocketAddr, log: &Log) -> Outcome {
    log.lock().unwrap().clear();
    let status = if case.tls() {
        let (st, _, tcp) = connect(proxy, &case.connect_target()).await;
        if st != 200 {
            return Outcome::TunnelRefused(st);
        }
        // SNI as a client sends it: the host lower-cased without its
        // trailing dot, none for an IP address.
        let name = case.host.trim_end_matches('.').to_ascii_lowercase();
        let sni = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
            .map(|n| n.to_owned())
            .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        let mut c = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        let h2 = case.uses_h2();
        c.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let t = match tokio_rustls::TlsConnector::from(Arc::new(c))
            .connect(sni, tcp)
            .await
        {
            Ok(t) => t,
            Err(e) => return Outcome::TlsFailed(e.to_string()),
        };
        if h2 {
            h2_exchange(t, case).await
        } else {
            exchange(t, &case.head()).await
        }
    } else {
        let tcp = TcpStream::connect(proxy).await.unwrap();
        exchange(tcp, &case.head()).await
    };
    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    Outcome::Answered {
        status,
        upstream: log.lock().unwrap().clone(),
    }
}

/// Where `outcome` disagrees with `d`, in words; `None` when it agrees.
fn disagreement(case: &Case, d: &Decision, outcome: &Outcome) -> Option<String> {
    let refusal = |s: u16| matches!(s, 400 | 403 | 405 | 421);
    let (status, upstream) = match outcome {
        Outcome::TunnelRefused(s) => {
            return (d.allowed || !refusal(*s))
                .then(|| format!("the proxy refused the CONNECT with {s}"));
        }
        Outcome::TlsFailed(e) => return Some(format!("TLS through the tunnel failed: {e}")),
        Outcome::Failed(e) => return Some(format!("no answer: {e}")),
        Outcome::Answered { status, upstream } => (*status, upstream),
    };
    let forwarded = match upstream.as_slice() {
        [] => None,
        [g] => Some(g),
        more => return Some(format!("the upstream got {} requests", more.len())),
    };
    let Some(g) = forwarded else {
        return match d.action {
            Action::Deny if refusal(status) => None,
            Action::LocalResponse if status == LOCAL_STATUS => None,
            _ => Some(format!("the proxy answered {status}, nothing forwarded")),
        };
    };
    let says = format!(
        "the proxy forwarded it ({}, status {status}) as {} {} with {:?}",
        if g.tls { "TLS" } else { "plain HTTP" },
        g.method,
        g.target,
        g.headers
    );
    // The headers that carry the real token, and the routes they name.
    let injected: Vec<(String, String)> = g
        .headers
        .iter()
        .filter(|(_, v)| v.contains(CANARY))
        .map(|(n, v)| (n.clone(), v.split(' ').next().unwrap_or("").to_owned()))
        .collect();
    let mut names: Vec<String> = injected.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    let mut expected: Vec<String> = d
        .inject_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    expected.sort();
    let route = d.route_index.map(|i| format!("r{i}"));
    let ok = match d.action {
        Action::Intercept | Action::PlainHttp => {
            g.tls == (d.action == Action::Intercept)
                && status == 200
                && g.method == case.method
                && names == expected
                && injected.iter().all(|(_, r)| Some(r) == route.as_ref())
        }
        Action::Passthrough => g.tls && status == 200 && injected.is_empty(),
        Action::Deny | Action::LocalResponse => false,
    };
    (!ok).then_some(says)
}

fn summary(d: &Decision) -> String {
    format!(
        "allowed={} action={:?} route={:?} inject={:?} ({}:{}{}): {}",
        d.allowed, d.action, d.route_index, d.inject_headers, d.host, d.port, d.path, d.reason
    )
}

/// A fixed sequence of numbers (xorshift64, fixed seed): the same cases on
/// every run.
struct Rng(u64);

impl Rng {
    fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        &from[(self.0 % from.len() as u64) as usize]
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "GET", "GET", "POST", "POST", "POST", "DELETE", "PATCH", "PUT", "HEAD",
    "OPTIONS", "TRACE", "TRACK", "trace", "get", "post", "delete", "connect", "CONNECT",
];

const HOSTS: &[&str] = &[
    "api.test",
    "API.TEST",
    "api.test.",
    "Api.Test.",
    "other.test",
    "a.wild.test",
    "b.a.wild.test",
    "A.WILD.TEST.",
    "x_y.wild.test",
    "xn--bcher-kva.wild.test",
    "wild.test",
    ".wild.test",
    "awild.test",
    "a.wild.test.evil",
    "a..wild.test",
    "*.wild.test",
    "methods.test",
    "port.test",
    "plain.test",
    "PLAIN.TEST.",
    "del.test",
    "both.test",
    "pass.test",
    "PASS.TEST.",
    "a.pw.test",
    "pw.test",
    "127.0.0.2",
    "127.2",
    "0x7f.0.0.2",
    "2130706434",
    "[::1]",
    "127.0.0.1",
    "unknown.test",
    "api.test..",
    "a%2ewild.test",
];

/// Ports as written (`None`: none); the default most often.
const PORTS: &[Option<&str>] = &[
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    Some("443"),
    Some("80"),
    Some("8443"),
    Some("0443"),
    Some(""),
    Some("99999"),
    Some("65536"),
    Some("0"),
];

const PATHS: &[&str] = &[
    "",
    "/",
    "/x",
    "/open",
    "/open/x",
    "/opener",
    "/OPEN/x",
    "/open/../admin",
    "/admin/../open/x",
    "/open/%2e%2e/admin",
    "/open/%2E%2E/admin",
    "/open%2fx",
    "/open/a%2Fb",
    "/open;x/a",
    "/open/x;v=1",
    "/open/..;/admin",
    "//open/x",
    "/open//x",
    "/open/x/./y",
    "/open/..%00/x",
    "/open/%252e%252e/admin",
    "/v1",
    "/v1/x",
    "/v1beta",
    "/v1/../v2",
    "/v1/%2e%2e/admin",
    "/v1/%ef%bc%8e%ef%bc%8e/admin",
    "/v1/caf%C3%A9",
    "/v1/caf\u{e9}",
    "/v1/public",
    "/v1/public/x",
    "/v1/publicity",
    "/v1/public/../../admin",
    "/v1/x\\..\\..\\admin",
    "/token",
    "/oauth/token",
    "/local",
    "/local/",
    "/%6cocal",
];

const QUERIES: &[&str] = &[
    "",
    "",
    "",
    "",
    "",
    "",
    "",
    "?a=1",
    "?_method=DELETE",
    "?_method=GET",
    "?_method=trace",
    "?%5Fmethod=DEL%45TE",
    "?.method=PATCH",
    "?_method=GET,DELETE",
    "?x=/../admin",
];

/// Cases everyone would think of first, then `per_host` drawn for each
/// host of [`HOSTS`].
fn cases(per_host: usize) -> Vec<Case> {
    let mut out = Vec::new();
    let fixed = |method: &str, url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap();
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(cut);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (authority.to_string(), None),
        };
        Case {
            method: method.into(),
            scheme: if scheme == "https" { "https" } else { "http" },
            host,
            port,
            target: target.into(),
            h2: false,
        }
    };
    for (m, u) in [
        ("GET", "https://api.test/v1/x"),
        ("POST", "https://api.test/oauth/token"),
        ("GET", "https://api.test/oauth/token"),
        ("TRACE", "https://api.test/x"),
        ("TRACE", "https://pass.test/x"),
        ("CONNECT", "https://api.test/x"),
        ("GET", "https://other.test/open/x"),
        ("GET", "https://other.test/admin"),
        ("GET", "https://a.wild.test/x"),
        ("POST", "https://a.wild.test/x"),
        ("GET", "https://a.wild.test/x?_method=POST"),
        ("POST", "https://methods.test/v1/x"),
        ("DELETE", "https://methods.test/v1/x"),
        ("DELETE", "https://methods.test/v1/public/x"),
        ("GET", "https://methods.test/v1/x?_method=DELETE"),
        ("GET", "https://port.test:8443/x"),
        ("GET", "https://port.test/x"),
        ("POST", "https://port.test:8443/token"),
        ("POST", "https://port.test/token"),
        ("GET", "http://plain.test/x"),
        ("GET", "http://plain.test:8080/x"),
        ("GET", "http://api.test/x"),
        ("GET", "https://plain.test/local"),
        ("GET", "http://plain.test/local"),
        ("GET", "https://127.0.0.2/x"),
        ("delete", "https://del.test/x"),
        ("GET", "https://del.test/x"),
        ("GET", "http://both.test:8443/x"),
        ("GET", "https://both.test:8443/x"),
        ("POST", "https://both.test/x"),
        ("GET", "https://api.test:99999/x"),
        ("GET", "http://plain.test:99999/x"),
        ("GET", "https://*.wild.test/x"),
        ("GET", "https://a..wild.test/x"),
        ("GET", "http://*.wild.test/x"),
        ("HEAD", "https://other.test/open/x"),
        ("HEAD", "https://api.test/x"),
        ("HEAD", "https://pass.test/x"),
    ] {
        let case = fixed(m, u);
        out.push(Case {
            h2: true,
            ..case.clone()
        });
        out.push(case);
    }
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    for host in HOSTS {
        for _ in 0..per_host {
            let method = rng.pick(METHODS).to_string();
            let scheme = *rng.pick(&["https", "https", "https", "http"]);
            // `CONNECT http://h/x` is no request to the proxy but a tunnel
            // to h:443, which `check` is not asked about (a lower-case
            // `connect` is a request, refused with 405, and stays).
            let method = if scheme == "http" && method == "CONNECT" {
                "GET".into()
            } else {
                method
            };
            out.push(Case {
                method,
                scheme,
                host: host.to_string(),
                port: rng.pick(PORTS).map(str::to_string),
                target: format!("{}{}", rng.pick(PATHS), rng.pick(QUERIES)),
                h2: *rng.pick(&[false, true]),
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_what_the_proxy_does() {
    let pki = test_pki_for(UPSTREAM_NAMES);
    let log: Log = Default::default();
    let up = start_recorder(&pki, log.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = proxy_config(&pki, up, &dir.path().join("audit.jsonl"));
    bot_bottle_egress::validate(&cfg).unwrap();
    let proxy = start_proxy(cfg.clone());

    let start = Instant::now();
    let cases = cases(30);
    let mut wrong = Vec::new();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for case in &cases {
        let d = check(&cfg, &case.method, &case.url());
        let outcome = run(case, proxy, &log).await;
        *tally.entry(format!("{:?}", d.action)).or_default() += 1;
        if let Some(why) = disagreement(case, &d, &outcome) {
            wrong.push(format!(
                "{} {} ({})\n  check: {}\n  proxy: {why}",
                case.method,
                case.url(),
                if case.uses_h2() { "HTTP/2" } else { "HTTP/1.1" },
                summary(&d)
            ));
        }
    }
    eprintln!(
        "{} cases ({} over HTTP/2) in {:.1?}; check said {tally:?}",
        cases.len(),
        cases.iter().filter(|c| c.uses_h2()).count(),
        start.elapsed()
    );
    // Every kind of decision was tried, or the cases say little.
    for a in [
        Action::Deny,
        Action::Intercept,
        Action::PlainHttp,
        Action::Passthrough,
        Action::LocalResponse,
    ] {
        assert!(tally.contains_key(&format!("{a:?}")), "no case for {a:?}");
    }
    assert!(
        wrong.is_empty(),
        "check and the proxy disagree on {} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}
