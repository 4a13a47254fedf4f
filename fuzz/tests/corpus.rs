//! Runs every fuzz target's checks on its committed seeds in `seeds/<target>/`, on the
//! committed inputs of fixed crashes in `regressions/<target>/` and on the corpus that
//! `cargo fuzz` has grown in `corpus/<target>/`, if any. This needs only stable Rust,
//! so the targets' checks also run where libFuzzer cannot.
//!
//! The unpack target creates device nodes and sets owners and `trusted.*` xattrs, so
//! this test must run as root.

use std::fs;
use std::path::{Path, PathBuf};

/// Directories below the fuzz crate whose `<target>/` subdirectories hold inputs.
const INPUT_DIRS: [&str; 3] = ["seeds", "regressions", "corpus"];

/// Returns the files in `seeds/<target>/`, `regressions/<target>/` and
/// `corpus/<target>/` below `root`, sorted.
fn inputs(root: &Path, target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in INPUT_DIRS.map(|dir| root.join(dir).join(target)) {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target` and returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let files = inputs(Path::new(env!("CARGO_MANIFEST_DIR")), target);
    for path in &files {
        let data = fs::read(path).unwrap();
        eprintln!("{target}: {}", path.display());
        check(&data);
    }
    files.len()
}

#[test]
fn unpack_layer_corpus() {
    assert!(
        is_root(),
        "the unpack target creates device nodes and chowns files: run as root"
    );
    assert!(replay("unpack_layer", rootfs_cache_fuzz::unpack_layer) >= 5);
}

#[test]
fn parse_documents_corpus() {
    assert!(replay("parse_documents", rootfs_cache_fuzz::parse_documents) >= 3);
}

#[test]
fn parse_references_corpus() {
    assert!(replay("parse_references", rootfs_cache_fuzz::parse_references) >= 4);
}

#[test]
fn inputs_include_seeds_regressions_and_corpus() {
    let root = tempfile::tempdir().unwrap();
    for dir in INPUT_DIRS {
        fs::create_dir_all(root.path().join(dir).join("parse_references")).unwrap();
        fs::write(
            root.path().join(dir).join("parse_references").join("input"),
            dir,
        )
        .unwrap();
    }
    fs::create_dir(root.path().join("regressions/parse_references/subdir")).unwrap();
    fs::create_dir_all(root.path().join("regressions/parse_documents")).unwrap();
    fs::write(root.path().join("regressions/parse_documents/other"), "{}").unwrap();

    let expected: Vec<PathBuf> = ["corpus", "regressions", "seeds"]
        .iter()
        .map(|dir| root.path().join(dir).join("parse_references/input"))
        .collect();
    assert_eq!(inputs(root.path(), "parse_references"), expected);
}

/// Reports whether this process runs as root: the kernel gives `/proc/self` the
/// process's effective uid as its owner.
fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|metadata| std::os::unix::fs::MetadataExt::uid(&metadata) == 0)
        .unwrap_or(false)
}
