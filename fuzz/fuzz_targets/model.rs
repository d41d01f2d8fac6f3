//! Arbitrary bytes as a safetensors header, and text as a Hugging Face config.json and as a
//! workload file; every model either accepts is built (traced) and estimated: an error is fine,
//! a panic, a hang or a figure that wrapped around is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomdoc::knobs::KnobArgs;
use oomdoc::model::{build, hf, workload_toml};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = oomdoc::model::safetensors::parse_header(data) {
        assert!(h.bytes >= h.params);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| hf::parse(&v).ok());
    let toml = workload_toml::parse(text).ok();
    for desc in json.into_iter().chain(toml) {
        let args = KnobArgs::default();
        let Ok(w) = build("fuzz", desc, &args) else {
            continue;
        };
        let Ok(k) = w.resolve_knobs(&args) else {
            continue;
        };
        if let Ok(e) = oomdoc::memory::estimate(&w, &k) {
            assert!(e.device_total_bytes >= e.peak_reserved_bytes);
            assert!(e.peak_reserved_bytes >= e.peak_allocated_bytes);
        }
    }
});
