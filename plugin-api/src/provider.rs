//! The trait an agent-provider plugin implements.

use crate::{
    AgentProvisionPlan, CheckReport, CheckRequest, PluginError, PluginInfo, PrepareRequest,
};

/// An agent provider: knows one agent (Codex, Claude Code, …) and turns the
/// manifest's agent section plus the host environment into an
/// [`AgentProvisionPlan`].
///
/// Providers read the host's credentials (files, env) and put what the
/// egress proxy must inject into [`AgentProvisionPlan::provisioned_env`].
/// They never resolve routes' token refs themselves: the host does that,
/// once, for every provider alike.
///
/// Methods are synchronous; use [`crate::runtime`] for async work. A panic
/// becomes a [`PluginError`] of kind `panic` at the boundary.
pub trait Provider: Send + Sync + 'static {
    /// Name, version and description.
    fn info(&self) -> PluginInfo;

    /// Findings for `bottle doctor` (credentials found or not). The default
    /// reports nothing.
    fn check(&self, request: CheckRequest) -> Result<CheckReport, PluginError> {
        let _ = request;
        Ok(CheckReport::default())
    }

    /// Builds the provision plan for one bottle.
    fn prepare(&self, request: PrepareRequest) -> Result<AgentProvisionPlan, PluginError>;

    /// Operations added after ABI 1.0. The default answers `unsupported`.
    fn extension(
        &self,
        op: &str,
        request: serde_json::Value,
    ) -> Result<serde_json::Value, PluginError> {
        let _ = request;
        Err(PluginError::unsupported(format!(
            "operation `{op}` is not supported by this provider"
        )))
    }
}
