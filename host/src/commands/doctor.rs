//! `bottle doctor`: every backend's and provider's check, one line each.

use std::process::ExitCode;

use bot_bottle_plugin_api::{CheckRequest, Finding, Severity};
use serde::Serialize;

use crate::cli::Cli;
use crate::output::print_json;

#[derive(Serialize)]
struct Line {
    plugin: String,
    kind: String,
    #[serde(flatten)]
    finding: Finding,
}

pub(super) fn run(cli: &Cli, json: bool) -> anyhow::Result<ExitCode> {
    let plugins = super::load_plugins(cli);
    let mut lines = Vec::new();
    for e in &plugins.errors {
        lines.push(Line {
            plugin: e.path().display().to_string(),
            kind: "plugin".into(),
            finding: Finding::error("plugin load", e.to_string(), "see the message"),
        });
    }
    let request = CheckRequest {
        host_env: crate::plan::host_env(),
        ..Default::default()
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
            finding: f,
        })),
        Err(e) => lines.push(Line {
            plugin: name.into(),
            kind: kind.into(),
            finding: Finding::error("check", e.to_string(), "see the message"),
        }),
    };
    for b in plugins.backends() {
        record(&b.plugin.info.name, "backend", b.check(&request));
    }
    for p in plugins.providers() {
        record(&p.plugin.info.name, "provider", p.check(&request));
    }
    let failed = lines.iter().any(|l| l.finding.severity == Severity::Error);
    if json {
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
