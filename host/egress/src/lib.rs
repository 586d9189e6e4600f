//! bot-bottle's egress proxy: the only way out of a bottle, and the only
//! place a real credential lives while the agent runs.
//!
//! The host writes a [`config::ProxyConfig`] (routes, resolved token values,
//! the bottle CA made with [`ca::BottleCa::generate`]); the proxy reads it and
//! [`serve`]s. [`check`] says what the proxy would do with one request.
//! See `docs/egress.md`.

pub mod audit;
pub mod ca;
pub mod config;
mod dlp;
pub mod error;
mod proxy;
pub mod route;
mod upstream;

pub use audit::AuditRecord;
pub use ca::{BottleCa, CaError};
pub use config::ProxyConfig;
pub use error::EgressError;
pub use route::{check, Action, Decision};

/// Serves on `config.listen` until the process ends.
pub async fn serve(config: ProxyConfig) -> Result<(), EgressError> {
    let addr = config.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| EgressError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    serve_on(config, listener).await
}

/// Serves on a listener the caller bound (tests and adapters bind
/// `127.0.0.1:0` and read the port first). `config.listen` is ignored.
pub async fn serve_on(
    config: ProxyConfig,
    listener: tokio::net::TcpListener,
) -> Result<(), EgressError> {
    let shared = proxy::Shared::new(config)?;
    proxy::run(shared, listener).await
}

/// Checks the config and builds everything the proxy needs (CA, trust
/// store, audit log) without listening: the errors [`serve`] would give at
/// start.
pub fn validate(config: &ProxyConfig) -> Result<(), EgressError> {
    proxy::Shared::new(config.clone()).map(|_| ())
}

fn runtime() -> Result<tokio::runtime::Runtime, EgressError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("egress")
        .build()
        .map_err(EgressError::Runtime)
}

/// [`serve`] on a runtime of its own; blocks.
pub fn serve_blocking(config: ProxyConfig) -> Result<(), EgressError> {
    runtime()?.block_on(serve(config))
}

/// [`serve_on`] with a std listener, on a runtime of its own; blocks.
pub fn serve_with_listener(
    config: ProxyConfig,
    listener: std::net::TcpListener,
) -> Result<(), EgressError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let rt = runtime()?;
    rt.block_on(async move {
        listener
            .set_nonblocking(true)
            .map_err(|source| EgressError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let l = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| EgressError::Listen { addr, source })?;
        serve_on(config, l).await
    })
}
