//! Writing a patch: checks first (read-only files, uncommitted git changes, files changed since
//! they were read), then a backup of each file (`FILE.orig`), then every new file written to a
//! temporary file beside it and renamed over the original. Nothing is written unless every
//! check passes.
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Patch;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct Written {
    /// Project-relative path.
    pub path: String,
    /// Project-relative path of the backup of the original.
    pub backup: String,
}

#[derive(Clone, Debug, Serialize, Default)]
pub struct Applied {
    pub written: Vec<Written>,
}

/// Files of the patch that git reports as modified, staged or untracked (None: not a git
/// work tree, or git is not installed).
fn git_dirty(root: &Path, rels: &[&str]) -> Option<Vec<String>> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--"])
        .args(rels)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(
        text.lines()
            .filter(|l| l.len() > 3)
            .map(|l| l[3..].to_string())
            .collect(),
    )
}

fn backup_path(path: &Path) -> PathBuf {
    let base = format!("{}.orig", path.display());
    let first = PathBuf::from(&base);
    if !first.exists() {
        return first;
    }
    (1..1000)
        .map(|i| PathBuf::from(format!("{base}.{i}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.oomdoc-tmp-{}", std::process::id()))
}

/// Writes the patch under `root`. `force` skips the git check (not the others).
pub fn apply(root: &Path, patch: &Patch, force: bool) -> Result<Applied> {
    // 1. Checks that need no writing.
    for f in &patch.files {
        let path = root.join(&f.path);
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.permissions().readonly() {
            return Err(Error::input(format!(
                "{}: the file is read-only; nothing was written",
                f.path
            )));
        }
        let now = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        if now != f.original {
            return Err(Error::input(format!(
                "{}: the file changed since it was read; nothing was written (run fix again)",
                f.path
            )));
        }
    }
    if !force {
        let rels: Vec<&str> = patch.files.iter().map(|f| f.path.as_str()).collect();
        if let Some(dirty) = git_dirty(root, &rels) {
            if !dirty.is_empty() {
                return Err(Error::input(format!(
                    "uncommitted changes in {} (git status); commit or stash them first, or pass --force; nothing was written",
                    dirty.join(", ")
                )));
            }
        }
    }
    // 2. Backups and temporary files.
    let mut staged: Vec<(PathBuf, PathBuf, PathBuf, String)> = Vec::new(); // (path, tmp, backup, rel)
    let cleanup = |staged: &[(PathBuf, PathBuf, PathBuf, String)]| {
        for (_, tmp, bak, _) in staged {
            let _ = std::fs::remove_file(tmp);
            let _ = std::fs::remove_file(bak);
        }
    };
    for f in &patch.files {
        let path = root.join(&f.path);
        let bak = backup_path(&path);
        let tmp = tmp_path(&path);
        let res = (|| -> Result<()> {
            std::fs::copy(&path, &bak).map_err(|e| Error::io(&bak, e))?;
            std::fs::write(&tmp, &f.new).map_err(|e| Error::io(&tmp, e))?;
            let perms = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .permissions();
            std::fs::set_permissions(&tmp, perms).map_err(|e| Error::io(&tmp, e))?;
            Ok(())
        })();
        staged.push((path.clone(), tmp, bak, f.path.clone()));
        if let Err(e) = res {
            cleanup(&staged);
            return Err(Error::input(format!("{e}; nothing was written")));
        }
    }
    // 3. Last check that nothing changed meanwhile, then rename.
    for (f, (path, ..)) in patch.files.iter().zip(&staged) {
        let now = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if now != f.original {
            cleanup(&staged);
            return Err(Error::input(format!(
                "{}: the file changed while fix was running; nothing was written",
                f.path
            )));
        }
    }
    let mut applied = Applied::default();
    for (path, tmp, bak, rel) in &staged {
        std::fs::rename(tmp, path).map_err(|e| Error::io(path, e))?;
        let backup = bak
            .strip_prefix(root)
            .unwrap_or(bak)
            .to_string_lossy()
            .replace('\\', "/");
        applied.written.push(Written {
            path: rel.clone(),
            backup,
        });
    }
    Ok(applied)
}
