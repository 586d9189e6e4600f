//! Shared helpers for the end-to-end tests: the real `bottle` binary and
//! plugins, a real Docker engine, locally built images and a demo upstream
//! on its own Docker network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, Once};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The cargo target profile dir these tests were built into.
fn profile_dir() -> PathBuf {
    // target/<profile>/deps/<test binary>
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The demo upstream binary (cargo builds a package's binaries before its
/// integration tests).
pub fn demo_upstream_exe() -> PathBuf {
    profile_dir().join("demo-upstream")
}

/// Runs `cargo build ARGS` for this workspace into the target dir these
/// tests run from (same profile). `cargo test` builds neither another
/// package's binary nor cdylibs, and cargo has released the target-dir lock
/// by the time tests run.
pub fn cargo_build(args: &[&str]) {
    let profile = profile_dir();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "--manifest-path"])
        .arg(repo_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile.parent().unwrap())
        .args(args);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("running cargo").success(),
        "cargo build {args:?} failed"
    );
}

static BUILD: Once = Once::new();

/// Builds `bottle` and the in-tree plugins it needs and returns its path.
pub fn bottle_exe() -> PathBuf {
    BUILD.call_once(|| {
        cargo_build(&[
            "-p",
            "bot-bottle",
            "-p",
            "bot-bottle-plugin-generic",
            "-p",
            "bot-bottle-plugin-docker",
        ])
    });
    profile_dir().join("bottle")
}

/// `bottle` with an environment isolated from the caller's plugin dirs.
pub fn bottle(data_home: &Path) -> Command {
    let mut cmd = Command::new(bottle_exe());
    cmd.env_remove("BOT_BOTTLE_PLUGIN_PATH")
        .env_remove("RUST_LOG")
        .env("XDG_DATA_HOME", data_home)
        .env("NO_COLOR", "1");
    cmd
}

/// (exit code, stdout, stderr). A death by signal is reported as 128+N.
pub fn output(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.output().expect("running a command");
    (
        exit_code(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An exit status as a shell would report it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `docker ARGS`, returning stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let (code, out, err) = output(Command::new("docker").args(args));
    assert_eq!(code, 0, "docker {args:?} failed: {err}");
    out
}

/// Whether a Docker engine answers. In CI a missing engine is a failure;
/// elsewhere the caller skips, and this prints why.
pub fn docker_available(test: &str) -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: no Docker engine answers, and CI=true: start dockerd (see .ci/run)");
        }
        eprintln!("skipping {test}: no Docker engine answers (start dockerd to run it)");
    }
    ok
}

static IMAGES: Once = Once::new();

/// The test agent image: a shell and a few real host tools (curl, getent,
/// env, stty…) with their libraries, user `agent`.
pub const AGENT_IMAGE: &str = "bot-bottle-test/agent";
/// The demo upstream's image.
pub const UPSTREAM_IMAGE: &str = "bot-bottle-test/upstream";

/// Builds the two test images once per test process.
pub fn ensure_images() {
    IMAGES.call_once(|| {
        let script = repo_root().join("scripts/image-from-binaries.sh");
        let run = |args: &[&str]| {
            let (code, out, err) = output(Command::new(&script).args(args));
            assert_eq!(code, 0, "building an image failed: {out}{err}");
        };
        run(&[
            AGENT_IMAGE,
            "curl",
            "cat",
            "env",
            "id",
            "ls",
            "getent",
            "sleep",
            "grep",
            "find",
            "stty",
            "seq",
        ]);
        run(&[UPSTREAM_IMAGE, demo_upstream_exe().to_str().unwrap()]);
    });
}

static NET_LOCK: Mutex<()> = Mutex::new(());

/// A demo HTTPS API on a Docker network of its own, reachable as `host`.
#[derive(Debug)]
pub struct Upstream {
    /// The network (the bottle's sidecar joins it as its egress network).
    pub network: String,
    /// The container.
    pub container: String,
    /// The CA that signed its certificate.
    pub ca_pem: PathBuf,
    /// Its address on the network.
    pub ip: String,
    _certs: tempfile::TempDir,
}

impl Upstream {
    /// Starts one, named after `tag`.
    pub fn start(tag: &str, host: &str) -> Self {
        ensure_images();
        let certs = tempfile::tempdir().unwrap();
        let (code, _, err) = output(
            Command::new(demo_upstream_exe())
                .args(["certs", "--dir"])
                .arg(certs.path())
                .args(["--host", host]),
        );
        assert_eq!(code, 0, "{err}");
        let suffix = format!("{:08x}", rand_u32());
        let network = format!("bbtest-{tag}-{suffix}");
        let container = format!("bbtest-{tag}-api-{suffix}");
        {
            let _guard = NET_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            docker(&[
                "network",
                "create",
                "--label",
                "bot-bottle-test=1",
                &network,
            ]);
        }
        let mount = format!("{}:/certs:ro", certs.path().display());
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--label",
            "bot-bottle-test=1",
            "--network",
            &network,
            "--network-alias",
            host,
            "-v",
            &mount,
            UPSTREAM_IMAGE,
            "/bin/demo-upstream",
            "serve",
            "--dir",
            "/certs",
        ]);
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &container,
        ])
        .trim()
        .to_string();
        Upstream {
            network,
            container,
            ca_pem: certs.path().join("ca.pem"),
            ip,
            _certs: certs,
        }
    }

    /// The first request it received for `path`; panics, listing what it
    /// did receive, when there is none.
    pub fn request_to(&self, path: &str) -> serde_json::Value {
        let reqs = self.requests();
        reqs.iter()
            .find(|r| r["path"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("upstream saw no request for {path}: {reqs:?}"))
    }

    /// Every request it received, one JSON value each.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        let (_, out, _) = output(Command::new("docker").args(["logs", &self.container]));
        out.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // Everything still on the network goes with it: the upstream, the
        // holder of the namespace the sidecars on it share, and the bottle
        // a failed test kept (`--keep`): its sidecar (in the holder's
        // namespace, or on the network) and its agent (on no network) go
        // by the bottle id.
        let docker = |args: &[&str]| {
            Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let on_network = format!("network={}", self.network);
        let bottles = docker(&[
            "ps",
            "-a",
            "--filter",
            &on_network,
            "--format",
            "{{.Label \"bot-bottle.id\"}}",
        ]);
        let holders = docker(&[
            "ps",
            "-a",
            "--filter",
            &on_network,
            "--filter",
            "label=bot-bottle.role=egress-namespace",
            "--format",
            "{{.Names}}",
        ]);
        let mut bottles: Vec<String> = bottles.split_whitespace().map(String::from).collect();
        for holder in holders.split_whitespace() {
            let naming = format!("label=bot-bottle.egress-ns={holder}");
            bottles.extend(
                docker(&[
                    "ps",
                    "-a",
                    "--filter",
                    &naming,
                    "--format",
                    "{{.Label \"bot-bottle.id\"}}",
                ])
                .split_whitespace()
                .map(String::from),
            );
        }
        let mut doomed = vec![self.container.clone()];
        doomed.extend(holders.split_whitespace().map(String::from));
        for id in &bottles {
            let of_bottle = format!("label=bot-bottle.id={id}");
            doomed.extend(
                docker(&["ps", "-aq", "--filter", &of_bottle])
                    .split_whitespace()
                    .map(String::from),
            );
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&doomed)
            .output();
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
    }
}

/// A random u32 without another dependency.
pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

/// Containers, networks and volumes labelled with this bottle name.
pub fn leftovers(bottle_name: &str) -> Vec<String> {
    let label = format!("label=bot-bottle.name={bottle_name}");
    let mut found = Vec::new();
    for (kind, args) in [
        ("container", vec!["ps", "-a", "-q", "--filter", &label]),
        ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
    ] {
        found.extend(docker(&args).lines().map(|id| format!("{kind} {id}")));
    }
    found
}

/// The native agent CLI named by `var` (`BOT_BOTTLE_CODEX_BIN`,
/// `BOT_BOTTLE_CLAUDE_BIN`; `scripts/fetch-agent-clis.sh` fetches them). In
/// CI a missing CLI is a failure; elsewhere the test skips and says why.
pub fn agent_cli(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: {var} is not set and CI=true; .ci/run sets it with scripts/fetch-agent-clis.sh")
        }
        None => {
            eprintln!(
                "skipping {test}: set {var} (scripts/fetch-agent-clis.sh DIR fetches the CLIs)"
            );
            None
        }
    }
}
