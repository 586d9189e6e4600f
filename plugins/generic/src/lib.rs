//! The `generic` agent provider: any agent command whose credentials come
//! from host env vars named in the manifest's routes.
//!
//! It adds no routes of its own (the manifest's `[[egress.route]]` entries,
//! resolved by the host from the host env, carry the credentials). It gives
//! the agent dummy values for env names the agent expects to see, and the
//! CA-trust variables common clients read.
//!
//! ```toml
//! [agent.options]
//! dummy_env = ["EXAMPLE_API_TOKEN"]   # agent sees EXAMPLE_API_TOKEN=bot-bottle-dummy
//! ```

use bot_bottle_plugin_api::is_env_name;
use bot_bottle_plugin_api::{
    export_provider, AgentProvisionPlan, CheckReport, CheckRequest, Finding, PluginError,
    PluginInfo, PrepareRequest, Provider,
};
use serde::Deserialize;

/// The value every dummy credential gets: obviously fake, never a real token.
pub const DUMMY_VALUE: &str = "bot-bottle-dummy";

/// CA-trust variables read by curl, OpenSSL, Python requests, Node and git.
pub const CA_TRUST_ENV: &[&str] = &[
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    dummy_env: Vec<String>,
    #[serde(default)]
    ca_trust_env: Option<Vec<String>>,
}

/// The provider.
#[derive(Debug, Default)]
pub struct Generic;

impl Provider for Generic {
    fn info(&self) -> PluginInfo {
        PluginInfo::provider(
            "generic",
            env!("CARGO_PKG_VERSION"),
            "Any agent command; credentials from host env vars named in the manifest's routes",
        )
    }

    fn check(&self, _request: CheckRequest) -> Result<CheckReport, PluginError> {
        Ok(CheckReport {
            findings: vec![Finding::ok(
                "provider",
                "needs nothing on the host beyond the env vars a manifest's routes name",
            )],
        })
    }

    fn prepare(&self, request: PrepareRequest) -> Result<AgentProvisionPlan, PluginError> {
        let options: Options =
            PluginError::options(&request.options, "[agent.options]").map_err(|e| {
                e.with_hint("the generic provider accepts `dummy_env` and `ca_trust_env`")
            })?;
        let bad_name = |key: &str, names: &[String]| {
            names.iter().find(|n| !is_env_name(n)).map(|n| {
                PluginError::invalid(format!("[agent.options] {key}: {n:?} is not an env name"))
                    .with_hint(
                        "list env names only (letters, digits and `_`, not starting with a digit); \
                         plain values go in [env] as NAME = \"value\"",
                    )
                    .in_options([key])
            })
        };
        if let Some(e) = bad_name("dummy_env", &options.dummy_env) {
            return Err(e);
        }
        if let Some(e) = bad_name(
            "ca_trust_env",
            options.ca_trust_env.as_deref().unwrap_or_default(),
        ) {
            return Err(e);
        }
        let mut plan = AgentProvisionPlan::default();
        for name in options.dummy_env {
            plan.env.insert(name, DUMMY_VALUE.to_string());
        }
        plan.ca_trust_env = options
            .ca_trust_env
            .unwrap_or_else(|| CA_TRUST_ENV.iter().map(|s| s.to_string()).collect());
        Ok(plan)
    }
}

export_provider!(Generic);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(options: serde_json::Value) -> PrepareRequest {
        PrepareRequest {
            schema: 1,
            bottle_name: "t".into(),
            options,
            host_env: Default::default(),
            sandbox: Default::default(),
        }
    }

    #[test]
    fn dummies_and_ca_vars_and_nothing_provisioned() {
        let plan = Generic
            .prepare(request(serde_json::json!({"dummy_env": ["API_TOKEN"]})))
            .unwrap();
        assert_eq!(plan.env["API_TOKEN"], DUMMY_VALUE);
        assert!(plan.ca_trust_env.contains(&"SSL_CERT_FILE".to_string()));
        assert!(plan.provisioned_env.is_empty());
        assert!(plan.egress_routes.is_empty());
    }

    #[test]
    fn env_names_must_be_names() {
        for options in [
            serde_json::json!({"dummy_env": ["A=B"]}),
            serde_json::json!({"ca_trust_env": ["SSL CERT"]}),
        ] {
            let e = Generic.prepare(request(options.clone())).unwrap_err();
            assert!(
                e.message.contains("is not an env name"),
                "{options}: {}",
                e.message
            );
        }
    }

    #[test]
    fn unknown_option_is_an_error() {
        let e = Generic
            .prepare(request(serde_json::json!({"dumy_env": []})))
            .unwrap_err();
        assert!(
            e.message.contains("unknown field `dumy_env`"),
            "{}",
            e.message
        );
    }
}
