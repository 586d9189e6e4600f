//! What launches learn about an agent image's file system, kept between
//! launches: its `/etc/passwd` and `/etc/group`, and whether each directory
//! the agent's files go into exists.
//!
//! Why: every answer is an archive call, for which dockerd starts a helper
//! process (~50 ms here, 100-300 ms while containers start), and the files
//! can be placed only once they are known. The next launch of the same
//! image in the same container shape asks dockerd nothing of them.
//!
//! Why the answers stay true: an image ID is the digest of the image's
//! content. What a created container holds besides the image is Docker's
//! init layer (the same for every container), the working directory and
//! the mount points (made with their parents), and the content of its bind
//! mounts, which is the host's and changes. So facts are kept under the
//! image ID together with the working directory and the mount targets, a
//! directory strictly inside a mount is never kept, and neither are users
//! when a mount covers `/etc`.
//!
//! The cache is best effort: a file that cannot be read or written is
//! treated as empty, and the launch asks dockerd as it would without it.
//! Files live in `~/.cache/bot-bottle/docker-image-facts/`, one per key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What is known of one image in one container shape.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Facts {
    /// `/etc/passwd` and `/etc/group` as read (empty when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    users: Option<(String, String)>,
    /// Directory → whether it exists in a created container.
    #[serde(default)]
    dirs: BTreeMap<String, bool>,
}

/// The facts of one launch's agent container: those kept by earlier
/// launches, plus what this one learns, saved with [`ImageFacts::save`].
#[derive(Debug)]
pub(crate) struct ImageFacts {
    /// `None`: nothing is kept (no image ID, no cache directory).
    file: Option<PathBuf>,
    /// Mount targets, inside which nothing is kept.
    mounts: Vec<String>,
    facts: Mutex<Facts>,
    /// Whether this launch added anything to save.
    learned: AtomicBool,
}

impl ImageFacts {
    /// The facts kept for `image_id` in a container with this working
    /// directory and these mount targets.
    pub(crate) fn open(image_id: Option<&str>, workdir: &str, mounts: &[String]) -> Self {
        let dir = dirs::cache_dir().map(|d| d.join("bot-bottle").join("docker-image-facts"));
        Self::open_in(dir.as_deref(), image_id, workdir, mounts)
    }

    fn open_in(
        dir: Option<&Path>,
        image_id: Option<&str>,
        workdir: &str,
        mounts: &[String],
    ) -> Self {
        let mut mounts: Vec<String> = mounts.iter().map(|m| normal(m)).collect();
        mounts.sort();
        mounts.dedup();
        let file = match (dir, image_id.filter(|id| !id.is_empty())) {
            (Some(dir), Some(id)) => {
                let mut h = Sha256::new();
                // Unambiguous: none of the parts holds a NUL.
                for part in [id, &normal(workdir)]
                    .into_iter()
                    .chain(mounts.iter().map(String::as_str))
                {
                    h.update(part.as_bytes());
                    h.update([0]);
                }
                Some(dir.join(format!("{}.json", hex::encode(h.finalize()))))
            }
            _ => None,
        };
        let facts = file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match serde_json::from_slice::<Facts>(&bytes) {
                Ok(facts) => Some(facts),
                Err(e) => {
                    tracing::debug!("ignoring the unreadable image facts in {file:?}: {e}");
                    None
                }
            })
            .unwrap_or_default();
        Self {
            file,
            mounts,
            facts: Mutex::new(facts),
            learned: AtomicBool::new(false),
        }
    }

    /// The image's `/etc/passwd` and `/etc/group`, if known.
    pub(crate) fn users(&self) -> Option<(String, String)> {
        self.lock().users.clone()
    }

    /// Records the image's `/etc/passwd` and `/etc/group` as read from a
    /// container of it.
    pub(crate) fn learn_users(&self, passwd: &str, group: &str) {
        if self
            .mounts
            .iter()
            .any(|m| m == "/etc" || m.starts_with("/etc/"))
        {
            return;
        }
        self.lock().users = Some((passwd.to_string(), group.to_string()));
        self.learned.store(true, Ordering::Relaxed);
    }

    /// Whether `dir` exists in a created container, if known.
    pub(crate) fn dir(&self, dir: &str) -> Option<bool> {
        if self.inside_mount(dir) {
            return None;
        }
        self.lock().dirs.get(&normal(dir)).copied()
    }

    /// Records whether `dir` exists in a created container.
    pub(crate) fn learn_dir(&self, dir: &str, exists: bool) {
        if self.inside_mount(dir) {
            return;
        }
        self.lock().dirs.insert(normal(dir), exists);
        self.learned.store(true, Ordering::Relaxed);
    }

    /// Writes what this launch learned (nothing when it learned nothing).
    /// Replaced whole by a rename, so concurrent launches never read half a
    /// file; when two write at once, one's facts are kept, which is enough.
    pub(crate) fn save(&self) {
        let Some(file) = &self.file else { return };
        if !self.learned.load(Ordering::Relaxed) {
            return;
        }
        let facts = self.lock().clone();
        let write = || -> std::io::Result<()> {
            let dir = file.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{}.{}", std::process::id(), next_suffix()));
            std::fs::write(&tmp, serde_json::to_vec(&facts)?)?;
            std::fs::rename(&tmp, file).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        if let Err(e) = write() {
            tracing::debug!("not keeping the image facts in {}: {e}", file.display());
        }
    }

    fn inside_mount(&self, dir: &str) -> bool {
        let dir = normal(dir);
        self.mounts.iter().any(|m| {
            m == "/"
                || dir
                    .strip_prefix(m.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Facts> {
        self.facts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `/a/b/` and `/a//b` as `/a/b`.
fn normal(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// Tells apart the temporary files of two threads of one process.
fn next_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, id: &str, workdir: &str, mounts: &[&str]) -> ImageFacts {
        let mounts: Vec<String> = mounts.iter().map(|m| m.to_string()).collect();
        ImageFacts::open_in(Some(dir), Some(id), workdir, &mounts)
    }

    #[test]
    fn facts_come_back_for_the_same_image_and_shape_only() {
        let tmp = tempfile::tempdir().unwrap();
        let f = open(tmp.path(), "sha256:aa", "/work", &["/work"]);
        assert_eq!(f.dir("/etc/bot-bottle"), None);
        f.learn_dir("/etc/bot-bottle", false);
        f.learn_dir("/etc", true);
        f.learn_users(
            "agent:x:1000:1000::/home/agent:/bin/sh\n",
            "agent:x:1000:\n",
        );
        f.save();

        let again = open(tmp.path(), "sha256:aa", "/work/", &["/work"]);
        assert_eq!(again.dir("/etc/bot-bottle"), Some(false));
        assert_eq!(again.dir("/etc/"), Some(true));
        assert!(again.users().unwrap().0.starts_with("agent:x:1000"));

        // Another image, working directory or set of mounts knows nothing.
        for other in [
            open(tmp.path(), "sha256:bb", "/work", &["/work"]),
            open(tmp.path(), "sha256:aa", "/home/agent", &["/work"]),
            open(
                tmp.path(),
                "sha256:aa",
                "/work",
                &["/work", "/home/agent/.codex"],
            ),
        ] {
            assert_eq!(other.dir("/etc"), None);
            assert_eq!(other.users(), None);
        }
    }

    #[test]
    fn nothing_inside_a_mount_is_kept_nor_users_under_a_mounted_etc() {
        let tmp = tempfile::tempdir().unwrap();
        let f = open(
            tmp.path(),
            "sha256:aa",
            "/",
            &["/home/agent/.codex", "/etc/ssl"],
        );
        f.learn_dir("/home/agent/.codex/sub", true);
        f.learn_dir("/home/agent/.codex", true);
        f.learn_dir("/home/agent", true);
        f.learn_users("root:x:0:0::/root:/bin/sh\n", "root:x:0:\n");
        f.save();
        let again = open(
            tmp.path(),
            "sha256:aa",
            "/",
            &["/etc/ssl", "/home/agent/.codex"],
        );
        // Inside the mount: the host's content, asked every time.
        assert_eq!(again.dir("/home/agent/.codex/sub"), None);
        // The mount point and its parents are Docker's, always the same.
        assert_eq!(again.dir("/home/agent/.codex"), Some(true));
        assert_eq!(again.dir("/home/agent"), Some(true));
        assert_eq!(again.users(), None);
    }

    #[test]
    fn a_damaged_file_or_no_image_id_means_no_facts() {
        let tmp = tempfile::tempdir().unwrap();
        let f = open(tmp.path(), "sha256:aa", "/", &[]);
        f.learn_dir("/etc", true);
        f.save();
        let file = std::fs::read_dir(tmp.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(open(tmp.path(), "sha256:aa", "/", &[]).dir("/etc"), None);

        let none = ImageFacts::open_in(Some(tmp.path()), None, "/", &[]);
        none.learn_dir("/etc", true);
        none.save();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_launch_that_learned_nothing_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let f = open(tmp.path(), "sha256:aa", "/", &[]);
        f.save();
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
