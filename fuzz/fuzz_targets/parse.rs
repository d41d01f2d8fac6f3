//! Arbitrary bytes through both entry points of the log parser: neither may panic, and the
//! streaming reader must agree with the in-memory one whenever the input is not rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let in_memory = oomdoc::oom::parse_bytes(data);
    if let Ok(report) = oomdoc::oom::parse_reader(std::io::Cursor::new(data)) {
        assert_eq!(report.events.len(), in_memory.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = oomdoc::oom::parse_str(text);
    }
});
