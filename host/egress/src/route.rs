//! The allow-list: host patterns, ports, methods, path prefixes (every
//! reading of a path is in `path_readings`), and the decision `bottle
//! egress check` prints.

use std::fmt;

use bot_bottle_plugin_api::EgressRoute;
use serde::{Deserialize, Serialize};

use crate::config::ProxyConfig;
pub use crate::path_readings::normalise_path;
use crate::path_readings::prefix_holds;

/// Checks a host pattern: exact host or `*.suffix`.
pub(crate) fn check_host_pattern(p: &str) -> Result<(), String> {
    let base = p.strip_prefix("*.").unwrap_or(p);
    if base.is_empty() {
        return Err("empty host".into());
    }
    if base.contains('*') {
        return Err("only a leading `*.` wildcard is supported".into());
    }
    if base.contains(['/', ':', ' ', '@']) && base.parse::<std::net::IpAddr>().is_err() {
        return Err("a host has no scheme, port, path or user".into());
    }
    Ok(())
}

/// Lower-cases and drops a trailing dot and IPv6 brackets.
pub(crate) fn canon_host(h: &str) -> String {
    h.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether `host` (canonical) names something a connection can be made
/// to: an IP address, or a DNS name (labels of letters, digits, `-` and
/// `_`, none empty, the last not all digits) as the upstream TLS check reads
/// one. Anything else in a CONNECT or a URL is refused before routes are
/// matched: a `*.suffix` route matches `*.suffix`, `a..suffix` and
/// `[a:b.suffix]` as text, and the proxy would mint a leaf for them (a
/// wildcard one for `*.suffix`); `0x7f.1` and `2130706433` are IPv4
/// addresses to the system resolver, not names.
pub(crate) fn is_host(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok() || rustls::pki_types::DnsName::try_from(host).is_ok()
}

/// Whether `host` (canonical) matches `pattern` (exact, or `*.suffix`
/// for any name strictly below `suffix`).
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = canon_host(pattern);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => host == pattern,
    }
}

/// Whether any passthrough entry names `host`.
pub(crate) fn is_passthrough(cfg: &ProxyConfig, host: &str) -> bool {
    cfg.tls_passthrough.iter().any(|p| host_matches(p, host))
}

/// The port a `tls_passthrough` tunnel may go to. A tunnel's contents are
/// the agent's own, so a passthrough host on any port would let the agent
/// reach every service its address listens on (its own TLS or none).
pub(crate) const PASSTHROUGH_PORT: u16 = 443;

/// The passthrough entry that tunnels a CONNECT to `host:port`, if any.
pub(crate) fn passthrough_for<'a>(
    cfg: &'a ProxyConfig,
    host: &str,
    port: u16,
) -> Option<&'a String> {
    (port == PASSTHROUGH_PORT)
        .then(|| cfg.tls_passthrough.iter().find(|p| host_matches(p, host)))
        .flatten()
}

/// Whether a CONNECT to `host` is let into the proxy at all: a route or a
/// `tls_passthrough` entry names it (path and method are checked inside the
/// tunnel). The smolmachines interceptor asks this before it admits a
/// guest's direct connection.
pub fn host_admitted(cfg: &ProxyConfig, host: &str) -> bool {
    let host = canon_host(host);
    is_host(&host) && (host_allowed(&cfg.routes, &host) || is_passthrough(cfg, &host))
}

/// Whether a direct connection to `port` may leave at all, before its name
/// is known: the schemes' own ports (443, 80), or a port some route names.
/// The smolmachines interceptor must answer the guest's `connect()` from
/// the port alone; the name and the port are then checked together by the
/// proxy, as for a CONNECT.
pub fn port_admitted(cfg: &ProxyConfig, port: u16) -> bool {
    matches!(port, 443 | 80) || cfg.routes.iter().any(|r| r.ports.contains(&port))
}

/// Whether any route names `host` (the gate for minting a certificate).
pub(crate) fn host_allowed(routes: &[EgressRoute], host: &str) -> bool {
    routes.iter().any(|r| host_matches(&r.host, host))
}

/// Whether `r` allows `port`: the ports it names, else the scheme's own
/// (443 for HTTPS, 80 for plain HTTP).
pub(crate) fn port_allowed(r: &EgressRoute, port: u16, tls: bool) -> bool {
    if r.ports.is_empty() {
        port == if tls { 443 } else { 80 }
    } else {
        r.ports.contains(&port)
    }
}

/// Whether a CONNECT to `host:port` may be intercepted: some route names
/// the host and allows the port over HTTPS.
pub(crate) fn connect_allowed(routes: &[EgressRoute], host: &str, port: u16) -> bool {
    routes
        .iter()
        .any(|r| host_matches(&r.host, host) && port_allowed(r, port, true))
}

/// Whether `method` is refused whatever the routes say: TRACE echoes the
/// request, injected credential included, back to the agent, and IIS's TRACK
/// does the same. Without regard to case, as some servers read methods (and
/// as a route's `methods` are matched).
pub(crate) fn always_refused(method: &str) -> bool {
    ["TRACE", "TRACK"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether a method override asking for `m` is refused on route `r`:
/// never TRACE, and only a method the route allows.
pub(crate) fn refuses_override(r: &EgressRoute, m: &str) -> bool {
    always_refused(m) || !method_allowed(r, m)
}

/// Whether `r`'s `methods` (empty: any) allow `method`.
pub(crate) fn method_allowed(r: &EgressRoute, method: &str) -> bool {
    r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
}

/// Whether header `name` (lower case, as `http` keeps it) is `canonical`
/// to a CGI-style server (Puma, WEBrick, PHP's), which reads a header as
/// `HTTP_` and its name with `-` as `_`: `x_http_method` is
/// `x-http-method` to it.
pub(crate) fn same_cgi_name(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && canonical
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// The methods a request asks for besides its own, in the headers many
/// frameworks honour (Rails, Express's method-override, Google's APIs): a
/// `POST` with `X-HTTP-Method-Override: DELETE` is a `DELETE` to them, so
/// a route that allows `POST` only must refuse it.
///
/// Also the `_method` query parameter (Spring's, Symfony's and Laravel's
/// form override read it from the query), its name and value
/// percent-decoded as they decode them (`%5Fmethod=DEL%45TE`), and each
/// item of a list (Express's takes the first of `DELETE, GET`).
pub(crate) fn method_override<'a>(
    h: &'a http::HeaderMap,
    query: Option<&'a str>,
) -> impl Iterator<Item = String> + 'a {
    // Every spelling a server may read as one of these: CGI-style servers
    // (Puma, WEBrick, PHP's) name a header `HTTP_` + its name with `-` as
    // `_`, so `X_HTTP_METHOD_OVERRIDE: DELETE` is the override to Rack's
    // MethodOverride and Symfony as much as the dashed name is.
    let headers = h
        .iter()
        .filter(|(n, _)| {
            [
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ]
            .iter()
            .any(|o| same_cgi_name(n.as_str(), o))
        })
        .map(|(_, v)| v.to_str().unwrap_or("(not text)").to_owned());
    let params = query.unwrap_or("").split('&').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (crate::path_readings::percent_decoded(k) == "_method")
            .then(|| crate::path_readings::percent_decoded(v))
    });
    // And as PHP names `$_GET`'s keys, which Symfony and Laravel read
    // (`.method`, `+_method`, `_method%00x` are `_method` to them).
    let php = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, v)| !v.is_empty() && crate::body_override::is_override_field(k))
        .map(|(_, v)| v.into_owned());
    let params = params.chain(php);
    headers.chain(params).flat_map(|v| {
        v.split(',')
            .map(|m| m.trim().to_owned())
            .collect::<Vec<_>>()
    })
}

/// The outcome of matching one request against the routes.
#[derive(Debug)]
pub(crate) enum RouteMatch<'a> {
    /// This route allows it.
    Allowed(usize, &'a EgressRoute),
    /// Some route names the host, but none allows this port, path or
    /// method; what the route that came closest missed.
    HostOnly(Miss),
    /// No route names the host.
    NoHost,
}

/// `raw_path` is the request's path as sent (it goes upstream unchanged)
/// and `norm_path` [`normalise_path`]'s view of it. A path prefix must hold
/// for every reading a server might take: the path as sent (a router that
/// neither decodes nor resolves dot segments, as Express's, routes
/// `/admin/../v1` to `/admin`), the normalised one (`/v1/../admin` is
/// `/admin` to most servers), [`crate::path_readings::param_free_path`]'s and those of servers
/// that decode more than percent-escapes ([`crate::path_readings::lenient_readings`]).
///
/// `port` and `tls` say where the request goes: a route allows the ports it
/// names, else the scheme's own ([`port_allowed`]).
pub(crate) fn match_route<'a>(
    routes: &'a [EgressRoute],
    (host, port, tls): (&str, u16, bool),
    raw_path: &str,
    norm_path: &str,
    method: &str,
) -> RouteMatch<'a> {
    let mut closest: Option<Miss> = None;
    for (i, r) in routes.iter().enumerate() {
        if !host_matches(&r.host, host) {
            continue;
        }
        let miss = if !port_allowed(r, port, tls) {
            Miss::Port
        } else if r
            .path_prefix
            .as_deref()
            .is_some_and(|p| !prefix_holds(p, raw_path, norm_path))
        {
            Miss::Path
        } else if !method_allowed(r, method) {
            Miss::Method {
                route: i,
                allowed: r.methods.clone(),
                provider: r.source.strip_prefix("provider:").map(str::to_string),
            }
        } else {
            return RouteMatch::Allowed(i, r);
        };
        // The route that got furthest says the most about what to change.
        if closest.as_ref().is_none_or(|c| miss.rank() > c.rank()) {
            closest = Some(miss);
        }
    }
    match closest {
        Some(miss) => RouteMatch::HostOnly(miss),
        None => RouteMatch::NoHost,
    }
}

/// What kept the closest route for a host from allowing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No route for the host allows this port.
    Port,
    /// Routes allow the port, but no path prefix holds for this path.
    Path,
    /// Route `route` allows the port and path, but only these methods; a
    /// provider's route names the provider (its narrowing is deliberate,
    /// and it is not in bottle.toml).
    Method {
        route: usize,
        allowed: Vec<String>,
        provider: Option<String>,
    },
}

impl Miss {
    fn rank(&self) -> u8 {
        match self {
            Miss::Port => 0,
            Miss::Path => 1,
            Miss::Method { .. } => 2,
        }
    }

    /// Why, in a few words (the audit note, `bottle egress check`).
    pub(crate) fn why(&self, method: &str) -> String {
        match self {
            Miss::Port => "no [[egress.route]] for this host allows this port".into(),
            Miss::Path => {
                "no [[egress.route]] for this host allows this path (none of their path_prefix holds)"
                    .into()
            }
            Miss::Method { route, allowed, .. } => format!(
                "route #{route} for this host allows this path with {} only, not {method}",
                allowed.join(", ")
            ),
        }
    }
}

/// The plain-text body of a 403 for a request no route allows: why, and
/// what in bottle.toml would allow it. When a route names the host, the
/// fix is to that route (a method added, a wider prefix), not a new
/// route, which without `methods` and `path_prefix` would open the whole
/// host.
pub(crate) fn deny_body(host: &str, method: &str, path: &str, why: &str) -> String {
    format!(
        "bot-bottle egress: {method} {host}{path} refused: {why}.\n\
         To allow it, add a route to bottle.toml:\n  [[egress.route]]\n  host = \"{host}\"\n"
    )
}

/// [`deny_body`] for a host some route names.
pub(crate) fn deny_miss_body(host: &str, method: &str, path: &str, miss: &Miss) -> String {
    let why = miss.why(method);
    // The path is the agent's: shown percent-encoded again, so that it
    // cannot put a line or a shell command into text a user may copy.
    let shown = shown_path(path);
    let fix = match miss {
        Miss::Port => "To allow it, name the port in the route's `ports`".to_string(),
        Miss::Path => format!(
            "To allow it, give a route for {host} a `path_prefix` that holds for every reading of \
             {shown} (percent-escapes, `..`, `;` decoded as servers do), or widen one; \
             `bottle egress check -f bottle.toml METHOD URL` tries a URL"
        ),
        Miss::Method {
            provider: Some(p), ..
        } => format!(
            "That route is provider `{p}`'s, which limits its methods on purpose \
             (docs/providers/{p}.md); a route of your own in bottle.toml would allow it"
        ),
        Miss::Method { .. } => "To allow it, add the method to that route's `methods` in \
             bottle.toml, if the agent should have it"
            .to_string(),
    };
    deny_fix_body(host, method, path, &why, &fix)
}

/// A 403 body: the request (its path as [`shown_path`] shows it), why, and
/// what to change.
pub(crate) fn deny_fix_body(host: &str, method: &str, path: &str, why: &str, fix: &str) -> String {
    let path = shown_path(path);
    format!("bot-bottle egress: {method} {host}{path} refused: {why}.\n{fix}.\n")
}

/// `path` with everything but unreserved characters and `/` percent-encoded.
fn shown_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The plain-text body of a 403 for a CONNECT to a port no route of the
/// host allows.
pub(crate) fn deny_port_body(host: &str, port: u16, why: &str) -> String {
    format!(
        "bot-bottle egress: CONNECT {host}:{port} refused: {why} (a route allows 443 \
         unless it names its ports).\nTo allow it, name the port in the route in \
         bottle.toml:\n  [[egress.route]]\n  host = \"{host}\"\n  ports = [{port}]\n"
    )
}

/// What the proxy does with a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Decrypted, checked, forwarded (with injection if the route has any).
    Intercept,
    /// Tunnelled without decryption (`tls_passthrough`).
    Passthrough,
    /// Forwarded over plain HTTP (`plain_http = true`).
    PlainHttp,
    /// Refused.
    Deny,
    /// Answered by the proxy itself (`local_responses`), never forwarded.
    LocalResponse,
}

/// What the proxy would do with one request (`bottle egress check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the request would leave the bottle.
    pub allowed: bool,
    /// How.
    pub action: Action,
    /// Request method, upper-cased.
    pub method: String,
    /// Target host (canonical).
    pub host: String,
    /// Target port.
    pub port: u16,
    /// The normalised path the routes are matched on.
    pub path: String,
    /// Index of the matching route in the config's `routes`.
    pub route_index: Option<usize>,
    /// Host pattern of the matching route (or passthrough entry).
    pub route_host: Option<String>,
    /// Names of the headers the proxy would set (never values).
    pub inject_headers: Vec<String>,
    /// Why, in a few words.
    pub reason: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "decision: {}",
            if self.allowed { "allow" } else { "deny" }
        )?;
        let action = match self.action {
            Action::Intercept => "intercept",
            Action::Passthrough => "passthrough",
            Action::PlainHttp => "plain_http",
            Action::Deny => "deny",
            Action::LocalResponse => "local_response",
        };
        writeln!(f, "action: {action}")?;
        writeln!(
            f,
            "request: {} {}:{}{}",
            self.method, self.host, self.port, self.path
        )?;
        match (&self.route_index, &self.route_host) {
            (Some(i), Some(h)) => writeln!(f, "route: #{i} ({h})")?,
            (None, Some(h)) if self.action == Action::LocalResponse => {
                writeln!(f, "route: local_responses ({h})")?
            }
            (None, Some(h)) => writeln!(f, "route: tls_passthrough ({h})")?,
            _ => writeln!(f, "route: none")?,
        }
        if self.inject_headers.is_empty() {
            writeln!(f, "inject: none")?;
        } else {
            writeln!(f, "inject: {}", self.inject_headers.join(", "))?;
        }
        write!(f, "reason: {}", self.reason)
    }
}

/// What the proxy would do with `method url` under `config`.
pub fn check(config: &ProxyConfig, method: &str, url: &str) -> Decision {
    let method = method.to_ascii_uppercase();
    let mut d = Decision {
        allowed: false,
        action: Action::Deny,
        method: method.clone(),
        host: String::new(),
        port: 0,
        path: String::new(),
        route_index: None,
        route_host: None,
        inject_headers: vec![],
        reason: String::new(),
    };
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(_) => {
            d.reason = format!("{url:?} is not a URL");
            return d;
        }
    };
    let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
    let tls = match scheme.as_str() {
        "https" | "wss" => true,
        "http" | "ws" => false,
        _ => {
            d.reason = "the URL needs an http, https, ws or wss scheme".into();
            return d;
        }
    };
    let Some(host) = uri.host() else {
        d.reason = "the URL has no host".into();
        return d;
    };
    d.host = canon_host(host);
    d.path = normalise_path(uri.path());
    if !is_host(&d.host) {
        d.reason = "the URL's host is neither a host name nor an IP address".into();
        return d;
    }
    // As the proxy reads it: `:99999` is refused, not the default port.
    let port = uri
        .authority()
        .and_then(|a| crate::headers::authority_port(a, if tls { 443 } else { 80 }));
    let Some(port) = port else {
        d.reason = "the URL's port is not a number from 0 to 65535".into();
        return d;
    };
    d.port = port;
    if tls {
        // Before any method check: the proxy never sees a passthrough
        // tunnel's requests, TRACE included.
        if let Some(p) = passthrough_for(config, &d.host, d.port) {
            d.allowed = true;
            d.action = Action::Passthrough;
            d.route_host = Some(p.clone());
            d.reason = "tls_passthrough: tunnelled without decryption, nothing injected".into();
            return d;
        }
    }
    if always_refused(&method) {
        d.reason = format!("{method} is always refused");
        return d;
    }
    if tls {
        // In any tunnel the proxy lets in: on 443 for the host of a local
        // response, and on any port a route for the host names.
        if let Some(l) = config.local_responses.iter().find(|l| {
            (d.port == 443 || connect_allowed(&config.routes, &d.host, d.port))
                && host_matches(&l.host, &d.host)
                && normalise_path(&l.path) == d.path
                && l.method.eq_ignore_ascii_case(&method)
        }) {
            d.allowed = true;
            d.action = Action::LocalResponse;
            d.route_host = Some(l.host.clone());
            d.reason = format!(
                "answered by the proxy itself with status {}, never forwarded",
                l.status
            );
            return d;
        }
    }
    // A tunnel in a tunnel (an HTTP/2 WebSocket's extended CONNECT is
    // matched as the GET it stands for: `check GET wss://…`).
    if method == "CONNECT" {
        d.reason = "CONNECT inside a tunnel is refused".into();
        return d;
    }
    match match_route(
        &config.routes,
        (&d.host, d.port, tls),
        uri.path(),
        &d.path,
        &method,
    ) {
        RouteMatch::NoHost => d.reason = "no [[egress.route]] names this host".into(),
        RouteMatch::HostOnly(miss) => d.reason = miss.why(&method),
        RouteMatch::Allowed(i, r) => {
            d.route_index = Some(i);
            d.route_host = Some(r.host.clone());
            let query = method_override(&http::HeaderMap::new(), uri.query())
                .find(|m| refuses_override(r, m));
            if let Some(m) = query {
                d.reason = format!(
                    "the URL's _method asks for method {m:?}, which route #{i} does not allow"
                );
                return d;
            }
            if !tls && !r.plain_http {
                d.reason = "plain HTTP is refused unless the route sets plain_http = true".into();
                return d;
            }
            d.allowed = true;
            d.action = if tls {
                Action::Intercept
            } else {
                Action::PlainHttp
            };
            d.inject_headers = r.inject.iter().map(|h| h.header.clone()).collect();
            d.reason = format!("route #{i} allows it");
            // What the proxy also reads, which a method and a URL do not show.
            if !r.methods.is_empty() {
                d.reason.push_str(&format!(
                    "; a method-override header{} must name one of {} too",
                    if method == "POST" {
                        ", or a _method field in a form or JSON body,"
                    } else {
                        ""
                    },
                    r.methods.join(", ")
                ));
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path_readings::{lenient_readings, param_free_path, MAX_LENIENT_PATH};

    /// Whether a GET of `raw` on h.test:443 passes route `r`.
    fn route_allows(r: EgressRoute, raw: &str) -> bool {
        matches!(
            match_route(
                &[r],
                ("h.test", 443, true),
                raw,
                &normalise_path(raw),
                "GET"
            ),
            RouteMatch::Allowed(..)
        )
    }

    /// Whether a GET of `raw` on h.test:443 passes a route with `prefix`.
    fn prefix_route_allows(prefix: &str, raw: &str) -> bool {
        let mut r = EgressRoute::allow("h.test");
        r.path_prefix = Some(prefix.into());
        route_allows(r, raw)
    }

    #[test]
    fn a_prefix_must_hold_for_every_reading_of_the_path() {
        let allowed = |raw: &str| prefix_route_allows("/open", raw);
        assert!(allowed("/open/x"));
        assert!(allowed("/open/x;v=1"));
        assert!(!allowed("/open/..;/admin"), "Tomcat reads /admin");
        assert!(
            !allowed("/open;x/a"),
            "most servers read a segment `open;x`"
        );
        assert!(!allowed("/open/x/..;/..;/admin"));
        // Into the prefix only once normalised: the path as sent is outside.
        assert!(!allowed("/admin/../open/x"));
        assert!(!allowed("/admin/%2e%2e/open/x"));
        assert!(!allowed("/admin%2f..%2fopen/x"));
        assert!(!allowed("/admin\\..\\open"));
        assert!(!allowed("//open/x"));
        assert!(!allowed("/open/%252e%252e/admin"));
        // An encoded slash inside a segment (GitLab's project paths) is fine.
        assert!(allowed("/open/group%2Fproject/x"));
        assert!(allowed("/open/x?next=/../admin"));
        assert_eq!(param_free_path("/a/b"), None);
        // Dot segments in disguise: `..` to Windows (trailing dots and
        // spaces dropped) or to a server that drops NULs.
        for p in [
            "/open/..%00/admin",
            "/open/..%20/admin",
            "/open/.. ./admin",
            "/open/.../admin",
            "/open/.%2e%09/admin",
            "/open/%u002e%u002e%u0020/admin",
        ] {
            assert!(!allowed(p), "{p}");
        }
        assert!(allowed("/open/v1.2/x") && allowed("/open/.well-known/x"));
        assert!(allowed("/open/a.b./x"));
    }

    #[test]
    fn a_prefix_holds_for_every_mix_of_lenient_decoding_steps() {
        assert_eq!(lenient_readings("/v1/x"), None);
        for raw in [
            "/v1/%c0%ae%c0%ae/admin",
            "/v1/..%c0%afadmin",
            "/v1/..%c1%9cadmin",
            "/v1/%e0%80%ae%e0%80%ae/admin",
            "/v1/%f0%80%80%ae./admin",
            "/v1/%u002e%u002E/admin",
            "/v1/..%u005cadmin",
            "/v1/%25u002e%25u002e/admin",
            "/v1/%ef%bc%8e%ef%bc%8e/admin",
            "/v1/..%ef%bc%8fadmin",
            "/v1/%e2%80%a5/admin",
            "/v1/..%c2%a5admin",
            "/v1/..%e2%81%84admin",
            // A look-alike separator one server reads and another does not
            // (a review's escapes from one all-steps reading).
            "/v1/x%c2%a5y/%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/admin",
            "/v1/x%ef%bc%8fy/%u002e%u002e/%u002e%u002e/admin",
            "/v1/x%c2%a5y/%c0%ae%c0%ae/%c0%ae%c0%ae/admin",
            "/v1/x%e2%82%a9y/%e2%80%a5/%e2%80%a5/admin",
            // A `%` a step makes, which a later pass decodes.
            "/v1/%c0%a52e%c0%a52e/admin",
            "/v1/%ef%bc%852e%ef%bc%852e/admin",
            "/v1/%u0041%u0041/%ef%bc%852e%ef%bc%852e/%ef%bc%852e%ef%bc%852e/admin",
            "/v1/%uff052e%uff052e/admin",
            // Hex digits a step makes after a `%` that was there.
            "/v1/%25%ef%bc%92%ef%bd%85%25%ef%bc%92%ef%bd%85/admin",
            "/v1/%25%c2%b2e%25%c2%b2e/admin",
            // `;` by NFKC, stripped as a parameter.
            "/v1/..%ef%bc%9b/admin",
            // A full-width yen sign: `\` to a best-fit table without NFKC.
            "/v1/..%ef%bf%a5admin",
        ] {
            assert!(!prefix_route_allows("/v1", raw), "{raw}");
        }
        // Text that is only text, in any reading.
        for raw in [
            "/v1/caf%C3%A9",
            "/v1/%F0%9F%98%80",
            "/v1/prices/100%e2%82%ac",
            "/v1/prices/%c2%a5100",
            "/v1/%e3%83%95%e3%82%a1%e3%82%a4%e3%83%ab",
            "/v1/%e3%81%aa%e3%81%9c%ef%bc%9f",
            "/v1/100%ef%bc%85",
            "/v1/wait%e2%80%a6",
            "/v1/%e2%84%85",
            "/v1/%u00e9",
            "/v1/%ud800x",
            "/v1/%u00",
            "/v1/%C0",
        ] {
            assert!(prefix_route_allows("/v1", raw), "{raw}");
        }
        // Text NFKC grows elevenfold (U+FDFA), with a chain that keeps the
        // decoding passes going: refused once it grows past the limit.
        let mut grows = String::from("/v1/;x/");
        while grows.len() < 8000 {
            grows.push('\u{fdfa}');
        }
        grows.push_str("%252525252525252525252e");
        assert!(!prefix_route_allows("/v1", &grows));
        // Too long to read every way: refused on prefix routes only.
        let long = format!("/v1/{}", "%ef%bc%8e".repeat(MAX_LENIENT_PATH / 9 + 1));
        assert!(!prefix_route_allows("/v1", &long));
        assert!(route_allows(EgressRoute::allow("h.test"), &long));
        assert!(route_allows(
            EgressRoute::allow("h.test"),
            "/v1/%c0%ae%c0%ae/admin"
        ));
    }

    #[test]
    fn a_prefix_holds_at_every_decoding_depth() {
        for raw in [
            // Dots resolved with `%2f` or `\` kept whole (Node's URL
            // parser, Envoy; nginx and Go after one decoding; `\` on Linux).
            "/v1/x%2fy/../../admin",
            "/v1/x%2fy/%2e%2e/%2e%2e/admin",
            "/v1/x%252fy/../../admin",
            "/v1/x%252fy/%2e%2e/%2e%2e/admin",
            "/v1/x\\y/../../admin",
            "/v1/x%5cy/../../admin",
            // A byte that is not UTF-8 does not stop NFKC or best-fit.
            "/v1/x%ff/..%ef%bc%8f..%ef%bc%8fadmin",
            "/v1/%ff/%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/admin",
            // `;parameters` stripped before a lenient step, or after decoding.
            "/v1/a;x%ef%bc%8fy/..%ef%bc%8f..%ef%bc%8fadmin",
            "/v1/a;x%c0%afy/..%c0%af..%c0%afadmin",
            "/v1/a;x%u002fy/..%u002f..%u002fadmin",
            "/v1/..%3b/admin",
            "/v1/x/..%3bz/..%3bz/admin",
            // `%2F` kept encoded while `%5c` splits (Tomcat with
            // encodedSolidusHandling=passthrough and allowBackslash).
            "/v1/a%2fb/..%5c..%5cadmin",
            "/v1/a%2Fb/c%2Fd/..%5c..%5c..%5cadmin",
            "/v1/a%2fb;x/..%5c..%5cadmin",
        ] {
            assert!(!prefix_route_allows("/v1", raw), "{raw}");
        }
        for raw in ["/v1/x%2fy/z", "/v1/a;b/c", "/v1/x/../y", "/v1/%2e/x"] {
            assert!(prefix_route_allows("/v1", raw), "{raw}");
        }
    }

    #[test]
    fn a_route_allows_its_schemes_port_unless_it_names_ports() {
        let mut r = EgressRoute::allow("h.test");
        assert!(port_allowed(&r, 443, true) && !port_allowed(&r, 8443, true));
        assert!(port_allowed(&r, 80, false) && !port_allowed(&r, 443, false));
        r.ports = vec![8443];
        assert!(port_allowed(&r, 8443, true) && !port_allowed(&r, 443, true));
        assert!(port_allowed(&r, 8443, false));
        let routes = [EgressRoute::allow("h.test"), r];
        assert!(connect_allowed(&routes, "h.test", 8443));
        assert!(!connect_allowed(&routes, "h.test", 22));
        assert!(matches!(
            match_route(&routes, ("h.test", 22, true), "/", "/", "GET"),
            RouteMatch::HostOnly(Miss::Port)
        ));
    }

    /// A refusal on a host some route names says what the closest route
    /// missed, and points at that route rather than at a new bare route
    /// (which would open every path and method of the host).
    #[test]
    fn a_refusal_says_whether_port_path_or_method_missed() {
        let mut get_only = EgressRoute::allow("h.test");
        get_only.path_prefix = Some("/v1/".into());
        get_only.methods = vec!["GET".into()];
        let mut other = EgressRoute::allow("h.test");
        other.path_prefix = Some("/v2/".into());
        let routes = [other, get_only];
        let miss = |port: u16, path: &str, method: &str| match match_route(
            &routes,
            ("h.test", port, true),
            path,
            &normalise_path(path),
            method,
        ) {
            RouteMatch::HostOnly(m) => m,
            other => panic!("{port} {path} {method}: {other:?}"),
        };
        assert_eq!(miss(8443, "/v1/x", "GET"), Miss::Port);
        assert_eq!(miss(443, "/admin", "GET"), Miss::Path);
        let m = miss(443, "/v1/x", "POST");
        assert_eq!(
            m,
            Miss::Method {
                route: 1,
                allowed: vec!["GET".into()],
                provider: None,
            }
        );
        assert_eq!(
            m.why("POST"),
            "route #1 for this host allows this path with GET only, not POST"
        );
        let body = deny_miss_body("h.test", "POST", "/v1/x", &m);
        assert!(
            body.contains("add the method to that route's `methods`"),
            "{body}"
        );
        assert!(!body.contains("[[egress.route]]\n  host"), "{body}");
        let body = deny_miss_body("h.test", "GET", "/admin", &Miss::Path);
        assert!(
            body.contains("path_prefix") && body.contains("bottle egress check"),
            "{body}"
        );
        // A provider's narrowing is named as such, not as bottle.toml's.
        let by_provider = Miss::Method {
            route: 2,
            allowed: vec!["GET".into()],
            provider: Some("claude".into()),
        };
        let body = deny_miss_body("h.test", "POST", "/api/x", &by_provider);
        assert!(
            body.contains("provider `claude`'s") && !body.contains("add the method"),
            "{body}"
        );
        // The agent's path cannot break a line or carry a shell command.
        let body = deny_miss_body("h.test", "GET", "/x`id`$(sh)\n\rTWO", &Miss::Path);
        assert_eq!(body.lines().count(), 2, "{body}");
        assert!(body.contains("/x%60id%60%24%28sh%29%0A%0DTWO"), "{body}");
    }

    #[test]
    fn a_prefix_with_an_escape_holds_for_its_own_urls() {
        // GitLab names a project `group%2Fproject`; npm a scoped package
        // `@org%2fpkg`. Hex digits' case does not matter.
        let allowed = |raw: &str| prefix_route_allows("/api/v4/projects/group%2Fproject", raw);
        assert!(allowed("/api/v4/projects/group%2Fproject/merge_requests"));
        assert!(allowed("/api/v4/projects/group%2fproject"));
        assert!(
            !allowed("/api/v4/projects/group/project/x"),
            "another path as sent"
        );
        assert!(!allowed("/api/v4/projects/other%2Fproject"));
    }

    #[test]
    fn only_host_names_and_ip_addresses_are_hosts() {
        for h in [
            "api.test",
            "a.wild.test",
            "localhost",
            "x_y.test",
            "xn--bcher-kva.test",
            "127.0.0.1",
            "::1",
        ] {
            assert!(is_host(h), "{h}");
        }
        for h in [
            "",
            "*.wild.test",
            "a..wild.test",
            "..wild.test",
            ".wild.test",
            "x:y.wild.test",
            "x%41.wild.test",
            "fe80::1%25lo",
            "0x7f.0.0.1",
            "127.1",
            "2130706433",
            "b\u{fc}cher.test",
            "api\u{ff0e}test",
        ] {
            assert!(!is_host(h), "{h}");
        }
    }

    #[test]
    fn wildcards_match_below_only() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("API.example.com.", "api.example.com"));
    }
}
