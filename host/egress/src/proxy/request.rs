//! One request inside an intercepted tunnel (or a plain `http://` one):
//! `handle` runs its checks in order (head, route, the body's `_method`,
//! DLP), injects the route's credential and forwards it, or answers with a
//! refusal that names what would allow it. Every request gets one audit
//! line, also when the agent goes away mid-way.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bot_bottle_plugin_api::{EgressRoute, LocalResponse};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use super::websocket::websocket;
use super::{full, ms, text, Shared, Target, LOCAL_BODY_MAX, MAX_REPEATED_HEADER_BYTES};
use crate::audit::AuditRecord;
use crate::body_override;
use crate::config::DlpMode;
use crate::dlp_body::{self, Refused};
use crate::headers::{
    authority_port, is_ws_upgrade, repeated_bytes, strip_hop_by_hop, strip_other_names,
};
use crate::reflected::{Masker, Secrets};
use crate::route::{self, canon_host, match_route, normalise_path, RouteMatch};
use crate::upstream::{self, Body, BoxError};

/// The request's absolute URI upstream: the connection's scheme and
/// authority (built once per connection) and the request's path and query.
/// Assembled from parts: no formatting and no parsing per request.
fn absolute_uri(t: &Target, pq: Option<&http::uri::PathAndQuery>) -> Option<Uri> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if t.tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    uri.authority = Some(t.authority.clone()?);
    uri.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(uri).ok()
}

/// Checks every authority the request claims against the connection's.
fn check_identity<B>(req: &Request<B>, t: &Target) -> Result<(), String> {
    // Every name the request gives itself: the request target's authority
    // (absolute form, HTTP/2 `:authority`) and each `Host` header. Checked
    // in place: this runs on every request.
    let mut named = false;
    let default = if t.tls { 443 } else { 80 };
    let agrees = |c: &str| -> Result<(), String> {
        let a: http::uri::Authority = c
            .parse()
            .map_err(|_| format!("{c:?} is not a host[:port]"))?;
        if a.as_str().contains('@') {
            return Err("userinfo in the authority is refused".into());
        }
        let port = authority_port(&a, default)
            .ok_or_else(|| format!("{c:?} has a port that is not a number from 0 to 65535"))?;
        if port != t.port || canon_host(a.host()) != t.host {
            return Err(format!(
                "the request names {c} but the connection is to {}:{}",
                t.host, t.port
            ));
        }
        Ok(())
    };
    if let Some(a) = req.uri().authority() {
        named = true;
        agrees(a.as_str())?;
    }
    for v in req.headers().get_all(header::HOST) {
        named = true;
        agrees(
            v.to_str()
                .map_err(|_| "the Host header is not text".to_string())?,
        )?;
    }
    if !named {
        return Err("the request names no host (Host / :authority)".into());
    }
    Ok(())
}

/// One request inside an intercepted tunnel (or a plain `http://` one), in
/// the order its checks run: the head, a local answer, the route, the
/// body's `_method`, DLP, injection, then the upstream (or a WebSocket).
pub(super) async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    t: Arc<Target>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let ws_h2 = method == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    let ws_h1 = req.version() == Version::HTTP_11 && is_ws_upgrade(req.headers());
    let path = normalise_path(req.uri().path());
    let mut rec = shared.record(method.as_str(), &t.host, t.port, path.clone());
    let no = Refusal {
        shared: &shared,
        start,
        host: &t.host,
        method: method.as_str(),
        path: &path,
    };

    if let Some(refused) = refuse_head(&no, &mut rec, &mut req, &t, ws_h1) {
        return refused;
    }
    if let Some(lr) = local_response(&shared, &t, &path, method.as_str()) {
        return answer_locally(&shared, lr, req, rec, start).await;
    }
    if method.as_str().eq_ignore_ascii_case("CONNECT") && !ws_h2 {
        return no.answer(
            &mut rec,
            StatusCode::METHOD_NOT_ALLOWED,
            "deny",
            "CONNECT inside a tunnel".into(),
            "bot-bottle egress: CONNECT inside a tunnel is refused\n".into(),
        );
    }
    let (idx, r) = match allowing_route(&no, &mut rec, &t, &req, ws_h2) {
        Ok(allowed) => allowed,
        Err(refused) => return refused,
    };

    let on_client = (ws_h1 || ws_h2).then(|| hyper::upgrade::on(&mut req));
    let client_version = req.version();
    let (mut parts, body) = req.into_parts();
    let has_body = !body.is_end_stream();
    let notes = BodyNotes::default();
    let body: Body = CountedBody {
        inner: body,
        n: notes.bytes.clone(),
    }
    .boxed_unsync();
    let body = match check_body_method(&no, &mut rec, r, &parts, body, has_body, &notes).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let body = match dlp_scan(&no, &mut rec, &parts, body, &notes).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let secrets = inject(
        &shared,
        idx,
        r,
        &mut parts,
        has_body && on_client.is_none(),
        &mut rec,
    );

    let Some(uri) = absolute_uri(&t, parts.uri.path_and_query()) else {
        return no.answer(
            &mut rec,
            StatusCode::BAD_REQUEST,
            "error",
            "bad URI".into(),
            "bot-bottle egress: bad request URI\n".into(),
        );
    };
    if let Some(on_client) = on_client {
        return websocket(
            shared.clone(),
            parts,
            on_client,
            t,
            uri,
            ws_h2,
            rec,
            start,
            secrets,
        )
        .await;
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let up_req = Request::from_parts(parts, body);
    forward(&no, rec, up_req, client_version, secrets, notes).await
}

/// How `handle` answers a request it does not forward: the audit line
/// finished and written, a short text for the agent.
struct Refusal<'a> {
    shared: &'a Arc<Shared>,
    start: Instant,
    host: &'a str,
    method: &'a str,
    /// Normalised.
    path: &'a str,
}

impl Refusal<'_> {
    /// `status` with `body`; the audit line says `decision` and `note`.
    fn answer(
        &self,
        rec: &mut AuditRecord,
        status: StatusCode,
        decision: &str,
        note: String,
        body: String,
    ) -> Response<Body> {
        rec.status = status.as_u16();
        rec.decision = decision.into();
        rec.note = note;
        rec.duration_ms = ms(self.start);
        self.shared.audit.write(rec);
        text(status, body)
    }

    /// A refusal the agent's user can lift: `fix` says how.
    fn deny_fix(
        &self,
        rec: &mut AuditRecord,
        status: StatusCode,
        why: String,
        fix: &str,
    ) -> Response<Body> {
        let body = route::deny_fix_body(self.host, self.method, self.path, &why, fix);
        self.answer(rec, status, "deny", why, body)
    }

    /// A method override the route does not allow: `m`, found in `where_`.
    fn deny_override(&self, rec: &mut AuditRecord, m: &str, where_: &str) -> Response<Body> {
        // The agent's text: shown only if it looks like a method.
        let m = if m.len() <= 16 && m.bytes().all(|b| b.is_ascii_alphabetic()) {
            m
        } else {
            "(not a method)"
        };
        self.deny_fix(
            rec,
            StatusCode::FORBIDDEN,
            format!("the request asks for method {m} ({where_}), which the route does not allow"),
            "To allow it, add the method to the route's `methods`, if the agent should have it",
        )
    }

    /// A held body that was not sent.
    fn held(&self, rec: &mut AuditRecord, e: Refused) -> Response<Body> {
        let (status, decision, why, text) = held_refusal(e, self.shared, self.host);
        self.answer(rec, status, decision, why, text)
    }
}

/// What the request body's wrappers report back while it streams: the
/// bytes sent, and what stopped it (read when the upstream request then
/// fails).
#[derive(Default)]
struct BodyNotes {
    bytes: Arc<AtomicU64>,
    /// A `_method` the route refuses, in a JSON body read as it streamed.
    method: body_override::Stopped,
    /// DLP rules `block` mode found past the cap.
    dlp: dlp_body::Blocked,
}

/// Refusals that read only the head, before any route: a head that
/// repeats too much, a name that is not the connection's, a method refused
/// everywhere. The hop-by-hop headers go on the way.
fn refuse_head(
    no: &Refusal,
    rec: &mut AuditRecord,
    req: &mut Request<Incoming>,
    t: &Target,
    ws_h1: bool,
) -> Option<Response<Body>> {
    // Before anything reads the head (see `MAX_REPEATED_HEADER_BYTES`).
    // HTTP/1.1 sends every copy: no cheaper than sending a long head.
    if req.version() == Version::HTTP_2 {
        let repeated = repeated_bytes(req.headers());
        if repeated > MAX_REPEATED_HEADER_BYTES {
            let why = format!(
                "{repeated} bytes of header fields repeat an earlier field (at most \
                 {MAX_REPEATED_HEADER_BYTES})"
            );
            return Some(no.answer(
                rec,
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "deny",
                why.clone(),
                format!("bot-bottle egress: refused, nothing sent: {why}\n"),
            ));
        }
    }
    if let Err(why) = check_identity(req, t) {
        return Some(no.answer(
            rec,
            StatusCode::MISDIRECTED_REQUEST,
            "identity_mismatch",
            why.clone(),
            format!("bot-bottle egress: refused, nothing injected: {why}\n"),
        ));
    }
    // Hop-by-hop headers go now, before any check reads the headers: what
    // `Connection` lists never reaches the upstream, so a check must not
    // read it either (`Connection: content-type` sent a form body read as
    // JSON here to Rack without its content-type, which Rack reads as a
    // form: its `_method` field unchecked).
    strip_hop_by_hop(req.headers_mut(), ws_h1);
    if route::always_refused(no.method) {
        let m = no.method.to_ascii_uppercase();
        return Some(no.answer(
            rec,
            StatusCode::METHOD_NOT_ALLOWED,
            "deny",
            format!("{m} is refused"),
            format!("bot-bottle egress: {m} is refused\n"),
        ));
    }
    None
}

/// The local response configured for this request. Inside TLS only, as
/// `check` says and the CONNECT gate admits them.
fn local_response<'s>(
    shared: &'s Shared,
    t: &Target,
    path: &str,
    method: &str,
) -> Option<&'s LocalResponse> {
    shared.cfg.local_responses.iter().find(|l| {
        t.tls
            && route::host_matches(&l.host, &t.host)
            && normalise_path(&l.path) == path
            && l.method.eq_ignore_ascii_case(method)
    })
}

/// Answered here, never forwarded: the body holds dummies only.
async fn answer_locally(
    shared: &Shared,
    lr: &LocalResponse,
    req: Request<Incoming>,
    mut rec: AuditRecord,
    start: Instant,
) -> Response<Body> {
    // The request body (a token refresh: small) is read first. Answered
    // mid-upload, an HTTP/2 stream ends with RST_STREAM(NO_ERROR), which
    // curl 7.88 reports as a framing error (seen in the Claude Docker
    // test).
    let drain = http_body_util::Limited::new(req.into_body(), LOCAL_BODY_MAX).collect();
    let _ = tokio::time::timeout(shared.header_timeout(), drain).await;
    rec.status = lr.status;
    rec.decision = "local".into();
    rec.duration_ms = ms(start);
    shared.audit.write(&rec);
    let mut r = Response::new(full(lr.body.clone()));
    *r.status_mut() = StatusCode::from_u16(lr.status).unwrap_or(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&lr.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The route that allows the request (its index too), or the refusal: no
/// route names the host, none allows this port, path or method, a method
/// override in the head the route does not allow, plain HTTP the route
/// does not allow.
// The refusal is the answer itself, made once per request at most.
#[allow(clippy::result_large_err)]
fn allowing_route<'a>(
    no: &Refusal<'a>,
    rec: &mut AuditRecord,
    t: &Target,
    req: &Request<Incoming>,
    ws_h2: bool,
) -> Result<(usize, &'a EgressRoute), Response<Body>> {
    let shared: &'a Shared = no.shared;
    let match_method = if ws_h2 { "GET" } else { no.method };
    let (idx, r) = match match_route(
        &shared.cfg.routes,
        (&t.host, t.port, t.tls),
        req.uri().path(),
        no.path,
        match_method,
    ) {
        RouteMatch::Allowed(i, r) => (i, r),
        RouteMatch::HostOnly(miss) => {
            return Err(no.answer(
                rec,
                StatusCode::FORBIDDEN,
                "deny",
                miss.why(no.method),
                route::deny_miss_body(&t.host, no.method, no.path, &miss),
            ));
        }
        RouteMatch::NoHost => {
            let why = "no [[egress.route]] names this host";
            return Err(no.answer(
                rec,
                StatusCode::FORBIDDEN,
                "deny",
                why.into(),
                route::deny_body(&t.host, no.method, no.path, why),
            ));
        }
    };
    rec.route = Some(idx);
    if let Some(m) = route::method_override(req.headers(), req.uri().query())
        .find(|m| route::refuses_override(r, m))
    {
        return Err(no.deny_override(rec, &m, "a method override"));
    }
    if !t.tls && !r.plain_http {
        return Err(no.deny_fix(
            rec,
            StatusCode::FORBIDDEN,
            "plain HTTP is refused unless the route sets plain_http = true".into(),
            "Use https://, or set `plain_http = true` on the route if the credential may \
             travel unencrypted",
        ));
    }
    Ok((idx, r))
}

/// A `_method` field in a POST's body, where the route limits methods
/// (crate::body_override): read before any of the body is sent, or, for
/// JSON past the cap, as it goes (a refused one stops it: `notes.method`).
async fn check_body_method(
    no: &Refusal<'_>,
    rec: &mut AuditRecord,
    r: &EgressRoute,
    parts: &http::request::Parts,
    body: Body,
    has_body: bool,
    notes: &BodyNotes,
) -> Result<Body, Response<Body>> {
    let kinds = if !r.methods.is_empty() && has_body {
        body_override::kinds(&parts.method, &parts.headers)
    } else {
        Vec::new()
    };
    if kinds.contains(&body_override::Kind::Json) {
        if let Some(cs) = body_override::unread_json_charset(&parts.headers) {
            return Err(no.deny_fix(
                rec,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a JSON body in charset {cs:?}, on a route that limits methods, cannot be read for a _method field"
                ),
                "Express decodes it before it reads a _method field, which asks servers for \
                 another method. Send it as UTF-8",
            ));
        }
    }
    if kinds.is_empty() {
        return Ok(body);
    }
    let shared = no.shared;
    let cap = shared.dlp().max_body;
    let mut abandoned = DropAudit {
        rec: Some(rec.clone()),
        shared: shared.clone(),
        start: no.start,
        req_bytes: notes.bytes.clone(),
        decision: "error",
        note:
            "client went away while its body was held to read its _method field; nothing was sent",
    };
    let held = dlp_body::hold_whole(body, cap, &shared.dlp_budget, shared.header_timeout()).await;
    abandoned.rec = None;
    let (mut body, whole) = match held {
        Ok(held) => held,
        Err(e) => return Err(no.held(rec, e)),
    };
    let enc = content_encoding(&parts.headers);
    let too_big = |rec: &mut AuditRecord, what: &str| {
        no.deny_fix(
            rec,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{what} over {cap} bytes, on a route that limits methods, cannot be read for a _method field"
            ),
            "A _method field in a form or JSON body asks servers for another method. Send a \
             smaller or uncompressed body, or raise dlp.max_body_bytes in [egress]",
        )
    };
    let decodes = body_override::express_decodes(enc.as_deref());
    match whole {
        None if decodes => return Err(too_big(rec, "a compressed body")),
        None if kinds.iter().any(|k| *k != body_override::Kind::Json) => {
            return Err(too_big(rec, "a form body"))
        }
        None => {
            let this_route = r.clone();
            let refused = Box::new(move |m: &str| route::refuses_override(&this_route, m));
            body =
                body_override::WatchedJson::new(body, refused, notes.method.clone()).boxed_unsync();
            add_note(
                rec,
                &format!(
                    "a JSON body over {cap} bytes was read for a _method field as it streamed"
                ),
            );
        }
        Some(raw) => {
            // As sent, and as Express reads it once decoded.
            let mut texts = vec![raw.clone()];
            if decodes {
                match body_override::decoded(&raw, enc.as_deref(), cap) {
                    Ok(Some(d)) => texts.push(Bytes::from(d)),
                    Ok(None) => {}
                    Err(()) => return Err(too_big(rec, "a body that decodes")),
                }
            }
            for kind in &kinds {
                for text in &texts {
                    let asked = match body_override::methods_in(kind, text.clone()).await {
                        Ok(asked) => asked,
                        Err(e) => {
                            return Err(no.deny_fix(
                                rec,
                                StatusCode::BAD_REQUEST,
                                format!(
                                    "a multipart body whose _method fields cannot be read for \
                                     certain ({e}), on a route that limits methods"
                                ),
                                "Its fields are read for a _method field, which asks servers \
                                 for another method",
                            ))
                        }
                    };
                    let mut asked = asked.iter().flat_map(|v| v.split(',')).map(str::trim);
                    if let Some(m) = asked.find(|m| route::refuses_override(r, m)) {
                        return Err(no.deny_override(rec, m, "the body's _method field"));
                    }
                }
            }
        }
    }
    Ok(body)
}

/// DLP, before anything is injected: the head, then the body, held whole up
/// to the cap or scanned as it streams past it (what `block` mode finds
/// there goes in `notes.dlp`). `block` refuses what it finds before the
/// request goes.
async fn dlp_scan(
    no: &Refusal<'_>,
    rec: &mut AuditRecord,
    parts: &http::request::Parts,
    mut body: Body,
    notes: &BodyNotes,
) -> Result<Body, Response<Body>> {
    let shared = no.shared;
    if shared.dlp().mode == DlpMode::Off {
        return Ok(body);
    }
    let mut findings = Vec::new();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    shared.dlp().scan_head(pq, &parts.headers, &mut findings);
    if !body.is_end_stream() {
        // Every line, as a server reads them: `identity` and `gzip` on
        // two lines are `identity, gzip` (stacked: not decodable here).
        let enc = content_encoding(&parts.headers);
        // A request the agent abandons while its body is held or
        // scanned still gets its audit line.
        let mut abandoned = DropAudit {
            rec: Some(AuditRecord {
                dlp: findings.clone(),
                ..rec.clone()
            }),
            shared: shared.clone(),
            start: no.start,
            req_bytes: notes.bytes.clone(),
            decision: "error",
            note: "client went away while its body was held for the DLP scan; nothing was sent",
        };
        let held = dlp_body::hold_and_scan(
            body,
            enc.as_deref(),
            shared.dlp(),
            &shared.dlp_budget,
            shared.header_timeout(),
            &mut findings,
            &notes.dlp,
        )
        .await;
        abandoned.rec = None;
        // Refused or not, the line names what the scan found.
        rec.dlp.clone_from(&findings);
        match held {
            Ok((b, note)) => {
                body = b;
                if let Some(note) = note {
                    add_note(rec, &note);
                }
            }
            Err(e) => {
                // The DLP's hold read a JSON body that its `_method`
                // check stopped.
                if let Some(m) = take_stopped(&notes.method) {
                    return Err(no.deny_override(rec, &m, "the body's _method field"));
                }
                return Err(no.held(rec, e));
            }
        }
    }
    if !findings.is_empty() {
        tracing::warn!(host = %no.host, rules = ?findings, "DLP findings in an outbound request");
        rec.dlp = findings.clone();
        if shared.dlp().mode == DlpMode::Block {
            return Err(no.answer(
                rec,
                StatusCode::FORBIDDEN,
                "dlp_block",
                String::new(),
                format!(
                    "bot-bottle egress: request to {} blocked by DLP rule(s) {}; it was not sent\n",
                    no.host,
                    findings.join(", ")
                ),
            ));
        }
    }
    Ok(body)
}

/// Injection: the route's headers replace the agent's copies, never merge
/// with them. `h1_body`: a body to an HTTP/1.1 upstream that is no
/// upgrade. Returns the injected values the answer must not carry back.
fn inject(
    shared: &Shared,
    idx: usize,
    r: &EgressRoute,
    parts: &mut http::request::Parts,
    h1_body: bool,
    rec: &mut AuditRecord,
) -> Arc<Secrets> {
    // (Hop-by-hop headers are gone already.)
    parts.headers.remove(header::HOST);
    strip_other_names(&mut parts.headers);
    // The agent's `Expect: 100-continue` was for the proxy, which answered
    // it when it read the body. Passed on, it lets a server answer 417 and
    // leave the body unread on the connection.
    parts.headers.remove(header::EXPECT);
    if h1_body {
        // An HTTP/1.1 upstream connection that carried a body is closed
        // after it, not pooled: a server that leaves a body unread (a GET's,
        // or one it answered early) reads what is left as the start of the
        // next request on that connection, which carries the injected
        // credential — the agent's body could swallow it, or be a request
        // of its own that the credential completes. HTTP/2 frames each
        // stream, and hyper drops this header there.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let inject = &shared.inject[idx];
    // The agent's copies, in every spelling a CGI-style server reads as the
    // same header (`x_api_key` is `x-api-key` to Puma and PHP), so the
    // server sees only the injected value.
    let copies: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|k| {
            inject
                .iter()
                .any(|(n, _)| route::same_cgi_name(k.as_str(), n.as_str()))
        })
        .cloned()
        .collect();
    for n in copies {
        parts.headers.remove(n);
    }
    for (n, v) in inject {
        parts.headers.append(n.clone(), v.clone());
    }
    rec.injected = !inject.is_empty();
    rec.injected_headers = r.inject.iter().map(|h| h.header.clone()).collect();
    // The response is searched for the injected values (crate::reflected),
    // which compressed bytes would hide.
    let secrets = shared.reflected[idx].clone();
    if !secrets.is_empty() {
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    secrets
}

/// Sends the request upstream. The answer goes back to the agent as it
/// comes, its head and body searched for the injected values, the audit
/// line written when its body ends. A failure says why: the body's
/// `_method` or DLP stopped it as it streamed, an internal address, the
/// upstream's error.
async fn forward(
    no: &Refusal<'_>,
    rec: AuditRecord,
    up_req: Request<Body>,
    client_version: Version,
    secrets: Arc<Secrets>,
    notes: BodyNotes,
) -> Response<Body> {
    let shared = no.shared;
    // If the agent goes away while upstream is still answering, this future
    // is dropped: the guard still writes the request's audit line.
    let mut guard = DropAudit {
        rec: Some(rec),
        shared: shared.clone(),
        start: no.start,
        req_bytes: notes.bytes.clone(),
        decision: "allow",
        note: "client went away before upstream answered",
    };
    let answer = shared.client().request(up_req).await;
    let Some(mut rec) = guard.rec.take() else {
        unreachable!("only the guard's drop takes the record")
    };
    match answer {
        Ok(resp) => {
            let (mut p, b) = resp.into_parts();
            let (mask, masked) = reflected_in(&mut p, &secrets, &mut rec);
            strip_hop_by_hop(&mut p.headers, false);
            p.version = client_version;
            rec.status = p.status.as_u16();
            rec.decision = "allow".into();
            // `block` mode may still stop the request body after this
            // answer (an upstream that answers before it reads the whole
            // upload): the audit line, written when the answer ends, says so.
            let blocked = (shared.dlp().mode == DlpMode::Block).then_some(notes.dlp);
            let body = AuditBody {
                inner: b,
                n: 0,
                rec: Some(rec),
                shared: shared.clone(),
                start: no.start,
                req_bytes: notes.bytes,
                blocked,
                mask,
                masked,
                waiting: None,
            };
            Response::from_parts(p, body.boxed_unsync())
        }
        Err(e) => {
            if let Some(m) = take_stopped(&notes.method) {
                return no.deny_override(
                    &mut rec,
                    &m,
                    "the body's _method field, read as it streamed: the request was abandoned \
                     before the rest of the body was sent",
                );
            }
            let stopped = std::mem::take(&mut *notes.dlp.lock().unwrap_or_else(|p| p.into_inner()));
            if !stopped.is_empty() {
                rec.dlp = stopped.clone();
                return no.answer(
                    &mut rec,
                    StatusCode::FORBIDDEN,
                    "dlp_block",
                    "found while the body streamed; the request was abandoned before those bytes".into(),
                    format!(
                        "bot-bottle egress: request to {} blocked by DLP rule(s) {}; it was not completed\n",
                        no.host,
                        stopped.join(", ")
                    ),
                );
            }
            if let Some(r) = upstream::dial_refused(&e) {
                return refuse_internal(shared, rec, r, no.start);
            }
            let why = error_chain(&e);
            tracing::debug!(host = %no.host, error = %why, "upstream request failed");
            no.answer(
                &mut rec,
                StatusCode::BAD_GATEWAY,
                "error",
                format!("upstream: {why}"),
                format!("bot-bottle egress: upstream {} failed: {why}\n", no.host),
            )
        }
    }
}

/// The answer, and the audit line, for a dial the internal-address check
/// refused. The body names the host, the kind of address and the manifest
/// keys that would allow it; the address itself goes only to the audit log
/// (an agent on a wildcard route could otherwise map internal names).
pub(super) fn refuse_internal(
    shared: &Shared,
    mut rec: AuditRecord,
    r: &upstream::DialRefused,
    start: Instant,
) -> Response<Body> {
    rec.status = 403;
    rec.decision = "internal_address".into();
    // No connection was made: nothing, and no credential, was sent.
    rec.injected = false;
    rec.injected_headers.clear();
    rec.note = format!("{r}; [egress] allow_internal (or resolve) would allow it");
    rec.duration_ms = ms(start);
    shared.audit.write(&rec);
    let host = &r.host;
    let metadata = if r.class == crate::addr::AddrClass::Metadata {
        "A cloud metadata address is allowed only when listed on its own \
         (169.254.169.254/32, fd00:ec2::254/128, 168.63.129.16/32...): a wider network \
         does not include it.\n"
    } else {
        ""
    };
    text(
        StatusCode::FORBIDDEN,
        format!(
            "bot-bottle egress: {host} resolves to {class}; the proxy does not dial \
             internal addresses for a name it resolves itself (a DNS answer could otherwise \
             point a route at cloud metadata, the proxy's own machine or its network). \
             The audit log (`bottle logs --egress`) names the address.\n\
             If {host} really lives on an internal network (a corporate mirror), allow that \
             network in bottle.toml:\n  [egress]\n  allow_internal = [\"10.20.0.0/16\"]\n\
             or pin the host to its address: [egress] resolve = {{ \"{host}\" = \"IP:PORT\" }}.\n\
             {metadata}",
            class = r.class.an_address(),
        ),
    )
}

pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The request's `content-encoding`, all its lines joined (`None` without
/// one).
fn content_encoding(h: &HeaderMap) -> Option<String> {
    let lines: Vec<_> = h
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// Counts the data bytes of a request body, and drops its trailers: they
/// would reach an HTTP/2 upstream past the injection (a client's copy of an
/// injected header beside ours) and past the DLP scan of the head. Agents'
/// requests do not use them (gRPC's trailers are the response's), and an
/// HTTP/1.1 upstream never got them (hyper does not send request trailers).
struct CountedBody {
    inner: Incoming,
    n: Arc<AtomicU64>,
}

impl hyper::body::Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => match f.data_ref() {
                Some(d) => {
                    self.n.fetch_add(d.len() as u64, Ordering::Relaxed);
                    Poll::Ready(Some(Ok(f)))
                }
                // Trailers are the last frame a body has.
                None => Poll::Ready(None),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Streams a response body frame by frame (SSE is never buffered) and writes
/// the audit line when the body ends or is dropped.
pub(super) struct AuditBody {
    pub(super) inner: Incoming,
    pub(super) n: u64,
    pub(super) rec: Option<AuditRecord>,
    pub(super) shared: Arc<Shared>,
    pub(super) start: Instant,
    pub(super) req_bytes: Arc<AtomicU64>,
    /// Rule ids that stopped the request body as it streamed (`block`
    /// mode only).
    pub(super) blocked: Option<dlp_body::Blocked>,
    /// On a route that injects a credential: masks copies of it the
    /// upstream sends back.
    pub(super) mask: Option<Masker>,
    /// Copies masked in the response's headers.
    pub(super) masked: usize,
    /// A frame that comes after the masker's held bytes (trailers, or the
    /// end when `Some(None)`).
    pub(super) waiting: Option<Option<Frame<Bytes>>>,
}

impl AuditBody {
    fn finish(&mut self, note: Option<String>) {
        if let Some(mut rec) = self.rec.take() {
            rec.bytes_in = self.n;
            rec.bytes_out = self.req_bytes.load(Ordering::Relaxed);
            rec.duration_ms = ms(self.start);
            if let Some(n) = note {
                add_note(&mut rec, &n);
            }
            note_masked(
                &mut rec,
                self.masked + self.mask.as_ref().map_or(0, |m| m.masked),
            );
            let stopped = self
                .blocked
                .as_ref()
                .map(|b| std::mem::take(&mut *b.lock().unwrap_or_else(|p| p.into_inner())));
            if let Some(found) = stopped.filter(|f| !f.is_empty()) {
                add_note(
                    &mut rec,
                    "found in the request body after the upstream answered; \
                     the body was cut off before those bytes",
                );
                rec.decision = "dlp_block".into();
                rec.dlp = found;
            }
            self.shared.audit.write(&rec);
        }
    }
}

impl Drop for AuditBody {
    fn drop(&mut self) {
        let note = (!self.inner.is_end_stream())
            .then(|| "client went away before the response ended".to_string());
        self.finish(note);
    }
}

impl hyper::body::Body for AuditBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(f) = this.waiting.take() {
            if f.is_none() {
                this.finish(None);
            }
            return Poll::Ready(f.map(Ok));
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    let f = match (this.mask.as_mut(), f.into_data()) {
                        (None, Ok(d)) => Frame::data(d),
                        (None, Err(f)) => f,
                        (Some(m), Ok(d)) => {
                            let d = m.feed(d);
                            if d.is_empty() {
                                // All of it waits for what comes next.
                                continue;
                            }
                            Frame::data(d)
                        }
                        (Some(m), Err(mut f)) => {
                            if let Some(t) = f.trailers_mut() {
                                this.masked += m.secrets().mask_headers(t);
                            }
                            match m.finish() {
                                Some(rest) => {
                                    this.waiting = Some(Some(f));
                                    Frame::data(rest)
                                }
                                None => f,
                            }
                        }
                    };
                    if let Some(d) = f.data_ref() {
                        this.n += d.len() as u64;
                    }
                    return Poll::Ready(Some(Ok(f)));
                }
                Poll::Ready(Some(Err(e))) => {
                    let note = format!("upstream body: {e}");
                    this.finish(Some(note));
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    if let Some(rest) = this.mask.as_mut().and_then(Masker::finish) {
                        this.n += rest.len() as u64;
                        this.waiting = Some(None);
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    this.finish(None);
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.waiting.is_none()
            && self.inner.is_end_stream()
            && self.mask.as_ref().is_none_or(Masker::is_idle)
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Masks copies of the route's injected values in an answer's head (its
/// headers, and the HTTP/1 reason phrase, which hyper passes on to an
/// HTTP/1 agent) (crate::reflected), and gives the masker for its body:
/// `None` on a route that injects nothing. Every body is searched as it
/// came: one that says it is encoded (the route asked for identity) is
/// noted on the audit line, since a copy inside compressed bytes is not
/// found, and searched all the same (a stored block, or an encoding that
/// is none at all, `none`, carries the token as it is). Runs before the
/// hop-by-hop headers go, to see a `Transfer-Encoding` other than
/// chunked. Also how many copies the head had.
pub(super) fn reflected_in(
    p: &mut http::response::Parts,
    secrets: &Arc<Secrets>,
    rec: &mut AuditRecord,
) -> (Option<Masker>, usize) {
    if secrets.is_empty() {
        return (None, 0);
    }
    let masked = secrets.mask_headers(&mut p.headers) + secrets.mask_reason(&mut p.extensions);
    let coded = |name: HeaderName, plain: &[u8]| {
        p.headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(plain))
        })
    };
    if coded(header::CONTENT_ENCODING, b"identity") || coded(header::TRANSFER_ENCODING, b"chunked")
    {
        add_note(
            rec,
            "the response came encoded although identity was asked for: \
             a copy of the route's credential inside the encoded bytes was not found",
        );
    }
    (Some(Masker::new(secrets.clone())), masked)
}

/// Why a held body was not sent: status, audit decision and note, and the
/// text for the agent.
fn held_refusal(
    e: Refused,
    shared: &Shared,
    host: &str,
) -> (StatusCode, &'static str, String, String) {
    match e {
        Refused::Stalled => (
            StatusCode::REQUEST_TIMEOUT,
            "error",
            "request body stalled".into(),
            format!(
                "bot-bottle egress: the request body stopped arriving for {} ms; nothing was sent\n",
                shared.cfg.limits.header_read_timeout_ms
            ),
        ),
        Refused::Unreadable(e) => (
            StatusCode::BAD_REQUEST,
            "error",
            format!("request body: {e}"),
            "bot-bottle egress: the request body could not be read\n".into(),
        ),
        Refused::Unscannable { status, why } => (
            status,
            "dlp_block",
            format!("cannot scan {why}"),
            format!(
                "bot-bottle egress: DLP (block) cannot scan {why} to {host}; it was not sent (send it uncompressed, or set dlp = \"log\" in [egress])\n"
            ),
        ),
    }
}

/// The method a streamed JSON body's `_method` asked for that stopped it.
fn take_stopped(stopped: &body_override::Stopped) -> Option<String> {
    stopped.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Says on the audit line (and in a warning) how many copies of the
/// injected credential the upstream sent back, if any.
pub(super) fn note_masked(rec: &mut AuditRecord, masked: usize) {
    if masked == 0 {
        return;
    }
    tracing::warn!(host = %rec.host, copies = masked, "the upstream sent back the credential the proxy injected; masked");
    add_note(
        rec,
        &format!(
            "the upstream sent back the route's credential: {masked} cop{} masked",
            if masked == 1 { "y" } else { "ies" }
        ),
    );
}

/// Adds `note` to the audit line's note (one request can earn two).
pub(super) fn add_note(rec: &mut AuditRecord, note: &str) {
    if rec.note.is_empty() {
        rec.note = note.into();
    } else {
        rec.note = format!("{}; {note}", rec.note);
    }
}

/// Writes an audit line for a request whose future was dropped (the client
/// went away) before an answer came back.
struct DropAudit {
    rec: Option<AuditRecord>,
    shared: Arc<Shared>,
    start: Instant,
    req_bytes: Arc<AtomicU64>,
    /// The line's decision and note if the request is dropped here.
    decision: &'static str,
    note: &'static str,
}

impl Drop for DropAudit {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            rec.decision = self.decision.into();
            rec.status = 0;
            rec.note = self.note.into();
            rec.bytes_out = self.req_bytes.load(Ordering::Relaxed);
            rec.duration_ms = ms(self.start);
            self.shared.audit.write(&rec);
        }
    }
}
