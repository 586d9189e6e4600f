//! The plugin side of the boundary: what [`crate::export_provider!`] and
//! [`crate::export_backend!`] expand to.
//!
//! Three jobs:
//! * **panics stay inside**: a panic unwinding out of an `extern "C"`
//!   `#[sabi_trait]` method aborts the whole host, so every entry point runs
//!   under `catch_unwind` and a panic becomes a [`PluginError`] naming the
//!   plugin;
//! * **logs reach the host**: the plugin has its own copy of `tracing` (a
//!   cdylib links its dependencies statically), so a subscriber installed
//!   here forwards each event through the host's log callback;
//! * **async has a home**: [`runtime`] is the plugin's own tokio runtime,
//!   built on first use. tokio's thread-locals are not shared across the
//!   library boundary, so the host's runtime is never visible here.

use std::any::Any;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RNone, RResult, RSome, RStr, RString};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::abi::{
    FfiBackend, FfiBackend_TO, FfiProvider, FfiProvider_TO, HostContext, LogLevel, PluginObject,
    PluginRoot, PluginRootRef,
};
use crate::{Backend, PluginError, PluginInfo, Provider};

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
}

static HOST: OnceLock<HostContext> = OnceLock::new();
static PLUGIN_NAME: OnceLock<String> = OnceLock::new();
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The plugin's own tokio runtime, built on first use (two worker threads).
///
/// Plugin methods are synchronous; run async work with
/// `runtime().block_on(fut)`. The host never calls a plugin from one of its
/// async workers, so blocking here is safe.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bot-bottle-plugin")
            .enable_all()
            .build()
            .expect("building the plugin's tokio runtime")
    })
}

fn plugin_name() -> &'static str {
    PLUGIN_NAME
        .get()
        .map(String::as_str)
        .unwrap_or("<unnamed plugin>")
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn panic_error(op: &str, payload: &(dyn Any + Send)) -> PluginError {
    PluginError::new(
        crate::ErrorKind::Panic,
        format!(
            "plugin `{}` panicked in {op}: {}",
            plugin_name(),
            panic_message(payload)
        ),
    )
    .with_hint(
        "this is a bug in the plugin; report it to its author (run with -v for the location)",
    )
}

/// Runs one entry point: decode the JSON request, call, encode the reply,
/// and turn a panic or a decode failure into an encoded [`PluginError`].
fn guard<Req, Resp>(
    op: &str,
    request: RStr<'_>,
    call: impl FnOnce(Req) -> Result<Resp, PluginError>,
) -> RResult<RString, RString>
where
    Req: DeserializeOwned,
    Resp: Serialize,
{
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let req: Req = serde_json::from_str(request.as_str()).map_err(|e| {
            PluginError::invalid(format!("plugin `{}` could not read the {op} request: {e}", plugin_name()))
                .with_hint("the host and plugin disagree on the payload; rebuild the plugin against the host's plugin-api")
        })?;
        let resp = call(req)?;
        serde_json::to_string(&resp).map_err(|e| {
            PluginError::internal(format!(
                "plugin `{}` could not encode its {op} reply: {e}",
                plugin_name()
            ))
        })
    }));
    match outcome {
        Ok(Ok(json)) => RResult::ROk(json.into()),
        Ok(Err(err)) => RResult::RErr(err.to_json().into()),
        Err(payload) => RResult::RErr(panic_error(op, payload.as_ref()).to_json().into()),
    }
}

fn info_json(info: &PluginInfo) -> RString {
    let mut info = info.clone();
    info.abi = crate::ABI_VERSION.to_string();
    serde_json::to_string(&info).unwrap_or_default().into()
}

// ------------------------------------------------------------------ logging

struct HostLogLayer;

/// Collects an event's fields as `message key=value …`.
#[derive(Default)]
struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for HostLogLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(host) = HOST.get() else { return };
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        };
        let mut text = FieldText::default();
        event.record(&mut text);
        (host.log)(
            plugin_name().into(),
            level as u8,
            event.metadata().target().into(),
            text.0.as_str().into(),
        );
    }
}

fn install_logging(host: HostContext) {
    use tracing_subscriber::layer::SubscriberExt;
    if HOST.set(host).is_err() {
        return; // already instantiated once in this process
    }
    let max = match LogLevel::from_u8(host.max_level) {
        LogLevel::Error => tracing::level_filters::LevelFilter::ERROR,
        LogLevel::Warn => tracing::level_filters::LevelFilter::WARN,
        LogLevel::Info => tracing::level_filters::LevelFilter::INFO,
        LogLevel::Debug => tracing::level_filters::LevelFilter::DEBUG,
        LogLevel::Trace => tracing::level_filters::LevelFilter::TRACE,
    };
    let subscriber = tracing_subscriber::registry().with(max).with(HostLogLayer);
    let _ = tracing::subscriber::set_global_default(subscriber);
    // The default hook prints to stderr on top of the error the host already
    // shows; send the location to the host's debug log instead.
    std::panic::set_hook(Box::new(|info| {
        tracing::debug!("panic: {info}");
    }));
}

/// Common part of instantiating either kind of plugin.
fn instantiate<T>(
    host: HostContext,
    make: impl FnOnce() -> T,
    info: impl FnOnce(&T) -> PluginInfo,
    wrap: impl FnOnce(T, RString) -> PluginObject,
) -> RResult<PluginObject, RString> {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        install_logging(host);
        let plugin = make();
        let info = info(&plugin);
        let _ = PLUGIN_NAME.set(info.name.clone());
        let json = info_json(&info);
        wrap(plugin, json)
    }));
    match outcome {
        Ok(object) => RResult::ROk(object),
        Err(payload) => RResult::RErr(
            panic_error("instantiate", payload.as_ref())
                .to_json()
                .into(),
        ),
    }
}

// ---------------------------------------------------------------- adapters

/// Wraps a [`Provider`] as the FFI trait object. The info is computed once
/// at instantiation so `info()` cannot panic across the boundary.
#[derive(Debug)]
pub struct ProviderAdapter<P>(pub P, pub RString);

impl<P: Provider> FfiProvider for ProviderAdapter<P> {
    fn info(&self) -> RString {
        self.1.clone()
    }
    fn check(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("check", request, |r| self.0.check(r))
    }
    fn prepare(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("prepare", request, |r| self.0.prepare(r))
    }
    fn extension(&self, op: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString> {
        guard(op.as_str(), request, |r| self.0.extension(op.as_str(), r))
    }
}

/// Wraps a [`Backend`] as the FFI trait object (info computed once, as for
/// [`ProviderAdapter`]).
#[derive(Debug)]
pub struct BackendAdapter<B>(pub B, pub RString);

impl<B: Backend> FfiBackend for BackendAdapter<B> {
    fn info(&self) -> RString {
        self.1.clone()
    }
    fn check(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("check", request, |r| self.0.check(r))
    }
    fn launch(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("launch", request, |r| self.0.launch(r))
    }
    fn list(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("list", request, |r| self.0.list(r))
    }
    fn stop(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("stop", request, |r| self.0.stop(r))
    }
    fn logs(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("logs", request, |r| self.0.logs(r))
    }
    fn wait(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("wait", request, |r| self.0.wait(r))
    }
    fn exec(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("exec", request, |r| self.0.exec(r))
    }
    fn remove(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("remove", request, |r| self.0.remove(r))
    }
    fn update_egress(&self, request: RStr<'_>) -> RResult<RString, RString> {
        guard("update_egress", request, |r| self.0.update_egress(r))
    }
    fn extension(&self, op: RStr<'_>, request: RStr<'_>) -> RResult<RString, RString> {
        match op.as_str() {
            crate::abi::OP_VALIDATE => guard("validate", request, |r| self.0.validate(r)),
            other => guard(other, request, |r| self.0.extension(other, r)),
        }
    }
}

/// Instantiates a provider plugin; called by [`crate::export_provider!`].
pub fn instantiate_provider<P: Provider>(
    host: HostContext,
    make: impl FnOnce() -> P,
) -> RResult<PluginObject, RString> {
    instantiate(
        host,
        make,
        |p| p.info(),
        |p, info| PluginObject {
            provider: RSome(FfiProvider_TO::from_value(
                ProviderAdapter(p, info.clone()),
                TD_Opaque,
            )),
            backend: RNone,
            info,
        },
    )
}

/// Instantiates a backend plugin; called by [`crate::export_backend!`].
pub fn instantiate_backend<B: Backend>(
    host: HostContext,
    make: impl FnOnce() -> B,
) -> RResult<PluginObject, RString> {
    instantiate(
        host,
        make,
        |b| b.info(),
        |b, info| PluginObject {
            provider: RNone,
            backend: RSome(FfiBackend_TO::from_value(
                BackendAdapter(b, info.clone()),
                TD_Opaque,
            )),
            info,
        },
    )
}

/// Builds the root module around the plugin's `instantiate` function.
pub fn root_module(
    instantiate: extern "C" fn(HostContext) -> RResult<PluginObject, RString>,
) -> PluginRootRef {
    use abi_stable::prefix_type::PrefixTypeTrait;
    PluginRoot {
        #[cfg(feature = "__fixture_abi_layout")]
        fixture_extra: 0,
        instantiate,
    }
    .leak_into_prefix()
}

/// Exports a [`Provider`] as a bot-bottle plugin. Invoke once, at the crate
/// root of a `cdylib`, with an expression that builds the provider:
///
/// ```ignore
/// bot_bottle_plugin_api::export_provider!(MyProvider::default());
/// ```
#[macro_export]
macro_rules! export_provider {
    ($make:expr) => {
        $crate::__export_root!(instantiate_provider, $make);
    };
}

/// Exports a [`Backend`] as a bot-bottle plugin. Invoke once, at the crate
/// root of a `cdylib`, with an expression that builds the backend.
#[macro_export]
macro_rules! export_backend {
    ($make:expr) => {
        $crate::__export_root!(instantiate_backend, $make);
    };
}

/// The symbol abi_stable looks for; checked against abi_stable's own
/// constant by a unit test so an abi_stable upgrade cannot silently break it.
#[doc(hidden)]
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[doc(hidden)]
#[macro_export]
macro_rules! __export_root {
    ($which:ident, $make:expr) => {
        #[doc(hidden)]
        extern "C" fn __bot_bottle_instantiate(
            host: $crate::abi::HostContext,
        ) -> $crate::export::__private::abi_stable::std_types::RResult<
            $crate::abi::PluginObject,
            $crate::export::__private::abi_stable::std_types::RString,
        > {
            $crate::export::$which(host, || $make)
        }

        #[doc(hidden)]
        fn __bot_bottle_root_module() -> $crate::abi::PluginRootRef {
            $crate::export::root_module(__bot_bottle_instantiate)
        }

        /// The abi_stable library header the host looks up by name.
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::export::__private::abi_stable::library::LibHeader = {
            extern "C" fn __bot_bottle_erased(
            ) -> $crate::export::__private::abi_stable::library::RootModuleResult {
                $crate::export::__private::abi_stable::library::__call_root_module_loader(
                    __bot_bottle_root_module,
                )
            }
            // SAFETY: the constructor returns the `PluginRootRef` built by
            // `__bot_bottle_root_module`, the type named here.
            unsafe {
                $crate::export::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginRootRef,
                >(
                    __bot_bottle_erased,
                    $crate::export::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_symbol_matches_abi_stable() {
        assert_eq!(
            ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
