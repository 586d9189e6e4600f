//! Egress benchmark: one run on loopback, five ways out.
//!
//! direct (no proxy), a byte relay (the hop alone, a reference; see
//! `relay.rs`), bot-bottle egress (injecting), squid ssl-bump (injecting),
//! mitmproxy (injecting). For each: keep-alive HTTPS requests/s
//! and p50/p99 at c=16, new-connection rate (CONNECT + TLS per request) at
//! c=4, SSE time to first event (cold and warm), proxy CPU per request and
//! RSS at c=16 and c=256. Prints the table and the ratios against direct,
//! the relay and squid measured in the same run. A program, never a timed test.
//!
//! Every intercepting peer presents ECDSA P-256 leaves (bot-bottle mints
//! them; squid and mitmproxy get a P-256 CA from this program, whose key
//! they reuse for their leaves), and the client offers AES-128-GCM first,
//! the suite bot-bottle picks (squid and mitmproxy also run with
//! `peers/openssl-aes128.cnf`, which puts it first on their other leg): the
//! handshakes compare like with like. The TLS each peer negotiated, whether
//! new connections resumed a session, and how each row reached the upstream
//! are printed after the table, and what stays unequal in its footnote.
//!
//! Peer configs: `bench/egress/peers/` (its README says how to install the
//! peers). Usage (see docs/benchmarks.md):
//!   cargo build --release -p bot-bottle-egress -p bot-bottle-bench-egress
//!   target/release/bot-bottle-bench-egress [--duration SECS] [--peers direct,relay,bot-bottle,squid,mitmproxy]
//!       [--egress-bin PATH] [--work DIR] [--mitmdump PATH] [--peer-dir DIR] [--dlp off|log|block]
//!       [--rounds N] [--ends split|shared] [--load own|oha] [--oha PATH]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod ends;
mod oha;
mod relay;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TOKEN: &str = "REAL-SECRET-TOKEN";

/// Requests the upstream saw, and how many carried the injected token: every
/// proxy must do the same job for the figures to compare.
static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static INJECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// TLS connections the upstream accepted, and how many of them spoke h2:
/// how each row reaches the upstream (pooled or not, HTTP/2 or 1.1).
static UP_CONNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static UP_H2: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Of those, how many resumed a TLS session: for direct, whether the load
/// generator resumes (oha's own handshakes are not seen otherwise).
static UP_RESUMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Version and suite of the first upstream connection since the last reset.
static UP_TLS: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

struct Args {
    duration: Duration,
    peers: Vec<String>,
    egress_bin: PathBuf,
    work: PathBuf,
    mitmdump: PathBuf,
    peer_dir: PathBuf,
    dlp: String,
    /// Every peer is measured this many times, interleaved; the table shows
    /// each figure's median (a shared machine moves single runs a lot).
    rounds: usize,
    /// The upstream in a process of its own (the default) or in this one,
    /// beside the load generator: see `ends.rs`.
    split_ends: bool,
    /// `--load oha`: `oha` drives the keep-alive and new-connection phases
    /// (see `oha.rs`); None: this program's own client.
    oha: Option<PathBuf>,
}

fn args() -> Args {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut a = Args {
        duration: Duration::from_secs(10),
        peers: vec![
            "direct".into(),
            "relay".into(),
            "bot-bottle".into(),
            "squid".into(),
            "mitmproxy".into(),
        ],
        egress_bin: exe_dir.join("bot-bottle-egress"),
        work: PathBuf::from("/tmp/bb-bench"),
        mitmdump: PathBuf::from("/tmp/bb-bench/venv/bin/mitmdump"),
        // The peers' configs live beside this program's source.
        peer_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/peers")),
        dlp: "log".into(),
        rounds: 1,
        split_ends: true,
        oha: None,
    };
    const USAGE: &str = "usage: bot-bottle-bench-egress [--duration SECS] [--peers direct,relay,bot-bottle,squid,mitmproxy] \
[--egress-bin PATH] [--work DIR] [--mitmdump PATH] [--peer-dir DIR] [--dlp off|log|block] [--rounds N] \
[--ends split|shared] [--load own|oha] [--oha PATH]";
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--help" || k == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--duration" => {
                a.duration = Duration::from_secs_f64(v.parse().expect("--duration SECS"))
            }
            "--peers" => a.peers = v.split(',').map(str::to_owned).collect(),
            "--egress-bin" => a.egress_bin = v.into(),
            "--work" => a.work = v.into(),
            "--mitmdump" => a.mitmdump = v.into(),
            "--peer-dir" => a.peer_dir = v.into(),
            "--dlp" => a.dlp = v,
            "--rounds" => a.rounds = v.parse().unwrap_or(0).max(1),
            "--load" => match v.as_str() {
                "own" => a.oha = None,
                "oha" => a.oha = Some(a.oha.take().unwrap_or_else(|| "oha".into())),
                _ => {
                    eprintln!("--load takes own or oha\n{USAGE}");
                    std::process::exit(2);
                }
            },
            // Implies --load oha.
            "--oha" => a.oha = Some(v.into()),
            "--ends" => {
                a.split_ends = match v.as_str() {
                    "split" => true,
                    "shared" => false,
                    _ => {
                        eprintln!("--ends takes split or shared\n{USAGE}");
                        std::process::exit(2);
                    }
                }
            }
            _ => {
                eprintln!("unknown argument {k}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    a
}

// ------------------------------------------------------------------ upstream

struct Pki {
    ca_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "bench upstream CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert: leaf.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream(pki: &Pki) -> SocketAddr {
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(pki.key.clone_key()),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acc = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let kib = Bytes::from(vec![b'x'; 1024]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acc, kib) = (acc.clone(), kib.clone());
            tokio::spawn(async move {
                let Ok(tls) = acc.accept(tcp).await else {
                    return;
                };
                {
                    use std::sync::atomic::Ordering::Relaxed;
                    UP_CONNS.fetch_add(1, Relaxed);
                    let c = tls.get_ref().1;
                    if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        UP_RESUMED.fetch_add(1, Relaxed);
                    }
                    if c.alpn_protocol() == Some(b"h2") {
                        UP_H2.fetch_add(1, Relaxed);
                    }
                    let mut first = UP_TLS.lock().unwrap_or_else(|p| p.into_inner());
                    if first.is_empty() {
                        *first = tls_name(c.protocol_version(), c.negotiated_cipher_suite());
                    }
                }
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let kib = kib.clone();
                        use std::sync::atomic::Ordering::Relaxed;
                        SEEN.fetch_add(1, Relaxed);
                        let want = format!("Bearer {TOKEN}");
                        let auth: Vec<_> = req.headers().get_all("authorization").iter().collect();
                        if auth.len() == 1 && auth[0].as_bytes() == want.as_bytes() {
                            INJECTED.fetch_add(1, Relaxed);
                        }
                        async move {
                            let body: UpBody = if req.uri().path() == "/sse" {
                                let s = futures_stream(vec![
                                    (Duration::ZERO, Bytes::from_static(b"data: first\n\n")),
                                    (
                                        Duration::from_millis(20),
                                        Bytes::from_static(b"data: done\n\n"),
                                    ),
                                ]);
                                return Ok::<_, Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "text/event-stream")
                                        .body(BodyExt::boxed(StreamBody::new(s)))
                                        .unwrap(),
                                );
                            } else {
                                Full::new(kib).boxed()
                            };
                            Ok(http::Response::new(body))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// A body that sends each chunk after its delay.
fn futures_stream(
    chunks: Vec<(Duration, Bytes)>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync {
    futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
        let (d, b) = it.next()?;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        Some((Ok(Frame::data(b)), it))
    })
}

// --------------------------------------------------------------------- peers

struct Peer {
    name: String,
    /// None = direct.
    proxy: Option<SocketAddr>,
    /// The CA the client must trust.
    trust_pem: String,
    child: Option<Child>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(addr: SocketAddr, child: &mut Child, what: &str) -> Res<()> {
    for _ in 0..600 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            return Err(format!("{what} exited: {st}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what} did not listen on {addr}").into())
}

async fn start_bot_bottle(a: &Args, pki: &Pki, up: SocketAddr) -> Res<Peer> {
    let ca = bot_bottle_egress::BottleCa::generate("bench", &["localhost".to_string()])?;
    let cfg = serde_json::json!({
        "schema": 1,
        "bottle_id": "bench",
        "listen": "127.0.0.1:0",
        // The upstream listens on a port of its own, which the route names.
        "routes": [{"host": "localhost", "ports": [up.port()], "inject": [{"header": "Authorization", "value": "Bearer {token}", "token_ref": "BENCH_TOKEN"}]}],
        "tokens": {"BENCH_TOKEN": TOKEN},
        "ca": {"cert_pem": ca.cert_pem, "key_pem": ca.key_pem.expose()},
        "upstream": {"extra_ca_pem": pki.ca_pem, "resolve": {"localhost": up.to_string()}},
        "audit": {"path": a.work.join("egress-audit.jsonl")}, "dlp": {"mode": a.dlp},
    });
    // The proxy appends to its audit log; a run of the bench writes about
    // half a GiB of it, so each start begins a fresh one (runs used to pile
    // up gigabytes in the work directory).
    match std::fs::remove_file(a.work.join("egress-audit.jsonl")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let path = a.work.join("egress.json");
    std::fs::write(&path, cfg.to_string())?;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = Command::new(&a.egress_bin)
        .arg("--config")
        .arg(&path)
        .args(["--listen", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release -p bot-bottle-egress)",
                a.egress_bin.display()
            )
        })?;
    wait_port(addr, &mut child, "bot-bottle egress").await?;
    Ok(Peer {
        name: "bot-bottle".into(),
        proxy: Some(addr),
        trust_pem: ca.cert_pem,
        child: Some(child),
    })
}

/// The byte relay (`relay.rs`): the cost of the hop alone. The client's
/// TLS goes through it to the upstream, so the client trusts the upstream.
async fn start_relay(pki: &Pki, up: SocketAddr) -> Res<Peer> {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-relay", &addr.to_string(), &up.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    wait_port(addr, &mut child, "relay").await?;
    Ok(Peer {
        name: "relay".into(),
        proxy: Some(addr),
        trust_pem: pki.ca_pem.clone(),
        child: Some(child),
    })
}

/// A CA for an intercepting peer, ECDSA P-256 like bot-bottle's (rcgen's
/// default key): (certificate PEM, PKCS#8 key PEM). squid and mitmproxy
/// sign their leaves with it and give them its key pair, so their leaves
/// are P-256 too, and their handshakes cost what bot-bottle's do.
fn peer_ca(name: &str) -> Res<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(vec![])?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("bench {name} CA"));
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The peer's config from `--peer-dir`, its `@NAME@` placeholders filled in.
fn peer_conf(a: &Args, file: &str, vars: &[(&str, String)]) -> Res<String> {
    let path = a.peer_dir.join(file);
    let mut conf =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (k, v) in vars {
        conf = conf.replace(&format!("@{k}@"), v);
    }
    // An @NAME@ left over is a placeholder this program does not know.
    let left = conf.match_indices('@').find_map(|(i, _)| {
        let rest = &conf[i + 1..];
        let n = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_'))?;
        (n > 0 && rest[n..].starts_with('@')).then(|| rest[..n].to_owned())
    });
    if let Some(name) = left {
        return Err(format!("{}: unknown placeholder @{name}@", path.display()).into());
    }
    Ok(conf)
}

/// The OpenSSL config squid and mitmproxy run with: TLS 1.3 suites in
/// bot-bottle's order (see the file).
fn openssl_conf(a: &Args) -> Res<PathBuf> {
    let path = a.peer_dir.join("openssl-aes128.cnf");
    if !path.is_file() {
        return Err(format!("{} is missing", path.display()).into());
    }
    Ok(std::path::absolute(path)?)
}

async fn start_squid(a: &Args, pki_ca: &Path) -> Res<Peer> {
    let dir = a.work.join("squid");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let (ca_pem, ca_key) = peer_ca("squid")?;
    std::fs::write(dir.join("ca.pem"), &ca_pem)?;
    std::fs::write(dir.join("ca.key"), ca_key)?;
    let st = Command::new("/usr/lib/squid/security_file_certgen")
        .args(["-c", "-s"])
        .arg(dir.join("ssl_db"))
        .args(["-M", "16MB"])
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        return Err("security_file_certgen -c failed".into());
    }
    let port = free_port();
    let conf = peer_conf(
        a,
        "squid-ssl-bump.conf",
        &[
            ("PORT", port.to_string()),
            ("SQUID_DIR", dir.display().to_string()),
            ("UPSTREAM_CA", pki_ca.display().to_string()),
            ("TOKEN", TOKEN.to_string()),
        ],
    )?;
    let conf_path = dir.join("squid.conf");
    std::fs::write(&conf_path, conf)?;
    let _ = Command::new("chown")
        .args(["-R", "proxy:proxy"])
        .arg(&dir)
        .status();
    let mut child = Command::new("squid")
        .arg("-N")
        .arg("-f")
        .arg(&conf_path)
        .env("OPENSSL_CONF", openssl_conf(a)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_port(addr, &mut child, "squid").await?;
    Ok(Peer {
        name: "squid".into(),
        proxy: Some(addr),
        trust_pem: ca_pem,
        child: Some(child),
    })
}

async fn start_mitmproxy(a: &Args, pki_ca: &Path) -> Res<Peer> {
    // A fresh confdir holding our CA: mitmproxy makes an RSA-2048 one only
    // when `mitmproxy-ca.pem` (key and certificate) is missing.
    let conf = a.work.join("mitmconf");
    let _ = std::fs::remove_dir_all(&conf);
    std::fs::create_dir_all(&conf)?;
    let (ca_pem, ca_key) = peer_ca("mitmproxy")?;
    std::fs::write(conf.join("mitmproxy-ca.pem"), format!("{ca_key}{ca_pem}"))?;
    let port = free_port();
    let mut child = Command::new(&a.mitmdump)
        .args([
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            &port.to_string(),
        ])
        .arg("--set")
        .arg(format!("confdir={}", conf.display()))
        .arg("--set")
        .arg(format!(
            "ssl_verify_upstream_trusted_ca={}",
            pki_ca.display()
        ))
        .arg("-s")
        .arg(a.peer_dir.join("mitmproxy_inject.py"))
        .env("BENCH_TOKEN", TOKEN)
        .env("OPENSSL_CONF", openssl_conf(a)?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (see bench/egress/peers/README.md)",
                a.mitmdump.display()
            )
        })?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_port(addr, &mut child, "mitmdump").await?;
    Ok(Peer {
        name: "mitmproxy".into(),
        proxy: Some(addr),
        trust_pem: ca_pem,
        child: Some(child),
    })
}

// -------------------------------------------------------------------- client

#[derive(Clone)]
struct Client {
    proxy: Option<SocketAddr>,
    up: SocketAddr,
    authority: String,
    tls: tokio_rustls::TlsConnector,
    seen: Arc<TlsSeen>,
}

/// What the client's TLS handshakes with one peer came to.
#[derive(Default)]
struct TlsSeen {
    handshakes: std::sync::atomic::AtomicU64,
    resumed: std::sync::atomic::AtomicU64,
    /// Version, suite, key exchange group and leaf key of the first
    /// handshake (a full one: the session cache starts empty).
    first: std::sync::OnceLock<String>,
}

impl TlsSeen {
    fn counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.handshakes.load(Relaxed), self.resumed.load(Relaxed))
    }

    fn note(&self, c: &rustls::ClientConnection) {
        use std::sync::atomic::Ordering::Relaxed;
        self.handshakes.fetch_add(1, Relaxed);
        if c.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.resumed.fetch_add(1, Relaxed);
        }
        self.first.get_or_init(|| {
            let name = |x: Option<String>| x.unwrap_or_else(|| "?".into());
            let version_suite = tls_name(c.protocol_version(), c.negotiated_cipher_suite());
            let group = name(
                c.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name())),
            );
            let leaf = c
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map_or("?", |der| leaf_key_kind(der.as_ref()));
            format!("{version_suite} {group}, leaf {leaf}")
        });
    }
}

/// "TLS1.3 AES_128_GCM_SHA256", say.
fn tls_name(
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::SupportedCipherSuite>,
) -> String {
    let version = match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS1.3".into(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS1.2".into(),
        v => format!("{v:?}"),
    };
    let suite = suite.map_or("?".into(), |s| {
        let s = format!("{:?}", s.suite());
        s.strip_prefix("TLS13_").unwrap_or(&s).to_owned()
    });
    format!("{version} {suite}")
}

/// The key type of a certificate, by the algorithm identifiers in its DER
/// (enough for the keys the peers use; no X.509 parser needed).
fn leaf_key_kind(der: &[u8]) -> &'static str {
    const EC_PUBLIC_KEY: &[u8] = &[6, 7, 0x2a, 0x86, 0x48, 0xce, 0x3d, 2, 1];
    const P256: &[u8] = &[6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 3, 1, 7];
    const RSA: &[u8] = &[6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 1];
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    match (has(EC_PUBLIC_KEY), has(P256), has(RSA)) {
        (true, true, _) => "ECDSA P-256",
        (true, false, _) => "ECDSA (not P-256)",
        (false, _, true) => "RSA",
        _ => "other",
    }
}

impl Client {
    fn new(peer: &Peer, up: SocketAddr) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut peer.trust_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        // AES-128-GCM offered first, the suite bot-bottle's proxy picks
        // whatever the client offers: squid, mitmproxy and the upstream
        // (for direct) follow the client's order, so every row runs the
        // same suite (rustls' default order puts AES-256-GCM-SHA384 first).
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            proxy: peer.proxy,
            up,
            authority: format!("localhost:{}", up.port()),
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            seen: Arc::default(),
        }
    }

    async fn open(&self) -> Res<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
        let mut tcp = TcpStream::connect(self.proxy.unwrap_or(self.up)).await?;
        tcp.set_nodelay(true)?;
        if self.proxy.is_some() {
            let a = &self.authority;
            tcp.write_all(format!("CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n").as_bytes())
                .await?;
            // Read the reply the way real clients do, a buffer at a time
            // (one byte per read, as before 2026-12-01, cost the client ~40
            // syscalls per connection, on the cores the proxy shares). It
            // is the whole of what arrives: the proxy sends nothing more
            // until the client's TLS hello.
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tcp.read(&mut b).await?;
                if n == 0 {
                    return Err("proxy closed during CONNECT".into());
                }
                head.extend_from_slice(&b[..n]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into());
            }
        }
        let tls = self
            .tls
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        self.seen.note(tls.get_ref().1);
        let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(c);
        Ok(s)
    }

    fn req(&self, path: &str) -> http::Request<Empty<Bytes>> {
        http::Request::builder()
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", "Bearer dummy")
            .body(Empty::new())
            .unwrap()
    }
}

async fn get_full(
    s: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    r: http::Request<Empty<Bytes>>,
) -> Res<()> {
    s.ready().await?;
    let resp = s.send_request(r).await?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()).into());
    }
    resp.into_body().collect().await?;
    Ok(())
}

/// What one load phase came to: requests answered 200, failures, its
/// length, and the latency's p50 and p99 (ms).
struct Load {
    n: u64,
    errors: u64,
    secs: f64,
    p50: f64,
    p99: f64,
}

/// `conc` tasks, each on one kept-alive connection (or a new one per
/// request), until `dur` is over.
async fn load(c: &Client, conc: usize, dur: Duration, keepalive: bool) -> Load {
    let end = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let (mut n, mut errors, mut lat) = (0u64, 0u64, Vec::with_capacity(1 << 16));
            let mut conn = None;
            while Instant::now() < end {
                let t0 = Instant::now();
                if conn.is_none() {
                    match c.open().await {
                        Ok(s) => conn = Some(s),
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let s = conn.as_mut().unwrap();
                match get_full(s, c.req("/1k")).await {
                    Ok(()) => {
                        n += 1;
                        lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
                if !keepalive {
                    conn = None;
                }
            }
            (n, errors, lat)
        }));
    }
    let (mut n, mut errors, mut lat_us) = (0, 0, Vec::new());
    for t in tasks {
        let (tn, te, tl) = t.await.unwrap();
        n += tn;
        errors += te;
        lat_us.extend(tl);
    }
    lat_us.sort_unstable();
    Load {
        n,
        errors,
        secs: start.elapsed().as_secs_f64(),
        p50: pct(&lat_us, 0.5),
        p99: pct(&lat_us, 0.99),
    }
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

/// Median time to the first SSE event: cold (new connection each time) or
/// warm (one kept-alive connection).
async fn sse(c: &Client, cold: bool, samples: usize) -> Res<f64> {
    let mut v = Vec::with_capacity(samples);
    let mut conn = if cold { None } else { Some(c.open().await?) };
    // One unmeasured round first (warms the proxy's upstream pool too).
    for i in 0..samples + 1 {
        let t0 = Instant::now();
        let mut fresh;
        let s = match &mut conn {
            Some(s) => s,
            None => {
                fresh = c.open().await?;
                &mut fresh
            }
        };
        s.ready().await?;
        let resp = s.send_request(c.req("/sse")).await?;
        let mut body = resp.into_body();
        let f = body.frame().await.ok_or("no SSE event")??;
        let dt = t0.elapsed();
        if f.data_ref().is_none_or(|d| !d.starts_with(b"data: first")) {
            return Err("unexpected first SSE frame".into());
        }
        body.collect().await?;
        if i > 0 {
            v.push(dt.as_secs_f64() * 1000.0);
        }
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

// ------------------------------------------------------------- process stats

fn children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
                    let ppid = rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<u32>().ok());
                    if ppid == Some(parent) && !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system) of the process tree.
fn cpu_secs(pid: u32) -> f64 {
    children(pid).into_iter().map(process_cpu_secs).sum()
}

/// CPU seconds (user + system, every thread) of one process, without its
/// children.
fn process_cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(&format!("/proc/{pid}/stat"), 2)
}

/// CPU seconds (user + system) of this process and of its children it has
/// waited for (`oha`, once a phase is over).
fn self_and_waited_cpu_secs() -> f64 {
    stat_cpu_secs("/proc/self/stat", 4)
}

/// The sum of the first `fields` CPU times of a `/proc/PID/stat` file, in
/// seconds: utime, stime, cutime, cstime (fields 14 to 17; 11 to 14 after
/// the `)` that ends the command name, which may hold spaces).
fn stat_cpu_secs(path: &str, fields: usize) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    rest.split_whitespace()
        .skip(11)
        .take(fields)
        .filter_map(|x| x.parse::<f64>().ok())
        .sum::<f64>()
        / tick
}

/// The whole machine's CPU seconds since boot: (busy, idle), from the first
/// line of `/proc/stat` (all cores together).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    let total: f64 = v.iter().take(8).sum();
    ((total - idle) / 100.0, idle / 100.0)
}

/// RSS of the process tree, MiB.
fn rss_mib(pid: u32) -> f64 {
    children(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

// ---------------------------------------------------------------------- run

#[derive(Default, Clone)]
struct Row {
    name: String,
    ka_rps: f64,
    p50: f64,
    p99: f64,
    new_rate: f64,
    sse_cold: f64,
    sse_warm: f64,
    cpu_us: f64,
    /// Proxy CPU per request in the new-connection phase (CONNECT, TLS
    /// handshake, one request): the handshake's cost, which the rate alone
    /// hides behind the client's and upstream's share of two cores.
    conn_cpu_us: f64,
    /// CPU per keep-alive request of the load generator and the upstream
    /// (this process, and the upstream's if it has its own): the two ends
    /// every peer shares.
    ends_us: f64,
    /// The whole machine's busy CPU per keep-alive request (ends, proxy,
    /// and anything else running).
    all_us: f64,
    /// Share of the machine's CPU idle during the keep-alive phase.
    idle_pct: f64,
    rss16: f64,
    rss256: f64,
    errors: u64,
    injected_pct: f64,
    /// The client's TLS with this peer: version, suite, group, leaf key.
    tls: String,
    /// Share of the new-connection phase's handshakes that resumed a
    /// session.
    resumed_pct: f64,
    /// Upstream TLS connections opened during the keep-alive phase (c=16),
    /// and per client connection in the new-connection phase.
    up_conns_ka: f64,
    up_conns_per_new: f64,
    /// Share of the upstream connections of the new-connection phase that
    /// resumed a session (for direct: the load generator's resumption).
    up_resumed_pct: f64,
    /// Share of the upstream connections (whole measure) that spoke h2.
    up_h2_pct: f64,
    /// Version and suite of the first upstream connection.
    up_tls: String,
    note: String,
}

async fn measure(a: &Args, peer: &Peer, up: &mut ends::Upstream) -> Res<Row> {
    let dur = a.duration;
    let c = Client::new(peer, up.addr());
    let pid = peer.child.as_ref().map(|c| c.id());
    up.reset().await?;
    let start = up.stats().await?;
    // The ends: this process (the load generator, and the upstream unless
    // it has its own process), `oha` if it drives the load (a waited-for
    // child), and the upstream's process.
    let up_pid = up.pid();
    let ends_cpu = || self_and_waited_cpu_secs() + up_pid.map_or(0.0, process_cpu_secs);
    // The keep-alive and new-connection phases: this program's client, or
    // oha trusting what the client trusts.
    let trust = a.work.join("oha-trust.pem");
    std::fs::write(&trust, &peer.trust_pem)?;
    let url = format!("https://{}/1k", c.authority);
    let phase = |conc: usize, keepalive: bool| {
        let (c, trust, url) = (&c, &trust, &url);
        async move {
            match &a.oha {
                None => Ok(load(c, conc, dur, keepalive).await),
                Some(oha) => oha::load(oha, trust, c.proxy, url, conc, dur, keepalive).await,
            }
        }
    };
    // Sanity and warm-up: one request must pass (and be injected).
    let mut s = c.open().await?;
    get_full(&mut s, c.req("/1k")).await?;
    drop(s);
    load(&c, 16, Duration::from_millis(500), true).await;

    let cpu0 = pid.map(cpu_secs);
    let (ends0, m0) = (ends_cpu(), machine_cpu());
    let up0 = up.stats().await?.conns;
    let ka: Load = phase(16, true).await?;
    let cpu1 = pid.map(cpu_secs);
    let (ends1, m1) = (ends_cpu(), machine_cpu());
    let rss16 = pid.map(rss_mib).unwrap_or(f64::NAN);
    let (up1, tls1) = (up.stats().await?, c.seen.counts());
    let nc: Load = phase(4, false).await?;
    let cpu2 = pid.map(cpu_secs);
    let (up2, tls2) = (up.stats().await?, c.seen.counts());
    let sse_cold = sse(&c, true, 20).await?;
    let sse_warm = sse(&c, false, 50).await?;
    // c=256 for a short while: RSS must stay bounded.
    let mut rss256 = f64::NAN;
    if let Some(pid) = pid {
        let c2 = c.clone();
        let h = tokio::spawn(async move { load(&c2, 256, Duration::from_secs(3), true).await });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        rss256 = rss_mib(pid);
        let _ = h.await;
    }
    let end = up.stats().await?;
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) if ka.n > 0 => (b - a) * 1e6 / ka.n as f64,
        _ => f64::NAN,
    };
    let per_req = |secs: f64| match ka.n {
        0 => f64::NAN,
        n => secs * 1e6 / n as f64,
    };
    let ends_us = per_req(ends1 - ends0);
    let all_us = per_req(m1.0 - m0.0);
    let idle_pct = 100.0 * (m1.1 - m0.1) / ((m1.0 - m0.0) + (m1.1 - m0.1)).max(1e-9);
    let conn_cpu_us = match (cpu1, cpu2) {
        (Some(a), Some(b)) if nc.n > 0 => (b - a) * 1e6 / nc.n as f64,
        _ => f64::NAN,
    };
    Ok(Row {
        name: peer.name.clone(),
        ka_rps: ka.n as f64 / ka.secs,
        p50: ka.p50,
        p99: ka.p99,
        new_rate: nc.n as f64 / nc.secs,
        sse_cold,
        sse_warm,
        cpu_us,
        conn_cpu_us,
        ends_us,
        all_us,
        idle_pct,
        rss16,
        rss256,
        errors: ka.errors + nc.errors,
        injected_pct: 100.0 * end.injected as f64 / end.seen.max(1) as f64,
        tls: c.seen.first.get().cloned().unwrap_or_default(),
        // oha's handshakes are not seen (NaN prints "-").
        resumed_pct: match tls2.0 - tls1.0 {
            0 => f64::NAN,
            n => 100.0 * (tls2.1 - tls1.1) as f64 / n as f64,
        },
        up_conns_ka: (up1.conns - up0) as f64,
        up_conns_per_new: (up2.conns - up1.conns) as f64 / nc.n.max(1) as f64,
        up_resumed_pct: match up2.conns - up1.conns {
            0 => f64::NAN,
            n => 100.0 * (up2.resumed - up1.resumed) as f64 / n as f64,
        },
        up_h2_pct: 100.0 * (end.h2 - start.h2) as f64 / (end.conns - start.conns).max(1) as f64,
        up_tls: end.tls,
        note: String::new(),
    })
}

/// Each figure's median over a peer's rounds; errors add up, the injected
/// share is the worst round's, a failed round's note is kept.
fn median_row(rounds: &[Row]) -> Row {
    let med = |get: fn(&Row) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(get).filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let ok: Vec<&Row> = rounds.iter().filter(|r| r.ka_rps > 0.0).collect();
    Row {
        name: rounds[0].name.clone(),
        ka_rps: med(|r| r.ka_rps),
        p50: med(|r| r.p50),
        p99: med(|r| r.p99),
        new_rate: med(|r| r.new_rate),
        sse_cold: med(|r| r.sse_cold),
        sse_warm: med(|r| r.sse_warm),
        cpu_us: med(|r| r.cpu_us),
        conn_cpu_us: med(|r| r.conn_cpu_us),
        ends_us: med(|r| r.ends_us),
        all_us: med(|r| r.all_us),
        idle_pct: med(|r| r.idle_pct),
        rss16: med(|r| r.rss16),
        rss256: med(|r| r.rss256),
        errors: rounds.iter().map(|r| r.errors).sum(),
        injected_pct: ok.iter().map(|r| r.injected_pct).fold(f64::NAN, f64::min),
        tls: rounds
            .iter()
            .map(|r| r.tls.clone())
            .find(|t| !t.is_empty())
            .unwrap_or_default(),
        resumed_pct: med(|r| r.resumed_pct),
        up_conns_ka: med(|r| r.up_conns_ka),
        up_conns_per_new: med(|r| r.up_conns_per_new),
        up_resumed_pct: med(|r| r.up_resumed_pct),
        up_h2_pct: med(|r| r.up_h2_pct),
        up_tls: rounds
            .iter()
            .map(|r| r.up_tls.clone())
            .find(|t| !t.is_empty())
            .unwrap_or_default(),
        note: rounds
            .iter()
            .map(|r| r.note.clone())
            .find(|n| !n.is_empty())
            .unwrap_or_default(),
    }
}

fn f(x: f64, prec: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.prec$}")
    }
}

fn main() -> Res<()> {
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--serve-upstream") {
        let dir = argv.next().ok_or("--serve-upstream DIR")?;
        return ends::serve_upstream(Path::new(&dir));
    }
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() == Some("--serve-relay") {
        let usage = "--serve-relay LISTEN UPSTREAM";
        let listen = argv.next().ok_or(usage)?.parse()?;
        let upstream = argv.next().ok_or(usage)?.parse()?;
        return relay::serve_relay(listen, upstream);
    }
    let a = args();
    std::fs::create_dir_all(&a.work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let pki = pki();
        let mut up = ends::Upstream::start(a.split_ends, &pki, &a.work).await?;
        let up_addr = up.addr();
        let up_ca = a.work.join("upstream-ca.pem");
        std::fs::write(&up_ca, &pki.ca_pem)?;
        let mut runs: Vec<Vec<Row>> = vec![Vec::new(); a.peers.len()];
        for round in 1..=a.rounds {
            for (i, name) in a.peers.clone().into_iter().enumerate() {
                eprintln!("== {name} (round {round}/{})", a.rounds);
                let peer = match name.as_str() {
                    "direct" => Ok(Peer {
                        name: "direct".into(),
                        proxy: None,
                        trust_pem: pki.ca_pem.clone(),
                        child: None,
                    }),
                    "bot-bottle" => start_bot_bottle(&a, &pki, up_addr).await,
                    "relay" => start_relay(&pki, up_addr).await,
                    "squid" => start_squid(&a, &up_ca).await,
                    "mitmproxy" => start_mitmproxy(&a, &up_ca).await,
                    other => Err(format!("unknown peer {other}").into()),
                };
                let row = match peer {
                    Ok(p) => match measure(&a, &p, &mut up).await {
                        Ok(r) => r,
                        Err(e) => Row {
                            name: name.clone(),
                            note: format!("failed: {e}"),
                            ..Default::default()
                        },
                    },
                    Err(e) => Row {
                        name: name.clone(),
                        note: format!("not run: {e}"),
                        ..Default::default()
                    },
                };
                eprintln!("   done {}", row.note);
                runs[i].push(row);
            }
        }
        let rows: Vec<Row> = runs.iter().map(|r| median_row(r)).collect();
        if a.rounds > 1 {
            println!("median of {} interleaved rounds per peer", a.rounds);
        }
        print_table(&rows, &a);
        Ok(())
    })
}

fn print_table(rows: &[Row], a: &Args) {
    let dlp = &a.dlp;
    println!(
        "egress benchmark, loopback, {} s per load phase, HTTP/1.1 client ({}), 1 KiB responses, {}",
        a.duration.as_secs_f64(),
        if a.oha.is_some() {
            "oha for keep-alive and new connections, this program's for SSE and c=256"
        } else {
            "this program's"
        },
        if a.split_ends {
            "the upstream in its own process (--ends split)"
        } else {
            "the upstream in the load generator's process (--ends shared)"
        }
    );
    println!(
        "{:<11} {:>10} {:>8} {:>8} {:>11} {:>10} {:>10} {:>10} {:>11} {:>11} {:>10} {:>6} {:>9} {:>10} {:>7} {:>6}",
        "peer",
        "ka req/s",
        "p50 ms",
        "p99 ms",
        "new conn/s",
        "sse cold",
        "sse warm",
        "cpu us/req",
        "cpu us/conn",
        "ends us/req",
        "all us/req",
        "idle %",
        "rss c16",
        "rss c256",
        "errors",
        "inj %"
    );
    for r in rows {
        if !r.note.is_empty() && r.ka_rps == 0.0 {
            println!("{:<11} {}", r.name, r.note);
            continue;
        }
        println!(
            "{:<11} {:>10} {:>8} {:>8} {:>11} {:>10} {:>10} {:>10} {:>11} {:>11} {:>10} {:>6} {:>9} {:>10} {:>7} {:>6}",
            r.name,
            f(r.ka_rps, 0),
            f(r.p50, 3),
            f(r.p99, 3),
            f(r.new_rate, 0),
            f(r.sse_cold, 3),
            f(r.sse_warm, 3),
            f(r.cpu_us, 1),
            f(r.conn_cpu_us, 1),
            f(r.ends_us, 1),
            f(r.all_us, 1),
            f(r.idle_pct, 0),
            f(r.rss16, 1),
            f(r.rss256, 1),
            r.errors,
            f(r.injected_pct, 0)
        );
    }
    // What the handshakes were (so that unequal TLS shows) and how each row
    // reached the upstream (so that pooling and HTTP/2 show).
    println!();
    for r in rows.iter().filter(|r| r.ka_rps > 0.0) {
        let proto = match r.up_h2_pct {
            p if p >= 99.5 => "h2",
            p if p <= 0.5 => "http/1.1",
            _ => "h2 and http/1.1",
        };
        let pct = |p: f64, nan: &str| {
            if p.is_nan() {
                nan.to_owned()
            } else {
                format!("{p:.0}%")
            }
        };
        println!(
            "tls: {:<10} {}, resumed {} of new connections; upstream {proto} {}, \
             {} connections in keep-alive, {} per new connection, resumed {}",
            r.name,
            r.tls,
            pct(r.resumed_pct, "not seen (oha)"),
            r.up_tls,
            f(r.up_conns_ka, 0),
            f(r.up_conns_per_new, 2),
            pct(r.up_resumed_pct, "-"),
        );
    }
    let get = |n: &str| rows.iter().find(|r| r.name == n && r.ka_rps > 0.0);
    let Some(bb) = get("bot-bottle") else { return };
    println!();
    println!("ratios and goals (bot-bottle):");
    let goal = |ok: bool| if ok { "ok" } else { "MISSED" };
    if let Some(d) = get("direct") {
        // The relay's keep-alive ratio is what the hop alone allows here
        // (see relay.rs). Its new connections are no floor: it opens an
        // upstream connection per client connection, a pooling proxy not.
        let floor = |f: fn(&Row) -> f64, note: &str| {
            get("relay")
                .map(|r| format!("; a byte relay {:.2}x{note}", f(r) / f(d)))
                .unwrap_or_default()
        };
        let r = bb.ka_rps / d.ka_rps;
        println!(
            "  keep-alive vs direct      {:>6.2}x  (goal >= 0.5x)  {}{}",
            r,
            goal(r >= 0.5),
            floor(|r| r.ka_rps, "")
        );
        let r = bb.new_rate / d.new_rate;
        println!(
            "  new connections vs direct {:>6.2}x  (goal >= 0.7x)  {}{}",
            r,
            goal(r >= 0.7),
            floor(|r| r.new_rate, " (no pool, so no floor)")
        );
        let dp = bb.p99 - d.p99;
        println!(
            "  added p99                 {:>6.3} ms (goal <= 1 ms) {}",
            dp,
            goal(dp <= 1.0)
        );
        // The ends (load generator and upstream) are the same programs in
        // every row, so what the proxy costs the machine per request shows
        // here, scheduling included.
        println!(
            "  CPU per ka request, whole machine: direct {:.1} us, bot-bottle {:.1} us \
             (ends {:.1} + proxy {:.1} + rest); direct / bot-bottle {:.2}x",
            d.all_us,
            bb.all_us,
            bb.ends_us,
            bb.cpu_us,
            d.all_us / bb.all_us
        );
        let ds = bb.sse_warm - d.sse_warm;
        println!(
            "  SSE warm first event      +{:.3} ms (goal <= 0.5 ms) {}",
            ds,
            goal(ds <= 0.5)
        );
    }
    if let Some(rl) = get("relay") {
        println!(
            "  vs the byte relay         keep-alive {:.2}x, new connections {:.2}x, CPU per ka request {:.1} against {:.1} us",
            bb.ka_rps / rl.ka_rps,
            bb.new_rate / rl.new_rate,
            bb.cpu_us,
            rl.cpu_us
        );
    }
    if let Some(s) = get("squid") {
        let r = bb.ka_rps / s.ka_rps;
        println!(
            "  keep-alive vs squid       {:>6.2}x  (goal >= 2.5x)  {}",
            r,
            goal(r >= 2.5)
        );
        println!(
            "  new connections vs squid  {:>6.2}x",
            bb.new_rate / s.new_rate
        );
    }
    if let Some(m) = get("mitmproxy") {
        println!("  keep-alive vs mitmproxy   {:>6.2}x", bb.ka_rps / m.ka_rps);
    }
    println!(
        "  proxy CPU per request     {:>6.1} us (goal <= 40 us) {}",
        bb.cpu_us,
        goal(bb.cpu_us <= 40.0)
    );
    println!("  proxy CPU per new conn    {:>6.1} us", bb.conn_cpu_us);
    println!(
        "  RSS at c=16               {:>6.1} MiB (goal <= 32 MiB) {}",
        bb.rss16,
        goal(bb.rss16 <= 32.0)
    );
    println!(
        "  RSS at c=256              {:>6.1} MiB (bounded)",
        bb.rss256
    );
    println!();
    println!(
        "not the same for every row (docs/benchmarks.md, \"Method and fairness notes\"):\n\
         - upstream: bot-bottle pools its connections and speaks HTTP/2 to the upstream; direct,\n  \
         the relay, squid and mitmproxy speak HTTP/1.1 on a connection per client connection\n  \
         (tls lines);\n\
         - logging: bot-bottle writes an audit line per request, DLP in {dlp} mode; squid has\n  \
         access_log none; mitmproxy runs quiet (-q);\n\
         - resumption: squid 5.7 sends session tickets on bumped connections but resumes none,\n  \
         so its new connections are full handshakes where the others resume."
    );
}
