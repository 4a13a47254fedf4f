//! Runs every fuzz target's checks on its committed seeds and on the corpus that
//! `cargo fuzz` has grown in `corpus/<target>/`, if any. This needs only stable Rust,
//! so the targets' checks also run where libFuzzer cannot.
//!
//! The unpack target creates device nodes and sets owners and `trusted.*` xattrs, so
//! this test must run as root.

use std::fs;
use std::path::{Path, PathBuf};

/// Returns the files in `seeds/<target>/` and `corpus/<target>/`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in [
        root.join("seeds").join(target),
        root.join("corpus").join(target),
    ] {
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
    let files = inputs(target);
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

/// Reports whether this process runs as root: the kernel gives `/proc/self` the
/// process's effective uid as its owner.
fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|metadata| std::os::unix::fs::MetadataExt::uid(&metadata) == 0)
        .unwrap_or(false)
}
