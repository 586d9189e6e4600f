//! `bottle plan`: stages 1–4, printed, nothing launched.

use std::process::ExitCode;

use crate::cli::{Cli, PlanArgs};
use crate::egress_plan::TokenSource;
use crate::launch;
use crate::manifest::{DlpMode, Manifest};
use crate::output::print_json;
use crate::plan::{self, BottlePlan};

pub(super) fn run(cli: &Cli, args: &PlanArgs) -> anyhow::Result<ExitCode> {
    let manifest = Manifest::load(&args.file)?;
    let plugins = super::load_plugins(cli);
    super::warn_load_errors(&plugins);
    let plan = plan::plan(manifest, &plugins, &plan::host_env())?;
    // What `bottle run` would refuse before creating anything, refused
    // here too: the host's checks, then the backend's.
    launch::preflight(&plan)?;
    launch::validate_with_backend(&plan, &plugins.backend(&plan.manifest.backend)?)?;
    if args.json {
        print_json(&plan.view())?;
    } else {
        print_human(&plan);
    }
    match &plan.egress.missing {
        None => Ok(ExitCode::SUCCESS),
        Some(missing) => Err(anyhow::anyhow!("{missing}")),
    }
}

fn print_human(plan: &BottlePlan) {
    let v = plan.view();
    println!("bottle {} ({})", v.name, v.manifest.display());
    println!(
        "  provider  {} {}  {}",
        v.provider.name,
        v.provider.version,
        v.provider.path.display()
    );
    println!(
        "  backend   {} {}  {}",
        v.backend.name,
        v.backend.version,
        v.backend.path.display()
    );
    println!("  image     {}", v.image);
    println!("  command   {}", shell_words(v.command));
    if let Some(w) = &v.workspace {
        println!(
            "  workspace {} -> {} (read-write)",
            w.host.display(),
            w.sandbox
        );
    }
    for m in v.mounts {
        println!(
            "  mount     {} -> {} ({})",
            m.host.display(),
            m.sandbox,
            if m.writable {
                "read-write"
            } else {
                "read-only"
            }
        );
    }
    println!("\nagent env (dummies and plain values only):");
    for (k, val) in v.env {
        if launch::PROXY_VARIABLES.contains(&k.to_ascii_uppercase().as_str()) {
            println!("  {k}={val} (replaced by the backend's: the egress proxy)");
        } else {
            println!("  {k}={val}");
        }
    }
    println!(
        "  and {} (either case), set by the backend to the egress proxy",
        launch::PROXY_VARIABLES.join(", ")
    );
    if !v.files.is_empty() {
        println!("\nfiles placed in the sandbox:");
        for f in &v.files {
            println!("  {} (mode {}, {} bytes)", f.path, f.mode, f.bytes);
        }
    }
    println!("\negress (deny by default; only these leave the bottle):");
    if v.routes.is_empty() && v.tls_passthrough.is_empty() {
        println!("  (no routes: the agent can reach nothing)");
    }
    for r in v.routes {
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let port = match ports.len() {
            0 => String::new(),
            1 => format!(":{}", ports[0]),
            _ => format!(":{{{}}}", ports.join(",")),
        };
        let mut line = format!(
            "  {}{port}{}",
            r.host,
            r.path_prefix.as_deref().unwrap_or("")
        );
        if !r.methods.is_empty() {
            line.push_str(&format!(" [{}]", r.methods.join(",")));
        }
        if r.plain_http {
            line.push_str(" (plain http allowed)");
        }
        for h in &r.inject {
            match &h.token_ref {
                Some(t) => line.push_str(&format!(
                    "  inject {}: {}",
                    h.header,
                    h.value.replace("{token}", &format!("${t}"))
                )),
                None => line.push_str(&format!("  inject {}: (literal)", h.header)),
            }
        }
        line.push_str(&format!("  from {}", r.source));
        println!("{line}");
    }
    for h in v.tls_passthrough {
        println!("  {h} (tls passthrough: tunnelled, not decrypted, nothing injected)");
    }
    for l in &v.local_responses {
        println!("  {l} (answered by the proxy itself with dummies; never forwarded)");
    }
    if !v.allow_internal.is_empty() {
        let nets: Vec<String> = v.allow_internal.iter().map(ToString::to_string).collect();
        println!(
            "  internal networks a host's DNS answer may be in: {} (others are never dialled)",
            nets.join(", ")
        );
    }
    for (host, addr) in v.resolve {
        println!("  {host} is dialled at {addr} (egress.resolve), whatever its DNS says");
    }
    if let Some(ca) = v.upstream_ca {
        println!(
            "  upstream TLS also trusts the CA certificates in {} (besides the system roots)",
            ca.display()
        );
    }
    println!(
        "  dlp: {}",
        match v.dlp {
            DlpMode::Off => "off (requests are not scanned for secret-shaped values)",
            DlpMode::Log => "log (secret-shaped values in requests are logged, not blocked)",
            DlpMode::Block => "block (requests carrying secret-shaped values are refused)",
        }
    );
    if let Some(p) = v.upstream_proxy {
        match v.upstream_proxy_auth_ref {
            Some(r) => {
                println!("  every upstream connection via {p} (Proxy-Authorization: Basic ${r})")
            }
            None => println!("  every upstream connection via {p}"),
        }
    }
    if !v.credential_sources.is_empty() {
        println!("\ncredential sources (watched while the bottle runs; changes are pushed to the proxy):");
        for p in v.credential_sources {
            println!("  {}", p.display());
        }
    }
    if !v.tokens.is_empty() {
        println!("\ntoken refs (values never shown):");
        for t in v.tokens {
            let from = match &t.source {
                TokenSource::Provider { provider } => {
                    format!("resolved, provided by {provider} at prepare time")
                }
                TokenSource::HostEnv => "resolved, from the host environment".to_string(),
                TokenSource::Missing => "MISSING".to_string(),
            };
            println!("  {}: {from}", t.token_ref);
        }
    }
    for n in v.notes {
        println!("\nnote: {n}");
    }
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
