//! Names and labels of everything the backend creates. The host and
//! `bottle gc` rely on these; changing one is a breaking change.

use std::collections::HashMap;

use bot_bottle_plugin_api::{LaunchSpec, PluginError};

/// Label carrying the bottle id, on every container and network.
pub const LABEL_ID: &str = "bot-bottle.id";
/// Label carrying the manifest's bottle name.
pub const LABEL_NAME: &str = "bot-bottle.name";
/// Label saying what a resource is: [`ROLE_AGENT`], [`ROLE_EGRESS`],
/// `network`, or [`ROLE_EGRESS_IMAGE`] on the cached sidecar image.
pub const LABEL_ROLE: &str = "bot-bottle.role";
/// Label carrying the full SHA-256 of the egress program, on the sidecar image.
pub const LABEL_EGRESS_SHA256: &str = "bot-bottle.egress-sha256";
/// Label carrying the identity (device, inode, size, mtime) of the file the
/// sidecar image was built from, so that an unchanged file is not hashed again.
pub const LABEL_EGRESS_STAMP: &str = "bot-bottle.egress-stamp";
/// The agent container.
pub const ROLE_AGENT: &str = "agent";
/// The egress sidecar container.
pub const ROLE_EGRESS: &str = "egress";
/// The per-bottle internal network.
pub const ROLE_NETWORK: &str = "network";
/// The egress network the sidecars share; it carries no bottle id.
pub const ROLE_EGRESS_NETWORK: &str = "egress-network";
/// A throwaway container that reads an image's /etc/passwd and /etc/group.
pub const ROLE_PROBE: &str = "probe";
/// The cached sidecar image.
pub const ROLE_EGRESS_IMAGE: &str = "egress-image";
/// The container that holds the network namespace the sidecars of one
/// egress network share (`egress_ns.rs`); it has no bottle id.
pub const ROLE_EGRESS_NAMESPACE: &str = "egress-namespace";
/// On a sidecar that joins a shared namespace: the holder's name. `bottle
/// gc` keeps a holder while any sidecar names it.
pub const LABEL_EGRESS_NS: &str = "bot-bottle.egress-ns";
/// On a sidecar whose holder is on a network the manifest named (not
/// ours): `true`, and the holder goes with the last sidecar that names it,
/// so that the user's network is free again once their bottles are gone.
pub const LABEL_EGRESS_NS_REMOVE_WITH_LAST: &str = "bot-bottle.egress-ns-remove-with-last";
/// On a holder: the id of the egress network it joined.
pub const LABEL_EGRESS_NETWORK: &str = "bot-bottle.egress-network";
/// The launch gate's image, and the never-started container that carries
/// the gate's volume for every agent (see `gate.rs`); neither has a bottle id.
pub const ROLE_GATE: &str = "gate";

/// Repository of the cached sidecar images.
pub const EGRESS_IMAGE_REPO: &str = "bot-bottle-egress";
/// Name prefix of the egress network every sidecar joins unless the
/// manifest names one (`egress_network`): created on first use as
/// `bot-bottle-egress-<8 hex>`, found again by its role label, kept, and
/// removed by `bottle gc` when no sidecar uses it.
pub const SHARED_EGRESS_NET: &str = "bot-bottle-egress";
/// The sidecar's name on the internal network; the agent's proxy URL uses it.
pub const EGRESS_ALIAS: &str = "bot-bottle-egress";
/// Where a credential rotation writes the sidecar's next config, and the
/// proxy reloads it from on SIGHUP (its first config comes on stdin).
pub const EGRESS_CONFIG_PATH: &str = "/etc/bot-bottle/egress.json";
/// Where the egress program sits in the sidecar image.
pub const EGRESS_PROGRAM_PATH: &str = "/usr/local/bin/bottle";
/// Behind the launch gate: the directory of the proxy's Unix socket, in the
/// sidecar and (read-only) in the agent, and the socket. The agent has no
/// network; its gate forwards `127.0.0.1:<listen_port>` to this socket.
pub const EGRESS_SOCKET_DIR: &str = "/.bot-bottle-egress";
pub const EGRESS_SOCKET_PATH: &str = "/.bot-bottle-egress/proxy.sock";
/// The unprivileged user the sidecar runs as (`nobody`).
pub const EGRESS_UID: u32 = 65534;

/// The names of one bottle's resources.
#[derive(Debug, Clone)]
pub struct BottleNames {
    pub agent: String,
    pub egress: String,
    pub internal_net: String,
    /// The egress network's name or id: the manifest's `egress_network`, or
    /// the shared one's id once launch has found it.
    pub egress_net: String,
    /// A probe container, when the agent's user must be read from the image.
    pub probe: String,
}

impl BottleNames {
    pub fn new(bottle_id: &str) -> Self {
        Self {
            agent: format!("{bottle_id}-agent"),
            egress: format!("{bottle_id}-egress"),
            internal_net: format!("{bottle_id}-internal"),
            egress_net: SHARED_EGRESS_NET.to_string(),
            probe: format!("{bottle_id}-probe"),
        }
    }
}

/// Docker names must match `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; the id also ends
/// up in label filters, so keep it to that alphabet.
pub fn validate_bottle_id(id: &str) -> Result<(), PluginError> {
    let ok = !id.is_empty()
        && id.len() <= 100
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(PluginError::invalid(format!(
            "bottle id `{id}` cannot name a Docker resource"
        ))
        .with_hint("bottle ids use letters, digits, `_`, `.` and `-`, starting with a letter or digit (at most 100)"))
    }
}

/// The labels of one resource of `spec`'s bottle: the spec's own labels,
/// then ours (ours win, so a manifest cannot disguise a resource).
pub fn labels(spec: &LaunchSpec, role: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_ID.into(), spec.bottle_id.clone());
    labels.insert(LABEL_NAME.into(), spec.bottle_name.clone());
    labels.insert(LABEL_ROLE.into(), role.into());
    labels
}

/// A label filter for the Docker list APIs.
pub fn label_filter(pairs: &[(&str, Option<&str>)]) -> HashMap<String, Vec<String>> {
    let values = pairs
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => (*k).to_string(),
        })
        .collect();
    HashMap::from([("label".to_string(), values)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_name_docker_resources() {
        assert!(validate_bottle_id("bb-demo-1a2b").is_ok());
        assert!(validate_bottle_id("a").is_ok());
        assert!(validate_bottle_id("").is_err());
        assert!(validate_bottle_id("-x").is_err());
        assert!(validate_bottle_id("a b").is_err());
        assert!(validate_bottle_id("a/b").is_err());
        assert!(validate_bottle_id("a=b").is_err());
    }

    #[test]
    fn networks_and_containers_have_distinct_names() {
        let n = BottleNames::new("bb-x-1");
        assert_eq!(n.agent, "bb-x-1-agent");
        assert_eq!(n.egress, "bb-x-1-egress");
        assert_eq!(n.internal_net, "bb-x-1-internal");
        // One egress network for every bottle.
        assert_eq!(n.egress_net, BottleNames::new("bb-y-2").egress_net);
    }
}
