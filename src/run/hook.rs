//! `--snapshot-on-oom`: a `sitecustomize.py` in a private temporary directory put first on
//! `PYTHONPATH`, so that a PyTorch program records its allocator history and writes a memory
//! snapshot when it runs out of memory (see `sitecustomize.py` beside this file).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The hook's Python source, embedded at build time.
pub const SITECUSTOMIZE: &str = include_str!("sitecustomize.py");

/// Alloc/free events kept before the OOM: PyTorch's own example value
/// (docs "Understanding CUDA Memory Usage", `max_entries=100000`).
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Snapshot files are named `oomdoc-oom-<pid>.pickle` by the hook.
const PREFIX: &str = "oomdoc-oom-";
const SUFFIX: &str = ".pickle";

/// An installed hook; the temporary directory goes away on drop.
pub struct Hook {
    dir: PathBuf,
    pub snapshot_dir: PathBuf,
    before: HashSet<PathBuf>,
}

impl Hook {
    /// Writes the hook into a fresh temporary directory; snapshots will go to `snapshot_dir`.
    pub fn install(snapshot_dir: &Path) -> anyhow::Result<Hook> {
        std::fs::create_dir_all(snapshot_dir)
            .with_context(|| format!("{}: cannot create directory", snapshot_dir.display()))?;
        let snapshot_dir = snapshot_dir
            .canonicalize()
            .with_context(|| format!("{}: cannot open directory", snapshot_dir.display()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("oomdoc-hook-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
        std::fs::write(dir.join("sitecustomize.py"), SITECUSTOMIZE)
            .with_context(|| format!("{}: cannot write", dir.display()))?;
        let before = list(&snapshot_dir);
        Ok(Hook {
            dir,
            snapshot_dir,
            before,
        })
    }

    /// Environment for the child: the hook first on PYTHONPATH, and where to write.
    pub fn env(&self, max_entries: u64) -> Vec<(String, String)> {
        let mut path = self.dir.display().to_string();
        if let Ok(old) = std::env::var("PYTHONPATH") {
            if !old.is_empty() {
                path.push(':');
                path.push_str(&old);
            }
        }
        vec![
            ("PYTHONPATH".into(), path),
            (
                "OOMDOC_SNAPSHOT_DIR".into(),
                self.snapshot_dir.display().to_string(),
            ),
            (
                "OOMDOC_SNAPSHOT_MAX_ENTRIES".into(),
                max_entries.to_string(),
            ),
        ]
    }

    /// Snapshot files written since the hook was installed.
    pub fn new_snapshots(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = list(&self.snapshot_dir)
            .into_iter()
            .filter(|p| !self.before.contains(p))
            .collect();
        v.sort();
        v
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn list(dir: &Path) -> HashSet<PathBuf> {
    let mut out = HashSet::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(PREFIX) && name.ends_with(SUFFIX) {
                out.insert(e.path());
            }
        }
    }
    out
}
