//! The networks of a bottle: its own internal network, and the shared
//! egress network its sidecar reaches the world through (one per engine,
//! made once and agreed on by racing launches).

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptions;
use bollard::Docker;
use bot_bottle_plugin_api::{LaunchSpec, PluginError};

use crate::client::Client;
use crate::names::{self, LABEL_ROLE, ROLE_EGRESS_NETWORK, ROLE_NETWORK, SHARED_EGRESS_NET};

/// A network the user made for egress (a mirror, a test upstream): it must
/// exist, and it is theirs, so it carries no bottle label and teardown
/// leaves it alone. Returns its id.
pub(crate) async fn find_egress_network(
    client: &Client,
    docker: &Docker,
    existing: &str,
) -> Result<String, PluginError> {
    docker
        .inspect_network(existing, None::<bollard::query_parameters::InspectNetworkOptions>)
        .await
        .map(|n| n.id.unwrap_or_else(|| existing.to_string()))
        .map_err(|e| {
            let mut err = client.api(&format!("finding egress_network `{existing}`"), e);
            err.hint = Some(format!(
                "create it (`docker network create {existing}`) or drop `egress_network` from [backends.docker]"
            ));
            err
        })
}

/// The egress network the sidecars share (unless the manifest names one),
/// found by its label, made on first use and kept; returns its id.
/// Inter-container traffic on it is off (`enable_icc=false`): a sidecar
/// reaches the world and the host, never another bottle's sidecar.
///
/// Launches from this machine take turns at making it ([`machine_turn`]),
/// so the one that waited finds the network made before it. Launches from
/// elsewhere (another user; another machine on a remote engine) racing
/// here may each make one (Docker has no atomic "create unless a network
/// with this label exists"). They agree afterwards without a lock of the
/// engine's: every launch takes the *earliest made* of the
/// labelled networks it sees, and a launch lists only after its own network
/// exists, so it sees every network made before its own and picks the same
/// one as everybody else. (Choosing the lowest id instead, as before, let
/// the first launch settle on its own network before the second one's
/// appeared, and the second keep its own when its id was lower.)
///
/// A launch that made one waits [`SETTLE`] before it lists again, so a
/// network whose creation was under way meanwhile is listed by then.
///
/// The networks that lost stay, unused, until `bottle gc`: a loser cannot
/// know that no third launch picked its network in the meantime (Docker
/// stamps a network's time when its creation starts but lists it only
/// when it ends, so one made earlier can appear later), and removing it
/// under that launch would fail it.
pub(crate) async fn shared_egress_network(
    client: &Client,
    docker: &Docker,
) -> Result<String, PluginError> {
    let list = || shared_egress_networks(client, docker);
    if let Some(id) = earliest(&list().await?) {
        return Ok(id);
    }
    // Launches from this machine take turns from here, and one that waited
    // finds the network its predecessor made: no second one is made at all.
    // Launches from elsewhere (another user, another machine on a remote
    // engine) are not covered; the earliest-made rule below settles those.
    let _turn = machine_turn(client.host()).await;
    if let Some(id) = earliest(&list().await?) {
        return Ok(id);
    }
    // A unique name: Docker resolves a container's networks by name when it
    // starts it, and two networks of one name would make that ambiguous.
    let name = format!("{SHARED_EGRESS_NET}-{:08x}", random_u32());
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        internal: Some(false),
        attachable: Some(false),
        enable_ipv6: Some(false),
        options: Some(HashMap::from([(
            "com.docker.network.bridge.enable_icc".to_string(),
            "false".to_string(),
        )])),
        labels: Some(HashMap::from([(
            LABEL_ROLE.to_string(),
            ROLE_EGRESS_NETWORK.to_string(),
        )])),
        ..Default::default()
    };
    tracing::info!(network = %name, "creating the shared egress network");
    let ours = docker
        .create_network(request)
        .await
        .map_err(|e| client.api(&format!("creating network {name}"), e))?
        .id;
    // A network whose creation started before ours may still be on its
    // way into the list (see above; CI saw two racing launches settle on
    // two networks). Only a launch that made a network waits, once per
    // engine: long enough for a creation under way to finish.
    tokio::time::sleep(SETTLE).await;
    let chosen = earliest(&list().await?).unwrap_or_else(|| ours.clone());
    if chosen != ours {
        tracing::info!(network = %name, "another launch made the shared egress network first; using that one (`bottle gc` removes ours)");
    }
    Ok(chosen)
}

/// Takes this machine's lock for making the shared egress network of the
/// engine at `host`: a `flock` on a file under the user's cache directory,
/// released when the returned file is dropped (or the process dies).
/// `None` when the lock cannot be had within [`TURN_WAIT`] or the file
/// cannot be made; the launch goes on without it (the earliest-made rule
/// still settles a race, only less surely).
async fn machine_turn(host: &str) -> Option<std::fs::File> {
    let path = turn_file(host)?;
    let file = tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    })
    .await
    .ok()?
    .map_err(|e| tracing::debug!(error = %e, "no lock file for the shared egress network"))
    .ok()?;
    let deadline = std::time::Instant::now() + TURN_WAIT;
    loop {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; non-blocking,
        // so it never holds up the runtime's thread.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Some(file);
        }
        if std::time::Instant::now() >= deadline {
            tracing::debug!("another launch held the shared egress network's lock too long; going on without it");
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The lock file for the engine at `host` (by a hash of its address).
fn turn_file(host: &str) -> Option<std::path::PathBuf> {
    use sha2::Digest;
    let key = hex::encode(&sha2::Sha256::digest(host.as_bytes())[..6]);
    Some(
        dirs::cache_dir()?
            .join("bot-bottle")
            .join("docker-locks")
            .join(format!("egress-network-{key}.lock")),
    )
}

/// The longest a launch waits for another launch from this machine to make
/// the shared egress network (normally well under a second; a launch that
/// holds it is bounded by its request timeouts, which are far longer).
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a launch that made the shared egress network waits before it
/// lists them again and picks the earliest (bridge networks are made in
/// tens to hundreds of milliseconds here).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Every shared egress network there is (normally one; see
/// [`shared_egress_network`] for when there are more).
pub(crate) async fn shared_egress_networks(
    client: &Client,
    docker: &Docker,
) -> Result<Vec<bollard::models::Network>, PluginError> {
    docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(names::label_filter(&[(
                LABEL_ROLE,
                Some(ROLE_EGRESS_NETWORK),
            )])),
        }))
        .await
        .map_err(|e| client.api("listing the shared egress networks", e))
}

/// The id of the network made first (by Docker's creation time, then id);
/// `None` for an empty list. A network whose time cannot be read sorts last.
pub(crate) fn earliest(networks: &[bollard::models::Network]) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    networks
        .iter()
        .filter_map(|n| {
            let made = n
                .created
                .as_deref()
                .and_then(|c| time::OffsetDateTime::parse(c, &Rfc3339).ok());
            Some((made.is_none(), made, n.id.clone()?))
        })
        .min()
        .map(|(_, _, id)| id)
}

/// A random number from the standard library's hasher seed, the time and
/// the process id: enough to keep two network names apart.
pub(crate) fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.finish() as u32
}

pub(crate) async fn create_network(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    name: &str,
    internal: bool,
) -> Result<(), PluginError> {
    let mut options = HashMap::new();
    if internal {
        // Without this the host holds the bridge's gateway address, and
        // every host service listening on 0.0.0.0 is reachable from the
        // agent even on an `internal` network.
        options.insert(
            "com.docker.network.bridge.inhibit_ipv4".to_string(),
            "true".to_string(),
        );
    }
    let request = NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        internal: Some(internal),
        attachable: Some(false),
        enable_ipv6: Some(false),
        options: Some(options),
        labels: Some(names::labels(spec, ROLE_NETWORK)),
        ..Default::default()
    };
    docker
        .create_network(request)
        .await
        .map_err(|e| client.api(&format!("creating network {name}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, created: Option<&str>) -> bollard::models::Network {
        bollard::models::Network {
            id: Some(id.into()),
            created: created.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn racing_launches_agree_on_the_earliest_network() {
        // Docker trims trailing zeros of the fraction, so the text order is
        // not the time order: ".1Z" sorts before "Z" as text.
        let nets = [
            net("aaa", Some("2026-12-01T11:30:00.1Z")),
            net("zzz", Some("2026-12-01T11:30:00Z")),
            net("000", None),
        ];
        assert_eq!(earliest(&nets).as_deref(), Some("zzz"));
        // Same time: the id decides, the same way for everybody.
        let tie = [
            net("b", Some("2026-12-01T11:30:00Z")),
            net("a", Some("2026-12-01T11:30:00Z")),
        ];
        assert_eq!(earliest(&tie).as_deref(), Some("a"));
        // Unreadable times sort last, but still give an answer.
        assert_eq!(earliest(&[net("x", Some("soon"))]).as_deref(), Some("x"));
        assert_eq!(earliest(&[]), None);
    }

    #[tokio::test]
    async fn launches_from_this_machine_take_turns_at_the_shared_network() {
        let host = format!("unix:///nonexistent/turns-{:08x}.sock", random_u32());
        let first = machine_turn(&host).await.expect("the first launch's turn");
        let waiting = {
            let host = host.clone();
            tokio::spawn(async move { machine_turn(&host).await.is_some() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a second launch must wait while the first holds the turn"
        );
        drop(first);
        assert!(waiting.await.unwrap(), "and gets it once the first is done");
        let _ = std::fs::remove_file(turn_file(&host).unwrap());
    }
}
