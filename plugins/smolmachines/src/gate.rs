//! The gate: one host process per microVM bottle, which outlives
//! `bottle run --detach` and holds everything secret.
//!
//! It runs the bottle's egress proxy (the `bot-bottle-egress` library, on
//! host loopback), the SMOLICPT [`crate::adapter`] in front of it, and the
//! agent (one `machine exec` whose output it appends to `agent.log`, and
//! whose exit code it writes to `exit.json`).
//!
//! The plugin starts it with a cleared environment and hands it a
//! [`GateSetup`] as one JSON line on stdin — the proxy config (real tokens,
//! CA key) and the interceptor token never touch a file, a command line or
//! the machine record. The gate answers `ready ADAPTER_ADDR` on stdout. A
//! second stdin line `go` starts the agent; end of input without `go` means
//! the launch was abandoned and the gate exits.
//!
//! It exits on SIGTERM, or when its state directory disappears.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
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
    /// The smolvm machine name.
    pub machine: String,
    /// The proxy config, JSON (secret).
    pub config: String,
    /// The interceptor token, 64 hex digits (secret).
    pub token: String,
    /// The address the guest's proxy variables name.
    pub proxy_alias: SocketAddr,
    /// The agent to run once told `go`.
    pub agent: AgentRun,
}

impl std::fmt::Debug for GateSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateSetup")
            .field("bottle_id", &self.bottle_id)
            .field("machine", &self.machine)
            .field("config", &"[redacted]")
            .field("token", &"[redacted]")
            .field("proxy_alias", &self.proxy_alias)
            .field("agent", &self.agent)
            .finish()
    }
}

/// The agent command (env values are dummies).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentRun {
    /// Command and arguments.
    pub command: Vec<String>,
    /// Env.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: String,
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

/// Binds and spawns the proxy and the adapter on the current tokio runtime;
/// the proxy's audit lines go to `audit`.
pub async fn start_egress(
    setup: &GateSetup,
    audit: Option<&Path>,
) -> Result<Bound, String> {
    let mut cfg = ProxyConfig::from_json(&setup.config).map_err(|e| format!("proxy config: {e}"))?;
    let token = parse_token(&setup.token)?;
    if let Some(p) = audit {
        state::create_private_file(p).map_err(|e| format!("audit log {}: {e}", p.display()))?;
        cfg.audit.path = Some(p.to_path_buf());
    }
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let proxy_l = tokio::net::TcpListener::bind(local)
        .await
        .map_err(|e| format!("bind the proxy: {e}"))?;
    let adapter_l = tokio::net::TcpListener::bind(local)
        .await
        .map_err(|e| format!("bind the interceptor: {e}"))?;
    let proxy = proxy_l.local_addr().map_err(|e| e.to_string())?;
    let adapter = adapter_l.local_addr().map_err(|e| e.to_string())?;
    bot_bottle_egress::validate(&cfg).map_err(|e| format!("proxy: {e}"))?;
    let audit_file = match audit {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .map_err(|e| format!("audit log {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let ad = Arc::new(Adapter::new(
        token,
        proxy,
        setup.proxy_alias,
        Arc::new(cfg.clone()),
        audit_file,
    ));
    tokio::spawn(async move {
        if let Err(e) = bot_bottle_egress::serve_on(cfg, proxy_l).await {
            tracing::error!(error = %e, "egress proxy stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = ad.serve(adapter_l).await {
            tracing::error!(error = %e, "interceptor stopped");
        }
    });
    Ok(Bound { adapter, proxy })
}

/// The gate's `main`: reads the setup from stdin, serves, runs the agent.
pub fn main(state_dir: PathBuf) -> Result<(), String> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut first = String::new();
    lines
        .read_line(&mut first)
        .map_err(|e| format!("read the setup: {e}"))?;
    let setup: GateSetup =
        serde_json::from_str(first.trim()).map_err(|e| format!("setup: {}", e.classify_str()))?;
    first.clear();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("gate")
        .build()
        .map_err(|e| e.to_string())?;
    let paths = state::Paths::new(&state_dir);
    let bound = rt.block_on(start_egress(&setup, Some(&paths.egress_log())))?;
    state::write_json(
        &paths.gate(),
        &GateRecord {
            pid: std::process::id(),
            adapter: bound.adapter,
            proxy: bound.proxy,
        },
    )
    .map_err(|e| format!("write gate record: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", bound.adapter).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }

    let mut go = String::new();
    let _ = lines.read_line(&mut go);
    if go.trim() != "go" {
        tracing::info!("launch abandoned before the agent started; gate exiting");
        return Ok(());
    }
    drop(lines);

    let agent = setup.agent.clone();
    let machine = setup.machine.clone();
    let agent_paths = paths.clone();
    std::thread::spawn(move || run_agent(&machine, &agent, &agent_paths));

    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            let tick = tokio::time::sleep(std::time::Duration::from_secs(2));
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick => if !state_dir.is_dir() { break },
            }
        }
    });
    Ok(())
}

/// Runs the agent through the SDK and records its output and exit code.
fn run_agent(machine: &str, agent: &AgentRun, paths: &state::Paths) {
    use smolmachines::{ExecEvent, ExecOptions, Machine};
    let mut log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.agent_log())
    {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot open the agent log");
            return;
        }
    };
    let finish = |code: i32, reason: Option<String>| {
        let _ = state::write_json(&paths.exit(), &ExitRecord { exit_code: code, reason });
    };
    let m = match Machine::connect(machine) {
        Ok(m) => m,
        Err(e) => return finish(125, Some(format!("cannot reach machine {machine}: {e}"))),
    };
    let mut opts = ExecOptions::new();
    for (k, v) in &agent.env {
        opts = opts.env(k, v);
    }
    if !agent.workdir.is_empty() {
        opts = opts.workdir(&agent.workdir);
    }
    let stream = match m.exec_stream(agent.command.clone(), opts) {
        Ok(s) => s,
        Err(e) => return finish(125, Some(format!("cannot start the agent: {e}"))),
    };
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
    finish(code.unwrap_or(125), reason);
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    /// A serde error without its message, which could quote a secret.
    fn classify_str(&self) -> String {
        format!("malformed JSON at line {} column {}", self.line(), self.column())
    }
}
