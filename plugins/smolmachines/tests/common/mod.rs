//! Shared parts of the smolmachines tests: a real HTTPS upstream, a proxy
//! config with a canary token, a TLS client trusting the bottle CA, and a
//! client that stands in for the smolvm engine's side of the interceptor
//! protocol (it sends the exact `SMOLICPT` preamble and reads the verdict
//! byte, as smolvm's TSI muxer / virtio-net relay does for a guest flow).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use smolvm_protocol::intercept::InterceptEndpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const HOST: &str = "api.bottle.test";

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn canary() -> String {
    format!("canary-{:016x}-real-token", rand::random::<u64>())
}

/// A small HTTPS API on host loopback that records what it received.
pub struct Upstream {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

/// A TLS acceptor presenting a leaf for `hosts` from a CA of its own, and
/// that CA's certificate (PEM) for clients to trust.
pub fn upstream_tls(hosts: &[&str]) -> (tokio_rustls::TlsAcceptor, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test upstream CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(server)), ca.pem())
}

impl Upstream {
    pub async fn start(hosts: &[&str]) -> Self {
        let (acceptor, ca_pem) = upstream_tls(hosts);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = s2.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((head, _)) = read_head(&mut tls).await else {
                        return;
                    };
                    let rec = head_json(&head);
                    let auth = rec["headers"].get("authorization").is_some();
                    let path = rec["path"].clone();
                    seen.lock().unwrap().push(rec);
                    let body = format!(
                        "{{\"ok\":true,\"path\":{path},\"authorization_present\":{auth}}}\n"
                    );
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { addr, ca_pem, seen }
    }

    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads an HTTP/1.1 head; returns it and whatever followed.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head_json(head: &str) -> serde_json::Value {
    let mut lines = head.split("\r\n");
    let first: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
    let headers: serde_json::Map<String, serde_json::Value> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().into()))
        .collect();
    serde_json::json!({
        "method": first.first().copied().unwrap_or(""),
        "path": first.get(1).copied().unwrap_or(""),
        "headers": headers,
    })
}

/// A proxy config for one bottle: `HOST` under `/v1/` gets
/// `Authorization: Bearer <token>`, reached at the upstream's address.
pub fn proxy_config(bottle_id: &str, up: &Upstream, token: &str) -> (String, String) {
    let ca = bot_bottle_egress::BottleCa::generate(bottle_id, &[HOST.to_string()]).unwrap();
    let cfg = serde_json::json!({
        "schema": 1,
        "bottle_id": bottle_id,
        "routes": [{
            "host": HOST,
            "path_prefix": "/v1/",
            "inject": [{"header": "Authorization", "value": "Bearer {token}", "token_ref": "API_TOKEN"}],
        }],
        "tokens": {"API_TOKEN": token},
        "ca": {"cert_pem": ca.cert_pem, "key_pem": ca.key_pem.expose()},
        "upstream": {
            "extra_ca_pem": up.ca_pem,
            "resolve": {HOST: up.addr.to_string()},
        },
        "dlp": {"mode": "off"},
    });
    (cfg.to_string(), ca.cert_pem)
}

/// Stands in for the engine's side of the interceptor protocol.
pub struct EngineSide {
    pub adapter: SocketAddr,
    pub token: [u8; 32],
}

impl EngineSide {
    /// Opens one intercepted flow for a guest connect to `dst`: sends the
    /// SMOLICPT preamble and reads the verdict (None if the adapter hung up).
    pub async fn connect(&self, dst: &str) -> (TcpStream, Option<u8>) {
        let dst: SocketAddr = dst.parse().unwrap();
        let mut s = TcpStream::connect(self.adapter).await.unwrap();
        let ep = InterceptEndpoint {
            addr: self.adapter,
            token: self.token,
        };
        s.write_all(&ep.preamble(dst)).await.unwrap();
        let mut v = [0u8; 1];
        let verdict = match s.read(&mut v).await {
            Ok(1) => Some(v[0]),
            _ => None,
        };
        (s, verdict)
    }
}

/// A TLS client trusting only `ca_pem`.
pub async fn tls(
    s: TcpStream,
    name: &str,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    conn.connect(
        rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        s,
    )
    .await
}

/// Sends one HTTP/1.1 request and returns the status code and body.
pub async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    method: &str,
    host: &str,
    path: &str,
    auth: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// The installed engine, or `None` with one printed line saying why the
/// calling test did not run. Under CI (`CI=true`) a missing engine fails:
/// CI installs it with `python3 -m pip install smolmachines`.
pub fn engine_or_skip(test: &str) -> Option<bot_bottle_plugin_smolmachines::engine::Engine> {
    match bot_bottle_plugin_smolmachines::engine::discover(None) {
        Ok(e) => {
            probe_cache_env();
            e.install_for_sdk();
            Some(e)
        }
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: CI=true but {e}; install it with `python3 -m pip install smolmachines`")
        }
        Err(e) => {
            eprintln!("skipped {test}: {e} (install with `python3 -m pip install smolmachines`)");
            None
        }
    }
}

/// The boot probe, cached in a file under target/ (through the plugin's
/// own `BOT_BOTTLE_SMOL_PROBE_CACHE`) so that a host where guests never
/// boot pays the probe's deadline once per build, whichever test binary or
/// `check()` asks first. Returns why guests do not boot, or None.
pub fn no_boot_reason(engine: &bot_bottle_plugin_smolmachines::engine::Engine) -> Option<String> {
    use bot_bottle_plugin_smolmachines::engine::{boot_probe, Probe};
    probe_cache_env();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolmachines-boot-probe.lock"),
        )
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when `lock` drops.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    match boot_probe(engine) {
        Probe::Boots { .. } => None,
        Probe::NoBoot { reason } => Some(reason),
    }
}

/// Points the plugin's probe cache at target/ (once, before threads read it).
pub fn probe_cache_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var(
            "BOT_BOTTLE_SMOL_PROBE_CACHE",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("smolmachines-boot-probe.json"),
        )
    });
}

/// A private state root for this test binary (set once, before any thread
/// reads it).
pub fn state_root() -> std::path::PathBuf {
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("smol-state-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::env::set_var("BOT_BOTTLE_SMOL_STATE", &d);
        d
    })
    .clone()
}

/// A gate setup for `config` (the agent part is irrelevant without a guest).
pub fn setup(id: &str, config: String) -> bot_bottle_plugin_smolmachines::gate::GateSetup {
    bot_bottle_plugin_smolmachines::gate::GateSetup {
        bottle_id: id.into(),
        bottle_name: "t".into(),
        machine: id.into(),
        config,
        proxy_alias: "198.18.0.1:3128".parse().unwrap(),
        agent: bot_bottle_plugin_api::AgentLaunch {
            image: "alpine:3.20".into(),
            command: vec!["true".into()],
            workdir: "/".into(),
            ..Default::default()
        },
        labels: Default::default(),
        memory_limit: None,
    }
}
