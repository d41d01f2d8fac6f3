//! Where the Hugging Face `TrainingArguments` fields are written: a `TrainingArguments(...)`
//! call, or, for scripts that parse them with `HfArgumentParser`, the launch script's
//! `--field value` arguments or a JSON arguments file.
use tree_sitter::Node;

use super::datafile;
use super::edit::Cx;
use super::flow::{self, Site};
use super::project::Project;
use super::py;
use super::{Knob, Msg};

#[derive(Clone, Copy)]
pub enum HfArgs<'p> {
    /// A `TrainingArguments(...)` call in a Python file.
    Call(usize, Node<'p>),
    /// A launch script (index into `Project::other`).
    Shell(usize),
    /// A JSON arguments file (index into `Project::other`).
    Json(usize),
}

/// A shell word with its byte range; `cmd` numbers the command it belongs to.
#[derive(Clone, Debug)]
pub struct Tok {
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub cmd: usize,
}

/// Splits a shell script into words (quotes, backslash-newline continuations, comments). A
/// script with a quote that is never closed, which the shell itself refuses, has no words: its
/// command cannot be told apart from the text after it, so nothing in it is edited.
pub fn shell_tokens(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut cmd = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if b.get(i + 1) == Some(&b'\n') => i += 2,
            b'\n' | b';' => {
                cmd += 1;
                i += 1;
            }
            b'&' | b'|' => {
                cmd += 1;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {
                let start = i;
                let mut text = String::new();
                let mut quote: Option<u8> = None;
                while i < b.len() {
                    let c = b[i];
                    match quote {
                        Some(q) if c == q => {
                            quote = None;
                            i += 1;
                        }
                        Some(_) => {
                            text.push(c as char);
                            i += 1;
                        }
                        None if c == b'"' || c == b'\'' => {
                            quote = Some(c);
                            i += 1;
                        }
                        None if c.is_ascii_whitespace() || c == b';' || c == b'&' || c == b'|' => {
                            break
                        }
                        None => {
                            text.push(c as char);
                            i += 1;
                        }
                    }
                }
                if quote.is_some() {
                    return Vec::new();
                }
                // Multi-byte characters: take the exact text from the source.
                if !text.is_ascii() {
                    text = src[start..i].trim_matches(['"', '\'']).to_string();
                }
                out.push(Tok {
                    start,
                    end: i,
                    text,
                    cmd,
                });
            }
        }
    }
    out
}

/// Python literal -> the syntax of the file the value is written in.
fn for_shell(v: &str) -> String {
    v.trim_matches(['"', '\'']).to_string()
}

fn for_json(v: &str) -> String {
    match v {
        "True" => "true".into(),
        "False" => "false".into(),
        _ if v.starts_with('\'') => format!("\"{}\"", v.trim_matches('\'')),
        _ => v.to_string(),
    }
}

impl<'p> HfArgs<'p> {
    /// How reports name it: `TrainingArguments`, or `TrainingArguments (scripts/train.sh)`.
    pub fn label(&self, p: &Project) -> String {
        match *self {
            HfArgs::Call(fi, call) => py::last_name(&py::callee(&p.py[fi], call)).to_string(),
            HfArgs::Shell(oi) | HfArgs::Json(oi) => {
                format!("TrainingArguments ({})", p.other[oi].rel)
            }
        }
    }

    /// Where field `name` is set now (followed to its literal for a call).
    pub fn get(&self, p: &'p Project, name: &str) -> Option<Site> {
        match *self {
            HfArgs::Call(fi, call) => {
                py::kwarg_value(&p.py[fi], call, name).and_then(|v| flow::resolve(p, fi, v))
            }
            HfArgs::Shell(oi) => {
                let o = &p.other[oi];
                let toks = shell_tokens(&o.src);
                let flag = format!("--{name}");
                let line = |b: usize| o.src[..b].matches('\n').count() + 1;
                for (i, t) in toks.iter().enumerate() {
                    if let Some(v) = t.text.strip_prefix(&format!("{flag}=")) {
                        let start = t.start + flag.len() + 1;
                        return Some(Site {
                            file: o.rel.clone(),
                            start,
                            end: t.end,
                            value: v.to_string(),
                            line: line(start),
                            via: vec![],
                            others: vec![],
                        });
                    }
                    if t.text == flag {
                        return match toks.get(i + 1) {
                            Some(n) if n.cmd == t.cmd && !n.text.starts_with("--") => Some(Site {
                                file: o.rel.clone(),
                                start: n.start,
                                end: n.end,
                                value: n.text.clone(),
                                line: line(n.start),
                                via: vec![],
                                others: vec![],
                            }),
                            // A bare `--bf16` means True.
                            _ => Some(Site {
                                file: o.rel.clone(),
                                start: t.end,
                                end: t.end,
                                value: String::new(),
                                line: line(t.start),
                                via: vec![],
                                others: vec![],
                            }),
                        };
                    }
                }
                None
            }
            HfArgs::Json(oi) => {
                let o = &p.other[oi];
                datafile::json_scalars(&o.src)?
                    .into_iter()
                    .find(|k| k.path.len() == 1 && k.path[0] == name)
                    .map(|k| Site {
                        file: o.rel.clone(),
                        line: o.src[..k.start].matches('\n').count() + 1,
                        start: k.start,
                        end: k.end,
                        value: k.value,
                        via: vec![],
                        others: vec![],
                    })
            }
        }
    }

    /// `file:line` of field `name` when it is written.
    pub fn loc(&self, p: &'p Project, name: &str) -> Option<String> {
        match *self {
            HfArgs::Call(fi, call) => {
                let f = &p.py[fi];
                py::kwarg(f, call, name).map(|k| format!("{}:{}", f.rel, f.line_of(k.start_byte())))
            }
            _ => self.get(p, name).map(|s| format!("{}:{}", s.file, s.line)),
        }
    }

    /// Current boolean value of a field (None: not written or not a literal).
    pub fn get_bool(&self, p: &'p Project, name: &str) -> Option<bool> {
        let s = self.get(p, name)?;
        if s.value.is_empty() && matches!(self, HfArgs::Shell(_)) {
            return Some(true);
        }
        match s
            .value
            .trim_matches(['"', '\''])
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        }
    }

    /// Sets field `name` to `value` (a Python literal), inserting it where it is not written.
    pub fn set(&self, cx: &mut Cx, name: &str, value: &str, knob: Knob, why: Msg) {
        match *self {
            HfArgs::Call(fi, call) => {
                cx.set_kwarg(fi, call, name, value, knob, why);
            }
            HfArgs::Shell(oi) => {
                let p = cx.p;
                let o = &p.other[oi];
                let v = for_shell(value);
                match self.get(p, name) {
                    Some(s) if s.value.is_empty() => {
                        // A bare flag gets its value by rewriting the flag's word, not by an
                        // insertion after it: flags appended to the command (when the bare flag
                        // is its last word) are insertions at that same point, and must follow.
                        let word = shell_tokens(&o.src)
                            .into_iter()
                            .find(|t| t.end == s.start && t.text == format!("--{name}"));
                        if let (Some(t), false) = (word, v == "True") {
                            let text = format!("{} {v}", &o.src[t.start..t.end]);
                            cx.edit(&s.file, t.start, t.end, text, knob, Some(why));
                        }
                    }
                    Some(s) => {
                        if s.value != v {
                            cx.edit(&s.file, s.start, s.end, v, knob, Some(why));
                        }
                    }
                    None => {
                        let toks = shell_tokens(&o.src);
                        let Some(script) = toks.iter().find(|t| t.text.ends_with(".py")) else {
                            return;
                        };
                        let Some(last) = toks.iter().rfind(|t| t.cmd == script.cmd) else {
                            return;
                        };
                        let line_start =
                            o.src[..last.start].rfind('\n').map(|i| i + 1).unwrap_or(0);
                        let indent: String = o.src[line_start..]
                            .chars()
                            .take_while(|c| *c == ' ' || *c == '\t')
                            .collect();
                        let multiline = o.src[script.start..last.end].contains("\\\n");
                        let rel = o.rel.clone();
                        if last.text == "$@" || last.text == "$*" {
                            let text = if multiline {
                                format!("\\\n{indent}--{name} {v} ")
                            } else {
                                format!("--{name} {v} ")
                            };
                            cx.edit(&rel, last.start, last.start, text, knob, Some(why));
                        } else {
                            let text = if multiline {
                                format!(" \\\n{indent}--{name} {v}")
                            } else {
                                format!(" --{name} {v}")
                            };
                            cx.edit(&rel, last.end, last.end, text, knob, Some(why));
                        }
                    }
                }
            }
            HfArgs::Json(oi) => {
                let p = cx.p;
                let o = &p.other[oi];
                let v = for_json(value);
                match self.get(p, name) {
                    Some(s) => {
                        if s.value != v {
                            cx.edit(&s.file, s.start, s.end, v, knob, Some(why));
                        }
                    }
                    None => {
                        let Some((end, any)) = datafile::json_object_end(&o.src, &[]) else {
                            return;
                        };
                        let pos = o.src[..end].trim_end().len();
                        let indent = o
                            .src
                            .lines()
                            .find(|l| l.trim_start().starts_with('"'))
                            .map(|l| l[..l.len() - l.trim_start().len()].to_string())
                            .unwrap_or_else(|| "  ".into());
                        let comma = if any { "," } else { "" };
                        let rel = o.rel.clone();
                        cx.edit(
                            &rel,
                            pos,
                            pos,
                            format!("{comma}\n{indent}\"{name}\": {v}"),
                            knob,
                            Some(why),
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unclosed_quote_leaves_no_words() {
        assert!(shell_tokens("torchrun run.py --output_dir 'out\n--fp16\n").is_empty());
        assert_eq!(
            shell_tokens("torchrun run.py --output_dir 'out'\n").len(),
            4
        );
    }

    #[test]
    fn shell_words() {
        let src = "#!/bin/bash\n# comment --x 1\ntorchrun run.py \\\n    --output_dir 'out dir' \\\n    --bf16 --lr=3e-4 \"$@\"\necho done\n";
        let t = shell_tokens(src);
        let texts: Vec<&str> = t.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "torchrun",
                "run.py",
                "--output_dir",
                "out dir",
                "--bf16",
                "--lr=3e-4",
                "$@",
                "echo",
                "done"
            ]
        );
        assert_eq!(t[0].cmd, t[6].cmd);
        assert_ne!(t[6].cmd, t[7].cmd);
        assert_eq!(&src[t[3].start..t[3].end], "'out dir'");
    }
}
