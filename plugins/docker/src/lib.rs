//! The Docker backend of bot-bottle.
//!
//! A bottle on Docker is two containers, labelled with the bottle id, plus
//! what every bottle shares: one egress network, and one network namespace
//! on it that the sidecars join, kept by a small holder container:
//!
//! ```text
//!   <id>-agent (no network)                                   <id>-egress
//!     gate: 127.0.0.1:<port> ─▶ /.bot-bottle-egress/proxy.sock ◀─ proxy
//!                                                                   │
//!               (namespace of bot-bottle-egress-ns-<hex>, on the network
//!                bot-bottle-egress-<hex>: ordinary bridge, no ICC)
//!                                                                   │
//!                                                               the world
//! ```
//!
//! The agent container has no network at all: no route, no DNS, no address
//! of the host. Its launch gate (`gate.rs`) forwards its proxy variables'
//! `127.0.0.1:<port>` to the proxy's Unix socket, in a volume of the
//! sidecar the agent mounts read-only (decision record 0002). The sidecar
//! reaches the world from the network namespace its egress network's
//! holder keeps (`egress_ns.rs`, decision record 0003). Under
//! `runtime = "runsc"` the two share a per-bottle internal network instead.
//! The sidecar runs the host's own `bottle`
//! binary (`bottle egress serve`) from an image built locally: `FROM
//! scratch`, the binary and the libraries `ldd` lists, cached by the
//! binary's SHA-256. The proxy config (real tokens, the CA key) reaches
//! the sidecar on its stdin when it starts; it never appears in an env, a
//! label, a command line or the agent's filesystem.
//!
//! See `docs/backends/docker.md` for the user's view.

mod agent;
mod attach;
mod client;
mod egress_image;
mod egress_ns;
mod files;
mod gate;
mod image_facts;
mod launch;
mod manage;
mod names;
mod networks;
mod options;
mod progress;
mod sidecar;
mod tty;

use bot_bottle_plugin_api::{
    Backend, BottleHandle, BottleRef, BottleStatus, CheckReport, CheckRequest, EgressUpdate,
    ExecRequest, ExitReport, LaunchSpec, ListRequest, LogsRequest, PluginError, PluginInfo,
    RemoveReport, RemoveRequest, ValidateRequest, WaitRequest,
};

pub use names::{
    LABEL_EGRESS_SHA256, LABEL_ID, LABEL_NAME, LABEL_ROLE, ROLE_AGENT, ROLE_EGRESS,
    ROLE_EGRESS_IMAGE,
};
pub use options::DockerOptions;

/// The Docker backend. Cheap to build; it connects to the daemon on first
/// use and keeps the connection.
#[derive(Debug)]
pub struct DockerBackend {
    client: client::Client,
}

impl DockerBackend {
    /// A backend talking to the daemon named by `DOCKER_HOST`, or the local
    /// default socket.
    pub fn new() -> Self {
        Self {
            client: client::Client::from_env(),
        }
    }

    /// A backend talking to the daemon at `docker_host` (`unix:///path`,
    /// `tcp://host:port`), whatever `DOCKER_HOST` says.
    pub fn with_docker_host(docker_host: impl Into<String>) -> Self {
        Self {
            client: client::Client::new(docker_host.into()),
        }
    }
}

impl Default for DockerBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for DockerBackend {
    fn info(&self) -> PluginInfo {
        PluginInfo::backend(
            "docker",
            env!("CARGO_PKG_VERSION"),
            "Docker engine: agent without a network behind a launch gate, egress proxy as a sidecar on a Unix socket",
        )
    }

    fn check(&self, request: CheckRequest) -> Result<CheckReport, PluginError> {
        manage::check(&self.client, request)
    }

    fn validate(&self, request: ValidateRequest) -> Result<(), PluginError> {
        launch::validate(&self.client, &request)
    }

    fn launch(&self, spec: LaunchSpec) -> Result<BottleHandle, PluginError> {
        launch::launch(&self.client, spec)
    }

    fn list(&self, _request: ListRequest) -> Result<Vec<BottleStatus>, PluginError> {
        manage::list(&self.client)
    }

    fn stop(&self, request: BottleRef) -> Result<(), PluginError> {
        manage::stop(&self.client, &request.bottle_id)
    }

    fn logs(&self, request: LogsRequest) -> Result<(), PluginError> {
        attach::logs(&self.client, &request)
    }

    fn wait(&self, request: WaitRequest) -> Result<ExitReport, PluginError> {
        attach::wait(&self.client, &request)
    }

    fn exec(&self, request: ExecRequest) -> Result<ExitReport, PluginError> {
        attach::exec(&self.client, &request)
    }

    fn remove(&self, request: RemoveRequest) -> Result<RemoveReport, PluginError> {
        manage::remove(&self.client, &request)
    }

    fn update_egress(&self, request: EgressUpdate) -> Result<(), PluginError> {
        manage::update_egress(
            &self.client,
            &request.bottle_id,
            request.config.expose().as_bytes(),
        )
    }
}

bot_bottle_plugin_api::export_backend!(DockerBackend::new());
