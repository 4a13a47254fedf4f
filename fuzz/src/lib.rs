//! Checks shared by the fuzz targets and by the corpus replay in `tests/`, which runs
//! the same checks on stable Rust without libFuzzer.
//!
//! Each function panics when a property fails, which libFuzzer reports as a crash.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rootfs_cache::image::{Manifest, select_platform};
use rootfs_cache::unpack::{Compression, UnpackOptions, unpack_layer as unpack};
use rootfs_cache::{Digest, ImageConfig, ImageReference, ImageSource};

/// Content of the canary file next to the destination.
const CANARY: &[u8] = b"canary\n";

/// Maximum uncompressed size of a fuzzed layer. Inputs are far smaller, so this only
/// keeps a sparse file from allocating much disk.
const MAX_LAYER_BYTES: u64 = 64 << 20;

/// Directories that every unpack of one process shares: a parent layer, a canary
/// directory and the directory that contains each destination.
struct Workspace {
    parent: PathBuf,
    canary: PathBuf,
    scratch: PathBuf,
    canary_before: Vec<(PathBuf, u32, u64, i64)>,
    parent_before: Vec<(PathBuf, u32, u64, i64)>,
}

/// Unpacks into `parent` a layer with the shapes that make lookups in parent layers
/// interesting: symlinks into the tree and out of it, a hardlink pair, an opaque
/// directory and a whiteout.
fn make_parent_layer(parent: &Path) {
    let tar = {
        let mut builder = Builder::default();
        builder.dir("usr/", 0o755);
        builder.dir("usr/lib/", 0o750);
        builder.file("usr/lib/libc.so", 0o755, b"elf");
        builder.hardlink("usr/lib/libc-link.so", "usr/lib/libc.so");
        builder.symlink("lib", "usr/lib");
        builder.symlink("root-link", "/");
        builder.symlink("up", "../..");
        builder.dir("etc/", 0o755);
        builder.file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n");
        builder.file("opaque/.wh..wh..opq", 0o644, b"");
        builder.file("opaque/kept", 0o644, b"kept");
        builder.file(".wh.removed", 0o644, b"");
        builder.finish()
    };
    unpack(
        tar.as_slice(),
        Compression::None,
        parent,
        &[],
        &UnpackOptions::default(),
    )
    .expect("the fixed parent layer unpacks");
}

/// Lists `(path, mode, size, mtime)` of every object below `dir`.
fn describe(dir: &Path) -> Vec<(PathBuf, u32, u64, i64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = fs::symlink_metadata(&path).expect("stat below the workspace");
        if metadata.is_dir() {
            for entry in fs::read_dir(&path).expect("read a workspace directory") {
                pending.push(entry.expect("read a workspace entry").path());
            }
        }
        out.push((path, metadata.mode(), metadata.size(), metadata.mtime()));
    }
    out.sort();
    out
}

/// Name prefix of a workspace directory, followed by the process ID.
const WORKSPACE_PREFIX: &str = "rootfs-cache-fuzz-";

/// Removes the workspaces in `dir` whose process has exited. libFuzzer ends a process
/// with exit(3), which runs no destructors, so a workspace cannot remove itself.
fn remove_stale_workspaces(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(WORKSPACE_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: OnceLock<Workspace> = OnceLock::new();
    WORKSPACE.get_or_init(|| {
        // tmpfs keeps the many small unpacks off the disk and supports trusted xattrs.
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        remove_stale_workspaces(&dir);
        let base = dir.join(format!("{WORKSPACE_PREFIX}{}", std::process::id()));
        // A workspace left by an earlier process with the same ID.
        let _ = fs::remove_dir_all(&base);
        let parent = base.join("parent");
        let canary = base.join("canary");
        let scratch = base.join("scratch");
        for dir in [&parent, &canary, &scratch] {
            fs::create_dir_all(dir).expect("create a workspace directory");
        }
        fs::create_dir(canary.join("dir")).expect("create the canary directory");
        fs::write(canary.join("secret"), CANARY).expect("write the canary");
        make_parent_layer(&parent);
        Workspace {
            canary_before: describe(&canary),
            parent_before: describe(&parent),
            parent,
            canary,
            scratch,
        }
    })
}

/// Unpacks `data` as an uncompressed layer tar over a fixed parent layer, then checks
/// that the canary directory next to the destination, the parent layer and the
/// directory that contains the destination are as they were. Unpack errors are expected.
pub fn unpack_layer(data: &[u8]) {
    let workspace = workspace();
    let dest = tempfile::Builder::new()
        .prefix("dest-")
        .tempdir_in(&workspace.scratch)
        .expect("create a destination");
    let options = UnpackOptions {
        max_uncompressed_bytes: MAX_LAYER_BYTES,
    };
    let result = unpack(
        data,
        Compression::None,
        dest.path(),
        std::slice::from_ref(&workspace.parent),
        &options,
    );

    if let Ok(layer) = &result {
        assert_eq!(layer.bytes, data.len() as u64, "bytes of a plain tar");
        assert_eq!(layer.diff_id, Digest::of(data).to_string(), "diff ID");
    }

    assert_eq!(
        fs::read(workspace.canary.join("secret")).expect("read the canary"),
        CANARY,
        "the canary file changed"
    );
    assert_eq!(
        describe(&workspace.canary),
        workspace.canary_before,
        "the canary directory changed"
    );
    assert_eq!(
        describe(&workspace.parent),
        workspace.parent_before,
        "the parent layer changed"
    );

    let names: Vec<_> = fs::read_dir(&workspace.scratch)
        .expect("read the scratch directory")
        .map(|entry| entry.expect("read a scratch entry").file_name())
        .collect();
    assert_eq!(
        names,
        [dest.path().file_name().expect("named destination")],
        "an entry was created next to the destination"
    );
    // A failed unpack leaves a partial tree, which the store removes the same way.
    dest.close().expect("remove the destination");
}

/// Parses `data` as a manifest or index and as an image config. A document that parses
/// must serialize to JSON that parses to the same document.
pub fn parse_documents(data: &[u8]) {
    match Manifest::parse(data) {
        Ok(Manifest::Index(entries)) => {
            let selected = select_platform(&entries, "amd64");
            if let Some(entry) = selected {
                let platform = entry.platform.as_ref().expect("selected by platform");
                assert_eq!(platform.os, "linux");
                assert_eq!(platform.architecture, "amd64");
            }
        }
        Ok(Manifest::Image { config, layers }) => {
            for layer in &layers {
                let _ = Compression::from_media_type(&layer.media_type);
            }
            let again: Digest = config
                .digest
                .to_string()
                .parse()
                .expect("a parsed digest prints as a valid digest");
            assert_eq!(again, config.digest);
        }
        Err(_) => {}
    }

    if let Ok(config) = serde_json::from_slice::<ImageConfig>(data) {
        let json = serde_json::to_value(&config).expect("serialize a parsed config");
        let again: ImageConfig =
            serde_json::from_value(json.clone()).expect("parse a serialized config");
        assert_eq!(
            serde_json::to_value(&again).expect("serialize the config again"),
            json,
            "config round trip"
        );
        let _ = rootfs_cache::digest::chain_ids(&config.rootfs.diff_ids);
    }
}

/// Parses `data` as an image source, an image reference and a digest. Whatever parses
/// must print as text that parses to the same value.
pub fn parse_references(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(digest) = text.parse::<Digest>() {
        let again: Digest = digest.to_string().parse().expect("reparse a digest");
        assert_eq!(again, digest);
    }
    if let Ok(reference) = text.parse::<ImageReference>() {
        let printed = reference.to_string();
        let again: ImageReference = printed
            .parse()
            .unwrap_or_else(|error| panic!("reparse reference {printed:?}: {error}"));
        assert_eq!(again.to_string(), printed);
    }
    if let Ok(source) = text.parse::<ImageSource>() {
        let printed = source.to_string();
        let again: ImageSource = printed
            .parse()
            .unwrap_or_else(|error| panic!("reparse source {printed:?}: {error}"));
        assert_eq!(again, source);
    }
}

/// A ustar archive written header by header, for the fixed parent layer.
#[derive(Default)]
struct Builder {
    bytes: Vec<u8>,
}

impl Builder {
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.add(name, b'0', mode, "", data);
    }

    fn dir(&mut self, name: &str, mode: u32) {
        self.add(name, b'5', mode, "", b"");
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.add(name, b'2', 0o777, target, b"");
    }

    fn hardlink(&mut self, name: &str, target: &str) {
        self.add(name, b'1', 0o644, target, b"");
    }

    fn add(&mut self, name: &str, kind: u8, mode: u32, link: &str, data: &[u8]) {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 1_600_000_000);
        header[156] = kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as eight spaces.
        header[148..156].fill(b' ');
        let sum: u64 = header.iter().map(|byte| u64::from(*byte)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(data);
        let padding = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, padding));
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self.bytes
    }
}

/// Writes `value` as a NUL-terminated octal number that fills `field`.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}
