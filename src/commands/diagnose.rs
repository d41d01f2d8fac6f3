//! `oomdoc diagnose [LOG]`: every out-of-memory event in a log (or stdin), with its cause and advice.
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;

use anyhow::Context;

use crate::oom;
use crate::report::Ctx;

/// Read buffer for files and stdin (the scanner reads 1 MiB blocks on top of it).
const READ_BUF: usize = 256 * 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Log file to read (plain text or gzip); `-` or nothing reads stdin.
    pub log: Option<PathBuf>,
}

pub fn run(args: &Args, ctx: &Ctx) -> anyhow::Result<u8> {
    let (report, source) = match args.log.as_deref() {
        None => (read_stdin()?, "stdin".to_string()),
        Some(p) if p.as_os_str() == "-" => (read_stdin()?, "stdin".to_string()),
        Some(path) => {
            let name = path.display().to_string();
            let file = File::open(path).with_context(|| format!("{name}: cannot open"))?;
            let report = oom::parse_reader(BufReader::with_capacity(READ_BUF, file))
                .with_context(|| format!("{name}: cannot read"))?;
            (report, name)
        }
    };
    ctx.emit(&report, |lang| {
        oom::report::document(&report, &source, lang)
    })?;
    Ok(0)
}

fn read_stdin() -> anyhow::Result<oom::Report> {
    let stdin = io::stdin();
    oom::parse_reader(BufReader::with_capacity(READ_BUF, stdin.lock()))
        .context("stdin: cannot read")
}
