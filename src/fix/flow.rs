//! Following a value to where it is really set: a literal in place, a local or module variable,
//! a function or constructor parameter (its call sites first, then its default), an attribute
//! of `self`, or a setting in a config module or file (`cfg.batch_size`, `config.il.batch_size`,
//! `args.batch_size` from argparse, `cfg["batch_size"]` from YAML/JSON/TOML).
use tree_sitter::Node;

use super::datafile;
use super::project::{OtherKind, Project};
use super::py::{self, PyFile};

/// Where a value is written, as an editable byte range.
#[derive(Clone, Debug)]
pub struct Site {
    /// Project-relative file.
    pub file: String,
    pub start: usize,
    pub end: usize,
    /// The value's current text.
    pub value: String,
    /// 1-based line.
    pub line: usize,
    /// How it was reached, e.g. `config.il.batch_size -> navdp_configs.py:14`.
    pub via: Vec<String>,
    /// Other places that define the same key (not edited).
    pub others: Vec<String>,
}

impl Site {
    pub fn int(&self) -> Option<u64> {
        self.value.replace('_', "").parse().ok()
    }
    pub fn bool(&self) -> Option<bool> {
        match self.value.as_str() {
            "True" | "true" => Some(true),
            "False" | "false" => Some(false),
            _ => None,
        }
    }
    pub fn float(&self) -> Option<f64> {
        self.value.trim_matches(['"', '\'']).parse().ok()
    }
    /// True when the value sits in the file `file` itself, at the expression that was followed.
    pub fn is_in_place(&self) -> bool {
        self.via.is_empty()
    }
}

/// Calls whose keyword arguments are not configuration definitions (they consume values).
const CONSUMERS: &[&str] = &[
    "DataLoader",
    "TrainingArguments",
    "Seq2SeqTrainingArguments",
    "Trainer",
    "add_argument",
    "Accelerator",
    "getattr",
    "get",
];

/// Follows the expression `expr` in file `fi` to the literal that sets it.
pub fn resolve(p: &Project, fi: usize, expr: Node) -> Option<Site> {
    resolve_depth(p, fi, expr, 0)
}

fn site(f: &PyFile, n: Node, via: Vec<String>) -> Site {
    Site {
        file: f.rel.clone(),
        start: n.start_byte(),
        end: n.end_byte(),
        value: f.text(n).to_string(),
        line: f.line_of(n.start_byte()),
        via,
        others: vec![],
    }
}

fn resolve_depth(p: &Project, fi: usize, expr: Node, depth: usize) -> Option<Site> {
    if depth > 8 {
        return None;
    }
    let f = &p.py[fi];
    let expr = py::unparen(expr);
    if py::is_literal(expr) {
        return Some(site(f, expr, vec![]));
    }
    let step = |mut s: Site, what: String| {
        s.via.insert(0, what);
        s
    };
    match expr.kind() {
        "identifier" => {
            let name = f.text(expr);
            let func = py::ancestor(expr, &["function_definition"]);
            if let Some(func) = func {
                // Last assignment before the use, in the same function.
                if let Some(rhs) = last_assignment(f, func, name, expr.start_byte()) {
                    return resolve_depth(p, fi, rhs, depth + 1).map(|s| {
                        step(
                            s,
                            format!("{name} ({}:{})", f.rel, f.line_of(rhs.start_byte())),
                        )
                    });
                }
                if let Some(s) = resolve_param(p, fi, func, name, depth) {
                    return Some(s);
                }
            }
            // Module level.
            if let Some(rhs) = module_assignment(f, name) {
                return resolve_depth(p, fi, rhs, depth + 1).map(|s| {
                    step(
                        s,
                        format!("{name} ({}:{})", f.rel, f.line_of(rhs.start_byte())),
                    )
                });
            }
            // Imported name.
            for imp in py::imports(f) {
                if imp.kind() != "import_from_statement" {
                    continue;
                }
                let Some(m) = imp.child_by_field_name("module_name") else {
                    continue;
                };
                for c in py::named_children(imp).into_iter().skip(1) {
                    let (orig, alias) = match c.kind() {
                        "dotted_name" => (f.text(c), f.text(c)),
                        "aliased_import" => (
                            c.child_by_field_name("name")
                                .map(|n| f.text(n))
                                .unwrap_or(""),
                            c.child_by_field_name("alias")
                                .map(|n| f.text(n))
                                .unwrap_or(""),
                        ),
                        _ => continue,
                    };
                    if alias == name {
                        let mj = p.module_file(&f.rel, f.text(m))?;
                        let g = &p.py[mj];
                        let rhs = module_assignment(g, orig)?;
                        return resolve_depth(p, mj, rhs, depth + 1).map(|s| {
                            step(
                                s,
                                format!("{orig} ({}:{})", g.rel, g.line_of(rhs.start_byte())),
                            )
                        });
                    }
                }
            }
            None
        }
        "call" => {
            // int(x), float(x), str(x): the argument.
            let c = py::callee(f, expr);
            if matches!(c.as_str(), "int" | "float" | "bool" | "str") {
                let a = py::positional(expr).into_iter().next()?;
                return resolve_depth(p, fi, a, depth + 1);
            }
            None
        }
        "attribute" | "subscript" => {
            let (obj, key) = split_access(f, expr)?;
            let obj_text: String = f.text(obj).split_whitespace().collect();
            let class = py::ancestor(expr, &["class_definition"]);
            if obj_text == "self" {
                let class = class?;
                return resolve_self_attr(p, fi, class, &key, depth);
            }
            if obj_text == "self.hparams" || obj_text == "self.hparams_" {
                let class = class?;
                let init = py::method(f, class, "__init__")?;
                return resolve_param(p, fi, init, &key, depth);
            }
            config_key(p, fi, obj, &key, depth).map(|s| step(s, f.text(expr).to_string()))
        }
        _ => None,
    }
}

/// `obj.key` or `obj["key"]` -> (obj, key).
fn split_access<'t>(f: &PyFile, n: Node<'t>) -> Option<(Node<'t>, String)> {
    match n.kind() {
        "attribute" => {
            let obj = n.child_by_field_name("object")?;
            let attr = n.child_by_field_name("attribute")?;
            Some((obj, f.text(attr).to_string()))
        }
        "subscript" => {
            let obj = n.child_by_field_name("value")?;
            let idx = n.child_by_field_name("subscript")?;
            Some((obj, py::string_value(f, idx)?))
        }
        _ => None,
    }
}

/// The right side of the last `name = ...` in `func` before `before`.
fn last_assignment<'t>(f: &PyFile, func: Node<'t>, name: &str, before: usize) -> Option<Node<'t>> {
    let body = func.child_by_field_name("body")?;
    py::descendants_same_scope(body)
        .into_iter()
        .filter(|n| n.kind() == "assignment" && n.end_byte() <= before)
        .filter(|n| {
            n.child_by_field_name("left")
                .map(|l| l.kind() == "identifier" && f.text(l) == name)
                .unwrap_or(false)
        })
        .filter_map(|n| n.child_by_field_name("right"))
        .next_back()
}

/// The right side of a top-level `name = ...` (or `name: T = ...`).
pub fn module_assignment<'t>(f: &'t PyFile, name: &str) -> Option<Node<'t>> {
    py::named_children(f.tree.root_node())
        .into_iter()
        .filter(|s| s.kind() == "expression_statement")
        .filter_map(|s| s.named_child(0))
        .filter(|a| a.kind() == "assignment")
        .filter(|a| {
            a.child_by_field_name("left")
                .map(|l| l.kind() == "identifier" && f.text(l) == name)
                .unwrap_or(false)
        })
        .filter_map(|a| a.child_by_field_name("right"))
        .next_back()
}

/// A parameter of `func`: a keyword at its call sites (the constructor's class name for
/// `__init__`), else its default.
fn resolve_param(p: &Project, fi: usize, func: Node, name: &str, depth: usize) -> Option<Site> {
    let f = &p.py[fi];
    let params = func.child_by_field_name("parameters")?;
    let mut default = None;
    let mut found = false;
    // The parameter's position among those a call passes positionally (None after `*args`
    // or a keyword-only marker); `self`/`cls` of a method is not passed.
    let mut index = None;
    let mut pos = 0usize;
    let in_class = py::ancestor(func, &["class_definition"]).is_some();
    let mut positional_ok = true;
    for (i, prm) in py::named_children(params).into_iter().enumerate() {
        if matches!(
            prm.kind(),
            "list_splat_pattern" | "dictionary_splat_pattern" | "keyword_separator"
        ) {
            positional_ok = false;
        }
        let is_receiver = i == 0 && in_class && matches!(f.text(prm), "self" | "cls");
        let (pname, value) = match prm.kind() {
            "identifier" => (f.text(prm), None),
            "typed_parameter" => (prm.named_child(0).map(|n| f.text(n)).unwrap_or(""), None),
            "default_parameter" | "typed_default_parameter" => (
                prm.child_by_field_name("name")
                    .map(|n| f.text(n))
                    .unwrap_or(""),
                prm.child_by_field_name("value"),
            ),
            _ => continue,
        };
        if pname == name {
            found = true;
            default = value;
            if positional_ok && !is_receiver {
                index = Some(pos);
            }
        }
        if !is_receiver {
            pos += 1;
        }
    }
    if !found {
        return None;
    }
    let fname = py::def_name(f, func);
    let call_name = if fname == "__init__" {
        py::ancestor(func, &["class_definition"]).map(|c| py::def_name(f, c).to_string())
    } else {
        Some(fname.to_string())
    };
    let mut passed_unknown = false;
    if let Some(cn) = call_name {
        for (j, g) in p.py.iter().enumerate() {
            for call in g.all_nodes().into_iter().filter(|n| n.kind() == "call") {
                if py::last_name(&py::callee(g, call)) != cn {
                    continue;
                }
                let passed = py::kwarg_value(g, call, name).or_else(|| {
                    // Positionally, unless a `*args` splat makes the positions unknown.
                    let splat = call
                        .child_by_field_name("arguments")
                        .map(py::named_children)
                        .unwrap_or_default()
                        .iter()
                        .any(|a| a.kind() == "list_splat");
                    index
                        .filter(|_| !splat)
                        .and_then(|i| py::positional(call).get(i).copied())
                });
                if let Some(v) = passed {
                    if let Some(mut s) = resolve_depth(p, j, v, depth + 1) {
                        s.via.insert(
                            0,
                            format!(
                                "{cn}({name}=...) ({}:{})",
                                g.rel,
                                g.line_of(call.start_byte())
                            ),
                        );
                        return Some(s);
                    }
                    // The call passes a value that cannot be followed: the default is not what
                    // runs there, so it is not the place to edit.
                    passed_unknown = true;
                }
            }
        }
    }
    if passed_unknown {
        return None;
    }
    let d = default?;
    resolve_depth(p, fi, d, depth + 1).map(|mut s| {
        s.via.insert(
            0,
            format!(
                "default of parameter {name} ({}:{})",
                f.rel,
                f.line_of(d.start_byte())
            ),
        );
        s
    })
}

/// `self.key` inside `class`: its assignment in a method (usually `__init__`) or a class attribute.
fn resolve_self_attr(p: &Project, fi: usize, class: Node, key: &str, depth: usize) -> Option<Site> {
    let f = &p.py[fi];
    let mut best = None;
    for m in py::methods(class) {
        let Some(body) = m.child_by_field_name("body") else {
            continue;
        };
        for a in py::descendants_same_scope(body) {
            if a.kind() != "assignment" {
                continue;
            }
            let Some(l) = a.child_by_field_name("left") else {
                continue;
            };
            if l.kind() == "attribute"
                && f.text(l).split_whitespace().collect::<String>() == format!("self.{key}")
            {
                if let Some(r) = a.child_by_field_name("right") {
                    let is_init = py::def_name(f, m) == "__init__";
                    if best.is_none() || is_init {
                        best = Some(r);
                    }
                }
            }
        }
    }
    if let Some(r) = best {
        return resolve_depth(p, fi, r, depth + 1).map(|mut s| {
            s.via.insert(
                0,
                format!("self.{key} ({}:{})", f.rel, f.line_of(r.start_byte())),
            );
            s
        });
    }
    class_attr(f, class, key).map(|n| site(f, n, vec![format!("class attribute {key}")]))
}

fn class_attr<'t>(f: &PyFile, class: Node<'t>, key: &str) -> Option<Node<'t>> {
    let body = class.child_by_field_name("body")?;
    py::named_children(body)
        .into_iter()
        .filter(|s| s.kind() == "expression_statement")
        .filter_map(|s| s.named_child(0))
        .filter(|a| a.kind() == "assignment")
        .filter(|a| {
            a.child_by_field_name("left")
                .map(|l| f.text(l) == key)
                .unwrap_or(false)
        })
        .filter_map(|a| a.child_by_field_name("right"))
        .find(|r| py::is_literal(*r))
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Rank {
    CallKeyword,
    DictPair,
    Module,
    Argparse,
    ClassAttr,
    DataFile,
}

struct Cand {
    tier: u8,
    rank: Rank,
    site: Site,
}

/// A key read from a configuration object: every place in the project that defines it, the
/// most likely one first (the module the object was imported from, argparse for `args`,
/// config-named files, then anywhere).
fn config_key(p: &Project, fi: usize, obj: Node, key: &str, depth: usize) -> Option<Site> {
    let _ = depth;
    let f = &p.py[fi];
    let mut root = obj;
    while matches!(root.kind(), "attribute" | "subscript" | "call") {
        root = match root.kind() {
            "attribute" => root.child_by_field_name("object")?,
            "subscript" => root.child_by_field_name("value")?,
            _ => root.child_by_field_name("function")?,
        };
    }
    let root_name = f.text(root);
    let mut preferred_file = None;
    if root.kind() == "identifier" {
        for imp in py::imports(f) {
            if imp.kind() != "import_from_statement" {
                continue;
            }
            let Some(m) = imp.child_by_field_name("module_name") else {
                continue;
            };
            let binds = py::named_children(imp).into_iter().skip(1).any(|c| {
                let local = match c.kind() {
                    "aliased_import" => c.child_by_field_name("alias").map(|n| f.text(n)),
                    _ => Some(f.text(c)),
                };
                local == Some(root_name)
            });
            if binds {
                preferred_file = p
                    .module_file(&f.rel, f.text(m))
                    .map(|j| p.py[j].rel.clone());
            }
        }
        if let Some(imp) = py::imports(f).into_iter().find(|i| {
            i.kind() == "import_statement"
                && py::named_children(*i).iter().any(|c| {
                    c.kind() == "aliased_import"
                        && c.child_by_field_name("alias").map(|n| f.text(n)) == Some(root_name)
                        || f.text(*c) == root_name
                })
        }) {
            let module = py::named_children(imp)
                .into_iter()
                .find_map(|c| match c.kind() {
                    "aliased_import"
                        if c.child_by_field_name("alias").map(|n| f.text(n)) == Some(root_name) =>
                    {
                        c.child_by_field_name("name").map(|n| f.text(n).to_string())
                    }
                    "dotted_name" if f.text(c) == root_name => Some(root_name.to_string()),
                    _ => None,
                });
            if let Some(m) = module {
                preferred_file = p.module_file(&f.rel, &m).map(|j| p.py[j].rel.clone());
            }
        }
    }
    // Data files named by string literals in this file (`yaml.safe_load(open("cfg.yaml"))`).
    let named_data: Vec<String> = f
        .all_nodes()
        .into_iter()
        .filter(|n| n.kind() == "string")
        .filter_map(|n| py::string_value(f, n))
        .filter(|s| {
            let l = s.to_ascii_lowercase();
            l.ends_with(".yaml")
                || l.ends_with(".yml")
                || l.ends_with(".json")
                || l.ends_with(".toml")
        })
        .collect();
    let args_like = matches!(root_name, "args" | "opt" | "opts" | "flags" | "hparams");
    let configish = |rel: &str| {
        let l = rel.to_ascii_lowercase();
        ["config", "cfg", "setting", "hparam", "param", "option"]
            .iter()
            .any(|w| l.contains(w))
    };

    let mut cands: Vec<Cand> = Vec::new();
    for g in &p.py {
        let tier_file = if preferred_file.as_deref() == Some(g.rel.as_str()) {
            0
        } else if configish(&g.rel) {
            2
        } else {
            3
        };
        for n in g.all_nodes() {
            match n.kind() {
                "keyword_argument" => {
                    if n.child_by_field_name("name").map(|x| g.text(x)) != Some(key) {
                        continue;
                    }
                    let Some(v) = n.child_by_field_name("value") else {
                        continue;
                    };
                    if !py::is_literal(v) {
                        continue;
                    }
                    let Some(call) = py::ancestor(n, &["call"]) else {
                        continue;
                    };
                    let c = py::callee(g, call);
                    if CONSUMERS.contains(&py::last_name(&c)) {
                        continue;
                    }
                    cands.push(Cand {
                        tier: tier_file,
                        rank: Rank::CallKeyword,
                        site: site(
                            g,
                            v,
                            vec![format!(
                                "{c}({key}=...) ({}:{})",
                                g.rel,
                                g.line_of(n.start_byte())
                            )],
                        ),
                    });
                }
                "pair" => {
                    let Some(k) = n.child_by_field_name("key") else {
                        continue;
                    };
                    if py::string_value(g, k).as_deref() != Some(key) {
                        continue;
                    }
                    let Some(v) = n.child_by_field_name("value") else {
                        continue;
                    };
                    if py::is_literal(v) {
                        cands.push(Cand {
                            tier: tier_file,
                            rank: Rank::DictPair,
                            site: site(
                                g,
                                v,
                                vec![format!(
                                    "\"{key}\": ... ({}:{})",
                                    g.rel,
                                    g.line_of(n.start_byte())
                                )],
                            ),
                        });
                    }
                }
                "assignment" => {
                    let Some(l) = n.child_by_field_name("left") else {
                        continue;
                    };
                    if g.text(l) != key {
                        continue;
                    }
                    let Some(v) = n.child_by_field_name("right") else {
                        continue;
                    };
                    if !py::is_literal(v) {
                        continue;
                    }
                    let scope = py::ancestor(n, &["class_definition", "function_definition"]);
                    let rank = match scope.map(|s| s.kind()) {
                        None => Rank::Module,
                        Some("class_definition")
                            if py::ancestor(n, &["function_definition"]).is_none() =>
                        {
                            Rank::ClassAttr
                        }
                        _ => continue,
                    };
                    cands.push(Cand {
                        tier: tier_file,
                        rank,
                        site: site(
                            g,
                            v,
                            vec![format!(
                                "{key} = ... ({}:{})",
                                g.rel,
                                g.line_of(n.start_byte())
                            )],
                        ),
                    });
                }
                "call" if py::last_name(&py::callee(g, n)) == "add_argument" => {
                    let flag = py::positional(n)
                        .into_iter()
                        .filter_map(|a| py::string_value(g, a))
                        .find(|s| s.starts_with("--"));
                    let dest = py::kwarg_value(g, n, "dest").and_then(|d| py::string_value(g, d));
                    let name =
                        dest.or_else(|| flag.map(|s| s.trim_start_matches('-').replace('-', "_")));
                    if name.as_deref() != Some(key) {
                        continue;
                    }
                    if let Some(v) = py::kwarg_value(g, n, "default") {
                        if py::is_literal(v) {
                            cands.push(Cand {
                                tier: if args_like { 1 } else { tier_file },
                                rank: Rank::Argparse,
                                site: site(
                                    g,
                                    v,
                                    vec![format!(
                                        "--{} default ({}:{})",
                                        key.replace('_', "-"),
                                        g.rel,
                                        g.line_of(n.start_byte())
                                    )],
                                ),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for o in &p.other {
        let scalars = match o.kind {
            OtherKind::Yaml => datafile::yaml_scalars(&o.src),
            OtherKind::Json => datafile::json_scalars(&o.src).unwrap_or_default(),
            OtherKind::Toml => datafile::toml_scalars(&o.src),
            _ => continue,
        };
        let named = named_data
            .iter()
            .any(|d| o.rel.ends_with(d.trim_start_matches("./")));
        let tier = if named {
            0
        } else if configish(&o.rel) {
            2
        } else {
            3
        };
        for k in scalars.into_iter().filter(|k| k.key() == key) {
            let line = o.src[..k.start].matches('\n').count() + 1;
            cands.push(Cand {
                tier,
                rank: Rank::DataFile,
                site: Site {
                    file: o.rel.clone(),
                    start: k.start,
                    end: k.end,
                    value: k.value.clone(),
                    line,
                    via: vec![format!("{} ({}:{line})", k.path.join("."), o.rel)],
                    others: vec![],
                },
            });
        }
    }
    cands.sort_by_key(|c| (c.tier, c.rank));
    let mut it = cands.into_iter();
    let mut best = it.next()?.site;
    best.others = it
        .map(|c| format!("{}:{}", c.site.file, c.site.line))
        .collect();
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn project(files: &[(&str, &str)]) -> (tempfile::TempDir, Project) {
        let d = tempfile::tempdir().unwrap();
        for (name, src) in files {
            let p = d.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, src).unwrap();
        }
        let p = Project::load(d.path()).unwrap();
        (d, p)
    }

    fn resolve_kw(p: &Project, file: &str, kw: &str) -> Option<Site> {
        let fi = p.py_index(file).unwrap();
        let f = &p.py[fi];
        let v = f
            .all_nodes()
            .into_iter()
            .filter(|n| n.kind() == "keyword_argument")
            .find(|n| n.child_by_field_name("name").map(|x| f.text(x)) == Some(kw))?
            .child_by_field_name("value")?;
        resolve(p, fi, v)
    }

    #[test]
    fn follows_config_module_import() {
        let (_d, p) = project(&[
            (
                "cfg.py",
                "class C:\n    batch_size = 32\nconfig = Exp(il=Il(batch_size=16, lr=1e-4))\n",
            ),
            (
                "train.py",
                "from cfg import config\nDataLoader(ds, batch_size=config.il.batch_size)\n",
            ),
        ]);
        let s = resolve_kw(&p, "train.py", "batch_size").unwrap();
        assert_eq!(
            (s.file.as_str(), s.value.as_str(), s.line),
            ("cfg.py", "16", 3)
        );
        assert_eq!(s.others.len(), 1);
    }

    #[test]
    fn follows_locals_params_and_call_sites() {
        let (_d, p) = project(&[(
            "train.py",
            "class DM:\n    def __init__(self, batch_size=64):\n        self.batch_size = batch_size\n    def train_dataloader(self):\n        return DataLoader(x, batch_size=self.batch_size)\n\ndm = DM(batch_size=32)\n",
        )]);
        let s = resolve_kw(&p, "train.py", "batch_size").unwrap();
        assert_eq!(s.value, "32");
        let (_d, p) = project(&[(
            "train.py",
            "def main():\n    bs = 8\n    DataLoader(x, batch_size=bs)\n",
        )]);
        assert_eq!(resolve_kw(&p, "train.py", "batch_size").unwrap().value, "8");
    }

    #[test]
    fn follows_argparse_and_yaml() {
        let (_d, p) = project(&[(
            "train.py",
            "import argparse\np = argparse.ArgumentParser()\np.add_argument('--batch-size', type=int, default=16)\nargs = p.parse_args()\nDataLoader(x, batch_size=args.batch_size)\n",
        )]);
        assert_eq!(
            resolve_kw(&p, "train.py", "batch_size").unwrap().value,
            "16"
        );
        let (_d, p) = project(&[
            ("train.py", "cfg = yaml.safe_load(open('conf/train.yaml'))\nDataLoader(x, batch_size=cfg['batch_size'])\n"),
            ("conf/train.yaml", "batch_size: 24\n"),
        ]);
        let s = resolve_kw(&p, "train.py", "batch_size").unwrap();
        assert_eq!(
            (s.file.as_str(), s.value.as_str()),
            ("conf/train.yaml", "24")
        );
    }
}
