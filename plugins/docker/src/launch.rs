//! `launch`: networks, the egress sidecar, the agent container, in that
//! order, and everything removed again when any step fails. The steps
//! themselves are in `networks`, `sidecar` and `agent`; this module holds
//! the order, the checks before it (runtime, images) and what they share.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ImportImageOptions, StartContainerOptions,
    UploadToContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::{AgentLaunch, BottleHandle, LaunchSpec, PluginError, ValidateRequest};
use futures_util::{FutureExt, TryStreamExt};

use crate::agent::{
    agent_mount_targets, create_agent, place_files, probe_users, user_and_missing_dirs, Probed,
};
use crate::client::{is_not_found, Client};
use crate::egress_ns;
use crate::files;
use crate::gate;
use crate::image_facts::ImageFacts;
use crate::names::{self, BottleNames, EGRESS_ALIAS, EGRESS_SOCKET_PATH};
use crate::networks::{create_network, find_egress_network, shared_egress_network};
use crate::options::DockerOptions;
use crate::sidecar::{create_egress, start_egress};

/// Brings the bottle up; on any failure (or panic) removes every resource
/// labelled with the bottle id before returning.
pub fn launch(client: &Client, spec: LaunchSpec) -> Result<BottleHandle, PluginError> {
    names::validate_bottle_id(&spec.bottle_id)?;
    let options = DockerOptions::from_json(&spec.backend_options)?;
    if spec.egress.listen_port == 0 {
        return Err(PluginError::invalid("the egress proxy's listen port is 0")
            .with_hint("this is a bug in the host: it must pick a port for the proxy"));
    }
    validate_agent(client, &spec.agent)?;
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

/// The smallest CPU limit the Docker engine takes (`NanoCPUs` of 10^7;
/// below it the kernel refuses the CFS quota).
pub const MIN_CPUS: f64 = 0.01;

/// What `launch` would refuse, checked without the daemon: `bottle plan`
/// asks this before anything exists, and `launch` asks it again.
pub fn validate(client: &Client, request: &ValidateRequest) -> Result<(), PluginError> {
    DockerOptions::from_json(&request.backend_options)?;
    validate_agent(client, &request.agent)
}

/// Checks what can be checked of the agent before touching the daemon.
fn validate_agent(client: &Client, agent: &AgentLaunch) -> Result<(), PluginError> {
    if agent.image.trim().is_empty() {
        return Err(PluginError::invalid("the agent image is empty")
            .with_hint("set `image` in the manifest's [agent] table"));
    }
    if let Some(cpus) = agent.resources.cpus {
        if cpus < MIN_CPUS {
            return Err(PluginError::invalid(format!(
                "[resources] cpus = {cpus} is below the Docker engine's minimum of {MIN_CPUS}"
            ))
            .with_hint(format!(
                "set cpus to {MIN_CPUS} or more, or leave it out for no CPU limit"
            )));
        }
    }
    for file in &agent.files {
        files::relative_path(&file.path)?;
    }
    for key in agent.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(
                PluginError::invalid(format!("agent env name `{key}` is not valid"))
                    .with_hint("env names may not be empty or contain `=`"),
            );
        }
    }
    let sockets = docker_sockets(client);
    for mount in &agent.mounts {
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
pub(crate) struct AgentImage {
    pub(crate) reference: String,
    /// Its ID (the digest of its content), under which facts are kept.
    pub(crate) id: Option<String>,
    /// Its `USER`, if it sets one.
    pub(crate) user: Option<String>,
    /// Its entrypoint and command, which the launch gate passes on.
    pub(crate) entrypoint: Vec<String>,
    pub(crate) cmd: Vec<String>,
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

pub(crate) fn hardened_host_config(network: &str) -> HostConfig {
    HostConfig {
        network_mode: Some(network.to_string()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        privileged: Some(false),
        ..Default::default()
    }
}

pub(crate) fn endpoint(network: &str, aliases: Vec<String>) -> NetworkingConfig {
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
pub(crate) async fn create_named(
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
