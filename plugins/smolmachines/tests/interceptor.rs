//! The interceptor adapter in front of the real egress proxy, over real TCP
//! on loopback, with a real HTTPS upstream. No guest boots here: the client
//! in `common::EngineSide` stands in for the smolvm engine, speaking the
//! exact `SMOLICPT` preamble and reading the verdict byte the way smolvm
//! does for every admitted guest TCP flow.

mod common;

use bot_bottle_plugin_smolmachines::gate;
use common::*;
use tokio::io::AsyncWriteExt;

const ALIAS: &str = "198.18.0.1:3128";

struct Fixture {
    up: Upstream,
    engine: EngineSide,
    ca_pem: String,
    token: String,
    audit: std::path::PathBuf,
    egress: gate::Egress,
    config: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let up = Upstream::start(&[HOST]).await;
    let token = canary();
    let (config, ca_pem) = proxy_config("bb-t-0001", &up, &token);
    let itoken = gate::new_token();
    let setup = setup("bb-t-0001", config);
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("egress.log");
    let egress = gate::start_egress(&setup, gate::parse_token(&itoken).unwrap(), Some(&audit))
        .await
        .unwrap();
    Fixture {
        up,
        engine: EngineSide {
            adapter: egress.bound.adapter,
            token: gate::parse_token(&itoken).unwrap(),
        },
        ca_pem,
        token,
        audit,
        egress,
        config: setup.config,
        _dir: dir,
    }
}

fn audit_lines(f: &Fixture) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&f.audit)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn proxy_alias_flows_reach_the_proxy_which_injects_the_real_token() {
    let f = fixture().await;
    let (mut s, verdict) = f.engine.connect(ALIAS).await;
    assert_eq!(verdict, Some(0), "the proxy alias is admitted");
    s.write_all(format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_head(&mut s).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut t = tls(s, HOST, &f.ca_pem).await.unwrap();
    let (status, body) = request(&mut t, "GET", HOST, "/v1/hello", "Bearer bot-bottle-dummy").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(&f.token));
    let reqs = f.up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0]["headers"]["authorization"],
        format!("Bearer {}", f.token),
        "the upstream gets the real token in place of the dummy"
    );
    let audit = std::fs::read_to_string(&f.audit).unwrap();
    assert!(audit.contains("\"injected\":true"), "{audit}");
    assert!(
        !audit.contains(&f.token),
        "the audit log must not hold the token"
    );
}

#[tokio::test]
async fn a_direct_tls_flow_is_routed_by_its_sni_through_the_proxy() {
    let f = fixture().await;
    // The guest dialled some IP directly, ignoring HTTPS_PROXY.
    let (s, verdict) = f.engine.connect("203.0.113.7:443").await;
    assert_eq!(verdict, Some(0));
    let mut t = tls(s, HOST, &f.ca_pem).await.unwrap();
    let (status, body) =
        request(&mut t, "GET", HOST, "/v1/direct", "Bearer bot-bottle-dummy").await;
    assert_eq!(status, 200, "{body}");
    let reqs = f.up.requests();
    assert_eq!(reqs[0]["path"], "/v1/direct");
    assert_eq!(
        reqs[0]["headers"]["authorization"],
        format!("Bearer {}", f.token)
    );
}

#[tokio::test]
async fn a_direct_flow_whose_host_header_disagrees_with_its_sni_is_refused() {
    let f = fixture().await;
    let (s, _) = f.engine.connect("203.0.113.7:443").await;
    let mut t = tls(s, HOST, &f.ca_pem).await.unwrap();
    let (status, _) = request(&mut t, "GET", "evil.bottle.test", "/v1/x", "Bearer d").await;
    assert_ne!(status, 200);
    assert!(f.up.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn direct_flows_to_unlisted_hosts_are_closed_and_audited() {
    let f = fixture().await;
    let (s, verdict) = f.engine.connect("203.0.113.8:443").await;
    assert_eq!(verdict, Some(0), "TLS flows are decided on their SNI");
    assert!(
        tls(s, "denied.bottle.test", &f.ca_pem).await.is_err(),
        "the handshake must not complete"
    );

    let (mut s, verdict) = f.engine.connect("203.0.113.8:80").await;
    assert_eq!(verdict, Some(0));
    let (status, body) = request(&mut s, "GET", "denied.bottle.test", "/", "x").await;
    assert_eq!(status, 403);
    assert!(body.contains("denied.bottle.test"), "{body}");

    let lines = audit_lines(&f);
    let denied: Vec<_> = lines
        .iter()
        .filter(|l| l["host"] == "denied.bottle.test" && l["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2, "{lines:?}");
    assert!(f.up.requests().is_empty());
}

#[tokio::test]
async fn other_ports_are_refused_at_connect_time() {
    let f = fixture().await;
    let (_, verdict) = f.engine.connect("203.0.113.9:22").await;
    assert_eq!(verdict, Some(111), "ECONNREFUSED for the guest's connect()");
    let (_, verdict) = f.engine.connect("[2001:db8::1]:5432").await;
    assert_eq!(verdict, Some(111));
    // The proxy alias's IP on another port is not the proxy.
    let (_, verdict) = f.engine.connect("198.18.0.1:443").await;
    assert_eq!(verdict, Some(111));
    assert!(audit_lines(&f).iter().any(|l| l["port"] == 22));
}

#[tokio::test]
async fn a_wrong_token_gets_no_verdict_at_all() {
    let f = fixture().await;
    let mut wrong = f.engine.token;
    wrong[31] ^= 1;
    let impostor = EngineSide {
        adapter: f.engine.adapter,
        token: wrong,
    };
    let (_, verdict) = impostor.connect(ALIAS).await;
    assert_eq!(verdict, None, "a host process without the token is dropped");

    // Garbage instead of a preamble.
    let mut s = tokio::net::TcpStream::connect(f.engine.adapter)
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n_____________________________")
        .await
        .unwrap();
    let mut b = [0u8; 1];
    use tokio::io::AsyncReadExt;
    assert!(matches!(s.read(&mut b).await, Ok(0) | Err(_)));
}

#[tokio::test]
async fn paths_outside_the_route_are_denied_by_the_proxy() {
    let f = fixture().await;
    let (mut s, _) = f.engine.connect(ALIAS).await;
    s.write_all(format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let _ = read_head(&mut s).await.unwrap();
    let mut t = tls(s, HOST, &f.ca_pem).await.unwrap();
    let (status, _) = request(&mut t, "GET", HOST, "/admin", "Bearer d").await;
    assert_eq!(status, 403);
    assert!(f.up.requests().is_empty());
}

#[tokio::test]
async fn a_live_update_rotates_the_injected_token_for_new_flows() {
    let mut f = fixture().await;
    let rotated = canary();
    let mut cfg: serde_json::Value = serde_json::from_str(&f.config).unwrap();
    cfg["tokens"]["API_TOKEN"] = rotated.clone().into();
    f.egress.reload(&cfg.to_string()).await.unwrap();
    let (s, verdict) = f.engine.connect("203.0.113.7:443").await;
    assert_eq!(verdict, Some(0));
    let mut t = tls(s, HOST, &f.ca_pem).await.unwrap();
    let (status, _) = request(&mut t, "GET", HOST, "/v1/rotated", "Bearer d").await;
    assert_eq!(status, 200);
    let reqs = f.up.requests();
    assert_eq!(
        reqs[0]["headers"]["authorization"],
        format!("Bearer {rotated}")
    );

    // A broken config is refused without a value in the message, and the
    // running one stays.
    let e = f
        .egress
        .reload("{\"schema\": 1, \"tokens\": {\"X\": \"canary-zzz\"}}")
        .await
        .unwrap_err();
    assert!(!e.contains("canary-zzz"), "{e}");
    let _ = &f.token;
}

#[tokio::test]
async fn a_direct_plain_http_request_on_a_plain_http_route_goes_through_the_proxy() {
    use tokio::io::AsyncWriteExt as _;
    // A plain-HTTP upstream that records the head it got.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                if let Some((head, _)) = read_head(&mut c).await {
                    seen.lock().unwrap().push(head);
                    let _ = c
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                        .await;
                }
            });
        }
    });
    let up = Upstream::start(&[HOST]).await;
    let token = canary();
    let (config, _) = proxy_config("bb-plain-0001", &up, &token);
    let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    cfg["routes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "host": "plain.bottle.test",
            "plain_http": true,
            "inject": [{"header": "x-api-key", "value": "{token}", "token_ref": "API_TOKEN"}],
        }));
    cfg["upstream"]["resolve"]["plain.bottle.test"] = plain.to_string().into();
    let itoken = gate::new_token();
    let dir = tempfile::tempdir().unwrap();
    let eg = gate::start_egress(
        &setup("bb-plain-0001", cfg.to_string()),
        gate::parse_token(&itoken).unwrap(),
        Some(&dir.path().join("egress.log")),
    )
    .await
    .unwrap();
    let engine = EngineSide {
        adapter: eg.bound.adapter,
        token: gate::parse_token(&itoken).unwrap(),
    };
    let (mut s, verdict) = engine.connect("203.0.113.10:80").await;
    assert_eq!(verdict, Some(0));
    let (status, body) = request(&mut s, "GET", "plain.bottle.test", "/x?q=1", "ignored").await;
    assert_eq!(status, 200, "{body}");
    let heads = seen.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /x?q=1 http/1.1"), "{head}");
    assert!(
        head.contains(&format!("x-api-key: {token}")),
        "the proxy injected: {head}"
    );

    // The Host header's port must be the port the guest dialled.
    let (mut s, _) = engine.connect("203.0.113.10:80").await;
    let (status, _) = request(&mut s, "GET", "plain.bottle.test:8080", "/x", "d").await;
    assert_eq!(status, 403);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_port_a_route_names_is_admitted_for_direct_flows() {
    let up = Upstream::start(&[HOST]).await;
    let token = canary();
    let (config, ca_pem) = proxy_config("bb-port-0001", &up, &token);
    let mut cfg: serde_json::Value = serde_json::from_str(&config).unwrap();
    cfg["routes"][0]["ports"] = serde_json::json!([8443]);
    let itoken = gate::new_token();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("egress.log");
    let eg = gate::start_egress(
        &setup("bb-port-0001", cfg.to_string()),
        gate::parse_token(&itoken).unwrap(),
        Some(&audit),
    )
    .await
    .unwrap();
    let engine = EngineSide {
        adapter: eg.bound.adapter,
        token: gate::parse_token(&itoken).unwrap(),
    };
    let (s, verdict) = engine.connect("203.0.113.7:8443").await;
    assert_eq!(verdict, Some(0), "the route names 8443");
    let mut t = tls(s, HOST, &ca_pem).await.unwrap();
    // A Host without a port would name 443, and the proxy would refuse it.
    let host_port = format!("{HOST}:8443");
    let (status, body) = request(&mut t, "GET", &host_port, "/v1/port", "Bearer d").await;
    assert_eq!(status, 200, "{body}");
    let reqs = up.requests();
    assert_eq!(reqs[0]["path"], "/v1/port");
    assert_eq!(
        reqs[0]["headers"]["authorization"],
        format!("Bearer {token}")
    );

    let (_, verdict) = engine.connect("203.0.113.7:8444").await;
    assert_eq!(verdict, Some(111), "no route names 8444");
    // 443 is admitted at connect time, but this route names 8443 only, so
    // the proxy refuses the name on 443: nothing more reaches the upstream.
    let (s, verdict) = engine.connect("203.0.113.7:443").await;
    assert_eq!(verdict, Some(0));
    assert!(tls(s, HOST, &ca_pem).await.is_err());
    assert_eq!(up.requests().len(), 1);
    let log = std::fs::read_to_string(&audit).unwrap();
    assert!(log.contains("\"port\":8444"), "{log}");
    assert!(!log.contains(&token));
}
