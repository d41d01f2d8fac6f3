//! Optional: read the Python source files named in the stacks, to quote the allocating lines and
//! name the class around a function (`Block.forward`). A snapshot records only file, line and
//! function name; the source is looked up at the recorded path (the machine that ran it) or under
//! the `--source DIR` roots by path suffix. A file whose line is not inside a function of the recorded
//! name is taken to be another version and ignored, so a quote is never from the wrong code.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::analysis::{Analysis, Site, SourceLine};

/// Longest quoted line (characters).
const MAX_QUOTE: usize = 160;
/// Source files larger than this are not read (bytes).
const MAX_FILE: u64 = 8 << 20;

/// What the source says about one frame.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceInfo {
    /// The line's text, trimmed.
    pub code: String,
    /// Enclosing classes and functions, outermost first: `Block.forward`.
    pub qualname: String,
}

pub struct Sources {
    roots: Vec<PathBuf>,
    try_recorded: bool,
    files: HashMap<String, Option<Vec<String>>>,
}

impl Sources {
    /// `try_recorded`: also read the recorded absolute paths (the machine that took the snapshot).
    pub fn new(roots: Vec<PathBuf>, try_recorded: bool) -> Self {
        Sources {
            roots,
            try_recorded,
            files: HashMap::new(),
        }
    }

    fn candidates(&self, recorded: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let rec = Path::new(recorded);
        if self.try_recorded && rec.is_absolute() {
            out.push(rec.to_path_buf());
        }
        let parts: Vec<&str> = recorded
            .split(['/', '\\'])
            .filter(|p| !p.is_empty() && *p != "." && *p != "..")
            .collect();
        for root in &self.roots {
            for start in 0..parts.len() {
                let mut p = root.clone();
                for c in &parts[start..] {
                    p.push(c);
                }
                out.push(p);
            }
        }
        out
    }

    fn lines(&mut self, recorded: &str) -> Option<&Vec<String>> {
        if !self.files.contains_key(recorded) {
            let mut found = None;
            if recorded.ends_with(".py") {
                for c in self.candidates(recorded) {
                    let ok = std::fs::metadata(&c)
                        .map(|m| m.is_file() && m.len() <= MAX_FILE)
                        .unwrap_or(false);
                    if !ok {
                        continue;
                    }
                    if let Ok(bytes) = std::fs::read(&c) {
                        let text = String::from_utf8_lossy(&bytes);
                        found = Some(text.lines().map(str::to_string).collect());
                        break;
                    }
                }
            }
            self.files.insert(recorded.to_string(), found);
        }
        self.files.get(recorded).and_then(|f| f.as_ref())
    }

    /// Looks one frame up.
    pub fn info(&mut self, file: &str, line: i64, function: &str) -> Option<SourceInfo> {
        let lines = self.lines(file)?;
        let idx = usize::try_from(line).ok()?.checked_sub(1)?;
        let text = lines.get(idx)?;
        let names = enclosing(lines, idx);
        // The innermost def must be the recorded function (module-level code has none).
        let innermost = names.last().map(|s| s.as_str()).unwrap_or("<module>");
        if innermost != function {
            return None;
        }
        let mut code: String = text.trim().chars().take(MAX_QUOTE).collect();
        if text.trim().chars().count() > MAX_QUOTE {
            code.push('…');
        }
        Some(SourceInfo {
            code,
            qualname: names.join("."),
        })
    }
}

fn indent(s: &str) -> usize {
    let mut n = 0;
    for c in s.chars() {
        match c {
            ' ' => n += 1,
            '\t' => n = (n / 8 + 1) * 8,
            _ => break,
        }
    }
    n
}

/// Names of the `class`/`def` blocks around line `idx`, outermost first.
fn enclosing(lines: &[String], idx: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut limit = indent(&lines[idx]);
    for i in (0..idx).rev() {
        if limit == 0 {
            break;
        }
        let l = &lines[i];
        let t = l.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = indent(l);
        if ind >= limit {
            continue;
        }
        limit = ind;
        let header = t
            .strip_prefix("async def ")
            .or_else(|| t.strip_prefix("def "))
            .or_else(|| t.strip_prefix("class "));
        if let Some(rest) = header {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names.reverse();
    names
}

fn annotate_site(src: &mut Sources, s: &mut Site) {
    if let Some(i) = src.info(&s.file, s.line, &s.function) {
        s.code = Some(i.code);
        s.qualname = Some(i.qualname);
    }
}

fn annotate_line(src: &mut Sources, s: &SourceLine) -> Option<SourceInfo> {
    src.info(&s.file, s.line, &s.function)
}

/// Fills the `code` / `qualname` fields of an analysis where the source can be found.
pub fn annotate(a: &mut Analysis, src: &mut Sources) {
    for s in a.top_sites.iter_mut().chain(a.library_sites.iter_mut()) {
        annotate_site(src, s);
    }
    if let Some(sc) = a.scope.as_mut() {
        sc.caller_source = annotate_line(src, &sc.caller);
        sc.outer_qualname = sc
            .outer
            .clone()
            .and_then(|o| annotate_line(src, &o))
            .map(|i| i.qualname);
        if let (Some(file), Some(func), Some(&line)) = (
            sc.callee_file.clone(),
            sc.callee_function.clone(),
            sc.callee_lines.first(),
        ) {
            sc.callee_qualname = src.info(&file, line, &func).map(|i| i.qualname);
        }
    }
    if let Some(o) = a.oom.as_mut() {
        if let Some(s) = &o.site {
            o.site_source = annotate_line(src, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_enclosing_class_and_def() {
        let src = "import x\n\nclass Block(nn.Module):\n    def __init__(self):\n        pass\n\n    def forward(self, x):\n        # c\n        if x:\n            y = 1\n        return x + self.mlp(x)\n\ndef run(b):\n    return b(1)\n";
        let lines: Vec<String> = src.lines().map(str::to_string).collect();
        assert_eq!(enclosing(&lines, 10), vec!["Block", "forward"]);
        assert_eq!(enclosing(&lines, 9), vec!["Block", "forward"]);
        assert_eq!(enclosing(&lines, 13), vec!["run"]);
        assert!(enclosing(&lines, 0).is_empty());
    }

    #[test]
    fn looks_up_by_suffix_and_checks_the_function() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gt")).unwrap();
        std::fs::write(
            dir.path().join("gt/m.py"),
            "class A:\n    def forward(self):\n        return 1\n",
        )
        .unwrap();
        let mut s = Sources::new(vec![dir.path().to_path_buf()], false);
        let i = s.info("/far/away/gt/m.py", 3, "forward").unwrap();
        assert_eq!(i.code, "return 1");
        assert_eq!(i.qualname, "A.forward");
        // Another function name at that line: a different version of the file, ignored.
        assert!(s.info("/far/away/gt/m.py", 3, "backward").is_none());
        assert!(s.info("/far/away/gt/other.py", 3, "forward").is_none());
    }
}
