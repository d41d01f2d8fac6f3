//! A small document model that every report is built in, so that text, markdown and HTML
//! renderers are each written once.
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Block {
    /// Level 1 is the title.
    Heading {
        level: u8,
        text: String,
    },
    Paragraph(String),
    /// Aligned "key: value" lines.
    KeyValues(Vec<(String, String)>),
    Bullets(Vec<String>),
    Table {
        headers: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A code or shell snippet; `lang` is the markdown fence language.
    Code {
        lang: String,
        text: String,
    },
    /// A horizontal bar chart: label, value (any unit, bars are proportional), shown value.
    Bars {
        rows: Vec<(String, f64, String)>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Document {
    pub blocks: Vec<Block>,
}

impl Document {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn heading(&mut self, level: u8, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Heading {
            level,
            text: text.into(),
        });
        self
    }
    pub fn para(&mut self, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Paragraph(text.into()));
        self
    }
    pub fn kv(&mut self, pairs: Vec<(String, String)>) -> &mut Self {
        self.blocks.push(Block::KeyValues(pairs));
        self
    }
    pub fn bullets(&mut self, items: Vec<String>) -> &mut Self {
        self.blocks.push(Block::Bullets(items));
        self
    }
    pub fn table(&mut self, headers: Vec<String>, rows: Vec<Vec<String>>) -> &mut Self {
        self.blocks.push(Block::Table { headers, rows });
        self
    }
    pub fn code(&mut self, lang: impl Into<String>, text: impl Into<String>) -> &mut Self {
        self.blocks.push(Block::Code {
            lang: lang.into(),
            text: text.into(),
        });
        self
    }
    pub fn bars(&mut self, rows: Vec<(String, f64, String)>) -> &mut Self {
        self.blocks.push(Block::Bars { rows });
        self
    }
    pub fn append(&mut self, other: Document) -> &mut Self {
        self.blocks.extend(other.blocks);
        self
    }
}
