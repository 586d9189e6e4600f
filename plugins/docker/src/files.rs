//! Files placed in a container before it starts (with the archive API), and
//! the user they belong to.

use std::collections::BTreeSet;

use base64::Engine as _;
use bot_bottle_plugin_api::{FileEncoding, PluginError, SandboxFile};

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// Parses `/etc/passwd`; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` into (name, gid).
pub fn parse_group(text: &str) -> Vec<(String, u32)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some((f[0].to_string(), f[2].parse().ok()?))
        })
        .collect()
}

/// The user the agent runs as, resolved to numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    /// What Docker is told (`agent`, `1000:1000`); `None` for the image default (root).
    pub spec: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Home directory from `/etc/passwd`, when known.
    pub home: Option<String>,
}

impl AgentUser {
    /// Root, the image's default.
    pub fn root() -> Self {
        Self {
            spec: None,
            uid: 0,
            gid: 0,
            home: None,
        }
    }
}

/// A user for an image that declares none: `agent`, else uid 1000.
pub fn default_user(passwd: &[PasswdEntry]) -> Option<String> {
    passwd
        .iter()
        .find(|e| e.name == "agent" && e.uid != 0)
        .or_else(|| passwd.iter().find(|e| e.uid == 1000))
        .map(|e| e.name.clone())
}

/// Resolves a Docker user spec (`name`, `uid`, `uid:gid`, `name:group`)
/// against the image's passwd and group files.
pub fn resolve_user(
    spec: &str,
    passwd: &[PasswdEntry],
    groups: &[(String, u32)],
) -> Result<AgentUser, PluginError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => passwd.iter().find(|e| e.name == user),
    };
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.uid,
        (Err(_), None) => {
            return Err(PluginError::invalid(format!(
                "user `{user}` does not exist in the agent image's /etc/passwd"
            ))
            .with_hint(
                "set [backends.docker] user to a user of the image, or to a numeric uid:gid",
            ))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|(name, _)| name == g)
                .map(|(_, gid)| *gid)
                .ok_or_else(|| {
                    PluginError::invalid(format!(
                        "group `{g}` does not exist in the agent image's /etc/group"
                    ))
                    .with_hint(
                        "set [backends.docker] user to user:group of the image, or numeric uid:gid",
                    )
                })?,
        },
        None => entry.map(|e| e.gid).unwrap_or(uid),
    };
    Ok(AgentUser {
        spec: Some(spec.to_string()),
        uid,
        gid,
        home: entry
            .map(|e| e.home.clone())
            .filter(|h| h.starts_with('/') && h != "/"),
    })
}

/// Checks a sandbox path: absolute, normal components only. Returns it
/// without the leading slash, as tar wants it.
pub fn relative_path(path: &str) -> Result<String, PluginError> {
    let bad = || {
        PluginError::invalid(format!(
            "sandbox file path `{path}` is not a plain absolute path"
        ))
        .with_hint("file paths must start with `/` and contain no `.`, `..` or empty parts")
    };
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(bad());
    }
    Ok(rest.to_string())
}

/// The bytes of a sandbox file.
pub fn contents(file: &SandboxFile) -> Result<Vec<u8>, PluginError> {
    match file.encoding {
        FileEncoding::Utf8 => Ok(file.contents.as_bytes().to_vec()),
        FileEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(file.contents.trim())
            .map_err(|e| {
                PluginError::invalid(format!(
                    "sandbox file {} is not valid base64: {e}",
                    file.path
                ))
                .with_hint("this is a bug in the provider plugin that made the file")
            }),
    }
}

/// Every directory that must exist for `files`, deepest last
/// (`/a`, `/a/b`, …), without `/`.
pub fn parent_dirs(files: &[SandboxFile]) -> Result<Vec<String>, PluginError> {
    let mut dirs = BTreeSet::new();
    for file in files {
        let rel = relative_path(&file.path)?;
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            acc.push('/');
            acc.push_str(part);
            dirs.insert(acc.clone());
        }
    }
    // BTreeSet order puts every parent before its children.
    Ok(dirs.into_iter().collect())
}

/// One file of an [`archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Absolute path in the container.
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    /// Root's, not the agent's (what Docker itself would have put there).
    pub root_owned: bool,
}

impl Placed {
    /// A file of the agent user's.
    pub fn agents(path: impl Into<String>, data: Vec<u8>, mode: u32) -> Self {
        Self {
            path: path.into(),
            data,
            mode,
            root_owned: false,
        }
    }
}

/// A tar archive, extracted at `/`, that creates `missing_dirs` and writes
/// `files`. Files belong to `owner` unless root-owned; created directories
/// belong to `owner` inside its home and to root elsewhere. Existing
/// directories are never in the archive, so their owners and modes stay as
/// the image has them.
pub fn archive(
    files: &[Placed],
    missing_dirs: &[String],
    owner: &AgentUser,
) -> Result<Vec<u8>, PluginError> {
    let mut builder = tar::Builder::new(Vec::new());
    let pack = |e: std::io::Error| PluginError::internal(format!("packing sandbox files: {e}"));
    for dir in missing_dirs {
        let in_home = owner
            .home
            .as_deref()
            .is_some_and(|h| dir == h || dir.starts_with(&format!("{}/", h.trim_end_matches('/'))));
        let (uid, gid) = if in_home {
            (owner.uid, owner.gid)
        } else {
            (0, 0)
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(0o755);
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_mtime(now());
        builder
            .append_data(
                &mut header,
                format!("{}/", dir.trim_start_matches('/')),
                &[][..],
            )
            .map_err(pack)?;
    }
    for file in files {
        let (uid, gid) = match file.root_owned {
            true => (0, 0),
            false => (owner.uid, owner.gid),
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(file.data.len() as u64);
        header.set_mode(file.mode & 0o7777);
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_mtime(now());
        builder
            .append_data(&mut header, relative_path(&file.path)?, &file.data[..])
            .map_err(pack)?;
    }
    builder.into_inner().map_err(pack)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/:/bin/false\n\
                          agent:x:1001:1002:Agent:/home/agent:/bin/sh\n\
                          dev:x:1000:1000::/home/dev:/bin/sh\n";

    #[test]
    fn default_user_prefers_agent_then_uid_1000() {
        let p = parse_passwd(PASSWD);
        assert_eq!(default_user(&p).as_deref(), Some("agent"));
        let p: Vec<_> = p.into_iter().filter(|e| e.name != "agent").collect();
        assert_eq!(default_user(&p).as_deref(), Some("dev"));
        assert_eq!(
            default_user(&parse_passwd("root:x:0:0::/root:/bin/sh\n")),
            None
        );
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        let p = parse_passwd(PASSWD);
        let g = parse_group("root:x:0:\nstaff:x:50:\n");
        let u = resolve_user("agent", &p, &g).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_deref()),
            (1001, 1002, Some("/home/agent"))
        );
        let u = resolve_user("agent:staff", &p, &g).unwrap();
        assert_eq!((u.uid, u.gid), (1001, 50));
        let u = resolve_user("4242:4243", &p, &g).unwrap();
        assert_eq!((u.uid, u.gid, u.home), (4242, 4243, None));
        let u = resolve_user("1000", &p, &g).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_deref()),
            (1000, 1000, Some("/home/dev"))
        );
        assert!(resolve_user("nobody-here", &p, &g).is_err());
        assert!(resolve_user("agent:nogroup", &p, &g).is_err());
    }

    #[test]
    fn paths_must_be_plain_and_absolute() {
        assert_eq!(relative_path("/etc/x").unwrap(), "etc/x");
        for bad in ["etc/x", "/", "/a/../b", "/a//b", "/a/./b", "/a/"] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parents_come_before_children() {
        let files = vec![
            SandboxFile::text("/home/agent/.codex/auth.json", "{}", 0o600),
            SandboxFile::text("/etc/bot-bottle/ca.pem", "x", 0o644),
        ];
        assert_eq!(
            parent_dirs(&files).unwrap(),
            vec![
                "/etc",
                "/etc/bot-bottle",
                "/home",
                "/home/agent",
                "/home/agent/.codex"
            ]
        );
    }

    #[test]
    fn archive_owns_home_dirs_by_the_user_and_others_by_root() {
        let user = AgentUser {
            spec: Some("agent".into()),
            uid: 1001,
            gid: 1002,
            home: Some("/home/agent".into()),
        };
        let tar = archive(
            &[
                Placed::agents("/home/agent/.codex/auth.json", b"{}".to_vec(), 0o600),
                Placed {
                    root_owned: true,
                    ..Placed::agents("/etc/hosts", b"127.0.0.1 localhost\n".to_vec(), 0o644)
                },
            ],
            &["/etc/bot-bottle".into(), "/home/agent/.codex".into()],
            &user,
        )
        .unwrap();
        let mut a = tar::Archive::new(&tar[..]);
        let got: Vec<(String, u64, u32)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("etc/bot-bottle/".into(), 0, 0o755),
                ("home/agent/.codex/".into(), 1001, 0o755),
                ("home/agent/.codex/auth.json".into(), 1001, 0o600),
                ("etc/hosts".into(), 0, 0o644),
            ]
        );
    }

    #[test]
    fn base64_files_are_decoded() {
        let f = SandboxFile {
            path: "/x".into(),
            contents: "aGk=".into(),
            encoding: FileEncoding::Base64,
            mode: 0o644,
        };
        assert_eq!(contents(&f).unwrap(), b"hi");
    }
}
