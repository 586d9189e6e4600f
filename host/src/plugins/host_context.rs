//! What the host hands each plugin: a log sink that feeds the host's
//! `tracing` output, and the reserved generic host call.

use abi_stable::std_types::{RResult, RStr, RString};
use bot_bottle_plugin_api::abi::{HostContext, LogLevel, ABI_VERSION_STRING};
use bot_bottle_plugin_api::PluginError;

extern "C" fn log(plugin: RStr<'_>, level: u8, target: RStr<'_>, message: RStr<'_>) {
    let (plugin, target, message) = (plugin.as_str(), target.as_str(), message.as_str());
    // One event per level: `tracing` macros need the level at compile time.
    match LogLevel::from_u8(level) {
        LogLevel::Error => {
            tracing::error!(target: "plugin", plugin, plugin_target = target, "{message}")
        }
        LogLevel::Warn => {
            tracing::warn!(target: "plugin", plugin, plugin_target = target, "{message}")
        }
        LogLevel::Info => {
            tracing::info!(target: "plugin", plugin, plugin_target = target, "{message}")
        }
        LogLevel::Debug => {
            tracing::debug!(target: "plugin", plugin, plugin_target = target, "{message}")
        }
        LogLevel::Trace => {
            tracing::trace!(target: "plugin", plugin, plugin_target = target, "{message}")
        }
    }
}

extern "C" fn call(op: RStr<'_>, _request: RStr<'_>) -> RResult<RString, RString> {
    RResult::RErr(
        PluginError::unsupported(format!("host call `{op}` is not offered by this bottle"))
            .to_json()
            .into(),
    )
}

fn max_level() -> u8 {
    let level = tracing::level_filters::LevelFilter::current();
    (if level >= tracing::Level::TRACE {
        LogLevel::Trace
    } else if level >= tracing::Level::DEBUG {
        LogLevel::Debug
    } else if level >= tracing::Level::INFO {
        LogLevel::Info
    } else if level >= tracing::Level::WARN {
        LogLevel::Warn
    } else {
        LogLevel::Error
    }) as u8
}

/// The context for a plugin loaded now (the log level is read at load time).
pub fn context() -> HostContext {
    HostContext {
        host_abi: RStr::from_str(ABI_VERSION_STRING),
        max_level: max_level(),
        log,
        call,
    }
}
