//! The Docker backend against a real Docker daemon, driven through the
//! `Backend` trait.
//!
//! Needs a running dockerd and a static busybox (`busybox-static`) on the
//! host; every image is built locally, no registry is used. Without either
//! the tests skip with a printed reason, except under `CI=true`, where a
//! missing one fails them.
//!
//! The egress proxy is played by `tests/support/fake_egress.rs`, a stand-in
//! compiled here with `rustc`: it listens where `bottle egress serve` would
//! and forwards plain HTTP and CONNECT, so the topology can be checked
//! without the real proxy.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, DownloadFromContainerOptions,
    InspectContainerOptions, KillContainerOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use bot_bottle_plugin_api::{
    AgentLaunch, Backend, BottleRef, CheckRequest, EgressLaunch, ExecRequest, FileEncoding,
    LaunchSpec, ListRequest, LogsRequest, Mount, PluginError, RemoveRequest, Resources,
    SandboxFile, Secret, Severity, WaitRequest,
};
use bot_bottle_plugin_docker::{DockerBackend, LABEL_ID, LABEL_ROLE};
use futures_util::{StreamExt, TryStreamExt};

const BUSYBOX_IMAGE: &str = "bot-bottle-test-busybox:1";
const TEST_LABEL: &str = "bot-bottle-test";
const PORT: u16 = 3128;

/// Tests that remove images or collect garbage take this for writing;
/// every other test holds it for reading, so they never race.
static GLOBAL: RwLock<()> = RwLock::new(());

fn rt() -> &'static tokio::runtime::Runtime {
    bot_bottle_plugin_api::runtime()
}

/// A client for the daemon the tests use, or `None` (with the reason
/// printed) when there is none. Under `CI=true` a missing daemon fails.
fn docker_or_skip() -> Option<Docker> {
    let reason = match Docker::connect_with_defaults() {
        Ok(_) if find_busybox().is_none() => {
            "no static busybox on the host (Debian: apt-get install busybox-static)".to_string()
        }
        Ok(docker) => {
            match rt().block_on(async {
                tokio::time::timeout(Duration::from_secs(5), docker.ping()).await
            }) {
                Ok(Ok(_)) => return Some(docker),
                Ok(Err(e)) => format!("no Docker daemon answers: {e}"),
                Err(_) => "the Docker daemon did not answer within 5s".to_string(),
            }
        }
        Err(e) => format!("cannot use DOCKER_HOST: {e}"),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {reason}; start dockerd");
    }
    eprintln!("skipping: {reason} (start dockerd to run this test)");
    None
}

macro_rules! docker_or_skip {
    () => {
        match docker_or_skip() {
            Some(d) => d,
            None => return,
        }
    };
}

fn unique_id(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "bb-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The fake egress program, compiled once per test run.
fn fake_egress() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docker-fake-egress");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("bottle");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fake_egress.rs");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let status = Command::new(rustc)
            .args(["--edition", "2021", "-O", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running rustc for the fake egress program");
        assert!(status.success(), "compiling {}", src.display());
        out
    })
    .clone()
}

/// A copy of the fake egress program with extra trailing bytes: a different
/// content hash, the same behaviour.
fn fake_egress_variant(tag: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("docker-fake-egress")
        .join(format!("bottle-{tag}-{}", std::process::id()));
    let mut bytes = std::fs::read(fake_egress()).unwrap();
    bytes.extend_from_slice(format!("\0variant {tag} {}", std::process::id()).as_bytes());
    std::fs::write(&path, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn find_busybox() -> Option<&'static str> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// A busybox image with a user `agent` (uid 1000) and no `USER`.
fn busybox_image(docker: &Docker) -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let busybox = find_busybox().expect("checked by docker_or_skip");
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8], mode: u32, uid: u64, kind: tar::EntryType| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(uid);
            tar.append_data(&mut h, path, data).unwrap();
        };
        use tar::EntryType::{Directory as D, Regular as F};
        for dir in ["bin/", "etc/", "home/", "www/"] {
            add(dir, b"", 0o755, 0, D);
        }
        add("tmp/", b"", 0o1777, 0, D);
        add("home/agent/", b"", 0o750, 1000, D);
        add("bin/busybox", &std::fs::read(busybox).unwrap(), 0o755, 0, F);
        add(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n",
            0o644,
            0,
            F,
        );
        add("etc/group", b"root:x:0:\nagent:x:1000:\n", 0o644, 0, F);
        add("www/hello.txt", b"upstream-ok\n", 0o644, 0, F);
        let mut tar = tar.into_inner().unwrap();
        // Applets as symlinks.
        let mut links = tar::Builder::new(Vec::new());
        for applet in [
            "sh", "nc", "wget", "nslookup", "cat", "stat", "id", "ls", "env", "sleep", "httpd",
            "echo", "ip", "grep", "touch", "true", "false", "head", "awk", "timeout", "pwd",
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            links
                .append_link(&mut h, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        // Concatenate: drop the first archive's end blocks.
        let links = links.into_inner().unwrap();
        let end = tar.len() - 1024;
        tar.truncate(end);
        tar.extend_from_slice(&links);
        rt().block_on(async {
            docker
                .create_image(
                    Some(CreateImageOptions {
                        from_src: Some("-".into()),
                        repo: Some("bot-bottle-test-busybox".into()),
                        tag: Some("1".into()),
                        changes: vec![format!("LABEL {TEST_LABEL}=1")],
                        ..Default::default()
                    }),
                    Some(bollard::body_full(tar.into())),
                    None,
                )
                .try_collect::<Vec<_>>()
                .await
                .expect("importing the busybox test image");
        });
    });
    BUSYBOX_IMAGE
}

fn spec(docker: &Docker, name: &str, command: &[&str]) -> LaunchSpec {
    let id = unique_id(name);
    LaunchSpec {
        schema: 1,
        bottle_id: id.clone(),
        bottle_name: name.into(),
        agent: AgentLaunch {
            image: busybox_image(docker).into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("DUMMY_TOKEN".to_string(), "dummy-not-a-secret".to_string())]),
            files: vec![],
            workdir: "/".into(),
            mounts: vec![],
            resources: Resources::default(),
            tty: false,
            interactive: false,
            attached: false,
        },
        egress: EgressLaunch {
            program: fake_egress(),
            config: Secret::new(format!(
                r#"{{"bottle":"{id}","routes":[{{"host":"api.example","token":"canary-{id}-c4n4ry"}}]}}"#
            )),
            listen_port: PORT,
            ca_cert_pem:
                "-----BEGIN CERTIFICATE-----\nnot-a-real-cert\n-----END CERTIFICATE-----\n".into(),
        },
        backend_options: serde_json::Value::Null,
        labels: BTreeMap::from([(TEST_LABEL.to_string(), "1".to_string())]),
    }
}

fn canary(spec: &LaunchSpec) -> String {
    format!("canary-{}-c4n4ry", spec.bottle_id)
}

/// Names of every container and network labelled with `id`.
fn leftovers(docker: &Docker, id: &str) -> Vec<String> {
    rt().block_on(async {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_ID}={id}")])]);
        let mut out: Vec<String> = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_iter()
            .map(|c| format!("container {:?}", c.names))
            .collect();
        out.extend(
            docker
                .list_networks(Some(ListNetworksOptions {
                    filters: Some(filters),
                }))
                .await
                .unwrap()
                .into_iter()
                .map(|n| format!("network {:?}", n.name)),
        );
        out
    })
}

/// Removes a bottle (and helper containers) when a test ends, also when it
/// panics, so that a failing test leaves nothing behind.
struct Cleanup {
    bottles: Vec<String>,
    containers: Vec<String>,
}

impl Cleanup {
    fn new(bottles: &[&str]) -> Self {
        Self {
            bottles: bottles.iter().map(|s| s.to_string()).collect(),
            containers: vec![],
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(docker) = Docker::connect_with_defaults() {
            for c in &self.containers {
                force_remove_container(&docker, c);
            }
        }
        let backend = DockerBackend::new();
        for id in &self.bottles {
            let _ = backend.remove(RemoveRequest {
                schema: 1,
                bottle_id: Some(id.clone()),
                garbage: false,
                images: false,
            });
        }
    }
}

fn remove(backend: &DockerBackend, id: &str) {
    backend
        .remove(RemoveRequest {
            schema: 1,
            bottle_id: Some(id.into()),
            garbage: false,
            images: false,
        })
        .unwrap();
}

/// Runs `cmd` in `container`; exit code and combined output.
/// Launches every spec at the same moment, each on a thread and a backend
/// of its own, as separate `bottle run`s would; panics if one fails.
fn launch_all_at_once(specs: impl IntoIterator<Item = LaunchSpec>) {
    std::thread::scope(|scope| {
        let launches: Vec<_> = specs
            .into_iter()
            .map(|s| scope.spawn(|| DockerBackend::new().launch(s)))
            .collect();
        for l in launches {
            l.join().unwrap().unwrap();
        }
    });
}

/// `bottle gc` (with `--images` when `images`).
fn gc(backend: &DockerBackend, images: bool) -> bot_bottle_plugin_api::RemoveReport {
    backend
        .remove(RemoveRequest {
            schema: 1,
            bottle_id: None,
            garbage: true,
            images,
        })
        .unwrap()
}

fn run_in(docker: &Docker, container: &str, cmd: &[&str]) -> (i64, String) {
    rt().block_on(async {
        let exec = docker
            .create_exec(
                container,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut text = String::new();
        if let StartExecResults::Attached { mut output, .. } =
            docker.start_exec(&exec.id, None).await.unwrap()
        {
            while let Some(Ok(chunk)) = output.next().await {
                text.push_str(&chunk.to_string());
            }
        }
        let code = docker
            .inspect_exec(&exec.id)
            .await
            .unwrap()
            .exit_code
            .unwrap_or(-1);
        (code, text)
    })
}

fn inspect_json(docker: &Docker, container: &str) -> serde_json::Value {
    rt().block_on(async {
        serde_json::to_value(
            docker
                .inspect_container(container, None::<InspectContainerOptions>)
                .await
                .unwrap(),
        )
        .unwrap()
    })
}

/// A throwaway busybox container on `network` running `cmd`, removed by
/// the caller. Returns its name.
fn helper_container(docker: &Docker, name: &str, network: &str, cmd: &[&str]) -> String {
    start_helper(
        docker,
        name,
        ContainerCreateBody {
            image: Some(BUSYBOX_IMAGE.into()),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            host_config: Some(HostConfig {
                network_mode: Some(network.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// Creates and starts a container of the tests' own (labelled as such).
fn start_helper(docker: &Docker, name: &str, mut body: ContainerCreateBody) -> String {
    body.labels = Some(HashMap::from([(TEST_LABEL.to_string(), "1".to_string())]));
    rt().block_on(async {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.into()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .unwrap();
        docker
            .start_container(name, None::<StartContainerOptions>)
            .await
            .unwrap();
    });
    name.to_string()
}

fn force_remove_container(docker: &Docker, name: &str) {
    rt().block_on(async {
        let _ = docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    });
}

/// The container whose network namespace `sidecar` uses: the holder of
/// the namespace it shares (`--network container:<holder>`), or itself.
fn network_owner(docker: &Docker, sidecar: &str) -> String {
    let json = inspect_json(docker, sidecar);
    match json["HostConfig"]["NetworkMode"]
        .as_str()
        .and_then(|m| m.strip_prefix("container:"))
    {
        Some(holder) => inspect_json(docker, holder)["Name"]
            .as_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string(),
        None => sidecar.to_string(),
    }
}

/// The shared egress network `sidecar` reaches the world through: the one
/// network of its namespace that is not its bottle's internal one.
fn shared_egress_network(docker: &Docker, sidecar: &str) -> String {
    let json = inspect_json(docker, &network_owner(docker, sidecar));
    let nets: Vec<String> = json["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|n| !n.ends_with("-internal"))
        .cloned()
        .collect();
    assert_eq!(
        nets.len(),
        1,
        "{sidecar} joins one egress network: {nets:?}"
    );
    nets[0].clone()
}

/// Everything `container` wrote, stdout and stderr together.
fn container_logs(docker: &Docker, container: &str) -> String {
    rt().block_on(async {
        docker
            .logs(
                container,
                Some(bollard::query_parameters::LogsOptions {
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                }),
            )
            .filter_map(|l| async move { l.ok() })
            .map(|l: LogOutput| l.to_string())
            .collect::<Vec<_>>()
            .await
            .concat()
    })
}

/// An HTTP server on all of this host's addresses that answers every
/// request with `upstream-ok`; returns its port.
fn host_upstream() -> u16 {
    let upstream = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in upstream.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                // The whole request head before the answer: closing with
                // unread bytes sends a reset, which can reach the proxy
                // before the answer does.
                let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ =
                    conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 12\r\n\r\nupstream-ok\n");
            });
        }
    });
    port
}

/// The gateway address of `network`: the host, seen from it.
fn gateway_of(docker: &Docker, network: &str) -> String {
    rt().block_on(docker.inspect_network(
        network,
        None::<bollard::query_parameters::InspectNetworkOptions>,
    ))
    .unwrap()
    .ipam
    .and_then(|i| i.config)
    .and_then(|c| c.into_iter().next())
    .and_then(|c| c.gateway)
    .unwrap()
}

fn ip_on(docker: &Docker, container: &str, network: &str) -> String {
    inspect_json(docker, container)["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string()
}

// ---------------------------------------------------------------- tests

#[test]
fn exit_codes_propagate_and_nothing_remains() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    for code in [0, 7] {
        let s = spec(
            &docker,
            "exit",
            &["sh", "-c", &format!("echo out; echo err >&2; exit {code}")],
        );
        let id = s.bottle_id.clone();
        let _cleanup = Cleanup::new(&[&id]);
        let handle = backend.launch(s).unwrap();
        assert_eq!(handle.bottle_id, id);
        let report = backend
            .wait(WaitRequest {
                schema: 1,
                bottle_id: id.clone(),
                attach: true,
            })
            .unwrap();
        assert_eq!(report.exit_code, code);
        assert_eq!(report.reason, None);
        remove(&backend, &id);
        assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
    }
}

#[test]
fn agent_reaches_only_the_proxy() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let s = spec(&docker, "topology", &["sleep", "300"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    backend.launch(s).unwrap();
    let agent = format!("{id}-agent");
    let egress = format!("{id}-egress");
    // Every bottle's sidecar shares this one.
    let egress_net = shared_egress_network(&docker, &egress);
    let egress_gw = gateway_of(&docker, &egress_net);

    // The upstream is on the host, which the egress side reaches through
    // the shared network's gateway.
    let upstream_port = host_upstream();
    let upstream_ip = egress_gw.clone();
    // A bystander on the egress side, to prove what "reachable" looks like.
    let bystander = helper_container(
        &docker,
        &format!("{id}-bystander"),
        &egress_net,
        &["sleep", "300"],
    );
    let mut _cleanup = _cleanup;
    _cleanup.containers = vec![bystander.clone()];

    // The agent has no network at all: loopback only. Its one way out is
    // the proxy's socket, in the sidecar's volume, mounted read-only.
    let agent_json = inspect_json(&docker, &agent);
    assert_eq!(agent_json["HostConfig"]["NetworkMode"], "none");
    let (_, devices) = run_in(&docker, &agent, &["cat", "/proc/net/dev"]);
    let interfaces: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "{devices}");
    // Asked of Docker as "no networking" (no network sandbox, runc makes
    // the namespace), with the /etc/hosts Docker would have written.
    assert_eq!(agent_json["Config"]["NetworkDisabled"], true);
    let (_, hosts) = run_in(&docker, &agent, &["ls", "-ln", "/etc/hosts"]);
    assert!(
        hosts.contains(" 0 ") && hosts.starts_with("-rw-r--r--"),
        "{hosts}"
    );
    let (_, hosts) = run_in(&docker, &agent, &["cat", "/etc/hosts"]);
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    // The gate itself refuses a namespace with more than loopback: the
    // same gate, in a container on Docker's default bridge, never runs
    // its program.
    let carrier = agent_json["HostConfig"]["VolumesFrom"][0]
        .as_str()
        .unwrap()
        .to_string();
    let refused = start_helper(
        &docker,
        &format!("{id}-gate-with-eth0"),
        ContainerCreateBody {
            image: Some(BUSYBOX_IMAGE.into()),
            entrypoint: Some(vec!["/.bot-bottle/gate".into()]),
            cmd: Some(
                [
                    "/.bot-bottle-egress/proxy.sock",
                    "3128",
                    "-",
                    "--",
                    "echo",
                    "the-agent-ran",
                ]
                .map(String::from)
                .to_vec(),
            ),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                volumes_from: Some(vec![carrier]),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    let code = rt().block_on(async {
        let waited = docker
            .wait_container(
                &refused,
                None::<bollard::query_parameters::WaitContainerOptions>,
            )
            .next()
            .await;
        match waited {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            other => panic!("waiting for the gate: {other:?}"),
        }
    });
    let logs = container_logs(&docker, &refused);
    force_remove_container(&docker, &refused);
    assert_eq!(code, 125, "{logs}");
    assert!(logs.contains("a route through eth0"), "{logs}");
    assert!(!logs.contains("the-agent-ran"), "{logs}");
    // The sidecar joins the namespace every sidecar on its egress network
    // shares, which a small unprivileged holder keeps (decision 0003); the
    // holder is on that network only, and runs nothing but `gate --hold`.
    let egress_json = inspect_json(&docker, &egress);
    let holder = network_owner(&docker, &egress);
    assert!(
        holder.starts_with("bot-bottle-egress-ns-"),
        "{holder}: {}",
        egress_json["HostConfig"]["NetworkMode"]
    );
    assert_eq!(
        egress_json["Config"]["Labels"]["bot-bottle.egress-ns"], holder,
        "the sidecar names its holder"
    );
    let holder_json = inspect_json(&docker, &holder);
    let holder_nets: Vec<&String> = holder_json["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        holder_nets,
        [&egress_net],
        "the holder: the egress network only"
    );
    assert!(egress_net.starts_with("bot-bottle-egress-"), "{egress_net}");
    assert_eq!(holder_json["State"]["Running"], true);
    assert_eq!(holder_json["Config"]["User"], "65534:65534");
    assert_eq!(
        holder_json["Config"]["Entrypoint"],
        serde_json::json!(["/.bot-bottle/gate", "--hold"])
    );
    assert_eq!(
        holder_json["HostConfig"]["CapDrop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(holder_json["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(
        holder_json["HostConfig"]["SecurityOpt"],
        serde_json::json!(["no-new-privileges"])
    );
    assert!(holder_json["Config"]["Labels"]["bot-bottle.id"].is_null());
    let socket_mount = |json: &serde_json::Value| {
        json["Mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["Destination"] == "/.bot-bottle-egress")
            .cloned()
            .unwrap_or_else(|| panic!("no socket volume: {}", json["Mounts"]))
    };
    let (in_egress, in_agent) = (socket_mount(&egress_json), socket_mount(&agent_json));
    assert_eq!(in_agent["Name"], in_egress["Name"]);
    assert_eq!(
        (in_egress["RW"].as_bool(), in_agent["RW"].as_bool()),
        (Some(true), Some(false))
    );
    let socket_volume = in_egress["Name"].as_str().unwrap().to_string();
    let (code, out) = run_in(&docker, &agent, &["touch", "/.bot-bottle-egress/x"]);
    assert_ne!(
        code, 0,
        "the agent wrote into the proxy's socket volume: {out}"
    );

    let url = format!("http://{upstream_ip}:{upstream_port}/hello.txt");
    // Control: from the egress side the upstream answers directly.
    let (code, out) = run_in(
        &docker,
        &bystander,
        &["timeout", "5", "wget", "-q", "-O", "-", &url],
    );
    assert_eq!((code, out.trim()), (0, "upstream-ok"), "control failed");
    // Through the proxy (http_proxy is set in the agent's env) it works…
    let (code, out) = run_in(
        &docker,
        &agent,
        &["timeout", "5", "wget", "-q", "-O", "-", &url],
    );
    assert_eq!((code, out.trim()), (0, "upstream-ok"), "via the proxy");
    // …and directly it does not.
    let (code, out) = run_in(
        &docker,
        &agent,
        &["timeout", "5", "wget", "-q", "-Y", "off", "-O", "-", &url],
    );
    assert_ne!(code, 0, "direct HTTP from the agent must fail: {out}");
    let port = upstream_port.to_string();
    let (code, out) = run_in(&docker, &agent, &["nc", "-w", "3", &upstream_ip, &port]);
    assert_ne!(code, 0, "direct TCP from the agent must fail: {out}");

    // Neighbours on the shared egress network cannot even reach a sidecar
    // (no inter-container traffic on it); the proxy would refuse them too.
    let sidecar_ip = ip_on(&docker, &holder, &egress_net);
    let (code, out) = run_in(
        &docker,
        &bystander,
        &["sh", "-c", &format!("echo | nc -w 3 {sidecar_ip} {PORT}")],
    );
    assert_ne!(
        code, 0,
        "a neighbour reached the sidecar at {sidecar_ip}: {out}"
    );
    // (control: the sidecar itself listens there, as the agent's proxy.)

    // No DNS outside: public names do not resolve, and no resolver on the
    // egress side is reachable.
    let (code, out) = run_in(&docker, &agent, &["nslookup", "example.com"]);
    assert_ne!(code, 0, "external DNS from the agent must fail: {out}");
    let (code, out) = run_in(&docker, &agent, &["nslookup", "example.com", &upstream_ip]);
    assert_ne!(
        code, 0,
        "a resolver on the egress side must be unreachable: {out}"
    );

    // The host: a listener on all addresses of the host is reachable from
    // the egress side (control) but not from the agent.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let (code, _) = run_in(
        &docker,
        &bystander,
        &["sh", "-c", &format!("echo | nc -w 3 {egress_gw} {port}")],
    );
    assert_eq!(
        code, 0,
        "control: the host listener is reachable from the egress side"
    );
    let (code, out) = run_in(
        &docker,
        &agent,
        &["sh", "-c", &format!("echo | nc -w 3 {egress_gw} {port}")],
    );
    assert_ne!(code, 0, "the agent reached the host at {egress_gw}: {out}");

    force_remove_container(&docker, &bystander);
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
    let gone = rt().block_on(docker.inspect_volume(&socket_volume));
    assert!(gone.is_err(), "the socket volume {socket_volume} remains");
    // Teardown leaves the holder, as it leaves the shared network.
    assert_eq!(inspect_json(&docker, &holder)["State"]["Running"], true);
}

#[test]
fn files_secrets_and_hardening() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let ro = tempfile::tempdir().unwrap();
    let rw = tempfile::tempdir().unwrap();
    // The agent (uid 1000) writes to the workspace; on a real host it is the
    // user's own directory.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(rw.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(ro.path().join("readme"), "ro").unwrap();
    let mut s = spec(&docker, "files", &["sleep", "300"]);
    let canary = canary(&s);
    let config_len = s.egress.config.expose().len();
    s.agent.files = vec![
        SandboxFile::text(
            "/home/agent/.codex/auth.json",
            r#"{"token":"dummy"}"#,
            0o600,
        ),
        SandboxFile::text(
            "/etc/bot-bottle/ca.pem",
            s.egress.ca_cert_pem.clone(),
            0o644,
        ),
        SandboxFile {
            path: "/opt/tool/blob".into(),
            contents: "aGVsbG8=".into(),
            encoding: FileEncoding::Base64,
            mode: 0o755,
        },
    ];
    s.agent.mounts = vec![
        Mount {
            host: ro.path().to_path_buf(),
            sandbox: "/ro".into(),
            writable: false,
        },
        Mount {
            host: rw.path().to_path_buf(),
            sandbox: "/workspace".into(),
            writable: true,
        },
    ];
    s.agent.workdir = "/workspace".into();
    s.agent.resources = Resources {
        cpus: Some(0.5),
        memory_bytes: Some(256 * 1024 * 1024),
        pids: Some(100),
    };
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    let handle = backend.launch(s).unwrap();
    assert_eq!(handle.details["user"], "agent", "{:?}", handle.details);
    let agent = format!("{id}-agent");
    let egress = format!("{id}-egress");

    let (_, out) = run_in(
        &docker,
        &agent,
        &[
            "stat",
            "-c",
            "%n %a %U",
            "/home/agent/.codex/auth.json",
            "/home/agent/.codex",
            "/home/agent",
            "/etc/bot-bottle/ca.pem",
            "/etc/bot-bottle",
            "/opt/tool/blob",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![
            "/home/agent/.codex/auth.json 600 agent",
            "/home/agent/.codex 755 agent",
            "/home/agent 750 agent",
            "/etc/bot-bottle/ca.pem 644 agent",
            "/etc/bot-bottle 755 root",
            "/opt/tool/blob 755 agent",
        ],
        "{out}"
    );
    assert_eq!(
        run_in(&docker, &agent, &["cat", "/opt/tool/blob"]).1,
        "hello"
    );
    assert_eq!(run_in(&docker, &agent, &["id", "-u"]).1.trim(), "1000");
    assert_eq!(
        run_in(&docker, &agent, &["sh", "-c", "pwd"]).1.trim(),
        "/workspace"
    );
    assert_eq!(run_in(&docker, &agent, &["touch", "/workspace/x"]).0, 0);
    assert!(rw.path().join("x").exists());
    assert_ne!(
        run_in(&docker, &agent, &["touch", "/ro/x"]).0,
        0,
        "read-only mount"
    );
    assert_eq!(run_in(&docker, &agent, &["cat", "/ro/readme"]).1, "ro");

    // The proxy config is in the sidecar only, 0400 and owned by nobody.
    let (code, _) = run_in(&docker, &agent, &["cat", "/etc/bot-bottle/egress.json"]);
    assert_ne!(code, 0, "the config must not exist in the agent");
    let (code, out) = run_in(
        &docker,
        &agent,
        &[
            "grep",
            "-r",
            "-l",
            &canary,
            "/etc",
            "/home",
            "/opt",
            "/tmp",
            "/workspace",
        ],
    );
    assert_ne!(code, 0, "canary found in the agent's files: {out}");
    // The sidecar got it on stdin: no file in its file system holds it
    // (which would sit in the container's layer on the host's disk).
    let found = rt().block_on(async {
        docker
            .download_from_container(
                &egress,
                Some(DownloadFromContainerOptions {
                    path: "/etc/bot-bottle/egress.json".into(),
                }),
            )
            .try_collect::<Vec<_>>()
            .await
    });
    assert!(found.is_err(), "a config file exists in the sidecar");
    let layer = rt().block_on(async {
        docker
            .export_container(&egress)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .concat()
    });
    assert!(layer.len() > 1000, "exported the sidecar's file system");
    assert!(
        !layer.windows(canary.len()).any(|w| w == canary.as_bytes()),
        "canary in the sidecar's file system"
    );
    // The canary is nowhere else: env, inspect, labels, networks, logs.
    let (_, env) = run_in(&docker, &agent, &["env"]);
    assert!(!env.contains(&canary), "canary in the agent env");
    assert!(
        env.contains(&format!("HTTPS_PROXY=http://127.0.0.1:{PORT}")),
        "{env}"
    );
    assert!(
        env.contains(&format!("http_proxy=http://127.0.0.1:{PORT}")),
        "{env}"
    );
    assert!(env.contains("DUMMY_TOKEN=dummy-not-a-secret"), "{env}");
    for c in [&agent, &egress] {
        let text = inspect_json(&docker, c).to_string();
        assert!(!text.contains(&canary), "canary in `docker inspect {c}`");
    }
    let n = shared_egress_network(&docker, &egress);
    let text = rt()
        .block_on(
            docker.inspect_network(&n, None::<bollard::query_parameters::InspectNetworkOptions>),
        )
        .map(|n| serde_json::to_string(&n).unwrap())
        .unwrap();
    assert!(!text.contains(&canary), "canary in network {n}");
    for c in [&agent, &egress] {
        let logs = container_logs(&docker, c);
        assert!(!logs.contains(&canary), "canary in the logs of {c}");
        if c == &egress {
            assert!(
                logs.contains(&format!(r#""bytes":{config_len},"from":"stdin""#)),
                "the proxy read its whole config from stdin: {logs}"
            );
        }
    }

    // Hardening of both containers.
    let a = inspect_json(&docker, &agent);
    let e = inspect_json(&docker, &egress);
    for (who, j) in [("agent", &a), ("egress", &e)] {
        let hc = &j["HostConfig"];
        assert_eq!(hc["CapDrop"], serde_json::json!(["ALL"]), "{who}");
        assert_eq!(
            hc["SecurityOpt"],
            serde_json::json!(["no-new-privileges"]),
            "{who}"
        );
        assert_eq!(hc["Privileged"], false, "{who}");
        let text = j.to_string();
        assert!(
            !text.contains("docker.sock"),
            "{who} sees the Docker socket"
        );
        assert_eq!(j["Config"]["Labels"][LABEL_ID], id.as_str());
        assert_eq!(j["Config"]["Labels"][LABEL_ROLE], who);
        assert_eq!(j["Config"]["Labels"][TEST_LABEL], "1");
    }
    assert_eq!(e["Config"]["User"], "65534:65534");
    // The proxy's memory is bounded too (its config sets no
    // dlp.max_body_bytes: 512 MiB + 64 × the default 1 MiB), swap included.
    assert_eq!(e["HostConfig"]["Memory"], 576 * 1024 * 1024);
    assert_eq!(e["HostConfig"]["MemorySwap"], 576 * 1024 * 1024);
    assert_eq!(a["Config"]["User"], "agent");
    assert_eq!(a["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(a["HostConfig"]["Memory"], 256 * 1024 * 1024);
    assert_eq!(a["HostConfig"]["PidsLimit"], 100);
    let mounts = a["HostConfig"]["Mounts"].as_array().unwrap();
    assert_eq!(mounts[0]["ReadOnly"], true);
    assert_ne!(mounts[1]["ReadOnly"], true);

    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

#[test]
fn launch_errors_leave_nothing_behind() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();

    // The proxy dies before listening, printing its token: the error says
    // so, with the token blotted out.
    let mut s = spec(&docker, "proxyfail", &["true"]);
    let canary = canary(&s);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    s.egress.config = Secret::new(format!(r#"{{"fail": true, "token":"{canary}"}}"#));
    let err = backend.launch(s).unwrap_err();
    assert!(
        err.message.contains("egress proxy exited (code 3)"),
        "{err:?}"
    );
    assert!(err.message.contains("[redacted]"), "{err:?}");
    assert!(!format!("{err:?}").contains(&canary), "{err:?}");
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());

    // An id that is already in use is refused, and the bottle holding it
    // is left alone.
    let s = spec(&docker, "dupid", &["sleep", "300"]);
    let id = s.bottle_id.clone();
    let _cleanup_dup = Cleanup::new(&[&id]);
    backend.launch(s.clone()).unwrap();
    let err = backend.launch(s).unwrap_err();
    assert!(err.message.contains("already exists"), "{err:?}");
    assert_eq!(
        leftovers(&docker, &id).len(),
        2,
        "the first bottle (its two containers) must survive"
    );
    let waiter = wait_in_background(&id);
    std::thread::sleep(Duration::from_millis(300));
    remove(&backend, &id);
    let report = waiter.join().unwrap().unwrap();
    // Killed by the removal (137), or reported as removed.
    assert_eq!(report.exit_code, 137, "{report:?}");
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());

    // A user the image lacks: fails after both containers exist.
    let mut s = spec(&docker, "nouser", &["true"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    s.backend_options = serde_json::json!({"user": "nosuchuser"});
    let err = backend.launch(s).unwrap_err();
    assert!(err.message.contains("nosuchuser"), "{err:?}");
    assert!(err.hint.is_some());
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());

    // A missing image with pulling off.
    let mut s = spec(&docker, "noimage", &["true"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    s.agent.image = "bot-bottle-test-missing:never".into();
    s.backend_options = serde_json::json!({"pull": false});
    let err = backend.launch(s).unwrap_err();
    assert!(
        err.message.contains("bot-bottle-test-missing:never"),
        "{err:?}"
    );
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());

    // The Docker socket is never mounted.
    let mut s = spec(&docker, "socket", &["true"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    s.agent.mounts = vec![Mount {
        host: "/var/run".into(),
        sandbox: "/host-run".into(),
        writable: false,
    }];
    let err = backend.launch(s).unwrap_err();
    assert!(err.message.contains("Docker socket"), "{err:?}");
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());

    // A runtime the daemon lacks is named, with how to get it.
    let runtimes = rt()
        .block_on(docker.info())
        .unwrap()
        .runtimes
        .unwrap_or_default();
    if !runtimes.contains_key("runsc") {
        let mut s = spec(&docker, "runsc", &["true"]);
        let id = s.bottle_id.clone();
        s.backend_options = serde_json::json!({"runtime": "runsc"});
        let err = backend.launch(s).unwrap_err();
        assert!(err.message.contains("no runtime `runsc`"), "{err:?}");
        assert!(
            err.hint
                .as_deref()
                .unwrap()
                .contains("apt-get install runsc"),
            "{err:?}"
        );
        assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
    }

    // Unknown backend options are named.
    let mut s = spec(&docker, "badopt", &["true"]);
    s.backend_options = serde_json::json!({"runtme": "runsc"});
    let err = backend.launch(s).unwrap_err();
    assert!(err.message.contains("runtme"), "{err:?}");
}

/// The agent container starts while its proxy comes up (the launch gate);
/// its program must still never run before the proxy accepts connections.
/// A proxy that takes 1.5 s to bind is far slower than the agent's own
/// start, so an agent started early without the gate's wait would find
/// nothing listening and exit 42.
#[test]
fn the_agent_never_runs_before_its_proxy_listens() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let mut s = spec(
        &docker,
        "slowproxy",
        &[
            "sh",
            "-c",
            // Its first act: reach the proxy, and read a file placed for it.
            "printf 'HELLO\\r\\n\\r\\n' | nc 127.0.0.1 3128 | grep -q fake-egress || exit 42; \
             cat /home/agent/.config/placed.txt || exit 43",
        ],
    );
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    s.egress.config = Secret::new(format!(r#"{{"bottle":"{id}","delay_ms": 1500}}"#));
    s.agent.files = vec![SandboxFile::text(
        "/home/agent/.config/placed.txt",
        "placed-before-start\n".to_string(),
        0o600,
    )];
    backend.launch(s).unwrap();
    let report = backend
        .wait(WaitRequest {
            schema: 1,
            bottle_id: id.clone(),
            attach: false,
        })
        .unwrap();
    assert_eq!(
        report.exit_code, 0,
        "42: the agent ran before its proxy listened; 43: before its files were placed"
    );
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

/// `docker stop` of an agent still waiting in its gate (its proxy not up
/// yet) ends it at once, as SIGTERM asks, without running the program;
/// before, the gate, as init without handlers, ignored SIGTERM and Docker
/// killed it only after its 10 s timeout (exit 137).
#[test]
fn a_stop_while_the_agent_waits_in_its_gate_is_honoured() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let mut s = spec(&docker, "gatestop", &["echo", "the-agent-ran"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    s.egress.config = Secret::new(format!(r#"{{"bottle":"{id}","delay_ms": 4000}}"#));
    let launch = std::thread::spawn(move || DockerBackend::new().launch(s));
    let agent = format!("{id}-agent");
    // The agent's container runs (in its gate) while the proxy sleeps.
    let mut running = false;
    for _ in 0..200 {
        let state = rt()
            .block_on(docker.inspect_container(
                &agent,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ))
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.running);
        if state == Some(true) {
            running = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running, "the agent never ran its gate");
    rt().block_on(docker.stop_container(
        &agent,
        Some(bollard::query_parameters::StopContainerOptions {
            t: Some(10),
            signal: None,
        }),
    ))
    .unwrap();
    let json = inspect_json(&docker, &agent);
    assert_eq!(
        json["State"]["ExitCode"], 143,
        "SIGTERM ends the gate, and the program never runs"
    );
    let logs = container_logs(&docker, &agent);
    assert!(logs.contains("stopped by signal 15"), "{logs}");
    assert!(!logs.contains("the-agent-ran"), "{logs}");
    let _ = launch.join();
    remove(&DockerBackend::new(), &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

/// A proxy that dies before it listens fails the launch closed: the agent,
/// whose container was already started, never runs its program (it would
/// leave a file in a host directory), and nothing of the bottle remains.
#[test]
fn a_proxy_that_never_listens_never_lets_the_agent_run() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut s = spec(&docker, "deadproxy", &["touch", "/out/the-agent-ran"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    // The proxy reads its config, exits 3 and never listens.
    s.egress.config = Secret::new(r#"{"fail": true, "token":"not-a-secret-token"}"#);
    s.agent.mounts = vec![Mount {
        host: out.path().to_path_buf(),
        sandbox: "/out".into(),
        writable: true,
    }];
    let err = backend.launch(s).unwrap_err();
    assert!(
        err.message.contains("egress proxy exited (code 3)"),
        "{err:?}"
    );
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
    // Give a wrongly started agent time to show itself.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !out.path().join("the-agent-ran").exists(),
        "the agent ran although its proxy never listened"
    );
}

/// A proxy that dies while the agent runs: the agent's report carries the
/// proxy's last words, read before teardown takes its logs away (pointing
/// at `bottle logs --egress` was no help: `bottle run` removes the bottle).
#[test]
fn a_proxy_that_dies_says_why_in_the_agents_report() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let mut s = spec(&docker, "dieproxy", &["sleep", "300"]);
    let id = s.bottle_id.clone();
    s.egress.config = Secret::new(format!(r#"{{"bottle":"{id}","die_ms": 1500}}"#));
    let _cleanup = Cleanup::new(&[&id]);
    let reason = stopped_with_its_proxy(&backend, s);
    assert!(
        reason.contains("egress proxy died (exit code 4)")
            && reason.contains("error: upstream went away")
            && !reason.contains("listening on")
            && !reason.contains("bottle logs"),
        "{reason}"
    );
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

/// A proxy made to hold too much memory (an agent can, docs/egress.md)
/// meets its sidecar's limit, not the machine's: the kernel stops it, the
/// agent is stopped with it, and the report says why.
#[test]
fn a_proxy_out_of_memory_is_stopped_at_its_limit_and_says_so() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let mut s = spec(&docker, "hogproxy", &["sleep", "300"]);
    let id = s.bottle_id.clone();
    // The smallest limit there is: 512 MiB and nothing for held bodies.
    s.egress.config = Secret::new(format!(
        r#"{{"bottle":"{id}","dlp":{{"max_body_bytes":0}},"hog_ms": 500}}"#
    ));
    let _cleanup = Cleanup::new(&[&id]);
    let reason = stopped_with_its_proxy(&backend, s);
    assert!(
        reason.contains("egress proxy ran out of memory (its sidecar's limit, 512 MiB)")
            && reason.contains("fail closed"),
        "{reason}"
    );
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

/// Launches `s`, whose proxy ends while the agent (`sleep`) runs, and
/// waits: the agent must have been stopped; the report's reason.
fn stopped_with_its_proxy(backend: &DockerBackend, s: LaunchSpec) -> String {
    let id = s.bottle_id.clone();
    backend.launch(s).unwrap();
    let report = backend
        .wait(WaitRequest {
            schema: 1,
            bottle_id: id,
            attach: false,
        })
        .unwrap();
    assert_ne!(report.exit_code, 0);
    report.reason.unwrap()
}

/// `wait` (not attached) for bottle `id` on a thread of its own.
fn wait_in_background(
    id: &str,
) -> std::thread::JoinHandle<
    Result<bot_bottle_plugin_api::ExitReport, bot_bottle_plugin_api::PluginError>,
> {
    let id = id.to_owned();
    std::thread::spawn(move || {
        DockerBackend::new().wait(WaitRequest {
            schema: 1,
            bottle_id: id,
            attach: false,
        })
    })
}

#[test]
fn a_killed_proxy_stops_the_agent() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let s = spec(&docker, "killproxy", &["sleep", "300"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    backend.launch(s).unwrap();
    let waiter = wait_in_background(&id);
    std::thread::sleep(Duration::from_millis(500));
    rt().block_on(docker.kill_container(
        &format!("{id}-egress"),
        Some(KillContainerOptions {
            signal: "KILL".into(),
        }),
    ))
    .unwrap();
    let report = waiter.join().unwrap().unwrap();
    assert_ne!(report.exit_code, 0);
    let reason = report.reason.unwrap();
    assert!(reason.contains("egress proxy was killed"), "{reason}");
    let agent = inspect_json(&docker, &format!("{id}-agent"));
    assert_eq!(
        agent["State"]["Running"], false,
        "the agent must be stopped"
    );
    let listed = backend.list(ListRequest::default()).unwrap();
    assert!(listed
        .iter()
        .any(|b| b.bottle_id == id && b.state != "running"));
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

#[test]
fn an_agent_stopped_or_killed_from_elsewhere_is_reported_so() {
    // `bottle stop` in another terminal ended an attached run with 143 and
    // no word. A signal that does not end the agent (SIGWINCH) is no
    // reason.
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    for how in ["stop", "KILL", "WINCH"] {
        let argv: &[&str] = if how == "WINCH" {
            &["sleep", "3"]
        } else {
            &["sleep", "300"]
        };
        let s = spec(&docker, "elsewhere", argv);
        let id = s.bottle_id.clone();
        let _cleanup = Cleanup::new(&[&id]);
        backend.launch(s).unwrap();
        let waiter = wait_in_background(&id);
        std::thread::sleep(Duration::from_millis(500));
        if how == "stop" {
            backend
                .stop(BottleRef {
                    schema: 1,
                    bottle_id: id.clone(),
                })
                .unwrap();
        } else {
            rt().block_on(docker.kill_container(
                &format!("{id}-agent"),
                Some(KillContainerOptions { signal: how.into() }),
            ))
            .unwrap();
        }
        let report = waiter.join().unwrap().unwrap();
        let reason = report.reason.clone().unwrap_or_default();
        match how {
            "stop" => {
                assert_eq!(report.exit_code, 143);
                assert!(reason.contains("stopped from outside this run"), "{reason}");
            }
            "KILL" => {
                assert_eq!(report.exit_code, 137);
                assert!(
                    reason.contains("killed from outside this run (signal 9"),
                    "{reason}"
                );
            }
            _ => {
                assert_eq!(report.exit_code, 0);
                assert_eq!(report.reason, None, "SIGWINCH ended nothing");
            }
        }
        remove(&backend, &id);
        assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
    }
}

#[test]
fn the_egress_image_is_cached_by_content() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let program = fake_egress_variant("cache");
    let mut ids = Vec::new();
    let mut images = Vec::new();
    for _ in 0..2 {
        let mut s = spec(&docker, "cache", &["true"]);
        s.egress.program = program.clone();
        let id = s.bottle_id.clone();
        let _cleanup = Cleanup::new(&[&id]);
        let handle = backend.launch(s).unwrap();
        let tag = handle.details["egress_image"].as_str().unwrap().to_string();
        assert!(tag.starts_with("bot-bottle-egress:"), "{tag}");
        let image = rt().block_on(docker.inspect_image(&tag)).unwrap();
        assert_eq!(
            image.config.unwrap().labels.unwrap()["bot-bottle.role"],
            "egress-image"
        );
        images.push((tag, image.id.unwrap()));
        ids.push(id);
    }
    assert_eq!(
        images[0], images[1],
        "the second launch must reuse the image"
    );
    // A different program gets a different image.
    let mut s = spec(&docker, "cache", &["true"]);
    s.egress.program = fake_egress_variant("cache2");
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    let handle = backend.launch(s).unwrap();
    assert_ne!(
        handle.details["egress_image"].as_str().unwrap(),
        images[0].0
    );
    ids.push(id);
    for id in ids {
        remove(&backend, &id);
        assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
    }
}

#[test]
fn list_stop_logs_exec() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let s = spec(&docker, "manage", &["sleep", "300"]);
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    backend.launch(s).unwrap();
    let listed = backend.list(ListRequest::default()).unwrap();
    let me = listed.iter().find(|b| b.bottle_id == id).expect("listed");
    assert_eq!(me.state, "running");
    assert_eq!(me.name, "manage");
    assert_eq!(me.backend, "docker");
    assert_eq!(me.image, BUSYBOX_IMAGE);

    let report = backend
        .exec(ExecRequest {
            schema: 1,
            bottle_id: id.clone(),
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
            tty: false,
        })
        .unwrap();
    assert_eq!(report.exit_code, 3);
    for egress in [false, true] {
        backend
            .logs(LogsRequest {
                schema: 1,
                bottle_id: id.clone(),
                egress,
                follow: false,
            })
            .unwrap();
    }
    backend
        .stop(BottleRef {
            schema: 1,
            bottle_id: id.clone(),
        })
        .unwrap();
    let listed = backend.list(ListRequest::default()).unwrap();
    let me = listed
        .iter()
        .find(|b| b.bottle_id == id)
        .expect("still listed");
    assert_eq!(me.state, "exited");
    // `sleep` sets no SIGTERM handler, so as the container's first process
    // it ignored `docker stop`'s SIGTERM and was killed after the timeout
    // (137). Under Docker's init it ends of the SIGTERM itself (143).
    let agent = inspect_json(&docker, &format!("{id}-agent"));
    assert_eq!(agent["State"]["ExitCode"], 143, "{}", agent["State"]);
    // Stopping twice is fine; a missing bottle is not found.
    backend
        .stop(BottleRef {
            schema: 1,
            bottle_id: id.clone(),
        })
        .unwrap();
    let err = backend
        .stop(BottleRef {
            schema: 1,
            bottle_id: "bb-test-nonexistent".into(),
        })
        .unwrap_err();
    assert_eq!(err.kind, bot_bottle_plugin_api::ErrorKind::NotFound);
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

#[test]
fn gc_removes_leftovers_and_images() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    // A finished bottle, a live one, and a stray network of a bottle whose
    // containers are gone (made old enough by hand is not possible, so the
    // stray is a sidecar without an agent).
    let done = spec(&docker, "gcdone", &["true"]);
    let done_id = done.bottle_id.clone();
    let mut live = spec(&docker, "gclive", &["sleep", "300"]);
    live.egress.program = fake_egress_variant("gc");
    let live_id = live.bottle_id.clone();
    backend.launch(done).unwrap();
    backend
        .wait(WaitRequest {
            schema: 1,
            bottle_id: done_id.clone(),
            attach: false,
        })
        .unwrap();
    let handle = backend.launch(live).unwrap();
    let live_image = handle.details["egress_image"].as_str().unwrap().to_string();
    let orphan = spec(&docker, "gcorphan", &["sleep", "300"]);
    let orphan_id = orphan.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&done_id, &live_id, &orphan_id]);
    backend.launch(orphan).unwrap();
    force_remove_container(&docker, &format!("{orphan_id}-agent"));

    let report = gc(&backend, true);
    assert!(
        report.removed.iter().any(|r| r.contains(&done_id)),
        "{:?}",
        report.removed
    );
    assert_eq!(leftovers(&docker, &done_id), Vec::<String>::new());
    assert_eq!(leftovers(&docker, &orphan_id), Vec::<String>::new());
    assert_eq!(
        leftovers(&docker, &live_id).len(),
        2,
        "a running bottle is not garbage"
    );
    // The shared egress network, and the holder of its namespace, are in
    // use by the live bottle and stay.
    let live_egress = format!("{live_id}-egress");
    let holder = network_owner(&docker, &live_egress);
    assert_ne!(holder, live_egress, "the sidecar shares a namespace");
    assert_eq!(inspect_json(&docker, &holder)["State"]["Running"], true);
    let shared_net = shared_egress_network(&docker, &live_egress);
    let shared = || {
        rt().block_on(docker.inspect_network(
            &shared_net,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        ))
    };
    assert!(shared().is_ok(), "gc removed the egress network in use");
    // The live bottle's image is in use and stays.
    assert!(rt().block_on(docker.inspect_image(&live_image)).is_ok());

    remove(&backend, &live_id);
    // Unused now, gc removes it (unless a bottle of another test process
    // or user joined it meanwhile).
    gc(&backend, false);
    let naming_holder = || {
        let filter = format!("bot-bottle.egress-ns={holder}");
        rt().block_on(docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), vec![filter])])),
            ..Default::default()
        })))
        .unwrap()
    };
    let holder_left = rt()
        .block_on(docker.inspect_container(&holder, None::<InspectContainerOptions>))
        .is_ok();
    assert!(
        !holder_left || !naming_holder().is_empty(),
        "gc left the unused holder {holder} behind"
    );
    if let Ok(n) = shared() {
        assert!(
            n.containers.is_some_and(|c| !c.is_empty()),
            "gc left the unused egress network behind"
        );
    }
    let report = backend
        .remove(RemoveRequest {
            schema: 1,
            bottle_id: None,
            garbage: false,
            images: true,
        })
        .unwrap();
    assert!(
        report.removed.iter().any(|r| r.contains(&live_image)),
        "{:?}",
        report.removed
    );
    assert!(rt().block_on(docker.inspect_image(&live_image)).is_err());
}

#[test]
fn sidecars_share_a_namespace_unless_asked_and_a_stopped_holder_starts_again() {
    let docker = docker_or_skip!();
    // Stops the holder every other bottle's sidecar uses.
    let _g = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let a = spec(&docker, "nsa", &["sleep", "300"]);
    let b = spec(&docker, "nsb", &["sleep", "300"]);
    let mut own = spec(&docker, "nsown", &["sleep", "300"]);
    own.backend_options = serde_json::json!({"egress_namespace": "own"});
    let later = spec(&docker, "nslater", &["sleep", "300"]);
    let ids: Vec<String> = [&a, &b, &own, &later]
        .iter()
        .map(|s| s.bottle_id.clone())
        .collect();
    let _cleanup = Cleanup::new(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    for s in [a, b, own] {
        backend.launch(s).unwrap();
    }
    let egress = |i: usize| format!("{}-egress", ids[i]);
    let agent = |i: usize| format!("{}-agent", ids[i]);
    let holder = network_owner(&docker, &egress(0));
    assert!(holder.starts_with("bot-bottle-egress-ns-"), "{holder}");
    assert_eq!(network_owner(&docker, &egress(1)), holder);
    // Asked for its own: the sidecar is on the network itself, with an
    // address of its own.
    assert_eq!(network_owner(&docker, &egress(2)), egress(2));
    let net = shared_egress_network(&docker, &egress(2));
    assert_eq!(net, shared_egress_network(&docker, &egress(0)));
    let own_ip = ip_on(&docker, &egress(2), &net);
    assert!(!own_ip.is_empty());
    assert_ne!(own_ip, ip_on(&docker, &holder, &net));

    // Every agent reaches the host's upstream through its own proxy.
    let url = format!(
        "http://{}:{}/hello.txt",
        gateway_of(&docker, &net),
        host_upstream()
    );
    let fetch = |i: usize| {
        run_in(
            &docker,
            &agent(i),
            &["timeout", "5", "wget", "-q", "-O", "-", &url],
        )
    };
    for i in 0..3 {
        let (code, out) = fetch(i);
        assert_eq!((code, out.trim()), (0, "upstream-ok"), "agent {i}");
    }

    // A stopped holder: it exits at once on SIGTERM, and the sidecars in
    // its namespace lose the way out (fail closed); a `wait` on their
    // bottle stops the agent and says why; the next launch starts the
    // holder again.
    let (waited_tx, waited) = std::sync::mpsc::channel();
    std::thread::spawn({
        let id = ids[0].clone();
        move || {
            let _ = waited_tx.send(DockerBackend::new().wait(WaitRequest {
                schema: 1,
                bottle_id: id,
                attach: false,
            }));
        }
    });
    // The wait is watching before the holder stops (its inspects are
    // done in far less).
    std::thread::sleep(Duration::from_millis(500));
    rt().block_on(docker.stop_container(
        &holder,
        Some(bollard::query_parameters::StopContainerOptions {
            t: Some(30),
            ..Default::default()
        }),
    ))
    .unwrap();
    let stopped = inspect_json(&docker, &holder);
    assert_eq!(stopped["State"]["ExitCode"], 0, "{}", stopped["State"]);
    let (code, out) = fetch(1);
    assert_ne!((code, out.trim()), (0, "upstream-ok"), "no way out now");
    let state = |id: &str| {
        backend
            .list(ListRequest::default())
            .unwrap()
            .into_iter()
            .find(|b| b.bottle_id == id)
            .map(|b| b.state)
    };
    assert_eq!(state(&ids[1]).as_deref(), Some("broken"), "`bottle ls`");
    assert_eq!(
        state(&ids[2]).as_deref(),
        Some("running"),
        "its own namespace"
    );
    let report = waited
        .recv_timeout(Duration::from_secs(30))
        .expect("`wait` went on after the proxy's network was gone")
        .unwrap();
    let reason = report.reason.unwrap_or_default();
    assert!(
        reason.contains("lost its network") && reason.contains(&holder),
        "{reason}"
    );
    assert_ne!(report.exit_code, 0);
    assert_eq!(inspect_json(&docker, &agent(0))["State"]["Running"], false);
    backend.launch(later).unwrap();
    assert_eq!(network_owner(&docker, &egress(3)), holder);
    assert_eq!(inspect_json(&docker, &holder)["State"]["Running"], true);
    let (code, out) = fetch(3);
    assert_eq!((code, out.trim()), (0, "upstream-ok"), "after the restart");
    for id in &ids {
        remove(&backend, id);
        assert_eq!(leftovers(&docker, id), Vec::<String>::new());
    }
}

#[test]
fn a_holder_on_a_named_network_goes_with_its_last_sidecar() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let net = format!("bbtest-named-{}", unique_id("n"));
    rt().block_on(
        docker.create_network(bollard::models::NetworkCreateRequest {
            name: net.clone(),
            labels: Some(HashMap::from([(TEST_LABEL.to_string(), "1".to_string())])),
            ..Default::default()
        }),
    )
    .unwrap();
    struct Net(String);
    impl Drop for Net {
        // A failed test may leave the holder, which would keep the network.
        fn drop(&mut self) {
            let on = format!("network={}", self.0);
            let holders = Command::new("docker")
                .args(["ps", "-aq", "--filter", &on])
                .args(["--filter", "label=bot-bottle.role=egress-namespace"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for holder in holders.split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", holder]).output();
            }
            let _ = Command::new("docker")
                .args(["network", "rm", &self.0])
                .output();
        }
    }
    let _net = Net(net.clone());
    let on_net = || {
        rt().block_on(docker.list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("network".to_string(), vec![net.clone()])])),
            ..Default::default()
        })))
        .unwrap()
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.first().cloned()))
        .collect::<Vec<_>>()
    };
    // A launch that fails after its holder was made leaves it neither.
    let mut failing = spec(&docker, "namedfail", &["true"]);
    failing.agent.image = "bot-bottle-test/not-here:1".into();
    failing.backend_options = serde_json::json!({"egress_network": net, "pull": false});
    let failing_id = failing.bottle_id.clone();
    assert!(backend.launch(failing).is_err());
    assert_eq!(leftovers(&docker, &failing_id), Vec::<String>::new());
    assert_eq!(on_net(), Vec::<String>::new(), "left on {net}");
    let mut specs = [
        spec(&docker, "named1", &["sleep", "300"]),
        spec(&docker, "named2", &["sleep", "300"]),
    ];
    for s in &mut specs {
        s.backend_options = serde_json::json!({"egress_network": net});
    }
    let ids: Vec<String> = specs.iter().map(|s| s.bottle_id.clone()).collect();
    let _cleanup = Cleanup::new(&[&ids[0], &ids[1]]);
    // Both at once, with no holder yet: they race to make it, and Docker
    // gives its name to one; the other waits for that one.
    launch_all_at_once(specs);
    let holder = network_owner(&docker, &format!("{}-egress", ids[0]));
    assert_eq!(
        network_owner(&docker, &format!("{}-egress", ids[1])),
        holder
    );
    assert_eq!(
        shared_egress_network(&docker, &format!("{}-egress", ids[0])),
        net
    );
    let holder_exists = || {
        rt().block_on(docker.inspect_container(&holder, None::<InspectContainerOptions>))
            .is_ok()
    };
    // The first bottle's teardown leaves it for the second…
    remove(&backend, &ids[0]);
    assert!(holder_exists(), "{holder} went while a sidecar named it");
    let url = format!("http://{}:{}/", gateway_of(&docker, &net), host_upstream());
    let (code, out) = run_in(
        &docker,
        &format!("{}-agent", ids[1]),
        &["timeout", "5", "wget", "-q", "-O", "-", &url],
    );
    assert_eq!(
        (code, out.trim()),
        (0, "upstream-ok"),
        "the second bottle's way out"
    );
    // …and the last one's removes it: the user's network is free again.
    remove(&backend, &ids[1]);
    assert!(!holder_exists(), "{holder} outlived its last sidecar");
    let removed = rt().block_on(docker.remove_network(&net));
    assert!(
        removed.is_ok(),
        "the named network is still in use: {removed:?}"
    );
}

#[test]
fn first_launches_racing_for_the_shared_network_end_up_on_one() {
    let docker = docker_or_skip!();
    // Needs a machine with no shared egress network yet: no other test of
    // this binary may launch meanwhile, and gc removes an unused one.
    let _g = GLOBAL.write().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let shared_networks = || {
        rt().block_on(docker.list_networks(Some(ListNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec!["bot-bottle.role=egress-network".to_string()],
            )])),
        })))
        .unwrap()
        .into_iter()
        .filter_map(|n| n.name)
        .collect::<Vec<_>>()
    };
    gc(&backend, false);
    let before = shared_networks();
    if !before.is_empty() {
        let why =
            format!("a shared egress network in use by a bottle outside this test: {before:?}");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but {why}");
        }
        eprintln!("skipping: {why}");
        return;
    }
    let specs: Vec<LaunchSpec> = (0..4)
        .map(|i| spec(&docker, &format!("netrace{i}"), &["sleep", "300"]))
        .collect();
    let ids: Vec<String> = specs.iter().map(|s| s.bottle_id.clone()).collect();
    let _cleanup = Cleanup::new(&ids.iter().map(String::as_str).collect::<Vec<_>>());
    // All at once: each finds no network; they take turns at making one
    // (a lock of this machine's), so one is made and all use it.
    launch_all_at_once(specs);
    let used: std::collections::BTreeSet<String> = ids
        .iter()
        .map(|id| shared_egress_network(&docker, &format!("{id}-egress")))
        .collect();
    assert_eq!(used.len(), 1, "the racing bottles use {used:?}");
    assert_eq!(
        shared_networks(),
        used.iter().cloned().collect::<Vec<_>>(),
        "launches from one machine made one network, not one each"
    );
    // (Launches from elsewhere could still make one each; gc would take
    // the unused ones and keep this one.)
    gc(&backend, false);
    assert_eq!(
        shared_networks(),
        used.into_iter().collect::<Vec<_>>(),
        "gc after the race"
    );
    for id in &ids {
        remove(&backend, id);
    }
}

#[test]
fn tty_bottles_from_a_saved_image_archive() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let backend = DockerBackend::new();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("busybox.tar");
    let image = busybox_image(&docker);
    let bytes = rt()
        .block_on(docker.export_image(image).try_collect::<Vec<_>>())
        .unwrap()
        .concat();
    std::fs::write(&archive, bytes).unwrap();

    let mut s = spec(&docker, "tty", &["sh", "-c", "test -t 1 && exit 4; exit 5"]);
    s.agent.image = archive.to_string_lossy().into_owned();
    s.agent.tty = true;
    s.agent.interactive = true;
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    let handle = backend.launch(s).unwrap();
    assert_eq!(handle.details["agent_image"], image);
    let report = backend
        .wait(WaitRequest {
            schema: 1,
            bottle_id: id.clone(),
            attach: true,
        })
        .unwrap();
    assert_eq!(report.exit_code, 4, "the agent has a terminal");
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}

#[test]
fn check_reports_a_live_daemon() {
    let _docker = docker_or_skip!();
    let report = DockerBackend::new().check(CheckRequest::default()).unwrap();
    let daemon = report
        .findings
        .iter()
        .find(|f| f.subject == "docker daemon")
        .unwrap();
    assert_eq!(daemon.severity, Severity::Ok, "{daemon:?}");
    assert!(daemon.message.contains("API"), "{daemon:?}");
    let gvisor = report
        .findings
        .iter()
        .find(|f| f.subject == "gvisor")
        .unwrap();
    assert!(gvisor.severity == Severity::Ok || gvisor.hint.is_some());
}

fn assert_unreachable(err: &PluginError, host: &str) {
    assert!(
        err.message
            .starts_with(&format!("cannot reach the Docker daemon at {host}: ")),
        "{err:?}"
    );
    let hint = err.hint.as_deref().unwrap();
    assert!(
        hint.contains("dockerd") && hint.contains("DOCKER_HOST"),
        "{hint}"
    );
}

/// Needs no daemon: a dead socket is one clear error, from every operation.
#[test]
fn a_dead_daemon_is_one_clear_error() {
    let host = "unix:///nonexistent/bot-bottle-test/docker.sock";
    let backend = DockerBackend::with_docker_host(host);
    let mut s = spec_without_daemon();
    s.bottle_id = "bb-test-dead".into();
    assert_unreachable(&backend.launch(s).unwrap_err(), host);
    assert_unreachable(&backend.list(ListRequest::default()).unwrap_err(), host);
    let report = backend.check(CheckRequest::default()).unwrap();
    assert_eq!(report.findings[0].severity, Severity::Error);
    assert!(report.findings[0].message.contains(host));

    // The same through DOCKER_HOST, in a child process so that no other
    // test sees the variable.
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dead_daemon_from_env_child",
            "--ignored",
            "--nocapture",
        ])
        .env("DOCKER_HOST", host)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
#[ignore = "run by a_dead_daemon_is_one_clear_error with DOCKER_HOST set"]
fn dead_daemon_from_env_child() {
    let host = std::env::var("DOCKER_HOST").expect("DOCKER_HOST set by the parent test");
    let err = DockerBackend::new()
        .launch(spec_without_daemon())
        .unwrap_err();
    assert_unreachable(&err, &host);
}

fn spec_without_daemon() -> LaunchSpec {
    LaunchSpec {
        schema: 1,
        bottle_id: "bb-test-nodaemon".into(),
        bottle_name: "nodaemon".into(),
        agent: AgentLaunch {
            image: BUSYBOX_IMAGE.into(),
            command: vec!["true".into()],
            workdir: "/".into(),
            ..Default::default()
        },
        egress: EgressLaunch {
            program: "/nonexistent".into(),
            config: Secret::new("{}"),
            listen_port: PORT,
            ca_cert_pem: String::new(),
        },
        backend_options: serde_json::Value::Null,
        labels: BTreeMap::new(),
    }
}

/// Interactive check for a real terminal: `printf 'hello\r' | script -qec
/// "cargo test -p bot-bottle-plugin-docker --test docker_backend --
/// --ignored --nocapture interactive_tty" /dev/null` prints `got:hello`.
#[test]
#[ignore = "needs a terminal on stdin (run under `script`)"]
fn interactive_tty() {
    let docker = docker_or_skip!();
    let backend = DockerBackend::new();
    let mut s = spec(
        &docker,
        "itty",
        &["sh", "-c", "read x; echo got:$x; exit 4"],
    );
    s.agent.tty = true;
    s.agent.interactive = true;
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    backend.launch(s).unwrap();
    let report = backend
        .wait(WaitRequest {
            schema: 1,
            bottle_id: id.clone(),
            attach: true,
        })
        .unwrap();
    assert_eq!(report.exit_code, 4);
}

/// A bottle whose agent runs under gVisor. Needs a runsc runtime registered
/// with dockerd under the name in `BOT_BOTTLE_RUNSC_RUNTIME` (default
/// `runsc`); skips, saying why, where there is none. `.ci/run` installs and
/// registers it, so under `CI=true` a missing runtime fails.
#[test]
fn a_bottle_under_runsc() {
    let docker = docker_or_skip!();
    let _g = GLOBAL.read().unwrap_or_else(|e| e.into_inner());
    let runtime = std::env::var("BOT_BOTTLE_RUNSC_RUNTIME").unwrap_or_else(|_| "runsc".into());
    let runtimes = rt()
        .block_on(docker.info())
        .unwrap()
        .runtimes
        .unwrap_or_default();
    if !runtimes.contains_key(&runtime) {
        let why = format!(
            "dockerd has no runtime `{runtime}` \
             (apt-get install runsc, register it in /etc/docker/daemon.json, reload dockerd; \
             BOT_BOTTLE_RUNSC_RUNTIME names another; .ci/run does all three)"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true but {why}");
        }
        eprintln!("skipping a_bottle_under_runsc: {why}");
        return;
    }
    let backend = DockerBackend::new();
    let mut s = spec(
        &docker,
        "runsc",
        &[
            "sh",
            "-c",
            &format!(
                "cat /proc/version; printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 bot-bottle-egress {PORT}; exit 5"
            ),
        ],
    );
    s.backend_options = serde_json::json!({ "runtime": runtime });
    let id = s.bottle_id.clone();
    let _cleanup = Cleanup::new(&[&id]);
    backend.launch(s).unwrap();
    let agent = inspect_json(&docker, &format!("{id}-agent"));
    assert_eq!(agent["HostConfig"]["Runtime"], runtime.as_str());
    // The sidecar is ours and runs under the default runtime.
    let egress = inspect_json(&docker, &format!("{id}-egress"));
    assert_ne!(egress["HostConfig"]["Runtime"], runtime.as_str());
    let report = backend
        .wait(WaitRequest {
            schema: 1,
            bottle_id: id.clone(),
            attach: false,
        })
        .unwrap();
    assert_eq!(report.exit_code, 5);
    let logs = container_logs(&docker, &format!("{id}-agent"));
    // gVisor's kernel reports itself as Linux 4.4.0, whatever the host runs.
    assert!(logs.contains("Linux version 4.4.0"), "{logs}");
    // The sidecar answered, over the internal network.
    assert!(logs.contains("fake-egress"), "{logs}");
    remove(&backend, &id);
    assert_eq!(leftovers(&docker, &id), Vec::<String>::new());
}
