//! `bottle plan` end to end through real plugins: the stages before launch,
//! their errors, and that no secret value is ever printed.

mod support;

use std::path::{Path, PathBuf};

use support::*;

const CANARY: &str = "canary-7f3a9c1e5b2d4f60-real-token";

fn quickstart() -> PathBuf {
    repo_root().join("examples/quickstart/bottle.toml")
}

/// A copy of the quickstart as `run.sh` leaves it: its workspace, and an
/// `upstream_ca` that holds certificates (the host's own roots stand in
/// for the demo CA `run.sh` generates).
fn quickstart_ready() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspace")).unwrap();
    std::fs::create_dir_all(dir.path().join(".certs")).unwrap();
    std::fs::write(dir.path().join(".certs/ca.pem"), some_certificates()).unwrap();
    let p = dir.path().join("bottle.toml");
    std::fs::copy(quickstart(), &p).unwrap();
    (dir, p)
}

/// PEM certificates from the host's trust store.
fn some_certificates() -> String {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .expect("a CA bundle on the host (Debian: ca-certificates)")
}

fn write_manifest(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("bottle.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn quickstart_plan_shows_routes_and_sources_but_no_secret() {
    let data = tempfile::tempdir().unwrap();
    let (_dir, quickstart) = quickstart_ready();
    for json in [false, true] {
        let mut cmd = bottle(data.path());
        cmd.env("QUICKSTART_API_TOKEN", CANARY)
            .args(["-vv", "plan", "-f"])
            .arg(&quickstart);
        if json {
            cmd.arg("--json");
        }
        let (code, out, err) = run(&mut cmd);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(
            !out.contains(CANARY) && !err.contains(CANARY),
            "the canary leaked:\n{out}\n{err}"
        );
        if json {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["ready"], true);
            assert_eq!(v["routes"][0]["host"], "api.quickstart.test");
            assert_eq!(v["tokens"][0]["token_ref"], "QUICKSTART_API_TOKEN");
            assert_eq!(v["tokens"][0]["from"], "host_env");
            assert_eq!(v["env"]["QUICKSTART_API_TOKEN"], "bot-bottle-dummy");
            assert_eq!(v["env"]["SSL_CERT_FILE"], "/etc/bot-bottle/ca-bundle.pem");
            assert_eq!(v["allow_internal"], serde_json::json!(["10.213.77.10/32"]));
            assert_eq!(v["dlp"], "log");
            assert!(
                v["upstream_ca"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(".certs/ca.pem")),
                "{out}"
            );
        } else {
            assert!(
                out.contains("dlp: log (secret-shaped values in requests are logged, not blocked)"),
                "{out}"
            );
            assert!(
                out.contains("upstream TLS also trusts the CA certificates in ")
                    && out.contains(".certs/ca.pem"),
                "{out}"
            );
            assert!(
                out.contains("internal networks a host's DNS answer may be in: 10.213.77.10/32"),
                "{out}"
            );
            assert!(
                out.contains("QUICKSTART_API_TOKEN: resolved, from the host environment"),
                "{out}"
            );
            assert!(
                out.contains("inject Authorization: Bearer $QUICKSTART_API_TOKEN"),
                "{out}"
            );
        }
    }
}

#[test]
fn missing_token_ref_is_named_and_exit_is_non_zero() {
    let data = tempfile::tempdir().unwrap();
    let (_dir, quickstart) = quickstart_ready();
    let (code, out, err) = run(bottle(data.path())
        .env_remove("QUICKSTART_API_TOKEN")
        .args(["plan", "-f"])
        .arg(&quickstart));
    assert_eq!(code, 1);
    assert!(out.contains("QUICKSTART_API_TOKEN: MISSING"), "{out}");
    assert!(
        err.contains("egress token ref `QUICKSTART_API_TOKEN` not set"),
        "{err}"
    );
}

#[test]
fn manifest_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(quickstart()).unwrap();

    let p = write_manifest(
        dir.path(),
        &base.replace("pids = 64", "pids = 64\nswap = \"1g\""),
    );
    let (code, _, err) = run(bottle(data.path()).args(["plan", "-f"]).arg(&p));
    assert_eq!(code, 1);
    let first = err.lines().next().unwrap();
    assert!(first.contains(&format!("{}:", p.display())), "{err}");
    assert!(
        first.contains("unknown field `swap`") && first.contains("key `resources.swap`"),
        "{err}"
    );

    let p = write_manifest(dir.path(), &base.replace("pids = 64", "pids = \"lots\""));
    let (code, _, err) = run(bottle(data.path()).args(["plan", "-f"]).arg(&p));
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid type") && err.contains("key `resources.pids`"),
        "{err}"
    );

    let (code, _, err) = run(bottle(data.path()).args(["plan", "-f", "/nonexistent/bottle.toml"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read manifest /nonexistent/bottle.toml"),
        "{err}"
    );
}

#[test]
fn missing_provider_or_backend_plugin_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(quickstart()).unwrap();
    let p = write_manifest(
        dir.path(),
        &base.replace("provider = \"generic\"", "provider = \"nosuch\""),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1);
    assert!(
        err.contains("no provider plugin named `nosuch` is installed"),
        "{err}"
    );
    let p = write_manifest(
        dir.path(),
        &base.replace("backend = \"docker\"", "backend = \"nosuch\""),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1);
    assert!(
        err.contains("no backend plugin named `nosuch` is installed"),
        "{err}"
    );
    assert!(err.contains("--plugin-dir"), "{err}");
}

#[test]
fn a_provider_that_panics_in_prepare_is_named_and_the_host_survives() {
    let lib = fixture("panics-in-call");
    let plugins = plugin_dir(&[&lib]);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(quickstart()).unwrap();
    let p = write_manifest(
        dir.path(),
        &base
            .replace("provider = \"generic\"", "provider = \"fixture-panics\"")
            .replace("[agent.options]\n", "[agent.options.x]\n"),
    );
    let (code, _, err) = run(bottle(data.path())
        .arg("--plugin-dir")
        .arg(plugins.path())
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("provider plugin `fixture-panics`: plugin `fixture-panics` panicked in prepare: fixture panic in prepare"), "{err}");
}

#[test]
fn provider_options_are_checked_by_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(quickstart()).unwrap();
    let p = write_manifest(dir.path(), &base.replace("dummy_env =", "dummy_envs ="));
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1);
    assert!(
        err.contains("provider plugin `generic`: [agent.options]: unknown field `dummy_envs`"),
        "{err}"
    );
    // Where: the file, the key's line and its key path.
    let line = line_of(&p, "dummy_envs =");
    assert!(err.contains(&format!("bottle.toml:{line}:14: ")), "{err}");
    assert!(err.contains("(key `agent.options.dummy_envs`)"), "{err}");
    // A wrong type too, which serde names no key for.
    let p = write_manifest(
        dir.path(),
        &base.replace(
            "dummy_env = [\"QUICKSTART_API_TOKEN\"]",
            "ca_trust_env = []\ndummy_env = \"QUICKSTART_API_TOKEN\"",
        ),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1);
    let line = line_of(&p, "dummy_env =");
    assert!(
        err.contains(&format!(
            "bottle.toml:{line}:13: provider plugin `generic`: [agent.options]: invalid type"
        )),
        "{err}"
    );
    assert!(err.contains("(key `agent.options.dummy_env`)"), "{err}");
    assert!(!err.contains("string \"QUICKSTART_API_TOKEN\""), "{err}");
    // A secret put among the options by mistake is not quoted back: the
    // error is about the key.
    let p = write_manifest(
        dir.path(),
        &base.replace(
            "dummy_env = [",
            &format!("api_key = \"sk-live-{CANARY}\"\ndummy_env = ["),
        ),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown field `api_key`") && err.contains("api_key = …"),
        "{err}"
    );
    assert!(!err.contains(CANARY), "{err}");
}

/// A backend option the backend refuses at plan time names its line and
/// key, as a provider's does.
#[test]
fn backend_options_refused_at_plan_name_their_line() {
    let (dir, ready) = quickstart_ready();
    let data = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(&ready).unwrap();
    let p = write_manifest(
        dir.path(),
        &base.replace(
            "[backends.docker]\n",
            "[backends.docker]\nruntimee = \"runsc\"\n",
        ),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1, "{err}");
    let line = line_of(&p, "runtimee =");
    assert!(err.contains(&format!("bottle.toml:{line}:")), "{err}");
    assert!(err.contains("(key `backends.docker.runtimee`)"), "{err}");
}

/// The 1-based line of `p` that starts with `start`.
fn line_of(p: &Path, start: &str) -> usize {
    let text = std::fs::read_to_string(p).unwrap();
    1 + text.lines().position(|l| l.starts_with(start)).unwrap()
}

#[test]
fn a_misspelt_backend_table_is_refused_where_it_is() {
    let (dir, ready) = quickstart_ready();
    let data = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(ready).unwrap();
    let p = write_manifest(
        dir.path(),
        &base.replace("[backends.docker]", "[backends.dokcer]"),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 1, "{err}");
    let line = line_of(&p, "[backends.dokcer]");
    assert!(
        err.contains(&format!(
            "bottle.toml:{line}:11: no backend is named `dokcer`"
        )),
        "{err}"
    );
    assert!(err.contains("did you mean `[backends.docker]`?"), "{err}");
    // A table kept for another of bot-bottle's backends is fine.
    let p = write_manifest(
        dir.path(),
        &format!("{base}\n[backends.smolmachines]\nengine = \"/nonexistent/smolvm\"\n"),
    );
    let (code, _, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", "x")
        .args(["plan", "-f"])
        .arg(&p));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_out_of_tree_provider_drives_a_plan() {
    let hello = example_hello();
    let plugins = plugin_dir(&[&hello]);
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = write_manifest(
        dir.path(),
        "name = \"hi\"\nbackend = \"docker\"\n[agent]\nprovider = \"hello\"\nimage = \"x\"\n[agent.options]\ngreeting = \"howdy\"\n",
    );
    let (code, out, err) = run(bottle(data.path())
        .env("HELLO_API_KEY", CANARY)
        .arg("--plugin-dir")
        .arg(plugins.path())
        .args(["-v", "plan", "--json", "-f"])
        .arg(&p));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(CANARY) && !err.contains(CANARY));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["env"]["HELLO_GREETING"], "howdy");
    assert_eq!(v["routes"][0]["source"], "provider:hello");
    assert_eq!(v["command"][0], "sh");
    // The plugin's tracing event crossed the boundary into the host's log.
    assert!(err.contains("preparing hello agent"), "{err}");
}

#[test]
fn egress_check_decides_from_the_manifest_without_its_tokens() {
    let data = tempfile::tempdir().unwrap();
    // No token set: a check needs none, and prints only header names.
    let (code, out, err) = run(bottle(data.path())
        .env_remove("QUICKSTART_API_TOKEN")
        .args(["egress", "check", "-f"])
        .arg(quickstart())
        .args(["GET", "https://api.quickstart.test/v1/hello"]));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("inject: Authorization"), "{out}");
    // With the token set, its value still never shows.
    let (code, out, err) = run(bottle(data.path())
        .env("QUICKSTART_API_TOKEN", CANARY)
        .args(["egress", "check", "--json", "-f"])
        .arg(quickstart())
        .args(["POST", "https://example.com/"]));
    assert_eq!(code, 1, "a denied request exits 1: {out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["action"], "deny");
    assert!(!out.contains(CANARY) && !err.contains(CANARY));
    // A manifest that is not there is named.
    let (code, _, err) = run(bottle(data.path()).args([
        "egress",
        "check",
        "-f",
        "/nonexistent/bottle.toml",
        "GET",
        "https://a.test/",
    ]));
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/bottle.toml"), "{err}");
}

/// A mount may not let the agent rewrite what the next launch reads (the
/// manifest, its upstream_ca), nor read a file a real credential comes
/// from; `bottle plan` says which mount, which file and what to change.
#[test]
fn mounts_that_expose_the_manifest_or_a_credential_source_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ws/certs")).unwrap();
    std::fs::write(dir.path().join("ws/certs/ca.pem"), "").unwrap();
    let base = "name = \"exposed\"\nbackend = \"docker\"\n[agent]\nprovider = \"generic\"\n\
                image = \"x\"\ncommand = [\"true\"]\n";
    let plan = |text: &str, home: &Path| {
        let m = write_manifest(dir.path(), text);
        let (code, out, err) = run(bottle(data.path())
            .env("HOME", home)
            .env_remove("CODEX_HOME")
            .args(["plan", "-f"])
            .arg(&m));
        (code, format!("{out}\n{err}"))
    };
    let home = dir.path().join("home");

    // The workspace holds the manifest.
    let (code, text) = plan(&format!("{base}[workspace]\npath = \".\"\n"), &home);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("the writable workspace")
            && text.contains("bottle.toml, the manifest: the agent could rewrite it")
            && text.contains("outside every writable mount"),
        "{text}"
    );
    // Nor through a link the agent could rewrite: the manifest outside,
    // reached by a link inside the workspace.
    std::fs::create_dir_all(dir.path().join("cfg")).unwrap();
    std::fs::create_dir_all(dir.path().join("ws2")).unwrap();
    std::fs::write(
        dir.path().join("cfg/bottle.toml"),
        format!("{base}[workspace]\npath = \"../ws2\"\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../cfg/bottle.toml", dir.path().join("ws2/bottle.toml")).unwrap();
    let (code, out, err) = run(bottle(data.path())
        .args(["plan", "-f"])
        .arg(dir.path().join("ws2/bottle.toml")));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("a link on the way to it"), "{err}");
    // Nor bottle's own program or plugins (the next run would run them).
    let exe_dir = Path::new(env!("CARGO_BIN_EXE_bottle")).parent().unwrap();
    let (code, text) = plan(
        &format!(
            "{base}[[mounts]]\nhost = \"{}\"\npath = \"/bin-dir\"\nwritable = true\n",
            exe_dir.display()
        ),
        &home,
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(
            "the agent could replace it, and the next bottle run would run what it wrote"
        ),
        "{text}"
    );
    // Nor a library in a plugin directory that links into the workspace,
    // even to a file that does not exist yet (the agent would create it).
    let pd = dir.path().join("pd");
    std::fs::create_dir_all(&pd).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("ws/libagent.so"),
        pd.join("libbot_bottle_plugin_zzz.so"),
    )
    .unwrap();
    let m = write_manifest(dir.path(), &format!("{base}[workspace]\npath = \"ws\"\n"));
    let (code, out, err) = run(bottle(data.path())
        .arg("--plugin-dir")
        .arg(&pd)
        .args(["plan", "-f"])
        .arg(&m));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("a library bottle opens as a plugin"), "{err}");
    // A writable mount holds upstream_ca.
    let (code, text) = plan(
        &format!(
            "{base}[egress]\nupstream_ca = \"ws/certs/ca.pem\"\n\
             [[mounts]]\nhost = \"ws\"\npath = \"/data\"\nwritable = true\n"
        ),
        &home,
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("writable mount") && text.contains("egress.upstream_ca"),
        "{text}"
    );
    // Nor through a hard link in the workspace: a second name for the
    // manifest (bottle cannot tell where it is, so any on that file system).
    let m = write_manifest(dir.path(), &format!("{base}[workspace]\npath = \"ws\"\n"));
    std::fs::hard_link(&m, dir.path().join("ws/notes.txt")).unwrap();
    let (code, out, err) = run(bottle(data.path()).args(["plan", "-f"]).arg(&m));
    std::fs::remove_file(dir.path().join("ws/notes.txt")).unwrap();
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("has 2 hard links") && err.contains("give it a name of its own"),
        "{err}"
    );
    // Nor a mount whose host path goes through the workspace: the agent
    // could swap `ws/certs` for a link to any host directory before the
    // next run.
    let (code, text) = plan(
        &format!(
            "{base}[workspace]\npath = \"ws\"\n\
             [[mounts]]\nhost = \"ws/certs\"\npath = \"/certs\"\n"
        ),
        &home,
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("goes through the writable workspace")
            && text.contains("the next run would mount"),
        "{text}"
    );
    // Over the workspace's own view of it (a mount point the agent cannot
    // replace): fine.
    let (code, text) = plan(
        &format!(
            "{base}[workspace]\npath = \"ws\"\n\
             [[mounts]]\nhost = \"ws/certs\"\npath = \"/workspace/certs\"\n"
        ),
        &home,
    );
    assert_eq!(code, 0, "{text}");
    // Read-only, or a workspace of its own: fine.
    let (code, text) = plan(
        &format!("{base}[workspace]\npath = \"ws\"\n[[mounts]]\nhost = \".\"\npath = \"/cfg\"\n"),
        &home,
    );
    assert_eq!(code, 0, "{text}");

    // A mount, even read-only, that holds the file the codex provider
    // reads the real credential from.
    let codex = home.join(".codex");
    std::fs::create_dir_all(&codex).unwrap();
    let auth = serde_json::json!({
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": "eyJhbGciOiJSUzI1NiJ9.eyJlbWFpbCI6ImRldkBleGFtcGxlLmNvbSIsImh0dHBzOi8vYXBpLm9wZW5haS5jb20vYXV0aCI6eyJjaGF0Z3B0X2FjY291bnRfaWQiOiJhY2N0LTEiLCJjaGF0Z3B0X3BsYW5fdHlwZSI6InBybyJ9fQ.sig",
            "access_token": "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjQxMDI0NDQ4MDAsImlhdCI6MTc2NDYzMzYwMH0.sig",
            "refresh_token": CANARY,
            "account_id": "acct-1"
        },
        "last_refresh": "2026-11-20T10:00:00Z"
    });
    std::fs::write(codex.join("auth.json"), auth.to_string()).unwrap();
    let codex_base = base.replace("\"generic\"", "\"codex\"");
    let (code, text) = plan(
        &format!(
            "{codex_base}[agent.options]\nforward_host_credentials = true\n\
             [workspace]\npath = \"ws\"\n[[mounts]]\nhost = \"home\"\npath = \"/home/me\"\n"
        ),
        &home,
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("auth.json, the file provider `codex` reads the real credential from")
            && text.contains("mount a directory that does not contain it"),
        "{text}"
    );
    assert!(!text.contains(CANARY), "{text}");
    // Without that mount the same bottle plans.
    let (code, text) = plan(
        &format!(
            "{codex_base}[agent.options]\nforward_host_credentials = true\n\
             [workspace]\npath = \"ws\"\n"
        ),
        &home,
    );
    assert_eq!(code, 0, "{text}");
}

/// A provider's credential files are protected whatever credential this run
/// uses: a mount of `~/.codex` while codex runs on an API key from the env
/// would still show the agent the ChatGPT tokens in `auth.json`, and one of
/// `~/.claude` (or of the home holding `~/.claude.json`) while claude runs
/// on `CLAUDE_CODE_OAUTH_TOKEN` the subscription tokens.
#[test]
fn credential_files_are_protected_in_every_credential_mode() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::create_dir_all(home.join("project")).unwrap();
    std::fs::write(home.join(".codex/auth.json"), "{}").unwrap();
    std::fs::write(home.join(".claude/.credentials.json"), "{}").unwrap();
    std::fs::write(home.join(".claude.json"), "{}").unwrap();
    let plan = |provider: &str, options: &str, mount: &str| {
        let m = write_manifest(
            dir.path(),
            &format!(
                "name = \"modes\"\nbackend = \"docker\"\n[agent]\nprovider = \"{provider}\"\n\
                 image = \"x\"\ncommand = [\"true\"]\n[agent.options]\n{options}\n\
                 [[mounts]]\nhost = \"{mount}\"\npath = \"/m\"\n"
            ),
        );
        let (code, out, err) = run(bottle(data.path())
            .env("HOME", &home)
            .env_remove("CODEX_HOME")
            .env_remove("CODEX_API_KEY")
            .env_remove("CLAUDE_CONFIG_DIR")
            .env_remove("ANTHROPIC_API_KEY")
            .env("OPENAI_API_KEY", CANARY)
            .env("CLAUDE_CODE_OAUTH_TOKEN", CANARY)
            .args(["plan", "-f"])
            .arg(&m));
        let text = format!("{out}\n{err}");
        assert!(!text.contains(CANARY), "{text}");
        (code, text)
    };
    let codex = home.join(".codex").display().to_string();
    let claude = home.join(".claude").display().to_string();
    let claude_json = home.join(".claude.json").display().to_string();
    let project = home.join("project").display().to_string();
    for (provider, options, mount, file) in [
        (
            "codex",
            "forward_host_credentials = false",
            &codex,
            "auth.json",
        ),
        (
            "claude",
            "forward_host_credentials = true",
            &claude,
            ".credentials.json",
        ),
        (
            "claude",
            "forward_host_credentials = false",
            &claude_json,
            ".claude.json",
        ),
    ] {
        let (code, text) = plan(provider, options, mount);
        assert_eq!(code, 1, "{provider} {options} {mount}: {text}");
        assert!(
            text.contains(file)
                && text.contains(&format!("provider `{provider}`"))
                && text.contains("mount a directory that does not contain it"),
            "{text}"
        );
        // A mount beside them is fine.
        let (code, text) = plan(provider, options, &project);
        assert_eq!(code, 0, "{text}");
    }
}

/// A real credential the user put in `[env]` is refused as the user's
/// mistake, naming the key and the ref, never the value.
#[test]
fn a_credential_in_the_manifests_env_is_refused_as_the_manifests() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        &format!(
            "name = \"envleak\"\nbackend = \"docker\"\n[agent]\nprovider = \"generic\"\n\
             image = \"x\"\ncommand = [\"true\"]\n[env]\nLEAKED = \"{CANARY}\"\n\
             [[egress.route]]\nhost = \"api.example.test\"\n\
             inject = [{{ header = \"Authorization\", value = \"Bearer {{token}}\", token_ref = \"PLAN_TEST_TOKEN\" }}]\n"
        ),
    );
    let (code, out, err) = run(bottle(data.path())
        .env("PLAN_TEST_TOKEN", CANARY)
        .args(["plan", "-f"])
        .arg(&m));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("[env] LEAKED holds the value of egress token ref `PLAN_TEST_TOKEN`")
            && !err.contains("bug in the provider"),
        "{err}"
    );
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "{out}\n{err}"
    );
    // The same in the manifest's own command.
    let text = std::fs::read_to_string(&m)
        .unwrap()
        .replace(&format!("LEAKED = \"{CANARY}\""), "")
        .replace(
            "command = [\"true\"]",
            &format!("command = [\"echo\", \"{CANARY}\"]"),
        );
    std::fs::write(&m, text).unwrap();
    let (code, out, err) = run(bottle(data.path())
        .env("PLAN_TEST_TOKEN", CANARY)
        .args(["plan", "-f"])
        .arg(&m));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("[agent] command holds the value of egress token ref `PLAN_TEST_TOKEN`")
            && !err.contains("bug in the provider"),
        "{err}"
    );
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "{out}\n{err}"
    );
}

/// What `bottle run` would refuse before creating anything, `bottle plan`
/// refuses too, with the same message: what, where and what to do. No
/// Docker daemon is asked (plan launches nothing and needs none).
#[test]
fn plan_refuses_what_run_would_refuse_before_launch() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ws")).unwrap();
    std::fs::write(dir.path().join("a-file"), "not a directory").unwrap();
    std::fs::write(dir.path().join("not-a-cert.pem"), "just text\n").unwrap();
    std::fs::write(dir.path().join("roots.pem"), some_certificates()).unwrap();
    let base = "name = \"checks\"\nbackend = \"docker\"\n[agent]\nprovider = \"generic\"\n\
                image = \"debian:12\"\ncommand = [\"true\"]\n";
    let route = "[[egress.route]]\nhost = \"api.example.test\"\n\
                 inject = [{ header = \"Authorization\", value = \"Bearer {token}\", token_ref = \"PLAN_CHECK_TOKEN\" }]\n";
    let plan = |text: &str, token: &str| {
        let m = write_manifest(dir.path(), text);
        let (code, out, err) = run(bottle(data.path())
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
            .env("PLAN_CHECK_TOKEN", token)
            .args(["plan", "-f"])
            .arg(&m));
        (code, out, err)
    };
    let m = dir.path().join("bottle.toml");
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("{base}[backends.docker]\negress_netwrok = \"x\"\n"),
            vec![
                "[backends.docker]".into(),
                "unknown field `egress_netwrok`".into(),
                "`egress_network`".into(),
            ],
        ),
        (
            format!("{base}[backends.docker]\npull = \"no\"\n"),
            vec![
                "[backends.docker]".into(),
                "invalid type".into(),
                "`pull` (true/false)".into(),
            ],
        ),
        (
            format!("{base}[[mounts]]\nhost = \"gone\"\npath = \"/data\"\n"),
            vec![
                format!(
                    "{}: [[mounts]] host {} does not exist",
                    m.display(),
                    dir.path().join("gone").display()
                ),
                "create it or fix the path".into(),
            ],
        ),
        (
            format!("{base}[workspace]\npath = \"gone\"\n"),
            vec![format!(
                "{}: workspace.path {} does not exist",
                m.display(),
                dir.path().join("gone").display()
            )],
        ),
        (
            format!("{base}[workspace]\npath = \"a-file\"\n"),
            vec![format!(
                "{}: workspace.path {} is not a directory",
                m.display(),
                dir.path().join("a-file").display()
            )],
        ),
        (
            format!("{base}[egress]\nupstream_ca = \"gone.pem\"\n"),
            vec![
                format!(
                    "{}: cannot read egress.upstream_ca {}",
                    m.display(),
                    dir.path().join("gone.pem").display()
                ),
                "No such file".into(),
            ],
        ),
        (
            format!("{base}[egress]\nupstream_ca = \"not-a-cert.pem\"\n"),
            vec![
                format!(
                    "{}: egress.upstream_ca {}",
                    m.display(),
                    dir.path().join("not-a-cert.pem").display()
                ),
                "holds no PEM certificate".into(),
                "-----BEGIN CERTIFICATE-----".into(),
            ],
        ),
        (
            format!("{base}[[mounts]]\nhost = \"/var/run\"\npath = \"/r\"\n"),
            vec![
                "would give the agent the Docker socket".into(),
                "mount a narrower directory".into(),
            ],
        ),
        (
            format!("{base}[agent.options]\ndummy_env = [\"A=B\"]\n"),
            vec!["dummy_env".into(), "\"A=B\" is not an env name".into()],
        ),
        (
            format!("{base}[resources]\ncpus = 0.001\n"),
            vec!["cpus = 0.001".into(), "0.01".into()],
        ),
        (
            format!("{base}[env]\nHTTPS_PROXY = \"http://proxy.corp:3128\"\n"),
            vec!["[env] HTTPS_PROXY".into(), "egress.upstream_proxy".into()],
        ),
        (
            format!("{base}[env]\nno_proxy = \"corp\"\n"),
            vec!["[env] no_proxy".into()],
        ),
    ];
    // Every case is tried, and every one that fails is reported.
    let mut wrong = Vec::new();
    for (text, wants) in &cases {
        let (code, out, err) = plan(text, "x");
        let missing: Vec<&String> = wants.iter().filter(|w| !err.contains(w.as_str())).collect();
        if code != 1 || !missing.is_empty() {
            wrong.push(format!(
                "--- exit {code}, wanted 1 and {missing:?}, for:\n{text}\nstdout: {out}\nstderr: {err}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // A token with a trailing newline: named, never shown.
    let (code, out, err) = plan(&format!("{base}{route}"), &format!("{CANARY}\n"));
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains(
            "the value of token ref PLAN_CHECK_TOKEN holds a character a header cannot carry"
        ),
        "{err}"
    );
    assert!(
        !out.contains(CANARY) && !err.contains(CANARY),
        "{out}\n{err}"
    );
    // And the same bottle, fixed, plans.
    let (code, out, err) = plan(
        &format!(
            "{base}[workspace]\npath = \"ws\"\n[[mounts]]\nhost = \"/usr/share\"\npath = \"/s\"\n\
             [resources]\ncpus = 0.01\n[env]\nLANG = \"C.UTF-8\"\n[egress]\nupstream_ca = \"roots.pem\"\n{route}"
        ),
        CANARY,
    );
    assert_eq!(code, 0, "{out}\n{err}");
}

/// `[egress]` keys that decide what the proxy trusts and dials are shown.
#[test]
fn plan_shows_the_proxys_security_settings() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        "name = \"shown\"\nbackend = \"docker\"\n[agent]\nprovider = \"generic\"\n\
         image = \"x\"\ncommand = [\"true\"]\n[egress]\ndlp = \"off\"\n\
         allow_internal = [\"10.20.0.0/16\"]\n[egress.resolve]\n\"mirror.corp.test\" = \"10.20.0.7:443\"\n\
         [[egress.route]]\nhost = \"mirror.corp.test\"\n",
    );
    let (code, out, err) = run(bottle(data.path()).args(["plan", "-f"]).arg(&m));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("dlp: off (requests are not scanned for secret-shaped values)"),
        "{out}"
    );
    assert!(
        out.contains("mirror.corp.test is dialled at 10.20.0.7:443 (egress.resolve)"),
        "{out}"
    );
    assert!(
        out.contains("internal networks a host's DNS answer may be in: 10.20.0.0/16"),
        "{out}"
    );
    assert!(
        out.contains(
            "and HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY (either case), set by the backend to the egress proxy"
        ),
        "{out}"
    );
    let (code, out, err) = run(bottle(data.path()).args(["plan", "--json", "-f"]).arg(&m));
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dlp"], "off");
    assert_eq!(v["resolve"]["mirror.corp.test"], "10.20.0.7:443");
    assert_eq!(v["allow_internal"], serde_json::json!(["10.20.0.0/16"]));
}

/// A provider that puts the real value where the agent or `bottle plan`
/// would see it, in a proxy answer, a note, a base64 file or an encoding,
/// is refused like one that puts it in the env as is; the value is never
/// printed.
#[test]
fn a_provider_that_leaks_an_encoded_credential_is_refused() {
    let lib = fixture("leaky");
    let plugins = plugin_dir(&[&lib]);
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(
        dir.path(),
        "name = \"leaky\"\nbackend = \"docker\"\n[agent]\nprovider = \"fixture-leaky\"\nimage = \"x\"\n",
    );
    let plan = |mode: &str| {
        let (code, out, err) = run(bottle(data.path())
            .arg("--plugin-dir")
            .arg(plugins.path())
            .env("FIXTURE_LEAK_SECRET", CANARY)
            .env("FIXTURE_LEAK", mode)
            .args(["plan", "-f"])
            .arg(&m));
        assert!(
            !out.contains(CANARY) && !err.contains(CANARY),
            "{mode}: {out}\n{err}"
        );
        (code, format!("{out}\n{err}"))
    };
    let (code, text) = plan("none");
    assert_eq!(code, 0, "{text}");
    for (mode, place) in [
        ("body", "local response to POST auth.leaky.test/token"),
        (
            "base64_body",
            "local response to POST auth.leaky.test/token",
        ),
        ("notes", "plan notes"),
        ("base64_file", "file /home/agent/blob"),
        ("json_escaped_file", "file /home/agent/auth.json"),
        ("hex_env", "env LEAKY_TOKEN"),
        ("env_name", "env names"),
        ("percent_command", "command"),
    ] {
        let (code, text) = plan(mode);
        assert_eq!(code, 1, "{mode} was accepted: {text}");
        assert!(
            text.contains(
                "provider `fixture-leaky` put a value of egress token ref `FIXTURE_LEAK_SECRET`"
            ) && text.contains(place),
            "{mode}: {text}"
        );
    }
}
