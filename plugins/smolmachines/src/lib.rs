//! The `smolmachines` backend: each bottle is a smol machines microVM whose
//! only network is the host-side egress proxy.
//!
//! * The VM is driven through the `smolmachines` SDK against an installed
//!   engine ([`engine`]); nothing is ever downloaded.
//! * One host process per bottle, the **gate** ([`gate`], binary
//!   `bot-bottle-smolmachines-gate`), runs the egress proxy and the SMOLICPT
//!   interceptor [`adapter`], and runs the agent. It outlives
//!   `bottle run --detach`; `bottle stop/rm/gc` end it. It gets the proxy
//!   config and the per-launch interceptor token over a pipe, never a file
//!   or a command line.
//! * The machine is started with `--egress-interceptor` (the SDK passes the
//!   token in the engine's environment only): every guest TCP flow reaches
//!   the adapter, other UDP than the engine's DNS is denied by the engine,
//!   and the engine's DNS answers NXDOMAIN to every guest query
//!   ([`close_guest_dns`]).
//! * Records for `bottle ls/logs/gc` live in [`state`].
//!
//! ```toml
//! [backends.smolmachines]
//! engine = "/path/to/smolvm"        # optional; else SMOLVM, the pip wheel, PATH
//! proxy_address = "198.18.0.1:3128" # optional; what the guest's HTTPS_PROXY names
//! ```

pub mod adapter;
pub mod attach;
pub mod engine;
pub mod gate;
pub mod memory;
pub mod state;

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bot_bottle_plugin_api::{
    export_backend, AgentLaunch, Backend, BottleHandle, BottleRef, BottleStatus, CheckReport,
    CheckRequest, EgressUpdate, ExecRequest, ExitReport, FileEncoding, Finding, LaunchSpec,
    ListRequest, LogsRequest, PluginError, PluginInfo, RemoveReport, RemoveRequest, WaitRequest,
};
use serde::Deserialize;

use crate::engine::{Engine, Probe};
use crate::gate::GateSetup;
use crate::state::{BottleRecord, ExitRecord, Paths};

/// The gate binary's file name.
pub const GATE_BIN: &str = "bot-bottle-smolmachines-gate";
/// Label every machine of ours carries (with the bottle id and name).
pub const BACKEND_LABEL: (&str, &str) = ("bot-bottle.backend", "smolmachines");
/// Default address of the proxy as the guest sees it: an address from the
/// benchmarking range that nothing real answers on; the adapter recognises
/// it and splices to the proxy on host loopback.
pub const DEFAULT_PROXY_ADDRESS: &str = "198.18.0.1:3128";
/// Label naming the records root a machine belongs to: `ls` and `gc` only
/// consider machines of their own root (tests use a private root and must
/// never reclaim a user's bottles).
pub const RECORDS_LABEL: &str = "bot-bottle.records";

/// Whether a machine is ours and belongs to the current records root.
pub fn ours(m: &MachineRow) -> bool {
    m.labels.get(BACKEND_LABEL.0).map(String::as_str) == Some(BACKEND_LABEL.1)
        && m.labels
            .get(RECORDS_LABEL)
            .is_none_or(|r| Path::new(r) == state::root())
}

/// The machine's idle workload; the agent runs through exec.
const IDLE_WORKLOAD: &[&str] = &["sleep", "2147483647"];

/// `[backends.smolmachines]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The engine binary (or its directory).
    #[serde(default)]
    pub engine: Option<PathBuf>,
    /// What the guest's proxy variables name.
    #[serde(default)]
    pub proxy_address: Option<SocketAddr>,
}

impl Options {
    fn parse(v: &serde_json::Value) -> Result<Self, PluginError> {
        PluginError::options(v, "[backends.smolmachines]").map_err(|e| {
            e.with_hint("accepted keys: `engine` (path to smolvm), `proxy_address` (ip:port)")
        })
    }
}

/// The backend.
#[derive(Debug, Default)]
pub struct SmolMachines;

fn engine_err(e: engine::NotFound) -> PluginError {
    PluginError::unavailable(e.message).with_hint(engine::INSTALL_HINT)
}

/// Finds the gate binary: `BOT_BOTTLE_SMOL_GATE`, beside `near` (the
/// `bottle` binary), beside this process, beside this plugin library, on
/// `PATH`.
pub fn find_gate(near: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BOT_BOTTLE_SMOL_GATE") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = near.and_then(Path::parent) {
        dirs.push(d.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(dd) = d.parent() {
                dirs.push(dd.to_path_buf()); // target/<profile>/deps/<test>
            }
        }
    }
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        if let Some(lib) = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("bot_bottle_plugin_smolmachines"))
        {
            if let Some(d) = Path::new(lib).parent() {
                dirs.push(d.to_path_buf());
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(GATE_BIN))
        .find(|p| p.is_file())
}

/// A running gate, as launch holds it until the machine is up.
#[derive(Debug)]
pub struct GateChild {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    log: PathBuf,
    /// The adapter's address.
    pub adapter: SocketAddr,
}

impl GateChild {
    /// Starts the gate for `paths` and hands it `setup`.
    pub fn spawn(
        gate_bin: &Path,
        engine: &Engine,
        paths: &Paths,
        setup: &GateSetup,
    ) -> Result<Self, PluginError> {
        let log = state::create_private_file(&paths.gate_log())
            .map_err(|e| PluginError::internal(format!("{}: {e}", paths.gate_log().display())))?;
        let mut cmd = Command::new(gate_bin);
        cmd.arg("--state-dir")
            .arg(paths.dir())
            .env_clear()
            .envs(Engine::passthrough_env())
            .envs(engine.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal goes to
            // `bottle`, which tears down in order; the gate is ended by us.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            PluginError::unavailable(format!("cannot start {}: {e}", gate_bin.display()))
        })?;
        let mut line = serde_json::to_string(setup)
            .map_err(|e| PluginError::internal(format!("encode the gate setup: {e}")))?;
        line.push('\n');
        let stdin = child.stdin.as_mut().expect("piped stdin");
        let sent = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush());
        drop(line);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            lines,
            log: paths.gate_log(),
            adapter: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        if let Err(e) = sent {
            me.kill();
            return Err(PluginError::internal(format!(
                "hand the gate its setup: {e}"
            )));
        }
        let ready = me
            .lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_default();
        match ready
            .trim()
            .strip_prefix("ready ")
            .and_then(|a| a.parse().ok())
        {
            Some(adapter) => {
                me.adapter = adapter;
                Ok(me)
            }
            None => {
                let why = me.last_words();
                me.kill();
                Err(PluginError::internal(format!(
                    "the egress gate did not start: {why}"
                )))
            }
        }
    }

    fn last_words(&self) -> String {
        engine::last_line(&std::fs::read(&self.log).unwrap_or_default())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Tells the gate to launch the machine and the agent, and waits for
    /// the machine to be up (bounded by the engine's own boot timeout).
    pub fn go(mut self) -> Result<(), PluginError> {
        let mut stdin = self.child.stdin.take().expect("piped stdin");
        stdin
            .write_all(b"go\n")
            .and_then(|_| stdin.flush())
            .map_err(|e| PluginError::internal(format!("start the machine: {e}")))?;
        drop(stdin);
        match self.lines.recv_timeout(Duration::from_secs(600)) {
            Ok(l) if l.trim() == "started" => Ok(()),
            Ok(l) => {
                let msg = l
                    .trim()
                    .strip_prefix("failed ")
                    .unwrap_or(l.trim())
                    .to_string();
                let _ = self.child.wait();
                Err(PluginError::unavailable(msg).with_hint(
                    "microVM bottles need hardware KVM; `bottle doctor` runs a boot probe. \
                     On a host where guests cannot boot, use backend = \"docker\"",
                ))
            }
            Err(_) => {
                let why = self.last_words();
                self.kill();
                Err(PluginError::internal(format!(
                    "the egress gate ended during launch: {why}"
                )))
            }
        }
    }
}

/// The proxy variables the agent gets.
pub fn proxy_env(alias: SocketAddr) -> Vec<(String, String)> {
    let url = format!("http://{alias}");
    let mut v = Vec::new();
    for k in [
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        v.push((k.to_string(), url.clone()));
    }
    for k in ["NO_PROXY", "no_proxy"] {
        v.push((k.to_string(), "localhost,127.0.0.1,::1".to_string()));
    }
    v
}

pub(crate) fn decode_file(f: &bot_bottle_plugin_api::SandboxFile) -> Result<Vec<u8>, PluginError> {
    match f.encoding {
        FileEncoding::Utf8 => Ok(f.contents.clone().into_bytes()),
        FileEncoding::Base64 => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(&f.contents)
                .map_err(|_| PluginError::invalid(format!("file {}: invalid base64", f.path)))
        }
    }
}

fn machine_name(bottle_id: &str) -> String {
    bottle_id.to_string()
}

/// The one name the engine's DNS filter admits: reserved (RFC 6761
/// `.invalid`), so no real lookup ever matches it and every guest query is
/// answered NXDOMAIN by the engine itself.
pub const DNS_ADMITS_NOTHING: &str = "none.bot-bottle.invalid";

/// Closes guest DNS as far as the engine allows (smolvm 1.32, virtio-net):
///
/// * The engine's gateway answers every guest query to port 53 — UDP or
///   TCP, whatever address the guest sent it to — itself, and forwards it
///   to the upstream resolver (`--dns`, else the host's) only when its
///   allow-host filter admits the name. The filter here admits only
///   [`DNS_ADMITS_NOTHING`], so queries never leave the engine: the guest
///   gets NXDOMAIN (names are resolved by the proxy on the host).
/// * The filter would also confine TCP to the addresses it learned from
///   admitted answers (none), which could stop flows before they reach the
///   interceptor; `0.0.0.0/0` and `::/0` keep every TCP flow going to the
///   interceptor, which decides them. Under the interceptor the engine
///   denies every other datagram.
/// * virtio-net is pinned: that is the network stack whose DNS path this
///   describes (the TSI path handles DNS in libkrun instead).
/// * `--dns 127.0.0.1` stays as a second fence: the guest's resolv.conf
///   names its own loopback, and were a query ever forwarded, the upstream
///   would be host loopback, not the host's resolver.
pub fn close_guest_dns(b: smolmachines::MachineBuilder) -> smolmachines::MachineBuilder {
    b.network_backend(smolmachines::NetworkBackend::VirtioNet)
        .dns(std::net::Ipv4Addr::LOCALHOST)
        .allow_host_pattern(DNS_ADMITS_NOTHING)
        .allow_cidr("0.0.0.0/0")
        .allow_cidr("::/0")
}

/// Builds the machine for a spec (not yet created).
pub fn machine_builder(spec: &LaunchSpec, alias: SocketAddr) -> smolmachines::MachineBuilder {
    let mut labels = spec.labels.clone();
    labels.insert(RECORDS_LABEL.into(), state::root().display().to_string());
    machine_builder_for(
        &machine_name(&spec.bottle_id),
        &spec.bottle_id,
        &spec.bottle_name,
        &spec.agent,
        &labels,
        alias,
    )
}

/// Builds the machine for one bottle's agent (not yet created).
pub fn machine_builder_for(
    machine: &str,
    bottle_id: &str,
    bottle_name: &str,
    a: &AgentLaunch,
    labels: &std::collections::BTreeMap<String, String>,
    alias: SocketAddr,
) -> smolmachines::MachineBuilder {
    let image = {
        let p = Path::new(&a.image);
        if p.is_file() {
            // A `docker save` archive: the engine takes its path.
            p.canonicalize()
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        } else {
            a.image.clone()
        }
    };
    let mut b = smolmachines::Machine::builder(machine)
        .image(image)
        .network(true)
        .command(IDLE_WORKLOAD.iter().copied())
        .label(BACKEND_LABEL.0, BACKEND_LABEL.1)
        .label("bot-bottle.id", bottle_id)
        .label("bot-bottle.name", bottle_name);
    b = close_guest_dns(b);
    for (k, v) in labels {
        b = b.label(k, v);
    }
    for (k, v) in &a.env {
        b = b.env(k, v);
    }
    for (k, v) in proxy_env(alias) {
        b = b.env(k, v);
    }
    if !a.workdir.is_empty() {
        b = b.workdir(&a.workdir);
    }
    for m in &a.mounts {
        let mut mount = smolmachines::Mount::new(m.host.display().to_string(), m.sandbox.clone());
        if !m.writable {
            mount = mount.read_only();
        }
        b = b.mount(mount);
    }
    if let Some(c) = a.resources.cpus {
        b = b.cpus(c.ceil().clamp(1.0, 255.0) as u8);
    }
    if let Some(m) = a.resources.memory_bytes {
        b = b.memory_mib(u32::try_from((m / (1024 * 1024)).max(64)).unwrap_or(u32::MAX));
    }
    b
}

/// The manifest's limits this backend cannot enforce, each as a warning
/// for the launch. `pids`: smolvm (1.32) has no process limit for a machine
/// or an exec (no flag on `machine create`/`exec`, no SDK field), and the
/// agent runs as root in a VM-grade container that could lift any limit
/// set from inside, so the limit is not applied at all.
pub fn unenforced_limits(r: &bot_bottle_plugin_api::Resources) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = r.pids {
        out.push(format!(
            "resources.pids = {p} is NOT enforced on the smolmachines backend: the engine has no \
             process limit, so the agent may start any number of processes inside its microVM \
             (bounded only by its memory and CPUs). Use backend = \"docker\" where the limit must hold"
        ));
    }
    out
}

/// One row of `smolvm machine ls --json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineRow {
    /// Name.
    pub name: String,
    /// `created`, `running`, `stopped`, …
    #[serde(default)]
    pub state: String,
    /// Image, when it boots one.
    #[serde(default)]
    pub image: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Every machine the engine knows, read with a clean environment (no SDK
/// call from this process: it would hand the host's env to the engine).
pub fn machines(engine: &Engine) -> Result<Vec<MachineRow>, String> {
    let out = engine
        .command()
        .args(["machine", "ls", "--json"])
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("run {}: {e}", engine.cli.display()))?;
    if !out.status.success() {
        return Err(engine::last_line(&out.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("machine ls: {e}"))?;
    let rows = v
        .as_array()
        .cloned()
        .or_else(|| v.get("machines").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default();
    Ok(rows
        .into_iter()
        .filter_map(|r| serde_json::from_value(r).ok())
        .collect())
}

impl SmolMachines {
    fn engine(opts: &Options) -> Result<Engine, PluginError> {
        engine::discover(opts.engine.as_deref()).map_err(engine_err)
    }

    /// The engine for management calls (no manifest at hand).
    fn engine_any() -> Option<Engine> {
        engine::discover(None).ok()
    }

    fn launch_inner(
        &self,
        spec: &LaunchSpec,
        engine: &Engine,
        alias: SocketAddr,
        paths: &Paths,
    ) -> Result<(), PluginError> {
        let gate_bin = find_gate(Some(&spec.egress.program)).ok_or_else(|| {
            PluginError::unavailable(format!("the egress gate binary `{GATE_BIN}` was not found"))
                .with_hint("build it (`cargo build -p bot-bottle-plugin-smolmachines`) so it sits beside `bottle`, or set BOT_BOTTLE_SMOL_GATE")
        })?;
        state::write_json(
            &paths.bottle(),
            &BottleRecord {
                bottle_id: spec.bottle_id.clone(),
                name: spec.bottle_name.clone(),
                machine: machine_name(&spec.bottle_id),
                image: spec.agent.image.clone(),
                created: adapter::rfc3339_now(),
            },
        )
        .map_err(|e| PluginError::internal(format!("write {}: {e}", paths.bottle().display())))?;

        let setup = GateSetup {
            bottle_id: spec.bottle_id.clone(),
            bottle_name: spec.bottle_name.clone(),
            machine: machine_name(&spec.bottle_id),
            config: spec.egress.config.expose().to_string(),
            proxy_alias: alias,
            agent: spec.agent.clone(),
            labels: {
                let mut l = spec.labels.clone();
                l.insert(RECORDS_LABEL.into(), state::root().display().to_string());
                l
            },
            memory_limit: None,
        };
        let gate = GateChild::spawn(&gate_bin, engine, paths, &setup)?;
        drop(setup);
        gate.go()
    }

    fn remove_one(&self, id: &str, engine: Option<&Engine>) -> Vec<String> {
        let mut removed = Vec::new();
        let paths = Paths::of(id);
        let name = state::read_json::<BottleRecord>(&paths.bottle())
            .map(|r| r.machine)
            .unwrap_or_else(|| machine_name(id));
        if state::stop_gate(&paths) {
            removed.push(format!("egress gate of {id}"));
        }
        if let Some(engine) = engine {
            match delete_machine(engine, &name) {
                Ok(true) => removed.push(format!("microVM {name}")),
                Ok(false) => {}
                Err(e) => tracing::warn!(machine = %name, error = %e, "cannot delete the microVM"),
            }
        }
        if paths.dir().is_dir() && std::fs::remove_dir_all(paths.dir()).is_ok() {
            removed.push(format!("records {}", paths.dir().display()));
        }
        removed
    }
}

/// Deletes machine `name` (stopping it first); `Ok(false)` when there was
/// none. Retried briefly: a VM process that just failed to boot may still
/// hold the machine for a moment.
pub fn delete_machine(engine: &Engine, name: &str) -> Result<bool, String> {
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(500 * attempt));
        }
        let out = engine
            .command()
            .args(["machine", "delete", "--name", name, "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("run {}: {e}", engine.cli.display()))?;
        if out.status.success() {
            return Ok(true);
        }
        last = engine::last_line(&out.stderr);
        if last.to_ascii_lowercase().contains("not found") {
            return Ok(false);
        }
    }
    Err(last)
}

fn follow_file(path: &Path, out: &mut dyn Write, done: &dyn Fn() -> bool) -> std::io::Result<()> {
    let mut pos = 0u64;
    loop {
        let finished = done();
        if let Ok(mut f) = std::fs::File::open(path) {
            f.seek(SeekFrom::Start(pos))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            pos += buf.len() as u64;
            out.write_all(&buf)?;
            out.flush()?;
        }
        if finished {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Backend for SmolMachines {
    fn info(&self) -> PluginInfo {
        PluginInfo::backend(
            "smolmachines",
            env!("CARGO_PKG_VERSION"),
            "smol machines microVMs; every guest TCP flow forced through the host-side egress proxy",
        )
    }

    fn check(&self, request: CheckRequest) -> Result<CheckReport, PluginError> {
        let mut findings = Vec::new();
        let opts = Options::parse(&request.options)?;
        let engine = match engine::discover(opts.engine.as_deref()) {
            Ok(e) => e,
            Err(e) => {
                findings.push(Finding::error(
                    "smolvm engine",
                    e.message,
                    engine::INSTALL_HINT,
                ));
                return Ok(CheckReport { findings });
            }
        };
        let version = engine.version();
        findings.push(Finding::ok(
            "smolvm engine",
            format!(
                "{} (found by {}), version {}",
                engine.cli.display(),
                engine.found_by,
                version.as_deref().unwrap_or("unknown")
            ),
        ));
        match find_gate(None) {
            Some(p) => findings.push(Finding::ok("egress gate", p.display().to_string())),
            None => findings.push(Finding::error(
                "egress gate",
                format!("`{GATE_BIN}` not found beside bottle, this plugin or on PATH"),
                "build it with `cargo build -p bot-bottle-plugin-smolmachines` or set BOT_BOTTLE_SMOL_GATE",
            )),
        }
        if let Err(e) = smolmachines::local_availability() {
            findings.push(Finding::error(
                "hypervisor",
                e.message().to_string(),
                "microVM bottles need hardware KVM (/dev/kvm, read-write); use backend = \"docker\" otherwise",
            ));
            return Ok(CheckReport { findings });
        }
        findings.push(Finding::ok("hypervisor", "/dev/kvm opens read-write"));
        match engine::boot_probe(&engine) {
            Probe::Boots { ms } => findings.push(Finding::ok(
                "guest boot",
                format!("a probe guest booted and answered an exec in {ms} ms"),
            )),
            Probe::NoBoot { reason } => findings.push(Finding::error(
                "guest boot",
                format!("guests do not boot here: {reason}"),
                "microVM bottles need hardware KVM (not a paravirtual /dev/kvm); as root the engine also needs \
                 SMOLVM_VM_UID_DROP=off or a kvm group on /dev/kvm. Use backend = \"docker\" on this host",
            )),
        }
        Ok(CheckReport { findings })
    }

    fn validate(&self, request: bot_bottle_plugin_api::ValidateRequest) -> Result<(), PluginError> {
        Options::parse(&request.backend_options).map(drop)
    }

    fn launch(&self, spec: LaunchSpec) -> Result<BottleHandle, PluginError> {
        let opts = Options::parse(&spec.backend_options)?;
        for w in unenforced_limits(&spec.agent.resources) {
            tracing::warn!(bottle = %spec.bottle_id, "{w}");
        }
        let engine = Self::engine(&opts)?;
        let alias: SocketAddr = opts
            .proxy_address
            .unwrap_or_else(|| DEFAULT_PROXY_ADDRESS.parse().expect("valid default"));
        let paths = Paths::of(&spec.bottle_id);
        paths
            .create()
            .map_err(|e| PluginError::internal(format!("create {}: {e}", paths.dir().display())))?;
        match self.launch_inner(&spec, &engine, alias, &paths) {
            Ok(()) => Ok(BottleHandle {
                bottle_id: spec.bottle_id.clone(),
                details: serde_json::json!({
                    "machine": machine_name(&spec.bottle_id),
                    "records": paths.dir(),
                    "proxy_address": alias,
                }),
            }),
            Err(e) => {
                let _ = self.remove_one(&spec.bottle_id, Some(&engine));
                Err(e)
            }
        }
    }

    fn list(&self, _request: ListRequest) -> Result<Vec<BottleStatus>, PluginError> {
        let ids = state::all();
        let engine = Self::engine_any();
        let machines: Vec<MachineRow> = match &engine {
            Some(e) => machines(e)
                .unwrap_or_default()
                .into_iter()
                .filter(ours)
                .collect(),
            None => vec![],
        };
        let mut out = Vec::new();
        for id in &ids {
            let paths = Paths::of(id);
            let rec: Option<BottleRecord> = state::read_json(&paths.bottle());
            let machine = machines
                .iter()
                .find(|m| m.labels.get("bot-bottle.id").map(String::as_str) == Some(id));
            let exited: Option<ExitRecord> = state::read_json(&paths.exit());
            let gate = state::gate_alive(&paths);
            let state = match (&exited, machine, gate) {
                (Some(_), _, _) => "exited".to_string(),
                (None, _, None) if paths.stopped().exists() => "stopped".to_string(),
                (None, Some(m), Some(_)) => m.state.as_str().to_string(),
                (None, Some(m), None) => format!("{} (egress gate gone)", m.state.as_str()),
                (None, None, _) => "broken".to_string(),
            };
            out.push(BottleStatus {
                bottle_id: id.clone(),
                name: rec.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
                backend: "smolmachines".into(),
                state,
                image: rec.as_ref().map(|r| r.image.clone()).unwrap_or_default(),
                created: rec.as_ref().map(|r| r.created.clone()).unwrap_or_default(),
                details: serde_json::json!({
                    "machine": machine.map(|m| m.name.clone()),
                    "gate_pid": gate,
                    "exit_code": exited.map(|e| e.exit_code),
                }),
            });
        }
        for m in &machines {
            let id = m.labels.get("bot-bottle.id").cloned().unwrap_or_default();
            if !ids.contains(&id) {
                out.push(BottleStatus {
                    bottle_id: id,
                    name: m.labels.get("bot-bottle.name").cloned().unwrap_or_default(),
                    backend: "smolmachines".into(),
                    state: format!("{} (no records)", m.state.as_str()),
                    image: m.image.clone().unwrap_or_default(),
                    created: String::new(),
                    details: serde_json::json!({ "machine": m.name }),
                });
            }
        }
        Ok(out)
    }

    fn stop(&self, request: BottleRef) -> Result<(), PluginError> {
        let paths = Paths::of(&request.bottle_id);
        let rec: Option<BottleRecord> = state::read_json(&paths.bottle());
        if rec.is_none() && !paths.dir().is_dir() {
            return Err(PluginError::not_found(format!(
                "no smolmachines bottle {}",
                request.bottle_id
            )));
        }
        if let Some(engine) = Self::engine_any() {
            let name = rec.map(|r| r.machine).unwrap_or(request.bottle_id.clone());
            let out = engine
                .command()
                .args(["machine", "stop", "--name", &name])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| PluginError::internal(format!("run {}: {e}", engine.cli.display())))?;
            let why = engine::last_line(&out.stderr).to_ascii_lowercase();
            if !out.status.success() && !why.contains("not running") && !why.contains("not found") {
                return Err(PluginError::internal(format!(
                    "stop the microVM {name}: {}",
                    engine::last_line(&out.stderr)
                )));
            }
        }
        let _ = std::fs::write(paths.stopped(), adapter::rfc3339_now());
        state::stop_gate(&paths);
        Ok(())
    }

    fn logs(&self, request: LogsRequest) -> Result<(), PluginError> {
        let paths = Paths::of(&request.bottle_id);
        if !paths.dir().is_dir() {
            return Err(PluginError::not_found(format!(
                "no smolmachines bottle {}",
                request.bottle_id
            )));
        }
        let file = if request.egress {
            paths.egress_log()
        } else {
            paths.agent_log()
        };
        let egress = request.egress;
        let follow = request.follow;
        let p2 = paths.clone();
        let done =
            move || !follow || state::gate_alive(&p2).is_none() || (!egress && p2.exit().is_file());
        follow_file(&file, &mut std::io::stdout().lock(), &done)
            .map_err(|e| PluginError::internal(format!("read {}: {e}", file.display())))
    }

    fn wait(&self, request: WaitRequest) -> Result<ExitReport, PluginError> {
        let paths = Paths::of(&request.bottle_id);
        if !paths.dir().is_dir() {
            return Err(PluginError::not_found(format!(
                "no smolmachines bottle {}",
                request.bottle_id
            )));
        }
        let p2 = paths.clone();
        let done = move || p2.exit().is_file() || state::gate_alive(&p2).is_none();
        if request.attach {
            // An interactive agent's stdin: ours, with our terminal in raw
            // mode when it is one, so keys reach the guest's terminal as typed.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let input = std::os::unix::net::UnixStream::connect(paths.agent_stdin()).ok();
            let raw = input
                .as_ref()
                .and_then(|_| attach::RawMode::enable(attach::STDIN));
            let pump = input.map(|c| attach::pump_input(attach::STDIN, c, stop.clone()));
            let followed = follow_file(&paths.agent_log(), &mut std::io::stdout().lock(), &done);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(p) = pump {
                let _ = p.join();
            }
            drop(raw);
            followed.map_err(|e| PluginError::internal(format!("agent output: {e}")))?;
        } else {
            while !done() {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        match state::read_json::<ExitRecord>(&paths.exit()) {
            Some(e) => Ok(ExitReport {
                exit_code: e.exit_code,
                reason: e.reason,
            }),
            None => Ok(ExitReport {
                exit_code: 125,
                reason: Some(
                    "the bottle's egress gate ended before the agent did; see gate.log in the bottle's records"
                        .into(),
                ),
            }),
        }
    }

    fn exec(&self, request: ExecRequest) -> Result<ExitReport, PluginError> {
        let engine = Self::engine_any().ok_or_else(|| {
            PluginError::unavailable("no smolvm engine found").with_hint(engine::INSTALL_HINT)
        })?;
        let paths = Paths::of(&request.bottle_id);
        let name = state::read_json::<BottleRecord>(&paths.bottle())
            .map(|r| r.machine)
            .ok_or_else(|| {
                PluginError::not_found(format!("no smolmachines bottle {}", request.bottle_id))
            })?;
        let mut cmd = engine.command();
        cmd.args(["machine", "exec", "--name", &name]);
        if request.tty {
            cmd.args(["--tty", "--interactive"]);
        }
        cmd.arg("--")
            .args(&request.command)
            .stdin(if request.tty {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        let status = cmd
            .status()
            .map_err(|e| PluginError::internal(format!("run {}: {e}", engine.cli.display())))?;
        use std::os::unix::process::ExitStatusExt;
        Ok(ExitReport {
            exit_code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            reason: None,
        })
    }

    fn update_egress(&self, request: EgressUpdate) -> Result<(), PluginError> {
        use std::os::unix::net::UnixStream;
        let paths = Paths::of(&request.bottle_id);
        if state::gate_alive(&paths).is_none() {
            return Err(PluginError::not_found(format!(
                "smolmachines bottle {} has no running egress gate",
                request.bottle_id
            )));
        }
        let mut c = UnixStream::connect(paths.control()).map_err(|e| {
            PluginError::internal(format!("reach the gate of {}: {e}", request.bottle_id))
        })?;
        c.set_read_timeout(Some(Duration::from_secs(30))).ok();
        c.write_all(request.config.expose().as_bytes())
            .and_then(|_| c.shutdown(std::net::Shutdown::Write))
            .map_err(|e| PluginError::internal(format!("send the new egress config: {e}")))?;
        let mut reply = String::new();
        c.read_to_string(&mut reply)
            .map_err(|e| PluginError::internal(format!("gate reply: {e}")))?;
        match reply.trim() {
            "ok" => Ok(()),
            other => Err(PluginError::internal(format!(
                "the gate refused the new egress config: {}",
                other.strip_prefix("error ").unwrap_or(other)
            ))),
        }
    }

    fn remove(&self, request: RemoveRequest) -> Result<RemoveReport, PluginError> {
        let engine = Self::engine_any();
        let mut removed = Vec::new();
        if let Some(id) = &request.bottle_id {
            removed.extend(self.remove_one(id, engine.as_ref()));
            return Ok(RemoveReport { removed });
        }
        if !request.garbage {
            return Ok(RemoveReport { removed });
        }
        // Leftovers: records whose gate died without the bottle being
        // stopped or its agent finishing (a crash, a reboot), and machines of
        // ours without records.
        let ids = state::all();
        for id in &ids {
            let paths = Paths::of(id);
            // A bottle still launching has records but no gate record yet;
            // it is garbage only once that has gone on far too long.
            let launching = !paths.gate().exists()
                && std::fs::metadata(paths.dir())
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < Duration::from_secs(600));
            // Stopped or finished bottles are kept for `logs` until `rm`.
            let kept = paths.stopped().exists() || paths.exit().exists();
            if !launching && !kept && state::gate_alive(&paths).is_none() {
                removed.extend(self.remove_one(id, engine.as_ref()));
            }
        }
        if let Some(engine) = &engine {
            let all = machines(engine).unwrap_or_default();
            for m in all {
                let is_ours = ours(&m);
                let orphan_probe = m.name.starts_with("bb-probe-")
                    && m.name
                        .split('-')
                        .nth(2)
                        .and_then(|p| p.parse::<u32>().ok())
                        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                let id = m.labels.get("bot-bottle.id").cloned().unwrap_or_default();
                if (is_ours && (!Paths::of(&id).dir().is_dir())) || orphan_probe {
                    if let Ok(true) = delete_machine(engine, &m.name) {
                        removed.push(format!("microVM {}", m.name));
                    }
                }
            }
        }
        Ok(RemoveReport { removed })
    }
}

export_backend!(SmolMachines);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        assert!(Options::parse(&serde_json::Value::Null).is_ok());
        let e = Options::parse(&serde_json::json!({"engin": "/x"})).unwrap_err();
        assert!(e.message.contains("engin"), "{}", e.message);
        let o = Options::parse(&serde_json::json!({"proxy_address": "198.18.0.9:8080"})).unwrap();
        assert_eq!(o.proxy_address.unwrap().port(), 8080);
    }

    #[test]
    fn validate_checks_the_options_before_any_launch() {
        let request = |options: serde_json::Value| bot_bottle_plugin_api::ValidateRequest {
            backend_options: options,
            ..Default::default()
        };
        assert!(SmolMachines
            .validate(request(serde_json::json!({})))
            .is_ok());
        let e = SmolMachines
            .validate(request(serde_json::json!({"proxy_adress": "198.18.0.9:1"})))
            .unwrap_err();
        assert!(
            e.message.contains("[backends.smolmachines]"),
            "{}",
            e.message
        );
        assert!(e.message.contains("proxy_adress"), "{}", e.message);
    }

    #[test]
    fn an_unenforced_pids_limit_is_named_and_others_are_not() {
        let mut r = bot_bottle_plugin_api::Resources {
            cpus: Some(2.0),
            memory_bytes: Some(1 << 30),
            pids: None,
        };
        assert!(unenforced_limits(&r).is_empty());
        r.pids = Some(64);
        let w = unenforced_limits(&r);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("pids = 64") && w[0].contains("NOT enforced"),
            "{w:?}"
        );
    }

    #[test]
    fn the_machine_pins_virtio_net_and_a_dns_filter_that_admits_nothing() {
        let agent = AgentLaunch {
            image: "alpine:3.20".into(),
            command: vec!["true".into()],
            ..Default::default()
        };
        let cfg = machine_builder_for(
            "m",
            "id",
            "name",
            &agent,
            &Default::default(),
            DEFAULT_PROXY_ADDRESS.parse().unwrap(),
        )
        .build();
        assert_eq!(
            cfg.resources.network_backend,
            Some(smolmachines::NetworkBackend::VirtioNet)
        );
        assert_eq!(cfg.dns, Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(
            cfg.allowed_host_patterns,
            vec![DNS_ADMITS_NOTHING.to_string()]
        );
        assert!(cfg.allowed_hosts.is_empty(), "{:?}", cfg.allowed_hosts);
        assert_eq!(
            cfg.allowed_cidrs,
            vec!["0.0.0.0/0".to_string(), "::/0".to_string()]
        );
        assert!(DNS_ADMITS_NOTHING.ends_with(".invalid"));
    }

    #[test]
    fn proxy_env_names_the_alias_only() {
        let env = proxy_env(DEFAULT_PROXY_ADDRESS.parse().unwrap());
        assert!(env
            .iter()
            .any(|(k, v)| k == "HTTPS_PROXY" && v == "http://198.18.0.1:3128"));
    }
}
