//! `launch`: networks, the egress sidecar, the agent container, in that
//! order, and everything removed again when any step fails.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::container::AttachContainerResults;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, Mount as DockerMount, MountTypeEnum,
    MountVolumeOptions, MountVolumeOptionsDriverConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, CreateImageOptions,
    DownloadFromContainerOptions, ImportImageOptions, ListNetworksOptions, LogsOptions,
    RemoveContainerOptions, StartContainerOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::{BottleHandle, LaunchSpec, PluginError};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::client::{is_not_found, Client};
use crate::egress_ns;
use crate::files::{self, AgentUser, Placed};
use crate::gate;
use crate::image_facts::ImageFacts;
use crate::names::{
    self, BottleNames, EGRESS_ALIAS, EGRESS_CONFIG_PATH, EGRESS_PROGRAM_PATH, EGRESS_SOCKET_DIR,
    EGRESS_SOCKET_PATH, EGRESS_UID, LABEL_ROLE, ROLE_AGENT, ROLE_EGRESS, ROLE_EGRESS_NETWORK,
    ROLE_NETWORK, ROLE_PROBE, SHARED_EGRESS_NET,
};
use crate::options::DockerOptions;

/// How long the sidecar may take to listen.
const EGRESS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default process limit of the agent when the manifest sets none.
const DEFAULT_AGENT_PIDS: i64 = 4096;
/// Process limit of the sidecar.
const EGRESS_PIDS: i64 = 1024;
/// The agent's /etc/hosts behind the gate: what Docker writes for a
/// container on `--network none`.
const LOOPBACK_HOSTS: &str = "127.0.0.1\tlocalhost\n\
    ::1\tlocalhost ip6-localhost ip6-loopback\n\
    fe00::0\tip6-localnet\n\
    ff00::0\tip6-mcastprefix\n\
    ff02::1\tip6-allnodes\n\
    ff02::2\tip6-allrouters\n";

/// Brings the bottle up; on any failure (or panic) removes every resource
/// labelled with the bottle id before returning.
pub fn launch(client: &Client, spec: LaunchSpec) -> Result<BottleHandle, PluginError> {
    names::validate_bottle_id(&spec.bottle_id)?;
    let options = DockerOptions::from_json(&spec.backend_options)?;
    validate(client, &spec)?;
    bot_bottle_plugin_api::runtime().block_on(async {
        let docker = client.docker().await?;
        ensure_fresh_id(client, &docker, &spec.bottle_id).await?;
        let outcome = AssertUnwindSafe(bring_up(client, &docker, &spec, &options))
            .catch_unwind()
            .await;
        if !matches!(outcome, Ok(Ok(_))) {
            drop(crate::attach::take_early(&spec.bottle_id));
            if let Err(e) = crate::manage::remove_bottle(client, &docker, &spec.bottle_id).await {
                tracing::error!(
                    bottle = %spec.bottle_id,
                    "cleaning up after a failed launch: {e}; run `bottle gc`"
                );
            }
            // A holder this launch made on the user's network before it
            // failed: no sidecar of its names it, so the removal above did
            // not see it.
            if let Some(network) = options.egress_network.as_deref() {
                if egress_ns::wanted(&options, gate::enabled(&options), network) {
                    if let Err(e) = egress_ns::remove_unnamed_on(client, &docker, network).await {
                        tracing::error!("cleaning up after a failed launch: {e}; run `bottle gc`");
                    }
                }
            }
        }
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Checks what can be checked before touching the daemon.
fn validate(client: &Client, spec: &LaunchSpec) -> Result<(), PluginError> {
    if spec.egress.listen_port == 0 {
        return Err(PluginError::invalid("the egress proxy's listen port is 0")
            .with_hint("this is a bug in the host: it must pick a port for the proxy"));
    }
    if spec.agent.image.trim().is_empty() {
        return Err(PluginError::invalid("the agent image is empty")
            .with_hint("set `image` in the manifest's [agent] table"));
    }
    for file in &spec.agent.files {
        files::relative_path(&file.path)?;
    }
    for key in spec.agent.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(
                PluginError::invalid(format!("agent env name `{key}` is not valid"))
                    .with_hint("env names may not be empty or contain `=`"),
            );
        }
    }
    let sockets = docker_sockets(client);
    for mount in &spec.agent.mounts {
        if !mount.host.is_absolute() || !mount.sandbox.starts_with('/') {
            return Err(PluginError::invalid(format!(
                "mount {} -> {} is not between absolute paths",
                mount.host.display(),
                mount.sandbox
            ))
            .with_hint("mount paths must be absolute on both sides"));
        }
        let host = mount.host.canonicalize().map_err(|e| {
            PluginError::invalid(format!(
                "mount source {} cannot be used: {e}",
                mount.host.display()
            ))
            .with_hint("create the directory, or remove the mount from the manifest")
        })?;
        if let Some(sock) = sockets.iter().find(|s| s.starts_with(&host)) {
            return Err(PluginError::invalid(format!(
                "mount {} would give the agent the Docker socket {}",
                mount.host.display(),
                sock.display()
            ))
            .with_hint("the Docker socket controls the host; mount a narrower directory"));
        }
    }
    Ok(())
}

/// Host paths of the Docker socket, resolved, that no mount may expose.
fn docker_sockets(client: &Client) -> Vec<PathBuf> {
    let mut paths = vec![
        PathBuf::from("/var/run/docker.sock"),
        PathBuf::from("/run/docker.sock"),
    ];
    if let Some(p) = client.host().strip_prefix("unix://") {
        paths.push(PathBuf::from(p));
    }
    let mut out: Vec<PathBuf> = paths
        .iter()
        .flat_map(|p| [Some(p.clone()), p.canonicalize().ok()])
        .flatten()
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn ensure_fresh_id(client: &Client, docker: &Docker, id: &str) -> Result<(), PluginError> {
    let existing = crate::manage::bottle_resources(client, docker, Some(id)).await?;
    if existing.is_empty() {
        Ok(())
    } else {
        Err(PluginError::invalid(format!(
            "a bottle with id {id} already exists on this Docker daemon"
        ))
        .with_hint("ids are unique per run; remove the old bottle with `bottle gc` and try again"))
    }
}

async fn bring_up(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    options: &DockerOptions,
) -> Result<BottleHandle, PluginError> {
    let started = Instant::now();
    let mut names = BottleNames::new(&spec.bottle_id);
    // Behind the gate the agent has no network at all, and reaches its
    // proxy through the proxy's Unix socket (see `gate.rs`); otherwise the
    // two share a per-bottle internal network.
    let gated = gate::enabled(options);
    if let Some(runtime) = &options.runtime {
        check_runtime(client, docker, runtime).await?;
    }

    // Images and networks do not depend on each other. `join!`, not
    // `try_join!`: a create request cancelled in flight may still complete
    // in the daemon after the cleanup has looked, and leak.
    let (images, networks) = tokio::join!(
        async {
            let (agent, egress) = tokio::join!(
                async {
                    let image = ensure_agent_image(
                        client,
                        docker,
                        &spec.agent.image,
                        options.pull.unwrap_or(true),
                    )
                    .await?;
                    let facts = ImageFacts::open(
                        image.id.as_deref(),
                        &spec.agent.workdir,
                        &agent_mount_targets(spec, options),
                    );
                    // An image without USER: read its users now, while the
                    // networks are made, so the agent is created only once.
                    let probed = match options.user.is_none() && image.user.is_none() {
                        true => Some(match facts.users() {
                            Some((passwd, group)) => Probed::parse(&passwd, &group),
                            None => {
                                let (passwd, group) =
                                    probe_users(client, docker, spec, &names, &image.reference)
                                        .await?;
                                facts.learn_users(&passwd, &group);
                                Probed::parse(&passwd, &group)
                            }
                        }),
                        false => None,
                    };
                    Ok::<_, PluginError>((image, probed, facts))
                },
                crate::egress_image::ensure(client, docker, &spec.egress.program),
            );
            Ok::<_, PluginError>((agent?, egress?))
        },
        async {
            let (a, b, c) = tokio::join!(
                async {
                    match gated {
                        true => Ok(()),
                        false => {
                            create_network(client, docker, spec, &names.internal_net, true).await
                        }
                    }
                },
                async {
                    match &options.egress_network {
                        Some(existing) => find_egress_network(client, docker, existing)
                            .await
                            .map(|id| (existing.clone(), id)),
                        None => shared_egress_network(client, docker)
                            .await
                            .map(|id| (id.clone(), id)),
                    }
                },
                async {
                    match gated {
                        true => gate::ensure(client, docker).await.map(Some),
                        false => Ok(None),
                    }
                },
            );
            a?;
            let ((network, network_id), gate_volume) = (b?, c?);
            // After the gate's image exists: the holder runs it.
            let holder = match egress_ns::wanted(options, gated, &network) {
                true => Some(egress_ns::ensure(client, docker, &network, &network_id).await?),
                false => None,
            };
            Ok::<_, PluginError>((network, gate_volume, holder))
        },
    );
    let ((agent_image, probed, facts), egress_image) = images?;
    let (egress_net, gate_volume, holder) = networks?;
    let holder = holder.as_deref();
    names.egress_net = egress_net;
    tracing::debug!(elapsed = ?started.elapsed(), "images and networks ready");

    let start_agent = || async {
        docker
            .start_container(&names.agent, None::<StartContainerOptions>)
            .await
            .map_err(|e| {
                let mut err = client.api("starting the agent container", e);
                if options.runtime.is_some() {
                    err.hint = Some(
                        "check that the runtime named in [backends.docker] runtime works (`docker info`)"
                            .into(),
                    );
                }
                err
            })
    };
    // Two paths at once, which wait for each other only where they must:
    // - behind the gate the agent is created after the sidecar, whose
    //   socket volume it mounts;
    // - both containers are created before either starts (`bottle gc`
    //   takes a started sidecar without an agent for the leftover of a
    //   dead bottle);
    // - the agent's users are read and its files placed while it is only
    //   created, as the sidecar starts: an archive call on a container
    //   that is starting waits until the start is done (400-600 ms here
    //   with two starts contending for dockerd);
    // - with the gate the agent starts while its proxy comes up (its
    //   program waits in the gate until the proxy's socket accepts a
    //   connection); without it, once the proxy listens.
    // A path that stops because the other failed ends without an error
    // of its own (`None`): the other's is the launch's. `join!`, not
    // `try_join!`: a request cancelled in flight may still complete in the
    // daemon after the cleanup has looked, and leak.
    let (agent_made_tx, agent_made) = tokio::sync::oneshot::channel::<()>();
    let (sidecar_made_tx, sidecar_made) = tokio::sync::oneshot::channel::<()>();
    let (listening_tx, listening) = tokio::sync::oneshot::channel::<()>();
    let (egress, agent) = tokio::join!(
        async {
            create_egress(
                client,
                docker,
                spec,
                options,
                &names,
                &egress_image,
                gated,
                holder,
            )
            .await?;
            tracing::debug!(elapsed = ?started.elapsed(), "sidecar created");
            let _ = sidecar_made_tx.send(());
            if agent_made.await.is_err() {
                return Ok(());
            }
            start_egress(client, docker, spec, &names, holder).await?;
            tracing::debug!(elapsed = ?started.elapsed(), "egress proxy listening");
            let _ = listening_tx.send(());
            Ok::<_, PluginError>(())
        },
        async {
            if gated && sidecar_made.await.is_err() {
                return Ok(None);
            }
            let pending_user = create_agent(
                client,
                docker,
                spec,
                options,
                &names,
                &agent_image,
                gate_volume.as_deref(),
                probed,
            )
            .await?;
            tracing::debug!(elapsed = ?started.elapsed(), "agent created");
            let _ = agent_made_tx.send(());
            let (user, missing) =
                user_and_missing_dirs(client, docker, spec, &names, &facts, pending_user).await?;
            place_files(client, docker, spec, &names.agent, &user, &missing, gated).await?;
            facts.save();
            tracing::debug!(elapsed = ?started.elapsed(), "agent's files placed");
            if !gated && listening.await.is_err() {
                return Ok(None);
            }
            if spec.agent.attached {
                // Before the start, so that `wait` misses none of its output.
                crate::attach::attach_early(client, &spec.bottle_id, spec.agent.interactive)
                    .await?;
            }
            start_agent().await?;
            tracing::debug!(elapsed = ?started.elapsed(), "agent started");
            Ok::<_, PluginError>(Some(user))
        },
    );
    // Either failing fails the launch, and its cleanup kills an agent
    // still waiting in the gate. The bottle is up only once the proxy said
    // it listens, as without the gate.
    egress?;
    let agent_user = agent?.ok_or_else(|| {
        PluginError::internal("the egress sidecar's launch stopped without an error")
    })?;
    tracing::info!(bottle = %spec.bottle_id, elapsed = ?started.elapsed(), "bottle is up");

    Ok(BottleHandle {
        bottle_id: spec.bottle_id.clone(),
        details: serde_json::json!({
            "agent_container": names.agent,
            "egress_container": names.egress,
            "internal_network": (!gated).then_some(&names.internal_net),
            "egress_socket": gated.then_some(EGRESS_SOCKET_PATH),
            "egress_network": options.egress_network.as_deref().unwrap_or(&names.egress_net),
            "egress_namespace": holder,
            "agent_image": agent_image.reference,
            "egress_image": egress_image,
            "proxy_url": proxy_url(spec, gated),
            "user": agent_user.spec.clone().unwrap_or_else(|| "root".into()),
        }),
    })
}

/// The proxy URL the agent uses: behind the gate its forwarder to the
/// proxy's socket, on the agent's own loopback; otherwise the sidecar on
/// the internal network.
pub fn proxy_url(spec: &LaunchSpec, gated: bool) -> String {
    let port = spec.egress.listen_port;
    match gated {
        true => format!("http://127.0.0.1:{port}"),
        false => format!("http://{EGRESS_ALIAS}:{port}"),
    }
}

async fn check_runtime(client: &Client, docker: &Docker, runtime: &str) -> Result<(), PluginError> {
    let info = docker
        .info()
        .await
        .map_err(|e| client.api("reading the daemon's runtimes", e))?;
    let known = info.runtimes.unwrap_or_default();
    if known.contains_key(runtime) {
        return Ok(());
    }
    let mut names: Vec<_> = known.keys().cloned().collect();
    names.sort();
    let hint = if runtime == "runsc" {
        "install gVisor (Debian: `apt-get install runsc`), run `runsc install`, then restart dockerd"
            .to_string()
    } else {
        format!("register `{runtime}` in /etc/docker/daemon.json and restart dockerd")
    };
    Err(PluginError::unavailable(format!(
        "the Docker daemon has no runtime `{runtime}` (it has: {})",
        names.join(", ")
    ))
    .with_hint(hint))
}

/// Makes sure the agent image exists locally: present, loaded from a
/// `docker save` archive, or pulled. Returns the reference to run and the
/// image's configured user.
async fn ensure_agent_image(
    client: &Client,
    docker: &Docker,
    image: &str,
    pull: bool,
) -> Result<AgentImage, PluginError> {
    let mut reference = image.to_string();
    let archive = Path::new(image);
    if archive.is_absolute() && archive.is_file() {
        reference = load_archive(client, docker, archive).await?;
    }
    match docker.inspect_image(&reference).await {
        Ok(found) => return Ok(AgentImage::new(reference, &found)),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(client.api(&format!("inspecting the agent image {reference}"), e)),
    }
    let missing = || {
        PluginError::unavailable(format!(
            "the agent image {reference} is not present locally"
        ))
    };
    if !pull {
        return Err(missing().with_hint(format!(
            "build it (`docker build -t {reference} .`) or load it (`docker load`); pulling is off"
        )));
    }
    tracing::info!(image = %reference, "pulling the agent image");
    let spinner = crate::progress::Spinner::start(format!("pulling {reference}"));
    let options = CreateImageOptions {
        from_image: Some(reference.clone()),
        ..Default::default()
    };
    docker
        .create_image(Some(options), None, None)
        .try_for_each(|info| {
            if let Some(status) = info.status {
                let layer = info.id.map(|id| format!(" {id}")).unwrap_or_default();
                spinner.say(format!("pulling {reference}:{layer} {status}"));
            }
            futures_util::future::ready(Ok(()))
        })
        .await
        .map_err(|e| {
            let mut err = missing();
            err.message = format!("{} and pulling it failed: {}", err.message, crate::client::chain(&e));
            err.with_hint(format!(
                "build it locally (`docker build -t {reference} .`), `docker load` it, or check the registry"
            ))
        })?;
    let found = docker
        .inspect_image(&reference)
        .await
        .map_err(|e| client.api(&format!("inspecting the agent image {reference}"), e))?;
    Ok(AgentImage::new(reference, &found))
}

/// The agent image as found locally: what to run, and what of its config
/// the launch needs.
struct AgentImage {
    reference: String,
    /// Its ID (the digest of its content), under which facts are kept.
    id: Option<String>,
    /// Its `USER`, if it sets one.
    user: Option<String>,
    /// Its entrypoint and command, which the launch gate passes on.
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

impl AgentImage {
    fn new(reference: String, image: &bollard::models::ImageInspect) -> Self {
        let config = image.config.clone().unwrap_or_default();
        Self {
            reference,
            id: image.id.clone(),
            user: config.user.filter(|u| !u.trim().is_empty()),
            entrypoint: config.entrypoint.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
        }
    }
}

/// Loads a `docker save` archive and returns the image it holds.
async fn load_archive(
    client: &Client,
    docker: &Docker,
    path: &Path,
) -> Result<String, PluginError> {
    let bytes = tokio::fs::read(path).await.map_err(|e| {
        PluginError::unavailable(format!(
            "cannot read the image archive {}: {e}",
            path.display()
        ))
        .with_hint("check the path in the manifest's `image`")
    })?;
    let _spinner =
        crate::progress::Spinner::start(format!("loading the image archive {}", path.display()));
    let infos: Vec<_> = docker
        .import_image(
            ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_full(bytes.into()),
            None,
        )
        .try_collect()
        .await
        .map_err(|e| client.api(&format!("loading the image archive {}", path.display()), e))?;
    let text: String = infos.iter().filter_map(|i| i.stream.clone()).collect();
    text.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("Loaded image: ")
                .or_else(|| l.strip_prefix("Loaded image ID: "))
                .map(|s| s.trim().to_string())
        })
        .ok_or_else(|| {
            PluginError::invalid(format!(
                "{} held no image Docker could load",
                path.display()
            ))
            .with_hint("make the archive with `docker save IMAGE -o FILE`")
        })
}

/// A network the user made for egress (a mirror, a test upstream): it must
/// exist, and it is theirs, so it carries no bottle label and teardown
/// leaves it alone. Returns its id.
async fn find_egress_network(
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
/// Launches racing here on a fresh machine may each make one (Docker has no
/// atomic "create unless a network with this label exists"). They agree
/// afterwards without a lock: every launch takes the *earliest made* of the
/// labelled networks it sees, and a launch lists only after its own network
/// exists, so it sees every network made before its own and picks the same
/// one as everybody else. (Choosing the lowest id instead, as before, let
/// the first launch settle on its own network before the second one's
/// appeared, and the second keep its own when its id was lower.)
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
    let chosen = earliest(&list().await?).unwrap_or_else(|| ours.clone());
    if chosen != ours {
        tracing::info!(network = %name, "another launch made the shared egress network first; using that one (`bottle gc` removes ours)");
    }
    Ok(chosen)
}

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
fn earliest(networks: &[bollard::models::Network]) -> Option<String> {
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
fn random_u32() -> u32 {
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

async fn create_network(
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

fn hardened_host_config(network: &str) -> HostConfig {
    HostConfig {
        network_mode: Some(network.to_string()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        privileged: Some(false),
        ..Default::default()
    }
}

fn endpoint(network: &str, aliases: Vec<String>) -> NetworkingConfig {
    NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.to_string(),
            EndpointSettings {
                aliases: if aliases.is_empty() {
                    None
                } else {
                    Some(aliases)
                },
                ..Default::default()
            },
        )])),
    }
}

/// Creates a container under its bottle name; `doing` names the step in
/// the error.
async fn create_named(
    client: &Client,
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
    doing: &str,
) -> Result<(), PluginError> {
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_owned()),
                ..Default::default()
            }),
            body,
        )
        .await
        .map_err(|e| client.api(doing, e))?;
    Ok(())
}

/// Creates the sidecar. Behind the gate it serves a Unix socket in a
/// volume of its own, which the agent (no network at all) mounts
/// read-only, and reaches the world through its egress network: in the
/// namespace of that network's `holder` (`egress_ns.rs`), or on the
/// network itself. Otherwise it serves TCP on the bottle's internal
/// network too, to that network's clients only.
#[allow(clippy::too_many_arguments)]
async fn create_egress(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    options: &DockerOptions,
    names: &BottleNames,
    image: &str,
    gated: bool,
    holder: Option<&str>,
) -> Result<(), PluginError> {
    let body = |network: &str, listen: Vec<String>| {
        // The config comes on stdin (see `start_egress`); the file is
        // where a credential rotation puts the next one.
        let mut cmd: Vec<String> = [
            "egress",
            "serve",
            "--config",
            EGRESS_CONFIG_PATH,
            "--config-stdin",
        ]
        .map(String::from)
        .to_vec();
        cmd.extend(listen);
        ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![EGRESS_PROGRAM_PATH.into()]),
            cmd: Some(cmd),
            // Closed by the daemon once the config is written and our end
            // of the attachment closes.
            open_stdin: Some(true),
            stdin_once: Some(true),
            attach_stdin: Some(true),
            user: Some(format!("{EGRESS_UID}:{EGRESS_UID}")),
            env: Some(vec![format!("BOT_BOTTLE_ID={}", spec.bottle_id)]),
            labels: Some(names::labels(spec, ROLE_EGRESS)),
            host_config: Some(HostConfig {
                pids_limit: Some(EGRESS_PIDS),
                mounts: gated.then(|| vec![socket_volume()]),
                tmpfs: Some(config_tmpfs()),
                ..hardened_host_config(network)
            }),
            // The agent finds its proxy by this name on the internal
            // network; behind the gate nothing looks it up, and on the
            // shared egress network every sidecar would hold it.
            networking_config: Some(endpoint(
                network,
                match gated {
                    true => vec![],
                    false => vec![EGRESS_ALIAS.into()],
                },
            )),
            ..Default::default()
        }
    };
    let doing = "creating the egress sidecar";
    if gated {
        let listen = vec!["--listen-unix".into(), EGRESS_SOCKET_PATH.into()];
        let create = |network: &str| {
            let mut body = body(network, listen.clone());
            if let Some(holder) = holder {
                // Its holder's namespace, and so its network; its own
                // file system, mounts, pids and user.
                body.networking_config = None;
                if let Some(h) = body.host_config.as_mut() {
                    h.network_mode = Some(format!("container:{holder}"));
                }
                if let Some(labels) = body.labels.as_mut() {
                    labels.extend(egress_ns::sidecar_labels(
                        holder,
                        options.egress_network.is_none(),
                    ));
                }
            }
            docker.create_container(
                Some(CreateContainerOptions {
                    name: Some(names.egress.clone()),
                    ..Default::default()
                }),
                body,
            )
        };
        return match create(&names.egress_net).await {
            Ok(_) => Ok(()),
            // `bottle gc` removed the unused shared network a moment ago.
            Err(e) if is_not_found(&e) && options.egress_network.is_none() && holder.is_none() => {
                let network = shared_egress_network(client, docker).await?;
                create(&network)
                    .await
                    .map(|_| ())
                    .map_err(|e| client.api(doing, e))
            }
            Err(e) => Err(client.api(doing, e)),
        };
    }

    let port = spec.egress.listen_port;
    // The proxy serves the bottle's internal network only: from the egress
    // side (the Docker host, a shared egress_network) it answers nothing, so
    // no neighbour can borrow the bottle's credentials.
    let internal = docker
        .inspect_network(
            &names.internal_net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(|e| client.api("reading the internal network's subnet", e))?;
    let subnets: Vec<String> = internal
        .ipam
        .and_then(|i| i.config)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.subnet)
        .collect();
    if subnets.is_empty() {
        return Err(PluginError::internal(format!(
            "the internal network {} has no subnet to restrict the proxy to",
            names.internal_net
        )));
    }
    let listen = ["--listen".to_string(), format!("0.0.0.0:{port}")]
        .into_iter()
        .chain(
            subnets
                .iter()
                .flat_map(|n| ["--allow-client".to_string(), n.clone()]),
        )
        .collect();
    let mut body = body(&names.internal_net, listen);
    if port < 1024 {
        if let Some(h) = body.host_config.as_mut() {
            h.sysctls = Some(HashMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                port.to_string(),
            )]));
        }
    }
    create_named(client, docker, &names.egress, body, doing).await?;
    // Docker before API 1.44 takes one network at create time.
    let connect = |network: String| async move {
        docker
            .connect_network(
                &network,
                NetworkConnectRequest {
                    container: Some(names.egress.clone()),
                    endpoint_config: None,
                },
            )
            .await
    };
    match connect(names.egress_net.clone()).await {
        Ok(()) => Ok(()),
        // `bottle gc` removed the unused shared network a moment ago.
        Err(e) if is_not_found(&e) && options.egress_network.is_none() => {
            connect(shared_egress_network(client, docker).await?)
                .await
                .map_err(|e| client.api("connecting the egress sidecar to its egress network", e))
        }
        Err(e) => Err(client.api("connecting the egress sidecar to its egress network", e)),
    }
}

/// The sidecar's config directory: a tmpfs of the proxy's user alone, where
/// a credential rotation puts the next config (`manage::put_egress_config`),
/// so real tokens and the CA key never reach the host's disk. A tmpfs, not
/// a volume: the agent gets the sidecar's volumes through `VolumesFrom`.
fn config_tmpfs() -> HashMap<String, String> {
    let dir = EGRESS_CONFIG_PATH
        .rsplit_once('/')
        .map_or("/", |(dir, _)| dir)
        .to_string();
    HashMap::from([(
        dir,
        format!("uid={EGRESS_UID},gid={EGRESS_UID},mode=0700,size=16m"),
    )])
}

/// The sidecar's socket volume: anonymous (removed with the sidecar), a
/// small tmpfs owned by the proxy's user. The agent gets it read-only
/// through `VolumesFrom`; connecting to a socket needs no write access to
/// its file system.
fn socket_volume() -> DockerMount {
    DockerMount {
        target: Some(EGRESS_SOCKET_DIR.into()),
        typ: Some(MountTypeEnum::VOLUME),
        volume_options: Some(MountVolumeOptions {
            driver_config: Some(MountVolumeOptionsDriverConfig {
                name: Some("local".into()),
                options: Some(HashMap::from([
                    ("type".to_string(), "tmpfs".to_string()),
                    ("device".to_string(), "tmpfs".to_string()),
                    (
                        "o".to_string(),
                        format!("uid={EGRESS_UID},gid={EGRESS_UID},mode=0755,size=64k"),
                    ),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) async fn upload(
    client: &Client,
    docker: &Docker,
    container: &str,
    archive: Vec<u8>,
    what: &str,
) -> Result<(), PluginError> {
    docker
        .upload_to_container(
            container,
            Some(UploadToContainerOptions {
                path: "/".into(),
                no_overwrite_dir_non_dir: Some("true".into()),
                ..Default::default()
            }),
            bollard::body_full(archive.into()),
        )
        .await
        .map_err(|e| client.api(what, e))
}

/// The users of an image that declares no `USER`: read from a throwaway
/// container (no network, never started, labelled with the bottle id so a
/// failed launch's cleanup finds it), removed again in the background.
async fn probe_users(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    names: &BottleNames,
    image: &str,
) -> Result<(String, String), PluginError> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        // Never run; some images have no command at all.
        entrypoint: Some(vec!["/nonexistent".into()]),
        labels: Some(names::labels(spec, ROLE_PROBE)),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    create_named(
        client,
        docker,
        &names.probe,
        body,
        "reading the agent image's users",
    )
    .await?;
    let read = async {
        let (passwd, group) = tokio::join!(
            read_file(client, docker, &names.probe, "/etc/passwd"),
            read_file(client, docker, &names.probe, "/etc/group"),
        );
        Ok::<_, PluginError>((passwd?, group?))
    }
    .await;
    let (d, probe) = (docker.clone(), names.probe.clone());
    tokio::spawn(async move {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        if let Err(e) = d.remove_container(&probe, Some(options)).await {
            tracing::debug!("removing {probe}: {e} (the bottle's teardown will)");
        }
    });
    read
}

/// An image's users, read before its container exists.
struct Probed {
    passwd: Vec<files::PasswdEntry>,
    groups: Vec<(String, u32)>,
}

impl Probed {
    fn parse(passwd: &str, group: &str) -> Self {
        Self {
            passwd: files::parse_passwd(passwd),
            groups: files::parse_group(group),
        }
    }
}

/// The agent's user: known, or named and still to be looked up in the
/// created container's /etc/passwd and /etc/group.
enum PendingUser {
    Known(AgentUser),
    Named(String),
}

/// Creates the agent container. Its user's ids are looked up later
/// ([`agent_user`]), while the sidecar starts.
#[allow(clippy::too_many_arguments)]
async fn create_agent(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    options: &DockerOptions,
    names: &BottleNames,
    image: &AgentImage,
    gate_volume: Option<&str>,
    probed: Option<Probed>,
) -> Result<PendingUser, PluginError> {
    // The user to create the container as, and what is known of it.
    let (user, pending) = if let Some(Probed { passwd, groups }) = probed {
        // The image declares no USER: a user named `agent`, else uid 1000,
        // else root.
        let user = files::default_user(&passwd);
        let pending = match &user {
            Some(user) => files::resolve_user(user, &passwd, &groups).map(PendingUser::Known),
            None => {
                tracing::warn!(
                    image = %image.reference,
                    "the agent image has no non-root user; the agent runs as root (all capabilities dropped). \
                     Add a user to the image or set [backends.docker] user"
                );
                Ok(PendingUser::Known(AgentUser::root()))
            }
        };
        (user, pending)
    } else {
        let chosen = options
            .user
            .clone()
            .or_else(|| image.user.clone())
            .ok_or_else(|| PluginError::internal("the agent's user was neither set nor probed"))?;
        (Some(chosen.clone()), Ok(PendingUser::Named(chosen)))
    };
    let body = agent_container_body(spec, options, names, image, gate_volume, user.as_deref())?;
    create_named(
        client,
        docker,
        &names.agent,
        body,
        "creating the agent container",
    )
    .await?;
    pending
}

async fn agent_user(
    client: &Client,
    docker: &Docker,
    names: &BottleNames,
    facts: &ImageFacts,
    pending: PendingUser,
) -> Result<AgentUser, PluginError> {
    let chosen = match pending {
        PendingUser::Known(user) => return Ok(user),
        PendingUser::Named(chosen) => chosen,
    };
    let (passwd, group) = match facts.users() {
        Some(known) => known,
        None => {
            let (passwd, group) = tokio::join!(
                read_file(client, docker, &names.agent, "/etc/passwd"),
                read_file(client, docker, &names.agent, "/etc/group"),
            );
            let (passwd, group) = (passwd?, group?);
            facts.learn_users(&passwd, &group);
            (passwd, group)
        }
    };
    let Probed { passwd, groups } = Probed::parse(&passwd, &group);
    files::resolve_user(&chosen, &passwd, &groups)
}

/// What the agent container is created with: command (behind the gate or
/// not), limits, mounts, env, user, labels and its one network.
fn agent_container_body(
    spec: &LaunchSpec,
    options: &DockerOptions,
    names: &BottleNames,
    image: &AgentImage,
    gate_volume: Option<&str>,
    user: Option<&str>,
) -> Result<ContainerCreateBody, PluginError> {
    let agent = &spec.agent;
    let gated = gate_volume.is_some();
    let network = match gated {
        true => "none",
        false => names.internal_net.as_str(),
    };
    // Behind the gate the container runs the gate first, which execs what
    // Docker would have run once the proxy accepts connections; otherwise
    // Docker runs it directly, and the container starts only then.
    let (entrypoint, cmd) = if gate_volume.is_some() {
        // Behind the gate there are always files (`place_files`).
        let marker = Some(gate::FILES_MARKER);
        let (e, c) = gate::argv(
            EGRESS_SOCKET_PATH,
            spec.egress.listen_port,
            marker,
            &image.entrypoint,
            &image.cmd,
            &agent.command,
        )?;
        (Some(e), Some(c))
    } else if agent.command.is_empty() {
        (None, None)
    } else {
        (None, Some(agent.command.clone()))
    };
    let res = &agent.resources;
    let mut host_config = HostConfig {
        pids_limit: Some(
            res.pids
                .map(|p| p.min(i64::MAX as u64) as i64)
                .unwrap_or(DEFAULT_AGENT_PIDS),
        ),
        nano_cpus: res.cpus.map(|c| (c * 1e9) as i64),
        memory: res.memory_bytes.map(|m| m.min(i64::MAX as u64) as i64),
        // No swap beyond the memory limit.
        memory_swap: res.memory_bytes.map(|m| m.min(i64::MAX as u64) as i64),
        runtime: options.runtime.clone(),
        // The gate, and the proxy's socket: the agent's only way out.
        volumes_from: gate_volume.map(|v| vec![v.to_string(), format!("{}:ro", names.egress)]),
        ..hardened_host_config(network)
    };
    if !agent.mounts.is_empty() {
        host_config.mounts = Some(
            agent
                .mounts
                .iter()
                .map(|m| DockerMount {
                    target: Some(m.sandbox.clone()),
                    source: Some(m.host.to_string_lossy().into_owned()),
                    typ: Some(MountTypeEnum::BIND),
                    read_only: Some(!m.writable),
                    ..Default::default()
                })
                .collect(),
        );
    }
    Ok(ContainerCreateBody {
        image: Some(image.reference.clone()),
        entrypoint,
        cmd,
        env: Some(agent_env(spec, gated)),
        working_dir: Some(agent.workdir.clone()).filter(|w| !w.is_empty()),
        user: user.map(str::to_string),
        tty: Some(agent.tty),
        open_stdin: Some(agent.interactive),
        stdin_once: Some(agent.interactive),
        attach_stdin: Some(agent.interactive),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some(names::labels(spec, ROLE_AGENT)),
        host_config: Some(host_config),
        // Behind the gate the agent needs loopback and nothing else. With
        // networking disabled dockerd makes no network sandbox at all, and
        // runc gives the container a new network namespace with loopback
        // up, as `--network none` does, minus two helper processes dockerd
        // would re-execute itself as (~60-90 ms of CPU each here: the
        // sandbox's `set-ipv6` and the `libnetwork-setkey` start hook).
        // The gate refuses to run the agent if any other interface exists.
        network_disabled: gated.then_some(true),
        networking_config: (!gated).then(|| endpoint(network, vec![])),
        ..Default::default()
    })
}

/// Where the agent's container has something mounted: the bind mounts of
/// the spec and, behind the gate, the gate's volume.
fn agent_mount_targets(spec: &LaunchSpec, options: &DockerOptions) -> Vec<String> {
    let mut targets: Vec<String> = spec
        .agent
        .mounts
        .iter()
        .map(|m| m.sandbox.clone())
        .collect();
    if gate::enabled(options) {
        targets.push(gate::GATE_DIR.to_string());
        targets.push(EGRESS_SOCKET_DIR.to_string());
    }
    targets
}

/// The agent's env: the spec's, then the proxy variables (which win).
pub fn agent_env(spec: &LaunchSpec, gated: bool) -> Vec<String> {
    let proxy = proxy_url(spec, gated);
    let mut env: Vec<String> = spec
        .agent
        .env
        .iter()
        .filter(|(k, _)| !is_proxy_var(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"] {
        env.push(format!("{var}={proxy}"));
        env.push(format!("{}={proxy}", var.to_lowercase()));
    }
    // Nothing outside the sandbox bypasses the proxy.
    let no_proxy = "localhost,127.0.0.1,::1";
    env.push(format!("NO_PROXY={no_proxy}"));
    env.push(format!("no_proxy={no_proxy}"));
    env
}

fn is_proxy_var(key: &str) -> bool {
    matches!(
        key.to_ascii_uppercase().as_str(),
        "HTTPS_PROXY" | "HTTP_PROXY" | "ALL_PROXY" | "NO_PROXY"
    )
}

/// The first file of the archive of `path` in `container`, as text; empty
/// when the path does not exist.
async fn read_file(
    client: &Client,
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<String, PluginError> {
    let stream = docker.download_from_container(
        container,
        Some(DownloadFromContainerOptions { path: path.into() }),
    );
    let chunks: Vec<bytes::Bytes> = match stream.try_collect().await {
        Ok(chunks) => chunks,
        Err(e) if is_not_found(&e) => return Ok(String::new()),
        Err(e) => return Err(client.api(&format!("reading {path} from {container}"), e)),
    };
    let data = chunks.concat();
    let mut archive = tar::Archive::new(&data[..]);
    let mut text = String::new();
    if let Some(entry) = archive
        .entries()
        .map_err(|e| PluginError::internal(format!("reading {path} from {container}: {e}")))?
        .next()
    {
        use std::io::Read;
        let mut entry = entry.map_err(|e| PluginError::internal(format!("reading {path}: {e}")))?;
        entry
            .read_to_string(&mut text)
            .map_err(|e| PluginError::internal(format!("reading {path}: {e}")))?;
    }
    Ok(text)
}

/// Whether `path` exists in `container` (a created container suffices).
async fn exists(
    client: &Client,
    docker: &Docker,
    container: &str,
    path: &str,
) -> Result<bool, PluginError> {
    let mut stream = docker.download_from_container(
        container,
        Some(DownloadFromContainerOptions { path: path.into() }),
    );
    // The first chunk (or error) answers; the rest is not read.
    match stream.next().await {
        Some(Ok(_)) | None => Ok(true),
        Some(Err(e)) if is_not_found(&e) => Ok(false),
        Some(Err(e)) => Err(client.api(&format!("looking for {path} in {container}"), e)),
    }
}

/// The parent directories of the agent's files that the image lacks, each
/// after its own parent. They are looked up all at once (each lookup is an
/// archive call, which dockerd serves by starting a helper process) and,
/// as they do not depend on the agent's user, while its user is read.
async fn missing_dirs(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    container: &str,
    facts: &ImageFacts,
) -> Result<Vec<String>, PluginError> {
    let dirs = files::parent_dirs(&spec.agent.files)?;
    let found = futures_util::future::try_join_all(dirs.iter().map(|dir| async move {
        if let Some(known) = facts.dir(dir) {
            return Ok(known);
        }
        let found = exists(client, docker, container, dir).await?;
        facts.learn_dir(dir, found);
        Ok::<_, PluginError>(found)
    }))
    .await?;
    let mut missing: Vec<String> = Vec::new();
    for (dir, found) in dirs.into_iter().zip(found) {
        // Parents come first; a missing parent's children are missing too.
        let parent_missing = Path::new(&dir)
            .parent()
            .is_some_and(|p| missing.iter().any(|m| Path::new(m) == p));
        if parent_missing || !found {
            missing.push(dir);
        }
    }
    Ok(missing)
}

/// The agent's user, and the parent directories its files need created.
async fn user_and_missing_dirs(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    names: &BottleNames,
    facts: &ImageFacts,
    pending: PendingUser,
) -> Result<(AgentUser, Vec<String>), PluginError> {
    let (user, missing) = tokio::join!(
        agent_user(client, docker, names, facts, pending),
        missing_dirs(client, docker, spec, &names.agent, facts),
    );
    Ok((user?, missing?))
}

async fn place_files(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    container: &str,
    user: &AgentUser,
    missing: &[String],
    gated: bool,
) -> Result<(), PluginError> {
    if spec.agent.files.is_empty() && !gated {
        return Ok(());
    }
    let mut contents = spec
        .agent
        .files
        .iter()
        .map(|f| Ok(Placed::agents(&f.path, files::contents(f)?, f.mode)))
        .collect::<Result<Vec<_>, PluginError>>()?;
    let own_hosts = spec.agent.files.iter().any(|f| f.path == "/etc/hosts");
    if gated && !own_hosts {
        // Docker writes no /etc/hosts for a container without networking
        // (see `agent_container_body`); this is the one it writes for
        // `--network none`, so that `localhost` resolves.
        contents.push(Placed {
            root_owned: true,
            ..Placed::agents("/etc/hosts", LOOPBACK_HOSTS.as_bytes().to_vec(), 0o644)
        });
    }
    if gated {
        // Last, so that it exists only once every file does.
        contents.push(Placed::agents(gate::FILES_MARKER, Vec::new(), 0o444));
    }
    let archive = files::archive(&contents, missing, user)?;
    upload(
        client,
        docker,
        container,
        archive,
        "placing files in the agent container",
    )
    .await
}

/// Starts the sidecar, hands its proxy the config on stdin and returns once
/// it listens. Attached before the start, the proxy's own `listening on …`
/// line (stderr, printed right after it bound the port) says so the moment
/// it happens; no polling, and it works where the host cannot reach
/// container addresses. The config never touches the sidecar's file
/// system (it would sit in the container's layer on the host's disk), and
/// it costs no archive call: each is a helper process dockerd starts.
async fn start_egress(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    names: &BottleNames,
    holder: Option<&str>,
) -> Result<(), PluginError> {
    let attached = docker
        .attach_container(
            &names.egress,
            Some(AttachContainerOptions {
                stdin: true,
                // The audit log (stdout) is not ours to read here.
                stdout: false,
                stderr: true,
                stream: true,
                logs: true,
                detach_keys: None,
            }),
        )
        .await
        .map_err(|e| client.api("attaching to the egress sidecar", e))?;
    let AttachContainerResults {
        mut output,
        mut input,
    } = attached;
    if let Err(e) = docker
        .start_container(&names.egress, None::<StartContainerOptions>)
        .await
    {
        return Err(match holder {
            Some(holder) if !egress_ns::is_running(docker, holder).await => egress_ns::gone(holder),
            _ => client.api("starting the egress sidecar", e),
        });
    }
    let since = Instant::now();
    let mut seen = Vec::new();
    let heard = tokio::time::timeout(EGRESS_READY_TIMEOUT, async {
        // Closing our end closes the proxy's stdin (`stdin_once`): the end
        // of the config. A proxy that died at once fails this; its output
        // below says why.
        let written = async {
            input
                .write_all(spec.egress.config.expose().as_bytes())
                .await?;
            input.shutdown().await
        };
        if let Err(e) = written.await {
            // An I/O error names none of the config's bytes.
            tracing::debug!("handing the egress sidecar its config: {e}");
        }
        while let Some(Ok(chunk)) = output.next().await {
            seen.extend_from_slice(&chunk.into_bytes());
            if String::from_utf8_lossy(&seen)
                .to_ascii_lowercase()
                .contains("listening")
            {
                return true;
            }
            // Only the last few lines matter.
            if seen.len() > 8192 {
                seen.drain(..seen.len() - 4096);
            }
        }
        false
    })
    .await;
    match heard {
        Ok(true) => Ok(()),
        // The stream ended without the line: the proxy exited (the poll
        // says how), or the daemon closed the stream.
        Ok(false) => wait_for_egress(client, docker, spec, names, since).await,
        Err(_) => Err(not_listening(docker, spec, names).await),
    }
}

async fn not_listening(docker: &Docker, spec: &LaunchSpec, names: &BottleNames) -> PluginError {
    let tail = egress_log_tail(docker, spec, &names.egress).await;
    PluginError::unavailable(format!(
        "the egress proxy did not listen on port {} within {}s; the bottle was removed{tail}",
        spec.egress.listen_port,
        EGRESS_READY_TIMEOUT.as_secs()
    ))
    .with_hint("run with -v for details; a slow or overloaded Docker host may need another try")
    .retryable()
}

/// Polls the sidecar until its logs say it listens, it exits, or the time
/// is up: the way when the attach stream is not available.
async fn wait_for_egress(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    names: &BottleNames,
    since: Instant,
) -> Result<(), PluginError> {
    let deadline = since + EGRESS_READY_TIMEOUT;
    let mut pause = Duration::from_millis(10);
    loop {
        let info = docker
            .inspect_container(
                &names.egress,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(|e| client.api("inspecting the egress sidecar", e))?;
        let state = info.state.clone().unwrap_or_default();
        if !state.running.unwrap_or(false) {
            let tail = egress_log_tail(docker, spec, &names.egress).await;
            return Err(PluginError::unavailable(format!(
                "the egress proxy exited (code {}) before it listened; the bottle was removed{}",
                state.exit_code.unwrap_or(-1),
                tail
            ))
            .with_hint(
                "run with -v for details; check that `bottle egress serve` works on this host",
            ));
        }
        if egress_logs(docker, &names.egress)
            .await
            .to_ascii_lowercase()
            .contains("listening")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(not_listening(docker, spec, names).await);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

async fn egress_logs(docker: &Docker, container: &str) -> String {
    let chunks: Vec<_> = docker
        .logs(
            container,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "50".into(),
                ..Default::default()
            }),
        )
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    chunks.iter().map(|c| c.to_string()).collect()
}

/// The sidecar's last lines for an error message, with every string of the
/// proxy config that could be a secret blotted out.
async fn egress_log_tail(docker: &Docker, spec: &LaunchSpec, container: &str) -> String {
    let logs = egress_logs(docker, container).await;
    let logs = redact(&logs, spec.egress.config.expose());
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(8);
    format!(". Its last output:\n  {}", lines[start..].join("\n  "))
}

/// Replaces every string value (and object key's value) of the JSON
/// `config` that is 6 characters or longer by `[redacted]` in `text`.
pub fn redact(text: &str, config: &str) -> String {
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.len() >= 6 => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut secrets = Vec::new();
    match serde_json::from_str::<serde_json::Value>(config) {
        Ok(v) => collect(&v, &mut secrets),
        // Unparseable config: show nothing rather than risk a leak.
        Err(_) => {
            return "[egress output withheld: the config could not be read to redact it]".into()
        }
    }
    // Longest first, so a secret containing another is blotted whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_string();
    for s in &secrets {
        out = out.replace(s.as_str(), "[redacted]");
        // PEM material also shows up line by line.
        for line in s.lines().filter(|l| l.len() >= 16) {
            out = out.replace(line, "[redacted]");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bot_bottle_plugin_api::{AgentLaunch, EgressLaunch, Secret};

    fn spec() -> LaunchSpec {
        LaunchSpec {
            schema: 1,
            bottle_id: "bb-t-1".into(),
            bottle_name: "t".into(),
            agent: AgentLaunch {
                image: "img".into(),
                env: [
                    ("FOO".to_string(), "bar".to_string()),
                    ("https_proxy".to_string(), "http://evil:1".to_string()),
                ]
                .into(),
                ..Default::default()
            },
            egress: EgressLaunch {
                program: "/bin/true".into(),
                config: Secret::new("{}"),
                listen_port: 3128,
                ca_cert_pem: String::new(),
            },
            backend_options: serde_json::Value::Null,
            labels: Default::default(),
        }
    }

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

    #[test]
    fn proxy_variables_win_over_the_spec() {
        let env = agent_env(&spec(), false);
        assert!(env.contains(&"FOO=bar".to_string()));
        assert!(env.contains(&"https_proxy=http://bot-bottle-egress:3128".to_string()));
        assert!(env.contains(&"ALL_PROXY=http://bot-bottle-egress:3128".to_string()));
        assert!(!env.iter().any(|e| e.contains("evil")));
        assert!(env.contains(&"NO_PROXY=localhost,127.0.0.1,::1".to_string()));
        // Behind the gate: its forwarder on the agent's own loopback.
        let env = agent_env(&spec(), true);
        assert!(env.contains(&"HTTPS_PROXY=http://127.0.0.1:3128".to_string()));
        assert!(!env.iter().any(|e| e.contains("evil")));
    }

    #[test]
    fn redaction_blots_every_config_string() {
        let config = r#"{"routes":[{"token":"canary-0123456789"}],"ca_key":"-----BEGIN KEY-----\nAAAABBBBCCCCDDDDEEEE\n-----END KEY-----"}"#;
        let text = "panic: bad token canary-0123456789 near AAAABBBBCCCCDDDDEEEE";
        let out = redact(text, config);
        assert!(!out.contains("canary"), "{out}");
        assert!(!out.contains("AAAABBBB"), "{out}");
        assert_eq!(
            redact("x", "not json"),
            "[egress output withheld: the config could not be read to redact it]"
        );
    }
}
