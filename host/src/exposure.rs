//! What a mount may hold (checked by `plan`, so on every backend).
//!
//! Under a writable mount the agent can change files the next `bottle` run
//! reads and follows: the manifest and its `upstream_ca` (policy: routes,
//! with any host env var as a token), `bottle` itself, the plugins it loads
//! and the directories it loads them from (code the host runs). Under any
//! mount, read-only included, the agent can read a file a provider takes a
//! real credential from.
//!
//! A path is exposed when any directory entry the host goes through to reach
//! it lies in a mount, not only its final target: a symlink the agent can
//! rewrite (the manifest reached through `project/conf -> ../configs`, or a
//! `bottle.toml` that is itself a link) redirects the next read wherever the
//! agent points it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// What a protected file is, which says where it may not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// What the next run follows (manifest, `upstream_ca`): not under a
    /// writable mount.
    Policy,
    /// Code the host runs (`bottle`, its plugins and their directories): not
    /// under a writable mount.
    Code,
    /// A file a real credential comes from: not under any mount.
    Credential,
}

/// A file (or directory) no mount may expose.
#[derive(Debug)]
pub struct Protected {
    /// The path as the host uses it.
    pub path: PathBuf,
    /// What it is, for the message.
    pub what: String,
    /// What it is.
    pub kind: Kind,
}

/// A mount as the plan has it.
#[derive(Debug)]
pub struct MountView {
    /// Host path.
    pub host: PathBuf,
    /// Where the sandbox sees it.
    pub sandbox: PathBuf,
    /// Writable.
    pub writable: bool,
    /// For the message (`the writable workspace /p`, `mount /p`).
    pub describe: String,
}

/// The first mount whose host path the agent could redirect, with the
/// writable mount it could do it through.
///
/// A mount's host path is looked up again at every launch. When an entry on
/// the way to it lies in a writable mount, the agent can replace that entry
/// during one run (`mv sub sub.old; ln -s ~/.ssh sub`) and the next run
/// mounts what it points at: any host directory, writable if the mount is.
/// The one entry it cannot replace is a mount point in its own sandbox: the
/// last entry, when the mount sits in the writable one exactly where the
/// writable one's own view would show it (a read-only `.git` over the
/// workspace's). Anywhere else (a workspace `a/b` beside a writable mount
/// of `a` at another path) the agent sees it as a plain directory there.
pub fn first_redirectable(mounts: &[MountView]) -> Option<(&MountView, &MountView)> {
    for m in mounts {
        let entries = entries_on_the_way(&m.host);
        let last = entries.len().saturating_sub(1);
        for w in mounts.iter().filter(|w| w.writable && !std::ptr::eq(*w, m)) {
            let root = canonical(&w.host);
            let overlaid = |e: &Path| {
                e.strip_prefix(&root)
                    .is_ok_and(|rel| w.sandbox.join(rel) == m.sandbox)
            };
            let redirectable = entries
                .iter()
                .enumerate()
                .any(|(i, e)| e.starts_with(&root) && e != &root && !(i == last && overlaid(e)));
            if redirectable {
                return Some((m, w));
            }
        }
    }
    None
}

/// Whether mount `m` can expose `p` at all: any mount can show a credential
/// file to the agent; only a writable one can change policy or code.
fn counts_for(m: &MountView, p: &Protected) -> bool {
    p.kind == Kind::Credential || m.writable
}

/// How a mount exposes a protected file.
#[derive(Debug, PartialEq, Eq)]
pub enum Via {
    /// The file, or an entry on the way to it, lies in the mount.
    Path,
    /// The file has this many hard links and the mount is on its file
    /// system: another name for it may lie in the mount, and finding it
    /// would mean walking the whole mount.
    HardLinks(u64),
}

/// The first protected path a mount exposes, with that mount and how.
pub fn first_exposure<'a>(
    mounts: &'a [MountView],
    protected: &'a [Protected],
) -> Option<(&'a MountView, &'a Protected, Via)> {
    first_by_path(mounts, protected)
        .map(|(m, p)| (m, p, Via::Path))
        .or_else(|| first_by_hard_link(mounts, protected))
}

/// A protected policy or credential file with more than one hard link,
/// and a mount of the same file system that counts for its kind. The other
/// names can be anywhere on that file system, inside the mount included,
/// and a name is as good as any other for writing or reading the file.
///
/// Not for code: cargo hard-links every program and library it builds
/// (`target/debug/bottle` and `target/debug/deps/bottle-HASH`), so a
/// bottle run from a build tree would always be refused. Code is guarded
/// by path alone.
fn first_by_hard_link<'a>(
    mounts: &'a [MountView],
    protected: &'a [Protected],
) -> Option<(&'a MountView, &'a Protected, Via)> {
    use std::os::unix::fs::MetadataExt;
    for p in protected.iter().filter(|p| p.kind != Kind::Code) {
        let Ok(meta) = std::fs::metadata(&p.path) else {
            continue;
        };
        if !meta.is_file() || meta.nlink() < 2 {
            continue;
        }
        for m in mounts {
            if !counts_for(m, p) {
                continue;
            }
            let same_fs = std::fs::metadata(&m.host).is_ok_and(|r| r.dev() == meta.dev());
            if same_fs {
                return Some((m, p, Via::HardLinks(meta.nlink())));
            }
        }
    }
    None
}

/// The first protected path a mount holds, or holds an entry on the way
/// to, with that mount.
fn first_by_path<'a>(
    mounts: &'a [MountView],
    protected: &'a [Protected],
) -> Option<(&'a MountView, &'a Protected)> {
    // Per protected path, what decides it: for a write, every entry on the
    // way (one inside a mount can be rewritten there; the mount's root
    // itself cannot, from inside, unless it is the path); for a read, the
    // target.
    let decisive: Vec<Vec<PathBuf>> = protected
        .iter()
        .map(|p| match p.kind {
            Kind::Policy | Kind::Code => entries_on_the_way(&p.path),
            // The target, links followed even when it does not exist yet
            // (`~/.codex -> dotfiles/codex` before `codex login` writes
            // `auth.json` there): `canonical` alone stops at a missing file.
            Kind::Credential => entries_on_the_way(&p.path)
                .last()
                .cloned()
                .into_iter()
                .collect(),
        })
        .collect();
    for m in mounts {
        let root = canonical(&m.host);
        for (p, entries) in protected.iter().zip(&decisive) {
            if !counts_for(m, p) {
                continue;
            }
            let last = entries.len().saturating_sub(1);
            let exposed = entries
                .iter()
                .enumerate()
                .any(|(i, e)| e.starts_with(&root) && (e != &root || i == last))
                // A protected directory (Claude Code's backups/) is exposed
                // by a mount of anything in it too.
                || (p.kind == Kind::Credential && entries.last().is_some_and(|t| root.starts_with(t)));
            if exposed {
                return Some((m, p));
            }
        }
    }
    None
}

/// The directory entries a lookup of `p` goes through, as physical paths:
/// each component in turn, and for each symlink met the link's own entry
/// and then the entries of its target (at most 40 links, as the kernel).
pub fn entries_on_the_way(p: &Path) -> Vec<PathBuf> {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut rest: VecDeque<OsString> = names(&p);
    let mut cur = PathBuf::from("/");
    let mut out = Vec::new();
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&name);
        out.push(next.clone());
        match std::fs::read_link(&next) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for n in names(&target).into_iter().rev() {
                    rest.push_front(n);
                }
            }
            _ => cur = next,
        }
    }
    out
}

/// The normal and `..` components of `p`, in order.
fn names(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// `p` with symlinks resolved, or as it is when it does not exist (yet).
pub fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn writes(path: &Path) -> Protected {
        Protected {
            path: path.to_path_buf(),
            what: "the manifest".into(),
            kind: Kind::Policy,
        }
    }

    fn mount(host: &Path, writable: bool) -> MountView {
        MountView {
            host: host.to_path_buf(),
            sandbox: Path::new("/m").join(host.file_name().unwrap()),
            writable,
            describe: host.display().to_string(),
        }
    }

    fn mount_at(host: &Path, sandbox: &str, writable: bool) -> MountView {
        MountView {
            sandbox: sandbox.into(),
            ..mount(host, writable)
        }
    }

    #[test]
    fn a_mount_reached_through_a_writable_mount_is_redirectable() {
        let d = tempfile::tempdir().unwrap();
        let d = canonical(d.path());
        let ws = d.join("ws");
        std::fs::create_dir_all(ws.join("sub/.claude")).unwrap();
        std::fs::create_dir_all(d.join("other")).unwrap();
        let workspace = mount_at(&ws, "/workspace", true);
        // A directory below the workspace's subdirectory: the agent can
        // rename `sub` and put a link in its place.
        let nested = mount_at(&ws.join("sub/.claude"), "/data", false);
        let both = [workspace, nested];
        let (m, w) = first_redirectable(&both).unwrap();
        assert_eq!(
            (m.host.as_path(), w.host.as_path()),
            (both[1].host.as_path(), ws.as_path())
        );
        // Directly in the workspace but seen at another path: the agent
        // sees `ws/sub` as a plain directory, and can replace it.
        let beside = [
            mount_at(&ws, "/workspace", true),
            mount_at(&ws.join("sub"), "/data", false),
        ];
        assert!(first_redirectable(&beside).is_some());
        // The same directory over the workspace's own view of it: a mount
        // point the agent cannot replace.
        let overlay = [
            mount_at(&ws, "/workspace", true),
            mount_at(&ws.join("sub"), "/workspace/sub", false),
        ];
        assert!(first_redirectable(&overlay).is_none());
        // Unless it is a link the agent already planted.
        std::os::unix::fs::symlink(d.join("other"), ws.join("link")).unwrap();
        let planted = [
            mount_at(&ws, "/workspace", true),
            mount_at(&ws.join("link"), "/workspace/link", false),
        ];
        assert!(first_redirectable(&planted).is_some());
        // Beside each other, or below a read-only mount: fine.
        let apart = [
            mount_at(&ws, "/workspace", true),
            mount_at(&d.join("other"), "/o", true),
        ];
        assert!(first_redirectable(&apart).is_none());
        let ro = [
            mount_at(&ws, "/workspace", false),
            mount_at(&ws.join("sub/.claude"), "/d", false),
        ];
        assert!(first_redirectable(&ro).is_none());
    }

    #[test]
    fn a_link_on_the_way_to_a_protected_file_is_an_exposure() {
        let d = tempfile::tempdir().unwrap();
        let d = canonical(d.path());
        let (ws, cfg) = (d.join("ws"), d.join("configs"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&cfg).unwrap();
        std::fs::write(cfg.join("bottle.toml"), "").unwrap();
        let mounts = [mount(&ws, true)];
        // Outside the workspace, reached directly: fine.
        assert!(first_exposure(&mounts, &[writes(&cfg.join("bottle.toml"))]).is_none());
        // `ws/bottle.toml -> ../configs/bottle.toml`: the link is in ws.
        symlink("../configs/bottle.toml", ws.join("bottle.toml")).unwrap();
        assert!(first_exposure(&mounts, &[writes(&ws.join("bottle.toml"))]).is_some());
        // Through a directory link in ws.
        symlink("../configs", ws.join("conf")).unwrap();
        assert!(first_exposure(&mounts, &[writes(&ws.join("conf/bottle.toml"))]).is_some());
        // A link outside that points into ws.
        symlink(ws.join("conf"), d.join("via")).unwrap();
        assert!(first_exposure(&mounts, &[writes(&d.join("via/bottle.toml"))]).is_some());
        // Read-only mounts do not count for writes.
        assert!(first_exposure(&[mount(&ws, false)], &[writes(&ws.join("bottle.toml"))]).is_none());
        // The workspace itself on the way to a file beside it is not.
        assert!(first_exposure(&mounts, &[writes(&ws.join("../configs/bottle.toml"))]).is_none());
        // A mount of the file itself.
        let file = cfg.join("bottle.toml");
        assert!(first_exposure(&[mount(&file, true)], &[writes(&file)]).is_some());
    }

    #[test]
    fn a_protected_file_with_hard_links_on_a_mounted_file_system_is_an_exposure() {
        let d = tempfile::tempdir().unwrap();
        let d = canonical(d.path());
        let (ws, cfg) = (d.join("ws"), d.join("configs"));
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&cfg).unwrap();
        let manifest = cfg.join("bottle.toml");
        std::fs::write(&manifest, "").unwrap();
        let mounts = [mount(&ws, true)];
        assert!(first_exposure(&mounts, &[writes(&manifest)]).is_none());
        // A second name for the manifest, inside the workspace.
        std::fs::hard_link(&manifest, ws.join("innocent.txt")).unwrap();
        let (_, _, via) = first_exposure(&mounts, &[writes(&manifest)]).unwrap();
        assert_eq!(via, Via::HardLinks(2));
        // Read-only mounts do not count for writes.
        assert!(first_exposure(&[mount(&ws, false)], &[writes(&manifest)]).is_none());
        // But they do for a credential source.
        let cred = Protected {
            path: manifest.clone(),
            what: "a credential".into(),
            kind: Kind::Credential,
        };
        assert!(first_exposure(&[mount(&ws, false)], &[cred]).is_some());
    }

    /// A credential file that does not exist yet, under a linked
    /// directory: where it will be is what counts.
    #[test]
    fn a_missing_credential_under_a_link_is_where_the_link_points() {
        let d = tempfile::tempdir().unwrap();
        let d = canonical(d.path());
        std::fs::create_dir_all(d.join("dotfiles/codex")).unwrap();
        std::fs::create_dir_all(d.join("home")).unwrap();
        symlink(d.join("dotfiles/codex"), d.join("home/.codex")).unwrap();
        let cred = Protected {
            path: d.join("home/.codex/auth.json"),
            what: "a credential".into(),
            kind: Kind::Credential,
        };
        assert!(first_exposure(&[mount(&d.join("dotfiles"), false)], &[cred]).is_some());
    }

    #[test]
    fn a_protected_directory_is_exposed_by_a_mount_of_it_or_above_only() {
        // Claude Code's backups/ of .claude.json: a directory of copies.
        let d = tempfile::tempdir().unwrap();
        let d = canonical(d.path());
        std::fs::create_dir_all(d.join(".claude/backups")).unwrap();
        std::fs::create_dir_all(d.join(".claude/projects")).unwrap();
        let backups = Protected {
            path: d.join(".claude/backups"),
            what: "a credential".into(),
            kind: Kind::Credential,
        };
        let exposed =
            |m: &Path| first_exposure(&[mount(m, false)], std::slice::from_ref(&backups)).is_some();
        assert!(exposed(&d.join(".claude/backups")));
        assert!(exposed(&d.join(".claude")));
        assert!(exposed(&d));
        assert!(!exposed(&d.join(".claude/projects")));
        // One of the copies, or a directory of them, mounted alone.
        let copy = d.join(".claude/backups/.claude.json.backup.1764000000000");
        std::fs::write(&copy, "{}").unwrap();
        assert!(exposed(&copy));
    }

    #[test]
    fn entries_follow_links_as_the_kernel_does() {
        let d = tempfile::tempdir().unwrap();
        let d = canonical(d.path());
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        symlink("a/b", d.join("l")).unwrap();
        let e = entries_on_the_way(&d.join("l/../x"));
        assert!(
            e.contains(&d.join("l")) && e.contains(&d.join("a/b")),
            "{e:?}"
        );
        assert_eq!(e.last(), Some(&d.join("a/x")), "{e:?}");
        // A loop ends.
        symlink("loop", d.join("loop")).unwrap();
        assert!(entries_on_the_way(&d.join("loop")).len() < 41 + d.components().count() + 2);
    }
}
