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
    dir.join("HEAD").is_file() && ((there("objects") && there("refs")) || there("commondir"))
}

/// The key under which a directory that has a `.git` *and* looks like a
/// repository itself is kept: invalidate the `.git` (rename its `HEAD`) and
/// git takes the directory for a bare repository, config and all.
const AS_BARE: &str = "(the directory itself, as a bare repository)";

/// How many submodule git directories are looked at, at most.
const MAX_MODULES: usize = 1000;

/// The git directories of submodules in each repository's `modules/`
/// (nested ones too, and names with slashes) that no work tree found by the
/// walk points to: a submodule not checked out yet. Git uses its config and
/// hooks once `git submodule update` checks it out, so the agent could
/// plant them there. Kept under `<repo>/.git/modules/<name>`. True when
/// there were more than [`MAX_MODULES`].
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
    let mut found = 0;
    while let Some((dir, rel, depth)) = queue.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) || depth >= MAX_DEPTH {
                continue;
            }
            let (path, rel) = (e.path(), rel.join(e.file_name()));
            if !path.join("HEAD").is_file() {
                // A part of a name with slashes (`libs/foo`).
                queue.push((path, rel, depth + 1));
                continue;
            }
            found += 1;
            if found > MAX_MODULES {
                return true;
            }
            queue.push((path.join("modules"), rel.join("modules"), depth + 1));
            if known.contains(&canonical(&path)) {
                continue; // checked out: read through its work tree
            }
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                let r = read_repo(DotGit::Module(meta.dev(), meta.ino()), path, ctx);
                repos.insert(rel, r);
            }
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
}

/// `core.hooksPath` as the user's global and system config set it (read
/// once, outside any repository). A relative one is taken from each
/// repository's work tree, inside the workspace, where the agent writes.
fn global_hooks_path() -> Option<String> {
    static GLOBAL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let out = Command::new("git")
                .args(["config", "--get", "core.hooksPath"])
                .current_dir("/")
                .env_remove("GIT_DIR")
                .env_remove("GIT_WORK_TREE")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
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
/// A file included from outside the workspace is not read: the agent
/// cannot change it, and a path the agent wrote must not make the host
/// read a file of its choosing (a new include is reported by itself).
fn add_included(files: &mut BTreeMap<String, Vec<u8>>, git_dir: &Path, root: &Path) {
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
            // Where the name leads, links followed, even if nothing is
            // there yet (the agent may create an optional include).
            let Some(target) = crate::exposure::entries_on_the_way(&p).last().cloned() else {
                continue;
            };
            let key = target.to_string_lossy().into_owned();
            if !target.starts_with(root) || files.contains_key(&key) {
                continue;
            }
            if let Some(b) = read_small(&target) {
                let next = target.parent().unwrap_or(root).to_path_buf();
                files.insert(key, b.clone());
                queue.push((next, b, depth + 1));
            }
        }
    }
}

fn read_repo(dot_git: DotGit, git_dir: PathBuf, ctx: &Context) -> Repo {
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
    add_included(&mut files, &git_dir, &ctx.root);
    let mut hooks = BTreeMap::new();
    hash_hooks(&git_dir.join("hooks"), None, &mut hooks);
    // Hooks in a `core.hooksPath` the repository or the user's global
    // config sets (husky, lefthook keep them in the work tree, where the
    // agent can rewrite them even though the setting itself is the
    // user's): hashed under their full path.
    if let Some(dir) = hooks_path(&files, &git_dir, ctx.global_hooks_path.as_deref()) {
        hash_hooks(&dir, Some(&dir), &mut hooks);
    }
    Repo {
        dot_git,
        git_dir,
        files,
        hooks,
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

/// The directory the repository's own `core.hooksPath` names, else the
/// one of the user's global or system config (`global`), resolved as git
/// does: `~/` from the home directory, a relative path from the work tree
/// (the directory holding `.git`; not known for other layouts).
fn hooks_path(
    files: &BTreeMap<String, Vec<u8>>,
    git_dir: &Path,
    global: Option<&str>,
) -> Option<PathBuf> {
    let own = files
        .get("config")
        .and_then(|c| config_entries(c).ok())
        .and_then(|entries| {
            entries
                .into_iter()
                .rev()
                .find(|(k, _)| k == "core.hookspath")?
                .1
        });
    let value = own.or_else(|| global.map(str::to_owned))?;
    let p = PathBuf::from(value.trim());
    if let Ok(rest) = p.strip_prefix("~") {
        return dirs::home_dir().map(|h| h.join(rest));
    }
    if p.is_absolute() {
        return Some(p);
    }
    (git_dir.file_name()? == ".git").then(|| git_dir.parent().map(|wt| wt.join(&p)))?
}

/// The repository whose work tree is `dir`, if any.
fn repo_at(dir: &Path, ctx: &Context) -> Option<Repo> {
    let dg = dir.join(".git");
    if let Ok(meta) = std::fs::symlink_metadata(&dg) {
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&dg).unwrap_or_default();
            return Some(read_repo(DotGit::Link(target), dg, ctx));
        }
        if ft.is_dir() {
            return Some(read_repo(DotGit::Dir(meta.dev(), meta.ino()), dg, ctx));
        }
        let contents = read_small(&dg).unwrap_or_default();
        let git_dir = gitdir_of(&dg, &contents).unwrap_or_else(|| dg.clone());
        return Some(read_repo(DotGit::File(contents), git_dir, ctx));
    }
    if looks_bare(dir) {
        let meta = std::fs::symlink_metadata(dir).ok()?;
        return Some(read_repo(
            DotGit::Bare(meta.dev(), meta.ino()),
            dir.to_path_buf(),
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
        Self::take_with(root, global_hooks_path())
    }

    /// [`Self::take`] with the user's global `core.hooksPath` given.
    fn take_with(root: &Path, global_hooks_path: Option<String>) -> Self {
        let ctx = Context {
            root: crate::exposure::canonical(root),
            global_hooks_path,
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
                        let r = read_repo(DotGit::Bare(meta.dev(), meta.ino()), dir.clone(), &ctx);
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
        for rel in before.repos.keys() {
            if !self.repos.contains_key(rel) {
                out.push(Finding {
                    repo: join(&self.root, rel),
                    what: "its .git was moved away or deleted".into(),
                });
            }
        }
        out
    }
}

fn describe(r: &Repo) -> String {
    match &r.dot_git {
        DotGit::Dir(..) => ".git is a directory".into(),
        DotGit::File(_) => format!("a .git file pointing to {}", r.git_dir.display()),
        DotGit::Link(t) => format!("a .git symbolic link to {}", t.display()),
        DotGit::Bare(..) => "a bare repository git finds from this directory".into(),
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
            if let Some(why) = dangerous(&key, value.as_deref()) {
                let shown = match &value {
                    Some(v) => format!("{key} = {v:?}"),
                    None => key.clone(),
                };
                out.push(format!("{} has {shown}: {why}", path.display()));
            }
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
    let findings = now
        .repos
        .iter()
        .flat_map(|(rel, r)| {
            dangerous_changes(None, r)
                .into_iter()
                .map(move |what| Finding {
                    repo: join(root, rel),
                    what,
                })
        })
        .collect();
    (findings, now.truncated)
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
    fn hooks_behind_a_global_relative_hooks_path_are_compared() {
        // `core.hooksPath = .githooks` in ~/.gitconfig: every repository's
        // hooks are then files in its work tree.
        let d = tempfile::tempdir().unwrap();
        let ws = d.path();
        git(ws, &["init", "-q"]);
        std::fs::create_dir(ws.join(".githooks")).unwrap();
        std::fs::write(ws.join(".githooks/pre-commit"), "#!/bin/sh\ntrue\n").unwrap();
        let global = Some(".githooks".to_string());
        let before = Snapshot::take_with(ws, global.clone());
        assert!(Snapshot::take_with(ws, global.clone())
            .changes_since(&before)
            .is_empty());
        std::fs::write(ws.join(".githooks/pre-commit"), "#!/bin/sh\nid\n").unwrap();
        std::fs::write(ws.join(".githooks/post-checkout"), "#!/bin/sh\nid\n").unwrap();
        let t = texts(&Snapshot::take_with(ws, global).changes_since(&before));
        assert!(t.contains(".githooks/pre-commit changed"), "{t}");
        assert!(t.contains(".githooks/post-checkout is new"), "{t}");
        // Without the global setting git would not run them, and bottle
        // does not look there.
        let t = texts(&Snapshot::take_with(ws, None).changes_since(&before));
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
