//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same
//! invariant checks the cargo-fuzz targets run (`keygate::fuzzing`), so every
//! seed and every input a fuzz run kept is checked by plain `cargo test` on
//! stable, without cargo-fuzz or libFuzzer.

use std::path::Path;

use keygate::fuzzing::TARGETS;

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn every_corpus_input_keeps_its_targets_invariants() {
    let mut replayed = 0;
    for (target, check) in TARGETS {
        let dir = corpus().join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target} has no corpus");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            // Name the file that broke an invariant, then fail with its panic.
            let outcome = std::panic::catch_unwind(|| check(&data));
            if let Err(panic) = outcome {
                eprintln!("invariant broken by {}", file.display());
                std::panic::resume_unwind(panic);
            }
            replayed += 1;
        }
    }
    assert!(replayed > 0);
}

#[test]
fn every_corpus_folder_is_a_fuzz_target() {
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(TARGETS.iter().any(|(target, _)| *target == name), "fuzz/corpus/{name} has no target");
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(source.exists(), "{} is missing", source.display());
    }
}
