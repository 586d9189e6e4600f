//! `--load oha`: the keep-alive and new-connection phases driven by `oha`
//! (`cargo install oha --locked`), the load generator of the peers'
//! reference setup (`../shared/bench-peers/README.md`), where the issue's
//! reference figures were seen. The program's own client (the default) stays
//! for SSE and the c=256 phase, and is the harsher of the two on a proxy:
//! every new connection resumes its TLS session, so the handshakes it saves
//! direct are the ones a proxy cannot save.

use std::path::Path;
use std::time::Duration;

use crate::{Load, Res};

/// One phase: `conc` connections for `dur`, kept alive or one per request,
/// through `proxy` if there is one, trusting `trust` (PEM).
pub async fn load(
    oha: &Path,
    trust: &Path,
    proxy: Option<std::net::SocketAddr>,
    url: &str,
    conc: usize,
    dur: Duration,
    keepalive: bool,
) -> Res<Load> {
    let mut cmd = tokio::process::Command::new(oha);
    cmd.arg("-z")
        .arg(format!("{}ms", dur.as_millis()))
        .arg("-c")
        .arg(conc.to_string())
        .args(["--no-tui", "--output-format", "json", "--cacert"])
        .arg(trust);
    if !keepalive {
        cmd.arg("--disable-keepalive");
    }
    if let Some(p) = proxy {
        cmd.arg("-x").arg(format!("http://{p}"));
    }
    let out = cmd
        .arg(url)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("{}: {e} (cargo install oha --locked)", oha.display()))?;
    if !out.status.success() {
        return Err(format!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ok = v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0);
    // Requests cut off by the phase's deadline are oha's way of stopping,
    // not failures.
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let other_status: u64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| *k != "200")
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let ms = |p: &str| {
        v["latencyPercentiles"][p]
            .as_f64()
            .map_or(f64::NAN, |s| s * 1e3)
    };
    Ok(Load {
        n: ok,
        errors: errors + other_status,
        secs: v["summary"]["total"].as_f64().unwrap_or(f64::NAN),
        p50: ms("p50"),
        p99: ms("p99"),
    })
}
