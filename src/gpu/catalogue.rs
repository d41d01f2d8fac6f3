//! Built-in GPU catalogue. `memory_bytes` is the total as PyTorch reports it
//! (`torch.cuda.get_device_properties(i).total_memory`, the "total capacity" of OOM messages),
//! which is what a training process can at most use; rates are vendor peak dense figures.
//! Each entry's comment gives its sources.
use serde::Serialize;

use crate::error::{Error, Result};
use crate::units::GIB;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuSpec {
    /// Canonical catalogue id, e.g. `rtx3090`.
    pub id: &'static str,
    pub name: &'static str,
    /// Memory as PyTorch reports it, bytes.
    pub memory_bytes: u64,
    /// (major, minor)
    pub compute_capability: (u32, u32),
    pub vendor: &'static str,
    /// Native bf16 support (Ampere / CDNA2 and newer).
    pub bf16: bool,
    /// Peak dense tensor-core TFLOP/s with fp32 accumulation, bf16 and fp16.
    pub bf16_tflops: f64,
    pub fp16_tflops: f64,
    /// Peak dense TF32 tensor-core TFLOP/s (0 where the GPU has none).
    pub tf32_tflops: f64,
    /// Peak fp32 (non-tensor) TFLOP/s.
    pub fp32_tflops: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
    /// Streaming multiprocessors (`multiProcessorCount`; compute units on AMD), from the vendor's
    /// specifications: sizes the staging buffer of reductions (`memory::reduction`).
    pub sms: u32,
    /// Other names it is known by.
    #[serde(skip)]
    pub aliases: &'static [&'static str],
}

const fn gib_x100(hundredths: u64) -> u64 {
    hundredths * GIB / 100
}

/// The catalogue. Memory is the "total capacity" that PyTorch prints in OOM messages of that card
/// (public issue logs, cited per entry) or a measurement (`total_memory`). It is NOT the nvidia-smi
/// total: the CUDA driver keeps a few hundred MiB back (e.g. RTX 4090: 24564 MiB = 23.99 GiB in
/// nvidia-smi, 23.65 GiB in PyTorch; L40S: 46068 MiB = 44.99 GiB vs 44.53 GiB). The figure also moves
/// by up to ~0.15 GiB with the driver version; where logs disagree the comment gives the range.
pub static CATALOGUE: &[GpuSpec] = &[
    // T4: 15360 MiB nominal, PyTorch prints "14.75 GiB total capacity" (Colab logs, e.g.
    // googlecolab/colabtools#3439, hpcaitech/Open-Sora#697; 14.74-14.76 also seen). NVIDIA T4 datasheet:
    // 65 TFLOP/s fp16 tensor, 8.1 fp32, 320 GB/s. No bf16 tensor cores.
    GpuSpec {
        id: "t4",
        name: "NVIDIA Tesla T4",
        memory_bytes: gib_x100(1475),
        compute_capability: (7, 5),
        vendor: "nvidia",
        bf16: false,
        bf16_tflops: 0.0,
        fp16_tflops: 65.0,
        tf32_tflops: 0.0,
        fp32_tflops: 8.1,
        bandwidth_gbs: 320.0,
        sms: 40,
        aliases: &["tesla t4"],
    },
    // V100 16 GB: logs print "15.78 GiB total capacity" (Colab V100, googlecolab/colabtools#2001).
    // Datasheet SXM2: 125 fp16 tensor, 15.7 fp32, 900 GB/s.
    GpuSpec {
        id: "v100-16",
        name: "NVIDIA V100 16GB",
        memory_bytes: gib_x100(1578),
        compute_capability: (7, 0),
        vendor: "nvidia",
        bf16: false,
        bf16_tflops: 0.0,
        fp16_tflops: 125.0,
        tf32_tflops: 0.0,
        fp32_tflops: 15.7,
        bandwidth_gbs: 900.0,
        sms: 80,
        aliases: &[
            "v100",
            "v10016gb",
            "tesla v100",
            // NVML / nvidia-smi names
            "Tesla V100-SXM2-16GB",
            "Tesla V100-PCIE-16GB",
        ],
    },
    // V100 32 GB: logs print "31.75 GiB total capacity" (many; 31.74 in liucongg/ChatGLM-Finetuning#73).
    // Same rates as above.
    GpuSpec {
        id: "v100-32",
        name: "NVIDIA V100 32GB",
        memory_bytes: gib_x100(3175),
        compute_capability: (7, 0),
        vendor: "nvidia",
        bf16: false,
        bf16_tflops: 0.0,
        fp16_tflops: 125.0,
        tf32_tflops: 0.0,
        fp32_tflops: 15.7,
        bandwidth_gbs: 900.0,
        sms: 80,
        aliases: &["v10032gb", "Tesla V100-SXM2-32GB", "Tesla V100-PCIE-32GB"],
    },
    // A10 / A10G 24 GB: an AWS g5 (A10G) training log prints "total capacity of 22.06 GiB" (was 22.20
    // here; 22.20 also appears in logs attributed to the A10). Datasheet A10: 125 bf16/fp16 dense,
    // 62.5 tf32, 31.2 fp32, 600 GB/s.
    GpuSpec {
        id: "a10",
        name: "NVIDIA A10",
        memory_bytes: gib_x100(2206),
        compute_capability: (8, 6),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 125.0,
        fp16_tflops: 125.0,
        tf32_tflops: 62.5,
        fp32_tflops: 31.2,
        bandwidth_gbs: 600.0,
        sms: 72,
        aliases: &["a10g"],
    },
    // A100 40 GB: "39.59 GiB total capacity" in Colab A100-40GB (SXM4) logs (was 39.39 here; 39.39 and
    // 39.50 also appear, TianheWu/CoSeR#10). Datasheet: 312 bf16/fp16, 156 tf32, 19.5 fp32, 1555 GB/s.
    GpuSpec {
        id: "a100-40",
        name: "NVIDIA A100 40GB",
        memory_bytes: gib_x100(3959),
        compute_capability: (8, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 312.0,
        fp16_tflops: 312.0,
        tf32_tflops: 156.0,
        fp32_tflops: 19.5,
        bandwidth_gbs: 1555.0,
        sms: 108,
        aliases: &["a100", "a10040gb", "A100-SXM4-40GB", "A100-PCIE-40GB"],
    },
    // A100 80 GB: logs print "79.15 GiB total capacity" (79.14 in lianqi1008/Control-GIC#6, 79.25 in
    // levihsu/OOTDiffusion#235). Datasheet SXM4: 312 bf16, 156 tf32, 19.5 fp32, 2039 GB/s.
    GpuSpec {
        id: "a100-80",
        name: "NVIDIA A100 80GB",
        memory_bytes: gib_x100(7915),
        compute_capability: (8, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 312.0,
        fp16_tflops: 312.0,
        tf32_tflops: 156.0,
        fp32_tflops: 19.5,
        bandwidth_gbs: 2039.0,
        sms: 108,
        aliases: &["a10080gb", "A100-SXM4-80GB", "A100 80GB PCIe"],
    },
    // L4: logs print "total capacity of 22.03 GiB" (several L4 runs; nvidia-smi 23034 MiB). Datasheet:
    // 121 bf16/fp16 dense (242 sparse), 60 tf32, 30.3 fp32, 300 GB/s.
    GpuSpec {
        id: "l4",
        name: "NVIDIA L4",
        memory_bytes: gib_x100(2203),
        compute_capability: (8, 9),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 121.0,
        fp16_tflops: 121.0,
        tf32_tflops: 60.0,
        fp32_tflops: 30.3,
        bandwidth_gbs: 300.0,
        sms: 58,
        aliases: &[],
    },
    // L40S: "total capacity of 44.53 GiB" (Wan-Video/Wan2.1#205, an L40S 48GB; was 46068 MiB = 44.99,
    // the nvidia-smi figure). Datasheet: 362 bf16/fp16 dense, 183 tf32, 91.6 fp32, 864 GB/s.
    GpuSpec {
        id: "l40s",
        name: "NVIDIA L40S",
        memory_bytes: gib_x100(4453),
        compute_capability: (8, 9),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 362.0,
        fp16_tflops: 362.0,
        tf32_tflops: 183.0,
        fp32_tflops: 91.6,
        bandwidth_gbs: 864.0,
        sms: 142,
        aliases: &[],
    },
    // RTX 3090 / A5000 24 GB: 23.55 GiB (the seed's log; an RTX A5000 measurement in a public report,
    // "A5000 24GB (usable 23.55 GiB)"; recent RTX 3090 logs print the same). Older drivers print
    // 23.69-23.70 GiB for the RTX 3090 (GaoLii/DSP#10, JiaweiLian/AP-PA#3): a 0.15 GiB spread.
    // NVIDIA Ampere GA102 whitepaper, RTX 3090 column: peak FP16/BF16 tensor TFLOP/s with FP32
    // accumulate 71 (dense; 142 sparse), TF32 tensor 35.6, FP32 35.6, 936 GB/s.
    GpuSpec {
        id: "rtx3090",
        name: "NVIDIA GeForce RTX 3090",
        memory_bytes: gib_x100(2355),
        compute_capability: (8, 6),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 71.0,
        fp16_tflops: 71.0,
        tf32_tflops: 35.6,
        fp32_tflops: 35.6,
        bandwidth_gbs: 936.0,
        sms: 82,
        aliases: &[
            "3090",
            "geforce rtx 3090",
            "rtx a5000",
            "a5000",
            "NVIDIA RTX A5000",
        ],
    },
    // RTX 4090: 23.65 GiB total capacity (TRI-ML/packnet-sfm#250, MotrixLab/AiOS#29; 23.61-23.68 also
    // seen with other drivers). Ada whitepaper: 165.2 fp16/bf16 w/ fp32 acc, 82.6 tf32, 82.6 fp32,
    // 1008 GB/s.
    GpuSpec {
        id: "rtx4090",
        name: "NVIDIA GeForce RTX 4090",
        memory_bytes: gib_x100(2365),
        compute_capability: (8, 9),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 165.2,
        fp16_tflops: 165.2,
        tf32_tflops: 82.6,
        fp32_tflops: 82.6,
        bandwidth_gbs: 1008.0,
        sms: 128,
        aliases: &["4090", "geforce rtx 4090"],
    },
    // RTX 5090: "total capacity of 31.37 GiB" (Wan-Video/Wan2.1#465, Ksuriuri/index-tts-vllm#91; 31.36
    // in TrajectoryCrafter#20; was 32607 MiB = 31.84, the nvidia-smi figure). Blackwell GeForce: 838.4
    // fp16 tensor sparse with fp16 acc = 419.2 dense, half that (209.5) with fp32 accumulate as on
    // every GeForce; 104.8 tf32, 104.8 fp32, 1792 GB/s.
    GpuSpec {
        id: "rtx5090",
        name: "NVIDIA GeForce RTX 5090",
        memory_bytes: gib_x100(3137),
        compute_capability: (12, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 209.5,
        fp16_tflops: 209.5,
        tf32_tflops: 104.8,
        fp32_tflops: 104.8,
        bandwidth_gbs: 1792.0,
        sms: 170,
        aliases: &["5090", "geforce rtx 5090"],
    },
    // RTX A6000: logs print "47.54 GiB total capacity" (several, e.g. replicate model errors).
    // Datasheet: 309.7 tensor TFLOP/s sparse = 154.8 bf16/fp16 dense, 77.4 tf32, 38.7 fp32, 768 GB/s.
    GpuSpec {
        id: "rtx-a6000",
        name: "NVIDIA RTX A6000",
        memory_bytes: gib_x100(4754),
        compute_capability: (8, 6),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 154.8,
        fp16_tflops: 154.8,
        tf32_tflops: 77.4,
        fp32_tflops: 38.7,
        bandwidth_gbs: 768.0,
        sms: 84,
        aliases: &["a6000"],
    },
    // H100 PCIe: nvidia-smi shows the same 81559 MiB as the SXM, whose PyTorch total is measured below
    // (79.18 GiB); no public PCIe OOM log was found, so the SXM figure is assumed (was 81559 MiB =
    // 79.65 GiB, the nvidia-smi figure). Datasheet: 756 bf16/fp16 dense, 378 tf32, 51.2 fp32, 2000 GB/s.
    GpuSpec {
        id: "h100-pcie",
        name: "NVIDIA H100 PCIe",
        memory_bytes: 85_017_493_504,
        compute_capability: (9, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 756.0,
        fp16_tflops: 756.0,
        tf32_tflops: 378.0,
        fp32_tflops: 51.2,
        bandwidth_gbs: 2000.0,
        sms: 114,
        aliases: &[],
    },
    // H100 SXM 80GB HBM3: total_memory 85017493504 measured (calibration/meta.json; 79.18 GiB in fixture 48).
    // Datasheet: 989 bf16/fp16 dense, 494 tf32, 67 fp32, 3350 GB/s.
    GpuSpec {
        id: "h100-sxm",
        name: "NVIDIA H100 80GB HBM3",
        memory_bytes: 85_017_493_504,
        compute_capability: (9, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 989.0,
        fp16_tflops: 989.0,
        tf32_tflops: 494.0,
        fp32_tflops: 67.0,
        bandwidth_gbs: 3350.0,
        sms: 132,
        aliases: &["h100", "h10080gb", "h100 80gb hbm3"],
    },
    // H200: "total capacity of 139.80 GiB" (several 8xH200 logs; 139.81 also seen; was 143771 MiB =
    // 140.40 GiB, the nvidia-smi figure). Datasheet: 989 bf16 dense, 494 tf32, 67 fp32, 4800 GB/s.
    GpuSpec {
        id: "h200",
        name: "NVIDIA H200",
        memory_bytes: gib_x100(13980),
        compute_capability: (9, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 989.0,
        fp16_tflops: 989.0,
        tf32_tflops: 494.0,
        fp32_tflops: 67.0,
        bandwidth_gbs: 4800.0,
        sms: 132,
        aliases: &[],
    },
    // B200: "total capacity of 178.35 GiB" (several 8xB200 logs; 178.36 also seen; was 183359 MiB =
    // 179.06 GiB). Datasheet HGX B200, per GPU: 4.5 PF bf16 sparse = 2250 dense, 2.2 PF tf32 sparse =
    // 1100 dense, 75 fp32, 180 GB at 7.7 TB/s (was 8000: that is the GB200's figure).
    GpuSpec {
        id: "b200",
        name: "NVIDIA B200",
        memory_bytes: gib_x100(17835),
        compute_capability: (10, 0),
        vendor: "nvidia",
        bf16: true,
        bf16_tflops: 2250.0,
        fp16_tflops: 2250.0,
        tf32_tflops: 1100.0,
        fp32_tflops: 75.0,
        bandwidth_gbs: 7700.0,
        sms: 148,
        aliases: &[],
    },
    // MI250X: PyTorch sees each of its two GCDs as a device of 64 GiB and prints "HIP out of memory ...
    // total capacity of 63.98 GiB" (ROCm logs). Datasheet (whole card): 383 bf16/fp16, 47.9 fp32
    // (vector), 3277 GB/s; per GCD half of that.
    GpuSpec {
        id: "mi250x",
        name: "AMD Instinct MI250X (one GCD)",
        memory_bytes: gib_x100(6398),
        compute_capability: (9, 0),
        vendor: "amd",
        bf16: true,
        bf16_tflops: 191.5,
        fp16_tflops: 191.5,
        tf32_tflops: 0.0,
        fp32_tflops: 23.95,
        bandwidth_gbs: 1638.5,
        sms: 110,
        aliases: &[],
    },
    // MI300X: 192 GB HBM3; ROCm logs print "total capacity of 191.98 GiB" (191.69 with some ROCm
    // releases). Datasheet: 1307 bf16/fp16 dense, 653.7 tf32, 163.4 fp32 (matrix), 5300 GB/s.
    GpuSpec {
        id: "mi300x",
        name: "AMD Instinct MI300X",
        memory_bytes: gib_x100(19198),
        compute_capability: (9, 4),
        vendor: "amd",
        bf16: true,
        bf16_tflops: 1307.0,
        fp16_tflops: 1307.0,
        tf32_tflops: 653.7,
        fp32_tflops: 163.4,
        bandwidth_gbs: 5300.0,
        sms: 304,
        aliases: &[],
    },
];

/// Lowercase, letters and digits only: "RTX-3090", "rtx 3090", "GeForce RTX 3090" compare equal.
fn key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .flat_map(|c| c.to_lowercase())
        .collect()
}

/// Finds a GPU by id, name or alias, tolerant of case and punctuation. Unknown names list the close ones.
pub fn lookup(name: &str) -> Result<&'static GpuSpec> {
    let k = key(name);
    let strip = |s: &str| {
        let s = key(s);
        s.strip_prefix("nvidia").map(str::to_string).unwrap_or(s)
    };
    let kk = k
        .strip_prefix("nvidia")
        .map(str::to_string)
        .unwrap_or(k.clone());
    let kk = kk.strip_prefix("geforce").map(str::to_string).unwrap_or(kk);
    for g in CATALOGUE {
        let names = std::iter::once(g.id)
            .chain(std::iter::once(g.name))
            .chain(g.aliases.iter().copied());
        for n in names {
            let nk = strip(n);
            let nk = nk.strip_prefix("geforce").map(str::to_string).unwrap_or(nk);
            if nk == kk {
                return Ok(g);
            }
        }
    }
    let mut close: Vec<(usize, &str)> = CATALOGUE
        .iter()
        .map(|g| (edit_distance(&kk, &key(g.id)), g.id))
        .collect();
    close.sort();
    let near: Vec<&str> = close
        .iter()
        .filter(|(d, _)| *d <= 3)
        .map(|(_, id)| *id)
        .take(3)
        .collect();
    let all: Vec<&str> = CATALOGUE.iter().map(|g| g.id).collect();
    Err(Error::input(if near.is_empty() {
        format!(
            "unknown GPU '{name}'; known: {} (or give --gpu-memory)",
            all.join(", ")
        )
    } else {
        format!(
            "unknown GPU '{name}'; did you mean {}? (known: {})",
            near.join(", "),
            all.join(", ")
        )
    }))
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_tolerant() {
        assert_eq!(lookup("rtx3090").unwrap().id, "rtx3090");
        assert_eq!(lookup("RTX-3090").unwrap().id, "rtx3090");
        assert_eq!(lookup("NVIDIA GeForce RTX 4090").unwrap().id, "rtx4090");
        assert_eq!(lookup("A100 80GB").unwrap().id, "a100-80");
        assert_eq!(lookup("h100").unwrap().id, "h100-sxm");
        // Names as NVML reports them, for `oomdoc gpu`.
        assert_eq!(lookup("NVIDIA A100-SXM4-80GB").unwrap().id, "a100-80");
        assert_eq!(lookup("Tesla V100-SXM2-16GB").unwrap().id, "v100-16");
        assert_eq!(lookup("NVIDIA A10G").unwrap().id, "a10");
        assert_eq!(lookup("NVIDIA H200").unwrap().id, "h200");
    }

    #[test]
    fn unknown_lists_close_names() {
        let e = lookup("rtx3080").unwrap_err().to_string();
        assert!(e.contains("did you mean"), "{e}");
        assert!(e.contains("rtx3090"), "{e}");
    }

    #[test]
    fn seed_card_is_23_55_gib() {
        let g = lookup("rtx3090").unwrap();
        assert_eq!(
            format!("{:.2}", g.memory_bytes as f64 / GIB as f64),
            "23.55"
        );
    }
}
