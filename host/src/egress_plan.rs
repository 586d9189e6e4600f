//! Stage 4 of the one flow: the host's egress plan.
//!
//! The host, and only the host, merges `effective_env = host env ∪
//! provisioned_env` (provisioned values win; empty ones count as unset) and
//! resolves every route's token ref from it with one generic function. No
//! provider and no backend does this; backends receive resolved values in
//! the proxy's config.

use std::collections::{BTreeMap, BTreeSet};

use bot_bottle_plugin_api::{AgentProvisionPlan, EgressRoute, LocalResponse, Secret};
use serde::Serialize;

/// Token refs that no env could resolve. Names only, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", missing_message(.missing))]
pub struct MissingTokenRefs {
    /// The refs that were asked for and not found (or empty).
    pub missing: Vec<String>,
}

fn missing_message(missing: &[String]) -> String {
    let list = missing
        .iter()
        .map(|r| format!("`{r}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let s = if missing.len() == 1 { "" } else { "s" };
    format!(
        "egress token ref{s} {list} not set: export {} on the host (or fix the manifest's `token_ref` in [[egress.route]], or `upstream_proxy_auth_ref`)",
        if missing.len() == 1 { "it" } else { "them" }
    )
}

/// Resolves every token ref in `token_refs` from `env`.
///
/// Generic on purpose: it knows no provider and no ref by name; a
/// Codex-looking ref resolves exactly like any other. An empty value counts
/// as missing. The error lists every missing ref, never a value.
pub fn egress_resolve_token_values<'a>(
    token_refs: impl IntoIterator<Item = &'a str>,
    env: &BTreeMap<String, Secret>,
) -> Result<BTreeMap<String, Secret>, MissingTokenRefs> {
    let mut resolved = BTreeMap::new();
    let mut missing = BTreeSet::new();
    for r in token_refs {
        match env.get(r) {
            Some(v) if !v.is_empty() => {
                resolved.insert(r.to_string(), v.clone());
            }
            _ => {
                missing.insert(r.to_string());
            }
        }
    }
    if missing.is_empty() {
        Ok(resolved)
    } else {
        Err(MissingTokenRefs {
            missing: missing.into_iter().collect(),
        })
    }
}

/// Which side of the merge a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Provisioned,
    Host,
}

/// The one merge, remembering where each value came from, so that what
/// `bottle plan` labels a ref and what it resolves to cannot disagree.
///
/// Empty values are left out on both sides. Empty already means "not set"
/// to [`egress_resolve_token_values`]; were an empty provisioned value kept,
/// it would override a real host value and the ref would turn up missing
/// although the user exported it. Skipping it gives the same result as a
/// provider that did not provision the ref at all, which already falls
/// back to the host env, so it lets nothing through that was not allowed.
fn merge_env(
    host_env: &BTreeMap<String, Secret>,
    provisioned: &BTreeMap<String, Secret>,
) -> BTreeMap<String, (Secret, Origin)> {
    let mut env = BTreeMap::new();
    // Host first, so that provisioned values replace it.
    for (side, origin) in [(host_env, Origin::Host), (provisioned, Origin::Provisioned)] {
        for (k, v) in side.iter().filter(|(_, v)| !v.is_empty()) {
            env.insert(k.clone(), (v.clone(), origin));
        }
    }
    env
}

/// `host env ∪ provisioned_env`, provisioned values winning; empty values
/// count as unset on either side (see [`merge_env`]).
pub fn effective_env(
    host_env: &BTreeMap<String, Secret>,
    provisioned: &BTreeMap<String, Secret>,
) -> BTreeMap<String, Secret> {
    merge_env(host_env, provisioned)
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect()
}

/// Where a token ref's value comes from, for `bottle plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum TokenSource {
    /// The provider read it at prepare time (`provisioned_env`).
    Provider {
        /// The provider's name.
        provider: String,
    },
    /// The host environment.
    HostEnv,
    /// Nowhere: the bottle cannot start.
    Missing,
}

/// One token ref and where it resolves from. Never the value.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    /// The ref (an env name).
    pub token_ref: String,
    /// Where it comes from.
    #[serde(flatten)]
    pub source: TokenSource,
}

/// The egress half of a bottle: routes, passthrough hosts and resolved tokens.
#[derive(Debug, Clone, Serialize)]
pub struct EgressPlan {
    /// Manifest routes first, then the provider's.
    pub routes: Vec<EgressRoute>,
    /// Hosts tunnelled without decryption.
    pub tls_passthrough: Vec<String>,
    /// Requests the proxy answers itself (OAuth refresh with dummies).
    pub local_responses: Vec<LocalResponse>,
    /// Every token ref the routes use and where it resolves from.
    pub tokens: Vec<TokenStatus>,
    /// Resolved values by ref (empty when any ref is missing).
    #[serde(skip)]
    pub token_values: BTreeMap<String, Secret>,
    /// Refs that did not resolve.
    #[serde(skip)]
    pub missing: Option<MissingTokenRefs>,
}

impl EgressPlan {
    /// Every host the agent may open TLS to — routes, passthrough, and the
    /// hosts the proxy answers locally — deduplicated. The bottle CA's name
    /// constraints are exactly these.
    pub fn hosts(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .routes
            .iter()
            .map(|r| r.host.clone())
            .chain(self.tls_passthrough.iter().cloned())
            .chain(self.local_responses.iter().map(|l| l.host.clone()))
            .collect();
        set.into_iter().collect()
    }
}

/// Builds the egress plan: merge routes, merge env, resolve once. The
/// upstream proxy's credential ref, if any, resolves with the routes' refs.
pub fn build(
    manifest_routes: &[EgressRoute],
    manifest_passthrough: &[String],
    upstream_proxy_auth_ref: Option<&str>,
    provider_name: &str,
    provision: &AgentProvisionPlan,
    host_env: &BTreeMap<String, Secret>,
) -> EgressPlan {
    let mut routes: Vec<EgressRoute> = manifest_routes.to_vec();
    for r in &provision.egress_routes {
        let mut r = r.clone();
        if r.source.is_empty() {
            r.source = format!("provider:{provider_name}");
        }
        routes.push(r);
    }
    let mut tls_passthrough: Vec<String> = manifest_passthrough.to_vec();
    for h in &provision.tls_passthrough {
        if !tls_passthrough.contains(h) {
            tls_passthrough.push(h.clone());
        }
    }

    let refs: BTreeSet<&str> = routes
        .iter()
        .flat_map(EgressRoute::token_refs)
        .chain(upstream_proxy_auth_ref)
        .collect();
    let merged = merge_env(host_env, &provision.provisioned_env);
    let env = merged
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    let (token_values, missing) = match egress_resolve_token_values(refs.iter().copied(), &env) {
        Ok(v) => (v, None),
        Err(e) => (BTreeMap::new(), Some(e)),
    };
    // Labels come from the same merge the resolution read: the merge holds
    // no empty values, so a ref is absent from it exactly when resolution
    // reported it missing.
    let tokens = refs
        .iter()
        .map(|r| TokenStatus {
            token_ref: r.to_string(),
            source: match merged.get(*r) {
                Some((_, Origin::Provisioned)) => TokenSource::Provider {
                    provider: provider_name.to_string(),
                },
                Some((_, Origin::Host)) => TokenSource::HostEnv,
                None => TokenSource::Missing,
            },
        })
        .collect();
    EgressPlan {
        routes,
        tls_passthrough,
        local_responses: provision.local_responses.clone(),
        tokens,
        token_values,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bot_bottle_plugin_api::HeaderInjection;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Secret::new(*v)))
            .collect()
    }

    fn route(host: &str, token_ref: &str) -> EgressRoute {
        let mut r = EgressRoute::allow(host);
        r.inject.push(HeaderInjection {
            header: "Authorization".into(),
            value: "Bearer {token}".into(),
            token_ref: Some(token_ref.into()),
        });
        r
    }

    #[test]
    fn provisioned_values_win_over_host_env() {
        let merged = effective_env(
            &env(&[("A", "host"), ("B", "host-b")]),
            &env(&[("A", "provisioned"), ("B", "")]),
        );
        assert_eq!(merged["A"].expose(), "provisioned");
        // An empty provisioned value is no value: it does not hide the host's.
        assert_eq!(merged["B"].expose(), "host-b");
    }

    #[test]
    fn missing_refs_are_named_and_values_never_printed() {
        let e = egress_resolve_token_values(
            ["PRESENT", "GONE", "EMPTY", "ALSO_GONE"],
            &env(&[("PRESENT", "canary-value-123"), ("EMPTY", "")]),
        )
        .unwrap_err();
        assert_eq!(e.missing, ["ALSO_GONE", "EMPTY", "GONE"]);
        let msg = e.to_string();
        assert!(msg.contains("`ALSO_GONE`, `EMPTY`, `GONE`"), "{msg}");
        assert!(!msg.contains("canary-value-123"));
    }

    #[test]
    fn a_codex_looking_ref_resolves_like_any_other() {
        // The function is provider-agnostic: no ref name is special.
        let e = env(&[
            ("CODEX_HOST_CREDENTIAL_TOKEN_REF", "tok-1"),
            ("PLAIN_REF", "tok-2"),
        ]);
        let got = egress_resolve_token_values(["CODEX_HOST_CREDENTIAL_TOKEN_REF", "PLAIN_REF"], &e)
            .unwrap();
        assert_eq!(got["CODEX_HOST_CREDENTIAL_TOKEN_REF"].expose(), "tok-1");
        assert_eq!(got["PLAIN_REF"].expose(), "tok-2");
        let missing =
            egress_resolve_token_values(["CODEX_HOST_CREDENTIAL_TOKEN_REF"], &BTreeMap::new())
                .unwrap_err();
        assert_eq!(missing.missing, ["CODEX_HOST_CREDENTIAL_TOKEN_REF"]);
    }

    fn sources(plan: &EgressPlan) -> BTreeMap<&str, TokenSource> {
        plan.tokens
            .iter()
            .map(|t| (t.token_ref.as_str(), t.source.clone()))
            .collect()
    }

    #[test]
    fn plan_reports_sources_and_resolves_once() {
        let codex = || TokenSource::Provider {
            provider: "codex".into(),
        };
        let mut provision = AgentProvisionPlan::default();
        provision
            .egress_routes
            .push(route("chatgpt.com", "PROV_REF"));
        // SHADOW is defined by both sides and used by a provider route and a
        // manifest route: the provisioned value must be the one resolved.
        provision
            .egress_routes
            .push(route("auth.openai.com", "SHADOW"));
        provision.provisioned_env =
            env(&[("PROV_REF", "from-provider"), ("SHADOW", "provider-wins")]);
        let host_env = env(&[("HOST_REF", "from-host"), ("SHADOW", "host-loses")]);
        let mut manifest = vec![
            route("api.example.test", "HOST_REF"),
            route("x.example.test", "SHADOW"),
        ];
        let plan = build(&manifest, &[], None, "codex", &provision, &host_env);

        assert!(plan.missing.is_none(), "{:?}", plan.missing);
        let values: BTreeMap<&str, &str> = plan
            .token_values
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose()))
            .collect();
        assert_eq!(
            values,
            BTreeMap::from([
                ("HOST_REF", "from-host"),
                ("PROV_REF", "from-provider"),
                ("SHADOW", "provider-wins"),
            ])
        );
        assert_eq!(
            sources(&plan),
            BTreeMap::from([
                ("HOST_REF", TokenSource::HostEnv),
                ("PROV_REF", codex()),
                ("SHADOW", codex()),
            ])
        );
        assert_eq!(plan.routes[2].source, "provider:codex");

        // One ref nowhere: it is named and labelled missing, the others keep
        // their labels, and no value at all is handed on.
        manifest.push(route("y.example.test", "NOPE"));
        let plan = build(&manifest, &[], None, "codex", &provision, &host_env);
        assert_eq!(plan.missing.as_ref().unwrap().missing, ["NOPE"]);
        assert!(plan.token_values.is_empty());
        let src = sources(&plan);
        assert_eq!(src["NOPE"], TokenSource::Missing);
        assert_eq!(src["HOST_REF"], TokenSource::HostEnv);
        assert_eq!(src["SHADOW"], codex());
    }

    #[test]
    fn an_empty_provisioned_value_does_not_hide_the_host_value() {
        // The provider claims the ref but read nothing; the user exported it.
        let mut provision = AgentProvisionPlan::default();
        provision.egress_routes.push(route("api.example", "R"));
        provision.provisioned_env = env(&[("R", "")]);
        let plan = build(&[], &[], None, "p", &provision, &env(&[("R", "from-host")]));
        assert!(plan.missing.is_none(), "{:?}", plan.missing);
        assert_eq!(plan.token_values["R"].expose(), "from-host");
        assert_eq!(sources(&plan)["R"], TokenSource::HostEnv);

        // Empty on both sides: missing, and labelled so.
        let plan = build(&[], &[], None, "p", &provision, &env(&[("R", "")]));
        assert_eq!(plan.missing.as_ref().unwrap().missing, ["R"]);
        assert_eq!(sources(&plan)["R"], TokenSource::Missing);
    }

    #[test]
    fn the_upstream_proxy_credential_resolves_like_a_route_token() {
        let with_proxy_auth = |host_env: &[(&str, &str)]| {
            build(
                &[route("api.example", "R")],
                &[],
                Some("CORP_PROXY_AUTH"),
                "p",
                &AgentProvisionPlan::default(),
                &env(host_env),
            )
        };
        let plan = with_proxy_auth(&[("R", "v"), ("CORP_PROXY_AUTH", "user:canary-pass")]);
        assert!(plan.missing.is_none());
        assert_eq!(
            plan.token_values["CORP_PROXY_AUTH"].expose(),
            "user:canary-pass"
        );
        let plan = with_proxy_auth(&[("R", "v")]);
        let missing = plan.missing.unwrap();
        assert_eq!(missing.missing, ["CORP_PROXY_AUTH"]);
        assert!(
            missing.to_string().contains("upstream_proxy_auth_ref"),
            "{missing}"
        );
    }

    #[test]
    fn hosts_cover_routes_passthrough_and_local_responses() {
        let mut provision = AgentProvisionPlan::default();
        provision.tls_passthrough.push("pass.example".into());
        provision.local_responses.push(LocalResponse {
            host: "auth.example".into(),
            path: "/oauth/token".into(),
            method: "POST".into(),
            status: 200,
            content_type: "application/json".into(),
            body: "{}".into(),
        });
        let plan = build(
            &[route("api.example", "R")],
            &[],
            None,
            "p",
            &provision,
            &env(&[("R", "v")]),
        );
        assert_eq!(
            plan.hosts(),
            ["api.example", "auth.example", "pass.example"]
        );
    }
}
