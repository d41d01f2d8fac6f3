//! Throughput of `oom::parse_reader` on a large synthetic training log with sparse OOMs.
//!
//! `cargo bench --bench diagnose` generates the log once (default 1 GiB at
//! `/tmp/oomdoc-bench.log`; `OOMDOC_BENCH_LOG` and `OOMDOC_BENCH_MB` change that), then parses it
//! three times and prints MB/s (1 MB = 10^6 bytes) for each run.
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

/// One OOM message per this many bytes of log (sparse: 16 in 1 GiB).
const OOM_EVERY: u64 = 64 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OOM: &str = "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 194.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 54.99 GiB is free. Including non-PyTorch memory, this process has 24.18 GiB memory in use. 23.55 GiB allowed; Of the allocated memory 23.07 GiB is allocated by PyTorch, and 450.18 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)\n";

/// Writes a log of about `size` bytes: timestamped logger lines, metrics, progress bars, Python
/// warnings and tracebacks, with an OOM message every `OOM_EVERY` bytes. Returns the OOM count.
fn generate(path: &PathBuf, size: u64) -> std::io::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut written = 0u64;
    let mut next_oom = OOM_EVERY / 2;
    let mut ooms = 0;
    let mut step = 0u64;
    while written < size {
        let line = match rng.below(10) {
            0..=3 => format!(
                "2026-11-27 16:{:02}:{:02},{:03} - INFO - trainer.py:{} - step {} loss={:.4} lr={:.2e} grad_norm={:.3} tokens/s={}\n",
                rng.below(60), rng.below(60), rng.below(1000), 100 + rng.below(900), step,
                rng.below(10_000) as f64 / 1e4, rng.below(1000) as f64 * 1e-7, rng.below(5000) as f64 / 1e3,
                10_000 + rng.below(90_000)
            ),
            4..=5 => format!(
                "[rank{}]: Epoch {}: {:3}%|{}| {}/{} [{:02}:{:02}<{:02}:{:02}, {:.2}it/s, v_num=0, train_loss={:.3}]\n",
                rng.below(8), step / 1000, rng.below(101), "#".repeat(rng.below(40) as usize), step % 1000, 1000,
                rng.below(60), rng.below(60), rng.below(60), rng.below(60), rng.below(500) as f64 / 100.0,
                rng.below(1000) as f64 / 100.0
            ),
            6 => format!(
                "{{\"step\": {}, \"loss\": {:.5}, \"epoch\": {:.2}, \"memory_allocated_gib\": {:.2}, \"samples_per_second\": {:.1}}}\n",
                step, rng.below(100_000) as f64 / 1e5, step as f64 / 1e3, rng.below(8000) as f64 / 100.0,
                rng.below(20_000) as f64 / 10.0
            ),
            7 => format!(
                "/usr/lib/python3/site-packages/torch/utils/checkpoint.py:{}: UserWarning: torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly.\n",
                rng.below(500)
            ),
            8 => format!(
                "  File \"/opt/conda/lib/python3.11/site-packages/transformers/models/llama/modeling_llama.py\", line {}, in forward\n",
                rng.below(2000)
            ),
            _ => format!(
                "E1127 16:{:02}:{:02}.{:06} {} ProcessGroupNCCL.cpp:{}] [PG 0 Rank {}] heartbeat monitor: no timeout in the last {} seconds\n",
                rng.below(60), rng.below(60), rng.below(1_000_000), 1000 + rng.below(9000), rng.below(3000), rng.below(8), rng.below(600)
            ),
        };
        step += 1;
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
        if written >= next_oom {
            w.write_all(OOM.as_bytes())?;
            written += OOM.len() as u64;
            next_oom += OOM_EVERY;
            ooms += 1;
        }
    }
    w.flush()?;
    Ok(ooms)
}

fn main() -> std::io::Result<()> {
    let path = PathBuf::from(
        std::env::var("OOMDOC_BENCH_LOG").unwrap_or_else(|_| "/tmp/oomdoc-bench.log".into()),
    );
    let mb: u64 = std::env::var("OOMDOC_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let size = mb << 20;
    let expected = match std::fs::metadata(&path) {
        Ok(m) if m.len() >= size && m.len() < size + 4096 => {
            // same generator, same count
            (size.saturating_sub(OOM_EVERY / 2)) / OOM_EVERY + 1
        }
        _ => {
            eprintln!("generating {} ({} MiB)...", path.display(), mb);
            generate(&path, size)?
        }
    };
    let len = std::fs::metadata(&path)?.len();
    for run in 1..=3 {
        let t = Instant::now();
        let report =
            oomdoc::oom::parse_reader(BufReader::with_capacity(256 * 1024, File::open(&path)?))?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "run {run}: {} bytes, {} lines, {} events (expected {expected}) in {secs:.3} s = {:.0} MB/s",
            len,
            report.lines,
            report.events.len(),
            len as f64 / secs / 1e6
        );
    }
    Ok(())
}
