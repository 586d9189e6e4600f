//! The launch gate (`gate/gate.rs`): lets the agent container start while
//! its proxy is still coming up, without the agent's program ever running
//! before the proxy accepts connections, and is the agent's only way out.
//!
//! Behind the gate the agent container has no network at all (`none`). The
//! proxy serves a Unix socket
//! ([`EGRESS_SOCKET_PATH`](crate::names::EGRESS_SOCKET_PATH)) in a volume
//! of the sidecar that the agent mounts read-only, and the gate forwards
//! `127.0.0.1:PORT` in the agent to it, for HTTP clients that only know TCP
//! proxies. The agent container's entrypoint becomes `/.bot-bottle/gate
//! SOCKET PORT MARKER --` followed by the image's own entrypoint and
//! command (or the manifest's command). The gate connects to the proxy's
//! socket until a connection is accepted, and waits for MARKER
//! ([`FILES_MARKER`], written as the last entry of the archive of the
//! agent's files; they are placed before the start now, but the gate still
//! checks, so no launch order can run the program without its files), and
//! only then execs the real program (same pid, tty and exit code). A proxy that
//! never listens means the real program never runs: the launch fails on the
//! host's side (no `listening on` line), and its cleanup kills the agent,
//! still in the gate, and removes everything.
//!
//! The gate reaches the agent without a per-launch copy: one image
//! (`bot-bottle-gate:<sha>`, `FROM scratch`, the gate under a `VOLUME`) and
//! one never-started container of it (`bot-bottle-gate-<sha>`), made on
//! first use; Docker fills the container's volume from the image when it
//! creates it, and every agent mounts that volume read-only with
//! `VolumesFrom`.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::CreateImageOptions;
use bollard::Docker;
use bot_bottle_plugin_api::PluginError;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::client::{is_not_found, Client};
use crate::names::{LABEL_ROLE, ROLE_GATE};
use crate::options::DockerOptions;

/// Where the gate's volume is mounted in the agent container.
pub const GATE_DIR: &str = "/.bot-bottle";
/// The gate program.
pub const GATE_PATH: &str = "/.bot-bottle/gate";
/// Written after the agent's files (the last entry of their archive); the
/// gate waits for it. Its own name at the root, as the gate's directory is a
/// read-only volume.
pub const FILES_MARKER: &str = "/.bot-bottle-files";
/// Repository of the gate's image; its carrier container is
/// `bot-bottle-gate-<tag>`.
pub const GATE_REPO: &str = "bot-bottle-gate";

/// The gate executable, when this build has one (see `build.rs`).
fn binary() -> Option<&'static [u8]> {
    #[cfg(bb_gate)]
    {
        Some(include_bytes!(concat!(env!("OUT_DIR"), "/gate")))
    }
    #[cfg(not(bb_gate))]
    {
        None
    }
}

/// Whether this launch goes through the gate. Not under another runtime
/// (`runtime = "runsc"`): untested there (runsc cannot run on the build
/// machine without `--network=host`), so there the agent starts only after
/// its proxy listens, as without a gate.
pub fn enabled(options: &DockerOptions) -> bool {
    binary().is_some() && options.runtime.is_none()
}

/// `bot-bottle-gate:<first 16 hex of the gate's SHA-256>`: a new gate gets
/// a new image and carrier, the same one is reused. The egress namespace's
/// holder runs this image too (`gate --hold`), once [`ensure`] has made it.
pub fn image_tag() -> Option<String> {
    let sha = hex::encode(Sha256::digest(binary()?));
    Some(format!("{GATE_REPO}:{}", &sha[..16]))
}

/// The carrier container's name for an image tag.
fn carrier_name(tag: &str) -> String {
    tag.replace(':', "-")
}

/// The agent container's entrypoint and command with the gate in front:
/// what Docker would run (the image's entrypoint, then the manifest's
/// command or else the image's) becomes the gate's arguments. Setting an
/// entrypoint makes Docker drop the image's command, so it is passed on
/// explicitly.
pub fn argv(
    socket: &str,
    port: u16,
    marker: Option<&str>,
    image_entrypoint: &[String],
    image_cmd: &[String],
    command: &[String],
) -> Result<(Vec<String>, Vec<String>), PluginError> {
    let cmd = if command.is_empty() {
        image_cmd.to_vec()
    } else {
        command.to_vec()
    };
    if image_entrypoint.is_empty() && cmd.is_empty() {
        return Err(PluginError::invalid(
            "the agent image has no entrypoint or command, and the manifest gives no command",
        )
        .with_hint("set `command` in the manifest's [agent] table"));
    }
    let entrypoint = [
        GATE_PATH,
        socket,
        &port.to_string(),
        marker.unwrap_or("-"),
        "--",
    ]
    .into_iter()
    .map(String::from)
    .chain(image_entrypoint.iter().cloned())
    .collect();
    Ok((entrypoint, cmd))
}

/// Makes sure the gate's image and carrier container exist; returns the
/// `VolumesFrom` entry that gives an agent the gate, read-only.
pub async fn ensure(client: &Client, docker: &Docker) -> Result<String, PluginError> {
    let (Some(program), Some(tag)) = (binary(), image_tag()) else {
        return Err(PluginError::internal("no launch gate in this build"));
    };
    let carrier = carrier_name(&tag);
    let volumes_from = format!("{carrier}:ro");
    match docker
        .inspect_container(
            &carrier,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(_) => return Ok(volumes_from),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(client.api("finding the launch gate's container", e)),
    }
    tracing::info!(%tag, "making the launch gate's image and volume");
    match docker.inspect_image(&tag).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            let (repo, version) = tag.split_once(':').unwrap_or((GATE_REPO, "latest"));
            docker
                .create_image(
                    Some(CreateImageOptions {
                        from_src: Some("-".into()),
                        repo: Some(repo.into()),
                        tag: Some(version.into()),
                        changes: vec![
                            format!("LABEL {LABEL_ROLE}={ROLE_GATE}"),
                            format!("VOLUME [\"{GATE_DIR}\"]"),
                        ],
                        ..Default::default()
                    }),
                    Some(bollard::body_full(program_archive(program)?.into())),
                    None,
                )
                .try_collect::<Vec<_>>()
                .await
                .map_err(|e| client.api(&format!("importing the launch gate image {tag}"), e))?;
        }
        Err(e) => return Err(client.api(&format!("inspecting image {tag}"), e)),
    }
    let body = ContainerCreateBody {
        image: Some(tag.clone()),
        // Never started: it only holds the volume, which Docker fills from
        // the image when it creates the container.
        entrypoint: Some(vec![GATE_PATH.into()]),
        labels: Some([(LABEL_ROLE.to_string(), ROLE_GATE.to_string())].into()),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    // Another launch may be making it at the same moment.
    crate::client::create_shared(
        client,
        docker,
        &carrier,
        body,
        "the launch gate's container",
    )
    .await
    .map(|()| volumes_from)
}

/// A tar of the gate directory and the gate (root, 0755): the gate image's
/// whole file system.
fn program_archive(program: &[u8]) -> Result<Vec<u8>, PluginError> {
    let mut tar = tar::Builder::new(Vec::with_capacity(program.len() + 4096));
    for (path, kind, data) in [
        (
            format!("{}/", GATE_DIR.trim_start_matches('/')),
            tar::EntryType::Directory,
            &[][..],
        ),
        (
            GATE_PATH.trim_start_matches('/').to_string(),
            tar::EntryType::Regular,
            program,
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, path, data)
            .map_err(|e| PluginError::internal(format!("packing the launch gate: {e}")))?;
    }
    tar.into_inner()
        .map_err(|e| PluginError::internal(format!("packing the launch gate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::EGRESS_SOCKET_PATH;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_gate_runs_what_docker_would_have_run() {
        let sock = EGRESS_SOCKET_PATH;
        let gate = [GATE_PATH, sock, "3128", FILES_MARKER, "--"];
        // The manifest's command replaces the image's; the entrypoint stays.
        let (e, c) = argv(
            sock,
            3128,
            Some(FILES_MARKER),
            &s(&["/init"]),
            &s(&["serve"]),
            &s(&["true"]),
        )
        .unwrap();
        assert_eq!(e, [&gate[..], &["/init"]].concat());
        assert_eq!(c, s(&["true"]));
        // No command in the manifest: the image's is passed on explicitly.
        // No files: no marker to wait for.
        let (e, c) = argv(sock, 3128, None, &[], &s(&["sh", "-c", "x"]), &[]).unwrap();
        assert_eq!(e, s(&[GATE_PATH, sock, "3128", "-", "--"]));
        assert_eq!(c, s(&["sh", "-c", "x"]));
        // Nothing to run at all is an error here, not a gate that exits.
        assert!(argv(sock, 3128, None, &[], &[], &[]).is_err());
    }

    #[test]
    fn this_build_has_a_gate() {
        // x86_64 and aarch64 Linux, where the tests run, always build one:
        // a silent fallback would quietly bring back the slower launch.
        if cfg!(all(
            target_os = "linux",
            any(target_arch = "x86_64", target_arch = "aarch64")
        )) {
            let gate = binary().expect("build.rs built no gate");
            assert_eq!(&gate[..4], b"\x7fELF");
            assert!(image_tag().unwrap().starts_with("bot-bottle-gate:"));
        }
    }
}
