//! The installed engine through the SDK, without booting a guest: discovery,
//! `bottle doctor`'s findings, machine create / inspect / delete, cleanup of
//! a launch that fails, and `bottle gc` of leftovers.

mod common;

use bot_bottle_plugin_api::{
    AgentLaunch, Backend, CheckRequest, EgressLaunch, LaunchSpec, ListRequest, Mount,
    RemoveRequest, Secret, Severity,
};
use bot_bottle_plugin_smolmachines::{machine_builder, SmolMachines, BACKEND_LABEL};
use common::*;

/// These tests share one engine and one records root, and some run `gc`,
/// which removes any machine without records — including one another test
/// has just made. They run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(id: &str, image: &str, config: String) -> LaunchSpec {
    let ws = tempfile::tempdir().unwrap().keep();
    LaunchSpec {
        schema: 1,
        bottle_id: id.into(),
        bottle_name: "enginetest".into(),
        agent: AgentLaunch {
            image: image.into(),
            command: vec!["true".into()],
            env: [("API_TOKEN".to_string(), "bot-bottle-dummy".to_string())].into(),
            files: vec![],
            workdir: "/workspace".into(),
            mounts: vec![Mount {
                host: ws,
                sandbox: "/workspace".into(),
                writable: true,
            }],
            resources: Default::default(),
            tty: false,
            interactive: false,
            attached: false,
        },
        egress: EgressLaunch {
            program: std::path::PathBuf::from(env!("CARGO_BIN_EXE_bot-bottle-smolmachines-gate")),
            config: Secret::new(config),
            listen_port: 3128,
            ca_cert_pem: String::new(),
        },
        backend_options: serde_json::Value::Null,
        labels: Default::default(),
    }
}

fn unique(tag: &str) -> String {
    format!("bb-{tag}-{:08x}", rand::random::<u32>())
}

#[test]
fn the_engine_is_found_with_its_version_and_doctor_says_so() {
    let _serial = serial();
    let Some(engine) = engine_or_skip("the_engine_is_found_with_its_version_and_doctor_says_so")
    else {
        return;
    };
    let v = engine.version().expect("the engine reports a version");
    assert!(v.starts_with(|c: char| c.is_ascii_digit()), "{v}");
    // Make the probe's answer come from the shared cache file first, so
    // check() below does not pay the deadline again in this process... it
    // is cached per process by the plugin itself after one run.
    let no_boot = no_boot_reason(&engine);
    let report = SmolMachines
        .check(CheckRequest::default())
        .expect("check never fails outright");
    let engine_line = report
        .findings
        .iter()
        .find(|f| f.subject == "smolvm engine")
        .unwrap();
    assert_eq!(engine_line.severity, Severity::Ok, "{engine_line:?}");
    assert!(engine_line.message.contains(&v), "{engine_line:?}");
    if let Some(boot) = report.findings.iter().find(|f| f.subject == "guest boot") {
        assert_eq!(boot.severity == Severity::Ok, no_boot.is_none(), "{boot:?}");
        if boot.severity != Severity::Ok {
            assert!(
                boot.hint.as_deref().unwrap_or("").contains("KVM"),
                "{boot:?}"
            );
        }
    }
}

#[test]
fn machines_are_created_labelled_listed_and_deleted_through_the_sdk() {
    let _serial = serial();
    let Some(engine) =
        engine_or_skip("machines_are_created_labelled_listed_and_deleted_through_the_sdk")
    else {
        return;
    };
    let root = state_root();
    let id = unique("sdk");
    let s = spec(&id, "alpine:3.20", "{}".into());
    // Removes the machine even when an assertion below fails.
    struct Cleanup(bot_bottle_plugin_smolmachines::engine::Engine, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = bot_bottle_plugin_smolmachines::delete_machine(&self.0, &self.1);
        }
    }
    let _cleanup = Cleanup(engine.clone(), id.clone());
    let m = machine_builder(&s, "198.18.0.1:3128".parse().unwrap())
        .create()
        .expect("machine create");
    let listed = smolmachines::Machine::list(
        &smolmachines::ConnectOptions::default(),
        &[("bot-bottle.id", id.as_str())],
    )
    .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        listed[0].labels.get(BACKEND_LABEL.0).map(String::as_str),
        Some("smolmachines")
    );
    assert_eq!(listed[0].image.as_deref(), Some("alpine:3.20"));
    // `Machine::info` is cloud-only; the engine's own record is `machine ls`.
    let out = engine
        .command()
        .args(["machine", "ls", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == id.as_str())
        .unwrap()
        .to_string();
    assert!(row.contains("\"network\":true"), "{row}");
    // Guest DNS closed (see `close_guest_dns`): the engine's record holds a
    // DNS filter admitting only a reserved name, the loopback resolver, and
    // the CIDRs that keep every TCP flow going to the interceptor.
    let rec: serde_json::Value = serde_json::from_str(&row).unwrap();
    let hosts = rec["allowed_hosts"].as_array().expect("a DNS filter");
    assert_eq!(hosts.len(), 1, "{row}");
    assert!(
        hosts[0]
            .as_str()
            .unwrap()
            .ends_with(bot_bottle_plugin_smolmachines::DNS_ADMITS_NOTHING),
        "{row}"
    );
    assert_eq!(rec["dns"], "127.0.0.1", "{row}");
    assert_eq!(
        rec["allowed_cidrs"],
        serde_json::json!(["0.0.0.0/0", "::/0"]),
        "{row}"
    );
    assert!(row.contains("bot-bottle.name"), "{row}");
    assert!(!row.contains("canary"), "{row}");

    // A machine of ours without records is a leftover: `ls` shows it, `gc`
    // removes it.
    let ls = SmolMachines.list(ListRequest::default()).unwrap();
    assert!(
        ls.iter()
            .any(|b| b.bottle_id == id && b.state.contains("no records")),
        "{ls:?}"
    );
    let gc = SmolMachines
        .remove(RemoveRequest {
            garbage: true,
            ..Default::default()
        })
        .unwrap();
    eprintln!("gc removed {:?}", gc.removed);
    assert_eq!(m.state(), smolmachines::MachineState::Deleted);
    assert!(!root.join(&id).exists());
}

#[test]
fn a_launch_that_fails_leaves_nothing_behind() {
    let _serial = serial();
    let Some(_engine) = engine_or_skip("a_launch_that_fails_leaves_nothing_behind") else {
        return;
    };
    let root = state_root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let id = unique("fail");
    let token = canary();
    let (config, _) = proxy_config(&id, &up, &token);
    // A `docker save` archive that is not there: the engine refuses it at
    // create (no boot needed), after the gate is already up.
    let s = spec(&id, "/nonexistent/agent-image.tar", config);
    let e = SmolMachines
        .launch(s)
        .expect_err("a bogus image cannot launch");
    assert!(!e.message.contains(&token), "{e:?}");
    assert!(e.message.contains("agent-image.tar"), "{e:?}");
    assert!(!root.join(&id).exists(), "records removed");
    let left = smolmachines::Machine::list(
        &smolmachines::ConnectOptions::default(),
        &[("bot-bottle.id", id.as_str())],
    )
    .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let gates = std::process::Command::new("pgrep")
        .args(["-f", &id])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&gates.stdout).trim().is_empty(),
        "gate left running"
    );
}

#[test]
fn ls_and_rm_cover_a_bottle_whose_gate_runs_from_another_process() {
    let _serial = serial();
    let Some(engine) =
        engine_or_skip("ls_and_rm_cover_a_bottle_whose_gate_runs_from_another_process")
    else {
        return;
    };
    use bot_bottle_plugin_api::{BottleRef, LogsRequest};
    use bot_bottle_plugin_smolmachines::state::{self, BottleRecord, Paths};
    use bot_bottle_plugin_smolmachines::GateChild;
    state_root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(&[HOST]));
    let id = unique("ls");
    let (config, _) = proxy_config(&id, &up, &canary());
    let paths = Paths::of(&id);
    paths.create().unwrap();
    state::write_json(
        &paths.bottle(),
        &BottleRecord {
            bottle_id: id.clone(),
            name: "lstest".into(),
            machine: id.clone(),
            image: "alpine:3.20".into(),
            created: "2026-01-01T00:00:00Z".into(),
        },
    )
    .unwrap();
    // The gate as launch starts it, left serving (no `go`: no machine).
    let gate_bin = std::path::Path::new(env!("CARGO_BIN_EXE_bot-bottle-smolmachines-gate"));
    let gate = GateChild::spawn(gate_bin, &engine, &paths, &setup(&id, config)).unwrap();
    let pid = state::gate_alive(&paths).expect("gate alive");

    let ls = SmolMachines.list(ListRequest::default()).unwrap();
    let me = ls.iter().find(|b| b.bottle_id == id).expect("listed");
    assert_eq!(me.name, "lstest");
    assert_eq!(me.backend, "smolmachines");
    assert_eq!(me.state, "broken", "a gate without its machine: {me:?}");
    assert_eq!(me.details["gate_pid"], pid);
    SmolMachines
        .logs(LogsRequest {
            schema: 1,
            bottle_id: id.clone(),
            egress: true,
            follow: false,
        })
        .unwrap();
    // Live rotation through the gate's control socket.
    let (new_config, _) = proxy_config(&id, &up, &canary());
    SmolMachines
        .update_egress(bot_bottle_plugin_api::EgressUpdate {
            schema: 1,
            bottle_id: id.clone(),
            config: Secret::new(new_config),
        })
        .expect("live update");
    let e = SmolMachines
        .update_egress(bot_bottle_plugin_api::EgressUpdate {
            schema: 1,
            bottle_id: id.clone(),
            config: Secret::new("{\"tokens\": {\"X\": \"canary-broken\"}}".to_string()),
        })
        .unwrap_err();
    assert!(!e.message.contains("canary-broken"), "{e:?}");
    assert_eq!(
        state::gate_alive(&paths),
        Some(pid),
        "a refused update keeps the gate"
    );
    // `gc` leaves a bottle whose gate is alive alone…
    let gc = SmolMachines
        .remove(RemoveRequest {
            garbage: true,
            ..Default::default()
        })
        .unwrap();
    assert!(
        !gc.removed.iter().any(|r| r.contains(&id)),
        "{:?}",
        gc.removed
    );
    // …`stop` ends the gate and keeps the records for `logs`…
    SmolMachines
        .stop(BottleRef {
            schema: 1,
            bottle_id: id.clone(),
        })
        .unwrap();
    assert_eq!(state::gate_alive(&paths), None);
    assert!(paths.egress_log().is_file());
    // …and `rm` removes the rest.
    let rm = SmolMachines
        .remove(RemoveRequest {
            bottle_id: Some(id.clone()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        rm.removed.iter().any(|r| r.starts_with("records")),
        "{:?}",
        rm.removed
    );
    assert!(!paths.dir().exists());
    drop(gate);
}
