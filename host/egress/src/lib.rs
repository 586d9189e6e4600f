//! bot-bottle's egress proxy: the only way out of a bottle, and the only
//! place a real credential lives while the agent runs.
//!
//! The host writes a [`config::ProxyConfig`] (routes, resolved token values,
//! the bottle CA made with [`ca::BottleCa::generate`]); the proxy reads it and
//! [`serve`]s. [`check`] says what the proxy would do with one request.
//! See `docs/egress.md`.

pub mod addr;
pub mod audit;
mod body_override;
pub mod ca;
pub mod config;
mod dlp;
mod dlp_body;
pub mod error;
mod headers;
mod held_writes;
mod in_flight;
mod listener;
mod path_readings;
mod proxy;
mod reflected;
pub mod route;
mod tls;
mod tunnel;
mod upstream;
mod workers;
mod ws;
mod ws_down;

/// The DLP stage's rules and its scan, for the `bot-bottle-bench-dlp`
/// benchmark (bench/egress) only: not an API.
#[doc(hidden)]
pub mod dlp_bench {
    /// The rules' patterns, as the scanner compiles them.
    pub fn patterns() -> Vec<&'static str> {
        crate::dlp::RULES.iter().map(|(_, p)| *p).collect()
    }

    /// The rules' ids, in the order of [`patterns`].
    pub fn names() -> Vec<String> {
        crate::dlp::RULES
            .iter()
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// The scanner with the built-in rules and no bottle tokens.
    #[derive(Debug)]
    pub struct Scanner(crate::dlp::Dlp);

    impl Scanner {
        pub fn new() -> Result<Self, crate::EgressError> {
            let cfg: crate::ProxyConfig = serde_json::from_value(serde_json::json!({
                "schema": 1, "bottle_id": "bench", "ca": {"cert_pem": "", "key_pem": ""}
            }))
            .map_err(|e| crate::EgressError::ConfigInvalid {
                message: e.to_string(),
            })?;
            Ok(Self(crate::dlp::Dlp::new(&cfg)?))
        }

        /// Rule ids found in `data` scanned whole, as a request head or a
        /// WebSocket frame is.
        pub fn scan_whole(&self, data: &[u8]) -> Vec<String> {
            let mut out = Vec::new();
            self.0.scan_into(data, &mut out);
            out
        }

        /// Rule ids found in `data`, fed in 64 KiB pieces as a decoded body
        /// is.
        pub fn scan(&self, data: &[u8]) -> Vec<String> {
            let mut scan = crate::dlp::StreamScan::new(&self.0);
            let mut out = Vec::new();
            for piece in data.chunks(64 * 1024) {
                scan.feed(piece, &mut out);
            }
            out
        }
    }
}

pub use audit::AuditRecord;
pub use ca::{BottleCa, CaError};
pub use config::ProxyConfig;
pub use error::EgressError;
pub use listener::Listener;
pub use route::{check, host_admitted, port_admitted, Action, Decision};

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
/// Raises the process's soft limit on open descriptors to its hard limit,
/// as the proxy's own process does.
pub async fn serve_on(
    config: ProxyConfig,
    listener: tokio::net::TcpListener,
) -> Result<(), EgressError> {
    let shared = proxy::Shared::new(config)?;
    // As the proxy's own threads do (`workers::run`): the caller's process
    // (the smolmachines gate) is the bottle's, and its descriptors are the
    // proxy's connections.
    workers::raise_nofile_limit();
    proxy::run(proxy::Live::new(shared), Some(listener.into())).await
}

/// What the command line of `bottle egress serve` may override in the
/// config file: where to listen, and which client networks to serve (the
/// backend knows these only once the bottle's network exists). Applied at
/// start and again on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Listen address instead of the config's `listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// Serve only these client networks (replaces the config's
    /// `allowed_clients` when not empty).
    pub allowed_clients: Vec<ipnet::IpNet>,
}

impl Overrides {
    fn load(&self, path: &std::path::Path) -> Result<ProxyConfig, EgressError> {
        Ok(self.apply(ProxyConfig::from_file(path)?))
    }

    /// `config` with these overrides applied.
    pub fn apply(&self, mut c: ProxyConfig) -> ProxyConfig {
        if let Some(l) = self.listen {
            c.listen = l;
        }
        if !self.allowed_clients.is_empty() {
            c.allowed_clients = self.allowed_clients.clone();
        }
        c
    }
}

/// Reads the config from `path` and serves it, with `overrides` applied. On
/// SIGHUP the file is read again and the new config (rotated tokens, routes,
/// local responses) applies from the next request on, also on connections
/// already open; a file that does not load keeps the previous config and
/// logs why. This is what the sidecar runs.
pub async fn serve_file(path: &std::path::Path, overrides: &Overrides) -> Result<(), EgressError> {
    catch_early_hangup();
    let addr = overrides.load(path)?.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| EgressError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    serve_file_on(path, overrides, listener).await
}

/// [`serve_file`] on a listener the caller bound.
pub async fn serve_file_on(
    path: &std::path::Path,
    overrides: &Overrides,
    listener: tokio::net::TcpListener,
) -> Result<(), EgressError> {
    catch_early_hangup();
    let live = proxy::Live::new(proxy::Shared::new(overrides.load(path)?)?);
    reload_on_hangup(&live, path, overrides)?;
    proxy::run(live, Some(listener.into())).await
}

/// Set by the handler [`catch_early_hangup`] installs: a SIGHUP came.
#[cfg(unix)]
static EARLY_HANGUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn early_hangup(_: libc::c_int) {
    // Async-signal-safe: a store, nothing else.
    EARLY_HANGUP.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes a SIGHUP that arrives before the reload loop listens neither fatal
/// (its default action ends the process) nor lost (PID 1 of a container
/// ignores it): a handler remembers it, and the loop reloads once as it
/// starts. Call it before saying the proxy is ready (`listening on`), since
/// a credential rotation may follow at once; [`serve_reloadable`] and
/// `serve_file*` call it first thing. Only the first call does anything (a
/// later one would replace the loop's own handler).
pub fn catch_early_hangup() {
    #[cfg(unix)]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: sigaction reads the struct it is given, which lives
            // for the call; the handler only stores to an atomic. tokio's
            // handler, installed later, chains to this one.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = early_hangup as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                sa.sa_flags = libc::SA_RESTART;
                if libc::sigaction(libc::SIGHUP, &sa, std::ptr::null_mut()) != 0 {
                    tracing::warn!("could not catch SIGHUP before the reload loop starts");
                }
            }
        });
    }
}

/// On SIGHUP, reads the config file again and swaps it in.
fn reload_on_hangup(
    live: &std::sync::Arc<proxy::Live>,
    path: &std::path::Path,
    overrides: &Overrides,
) -> Result<(), EgressError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).map_err(EgressError::Runtime)?;
        let (live, path, overrides) = (live.clone(), path.to_owned(), overrides.clone());
        let reload = move || match overrides.load(&path).and_then(proxy::Shared::new) {
            Ok(s) => {
                live.set(s);
                tracing::info!(config = %path.display(), "egress config reloaded");
            }
            Err(e) => tracing::warn!(
                config = %path.display(),
                error = %e,
                "egress config reload failed; keeping the previous config"
            ),
        };
        // A SIGHUP before `hup` listened (a rotation right after start).
        if EARLY_HANGUP.swap(false, std::sync::atomic::Ordering::SeqCst) {
            reload();
        }
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload();
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (live, path, overrides);
    Ok(())
}

/// [`serve_file`] with a std listener, one worker thread per core; blocks.
pub fn serve_file_with_listener(
    path: &std::path::Path,
    overrides: &Overrides,
    listener: impl Into<Listener>,
) -> Result<(), EgressError> {
    catch_early_hangup();
    serve_reloadable(overrides.load(path)?, path, overrides, listener)
}

/// Serves `first` (overrides already applied) with a std listener, one
/// worker thread per core, and reloads from `path` on SIGHUP; blocks. This
/// is what `bottle egress serve` and the sidecar run: the sidecar's first
/// config comes on its standard input, so that no file holds it until a
/// credential rotation writes one.
pub fn serve_reloadable(
    first: ProxyConfig,
    path: &std::path::Path,
    overrides: &Overrides,
    listener: impl Into<Listener>,
) -> Result<(), EgressError> {
    catch_early_hangup();
    workers::set_count(workers::per_core());
    let live = proxy::Live::new(proxy::Shared::new(first)?);
    let (path, overrides) = (path.to_owned(), overrides.clone());
    workers::run(listener.into(), move |i, l| {
        let (live, path, overrides) = (live.clone(), path.clone(), overrides.clone());
        async move {
            // One worker listens for SIGHUP; the swap reaches them all.
            if i == 0 {
                reload_on_hangup(&live, &path, &overrides)?;
            }
            proxy::run(live, l).await
        }
    })
}

/// Checks the config and builds everything the proxy needs (CA, trust
/// store, audit log) without listening: the errors [`serve`] would give at
/// start.
pub fn validate(config: &ProxyConfig) -> Result<(), EgressError> {
    proxy::Shared::new(config.clone()).map(|_| ())
}

/// Checks an upstream proxy URL as the proxy will read it (`http://host:port`,
/// no path, no credentials); the error says what is wrong without echoing
/// a credential. For the host, which checks manifests before launching.
pub fn check_upstream_proxy_url(url: &str) -> Result<(), String> {
    upstream::parse_proxy_url(url).map(|_| ())
}

/// [`serve_on`] with a std listener, one worker thread per core; blocks.
pub fn serve_with_listener(
    config: ProxyConfig,
    listener: impl Into<Listener>,
) -> Result<(), EgressError> {
    workers::set_count(workers::per_core());
    let live = proxy::Live::new(proxy::Shared::new(config)?);
    workers::run(listener.into(), move |_, l| proxy::run(live.clone(), l))
}
