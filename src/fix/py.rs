//! Python source through tree-sitter: parsing, syntax-error location and small helpers over
//! syntax nodes (calls, keyword arguments, assignments, enclosing scopes, indentation).
use tree_sitter::{Node, Parser, Tree};

/// One parsed Python file.
pub struct PyFile {
    /// Path relative to the project root, with `/` separators.
    pub rel: String,
    pub src: String,
    pub tree: Tree,
}

/// Parses Python source; `Err((line, column))` (1-based) at the first syntax error.
pub fn parse(src: &str) -> Result<Tree, (usize, usize)> {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .map_err(|_| (0, 0))?;
    let tree = parser.parse(src, None).ok_or((0, 0))?;
    if let Some(bad) = first_error(tree.root_node()) {
        let p = bad.start_position();
        return Err((p.row + 1, p.column + 1));
    }
    Ok(tree)
}

/// The first ERROR or MISSING node, in source order.
pub fn first_error(node: Node) -> Option<Node> {
    if !node.has_error() {
        return None;
    }
    if node.is_error() || node.is_missing() {
        return Some(node);
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        if let Some(e) = first_error(child) {
            return Some(e);
        }
    }
    // has_error() but no child carries it: the node itself.
    Some(node)
}

impl PyFile {
    pub fn text(&self, n: Node) -> &str {
        &self.src[n.start_byte()..n.end_byte()]
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, byte: usize) -> usize {
        self.src[..byte.min(self.src.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// Byte offset where the line containing `byte` starts.
    pub fn line_start(&self, byte: usize) -> usize {
        self.src[..byte].rfind('\n').map(|i| i + 1).unwrap_or(0)
    }

    /// Byte offset just after the newline ending the line containing `byte` (or the end of file).
    pub fn line_end_incl(&self, byte: usize) -> usize {
        match self.src[byte..].find('\n') {
            Some(i) => byte + i + 1,
            None => self.src.len(),
        }
    }

    /// The whitespace that starts the line containing `byte`.
    pub fn indent_at(&self, byte: usize) -> &str {
        let s = self.line_start(byte);
        let line = &self.src[s..];
        let n = line.len() - line.trim_start_matches([' ', '\t']).len();
        &line[..n]
    }

    /// True when only whitespace precedes `byte` on its line.
    pub fn starts_line(&self, byte: usize) -> bool {
        self.src[self.line_start(byte)..byte].trim().is_empty()
    }

    /// The file's indentation unit, from the first indented line after a colon (default 4 spaces).
    pub fn indent_unit(&self) -> String {
        let mut prev_colon = false;
        for line in self.src.lines() {
            let t = line.trim_end();
            if t.trim().is_empty() || t.trim_start().starts_with('#') {
                continue;
            }
            if prev_colon {
                let n = t.len() - t.trim_start_matches([' ', '\t']).len();
                if n > 0 {
                    return t[..n].to_string();
                }
            }
            prev_colon = t.ends_with(':') && t.starts_with(|c: char| !c.is_whitespace());
        }
        "    ".to_string()
    }

    /// Every node of the tree (named ones), depth first.
    pub fn all_nodes(&self) -> Vec<Node<'_>> {
        let mut out = Vec::new();
        collect(self.tree.root_node(), &mut out);
        out
    }
}

fn collect<'t>(n: Node<'t>, out: &mut Vec<Node<'t>>) {
    let mut cursor = n.walk();
    for child in n.named_children(&mut cursor) {
        out.push(child);
        collect(child, out);
    }
}

/// Named descendants of `n` (not `n` itself).
pub fn descendants(n: Node) -> Vec<Node> {
    let mut out = Vec::new();
    collect(n, &mut out);
    out
}

/// Descendants of `n` that are not inside a nested function or class definition.
pub fn descendants_same_scope(n: Node) -> Vec<Node> {
    let mut out = Vec::new();
    fn rec<'t>(n: Node<'t>, out: &mut Vec<Node<'t>>) {
        let mut cursor = n.walk();
        for child in n.named_children(&mut cursor) {
            out.push(child);
            if !matches!(child.kind(), "function_definition" | "class_definition") {
                rec(child, out);
            }
        }
    }
    rec(n, &mut out);
    out
}

pub fn named_children(n: Node) -> Vec<Node> {
    let mut cursor = n.walk();
    n.named_children(&mut cursor).collect()
}

pub fn children(n: Node) -> Vec<Node> {
    let mut cursor = n.walk();
    n.children(&mut cursor).collect()
}

/// Strips enclosing parentheses.
pub fn unparen(mut n: Node) -> Node {
    while n.kind() == "parenthesized_expression" {
        match n.named_child(0) {
            Some(c) => n = c,
            None => break,
        }
    }
    n
}

/// The dotted text of a call's callee, whitespace removed (`torch.optim.Adam`).
pub fn callee(f: &PyFile, call: Node) -> String {
    call.child_by_field_name("function")
        .map(|c| f.text(c).split_whitespace().collect::<String>())
        .unwrap_or_default()
}

/// Last component of a dotted name.
pub fn last_name(dotted: &str) -> &str {
    dotted.rsplit('.').next().unwrap_or(dotted)
}

/// The keyword argument `name=` of a call.
pub fn kwarg<'t>(f: &PyFile, call: Node<'t>, name: &str) -> Option<Node<'t>> {
    let args = call.child_by_field_name("arguments")?;
    named_children(args).into_iter().find(|a| {
        a.kind() == "keyword_argument"
            && a.child_by_field_name("name").map(|n| f.text(n)) == Some(name)
    })
}

/// The value of keyword argument `name=`.
pub fn kwarg_value<'t>(f: &PyFile, call: Node<'t>, name: &str) -> Option<Node<'t>> {
    kwarg(f, call, name)?.child_by_field_name("value")
}

/// Positional arguments of a call.
pub fn positional(call: Node) -> Vec<Node> {
    call.child_by_field_name("arguments")
        .map(|a| {
            named_children(a)
                .into_iter()
                .filter(|c| {
                    !matches!(
                        c.kind(),
                        "keyword_argument" | "comment" | "list_splat" | "dictionary_splat"
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `N` of the first `x % N` in an expression (the step interval of `if (i + 1) % N == 0:`).
pub fn modulo_divisor<'t>(f: &PyFile, expr: Node<'t>) -> Option<Node<'t>> {
    descendants(expr)
        .into_iter()
        .chain(std::iter::once(expr))
        .find(|m| {
            m.kind() == "binary_operator"
                && m.child_by_field_name("operator").map(|o| f.text(o)) == Some("%")
        })?
        .child_by_field_name("right")
}

/// The nearest ancestor of one of the given kinds.
pub fn ancestor<'t>(n: Node<'t>, kinds: &[&str]) -> Option<Node<'t>> {
    let mut cur = n.parent();
    while let Some(p) = cur {
        if kinds.contains(&p.kind()) {
            return Some(p);
        }
        cur = p.parent();
    }
    None
}

/// The statement (child of a `block` or `module`) containing `n`.
pub fn statement_of(n: Node) -> Option<Node> {
    let mut cur = n;
    loop {
        let p = cur.parent()?;
        if matches!(p.kind(), "block" | "module") {
            return Some(cur);
        }
        cur = p;
    }
}

/// Name of a function or class definition.
pub fn def_name<'a>(f: &'a PyFile, def: Node) -> &'a str {
    def.child_by_field_name("name")
        .map(|n| f.text(n))
        .unwrap_or("")
}

/// Superclass texts of a class definition (whitespace removed).
pub fn superclasses(f: &PyFile, class: Node) -> Vec<String> {
    class
        .child_by_field_name("superclasses")
        .map(|s| {
            named_children(s)
                .into_iter()
                .filter(|c| c.kind() != "keyword_argument")
                .map(|c| f.text(c).split_whitespace().collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Methods (function definitions, decorated or not) directly in a class body.
pub fn methods(class: Node) -> Vec<Node> {
    let Some(body) = class.child_by_field_name("body") else {
        return vec![];
    };
    named_children(body)
        .into_iter()
        .filter_map(|c| match c.kind() {
            "function_definition" => Some(c),
            "decorated_definition" => c.child_by_field_name("definition"),
            _ => None,
        })
        .filter(|c| c.kind() == "function_definition")
        .collect()
}

pub fn method<'t>(f: &PyFile, class: Node<'t>, name: &str) -> Option<Node<'t>> {
    methods(class).into_iter().find(|m| def_name(f, *m) == name)
}

/// True for literal expressions that can be edited in place.
pub fn is_literal(n: Node) -> bool {
    match n.kind() {
        "integer" | "float" | "true" | "false" | "none" | "string" => true,
        "unary_operator" => n
            .child_by_field_name("argument")
            .map(|a| matches!(a.kind(), "integer" | "float"))
            .unwrap_or(false),
        _ => false,
    }
}

/// Parses a Python integer literal.
pub fn int_value(f: &PyFile, n: Node) -> Option<u64> {
    if n.kind() != "integer" {
        return None;
    }
    f.text(n).replace('_', "").parse().ok()
}

/// Parses a Python boolean literal.
pub fn bool_value(f: &PyFile, n: Node) -> Option<bool> {
    match n.kind() {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            let _ = f;
            None
        }
    }
}

/// Content of a simple string literal (no interpolation), without quotes.
pub fn string_value(f: &PyFile, n: Node) -> Option<String> {
    if n.kind() != "string" {
        return None;
    }
    let t = f.text(n);
    let t = t.trim_start_matches(['r', 'R', 'b', 'B', 'u', 'U']);
    for q in ["\"\"\"", "'''", "\"", "'"] {
        if t.starts_with(q) && t.ends_with(q) && t.len() >= 2 * q.len() {
            return Some(t[q.len()..t.len() - q.len()].to_string());
        }
    }
    None
}

/// The names bound by the left side of an assignment (identifiers, tuple/list patterns).
pub fn bound_names<'a>(f: &'a PyFile, left: Node) -> Vec<&'a str> {
    match left.kind() {
        "identifier" => vec![f.text(left)],
        "pattern_list" | "tuple_pattern" | "list_pattern" => named_children(left)
            .into_iter()
            .flat_map(|c| bound_names(f, c))
            .collect(),
        _ => vec![],
    }
}

/// Top-level import statements of a module.
pub fn imports(f: &PyFile) -> Vec<Node<'_>> {
    named_children(f.tree.root_node())
        .into_iter()
        .filter(|c| {
            matches!(
                c.kind(),
                "import_statement" | "import_from_statement" | "future_import_statement"
            )
        })
        .collect()
}

/// The local name under which `module.name` (or `module` itself when `name` is empty) is
/// imported at the top level, e.g. `F` for `import torch.nn.functional as F`.
pub fn import_alias(f: &PyFile, module: &str, name: &str) -> Option<String> {
    for imp in imports(f) {
        match imp.kind() {
            "import_statement" if name.is_empty() => {
                for c in named_children(imp) {
                    match c.kind() {
                        "dotted_name" if f.text(c) == module => return Some(module.to_string()),
                        "aliased_import" => {
                            let n = c.child_by_field_name("name").map(|n| f.text(n));
                            let a = c.child_by_field_name("alias").map(|n| f.text(n));
                            if n == Some(module) {
                                return a.map(str::to_string);
                            }
                        }
                        _ => {}
                    }
                }
            }
            "import_from_statement" if !name.is_empty() => {
                let m = imp.child_by_field_name("module_name").map(|n| f.text(n));
                if m != Some(module) {
                    continue;
                }
                for c in named_children(imp).into_iter().skip(1) {
                    match c.kind() {
                        "dotted_name" if f.text(c) == name => return Some(name.to_string()),
                        "aliased_import" => {
                            let n = c.child_by_field_name("name").map(|n| f.text(n));
                            let a = c.child_by_field_name("alias").map(|n| f.text(n));
                            if n == Some(name) {
                                return a.map(str::to_string);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Byte offset just after the last top-level import (where a new import goes), or after a
/// module docstring and `from __future__` imports when there is no import.
pub fn import_insert_point(f: &PyFile) -> usize {
    let imps = imports(f);
    // After the last torch import when there is one (keeps third-party imports together).
    if let Some(last) = imps.iter().rev().find(|i| {
        let t = f.text(**i);
        t.starts_with("import torch") || t.starts_with("from torch")
    }) {
        return f.line_end_incl(last.end_byte());
    }
    if let Some(last) = imps.last() {
        return f.line_end_incl(last.end_byte());
    }
    let root = f.tree.root_node();
    if let Some(first) = root.named_child(0) {
        if first.kind() == "expression_statement"
            && first.named_child(0).map(|c| c.kind()) == Some("string")
        {
            return f.line_end_incl(first.end_byte());
        }
    }
    // After a shebang / coding line.
    let mut pos = 0;
    for line in f.src.split_inclusive('\n') {
        if line.starts_with("#!") || line.starts_with("# -*-") {
            pos += line.len();
        } else {
            break;
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(src: &str) -> PyFile {
        PyFile {
            rel: "t.py".into(),
            src: src.into(),
            tree: parse(src).unwrap(),
        }
    }

    #[test]
    fn reports_syntax_error_line() {
        assert_eq!(parse("x = 1\ndef f(:\n    pass\n").unwrap_err().0, 2);
        assert!(parse("x = (1,\n").is_err());
        assert!(parse("x = 1\n").is_ok());
    }

    #[test]
    fn finds_imports_and_kwargs() {
        let f = file("import torch.nn.functional as F\nfrom torch.utils.checkpoint import checkpoint as ck\nx = g(1, a=2)\n");
        assert_eq!(
            import_alias(&f, "torch.nn.functional", "").as_deref(),
            Some("F")
        );
        assert_eq!(
            import_alias(&f, "torch.utils.checkpoint", "checkpoint").as_deref(),
            Some("ck")
        );
        let call = f
            .all_nodes()
            .into_iter()
            .find(|n| n.kind() == "call")
            .unwrap();
        assert_eq!(f.text(kwarg_value(&f, call, "a").unwrap()), "2");
        assert_eq!(positional(call).len(), 1);
        assert_eq!(import_insert_point(&f), f.src.find("x =").unwrap());
    }

    #[test]
    fn indent_unit_detected() {
        assert_eq!(file("def f():\n  return 1\n").indent_unit(), "  ");
        assert_eq!(file("x = 1\n").indent_unit(), "    ");
    }
}
