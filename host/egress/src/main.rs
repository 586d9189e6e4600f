//! `bot-bottle-egress --config FILE [--listen ADDR]`: the proxy as its own
//! program, for the proxy's tests and the benchmark, which want it without
//! the host. No backend runs it: the Docker sidecar runs `bottle egress
//! serve`, and the smolmachines gate links the library and serves in-process.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut config, mut listen) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next(),
            "--listen" => listen = args.next(),
            _ => {
                eprintln!("usage: bot-bottle-egress --config FILE [--listen ADDR]");
                return ExitCode::from(2);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let Some(path) = config else {
        eprintln!("usage: bot-bottle-egress --config FILE [--listen ADDR]");
        return ExitCode::from(2);
    };
    let run = || -> Result<(), Box<dyn std::error::Error>> {
        let path = std::path::PathBuf::from(path);
        let cfg = bot_bottle_egress::ProxyConfig::from_file(&path)?;
        let listen: Option<std::net::SocketAddr> = match listen {
            Some(l) => Some(
                l.parse()
                    .map_err(|_| format!("--listen {l:?} is not host:port"))?,
            ),
            None => None,
        };
        let listener = std::net::TcpListener::bind(listen.unwrap_or(cfg.listen))?;
        // A rotation may follow this line at once.
        bot_bottle_egress::catch_early_hangup();
        // Tests read the port from here when they pass port 0.
        eprintln!("listening on {}", listener.local_addr()?);
        let overrides = bot_bottle_egress::Overrides {
            listen,
            ..Default::default()
        };
        bot_bottle_egress::serve_file_with_listener(&path, &overrides, listener)?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut cur = e.source();
            while let Some(c) = cur {
                msg.push_str(&format!(": {c}"));
                cur = c.source();
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
