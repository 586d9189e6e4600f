//! The gate: one host process per microVM bottle, which outlives
//! `bottle run --detach` and holds everything secret.
//!
//! It runs the bottle's egress proxy (the `bot-bottle-egress` library, on
//! host loopback), the SMOLICPT [`crate::adapter`] in front of it, the
//! machine's launch through the SDK (create, start with the interceptor,
//! place files), and the agent (one `machine exec` whose output it appends
//! to `agent.log`, and whose exit code it writes to `exit.json`).
//!
//! The plugin starts it with a cleared environment and hands it a
//! [`GateSetup`] as one JSON line on stdin — the proxy config (real tokens,
//! CA key) never touches a file or a command line. The gate makes the
//! per-launch interceptor token itself; it reaches only the engine's
//! `machine start` child, through its (clean) environment, as the SDK
//! passes it. Every engine process is therefore started from this process,
//! whose environment holds no host secret. The gate answers
//! `ready ADAPTER_ADDR` on stdout. A second stdin line `go` launches the
//! machine and the agent, answered by `started` or `failed MESSAGE`; end of
//! input without `go` means the launch was abandoned and the gate exits.
//!
//! It exits on SIGTERM, or when its state directory disappears; and, with
//! the agent, when the proxy meets the gate's memory limit
//! ([`crate::memory`]).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use bot_bottle_plugin_api::AgentLaunch;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bot_bottle_egress::ProxyConfig;
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::state::{self, ExitRecord, GateRecord};

/// What the gate needs, sent over its stdin.
#[derive(Clone, Serialize, Deserialize)]
pub struct GateSetup {
    /// The bottle.
    pub bottle_id: String,
    /// The manifest's name.
    #[serde(default)]
    pub bottle_name: String,
    /// The smolvm machine name.
    pub machine: String,
    /// The proxy config, JSON (secret).
    pub config: String,
    /// The address the guest's proxy variables name.
    pub proxy_alias: SocketAddr,
    /// The agent: image, command, env (dummies), files, mounts, resources.
    pub agent: AgentLaunch,
    /// Labels for the machine.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The gate's memory limit in bytes ([`crate::memory`]). `None`, what
    /// the plugin sends: [`bot_bottle_plugin_api::egress_memory_limit`] of
    /// `config`, as the Docker sidecar's. Tests set a small one, to meet
    /// it quickly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
}

impl std::fmt::Debug for GateSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateSetup")
            .field("bottle_id", &self.bottle_id)
            .field("machine", &self.machine)
            .field("config", &"[redacted]")
            .field("proxy_alias", &self.proxy_alias)
            .field("memory_limit", &self.memory_limit)
            .finish_non_exhaustive()
    }
}

/// Decodes the interceptor token.
pub fn parse_token(hex_token: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_token).map_err(|_| "the token is not hex".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "the token is not 32 bytes".to_string())
}

/// A fresh random interceptor token (64 hex digits).
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The listeners a started gate serves.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The interceptor adapter (given to the engine).
    pub adapter: SocketAddr,
    /// The egress proxy.
    pub proxy: SocketAddr,
}

/// The running proxy and adapter of one gate.
#[derive(Debug)]
pub struct Egress {
    /// Where they listen (the proxy address changes on reload).
    pub bound: Bound,
    adapter: Arc<Adapter>,
    audit: Option<PathBuf>,
    proxy_task: tokio::task::JoinHandle<()>,
}

async fn spawn_proxy(
    mut cfg: ProxyConfig,
    audit: Option<&Path>,
) -> Result<(SocketAddr, Arc<ProxyConfig>, tokio::task::JoinHandle<()>), String> {
    if let Some(p) = audit {
        cfg.audit.path = Some(p.to_path_buf());
    }
    bot_bottle_egress::validate(&cfg).map_err(|e| format!("proxy: {e}"))?;
    let l = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| format!("bind the proxy: {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let shared = Arc::new(cfg.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = bot_bottle_egress::serve_on(cfg, l).await {
            tracing::error!(error = %e, "egress proxy stopped");
        }
    });
    Ok((addr, shared, task))
}

/// Binds and spawns the proxy and the adapter on the current tokio runtime;
/// the proxy's audit lines go to `audit`.
pub async fn start_egress(
    setup: &GateSetup,
    token: [u8; 32],
    audit: Option<&Path>,
) -> Result<Egress, String> {
    let cfg = ProxyConfig::from_json(&setup.config).map_err(|e| format!("proxy config: {e}"))?;
    let audit_file = match audit {
        Some(p) => Some(
            state::create_private_file(p).map_err(|e| format!("audit log {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let (proxy, shared, proxy_task) = spawn_proxy(cfg, audit).await?;
    let adapter_l = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| format!("bind the interceptor: {e}"))?;
    let adapter = adapter_l.local_addr().map_err(|e| e.to_string())?;
    let ad = Arc::new(Adapter::new(
        token,
        proxy,
        setup.proxy_alias,
        shared,
        audit_file,
    ));
    let serving = ad.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(adapter_l).await {
            tracing::error!(error = %e, "interceptor stopped");
        }
    });
    Ok(Egress {
        bound: Bound { adapter, proxy },
        adapter: ad,
        audit: audit.map(Path::to_path_buf),
        proxy_task,
    })
}

impl Egress {
    /// Live credential rotation: starts a proxy with the new config, points
    /// new flows at it and stops the old one accepting (tunnels already open
    /// finish on the old one). The bottle CA must be the same.
    pub async fn reload(&mut self, config_json: &str) -> Result<(), String> {
        let cfg = ProxyConfig::from_json(config_json).map_err(|e| format!("proxy config: {e}"))?;
        let (proxy, shared, task) = spawn_proxy(cfg, self.audit.as_deref()).await?;
        self.adapter.retarget(proxy, shared);
        std::mem::replace(&mut self.proxy_task, task).abort();
        self.bound.proxy = proxy;
        Ok(())
    }
}

/// Serves live config updates on `sock` (inside the 0700 records
/// directory): one connection carries one whole config, answered `ok` or
/// `error MESSAGE`.
async fn serve_control(sock: PathBuf, egress: Arc<tokio::sync::Mutex<Egress>>, gate_json: PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = std::fs::remove_file(&sock);
    let l = match tokio::net::UnixListener::bind(&sock) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no control socket; live updates are off");
            return;
        }
    };
    loop {
        let Ok((mut c, _)) = l.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        if c.read_to_end(&mut buf).await.is_err() {
            continue;
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        drop(buf);
        let mut eg = egress.lock().await;
        let reply = match eg.reload(&text).await {
            Ok(()) => {
                let _ = state::write_json(
                    &gate_json,
                    &GateRecord {
                        pid: std::process::id(),
                        adapter: eg.bound.adapter,
                        proxy: eg.bound.proxy,
                    },
                );
                tracing::info!("egress config updated");
                "ok\n".to_string()
            }
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let _ = c.write_all(reply.as_bytes()).await;
    }
}

/// Calls [`crate::memory::disarm`] when dropped.
struct Disarm;

impl Drop for Disarm {
    fn drop(&mut self) {
        crate::memory::disarm();
    }
}

enum End {
    Abandoned,
    Failed,
}

/// The gate's `main`: reads the setup from stdin, serves, launches the
/// machine and runs the agent.
pub fn main(state_dir: PathBuf) -> Result<(), String> {
    // Never fetch an engine; the plugin names the installed one.
    std::env::set_var("SMOLMACHINES_NO_DOWNLOAD", "1");
    let mut lines = std::io::BufReader::new(std::io::stdin());
    let mut first = String::new();
    lines
        .read_line(&mut first)
        .map_err(|e| format!("read the setup: {e}"))?;
    let setup: GateSetup =
        serde_json::from_str(first.trim()).map_err(|e| format!("setup: {}", e.classify_str()))?;
    first.clear();
    let paths = state::Paths::new(&state_dir);

    // Before anything the agent can reach serves: see `crate::memory`.
    let limit = setup
        .memory_limit
        .unwrap_or_else(|| bot_bottle_plugin_api::egress_memory_limit(&setup.config));
    // However this returns, the exit record `arm` keeps ready goes.
    let _disarm = Disarm;
    let limit = crate::memory::arm(limit, &paths)
        .map_err(|e| format!("cannot limit the egress proxy's memory: {e}"))?;
    tracing::info!(
        limit_mib = limit >> 20,
        "egress proxy memory limit (the gate's RLIMIT_DATA)"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("gate")
        .build()
        .map_err(|e| e.to_string())?;
    let token = new_token();
    let token_bytes = parse_token(&token)?;
    let egress = rt.block_on(start_egress(&setup, token_bytes, Some(&paths.egress_log())))?;
    let bound = egress.bound;
    let egress = Arc::new(tokio::sync::Mutex::new(egress));
    rt.spawn(serve_control(paths.control(), egress, paths.gate()));
    state::write_json(
        &paths.gate(),
        &GateRecord {
            pid: std::process::id(),
            adapter: bound.adapter,
            proxy: bound.proxy,
        },
    )
    .map_err(|e| format!("write gate record: {e}"))?;
    say(&format!("ready {}", bound.adapter))?;

    let (end_tx, mut end_rx) = tokio::sync::mpsc::unbounded_channel();
    let launch_paths = paths.clone();
    std::thread::spawn(move || {
        let mut go = String::new();
        let _ = lines.read_line(&mut go);
        if go.trim() != "go" {
            tracing::info!("launch abandoned before the machine started; gate exiting");
            let _ = end_tx.send(End::Abandoned);
            return;
        }
        // The engine processes the launch starts must not inherit the
        // gate's memory limit: the VMM's guest RAM would count against it.
        let launched =
            crate::memory::lifted(|| launch_machine(&setup, bound.adapter, token)).and_then(|r| r);
        match launched {
            Ok(machine) => {
                // Bound before `started`: an attached `bottle run` connects
                // as soon as the launch returns.
                let input = if setup.agent.interactive {
                    match crate::attach::bind_input(&launch_paths.agent_stdin()) {
                        Ok(l) => Some(l),
                        Err(e) => {
                            tracing::warn!(error = %e, "no stdin socket; the agent runs without stdin");
                            None
                        }
                    }
                } else {
                    None
                };
                let _ = say("started");
                let mut agent = setup.agent.clone();
                agent.env.extend(crate::proxy_env(setup.proxy_alias));
                run_agent(&machine, &agent, &launch_paths, input);
            }
            Err(e) => {
                tracing::error!("launch failed: {e}");
                let _ = say(&format!("failed {}", e.replace('\n', " ")));
                let _ = end_tx.send(End::Failed);
            }
        }
    });

    let end = rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let tick = tokio::time::sleep(std::time::Duration::from_secs(2));
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return None,
                _ = tokio::signal::ctrl_c() => return None,
                e = end_rx.recv() => return e,
                _ = tick => if !state_dir.is_dir() { return None },
            }
        }
    });
    match end {
        Some(End::Failed) => Err("the machine did not launch".into()),
        _ => Ok(()),
    }
}

fn say(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| e.to_string())
}

/// Creates and starts the machine with the interceptor, and places the
/// plan's files.
fn launch_machine(
    setup: &GateSetup,
    adapter: SocketAddr,
    token: String,
) -> Result<smolmachines::Machine, String> {
    let machine = crate::machine_builder_for(
        &setup.machine,
        &setup.bottle_id,
        &setup.bottle_name,
        &setup.agent,
        &setup.labels,
        setup.proxy_alias,
    )
    .create()
    .map_err(|e| format!("create the microVM: {}", e.message()))?;
    let binding = smolmachines::EgressInterceptor::new(adapter, token);
    machine
        .start_with_interceptor(&binding)
        .map_err(|e| format!("start the microVM: {}", e.message()))?;
    drop(binding);
    for f in &setup.agent.files {
        let data = crate::decode_file(f).map_err(|e| e.message)?;
        if let Some(parent) = Path::new(&f.path).parent() {
            let r = machine
                .exec(["mkdir", "-p", &parent.display().to_string()])
                .map_err(|e| format!("prepare the sandbox: {}", e.message()))?;
            if !r.success() {
                return Err(format!(
                    "mkdir {} in the guest failed: {}",
                    parent.display(),
                    r.stderr_utf8().trim()
                ));
            }
        }
        machine
            .write_file_with_mode(&f.path, data, f.mode)
            .map_err(|e| format!("place {}: {}", f.path, e.message()))?;
    }
    Ok(machine)
}

/// Runs the agent through the SDK and records its output and exit code.
/// With `input` (an interactive agent) its stdin is served there; with
/// `agent.tty` it gets a terminal in the guest (see [`crate::attach`]).
fn run_agent(
    m: &smolmachines::Machine,
    agent: &AgentLaunch,
    paths: &state::Paths,
    input: Option<std::os::unix::net::UnixListener>,
) {
    use smolmachines::{ExecEvent, ExecOptions};
    let mut log = match state::create_private_file(&paths.agent_log()) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the agent log");
            return;
        }
    };
    let finish = |code: i32, reason: Option<String>| {
        let _ = state::write_json(
            &paths.exit(),
            &ExitRecord {
                exit_code: code,
                reason,
            },
        );
    };
    let mut opts = ExecOptions::new();
    for (k, v) in &agent.env {
        opts = opts.env(k, v);
    }
    if !agent.workdir.is_empty() {
        opts = opts.workdir(&agent.workdir);
    }
    opts = opts.tty(agent.tty).stdin(input.is_some());
    let mut stream = match m.exec_stream(agent.command.clone(), opts) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(paths.agent_stdin());
            return finish(
                125,
                Some(format!("cannot start the agent: {}", e.message())),
            );
        }
    };
    if let (Some(l), Some(w)) = (input, stream.stdin()) {
        std::thread::spawn(move || crate::attach::serve_input(l, w));
    }
    let mut code = None;
    let mut reason = None;
    for ev in stream {
        match ev {
            ExecEvent::Stdout(b) | ExecEvent::Stderr(b) => {
                let _ = log.write_all(&b);
            }
            ExecEvent::Exit(c) => code = Some(c),
            ExecEvent::Error(e) => reason = Some(e),
        }
    }
    let _ = log.flush();
    let _ = std::fs::remove_file(paths.agent_stdin());
    finish(code.unwrap_or(125), reason);
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    /// A serde error without its message, which could quote a secret.
    fn classify_str(&self) -> String {
        format!(
            "malformed JSON at line {} column {}",
            self.line(),
            self.column()
        )
    }
}
