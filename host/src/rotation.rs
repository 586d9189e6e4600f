//! Live credential rotation: while a bottle runs, the host watches the files
//! its provider read credentials from. When one changes, the provider
//! prepares again, the host resolves again (the same generic path as at
//! launch) and pushes the new proxy config through the backend, by a channel
//! the sandbox cannot reach. The CA stays the same.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bot_bottle_egress::config::CaMaterial;
use bot_bottle_plugin_api::{EgressUpdate, Secret};

use crate::launch::{encode_config, proxy_config};
use crate::plan::{self, BottlePlan};
use crate::plugins::PluginSet;

/// How often the sources are looked at. Cheap (one `stat` per file).
const POLL: Duration = Duration::from_millis(500);

fn stamps(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        })
        .collect()
}

/// Watches `plan`'s credential sources until `stop` is set.
pub fn watch(
    plugins: &PluginSet,
    plan: &BottlePlan,
    bottle_id: &str,
    ca: &CaMaterial,
    host_env: &BTreeMap<String, Secret>,
    stop: &AtomicBool,
) {
    let sources = plan.provision.credential_sources.clone();
    if sources.is_empty() {
        return;
    }
    let Ok(backend) = plugins.backend(&plan.manifest.backend) else {
        return;
    };
    let mut last = stamps(&sources);
    let mut last_tokens = plan.egress.token_values.clone();
    let mut last_local = plan.egress.local_responses.clone();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        let now = stamps(&sources);
        if now == last {
            continue;
        }
        last = now;
        let fresh = match plan::plan(plan.manifest.clone(), plugins, host_env) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("credential source changed but could not be read ({e}); the bottle keeps the previous credentials");
                continue;
            }
        };
        if fresh.egress.token_values == last_tokens && fresh.egress.local_responses == last_local {
            continue;
        }
        let config = match proxy_config(&fresh, bottle_id, ca) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("rotated credentials are incomplete ({e}); the bottle keeps the previous credentials");
                continue;
            }
        };
        let update = EgressUpdate {
            schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
            bottle_id: bottle_id.to_string(),
            config: encode_config(&config),
        };
        match backend.update_egress(&update) {
            Ok(()) => {
                tracing::info!(
                    bottle = bottle_id,
                    "pushed rotated credentials into the running egress proxy"
                );
                last_tokens = fresh.egress.token_values;
                last_local = fresh.egress.local_responses;
            }
            Err(e) => {
                tracing::warn!("could not push rotated credentials into bottle {bottle_id}: {e}")
            }
        }
    }
}
