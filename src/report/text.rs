//! Plain-text renderer for terminals and logs.
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};

use super::doc::{Block, Document};

const BAR_WIDTH: usize = 40;

pub fn render(doc: &Document, _color: bool) -> String {
    let mut out = String::new();
    for (i, block) in doc.blocks.iter().enumerate() {
        if i > 0 && matches!(block, Block::Heading { .. }) {
            out.push('\n');
        }
        match block {
            Block::Heading { level, text } => {
                out.push_str(text);
                out.push('\n');
                // reStructuredText's order: '=' for the title, '-' for sections, '~' below.
                let ch = match level {
                    0 | 1 => '=',
                    2 => '-',
                    _ => '~',
                };
                out.push_str(&ch.to_string().repeat(display_width(text)));
                out.push('\n');
            }
            Block::Paragraph(p) => {
                out.push_str(p);
                out.push('\n');
            }
            Block::KeyValues(pairs) => {
                let w = pairs
                    .iter()
                    .map(|(k, _)| display_width(k))
                    .max()
                    .unwrap_or(0);
                for (k, v) in pairs {
                    out.push_str("  ");
                    out.push_str(k);
                    out.push(':');
                    out.push_str(&" ".repeat(w - display_width(k) + 1));
                    out.push_str(v);
                    out.push('\n');
                }
            }
            Block::Bullets(items) => {
                for item in items {
                    out.push_str("  - ");
                    out.push_str(&item.replace('\n', "\n    "));
                    out.push('\n');
                }
            }
            Block::Table { headers, rows } => {
                let mut t = Table::new();
                t.load_preset(UTF8_FULL_CONDENSED)
                    .set_content_arrangement(ContentArrangement::Disabled);
                t.set_header(headers.clone());
                for r in rows {
                    t.add_row(r.clone());
                }
                out.push_str(&t.to_string());
                out.push('\n');
            }
            Block::Code { text, .. } => {
                for line in text.lines() {
                    out.push_str("    ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Block::Bars { rows } => {
                let max = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max);
                let lw = rows.iter().map(|r| display_width(&r.0)).max().unwrap_or(0);
                for (label, value, shown) in rows {
                    let n = if max > 0.0 {
                        ((value / max) * BAR_WIDTH as f64).round() as usize
                    } else {
                        0
                    };
                    let n = if *value > 0.0 { n.max(1) } else { 0 };
                    out.push_str("  ");
                    out.push_str(label);
                    out.push_str(&" ".repeat(lw - display_width(label) + 1));
                    out.push_str(&"█".repeat(n));
                    out.push_str(&" ".repeat(BAR_WIDTH - n.min(BAR_WIDTH) + 1));
                    out.push_str(shown);
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Terminal column width: CJK characters take two columns.
pub fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let u = c as u32;
            if (0x1100..=0x115F).contains(&u)
                || (0x2E80..=0xA4CF).contains(&u)
                || (0xAC00..=0xD7A3).contains(&u)
                || (0xF900..=0xFAFF).contains(&u)
                || (0xFE30..=0xFE4F).contains(&u)
                || (0xFF00..=0xFF60).contains(&u)
                || (0xFFE0..=0xFFE6).contains(&u)
            {
                2
            } else {
                1
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_block() {
        let mut d = Document::new();
        d.heading(1, "Title")
            .para("para")
            .kv(vec![
                ("a".into(), "1".into()),
                ("long key".into(), "2".into()),
            ])
            .bullets(vec!["x".into()])
            .table(vec!["h".into()], vec![vec!["v".into()]])
            .code("bash", "echo hi")
            .bars(vec![
                ("p".into(), 2.0, "2 GiB".into()),
                ("q".into(), 1.0, "1 GiB".into()),
            ]);
        let s = render(&d, false);
        assert!(s.starts_with("Title\n=====\n"));
        assert!(s.contains("  a:        1\n"));
        assert!(s.contains("    echo hi\n"));
        assert!(s.contains(&"█".repeat(40)));
        assert!(s.contains(&format!("{} ", "█".repeat(20))));
    }

    #[test]
    fn cjk_is_two_columns() {
        assert_eq!(display_width("问题a"), 5);
    }
}
