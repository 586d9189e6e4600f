//! The stable plugin ABI of bot-bottle.
//!
//! This is the only crate a bot-bottle plugin depends on. A plugin is a
//! dynamic library (`crate-type = ["cdylib"]`) that provides either an
//! **agent provider** (turns the manifest's agent section and the host
//! environment into an [`AgentProvisionPlan`]) or a **backend** (brings a
//! resolved [`LaunchSpec`] up as a bottle and manages it).
//!
//! # Two layers
//!
//! * [`abi`] is the frozen FFI surface: an `abi_stable` root module and two
//!   `#[sabi_trait]` traits whose methods carry JSON text. It never changes
//!   within an ABI major version, so a 1.x host loads every 1.x plugin.
//! * [`types`] holds the data that grows (plans, specs, reports). It crosses
//!   the boundary as versioned JSON: new optional fields are added with
//!   `#[serde(default)]` and unknown fields are ignored, so a plugin built
//!   against an older `plugin-api` keeps working with a newer host and the
//!   other way round.
//!
//! Plugin authors never touch the [`abi`] layer. They implement [`Provider`]
//! or [`Backend`] — plain Rust traits — and export it with
//! [`export_provider!`] or [`export_backend!`]. The macro wraps every entry
//! point in `catch_unwind`, forwards `tracing` records to the host and gives
//! the plugin its own tokio [`runtime`]. See `docs/plugin-authors.md`.

pub mod abi;
pub mod backend;
pub mod error;
#[doc(hidden)]
pub mod export;
pub mod provider;
pub mod secret;
pub mod types;

pub use backend::Backend;
pub use error::{ErrorKind, PluginError};
pub use export::runtime;
pub use provider::Provider;
pub use secret::{without_quoted_values, Secret};
pub use types::*;

/// Re-exported so that plugins log through the same `tracing` the export
/// helper forwards to the host.
pub use tracing;

/// The plugin ABI this crate speaks, as `major.minor.patch`.
///
/// The host loads any plugin with the same major version. The minor version
/// grows when a payload gains optional fields; it never changes the FFI
/// surface in [`abi`].
pub const ABI_VERSION: &str = abi::ABI_VERSION_STRING;

/// Version of the JSON payloads in [`types`]. Every request and reply carries
/// it as `"schema"`; a reader accepts any schema with the same major number.
pub const PAYLOAD_SCHEMA: u32 = 1;
