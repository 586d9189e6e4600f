//! The network namespace the egress sidecars of one egress network share.
//!
//! Behind the launch gate the sidecar needs a network for one thing: its
//! proxy's outbound connections (it serves the agent on a Unix socket, and
//! listens on no port). Giving each sidecar a network sandbox of its own on
//! a user-defined bridge is most of what a bottle's launch costs beyond a
//! plain `docker run`: dockerd re-executes itself to set up IPv6, the
//! endpoint's key and the embedded DNS resolver, and makes eleven
//! `iptables` calls, then undoes it all at removal
//! (docs/benchmarks-history.md, Docker launch latency, fourth session).
//! Joining an existing namespace (`--network container:X`) costs none of
//! that: ~145 ms against ~350 for a `docker run` of `true` here.
//!
//! So one small container per egress network holds the namespace: the
//! *holder*, `bot-bottle-egress-ns-<12 hex of the network's id>`. It runs
//! the launch gate's image as `gate --hold` (no network code, no files it
//! reads, waits for a stop signal), unprivileged, with no capabilities and
//! a read-only root, and is made and started by the first launch that
//! needs it. Each sidecar joins its namespace with `container:<holder>`;
//! its own file system, mounts, pids and user stay its own. The holder
//! carries no bottle id. On the shared egress network teardown leaves it,
//! like the network, and `bottle gc` removes it once no sidecar refers to
//! it (each sidecar names its holder in [`LABEL_EGRESS_NS`]); on a network
//! the manifest named, the teardown of the last sidecar that names it
//! removes it, so that the user can remove their network.
//!
//! What sharing costs is written down in decision record 0003: the
//! sidecars of different bottles see each other's sockets in
//! `/proc/net/*` and share one address and its ephemeral ports; none of
//! them listens on any port. `egress_namespace = "own"` in the manifest's
//! `[backends.docker]` table gives a bottle's sidecar a namespace of its
//! own again.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    InspectContainerOptions, InspectNetworkOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::PluginError;

use crate::client::{is_not_found, is_not_modified, Client};
use crate::gate;
use crate::names::{
    EGRESS_UID, LABEL_EGRESS_NETWORK, LABEL_EGRESS_NS, LABEL_EGRESS_NS_REMOVE_WITH_LAST,
    LABEL_ROLE, ROLE_EGRESS_NAMESPACE,
};
use crate::options::{DockerOptions, EgressNamespace};

/// Name prefix of the holders.
pub const HOLDER_PREFIX: &str = "bot-bottle-egress-ns";
/// Processes the holder may have: its one, and room for the runtime's
/// own helper threads while it starts it.
const HOLDER_PIDS: i64 = 32;

/// Whether this launch's sidecar joins a shared namespace: behind the
/// gate (otherwise the sidecar serves the agent over a per-bottle
/// network, which needs a namespace of its own), unless the manifest asks
/// for its own, and not on the host's network (which is already shared).
pub fn wanted(options: &DockerOptions, gated: bool, egress_network: &str) -> bool {
    gated
        && options.egress_namespace.unwrap_or_default() == EgressNamespace::Shared
        && egress_network != "host"
}

/// The holder's name for a network's id (or its name, should Docker not
/// say its id): one holder per egress network.
pub fn holder_name(network_id: &str) -> String {
    let short: String = network_id.chars().take(12).collect();
    format!("{HOLDER_PREFIX}-{short}")
}

/// The labels a sidecar carries when it joins `holder`'s namespace. On
/// a network the manifest named (`ours` false) the holder is removed with
/// the last sidecar that names it ([`remove_if_unnamed`]); on the shared
/// network it stays for the next launch, until `bottle gc`.
pub fn sidecar_labels(holder: &str, ours: bool) -> HashMap<String, String> {
    let mut labels = HashMap::from([(LABEL_EGRESS_NS.to_string(), holder.to_string())]);
    if !ours {
        labels.insert(
            LABEL_EGRESS_NS_REMOVE_WITH_LAST.to_string(),
            "true".to_string(),
        );
    }
    labels
}

/// Removes the holder on `network` (a name or id) if it exists and no
/// container names it.
pub async fn remove_unnamed_on(
    client: &Client,
    docker: &Docker,
    network: &str,
) -> Result<Option<String>, PluginError> {
    let id = match docker
        .inspect_network(network, None::<InspectNetworkOptions>)
        .await
    {
        Ok(n) => n.id.unwrap_or_else(|| network.to_string()),
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(client.api(&format!("inspecting network {network}"), e)),
    };
    remove_if_unnamed(client, docker, &holder_name(&id)).await
}

/// Removes `holder` if no container (running or not) names it. A launch
/// that found it a moment before fails at its sidecar's start with
/// [`gone`]; the next one makes it again.
pub async fn remove_if_unnamed(
    client: &Client,
    docker: &Docker,
    holder: &str,
) -> Result<Option<String>, PluginError> {
    let naming =
        crate::manage::containers_labelled(client, docker, (LABEL_EGRESS_NS, Some(holder))).await?;
    if !naming.is_empty() {
        return Ok(None);
    }
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(holder, Some(options)).await {
        Ok(()) => Ok(Some(format!("container {holder}"))),
        Err(e) if is_not_found(&e) => Ok(None),
        // Its removal is already under way.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(None),
        Err(e) => Err(client.api(&format!("removing container {holder}"), e)),
    }
}

/// Makes sure the holder of `network` (as the manifest or launch names it;
/// `network_id` is Docker's id for it) exists and runs; returns its name.
/// Another launch may be making it at the same moment: Docker gives the
/// name to one of them, and the other waits for that one.
pub async fn ensure(
    client: &Client,
    docker: &Docker,
    network: &str,
    network_id: &str,
) -> Result<String, PluginError> {
    let name = holder_name(network_id);
    match running(docker, &name).await {
        Ok(true) => return Ok(name),
        Ok(false) => return start(client, docker, &name).await.map(|()| name),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(client.api("finding the egress namespace's holder", e)),
    }
    let image =
        gate::image_tag().ok_or_else(|| PluginError::internal("no launch gate in this build"))?;
    tracing::info!(holder = %name, %network, "making the egress namespace's holder");
    let body = ContainerCreateBody {
        image: Some(image),
        entrypoint: Some(vec![gate::GATE_PATH.into(), "--hold".into()]),
        user: Some(format!("{EGRESS_UID}:{EGRESS_UID}")),
        labels: Some(HashMap::from([
            (LABEL_ROLE.to_string(), ROLE_EGRESS_NAMESPACE.to_string()),
            (LABEL_EGRESS_NETWORK.to_string(), network_id.to_string()),
        ])),
        host_config: Some(HostConfig {
            network_mode: Some(network.to_string()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            readonly_rootfs: Some(true),
            pids_limit: Some(HOLDER_PIDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    crate::client::create_shared(client, docker, &name, body, "the egress namespace's holder")
        .await?;
    start(client, docker, &name).await.map(|()| name)
}

async fn running(docker: &Docker, name: &str) -> Result<bool, bollard::errors::Error> {
    let found = docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await?;
    Ok(found.state.and_then(|s| s.running).unwrap_or(false))
}

/// Whether the holder runs (false when it is gone, or cannot be asked).
pub async fn is_running(docker: &Docker, name: &str) -> bool {
    running(docker, name).await.unwrap_or(false)
}

/// Starts the holder; one already running (another launch started it) is
/// as good.
async fn start(client: &Client, docker: &Docker, name: &str) -> Result<(), PluginError> {
    match docker
        .start_container(name, None::<StartContainerOptions>)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_modified(&e) => Ok(()),
        Err(e) => Err(client.api("starting the egress namespace's holder", e)),
    }
}

/// The error for a sidecar that could not join its holder's namespace at
/// its start: the holder stopped or went (a `bottle gc` between this
/// launch's check and the start, or someone's `docker rm`).
pub fn gone(holder: &str) -> PluginError {
    PluginError::unavailable(format!(
        "the egress sidecar could not join the network namespace of {holder}, which stopped or was removed during the launch"
    ))
    .with_hint("try again: the next launch makes it again")
    .retryable()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_network() {
        let id = "402e263fcc550c35035d29de04b5e78c998b26392a3b25fd779bb51b9cb6879d";
        assert_eq!(holder_name(id), "bot-bottle-egress-ns-402e263fcc55");
        assert_ne!(holder_name(id), holder_name("ef3eb7df7f03474284090c41"));
        assert_eq!(holder_name("bridge"), "bot-bottle-egress-ns-bridge");
    }

    #[test]
    fn shared_behind_the_gate_unless_asked_or_on_the_host() {
        let shared = DockerOptions::default();
        let own = DockerOptions {
            egress_namespace: Some(EgressNamespace::Own),
            ..Default::default()
        };
        assert!(wanted(&shared, true, "bot-bottle-egress-1"));
        assert!(!wanted(&shared, false, "bot-bottle-egress-1"));
        assert!(!wanted(&own, true, "bot-bottle-egress-1"));
        assert!(!wanted(&shared, true, "host"));
    }
}
