//! Stage 5 of the one flow: turn a plan into a complete, resolved
//! [`LaunchSpec`] for the backend.
//!
//! The host generates the bottle's CA here and writes the egress proxy's
//! whole config (routes, resolved token values, CA key). The backend gets it
//! as one opaque secret and hands it to the proxy; it never resolves or
//! reads secrets itself.

use bot_bottle_plugin_api::is_env_name;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bot_bottle_egress::ca::BottleCa;
use bot_bottle_egress::config::{
    self as egress_config, CaMaterial, DlpConfig, ProxyConfig, UpstreamConfig,
};
use bot_bottle_plugin_api::{AgentLaunch, EgressLaunch, LaunchSpec, SandboxFile, Secret};

use crate::manifest::DlpMode;
use crate::plan::BottlePlan;

/// The port the proxy listens on inside the bottle's network.
pub const EGRESS_PORT: u16 = 3128;

/// Why a launch spec could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Token refs did not resolve; nothing was launched.
    #[error(transparent)]
    MissingTokens(#[from] crate::egress_plan::MissingTokenRefs),
    /// The proxy config would not start a proxy.
    #[error("{manifest}: the egress proxy would refuse this bottle's config: {message}")]
    ProxyConfig {
        /// The manifest.
        manifest: PathBuf,
        /// Why (names and refs only, never a value).
        message: String,
    },
    /// The CA could not be generated.
    #[error("cannot generate the bottle CA: {0}")]
    Ca(String),
    /// `upstream_ca` could not be read.
    #[error("{manifest}: cannot read egress.upstream_ca {path}: {source}; fix the path, or leave upstream_ca out to trust the system roots only")]
    UpstreamCa {
        /// The manifest.
        manifest: PathBuf,
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `upstream_ca` holds no usable certificate.
    #[error("{manifest}: egress.upstream_ca {path} {message}; point it at a PEM file of CA certificates (`-----BEGIN CERTIFICATE-----` blocks)")]
    BadUpstreamCa {
        /// The manifest.
        manifest: PathBuf,
        /// The CA file.
        path: PathBuf,
        /// What is wrong (the proxy's own words).
        message: String,
    },
    /// The workspace directory does not exist.
    #[error("{manifest}: workspace.path {path} does not exist; create it or fix the path")]
    NoWorkspace {
        /// The manifest.
        manifest: PathBuf,
        /// The directory.
        path: PathBuf,
    },
    /// The workspace is not a directory.
    #[error("{manifest}: workspace.path {path} is not a directory; the workspace must be a directory (mount a single file with [[mounts]])")]
    WorkspaceNotADirectory {
        /// The manifest.
        manifest: PathBuf,
        /// The path.
        path: PathBuf,
    },
    /// A mount's host path does not exist.
    #[error("{manifest}: [[mounts]] host {path} {why}; create it or fix the path (the mount at {sandbox})")]
    NoMountSource {
        /// The manifest.
        manifest: PathBuf,
        /// The host path.
        path: PathBuf,
        /// Where it would be mounted.
        sandbox: String,
        /// `does not exist`, or why it cannot be looked at.
        why: String,
    },
    /// `[env]` sets a proxy variable the backend replaces.
    #[error("{manifest}: [env] {key} would be replaced: every backend points the agent's proxy variables (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY, in either case) at the bottle's egress proxy, the agent's only way out; remove it, and to send the proxy's own connections through another proxy (a corporate one) set egress.upstream_proxy")]
    ProxyVariableInEnv {
        /// The manifest.
        manifest: PathBuf,
        /// The key as written.
        key: String,
    },
    /// The backend refused one of the manifest's options (placed at its
    /// line).
    #[error(transparent)]
    Placed(crate::manifest::ManifestError),
    /// Another refusal, already worded.
    #[error("{0}")]
    Other(String),
    /// The backend refuses the bottle.
    #[error("{manifest}: {source}")]
    Backend {
        /// The manifest.
        manifest: PathBuf,
        /// What the backend said.
        source: Box<crate::plugins::PluginCallError>,
    },
    /// The provider gave the agent an env name no process can carry.
    #[error("{manifest}: provider `{provider}` gives the agent env name {key:?}, which is not an env name (letters, digits and `_`, not starting with a digit); fix it in [agent.options]")]
    BadEnvName {
        /// The manifest.
        manifest: PathBuf,
        /// The provider.
        provider: String,
        /// The name.
        key: String,
    },
}

/// Asks the plan's backend whether it would refuse the bottle at launch
/// (its options, limits, mounts), before anything exists. An error about
/// one of its options names that key's line in the manifest.
pub fn validate_with_backend(
    plan: &BottlePlan,
    backend: &crate::plugins::BackendHandle<'_>,
) -> Result<(), LaunchError> {
    backend
        .validate(&plan.validate_request())
        .map_err(
            |source| match crate::plan::place_options_error(&plan.manifest, source) {
                crate::plan::PlanError::Manifest(placed) => LaunchError::Placed(placed),
                crate::plan::PlanError::Plugin(source) => LaunchError::Backend {
                    manifest: plan.manifest.path.clone(),
                    source: Box::new(source),
                },
                other => LaunchError::Other(other.to_string()),
            },
        )
}

/// The proxy variables every backend sets in the agent's env itself
/// (in upper and lower case), whatever the plan says.
pub const PROXY_VARIABLES: &[&str] = &["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"];

/// Everything the host can know, before a launch, that would stop it:
/// what `bottle plan` and `bottle doctor -f` check, and `launch_spec`
/// checks again. Files are looked at as they are now; nothing is created.
/// The proxy config is built and validated as the proxy will (with a
/// stand-in CA) once every token ref resolved; with refs missing, that is
/// the error the caller reports.
pub fn preflight(plan: &BottlePlan) -> Result<(), LaunchError> {
    let m = &plan.manifest;
    if let Some(ws) = &m.workspace {
        match std::fs::metadata(ws) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(LaunchError::WorkspaceNotADirectory {
                    manifest: m.path.clone(),
                    path: ws.clone(),
                })
            }
            Err(_) => {
                return Err(LaunchError::NoWorkspace {
                    manifest: m.path.clone(),
                    path: ws.clone(),
                })
            }
        }
    }
    for mount in &m.mounts {
        if let Err(e) = std::fs::metadata(&mount.host) {
            return Err(LaunchError::NoMountSource {
                manifest: m.path.clone(),
                path: mount.host.clone(),
                sandbox: mount.sandbox.clone(),
                why: match e.kind() {
                    std::io::ErrorKind::NotFound => "does not exist".into(),
                    _ => format!("cannot be looked at: {e}"),
                },
            });
        }
    }
    if let Some(key) = m
        .env
        .keys()
        .find(|k| PROXY_VARIABLES.contains(&k.to_ascii_uppercase().as_str()))
    {
        return Err(LaunchError::ProxyVariableInEnv {
            manifest: m.path.clone(),
            key: key.clone(),
        });
    }
    if let Some(key) = plan.agent_env.keys().find(|k| !is_env_name(k)) {
        return Err(LaunchError::BadEnvName {
            manifest: m.path.clone(),
            provider: plan.provider.name.clone(),
            key: key.clone(),
        });
    }
    // `upstream_ca` on its own, so that it is checked with token refs
    // missing too; the proxy config check below repeats it.
    read_upstream_ca(plan)?;
    if plan.egress.missing.is_none() {
        let stand_in = CaMaterial {
            cert_pem: String::new(),
            key_pem: Secret::new(""),
        };
        proxy_config(plan, "bb-preflight", &stand_in)?;
    }
    Ok(())
}

/// The contents of `egress.upstream_ca`, checked as the proxy checks it.
fn read_upstream_ca(plan: &BottlePlan) -> Result<Option<String>, LaunchError> {
    let m = &plan.manifest;
    let Some(path) = &m.upstream_ca else {
        return Ok(None);
    };
    let pem = std::fs::read_to_string(path).map_err(|source| LaunchError::UpstreamCa {
        manifest: m.path.clone(),
        path: path.clone(),
        source,
    })?;
    egress_config::check_extra_ca_pem(&pem).map_err(|message| LaunchError::BadUpstreamCa {
        manifest: m.path.clone(),
        path: path.clone(),
        message,
    })?;
    Ok(Some(pem))
}

/// A fresh id for one run of a bottle: `bb-<name>-<8 hex>`.
pub fn new_bottle_id(name: &str) -> String {
    format!("bb-{name}-{:08x}", rand::random::<u32>())
}

/// Public roots of the host, appended to the bottle CA in the agent's
/// bundle so clients that replace their roots can still verify passthrough
/// hosts.
fn host_public_roots() -> String {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .unwrap_or_default()
}

/// What launch needs beyond the plan.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Extra arguments appended to the agent command (`bottle run -- ARGS`).
    pub extra_args: Vec<String>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Forward our stdin to the agent (`docker run -i`).
    pub stdin: bool,
    /// `wait` with attach follows the launch (not `--detach`).
    pub attached: bool,
    /// The program the proxy runs as (`bottle egress serve`).
    pub egress_program: PathBuf,
}

/// The proxy config for a plan, given its CA. Kept separate so the live
/// rotation path can rebuild it with new token values and the same CA.
pub fn proxy_config(
    plan: &BottlePlan,
    bottle_id: &str,
    ca: &CaMaterial,
) -> Result<ProxyConfig, LaunchError> {
    if let Some(missing) = &plan.egress.missing {
        return Err(missing.clone().into());
    }
    let m = &plan.manifest;
    let extra_ca_pem = read_upstream_ca(plan)?;
    let mut cfg = policy_config(plan);
    cfg.bottle_id = bottle_id.to_string();
    cfg.tokens = plan.egress.token_values.clone();
    cfg.ca = ca.clone();
    cfg.upstream.extra_ca_pem = extra_ca_pem;
    cfg.upstream.proxy_auth_ref = m.upstream_proxy_auth_ref.clone();
    cfg.upstream.host_addresses = host_global_addresses();
    cfg.dlp.mode = match m.dlp {
        DlpMode::Off => egress_config::DlpMode::Off,
        DlpMode::Log => egress_config::DlpMode::Log,
        DlpMode::Block => egress_config::DlpMode::Block,
    };
    // What the proxy would refuse at start, refused before anything is
    // created: the agent starts while its proxy comes up, so a config the
    // proxy rejects would otherwise leave it running against no proxy.
    cfg.validate().map_err(|e| LaunchError::ProxyConfig {
        manifest: m.path.clone(),
        message: e.to_string(),
    })?;
    // The backend narrows `allowed_clients` to the bottle's own network
    // when it knows it.
    Ok(cfg)
}

/// The global addresses of this machine's interfaces, for the proxy to
/// refuse as the host's own (`upstream.host_addresses`): a sidecar in a
/// network namespace of its own would take them for any public address,
/// and a route whose name resolves to one would reach the host's services.
/// Internal addresses are refused anyway and are left out. None when the
/// interfaces cannot be listed (the other checks still hold).
fn host_global_addresses() -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs
            .iter()
            .map(|i| i.ip())
            .filter(|ip| bot_bottle_egress::addr::classify(*ip).is_none())
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "could not list this machine's addresses");
            Vec::new()
        }
    };
    out.sort();
    out.dedup();
    out
}

/// The policy half of a plan's proxy config — routes, passthrough hosts,
/// local responses, DLP mode — with no token values and no CA, for
/// `bottle egress check`, which decides with names only.
pub fn policy_config(plan: &BottlePlan) -> ProxyConfig {
    let m = &plan.manifest;
    ProxyConfig {
        schema: egress_config::SCHEMA,
        bottle_id: String::new(),
        listen: std::net::SocketAddr::from(([0, 0, 0, 0], EGRESS_PORT)),
        routes: plan.egress.routes.clone(),
        tls_passthrough: plan.egress.tls_passthrough.clone(),
        tokens: Default::default(),
        ca: CaMaterial {
            cert_pem: String::new(),
            key_pem: Secret::new(""),
        },
        upstream: UpstreamConfig {
            extra_ca_pem: None,
            proxy: m.upstream_proxy.clone(),
            proxy_auth_ref: None,
            resolve: m.resolve.clone(),
            allow_internal: m.allow_internal.clone(),
            host_addresses: Vec::new(),
        },
        dlp: DlpConfig::default(),
        local_responses: plan.egress.local_responses.clone(),
        limits: Default::default(),
        audit: Default::default(),
        allowed_clients: Vec::new(),
    }
}

/// Encodes a proxy config as the secret the backend carries.
pub fn encode_config(config: &ProxyConfig) -> Secret {
    // Plain data; encoding cannot fail.
    Secret::new(serde_json::to_string(config).expect("encoding the proxy config"))
}

/// Builds the launch spec: generates the CA, writes the proxy config, adds
/// the CA files to the agent's files and the workspace to its mounts.
pub fn launch_spec(
    plan: &BottlePlan,
    bottle_id: &str,
    options: &LaunchOptions,
) -> Result<(LaunchSpec, CaMaterial), LaunchError> {
    let m = &plan.manifest;
    preflight(plan)?;
    let ca = BottleCa::generate(bottle_id, &plan.egress.hosts())
        .map_err(|e| LaunchError::Ca(e.to_string()))?;
    let ca = CaMaterial {
        cert_pem: ca.cert_pem,
        key_pem: ca.key_pem,
    };
    let config = proxy_config(plan, bottle_id, &ca)?;

    let mut files = plan.agent_files.clone();
    files.push(SandboxFile::text(
        &plan.sandbox.ca_cert_path,
        ca.cert_pem.clone(),
        0o644,
    ));
    files.push(SandboxFile::text(
        &plan.sandbox.ca_bundle_path,
        format!("{}\n{}", ca.cert_pem.trim_end(), host_public_roots()),
        0o644,
    ));

    let mounts = plan.agent_mounts();

    let mut command = plan.command.clone();
    command.extend(options.extra_args.iter().cloned());

    let mut labels = BTreeMap::new();
    labels.insert(
        "bot-bottle.manifest".to_string(),
        m.path.display().to_string(),
    );
    labels.insert(
        "bot-bottle.provider".to_string(),
        plan.provider.name.clone(),
    );

    let spec = LaunchSpec {
        schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
        bottle_id: bottle_id.to_string(),
        bottle_name: m.name.clone(),
        agent: AgentLaunch {
            image: m.image.clone(),
            command,
            env: plan.agent_env.clone(),
            files,
            workdir: plan.sandbox.workspace.clone(),
            mounts,
            resources: m.resources.clone(),
            tty: options.tty,
            interactive: options.stdin,
            attached: options.attached,
        },
        egress: EgressLaunch {
            program: options.egress_program.clone(),
            config: encode_config(&config),
            listen_port: EGRESS_PORT,
            ca_cert_pem: ca.cert_pem.clone(),
        },
        backend_options: m.backend_options.clone(),
        labels,
    };
    Ok((spec, ca))
}

/// The program a proxy runs: this very `bottle` binary.
pub fn egress_program() -> PathBuf {
    std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .unwrap_or_else(|_| Path::new("bottle").to_path_buf())
}

#[cfg(test)]
mod host_address_tests {
    #[test]
    fn the_hosts_addresses_for_the_proxy_are_global_ones_only() {
        // Loopback and private ones are refused by class already; listing
        // them would only add noise to every sidecar's config.
        for ip in super::host_global_addresses() {
            assert_eq!(bot_bottle_egress::addr::classify(ip), None, "{ip}");
        }
    }
}
