//! Command line: global flags, the subcommands, and the mapping of errors to exit code 2.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands;
use crate::report::{Ctx, Format, Lang};

#[derive(Parser, Debug)]
#[command(name = "oomdoc", version, about = "Explains GPU out-of-memory failures and computes what fits", long_about = None)]
pub struct Cli {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub format: Format,
    /// Report language (default from LANG: zh* gives Chinese).
    #[arg(long, global = true, value_enum)]
    pub lang: Option<Lang>,
    /// Write the report to this file instead of stdout.
    #[arg(short = 'o', long, global = true)]
    pub output: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Find every out-of-memory event in a log (or stdin) and explain it.
    Diagnose(commands::diagnose::Args),
    /// Peak GPU memory of one training configuration, by component.
    Estimate(commands::estimate::Args),
    /// Search the knobs, rank what fits by predicted throughput, and write the full analysis.
    Plan(commands::plan::Args),
    /// Turn a plan into a patch for a training project.
    Fix(commands::fix::Args),
    /// What this machine's GPUs have (NVML), or the built-in catalogue with --list.
    Gpu(commands::gpu::Args),
    /// Run a training command under watch; on OOM, diagnose it.
    Run(commands::run::Args),
    /// Find the largest micro-batch that runs, by real trials, keeping the effective batch.
    Fit(commands::fit::Args),
    /// Analyse a PyTorch memory snapshot (torch.cuda.memory._dump_snapshot).
    Snapshot(commands::snapshot::Args),
    /// Predicted vs measured for every row of a measurement file.
    Validate(commands::validate::Args),
    /// Where the Python probe is (for PYTHONPATH or pip install).
    Probe(commands::probe::Args),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let mut ctx = Ctx::new(cli.format, cli.lang.unwrap_or_else(Lang::from_env));
    ctx.output = cli.output.clone();
    match dispatch(&cli.command, &ctx) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the whole cause chain joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("oomdoc: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cmd: &Command, ctx: &Ctx) -> anyhow::Result<u8> {
    match cmd {
        Command::Diagnose(a) => commands::diagnose::run(a, ctx),
        Command::Estimate(a) => commands::estimate::run(a, ctx),
        Command::Plan(a) => commands::plan::run(a, ctx),
        Command::Fix(a) => commands::fix::run(a, ctx),
        Command::Gpu(a) => commands::gpu::run(a, ctx),
        Command::Run(a) => commands::run::run(a, ctx),
        Command::Fit(a) => commands::fit::run(a, ctx),
        Command::Snapshot(a) => commands::snapshot::run(a, ctx),
        Command::Validate(a) => commands::validate::run(a, ctx),
        Command::Probe(a) => commands::probe::run(a, ctx),
    }
}
