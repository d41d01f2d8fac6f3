//! Rendering. Analyses hand over plain data; this module turns it into bytes.
//!
//! Two axes: the output format (`Format`, one renderer file each: `text`, `markdown`, `html`;
//! JSON is the serde form of the analysis data itself) and the language (`Lang`), which only
//! selects words from per-report catalogues (`catalogue!`), so every renderer is written once.
//! A report module builds a `Document` (headings, key-values, tables, bars...) from its data;
//! the format renderers know nothing of OOMs or memory.

pub mod doc;
pub mod i18n;
pub mod markdown;
pub mod text;
pub mod units;

use std::io::Write;
use std::path::PathBuf;

use clap::ValueEnum;
use serde::Serialize;

pub use doc::{Block, Document};
pub use i18n::fill;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
    Markdown,
    Html,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    En,
    Zh,
}

impl Lang {
    /// The language from the environment (`LC_ALL`, `LC_MESSAGES`, `LANG`, first one set): `zh*` is Chinese.
    pub fn from_env() -> Lang {
        for var in ["LC_ALL", "LC_MESSAGES", "LANG"] {
            if let Ok(v) = std::env::var(var) {
                if v.is_empty() {
                    continue;
                }
                return if v.to_ascii_lowercase().starts_with("zh") {
                    Lang::Zh
                } else {
                    Lang::En
                };
            }
        }
        Lang::En
    }
}

/// Where and how a command writes its result.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub format: Format,
    pub lang: Lang,
    /// `-o FILE`: write there (atomically) instead of stdout.
    pub output: Option<PathBuf>,
    /// Colours and bar glyphs in text output (off when not a terminal).
    pub color: bool,
}

impl Ctx {
    pub fn new(format: Format, lang: Lang) -> Ctx {
        Ctx {
            format,
            lang,
            output: None,
            color: false,
        }
    }

    /// Renders a document in the context's format (JSON is handled by `emit`).
    pub fn render_doc(&self, doc: &Document) -> String {
        match self.format {
            Format::Markdown => markdown::render(doc),
            Format::Html => markdown::render_html(doc),
            Format::Text | Format::Json => text::render(doc, self.color),
        }
    }

    /// Writes a result: `data` as JSON for `--format json`, else the document built by `doc`.
    pub fn emit<T: Serialize>(
        &self,
        data: &T,
        doc: impl FnOnce(Lang) -> Document,
    ) -> anyhow::Result<()> {
        let bytes = match self.format {
            Format::Json => {
                let mut s = serde_json::to_string_pretty(data)?;
                s.push('\n');
                s.into_bytes()
            }
            _ => self.render_doc(&doc(self.lang)).into_bytes(),
        };
        self.write(&bytes)
    }

    /// Writes bytes to `-o FILE` (temp file + rename) or stdout; a closed pipe is not an error.
    pub fn write(&self, bytes: &[u8]) -> anyhow::Result<()> {
        match &self.output {
            Some(path) => crate::report::write_atomic(path, bytes),
            None => {
                let mut out = std::io::stdout().lock();
                match out.write_all(bytes).and_then(|_| out.flush()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    r => Ok(r?),
                }
            }
        }
    }
}

/// Atomic file write for output files: temp file in the same directory, then rename.
/// Something that exists and is not a regular file (`/dev/null`, `/dev/stdout`, a FIFO) is written
/// in place: renaming over it would replace the device with a file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| f.write_all(bytes))
                .with_context(|| format!("{}: cannot write", path.display()));
        }
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.oomdoc-tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn writing_to_a_device_keeps_the_device() {
        let null = std::path::Path::new("/dev/null");
        if !null.exists() {
            return;
        }
        super::write_atomic(null, b"report").unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(null)
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn regular_files_are_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        std::fs::write(&p, "old content that is longer").unwrap();
        super::write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
    }
}
