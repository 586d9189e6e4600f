//! WebSockets: the upgrade (HTTP/1.1, or HTTP/2 extended CONNECT) with the
//! credential injected, then frames spliced, or, on a route that injects,
//! rewritten with the credential masked (crate::ws_down).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::request::{
    add_note, error_chain, note_masked, reflected_in, refuse_internal, AuditBody,
};
use super::{empty, ms, text, Shared, Target, RELOADED};
use crate::audit::AuditRecord;
use crate::config::DlpMode;
use crate::headers::{is_ws_switch, strip_hop_by_hop};
use crate::reflected::Secrets;
use crate::route::{match_route, RouteMatch};
use crate::tunnel::splice;
use crate::upstream::{self, Body};

/// A WebSocket: HTTP/1.1 upgrade, or HTTP/2 extended CONNECT (RFC 8441)
/// translated to an HTTP/1.1 upgrade upstream. The credential is injected
/// into the upgrade request; frames are then spliced untouched.
#[allow(clippy::too_many_arguments)]
pub(super) async fn websocket(
    shared: Arc<Shared>,
    mut parts: http::request::Parts,
    on_client: hyper::upgrade::OnUpgrade,
    t: Arc<Target>,
    uri: Uri,
    from_h2: bool,
    mut rec: AuditRecord,
    start: Instant,
    secrets: Arc<Secrets>,
) -> Response<Body> {
    let fail = |mut rec: AuditRecord, why: String| {
        rec.status = 502;
        rec.decision = "error".into();
        rec.note = why.clone();
        rec.duration_ms = ms(start);
        shared.audit.write(&rec);
        text(
            StatusCode::BAD_GATEWAY,
            format!("bot-bottle egress: websocket upstream failed: {why}\n"),
        )
    };
    let dialled = if t.tls {
        shared
            .dialer
            .tls(&t.host, t.port, true)
            .await
            .map(|(s, _)| upstream::UpstreamIo::Tls(Box::new(TokioIo::new(s)), false))
    } else {
        shared
            .dialer
            .tcp(&t.host, t.port)
            .await
            .map(|s| upstream::UpstreamIo::Plain(TokioIo::new(s)))
    };
    let io = match dialled {
        Ok(io) => io,
        Err(e) => {
            if let Some(r) = upstream::dial_refused(&e) {
                return refuse_internal(&shared, rec, r, start);
            }
            return fail(rec, e.to_string());
        }
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await {
            Ok(x) => x,
            Err(e) => return fail(rec, e.to_string()),
        };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if shared.dlp().mode != DlpMode::Off || !secrets.is_empty() {
        // No permessage-deflate while DLP is on or the upstream's frames
        // are searched for the injected credential: frames stay readable.
        parts.headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    // The upgrade goes with no body: a length the agent sent would say
    // otherwise.
    parts.headers.remove(header::CONTENT_LENGTH);
    // WebSocket and nothing else: an agent's `Upgrade: h2c, websocket` must
    // not let the upstream switch to a protocol whose requests the routes
    // would never see.
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if from_h2 {
        parts.method = Method::GET;
        let key: [u8; 16] = rand::random();
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key);
        if let Ok(v) = HeaderValue::from_str(&key) {
            parts.headers.insert(header::SEC_WEBSOCKET_KEY, v);
        }
        parts
            .headers
            .entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    if let Some(a) = uri.authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // Origin form on the upgrade connection.
    parts.uri = uri
        .path_and_query()
        .cloned()
        .map(Uri::from)
        .unwrap_or_default();
    parts.version = Version::HTTP_11;
    let up_req = Request::from_parts(parts, Empty::new());
    let mut resp = match sender.send_request(up_req).await {
        Ok(r) => r,
        Err(e) => return fail(rec, error_chain(&e)),
    };
    rec.status = resp.status().as_u16();
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused by upstream: pass its answer back.
        let (mut p, b) = resp.into_parts();
        let (mask, masked) = reflected_in(&mut p, &secrets, &mut rec);
        strip_hop_by_hop(&mut p.headers, false);
        p.version = if from_h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        rec.decision = "allow".into();
        let body = AuditBody {
            inner: b,
            n: 0,
            rec: Some(rec),
            shared: shared.clone(),
            start,
            req_bytes: Arc::new(AtomicU64::new(0)),
            blocked: None,
            mask,
            masked,
            waiting: None,
        };
        return Response::from_parts(p, body.boxed_unsync());
    }
    if !is_ws_switch(resp.headers()) {
        return fail(
            rec,
            "the upstream's 101 switched to a protocol other than WebSocket".into(),
        );
    }
    let on_up = hyper::upgrade::on(&mut resp);
    let mut out = Response::new(empty());
    for name in [
        header::SEC_WEBSOCKET_PROTOCOL,
        header::SEC_WEBSOCKET_EXTENSIONS,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    if from_h2 {
        *out.status_mut() = StatusCode::OK;
    } else {
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        out.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        out.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = resp.headers().get(header::SEC_WEBSOCKET_ACCEPT) {
            out.headers_mut()
                .insert(header::SEC_WEBSOCKET_ACCEPT, v.clone());
        }
    }
    // The headers the agent gets of the upstream's 101, masked once all
    // are in (`Sec-WebSocket-Accept` too: it is the upstream's, copied as
    // it came).
    let masked_head = secrets.mask_headers(out.headers_mut());
    rec.decision = "allow".into();
    let s = shared.clone();
    // What the upgrade was let through with: the socket lives while a
    // reloaded config still routes it there with the same headers injected
    // (a rotated token ends it: the upstream session was opened with the
    // old one).
    let injected = rec
        .route
        .and_then(|i| shared.inject.get(i))
        .cloned()
        .unwrap_or_default();
    let (raw_path, path) = (uri.path().to_owned(), rec.path.clone());
    tokio::spawn(async move {
        // The client connection's slot stays taken while the socket lives.
        let t = t;
        let gone = t.live.revoked(|n| {
            match match_route(
                &n.cfg.routes,
                (&t.host, t.port, t.tls),
                &raw_path,
                &path,
                "GET",
            ) {
                RouteMatch::Allowed(i, r) => {
                    (t.tls || r.plain_http) && n.inject.get(i) == Some(&injected)
                }
                _ => false,
            }
        });
        let dlp = (s.dlp().mode != DlpMode::Off).then(|| s.dlp().clone());
        let secrets = (!secrets.is_empty()).then_some(secrets);
        match tokio::try_join!(on_client, on_up) {
            Ok((c, u)) => {
                if dlp.is_none() && secrets.is_none() {
                    let (o, i, revoked) =
                        splice(TokioIo::new(c), TokioIo::new(u), s.idle(), gone).await;
                    rec.bytes_out = o;
                    rec.bytes_in = i;
                    if revoked {
                        rec.note = RELOADED.into();
                    }
                } else {
                    let w = crate::ws::splice_scanned(
                        TokioIo::new(c),
                        TokioIo::new(u),
                        dlp,
                        secrets,
                        s.idle(),
                        gone,
                    )
                    .await;
                    rec.bytes_out = w.bytes_out;
                    rec.bytes_in = w.bytes_in;
                    if w.revoked {
                        rec.note = RELOADED.into();
                    }
                    note_masked(&mut rec, masked_head + w.masked);
                    if let Some(why) = w.upstream_error {
                        add_note(
                            &mut rec,
                            &format!("WebSocket closed (1002): the upstream sent {why}"),
                        );
                    }
                    if !w.findings.is_empty() {
                        tracing::warn!(host = %rec.host, rules = ?w.findings, "DLP findings in WebSocket frames");
                        rec.dlp = w.findings;
                    }
                    // Added to the note, not put in its place: what the
                    // upstream sent back before (above) must stay on it.
                    if w.blocked {
                        rec.decision = "dlp_block".into();
                        add_note(
                            &mut rec,
                            "WebSocket closed (1008) before the frame was sent",
                        );
                    } else if let Some(why) = w.protocol_error {
                        add_note(
                            &mut rec,
                            &format!("WebSocket closed (1002) before {why} was sent"),
                        );
                    }
                }
            }
            Err(e) => rec.note = format!("websocket upgrade failed: {e}"),
        }
        rec.duration_ms = ms(start);
        s.audit.write(&rec);
    });
    out
}
