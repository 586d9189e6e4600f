//! The agent's side of the proxy's TLS: session tickets, resumption and
//! TLS 1.2 clients. Real TLS through the proxy's CONNECT, loopback only.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::*;
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use tokio::net::TcpStream;

/// The proxy with the harness's routes (api.test injects); its CA's PEM.
async fn proxy() -> (std::net::SocketAddr, String, Upstream, tempfile::TempDir) {
    let pki = test_pki();
    let up = start_upstream(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&pki, up.addr, &dir.path().join("audit.jsonl"));
    let ca = cfg.ca.cert_pem.clone();
    (start_proxy(cfg), ca, up, dir)
}

/// A client config trusting `ca`, offering `alpn`, limited to `versions`;
/// it keeps session tickets (rustls's default store).
fn client(
    ca: &str,
    alpn: &[u8],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut c = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    c.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(c)
}

async fn handshake(
    proxy: std::net::SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let (st, head, tcp) = connect(proxy, "api.test:443").await;
    assert_eq!(st, 200, "{head}");
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("api.test").unwrap(), tcp)
        .await
        .expect("TLS through the proxy")
}

/// One GET on an established TLS stream; the answer's status and body.
async fn get_on(t: tokio_rustls::client::TlsStream<TcpStream>, h2: bool) -> (u16, String) {
    let resp = send_on(t, h2, get("https://api.test/v1/x", "api.test", h2)).await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The proxy holds a TLS 1.3 connection's session tickets until it first
/// writes (crate `held_writes`): over HTTP/1.1 nothing arrives between the
/// handshake and the answer. They still arrive, with the answer (or
/// HTTP/2's SETTINGS): the next connection resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tickets_come_with_the_first_answer_and_the_next_connection_resumes() {
    let (proxy, ca, _up, _dir) = proxy().await;
    for (alpn, h2) in [(&b"http/1.1"[..], false), (&b"h2"[..], true)] {
        let cfg = client(&ca, alpn, &[&rustls::version::TLS13]);
        let mut t = handshake(proxy, &cfg).await;
        assert_eq!(t.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        if !h2 {
            // Unheld, the tickets follow the client's Finished at once.
            let early =
                tokio::time::timeout(Duration::from_millis(300), t.get_mut().0.readable()).await;
            assert!(
                early.is_err(),
                "the proxy wrote to an HTTP/1.1 client before it asked anything"
            );
        }
        let (status, body) = tokio::time::timeout(HANG, get_on(t, h2)).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok /v1/x"), "h2={h2}");

        let again = handshake(proxy, &cfg).await;
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "h2={h2}: no ticket arrived with the first connection's answer"
        );
        let (status, _) = tokio::time::timeout(HANG, get_on(again, h2)).await.unwrap();
        assert_eq!(status, 200, "h2={h2}, resumed");
    }
}

/// A TLS 1.2 client waits for the server's last flight before it speaks;
/// holding that flight like TLS 1.3's tickets would hang it. Served, over
/// both protocols, and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_client_is_served_and_resumes() {
    let (proxy, ca, _up, _dir) = proxy().await;
    for (alpn, h2) in [(&b"http/1.1"[..], false), (&b"h2"[..], true)] {
        let cfg = client(&ca, alpn, &[&rustls::version::TLS12]);
        for (i, kind) in [HandshakeKind::Full, HandshakeKind::Resumed]
            .into_iter()
            .enumerate()
        {
            let t = tokio::time::timeout(HANG, handshake(proxy, &cfg))
                .await
                .expect("TLS 1.2 handshake hung");
            assert_eq!(
                t.get_ref().1.protocol_version(),
                Some(rustls::ProtocolVersion::TLSv1_2)
            );
            assert_eq!(t.get_ref().1.handshake_kind(), Some(kind), "h2={h2}, #{i}");
            let (status, body) = tokio::time::timeout(HANG, get_on(t, h2))
                .await
                .expect("TLS 1.2 request hung");
            assert_eq!((status, body.as_str()), (200, "ok /v1/x"), "h2={h2}, #{i}");
        }
    }
}
