//! Arbitrary bytes through the memory-snapshot reader (pickle, never executed) and, where it
//! accepts them, the analysis and both reports: an error is fine, a panic is not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(snap) = oomdoc::snapshot::from_reader(std::io::Cursor::new(data), "fuzz", false) else {
        return;
    };
    let a = oomdoc::snapshot::analysis::analyse(&snap);
    let _ = oomdoc::snapshot::html::page(&a, "fuzz", oomdoc::report::Lang::En);
});
