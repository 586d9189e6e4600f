//! The agent container: the user it runs as, its body (mounts, env with
//! the proxy variables, no network behind the gate), and the files placed
//! in it before it starts.

use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, Mount as DockerMount, MountTypeEnum};
use bollard::query_parameters::{DownloadFromContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use bot_bottle_plugin_api::{LaunchSpec, PluginError};
use futures_util::{StreamExt, TryStreamExt};

use crate::client::{is_not_found, Client};
use crate::files::{self, AgentUser, Placed};
use crate::gate;
use crate::image_facts::ImageFacts;
use crate::launch::{create_named, endpoint, hardened_host_config, proxy_url, upload, AgentImage};
use crate::names::{
    self, BottleNames, EGRESS_SOCKET_DIR, EGRESS_SOCKET_PATH, ROLE_AGENT, ROLE_PROBE,
};
use crate::options::DockerOptions;

/// Default process limit of the agent when the manifest sets none.
pub(crate) const DEFAULT_AGENT_PIDS: i64 = 4096;
/// The agent's /etc/hosts behind the gate: what Docker writes for a
/// container on `--network none`.
pub(crate) const LOOPBACK_HOSTS: &str = "127.0.0.1\tlocalhost\n\
    ::1\tlocalhost ip6-localhost ip6-loopback\n\
    fe00::0\tip6-localnet\n\
    ff00::0\tip6-mcastprefix\n\
    ff02::1\tip6-allnodes\n\
    ff02::2\tip6-allrouters\n";

/// The users of an image that declares no `USER`: read from a throwaway
/// container (no network, never started, labelled with the bottle id so a
/// failed launch's cleanup finds it), removed again in the background.
pub(crate) async fn probe_users(
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
pub(crate) struct Probed {
    passwd: Vec<files::PasswdEntry>,
    groups: Vec<(String, u32)>,
}

impl Probed {
    pub(crate) fn parse(passwd: &str, group: &str) -> Self {
        Self {
            passwd: files::parse_passwd(passwd),
            groups: files::parse_group(group),
        }
    }
}

/// The agent's user: known, or named and still to be looked up in the
/// created container's /etc/passwd and /etc/group.
pub(crate) enum PendingUser {
    Known(AgentUser),
    Named(String),
}

/// Creates the agent container. Its user's ids are looked up later
/// ([`agent_user`]), while the sidecar starts.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_agent(
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

pub(crate) async fn agent_user(
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
pub(crate) fn agent_container_body(
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
        // Docker's init (tini) as the first process, the gate and then the
        // agent below it: as the first process the agent would ignore the
        // SIGTERM of `docker stop` unless it set a handler (Node and most
        // programs do not), and `bottle stop` waited 10 s and killed it. It
        // also reaps the agent's orphans.
        init: Some(true),
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
pub(crate) fn agent_mount_targets(spec: &LaunchSpec, options: &DockerOptions) -> Vec<String> {
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

pub(crate) fn is_proxy_var(key: &str) -> bool {
    matches!(
        key.to_ascii_uppercase().as_str(),
        "HTTPS_PROXY" | "HTTP_PROXY" | "ALL_PROXY" | "NO_PROXY"
    )
}

/// The first file of the archive of `path` in `container`, as text; empty
/// when the path does not exist.
pub(crate) async fn read_file(
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
pub(crate) async fn exists(
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
pub(crate) async fn missing_dirs(
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
pub(crate) async fn user_and_missing_dirs(
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

pub(crate) async fn place_files(
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
}
