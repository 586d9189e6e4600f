//! The frozen FFI surface between the host and a plugin.
//!
//! Everything here is `abi_stable` and must not change within an ABI major
//! version: no new prefix fields, no new trait methods, no reordering.
//! Growth happens in the JSON payloads (see [`crate::types`]) and, for new
//! operations, through the `extension` method each trait already has.

// The `#[sabi_trait]` expansion defines impls inside a generated const.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString},
    StableAbi,
};

/// The ABI version as text, `major.minor.patch`. Pinned here rather than taken
/// from the crate version: the crate may release without the ABI changing.
#[cfg(not(feature = "__fixture_abi_v2"))]
pub const ABI_VERSION_STRING: &str = "1.0.0";
/// A deliberately incompatible ABI, used only by the host's test fixtures.
#[cfg(feature = "__fixture_abi_v2")]
pub const ABI_VERSION_STRING: &str = "2.0.0";

/// Signature of the host's log sink ([`HostContext::log`]): plugin name, level (see
/// [`LogLevel`]), target and message.
pub type LogFn = extern "C" fn(plugin: RStr<'_>, level: u8, target: RStr<'_>, message: RStr<'_>);

/// Signature of the host's generic call ([`HostContext::call`]): operation name and JSON request,
/// JSON reply or JSON [`crate::PluginError`]. Reserved for host services a
/// later minor version offers; a 1.0 host answers every call with an
/// `unsupported` error.
pub type HostCallFn = extern "C" fn(op: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString>;

/// The backend `extension` operation that carries
/// [`crate::Backend::validate`]: JSON [`crate::ValidateRequest`] → JSON
/// `null`. A plugin built before it answers `unsupported`.
pub const OP_VALIDATE: &str = "validate";

/// Log levels as they cross the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Progress a user may want to see.
    Info = 3,
    /// Detail for `-v`.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    /// Decodes a level byte; unknown values read as `Trace`.
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Error,
            2 => Self::Warn,
            3 => Self::Info,
            4 => Self::Debug,
            _ => Self::Trace,
        }
    }
}

/// What the host hands a plugin when it instantiates it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostContext {
    /// The host's ABI version string, for the plugin's information.
    pub host_abi: RStr<'static>,
    /// The most verbose level the host will print (a [`LogLevel`] byte);
    /// the plugin drops finer events before they cross.
    pub max_level: u8,
    /// Where the plugin's log records go.
    pub log: extern "C" fn(plugin: RStr<'_>, level: u8, target: RStr<'_>, message: RStr<'_>),
    /// Host services (reserved; see [`HostCallFn`]).
    pub call: extern "C" fn(op: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString>,
}

impl std::fmt::Debug for HostContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostContext")
            .field("host_abi", &self.host_abi)
            .finish_non_exhaustive()
    }
}

/// An agent provider as the host sees it: every method takes and returns
/// JSON text; errors are a JSON [`crate::PluginError`].
#[sabi_trait]
pub trait FfiProvider: Send + Sync {
    /// JSON [`crate::PluginInfo`].
    fn info(&self) -> RString;
    /// JSON [`crate::CheckRequest`] → JSON [`crate::CheckReport`].
    fn check(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::PrepareRequest`] → JSON [`crate::AgentProvisionPlan`].
    fn prepare(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// Operations added after ABI 1.0, by name. Unknown names answer an
    /// `unsupported` error.
    #[sabi(last_prefix_field)]
    fn extension(&self, op: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString>;
}

/// A backend as the host sees it: every method takes and returns JSON text;
/// errors are a JSON [`crate::PluginError`]. Long calls (`wait`, `logs` with
/// follow, `exec`) block the calling thread; the host calls them from a
/// thread of its own, never from an async worker.
#[sabi_trait]
pub trait FfiBackend: Send + Sync {
    /// JSON [`crate::PluginInfo`].
    fn info(&self) -> RString;
    /// JSON [`crate::CheckRequest`] → JSON [`crate::CheckReport`].
    fn check(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::LaunchSpec`] → JSON [`crate::BottleHandle`].
    fn launch(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::ListRequest`] → JSON `Vec<`[`crate::BottleStatus`]`>`.
    fn list(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::BottleRef`] → JSON `null`.
    fn stop(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::LogsRequest`] → JSON `null` (the plugin writes to the
    /// process's stdout/stderr).
    fn logs(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::WaitRequest`] → JSON [`crate::ExitReport`].
    fn wait(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::ExecRequest`] → JSON [`crate::ExitReport`].
    fn exec(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::RemoveRequest`] → JSON [`crate::RemoveReport`].
    fn remove(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// JSON [`crate::EgressUpdate`] → JSON `null`.
    fn update_egress(&self, request: RStr<'_>) -> RResult<RString, RString>;
    /// Operations added after ABI 1.0, by name. Unknown names answer an
    /// `unsupported` error.
    #[sabi(last_prefix_field)]
    fn extension(&self, op: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString>;
}

/// A provider trait object owned by the host.
pub type ProviderBox = FfiProvider_TO<'static, RBox<()>>;
/// A backend trait object owned by the host.
pub type BackendBox = FfiBackend_TO<'static, RBox<()>>;

/// What [`PluginRoot::instantiate`] returns: the plugin's description and
/// exactly one of a provider or a backend.
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginObject {
    /// JSON [`crate::PluginInfo`].
    pub info: RString,
    /// Set when the plugin is an agent provider.
    pub provider: ROption<ProviderBox>,
    /// Set when the plugin is a backend.
    pub backend: ROption<BackendBox>,
}

impl std::fmt::Debug for PluginObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginObject")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// The root module every plugin library exports (through
/// [`crate::export_provider!`] or [`crate::export_backend!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRootRef)))]
#[sabi(missing_field(panic))]
#[allow(missing_debug_implementations)] // holds only a fn pointer
pub struct PluginRoot {
    /// Present only in the layout-incompatible fixture used by the host's
    /// tests: it moves `instantiate` and so changes the root layout.
    #[cfg(feature = "__fixture_abi_layout")]
    pub fixture_extra: u64,
    /// Builds the plugin. Called once per load, after the host has checked
    /// the ABI version and layout.
    #[sabi(last_prefix_field)]
    pub instantiate: extern "C" fn(host: HostContext) -> RResult<PluginObject, RString>,
}

impl std::fmt::Debug for PluginRootRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginRootRef")
    }
}

impl RootModule for PluginRootRef {
    declare_root_module_statics! {PluginRootRef}
    const BASE_NAME: &'static str = "bot_bottle_plugin";
    const NAME: &'static str = "bot-bottle plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new(ABI_VERSION_STRING);
}
