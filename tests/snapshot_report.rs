//! Rendered snapshot reports (insta snapshots in tests/snapshots/), from the library API.
use std::path::Path;

use oomdoc::report::{markdown, text, Lang};
use oomdoc::snapshot::{self, source::Sources};

fn navdp(with_source: bool) -> snapshot::Analysis {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/snapshots");
    let snap = snapshot::load(&dir.join("navdp_like_fp32_b16_oom_at_23.55GiB.pickle.gz")).unwrap();
    let mut a = snapshot::analyse(&snap);
    if with_source {
        // Only the fixture's copy of the source, never the recorded path.
        let mut src = Sources::new(vec![dir.join("src")], false);
        snapshot::source::annotate(&mut a, &mut src);
    }
    a
}

#[test]
fn navdp_text_en() {
    let a = navdp(true);
    let doc = snapshot::report::document(&a, "navdp.pickle.gz", Lang::En);
    insta::assert_snapshot!("snapshot_navdp_text_en", text::render(&doc, false));
}

#[test]
fn navdp_text_zh() {
    let a = navdp(true);
    let doc = snapshot::report::document(&a, "navdp.pickle.gz", Lang::Zh);
    insta::assert_snapshot!("snapshot_navdp_text_zh", text::render(&doc, false));
}

#[test]
fn navdp_markdown_without_source() {
    let a = navdp(false);
    let doc = snapshot::report::document(&a, "navdp.pickle.gz", Lang::En);
    insta::assert_snapshot!("snapshot_navdp_markdown_en", markdown::render(&doc));
}
