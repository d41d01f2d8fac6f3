//! Scalar settings in YAML, JSON and TOML files, with the byte range of each value so that an
//! edit replaces the value alone and keeps comments and layout. Only block-style YAML mappings,
//! JSON objects and TOML `key = value` lines (with `[table]` headers) are read: the shapes that
//! training configs use.

/// A scalar value at a key path.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySite {
    /// Key path from the document root, e.g. `["bf16", "enabled"]`.
    pub path: Vec<String>,
    pub start: usize,
    pub end: usize,
    pub value: String,
}

impl KeySite {
    pub fn key(&self) -> &str {
        self.path.last().map(String::as_str).unwrap_or("")
    }
}

/// Every scalar `key: value` of a block-style YAML document.
pub fn yaml_scalars(src: &str) -> Vec<KeySite> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new(); // (indent, key)
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = body.len() - trimmed.len();
        if trimmed.starts_with("- ") {
            continue;
        }
        let Some(colon) = find_yaml_colon(trimmed) else {
            continue;
        };
        let key = trimmed[..colon]
            .trim()
            .trim_matches(['"', '\''])
            .to_string();
        while stack.last().map(|(i, _)| *i >= indent).unwrap_or(false) {
            stack.pop();
        }
        let rest = &trimmed[colon + 1..];
        let value_part = strip_comment(rest);
        let v = value_part.trim();
        let mut path: Vec<String> = stack.iter().map(|(_, k)| k.clone()).collect();
        path.push(key.clone());
        if v.is_empty() {
            stack.push((indent, key));
            continue;
        }
        if v.starts_with(['{', '[', '|', '>', '&', '*']) {
            continue;
        }
        let lead = rest.len() - rest.trim_start().len();
        let vstart = start + indent + colon + 1 + lead;
        out.push(KeySite {
            path,
            start: vstart,
            end: vstart + v.len(),
            value: v.to_string(),
        });
    }
    out
}

fn find_yaml_colon(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ':') => {
                let next = s[i + 1..].chars().next();
                if next.is_none() || next == Some(' ') || next == Some('\t') {
                    return Some(i);
                }
            }
            (None, '#') => return None,
            _ => {}
        }
    }
    None
}

fn strip_comment(s: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &s[..i],
            _ => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    s
}

/// Every scalar `key = value` of a TOML document, with `[table]` prefixes in the path.
pub fn toml_scalars(src: &str) -> Vec<KeySite> {
    let mut out = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start();
        if trimmed.starts_with('[') {
            let name = trimmed.trim_matches(['[', ']', ' ']);
            table = name
                .split('.')
                .map(|s| s.trim().trim_matches('"').to_string())
                .collect();
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some(eq) = trimmed.find('=') else {
            continue;
        };
        let key = trimmed[..eq].trim().trim_matches('"').to_string();
        let rest = &trimmed[eq + 1..];
        let v = strip_comment(rest).trim();
        if v.is_empty() || v.starts_with(['{', '[']) {
            continue;
        }
        let indent = body.len() - trimmed.len();
        let lead = rest.len() - rest.trim_start().len();
        let vstart = start + indent + eq + 1 + lead;
        let mut path = table.clone();
        path.extend(key.split('.').map(|s| s.trim().to_string()));
        out.push(KeySite {
            path,
            start: vstart,
            end: vstart + v.len(),
            value: v.to_string(),
        });
    }
    out
}

/// Every scalar member of a JSON document; `None` when it is not valid JSON.
pub fn json_scalars(src: &str) -> Option<Vec<KeySite>> {
    serde_json::from_str::<serde_json::Value>(src).ok()?;
    let mut p = JsonScan {
        s: src.as_bytes(),
        i: 0,
        out: Vec::new(),
    };
    p.value(&mut Vec::new())?;
    Some(p.out)
}

/// Byte offset of the closing brace of the object at `path` in a JSON document (for inserting
/// a member), and whether that object has members.
pub fn json_object_end(src: &str, path: &[String]) -> Option<(usize, bool)> {
    let mut p = JsonScan {
        s: src.as_bytes(),
        i: 0,
        out: Vec::new(),
    };
    let mut ends = Vec::new();
    p.value_with_ends(&mut Vec::new(), &mut ends)?;
    ends.into_iter()
        .find(|(p, _, _)| p == path)
        .map(|(_, e, n)| (e, n))
}

struct JsonScan<'a> {
    s: &'a [u8],
    i: usize,
    out: Vec<KeySite>,
}

type ObjEnds = Vec<(Vec<String>, usize, bool)>;

impl JsonScan<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i;
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    let raw = std::str::from_utf8(&self.s[start..self.i]).ok()?;
                    return serde_json::from_str(raw).ok();
                }
                _ => self.i += 1,
            }
        }
        None
    }
    fn value(&mut self, path: &mut Vec<String>) -> Option<()> {
        let mut ends = Vec::new();
        self.value_with_ends(path, &mut ends)
    }
    fn value_with_ends(&mut self, path: &mut Vec<String>, ends: &mut ObjEnds) -> Option<()> {
        self.ws();
        match self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut any = false;
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        ends.push((path.clone(), self.i, any));
                        self.i += 1;
                        return Some(());
                    }
                    let key = self.string()?;
                    self.ws();
                    if self.s.get(self.i) != Some(&b':') {
                        return None;
                    }
                    self.i += 1;
                    path.push(key);
                    self.value_with_ends(path, ends)?;
                    path.pop();
                    any = true;
                    self.ws();
                    if self.s.get(self.i) == Some(&b',') {
                        self.i += 1;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut n = 0;
                loop {
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Some(());
                    }
                    path.push(format!("[{n}]"));
                    self.value_with_ends(path, ends)?;
                    path.pop();
                    n += 1;
                    self.ws();
                    if self.s.get(self.i) == Some(&b',') {
                        self.i += 1;
                    }
                }
            }
            b'"' => {
                let start = self.i;
                self.string()?;
                self.push(path, start);
                Some(())
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(self.s[self.i], b',' | b'}' | b']')
                    && !self.s[self.i].is_ascii_whitespace()
                {
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
                self.push(path, start);
                Some(())
            }
        }
    }
    fn push(&mut self, path: &[String], start: usize) {
        let value = String::from_utf8_lossy(&self.s[start..self.i]).to_string();
        self.out.push(KeySite {
            path: path.to_vec(),
            start,
            end: self.i,
            value,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keys_with_paths_and_comments() {
        let src = "model:\n  dim: 384  # width\ntrain:\n  batch_size: 16\n  lr: 1.0e-4\n";
        let s = yaml_scalars(src);
        let b = s.iter().find(|k| k.key() == "batch_size").unwrap();
        assert_eq!(b.path, vec!["train", "batch_size"]);
        assert_eq!(&src[b.start..b.end], "16");
        let d = s.iter().find(|k| k.key() == "dim").unwrap();
        assert_eq!(&src[d.start..d.end], "384");
    }

    #[test]
    fn toml_keys() {
        let src = "[train]\nbatch_size = 16 # per GPU\n";
        let s = toml_scalars(src);
        assert_eq!(s[0].path, vec!["train", "batch_size"]);
        assert_eq!(&src[s[0].start..s[0].end], "16");
    }

    #[test]
    fn json_keys_and_object_end() {
        let src =
            "{\n  \"bf16\": {\"enabled\": false},\n  \"train_micro_batch_size_per_gpu\": 16\n}\n";
        let s = json_scalars(src).unwrap();
        let e = s.iter().find(|k| k.path == ["bf16", "enabled"]).unwrap();
        assert_eq!(&src[e.start..e.end], "false");
        let (end, any) = json_object_end(src, &[]).unwrap();
        assert_eq!(&src[end..end + 1], "}");
        assert!(any);
        assert!(json_scalars("{").is_none());
    }
}
