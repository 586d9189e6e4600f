//! Live credential rotation: while a bottle runs, the host watches the files
//! its provider read credentials from. When one changes, the provider
//! prepares again, the host resolves again (the same generic path as at
//! launch) and pushes the new proxy config through the backend, by a channel
//! the sandbox cannot reach. The CA stays the same.
//!
//! The kind of credential chosen at launch is pinned: a rotation may replace
//! the values of the same token refs, resolved from the same places, on the
//! same routes, with the same local answers and from the same source files.
//! Anything else (the host logged out, and the provider now falls back to
//! an API key in the host env, billed separately) is not pushed: the bottle
//! keeps the credential it started with, and the user is told on the
//! terminal what changed and to restart the bottle. Keeping it widens
//! nothing (it is the credential the user launched with; a logout usually
//! revokes it upstream, and the bottle then gets 401s); switching silently
//! would.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bot_bottle_egress::config::CaMaterial;
use bot_bottle_plugin_api::{EgressUpdate, Secret};

use crate::egress_plan::EgressPlan;
use crate::launch::{encode_config, proxy_config};
use crate::plan::{self, BottlePlan};
use crate::plugins::PluginSet;

/// How often the sources are looked at. Cheap (one `stat` per file).
const POLL: Duration = Duration::from_millis(500);

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// The parts of a plan a rotation looks at.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Routes, tokens, local answers.
    pub egress: &'a EgressPlan,
    /// The files the provider read them from.
    pub sources: &'a [PathBuf],
}

impl<'a> From<&'a BottlePlan> for Credentials<'a> {
    fn from(p: &'a BottlePlan) -> Self {
        Self {
            egress: &p.egress,
            sources: &p.provision.credential_sources,
        }
    }
}

/// What to do with a re-prepared plan.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing the proxy holds changed.
    Unchanged,
    /// New values of the same credential: push them.
    Push,
    /// Another kind of credential, or another shape: keep the old config.
    /// The reason names refs, routes and files, never a value.
    Refuse(String),
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Whether `fresh` may replace `launched` in the running proxy.
pub fn judge(launched: Credentials<'_>, fresh: Credentials<'_>) -> Verdict {
    let (old, new) = (launched.egress, fresh.egress);
    if new.missing.is_some() {
        return Verdict::Refuse(format!(
            "token refs it needs no longer resolve ({})",
            names(
                new.missing
                    .iter()
                    .flat_map(|m| m.missing.iter().map(String::as_str))
            )
        ));
    }
    if !old.token_values.keys().eq(new.token_values.keys()) {
        return Verdict::Refuse(format!(
            "it now uses token refs {} instead of {}",
            names(new.token_values.keys().map(String::as_str)),
            names(old.token_values.keys().map(String::as_str))
        ));
    }
    let from = |e: &'_ EgressPlan| {
        e.tokens
            .iter()
            .map(|t| (t.token_ref.clone(), t.source.clone()))
            .collect::<Vec<_>>()
    };
    if from(old) != from(new) {
        return Verdict::Refuse("its token refs now resolve from other places".into());
    }
    if launched.sources != fresh.sources {
        return Verdict::Refuse(format!(
            "it now reads credentials from {} instead of {}",
            names(fresh.sources.iter().map(|p| p.to_str().unwrap_or("?"))),
            names(launched.sources.iter().map(|p| p.to_str().unwrap_or("?")))
        ));
    }
    if old.routes != new.routes || old.tls_passthrough != new.tls_passthrough {
        return Verdict::Refuse("its routes (hosts, paths, headers) changed".into());
    }
    let shape = |e: &EgressPlan| {
        e.local_responses
            .iter()
            .map(|l| {
                (
                    l.method.clone(),
                    l.host.clone(),
                    l.path.clone(),
                    l.status,
                    l.content_type.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if shape(old) != shape(new) {
        return Verdict::Refuse("the requests the proxy answers itself changed".into());
    }
    if old.token_values == new.token_values && old.local_responses == new.local_responses {
        Verdict::Unchanged
    } else {
        Verdict::Push
    }
}

/// A warning on the user's terminal, readable while an attached agent holds
/// it in raw mode (where a bare newline does not return the carriage).
fn tell(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\nbottle: warning: {message}\r\n");
    let _ = err.flush();
}

fn kept(bottle_id: &str, what: &str) -> String {
    format!(
        "the host's credential for bottle {bottle_id} changed: {what}. The running bottle keeps \
         the credential it started with and will not switch by itself; restart the bottle \
         (end it and `bottle run` again) to use the host's current credential, or `bottle stop \
         {bottle_id}` to cut it off now"
    )
}

/// Watches `plan`'s credential sources until `stop` is set.
pub fn watch(
    plugins: &PluginSet,
    plan: &BottlePlan,
    bottle_id: &str,
    ca: &CaMaterial,
    host_env: &BTreeMap<String, Secret>,
    stop: &AtomicBool,
) {
    let sources = plan.provision.credential_sources.clone();
    if sources.is_empty() {
        return;
    }
    let Ok(backend) = plugins.backend(&plan.manifest.backend) else {
        return;
    };
    let mut last = stamps(&sources);
    let mut last_tokens = plan.egress.token_values.clone();
    let mut last_local = plan.egress.local_responses.clone();
    // The last warning given, so a file that keeps changing the same wrong
    // way is reported once.
    let mut warned: Option<String> = None;
    let warn = |warned: &mut Option<String>, message: String| {
        if warned.as_ref() != Some(&message) {
            tell(&message);
            *warned = Some(message);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = stamps(&sources);
        if now == last {
            continue;
        }
        last = now;
        let fresh = match plan::plan(plan.manifest.clone(), plugins, host_env) {
            Ok(p) => p,
            Err(e) => {
                warn(
                    &mut warned,
                    kept(bottle_id, &format!("it can no longer be read ({e})")),
                );
                continue;
            }
        };
        match judge(plan.into(), (&fresh).into()) {
            Verdict::Unchanged => continue,
            Verdict::Refuse(what) => {
                warn(&mut warned, kept(bottle_id, &what));
                continue;
            }
            Verdict::Push => {}
        }
        if fresh.egress.token_values == last_tokens && fresh.egress.local_responses == last_local {
            continue;
        }
        let config = match proxy_config(&fresh, bottle_id, ca) {
            Ok(c) => c,
            Err(e) => {
                warn(
                    &mut warned,
                    kept(bottle_id, &format!("the new one is incomplete ({e})")),
                );
                continue;
            }
        };
        let update = EgressUpdate {
            schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
            bottle_id: bottle_id.to_string(),
            config: encode_config(&config),
        };
        match backend.update_egress(&update) {
            Ok(()) => {
                tracing::info!(
                    bottle = bottle_id,
                    "pushed rotated credentials into the running egress proxy"
                );
                warned = None;
                last_tokens = fresh.egress.token_values;
                last_local = fresh.egress.local_responses;
            }
            Err(e) => {
                warn(&mut warned, format!("could not push the host's rotated credentials into bottle {bottle_id} ({e}); it keeps the previous ones"))
            }
        }
    }
}

/// What `bottle run --detach` says when the provider read a credential
/// from files: nothing watches them once `bottle run` has returned, so the
/// bottle keeps the credential it launched with. None when there are none.
pub fn detached_note(sources: &[PathBuf]) -> Option<String> {
    if sources.is_empty() {
        return None;
    }
    let files: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    Some(format!(
        "bottle: detached, so the credential read from {} is the bottle's for its whole run:          a login the host refreshes later is not passed on (an attached `bottle run`, in tmux          say, passes it on); when it expires upstream answers 401",
        files.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_run_says_its_file_credential_is_not_rotated() {
        assert_eq!(detached_note(&[]), None);
        let note = detached_note(&[PathBuf::from("/home/u/.codex/auth.json")]).unwrap();
        assert!(note.contains("/home/u/.codex/auth.json"), "{note}");
        assert!(note.contains("not passed on"), "{note}");
    }
    use crate::egress_plan;
    use bot_bottle_plugin_api::{AgentProvisionPlan, EgressRoute, HeaderInjection, LocalResponse};

    const LOGIN: &str = "canary-login-token-0123456789";
    const API_KEY: &str = "canary-api-key-0123456789";

    fn route(header: &str, value: &str, token_ref: &str) -> EgressRoute {
        let mut r = EgressRoute::allow("api.anthropic.com");
        r.inject.push(HeaderInjection {
            header: header.into(),
            value: value.into(),
            token_ref: Some(token_ref.into()),
        });
        r
    }

    /// A subscription login read from `file`, as the claude provider plans it.
    fn login(token: &str, file: &str, expires_in: u32) -> (EgressPlan, Vec<PathBuf>) {
        let mut p = AgentProvisionPlan::default();
        p.provisioned_env
            .insert("LOGIN_REF".into(), Secret::new(token));
        p.egress_routes
            .push(route("Authorization", "Bearer {token}", "LOGIN_REF"));
        p.local_responses.push(LocalResponse {
            host: "platform.claude.com".into(),
            path: "/v1/oauth/token".into(),
            method: "POST".into(),
            status: 200,
            content_type: "application/json".into(),
            body: format!("{{\"expires_in\":{expires_in}}}"),
        });
        p.credential_sources.push(file.into());
        let e = egress_plan::build(&[], &[], None, "claude", &p, &BTreeMap::new());
        (e, p.credential_sources)
    }

    /// The fallback once the login is gone: the host's API key.
    fn api_key() -> (EgressPlan, Vec<PathBuf>) {
        let mut p = AgentProvisionPlan::default();
        p.provisioned_env
            .insert("KEY_REF".into(), Secret::new(API_KEY));
        p.egress_routes
            .push(route("x-api-key", "{token}", "KEY_REF"));
        let e = egress_plan::build(&[], &[], None, "claude", &p, &BTreeMap::new());
        (e, p.credential_sources)
    }

    fn creds(p: &(EgressPlan, Vec<PathBuf>)) -> Credentials<'_> {
        Credentials {
            egress: &p.0,
            sources: &p.1,
        }
    }

    #[test]
    fn a_refreshed_login_is_pushed() {
        let launched = login(LOGIN, "/h/.credentials.json", 3600);
        assert_eq!(
            judge(creds(&launched), creds(&launched)),
            Verdict::Unchanged
        );
        let refreshed = login(
            "canary-refreshed-token-987654",
            "/h/.credentials.json",
            7200,
        );
        assert_eq!(judge(creds(&launched), creds(&refreshed)), Verdict::Push);
    }

    #[test]
    fn a_logout_does_not_switch_the_bottle_to_the_api_key() {
        let launched = login(LOGIN, "/h/.credentials.json", 3600);
        let Verdict::Refuse(why) = judge(creds(&launched), creds(&api_key())) else {
            panic!("a switch from the login to the API key was allowed");
        };
        assert!(
            why.contains("KEY_REF") && why.contains("LOGIN_REF"),
            "{why}"
        );
        assert!(!why.contains(API_KEY) && !why.contains(LOGIN), "{why}");
    }

    #[test]
    fn the_same_ref_from_another_source_or_route_is_refused() {
        let launched = login(LOGIN, "/h/.credentials.json", 3600);
        // Same ref and routes, but the value no longer comes from the file
        // the bottle started with (codex: an API key in auth.json, then
        // OPENAI_API_KEY once the file is gone).
        let elsewhere = login("canary-other-token-55555555", "/other/file", 3600);
        assert!(matches!(
            judge(creds(&launched), creds(&elsewhere)),
            Verdict::Refuse(_)
        ));
        let mut wider = login(LOGIN, "/h/.credentials.json", 3600);
        wider.0.routes[0].path_prefix = None;
        wider.0.routes.push(EgressRoute::allow("example.com"));
        assert!(matches!(
            judge(creds(&launched), creds(&wider)),
            Verdict::Refuse(_)
        ));
        let mut gone = launched.clone();
        gone.0.missing = Some(egress_plan::MissingTokenRefs {
            missing: vec!["LOGIN_REF".into()],
        });
        assert!(matches!(
            judge(creds(&launched), creds(&gone)),
            Verdict::Refuse(_)
        ));
    }
}
