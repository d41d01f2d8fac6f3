//! Arbitrary text through the trace parser, and every trace it accepts through the estimate
//! (with and without the precision and checkpointing transformations): an error is fine, a
//! panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oomdoc::knobs::{Attention, Checkpointing, KnobArgs, KnobDefaults, Precision};
use oomdoc::model::trace;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = trace::parse(text) else {
        return;
    };
    let defaults = KnobDefaults {
        batch: 1,
        attention: Attention::Sdpa,
    };
    for (batch, precision, checkpointing) in [
        (1, Precision::Fp32, Checkpointing::None),
        (3, Precision::Bf16Mixed, Checkpointing::Full),
    ] {
        let args = KnobArgs {
            batch: Some(batch),
            precision: Some(precision),
            checkpointing: Some(checkpointing),
            ..Default::default()
        };
        if let Ok(knobs) = args.resolve(&defaults) {
            let _ = trace::estimate(&t, &knobs);
        }
    }
});
