//! `bottle check-workspace`: every git setting in a workspace that makes
//! git run a command, for after a detached bottle (an attached `bottle run`
//! compares with the state at launch by itself).

use std::process::ExitCode;

use crate::cli::CheckWorkspaceArgs;
use crate::manifest::Manifest;
use crate::workspace_guard::{audit, MAX_DEPTH, MAX_DIRS};

pub(super) fn run(args: &CheckWorkspaceArgs) -> anyhow::Result<ExitCode> {
    let root = match &args.path {
        Some(p) => p.clone(),
        None => {
            let m = Manifest::load(&args.file)?;
            m.workspace.ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: no [workspace] path to check; name a directory instead",
                    args.file.display()
                )
            })?
        }
    };
    if !root.is_dir() {
        anyhow::bail!("{} is not a directory", root.display());
    }
    let (findings, truncated) = audit(&root);
    for f in &findings {
        println!("{f}");
    }
    if truncated {
        // An agent can hide a repository past the bound (50,000 empty
        // directories first): an incomplete look is not a clean bill.
        eprintln!(
            "error: only {MAX_DIRS} directories, {MAX_DEPTH} deep, were looked at for nested repositories; \
             the rest of {} was not checked",
            root.display()
        );
        return Ok(ExitCode::from(1));
    }
    if findings.is_empty() {
        eprintln!(
            "{}: no git setting there makes git run a command",
            root.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} setting(s) above make git run commands; remove those you did not write before running git in {}",
        findings.len(),
        root.display()
    );
    Ok(ExitCode::from(1))
}
