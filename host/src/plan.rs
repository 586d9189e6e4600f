//! Stages 1–4 of the one flow, end to end: manifest → plugins → prepare →
//! egress plan. `bottle plan` prints the result; `bottle run` launches it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bot_bottle_plugin_api::{
    AgentLaunch, AgentProvisionPlan, ErrorKind, Mount, PluginInfo, PluginKind, PrepareRequest,
    Resources, SandboxFile, SandboxLayout, Secret, ValidateRequest,
};
use serde::Serialize;

use crate::egress_plan::{self, EgressPlan};
use crate::manifest::Manifest;
use crate::plugins::discovery::SearchDir;
use crate::plugins::{PluginCallError, PluginSet};

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The manifest is wrong in a way only the installed plugins show.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// A plugin is missing or failed.
    #[error(transparent)]
    Plugin(#[from] PluginCallError),
    /// The provider put a real credential where the agent can see it.
    #[error("provider `{provider}` put a value of egress token ref `{token_ref}` into the agent's {place}; refusing to build a bottle that leaks a credential — this is a bug in the provider")]
    SecretInSandbox {
        /// The provider.
        provider: String,
        /// Which ref leaked.
        token_ref: String,
        /// Where (`env FOO`, `file /x`).
        place: String,
    },
    /// The manifest's `[env]` holds a real credential.
    #[error("{manifest}: [env] {key} holds the value of egress token ref `{token_ref}`, which the agent would see; remove it from [env] (the proxy injects the credential, and the agent gets a dummy)")]
    SecretInManifestEnv {
        /// The manifest.
        manifest: PathBuf,
        /// The env key.
        key: String,
        /// Which ref's value it holds.
        token_ref: String,
    },
    /// The manifest's agent `command` holds a real credential.
    #[error("{manifest}: [agent] command holds the value of egress token ref `{token_ref}`, which the agent would see; take it out of the command (the proxy injects the credential, and the agent gets a dummy)")]
    SecretInManifestCommand {
        /// The manifest.
        manifest: PathBuf,
        /// Which ref's value it holds.
        token_ref: String,
    },
    /// A mount would show the agent a host file it must not change or read.
    #[error("{manifest}: {mount} contains {file}, {why}; {fix}")]
    ExposedHostFile {
        /// The manifest.
        manifest: PathBuf,
        /// Which mount (`the writable workspace /p`, `mount /p`).
        mount: String,
        /// The host file inside it.
        file: PathBuf,
        /// What the agent could do with it.
        why: String,
        /// What to change.
        fix: &'static str,
    },
    /// A mount's host path goes through a writable mount, where the agent
    /// could put a link that the next run would follow.
    #[error("{manifest}: the host path of {mount} goes through {through}: the agent could replace a directory on the way with a link, and the next run would mount whatever the link points at (any host directory); mount a directory outside every writable mount, or mount it over the writable one's own view of it (its sandbox path inside the writable mount's)")]
    RedirectableMount {
        /// The manifest.
        manifest: PathBuf,
        /// The mount whose path could be redirected.
        mount: String,
        /// The writable mount it goes through.
        through: String,
    },
    /// A protected host file has other names (hard links) that may lie in a
    /// mount.
    #[error("{manifest}: {file} ({what}) has {links} hard links, and {mount} is on the same file system: another name for it may lie inside, through which the agent could change or read it, and bottle cannot tell where the others are; give it a name of its own (`cp FILE FILE.new && mv FILE.new FILE`), or mount a directory on another file system")]
    HardLinkedHostFile {
        /// The manifest.
        manifest: PathBuf,
        /// Which mount.
        mount: String,
        /// The host file.
        file: PathBuf,
        /// Its link count.
        links: u64,
        /// What it is.
        what: String,
    },
    /// No command in the manifest and none from the provider.
    #[error(
        "{path}: no agent command: set `command` in [agent] (provider `{provider}` has no default)"
    )]
    NoCommand {
        /// The manifest.
        path: PathBuf,
        /// The provider.
        provider: String,
    },
}

/// A plugin as the plan names it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginRef {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Library file.
    pub path: PathBuf,
}

/// Everything a bottle will get, before launch. Secret values live only in
/// `egress.token_values` and `provision.provisioned_env`, which are never
/// printed.
#[derive(Debug, Clone)]
pub struct BottlePlan {
    /// The manifest.
    pub manifest: Manifest,
    /// The provider used.
    pub provider: PluginRef,
    /// The backend used.
    pub backend: PluginRef,
    /// What the provider said.
    pub provision: AgentProvisionPlan,
    /// Paths inside the sandbox.
    pub sandbox: SandboxLayout,
    /// The agent's command.
    pub command: Vec<String>,
    /// The agent's env (without the proxy variables the backend adds).
    pub agent_env: BTreeMap<String, String>,
    /// Files placed in the sandbox (without the CA files, added at launch).
    pub agent_files: Vec<SandboxFile>,
    /// Routes, passthrough, tokens.
    pub egress: EgressPlan,
}

fn plugin_ref(info: &PluginInfo, path: &std::path::Path) -> PluginRef {
    PluginRef {
        name: info.name.clone(),
        version: info.version.clone(),
        path: path.to_path_buf(),
    }
}

/// The host environment, every value treated as a secret.
pub fn host_env() -> BTreeMap<String, Secret> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, Secret::new(v.into_string().ok()?))))
        .collect()
}

/// A plugin's error about its manifest options (`[agent.options]`,
/// `[backends.NAME]`), placed at the key it names, or at the table when it
/// names none; any other error as it is. A plugin built before
/// [`PluginError::options_key`] is understood by its message, which
/// starts with the table's header by convention.
///
/// [`PluginError::options_key`]: bot_bottle_plugin_api::PluginError::options_key
pub fn place_options_error(manifest: &Manifest, e: PluginCallError) -> PlanError {
    let PluginCallError::Plugin {
        plugin,
        name,
        error,
    } = &e
    else {
        return e.into();
    };
    let (table, header) = match plugin {
        PluginKind::Provider => ("agent.options".to_string(), "[agent.options]".to_string()),
        PluginKind::Backend => (
            crate::manifest::key_path("backends", name),
            format!("[backends.{name}]"),
        ),
    };
    let key = match &error.options_key {
        Some(key) => key.clone(),
        None if error.kind == ErrorKind::InvalidInput && error.message.starts_with(&header) => {
            Vec::new()
        }
        None => return e.into(),
    };
    let path = key
        .iter()
        .fold(table, |path, k| crate::manifest::key_path(&path, k));
    PlanError::Manifest(manifest.option_error_at(&path, e.to_string()))
}

/// Runs stages 2–4 for a loaded manifest.
pub fn plan(
    manifest: Manifest,
    plugins: &PluginSet,
    host_env: &BTreeMap<String, Secret>,
) -> Result<BottlePlan, PlanError> {
    let provider = plugins.provider(&manifest.provider)?;
    let backend = plugins.backend(&manifest.backend)?;
    for w in
        manifest.check_backend_tables(plugins.backends().map(|b| b.plugin.info.name.as_str()))?
    {
        eprintln!("warning: {w}");
    }
    let sandbox = SandboxLayout::default();

    let provision = provider
        .prepare(&PrepareRequest {
            schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
            bottle_name: manifest.name.clone(),
            options: manifest.provider_options.clone(),
            host_env: host_env.clone(),
            sandbox: sandbox.clone(),
        })
        .map_err(|e| place_options_error(&manifest, e))?;

    let egress = egress_plan::build(
        &manifest.routes,
        &manifest.tls_passthrough,
        manifest.upstream_proxy_auth_ref.as_deref(),
        &provider.plugin.info.name,
        &provision,
        host_env,
    );

    // Agent env: the provider's, then the manifest's (the user's explicit
    // choice wins), then the CA variables (which must point at our bundle).
    let mut agent_env = provision.env.clone();
    agent_env.extend(manifest.env.clone());
    for var in &provision.ca_trust_env {
        agent_env.insert(var.clone(), sandbox.ca_bundle_path.clone());
    }
    let agent_files = provision.files.clone();

    let command = match &manifest.command {
        Some(c) => c.clone(),
        None if !provision.default_command.is_empty() => provision.default_command.clone(),
        None => {
            return Err(PlanError::NoCommand {
                path: manifest.path.clone(),
                provider: manifest.provider.clone(),
            })
        }
    };

    let plan = BottlePlan {
        provider: plugin_ref(&provider.plugin.info, &provider.plugin.path),
        backend: plugin_ref(&backend.plugin.info, &backend.plugin.path),
        manifest,
        provision,
        sandbox,
        command,
        agent_env,
        agent_files,
        egress,
    };
    plan.refuse_leaks()?;
    plan.refuse_exposed_host_files(&plugins.searched, &plugins.opened)?;
    Ok(plan)
}

impl BottlePlan {
    /// Defence in depth: no resolved token value may appear in what the
    /// agent sees (env, files, command, the answers the proxy serves it) or
    /// in the notes `bottle plan` prints, as is or in a common encoding
    /// ([`crate::leaks`]: base64, hex, JSON escapes, percent-encoding;
    /// base64 files decoded).
    fn refuse_leaks(&self) -> Result<(), PlanError> {
        use crate::leaks::{Forms, MIN_LEN};
        use bot_bottle_plugin_api::FileEncoding;
        let secrets = self
            .egress
            .token_values
            .iter()
            .chain(self.provision.provisioned_env.iter());
        for (token_ref, value) in secrets {
            let v = value.expose();
            if v.len() < MIN_LEN {
                continue; // too short to be a credential and to match meaningfully
            }
            let forms = Forms::of(v);
            let found = |text: &str| forms.found_in(text.as_bytes());
            let leak = |place: String| PlanError::SecretInSandbox {
                provider: self.provider.name.clone(),
                token_ref: token_ref.clone(),
                place,
            };
            // A name is shown to the agent as much as a value is.
            if self.agent_env.keys().any(|k| found(k))
                || self.provision.ca_trust_env.iter().any(|k| found(k))
            {
                return Err(leak("env names".into()));
            }
            if let Some((k, _)) = self.agent_env.iter().find(|(_, val)| found(val)) {
                // The user's own [env], not the provider, put it there.
                if self.manifest.env.get(k).is_some_and(|mv| found(mv)) {
                    return Err(PlanError::SecretInManifestEnv {
                        manifest: self.manifest.path.clone(),
                        key: k.clone(),
                        token_ref: token_ref.clone(),
                    });
                }
                return Err(leak(format!("env {k}")));
            }
            // A place is named only by what does not hold the value.
            if self.agent_files.iter().any(|f| found(&f.path)) {
                return Err(leak("file paths".into()));
            }
            if let Some(f) = self
                .agent_files
                .iter()
                .find(|f| forms.found_in_file(&f.contents, f.encoding == FileEncoding::Base64))
            {
                return Err(leak(format!("file {}", f.path)));
            }
            if self.command.iter().any(|a| found(a)) {
                // The manifest's own command, not the provider's default.
                if self.manifest.command.iter().flatten().any(|a| found(a)) {
                    return Err(PlanError::SecretInManifestCommand {
                        manifest: self.manifest.path.clone(),
                        token_ref: token_ref.clone(),
                    });
                }
                return Err(leak("command".into()));
            }
            let locals = &self.egress.local_responses;
            if locals
                .iter()
                .any(|l| [&l.host, &l.path, &l.method].iter().any(|t| found(t)))
            {
                return Err(leak("local responses' requests".into()));
            }
            if let Some(l) = locals
                .iter()
                .find(|l| found(&l.body) || found(&l.content_type))
            {
                return Err(leak(format!(
                    "local response to {} {}{} (the proxy serves it to the agent)",
                    l.method, l.host, l.path
                )));
            }
            if self.provision.notes.iter().any(|n| found(n)) {
                return Err(leak("plan notes (`bottle plan` prints them)".into()));
            }
        }
        Ok(())
    }

    /// No mount may let the agent change what the next `bottle` run reads
    /// and follows, or read a file a real credential comes from
    /// ([`crate::exposure`]).
    fn refuse_exposed_host_files(
        &self,
        searched: &[SearchDir],
        opened: &[PathBuf],
    ) -> Result<(), PlanError> {
        use crate::exposure::{
            first_exposure, first_redirectable, Kind, MountView, Protected, Via,
        };
        let m = &self.manifest;
        let mut mounts: Vec<MountView> = m
            .workspace
            .iter()
            .map(|w| MountView {
                host: w.clone(),
                sandbox: self.sandbox.workspace.clone().into(),
                writable: true,
                describe: format!("the writable workspace {}", w.display()),
            })
            .collect();
        mounts.extend(m.mounts.iter().map(|x| MountView {
            host: x.host.clone(),
            sandbox: x.sandbox.clone().into(),
            writable: x.writable,
            describe: format!(
                "{} {}",
                if x.writable {
                    "writable mount"
                } else {
                    "mount"
                },
                x.host.display()
            ),
        }));
        if let Some((mount, through)) = first_redirectable(&mounts) {
            return Err(PlanError::RedirectableMount {
                manifest: m.path.clone(),
                mount: mount.describe.clone(),
                through: through.describe.clone(),
            });
        }
        let guard = |path: &Path, what: String, kind| Protected {
            path: path.to_path_buf(),
            what,
            kind,
        };
        let mut protected = vec![guard(&m.path, "the manifest".into(), Kind::Policy)];
        if let Some(ca) = &m.upstream_ca {
            protected.push(guard(
                ca,
                "the egress.upstream_ca the proxy trusts".into(),
                Kind::Policy,
            ));
        }
        let exe = crate::launch::egress_program();
        protected.push(guard(
            &exe,
            "the bottle program (the egress sidecar runs it too)".into(),
            Kind::Code,
        ));
        // Every library bottle opened, not only the two the bottle uses:
        // opening one runs its constructors (a link in a plugin directory
        // to a file in the workspace would run the agent's code).
        for lib in opened {
            protected.push(guard(
                lib,
                "a library bottle opens as a plugin".into(),
                Kind::Code,
            ));
        }
        for d in searched {
            protected.push(guard(
                &d.path,
                "a directory bottle loads plugins from".into(),
                Kind::Code,
            ));
        }
        for c in &self.provision.credential_sources {
            protected.push(guard(
                c,
                format!(
                    "the file provider `{}` reads the real credential from",
                    self.provider.name
                ),
                Kind::Credential,
            ));
        }
        for c in &self.provision.protected_paths {
            protected.push(guard(
                c,
                format!(
                    "a file where provider `{}` says its agent keeps credentials",
                    self.provider.name
                ),
                Kind::Credential,
            ));
        }
        let Some((mount, file, via)) = first_exposure(&mounts, &protected) else {
            return Ok(());
        };
        if let Via::HardLinks(links) = via {
            return Err(PlanError::HardLinkedHostFile {
                manifest: m.path.clone(),
                mount: mount.describe.clone(),
                file: file.path.clone(),
                links,
                what: file.what.clone(),
            });
        }
        let (why, fix) = match file.kind {
            Kind::Credential => (
                "the agent could read it",
                "mount a directory that does not contain it (the proxy injects the \
                 credential; the agent never needs the file)",
            ),
            Kind::Policy => (
                "the agent could rewrite it (or a link on the way to it), and the next run \
                 would follow what it wrote",
                "keep it, and every link on the way to it, outside every writable mount: for \
                 example, put bottle.toml in the directory above the project and set \
                 [workspace] path to the project, or give the workspace a subdirectory of its own",
            ),
            Kind::Code => (
                "the agent could replace it, and the next bottle run would run what it wrote",
                "mount a directory that does not hold bot-bottle's program or plugins",
            ),
        };
        Err(PlanError::ExposedHostFile {
            manifest: m.path.clone(),
            mount: mount.describe.clone(),
            file: file.path.clone(),
            why: format!("{}: {why}", file.what),
            fix,
        })
    }

    /// The agent's mounts, as the backend gets them: the workspace
    /// (read-write, at the sandbox workspace), then the manifest's.
    pub fn agent_mounts(&self) -> Vec<Mount> {
        let m = &self.manifest;
        let mut mounts: Vec<Mount> = m
            .workspace
            .iter()
            .map(|ws| Mount {
                host: ws.clone(),
                sandbox: self.sandbox.workspace.clone(),
                writable: true,
            })
            .collect();
        mounts.extend(m.mounts.iter().cloned());
        mounts
    }

    /// The bottle as the backend's `validate` and `check` see it before a
    /// launch: the agent as the launch spec will hold it, without the CA
    /// files and arguments given at run time, and no egress half.
    pub fn validate_request(&self) -> ValidateRequest {
        let m = &self.manifest;
        let tty = m.tty.unwrap_or(false);
        ValidateRequest {
            schema: bot_bottle_plugin_api::PAYLOAD_SCHEMA,
            bottle_name: m.name.clone(),
            agent: AgentLaunch {
                image: m.image.clone(),
                command: self.command.clone(),
                env: self.agent_env.clone(),
                files: self.agent_files.clone(),
                workdir: self.sandbox.workspace.clone(),
                mounts: self.agent_mounts(),
                resources: m.resources.clone(),
                tty,
                interactive: tty,
                attached: true,
            },
            backend_options: m.backend_options.clone(),
        }
    }

    /// The plan as printed by `bottle plan --json`: no secret values.
    pub fn view(&self) -> PlanView<'_> {
        PlanView {
            name: &self.manifest.name,
            manifest: &self.manifest.path,
            provider: &self.provider,
            backend: &self.backend,
            image: &self.manifest.image,
            command: &self.command,
            env: &self.agent_env,
            files: self
                .agent_files
                .iter()
                .map(|f| FileView {
                    path: &f.path,
                    mode: format!("{:o}", f.mode),
                    bytes: f.contents.len(),
                })
                .collect(),
            ca_trust_env: &self.provision.ca_trust_env,
            workspace: self.manifest.workspace.as_ref().map(|w| Mount {
                host: w.clone(),
                sandbox: self.sandbox.workspace.clone(),
                writable: true,
            }),
            mounts: &self.manifest.mounts,
            resources: &self.manifest.resources,
            routes: &self.egress.routes,
            tls_passthrough: &self.egress.tls_passthrough,
            allow_internal: &self.manifest.allow_internal,
            resolve: &self.manifest.resolve,
            upstream_ca: self.manifest.upstream_ca.as_deref(),
            dlp: self.manifest.dlp,
            upstream_proxy: self.manifest.upstream_proxy.as_deref(),
            upstream_proxy_auth_ref: self.manifest.upstream_proxy_auth_ref.as_deref(),
            tokens: &self.egress.tokens,
            provisioned_env: self
                .provision
                .provisioned_env
                .keys()
                .map(String::as_str)
                .collect(),
            local_responses: self
                .egress
                .local_responses
                .iter()
                .map(|l| format!("{} {}{}", l.method, l.host, l.path))
                .collect(),
            credential_sources: &self.provision.credential_sources,
            protected_paths: &self.provision.protected_paths,
            notes: &self.provision.notes,
            ready: self.egress.missing.is_none(),
        }
    }
}

/// A sandbox file, by name and size only.
#[derive(Debug, Serialize)]
pub struct FileView<'a> {
    /// Path in the sandbox.
    pub path: &'a str,
    /// Octal mode.
    pub mode: String,
    /// Size.
    pub bytes: usize,
}

/// The printable plan.
#[derive(Debug, Serialize)]
pub struct PlanView<'a> {
    /// Bottle name.
    pub name: &'a str,
    /// Manifest path.
    pub manifest: &'a std::path::Path,
    /// Provider plugin.
    pub provider: &'a PluginRef,
    /// Backend plugin.
    pub backend: &'a PluginRef,
    /// Agent image.
    pub image: &'a str,
    /// Agent command.
    pub command: &'a [String],
    /// Agent env (dummies and plain values only).
    pub env: &'a BTreeMap<String, String>,
    /// Files placed in the sandbox.
    pub files: Vec<FileView<'a>>,
    /// CA trust variables.
    pub ca_trust_env: &'a [String],
    /// The workspace mount.
    pub workspace: Option<Mount>,
    /// Other mounts.
    pub mounts: &'a [Mount],
    /// Limits.
    pub resources: &'a Resources,
    /// Egress routes.
    pub routes: &'a [bot_bottle_plugin_api::EgressRoute],
    /// Passthrough hosts.
    pub tls_passthrough: &'a [String],
    /// Internal networks a route host's DNS answer may be dialled in.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub allow_internal: &'a [ipnet::IpNet],
    /// Hosts dialled at a fixed address instead of their DNS answer.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resolve: &'a BTreeMap<String, std::net::SocketAddr>,
    /// The extra CA bundle the proxy trusts for upstream TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<&'a Path>,
    /// What the proxy's DLP stage does with secret-shaped values.
    pub dlp: crate::manifest::DlpMode,
    /// The HTTP proxy every upstream connection is chained through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_proxy: Option<&'a str>,
    /// The env name (only) of its `user:password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_proxy_auth_ref: Option<&'a str>,
    /// Token refs and where they resolve from.
    pub tokens: &'a [egress_plan::TokenStatus],
    /// Names (only) of what the provider provisioned.
    pub provisioned_env: Vec<&'a str>,
    /// Requests the proxy answers itself: method, host and path only.
    pub local_responses: Vec<String>,
    /// Host files watched for credential rotation.
    pub credential_sources: &'a [PathBuf],
    /// Host files no mount may hold (the provider's credential files).
    pub protected_paths: &'a [PathBuf],
    /// Provider notes.
    pub notes: &'a [String],
    /// Whether every token ref resolved.
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bot_bottle_plugin_api::PluginError;

    const TEXT: &str = "name = \"demo\"\nbackend = \"docker\"\n\n[agent]\nprovider = \"generic\"\nimage = \"busybox\"\n\n[agent.options]\ndummy_env = [\"T\"]\n\n[backends.docker]\nruntime = \"runsc\"\n";

    fn placed(kind: PluginKind, name: &str, error: PluginError) -> String {
        let m = Manifest::parse(Path::new("/tmp/x/bottle.toml"), TEXT).unwrap();
        let e = PluginCallError::Plugin {
            plugin: kind,
            name: name.into(),
            error,
        };
        place_options_error(&m, e).to_string()
    }

    #[test]
    fn options_errors_are_placed_at_their_key_or_table() {
        let e = placed(
            PluginKind::Backend,
            "docker",
            PluginError::invalid("[backends.docker] in the manifest: runsc is not installed")
                .in_options(["runtime"]),
        );
        assert!(e.starts_with("/tmp/x/bottle.toml:12:11: backend plugin `docker`: [backends.docker] in the manifest: runsc"), "{e}");
        assert!(e.contains("(key `backends.docker.runtime`)"), "{e}");
        // A key that is not written: the table.
        let e = placed(
            PluginKind::Provider,
            "generic",
            PluginError::invalid("[agent.options]: missing field `x`").in_options(["x"]),
        );
        assert!(
            e.starts_with("/tmp/x/bottle.toml:8:1: provider plugin `generic`"),
            "{e}"
        );
        assert!(e.contains("(key `agent.options.x`)"), "{e}");
        // A plugin that names no key but the table, by the message's
        // convention: the table.
        let e = placed(
            PluginKind::Backend,
            "docker",
            PluginError::invalid("[backends.docker]: unknown field `runtme`"),
        );
        assert!(
            e.starts_with("/tmp/x/bottle.toml:11:1: backend plugin `docker`"),
            "{e}"
        );
        assert!(e.contains("(key `backends.docker`)"), "{e}");
        // Anything else is left as it is.
        let e = placed(
            PluginKind::Backend,
            "docker",
            PluginError::unavailable("the Docker daemon is not running"),
        );
        assert_eq!(
            e,
            "backend plugin `docker`: the Docker daemon is not running"
        );
    }
}
