//! The egress sidecar: its container (the proxy, hardened, its config on a
//! tmpfs), its start with the config on stdin, and the wait for its
//! `listening` line; the proxy's config is blotted from any log shown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::container::AttachContainerResults;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount as DockerMount, MountTypeEnum, MountVolumeOptions,
    MountVolumeOptionsDriverConfig, NetworkConnectRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, LogsOptions, StartContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::{LaunchSpec, PluginError};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::client::{is_not_found, Client};
use crate::egress_ns;
use crate::launch::{create_named, endpoint, hardened_host_config};
use crate::names::{
    self, BottleNames, EGRESS_ALIAS, EGRESS_CONFIG_PATH, EGRESS_PROGRAM_PATH, EGRESS_SOCKET_DIR,
    EGRESS_SOCKET_PATH, EGRESS_UID, ROLE_EGRESS,
};
use crate::networks::shared_egress_network;
use crate::options::DockerOptions;

/// How long the sidecar may take to listen.
pub(crate) const EGRESS_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Process limit of the sidecar.
pub(crate) const EGRESS_PIDS: i64 = 1024;

/// The sidecar's memory limit, no swap beyond it:
/// [`bot_bottle_plugin_api::egress_memory_limit`] of its config (the
/// smolmachines gate is bounded by the same), as Docker takes it.
pub(crate) fn egress_memory_limit(config: &str) -> i64 {
    i64::try_from(bot_bottle_plugin_api::egress_memory_limit(config)).unwrap_or(i64::MAX)
}

/// Creates the sidecar. Behind the gate it serves a Unix socket in a
/// volume of its own, which the agent (no network at all) mounts
/// read-only, and reaches the world through its egress network: in the
/// namespace of that network's `holder` (`egress_ns.rs`), or on the
/// network itself. Otherwise it serves TCP on the bottle's internal
/// network too, to that network's clients only.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn create_egress(
    client: &Client,
    docker: &Docker,
    spec: &LaunchSpec,
    options: &DockerOptions,
    names: &BottleNames,
    image: &str,
    gated: bool,
    holder: Option<&str>,
) -> Result<(), PluginError> {
    let memory = egress_memory_limit(spec.egress.config.expose());
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
                memory: Some(memory),
                memory_swap: Some(memory),
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
pub(crate) fn config_tmpfs() -> HashMap<String, String> {
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
pub(crate) fn socket_volume() -> DockerMount {
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

/// Starts the sidecar, hands its proxy the config on stdin and returns once
/// it listens. Attached before the start, the proxy's own `listening on …`
/// line (stderr, printed right after it bound the port) says so the moment
/// it happens; no polling, and it works where the host cannot reach
/// container addresses. The config never touches the sidecar's file
/// system (it would sit in the container's layer on the host's disk), and
/// it costs no archive call: each is a helper process dockerd starts.
pub(crate) async fn start_egress(
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

pub(crate) async fn not_listening(
    docker: &Docker,
    spec: &LaunchSpec,
    names: &BottleNames,
) -> PluginError {
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
pub(crate) async fn wait_for_egress(
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

pub(crate) async fn egress_logs(docker: &Docker, container: &str) -> String {
    container_logs(docker, container, true, "50").await
}

/// The last `tail` lines a container wrote: stderr, and stdout too when
/// `stdout`.
async fn container_logs(docker: &Docker, container: &str, stdout: bool, tail: &str) -> String {
    let chunks: Vec<_> = docker
        .logs(
            container,
            Some(LogsOptions {
                stdout,
                stderr: true,
                tail: tail.into(),
                ..Default::default()
            }),
        )
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    chunks.iter().map(|c| c.to_string()).collect()
}

/// The last `n` non-empty lines of `text` that `keep` keeps, indented for an
/// error message.
fn last_lines(text: &str, n: usize, keep: impl Fn(&str) -> bool) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty() && keep(l))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n  ")
}

/// Why a proxy that was serving died, for the agent's exit report: the last
/// lines of its stderr, audit lines (JSON) and its `listening on` left out.
/// Read before teardown, which takes the logs with the bottle. The proxy's
/// own messages never hold a secret (the e2e canary tests read them); the
/// launch path's tail ([`egress_log_tail`]) redacts besides because it also
/// shows config errors from before the proxy read its config.
pub(crate) async fn death_note(docker: &Docker, container: &str) -> String {
    let text = container_logs(docker, container, false, "20").await;
    last_lines(&text, 6, |l| {
        !l.starts_with('{') && !l.starts_with("listening on")
    })
}

/// The sidecar's last lines for an error message, with every string of the
/// proxy config that could be a secret blotted out.
pub(crate) async fn egress_log_tail(docker: &Docker, spec: &LaunchSpec, container: &str) -> String {
    let logs = egress_logs(docker, container).await;
    let logs = redact(&logs, spec.egress.config.expose());
    match last_lines(&logs, 8, |_| true) {
        l if l.is_empty() => String::new(),
        l => format!(". Its last output:\n  {l}"),
    }
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

    #[test]
    fn the_sidecars_memory_limit_is_the_shared_formula_as_docker_takes_it() {
        const MIB: i64 = 1 << 20;
        assert_eq!(egress_memory_limit("{}"), 576 * MIB);
        assert_eq!(
            egress_memory_limit(&format!(r#"{{"dlp":{{"max_body_bytes":{}}}}}"#, u64::MAX)),
            i64::MAX
        );
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
