//! `check`, `list`, `stop` and `remove`: everything that finds bottles by
//! their labels.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, Network};
use bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNetworksOptions, RemoveContainerOptions,
    RemoveImageOptions, StopContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::{
    BottleStatus, CheckReport, CheckRequest, Finding, PluginError, RemoveReport, RemoveRequest,
    ValidateRequest,
};
use futures_util::StreamExt;

use crate::client::{is_not_found, is_not_modified, Client};
use crate::names::{
    label_filter, EGRESS_CONFIG_PATH, EGRESS_PROGRAM_PATH, EGRESS_UID, LABEL_EGRESS_NS,
    LABEL_EGRESS_NS_REMOVE_WITH_LAST, LABEL_ID, LABEL_NAME, LABEL_ROLE, ROLE_AGENT, ROLE_EGRESS,
    ROLE_EGRESS_IMAGE, ROLE_EGRESS_NAMESPACE, ROLE_GATE,
};
use crate::options::DockerOptions;

/// A bottle younger than this is never garbage: its launch may be under way.
const LAUNCH_GRACE: Duration = Duration::from_secs(120);
/// Seconds a stopping container gets before it is killed.
const STOP_TIMEOUT_SECS: i32 = 10;

/// Everything labelled with one bottle id (or with any, for `None`).
#[derive(Debug, Default)]
pub struct Resources {
    pub containers: Vec<ContainerSummary>,
    pub networks: Vec<Network>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.networks.is_empty()
    }
}

pub async fn bottle_resources(
    client: &Client,
    docker: &Docker,
    id: Option<&str>,
) -> Result<Resources, PluginError> {
    let filters = label_filter(&[(LABEL_ID, id)]);
    let (containers, networks) = tokio::join!(
        docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        })),
        docker.list_networks(Some(ListNetworksOptions {
            filters: Some(filters.clone()),
        })),
    );
    let containers = containers.map_err(|e| client.api("listing bot-bottle containers", e))?;
    let networks = networks.map_err(|e| client.api("listing bot-bottle networks", e))?;
    Ok(Resources {
        containers,
        networks,
    })
}

fn label<'a>(labels: &'a Option<HashMap<String, String>>, key: &str) -> Option<&'a str> {
    labels.as_ref()?.get(key).map(String::as_str)
}

fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| c.id.clone())
        .unwrap_or_default()
}

fn state_name(state: Option<ContainerSummaryStateEnum>) -> String {
    state
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Removes every container, then every network, of one bottle.
pub async fn remove_bottle(
    client: &Client,
    docker: &Docker,
    id: &str,
) -> Result<Vec<String>, PluginError> {
    let resources = bottle_resources(client, docker, Some(id)).await?;
    remove_resources(client, docker, resources).await
}

async fn remove_resources(
    client: &Client,
    docker: &Docker,
    resources: Resources,
) -> Result<Vec<String>, PluginError> {
    let since = std::time::Instant::now();
    // Running containers are killed first (SIGKILL: the agent is done or
    // being torn down, and the proxy keeps no state worth a graceful stop).
    // A stopped container holds no network endpoint, so its removal and the
    // networks' run side by side.
    let running = resources.containers.iter().filter(|c| {
        !matches!(
            c.state,
            Some(ContainerSummaryStateEnum::CREATED | ContainerSummaryStateEnum::EXITED)
        )
    });
    futures_util::future::join_all(running.map(|c| async move {
        let id = c.id.clone().unwrap_or_else(|| container_name(c));
        let killed = docker
            .kill_container(
                &id,
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: "KILL".into(),
                }),
            )
            .await;
        if killed.is_ok() {
            let mut stopped = docker.wait_container(
                &id,
                Some(bollard::query_parameters::WaitContainerOptions {
                    condition: "not-running".into(),
                }),
            );
            let _ = stopped.next().await;
        }
        // Any failure here is met again, and reported, by the removal.
    }))
    .await;
    tracing::debug!(elapsed = ?since.elapsed(), "containers stopped");
    let containers = resources.containers.iter().map(|c| async move {
        let name = container_name(c);
        let id = c.id.clone().unwrap_or_else(|| name.clone());
        match docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(Some(format!("container {name}"))),
            Err(e) if is_not_found(&e) => Ok(None),
            // Docker answers 409 while the removal is already under way.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(Some(format!("container {name}"))),
            Err(e) => Err(client.api(&format!("removing container {name}"), e)),
        }
    });
    let networks = resources.networks.iter().map(|n| async move {
        let name = n.name.clone().unwrap_or_default();
        let id = n.id.clone().unwrap_or_else(|| name.clone());
        let mut attempt = 0;
        loop {
            match docker.remove_network(&id).await {
                Ok(()) => return Ok(Some(format!("network {name}"))),
                Err(e) if is_not_found(&e) => return Ok(None),
                // A container removed a moment ago may still hold an
                // endpoint for a little while.
                Err(e) if attempt < 80 => {
                    tracing::debug!("removing network {name}, retrying: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(client.api(&format!("removing network {name}"), e)),
            }
        }
    });
    let (containers, networks) = tokio::join!(
        futures_util::future::try_join_all(containers),
        futures_util::future::try_join_all(networks),
    );
    let mut removed: Vec<String> = containers?.into_iter().chain(networks?).flatten().collect();
    tracing::debug!(elapsed = ?since.elapsed(), "containers and networks removed");
    // A holder on a network the manifest named goes with its last sidecar.
    // The bottle is gone either way: a holder that stays is said, not an
    // error of the removal.
    let holders: std::collections::BTreeSet<&str> = resources
        .containers
        .iter()
        .filter(|c| label(&c.labels, LABEL_EGRESS_NS_REMOVE_WITH_LAST) == Some("true"))
        .filter_map(|c| label(&c.labels, LABEL_EGRESS_NS))
        .collect();
    for holder in holders {
        match crate::egress_ns::remove_if_unnamed(client, docker, holder).await {
            Ok(gone) => removed.extend(gone),
            Err(e) => tracing::warn!(
                "{holder} stays on its network: {e}; `bottle gc` removes it once unused"
            ),
        }
    }
    Ok(removed)
}

/// The holders of shared egress namespaces (`egress_ns.rs`) that no
/// sidecar names, running or not.
async fn remove_unused_egress_namespaces(
    client: &Client,
    docker: &Docker,
) -> Result<Vec<String>, PluginError> {
    let holders =
        containers_labelled(client, docker, (LABEL_ROLE, Some(ROLE_EGRESS_NAMESPACE))).await?;
    let mut removed = Vec::new();
    for holder in &holders {
        let name = container_name(holder);
        removed.extend(crate::egress_ns::remove_if_unnamed(client, docker, &name).await?);
    }
    Ok(removed)
}

/// The shared egress network(s), when nothing is on them (a holder of
/// their namespace counts). A launch that found one a moment before it is
/// removed makes it again.
async fn remove_unused_egress_networks(
    client: &Client,
    docker: &Docker,
) -> Result<Vec<String>, PluginError> {
    let networks = crate::networks::shared_egress_networks(client, docker).await?;
    let mut removed = Vec::new();
    for n in networks {
        let name = n.name.clone().unwrap_or_default();
        let Some(id) = n.id.clone() else { continue };
        // The list does not say who is attached; inspect does.
        let in_use = match docker
            .inspect_network(
                &id,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(n) => n.containers.is_some_and(|c| !c.is_empty()),
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(client.api(&format!("inspecting network {name}"), e)),
        };
        if in_use {
            continue;
        }
        match docker.remove_network(&id).await {
            Ok(()) => removed.push(format!("network {name}")),
            Err(e) if is_not_found(&e) => {}
            // A sidecar joined it since the inspect.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 403 | 409,
                ..
            }) => {}
            Err(e) => return Err(client.api(&format!("removing network {name}"), e)),
        }
    }
    Ok(removed)
}

pub fn remove(client: &Client, request: &RemoveRequest) -> Result<RemoveReport, PluginError> {
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker().await?;
        let mut removed = Vec::new();
        if let Some(id) = &request.bottle_id {
            removed.extend(remove_bottle(client, &docker, id).await?);
        } else if request.garbage {
            let all = bottle_resources(client, &docker, None).await?;
            for (id, resources) in garbage(all, now_secs()) {
                tracing::debug!(bottle = %id, "removing leftovers");
                removed.extend(remove_resources(client, &docker, resources).await?);
            }
            removed.extend(remove_unused_egress_namespaces(client, &docker).await?);
            removed.extend(remove_unused_egress_networks(client, &docker).await?);
        }
        if request.images {
            removed.extend(remove_images(client, &docker).await?);
        }
        Ok(RemoveReport { removed })
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The resources of every bottle that is gone: its agent is not running
/// and it is not a launch under way.
fn garbage(all: Resources, now: i64) -> BTreeMap<String, Resources> {
    let mut by_id: BTreeMap<String, Resources> = BTreeMap::new();
    for c in all.containers {
        if let Some(id) = label(&c.labels, LABEL_ID) {
            by_id.entry(id.to_string()).or_default().containers.push(c);
        }
    }
    for n in all.networks {
        if let Some(id) = label(&n.labels, LABEL_ID) {
            by_id.entry(id.to_string()).or_default().networks.push(n);
        }
    }
    let grace = LAUNCH_GRACE.as_secs() as i64;
    by_id.retain(|_, r| {
        let agent = r
            .containers
            .iter()
            .find(|c| label(&c.labels, LABEL_ROLE) == Some(ROLE_AGENT));
        let alive = match agent {
            Some(a) => match a.state {
                Some(
                    ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::PAUSED
                    | ContainerSummaryStateEnum::RESTARTING,
                ) => true,
                Some(ContainerSummaryStateEnum::CREATED) => now - a.created.unwrap_or(0) < grace,
                _ => false,
            },
            // The sidecar starts only once the agent exists: a started
            // sidecar without an agent is a bottle whose agent is gone.
            None if r
                .containers
                .iter()
                .any(|c| c.state != Some(ContainerSummaryStateEnum::CREATED)) =>
            {
                false
            }
            None => {
                let youngest = r
                    .containers
                    .iter()
                    .filter_map(|c| c.created)
                    .chain(
                        r.networks
                            .iter()
                            .filter_map(|n| n.created.as_deref().and_then(parse_rfc3339)),
                    )
                    .max();
                youngest.is_some_and(|t| now - t < grace)
            }
        };
        !alive
    });
    by_id
}

async fn remove_images(client: &Client, docker: &Docker) -> Result<Vec<String>, PluginError> {
    let mut removed = remove_gate_carriers(client, docker).await?;
    let list = |role: &'static str| async move {
        docker
            .list_images(Some(ListImagesOptions {
                filters: Some(label_filter(&[(LABEL_ROLE, Some(role))])),
                ..Default::default()
            }))
            .await
            .map_err(|e| client.api("listing bot-bottle images", e))
    };
    let images = list(ROLE_EGRESS_IMAGE).await?;
    let gate_images = list(ROLE_GATE).await?;
    for image in images.into_iter().chain(gate_images) {
        let name = image
            .repo_tags
            .iter()
            .find(|t| !t.contains("<none>"))
            .cloned()
            .unwrap_or_else(|| image.id.clone());
        // By tag first, so that only our tag goes if someone re-tagged it.
        let target = name.clone();
        match docker
            .remove_image(&target, None::<RemoveImageOptions>, None)
            .await
        {
            Ok(_) => removed.push(format!("image {name}")),
            Err(e) if is_not_found(&e) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => tracing::info!(image = %name, "kept: a container still uses it"),
            Err(e) => return Err(client.api(&format!("removing image {name}"), e)),
        }
    }
    Ok(removed)
}

/// Every container (running or not) with this label (and value).
pub(crate) async fn containers_labelled(
    client: &Client,
    docker: &Docker,
    label: (&str, Option<&str>),
) -> Result<Vec<ContainerSummary>, PluginError> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(label_filter(&[label])),
            ..Default::default()
        }))
        .await
        .map_err(|e| client.api("listing bot-bottle containers", e))
}

/// The launch gate's carrier containers (see `gate.rs`), when no agent
/// container exists to use their volume: removing one under a live agent
/// would strand its volume. The next launch makes the carrier again.
async fn remove_gate_carriers(
    client: &Client,
    docker: &Docker,
) -> Result<Vec<String>, PluginError> {
    let list = |role| containers_labelled(client, docker, (LABEL_ROLE, Some(role)));
    let (agents, carriers) = tokio::join!(list(ROLE_AGENT), list(ROLE_GATE));
    let (agents, carriers) = (agents?, carriers?);
    let mut removed = Vec::new();
    if !agents.is_empty() {
        return Ok(removed);
    }
    for c in carriers {
        let name = container_name(&c);
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match docker.remove_container(&name, Some(options)).await {
            Ok(()) => removed.push(format!("container {name}")),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(client.api(&format!("removing container {name}"), e)),
        }
    }
    Ok(removed)
}

pub fn list(client: &Client) -> Result<Vec<BottleStatus>, PluginError> {
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker().await?;
        let (all, holders) = tokio::join!(
            bottle_resources(client, &docker, None),
            containers_labelled(client, &docker, (LABEL_ROLE, Some(ROLE_EGRESS_NAMESPACE))),
        );
        let running_holders = holders?
            .iter()
            .filter(|h| h.state == Some(ContainerSummaryStateEnum::RUNNING))
            .map(container_name)
            .collect();
        Ok(statuses(all?, &running_holders))
    })
}

/// One status per bottle. `running_holders`: the holders of shared egress
/// namespaces that run; a sidecar that names another has no network.
fn statuses(
    all: Resources,
    running_holders: &std::collections::HashSet<String>,
) -> Vec<BottleStatus> {
    let mut by_id: BTreeMap<String, Vec<ContainerSummary>> = BTreeMap::new();
    for c in all.containers {
        if let Some(id) = label(&c.labels, LABEL_ID) {
            by_id.entry(id.to_string()).or_default().push(c);
        }
    }
    for n in &all.networks {
        if let Some(id) = label(&n.labels, LABEL_ID) {
            by_id.entry(id.to_string()).or_default();
        }
    }
    by_id
        .into_iter()
        .map(|(id, containers)| {
            let find = |role: &str| {
                containers
                    .iter()
                    .find(|c| label(&c.labels, LABEL_ROLE) == Some(role))
            };
            let agent = find(ROLE_AGENT);
            let egress = find(ROLE_EGRESS);
            let agent_state = agent.map(|c| state_name(c.state));
            let egress_state = egress.map(|c| state_name(c.state));
            let holder = egress.and_then(|c| label(&c.labels, LABEL_EGRESS_NS));
            let network_lost = holder.is_some_and(|h| !running_holders.contains(h));
            let state = match (agent_state.as_deref(), egress_state.as_deref()) {
                // Its proxy runs, but the namespace it shares is gone.
                (Some("running"), Some("running")) if network_lost => "broken".to_string(),
                (Some("running"), Some("running")) => "running".to_string(),
                // The agent starts while its sidecar does (its program waits
                // in the launch gate): a launch under way.
                (Some("running"), Some("created")) => "starting".to_string(),
                (Some("running"), _) => "broken".to_string(),
                (Some(s), _) => s.to_string(),
                (None, _) => "broken".to_string(),
            };
            let name = containers
                .iter()
                .find_map(|c| label(&c.labels, LABEL_NAME))
                .unwrap_or_default()
                .to_string();
            BottleStatus {
                bottle_id: id,
                name,
                backend: "docker".into(),
                state,
                image: agent.and_then(|c| c.image.clone()).unwrap_or_default(),
                created: agent
                    .and_then(|c| c.created)
                    .map(format_rfc3339)
                    .unwrap_or_default(),
                details: serde_json::json!({
                    "agent_container": agent.map(container_name),
                    "agent_state": agent_state,
                    "agent_status": agent.and_then(|c| c.status.clone()),
                    "egress_container": egress.map(container_name),
                    "egress_state": egress_state,
                    "egress_namespace": holder,
                    "egress_namespace_running": holder.map(|_| !network_lost),
                }),
            }
        })
        .collect()
}

pub fn stop(client: &Client, bottle_id: &str) -> Result<(), PluginError> {
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker().await?;
        let resources = bottle_resources(client, &docker, Some(bottle_id)).await?;
        if resources.is_empty() {
            return Err(not_found(bottle_id));
        }
        // The agent first, so that it never runs without its proxy.
        let mut containers = resources.containers;
        containers.sort_by_key(|c| label(&c.labels, LABEL_ROLE) != Some(ROLE_AGENT));
        for c in containers {
            let name = container_name(&c);
            match docker
                .stop_container(
                    &name,
                    Some(StopContainerOptions {
                        t: Some(STOP_TIMEOUT_SECS),
                        ..Default::default()
                    }),
                )
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_modified(&e) || is_not_found(&e) => {}
                Err(e) => return Err(client.api(&format!("stopping {name}"), e)),
            }
        }
        Ok(())
    })
}

/// Hands a running bottle's proxy a new config (rotated credentials): the
/// file is replaced through the Docker API — a path the agent cannot reach —
/// and the proxy reloads it on SIGHUP. A config that does not load leaves
/// the proxy on its previous one.
pub fn update_egress(client: &Client, bottle_id: &str, config: &[u8]) -> Result<(), PluginError> {
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker().await?;
        let resources = bottle_resources(client, &docker, Some(bottle_id)).await?;
        let sidecar = resources
            .containers
            .iter()
            .find(|c| label(&c.labels, LABEL_ROLE) == Some(ROLE_EGRESS))
            .map(container_name)
            .ok_or_else(|| not_found(bottle_id))?;
        put_egress_config(client, &docker, &sidecar, config).await?;
        docker
            .kill_container(
                &sidecar,
                Some(bollard::query_parameters::KillContainerOptions {
                    signal: "SIGHUP".into(),
                }),
            )
            .await
            .map_err(|e| client.api("signalling the egress proxy to reload", e))
    })
}

/// Puts a rotated proxy config (real tokens and the CA key) in the
/// sidecar's config directory, a tmpfs readable by the proxy's user alone
/// (`sidecar::config_tmpfs`), so it never reaches a disk: the sidecar's own
/// `bottle egress put-config` reads it from an exec's standard input, checks
/// it and swaps it in whole. (An archive upload would land in the
/// container's writable layer on the host's disk, and cannot reach a
/// tmpfs.) Never an env var, a label, a command line or a host file. The
/// first config came on the sidecar's stdin (`sidecar::start_egress`).
async fn put_egress_config(
    client: &Client,
    docker: &Docker,
    sidecar: &str,
    config: &[u8],
) -> Result<(), PluginError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use tokio::io::AsyncWriteExt;
    let doing = "placing the egress config in the sidecar";
    let exec = docker
        .create_exec(
            sidecar,
            CreateExecOptions {
                cmd: Some(vec![
                    EGRESS_PROGRAM_PATH.to_string(),
                    "egress".into(),
                    "put-config".into(),
                    EGRESS_CONFIG_PATH.into(),
                ]),
                user: Some(format!("{EGRESS_UID}:{EGRESS_UID}")),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| client.api(doing, e))?;
    let mut said = Vec::new();
    match docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| client.api(doing, e))?
    {
        StartExecResults::Attached {
            mut output,
            mut input,
        } => {
            let sent = async {
                input.write_all(config).await?;
                input.shutdown().await
            };
            sent.await
                .map_err(|e| PluginError::internal(format!("{doing}: {e}")))?;
            while let Some(Ok(chunk)) = output.next().await {
                said.extend_from_slice(&chunk.into_bytes());
            }
        }
        StartExecResults::Detached => {
            return Err(PluginError::internal(format!(
                "{doing}: the exec did not attach"
            )))
        }
    }
    let done = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| client.api(doing, e))?;
    match done.exit_code {
        Some(0) => Ok(()),
        code => Err(PluginError::internal(format!(
            "{doing}: the sidecar refused it (exit {}): {}",
            code.unwrap_or(-1),
            String::from_utf8_lossy(&said).trim()
        ))),
    }
}

pub fn not_found(bottle_id: &str) -> PluginError {
    PluginError::not_found(format!("no bottle {bottle_id} on this Docker daemon"))
        .with_hint("`bottle ls` lists the bottles that exist")
}

pub fn check(client: &Client, request: CheckRequest) -> Result<CheckReport, PluginError> {
    let mut findings = Vec::new();
    let options = match DockerOptions::from_json(&request.options) {
        Ok(o) => o,
        Err(e) => {
            findings.push(Finding::error(
                "docker options",
                e.message.clone(),
                e.hint.unwrap_or_default(),
            ));
            DockerOptions::default()
        }
    };
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = match client.docker().await {
            Ok(d) => d,
            Err(e) => {
                findings.push(Finding::error(
                    "docker daemon",
                    e.message,
                    e.hint.unwrap_or_default(),
                ));
                return;
            }
        };
        match docker.version().await {
            Ok(v) => {
                let api = v.api_version.clone().unwrap_or_default();
                let message = format!(
                    "reachable at {}: Docker {} (API {api})",
                    client.host(),
                    v.version.clone().unwrap_or_else(|| "?".into()),
                );
                if api_at_least(&api, 1, 41) {
                    findings.push(Finding::ok("docker daemon", message));
                } else {
                    findings.push(Finding::warn(
                        "docker daemon",
                        format!("{message}; bot-bottle is tested with API 1.41 (Docker 20.10) and newer"),
                        "upgrade Docker to 20.10 or newer",
                    ));
                }
            }
            Err(e) => {
                let e = client.api("reading the Docker version", e);
                findings.push(Finding::error("docker daemon", e.message, e.hint.unwrap_or_default()));
                return;
            }
        }
        match docker.info().await {
            Ok(info) => {
                let runtimes = info.runtimes.unwrap_or_default();
                let wanted = options.runtime.as_deref();
                let gvisor = gvisor_runtimes(&runtimes);
                if let Some(first) = gvisor.first() {
                    let names = gvisor.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
                    findings.push(Finding::ok(
                        "gvisor",
                        format!("gVisor is registered as {names}; `runtime = \"{first}\"` in [backends.docker] gives the agent a user-space kernel"),
                    ));
                } else {
                    let msg = "runtime `runsc` (gVisor) is not registered with the daemon";
                    let hint = "for stronger isolation: `apt-get install runsc`, `runsc install`, restart dockerd";
                    if wanted == Some("runsc") {
                        findings.push(Finding::error("gvisor", format!("{msg}, but the manifest asks for it"), hint));
                    } else {
                        findings.push(Finding::warn("gvisor", msg, hint));
                    }
                }
                // (`runsc` missing with no gVisor at all is the error above.)
                let reported = |w: &str| w == "runsc" && gvisor.is_empty();
                if let Some(w) = wanted.filter(|w| !runtimes.contains_key(*w) && !reported(w)) {
                    findings.push(Finding::error(
                        "docker runtime",
                        format!("runtime `{w}` asked for by the manifest is not registered"),
                        "register it in /etc/docker/daemon.json and restart dockerd",
                    ));
                }
            }
            Err(e) => {
                let e = client.api("reading the daemon's info", e);
                findings.push(Finding::warn("gvisor", e.message, e.hint.unwrap_or_default()));
            }
        }
        if let Some(bottle) = &request.bottle {
            check_bottle(client, &docker, &options, bottle, &mut findings).await;
        }
    });
    match std::process::Command::new("ldd").arg("--version").output() {
        Ok(_) => findings.push(Finding::ok(
            "ldd",
            "found; the egress sidecar image can be built",
        )),
        Err(_) => findings.push(Finding::warn(
            "ldd",
            "not found; the egress sidecar image can only be built from a static `bottle`",
            "install ldd (Debian/Ubuntu: libc-bin)",
        )),
    }
    Ok(CheckReport { findings })
}

/// How long `doctor` waits for a registry to say whether it has an image.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(20);

/// What only the daemon can tell of a manifest's bottle (`bottle doctor
/// -f`): its agent image is present or can be pulled, its
/// `egress_network` exists, its `cpus` fit the engine.
async fn check_bottle(
    client: &Client,
    docker: &Docker,
    options: &DockerOptions,
    bottle: &ValidateRequest,
    findings: &mut Vec<Finding>,
) {
    let image = bottle.agent.image.as_str();
    let pull = options.pull.unwrap_or(true);
    let archive = std::path::Path::new(image);
    if archive.is_absolute() && archive.is_file() {
        findings.push(Finding::ok(
            "agent image",
            format!("`{image}` is a `docker save` archive; the launch loads it"),
        ));
    } else {
        match docker.inspect_image(image).await {
            Ok(_) => findings.push(Finding::ok(
                "agent image",
                format!("`{image}` is present"),
            )),
            Err(e) if is_not_found(&e) && !pull => findings.push(Finding::error(
                "agent image",
                format!("`{image}` is not present, and pull = false in [backends.docker]"),
                format!("build it (`docker build -t {image} .`) or load it (`docker load`), or fix `image` in [agent]"),
            )),
            Err(e) if is_not_found(&e) => {
                let asked = tokio::time::timeout(
                    REGISTRY_TIMEOUT,
                    docker.inspect_registry_image(image, None),
                )
                .await;
                match asked {
                    Ok(Ok(_)) => findings.push(Finding::ok(
                        "agent image",
                        format!("`{image}` is not present; its registry has it, and the launch pulls it"),
                    )),
                    Ok(Err(e)) => findings.push(Finding::error(
                        "agent image",
                        format!(
                            "`{image}` is not present, and it cannot be pulled: {}",
                            crate::client::chain(&e)
                        ),
                        format!("build it (`docker build -t {image} .`), load it (`docker load`), or fix `image` in [agent]"),
                    )),
                    Err(_) => findings.push(Finding::warn(
                        "agent image",
                        format!(
                            "`{image}` is not present, and its registry did not answer within {} s; the launch will try to pull it",
                            REGISTRY_TIMEOUT.as_secs()
                        ),
                        format!("`docker pull {image}` now, or build it locally"),
                    )),
                }
            }
            Err(e) => {
                let e = client.api(&format!("inspecting the agent image {image}"), e);
                findings.push(Finding::error("agent image", e.message, e.hint.unwrap_or_default()));
            }
        }
    }
    if let Some(network) = &options.egress_network {
        match docker
            .inspect_network(network, None::<bollard::query_parameters::InspectNetworkOptions>)
            .await
        {
            Ok(_) => findings.push(Finding::ok(
                "egress network",
                format!("`{network}` exists"),
            )),
            Err(e) if is_not_found(&e) => findings.push(Finding::error(
                "egress network",
                format!("`{network}` does not exist (egress_network in [backends.docker])"),
                format!("create it (`docker network create {network}`) or drop `egress_network` from [backends.docker]"),
            )),
            Err(e) => {
                let e = client.api(&format!("finding egress_network `{network}`"), e);
                findings.push(Finding::error("egress network", e.message, e.hint.unwrap_or_default()));
            }
        }
    }
    if let Some(cpus) = bottle.agent.resources.cpus {
        match docker.info().await.ok().and_then(|i| i.ncpu) {
            Some(n) if cpus > n as f64 => findings.push(Finding::error(
                "cpus",
                format!(
                    "[resources] cpus = {cpus} is more than the {n} CPUs the Docker engine has"
                ),
                format!("set cpus to {n} or less, or leave it out for no CPU limit"),
            )),
            Some(n) => findings.push(Finding::ok(
                "cpus",
                format!("cpus = {cpus} fits the engine's {n} CPUs"),
            )),
            None => {}
        }
    }
}

fn api_at_least(api: &str, major: u32, minor: u32) -> bool {
    let mut parts = api.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// Seconds since the epoch of an RFC 3339 time (Docker's `Created`).
fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// An epoch second as RFC 3339 UTC.
fn format_rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The daemon's runtimes that are gVisor: named `runsc`, or any name whose
/// program is a `runsc` (a second registration with other flags, such as
/// `runsc-hostnet` with `--network=host`). Sorted, `runsc` first.
fn gvisor_runtimes(runtimes: &HashMap<String, bollard::models::Runtime>) -> Vec<String> {
    let mut names: Vec<String> = runtimes
        .iter()
        .filter(|(name, r)| {
            *name == "runsc"
                || r.path.as_deref().is_some_and(|p| {
                    std::path::Path::new(p).file_name() == Some(std::ffi::OsStr::new("runsc"))
                })
        })
        .map(|(name, _)| name.clone())
        .collect();
    names.sort_by_key(|n| (n != "runsc", n.clone()));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gvisor_is_found_under_any_name_that_runs_runsc() {
        let rt = |path: &str| bollard::models::Runtime {
            path: Some(path.into()),
            ..Default::default()
        };
        let runtimes = HashMap::from([
            ("runc".to_string(), rt("runc")),
            ("runsc-hostnet".to_string(), rt("/usr/bin/runsc")),
            ("kata".to_string(), rt("/opt/kata/bin/kata-runtime")),
        ]);
        assert_eq!(gvisor_runtimes(&runtimes), ["runsc-hostnet"]);
        let mut both = runtimes.clone();
        both.insert("runsc".into(), rt("runsc"));
        assert_eq!(gvisor_runtimes(&both), ["runsc", "runsc-hostnet"]);
        // A program that only ends in "runsc" is something else.
        let other = HashMap::from([("x".to_string(), rt("/usr/bin/not-runsc"))]);
        assert!(gvisor_runtimes(&other).is_empty());
    }

    fn container(
        id: &str,
        role: &str,
        state: ContainerSummaryStateEnum,
        created: i64,
    ) -> ContainerSummary {
        ContainerSummary {
            names: Some(vec![format!("/{id}-{role}")]),
            labels: Some(HashMap::from([
                (LABEL_ID.to_string(), id.to_string()),
                (LABEL_ROLE.to_string(), role.to_string()),
                (LABEL_NAME.to_string(), "demo".to_string()),
            ])),
            state: Some(state),
            created: Some(created),
            ..Default::default()
        }
    }

    fn in_namespace(mut c: ContainerSummary, holder: &str) -> ContainerSummary {
        if let Some(labels) = c.labels.as_mut() {
            labels.insert(LABEL_EGRESS_NS.to_string(), holder.to_string());
        }
        c
    }

    fn network(id: &str, created: &str) -> Network {
        Network {
            name: Some(format!("{id}-internal")),
            labels: Some(HashMap::from([(LABEL_ID.to_string(), id.to_string())])),
            created: Some(created.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        let t = parse_rfc3339("2026-11-22T13:51:04.395592470Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-22T13:51:04Z");
        assert_eq!(format_rfc3339(951782400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn garbage_is_what_no_running_agent_holds() {
        use ContainerSummaryStateEnum::*;
        let now = 1_000_000;
        let all = Resources {
            containers: vec![
                container("live", ROLE_AGENT, RUNNING, now - 1000),
                container("live", ROLE_EGRESS, RUNNING, now - 1000),
                container("done", ROLE_AGENT, EXITED, now - 1000),
                container("done", ROLE_EGRESS, RUNNING, now - 1000),
                container("orphan", ROLE_EGRESS, RUNNING, now - 1000),
                container("young-orphan", ROLE_EGRESS, RUNNING, now - 5),
                container("young-launch", ROLE_EGRESS, CREATED, now - 5),
                container("launching", ROLE_AGENT, CREATED, now - 5),
                container("stuck", ROLE_AGENT, CREATED, now - 1000),
            ],
            networks: vec![
                network("live", "1970-01-01T00:00:00Z"),
                network("netonly-old", "1970-01-01T00:00:00Z"),
                network("netonly-new", &format_rfc3339(now - 3)),
            ],
        };
        let gone: Vec<String> = garbage(all, now).into_keys().collect();
        assert_eq!(
            gone,
            vec!["done", "netonly-old", "orphan", "stuck", "young-orphan"]
        );
    }

    #[test]
    fn status_of_a_bottle_whose_proxy_died_is_broken() {
        use ContainerSummaryStateEnum::*;
        let all = Resources {
            containers: vec![
                container("a", ROLE_AGENT, RUNNING, 0),
                container("a", ROLE_EGRESS, EXITED, 0),
                container("b", ROLE_AGENT, EXITED, 0),
                container("b", ROLE_EGRESS, RUNNING, 0),
                container("c", ROLE_AGENT, RUNNING, 0),
                container("c", ROLE_EGRESS, CREATED, 0),
                container("d", ROLE_AGENT, RUNNING, 0),
                in_namespace(container("d", ROLE_EGRESS, RUNNING, 0), "holder-down"),
                container("e", ROLE_AGENT, RUNNING, 0),
                in_namespace(container("e", ROLE_EGRESS, RUNNING, 0), "holder-up"),
            ],
            networks: vec![],
        };
        let s = statuses(all, &["holder-up".to_string()].into());
        assert_eq!(s[0].state, "broken");
        assert_eq!(s[1].state, "exited");
        assert_eq!(s[2].state, "starting");
        assert_eq!(s[3].state, "broken", "its proxy's namespace is gone");
        assert_eq!(s[3].details["egress_namespace_running"], false);
        assert_eq!(s[4].state, "running");
        assert_eq!(s[0].name, "demo");
    }

    #[test]
    fn api_versions_compare() {
        assert!(api_at_least("1.41", 1, 41));
        assert!(api_at_least("1.50", 1, 41));
        assert!(!api_at_least("1.40", 1, 41));
    }
}
