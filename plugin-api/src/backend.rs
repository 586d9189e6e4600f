//! The trait a backend plugin implements.

use crate::{
    BottleHandle, BottleRef, BottleStatus, CheckReport, CheckRequest, EgressUpdate, ExecRequest,
    ExitReport, LaunchSpec, ListRequest, LogsRequest, PluginError, PluginInfo, RemoveReport,
    RemoveRequest, ValidateRequest, WaitRequest,
};

/// A backend: brings a fully resolved [`LaunchSpec`] up as a bottle (agent
/// sandbox + egress proxy) and manages it afterwards.
///
/// Backends do not resolve secrets and do not know about providers: the
/// spec they receive is complete. Every resource a backend creates carries
/// the bottle id so that `remove` (and `bottle gc`) can find it again.
///
/// Methods are synchronous and may block (`wait`, `logs` with follow); the
/// host calls them from a thread of its own. Use [`crate::runtime`] for
/// async clients. A panic becomes a [`PluginError`] of kind `panic`.
pub trait Backend: Send + Sync + 'static {
    /// Name, version and description.
    fn info(&self) -> PluginInfo;
    /// Findings for `bottle doctor` (engine reachable, versions, isolation).
    fn check(&self, request: CheckRequest) -> Result<CheckReport, PluginError>;
    /// Refuses, before anything exists, a bottle this backend would refuse
    /// at launch: its `[backends.NAME]` options, limits it cannot apply,
    /// mounts it will not make. Called by `bottle plan`, `bottle doctor -f`
    /// and before `launch`; must not need the engine (that is `check`'s
    /// job). Errors say what, where in the manifest, and what to do. The
    /// default answers `unsupported`, which the host takes as nothing to
    /// check. (Added in ABI 1.0 through `extension` op `validate`, so
    /// plugins built before it keep loading.)
    fn validate(&self, request: ValidateRequest) -> Result<(), PluginError> {
        let _ = request;
        Err(PluginError::unsupported(
            "plan-time validation is not supported by this backend",
        ))
    }
    /// Brings the bottle up. On error, everything created so far must be
    /// removed before returning.
    fn launch(&self, spec: LaunchSpec) -> Result<BottleHandle, PluginError>;
    /// Bottles this backend knows about.
    fn list(&self, request: ListRequest) -> Result<Vec<BottleStatus>, PluginError>;
    /// Stops a bottle (keeps it for `logs` until removed).
    fn stop(&self, request: BottleRef) -> Result<(), PluginError>;
    /// Writes the agent's (or the proxy's) logs to stdout.
    fn logs(&self, request: LogsRequest) -> Result<(), PluginError>;
    /// Waits for the agent to exit, optionally attached to the terminal.
    fn wait(&self, request: WaitRequest) -> Result<ExitReport, PluginError>;
    /// Runs a command inside a running bottle.
    fn exec(&self, request: ExecRequest) -> Result<ExitReport, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(
            "exec is not supported by this backend",
        ))
    }
    /// Removes a bottle and everything it created, or every leftover.
    fn remove(&self, request: RemoveRequest) -> Result<RemoveReport, PluginError>;
    /// Hands a running bottle's proxy new secrets (rotated credentials):
    /// write `config` where the proxy reads it, through a path the sandbox
    /// cannot reach, then signal the proxy (SIGHUP) to reload.
    fn update_egress(&self, request: EgressUpdate) -> Result<(), PluginError> {
        let _ = request;
        Err(PluginError::unsupported(
            "live egress updates are not supported by this backend",
        ))
    }
    /// Operations added after ABI 1.0. The default answers `unsupported`.
    fn extension(
        &self,
        op: &str,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(format!(
            "operation `{op}` is not supported by this backend"
        )))
    }
}
