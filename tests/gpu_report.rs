//! `oomdoc gpu` as rendered for a machine with GPUs (fixed data: CI has no driver).
use oomdoc::gpu::nvml::{GpuProcess, GpuReport, LocalGpu};
use oomdoc::report::{Ctx, Format, Lang};

const GIB: u64 = 1 << 30;

fn sample() -> GpuReport {
    GpuReport {
        gpus: vec![
            LocalGpu {
                index: 0,
                name: "NVIDIA GeForce RTX 3090".into(),
                total_bytes: 24 * GIB,
                free_bytes: 2 * GIB,
                used_bytes: 22 * GIB,
                compute_capability: Some((8, 6)),
                bf16: Some(true),
                processes: vec![
                    GpuProcess {
                        pid: 4242,
                        name: Some("python".into()),
                        used_bytes: Some(21 * GIB),
                    },
                    GpuProcess {
                        pid: 77,
                        name: None,
                        used_bytes: None,
                    },
                ],
                catalogue_id: Some("rtx3090"),
            },
            LocalGpu {
                index: 1,
                name: "Tesla T4".into(),
                total_bytes: 15 * GIB,
                free_bytes: 15 * GIB,
                used_bytes: 0,
                compute_capability: Some((7, 5)),
                bf16: Some(false),
                processes: vec![],
                catalogue_id: Some("t4"),
            },
        ],
        driver_version: Some("550.54.15".into()),
        cuda_driver_version: Some("12.4".into()),
        reason: None,
    }
}

#[test]
fn local_gpus_en_zh() {
    let r = sample();
    for (lang, name) in [(Lang::En, "gpu_local_en"), (Lang::Zh, "gpu_local_zh")] {
        let text =
            Ctx::new(Format::Text, lang).render_doc(&oomdoc::gpu::report::local_doc(&r, lang));
        insta::assert_snapshot!(name, text);
    }
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        v["gpus"][0]["compute_capability"],
        serde_json::json!([8, 6])
    );
    assert_eq!(
        v["gpus"][0]["processes"][1]["used_bytes"],
        serde_json::Value::Null
    );
    assert!(v.get("reason").is_none());
}
