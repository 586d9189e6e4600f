//! The connection to the Docker daemon and the mapping of its errors to
//! [`PluginError`]s a user can act on.

use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::{Docker, API_DEFAULT_VERSION};
use bot_bottle_plugin_api::PluginError;
use tokio::sync::OnceCell;

/// The local default when `DOCKER_HOST` is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Timeout for ordinary requests, in seconds (an image import included).
const REQUEST_TIMEOUT_SECS: u64 = 300;
/// Timeout for requests that last as long as the agent does (attach, wait,
/// logs with follow).
const LONG_TIMEOUT: Duration = Duration::from_secs(60 * 60 * 24 * 365);

/// A lazily connected client; the first call negotiates the API version.
#[derive(Debug)]
pub struct Client {
    host: String,
    docker: OnceCell<Docker>,
}

impl Client {
    /// The daemon named by `DOCKER_HOST`, or the local default.
    pub fn from_env() -> Self {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
        Self::new(host)
    }

    /// The daemon at `host`.
    pub fn new(host: String) -> Self {
        Self {
            host,
            docker: OnceCell::new(),
        }
    }

    /// Where the daemon is expected.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// A connected client for ordinary requests.
    pub async fn docker(&self) -> Result<Docker, PluginError> {
        self.docker
            .get_or_try_init(|| async {
                let docker = connect(&self.host)?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| self.unreachable(&e))
            })
            .await
            .cloned()
    }

    /// A connected client whose requests may last as long as the agent.
    pub async fn docker_long(&self) -> Result<Docker, PluginError> {
        Ok(self.docker().await?.with_timeout(LONG_TIMEOUT))
    }

    /// The one error for a daemon that does not answer.
    pub fn unreachable(&self, e: &DockerError) -> PluginError {
        unreachable(&self.host, e)
    }

    /// Maps a failed request: a connection failure becomes
    /// [`Client::unreachable`], an answer from the daemon names `what` failed.
    pub fn api(&self, what: &str, e: DockerError) -> PluginError {
        match &e {
            DockerError::HyperLegacyError { .. }
            | DockerError::IOError { .. }
            | DockerError::RequestTimeoutError => {
                let mut err = self.unreachable(&e);
                err.message = format!("{what}: {}", err.message);
                err
            }
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => {
                let err = PluginError::internal(format!(
                    "{what}: the Docker daemon answered {status_code}: {}",
                    message.trim()
                ));
                match status_code {
                    404 => PluginError {
                        kind: bot_bottle_plugin_api::ErrorKind::NotFound,
                        ..err
                    }
                    .with_hint("it may have been removed already; `bottle ls` lists what exists"),
                    409 => err.with_hint(
                        "another bot-bottle or docker command may be working on the same bottle; try again",
                    ),
                    _ => err.with_hint("run with -v for details; `docker info` shows the daemon's state"),
                }
            }
            _ => PluginError::internal(format!("{what}: {}", chain(&e)))
                .with_hint("run with -v for details; `docker info` shows the daemon's state"),
        }
    }
}

fn connect(host: &str) -> Result<Docker, PluginError> {
    let unsupported = || {
        PluginError::invalid(format!("DOCKER_HOST `{host}` is not supported by bot-bottle"))
            .with_hint("use unix:///path/to/docker.sock or tcp://host:port (TLS and ssh are not supported yet)")
    };
    let docker = if host.starts_with("unix://") {
        // bollard looks for the socket file here already.
        return Docker::connect_with_unix(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|e| unreachable(host, &e));
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else {
        return Err(unsupported());
    };
    docker.map_err(|e| {
        PluginError::invalid(format!("cannot use DOCKER_HOST `{host}`: {}", chain(&e)))
            .with_hint("use unix:///path/to/docker.sock or tcp://host:port")
    })
}

fn unreachable(host: &str, e: &DockerError) -> PluginError {
    PluginError::unavailable(format!(
        "cannot reach the Docker daemon at {host}: {}",
        chain(e)
    ))
    .with_hint(
        "start it (`dockerd` / `systemctl start docker`) or set DOCKER_HOST to a daemon that runs",
    )
    .retryable()
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether `e` is the daemon saying "no such thing".
pub fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether `e` is the daemon saying "already in that state" (304).
pub fn is_not_modified(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// Creates a container under `name`, shared by every launch: if another
/// launch takes the name first (Docker answers 409), waits until that one
/// can be found ([`appeared`]). `what` names it in errors.
pub async fn create_shared(
    client: &Client,
    docker: &Docker,
    name: &str,
    body: bollard::models::ContainerCreateBody,
    what: &str,
) -> Result<(), PluginError> {
    let options = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match docker.create_container(Some(options), body).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409, ..
        }) => appeared(client, docker, name, what).await,
        Err(e) => Err(client.api(&format!("creating {what}"), e)),
    }
}

/// Waits until the container `name`, which another launch is creating
/// (Docker answered our create with 409: the name is taken before the
/// container can be found), can be found. `what` names it in errors.
pub async fn appeared(
    client: &Client,
    docker: &Docker,
    name: &str,
    what: &str,
) -> Result<(), PluginError> {
    for _ in 0..100 {
        match docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(client.api(&format!("finding {what}"), e)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(PluginError::unavailable(format!(
        "{what} {name} is being made by another launch and did not appear"
    ))
    .with_hint("try again")
    .retryable())
}
