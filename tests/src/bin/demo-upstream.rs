//! `demo-upstream`: a small HTTPS API standing in for a real one (an LLM
//! API, a git host) in the quickstart and the end-to-end tests.
//!
//! * `demo-upstream certs --dir DIR --host NAME...` writes a CA (`ca.pem`)
//!   and a server certificate for the names (`server.pem`, `server-key.pem`).
//! * `demo-upstream serve --dir DIR [--listen ADDR]` serves HTTPS (HTTP/1.1
//!   and HTTP/2). Every request is answered with a JSON summary that says
//!   *whether* credentials arrived, never their value, and is recorded as one
//!   JSON line on stdout with its headers — this process is the upstream that
//!   legitimately receives the real token, and the tests read it there.
//!   `POST …/codex/responses` and `POST /v1/messages` answer like the
//!   OpenAI Responses and Anthropic Messages APIs (SSE), so the real Codex
//!   and Claude Code CLIs complete a turn against it.
//! * `demo-upstream proxy --dir DIR [--listen ADDR]` is a corporate HTTP
//!   proxy instead: it tunnels CONNECT, and when `DIR/proxy-auth` holds
//!   `user:password` it answers `407` to a CONNECT without the matching
//!   `Proxy-Authorization: Basic`. Each CONNECT is one JSON line on stdout:
//!   the target and whether the credential was `ok`, `missing` or `wrong`
//!   (never its value).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsAcceptor;

fn usage() -> ! {
    eprintln!("usage: demo-upstream certs --dir DIR --host NAME...\n       demo-upstream serve --dir DIR [--listen ADDR]\n       demo-upstream proxy --dir DIR [--listen ADDR]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut hosts = Vec::new();
    let mut listen: SocketAddr = "0.0.0.0:443".parse().unwrap();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--host" => hosts.push(it.next().cloned().unwrap_or_else(|| usage())),
            "--listen" => {
                listen = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    match args.first().map(String::as_str) {
        Some("certs") if !hosts.is_empty() => certs(&dir, &hosts),
        Some("serve") => serve(&dir, listen),
        Some("proxy") => proxy(&dir, listen),
        _ => usage(),
    }
}

fn certs(dir: &Path, hosts: &[String]) {
    std::fs::create_dir_all(dir).expect("creating the cert dir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "demo-upstream CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = rcgen::CertificateParams::new(hosts.to_vec()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let host = parts
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            parts
                .headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let record = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "host": host,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body.len(),
    });
    println!("{record}");
    if parts.method == hyper::Method::POST {
        let path = parts.uri.path();
        if path.ends_with("/codex/responses") {
            return Ok(sse(CODEX_RESPONSES_SSE));
        }
        if path == "/v1/messages" {
            let streaming = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["stream"].as_bool())
                .unwrap_or(false);
            return Ok(if streaming {
                sse(ANTHROPIC_MESSAGES_SSE)
            } else {
                json(ANTHROPIC_MESSAGE)
            });
        }
    }
    let summary = serde_json::json!({
        "ok": true,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "authorization_present": parts.headers.contains_key("authorization"),
        "x_api_key_present": parts.headers.contains_key("x-api-key"),
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{summary}\n"))))
        .unwrap())
}

/// A complete Responses API stream, as Codex reads it (`codex exec`).
const CODEX_RESPONSES_SSE: &str = concat!(
    "event: response.created\n",
    "data: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\n",
    "event: response.output_item.done\n",
    "data: {\"type\":\"response.output_item.done\",\"item\":{\"type\":\"message\",\"role\":\"assistant\",\"id\":\"msg_1\",\"content\":[{\"type\":\"output_text\",\"text\":\"hello from the demo upstream\"}]}}\n\n",
    "event: response.completed\n",
    "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"usage\":{\"input_tokens\":1,\"input_tokens_details\":null,\"output_tokens\":1,\"output_tokens_details\":null,\"total_tokens\":2}}}\n\n",
);

/// A complete Messages API stream, as Claude Code reads it (`claude -p`).
const ANTHROPIC_MESSAGES_SSE: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-demo\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hello from the demo upstream\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

/// The same answer, not streamed.
const ANTHROPIC_MESSAGE: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-demo","content":[{"type":"text","text":"hello from the demo upstream"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":5}}"#;

fn sse(body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn json(body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn serve(dir: &Path, listen: SocketAddr) {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(dir.join("server.pem")).expect("server.pem"),
    ))
    .collect::<Result<_, _>>()
    .unwrap();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(dir.join("server-key.pem")).expect("server-key.pem"),
    ))
    .unwrap()
    .expect("a private key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    runtime().block_on(async move {
        let listener = bind(listen, "demo-upstream").await;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Binds `listen` and says so on stderr.
async fn bind(listen: SocketAddr, what: &str) -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .expect("binding");
    eprintln!("{what} listening on {}", listener.local_addr().unwrap());
    listener
}

fn proxy(dir: &Path, listen: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let want = std::fs::read_to_string(dir.join("proxy-auth"))
        .ok()
        .map(|up| {
            let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, up.trim());
            format!("Basic {b64}")
        });
    let want = Arc::new(want);
    runtime().block_on(async move {
        let listener = bind(listen, "demo-upstream proxy").await;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let want = want.clone();
            tokio::spawn(async move {
                // The head, byte by byte: nothing of the tunnel is read.
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match client.read(&mut b).await {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                let sent = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| v.trim().to_string())
                });
                let auth = match (&*want, &sent) {
                    (None, _) => "not-required",
                    (Some(_), None) => "missing",
                    (Some(w), Some(s)) if w == s => "ok",
                    (Some(_), Some(_)) => "wrong",
                };
                println!("{}", serde_json::json!({"connect": target, "proxy_auth": auth}));
                if auth == "missing" || auth == "wrong" {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"demo\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(target.as_str()).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n").await;
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_ok()
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
            });
        }
    });
}
