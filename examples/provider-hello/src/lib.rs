//! `hello`: a minimal agent provider written as a third party would write it.
//!
//! It greets the agent through an env var, asks for one egress route to an
//! API whose key the host holds, and gives the agent a dummy key.
//!
//! ```toml
//! [agent]
//! provider = "hello"
//! [agent.options]
//! greeting = "hi"
//! ```

use bot_bottle_plugin_api::{
    export_provider, tracing, AgentProvisionPlan, EgressRoute, HeaderInjection, PluginError, PluginInfo,
    PrepareRequest, Provider,
};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello from a third-party plugin".into()
}

struct Hello;

impl Provider for Hello {
    fn info(&self) -> PluginInfo {
        PluginInfo::provider("hello", env!("CARGO_PKG_VERSION"), "Example third-party provider (examples/provider-hello)")
    }

    fn prepare(&self, request: PrepareRequest) -> Result<AgentProvisionPlan, PluginError> {
        let options: Options = serde_json::from_value(match request.options {
            serde_json::Value::Null => serde_json::json!({}),
            v => v,
        })
        .map_err(|e| PluginError::invalid(format!("[agent.options]: {e}")))?;
        tracing::info!(bottle = %request.bottle_name, "preparing hello agent");

        let mut plan = AgentProvisionPlan::default();
        plan.env.insert("HELLO_GREETING".into(), options.greeting);
        plan.env.insert("HELLO_API_KEY".into(), "dummy-hello-key".into());
        plan.ca_trust_env = vec!["SSL_CERT_FILE".into()];
        let mut route = EgressRoute::allow("api.hello.example");
        route.inject.push(HeaderInjection {
            header: "x-api-key".into(),
            value: "{token}".into(),
            token_ref: Some("HELLO_API_KEY".into()),
        });
        plan.egress_routes.push(route);
        plan.default_command = vec!["sh".into(), "-c".into(), "echo \"$HELLO_GREETING\"".into()];
        Ok(plan)
    }
}

export_provider!(Hello);
