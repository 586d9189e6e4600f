//! The `[backends.docker]` options the Docker backend reads from a manifest.

use bot_bottle_plugin_api::PluginError;
use serde::{Deserialize, Serialize};

/// `[backends.docker]` keys (used when `backend = "docker"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerOptions {
    /// The user the agent runs as (`name`, `uid`, `uid:gid`, `name:group`).
    /// Unset: the image's `USER`, else a user named `agent`, else uid 1000,
    /// else root (with a warning).
    #[serde(default)]
    pub user: Option<String>,
    /// OCI runtime for the agent container, for example `runsc` (gVisor).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Pull the agent image when it is not present locally (default true).
    #[serde(default)]
    pub pull: Option<bool>,
    /// The existing Docker network the sidecar reaches the world through,
    /// instead of the egress network every bottle shares: where an
    /// internal mirror or a test upstream lives. Only the sidecar joins
    /// it; the agent has no network.
    #[serde(default)]
    pub egress_network: Option<String>,
    /// Whether the sidecar joins the network namespace the sidecars of its
    /// egress network share (`"shared"`, the default: a faster launch) or
    /// gets one of its own (`"own"`). See decision record 0003.
    #[serde(default)]
    pub egress_namespace: Option<EgressNamespace>,
}

/// `egress_namespace`'s values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressNamespace {
    #[default]
    Shared,
    Own,
}

impl DockerOptions {
    /// Reads the options; `null` means all defaults.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, PluginError> {
        PluginError::options(value, "[backends.docker] in the manifest").map_err(|e| {
            e.with_hint(
                "the docker backend reads `user`, `runtime` (e.g. \"runsc\"), `pull` (true/false), `egress_network` and `egress_namespace` (\"shared\" or \"own\")",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_and_empty_are_defaults() {
        assert_eq!(
            DockerOptions::from_json(&serde_json::Value::Null).unwrap(),
            DockerOptions::default()
        );
        assert_eq!(
            DockerOptions::from_json(&serde_json::json!({})).unwrap(),
            DockerOptions::default()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = DockerOptions::from_json(&serde_json::json!({"runtim": "runsc"})).unwrap_err();
        assert!(err.message.contains("runtim"), "{}", err.message);
        assert!(err.hint.is_some());
        // The host names the key's line in the manifest.
        assert_eq!(err.options_key, Some(vec!["runtim".to_string()]));
        let err =
            DockerOptions::from_json(&serde_json::json!({"pull": "no", "user": "a"})).unwrap_err();
        assert_eq!(err.options_key, Some(vec!["pull".to_string()]));
        assert!(
            err.message
                .starts_with("[backends.docker] in the manifest: invalid type"),
            "{}",
            err.message
        );
    }

    #[test]
    fn egress_namespace_is_shared_or_own() {
        let o = DockerOptions::from_json(&serde_json::json!({"egress_namespace": "own"})).unwrap();
        assert_eq!(o.egress_namespace, Some(EgressNamespace::Own));
        let err =
            DockerOptions::from_json(&serde_json::json!({"egress_namespace": "mine"})).unwrap_err();
        assert!(err.message.contains("`shared`"), "{}", err.message);
        assert!(err.message.contains("`own`"), "{}", err.message);
    }

    #[test]
    fn reads_user_and_runtime() {
        let o =
            DockerOptions::from_json(&serde_json::json!({"user": "1000:1000", "runtime": "runsc"}))
                .unwrap();
        assert_eq!(o.user.as_deref(), Some("1000:1000"));
        assert_eq!(o.runtime.as_deref(), Some("runsc"));
    }
}
