//! Markdown renderer (and a minimal HTML rendering of the same document for `--format html`
//! where a report has no dedicated HTML page).
use super::doc::{Block, Document};

pub fn render(doc: &Document) -> String {
    let mut out = String::new();
    for block in &doc.blocks {
        match block {
            Block::Heading { level, text } => {
                out.push_str(&"#".repeat((*level).clamp(1, 6) as usize));
                out.push(' ');
                out.push_str(text);
                out.push_str("\n\n");
            }
            Block::Paragraph(p) => {
                out.push_str(p);
                out.push_str("\n\n");
            }
            Block::KeyValues(pairs) => {
                for (k, v) in pairs {
                    out.push_str(&format!("- **{k}**: {v}\n"));
                }
                out.push('\n');
            }
            Block::Bullets(items) => {
                for item in items {
                    out.push_str("- ");
                    out.push_str(&item.replace('\n', "\n  "));
                    out.push('\n');
                }
                out.push('\n');
            }
            Block::Table { headers, rows } => {
                out.push_str(&row(headers));
                out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
                for r in rows {
                    out.push_str(&row(r));
                }
                out.push('\n');
            }
            Block::Code { lang, text } => {
                out.push_str(&format!(
                    "```{lang}\n{}\n```\n\n",
                    text.trim_end_matches('\n')
                ));
            }
            Block::Bars { rows } => {
                out.push_str("| | |\n|---|---|\n");
                for (label, _, shown) in rows {
                    out.push_str(&format!("| {} | {} |\n", cell(label), cell(shown)));
                }
                out.push('\n');
            }
        }
    }
    out
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

fn row(cells: &[String]) -> String {
    let mut s = String::from("|");
    for c in cells {
        s.push(' ');
        s.push_str(&cell(c));
        s.push_str(" |");
    }
    s.push('\n');
    s
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A plain, self-contained HTML page of the document.
pub fn render_html(doc: &Document) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>oomdoc</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:2px 6px}pre{background:#f4f4f4;padding:6px}</style></head><body>\n",
    );
    for block in &doc.blocks {
        match block {
            Block::Heading { level, text } => {
                let l = (*level).clamp(1, 6);
                out.push_str(&format!("<h{l}>{}</h{l}>\n", esc(text)));
            }
            Block::Paragraph(p) => out.push_str(&format!("<p>{}</p>\n", esc(p))),
            Block::KeyValues(pairs) => {
                out.push_str("<ul>");
                for (k, v) in pairs {
                    out.push_str(&format!("<li><b>{}</b>: {}</li>", esc(k), esc(v)));
                }
                out.push_str("</ul>\n");
            }
            Block::Bullets(items) => {
                out.push_str("<ul>");
                for i in items {
                    out.push_str(&format!("<li>{}</li>", esc(i)));
                }
                out.push_str("</ul>\n");
            }
            Block::Table { headers, rows } => {
                out.push_str("<table><tr>");
                for h in headers {
                    out.push_str(&format!("<th>{}</th>", esc(h)));
                }
                out.push_str("</tr>");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        out.push_str(&format!("<td>{}</td>", esc(c)));
                    }
                    out.push_str("</tr>");
                }
                out.push_str("</table>\n");
            }
            Block::Code { text, .. } => out.push_str(&format!("<pre>{}</pre>\n", esc(text))),
            Block::Bars { rows } => {
                let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max);
                out.push_str("<table>");
                for (label, v, shown) in rows {
                    let w = if max > 0.0 { v / max * 300.0 } else { 0.0 };
                    out.push_str(&format!(
                        "<tr><td>{}</td><td><div style=\"background:#4a7;height:1em;width:{w:.0}px\"></div></td><td>{}</td></tr>",
                        esc(label),
                        esc(shown)
                    ));
                }
                out.push_str("</table>\n");
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_and_code() {
        let mut d = Document::new();
        d.heading(2, "T")
            .table(
                vec!["a".into(), "b".into()],
                vec![vec!["1|2".into(), "3".into()]],
            )
            .code("bash", "x");
        let s = render(&d);
        assert!(s.contains("## T\n"));
        assert!(s.contains("| a | b |\n|---|---|\n| 1\\|2 | 3 |\n"));
        assert!(s.contains("```bash\nx\n```"));
        assert!(render_html(&d).contains("<td>1|2</td>"));
    }
}
