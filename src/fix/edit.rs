//! Collecting edits (byte-range replacements), turning them into per-file diffs with the
//! explanation of each hunk, and the edits shared by all set-ups (allocator setting,
//! learning-rate note, bf16 check).
use std::collections::BTreeMap;

use similar::TextDiff;
use tree_sitter::Node;

use super::flow::Site;
use super::project::{OtherKind, Project};
use super::py::{self, PyFile};
use super::trainers::Setup;
use super::{Change, FilePatch, Framework, Hunk, Knob, Msg, Note, Target, M};
use crate::error::{Error, Result};
use crate::knobs::Precision;

/// A replacement of `file[start..end]` by `text` (an insertion when `start == end`).
#[derive(Clone, Debug)]
pub struct Edit {
    pub file: String,
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub knob: Knob,
    pub why: Option<Msg>,
}

/// The effective batch before the change, and where the learning rate is set.
#[derive(Default)]
pub struct EffBatch {
    pub old_batch: Option<u64>,
    pub old_accum: Option<u64>,
    pub lr: Option<Site>,
}

pub struct Cx<'p> {
    pub p: &'p Project,
    pub t: Target,
    pub edits: Vec<Edit>,
    pub notes: Vec<Note>,
    pub frameworks: Vec<Framework>,
    pub eff: EffBatch,
}

impl<'p> Cx<'p> {
    pub fn new(p: &'p Project, t: Target) -> Cx<'p> {
        Cx {
            p,
            t,
            edits: vec![],
            notes: vec![],
            frameworks: vec![],
            eff: EffBatch::default(),
        }
    }

    pub fn edit(
        &mut self,
        file: &str,
        start: usize,
        end: usize,
        text: impl Into<String>,
        knob: Knob,
        why: Option<Msg>,
    ) {
        self.edits.push(Edit {
            file: file.to_string(),
            start,
            end,
            text: text.into(),
            knob,
            why,
        });
    }

    pub fn note(&mut self, knob: Knob, id: M, args: &[&dyn std::fmt::Display]) {
        let msg = Msg::new(id, args);
        if !self.notes.iter().any(|n| n.knob == knob && n.msg == msg) {
            self.notes.push(Note { knob, msg });
        }
    }

    /// The bf16 check: bf16 asked for a GPU without it becomes fp16 (with a note).
    pub fn check_bf16(&mut self) {
        let Some(prec) = self.t.precision else { return };
        if !matches!(prec, Precision::Bf16Mixed | Precision::Bf16True) {
            return;
        }
        match (self.t.bf16_supported, self.t.gpu.clone()) {
            (Some(false), Some(gpu)) => {
                let to = if prec == Precision::Bf16Mixed {
                    Precision::Fp16Mixed
                } else {
                    Precision::Fp16True
                };
                self.t.precision = Some(to);
                self.note(
                    Knob::Precision,
                    M::NoBf16,
                    &[&gpu, &prec.name(), &to.name()],
                );
            }
            (None, _) => self.note(Knob::Precision, M::Bf16Unchecked, &[]),
            _ => {}
        }
    }

    /// Replaces the value at `site` by `value` (a Python or config literal), explained by `why`.
    pub fn set_site(&mut self, site: &Site, value: &str, knob: Knob, why: Msg) {
        if site.value == value {
            return;
        }
        self.edit(&site.file, site.start, site.end, value, knob, Some(why));
    }

    /// Sets keyword `name` of `call` to `value`: replaces the literal in place, follows a
    /// non-literal value to where it is set, or inserts the keyword.
    /// Returns the site that was (or would be) edited, or None when a keyword was inserted.
    pub fn set_kwarg(
        &mut self,
        fi: usize,
        call: Node,
        name: &str,
        value: &str,
        knob: Knob,
        why: Msg,
    ) -> Option<Site> {
        let f = &self.p.py[fi];
        if let Some(v) = py::kwarg_value(f, call, name) {
            match super::flow::resolve(self.p, fi, v) {
                Some(site) => {
                    let value = literal_for(&site, value);
                    self.set_site(&site, &value, knob, why);
                    return Some(site);
                }
                None => {
                    // Cannot follow: replace the expression itself, and say what it was.
                    let old = f.text(v).to_string();
                    let line = f.line_of(v.start_byte());
                    let rel = f.rel.clone();
                    self.edit(&rel, v.start_byte(), v.end_byte(), value, knob, Some(why));
                    self.note(
                        knob,
                        M::ReplacedExpr,
                        &[&format!("{rel}:{line}"), &old, &value],
                    );
                    return None;
                }
            }
        }
        self.insert_kwarg(fi, call, &format!("{name}={value}"), knob, Some(why));
        None
    }

    /// Inserts `text` (e.g. `fused=True`) as the last argument of `call`, in the call's layout.
    pub fn insert_kwarg(
        &mut self,
        fi: usize,
        call: Node,
        text: &str,
        knob: Knob,
        why: Option<Msg>,
    ) {
        self.insert_kwarg_skipping(fi, call, text, knob, why, &[]);
    }

    /// `insert_kwarg`, placed after the last argument not in `skip` (arguments being removed).
    pub fn insert_kwarg_skipping(
        &mut self,
        fi: usize,
        call: Node,
        text: &str,
        knob: Knob,
        why: Option<Msg>,
        skip: &[Node],
    ) {
        let f = &self.p.py[fi];
        let Some(args) = call.child_by_field_name("arguments") else {
            return;
        };
        let rel = f.rel.clone();
        let items: Vec<Node> = py::named_children(args)
            .into_iter()
            .filter(|c| c.kind() != "comment" && !skip.contains(c))
            .collect();
        if let Some(splat) = items.iter().find(|c| c.kind() == "dictionary_splat") {
            let at = format!("{rel}:{}", f.line_of(splat.start_byte()));
            let name = text.split('=').next().unwrap_or(text).to_string();
            let splat_text = f.text(*splat).to_string();
            self.note(knob, M::SplatKwargs, &[&at, &name, &splat_text]);
        }
        let Some(last) = items.last().copied() else {
            // An empty call: a second keyword inserted there follows the first.
            let at = args.start_byte() + 1;
            let sep = if self
                .edits
                .iter()
                .any(|e| e.file == rel && e.start == at && e.end == at)
            {
                ", "
            } else {
                ""
            };
            self.edit(&rel, at, at, format!("{sep}{text}"), knob, why);
            return;
        };
        let multiline = f.line_of(args.start_byte()) != f.line_of(last.start_byte())
            && f.starts_line(last.start_byte());
        // A comma after the last argument?
        let after = &f.src[last.end_byte()..args.end_byte()];
        let trailing_comma = after.trim_start().starts_with(',');
        if multiline {
            let indent = f.indent_at(last.start_byte()).to_string();
            if trailing_comma {
                let comma = last.end_byte() + after.find(',').unwrap_or(0) + 1;
                // After a comment that follows the comma on its line, but before anything
                // else there (`last=1,)` closes the call on the same line).
                let eol = f.src[comma..].find('\n').map_or(f.src.len(), |i| comma + i);
                let rest = f.src[comma..eol].trim_start();
                let at = if rest.is_empty() || rest.starts_with('#') {
                    eol
                } else {
                    comma
                };
                self.edit(&rel, at, at, format!("\n{indent}{text},"), knob, why);
            } else {
                self.edit(
                    &rel,
                    last.end_byte(),
                    last.end_byte(),
                    format!(",\n{indent}{text}"),
                    knob,
                    why,
                );
            }
        } else {
            self.edit(
                &rel,
                last.end_byte(),
                last.end_byte(),
                format!(", {text}"),
                knob,
                why,
            );
        }
    }

    /// Removes arguments from a call: whole lines where each sits on its own line, else the
    /// argument list is rewritten as the kept arguments joined by `, `.
    pub fn remove_args(&mut self, fi: usize, call: Node, remove: &[Node], knob: Knob) {
        if remove.is_empty() {
            return;
        }
        let f = &self.p.py[fi];
        let rel = f.rel.clone();
        let Some(args) = call.child_by_field_name("arguments") else {
            return;
        };
        let items: Vec<Node> = py::named_children(args)
            .into_iter()
            .filter(|c| c.kind() != "comment")
            .collect();
        let own_line = |n: &Node| {
            let rest = &f.src[n.end_byte()..];
            let rest = rest.trim_start_matches([' ', '\t']);
            let rest = rest
                .strip_prefix(',')
                .unwrap_or(rest)
                .trim_start_matches([' ', '\t']);
            f.starts_line(n.start_byte()) && (rest.starts_with('\n') || rest.starts_with('#'))
        };
        if remove.iter().all(own_line) {
            for n in remove {
                let s0 = f.line_start(n.start_byte());
                let e0 = f.line_end_incl(n.end_byte());
                self.edit(&rel, s0, e0, "", knob, None);
            }
            return;
        }
        let (Some(first), Some(last)) = (items.first(), items.last()) else {
            return;
        };
        let kept: Vec<&str> = items
            .iter()
            .filter(|n| !remove.contains(n))
            .map(|n| f.text(*n))
            .collect();
        self.edit(
            &rel,
            first.start_byte(),
            last.end_byte(),
            kept.join(", "),
            knob,
            None,
        );
    }

    /// Adds `import_line` after the last top-level import of `fi` unless the file already has it.
    pub fn ensure_import(&mut self, fi: usize, import_line: &str, knob: Knob) {
        let f = &self.p.py[fi];
        if f.src.lines().any(|l| l.trim() == import_line) {
            return;
        }
        let rel = f.rel.clone();
        let at = py::import_insert_point(f);
        let already = self
            .edits
            .iter()
            .any(|e| e.file == rel && e.start == at && e.text.contains(import_line));
        if !already {
            let why = Msg::new(M::ImportAdded, &[&import_line]);
            self.edit(&rel, at, at, format!("{import_line}\n"), knob, Some(why));
        }
    }

    /// The learning-rate rule when the effective batch changes.
    pub fn learning_rate_note(&mut self, _setup: &Setup) {
        let (Some(ob), oa) = (self.eff.old_batch, self.eff.old_accum.unwrap_or(1)) else {
            return;
        };
        let nb = self.t.batch.unwrap_or(ob);
        let na = self.t.grad_accum.unwrap_or(oa);
        let (old, new) = (ob * oa, nb * na);
        if old == new {
            if self.t.batch.is_some() || self.t.grad_accum.is_some() {
                self.note(Knob::LearningRate, M::LrSame, &[&new]);
            }
            return;
        }
        match self.eff.lr.clone() {
            Some(lr) => {
                let where_ = format!("{}:{}", lr.file, lr.line);
                match lr.float() {
                    Some(v) => {
                        let scaled = v * new as f64 / old as f64;
                        self.note(
                            Knob::LearningRate,
                            M::LrScale,
                            &[&old, &new, &where_, &lr.value, &format!("{scaled:.3e}")],
                        );
                    }
                    None => self.note(
                        Knob::LearningRate,
                        M::LrScale,
                        &[
                            &old,
                            &new,
                            &where_,
                            &lr.value,
                            &format!("{} * {new} / {old}", lr.value),
                        ],
                    ),
                }
            }
            None => self.note(Knob::LearningRate, M::LrScaleUnknown, &[&old, &new]),
        }
    }

    /// Applies the edits: per file the new text, its diff and explained hunks; notes.
    pub fn finish(mut self) -> Result<(Vec<FilePatch>, Vec<Note>, Vec<Framework>)> {
        let mut by_file: BTreeMap<String, Vec<(usize, Edit)>> = BTreeMap::new();
        for (i, e) in std::mem::take(&mut self.edits).into_iter().enumerate() {
            by_file.entry(e.file.clone()).or_default().push((i, e));
        }
        let mut files = Vec::new();
        for (rel, mut edits) in by_file {
            let original = self
                .source(&rel)
                .ok_or_else(|| {
                    Error::input(format!("{rel}: internal error: edit of an unknown file"))
                })?
                .to_string();
            edits.sort_by_key(|(i, e)| (e.start, e.end, *i));
            // Drop exact duplicates and overlaps (the first edit wins).
            let mut kept: Vec<Edit> = Vec::new();
            let crlf = original.contains("\r\n");
            for (_, mut e) in edits {
                if crlf {
                    // Keep the file's line endings in inserted text.
                    e.text = e.text.replace("\r\n", "\n").replace('\n', "\r\n");
                }
                if let Some(prev) = kept.last() {
                    if prev.start == e.start && prev.end == e.end && prev.text == e.text {
                        continue;
                    }
                    if e.start < prev.end {
                        self.notes.push(Note {
                            knob: e.knob,
                            msg: Msg::new(
                                M::Overlap,
                                &[&format!("{rel}:{}", line_of(&original, e.start))],
                            ),
                        });
                        continue;
                    }
                }
                kept.push(e);
            }
            if let Some(e) = kept.iter_mut().find(|e| e.start == original.len()) {
                if needs_line_break(&original, e.start, &e.text) {
                    e.text.insert_str(0, if crlf { "\r\n" } else { "\n" });
                }
            }
            let mut new = String::with_capacity(original.len() + 256);
            let mut pos = 0;
            for e in &kept {
                new.push_str(&original[pos..e.start]);
                new.push_str(&e.text);
                pos = e.end;
            }
            new.push_str(&original[pos..]);
            if new == original {
                continue;
            }
            if rel.ends_with(".py") {
                if let Err((line, _)) = py::parse(&new) {
                    return Err(Error::input(format!(
                        "{rel}: the edit would not parse (new line {line}); nothing was changed. Please report this with the file"
                    )));
                }
            }
            files.push(file_patch(&rel, original, new, &kept));
        }
        // Notes in knob order, stable.
        self.notes.sort_by_key(|n| n.knob);
        Ok((files, self.notes, self.frameworks))
    }

    fn source(&self, rel: &str) -> Option<&str> {
        self.p
            .py
            .iter()
            .find(|f| f.rel == rel)
            .map(|f| f.src.as_str())
            .or_else(|| {
                self.p
                    .other
                    .iter()
                    .find(|o| o.rel == rel)
                    .map(|o| o.src.as_str())
            })
    }
}

fn line_of(src: &str, byte: usize) -> usize {
    src[..byte.min(src.len())].matches('\n').count() + 1
}

/// `value` written in the site's own syntax: quotes kept for strings, `true`/`false` outside Python.
pub fn literal_for(site: &Site, value: &str) -> String {
    let py = site.file.ends_with(".py");
    let v = site.value.trim();
    let quoted = |q: char| format!("{q}{}{q}", value.trim_matches(['"', '\'']));
    if v.starts_with('"') {
        return quoted('"');
    }
    if v.starts_with('\'') {
        return quoted('\'');
    }
    match (py, value) {
        (false, "True") => "true".into(),
        (false, "False") => "false".into(),
        _ => value.to_string(),
    }
}

fn file_patch(rel: &str, original: String, new: String, edits: &[Edit]) -> FilePatch {
    let diff = TextDiff::from_lines(&original, &new);
    let mut ud = diff.unified_diff();
    ud.context_radius(3)
        .header(&format!("a/{rel}"), &format!("b/{rel}"));
    let whole = ud.to_string();
    // Explanations attach to the hunk whose old line range holds the edit's start.
    let mut used = vec![false; edits.len()];
    let mut hunks = Vec::new();
    for h in ud.iter_hunks() {
        let ops = h.ops();
        let (Some(first), Some(last)) = (ops.first(), ops.last()) else {
            continue;
        };
        let lo = first.old_range().start; // 0-based line
        let hi = last.old_range().end;
        let mut changes = Vec::new();
        for (i, e) in edits.iter().enumerate() {
            let l0 = line_of(&original, e.start) - 1;
            if !used[i] && l0 >= lo && l0 <= hi {
                used[i] = true;
                if let Some(why) = &e.why {
                    changes.push(Change {
                        knob: e.knob,
                        line: l0 + 1,
                        why: why.clone(),
                    });
                }
            }
        }
        hunks.push(Hunk {
            text: h.to_string(),
            changes,
        });
    }
    FilePatch {
        path: rel.to_string(),
        diff: whole,
        hunks,
        original,
        new,
    }
}

/// `--alloc-conf`: the launch script's environment, else the README, else the entry script.
pub fn alloc_conf(cx: &mut Cx, setup: &Setup) {
    let Some(conf) = cx.t.alloc_conf.clone() else {
        return;
    };
    let line = format!("export PYTORCH_CUDA_ALLOC_CONF={conf}");
    // A shell script that launches Python.
    let script = cx.p.other.iter().find(|o| {
        o.kind == OtherKind::Shell
            && o.src.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with('#')
                    && (l.contains("python")
                        || l.contains("torchrun")
                        || l.contains("accelerate launch")
                        || l.contains("deepspeed"))
            })
    });
    if let Some(s) = script {
        let rel = s.rel.clone();
        if set_shell_value(cx, &rel, &s.src, &conf, |v| {
            Msg::new(M::AllocScriptExisting, &[&v])
        }) {
            return;
        }
        // After the shebang and leading comments / `set` lines.
        let mut at = 0;
        for l in s.src.split_inclusive('\n') {
            let t = l.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with("set ") {
                at += l.len();
            } else {
                break;
            }
        }
        cx.edit(
            &rel,
            at,
            at,
            format!("{line}\n"),
            Knob::AllocConf,
            Some(Msg::new(M::AllocScript, &[&rel])),
        );
        return;
    }
    if let Some(r) = cx.p.other.iter().find(|o| o.kind == OtherKind::Readme) {
        let rel = r.rel.clone();
        // Already documented (by an earlier run, say): the value is updated in place.
        if set_shell_value(cx, &rel, &r.src, &conf, |v| {
            Msg::new(M::AllocExisting, &[&rel, &v])
        }) {
            return;
        }
        let end = r.src.len();
        let sep = if r.src.ends_with('\n') { "\n" } else { "\n\n" };
        let text = format!("{sep}## GPU memory\n\nSet the allocator to reduce fragmentation before training:\n\n```bash\n{line}\n```\n");
        cx.edit(
            &rel,
            end,
            end,
            text,
            Knob::AllocConf,
            Some(Msg::new(M::AllocReadme, &[])),
        );
        return;
    }
    // The entry script: before torch is imported.
    if let Some(fi) = setup.entry_file() {
        let f: &PyFile = &cx.p.py[fi];
        let rel = f.rel.clone();
        // Already set in the script (by an earlier run, say): a literal value is updated in
        // place; one computed at run time is left to the user.
        match python_setting(f) {
            Some(Ok(value)) => {
                let (start, end) = (value.start_byte(), value.end_byte());
                let val = f.text(value).to_string();
                cx.edit(
                    &rel,
                    start,
                    end,
                    format!("\"{conf}\""),
                    Knob::AllocConf,
                    Some(Msg::new(M::AllocExisting, &[&rel, &val])),
                );
                return;
            }
            Some(Err(at)) => {
                let line = format!("{rel}:{}", f.line_of(at.start_byte()));
                cx.note(Knob::AllocConf, M::AllocComputed, &[&line, &conf]);
                return;
            }
            None => {}
        }
        let imps = py::imports(f);
        let set = format!("os.environ.setdefault(\"PYTORCH_CUDA_ALLOC_CONF\", \"{conf}\")  # before torch starts CUDA\n");
        // After an `import os` that comes before torch, else `import os` first.
        let os_import = imps
            .iter()
            .take_while(|i| !f.text(**i).contains("torch") && !f.text(**i).contains("lightning"))
            .find(|i| f.text(**i).trim() == "import os");
        let (at, text) = match os_import {
            Some(i) => (f.line_end_incl(i.end_byte()), set),
            None => (
                imps.first()
                    .map(|n| f.line_start(n.start_byte()))
                    .unwrap_or(0),
                format!("import os\n\n{set}\n"),
            ),
        };
        cx.edit(
            &rel,
            at,
            at,
            text,
            Knob::AllocConf,
            Some(Msg::new(M::AllocEntry, &[&rel])),
        );
    }
}

/// Whether whole lines (`text`) inserted into `src` at `pos` need a line break first: at the end
/// of a file without a final newline they would join its last line. `Cx::finish` adds it to the
/// first such insertion.
pub fn needs_line_break(src: &str, pos: usize, text: &str) -> bool {
    pos == src.len()
        && !src.is_empty()
        && !src.ends_with('\n')
        && text.ends_with('\n')
        && !text.starts_with(['\n', '\r'])
}

/// Sets the value of `PYTORCH_CUDA_ALLOC_CONF=VALUE` (a shell line or a README's code block) in
/// file `rel` to `conf`, explained by `why(old value)`; false when the text has none.
fn set_shell_value(
    cx: &mut Cx,
    rel: &str,
    src: &str,
    conf: &str,
    why: impl FnOnce(&str) -> Msg,
) -> bool {
    const KEY: &str = "PYTORCH_CUDA_ALLOC_CONF=";
    let Some(start) = src.find(KEY).map(|i| i + KEY.len()) else {
        return false;
    };
    let end = src[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(src.len(), |i| start + i);
    let why = why(&src[start..end]);
    cx.edit(rel, start, end, conf, Knob::AllocConf, Some(why));
    true
}

/// Where a Python file sets `PYTORCH_CUDA_ALLOC_CONF` through `os.environ`: `Ok(value)` when the
/// value is a string literal, `Err(statement)` when it is computed.
fn python_setting<'t>(f: &'t PyFile) -> Option<std::result::Result<Node<'t>, Node<'t>>> {
    for n in f.all_nodes() {
        if py::string_value(f, n).as_deref() != Some("PYTORCH_CUDA_ALLOC_CONF") {
            continue;
        }
        let Some(parent) = n.parent() else { continue };
        let value = match parent.kind() {
            // os.environ.setdefault("…", v) / os.putenv("…", v)
            "argument_list" => {
                let Some(call) = parent.parent() else {
                    continue;
                };
                let name = py::callee(f, call);
                if !(name.ends_with("environ.setdefault") || name.ends_with("putenv")) {
                    continue;
                }
                let args = py::positional(call);
                if args.first() != Some(&n) {
                    continue;
                }
                args.get(1).copied()
            }
            // os.environ["…"] = v
            "subscript" => {
                let Some(assign) = parent.parent().filter(|a| a.kind() == "assignment") else {
                    continue;
                };
                if assign.child_by_field_name("left") != Some(parent) {
                    continue;
                }
                assign.child_by_field_name("right")
            }
            _ => continue,
        };
        let stmt = py::statement_of(n).unwrap_or(n);
        return Some(match value {
            Some(v) if v.kind() == "string" && py::string_value(f, v).is_some() => Ok(v),
            _ => Err(stmt),
        });
    }
    None
}
