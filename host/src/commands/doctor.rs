//! `bottle doctor`: every backend's and provider's check, one line each.
//! With `-f MANIFEST`, the manifest is planned and checked as `bottle plan`
//! checks it (an error there is a `manifest` line), its backend and
//! provider are checked with the manifest's options for them, the backend
//! also with the bottle it describes (a `runtime`, an image or a network
//! the daemon lacks, say), and a backend or provider the manifest names but
//! nobody installed is an error. Without one, the host passes when at
//! least one backend can run a bottle: the errors of the others are shown
//! as warnings.

use std::process::ExitCode;

use bot_bottle_plugin_api::{CheckRequest, Finding, Severity};
use serde::Serialize;

use crate::cli::{Cli, DoctorArgs};
use crate::manifest::{Manifest, ManifestError};
use crate::output::print_json;

#[derive(Serialize)]
struct Line {
    plugin: String,
    kind: String,
    #[serde(flatten)]
    finding: Finding,
}

/// The manifest's options for the plugin `name` of `kind` ("backend" or
/// "provider"), when the manifest uses it; None when it does not.
fn options_if_used<'m>(m: &'m Manifest, kind: &str, name: &str) -> Option<&'m serde_json::Value> {
    match kind {
        "backend" if m.backend == name => Some(&m.backend_options),
        "provider" if m.provider == name => Some(&m.provider_options),
        _ => None,
    }
}

pub(super) fn run(cli: &Cli, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    // A bad manifest is the error it is for `bottle plan`, before any check.
    let manifest = args.file.as_deref().map(Manifest::load).transpose()?;
    let plugins = super::load_plugins(cli);
    let mut lines = Vec::new();
    for e in &plugins.errors {
        lines.push(Line {
            plugin: e.path().display().to_string(),
            kind: "plugin".into(),
            finding: Finding::error("plugin load", e.to_string(), "see the message"),
        });
    }
    let host_env = crate::plan::host_env();
    // With a manifest whose plugins are installed: its plan, and what
    // `bottle run` would refuse before creating anything, as `bottle plan`
    // says it. The bottle it describes goes to its backend's check.
    let mut bottle = None;
    if let Some(m) = &manifest {
        if let (Ok(_), Ok(backend)) = (plugins.provider(&m.provider), plugins.backend(&m.backend)) {
            let mut refused = |e: &dyn std::fmt::Display| {
                lines.push(Line {
                    plugin: m.name.clone(),
                    kind: "manifest".into(),
                    finding: Finding::error(
                        "plan",
                        e.to_string(),
                        format!("`bottle plan -f {}` shows the plan", m.path.display()),
                    ),
                })
            };
            match crate::plan::plan(m.clone(), &plugins, &host_env) {
                Err(e) => refused(&e),
                Ok(plan) => {
                    if let Some(missing) = &plan.egress.missing {
                        refused(missing);
                    }
                    if let Err(e) = crate::launch::preflight(&plan) {
                        refused(&e);
                    }
                    if let Err(e) = crate::launch::validate_with_backend(&plan, &backend) {
                        refused(&e);
                    }
                    bottle = Some(plan.validate_request());
                }
            }
        }
    }
    // The options a plugin is checked with: the manifest's for the backend
    // and provider it names, none otherwise; the manifest's backend also
    // gets the bottle.
    let request = |kind: &str, name: &str| {
        let options = manifest
            .as_ref()
            .and_then(|m| options_if_used(m, kind, name))
            .cloned()
            .unwrap_or_default();
        let bottle = match manifest.as_ref() {
            Some(m) if kind == "backend" && m.backend == name => bottle.clone(),
            _ => None,
        };
        CheckRequest {
            host_env: host_env.clone(),
            options,
            bottle,
            ..Default::default()
        }
    };
    if let Some(m) = &manifest {
        let installed = |kind: &str, name: &str| match kind {
            "backend" => plugins.backends().any(|b| b.plugin.info.name == name),
            _ => plugins.providers().any(|p| p.plugin.info.name == name),
        };
        let checked =
            m.check_backend_tables(plugins.backends().map(|b| b.plugin.info.name.as_str()));
        for w in checked.as_ref().map(Vec::as_slice).unwrap_or_default() {
            eprintln!("warning: {w}");
        }
        if let Err(e) = checked {
            lines.push(Line {
                plugin: m.backend.clone(),
                kind: "backend".into(),
                finding: Finding::error(
                    "manifest",
                    e.to_string(),
                    "fix the table's name or remove the table",
                ),
            });
        }
        for (kind, name) in [("backend", &m.backend), ("provider", &m.provider)] {
            if !installed(kind, name) {
                lines.push(Line {
                    plugin: name.clone(),
                    kind: kind.into(),
                    finding: Finding::error(
                        "manifest",
                        format!(
                            "{} names {kind} `{name}`, which is not installed",
                            m.path.display()
                        ),
                        "`bottle plugins list` shows what is installed",
                    ),
                });
            }
        }
    }
    // A finding about the options the manifest gives a plugin names the
    // file and the table's line (a check reports no key).
    let place = |kind: &str, name: &str, mut f: Finding| -> Finding {
        let Some(m) = manifest
            .as_ref()
            .filter(|m| options_if_used(m, kind, name).is_some())
        else {
            return f;
        };
        let (table, header) = match kind {
            "backend" => (
                crate::manifest::key_path("backends", name),
                format!("[backends.{name}]"),
            ),
            _ => ("agent.options".to_string(), "[agent.options]".to_string()),
        };
        if f.severity == Severity::Error && f.message.starts_with(&header) {
            if let ManifestError::Invalid {
                path, line, column, ..
            } = m.error_at(&table, String::new())
            {
                f.message = format!("{}:{line}:{column}: {}", path.display(), f.message);
            }
        }
        f
    };
    let mut record = |name: &str,
                      kind: &str,
                      result: Result<
        bot_bottle_plugin_api::CheckReport,
        crate::plugins::PluginCallError,
    >| match result {
        Ok(report) => lines.extend(report.findings.into_iter().map(|f| Line {
            plugin: name.into(),
            kind: kind.into(),
            finding: place(kind, name, f),
        })),
        Err(e) => lines.push(Line {
            plugin: name.into(),
            kind: kind.into(),
            finding: Finding::error("check", e.to_string(), "see the message"),
        }),
    };
    for b in plugins.backends() {
        let name = &b.plugin.info.name;
        record(name, "backend", b.check(&request("backend", name)));
    }
    for p in plugins.providers() {
        let name = &p.plugin.info.name;
        record(name, "provider", p.check(&request("provider", name)));
    }
    // Without a manifest, the answer is whether this host can run a bottle
    // at all: one usable backend is enough. The errors of a backend that
    // cannot run here (a missing engine, no KVM) are shown as warnings
    // while another can; with none usable they stay errors.
    if manifest.is_none() {
        let unusable = |name: &str, lines: &[Line]| {
            lines.iter().any(|l| {
                l.kind == "backend" && l.plugin == name && l.finding.severity == Severity::Error
            })
        };
        let names: Vec<String> = plugins
            .backends()
            .map(|b| b.plugin.info.name.clone())
            .collect();
        let (usable, not): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|n| !unusable(n, &lines));
        let host_line = |finding: Finding| Line {
            plugin: "bottle".into(),
            kind: "host".into(),
            finding,
        };
        if usable.is_empty() {
            let message = if names.is_empty() {
                "no backend is installed".to_string()
            } else {
                "no backend can run a bottle on this host".to_string()
            };
            lines.push(host_line(Finding::error(
                "backends",
                message,
                "fix one backend's errors above (their hints say how), or install another backend",
            )));
        } else {
            for l in lines.iter_mut().filter(|l| {
                l.kind == "backend"
                    && not.contains(&&l.plugin)
                    && l.finding.severity == Severity::Error
            }) {
                l.finding.severity = Severity::Warn;
            }
            let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            lines.push(host_line(Finding::ok(
                "backends",
                format!("usable on this host: {}", list(&usable)),
            )));
            if !not.is_empty() {
                lines.push(host_line(Finding::warn(
                    "backends",
                    format!(
                        "not usable on this host: {}; a manifest naming one fails until its \
                         warnings above are fixed",
                        list(&not)
                    ),
                    "the hints above say how to enable each",
                )));
            }
        }
    }
    // With a manifest, the answer is whether *it* can run: errors of the
    // plugins it does not use are shown but do not fail the command.
    let counts = |l: &Line| match &manifest {
        None => true,
        Some(m) => l.kind == "manifest" || options_if_used(m, &l.kind, &l.plugin).is_some(),
    };
    let failed = lines
        .iter()
        .any(|l| l.finding.severity == Severity::Error && counts(l));
    // And shown as warnings, so that an ERROR line always means exit 1.
    for l in lines.iter_mut() {
        if l.finding.severity == Severity::Error && !counts(l) {
            l.finding.severity = Severity::Warn;
        }
    }
    if args.json {
        print_json(&lines)?;
    } else {
        for l in &lines {
            let mark = match l.finding.severity {
                Severity::Ok => "ok   ",
                Severity::Warn => "warn ",
                Severity::Error => "ERROR",
            };
            let hint = l
                .finding
                .hint
                .as_deref()
                .map(|h| format!(" — {h}"))
                .unwrap_or_default();
            println!(
                "{mark} {} {}: {}: {}{hint}",
                l.kind, l.plugin, l.finding.subject, l.finding.message
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
