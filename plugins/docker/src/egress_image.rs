//! The egress sidecar image: `FROM scratch` with the host's egress program
//! and the shared libraries `ldd` lists (each at the path `ldd` prints, the
//! dynamic loader included), built locally with the image import API and
//! cached by the program's SHA-256.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use bollard::query_parameters::{CreateImageOptions, ListImagesOptions};
use bollard::Docker;
use bot_bottle_plugin_api::PluginError;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::names::{
    label_filter, EGRESS_IMAGE_REPO, EGRESS_PROGRAM_PATH, LABEL_EGRESS_SHA256, LABEL_EGRESS_STAMP,
    LABEL_ROLE, ROLE_EGRESS_IMAGE,
};

/// The host's CA bundle, copied into the image when present so that the
/// proxy can verify upstreams with the system store.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Returns the tag of an image that runs `program`, building it when no
/// image for this exact program exists yet.
pub async fn ensure(
    client: &Client,
    docker: &Docker,
    program: &Path,
) -> Result<String, PluginError> {
    let program = program.to_path_buf();
    // Hashing a large `bottle` costs more than the rest of a launch; an
    // image labelled with this very file's identity (device, inode, size,
    // mtime) is taken without hashing.
    let stamp = file_stamp(&program)?;
    let by_stamp = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(label_filter(&[(LABEL_EGRESS_STAMP, Some(&stamp))])),
            ..Default::default()
        }))
        .await
        .map_err(|e| client.api("listing egress images", e))?;
    if let Some(tag) = by_stamp
        .iter()
        .flat_map(|i| i.repo_tags.iter())
        .find(|t| t.starts_with(&format!("{EGRESS_IMAGE_REPO}:")))
    {
        tracing::debug!(%tag, "egress sidecar image is cached (same file)");
        return Ok(tag.clone());
    }
    let sha = {
        let program = program.clone();
        tokio::task::spawn_blocking(move || sha256_file(&program))
            .await
            .map_err(|e| PluginError::internal(format!("hashing the egress program: {e}")))??
    };
    let tag = format!("{EGRESS_IMAGE_REPO}:{}", &sha[..16]);

    match docker.inspect_image(&tag).await {
        Ok(image) => {
            let labelled = image
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_EGRESS_SHA256))
                .is_some_and(|s| *s == sha);
            if labelled {
                tracing::debug!(%tag, "egress sidecar image is cached");
                return Ok(tag);
            }
            tracing::info!(%tag, "cached egress image belongs to another program; rebuilding it");
        }
        Err(e) if crate::client::is_not_found(&e) => {}
        Err(e) => return Err(client.api(&format!("inspecting image {tag}"), e)),
    }

    tracing::info!(%tag, program = %program.display(), "building the egress sidecar image");
    let _spinner =
        crate::progress::Spinner::start(format!("building the egress sidecar image {tag}"));
    let rootfs = {
        let program = program.clone();
        tokio::task::spawn_blocking(move || rootfs_tar(&program))
            .await
            .map_err(|e| PluginError::internal(format!("packing the egress image: {e}")))??
    };
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(EGRESS_IMAGE_REPO.into()),
        tag: Some(sha[..16].to_string()),
        changes: vec![format!(
            "LABEL {LABEL_ROLE}={ROLE_EGRESS_IMAGE} {LABEL_EGRESS_SHA256}={sha} {LABEL_EGRESS_STAMP}={stamp}"
        )],
        ..Default::default()
    };
    docker
        .create_image(Some(options), Some(bollard::body_full(rootfs.into())), None)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| client.api(&format!("importing the egress image {tag}"), e))?;
    Ok(tag)
}

/// The identity of a file as it is now: device, inode, size and
/// modification time. Any rewrite of the file changes it.
fn file_stamp(path: &Path) -> Result<String, PluginError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| program_error(path, &e))?;
    Ok(format!(
        "{}-{}-{}-{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// Lowercase hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, PluginError> {
    let mut file = std::fs::File::open(path).map_err(|e| program_error(path, &e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| program_error(path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn program_error(path: &Path, e: &std::io::Error) -> PluginError {
    PluginError::unavailable(format!(
        "cannot read the egress program {}: {e}",
        path.display()
    ))
    .with_hint("the host passes its own `bottle` binary; reinstall bot-bottle if it is missing")
}

/// The shared libraries (and dynamic loader) `ldd` lists for `program`.
/// Empty for a static binary.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, PluginError> {
    let out = Command::new("ldd").arg(program).output().map_err(|e| {
        PluginError::unavailable(format!(
            "cannot run `ldd` to find the libraries of {}: {e}",
            program.display()
        ))
        .with_hint("install ldd (Debian/Ubuntu: libc-bin) or use a statically linked `bottle`")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let text = format!("{stdout}{stderr}");
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(vec![]);
        }
        return Err(PluginError::unavailable(format!(
            "`ldd {}` failed: {}",
            program.display(),
            text.trim()
        ))
        .with_hint("the egress program must be a Linux executable for this machine"));
    }
    parse_ldd(&stdout).map_err(|lib| {
        PluginError::unavailable(format!(
            "the egress program {} needs {lib}, which is not installed",
            program.display()
        ))
        .with_hint("install the missing library, or rebuild bot-bottle on this machine")
    })
}

/// Parses `ldd` output into absolute library paths; `Err(name)` for a
/// library `ldd` could not find.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once(" => ") {
            Some((name, rest)) => {
                if rest.trim_start().starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// The image's root file system as a tar archive.
fn rootfs_tar(program: &Path) -> Result<Vec<u8>, PluginError> {
    let libs = shared_libraries(program)?;
    let mut tar = RootfsTar::default();
    tar.dir("tmp", 0o1777)?;
    tar.dir("etc/bot-bottle", 0o755)?;
    tar.file(
        "etc/nsswitch.conf",
        b"hosts: files dns\npasswd: files\ngroup: files\n",
        0o644,
    )?;
    tar.file(
        "etc/passwd",
        b"root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n",
        0o644,
    )?;
    tar.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    if let Ok(bundle) = std::fs::read(HOST_CA_BUNDLE) {
        tar.file(HOST_CA_BUNDLE.trim_start_matches('/'), &bundle, 0o644)?;
    }
    let bytes = std::fs::read(program).map_err(|e| program_error(program, &e))?;
    tar.file(EGRESS_PROGRAM_PATH.trim_start_matches('/'), &bytes, 0o755)?;
    for lib in libs {
        // `read` follows symlinks: the image holds the library itself at
        // the path the loader looks for.
        let bytes = std::fs::read(&lib).map_err(|e| {
            PluginError::unavailable(format!(
                "cannot read {} for the egress image: {e}",
                lib.display()
            ))
            .with_hint("check that the library is readable by this user")
        })?;
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        tar.file(&rel, &bytes, 0o755)?;
    }
    tar.finish()
}

/// A tar writer that adds each parent directory once, owned by root, with
/// fixed timestamps.
#[derive(Default)]
struct RootfsTar {
    builder: Option<tar::Builder<Vec<u8>>>,
    dirs: BTreeSet<String>,
}

impl std::fmt::Debug for RootfsTar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootfsTar")
            .field("dirs", &self.dirs)
            .finish()
    }
}

impl RootfsTar {
    fn builder(&mut self) -> &mut tar::Builder<Vec<u8>> {
        self.builder
            .get_or_insert_with(|| tar::Builder::new(Vec::new()))
    }

    fn parents(&mut self, path: &str) -> Result<(), PluginError> {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !self.dirs.contains(&acc) {
                let dir = acc.clone();
                self.entry(&dir, tar::EntryType::Directory, &[], 0o755)?;
                self.dirs.insert(dir);
            }
        }
        Ok(())
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<(), PluginError> {
        self.parents(path)?;
        if self.dirs.insert(path.to_string()) {
            self.entry(path, tar::EntryType::Directory, &[], mode)?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<(), PluginError> {
        self.parents(path)?;
        self.entry(path, tar::EntryType::Regular, data, mode)
    }

    fn entry(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        data: &[u8],
        mode: u32,
    ) -> Result<(), PluginError> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        let name = if kind == tar::EntryType::Directory {
            format!("{path}/")
        } else {
            path.to_string()
        };
        self.builder()
            .append_data(&mut header, name, data)
            .map_err(|e| {
                PluginError::internal(format!("packing {path} into the egress image: {e}"))
            })
    }

    fn finish(mut self) -> Result<Vec<u8>, PluginError> {
        self.builder()
            .finish()
            .map_err(|e| PluginError::internal(format!("packing the egress image: {e}")))?;
        self.builder
            .take()
            .map(|b| b.into_inner())
            .transpose()
            .map_err(|e| PluginError::internal(format!("packing the egress image: {e}")))
            .map(Option::unwrap_or_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_glibc_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc5d9f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1c5e0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1c3ff000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1c6a1000)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn a_missing_library_is_named() {
        let out = "\tlibfoo.so.1 => not found\n";
        assert_eq!(parse_ldd(out).unwrap_err(), "libfoo.so.1");
    }

    #[test]
    fn static_binaries_have_no_libraries() {
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn the_rootfs_holds_program_libraries_and_loader() {
        // The test binary itself is a dynamically linked glibc program.
        let me = std::env::current_exe().unwrap();
        let tar = rootfs_tar(&me).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.contains(&"usr/local/bin/bottle".to_string()),
            "{names:?}"
        );
        for lib in shared_libraries(&me).unwrap() {
            let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
            assert!(names.contains(&rel), "{rel} missing from {names:?}");
        }
        assert!(names.contains(&"etc/bot-bottle/".to_string()), "{names:?}");
    }
}
