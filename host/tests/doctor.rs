//! `bottle doctor -f MANIFEST` through the real binary and plugins: the
//! manifest's options reach its backend's check, a plugin it names but
//! nobody installed is an error, and a bad file is the error `plan` gives.
//! (The Docker half, a `runtime` the daemon lacks, is in
//! tests/tests/docker_bottle.rs.)

mod support;

use support::*;

/// `bottle doctor --json -f` on `text`: (exit code, findings, stderr).
fn doctor(text: &str) -> (i32, Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = dir.path().join("bottle.toml");
    std::fs::write(&p, text).unwrap();
    let (code, out, err) = run(bottle(data.path())
        // No daemon: the test must not depend on one (its finding is an
        // error of its own, beside the ones checked here).
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["doctor", "--json", "-f"])
        .arg(&p));
    let lines = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, lines, err)
}

const BASE: &str = r#"
name = "doctor"
backend = "docker"

[agent]
provider = "generic"
image = "debian:12"
"#;

fn finding<'a>(
    lines: &'a [serde_json::Value],
    plugin: &str,
    subject: &str,
) -> Option<&'a serde_json::Value> {
    lines
        .iter()
        .find(|l| l["plugin"] == plugin && l["subject"] == subject)
}

#[test]
fn the_manifests_backend_options_reach_its_check() {
    // Without a manifest the docker check sees no options.
    let data = tempfile::tempdir().unwrap();
    let (_, out, err) = run(bottle(data.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["doctor", "--json"]));
    let plain: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(
        finding(&plain, "docker", "docker options").is_none(),
        "{out}\n{err}"
    );
    // With one, a key the backend does not know is its finding.
    let (code, lines, err) = doctor(&format!("{BASE}\n[backends.docker]\nruntme = \"runsc\"\n"));
    assert_eq!(code, 1, "{lines:?}\n{err}");
    let f = finding(&lines, "docker", "docker options").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(f["severity"], "error");
    assert!(f["message"].as_str().unwrap().contains("runtme"), "{f}");
    // At the table's line in the file.
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("bottle.toml:9:1: [backends.docker] in the manifest: unknown field `runtme`"),
        "{f}"
    );
}

#[test]
fn a_backend_table_no_backend_owns_is_an_error() {
    let (code, lines, err) = doctor(&format!("{BASE}\n[backends.dokcer]\nruntime = \"runsc\"\n"));
    assert_eq!(code, 1, "{lines:?}\n{err}");
    let f = finding(&lines, "docker", "manifest").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(f["severity"], "error");
    let message = f["message"].as_str().unwrap();
    assert!(
        message.contains("bottle.toml:9:11: no backend is named `dokcer`"),
        "{f}"
    );
    assert!(message.contains("did you mean `[backends.docker]`?"), "{f}");
}

#[test]
fn a_backend_the_manifest_names_but_nobody_installed_is_an_error() {
    let (code, lines, err) = doctor(&BASE.replace("backend = \"docker\"", "backend = \"nosuch\""));
    assert_eq!(code, 1, "{lines:?}\n{err}");
    let f = finding(&lines, "nosuch", "manifest").unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(f["severity"], "error");
    assert_eq!(f["kind"], "backend");
    assert!(
        f["message"].as_str().unwrap().contains("not installed"),
        "{f}"
    );
}

#[test]
fn a_missing_or_broken_manifest_is_the_error_plan_gives() {
    let data = tempfile::tempdir().unwrap();
    let (code, out, err) =
        run(bottle(data.path()).args(["doctor", "-f", "/nonexistent/bottle.toml"]));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.is_empty(), "no checks ran: {out}");
    assert!(
        err.contains("cannot read manifest /nonexistent/bottle.toml"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bottle.toml");
    std::fs::write(&p, "name = \"x\"\nbackend = \n").unwrap();
    let (code, out, err) = run(bottle(data.path()).args(["doctor", "-f"]).arg(&p));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("bottle.toml"), "{err}");
}

/// `doctor -f` runs the plan: what `bottle run` would refuse before it
/// creates anything (here: an unset token ref, a workspace that is not
/// there) is an error finding of the manifest, and the exit status is 1.
#[test]
fn doctor_with_a_manifest_runs_its_plan() {
    let text = format!(
        "{BASE}command = [\"true\"]\n[[egress.route]]\nhost = \"api.example.test\"\n\
         inject = [{{ header = \"Authorization\", value = \"Bearer {{token}}\", token_ref = \"DOCTOR_UNSET_TOKEN\" }}]\n"
    );
    let (code, lines, err) = doctor(&text);
    assert_eq!(code, 1, "{lines:?}\n{err}");
    let f = lines
        .iter()
        .find(|l| l["kind"] == "manifest" && l["subject"] == "plan")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(f["severity"], "error");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("egress token ref `DOCTOR_UNSET_TOKEN` not set"),
        "{f}"
    );
    let (code, lines, err) = doctor(&format!(
        "{BASE}command = [\"true\"]\n[workspace]\npath = \"/nonexistent/ws\"\n"
    ));
    assert_eq!(code, 1, "{lines:?}\n{err}");
    let f = lines
        .iter()
        .find(|l| l["kind"] == "manifest" && l["subject"] == "plan")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("workspace.path /nonexistent/ws does not exist"),
        "{f}"
    );
}

/// Without -f, doctor asks whether bottle can work on this host at all:
/// a backend that cannot run here (no daemon, no engine) is a warning
/// while another backend can, and an error when none can.
#[test]
fn doctor_without_a_manifest_needs_one_usable_backend() {
    let data = tempfile::tempdir().unwrap();
    let doctor = |extra: Option<&std::path::Path>| {
        let mut cmd = bottle(data.path());
        cmd.env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
        if let Some(dir) = extra {
            cmd.arg("--plugin-dir").arg(dir);
        }
        run(cmd.args(["doctor"]))
    };
    // Only docker, and no daemon: nothing can run a bottle.
    let (code, out, err) = doctor(None);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("ERROR backend docker: docker daemon"), "{out}");
    assert!(
        out.contains("no backend can run a bottle on this host"),
        "{out}"
    );
    // Another backend that works: docker's trouble is a warning, exit 0.
    let minimal = fixture("backend-minimal");
    let plugins = plugin_dir(&[&minimal]);
    let (code, out, err) = doctor(Some(plugins.path()));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("warn  backend docker: docker daemon"), "{out}");
    assert!(
        out.contains("ok    backend fixture-minimal: engine"),
        "{out}"
    );
    assert!(
        out.contains("ok    host bottle: backends: usable on this host: fixture-minimal"),
        "{out}"
    );
}

/// A backend written before the plan-time `validate` hook existed still
/// plans: the host takes its `unsupported` answer as nothing to check.
#[test]
fn a_backend_without_validate_still_plans() {
    let minimal = fixture("backend-minimal");
    let plugins = plugin_dir(&[&minimal]);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = dir.path().join("bottle.toml");
    std::fs::write(
        &p,
        BASE.replace("backend = \"docker\"", "backend = \"fixture-minimal\"")
            + "command = [\"true\"]\n",
    )
    .unwrap();
    let (code, out, err) = run(bottle(data.path())
        .arg("--plugin-dir")
        .arg(plugins.path())
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 0, "{out}\n{err}");
    // The docker backend, which this manifest does not use, cannot reach
    // a daemon: shown, as a warning, since ERROR means the exit status 1.
    let (code, out, err) = run(bottle(data.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .arg("--plugin-dir")
        .arg(plugins.path())
        .args(["doctor", "-f"])
        .arg(&p));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("ERROR"), "{out}");
    assert!(out.contains("warn  backend docker"), "{out}");
}
