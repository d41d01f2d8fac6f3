//! Arbitrary projects through `fix`: the input's first byte picks one of four targets, the rest
//! is files separated by NUL bytes, each its path on the first line and its contents after.
//! `fix` may refuse a project (an error), but may not panic, may not produce Python that no
//! longer parses, and, run again on its own result, must have nothing left to change.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oomdoc::fix::{self, project::Project, DataLoaderOpts, Target};
use oomdoc::knobs::{Attention, Checkpointing, Optimizer, Precision};

fn targets() -> [Target; 4] {
    let loader = DataLoaderOpts {
        num_workers: Some(4),
        pin_memory: Some(true),
        persistent_workers: Some(true),
    };
    [
        // tests/fix_cli.rs NAVDP
        Target {
            batch: Some(8),
            grad_accum: Some(2),
            precision: Some(Precision::Bf16Mixed),
            checkpointing: Some(Checkpointing::Full),
            attention: Some(Attention::Sdpa),
            optimizer: Some(Optimizer::AdamwFused),
            dataloader: loader.clone(),
            alloc_conf: Some("expandable_segments:True".into()),
            ..Target::default()
        },
        // tests/fix_cli.rs LIGHTNING
        Target {
            batch: Some(16),
            grad_accum: Some(4),
            precision: Some(Precision::Bf16Mixed),
            checkpointing: Some(Checkpointing::Full),
            attention: Some(Attention::Sdpa),
            optimizer: Some(Optimizer::Adamw8bit),
            dataloader: loader,
            ..Target::default()
        },
        Target {
            batch: Some(4),
            precision: Some(Precision::Fp16Mixed),
            checkpointing: Some(Checkpointing::Selective),
            checkpoint_modules: vec!["model.blocks".into(), "encoder.layers".into()],
            optimizer: Some(Optimizer::Sgd),
            gpu: Some("T4".into()),
            bf16_supported: Some(false),
            ..Target::default()
        },
        Target {
            precision: Some(Precision::Bf16True),
            grad_accum: Some(8),
            attention: Some(Attention::Eager),
            checkpointing: Some(Checkpointing::None),
            dataloader: DataLoaderOpts {
                num_workers: Some(0),
                pin_memory: Some(false),
                persistent_workers: Some(false),
            },
            ..Target::default()
        },
    ]
}

/// The files of the input: "PATH\nCONTENTS", NUL-separated; paths are kept to plain relative
/// ones (as a directory walk gives them), duplicates dropped, sorted as the walk sorts them.
fn files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for part in data.split(|&b| b == 0).take(16) {
        let (name, body) = match part.iter().position(|&b| b == b'\n') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &[][..]),
        };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let plain = !name.is_empty()
            && name.split('/').all(|c| {
                !c.is_empty()
                    && !c.starts_with('.')
                    && c.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch))
            });
        if plain && !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), body.to_vec()));
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let target = &targets()[pick as usize % 4];
    let files = files(rest);
    let root = Path::new("project");
    let Ok(project) = Project::from_files(root, files.clone()) else {
        return;
    };
    let patch = match fix::analyze_project(&project, target) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains("would not parse"), "{msg}");
            return;
        }
    };
    // Run again on the result: it must read back, and a second run changes nothing.
    let patched: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|(name, body)| {
            match patch.files.iter().find(|f| f.path == name) {
                Some(f) => (name, f.new.clone().into_bytes()),
                None => (name, body),
            }
        })
        .collect();
    let again = Project::from_files(root, patched).expect("the patched project reads back");
    let second = fix::analyze_project(&again, target).expect("fix runs on its own result");
    assert!(
        second.files.is_empty(),
        "a second run still changes {:?}",
        second.unified_diff()
    );
});
