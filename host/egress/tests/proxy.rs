//! The egress proxy end to end: real TLS, real sockets, loopback only.
//! Clients: the Rust client in `harness` (HTTP/1.1 and HTTP/2) and curl.

mod harness;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bot_bottle_egress::config::{DlpMode, ProxyConfig};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use harness::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

struct Fx {
    pki: TestPki,
    up: Upstream,
    proxy: SocketAddr,
    bottle_ca: String,
    audit: PathBuf,
    dir: tempfile::TempDir,
}

async fn fx_with(edit: impl FnOnce(&mut ProxyConfig)) -> Fx {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = config(&pki, up.addr, &audit);
    edit(&mut cfg);
    let bottle_ca = cfg.ca.cert_pem.clone();
    let proxy = start_proxy(cfg);
    Fx {
        pki,
        up,
        proxy,
        bottle_ca,
        audit,
        dir,
    }
}

async fn fx() -> Fx {
    fx_with(|_| {}).await
}

impl Fx {
    /// `req` through the proxy to `host:443` (CONNECT, TLS as `host`).
    async fn send<B>(&self, host: &str, h2: bool, req: Request<B>) -> Got
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        send(
            self.proxy,
            &format!("{host}:443"),
            host,
            &self.bottle_ca,
            h2,
            req,
        )
        .await
    }
}

fn no_canary_anywhere(fx: &Fx) {
    let audit = audit_text(&fx.audit);
    assert!(
        !audit.contains(CANARY),
        "the real token is in the audit log"
    );
}

async fn read_body_after_head(s: &mut TcpStream, head: &str) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_alpn_is_served_http_1_1() {
    // Node's https module offers no ALPN by default; HTTP/2 over TLS exists
    // only through ALPN, so such a client gets HTTP/1.1.
    let fx = fx().await;
    let (st, head, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200, "{head}");
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[])
        .await
        .expect("TLS without ALPN");
    assert_eq!(t.get_ref().1.alpn_protocol(), None);
    let resp = h1_send(t, get("https://api.test/v1/x", "api.test", false)).await;
    assert_eq!(resp.status(), 200);
    let seen = fx.up.seen().pop().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
}

/// An upstream that sends the injected credential back (an echo service,
/// an error page quoting the request) does not hand it to the agent: every
/// copy, in a header, the body (split across pieces, `/` escaped as JSON
/// encoders write it) or a trailer, is masked with `*` of its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_the_upstream_sends_back_is_masked() {
    use http_body_util::BodyExt;
    let fx = fx().await;
    let sent_back = format!("Bearer {CANARY}");
    // The token is masked; the scheme before it says nothing.
    let stars = format!("Bearer {}", "*".repeat(CANARY.len()));
    for h2 in [false, true] {
        let mut req = get("https://api.test/echo", "api.test", h2);
        req.headers_mut()
            .insert("accept-encoding", "gzip, br".parse().unwrap());
        req.headers_mut().insert("te", "trailers".parse().unwrap());
        let resp =
            send_for_response(fx.proxy, "api.test:443", "api.test", &fx.bottle_ca, h2, req).await;
        assert_eq!(resp.status(), 200);
        let (parts, body) = resp.into_parts();
        let got = body.collect().await.unwrap();
        let trailers = got.trailers().cloned();
        let text = String::from_utf8_lossy(&got.to_bytes()).into_owned();
        let what = format!("h2 {h2}");
        assert!(!text.contains(CANARY), "{what}: {text}");
        assert_eq!(
            text,
            format!(r#"{{"you sent":"{stars}","escaped":"{stars}"}}"#),
            "{what}: masked in place, nothing else changed"
        );
        assert_eq!(parts.headers["x-echo-auth"], stars.as_str(), "{what}");
        if h2 {
            let t = trailers.expect("trailers over HTTP/2");
            assert_eq!(t["x-echo-trailer"], stars.as_str());
        }
        // The upstream was asked for a body it can be searched in.
        let seen = fx.up.seen().pop().unwrap();
        assert_eq!(seen.header_all("accept-encoding"), vec!["identity"]);
        assert_eq!(seen.header_all("authorization"), vec![sent_back.clone()]);
    }
    // A route that injects nothing keeps the agent's accept-encoding.
    let mut req = get("https://other.test/open/x", "other.test", false);
    req.headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    let got = fx.send("other.test", false, req).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        fx.up.seen().pop().unwrap().header_all("accept-encoding"),
        vec!["gzip"]
    );
    // An upstream that compresses although asked not to: passed on, and
    // the audit line says a copy inside was not found.
    let req = get("https://api.test/echo?gzip", "api.test", false);
    let got = fx.send("api.test", false, req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["content-encoding"], "gzip");
    let lines = audit_lines(&fx.audit);
    let echoed: Vec<_> = lines.iter().filter(|l| l["path"] == "/echo").collect();
    assert_eq!(echoed.len(), 3, "{lines:?}");
    for l in &echoed[..2] {
        let note = l["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("the upstream sent back the route's credential"),
            "{l}"
        );
    }
    assert!(echoed[2]["note"]
        .as_str()
        .is_some_and(|n| n.contains("inside the encoded bytes was not found")));
    no_canary_anywhere(&fx);
}

/// An HTTP/1.1 upstream (the reason phrase is HTTP/1's) that quotes the
/// request in its reason phrase and a header's name, and sends the body as
/// it is while saying `content-encoding: none`: masked in all three; the
/// header is dropped (a name cannot be masked in place), and the audit line
/// says the body claimed an encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_sent_back_in_odd_places_is_masked() {
    use http_body_util::BodyExt;
    let pki = test_pki();
    let up = start_upstream_alpn(&pki, &[b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let cfg = config(&pki, up.addr, &audit);
    let bottle_ca = cfg.ca.cert_pem.clone();
    let proxy = start_proxy(cfg);
    let stars = format!("Bearer {}", "*".repeat(CANARY.len()));
    let lower = CANARY.to_ascii_lowercase();
    for h2 in [false, true] {
        let what = format!("h2 {h2}");
        let req = get("https://api.test/echo?quirks", "api.test", h2);
        let resp = send_for_response(proxy, "api.test:443", "api.test", &bottle_ca, h2, req).await;
        let (parts, body) = resp.into_parts();
        if !h2 {
            let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
            assert_eq!(
                reason.map(|r| r.as_bytes()),
                Some(stars.as_bytes()),
                "{what}"
            );
        }
        for (name, _) in &parts.headers {
            assert!(!name.as_str().contains(&lower), "{what}: header {name}");
        }
        assert_eq!(parts.headers["x-echo-auth"], stars.as_str(), "{what}");
        let text = body.collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8_lossy(&text),
            format!(r#"{{"you sent":"{stars}","escaped":"{stars}"}}"#),
            "{what}"
        );
    }
    let lines = audit_lines(&audit);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let note = l["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("came encoded although identity was asked for"),
            "{l}"
        );
        // Reason, header name, header value, body twice.
        assert!(note.contains("5 copies masked"), "{l}");
    }
    assert!(!audit_text(&audit).contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_over_http1_and_http2_and_strips_hop_by_hop() {
    let fx = fx().await;
    for h2 in [false, true] {
        let mut req = get("https://api.test/v1/models?x=1", "api.test", h2);
        let h = req.headers_mut();
        h.insert("authorization", "Bearer dummy-agent-token".parse().unwrap());
        h.append("authorization", "Basic second-copy".parse().unwrap());
        h.insert("proxy-authorization", "Basic bGVhazpsZWFr".parse().unwrap());
        if !h2 {
            h.insert("connection", "keep-alive, x-drop-me".parse().unwrap());
            h.insert("x-drop-me", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=300".parse().unwrap());
        }
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.body, "ok /v1/models?x=1");
        assert!(
            got.headers.get("keep-alive").is_none(),
            "hop-by-hop header came back: {got:?}"
        );
        let seen = fx.up.seen().pop().unwrap();
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {CANARY}")],
            "replaced, not merged"
        );
        assert!(seen.header_all("proxy-authorization").is_empty());
        assert!(seen.header_all("x-drop-me").is_empty());
        assert!(seen.header_all("keep-alive").is_empty());
        assert_eq!(
            seen.version, "HTTP/2.0",
            "upstream leg negotiates h2 by ALPN"
        );
        assert_eq!(seen.sni.as_deref(), Some("api.test"));
    }
    let lines = audit_lines(&fx.audit);
    let last = lines.last().unwrap();
    assert_eq!(last["decision"], "allow");
    assert_eq!(last["injected"], true);
    assert_eq!(
        last["injected_headers"],
        serde_json::json!(["Authorization"])
    );
    assert_eq!(last["route"], 0);
    assert_eq!(last["status"], 200);
    assert_eq!(last["path"], "/v1/models");
    assert_eq!(last["bottle"], "bb-test");
    no_canary_anywhere(&fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http1_and_http2() {
    if !have_curl() {
        return;
    }
    let fx = fx().await;
    let ca = fx.dir.path().join("bottle-ca.pem");
    std::fs::write(&ca, &fx.bottle_ca).unwrap();
    for (flag, want) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let mut curl = curl_via(fx.proxy, &ca);
        curl.args([
            flag,
            "-H",
            "Authorization: Bearer dummy",
            "-H",
            "Proxy-Authorization: Basic leak",
        ]);
        let stdout = curl_status(curl, "https://api.test/v1/curl", &format!("curl {flag}")).await;
        assert!(
            stdout.ends_with(&format!("200 {want}")),
            "curl {flag}: {stdout}"
        );
        assert!(stdout.starts_with("ok /v1/curl"), "{stdout}");
        let seen = fx.up.seen().pop().unwrap();
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {CANARY}")]
        );
        assert!(seen.header_all("proxy-authorization").is_empty());
    }
    // Denied host: curl reports the proxy's 403 on CONNECT.
    let out = curl_via(fx.proxy, &ca)
        .args(["-w", "%{http_connect}", "https://evil.test/"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    no_canary_anywhere(&fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_mismatch_never_gets_the_token() {
    let fx = fx().await;
    // Host of an injected host inside a CONNECT to another allowed host.
    for h2 in [false, true] {
        let req = get("https://api.test/v1/steal", "api.test", h2);
        let got = fx.send("other.test", h2, req).await;
        assert_eq!(got.status, 421, "{got:?}");
    }
    // Same host, another port.
    let req = get("https://api.test:8443/open", "api.test:8443", false);
    let got = fx.send("api.test", false, req).await;
    assert_eq!(got.status, 421);
    // SNI differs from the CONNECT target: no certificate, no tunnel.
    let (st, _, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200);
    assert!(tls(tcp, "other.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .is_err());
    for s in fx.up.seen() {
        assert!(
            s.header_all("authorization").is_empty(),
            "upstream got a credential: {s:?}"
        );
    }
    assert!(fx.up.seen().iter().all(|s| s.path != "/v1/steal"));
    let lines = audit_lines(&fx.audit);
    assert!(
        lines
            .iter()
            .filter(|l| l["decision"] == "identity_mismatch")
            .count()
            >= 3,
        "{lines:?}"
    );
    no_canary_anywhere(&fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_by_default() {
    let fx = fx().await;
    // Unknown host: 403 naming the host and the manifest key.
    let (st, head, mut s) = connect(fx.proxy, "evil.test:443").await;
    assert_eq!(st, 403);
    let body = read_body_after_head(&mut s, &head).await;
    assert!(
        body.contains("evil.test") && body.contains("[[egress.route]]"),
        "{body}"
    );
    // A port out of range is no port, not the default one.
    let (st, head, _) = connect(fx.proxy, "api.test:99999").await;
    assert_eq!(st, 400, "{head}");
    // Path prefix, on the normalised path.
    for (path, want) in [
        ("/open/x", 200),
        ("/open//x", 200),
        ("/closed", 403),
        ("/open/../closed", 403),
        ("/open/%2e%2e/closed", 403),
        ("/open/%2E%2E%2Fclosed", 403),
        ("/open/%252e%252e/closed", 403),
        ("/open/%25%32%65%25%32%65/closed", 403),
        ("/open/..%5cclosed", 403),
        ("/openly", 403),
        // The path goes upstream as sent: a server that resolves no dot
        // segments and decodes nothing (Express) routes these to /closed.
        ("/closed/../open/x", 403),
        ("/closed/%2e%2e/open/x", 403),
        ("/closed%2f..%2fopen/x", 403),
        ("/closed/x/..%2f..%2fopen", 403),
        ("//open//x", 403),
        // `;parameters`: Tomcat and Spring strip them, most servers do not.
        ("/open/..;/closed", 403),
        ("/open;jsessionid=1/x", 403),
        ("/open/x;v=1", 200),
        // What lenient decoders read as dots and separators.
        ("/open/%c0%ae%c0%ae/closed", 403),
        ("/open/%u002e%u002e/closed", 403),
        ("/open/%ef%bc%8e%ef%bc%8e/closed", 403),
        ("/open/caf%C3%A9", 200),
    ] {
        let req = get(&format!("https://other.test{path}"), "other.test", false);
        let got = fx.send("other.test", false, req).await;
        assert_eq!(got.status, want, "{path}: {got:?}");
        if want == 403 {
            assert!(got.body.contains("[[egress.route]]"), "{}", got.body);
        }
    }
    assert!(fx.up.seen().iter().all(|s| !s.path.contains("closed")));
    // TRACE.
    let mut req = get("https://api.test/", "api.test", false);
    *req.method_mut() = http::Method::TRACE;
    let got = fx.send("api.test", false, req).await;
    assert_eq!(got.status, 405);
    // Whatever its case (some servers read methods so), and IIS's TRACK.
    for m in ["trace", "Trace", "TRACK"] {
        let h2 = m == "Trace";
        let mut req = get("https://api.test/t", "api.test", h2);
        *req.method_mut() = http::Method::from_bytes(m.as_bytes()).unwrap();
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 405, "{m}: {got:?}");
    }
    assert!(fx.up.seen().iter().all(|s| s.path != "/t"));
    // Methods on a wildcard route.
    let mut req = get("https://a.wild.test/x", "a.wild.test", true);
    *req.method_mut() = http::Method::POST;
    let got = fx.send("a.wild.test", true, req).await;
    assert_eq!(got.status, 403);
    let got = fx
        .send("a.wild.test", true, get("https://a.wild.test/x", "", true))
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        fx.up.seen().pop().unwrap().header_all("x-api-key"),
        vec![CANARY.to_string()]
    );
    // A method-override header asks for another method: it must be allowed
    // too (a GET-only route), and never TRACE.
    for (host, query, name, value, want) in [
        ("a.wild.test", "", "x-http-method-override", "DELETE", 403),
        ("a.wild.test", "", "x-http-method", "get", 200),
        ("a.wild.test", "", "x-http-method", "GET, DELETE", 403),
        // CGI-style servers (Puma, WEBrick, PHP's) read `_` in a header's
        // name as `-`: Rack's MethodOverride takes these.
        ("a.wild.test", "", "x_http_method_override", "DELETE", 403),
        ("a.wild.test", "", "x-http_method-override", "DELETE", 403),
        ("a.wild.test", "", "x_method_override", "DELETE", 403),
        ("a.wild.test", "", "x_http_method", "GET", 200),
        ("a.wild.test", "?a=1&_method=DELETE", "x-none", "", 403),
        // Frameworks percent-decode the parameter's name and value.
        ("a.wild.test", "?a=1&%5Fmethod=DELETE", "x-none", "", 403),
        ("a.wild.test", "?_method=DEL%45TE", "x-none", "", 403),
        ("a.wild.test", "?_method=G%45T", "x-none", "", 200),
        // And as PHP names `$_GET`'s keys (Symfony, Laravel).
        ("a.wild.test", "?.method=DELETE", "x-none", "", 403),
        ("a.wild.test", "?+_method=DELETE", "x-none", "", 403),
        ("a.wild.test", "?_method%00x=DELETE", "x-none", "", 403),
        ("api.test", "", "x-method-override", "TRACE", 403),
    ] {
        let mut req = get(&format!("https://{host}/override{query}"), "", true);
        req.headers_mut().insert(name, value.parse().unwrap());
        let got = send(
            fx.proxy,
            &format!("{host}:443"),
            host,
            &fx.bottle_ca,
            true,
            req,
        )
        .await;
        assert_eq!(got.status, want, "{host} {name}: {value}: {got:?}");
    }
    assert_eq!(
        fx.up
            .seen()
            .iter()
            .filter(|s| s.path == "/override")
            .count(),
        2
    );
    // Plain HTTP to a route without plain_http; a request to the proxy itself.
    for (raw, want) in [
        (
            "GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "403",
        ),
        ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "400"),
    ] {
        let mut s = TcpStream::connect(fx.proxy).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want}")),
            "{raw:?} -> {head}"
        );
    }
    let lines = audit_lines(&fx.audit);
    assert!(lines
        .iter()
        .any(|l| l["decision"] == "deny" && l["host"] == "evil.test"));
    no_canary_anywhere(&fx);
}

/// A `resolve` key is read as hosts are everywhere else (case, trailing
/// dot): `API.Test.` pins api.test, and the name's own DNS answer is not
/// dialled instead with the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_key_pins_its_host_whatever_its_spelling() {
    let fx = fx_with(|c| {
        let up = c.upstream.resolve.remove("api.test").unwrap();
        c.upstream.resolve.insert("API.Test.".into(), up);
    })
    .await;
    for h2 in [false, true] {
        let req = get("https://api.test/v1/pinned", "api.test", h2);
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 200, "{got:?}");
        let seen = fx.up.seen().pop().unwrap();
        assert_eq!(seen.path, "/v1/pinned");
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {CANARY}")]
        );
    }
    no_canary_anywhere(&fx);
}

/// A CONNECT whose host is no host name (a `*.suffix` route matches
/// `*.wild.test`, `a..wild.test` and `[x:y.wild.test]` as text) is refused
/// before a route is matched or a certificate minted: `*.wild.test` got a
/// wildcard leaf from the bottle CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_no_host_name_is_refused_before_any_certificate() {
    let fx = fx().await;
    for target in [
        "*.wild.test:443",
        "a..wild.test:443",
        "..wild.test:443",
        "[x:y.wild.test]:443",
        "[x%41.wild.test]:443",
        "[fe80::1%25lo.wild.test]:443",
        "0x7f.0.0.1:443",
        ":443",
        // User information is no part of a CONNECT target.
        "evil.test@api.test:443",
    ] {
        let (st, _, _) = connect(fx.proxy, target).await;
        assert_eq!(st, 400, "{target}");
    }
    // Names, any spelling, and IP literals are still read as before.
    let (st, _, _) = connect(fx.proxy, "A.Wild.Test.:443").await;
    assert_eq!(st, 200);
    let (st, _, _) = connect(fx.proxy, "[::1]:443").await;
    assert_eq!(st, 403);
    assert!(fx.up.seen().is_empty());
    let cfg = config(&fx.pki, fx.up.addr, &fx.audit);
    assert!(bot_bottle_egress::host_admitted(&cfg, "A.wild.test."));
    for url in [
        "https://*.wild.test/",
        "https://a..wild.test/",
        "https://[x:y.wild.test]/",
    ] {
        let d = bot_bottle_egress::check(&cfg, "GET", url);
        assert!(!d.allowed && d.reason.contains("host name"), "{url}: {d}");
        let host = url.trim_start_matches("https://").trim_end_matches('/');
        assert!(!bot_bottle_egress::host_admitted(&cfg, host), "{host}");
    }
    // `check` reads the port as the proxy does: no default for `:99999`.
    let d = bot_bottle_egress::check(&cfg, "GET", "https://api.test:99999/");
    assert!(!d.allowed && d.reason.contains("port"), "{d}");
    assert!(bot_bottle_egress::check(&cfg, "GET", "https://api.test:0443/").allowed);
}

/// Headers that name another host or path to servers behind a trusted
/// proxy (Rack's `request.host` takes `X-Forwarded-Host`) never reach the
/// upstream, in either spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_naming_another_host_are_dropped() {
    let fx = fx().await;
    for h2 in [false, true] {
        let mut req = get("https://api.test/names", "api.test", h2);
        for (n, v) in [
            ("x-forwarded-host", "admin.internal.test"),
            ("x_forwarded_host", "admin.internal.test"),
            ("forwarded", "host=admin.internal.test"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("x-forwarded-prefix", "/admin"),
            ("content_length", "0"),
            ("transfer_encoding", "chunked"),
            ("x-keep", "1"),
        ] {
            req.headers_mut().append(n, v.parse().unwrap());
        }
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 200, "{got:?}");
        let seen = fx.up.seen().pop().unwrap();
        for n in [
            "x-forwarded-host",
            "x_forwarded_host",
            "forwarded",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-prefix",
            "content_length",
            "transfer_encoding",
        ] {
            assert!(
                seen.header_all(n).is_empty(),
                "h2 {h2}: {n} reached upstream"
            );
        }
        assert_eq!(seen.header_all("x-keep"), vec!["1".to_string()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_passed_back_not_followed() {
    let fx = fx().await;
    let got = fx
        .send(
            "api.test",
            false,
            get("https://api.test/redirect", "api.test", false),
        )
        .await;
    assert_eq!(got.status, 302);
    assert_eq!(got.headers["location"], "https://other.test/landing");
    let seen = fx.up.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen.iter().all(|s| s.path != "/landing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_first_event_arrives_before_upstream_finishes() {
    let fx = fx().await;
    for h2 in [false, true] {
        let (st, _, tcp) = connect(fx.proxy, "api.test:443").await;
        assert_eq!(st, 200);
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let t = tls(tcp, "api.test", &fx.bottle_ca, alpn).await.unwrap();
        let resp = send_on(t, h2, get("https://api.test/sse", "api.test", h2)).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // The upstream holds the second event until we release it: if the
        // proxy buffered, this read would never complete (hang guard only).
        let first = tokio::time::timeout(HANG, body.frame())
            .await
            .expect("first SSE event did not arrive while upstream was still open")
            .unwrap()
            .unwrap();
        assert_eq!(first.data_ref().unwrap().as_ref(), b"data: first\n\n");
        fx.up.release.notify_one();
        let rest = tokio::time::timeout(HANG, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest.as_ref(), b"data: second\n\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http1_upgrade_gets_the_token() {
    let fx = fx().await;
    let (st, _, tcp) = connect(fx.proxy, "ws.test:443").await;
    assert_eq!(st, 200);
    let t = tls(tcp, "ws.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        "wss://ws.test/backend-api/codex/responses",
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer dummy".parse().unwrap());
    let (mut ws, resp) = tokio::time::timeout(HANG, tokio_tungstenite::client_async(req, t))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echo = tokio::time::timeout(HANG, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "hello");
    let seen = ws_upgrade_seen(&fx);
    assert_eq!(seen.path, "/backend-api/codex/responses");
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    assert_eq!(seen.header_all("upgrade"), vec!["websocket".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    let fx = fx().await;
    let mut s = h2_through(fx.proxy, "ws.test", &fx.bottle_ca).await;
    // One ordinary request first, so the server's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) have arrived.
    let r = s
        .send_request(get("https://ws.test/warm", "", true))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut ws = h2_websocket(
        &mut s,
        "https://ws.test/backend-api/codex/responses",
        Some("Bearer dummy"),
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    let echo = tokio::time::timeout(HANG, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "over h2");
    let seen = ws_upgrade_seen(&fx);
    assert_eq!(seen.path, "/backend-api/codex/responses");
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
}

/// A credential the upstream sends back over a WebSocket is masked before
/// the agent gets it: in a message, in a message sent in 3-byte frames with
/// a ping holding it among them, and in the close frame's reason. Each
/// keeps its length and all else; the audit line counts the copies. Over
/// HTTP/1.1 and HTTP/2, with DLP on and off: compression is not let on
/// either way, so the frames stay readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_the_upstream_sends_back_over_a_websocket_is_masked() {
    let stars = "*".repeat(CANARY.len());
    for mode in [DlpMode::Log, DlpMode::Off] {
        let fx = fx_with(|c| c.dlp.mode = mode).await;
        for h2 in [false, true] {
            let what = format!("DLP {mode:?}, h2 {h2}");
            if h2 {
                let mut s = h2_through(fx.proxy, "ws.test", &fx.bottle_ca).await;
                let r = s
                    .send_request(get("https://ws.test/warm", "", true))
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let ws = h2_websocket(&mut s, "https://ws.test/socket", None).await;
                sent_back_masked(ws, &stars, &what).await;
                // The subprotocol the upstream's 101 names reaches the
                // agent: masked too.
                let mut req = Request::builder()
                    .method("CONNECT")
                    .uri("https://ws.test/socket")
                    .header("sec-websocket-version", "13")
                    .header("sec-websocket-protocol", "echo-auth")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                req.extensions_mut()
                    .insert(hyper::ext::Protocol::from_static("websocket"));
                let resp = s.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(
                    resp.headers()["sec-websocket-protocol"],
                    format!("Bearer {stars}").as_str(),
                    "{what}"
                );
                drop(resp);
            } else {
                let (ws, st) = ws_through(&fx).await;
                assert_eq!(st, 101);
                assert!(
                    ws_upgrade_seen(&fx)
                        .header_all("sec-websocket-extensions")
                        .is_empty(),
                    "{what}: compression was let on"
                );
                sent_back_masked(ws, &stars, &what).await;
            }
        }
        let lines = tokio::time::timeout(HANG, async {
            loop {
                let lines: Vec<_> = audit_lines(&fx.audit)
                    .into_iter()
                    .filter(|l| l["host"] == "ws.test" && l["path"] != "/warm")
                    .collect();
                if lines.len() == 3 {
                    return lines;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("no audit lines for both sockets");
        let notes: Vec<&str> = lines.iter().map(|l| l["note"].as_str().unwrap()).collect();
        let counted = |copies: &str| {
            notes
                .iter()
                .filter(|n| {
                    n.contains(&format!(
                        "sent back the route's credential: {copies} masked"
                    ))
                })
                .count()
        };
        assert_eq!(
            (counted("4 copies"), counted("1 copy")),
            (2, 1),
            "{notes:?}"
        );
        assert!(!audit_text(&fx.audit).contains(CANARY));
    }
}

/// The audit line of a WebSocket the proxy stopped (here the agent sent
/// an unmasked frame: 1002) still says what the upstream sent back before:
/// the note saying why it was stopped used to replace the whole note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_websocket_still_counts_the_copies_masked() {
    let fx = fx().await;
    let (mut ws, st) = ws_through(&fx).await;
    assert_eq!(st, 101);
    ws.send(Message::text("whoami")).await.unwrap();
    let stars = "*".repeat(CANARY.len());
    assert_eq!(
        ws_next(&mut ws).await.into_text().unwrap().as_str(),
        format!("you are Bearer {stars}")
    );
    // A text frame "hi", unmasked: a client must mask.
    ws.get_mut()
        .write_all(&[0x81, 2, b'h', b'i'])
        .await
        .unwrap();
    ws.get_mut().flush().await.unwrap();
    let note = tokio::time::timeout(HANG, async {
        loop {
            let line = audit_lines(&fx.audit)
                .into_iter()
                .find(|l| l["host"] == "ws.test" && l["status"] == 101);
            if let Some(l) = line {
                return l["note"].as_str().unwrap_or_default().to_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no audit line for the socket");
    assert!(note.contains("1002"), "{note}");
    assert!(
        note.contains("sent back the route's credential: 1 copy masked"),
        "{note}"
    );
}

/// Asks the upstream on `ws` to send back the credential it got every way
/// it knows (harness `ws_sends_back`), and checks each came masked.
async fn sent_back_masked<S>(mut ws: tokio_tungstenite::WebSocketStream<S>, stars: &str, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let masked = format!("you are Bearer {stars}");
    ws.send(Message::text("whoami")).await.unwrap();
    assert_eq!(
        ws_next(&mut ws).await.into_text().unwrap().as_str(),
        masked,
        "{what}"
    );
    ws.send(Message::text("whoami-split")).await.unwrap();
    let ping = ws_next(&mut ws).await;
    assert_eq!(
        ping,
        Message::Ping(format!("ping Bearer {stars}").into()),
        "{what}"
    );
    assert_eq!(
        ws_next(&mut ws).await.into_text().unwrap().as_str(),
        masked,
        "{what}"
    );
    ws.send(Message::text("whoami-close")).await.unwrap();
    let Message::Close(Some(close)) = ws_next(&mut ws).await else {
        panic!("{what}: no close frame");
    };
    assert_eq!(
        close.reason.as_str(),
        format!("bad Bearer {stars}"),
        "{what}"
    );
    while let Ok(Some(Ok(_))) = tokio::time::timeout(HANG, ws.next()).await {}
}

/// The next message on `ws`, within `HANG`.
async fn ws_next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(HANG, ws.next())
        .await
        .expect("no message in time")
        .expect("the socket ended")
        .expect("the socket failed")
}

/// A passthrough host is tunnelled on 443 only: the tunnel's contents are
/// the agent's own, so on any port it would reach every service the host's
/// address listens on (the resolve override here sends every port of
/// pass.test to the upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_for_port_443_only() {
    let fx = fx().await;
    for port in [8443, 22, 80] {
        let (st, head, _) = connect(fx.proxy, &format!("pass.test:{port}")).await;
        assert_eq!(st, 403, "port {port}: {head}");
    }
    assert!(fx.up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_a_plain_tunnel() {
    let fx = fx().await;
    let (st, _, tcp) = connect(fx.proxy, "pass.test:443").await;
    assert_eq!(st, 200);
    // Trusting only the upstream's own CA works: nothing was decrypted.
    let t = tls(tcp, "pass.test", &fx.pki.ca_pem, &[b"http/1.1"])
        .await
        .expect("end-to-end TLS");
    let mut req = get("https://pass.test/p", "pass.test", false);
    req.headers_mut()
        .insert("authorization", "Bearer dummy".parse().unwrap());
    let r = h1_send(t, req).await;
    assert_eq!(r.status(), 200);
    let seen = fx.up.seen().pop().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        vec!["Bearer dummy".to_string()]
    );
    // The audit line is written when the tunnel closes.
    let line = tokio::time::timeout(HANG, async {
        loop {
            if let Some(l) = audit_lines(&fx.audit)
                .into_iter()
                .find(|l| l["decision"] == "passthrough")
            {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(line["host"], "pass.test");
    assert_eq!(line["injected"], false);
    // A hello for another name inside a passthrough tunnel (domain
    // fronting) is refused before anything reaches upstream.
    let before = fx.up.seen().len();
    let (st, _, tcp) = connect(fx.proxy, "pass.test:443").await;
    assert_eq!(st, 200);
    assert!(tls(tcp, "api.test", &fx.pki.ca_pem, &[b"http/1.1"])
        .await
        .is_err());
    assert_eq!(fx.up.seen().len(), before);
    tokio::time::timeout(HANG, async {
        while !audit_lines(&fx.audit)
            .iter()
            .any(|l| l["decision"] == "identity_mismatch" && l["host"] == "pass.test")
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no identity_mismatch line for the fronted passthrough");
}

/// A minimal CONNECT proxy standing in for a corporate proxy or pipelock.
async fn chain_proxy() -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let (addr, n, targets, _) = chain_proxy_wanting(None).await;
    (addr, n, targets)
}

/// [`chain_proxy`], answering 407 unless a CONNECT carries
/// `Proxy-Authorization: want` (when `want` is given). Also returns every
/// `Proxy-Authorization` value it was sent (`None` for a CONNECT without).
#[allow(clippy::type_complexity)]
async fn chain_proxy_wanting(
    want: Option<String>,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<Option<String>>>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let targets = Arc::new(Mutex::new(Vec::new()));
    let auths = Arc::new(Mutex::new(Vec::new()));
    let (n2, t2, a2) = (n.clone(), targets.clone(), auths.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (n, targets, auths, want) = (n2.clone(), t2.clone(), a2.clone(), want.clone());
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let target = head.split(' ').nth(1).unwrap_or("").to_string();
                let auth = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("proxy-authorization")
                        .then(|| v.trim().to_string())
                });
                n.fetch_add(1, Ordering::SeqCst);
                targets.lock().unwrap().push(target.clone());
                auths.lock().unwrap().push(auth.clone());
                if want.is_some() && auth != want {
                    let _ = s
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut up) = TcpStream::connect(target.as_str()).await else {
                    return;
                };
                s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    (addr, n, targets, auths)
}

/// `GET https://chain.test/c` through the proxy of `fx`.
async fn get_chain_test(fx: &Fx, h2: bool) -> Got {
    let host = if h2 { "" } else { "chain.test" };
    fx.send("chain.test", h2, get("https://chain.test/c", host, h2))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_proxy_that_wants_credentials_gets_them_on_connect_only() {
    // The password is the canary: it must reach the chained proxy and
    // nothing else (not the upstream, not the audit log, not the agent).
    let userpass = format!("corp-user:{CANARY}");
    let want = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &userpass)
    );
    let (chain, _, _, auths) = chain_proxy_wanting(Some(want.clone())).await;
    let fx = fx_with(|c| {
        c.upstream.proxy = Some(format!("http://{chain}"));
        c.upstream.proxy_auth_ref = Some("CORP_PROXY_AUTH".into());
        c.tokens.insert(
            "CORP_PROXY_AUTH".into(),
            bot_bottle_plugin_api::Secret::new(userpass.clone()),
        );
    })
    .await;
    let got = get_chain_test(&fx, true).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(*auths.lock().unwrap(), [Some(want)]);
    let seen = fx.up.seen().pop().unwrap();
    assert!(seen.header_all("proxy-authorization").is_empty());
    assert!(!format!("{seen:?}").contains("corp-user"), "{seen:?}");
    no_canary_anywhere(&fx);

    // Without the credential: the agent gets a 502 that says why and what
    // to set, and the proxy chained to never sees a guess.
    let (chain, _, _, auths) = chain_proxy_wanting(Some("Basic x".into())).await;
    let fx = fx_with(|c| c.upstream.proxy = Some(format!("http://{chain}"))).await;
    let got = get_chain_test(&fx, false).await;
    assert_eq!(got.status, 502, "{got:?}");
    assert!(got.body.contains("407"), "{}", got.body);
    assert!(got.body.contains("upstream_proxy_auth_ref"), "{}", got.body);
    assert_eq!(*auths.lock().unwrap(), [None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_through_an_upstream_proxy() {
    let (chain, n, targets) = chain_proxy().await;
    let fx = fx_with(|c| c.upstream.proxy = Some(format!("http://{chain}"))).await;
    let got = get_chain_test(&fx, true).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert!(n.load(Ordering::SeqCst) >= 1);
    assert_eq!(targets.lock().unwrap()[0], fx.up.addr.to_string());
    let seen = fx.up.seen().pop().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    assert_eq!(seen.sni.as_deref(), Some("chain.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_pass_intact_and_are_scanned() {
    let fx = fx().await;
    let plain = b"{\"input\":\"leak ghp_abcdefghijklmnopqrstuvwxyz0123456789 please\"}".repeat(50);
    let zst =
        ruzstd::encoding::compress_to_vec(&plain[..], ruzstd::encoding::CompressionLevel::Fastest);
    for h2 in [false, true] {
        let mut req = get("https://api.test/v1/responses", "api.test", h2);
        *req.method_mut() = http::Method::POST;
        req.headers_mut()
            .insert("content-encoding", "zstd".parse().unwrap());
        req.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        *req.body_mut() = Full::new(Bytes::from(zst.clone()));
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 200, "{got:?}");
        let seen = fx.up.seen().pop().unwrap();
        assert_eq!(seen.body, zst, "body altered");
        assert_eq!(
            seen.header_all("content-encoding"),
            vec!["zstd".to_string()]
        );
    }
    let lines = audit_lines(&fx.audit);
    let last = lines.last().unwrap();
    assert_eq!(last["dlp"], serde_json::json!(["github-pat"]), "{last}");
    assert_eq!(last["bytes_out"], zst.len());
}

/// Bytes that do not compress (xorshift), as text.
fn noise(n: usize, mut x: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        })
        .collect()
}

/// A POST whose body goes out as the given frames (each a chunk on
/// HTTP/1.1, DATA frames on HTTP/2).
/// `dlp.max_body_bytes` of [`block_fx`]: small, so tests go past it cheaply.
const BLOCK_CAP: usize = 64 * 1024;

/// The standard fixture with DLP in `block` mode and a [`BLOCK_CAP`] cap.
async fn block_fx() -> Fx {
    fx_with(|c| {
        c.dlp.mode = DlpMode::Block;
        c.dlp.max_body_bytes = BLOCK_CAP;
    })
    .await
}

/// Polls `f` every 20 ms until it gives a value; panics with `what` after
/// [`HANG`] (a hang guard, never a timing).
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(HANG, async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"))
}

async fn post_frames(fx: &Fx, h2: bool, headers: &[(&str, &str)], frames: Vec<Vec<u8>>) -> Got {
    post_frames_to(fx, h2, "/v1/big", headers, frames).await
}

/// [`post_frames`] to another path of `api.test`: a test sending many
/// requests tells the upstream's records of each apart by it (a request
/// that broke off may be recorded after the next one was sent).
async fn post_frames_to(
    fx: &Fx,
    h2: bool,
    path: &str,
    headers: &[(&str, &str)],
    frames: Vec<Vec<u8>>,
) -> Got {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let frames = frames
        .into_iter()
        .map(|f| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(f))));
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let mut b = Request::post(if h2 {
        format!("https://api.test{path}")
    } else {
        path.to_string()
    });
    if !h2 {
        b = b.header("host", "api.test");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body).unwrap();
    fx.send("api.test", h2, req).await
}

/// A form's `_method` field asks Rails, Laravel, Symfony and Spring for
/// another method: on a route that allows `POST` but not `DELETE`, a `POST`
/// whose form says `_method=DELETE` is refused before any of it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forms_method_field_must_name_a_method_the_route_allows() {
    const CAP: usize = 4096;
    let fx = fx_with(|c| {
        c.routes[0].methods = vec!["GET".into(), "POST".into()];
        c.dlp.max_body_bytes = CAP;
    })
    .await;
    let form = ("content-type", "application/x-www-form-urlencoded");
    let json = ("content-type", "application/json; charset=utf-8");
    let big_form = format!("_method=POST&pad={}", "a".repeat(CAP));
    // Past the cap, JSON is read as it streams: `_method` last (Laravel
    // and Express take the last of two) stops it before its end is sent.
    let big_json = format!(r#"{{"pad":"{}","_method":"POST"}}"#, "a".repeat(3 * CAP));
    let big_json_delete = big_json.replace("POST", "DELETE");
    // First: found while the DLP holds its prefix, before anything is sent.
    let delete_first = format!(r#"{{"_method":"DELETE","pad":"{}"}}"#, "a".repeat(3 * CAP));
    let gzip = ("content-encoding", "gzip");
    for h2 in [false, true] {
        for (case, (headers, body, want)) in [
            (vec![form], "title=x&_method=DELETE", 403),
            (vec![form], "%5Fmethod=PATCH", 403),
            // PHP's name for `.method` is `_method`.
            (vec![form], ".method=DELETE", 403),
            (vec![form], "_method=post&title=x", 200),
            (vec![form], "_method=GET,%20DELETE", 403),
            // Rack reads a POST without a content-type as a form.
            (vec![], "_method=DELETE", 403),
            (vec![json], r#"{"title":"x","_method":"DELETE"}"#, 403),
            (vec![json], r#"{"title":{"_method":"DELETE"}}"#, 200),
            // Not a body any framework reads a form from.
            (vec![("content-type", "text/plain")], "_method=DELETE", 200),
            // Too big to read whole: a form is refused, JSON is read as it goes.
            (vec![form], big_form.as_str(), 413),
            (vec![json], big_json.as_str(), 200),
            (vec![json], big_json_delete.as_str(), 403),
            (vec![json], delete_first.as_str(), 403),
            // Express decodes a compressed form before it reads it.
            (vec![form, gzip], "_method=DELETE", 403),
            (vec![form, gzip], "_method=POST", 200),
            (vec![json, gzip], big_json.as_str(), 413),
            // Express decodes JSON in a charset this reader does not.
            (
                vec![("content-type", "application/json; charset=utf-16le")],
                "{}",
                415,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let path = format!("/v1/case/{case}/{h2}");
            let compressed = headers.contains(&gzip);
            let sent = if compressed {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(body.as_bytes()).unwrap();
                gz.finish().unwrap()
            } else {
                body.as_bytes().to_vec()
            };
            // In pieces, as a large body arrives.
            let frames = sent.chunks(3000).map(<[u8]>::to_vec).collect();
            let got = post_frames_to(&fx, h2, &path, &headers, frames).await;
            let what = format!("h2 {h2}, {headers:?}, {:.40}", body);
            assert_eq!(got.status, want, "{what}: {got:?}");
            let seen: Vec<_> = fx
                .up
                .seen()
                .into_iter()
                .filter(|s| s.path == path)
                .collect();
            if want == 200 {
                assert_eq!(seen.len(), 1, "{what}");
                assert_eq!(seen[0].body, sent, "{what}: body altered");
            } else if body == big_json_delete {
                // Stopped as it streamed: some of it went, never all.
                assert!(
                    seen.iter().all(|s| s.body.len() < sent.len()),
                    "{what}: the whole body reached upstream"
                );
                assert!(got.body.contains("_method"), "{what}: {}", got.body);
            } else {
                assert!(seen.is_empty(), "{what}: sent upstream");
                assert!(got.body.contains("_method"), "{what}: {}", got.body);
            }
        }
    }
    // A content-type that `Connection` lists never reaches the upstream,
    // which then reads the body as Rack reads one without a content-type:
    // as a form. So the body is read as that too, not as the JSON it says.
    for (listed, body, want) in [
        ("content-type", "_method=DELETE", 403),
        ("Content-Type, keep-alive", "_method=DELETE", 403),
        ("content-type", "_method=POST", 200),
    ] {
        let headers = [json, ("connection", listed)];
        let got = post_frames_to(
            &fx,
            false,
            "/v1/listed",
            &headers,
            vec![body.as_bytes().to_vec()],
        )
        .await;
        assert_eq!(got.status, want, "{listed}: {body}: {got:?}");
    }
    let seen: Vec<_> = fx
        .up
        .seen()
        .into_iter()
        .filter(|s| s.path == "/v1/listed")
        .collect();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].header_all("content-type").is_empty());
    // Multipart, as curl makes it.
    if have_curl() {
        let ca = fx.dir.path().join("bottle-ca.pem");
        std::fs::write(&ca, &fx.bottle_ca).unwrap();
        for (fields, want) in [
            (&["title=x", "_method=DELETE"][..], "403"),
            (&["title=x", "_method=POST"][..], "200"),
        ] {
            let mut curl = curl_via(fx.proxy, &ca);
            for f in fields {
                curl.args(["-F", f]);
            }
            let out = curl_status(curl, "https://api.test/v1/upload", "curl -F").await;
            assert!(out.ends_with(&format!("{want} 2")), "{fields:?}: {out}");
        }
        let uploads: Vec<_> = fx
            .up
            .seen()
            .into_iter()
            .filter(|s| s.path == "/v1/upload")
            .collect();
        assert_eq!(uploads.len(), 1);
        assert!(String::from_utf8_lossy(&uploads[0].body).contains("_method"));
    }
    let lines = audit_lines(&fx.audit);
    assert!(lines.iter().any(|l| l["status"] == 403
        && l["note"]
            .as_str()
            .is_some_and(|n| n.contains("DELETE (the body's _method field)"))));
    assert!(lines.iter().any(|l| l["status"] == 200
        && l["note"].as_str().is_some_and(|n| n
            .contains("JSON body over 4096 bytes was read for a _method field as it streamed")
            && n.contains("dlp scanned the first 4096 body bytes"))));
    assert!(lines.iter().any(|l| l["status"] == 403
        && l["note"]
            .as_str()
            .is_some_and(|n| n.contains("read as it streamed: the request was abandoned"))));
    no_canary_anywhere(&fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_mode_scans_a_body_past_the_cap_as_it_streams() {
    const CAP: usize = BLOCK_CAP;
    let fx = block_fx().await;
    for h2 in [false, true] {
        // A clean body five caps long arrives whole and unchanged.
        let clean = noise(5 * CAP, 7);
        let parts: Vec<Vec<u8>> = clean.chunks(20_000).map(<[u8]>::to_vec).collect();
        let got = post_frames(&fx, h2, &[], parts).await;
        assert_eq!(got.status, 200, "{got:?}");
        // (By content, not the last record: the request the previous
        // round stopped may be recorded, broken off, after this one.)
        assert!(fx.up.seen().iter().any(|s| s.body == clean), "body altered");
        // A secret three caps in, split across two pieces: refused, and
        // upstream never gets any of it.
        let mut first = noise(3 * CAP, 9);
        first.extend_from_slice(b" ghp_abcdefghijklmno");
        let mut second = b"pqrstuvwxyz0123456789 ".to_vec();
        second.extend(noise(CAP, 11));
        let before = fx.up.seen().len();
        let sent = first.len() + second.len();
        let got = post_frames(&fx, h2, &[], vec![first, second]).await;
        assert_eq!(got.status, 403, "{got:?}");
        assert!(got.body.contains("github-pat"), "{}", got.body);
        // Upstream saw, at most, a request that broke off (its recorder
        // keeps an empty body then), never the secret.
        for s in &fx.up.seen()[before..] {
            assert!(s.body.len() < sent, "upstream got the whole body");
            assert!(
                !s.body.windows(4).any(|w| w == b"ghp_"),
                "upstream got the secret"
            );
        }
    }
    let lines = audit_lines(&fx.audit);
    let blocked: Vec<_> = lines
        .iter()
        .filter(|l| l["decision"] == "dlp_block")
        .collect();
    assert_eq!(blocked.len(), 2, "{lines:?}");
    assert_eq!(blocked[0]["dlp"], serde_json::json!(["github-pat"]));
    // Compressed: a secret in a second zstd frame (servers decode every
    // frame) is found; a compressed body too large to hold whole is refused.
    let z = |b: &[u8]| {
        ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
    };
    let mut two = z(b"{\"a\":\"harmless\"}");
    two.extend(z(b"{\"b\":\"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"}"));
    let got = post_frames(&fx, false, &[("content-encoding", "zstd")], vec![two]).await;
    assert_eq!(got.status, 403, "{got:?}");
    assert!(got.body.contains("github-pat"), "{}", got.body);
    // brotli (browsers' and Node's favourite): a clean body passes intact,
    // one with a secret far past the cap once decoded is refused.
    let br = |b: &[u8]| {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        std::io::Write::write_all(&mut w, b).unwrap();
        drop(w);
        out
    };
    let clean = br(&b"{\"a\":\"harmless\"}".repeat(20_000));
    let got = post_frames(
        &fx,
        true,
        &[("content-encoding", "br")],
        vec![clean.clone()],
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(fx.up.seen().pop().unwrap().body, clean, "body altered");
    let mut plain = vec![b' '; 10 * CAP];
    plain.extend_from_slice(b"{\"b\":\"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"}");
    let got = post_frames(&fx, false, &[("content-encoding", "br")], vec![br(&plain)]).await;
    assert_eq!(got.status, 403, "{got:?}");
    assert!(got.body.contains("github-pat"), "{}", got.body);
    let huge = z(&noise(16 * CAP, 3));
    assert!(huge.len() > 8 * CAP, "noise compressed to {}", huge.len());
    let got = post_frames(&fx, true, &[("content-encoding", "zstd")], vec![huge]).await;
    assert_eq!(got.status, 413, "{got:?}");
    assert!(got.body.contains("not sent"), "{}", got.body);
    assert!(!fx
        .up
        .seen()
        .iter()
        .any(|s| s.path == "/v1/big" && s.body.windows(4).any(|w| w == b"ghp_")));
    no_canary_anywhere(&fx);
}

/// An upstream that answers before it has read the whole upload: a secret
/// that turns up in the body afterwards still stops the body before it is
/// sent, and the request's audit line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_after_the_upstream_answered_is_on_the_audit_line() {
    const CAP: usize = BLOCK_CAP;
    let fx = block_fx().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        let piece = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(piece))),
            rx,
        ))
    });
    let req = Request::post("https://api.test/early")
        .body(http_body_util::StreamBody::new(Box::pin(pieces)))
        .unwrap();
    let mut s = h2_through(fx.proxy, "api.test", &fx.bottle_ca).await;
    // Past the cap, clean: the request goes upstream and the rest streams.
    tx.send(noise(2 * CAP, 5)).await.unwrap();
    let resp = tokio::time::timeout(HANG, s.send_request(req))
        .await
        .expect("an answer while the body is still open")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut answer = resp.into_body();
    let first = tokio::time::timeout(HANG, answer.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.data_ref().map(|d| &d[..]),
        Some(&b"data: early\n\n"[..])
    );
    // Now the secret, after the answer began.
    let mut secret = b" ghp_abcdefghijklmnopqrstuvwxyz0123456789 ".to_vec();
    secret.extend(noise(CAP, 6));
    tx.send(secret).await.unwrap();
    drop(tx);
    let _ = tokio::time::timeout(HANG, answer.collect()).await;
    let line = eventually("no audit line for /early", || {
        audit_lines(&fx.audit)
            .into_iter()
            .find(|l| l["path"] == "/early")
    })
    .await;
    assert_eq!(line["decision"], "dlp_block", "{line}");
    assert_eq!(line["dlp"], serde_json::json!(["github-pat"]), "{line}");
    assert!(
        line["note"]
            .as_str()
            .unwrap()
            .contains("after the upstream answered"),
        "{line}"
    );
    let seen = eventually("the upstream recorded no /early", || {
        fx.up.seen().into_iter().find(|s| s.path == "/early")
    })
    .await;
    assert!(
        !seen.body.windows(4).any(|w| w == b"ghp_"),
        "upstream got the secret"
    );
    no_canary_anywhere(&fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_do_not_hold_up_other_requests() {
    let fx = fx_with(|c| c.limits.header_read_timeout_ms = 60_000).await;
    // Forty uploads that announce a body and then send none of it.
    let mut stuck = Vec::new();
    for _ in 0..40 {
        let (st, head, tcp) = connect(fx.proxy, "api.test:443").await;
        assert_eq!(st, 200, "{head}");
        let mut t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
            .await
            .unwrap();
        t.write_all(
            b"POST /v1/stuck HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n0123",
        )
        .await
        .unwrap();
        stuck.push(t);
    }
    // Another POST goes straight through.
    let mut req = get("https://api.test/v1/x", "api.test", false);
    *req.method_mut() = http::Method::POST;
    *req.body_mut() = Full::new(Bytes::from_static(b"{\"ok\":true}"));
    let got = tokio::time::timeout(HANG, fx.send("api.test", false, req))
        .await
        .expect("a POST waited behind stalled uploads");
    assert_eq!(got.status, 200, "{got:?}");
    drop(stuck);

    // A body that stops arriving gets 408 once the read timeout passes.
    let fx = fx_with(|c| c.limits.header_read_timeout_ms = 300).await;
    let (_, _, tcp) = connect(fx.proxy, "api.test:443").await;
    let mut t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    t.write_all(b"POST /v1/stuck HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n0123")
        .await
        .unwrap();
    let head = tokio::time::timeout(HANG, read_head(&mut t))
        .await
        .expect("a stalled body was never answered");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(!fx.up.seen().iter().any(|s| s.path == "/v1/stuck"));

    // So does one that trickles, a byte each 100 ms: the wait for the held
    // prefix is one, not one per byte (it took the body's whole 9.6 s).
    let (_, _, tcp) = connect(fx.proxy, "api.test:443").await;
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(t);
    let trickle = tokio::spawn(async move {
        w.write_all(
            b"POST /v1/trickle HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\n0123",
        )
        .await?;
        for _ in 0..96 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            w.write_all(b"x").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let head = tokio::time::timeout(HANG, read_head(&mut r))
        .await
        .expect("a trickling body was never answered");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(!trickle.is_finished(), "answered only after the whole body");
    trickle.abort();
    assert!(!fx.up.seen().iter().any(|s| s.path == "/v1/trickle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlp_block_mode_refuses_before_injection() {
    let fx = fx_with(|c| c.dlp.mode = DlpMode::Block).await;
    let post = |body: String| {
        let mut req = get("https://api.test/v1/x", "api.test", false);
        *req.method_mut() = http::Method::POST;
        req.headers_mut()
            .insert("authorization", "Bearer dummy-codex-token".parse().unwrap());
        *req.body_mut() = Full::new(Bytes::from(body));
        req
    };
    let got = fx
        .send("api.test", false, post("key=AKIAIOSFODNN7EXAMPLE".into()))
        .await;
    assert_eq!(got.status, 403);
    assert!(got.body.contains("aws-access-token"), "{}", got.body);
    // The real token reaching the agent and being sent out is blocked too,
    // without echoing it.
    let got = fx
        .send("api.test", false, post(format!("t={CANARY}")))
        .await;
    assert_eq!(got.status, 403);
    assert!(
        got.body.contains("bottle-token:REAL_TOKEN") && !got.body.contains(CANARY),
        "{}",
        got.body
    );
    assert!(
        fx.up.seen().is_empty(),
        "a blocked request reached upstream"
    );
    // Dummies and ordinary bodies pass: the scan runs before injection.
    let got = fx.send("api.test", false, post("hello".into())).await;
    assert_eq!(got.status, 200);
    let lines = audit_lines(&fx.audit);
    assert!(lines.iter().any(|l| l["decision"] == "dlp_block"));
    no_canary_anywhere(&fx);
}

/// Sends `request`, shuts the write side at once, and reads the answer.
async fn answer_after_half_close<S>(mut s: S, request: &[u8]) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request).await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(HANG, s.read_to_end(&mut got))
        .await
        .expect("no answer after the half-close");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let fx = fx().await;
    // Intercepted: TLS close_notify and FIN right after the request.
    let (st, head, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200, "{head}");
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let got = answer_after_half_close(t, b"GET /v1/half HTTP/1.1\r\nHost: api.test\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(fx.up.seen().iter().any(|s| s.path == "/v1/half"));
    // Plain HTTP to the proxy itself: a denied request, FIN right after.
    let s = TcpStream::connect(fx.proxy).await.unwrap();
    let got = answer_after_half_close(
        s,
        b"GET http://nope.test/x HTTP/1.1\r\nHost: nope.test\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 403"), "{got}");
    tokio::time::timeout(HANG, async {
        while !audit_lines(&fx.audit)
            .iter()
            .any(|l| l["path"] == "/v1/half" && l["status"] == 200)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no audit line for the half-closed request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_several_headers_sets_each_once() {
    let fx = fx_with(|c| {
        c.routes[0].inject = vec![
            inject("Authorization", "Bearer {token}"),
            inject("x-api-key", "{token}"),
            bot_bottle_plugin_api::HeaderInjection {
                header: "anthropic-version".into(),
                value: "2023-06-01".into(),
                token_ref: None,
            },
        ];
    })
    .await;
    for h2 in [false, true] {
        let mut req = get("https://api.test/v1/messages", "api.test", h2);
        let h = req.headers_mut();
        h.insert("authorization", "Bearer dummy".parse().unwrap());
        h.append("X-Api-Key", "dummy-1".parse().unwrap());
        h.append("x-api-key", "dummy-2".parse().unwrap());
        // The same header to a CGI-style server (Puma, PHP): `-` as `_`.
        h.append("x_api_key", "dummy-3".parse().unwrap());
        h.insert("anthropic-version", "1999-01-01".parse().unwrap());
        h.insert("anthropic_version", "1999-01-02".parse().unwrap());
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 200, "{got:?}");
        let seen = fx.up.seen().pop().unwrap();
        assert!(
            seen.headers.iter().all(|(n, _)| !n.contains('_')),
            "{:?}",
            seen.headers
        );
        assert_eq!(
            seen.header_all("authorization"),
            vec![format!("Bearer {CANARY}")]
        );
        assert_eq!(seen.header_all("x-api-key"), vec![CANARY.to_string()]);
        assert_eq!(
            seen.header_all("anthropic-version"),
            vec!["2023-06-01".to_string()]
        );
    }
    let want = serde_json::json!(["Authorization", "x-api-key", "anthropic-version"]);
    tokio::time::timeout(HANG, async {
        while audit_lines(&fx.audit)
            .iter()
            .filter(|l| l["injected_headers"] == want)
            .count()
            < 2
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no audit lines naming the three headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_count_against_max_connections() {
    let fx = fx_with(|c| c.limits.max_connections = 2).await;
    // Two intercepted tunnels, each with a request served and kept open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (st, head, tcp) = connect(fx.proxy, "api.test:443").await;
        assert_eq!(st, 200, "{head}");
        let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(t))
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = sender
            .send_request(get("/v1/x", "api.test", false))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        open.push(sender);
    }
    // A third client waits: the proxy does not take it while both are open.
    let mut third = TcpStream::connect(fx.proxy).await.unwrap();
    third
        .write_all(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await
        .unwrap();
    let early =
        tokio::time::timeout(std::time::Duration::from_millis(700), read_head(&mut third)).await;
    assert!(
        early.is_err(),
        "a third connection was served past max_connections = 2: {early:?}"
    );
    // Closing one tunnel frees its slot for the waiting client.
    drop(open.pop());
    let head = tokio::time::timeout(HANG, read_head(&mut third))
        .await
        .expect("the waiting client was not served after a tunnel closed");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clean_errors_and_the_proxy_survives() {
    let fx = fx_with(|c| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.max_header_bytes = 8192;
        c.limits.idle_timeout_ms = 300;
    })
    .await;
    // An intercepted connection left idle is closed (hang guard only).
    let (st, _, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200);
    let mut t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    t.write_all(b"GET /idle HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    let r = tokio::time::timeout(HANG, t.read_to_end(&mut all))
        .await
        .expect("idle connection was not closed");
    assert!(r.is_ok() || !all.is_empty());
    assert!(
        String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"),
        "the request before going idle was served"
    );
    // Garbage request line.
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(b"\x16\x03\x01GARBAGE\r\n\r\n").await.unwrap();
    let head = read_head(&mut s).await;
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
    // Oversized head.
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    let big = format!(
        "CONNECT api.test:443 HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(big.as_bytes()).await;
    let head = read_head(&mut s).await;
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );
    // A client that sends nothing is closed, with at most a 408 said.
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(HANG, s.read_to_end(&mut said))
        .await
        .expect("slow client was not closed");
    let said = String::from_utf8_lossy(&said);
    assert!(
        said.is_empty() || said.starts_with("HTTP/1.1 408"),
        "{said}"
    );
    // Not TLS inside a tunnel to an allowed host.
    let (st, _, mut t) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200);
    t.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(HANG, t.read(&mut b))
        .await
        .expect("non-TLS tunnel was not closed");
    // A client that does not trust the bottle CA: the audit says so.
    let (_, _, tcp) = connect(fx.proxy, "api.test:443").await;
    assert!(tls(tcp, "api.test", &fx.pki.ca_pem, &[b"http/1.1"])
        .await
        .is_err());
    let line = tokio::time::timeout(HANG, async {
        loop {
            if let Some(l) = audit_lines(&fx.audit).into_iter().find(|l| {
                l["decision"] == "tls_error"
                    && l["note"].as_str().unwrap_or("").contains("handshake")
            }) {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no tls_error audit line");
    assert_eq!(line["host"], "api.test");
    // Upstream down: 502, proxy still serves.
    let fx2 = fx_with(|c| {
        c.upstream
            .resolve
            .insert("api.test".into(), "127.0.0.1:9".parse().unwrap());
    })
    .await;
    let got = send(
        fx2.proxy,
        "api.test:443",
        "api.test",
        &fx2.bottle_ca,
        false,
        get("https://api.test/", "api.test", false),
    )
    .await;
    assert_eq!(got.status, 502);
    assert!(!got.body.contains(CANARY));
    // After all of it, the first proxy still works.
    let got = fx
        .send("api.test", true, get("https://api.test/ok", "", true))
        .await;
    assert_eq!(got.status, 200);
}

#[test]
fn check_says_what_would_happen() {
    let pki = test_pki();
    let cfg = config(
        &pki,
        "127.0.0.1:1".parse().unwrap(),
        std::path::Path::new("/dev/null"),
    );
    let d = bot_bottle_egress::check(&cfg, "get", "https://api.test/v1/models");
    assert!(d.allowed);
    assert_eq!(d.route_index, Some(0));
    assert_eq!(d.inject_headers, vec!["Authorization".to_string()]);
    let shown = d.to_string();
    assert!(
        shown.contains("decision: allow") && shown.contains("inject: Authorization"),
        "{shown}"
    );
    assert!(!shown.contains(CANARY) && !serde_json::to_string(&d).unwrap().contains(CANARY));
    let d = bot_bottle_egress::check(&cfg, "GET", "http://api.test/");
    assert!(!d.allowed && d.reason.contains("plain_http"), "{d}");
    let d = bot_bottle_egress::check(&cfg, "GET", "https://other.test/open/../closed");
    assert!(!d.allowed && d.path == "/closed", "{d}");
    let d = bot_bottle_egress::check(&cfg, "GET", "https://pass.test/");
    assert!(d.allowed && d.action == bot_bottle_egress::Action::Passthrough);
    let d = bot_bottle_egress::check(&cfg, "TRACE", "https://api.test/");
    assert!(!d.allowed);
    let d = bot_bottle_egress::check(&cfg, "GET", "https://nope.test/");
    assert!(!d.allowed && d.to_string().contains("route: none"));
    // A route that limits methods: the URL's `_method` is read, and the
    // reason says what else the proxy reads.
    let d = bot_bottle_egress::check(&cfg, "GET", "https://a.wild.test/x?%5Fmethod=DELETE");
    assert!(!d.allowed && d.reason.contains("\"DELETE\""), "{d}");
    let d = bot_bottle_egress::check(&cfg, "GET", "https://a.wild.test/x?_method=get");
    assert!(
        d.allowed && d.reason.contains("must name one of GET too"),
        "{d}"
    );
    let mut cfg = cfg;
    cfg.routes[3].methods.push("POST".into());
    let d = bot_bottle_egress::check(&cfg, "POST", "https://a.wild.test/x");
    assert!(
        d.allowed && d.reason.contains("_method field in a form or JSON body"),
        "{d}"
    );
}

/// Runs the proxy as its own process with every log level on, drives
/// allowed, refused, failing and DLP-flagged requests through it, and scans
/// everything it printed (audit lines on stdout, tracing on stderr) for the
/// real token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_never_appears_in_any_proxy_output() {
    use std::io::{BufRead, BufReader, Read};
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, up.addr, std::path::Path::new("/unused"));
    cfg.audit.path = None;
    cfg.upstream
        .resolve
        .insert("other.test".into(), "127.0.0.1:9".parse().unwrap());
    let bottle_ca = cfg.ca.cert_pem.clone();
    let cfg_path = dir.path().join("egress.json");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bot-bottle-egress"))
        .arg("--config")
        .arg(&cfg_path)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "proxy exited: {first}"
        );
        first.push_str(&line);
        if let Some(a) = line.trim().strip_prefix("listening on ") {
            break a.parse().unwrap();
        }
    };
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    for h2 in [false, true] {
        let mut req = get("https://api.test/v1/x", "api.test", h2);
        req.headers_mut()
            .insert("authorization", "Bearer dummy".parse().unwrap());
        assert_eq!(
            send(addr, "api.test:443", "api.test", &bottle_ca, h2, req)
                .await
                .status,
            200
        );
    }
    // DLP (log mode) sees the real token in a body the agent sends.
    let mut req = get("https://api.test/v1/x", "api.test", false);
    *req.method_mut() = http::Method::POST;
    *req.body_mut() = Full::new(Bytes::from(format!("leak={CANARY}")));
    assert_eq!(
        send(addr, "api.test:443", "api.test", &bottle_ca, false, req)
            .await
            .status,
        200
    );
    // Identity mismatch, deny, upstream failure, WebSocket.
    assert_eq!(
        send(
            addr,
            "other.test:443",
            "other.test",
            &bottle_ca,
            false,
            get("https://api.test/", "api.test", false)
        )
        .await
        .status,
        421
    );
    assert_eq!(connect(addr, "evil.test:443").await.0, 403);
    assert_eq!(
        send(
            addr,
            "other.test:443",
            "other.test",
            &bottle_ca,
            true,
            get("https://other.test/open", "", true)
        )
        .await
        .status,
        502
    );
    let (_, _, tcp) = connect(addr, "ws.test:443").await;
    let t = tls(tcp, "ws.test", &bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://ws.test/ws", t)
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    let _ = ws.next().await;
    drop(ws);

    child.kill().unwrap();
    child.wait().unwrap();
    let out = out_t.join().unwrap();
    let err = first + &err_t.join().unwrap();
    assert!(
        out.lines()
            .filter(|l| l.contains("\"decision\":\"allow\""))
            .count()
            >= 3,
        "audit on stdout: {out}"
    );
    assert!(
        out.contains("bottle-token:REAL_TOKEN"),
        "DLP finding named in the audit: {out}"
    );
    assert!(
        err.contains("TRACE") || err.contains("DEBUG"),
        "tracing was on"
    );
    for (name, text) in [("stdout", &out), ("stderr", &err)] {
        assert!(
            !text.contains(CANARY),
            "the real token appears in the proxy's {name}"
        );
    }
    // The upstream did get it: the canary is real, the scan meaningful.
    assert!(up.seen().iter().any(|s| s
        .header_all("authorization")
        .contains(&format!("Bearer {CANARY}"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_response_on_an_allowed_host_never_reaches_upstream() {
    let fx = fx_with(|c| {
        c.local_responses = vec![bot_bottle_plugin_api::LocalResponse {
            host: "api.test".into(),
            path: "/oauth/token".into(),
            method: "POST".into(),
            status: 200,
            content_type: "application/json".into(),
            body: "{\"access_token\":\"dummy-access\"}".into(),
        }];
    })
    .await;
    for h2 in [false, true] {
        let mut req = get("https://api.test/oauth/token?x=1", "api.test", h2);
        *req.method_mut() = http::Method::POST;
        *req.body_mut() = Full::new(Bytes::from_static(
            b"grant_type=refresh_token&refresh_token=dummy",
        ));
        let got = fx.send("api.test", h2, req).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body, "{\"access_token\":\"dummy-access\"}");
        assert_eq!(got.headers["content-type"], "application/json");
    }
    assert!(fx.up.seen().is_empty(), "a local response was forwarded");
    // Other paths on the host still go upstream.
    let got = fx
        .send(
            "api.test",
            false,
            get("https://api.test/v1", "api.test", false),
        )
        .await;
    assert_eq!(got.status, 200);
    assert!(audit_lines(&fx.audit)
        .iter()
        .any(|l| l["decision"] == "local"));
    let mut cfg = config(&fx.pki, fx.up.addr, &fx.audit);
    cfg.local_responses = vec![bot_bottle_plugin_api::LocalResponse {
        host: "auth.test".into(),
        path: "/oauth/token".into(),
        method: "POST".into(),
        status: 200,
        content_type: "application/json".into(),
        body: "{}".into(),
    }];
    let d = bot_bottle_egress::check(&cfg, "POST", "https://auth.test/oauth/token");
    assert_eq!(d.action, bot_bottle_egress::Action::LocalResponse, "{d}");
    assert!(
        d.to_string().contains("route: local_responses (auth.test)"),
        "{d}"
    );
    // On 443 only, as the proxy admits a CONNECT for it.
    let d = bot_bottle_egress::check(&cfg, "POST", "https://auth.test:8443/oauth/token");
    assert!(!d.allowed, "{d}");
}

/// curl over HTTP/2 posting a body to a local response: the proxy reads the
/// body before answering. Answered mid-upload, the stream ended with
/// RST_STREAM(NO_ERROR) and curl 7.88 failed with "(92) Stream error in the
/// HTTP/2 framing layer" (seen in the Claude Docker test's token refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_upload_to_a_local_response_completes() {
    if !have_curl() {
        return;
    }
    let fx = fx_with(|c| {
        c.local_responses = vec![bot_bottle_plugin_api::LocalResponse {
            host: "api.test".into(),
            path: "/oauth/token".into(),
            method: "POST".into(),
            status: 200,
            content_type: "application/json".into(),
            body: "{\"access_token\":\"dummy-access\"}".into(),
        }];
    })
    .await;
    let ca = fx.dir.path().join("bottle-ca.pem");
    std::fs::write(&ca, &fx.bottle_ca).unwrap();
    // Larger than one TLS record, so the upload is still going when the
    // request head arrives.
    let body = fx.dir.path().join("body.json");
    std::fs::write(
        &body,
        format!("{{\"refresh_token\":\"{}\"}}", "d".repeat(48 * 1024)),
    )
    .unwrap();
    for i in 0..10 {
        let mut curl = curl_via(fx.proxy, &ca);
        curl.args([
            "--http2",
            "-H",
            "content-type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()));
        let stdout = curl_status(
            curl,
            "https://api.test/oauth/token",
            &format!("curl run {i}"),
        )
        .await;
        assert!(
            stdout.ends_with("200 2") && stdout.contains("dummy-access"),
            "run {i}: {stdout}"
        );
    }
    assert!(fx.up.seen().is_empty(), "a local response was forwarded");
}

/// The sidecar's reload: a new config file plus SIGHUP; the next request on
/// an already open connection carries the rotated token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rotated_tokens_on_open_connections() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    let bottle_ca = cfg.ca.cert_pem.clone();
    let px = Reloadable::start(&cfg, dir.path());
    let addr = px.addr;
    let mut s = h2_through(addr, "api.test", &bottle_ca).await;
    let auth = |up: &Upstream| up.seen().pop().unwrap().header_all("authorization");
    s.send_request(get("https://api.test/a", "", true))
        .await
        .unwrap();
    assert_eq!(auth(&up), vec![format!("Bearer {CANARY}")]);

    let rotated = "canary-ROTATED-0a1b2c3d4e5f";
    cfg.tokens.insert(
        "REAL_TOKEN".into(),
        bot_bottle_plugin_api::Secret::new(rotated),
    );
    px.reload(&cfg);
    // Poll on the same connection until the reload shows (hang guard only).
    tokio::time::timeout(HANG, async {
        loop {
            let r = s
                .send_request(get("https://api.test/b", "", true))
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            if auth(&up) == vec![format!("Bearer {rotated}")] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("SIGHUP reload never took effect");
    // A broken file keeps the previous config (and says so).
    std::fs::write(&px.path, "{ not json").unwrap();
    px.hangup();
    loop {
        let line = px
            .lines
            .recv_timeout(HANG)
            .expect("no log line about the failed reload");
        if line.contains("reload failed") {
            assert!(!line.contains(rotated) && !line.contains(CANARY), "{line}");
            break;
        }
    }
    let r = s
        .send_request(get("https://api.test/c", "", true))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(auth(&up), vec![format!("Bearer {rotated}")]);
}

/// Adds a plain-HTTP route for `host`, reached at `up`, that injects the
/// Bearer token.
fn plain_route(c: &mut ProxyConfig, host: &str, up: SocketAddr) {
    let mut r = bot_bottle_plugin_api::EgressRoute::allow(host);
    r.plain_http = true;
    r.inject = vec![inject("Authorization", "Bearer {token}")];
    c.routes.push(r);
    c.upstream.resolve.insert(host.into(), up);
}

/// A plain-HTTP upstream that records the Authorization it receives.
async fn plain_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let auth: Vec<String> = req
                            .headers()
                            .get_all("authorization")
                            .iter()
                            .map(|v| v.to_str().unwrap().to_string())
                            .collect();
                        seen.lock().unwrap().push(auth);
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

/// A plain `http://` URL whose host is no host name is refused like such a
/// CONNECT, though a `*.suffix` plain-HTTP route matches it as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_url_to_no_host_name_is_refused() {
    let (plain, seen) = plain_upstream().await;
    let fx = fx_with(|c| {
        plain_route(c, "*.plain.test", plain);
        // Pinned as a manifest can pin it: a name, not a pattern.
        c.upstream.resolve.remove("*.plain.test");
        c.upstream.resolve.insert("a.plain.test".into(), plain);
    })
    .await;
    for host in ["*.plain.test", "a..plain.test", "[x:y.plain.test]"] {
        let mut s = TcpStream::connect(fx.proxy).await.unwrap();
        s.write_all(format!("GET http://{host}/x HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{host}: {head}");
    }
    assert!(seen.lock().unwrap().is_empty());
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(b"GET http://A.plain.test./x HTTP/1.1\r\nHost: a.plain.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_where_the_route_says_so() {
    let (plain, seen) = plain_upstream().await;
    let fx = fx_with(|c| plain_route(c, "plain.test", plain)).await;
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(b"GET http://plain.test/x HTTP/1.1\r\nHost: plain.test\r\nAuthorization: Bearer dummy\r\nProxy-Authorization: Basic leak\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body_after_head(&mut s, &head).await, "plain ok");
    assert_eq!(
        seen.lock().unwrap().pop().unwrap(),
        vec![format!("Bearer {CANARY}")]
    );
    // Host header naming another host than the absolute URI: refused.
    s.write_all(b"GET http://plain.test/x HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
    assert_eq!(seen.lock().unwrap().len(), 0);
    // A TLS route is not reachable over plain HTTP.
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 403"));
}

fn ws_upgrade_seen(fx: &Fx) -> Seen {
    fx.up
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.method != "WS")
        .unwrap()
}

async fn ws_through(
    fx: &Fx,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    u16,
) {
    let (st, _, tcp) = connect(fx.proxy, "ws.test:443").await;
    assert_eq!(st, 200);
    let t = tls(tcp, "ws.test", &fx.bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        "wss://ws.test/backend-api/codex/responses",
    )
    .unwrap();
    req.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate".parse().unwrap(),
    );
    let (ws, resp) = tokio::time::timeout(HANG, tokio_tungstenite::client_async(req, t))
        .await
        .unwrap()
        .unwrap();
    (ws, resp.status().as_u16())
}

const GH: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_scanned_in_log_mode() {
    let fx = fx().await;
    let (mut ws, st) = ws_through(&fx).await;
    assert_eq!(st, 101);
    assert!(
        ws_upgrade_seen(&fx)
            .header_all("sec-websocket-extensions")
            .is_empty(),
        "compression stays off under DLP"
    );
    ws.send(Message::text(format!("here is my token {GH}")))
        .await
        .unwrap();
    let echo = tokio::time::timeout(HANG, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(echo.into_text().unwrap().contains(GH), "log mode forwards");
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(HANG, ws.next()).await {}
    let line = tokio::time::timeout(HANG, async {
        loop {
            if let Some(l) = audit_lines(&fx.audit)
                .into_iter()
                .find(|l| l["dlp"] == serde_json::json!(["github-pat"]))
            {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no audit line with the WebSocket finding");
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["path"], "/backend-api/codex/responses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_with_secrets_are_blocked() {
    let fx = fx_with(|c| c.dlp.mode = DlpMode::Block).await;
    let (mut ws, st) = ws_through(&fx).await;
    assert_eq!(st, 101);
    ws.send(Message::text("harmless")).await.unwrap();
    let echo = tokio::time::timeout(HANG, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "harmless");
    ws.send(Message::text(format!("leak {GH}"))).await.unwrap();
    let next = tokio::time::timeout(HANG, ws.next())
        .await
        .expect("no close after a blocked frame");
    match next {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
        Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {}
        Some(Ok(m)) => panic!("the blocked frame came back: {m:?}"),
    }
    let ws_msgs: Vec<Vec<u8>> = fx
        .up
        .seen()
        .into_iter()
        .filter(|s| s.method == "WS")
        .map(|s| s.body)
        .collect();
    assert_eq!(
        ws_msgs,
        vec![b"harmless".to_vec()],
        "the blocked frame reached upstream"
    );
    eventually("no dlp_block audit line", || {
        audit_lines(&fx.audit)
            .iter()
            .any(|l| l["decision"] == "dlp_block")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_too_large_to_hold_are_scanned_as_they_stream() {
    const CAP: usize = BLOCK_CAP;
    let fx = block_fx().await;
    let (mut ws, st) = ws_through(&fx).await;
    assert_eq!(st, 101);
    // Four caps of clean text in one frame: through and echoed whole.
    let clean = String::from_utf8(noise(4 * CAP, 5)).unwrap();
    ws.send(Message::text(clean.clone())).await.unwrap();
    let echo = tokio::time::timeout(HANG, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), clean);
    // A secret three caps into such a frame: the socket is closed and
    // upstream never gets the frame.
    let mut leak = String::from_utf8(noise(3 * CAP, 6)).unwrap();
    leak.push_str(&format!(" {GH} "));
    leak.push_str(&String::from_utf8(noise(CAP, 8)).unwrap());
    // The proxy stops reading at the secret and closes, which may be
    // before this client has written the frame's last KiBs: then the send
    // fails (broken pipe, reset), and that is the socket closing too.
    if ws.send(Message::text(leak)).await.is_ok() {
        let next = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("no close after a blocked frame");
        match next {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {}
            Some(Ok(m)) => panic!("the blocked frame came back: {} bytes", m.len()),
        }
    }
    let ws_msgs: Vec<usize> = fx
        .up
        .seen()
        .into_iter()
        .filter(|s| s.method == "WS")
        .map(|s| s.body.len())
        .collect();
    assert_eq!(
        ws_msgs,
        vec![clean.len()],
        "the blocked frame reached upstream"
    );
    tokio::time::timeout(HANG, async {
        while !audit_lines(&fx.audit)
            .iter()
            .any(|l| l["decision"] == "dlp_block" && l["dlp"] == serde_json::json!(["github-pat"]))
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no dlp_block audit line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_agent_abandons_is_still_audited() {
    let fx = fx().await;
    let (st, _, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200);
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"h2"]).await.unwrap();
    let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t))
        .await
        .unwrap();
    let conn = tokio::spawn(c);
    let pending =
        tokio::spawn(async move { s.send_request(get("https://api.test/hold", "", true)).await });
    // Wait until the upstream has the request, then drop the agent's side.
    tokio::time::timeout(HANG, async {
        while !fx.up.seen().iter().any(|s| s.path == "/hold") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    pending.abort();
    conn.abort();
    let line = tokio::time::timeout(HANG, async {
        loop {
            if let Some(l) = audit_lines(&fx.audit)
                .into_iter()
                .find(|l| l["path"] == "/hold")
            {
                return l;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no audit line for the abandoned request");
    assert_eq!(line["injected"], true);
    assert!(
        line["note"].as_str().unwrap().contains("went away"),
        "{line}"
    );
    fx.up.release.notify_one();
}

/// HPACK sends a header field already in the connection's table (up to
/// 4 KiB) as one byte: a request repeating a 4 KB field sixteen times was
/// 64 KiB of head to scan, encode and send upstream from ~50 bytes on the
/// wire, ~20 times the proxy's CPU for ordinary requests of those bytes
/// (measured in review). Repeats past 4 KiB are refused before any of that;
/// a field sent once, or a small one twice, passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_head_repeating_a_large_field_is_refused_by_the_proxy() {
    let fx = fx().await;
    let big = "b".repeat(4000);
    let req = |path: &str, copies: usize| {
        let mut b = Request::builder().uri(format!("https://api.test{path}"));
        for _ in 0..copies {
            b = b.header("x-big", big.as_str());
        }
        b.header("accept", "*/*")
            .header("accept", "*/*")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let once = fx.send("api.test", true, req("/once", 1)).await;
    assert_eq!(once.status, 200, "{}", once.body);
    let many = fx.send("api.test", true, req("/repeated", 12)).await;
    assert_eq!(many.status, 431, "{}", many.body);
    // Refused by the proxy (the test upstream would answer 431 too, to
    // anything over its 16 KiB of headers).
    assert!(many.body.starts_with("bot-bottle egress"), "{}", many.body);
    let line = audit_lines(&fx.audit)
        .into_iter()
        .find(|l| l["path"] == "/repeated")
        .expect("no audit line for the refused request");
    assert_eq!(line["decision"], "deny", "{line}");
    assert_eq!(line["injected"], false, "{line}");
    assert!(fx.up.seen().iter().all(|s| s.path != "/repeated"));
}

/// A client outside `allowed_clients` is dropped before the proxy reads a
/// byte; one inside is served. (The Docker backend sets the bottle's
/// internal subnet here so egress-side neighbours cannot borrow its token.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allowed_networks_are_dropped() {
    let pki = test_pki();
    let dir = tempfile::tempdir().unwrap();
    let up = start_upstream(&pki).await;

    let mut outside = config(&pki, up.addr, &dir.path().join("a.log"));
    outside.allowed_clients = vec!["10.0.0.0/8".parse().unwrap()];
    let proxy = start_proxy(outside);
    let (status, head, _) = connect(proxy, "api.test:443").await;
    assert_eq!(
        status, 0,
        "a loopback client outside 10/8 got an answer: {head}"
    );

    let mut inside = config(&pki, up.addr, &dir.path().join("b.log"));
    inside.allowed_clients = vec!["127.0.0.0/8".parse().unwrap()];
    let proxy = start_proxy(inside);
    let (status, _, _) = connect(proxy, "api.test:443").await;
    assert_eq!(status, 200);
}

/// The Docker backend's agents reach their proxy only through its Unix
/// socket: served like a TCP client, but without the client-network check
/// (reaching the socket file is what admits a client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_unix_socket_client() {
    use std::os::unix::fs::PermissionsExt;
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = config(&pki, up.addr, &audit);
    // A TCP client from loopback would be refused by this.
    cfg.allowed_clients = vec!["10.99.0.0/16".parse().unwrap()];
    let bottle_ca = cfg.ca.cert_pem.clone();
    let path = dir.path().join("proxy.sock");

    // Something that is not a socket in the way is an error, never removed.
    std::fs::write(&path, "not a socket").unwrap();
    let err = bot_bottle_egress::Listener::bind_unix(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    std::fs::remove_file(&path).unwrap();
    // A socket left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listener = bot_bottle_egress::Listener::bind_unix(&path).unwrap();
    assert_eq!(listener.describe(), format!("unix:{}", path.display()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666, "any agent user may connect");
    std::thread::spawn(move || bot_bottle_egress::serve_with_listener(cfg, listener));

    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT: {head}");
    let t = tls(s, "api.test", &bottle_ca, &[b"http/1.1"])
        .await
        .expect("TLS through the proxy's Unix socket");
    let resp = h1_send(t, get("https://api.test/v1/unix", "api.test", false)).await;
    assert_eq!(resp.status(), 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(
        seen.header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    assert!(!audit_text(&audit).contains(CANARY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_are_not_forwarded() {
    // Over HTTP/2 upstream they would pass beside the injected header, and
    // past the DLP scan of the head.
    let fx = fx().await;
    for h2 in [true, false] {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("authorization", "Bearer agent-chosen".parse().unwrap());
        trailers.insert("x-note", "after the body".parse().unwrap());
        let frames = vec![
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                b"the body",
            ))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let path = format!("/trailers-{h2}");
        let mut b = Request::builder().method("POST");
        b = if h2 {
            b.uri(format!("https://api.test{path}"))
        } else {
            b.uri(&path)
                .header("host", "api.test")
                .header("transfer-encoding", "chunked")
                .header("te", "trailers")
        };
        let got = fx.send("api.test", h2, b.body(body).unwrap()).await;
        assert_eq!(got.status, 200, "{got:?}");
        let seen = fx.up.seen();
        let s = seen.iter().find(|s| s.path == path).unwrap();
        assert_eq!(s.body, b"the body");
        assert_eq!(
            s.header_all("authorization"),
            vec![format!("Bearer {CANARY}")]
        );
        assert!(
            s.headers.iter().all(|(n, _)| !n.starts_with("trailer:")),
            "h2 {h2}: trailers reached the upstream: {:?}",
            s.headers
        );
    }
}

/// A plain-HTTP upstream that answers any request with a 101 to `h2c` (a
/// fake: it shows a switch the proxy must not splice, which no WebSocket
/// server makes), and keeps the request head it got.
async fn switching_upstream() -> (SocketAddr, Arc<Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let head = Arc::new(Mutex::new(String::new()));
    let h2 = head.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let h = read_head(&mut tcp).await;
            *h2.lock().unwrap() = h;
            let _ = tcp
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
                .await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(HANG, tcp.read_to_end(&mut sink)).await;
        }
    });
    (addr, head)
}

/// An upstream whose `101` quotes the credential in every header the agent
/// gets of it (`Sec-WebSocket-Accept` too, which was copied after the
/// others were masked), and whose first frame, holding it, comes in the
/// same write as the `101`'s head (hyper keeps it for the upgraded
/// stream): the agent gets none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_quotes_the_credential_reaches_the_agent_masked() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let h = read_head(&mut tcp).await;
            let auth = h
                .lines()
                .find_map(|l| l.strip_prefix("authorization: "))
                .unwrap_or_default()
                .to_owned();
            let msg = format!("you are {auth}");
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {auth}\r\n\
                 Sec-WebSocket-Protocol: {auth}\r\n\r\n"
            )
            .into_bytes();
            out.extend([0x81, msg.len() as u8]);
            out.extend(msg.as_bytes());
            let _ = tcp.write_all(&out).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(HANG, tcp.read_to_end(&mut sink)).await;
        }
    });
    let fx = fx_with(|c| plain_route(c, "quote.test", up)).await;
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(
        b"GET http://quote.test/ws HTTP/1.1\r\nHost: quote.test\r\n\
          Upgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let stars = "*".repeat(CANARY.len());
    let mut frame = vec![0u8; 2 + "you are Bearer ".len() + CANARY.len()];
    tokio::time::timeout(HANG, s.read_exact(&mut frame))
        .await
        .expect("the frame sent with the 101 never came")
        .unwrap();
    let got = [head.as_bytes(), &frame].concat();
    assert!(
        !got.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(&frame[2..], format!("you are Bearer {stars}").as_bytes());
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("sec-websocket-accept: bearer {stars}")),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_switches_to_websocket_or_not_at_all() {
    let (up, head) = switching_upstream().await;
    let fx = fx_with(|c| plain_route(c, "switch.test", up)).await;
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(
        b"GET http://switch.test/ws HTTP/1.1\r\nHost: switch.test\r\n\
          Upgrade: h2c, websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_head(&mut s).await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    let sent = head.lock().unwrap().to_ascii_lowercase();
    assert!(
        sent.contains("\r\nupgrade: websocket\r\n") && !sent.contains("h2c"),
        "{sent}"
    );
    let audit = audit_text(&fx.audit);
    assert!(audit.contains("other than WebSocket"), "{audit}");
}

/// The close code the proxy sends next on `ws` (`None`: closed without one,
/// or nothing within 10 s).
async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return Some(u16::from(f.code)),
            Ok(Some(Ok(Message::Pong(_)))) => continue,
            Ok(Some(Ok(m))) => panic!("a frame instead of a close: {m:?}"),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_that_break_the_protocol_or_split_a_secret_close_the_socket() {
    let fx = fx_with(|c| c.dlp.mode = DlpMode::Block).await;
    // A ping's payload is scanned too (it went unscanned).
    let (mut ws, st) = ws_through(&fx).await;
    assert_eq!(st, 101);
    ws.send(Message::Ping(format!("leak {GH}").into_bytes().into()))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(1008),
        "a ping with a secret"
    );
    // Written past tungstenite, which would not send them. The first was
    // held whole: the proxy's memory grew with every byte that followed.
    let m = [1u8, 2, 3, 4];
    let frames: [(&str, Vec<u8>); 4] = [
        (
            "a ping announcing 2^40 bytes",
            [&[0x89, 0xff, 0, 0, 1, 0, 0, 0, 0, 0][..], &m].concat(),
        ),
        (
            "reserved opcode 3",
            [&[0x83, 0x85][..], &m, b"hello"].concat(),
        ),
        ("RSV1 set", [&[0xc1, 0x85][..], &m, b"hello"].concat()),
        ("unmasked", [&[0x81, 0x05][..], b"hello"].concat()),
    ];
    for (what, frame) in frames {
        let (mut ws, st) = ws_through(&fx).await;
        assert_eq!(st, 101);
        let raw = ws.get_mut();
        raw.write_all(&frame).await.unwrap();
        raw.write_all(&vec![0u8; 64 * 1024]).await.unwrap();
        raw.flush().await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(1002), "{what}");
    }
    // A secret spread over three frames of one message, the middle one a
    // byte long (the context kept was the last frame's bytes only).
    let (mut ws, _) = ws_through(&fx).await;
    let secret = format!("leak {GH}");
    let (a, rest) = secret.as_bytes().split_at(10);
    let (b, c) = rest.split_at(1);
    let raw = ws.get_mut();
    for (first_byte, part) in [(0x01u8, a), (0x00, b), (0x80, c)] {
        let mut f = vec![first_byte, 0x80 | part.len() as u8];
        f.extend_from_slice(&m);
        f.extend(part.iter().enumerate().map(|(i, x)| x ^ m[i % 4]));
        raw.write_all(&f).await.unwrap();
    }
    raw.flush().await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(1008),
        "a secret in 3 frames"
    );
    let ws_msgs = fx
        .up
        .seen()
        .into_iter()
        .filter(|s| s.method == "WS")
        .count();
    assert_eq!(ws_msgs, 0, "a frame reached upstream");
    eventually("no 1002 audit line", || {
        audit_lines(&fx.audit)
            .iter()
            .any(|l| l["note"].as_str().unwrap_or("").contains("reserved opcode"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_encoding_lines_are_read_together() {
    // `identity` and `gzip` on two lines are `identity, gzip` to a server
    // that decodes: the scan read only the first line, saw no encoding, and
    // let a compressed secret through in block mode.
    let fx = block_fx().await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let plain = format!("{} {GH} y", "compressible ".repeat(500));
    std::io::Write::write_all(&mut gz, plain.as_bytes()).unwrap();
    let gzip = gz.finish().unwrap();
    assert!(!String::from_utf8_lossy(&gzip).contains("ghp_"));
    for h2 in [false, true] {
        let got = post_frames(
            &fx,
            h2,
            &[
                ("content-encoding", "identity"),
                ("content-encoding", "gzip"),
            ],
            vec![gzip.clone()],
        )
        .await;
        assert!(
            got.status == 415 || got.status == 403,
            "h2 {h2}: {} {}",
            got.status,
            got.body
        );
    }
    assert!(
        fx.up.seen().iter().all(|s| s.path != "/v1/big"),
        "the body reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_allow_their_ports_only() {
    // A route's credential is for its HTTPS port (or the ports it names),
    // not for whatever else listens on the host.
    let fx = fx().await;
    let (st, head, mut s) = connect(fx.proxy, "api.test:8443").await;
    assert_eq!(st, 403, "{head}");
    let body = read_body_after_head(&mut s, &head).await;
    assert!(body.contains("ports = [8443]"), "{body}");
    let fx = fx_with(|c| {
        c.routes[0].ports = vec![8443];
        // Never dialled: the port is refused first.
        plain_route(c, "plain.test", "127.0.0.1:9".parse().unwrap());
    })
    .await;
    let (st, _, _) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 403, "443 is not among the route's ports");
    for h2 in [false, true] {
        let got = send(
            fx.proxy,
            "api.test:8443",
            "api.test",
            &fx.bottle_ca,
            h2,
            get("https://api.test:8443/ported", "api.test:8443", h2),
        )
        .await;
        assert_eq!(got.status, 200, "{got:?}");
    }
    let seen = fx.up.seen();
    let s = seen.iter().find(|s| s.path == "/ported").unwrap();
    assert_eq!(
        s.header_all("authorization"),
        vec![format!("Bearer {CANARY}")]
    );
    // Plain HTTP: port 80 unless the route names others.
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    s.write_all(b"GET http://plain.test:8080/x HTTP/1.1\r\nHost: plain.test:8080\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let d = bot_bottle_egress::check(
        &{
            let mut c = config(&fx.pki, fx.up.addr, &fx.audit);
            c.routes[0].ports = vec![8443];
            c
        },
        "GET",
        "https://api.test/x",
    );
    assert!(!d.allowed, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_and_frees_its_slot() {
    // hyper closes idle HTTP/1.1 connections after the header timeout; an
    // HTTP/2 one held its slot for the 10-minute idle timeout.
    let fx = fx_with(|c| {
        c.limits.header_read_timeout_ms = 300;
        c.limits.max_connections = 1;
    })
    .await;
    let (st, _, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200);
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"h2"]).await.unwrap();
    let (mut s, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // A stream that outlasts the timeout is not cut: closing is graceful.
    let resp = s
        .send_request(get("https://api.test/sse", "api.test", true))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(HANG, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data_ref().unwrap().as_ref(), b"data: first\n\n");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    fx.up.release.notify_one();
    let rest = tokio::time::timeout(HANG, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest.as_ref(), b"data: second\n\n");
    // Then idle: the proxy ends the connection, and its slot is free.
    tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .expect("an idle HTTP/2 connection stayed open")
        .unwrap()
        .unwrap();
    let got = tokio::time::timeout(
        HANG,
        fx.send(
            "api.test",
            true,
            get("https://api.test/after", "api.test", true),
        ),
    )
    .await
    .expect("the idle connection's slot was not freed");
    assert_eq!(got.status, 200);
}

#[test]
fn the_proxy_raises_its_open_files_limit_to_the_hard_one() {
    // Every connection and upstream socket is a descriptor; a soft limit of
    // 1024 ran out under one client's 128 streams to HTTP/1.1 upstreams.
    let pki = test_pki();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        &pki,
        "127.0.0.1:9".parse().unwrap(),
        &dir.path().join("audit.jsonl"),
    );
    let path = dir.path().join("egress.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_bot-bottle-egress"));
    cmd.arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    // SAFETY: setrlimit is async-signal-safe, and the struct lives for the
    // call.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let r = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 2048,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
    }
    // `listening on` comes once the socket is bound, a moment before the
    // workers start (and raise the limit).
    let open_files = || {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        line
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = open_files();
    while !seen
        .split_whitespace()
        .eq(["Max", "open", "files", "2048", "2048", "files"])
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = open_files();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["2048", "2048"], "{seen}");
}

/// `data` as a body of 16 KiB frames, and a signal sent when its last frame
/// is taken: over HTTP/2 that is once flow control let the frames before it
/// go, so the proxy then holds nearly all of it.
fn body_telling_when_taken(
    data: &[u8],
) -> (
    impl hyper::body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + Unpin,
    tokio::sync::oneshot::Receiver<()>,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let frames: Vec<_> = data.chunks(16 << 10).map(Bytes::copy_from_slice).collect();
    let body = futures_util::stream::iter(frames)
        .map(|b| Ok(hyper::body::Frame::data(b)))
        .chain(futures_util::stream::once(async move {
            let _ = tx.send(());
            Ok(hyper::body::Frame::data(Bytes::new()))
        }));
    (http_body_util::StreamBody::new(Box::pin(body)), rx)
}

/// A body made to be slow to scan — gzip of text full of a DLP rule's
/// prefix, 64 MiB once decoded — is scanned off the worker thread that
/// serves it: another request on the same HTTP/2 connection (so on the
/// same worker) goes through while four of them are still being scanned.
/// Scanned on the worker, each one held that worker, and every connection
/// it serves, until it was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slow_to_scan_does_not_hold_up_other_requests() {
    use std::io::Write as _;
    let fx = fx().await;
    // `AIza[\w-]{35}` starts at every `AIza` and fails 30 bytes on.
    let unit = [b"AIza".as_slice(), &[b'a'; 30], b"."].concat();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&unit.repeat((64 << 20) / unit.len())).unwrap();
    let bomb = Bytes::from(gz.finish().unwrap());
    assert!(bomb.len() < 1 << 20, "held whole: {}", bomb.len());

    let s = h2_through(fx.proxy, "api.test", &fx.bottle_ca).await;
    let mut bombs = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..4 {
        let (body, rx) = body_telling_when_taken(&bomb);
        let req = Request::post("https://api.test/v1/bomb")
            .header("content-encoding", "gzip")
            .body(BodyExt::boxed(body))
            .unwrap();
        let mut s = s.clone();
        bombs.push(tokio::spawn(async move {
            s.send_request(req).await.unwrap().status()
        }));
        sent.push(rx);
    }
    for rx in sent {
        tokio::time::timeout(HANG, rx).await.unwrap().unwrap();
    }
    // Not a timing assertion: the pause lets each bomb's end of stream,
    // sent after its last frame was taken, reach the proxy first.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let small = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"{}")))
    });
    let req = Request::post("https://api.test/v1/small")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(Box::pin(
            small,
        ))))
        .unwrap();
    let resp = tokio::time::timeout(HANG, s.clone().send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The upstream gets each bomb once its scan is done: the small request
    // must reach it first.
    let order: Vec<String> = fx.up.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(
        order.first().map(String::as_str),
        Some("/v1/small"),
        "the small request waited for a bomb's scan: {order:?}"
    );
    for b in bombs {
        assert_eq!(tokio::time::timeout(HANG, b).await.unwrap().unwrap(), 200);
    }
    assert_eq!(
        fx.up.seen().iter().filter(|s| s.path == "/v1/bomb").count(),
        4
    );

    // A request whose connection goes away while its body is being scanned
    // still gets its audit line, and is not sent.
    let (_, _, tcp) = connect(fx.proxy, "api.test:443").await;
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"h2"]).await.unwrap();
    let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t))
        .await
        .unwrap();
    let conn = tokio::spawn(c);
    let (body, rx) = body_telling_when_taken(&bomb);
    let req =
        Request::post("https://api.test/v1/abandoned?k=ghp_abcdefghijklmnopqrstuvwxyz0123456789")
            .header("content-encoding", "gzip")
            .body(body)
            .unwrap();
    let sent = tokio::spawn(async move { s.send_request(req).await.map(|r| r.status()) });
    tokio::time::timeout(HANG, rx).await.unwrap().unwrap();
    // As above: lets the end of stream arrive, so the scan has begun.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    conn.abort();
    sent.abort();
    let line = eventually("no audit line for the abandoned request", || {
        audit_lines(&fx.audit)
            .into_iter()
            .find(|l| l["path"] == "/v1/abandoned")
    })
    .await;
    assert_eq!(line["decision"], "error", "{line}");
    assert!(
        line["note"]
            .as_str()
            .unwrap()
            .contains("went away while its body was held"),
        "{line}"
    );
    // What the scan of its head found is on the line.
    assert_eq!(line["dlp"], serde_json::json!(["github-pat"]), "{line}");
    assert!(!fx.up.seen().iter().any(|s| s.path == "/v1/abandoned"));
}

/// A plain-HTTP upstream that reads no body of a GET (its `Content-Length`
/// is ignored, so what follows is read as the next request on the
/// connection — a CL.0 desync), answers `ok` and keeps the connection open
/// unless asked to close. Records every request head it parses. A fake
/// server on purpose: hyper frames bodies correctly and cannot show this.
async fn desync_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h2 = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let heads = h2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let lower = head.to_ascii_lowercase();
                    let close = lower.contains("\r\nconnection: close");
                    heads.lock().unwrap().push(head);
                    if tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                        || close
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// The agent's body must not become part of another request on a pooled
/// HTTP/1.1 upstream connection, where the next request carries the token:
/// a connection that carried a body is closed after it, and the agent's
/// `Expect` does not go upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_upstream_leaves_unread_never_meets_the_token() {
    let (naive, heads) = desync_upstream().await;
    let fx = fx_with(|c| plain_route(c, "naive.test", naive)).await;
    let mut s = TcpStream::connect(fx.proxy).await.unwrap();
    // A GET whose body is the start of a request that would swallow the
    // next one's head, the injected Authorization with it.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: naive.test\r\nX-Swallow: ";
    s.write_all(
        format!(
            "GET http://naive.test/first HTTP/1.1\r\nHost: naive.test\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = read_head(&mut s).await;
    if head.starts_with("HTTP/1.1 100") {
        head = read_head(&mut s).await;
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body_after_head(&mut s, &head).await, "ok");
    // The next request through the proxy, with the token injected.
    s.write_all(b"GET http://naive.test/second HTTP/1.1\r\nHost: naive.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body_after_head(&mut s, &head).await, "ok");

    let heads = heads.lock().unwrap().clone();
    let second = heads
        .iter()
        .find(|h| h.starts_with("GET /second"))
        .unwrap_or_else(|| panic!("the second request never arrived on its own: {heads:?}"));
    assert!(second.contains(&format!("Bearer {CANARY}")), "{second}");
    for h in &heads {
        assert!(
            !(h.starts_with("GET /smuggled") && h.contains(CANARY)),
            "the agent's body took the next request's token: {h:?}"
        );
        assert!(!h.to_ascii_lowercase().contains("expect:"), "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_first_workers_share_are_served_by_another() {
    // Worker 0 accepts and keeps connections until it serves 33 more than
    // another worker; the ones after that are handed over (the socket
    // leaves its runtime and joins the other's). 48 held at once cross
    // that line on any machine with two or more cores.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("one CPU here: the proxy runs one worker and hands nothing over");
    }
    let fx = fx().await;
    let mut senders = Vec::new();
    for _ in 0..48 {
        let (st, head, tcp) = connect(fx.proxy, "api.test:443").await;
        assert_eq!(st, 200, "{head}");
        let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"http/1.1"])
            .await
            .expect("TLS through the proxy");
        let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(t))
            .await
            .unwrap();
        tokio::spawn(c);
        senders.push(s);
    }
    for (i, s) in senders.iter_mut().enumerate() {
        let req = get(&format!("/v1/held-{i}"), "api.test", false);
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), s.send_request(req))
            .await
            .unwrap_or_else(|_| panic!("connection {i} was never served"))
            .unwrap();
        assert_eq!(resp.status(), 200, "connection {i}");
    }
    let seen = fx.up.seen();
    for i in 0..48 {
        let s = seen
            .iter()
            .find(|s| s.path == format!("/v1/held-{i}"))
            .unwrap_or_else(|| panic!("request {i} did not reach the upstream"));
        assert_eq!(
            s.header_all("authorization"),
            vec![format!("Bearer {CANARY}")]
        );
    }
    // Once they are gone, a new connection is served as before.
    drop(senders);
    let got = fx
        .send("api.test", false, get("/v1/after", "api.test", false))
        .await;
    assert_eq!(got.status, 200);
}

/// A stream that never reads: what the proxy sends it stays in the
/// proxy's buffers (and the kernel's).
struct Deaf<S>(S);

impl<S: Unpin> tokio::io::AsyncRead for Deaf<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Deaf<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, b)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An HTTP/2 client that opens a hundred large downloads with the largest
/// windows and reads nothing: each stream buffers at most a bounded share
/// of its response in the proxy. With hyper's default send buffer (400
/// KiB a stream) the proxy grew by ~1.2 MB a stream, and one connection
/// held ~150 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_nothing_holds_a_bounded_buffer() {
    let pki = test_pki();
    // HTTP/1.1: each stream has an upstream connection of its own, as
    // streams to many hosts would (an HTTP/2 upstream's streams share
    // its connection's window).
    let up = start_upstream_alpn(&pki, &[b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    let bottle_ca = cfg.ca.cert_pem.clone();
    let path = dir.path().join("egress.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bot-bottle-egress"))
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
    }
    let proxy: SocketAddr = line["listening on ".len()..].trim().parse().unwrap();
    // Its later lines (none expected) must not fill the pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let pid = child.id();

    let (st, head, tcp) = connect(proxy, "api.test:443").await;
    assert_eq!(st, 200, "{head}");
    let t = tls(tcp, "api.test", &bottle_ca, &[b"h2"]).await.unwrap();
    let before = rss_kib(pid);
    let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(i32::MAX as u32)
        .initial_connection_window_size(i32::MAX as u32)
        .handshake::<_, Full<Bytes>>(TokioIo::new(Deaf(t)))
        .await
        .unwrap();
    let conn = tokio::spawn(c);
    const STREAMS: u64 = 100;
    let mut reqs = Vec::new();
    for _ in 0..STREAMS {
        let mut s = s.clone();
        reqs.push(tokio::spawn(async move {
            let _ = s
                .send_request(get("https://api.test/big", "api.test", true))
                .await;
        }));
    }
    // Until the proxy stops growing (it has filled what it buffers).
    let (mut last, mut still) = (0, 0);
    for _ in 0..80 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = rss_kib(pid);
        still = if now < last + 256 { still + 1 } else { 0 };
        if still == 4 {
            break;
        }
        last = now;
    }
    let grown = rss_kib(pid).saturating_sub(before);
    for r in reqs {
        r.abort();
    }
    conn.abort();
    child.kill().unwrap();
    child.wait().unwrap();
    // Measured (debug build): ~370 KiB a stream with a 64 KiB send
    // buffer (its upstream connection's TLS and HTTP/1.1 buffers are most
    // of it), ~1.35 MiB with hyper's default.
    assert!(
        grown < STREAMS * 768,
        "the proxy grew by {grown} KiB for {STREAMS} unread streams"
    );
}

/// A client that stops reading a few large downloads from an HTTP/2
/// upstream must not stop other clients' requests to that host. The proxy
/// shares one upstream connection per host (per worker), and h2 gives a
/// stream's bytes back to the connection's window only when they are read:
/// with hyper's default windows (2 MiB a stream, 5 MiB the connection) three
/// unread downloads used up the connection's window, and every other
/// request to the host waited until that client went away (10 minutes for
/// one that stays connected and silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_downloads_do_not_stall_other_requests_to_the_host() {
    let fx = fx().await;
    let (st, head, tcp) = connect(fx.proxy, "api.test:443").await;
    assert_eq!(st, 200, "{head}");
    let t = tls(tcp, "api.test", &fx.bottle_ca, &[b"h2"]).await.unwrap();
    let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(i32::MAX as u32)
        .initial_connection_window_size(i32::MAX as u32)
        .handshake::<_, Full<Bytes>>(TokioIo::new(Deaf(t)))
        .await
        .unwrap();
    tokio::spawn(c);
    for _ in 0..8 {
        let mut s = s.clone();
        tokio::spawn(async move {
            // The answer is kept, never read.
            let _kept = s
                .send_request(get("https://api.test/big", "api.test", true))
                .await;
            std::future::pending::<()>().await;
        });
    }
    let asked = || fx.up.seen().iter().filter(|r| r.path == "/big").count();
    let until = tokio::time::Instant::now() + HANG;
    while asked() < 8 && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(asked(), 8);
    // Give the downloads time to fill what they can (a pause, not a
    // measure: the check below is only that the others are served).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for h2 in [false, true] {
        let got = tokio::time::timeout(
            HANG,
            fx.send(
                "api.test",
                h2,
                get("https://api.test/hello", "api.test", h2),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("another client (h2: {h2}) was not served"));
        assert_eq!(got.status, 200);
    }
}

/// The proxy as its own process (`--config FILE`), reloaded with SIGHUP.
struct Reloadable {
    child: std::process::Child,
    addr: SocketAddr,
    path: PathBuf,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Reloadable {
    fn start(cfg: &ProxyConfig, dir: &std::path::Path) -> Self {
        let path = dir.join("egress.json");
        std::fs::write(&path, serde_json::to_string(cfg).unwrap()).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bot-bottle-egress"))
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let addr: SocketAddr = loop {
            let mut line = String::new();
            assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                break a.parse().unwrap();
            }
        };
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(err).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            addr,
            path,
            lines,
        }
    }

    /// Writes `cfg`, sends SIGHUP and waits for the proxy to say it swapped.
    fn reload(&self, cfg: &ProxyConfig) {
        std::fs::write(&self.path, serde_json::to_string(cfg).unwrap()).unwrap();
        self.hangup();
        loop {
            let line = self.lines.recv_timeout(HANG).expect("no reload log line");
            assert!(!line.contains("reload failed"), "{line}");
            if line.contains("egress config reloaded") {
                return;
            }
        }
    }
}

impl Reloadable {
    /// Sends SIGHUP, as a rotation does after it wrote the file.
    fn hangup(&self) {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Reloadable {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket over HTTP/2 (RFC 8441 extended CONNECT) on `s` to `uri`,
/// with the agent's own `authorization` if given; the proxy must accept it.
async fn h2_websocket(
    s: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    uri: &str,
    authorization: Option<&str>,
) -> tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let mut b = Request::builder()
        .method("CONNECT")
        .uri(uri)
        .header("sec-websocket-version", "13");
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    let mut req = b.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = s.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let io = hyper::upgrade::on(&mut resp).await.unwrap();
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(io),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

/// Whether the WebSocket `ws` is still open: it echoes `probe`, or it ends
/// (a close frame, the end of the stream, an error) within `HANG`.
async fn ws_alive<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, probe: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ws.send(Message::text(probe)).await.is_err() {
        return false;
    }
    match tokio::time::timeout(HANG, ws.next())
        .await
        .expect("the WebSocket neither answered nor closed")
    {
        Some(Ok(Message::Text(t))) => {
            assert_eq!(t.as_str(), probe);
            true
        }
        _ => false,
    }
}

/// A WebSocket lives no longer than a config that allows it: a reload that
/// changes nothing of its route keeps it, one that rotates the token its
/// upgrade carried or removes its route closes it (the session upstream was
/// opened with the old credential). Over HTTP/1.1 upgrade and HTTP/2
/// extended CONNECT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_closes_websockets_it_no_longer_allows() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = config(&pki, up.addr, &audit);
    let bottle_ca = cfg.ca.cert_pem.clone();
    let px = Reloadable::start(&cfg, dir.path());
    let open_h1 = || async {
        let (st, _, tcp) = connect(px.addr, "ws.test:443").await;
        assert_eq!(st, 200);
        let t = tls(tcp, "ws.test", &bottle_ca, &[b"http/1.1"])
            .await
            .unwrap();
        let (ws, resp) = tokio::time::timeout(
            HANG,
            tokio_tungstenite::client_async("wss://ws.test/socket", t),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 101);
        ws
    };
    let mut ws = open_h1().await;
    assert!(ws_alive(&mut ws, "before").await);
    // Another route's change leaves the socket be.
    cfg.routes.retain(|r| r.host != "other.test");
    px.reload(&cfg);
    assert!(ws_alive(&mut ws, "unrelated reload").await);
    // The token its upgrade carried is rotated: closed.
    let rotated = "canary-ROTATED-ws-5e6f7a8b";
    cfg.tokens.insert(
        "REAL_TOKEN".into(),
        bot_bottle_plugin_api::Secret::new(rotated),
    );
    px.reload(&cfg);
    assert!(!ws_alive(&mut ws, "after rotation").await);
    // A new one gets the new token, and lives until its route goes.
    let mut ws = open_h1().await;
    assert!(ws_alive(&mut ws, "reopened").await);
    assert_eq!(
        up.seen()
            .into_iter()
            .rev()
            .find(|s| s.method != "WS")
            .unwrap()
            .header_all("authorization"),
        vec![format!("Bearer {rotated}")]
    );
    cfg.routes.retain(|r| r.host != "ws.test");
    px.reload(&cfg);
    assert!(!ws_alive(&mut ws, "after removal").await);
    let (st, _, _) = connect(px.addr, "ws.test:443").await;
    assert_eq!(st, 403);
    let closed: Vec<_> = audit_lines(&audit)
        .into_iter()
        .filter(|l| l["note"].as_str().unwrap_or("").contains("config reload"))
        .collect();
    assert_eq!(closed.len(), 2, "{closed:?}");
}

/// The same over HTTP/2 extended CONNECT, with DLP off (the plain splice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_closes_an_h2_websocket_whose_token_it_rotates() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    cfg.dlp.mode = DlpMode::Off;
    let bottle_ca = cfg.ca.cert_pem.clone();
    let px = Reloadable::start(&cfg, dir.path());
    let mut s = h2_through(px.addr, "ws.test", &bottle_ca).await;
    s.ready().await.unwrap();
    let mut ws = h2_websocket(&mut s, "https://ws.test/socket", None).await;
    assert!(ws_alive(&mut ws, "before").await);
    cfg.tokens.insert(
        "REAL_TOKEN".into(),
        bot_bottle_plugin_api::Secret::new("canary-ROTATED-h2ws-1a2b"),
    );
    px.reload(&cfg);
    assert!(!ws_alive(&mut ws, "after rotation").await);
}

/// A passthrough tunnel lives no longer than a config that lists its host:
/// a reload that removes it closes the open tunnel (a kept-alive connection
/// in it can send no more), and a new CONNECT is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_closes_passthrough_tunnels_it_removes() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut cfg = config(&pki, up.addr, &audit);
    let px = Reloadable::start(&cfg, dir.path());
    let (st, _, tcp) = connect(px.addr, "pass.test:443").await;
    assert_eq!(st, 200);
    let t = tls(tcp, "pass.test", &pki.ca_pem, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut s, c) = hyper::client::conn::http1::handshake(TokioIo::new(t))
        .await
        .unwrap();
    tokio::spawn(c);
    let r = s
        .send_request(get("https://pass.test/1", "pass.test", false))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    // A rotation elsewhere keeps it.
    cfg.tokens.insert(
        "REAL_TOKEN".into(),
        bot_bottle_plugin_api::Secret::new("canary-ROTATED-pt-9c8d"),
    );
    px.reload(&cfg);
    let r = s
        .send_request(get("https://pass.test/2", "pass.test", false))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
    cfg.tls_passthrough.clear();
    px.reload(&cfg);
    let gone = tokio::time::timeout(HANG, async {
        // The close may race the request's write; it cannot answer.
        match s.ready().await {
            Err(_) => true,
            Ok(()) => s
                .send_request(get("https://pass.test/3", "pass.test", false))
                .await
                .is_err(),
        }
    })
    .await
    .unwrap_or_else(|_| {
        let log: Vec<String> = px.lines.try_iter().collect();
        panic!(
            "the tunnel neither answered nor closed; audit:\n{}\nproxy log:\n{}",
            audit_text(&audit),
            log.join("\n")
        )
    });
    assert!(gone, "the tunnel outlived its passthrough entry");
    assert!(up.seen().iter().all(|x| x.path != "/3"));
    let (st, _, _) = connect(px.addr, "pass.test:443").await;
    assert_eq!(st, 403);
    assert!(audit_lines(&audit)
        .iter()
        .any(|l| l["decision"] == "passthrough"
            && l["note"].as_str().unwrap_or("").contains("config reload")));
}

/// A reload that removes a route refuses the next request on every kind of
/// connection opened before it (kept-alive HTTP/1.1 and HTTP/2 tunnels,
/// plain HTTP on the proxy connection), and nothing is injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removing_a_route_refuses_the_next_request_on_open_connections() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    let (plain_up, plain_seen) = plain_upstream().await;
    plain_route(&mut cfg, "plain.test", plain_up);
    let bottle_ca = cfg.ca.cert_pem.clone();
    let px = Reloadable::start(&cfg, dir.path());
    // HTTP/1.1 and HTTP/2 tunnels to api.test.
    let (_, _, tcp) = connect(px.addr, "api.test:443").await;
    let t = tls(tcp, "api.test", &bottle_ca, &[b"http/1.1"])
        .await
        .unwrap();
    let (mut h1, c) = hyper::client::conn::http1::handshake(TokioIo::new(t))
        .await
        .unwrap();
    tokio::spawn(c);
    let (_, _, tcp) = connect(px.addr, "api.test:443").await;
    let t = tls(tcp, "api.test", &bottle_ca, &[b"h2"]).await.unwrap();
    let (mut h2, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(t))
        .await
        .unwrap();
    tokio::spawn(c);
    // Plain HTTP on the proxy connection itself.
    let tcp = TcpStream::connect(px.addr).await.unwrap();
    let (mut plain, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(c);
    let plain_get = |p: &str| {
        Request::builder()
            .uri(format!("http://plain.test/{p}"))
            .header("host", "plain.test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for (i, st) in [(1, 200), (2, 403)] {
        let r = h1
            .send_request(get(&format!("https://api.test/h1-{i}"), "api.test", false))
            .await
            .unwrap();
        assert_eq!(r.status(), st, "HTTP/1.1 request {i}");
        r.into_body().collect().await.unwrap();
        let r = h2
            .send_request(get(&format!("https://api.test/h2-{i}"), "", true))
            .await
            .unwrap();
        assert_eq!(r.status(), st, "HTTP/2 request {i}");
        let r = plain
            .send_request(plain_get(&format!("p-{i}")))
            .await
            .unwrap();
        assert_eq!(r.status(), st, "plain HTTP request {i}");
        r.into_body().collect().await.unwrap();
        if i == 1 {
            cfg.routes
                .retain(|r| r.host != "api.test" && r.host != "plain.test");
            px.reload(&cfg);
        }
    }
    let paths: Vec<String> = up.seen().into_iter().map(|s| s.path).collect();
    assert!(paths.iter().all(|p| !p.ends_with("-2")), "{paths:?}");
    assert_eq!(plain_seen.lock().unwrap().len(), 1);
}

/// Response masking across a reload: a request sent before it, answered
/// after it, has the token it carried (the old one) masked; a request sent
/// after it has the new one masked. Over one HTTP/2 connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_masks_the_token_each_request_carried() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    let bottle_ca = cfg.ca.cert_pem.clone();
    let px = Reloadable::start(&cfg, dir.path());
    let s = h2_through(px.addr, "api.test", &bottle_ca).await;
    let text = |r: http::Response<hyper::body::Incoming>| async move {
        let h = format!("{:?}", r.headers());
        let b = r.into_body().collect().await.unwrap();
        let trailers = format!("{:?}", b.trailers());
        format!("{h} {} {trailers}", String::from_utf8_lossy(&b.to_bytes()))
    };
    let mut s1 = s.clone();
    let held = tokio::spawn(async move {
        s1.send_request(get("https://api.test/echo?hold", "", true))
            .await
            .unwrap()
    });
    tokio::time::timeout(HANG, async {
        while !up.seen().iter().any(|x| x.path.contains("hold")) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let rotated = "canary-ROTATED-mask-3c4d5e6f";
    cfg.tokens.insert(
        "REAL_TOKEN".into(),
        bot_bottle_plugin_api::Secret::new(rotated),
    );
    px.reload(&cfg);
    up.release.notify_one();
    let old = text(held.await.unwrap()).await;
    assert!(old.contains("you sent") && !old.contains(CANARY), "{old}");
    let mut s2 = s.clone();
    let new = text(
        s2.send_request(get("https://api.test/echo", "", true))
            .await
            .unwrap(),
    )
    .await;
    assert!(!new.contains(rotated), "{new}");
    assert_eq!(
        up.seen().last().unwrap().header_all("authorization"),
        vec![format!("Bearer {rotated}")]
    );
}

/// A SIGHUP sent as soon as the proxy says it listens (a rotation right
/// after launch) is not fatal and not lost: before the reload loop was up,
/// its default action ended the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_right_after_listening_reloads() {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    let bottle_ca = cfg.ca.cert_pem.clone();
    let mut px = Reloadable::start(&cfg, dir.path());
    let rotated = "canary-ROTATED-early-7d8e9f";
    cfg.tokens.insert(
        "REAL_TOKEN".into(),
        bot_bottle_plugin_api::Secret::new(rotated),
    );
    px.reload(&cfg);
    assert!(px.child.try_wait().unwrap().is_none(), "the proxy died");
    let got = send(
        px.addr,
        "api.test:443",
        "api.test",
        &bottle_ca,
        true,
        get("https://api.test/early", "", true),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        up.seen().last().unwrap().header_all("authorization"),
        vec![format!("Bearer {rotated}")]
    );
}
