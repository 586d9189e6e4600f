//! The writable workspace must not become a way to run code as the host
//! user. An agent can write `/workspace/.git/config` (`core.fsmonitor =
//! "sh -c …"`), a hook, or a new `.git` anywhere in the tree; the user's
//! next `git status` on the host (or a prompt that shows it) then runs the
//! agent's command. A read-only mount over `.git/config` would not stop it
//! (the agent renames `.git` and makes another), so the host looks instead:
//! it takes a [`Snapshot`] of every repository in the workspace at launch
//! and, when the agent has ended, names each entry that is new and lets git
//! run a command ([`Snapshot::changes`]). `bottle check-workspace` lists
//! every such entry present, without a snapshot ([`audit`]).
//!
//! Config files are read by the host's own `git` (`git config --file -
//! --list`, fed from memory: no include is followed, nothing is run), so
//! they are understood exactly as the user's git will understand them.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// How deep below the workspace nested repositories are looked for.
pub const MAX_DEPTH: usize = 8;
/// How many directories are looked at, at most.
pub const MAX_DIRS: usize = 50_000;
/// Config files larger than this are not parsed (reported instead).
const MAX_CONFIG: u64 = 1 << 20;
/// Hooks larger than this are compared by metadata, not contents.
const MAX_HOOK: u64 = 16 << 20;

/// What a `.git` entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DotGit {
    /// A directory (by device and inode: a replaced one is another).
    Dir(u64, u64),
    /// A `gitdir:` file, by contents.
    File(Vec<u8>),
    /// A symbolic link, by target.
    Link(PathBuf),
    /// A bare repository: the directory itself (device, inode).
    Bare(u64, u64),
    /// A submodule's git directory in `.git/modules/` (device, inode).
    Module(u64, u64),
    /// No repository: the workspace files the user's global or system
    /// config includes ([`GLOBAL_INCLUDES`]).
    Global,
}

/// One repository as found.
#[derive(Debug, Clone)]
struct Repo {
    dot_git: DotGit,
    /// Where git reads it from.
    git_dir: PathBuf,
    /// Config-like files, relative to `git_dir`, by contents.
    files: BTreeMap<String, Vec<u8>>,
    /// Hooks (not `.sample`), by name, by SHA-256 of their contents.
    hooks: BTreeMap<String, [u8; 32]>,
    /// Where each include of its config leads (the path as written, joined
    /// to the including file's directory -> where links take it, or why
    /// it leads nowhere), in the workspace or not.
    includes: BTreeMap<String, String>,
    /// The work tree git uses with it, when the walk found it from one.
    work_tree: Option<PathBuf>,
    /// The git directory's device and inode, links followed: the same
    /// repository under another key (a submodule checked out or deinited
    /// moves between `.git/modules/NAME` and its work tree).
    id: Option<(u64, u64)>,
}

/// The repositories of a workspace at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    root: PathBuf,
    repos: BTreeMap<PathBuf, Repo>,
    /// The walk stopped early (too deep or too many directories).
    pub truncated: bool,
}

/// One thing the user should look at before running git in the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The repository's directory (its work tree).
    pub repo: PathBuf,
    /// What is there and why it matters. Quotes config values: they are the
    /// agent's, and the user must see the command to judge it.
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.repo.display(), self.what)
    }
}

/// `root/rel`, without a trailing slash for the root itself.
fn join(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn read_small(p: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_CONFIG {
        // Marked, so that a huge file is reported rather than skipped.
        return Some(b"\0bot-bottle: too large\0".to_vec());
    }
    std::fs::read(p).ok()
}

/// Where a `.git` file points (`gitdir: PATH`, relative to its directory).
fn gitdir_of(dot_git_file: &Path, contents: &[u8]) -> Option<PathBuf> {
    let text = String::from_utf8_lossy(contents);
    let rest = text.trim().strip_prefix("gitdir:")?.trim();
    let p = PathBuf::from(rest);
    Some(if p.is_absolute() {
        p
    } else {
        dot_git_file.parent()?.join(p)
    })
}

/// Whether git would take `dir` itself for a repository (its
/// `is_git_directory`): a `HEAD`, and `objects` and `refs` of any kind (git
/// only asks that it may "execute" them, which a file with the x bit
/// passes), or a `commondir` pointing to them.
fn looks_bare(dir: &Path) -> bool {
    let there = |n: &str| std::fs::symlink_metadata(dir.join(n)).is_ok();
    has_head(dir) && ((there("objects") && there("refs")) || there("commondir"))
}

/// Whether `dir` has a `HEAD` as git accepts one: a file, or a symbolic
/// link (git takes `HEAD -> refs/heads/main` without looking whether the
/// branch exists; `is_file` follows the link and says no).
fn has_head(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join("HEAD"))
        .is_ok_and(|m| m.file_type().is_file() || m.file_type().is_symlink())
}

/// The key under which a directory that has a `.git` *and* looks like a
/// repository itself is kept: invalidate the `.git` (rename its `HEAD`) and
/// git takes the directory for a bare repository, config and all.
const AS_BARE: &str = "(the directory itself, as a bare repository)";

/// The key under which the files in the workspace that the user's global
/// or system config includes are kept (git reads them in every
/// repository, or in those an `includeIf` matches).
const GLOBAL_INCLUDES: &str = "(files your global git config includes)";

/// How many submodule git directories are looked at, at most.
const MAX_MODULES: usize = 1000;

/// The git directories of submodules in each repository's `modules/`
/// (nested ones too, and names with slashes) that no work tree found by the
/// walk points to: a submodule not checked out yet. Git uses its config and
/// hooks once `git submodule update` checks it out, so the agent could
/// plant them there. Kept under `<repo>/.git/modules/<name>`. A symbolic
/// link there is kept by its target (a new or changed one is reported) and
/// not walked through: it could lead anywhere on the host; what it leads to
/// is read only when that is a git directory in the workspace. True when
/// there were more than [`MAX_MODULES`] entries to look at.
fn add_modules(repos: &mut BTreeMap<PathBuf, Repo>, ctx: &Context) -> bool {
    use crate::exposure::canonical;
    let known: std::collections::BTreeSet<PathBuf> =
        repos.values().map(|r| canonical(&r.git_dir)).collect();
    let mut queue: Vec<(PathBuf, PathBuf, usize)> = repos
        .iter()
        .filter(|(_, r)| {
            matches!(
                r.dot_git,
                DotGit::Dir(..) | DotGit::File(_) | DotGit::Link(_)
            )
        })
        .map(|(rel, r)| (r.git_dir.join("modules"), rel.join(".git/modules"), 0))
        .collect();
    let mut seen = 0;
    while let Some((path, rel, depth)) = queue.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        seen += 1;
        if seen > MAX_MODULES {
            return true;
        }
        if meta.file_type().is_symlink() {
            let real = canonical(&path);
            if known.contains(&real) {
                continue;
            }
            let target = std::fs::read_link(&path).unwrap_or_default();
            let r = if real.starts_with(&ctx.root) && has_head(&real) {
                read_repo(DotGit::Link(target), real, None, ctx)
            } else {
                let id = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
                Repo {
                    dot_git: DotGit::Link(target),
                    git_dir: path,
                    files: BTreeMap::new(),
                    hooks: BTreeMap::new(),
                    includes: BTreeMap::new(),
                    work_tree: None,
                    id,
                }
            };
            repos.insert(rel, r);
            continue;
        }
        if !meta.is_dir() || depth > MAX_DEPTH {
            continue;
        }
        if has_head(&path) {
            queue.push((path.join("modules"), rel.join("modules"), depth + 1));
            if !known.contains(&canonical(&path)) {
                let r = read_repo(DotGit::Module(meta.dev(), meta.ino()), path, None, ctx);
                repos.insert(rel, r);
            }
            continue;
        }
        // A part of a name with slashes (`libs/foo`).
        for e in std::fs::read_dir(&path).into_iter().flatten().flatten() {
            queue.push((e.path(), rel.join(e.file_name()), depth + 1));
        }
    }
    false
}

/// What every repository of one snapshot is read against.
struct Context {
    /// The workspace, as a physical path.
    root: PathBuf,
    /// `core.hooksPath` of the user's global or system config.
    global_hooks_path: Option<String>,
    /// The global config file to read instead of the user's (tests).
    global_config: Option<PathBuf>,
}

/// The files in the workspace that the user's global and system config
/// files include (whatever the condition), as a pseudo-repository; None
/// when those files include nothing. The user's own files are followed
/// from, not kept: they are not the agent's to write, and their entries
/// are not the workspace's.
fn global_included(ctx: &Context) -> Option<Repo> {
    let out = user_git_config(
        &["--list", "--show-origin", "--no-includes", "--null"],
        ctx.global_config.as_deref(),
    )
    .output()
    .ok()?;
    // `file:PATH` NUL `key\nvalue` NUL, per entry.
    let mut origins = std::collections::BTreeSet::new();
    let parts: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    for pair in parts.chunks(2) {
        if let [origin, entry] = pair {
            let key = entry.split(|b| *b == b'\n').next().unwrap_or_default();
            let include = key.to_ascii_lowercase().starts_with(b"include");
            if let (Some(path), true) = (origin.strip_prefix(b"file:"), include) {
                use std::os::unix::ffi::OsStrExt;
                origins.insert(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
            }
        }
    }
    if origins.is_empty() {
        return None;
    }
    let mut files = BTreeMap::new();
    for o in &origins {
        if let Some(b) = read_small(o) {
            files.insert(o.to_string_lossy().into_owned(), b);
        }
    }
    let includes = add_included(&mut files, Path::new("/"), &ctx.root);
    files.retain(|k, _| !origins.contains(Path::new(k)));
    Some(Repo {
        dot_git: DotGit::Global,
        git_dir: PathBuf::from("/"),
        files,
        hooks: BTreeMap::new(),
        includes,
        work_tree: None,
        id: None,
    })
}

/// `git config ARGS` outside any repository, so that it reads the user's
/// global and system config only (or the file `global` instead of them).
fn user_git_config(args: &[&str], global: Option<&Path>) -> Command {
    let mut git = Command::new("git");
    git.arg("config")
        .args(args)
        .current_dir("/")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    if let Some(f) = global {
        git.env("GIT_CONFIG_GLOBAL", f)
            .env("GIT_CONFIG_NOSYSTEM", "1");
    }
    git
}

/// `core.hooksPath` as the user's global and system config set it (read
/// once, outside any repository). A relative one is taken from each
/// repository's work tree, inside the workspace, where the agent writes.
fn global_hooks_path() -> Option<String> {
    static GLOBAL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let out = user_git_config(&["--get", "core.hooksPath"], None)
                .output()
                .ok()?;
            let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (out.status.success() && !v.is_empty()).then_some(v)
        })
        .clone()
}

/// How deep git follows includes.
const MAX_INCLUDE_DEPTH: usize = 10;

/// Adds to `files` the config files that `files` include (`include.path`,
/// `includeIf.*.path`, whatever the condition, followed as git does) when
/// they lie in the workspace `root`, where the agent can write them: keyed
/// by their full path, they are compared like the repository's own config.
/// Returns where every include leads, so that an include the agent
/// redirects (a directory on its way replaced by a link) is seen. A file
/// included from outside the workspace is not read: the agent cannot
/// change it, and a path the agent wrote must not make the host read a
/// file of its choosing (a new include is reported by itself).
fn add_included(
    files: &mut BTreeMap<String, Vec<u8>>,
    git_dir: &Path,
    root: &Path,
) -> BTreeMap<String, String> {
    let mut leads = BTreeMap::new();
    let mut queue: Vec<(PathBuf, Vec<u8>, usize)> = files
        .iter()
        .filter(|(n, _)| n.starts_with('/') || !n.ends_with("commondir"))
        .map(|(n, b)| {
            let file = git_dir.join(n);
            let dir = file.parent().unwrap_or(git_dir).to_path_buf();
            (dir, b.clone(), 0)
        })
        .collect();
    while let Some((dir, bytes, depth)) = queue.pop() {
        // Most configs include nothing: no git process for them.
        if depth >= MAX_INCLUDE_DEPTH
            || !bytes
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"include")
        {
            continue;
        }
        let Ok(entries) = config_entries(&bytes) else {
            continue;
        };
        for (key, value) in entries {
            let include =
                key == "include.path" || (key.starts_with("includeif.") && key.ends_with(".path"));
            let Some(value) = value.filter(|_| include) else {
                continue;
            };
            let p = PathBuf::from(value.trim());
            let p = match p.strip_prefix("~") {
                Ok(rest) => match dirs::home_dir() {
                    Some(h) => h.join(rest),
                    None => continue,
                },
                Err(_) => dir.join(&p),
            };
            let (lead, readable) = include_target(&p, root);
            leads.insert(p.to_string_lossy().into_owned(), lead.clone());
            let Some(target) = readable else { continue };
            let key = target.to_string_lossy().into_owned();
            if files.contains_key(&key) {
                continue;
            }
            if let Some(b) = read_small(&target) {
                let next = target.parent().unwrap_or(root).to_path_buf();
                files.insert(key, b.clone());
                queue.push((next, b, depth + 1));
            }
        }
    }
    leads
}

/// Where an include of `p` leads, for the record, and the physical path
/// to read when that is in the workspace `root`. Links are followed as the
/// kernel does, also to a file that does not exist yet (an optional
/// include the agent may create); one that exists is checked again with
/// `canonicalize`, so that a chain of more links than the walk follows
/// cannot lead the read outside.
fn include_target(p: &Path, root: &Path) -> (String, Option<PathBuf>) {
    let Some(target) = crate::exposure::entries_on_the_way(p).last().cloned() else {
        return ("(nowhere)".into(), None);
    };
    if std::fs::symlink_metadata(&target).is_err() {
        let inside = target.starts_with(root);
        return (
            target.to_string_lossy().into_owned(),
            inside.then_some(target),
        );
    }
    match std::fs::canonicalize(&target) {
        Ok(real) => {
            let inside = real.starts_with(root);
            (real.to_string_lossy().into_owned(), inside.then_some(real))
        }
        Err(e) => (format!("(unresolvable: {e})"), None),
    }
}

/// Reads the repository in `git_dir`; `work_tree` is where a relative
/// `core.hooksPath` is taken from (None for bare and submodule git
/// directories).
fn read_repo(dot_git: DotGit, git_dir: PathBuf, work_tree: Option<&Path>, ctx: &Context) -> Repo {
    let mut files = BTreeMap::new();
    let mut names = vec![
        "config".to_string(),
        "config.worktree".into(),
        "commondir".into(),
    ];
    if let Ok(rd) = std::fs::read_dir(git_dir.join("worktrees")) {
        for e in rd.flatten().take(1000) {
            let n = e.file_name().to_string_lossy().into_owned();
            names.push(format!("worktrees/{n}/config.worktree"));
            names.push(format!("worktrees/{n}/commondir"));
        }
    }
    for n in names {
        if let Some(b) = read_small(&git_dir.join(&n)) {
            files.insert(n, b);
        }
    }
    let includes = add_included(&mut files, &git_dir, &ctx.root);
    let mut hooks = BTreeMap::new();
    hash_hooks(&git_dir.join("hooks"), None, &mut hooks);
    // Hooks in a `core.hooksPath` the repository or the user's global
    // config sets (husky, lefthook keep them in the work tree, where the
    // agent can rewrite them even though the setting itself is the
    // user's): hashed under their full path.
    if let Some(dir) = hooks_path(&files, work_tree, ctx.global_hooks_path.as_deref()) {
        hash_hooks(&dir, Some(&dir), &mut hooks);
    }
    let id = std::fs::metadata(&git_dir).ok().map(|m| (m.dev(), m.ino()));
    Repo {
        dot_git,
        git_dir,
        files,
        hooks,
        includes,
        work_tree: work_tree.map(Path::to_path_buf),
        id,
    }
}

/// Digests of the hooks in `dir` (not `*.sample`) into `hooks`, named by
/// file name, or by full path under `full` (a `core.hooksPath`).
fn hash_hooks(dir: &Path, full: Option<&Path>, hooks: &mut BTreeMap<String, [u8; 32]>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten().take(1000) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".sample") {
            continue;
        }
        // Regular files only, and not huge ones: a FIFO (or a link to
        // one, or to /dev/zero) would hang the host reading it.
        let digest = match std::fs::metadata(e.path()) {
            Ok(m) if m.is_file() && m.len() <= MAX_HOOK => match std::fs::read(e.path()) {
                Ok(b) => sha256(&b),
                Err(_) => sha256(format!("unreadable {n}").as_bytes()),
            },
            Ok(m) => sha256(
                format!(
                    "{n}: {:?} {} bytes, inode {} changed {}",
                    m.file_type(),
                    m.len(),
                    m.ino(),
                    m.ctime()
                )
                .as_bytes(),
            ),
            Err(_) => sha256(format!("unreadable {n}").as_bytes()),
        };
        let name = match full {
            Some(d) => d.join(&n).to_string_lossy().into_owned(),
            None => n,
        };
        hooks.insert(name, digest);
    }
}

/// The directory the repository's `core.hooksPath` names (the last one
/// of its config, the files that includes and `config.worktree`, in the
/// order git reads them), else the one of the user's global or system
/// config (`global`), resolved as git does: `~/` from the home directory,
/// a relative path from the work tree.
fn hooks_path(
    files: &BTreeMap<String, Vec<u8>>,
    work_tree: Option<&Path>,
    global: Option<&str>,
) -> Option<PathBuf> {
    let last_in = |bytes: &Vec<u8>| {
        config_entries(bytes)
            .ok()?
            .into_iter()
            .rev()
            .find(|(k, _)| k == "core.hookspath")?
            .1
    };
    let included = files.iter().filter(|(n, _)| n.starts_with('/'));
    let own = files
        .get("config")
        .into_iter()
        .chain(included.map(|(_, b)| b))
        .chain(files.get("config.worktree"))
        .filter(|b| b.to_ascii_lowercase().windows(9).any(|w| w == b"hookspath"))
        // The last file that sets it wins: look from the end.
        .rev()
        .find_map(last_in);
    let value = own.or_else(|| global.map(str::to_owned))?;
    let p = PathBuf::from(value.trim());
    if let Ok(rest) = p.strip_prefix("~") {
        return dirs::home_dir().map(|h| h.join(rest));
    }
    if p.is_absolute() {
        return Some(p);
    }
    work_tree.map(|wt| wt.join(&p))
}

/// The repository whose work tree is `dir`, if any.
fn repo_at(dir: &Path, ctx: &Context) -> Option<Repo> {
    let dg = dir.join(".git");
    if let Ok(meta) = std::fs::symlink_metadata(&dg) {
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&dg).unwrap_or_default();
            return Some(read_repo(DotGit::Link(target), dg, Some(dir), ctx));
        }
        if ft.is_dir() {
            return Some(read_repo(
                DotGit::Dir(meta.dev(), meta.ino()),
                dg,
                Some(dir),
                ctx,
            ));
        }
        let contents = read_small(&dg).unwrap_or_default();
        let git_dir = gitdir_of(&dg, &contents).unwrap_or_else(|| dg.clone());
        return Some(read_repo(DotGit::File(contents), git_dir, Some(dir), ctx));
    }
    if looks_bare(dir) {
        let meta = std::fs::symlink_metadata(dir).ok()?;
        return Some(read_repo(
            DotGit::Bare(meta.dev(), meta.ino()),
            dir.to_path_buf(),
            None,
            ctx,
        ));
    }
    None
}

impl Snapshot {
    /// Every repository in `root` (its own, and nested ones down to
    /// [`MAX_DEPTH`], looking at [`MAX_DIRS`] directories at most; symbolic
    /// links are not followed).
    pub fn take(root: &Path) -> Self {
        Self::take_with(root, global_hooks_path(), None)
    }

    /// [`Self::take`] with the user's global `core.hooksPath` given, and
    /// another global config file than the user's.
    fn take_with(
        root: &Path,
        global_hooks_path: Option<String>,
        global_config: Option<PathBuf>,
    ) -> Self {
        let ctx = Context {
            root: crate::exposure::canonical(root),
            global_hooks_path,
            global_config,
        };
        let mut repos = BTreeMap::new();
        let mut truncated = false;
        let mut queue = VecDeque::from([(root.to_path_buf(), 0usize)]);
        let mut seen = 0usize;
        while let Some((dir, depth)) = queue.pop_front() {
            seen += 1;
            if seen > MAX_DIRS {
                truncated = true;
                break;
            }
            let rel = dir.strip_prefix(root).unwrap_or(&dir).to_path_buf();
            if let Some(r) = repo_at(&dir, &ctx) {
                let bare = matches!(r.dot_git, DotGit::Bare(..));
                repos.insert(rel.clone(), r);
                if bare {
                    continue; // its objects are no work tree
                }
                if looks_bare(&dir) {
                    if let Ok(meta) = std::fs::symlink_metadata(&dir) {
                        let r = read_repo(
                            DotGit::Bare(meta.dev(), meta.ino()),
                            dir.clone(),
                            None,
                            &ctx,
                        );
                        repos.insert(rel.join(AS_BARE), r);
                    }
                }
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if !ft.is_dir() || e.file_name() == ".git" {
                    continue;
                }
                if depth + 1 > MAX_DEPTH {
                    truncated = true;
                    continue;
                }
                queue.push_back((e.path(), depth + 1));
            }
        }
        truncated |= add_modules(&mut repos, &ctx);
        if let Some(g) = global_included(&ctx) {
            repos.insert(PathBuf::from(GLOBAL_INCLUDES), g);
        }
        Self {
            root: root.to_path_buf(),
            repos,
            truncated,
        }
    }

    /// What in `self` (taken after the agent ran) is new since `before`
    /// and would let git run something.
    pub fn changes_since(&self, before: &Snapshot) -> Vec<Finding> {
        let mut out = Vec::new();
        for (rel, now) in &self.repos {
            let at = join(&self.root, rel);
            let mut say = |what: String| {
                out.push(Finding {
                    repo: at.clone(),
                    what,
                })
            };
            let was = before.repos.get(rel);
            let baseline = match was {
                Some(w) if w.dot_git == now.dot_git => Some(w),
                // A submodule checked out or deinited: the same git
                // directory, now seen from its work tree or from
                // `.git/modules`.
                None if same_submodule(before, now).is_some() => same_submodule(before, now),
                Some(_) => {
                    say(format!(
                        "its git directory was replaced ({}); everything in the new one is the agent's",
                        describe(now)
                    ));
                    None
                }
                None => {
                    say(format!(
                        "a new repository ({}); everything in it is the agent's",
                        describe(now)
                    ));
                    None
                }
            };
            for f in dangerous_changes(baseline, now) {
                say(f);
            }
        }
        for (rel, was) in &before.repos {
            if !self.repos.contains_key(rel) && same_submodule(self, was).is_none() {
                out.push(Finding {
                    repo: join(&self.root, rel),
                    what: "its .git was moved away or deleted".into(),
                });
            }
        }
        out
    }
}

/// Whether a `core.worktree` of `r`'s config names the work tree the walk
/// found `r` from.
fn names_own_work_tree(r: &Repo, value: Option<&str>) -> bool {
    use crate::exposure::canonical;
    match (&r.work_tree, value) {
        (Some(wt), Some(v)) => canonical(&r.git_dir.join(v.trim())) == canonical(wt),
        _ => false,
    }
}

/// The repository of `snap` that is `r`'s git directory seen the other
/// way, when one of them is a submodule's git directory in `.git/modules`
/// and the other a work tree's `.git` file pointing to it.
fn same_submodule<'a>(snap: &'a Snapshot, r: &Repo) -> Option<&'a Repo> {
    let pair = |a: &DotGit, b: &DotGit| {
        matches!(
            (a, b),
            (DotGit::Module(..), DotGit::File(_)) | (DotGit::File(_), DotGit::Module(..))
        )
    };
    r.id?;
    snap.repos
        .values()
        .find(|o| o.id == r.id && pair(&o.dot_git, &r.dot_git))
}

fn describe(r: &Repo) -> String {
    match &r.dot_git {
        DotGit::Dir(..) => ".git is a directory".into(),
        DotGit::File(_) => format!("a .git file pointing to {}", r.git_dir.display()),
        DotGit::Link(t) => format!("a .git symbolic link to {}", t.display()),
        DotGit::Bare(..) => "a bare repository git finds from this directory".into(),
        DotGit::Global => "files your global git config includes".into(),
        DotGit::Module(..) => {
            "a submodule's git directory (git uses it once the submodule is checked out)".into()
        }
    }
}

/// Every entry of `now` not in `before` (everything when `before` is
/// `None`) that lets git run something.
fn dangerous_changes(before: Option<&Repo>, now: &Repo) -> Vec<String> {
    let mut out = Vec::new();
    for (name, bytes) in &now.files {
        let old = before.and_then(|b| b.files.get(name));
        if old == Some(bytes) {
            continue;
        }
        let path = now.git_dir.join(name);
        if !name.starts_with('/') && name.ends_with("commondir") {
            out.push(format!(
                "{} is new or changed: git reads this repository's config and hooks from where it points",
                path.display()
            ));
            continue;
        }
        let entries = match config_entries(bytes) {
            Ok(e) => e,
            Err(why) => {
                out.push(format!("{} changed and {why}", path.display()));
                continue;
            }
        };
        let mut old_entries = match old.map(|o| config_entries(o)) {
            Some(Ok(e)) => e,
            _ => Vec::new(),
        };
        for (key, value) in entries {
            // Each old entry excuses one identical new one.
            if let Some(i) = old_entries
                .iter()
                .position(|o| *o == (key.clone(), value.clone()))
            {
                old_entries.swap_remove(i);
                continue;
            }
            if key == "core.worktree" && names_own_work_tree(now, value.as_deref()) {
                // What `git submodule update` writes in a submodule's git
                // directory: the work tree it is used from anyway.
                continue;
            }
            if let Some(why) = dangerous(&key, value.as_deref()) {
                let shown = match &value {
                    Some(v) => format!("{key} = {v:?}"),
                    None => key.clone(),
                };
                out.push(format!("{} has {shown}: {why}", path.display()));
            }
        }
    }
    // An include of the user's that now leads elsewhere (a directory on
    // its way replaced by a link, maybe to a writable place outside).
    for (written, lead) in &now.includes {
        match before.and_then(|b| b.includes.get(written)) {
            Some(was) if was != lead => out.push(format!(
                "the config's include of {written} now leads to {lead} (it led to {was} at launch): git reads config from there"
            )),
            _ => {}
        }
    }
    for (name, digest) in &now.hooks {
        let path = now.git_dir.join("hooks").join(name);
        match before.and_then(|b| b.hooks.get(name)) {
            Some(d) if d == digest => {}
            Some(_) => out.push(format!("hook {} changed: git runs it", path.display())),
            None => out.push(format!("hook {} is new: git runs it", path.display())),
        }
    }
    out
}

/// `(key, value)` of every entry, as the host's git reads the file
/// (`None` for a key without `=`).
fn config_entries(bytes: &[u8]) -> Result<Vec<(String, Option<String>)>, String> {
    if bytes == b"\0bot-bottle: too large\0" {
        return Err(format!(
            "is larger than {MAX_CONFIG} bytes, too large to check"
        ));
    }
    let mut child = Command::new("git")
        // `--no-includes`: with includes on (the default for `--file`), a
        // relative `include.path` from standard input is a fatal error,
        // and a config that has one read as unparseable.
        .args(["config", "--no-includes", "--file", "-", "--list", "--null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("the host's git could not be run to read it ({e})"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .map_err(|e| format!("the host's git failed reading it ({e})"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err("git cannot parse it (look at it before running git there)".into());
    }
    Ok(out
        .stdout
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let e = String::from_utf8_lossy(e);
            match e.split_once('\n') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (e.to_string(), None),
            }
        })
        .collect())
}

/// Why git may run something because of this entry, if it may. `key` is as
/// `git config --list` prints it: section and name lower case.
pub fn dangerous(key: &str, value: Option<&str>) -> Option<&'static str> {
    let (section, rest) = key.split_once('.')?;
    let (sub, name) = match rest.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, rest),
    };
    let v = value.unwrap_or("").trim();
    let is_bool = matches!(
        v.to_ascii_lowercase().as_str(),
        "" | "true" | "false" | "yes" | "no" | "on" | "off" | "1" | "0"
    );
    const RUNS: &str = "git runs it as a command";
    Some(match (section, sub, name) {
        ("core", None, "fsmonitor") => "git runs it on `git status` (and in prompts that show it)",
        ("core", None, "hookspath") => "git runs the hooks in that directory",
        ("core", None, "sshcommand" | "pager" | "editor" | "askpass" | "gitproxy")
        | ("core", None, "alternaterefscommand") => RUNS,
        ("sequence", None, "editor") => RUNS,
        ("credential", _, "helper") => "git runs it and gives it credentials",
        ("gpg", _, "program") | ("gpg", Some("ssh"), "defaultkeycommand") => RUNS,
        ("diff", None, "external") | ("diff", Some(_), "textconv" | "command") => {
            "git runs it on diffs"
        }
        ("filter", Some(_), "clean" | "smudge" | "process") => {
            "git runs it on checkout, add and status"
        }
        ("merge", Some(_), "driver") => "git runs it on merges",
        ("alias", Some(_) | None, _) if v.starts_with('!') => "a shell alias: git runs it",
        ("include", None, "path") | ("includeif", Some(_), "path") => {
            "git reads more config from there"
        }
        ("uploadpack", None, "packobjectshook") => RUNS,
        ("protocol", _, _) => "changes which transports git may use (ext:: runs commands)",
        ("url", Some(_), "insteadof" | "pushinsteadof") => {
            "rewrites remote URLs (a remote can become a command transport)"
        }
        ("remote", Some(_), "uploadpack" | "receivepack" | "vcs") => RUNS,
        ("remote", Some(_), "url" | "pushurl") if v.contains("::") => {
            "a remote helper URL (`helper::…`): git runs git-remote-helper"
        }
        ("core", None, "worktree") => "git checks files out there (outside the workspace, maybe)",
        // `git init` writes `bare = false`; only a true is a change of
        // which directory git takes for the repository.
        ("core", None, "bare")
            if is_bool
                && !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "false" | "no" | "off" | "0"
                ) =>
        {
            "changes which directory git takes for the repository"
        }
        ("difftool" | "mergetool" | "man" | "browser", Some(_), "path") => RUNS,
        ("imap", None, "tunnel") | ("instaweb", None, "httpd") => RUNS,
        ("lfs", Some(s), "path" | "clean" | "smudge")
            if s.starts_with("customtransfer.") || s.starts_with("extension.") =>
        {
            RUNS
        }
        ("hook", Some(_), "command") => RUNS,
        ("pager", Some(_) | None, _) if !is_bool => RUNS,
        ("submodule", Some(_), "update") if v.starts_with('!') => RUNS,
        ("difftool" | "mergetool" | "man" | "browser" | "guitool", Some(_), "cmd")
        | ("trailer", Some(_), "command" | "cmd") => RUNS,
        ("web", None, "browser") | ("interactive", None, "difffilter") => RUNS,
        ("sendemail", _, n) if n.ends_with("cmd") || n == "smtpserver" => RUNS,
        _ => return None,
    })
}

/// Every entry in the workspace's repositories that lets git run something,
/// whoever wrote it (`bottle check-workspace`).
pub fn audit(root: &Path) -> (Vec<Finding>, bool) {
    let now = Snapshot::take(root);
    (audit_of(&now), now.truncated)
}

/// Every entry of `snap` that lets git run something.
fn audit_of(snap: &Snapshot) -> Vec<Finding> {
    snap.repos
        .iter()
        .flat_map(|(rel, r)| {
            dangerous_changes(None, r)
                .into_iter()
                .map(move |what| Finding {
                    repo: join(&snap.root, rel),
                    what,
                })
        })
        .collect()
}

/// Prints the changes since `before` on stderr, loudly; returns whether
/// there were any.
pub fn warn_changes(before: &Snapshot) -> bool {
    let after = Snapshot::take(&before.root);
    let findings = after.changes_since(before);
    let truncated = before.truncated || after.truncated;
    let mut err = std::io::stderr().lock();
    if !findings.is_empty() {
        let _ = writeln!(
            err,
            "\r\nbottle: WARNING: the agent changed git settings in the workspace {} that make git run commands.\r\n\
             bottle: Do not run git there (nor open a shell whose prompt runs it) until you have \
             removed or checked each of these:\r",
            before.root.display()
        );
        for f in &findings {
            let _ = writeln!(err, "bottle:   {f}\r");
        }
    }
    if truncated {
        let _ = writeln!(
            err,
            "bottle: note: the workspace is too big or deep to look at every directory for nested \
             git repositories (at most {MAX_DIRS} directories, {MAX_DEPTH} deep); deeper ones were \
             not checked\r"
        );
    }
    !findings.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let st = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdout(Stdio::null())
            .status()
            .expect("the tests need a git binary");
        assert!(st.success(), "git {args:?}");
    }

    fn append(p: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn texts(f: &[Finding]) -> String {
        f.iter().map(|f| format!("{f}\n")).collect()
    }

    #[test]
    fn config_an_existing_include_pulls_from_the_workspace_is_compared() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        git(&ws, &["init", "-q"]);
        // The user's setup: shared settings in the work tree, an optional
        // local file that does not exist yet, one outside the workspace.
        std::fs::write(ws.join("shared.gitconfig"), "[user]\n\tname = me\n").unwrap();
        let outside = d.path().join("outside.gitconfig");
        std::fs::write(&outside, "[core]\n\tpager = less\n").unwrap();
        append(
            &ws.join(".git/config"),
            &format!(
                "[include]\n\tpath = ../shared.gitconfig\n\tpath = ../.gitconfig.local\n\tpath = {}\n",
                outside.display()
            ),
        );
        let before = Snapshot::take(&ws);
        assert!(Snapshot::take(&ws).changes_since(&before).is_empty());

        append(
            &ws.join("shared.gitconfig"),
            "[core]\n\tfsmonitor = \"sh -c evil\"\n",
        );
        std::fs::write(
            ws.join(".gitconfig.local"),
            "[core]\n\tpager = \"sh -c evil2\"\n",
        )
        .unwrap();
        let t = texts(&Snapshot::take(&ws).changes_since(&before));
        assert!(
            t.contains("shared.gitconfig has core.fsmonitor = \"sh -c evil\""),
            "{t}"
        );
        assert!(
            t.contains(".gitconfig.local has core.pager = \"sh -c evil2\""),
            "{t}"
        );
        // Outside the workspace: not the agent's to write, not read.
        append(&outside, "[core]\n\teditor = vi\n");
        assert!(!texts(&Snapshot::take(&ws).changes_since(&before)).contains("outside"));
        // check-workspace lists what the included files hold too.
        let (all, _) = audit(&ws);
        assert!(texts(&all).contains("sh -c evil2"), "{}", texts(&all));
    }

    #[test]
    fn submodule_git_dirs_not_checked_out_are_compared() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        // Two submodules' git directories, one under a name with a slash;
        // the first is checked out at sub/, the second is not.
        for m in ["libfoo", "libs/bar"] {
            let dir = ws.join(".git/modules").join(m);
            std::fs::create_dir_all(&dir).unwrap();
            git(&dir, &["init", "-q", "--bare"]);
        }
        std::fs::create_dir(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/.git"), "gitdir: ../.git/modules/libfoo\n").unwrap();
        let before = Snapshot::take(ws);
        assert!(Snapshot::take(ws).changes_since(&before).is_empty());

        let bar = ws.join(".git/modules/libs/bar");
        std::fs::write(bar.join("hooks/post-checkout"), "#!/bin/sh\nid\n").unwrap();
        append(
            &bar.join("config"),
            "[core]\n\tfsmonitor = \"sh -c evil\"\n",
        );
        append(
            &ws.join(".git/modules/libfoo/config"),
            "[core]\n\tpager = \"sh -c evil2\"\n",
        );
        let planted = ws.join(".git/modules/planted");
        std::fs::create_dir_all(&planted).unwrap();
        git(&planted, &["init", "-q", "--bare"]);
        let f = Snapshot::take(ws).changes_since(&before);
        let t = texts(&f);
        assert!(t.contains("modules/libs/bar: hook"), "{t}");
        assert!(t.contains("post-checkout is new"), "{t}");
        assert!(t.contains("core.fsmonitor = \"sh -c evil\""), "{t}");
        assert!(
            t.contains("modules/planted: a new repository (a submodule's git directory"),
            "{t}"
        );
        // The checked-out one is read once, through its work tree.
        assert_eq!(t.matches("sh -c evil2").count(), 1, "{t}");
    }

    #[test]
    fn an_include_redirected_outside_and_a_long_link_chain_are_caught_unread() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        let out = d.path().join("out");
        std::fs::create_dir_all(ws.join("shared")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        git(&ws, &["init", "-q"]);
        std::fs::write(ws.join("shared/x.cfg"), "[user]\n\tname = me\n").unwrap();
        append(
            &ws.join(".git/config"),
            "[include]\n\tpath = ../shared/x.cfg\n\tpath = ../l0\n",
        );
        let before = Snapshot::take(&ws);
        // The agent swaps shared/ for a link to a place it can write
        // outside the workspace (another writable mount).
        std::fs::write(out.join("x.cfg"), "[core]\n\tfsmonitor = evil\n").unwrap();
        std::fs::remove_dir_all(ws.join("shared")).unwrap();
        symlink(&out, ws.join("shared")).unwrap();
        // And a chain of 41 links from the workspace to a host file.
        std::fs::write(
            out.join("secret.cfg"),
            "[credential]\n\thelper = HOST-SECRET\n",
        )
        .unwrap();
        for i in 0..41 {
            symlink(ws.join(format!("l{}", i + 1)), ws.join(format!("l{i}"))).unwrap();
        }
        symlink(out.join("secret.cfg"), ws.join("l41")).unwrap();
        let t = texts(&Snapshot::take(&ws).changes_since(&before));
        assert!(
            t.contains("include of") && t.contains("shared/x.cfg now leads to"),
            "{t}"
        );
        assert!(
            !t.contains("evil") && !t.contains("HOST-SECRET"),
            "read outside: {t}"
        );
        assert!(!texts(&audit(&ws).0).contains("HOST-SECRET"));
    }

    #[test]
    fn a_head_that_is_a_link_and_links_in_modules_are_seen() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        let before = Snapshot::take(ws);
        // A submodule git directory whose HEAD is a (dangling) link, as
        // git accepts it.
        let m = ws.join(".git/modules/foo");
        std::fs::create_dir_all(&m).unwrap();
        git(&m, &["init", "-q", "--bare"]);
        std::fs::remove_file(m.join("HEAD")).unwrap();
        symlink("refs/heads/main", m.join("HEAD")).unwrap();
        // A git directory hidden under .git and linked into modules.
        let hidden = ws.join(".git/hidden");
        std::fs::create_dir_all(&hidden).unwrap();
        git(&hidden, &["init", "-q", "--bare"]);
        symlink("../hidden", ws.join(".git/modules/lib")).unwrap();
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        assert!(t.contains("modules/foo: a new repository"), "{t}");
        assert!(
            t.contains("modules/lib: a new repository (a .git symbolic link to ../hidden"),
            "{t}"
        );

        // `.git/modules` as a link to / is not walked.
        let d2 = tempfile::tempdir().unwrap();
        let ws2 = d2.path();
        git(ws2, &["init", "-q"]);
        let before2 = Snapshot::take(ws2);
        symlink("/", ws2.join(".git/modules")).unwrap();
        let f = Snapshot::take(ws2).changes_since(&before2);
        assert_eq!(f.len(), 1, "{}", texts(&f));
        assert!(texts(&f).contains("symbolic link to /"), "{}", texts(&f));
    }

    #[test]
    fn a_hooks_path_set_in_an_included_file_is_followed() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        std::fs::write(ws.join(".gitconfig"), "[core]\n\thooksPath = .husky\n").unwrap();
        append(
            &ws.join(".git/config"),
            "[include]\n\tpath = ../.gitconfig\n",
        );
        std::fs::create_dir(ws.join(".husky")).unwrap();
        std::fs::write(ws.join(".husky/pre-commit"), "#!/bin/sh\ntrue\n").unwrap();
        let before = Snapshot::take(ws);
        std::fs::write(ws.join(".husky/pre-commit"), "#!/bin/sh\nid\n").unwrap();
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        assert!(t.contains(".husky/pre-commit changed"), "{t}");
    }

    #[test]
    fn checking_a_submodule_out_or_deiniting_it_is_not_reported() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let ws = d.path().join("ws");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        let id = ["-c", "user.name=t", "-c", "user.email=t@t"];
        git(&src, &["init", "-q"]);
        std::fs::write(src.join("f"), "x").unwrap();
        git(&src, &["add", "f"]);
        git(&src, &[&id[..], &["commit", "-qm", "x"]].concat());
        git(&ws, &["init", "-q"]);
        let add = ["-c", "protocol.file.allow=always", "submodule", "add", "-q"];
        git(&ws, &[&add[..], &[src.to_str().unwrap(), "lib"]].concat());
        git(&ws, &[&id[..], &["commit", "-qm", "sub"]].concat());
        let checked_out = Snapshot::take(&ws);
        git(&ws, &["submodule", "deinit", "-q", "-f", "lib"]);
        let deinited = Snapshot::take(&ws);
        let f = deinited.changes_since(&checked_out);
        assert!(f.is_empty(), "deinit: {}", texts(&f));
        let update = [
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "update",
            "-q",
            "--init",
        ];
        git(&ws, &update);
        let f = Snapshot::take(&ws).changes_since(&deinited);
        assert!(f.is_empty(), "update --init: {}", texts(&f));
    }

    #[test]
    fn workspace_files_the_global_config_includes_are_compared() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        git(&ws, &["init", "-q"]);
        // The user's global config: its own helper (not the workspace's
        // business) and a per-project file inside the workspace.
        let global = d.path().join("gitconfig");
        std::fs::write(
            &global,
            format!(
                "[credential]\n\thelper = store\n[includeIf \"gitdir:{}/\"]\n\tpath = {}/.proj.gitconfig\n",
                ws.display(),
                ws.display()
            ),
        )
        .unwrap();
        let take = || Snapshot::take_with(&ws, None, Some(global.clone()));
        let before = take();
        assert!(take().changes_since(&before).is_empty());
        assert!(
            audit_of(&take()).is_empty(),
            "the user's own helper is not listed"
        );
        std::fs::write(ws.join(".proj.gitconfig"), "[core]\n\tfsmonitor = evil\n").unwrap();
        let t = texts(&take().changes_since(&before));
        assert!(
            t.contains(GLOBAL_INCLUDES) && t.contains(".proj.gitconfig has core.fsmonitor"),
            "{t}"
        );
        assert!(texts(&audit_of(&take())).contains("fsmonitor"));
    }

    #[test]
    fn hooks_behind_a_global_relative_hooks_path_are_compared() {
        // `core.hooksPath = .githooks` in ~/.gitconfig: every repository's
        // hooks are then files in its work tree.
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        std::fs::create_dir(ws.join(".githooks")).unwrap();
        std::fs::write(ws.join(".githooks/pre-commit"), "#!/bin/sh\ntrue\n").unwrap();
        let global = Some(".githooks".to_string());
        let before = Snapshot::take_with(ws, global.clone(), None);
        assert!(Snapshot::take_with(ws, global.clone(), None)
            .changes_since(&before)
            .is_empty());
        std::fs::write(ws.join(".githooks/pre-commit"), "#!/bin/sh\nid\n").unwrap();
        std::fs::write(ws.join(".githooks/post-checkout"), "#!/bin/sh\nid\n").unwrap();
        let t = texts(&Snapshot::take_with(ws, global, None).changes_since(&before));
        assert!(t.contains(".githooks/pre-commit changed"), "{t}");
        assert!(t.contains(".githooks/post-checkout is new"), "{t}");
        // Without the global setting git would not run them, and bottle
        // does not look there.
        let t = texts(&Snapshot::take_with(ws, None, None).changes_since(&before));
        assert!(!t.contains(".githooks"), "{t}");
    }

    #[test]
    fn new_dangerous_config_and_hooks_are_named_and_benign_changes_are_not() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        // The user's own settings before launch are not the agent's.
        git(ws, &["config", "core.pager", "less -R"]);
        git(ws, &["config", "alias.st", "status"]);
        let before = Snapshot::take(ws);
        assert!(Snapshot::take(ws).changes_since(&before).is_empty());

        // What an agent does while working: harmless.
        git(ws, &["config", "user.name", "agent"]);
        git(ws, &["config", "branch.main.remote", "origin"]);
        git(ws, &["config", "alias.co", "checkout"]);
        let f = Snapshot::take(ws).changes_since(&before);
        assert!(f.is_empty(), "{}", texts(&f));

        // What an attacker does.
        let cfg = ws.join(".git/config");
        append(&cfg, "[core]\n\tfsmonitor = \"sh -c 'touch /tmp/pwned'\"\n");
        append(
            &cfg,
            "[Alias]\n\tx = \"!sh -c id\"\n[filter \"Lfs\"]\n\tsmudge = evil %f\n",
        );
        append(&cfg, "[includeIf \"gitdir:/\"]\n\tpath = /tmp/more\n[url \"ext::sh -c x\"]\n\tinsteadOf = https://\n");
        git(ws, &["config", "--add", "core.pager", "sh -c evil"]);
        std::fs::write(ws.join(".git/hooks/pre-commit"), "#!/bin/sh\nid\n").unwrap();
        std::fs::write(ws.join(".git/hooks/post-update.sample"), "changed sample\n").unwrap();
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        for want in [
            "core.fsmonitor = \"sh -c 'touch /tmp/pwned'\"",
            "alias.x = \"!sh -c id\"",
            "filter.Lfs.smudge",
            "includeif.gitdir:/.path",
            "url.ext::sh -c x.insteadof",
            "core.pager = \"sh -c evil\"",
            "hook",
            "pre-commit is new",
        ] {
            assert!(t.contains(want), "{want} missing from:\n{t}");
        }
        assert!(!t.contains("less -R") && !t.contains("sample"), "{t}");
        // A changed hook too.
        let mid = Snapshot::take(ws);
        std::fs::write(ws.join(".git/hooks/pre-commit"), "#!/bin/sh\nrm -rf ~\n").unwrap();
        let t = texts(&Snapshot::take(ws).changes_since(&mid));
        assert!(t.contains("pre-commit changed"), "{t}");
    }

    #[test]
    fn a_replaced_git_dir_a_gitdir_file_and_nested_repositories_are_found() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        let before = Snapshot::take(ws);

        // The agent moves .git away and makes its own.
        std::fs::rename(ws.join(".git"), ws.join("old-git")).unwrap();
        git(ws, &["init", "-q"]);
        git(ws, &["config", "core.sshCommand", "sh -c evil"]);
        // A nested repository, deep down.
        let deep = ws.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        git(&deep, &["init", "-q"]);
        git(&deep, &["config", "diff.x.textconv", "sh -c evil"]);
        // A .git file pointing at a git dir of the agent's.
        let other = ws.join("other");
        std::fs::create_dir_all(&other).unwrap();
        git(ws, &["init", "-q", "--bare", "hidden.git"]);
        git(
            &ws.join("hidden.git"),
            &["config", "credential.helper", "!sh -c evil"],
        );
        std::fs::write(other.join(".git"), "gitdir: ../hidden.git\n").unwrap();

        let after = Snapshot::take(ws);
        let t = texts(&after.changes_since(&before));
        for want in [
            "its git directory was replaced",
            "core.sshcommand = \"sh -c evil\"",
            "a/b/c: a new repository",
            "diff.x.textconv",
            "a .git file pointing to",
            "credential.helper",
            "hidden.git: a new repository (a bare repository",
        ] {
            assert!(t.contains(want), "{want} missing from:\n{t}");
        }
        // `bottle check-workspace` lists them without a snapshot.
        let (all, truncated) = audit(ws);
        assert!(!truncated);
        let t = texts(&all);
        assert!(
            t.contains("core.sshcommand") && t.contains("diff.x.textconv"),
            "{t}"
        );
    }

    /// The review's attack: `.git` invalidated (its `HEAD` renamed), and a
    /// `HEAD`, `objects`, `refs` (files, made executable) and `config` at
    /// the workspace root: git then takes the root for a bare repository,
    /// and `git diff` ran the pager it names.
    #[test]
    fn a_workspace_root_turned_into_a_bare_repository_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        let before = Snapshot::take(ws);
        std::fs::rename(ws.join(".git/HEAD"), ws.join(".git/HEAD.bak")).unwrap();
        std::fs::write(ws.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        for n in ["objects", "refs"] {
            std::fs::write(ws.join(n), "").unwrap();
            std::fs::set_permissions(ws.join(n), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(ws.join("config"), "[core]\n\tpager = sh -c evil\n").unwrap();
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        assert!(
            t.contains("as a bare repository") && t.contains("core.pager"),
            "{t}"
        );
    }

    /// Hooks kept in the work tree behind the user's own `core.hooksPath`
    /// (husky): the setting is not new, but the agent can rewrite the files.
    #[test]
    fn hooks_behind_an_existing_hooks_path_are_compared() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        std::fs::create_dir_all(ws.join(".husky")).unwrap();
        std::fs::write(ws.join(".husky/pre-commit"), "#!/bin/sh\nnpm test\n").unwrap();
        git(ws, &["config", "core.hooksPath", ".husky"]);
        let before = Snapshot::take(ws);
        assert!(Snapshot::take(ws).changes_since(&before).is_empty());
        std::fs::write(ws.join(".husky/pre-commit"), "#!/bin/sh\nid > /tmp/x\n").unwrap();
        std::fs::write(ws.join(".husky/pre-push"), "#!/bin/sh\nid\n").unwrap();
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        assert!(t.contains(".husky/pre-commit changed"), "{t}");
        assert!(t.contains(".husky/pre-push is new"), "{t}");
    }

    #[test]
    fn a_git_config_git_cannot_parse_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        let before = Snapshot::take(ws);
        append(&ws.join(".git/config"), "[core\n\tfsmonitor = x\n");
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        assert!(t.contains("git cannot parse it"), "{t}");
    }

    #[test]
    fn a_fifo_in_the_repository_does_not_hang_the_check() {
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        let before = Snapshot::take(ws);
        for p in [".git/hooks/pre-push", ".git/commondir"] {
            let st = Command::new("mkfifo").arg(ws.join(p)).status().unwrap();
            assert!(st.success());
        }
        let t = texts(&Snapshot::take(ws).changes_since(&before));
        assert!(t.contains("pre-push is new"), "{t}");
    }

    #[test]
    fn the_walk_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().to_path_buf();
        for i in 0..MAX_DEPTH + 2 {
            p.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&p).unwrap();
        assert!(Snapshot::take(d.path()).truncated);
    }

    #[test]
    fn which_keys_are_dangerous() {
        for (k, v) in [
            ("core.fsmonitor", Some("true")),
            ("core.hookspath", Some("/x")),
            ("core.askpass", Some("x")),
            ("core.gitproxy", Some("x")),
            ("core.editor", Some("x")),
            ("sequence.editor", Some("x")),
            ("credential.https://x.helper", Some("x")),
            ("gpg.program", Some("x")),
            ("gpg.ssh.program", Some("x")),
            ("diff.external", Some("x")),
            ("diff.d.command", Some("x")),
            ("filter.f.process", Some("x")),
            ("filter.f.clean", Some("x")),
            ("merge.m.driver", Some("x")),
            ("alias.x", Some(" !x")),
            ("include.path", Some("x")),
            ("uploadpack.packobjectshook", Some("x")),
            // Found by the last review: a remote helper, a work tree
            // outside the workspace, tool paths, tunnels, git-lfs programs.
            ("remote.origin.vcs", Some("../evil.sh")),
            ("remote.origin.url", Some("ext::sh -c x")),
            ("core.worktree", Some("../../..")),
            ("core.bare", Some("true")),
            ("difftool.t.path", Some("x")),
            ("mergetool.t.path", Some("x")),
            ("imap.tunnel", Some("x")),
            ("lfs.customtransfer.t.path", Some("x")),
            ("lfs.extension.e.clean", Some("x")),
            ("hook.h.command", Some("x")),
            ("protocol.ext.allow", Some("always")),
            ("protocol.allow", Some("always")),
            ("url.x.pushinsteadof", Some("y")),
            ("remote.origin.uploadpack", Some("x")),
            ("pager.log", Some("sh -c x")),
            ("submodule.s.update", Some("!x")),
        ] {
            assert!(dangerous(k, v).is_some(), "{k}");
        }
        for (k, v) in [
            ("alias.co", Some("checkout")),
            ("pager.log", Some("false")),
            ("submodule.s.update", Some("rebase")),
            ("user.name", Some("x")),
            ("remote.origin.url", Some("https://x")),
            ("core.bare", Some("false")),
            ("branch.main.merge", Some("refs/heads/main")),
        ] {
            assert!(dangerous(k, v).is_none(), "{k}");
        }
    }
}
