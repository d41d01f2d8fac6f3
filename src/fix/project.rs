//! Reading a project: every Python file parsed (a syntax error stops everything), config files
//! (YAML, JSON, TOML) and launch scripts kept as text.
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::py::{self, PyFile};

/// Directories never read: version control, virtual environments, caches, build output.
const SKIP_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "node_modules",
    "site-packages",
    "venv",
    ".venv",
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    "build",
    "dist",
    "wandb",
    "outputs",
    "lightning_logs",
];

/// Files larger than this are not source code we edit (1 MiB; generated or data files).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// At most this many files are read (a guard against pointing at `/`).
const MAX_FILES: usize = 5000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtherKind {
    Yaml,
    Json,
    Toml,
    Shell,
    Readme,
}

/// A non-Python file that may hold settings or the launch command.
pub struct OtherFile {
    pub rel: String,
    pub kind: OtherKind,
    pub src: String,
}

pub struct Project {
    pub root: PathBuf,
    pub py: Vec<PyFile>,
    pub other: Vec<OtherFile>,
}

impl Project {
    pub fn load(root: &Path) -> Result<Project> {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
        if !meta.is_dir() {
            return Err(Error::input(format!(
                "{}: not a directory (fix takes the project's directory)",
                root.display()
            )));
        }
        let mut paths = Vec::new();
        walk(root, root, &mut paths)?;
        paths.sort();
        let mut files = Vec::new();
        for (rel, path) in paths {
            if kind_of(&rel).is_some() {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                files.push((rel, bytes));
            }
        }
        Project::from_files(root, files)
    }

    /// A project from its files' paths (relative, `/`-separated) and contents, in that order:
    /// what [`Project::load`] reads from disk, and what the fuzz target builds in memory. Files
    /// that are neither Python nor a settings file or launch script are left out.
    pub fn from_files(root: &Path, files: Vec<(String, Vec<u8>)>) -> Result<Project> {
        let mut py = Vec::new();
        let mut other = Vec::new();
        for (rel, bytes) in files {
            let Some(kind) = kind_of(&rel) else {
                continue;
            };
            let Ok(src) = String::from_utf8(bytes) else {
                if kind.is_none() {
                    return Err(Error::input(format!(
                        "{rel}: not UTF-8 text; nothing was changed"
                    )));
                }
                continue;
            };
            match kind {
                None => {
                    let tree = py::parse(&src).map_err(|(line, col)| {
                        Error::input(format!(
                            "{rel}:{line}:{col}: syntax error; fix it first (nothing was changed)"
                        ))
                    })?;
                    py.push(PyFile { rel, src, tree });
                }
                Some(kind) => other.push(OtherFile { rel, kind, src }),
            }
        }
        Ok(Project {
            root: root.to_path_buf(),
            py,
            other,
        })
    }

    pub fn py_index(&self, rel: &str) -> Option<usize> {
        self.py.iter().position(|f| f.rel == rel)
    }

    /// The file of a Python module imported by `from_file` (relative or absolute dotted name).
    pub fn module_file(&self, from_file: &str, module: &str) -> Option<usize> {
        let dots = module.chars().take_while(|&c| c == '.').count();
        let name = &module[dots..];
        let path = name.replace('.', "/");
        let mut candidates = Vec::new();
        if dots > 0 {
            let mut dir: Vec<&str> = from_file.split('/').collect();
            dir.pop();
            for _ in 1..dots {
                dir.pop();
            }
            let base = dir.join("/");
            let p = if base.is_empty() {
                path.clone()
            } else {
                format!("{base}/{path}")
            };
            candidates.push(format!("{p}.py"));
            candidates.push(format!("{p}/__init__.py"));
        } else {
            candidates.push(format!("{path}.py"));
            candidates.push(format!("{path}/__init__.py"));
            // Also relative to the importing file's directory (scripts run from there).
            if let Some((dir, _)) = from_file.rsplit_once('/') {
                candidates.push(format!("{dir}/{path}.py"));
                candidates.push(format!("{dir}/{path}/__init__.py"));
            }
        }
        candidates
            .iter()
            .find_map(|c| self.py_index(c))
            .or_else(|| {
                // Installed-package style layouts (src/pkg/...): match by suffix.
                let suffix = format!("/{path}.py");
                self.py.iter().position(|f| f.rel.ends_with(&suffix))
            })
    }
}

/// What a file is to `fix`: `Some(None)` Python source, `Some(Some(kind))` a settings file or
/// launch script, `None` neither (not read).
fn kind_of(rel: &str) -> Option<Option<OtherKind>> {
    let lower = rel.to_ascii_lowercase();
    Some(if lower.ends_with(".py") {
        None
    } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        Some(OtherKind::Yaml)
    } else if lower.ends_with(".json") {
        Some(OtherKind::Json)
    } else if lower.ends_with(".toml") {
        Some(OtherKind::Toml)
    } else if lower.ends_with(".sh") {
        Some(OtherKind::Shell)
    } else if !lower.contains('/') && lower.starts_with("readme") {
        Some(OtherKind::Readme)
    } else {
        return None;
    })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            // A virtual environment under any name holds pyvenv.cfg.
            if SKIP_DIRS.contains(&name.as_str())
                || name.starts_with('.')
                || path.join("pyvenv.cfg").exists()
            {
                continue;
            }
            walk(root, &path, out)?;
        } else if ft.is_file() {
            if name.ends_with(".orig") || name.contains(".oomdoc-tmp-") {
                continue;
            }
            if e.metadata().map(|m| m.len()).unwrap_or(0) > MAX_FILE_BYTES {
                continue;
            }
            if out.len() >= MAX_FILES {
                return Err(Error::input(format!(
                    "{}: more than {MAX_FILES} files; point fix at the project's own directory",
                    root.display()
                )));
            }
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .replace('\\', "/");
            out.push((rel, path));
        }
    }
    Ok(())
}
