//! The internal-address check (server-side request forgery): a route's
//! host is dialled at what its DNS answer says only when that is a global
//! address, or a network `upstream.allow_internal` lists. Loopback stands
//! in for every internal address here: `localhost` is a name the system
//! resolver answers with 127.0.0.1, as an attacker's `evil.example-cloud.com`
//! could; IP literals matched only by a wildcard go through the same check
//! without any resolver. Every way the proxy dials is tried: HTTPS
//! interception (HTTP/1.1 and 2), WebSocket, plain HTTP, passthrough.

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bot_bottle_egress::config::{CaMaterial, ProxyConfig};
use bot_bottle_egress::BottleCa;
use bot_bottle_plugin_api::EgressRoute;
use bytes::Bytes;
use harness::*;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The standard test config with `routes` and `passthrough` instead of its
/// own, no `resolve` overrides, and a bottle CA for those hosts.
fn cfg_with(
    pki: &TestPki,
    audit: &Path,
    routes: Vec<EgressRoute>,
    passthrough: &[&str],
    allow_internal: &[&str],
) -> ProxyConfig {
    let mut c = config(pki, "127.0.0.1:9".parse().unwrap(), audit);
    c.upstream.resolve.clear();
    c.upstream.allow_internal = allow_internal.iter().map(|n| n.parse().unwrap()).collect();
    c.routes = routes;
    c.tls_passthrough = passthrough.iter().map(|s| s.to_string()).collect();
    let hosts: Vec<String> = c
        .routes
        .iter()
        .map(|r| r.host.clone())
        .filter(|h| h.parse::<std::net::IpAddr>().is_err() && !h.starts_with("*."))
        .collect();
    let ca = BottleCa::generate("bb-test", &hosts).unwrap();
    c.ca = CaMaterial {
        cert_pem: ca.cert_pem,
        key_pem: ca.key_pem,
    };
    c
}

/// A route for `host` on `port` injecting the Bearer token.
fn route(host: &str, port: u16, plain_http: bool) -> EgressRoute {
    let mut r = EgressRoute::allow(host);
    r.ports = vec![port];
    r.plain_http = plain_http;
    r.inject = vec![inject("Authorization", "Bearer {token}")];
    r
}

/// A plain-HTTP upstream that counts the requests it receives.
async fn plain_upstream() -> (SocketAddr, Arc<Mutex<usize>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(0));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    *seen.lock().unwrap() += 1;
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"plain ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One absolute-form plain-HTTP GET through the proxy: (head, body).
async fn plain_get(proxy: SocketAddr, authority: &str) -> (String, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(
        format!(
            "GET http://{authority}/x HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut all = String::new();
    tokio::time::timeout(HANG, s.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    (head.to_string(), body.to_string())
}

/// The response body after a head already read from `s`.
async fn rest(s: &mut TcpStream, head: &str) -> String {
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).await.unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

/// The audit lines that refused a dial for `host`.
fn refusals(audit: &Path, host: &str) -> Vec<serde_json::Value> {
    audit_lines(audit)
        .into_iter()
        .filter(|l| l["decision"] == "internal_address" && l["host"] == host)
        .collect()
}

/// The audit line of the one refusal of `host`, checked: status 403, the
/// address and its class named, and the key that would allow it.
fn one_refusal(audit: &Path, host: &str, addr: &str, class: &str) {
    let lines = refusals(audit, host);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["status"], 403, "{l}");
    // Nothing was sent, so nothing was injected.
    assert_eq!(l["injected"], false, "{l}");
    let note = l["note"].as_str().unwrap();
    assert!(
        note.contains(addr) && note.contains(class) && note.contains("allow_internal"),
        "{note}"
    );
    assert!(!audit_text(audit).contains(CANARY));
}

/// A proxy with one route for `localhost` on `port` (plain HTTP or not),
/// no `resolve`, nothing allowed: (proxy, bottle CA, audit file, its dir).
fn localhost_proxy(
    pki: &TestPki,
    port: u16,
    plain_http: bool,
    passthrough: &[&str],
) -> (SocketAddr, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = cfg_with(
        pki,
        &audit,
        vec![route("localhost", port, plain_http)],
        passthrough,
        &[],
    );
    let ca = cfg.ca.cert_pem.clone();
    (start_proxy(cfg), ca, audit, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_name_resolving_to_loopback_is_refused_inside_the_tunnel() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let port = up.addr.port();
    let authority = format!("localhost:{port}");
    for h2 in [false, true] {
        let (proxy, bottle_ca, audit, _dir) = localhost_proxy(&pki, port, false, &[]);
        let got = send(
            proxy,
            &authority,
            "localhost",
            &bottle_ca,
            h2,
            get(&format!("https://{authority}/v1/x"), &authority, h2),
        )
        .await;
        assert_eq!(got.status, 403, "h2={h2}: {got:?}");
        for want in ["localhost", "loopback", "allow_internal", "resolve"] {
            assert!(got.body.contains(want), "{want} missing: {}", got.body);
        }
        // The address goes to the audit log, not to the agent.
        assert!(!got.body.contains("127.0.0.1"), "{}", got.body);
        one_refusal(&audit, "localhost", "127.0.0.1", "loopback");
    }
    assert!(
        up.seen().is_empty(),
        "the upstream was reached: {:?}",
        up.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_to_a_name_resolving_to_loopback_is_refused_at_the_upgrade() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let port = up.addr.port();
    let authority = format!("localhost:{port}");
    let (proxy, bottle_ca, audit, _dir) = localhost_proxy(&pki, port, false, &[]);
    let (st, _, tcp) = connect(proxy, &authority).await;
    assert_eq!(st, 200);
    let t = tls(tcp, "localhost", &bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let r = tokio::time::timeout(
        HANG,
        tokio_tungstenite::client_async(format!("wss://{authority}/ws"), t),
    )
    .await
    .unwrap();
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!("the WebSocket was not refused: {other:?}"),
    }
    assert!(
        up.seen().is_empty(),
        "the upstream was reached: {:?}",
        up.seen()
    );
    one_refusal(&audit, "localhost", "127.0.0.1", "loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_name_resolving_to_loopback_is_refused() {
    // No TLS name check here would stop the answer reaching the agent.
    let pki = test_pki();
    let (plain, plain_seen) = plain_upstream().await;
    let pport = plain.port();
    let (proxy, _, audit, _dir) = localhost_proxy(&pki, pport, true, &[]);
    let (head, body) = plain_get(proxy, &format!("localhost:{pport}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        body.contains("loopback") && body.contains("allow_internal"),
        "{body}"
    );
    assert!(!body.contains("127.0.0.1"), "{body}");
    assert_eq!(*plain_seen.lock().unwrap(), 0);
    one_refusal(&audit, "localhost", "127.0.0.1", "loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_tunnel_to_a_name_resolving_to_loopback_is_refused() {
    let pki = test_pki();
    let (plain, plain_seen) = plain_upstream().await;
    let pport = plain.port();
    let (proxy, _, audit, _dir) = localhost_proxy(&pki, pport, false, &["localhost"]);
    // Refused on the CONNECT itself, before any tunnel. (Passthrough is for
    // port 443 only; the refusal comes before anything listens there.)
    let (st, head, mut s) = connect(proxy, "localhost:443").await;
    assert_eq!(st, 403, "{head}");
    let body = rest(&mut s, &head).await;
    assert!(
        body.contains("loopback") && body.contains("allow_internal"),
        "{body}"
    );
    assert_eq!(*plain_seen.lock().unwrap(), 0);
    one_refusal(&audit, "localhost", "127.0.0.1", "loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_internal_lets_a_listed_network_through() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let (plain, plain_seen) = plain_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let port = up.addr.port();
    let pport = plain.port();
    // `localhost` may also answer ::1, which no listed network holds: it is
    // skipped, and 127.0.0.1 dialled.
    let cfg = cfg_with(
        &pki,
        &audit,
        vec![
            route("localhost", port, false),
            route("localhost", pport, true),
        ],
        &[],
        &["127.0.0.0/8"],
    );
    let bottle_ca = cfg.ca.cert_pem.clone();
    let proxy = start_proxy(cfg);
    let authority = format!("localhost:{port}");
    for h2 in [false, true] {
        let got = send(
            proxy,
            &authority,
            "localhost",
            &bottle_ca,
            h2,
            get(&format!("https://{authority}/v1/x"), &authority, h2),
        )
        .await;
        assert_eq!(got.status, 200, "h2={h2}: {got:?}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    let (head, body) = plain_get(proxy, &format!("localhost:{pport}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "plain ok");
    assert_eq!(*plain_seen.lock().unwrap(), 1);
    assert!(refusals(&audit, "localhost").is_empty());

    // Another network listed: loopback is still refused.
    let cfg = cfg_with(
        &pki,
        &audit,
        vec![route("localhost", pport, true)],
        &[],
        &["10.0.0.0/8", "fc00::/7"],
    );
    let proxy = start_proxy(cfg);
    let (head, _) = plain_get(proxy, &format!("localhost:{pport}")).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(*plain_seen.lock().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_a_wildcard_matches_are_checked_and_named_ones_are_not() {
    let pki = test_pki();
    let (plain, plain_seen) = plain_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let pport = plain.port();
    // `*.0.0.1` holds 127.0.0.1 and ::ffff:127.0.0.1: no resolver involved,
    // the literal itself is the address, and no route names it.
    let cfg = cfg_with(
        &pki,
        &audit,
        vec![route("*.0.0.1", pport, true)],
        &["*.169.254", "*.0.0.1"],
        &["169.254.0.0/16"],
    );
    let proxy = start_proxy(cfg);
    for authority in [
        format!("127.0.0.1:{pport}"),
        format!("[::ffff:127.0.0.1]:{pport}"),
    ] {
        let (head, body) = plain_get(proxy, &authority).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{authority}: {head}");
        assert!(body.contains("loopback"), "{body}");
    }
    assert_eq!(*plain_seen.lock().unwrap(), 0);
    // Cloud metadata, through a passthrough wildcard: refused before any
    // packet leaves, even with 169.254.0.0/16 allowed (it must be listed on
    // its own).
    let (st, head, mut s) = connect(proxy, "169.254.169.254:443").await;
    assert_eq!(st, 403, "{head}");
    let body = rest(&mut s, &head).await;
    assert!(
        body.contains("cloud metadata") && body.contains("169.254.169.254/32"),
        "{body}"
    );
    assert_eq!(refusals(&audit, "169.254.169.254").len(), 1);

    // A route that names the address itself is the user's choice, as a
    // `resolve` override is: dialled as named.
    let cfg = cfg_with(
        &pki,
        &audit,
        vec![route("127.0.0.1", pport, true)],
        &[],
        &[],
    );
    let proxy = start_proxy(cfg);
    let (head, body) = plain_get(proxy, &format!("127.0.0.1:{pport}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "plain ok");
    assert_eq!(*plain_seen.lock().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_override_to_an_internal_address_is_dialled() {
    // What every other test does (api.test -> 127.0.0.1), said once here.
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = config(&pki, up.addr, &audit);
    assert!(cfg.upstream.allow_internal.is_empty());
    let bottle_ca = cfg.ca.cert_pem.clone();
    let proxy = start_proxy(cfg);
    let got = send(
        proxy,
        "api.test:443",
        "api.test",
        &bottle_ca,
        false,
        get("https://api.test/v1/x", "api.test", false),
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_own_global_addresses_are_refused_unless_allowed() {
    // A sidecar in its own network namespace cannot tell the Docker host's
    // public address from any other; `bottle` lists the host's addresses
    // in `upstream.host_addresses`. 8.8.4.4 stands in for one: refused
    // before any packet leaves, so no route to it is needed.
    let pki = test_pki();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = cfg_with(&pki, &audit, vec![route("*.4.4", 8080, true)], &[], &[]);
    cfg.upstream.host_addresses = vec!["8.8.4.4".parse().unwrap()];
    let proxy = start_proxy(cfg);
    let (head, body) = plain_get(proxy, "8.8.4.4:8080").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(body.contains("proxy's own machine"), "{body}");
    let lines = refusals(&audit, "8.8.4.4");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0]["note"]
            .as_str()
            .unwrap()
            .contains("allow_internal"),
        "{}",
        lines[0]
    );
    // (Listed in allow_internal it is dialled: the unit test of
    // `AddrPolicy` shows it, without dialling a public address here.)
}
