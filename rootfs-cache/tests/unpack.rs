//! Tests of `unpack_layer` against real tar archives and a real filesystem.
//!
//! They create device nodes, chown files and set `trusted.*` and `security.*` xattrs, so
//! they must run as root on a filesystem with xattr support. One test runs GNU `tar`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rootfs_cache::unpack::{Compression, UnpackError, UnpackOptions, UnpackedLayer, unpack_layer};
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const MTIME: u64 = 1_600_000_000;

/// One tar entry, written with a raw header so hostile names reach the archive as is.
#[derive(Clone)]
struct Spec<'a> {
    name: &'a [u8],
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: &'a [u8],
    data: &'a [u8],
    device: (u32, u32),
    pax: PaxRecords,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            name: b"",
            kind: EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            link: b"",
            data: b"",
            device: (0, 0),
            pax: Vec::new(),
        }
    }
}

fn file<'a>(name: &'a str, mode: u32, data: &'a [u8]) -> Spec<'a> {
    Spec {
        name: name.as_bytes(),
        mode,
        data,
        ..Spec::default()
    }
}

fn dir(name: &str, mode: u32) -> Spec<'_> {
    Spec {
        name: name.as_bytes(),
        kind: EntryType::Directory,
        mode,
        ..Spec::default()
    }
}

fn symlink_entry<'a>(name: &'a str, target: &'a str) -> Spec<'a> {
    Spec {
        name: name.as_bytes(),
        kind: EntryType::Symlink,
        mode: 0o777,
        link: target.as_bytes(),
        ..Spec::default()
    }
}

fn hardlink<'a>(name: &'a str, target: &'a str) -> Spec<'a> {
    Spec {
        name: name.as_bytes(),
        kind: EntryType::Link,
        link: target.as_bytes(),
        ..Spec::default()
    }
}

fn xattr_record(name: &str, value: &[u8]) -> (String, Vec<u8>) {
    (format!("SCHILY.xattr.{name}"), value.to_vec())
}

/// Encodes PAX records as `<length> <key>=<value>\n`, where length counts itself.
fn pax_data(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3;
        let mut length = body + 1;
        while length != body + length.to_string().len() {
            length = body + length.to_string().len();
        }
        data.extend_from_slice(format!("{length} {key}=").as_bytes());
        data.extend_from_slice(value);
        data.push(b'\n');
    }
    data
}

struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Layer {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn add(&mut self, spec: Spec<'_>) -> &mut Self {
        if !spec.pax.is_empty() {
            let data = pax_data(&spec.pax);
            let mut header = Header::new_ustar();
            header.as_old_mut().name[..11].copy_from_slice(b"PaxHeader/x");
            header.set_entry_type(EntryType::XHeader);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            self.builder.append(&header, data.as_slice()).unwrap();
        }
        let mut header = Header::new_gnu();
        assert!(spec.name.len() <= 100, "use a PAX path for long names");
        header.as_old_mut().name[..spec.name.len()].copy_from_slice(spec.name);
        if spec.link.len() <= 100 {
            header.as_old_mut().linkname[..spec.link.len()].copy_from_slice(spec.link);
        }
        header.set_entry_type(spec.kind);
        header.set_mode(spec.mode);
        header.set_uid(spec.uid);
        header.set_gid(spec.gid);
        header.set_mtime(spec.mtime);
        header.set_size(spec.data.len() as u64);
        if matches!(spec.kind, EntryType::Char | EntryType::Block) {
            header.set_device_major(spec.device.0).unwrap();
            header.set_device_minor(spec.device.1).unwrap();
        }
        header.set_cksum();
        self.builder.append(&header, spec.data).unwrap();
        self
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

fn layer(specs: Vec<Spec<'_>>) -> Vec<u8> {
    let mut layer = Layer::new();
    for spec in specs {
        layer.add(spec);
    }
    layer.finish()
}

fn unpack(tar: &[u8], dest: &Path, parents: &[PathBuf]) -> Result<UnpackedLayer, UnpackError> {
    unpack_layer(
        tar,
        Compression::None,
        dest,
        parents,
        &UnpackOptions::default(),
    )
}

fn new_dest(base: &Path, name: &str) -> PathBuf {
    let dest = base.join(name);
    fs::create_dir(&dest).unwrap();
    dest
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; 65536];
    match rustix::fs::lgetxattr(path, name, &mut buffer[..]) {
        Ok(len) => Some(buffer[..len].to_vec()),
        Err(Errno::NODATA) => None,
        Err(error) => panic!("getxattr {name} on {}: {error}", path.display()),
    }
}

fn is_whiteout(path: &Path) -> bool {
    let metadata = fs::symlink_metadata(path).unwrap();
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let metadata = fs::symlink_metadata(path).unwrap();
    (metadata.uid(), metadata.gid())
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Describes every object under `root`: type, mode, owner, mtime, content or target,
/// device number and xattrs.
fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<String, String>) {
        let metadata = fs::symlink_metadata(path).unwrap();
        let file_type = metadata.file_type();
        let detail = if file_type.is_dir() {
            let mut children: Vec<_> = fs::read_dir(path)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .collect();
            children.sort();
            for child in children {
                walk(root, &child, out);
            }
            "dir".to_owned()
        } else if file_type.is_symlink() {
            format!("symlink {}", fs::read_link(path).unwrap().display())
        } else if file_type.is_file() {
            format!(
                "file {} ino-links {}",
                hex::encode(Sha256::digest(fs::read(path).unwrap())),
                metadata.nlink()
            )
        } else {
            format!(
                "node {:o} rdev {}",
                metadata.mode() & 0o170000,
                metadata.rdev()
            )
        };
        let mut xattr_names = vec![0u8; 65536];
        let len = rustix::fs::llistxattr(path, &mut xattr_names[..]).unwrap();
        let mut xattrs = Vec::new();
        for name in xattr_names[..len]
            .split(|b| *b == 0)
            .filter(|n| !n.is_empty())
        {
            let name = std::str::from_utf8(name).unwrap();
            xattrs.push(format!(
                "{name}={}",
                hex::encode(xattr(path, name).unwrap())
            ));
        }
        let relative = path.strip_prefix(root).unwrap().display().to_string();
        let mtime = metadata.mtime();
        out.insert(
            relative,
            format!(
                "{detail} mode {:o} owner {}:{} mtime {mtime} xattrs [{}]",
                metadata.mode() & 0o7777,
                metadata.uid(),
                metadata.gid(),
                xattrs.join(",")
            ),
        );
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A temp directory with `dest/` to unpack into and `canary/` next to it, which no
/// entry may reach.
struct Sandbox {
    base: tempfile::TempDir,
    dest: PathBuf,
    before: BTreeMap<String, String>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let base = tempfile::tempdir().unwrap();
        let canary = base.path().join("canary");
        fs::create_dir_all(canary.join("dir")).unwrap();
        fs::write(canary.join("secret"), b"canary").unwrap();
        let dest = new_dest(base.path(), "dest");
        let before = Self::outside(base.path());
        Sandbox { base, dest, before }
    }

    fn outside(base: &Path) -> BTreeMap<String, String> {
        let mut tree = describe_tree(base);
        tree.retain(|path, _| path != "dest" && !path.starts_with("dest/"));
        tree
    }

    fn unpack(&self, tar: &[u8]) -> Result<UnpackedLayer, UnpackError> {
        unpack(tar, &self.dest, &[])
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(Self::outside(self.base.path()), self.before);
        assert_eq!(
            fs::read(self.base.path().join("canary/secret")).unwrap(),
            b"canary"
        );
    }
}

/// Returns a name for probing the host's `/`, unique to this process and test.
fn host_probe(test: &str) -> String {
    format!("agentkernel-unpack-probe-{}-{test}", std::process::id())
}

/// Asserts that `/<probe>` does not exist, removing it first if an escape created it.
fn assert_host_probe_absent(probe: &str) {
    let path = Path::new("/").join(probe);
    let Ok(metadata) = fs::symlink_metadata(&path) else {
        return;
    };
    if metadata.is_dir() {
        fs::remove_dir_all(&path).unwrap();
    } else {
        fs::remove_file(&path).unwrap();
    }
    panic!(
        "an entry escaped the destination and created {}",
        path.display()
    );
}

fn capability_v2() -> Vec<u8> {
    // struct vfs_cap_data, revision 2 with the effective flag: CAP_NET_BIND_SERVICE (10)
    // permitted, nothing inheritable.
    let mut value = Vec::new();
    value.extend_from_slice(&0x0200_0001u32.to_le_bytes());
    value.extend_from_slice(&(1u32 << 10).to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value
}

fn full_layer() -> Vec<u8> {
    layer(vec![
        dir("./", 0o755),
        dir("usr/", 0o755),
        dir("usr/bin/", 0o755),
        Spec {
            uid: 0,
            ..file("usr/bin/su", 0o4755, b"setuid binary")
        },
        Spec {
            pax: vec![
                xattr_record("security.capability", &capability_v2()),
                xattr_record("user.origin", b"layer"),
            ],
            ..file("usr/bin/ping", 0o755, b"capable binary")
        },
        symlink_entry("usr/bin/sh", "busybox"),
        hardlink("usr/bin/su-link", "usr/bin/su"),
        Spec {
            uid: 1000,
            gid: 1000,
            mtime: 1_500_000_000,
            ..dir("home/user/", 0o2750)
        },
        Spec {
            uid: 1000,
            gid: 1000,
            mtime: 1_400_000_000,
            ..file("home/user/notes", 0o640, b"hello")
        },
        dir("tmp/", 0o1777),
        Spec {
            name: b"run/fifo",
            kind: EntryType::Fifo,
            mode: 0o620,
            ..Spec::default()
        },
        Spec {
            name: b"dev/null",
            kind: EntryType::Char,
            mode: 0o666,
            device: (1, 3),
            ..Spec::default()
        },
        Spec {
            name: b"dev/loop0",
            kind: EntryType::Block,
            mode: 0o660,
            gid: 6,
            device: (7, 0),
            ..Spec::default()
        },
    ])
}

#[test]
fn unpack_applies_all_entry_types() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    unpack(&full_layer(), &dest, &[]).unwrap();

    let su = dest.join("usr/bin/su");
    assert!(fs::symlink_metadata(&su).unwrap().is_file());
    assert_eq!(mode(&su), 0o4755);
    assert_eq!(fs::read(&su).unwrap(), b"setuid binary");

    let ping = dest.join("usr/bin/ping");
    assert_eq!(xattr(&ping, "security.capability"), Some(capability_v2()));
    assert_eq!(xattr(&ping, "user.origin"), Some(b"layer".to_vec()));
    assert_eq!(mode(&ping), 0o755);

    let sh = dest.join("usr/bin/sh");
    assert!(fs::symlink_metadata(&sh).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_link(&sh).unwrap(), Path::new("busybox"));

    let link = fs::symlink_metadata(dest.join("usr/bin/su-link")).unwrap();
    let target = fs::symlink_metadata(&su).unwrap();
    assert_eq!(link.ino(), target.ino());
    assert_eq!(target.nlink(), 2);

    let home = dest.join("home/user");
    assert_eq!(mode(&home), 0o2750);
    assert_eq!(owner(&home), (1000, 1000));
    assert_eq!(fs::symlink_metadata(&home).unwrap().mtime(), 1_500_000_000);
    let notes = dest.join("home/user/notes");
    assert_eq!(owner(&notes), (1000, 1000));
    assert_eq!(mode(&notes), 0o640);
    assert_eq!(fs::symlink_metadata(&notes).unwrap().mtime(), 1_400_000_000);
    assert_eq!(fs::symlink_metadata(&su).unwrap().mtime(), MTIME as i64);
    assert_eq!(
        fs::symlink_metadata(dest.join("usr")).unwrap().mtime(),
        MTIME as i64
    );

    assert_eq!(mode(&dest.join("tmp")), 0o1777);

    let fifo = fs::symlink_metadata(dest.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.permissions().mode() & 0o7777, 0o620);

    let null = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.permissions().mode() & 0o7777, 0o666);

    let loop0 = fs::symlink_metadata(dest.join("dev/loop0")).unwrap();
    assert!(loop0.file_type().is_block_device());
    assert_eq!(loop0.rdev(), rustix::fs::makedev(7, 0));
    assert_eq!(loop0.gid(), 6);

    // `run` and `dev` have no entry and no parent layer, so they get the default.
    assert_eq!(mode(&dest.join("run")), 0o755);
    assert_eq!(owner(&dest.join("dev")), (0, 0));
}

#[test]
fn unpack_returns_diff_id_of_whole_stream() {
    let mut tar = full_layer();
    // Writers may pad past the two zero blocks of the end-of-archive marker.
    tar.extend_from_slice(&[0u8; 4096]);
    let expected = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));

    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let unpacked = unpack(&tar, &dest, &[]).unwrap();

    assert_eq!(unpacked.diff_id, expected);
    assert_eq!(unpacked.bytes, tar.len() as u64);
}

#[test]
fn compressions_give_same_tree() {
    let tar = full_layer();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Two gzip members, as produced by parallel compressors such as pigz.
    let (first, second) = tar.split_at(1536);
    gzip.write_all(first).unwrap();
    let mut gzip_bytes = gzip.finish().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(second).unwrap();
    gzip_bytes.extend(gzip.finish().unwrap());
    let zstd_bytes = zstd::encode_all(tar.as_slice(), 3).unwrap();

    let base = tempfile::tempdir().unwrap();
    let mut trees = Vec::new();
    for (name, blob, compression) in [
        ("none", tar.clone(), Compression::None),
        ("gzip", gzip_bytes, Compression::Gzip),
        ("zstd", zstd_bytes, Compression::Zstd),
    ] {
        let dest = new_dest(base.path(), name);
        let unpacked = unpack_layer(
            blob.as_slice(),
            compression,
            &dest,
            &[],
            &UnpackOptions::default(),
        )
        .unwrap();
        assert_eq!(
            unpacked.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar))),
            "{name}"
        );
        trees.push(describe_tree(&dest));
    }
    assert!(trees[0].contains_key("usr/bin/su"));
    assert_eq!(trees[0], trees[1]);
    assert_eq!(trees[0], trees[2]);
}

#[test]
fn max_uncompressed_bytes_is_enforced() {
    let tar = full_layer();
    let base = tempfile::tempdir().unwrap();

    let exact = new_dest(base.path(), "exact");
    let options = UnpackOptions {
        max_uncompressed_bytes: tar.len() as u64,
    };
    unpack_layer(tar.as_slice(), Compression::None, &exact, &[], &options).unwrap();

    let short = new_dest(base.path(), "short");
    let options = UnpackOptions {
        max_uncompressed_bytes: tar.len() as u64 - 1,
    };
    let error = unpack_layer(tar.as_slice(), Compression::None, &short, &[], &options).unwrap_err();
    assert!(
        matches!(error, UnpackError::TooLarge { limit } if limit == tar.len() as u64 - 1),
        "{error}"
    );

    // 64 MiB of zeros compress to about 64 KiB, and the limit stops the copy at 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let bomb = layer(vec![file("zeros", 0o644, &zeros)]);
    let compressed = zstd::encode_all(bomb.as_slice(), 3).unwrap();
    let small = new_dest(base.path(), "bomb");
    let options = UnpackOptions {
        max_uncompressed_bytes: 1 << 20,
    };
    let error = unpack_layer(
        compressed.as_slice(),
        Compression::Zstd,
        &small,
        &[],
        &options,
    )
    .unwrap_err();
    assert!(matches!(error, UnpackError::TooLarge { .. }), "{error}");
    assert!(fs::metadata(small.join("zeros")).unwrap().len() <= 1 << 20);
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let tar = layer(vec![
        file("a/file", 0o644, b"removed below"),
        file("a/.wh.file", 0o644, b""),
        Spec {
            uid: 1000,
            gid: 1000,
            ..file(".wh.gone", 0o644, b"")
        },
        file("o/before", 0o644, b"1"),
        file("o/.wh..wh..opq", 0o644, b""),
        file("o/after", 0o644, b"2"),
        file("implied/.wh..wh..opq", 0o644, b""),
        file(".wh..wh.plnk/1234.5678", 0o644, b"aufs"),
        file(".wh..wh.aufs", 0o644, b""),
        file(".wh.recreated", 0o644, b""),
        dir("recreated/", 0o750),
        file("recreated/new", 0o644, b"new"),
        file(".wh.parent", 0o644, b""),
        file("parent/child", 0o644, b"under a removed dir"),
    ]);
    unpack(&tar, &dest, &[]).unwrap();

    assert!(is_whiteout(&dest.join("a/file")));
    assert!(is_whiteout(&dest.join("gone")));
    assert_eq!(mode(&dest.join("gone")), 0);
    assert_eq!(owner(&dest.join("gone")), (1000, 1000));
    assert!(!exists(&dest.join(".wh.gone")));

    assert_eq!(
        xattr(&dest.join("o"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(fs::read(dest.join("o/before")).unwrap(), b"1");
    assert_eq!(fs::read(dest.join("o/after")).unwrap(), b"2");
    assert!(!exists(&dest.join("o/.wh..wh..opq")));
    assert_eq!(
        xattr(&dest.join("implied"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );

    assert!(!exists(&dest.join(".wh..wh.plnk")));
    assert!(!exists(&dest.join(".wh..wh.aufs")));

    // A directory that replaces a whiteout of the same layer hides the lower directory.
    let recreated = dest.join("recreated");
    assert!(fs::symlink_metadata(&recreated).unwrap().is_dir());
    assert_eq!(mode(&recreated), 0o750);
    assert_eq!(
        xattr(&recreated, "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(fs::read(recreated.join("new")).unwrap(), b"new");
    let parent = dest.join("parent");
    assert!(fs::symlink_metadata(&parent).unwrap().is_dir());
    assert_eq!(
        xattr(&parent, "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );

    let names: Vec<_> = fs::read_dir(&dest)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with(".wh."))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn whiteout_below_replaced_directory_does_nothing() {
    let base = tempfile::tempdir().unwrap();
    let lower = parent_layer(
        base.path(),
        "lower",
        vec![
            file("d/child", 0o644, b"lower child"),
            file("f/child", 0o644, b"lower child"),
        ],
    );
    // The layer umoci 0.4.7 writes when directories `d` and `f` become a file and a
    // fifo: each replacement, then a whiteout for each child of the old directory.
    // A directory that becomes a symlink gets the same whiteouts, which resolve through
    // the symlink to a directory that no layer has.
    let tar = layer(vec![
        file("d", 0o600, b"now a file"),
        file("d/.wh.child", 0o644, b""),
        Spec {
            name: b"f",
            kind: EntryType::Fifo,
            ..Spec::default()
        },
        file("f/.wh.child", 0o644, b""),
        symlink_entry("s", "/nowhere"),
        file("s/.wh.child", 0o644, b""),
        file("missing/dir/.wh.child", 0o644, b""),
    ]);
    let dest = new_dest(base.path(), "upper");
    unpack(&tar, &dest, std::slice::from_ref(&lower)).unwrap();

    assert_eq!(fs::read(dest.join("d")).unwrap(), b"now a file");
    assert_eq!(mode(&dest.join("d")), 0o600);
    assert!(
        fs::symlink_metadata(dest.join("f"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::read_link(dest.join("s")).unwrap(),
        Path::new("/nowhere")
    );
    assert!(!exists(&dest.join("nowhere")));
    assert!(!exists(&dest.join("missing")));

    // A whiteout below a file of a parent layer leaves that file alone.
    let tar = layer(vec![file("d/child/.wh.x", 0o644, b"")]);
    let dest = new_dest(base.path(), "below-lower-file");
    unpack(&tar, &dest, &[lower]).unwrap();
    assert!(!exists(&dest.join("d/child")));
    assert!(fs::symlink_metadata(dest.join("d")).unwrap().is_dir());

    // Any other entry below a file of the same layer is still an error.
    let tar = layer(vec![
        file("d", 0o600, b"now a file"),
        file("d/child", 0o644, b"below a file"),
    ]);
    let dest = new_dest(base.path(), "invalid");
    let error = unpack(&tar, &dest, &[]).unwrap_err();
    assert!(
        matches!(&error, UnpackError::InvalidEntry { path, .. } if path == "d/child"),
        "{error}"
    );
    assert!(error.to_string().contains("not a directory"), "{error}");
}

#[test]
fn parent_layer_symlinks_are_followed() {
    let base = tempfile::tempdir().unwrap();
    // A merged-/usr layout: `lib` is a symlink to `usr/lib` in the parent layer.
    let lower = parent_layer(
        base.path(),
        "lower",
        vec![
            Spec {
                mtime: 1_500_000_000,
                ..dir("usr/lib/", 0o750)
            },
            file("usr/lib/old.so", 0o644, b"old"),
            symlink_entry("lib", "usr/lib"),
            symlink_entry("abs", "/usr/lib"),
            symlink_entry("opaque/lib", "../usr/lib"),
        ],
    );
    let tar = layer(vec![
        file("lib/new.so", 0o644, b"new"),
        file("lib/.wh.old.so", 0o644, b""),
        file("abs/via-absolute.so", 0o644, b"absolute"),
        // This layer's opaque `opaque/` hides the parent layer's `opaque/lib` symlink.
        file("opaque/.wh..wh..opq", 0o644, b""),
        file("opaque/lib/hidden.so", 0o644, b"below opaque"),
    ]);
    let dest = new_dest(base.path(), "upper");
    unpack(&tar, &dest, &[lower]).unwrap();

    assert!(!exists(&dest.join("lib")));
    assert!(!exists(&dest.join("abs")));
    assert_eq!(fs::read(dest.join("usr/lib/new.so")).unwrap(), b"new");
    assert_eq!(
        fs::read(dest.join("usr/lib/via-absolute.so")).unwrap(),
        b"absolute"
    );
    assert!(is_whiteout(&dest.join("usr/lib/old.so")));
    assert!(
        fs::symlink_metadata(dest.join("opaque/lib"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        fs::read(dest.join("opaque/lib/hidden.so")).unwrap(),
        b"below opaque"
    );
    assert!(!exists(&dest.join("usr/lib/hidden.so")));
    // The implied `usr/lib` is a copy of the parent layer's directory.
    assert_eq!(mode(&dest.join("usr/lib")), 0o750);
    assert_eq!(
        fs::symlink_metadata(dest.join("usr/lib")).unwrap().mtime(),
        1_500_000_000
    );
}

#[test]
fn reserved_and_ambiguous_entries_are_rejected() {
    let base = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Spec<'_>, &str)> = vec![
        (
            "whiteout-device",
            Spec {
                name: b"dev/fake",
                kind: EntryType::Char,
                ..Spec::default()
            },
            "character device 0/0",
        ),
        (
            "overlay-xattr",
            Spec {
                pax: vec![xattr_record("trusted.overlay.opaque", b"y")],
                ..dir("d/", 0o755)
            },
            "trusted.overlay.opaque",
        ),
        (
            "overlay-redirect",
            Spec {
                pax: vec![xattr_record("trusted.overlay.redirect", b"/etc")],
                ..file("f", 0o644, b"")
            },
            "trusted.overlay.redirect",
        ),
        (
            "volume-header",
            Spec {
                name: b"label",
                kind: EntryType::new(b'V'),
                ..Spec::default()
            },
            "unsupported entry type",
        ),
        (
            "whiteout-dot",
            file("a/.wh..", 0o644, b""),
            "whiteout names no file",
        ),
        (
            "whiteout-dir",
            file(".wh.x/y", 0o644, b""),
            "used as a directory",
        ),
    ];
    for (name, spec, message) in cases {
        let dest = new_dest(base.path(), name);
        let error = unpack(&layer(vec![spec]), &dest, &[]).unwrap_err();
        assert!(
            matches!(error, UnpackError::InvalidEntry { .. }),
            "{name}: {error}"
        );
        assert!(error.to_string().contains(message), "{name}: {error}");
    }
}

#[test]
fn same_path_twice_last_wins() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let tar = layer(vec![
        file("f", 0o644, b"one"),
        hardlink("keeps-one", "f"),
        file("f", 0o600, b"two"),
        dir("d/", 0o755),
        file("d/x", 0o644, b"x"),
        dir("d/sub/", 0o755),
        file("d/sub/y", 0o644, b"y"),
        file("d", 0o644, b"file over dir"),
        file("e", 0o644, b"file"),
        dir("e/", 0o700),
        Spec {
            uid: 1,
            ..dir("m/", 0o700)
        },
        file("m/inner", 0o644, b"kept"),
        Spec {
            uid: 2,
            gid: 3,
            pax: vec![xattr_record("user.second", b"2")],
            ..dir("m/", 0o751)
        },
        symlink_entry("s", "/etc"),
        dir("s/", 0o755),
        file("s/passwd", 0o644, b"inside"),
    ]);
    unpack(&tar, &dest, &[]).unwrap();

    assert_eq!(fs::read(dest.join("f")).unwrap(), b"two");
    assert_eq!(mode(&dest.join("f")), 0o600);
    assert_eq!(fs::read(dest.join("keeps-one")).unwrap(), b"one");
    assert_eq!(fs::read(dest.join("d")).unwrap(), b"file over dir");
    assert!(fs::symlink_metadata(dest.join("e")).unwrap().is_dir());
    assert_eq!(mode(&dest.join("e")), 0o700);
    assert_eq!(mode(&dest.join("m")), 0o751);
    assert_eq!(owner(&dest.join("m")), (2, 3));
    assert_eq!(xattr(&dest.join("m"), "user.second"), Some(b"2".to_vec()));
    assert_eq!(fs::read(dest.join("m/inner")).unwrap(), b"kept");
    assert!(fs::symlink_metadata(dest.join("s")).unwrap().is_dir());
    assert_eq!(fs::read(dest.join("s/passwd")).unwrap(), b"inside");
}

#[test]
fn dangling_symlink_parent_creates_target() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let tar = layer(vec![
        symlink_entry("lib", "usr/lib"),
        file("lib/libc.so", 0o755, b"relative"),
        symlink_entry("sub/data", "/opt/data"),
        file("sub/data/file", 0o644, b"absolute"),
    ]);
    unpack(&tar, &dest, &[]).unwrap();

    assert_eq!(
        fs::read_link(dest.join("lib")).unwrap(),
        Path::new("usr/lib")
    );
    assert_eq!(fs::read(dest.join("usr/lib/libc.so")).unwrap(), b"relative");
    assert_eq!(mode(&dest.join("usr/lib")), 0o755);
    assert_eq!(
        fs::read_link(dest.join("sub/data")).unwrap(),
        Path::new("/opt/data")
    );
    assert_eq!(fs::read(dest.join("opt/data/file")).unwrap(), b"absolute");
    assert!(!exists(&dest.join("sub/opt")));
}

#[test]
fn long_names_from_gnu_and_pax() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let long_dir = "d".repeat(120);
    let gnu_name = format!("{long_dir}/{}", "g".repeat(150));
    let pax_name = format!("{long_dir}/{}", "p".repeat(150));
    let link_target = format!("/{long_dir}/{}", "t".repeat(130));

    let mut builder = tar::Builder::new(Vec::new());
    let mut header = Header::new_gnu();
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(3);
    header.set_mtime(MTIME);
    builder
        .append_data(&mut header, &gnu_name, b"gnu".as_slice())
        .unwrap();
    let mut tar_layer = Layer { builder };
    tar_layer.add(Spec {
        name: b"placeholder",
        data: b"pax",
        pax: vec![("path".to_owned(), pax_name.clone().into_bytes())],
        ..Spec::default()
    });
    tar_layer.add(Spec {
        name: b"short-link",
        kind: EntryType::Symlink,
        pax: vec![("linkpath".to_owned(), link_target.clone().into_bytes())],
        ..Spec::default()
    });
    unpack(&tar_layer.finish(), &dest, &[]).unwrap();

    assert_eq!(fs::read(dest.join(&gnu_name)).unwrap(), b"gnu");
    assert_eq!(fs::read(dest.join(&pax_name)).unwrap(), b"pax");
    assert!(!exists(&dest.join("placeholder")));
    assert_eq!(
        fs::read_link(dest.join("short-link")).unwrap(),
        Path::new(&link_target)
    );
}

#[test]
fn pax_times_and_ids_override_header() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let tar = layer(vec![Spec {
        pax: vec![
            ("mtime".to_owned(), b"1700000000.25".to_vec()),
            ("uid".to_owned(), b"3000000".to_vec()),
            ("gid".to_owned(), b"3000001".to_vec()),
        ],
        ..file("f", 0o644, b"")
    }]);
    unpack(&tar, &dest, &[]).unwrap();
    let metadata = fs::symlink_metadata(dest.join("f")).unwrap();
    assert_eq!(metadata.mtime(), 1_700_000_000);
    assert_eq!(metadata.mtime_nsec(), 250_000_000);
    assert_eq!((metadata.uid(), metadata.gid()), (3_000_000, 3_000_001));
}

#[test]
fn sparse_file_keeps_content_and_holes() {
    let base = tempfile::tempdir().unwrap();
    let source = base.path().join("sparse-source");
    let mut handle = fs::File::create(&source).unwrap();
    handle.set_len(32 << 20).unwrap();
    std::io::Seek::seek(&mut handle, std::io::SeekFrom::Start(16 << 20)).unwrap();
    handle.write_all(b"middle").unwrap();
    drop(handle);

    let mut builder = tar::Builder::new(Vec::new());
    builder.sparse(true);
    builder.append_path_with_name(&source, "sparse").unwrap();
    let tar = builder.into_inner().unwrap();
    assert!(tar.len() < 1 << 20, "the builder wrote a sparse entry");
    assert_eq!(&tar[156..157], b"S");

    let dest = new_dest(base.path(), "layer");
    unpack(&tar, &dest, &[]).unwrap();
    let unpacked = dest.join("sparse");
    let content = fs::read(&unpacked).unwrap();
    assert_eq!(content.len(), 32 << 20);
    assert_eq!(&content[16 << 20..(16 << 20) + 6], b"middle");
    assert!(content[..16 << 20].iter().all(|byte| *byte == 0));
    assert!(fs::metadata(&unpacked).unwrap().blocks() * 512 < 1 << 20);
}

type PaxRecords = Vec<(String, Vec<u8>)>;

fn pax(records: &[(&str, &str)]) -> PaxRecords {
    records
        .iter()
        .map(|(key, value)| (key.to_string(), value.as_bytes().to_vec()))
        .collect()
}

/// Returns the data of a version 1.0 PAX sparse entry: the map, padded to a block,
/// then the segments.
fn sparse_1_0_data(segments: &[(u64, &[u8])]) -> Vec<u8> {
    let mut data = format!("{}\n", segments.len()).into_bytes();
    for (offset, content) in segments {
        data.extend_from_slice(format!("{offset}\n{}\n", content.len()).as_bytes());
    }
    data.resize(data.len().div_ceil(512) * 512, 0);
    for (_, content) in segments {
        data.extend_from_slice(content);
    }
    data
}

#[test]
fn pax_sparse_formats_expand() {
    let base = tempfile::tempdir().unwrap();
    let data_1_0 = sparse_1_0_data(&[(0, b"hello"), (1_048_000, b"end")]);
    let tar = layer(vec![
        Spec {
            name: b"dir/GNUSparseFile.1/v1",
            data: &data_1_0,
            pax: pax(&[
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.name", "dir/v1"),
                ("GNU.sparse.realsize", "1048576"),
            ]),
            ..Spec::default()
        },
        Spec {
            name: b"dir/GNUSparseFile.1/v01",
            data: b"helloend",
            pax: pax(&[
                ("GNU.sparse.size", "1048576"),
                ("GNU.sparse.numblocks", "2"),
                ("GNU.sparse.name", "dir/v01"),
                ("GNU.sparse.map", "0,5,1048000,3"),
            ]),
            ..Spec::default()
        },
        Spec {
            name: b"dir/v00",
            data: b"helloend",
            pax: pax(&[
                ("GNU.sparse.size", "1048576"),
                ("GNU.sparse.numblocks", "2"),
                ("GNU.sparse.offset", "0"),
                ("GNU.sparse.numbytes", "5"),
                ("GNU.sparse.offset", "1048000"),
                ("GNU.sparse.numbytes", "3"),
            ]),
            ..Spec::default()
        },
    ]);
    let dest = new_dest(base.path(), "layer");
    unpack(&tar, &dest, &[]).unwrap();

    let mut expected = vec![0u8; 1_048_576];
    expected[..5].copy_from_slice(b"hello");
    expected[1_048_000..1_048_003].copy_from_slice(b"end");
    for name in ["v1", "v01", "v00"] {
        let path = dest.join("dir").join(name);
        assert_eq!(fs::read(&path).unwrap(), expected, "{name}");
        assert!(
            fs::metadata(&path).unwrap().blocks() * 512 < 1_048_576,
            "{name} keeps its holes"
        );
    }
    assert!(!exists(&dest.join("dir/GNUSparseFile.1")));
}

#[test]
fn malformed_pax_sparse_rejected() {
    let base = tempfile::tempdir().unwrap();
    let v1 = |realsize: &str| {
        pax(&[
            ("GNU.sparse.major", "1"),
            ("GNU.sparse.minor", "0"),
            ("GNU.sparse.name", "file"),
            ("GNU.sparse.realsize", realsize),
        ])
    };
    let past_end = sparse_1_0_data(&[(10, b"abc")]);
    let overlapping = sparse_1_0_data(&[(0, b"abcd"), (2, b"ef")]);
    let mut unreferenced = sparse_1_0_data(&[(0, b"abc")]);
    unreferenced.extend_from_slice(b"extra");
    let mut short = sparse_1_0_data(&[(0, b"abcdef")]);
    short.truncate(short.len() - 2);
    // 2 MiB of digits and newlines before the segment count is satisfied.
    let mut long_map = b"999999\n".to_vec();
    while long_map.len() < 2 << 20 {
        long_map.extend_from_slice(b"1\n");
    }
    let cases: Vec<(&str, Vec<u8>, PaxRecords, &str)> = vec![
        ("past-end", past_end, v1("12"), "ends past the real size"),
        ("overlapping", overlapping, v1("100"), "overlaps"),
        ("unreferenced", unreferenced, v1("100"), "does not refer to"),
        ("short", short, v1("100"), "ends 2 bytes early"),
        ("long-map", long_map, v1("100"), "sparse map is longer"),
        (
            "bad-map",
            b"0,5,9".to_vec(),
            pax(&[("GNU.sparse.size", "100"), ("GNU.sparse.map", "0,5,9")]),
            "odd number",
        ),
        (
            "version",
            Vec::new(),
            pax(&[("GNU.sparse.major", "2"), ("GNU.sparse.minor", "0")]),
            "unsupported GNU sparse format version",
        ),
    ];
    for (name, data, records, message) in cases {
        let tar = layer(vec![Spec {
            name: b"GNUSparseFile.1/file",
            data: &data,
            pax: records,
            ..Spec::default()
        }]);
        let dest = new_dest(base.path(), name);
        let error = unpack(&tar, &dest, &[]).unwrap_err();
        assert!(
            matches!(error, UnpackError::InvalidEntry { .. }),
            "{name}: {error}"
        );
        assert!(error.to_string().contains(message), "{name}: {error}");
    }
}

#[test]
fn gnu_tar_sparse_archives_expand() {
    let base = tempfile::tempdir().unwrap();
    let source = base.path().join("source");
    fs::create_dir(&source).unwrap();
    let mut handle = fs::File::create(source.join("disk.img")).unwrap();
    handle.set_len(8 << 20).unwrap();
    std::io::Seek::seek(&mut handle, std::io::SeekFrom::Start(3 << 20)).unwrap();
    handle.write_all(b"middle").unwrap();
    drop(handle);
    let expected = fs::read(source.join("disk.img")).unwrap();

    for version in ["0.0", "0.1", "1.0"] {
        let output = std::process::Command::new("tar")
            .args([
                "--format=posix",
                "--sparse",
                "--sparse-version",
                version,
                "-C",
            ])
            .arg(&source)
            .args(["-cf", "-", "disk.img"])
            .output()
            .expect("GNU tar runs");
        assert!(output.status.success(), "tar {version}: {output:?}");

        let dest = new_dest(base.path(), &format!("v{version}"));
        let unpacked = unpack(&output.stdout, &dest, &[]).unwrap();
        assert_eq!(
            unpacked.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&output.stdout)))
        );
        let path = dest.join("disk.img");
        assert_eq!(fs::read(&path).unwrap(), expected, "version {version}");
        assert!(fs::metadata(&path).unwrap().blocks() * 512 < 1 << 20);
        let names: Vec<_> = fs::read_dir(&dest)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["disk.img"], "version {version}");
    }
}

/// Builds a parent layer with `unpack_layer` itself.
fn parent_layer(base: &Path, name: &str, specs: Vec<Spec<'_>>) -> PathBuf {
    let dest = new_dest(base, name);
    unpack(&layer(specs), &dest, &[]).unwrap();
    dest
}

#[test]
fn implied_parents_copy_nearest_parent_layer() {
    let base = tempfile::tempdir().unwrap();
    let far = parent_layer(
        base.path(),
        "far",
        vec![
            Spec {
                uid: 7,
                ..dir("etc/", 0o711)
            },
            Spec {
                uid: 1000,
                gid: 1000,
                mtime: 1_234_567_890,
                pax: vec![xattr_record("user.label", b"ssl")],
                ..dir("etc/ssl/", 0o700)
            },
            dir("var/", 0o700),
            dir("opt/tool/", 0o700),
            dir("srv/", 0o700),
            dir("gone/", 0o700),
        ],
    );
    let near = parent_layer(
        base.path(),
        "near",
        vec![
            Spec {
                uid: 5,
                ..dir("etc/", 0o750)
            },
            dir("var/", 0o770),
            dir("opt/", 0o755),
            file("opt/.wh..wh..opq", 0o644, b""),
            file(".wh.srv", 0o644, b""),
            file("gone", 0o644, b"not a directory"),
        ],
    );
    assert_eq!(
        xattr(&near.join("opt"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );

    let dest = new_dest(base.path(), "layer");
    let tar = layer(vec![
        file("etc/ssl/certs/ca.pem", 0o644, b"pem"),
        file("var/log", 0o644, b""),
        file("opt/tool/bin", 0o755, b""),
        file("srv/www", 0o644, b""),
        file("gone/x", 0o644, b""),
    ]);
    unpack(&tar, &dest, &[near, far]).unwrap();

    assert_eq!(mode(&dest.join("etc")), 0o750);
    assert_eq!(owner(&dest.join("etc")), (5, 0));
    let ssl = dest.join("etc/ssl");
    assert_eq!(mode(&ssl), 0o700);
    assert_eq!(owner(&ssl), (1000, 1000));
    assert_eq!(xattr(&ssl, "user.label"), Some(b"ssl".to_vec()));
    assert_eq!(fs::symlink_metadata(&ssl).unwrap().mtime(), 1_234_567_890);
    assert_eq!(mode(&dest.join("etc/ssl/certs")), 0o755);
    assert_eq!(owner(&dest.join("etc/ssl/certs")), (0, 0));
    assert_eq!(mode(&dest.join("var")), 0o770);
    // The opaque `opt` of the nearer layer hides `opt/tool` of the farther one, and its
    // opaque xattr is not copied.
    assert_eq!(mode(&dest.join("opt")), 0o755);
    assert_eq!(xattr(&dest.join("opt"), "trusted.overlay.opaque"), None);
    assert_eq!(mode(&dest.join("opt/tool")), 0o755);
    // The whiteout of `srv` and the regular file `gone` in the nearer layer hide the
    // farther layer's directories.
    assert_eq!(mode(&dest.join("srv")), 0o755);
    assert_eq!(mode(&dest.join("gone")), 0o755);
}

#[test]
fn layer_root_inherits_parent_root() {
    let base = tempfile::tempdir().unwrap();
    let parent = new_dest(base.path(), "parent");
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o700)).unwrap();
    unpack(&layer(vec![file("a", 0o644, b"")]), &parent, &[]).unwrap();
    // Without a `./` entry or a parent layer, the root gets the default directory mode
    // instead of the mode the caller created it with.
    assert_eq!(mode(&parent), 0o755);

    let styled = new_dest(base.path(), "styled");
    let tar = layer(vec![Spec {
        uid: 5,
        gid: 6,
        mtime: 1_222_333_444,
        pax: vec![xattr_record("user.root", b"r")],
        ..dir("./", 0o751)
    }]);
    unpack(&tar, &styled, &[]).unwrap();

    let dest = new_dest(base.path(), "layer");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o700)).unwrap();
    unpack(
        &layer(vec![file("b", 0o644, b"")]),
        &dest,
        &[styled, parent],
    )
    .unwrap();
    assert_eq!(mode(&dest), 0o751);
    assert_eq!(owner(&dest), (5, 6));
    assert_eq!(xattr(&dest, "user.root"), Some(b"r".to_vec()));
    assert_eq!(fs::symlink_metadata(&dest).unwrap().mtime(), 1_222_333_444);
}

#[test]
fn hardlink_to_parent_layer_copies_target_up() {
    let base = tempfile::tempdir().unwrap();
    let parent = parent_layer(
        base.path(),
        "parent",
        vec![
            dir("bin/", 0o755),
            Spec {
                uid: 1000,
                gid: 1000,
                mtime: 1_111_111_111,
                pax: vec![xattr_record("user.kind", b"tool")],
                ..file("bin/tool", 0o4750, b"tool content")
            },
            symlink_entry("bin/alias", "tool"),
            dir("data/", 0o755),
        ],
    );
    let dest = new_dest(base.path(), "layer");
    let tar = layer(vec![
        hardlink("bin/tool2", "bin/tool"),
        hardlink("alias2", "/bin/alias"),
    ]);
    unpack(&tar, &dest, std::slice::from_ref(&parent)).unwrap();

    let tool = dest.join("bin/tool");
    let tool2 = dest.join("bin/tool2");
    assert_eq!(fs::read(&tool).unwrap(), b"tool content");
    assert_eq!(
        fs::symlink_metadata(&tool).unwrap().ino(),
        fs::symlink_metadata(&tool2).unwrap().ino()
    );
    assert_eq!(mode(&tool), 0o4750);
    assert_eq!(owner(&tool), (1000, 1000));
    assert_eq!(xattr(&tool, "user.kind"), Some(b"tool".to_vec()));
    assert_eq!(fs::symlink_metadata(&tool).unwrap().mtime(), 1_111_111_111);
    // The parent layer is only read.
    assert_eq!(
        fs::symlink_metadata(parent.join("bin/tool"))
            .unwrap()
            .nlink(),
        1
    );

    let alias2 = fs::symlink_metadata(dest.join("alias2")).unwrap();
    assert!(alias2.file_type().is_symlink());
    assert_eq!(
        fs::read_link(dest.join("alias2")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        alias2.ino(),
        fs::symlink_metadata(dest.join("bin/alias")).unwrap().ino()
    );

    for (name, target, message) in [
        ("missing", "bin/nothing", "not found"),
        ("to-dir", "data", "is a directory"),
    ] {
        let dest = new_dest(base.path(), name);
        let tar = layer(vec![hardlink("link", target)]);
        let error = unpack(&tar, &dest, std::slice::from_ref(&parent)).unwrap_err();
        assert!(error.to_string().contains(message), "{name}: {error}");
    }
}

#[test]
fn unpack_rejects_non_empty_destination() {
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    fs::write(dest.join("leftover"), b"").unwrap();
    let error = unpack(&full_layer(), &dest, &[]).unwrap_err();
    assert!(
        matches!(error, UnpackError::DestinationNotEmpty { .. }),
        "{error}"
    );
}

#[test]
fn corrupt_stream_names_last_entry() {
    let mut tar = layer(vec![
        file("first", 0o644, b"ok"),
        file("second", 0o644, b"x"),
    ]);
    // Break the checksum of the second header.
    tar[1024 + 148] ^= 0x01;
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let error = unpack(&tar, &dest, &[]).unwrap_err();
    assert!(
        matches!(&error, UnpackError::Read { entry: Some(entry), .. } if entry == "first"),
        "{error}"
    );
}

#[test]
fn entries_after_lone_zero_block_rejected() {
    let first = layer(vec![file("first", 0o644, b"ok")]);
    let hidden = layer(vec![file("hidden", 0o644, b"after the marker")]);
    // The first archive's data ends at 1024 bytes, then one zero block, then the second.
    let mut tar = first[..1024 + 512].to_vec();
    tar.extend_from_slice(&hidden);
    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let error = unpack(&tar, &dest, &[]).unwrap_err();
    assert!(
        matches!(&error, UnpackError::Read { entry: Some(entry), .. } if entry == "first"),
        "{error}"
    );
    assert!(
        error.to_string().contains("end-of-archive marker"),
        "{error}"
    );
    assert!(!exists(&dest.join("hidden")));
}

#[test]
fn oversized_extension_headers_rejected() {
    let base = tempfile::tempdir().unwrap();
    // A 5 MiB PAX header would be buffered whole by the tar parser.
    let huge = vec![b'a'; 5 << 20];
    let tar = layer(vec![Spec {
        pax: vec![("comment".to_owned(), huge)],
        ..file("f", 0o644, b"")
    }]);
    let dest = new_dest(base.path(), "pax");
    let error = unpack(&tar, &dest, &[]).unwrap_err();
    assert!(matches!(error, UnpackError::Read { .. }), "{error}");
    assert!(
        error.to_string().contains("exceed the size limit"),
        "{error}"
    );

    // Large entry data outside the headers is not limited, including a global header's.
    let data = vec![b'x'; 6 << 20];
    let mut tar_layer = Layer::new();
    let mut global = Header::new_ustar();
    global.as_old_mut().name[..6].copy_from_slice(b"global");
    global.set_entry_type(EntryType::XGlobalHeader);
    global.set_mode(0o644);
    global.set_size(data.len() as u64);
    global.set_cksum();
    tar_layer.builder.append(&global, data.as_slice()).unwrap();
    tar_layer.add(Spec {
        pax: vec![("comment".to_owned(), vec![b'c'; 512 << 10])],
        ..file("big", 0o644, &data)
    });
    let dest = new_dest(base.path(), "data");
    unpack(&tar_layer.finish(), &dest, &[]).unwrap();
    assert_eq!(fs::metadata(dest.join("big")).unwrap().len(), 6 << 20);
    assert!(!exists(&dest.join("global")));
}

// Hostile archives. Each one must leave everything outside `dest` as it was.

#[test]
fn hostile_parent_dir_components_stay_inside() {
    let sandbox = Sandbox::new();
    let tar = layer(vec![
        file("../x", 0o644, b"dotdot"),
        file("../../../../../../canary/secret", 0o644, b"deep"),
        file("a/../../b", 0o644, b"middle"),
    ]);
    sandbox.unpack(&tar).unwrap();
    assert_eq!(fs::read(sandbox.dest.join("x")).unwrap(), b"dotdot");
    assert_eq!(
        fs::read(sandbox.dest.join("canary/secret")).unwrap(),
        b"deep"
    );
    assert_eq!(fs::read(sandbox.dest.join("b")).unwrap(), b"middle");
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_absolute_path_stays_inside() {
    let sandbox = Sandbox::new();
    let probe = host_probe("absolute");
    let name = format!("/{probe}");
    let tar = layer(vec![file(&name, 0o644, b"absolute")]);
    sandbox.unpack(&tar).unwrap();
    assert_host_probe_absent(&probe);
    assert_eq!(fs::read(sandbox.dest.join(&probe)).unwrap(), b"absolute");
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_symlink_to_root_then_write_stays_inside() {
    let sandbox = Sandbox::new();
    let probe = host_probe("symlink-root");
    let through_absolute = format!("root/{probe}");
    // `dest/sub/../..` is the sandbox directory that holds `canary`.
    let through_relative = "sub/up/canary/secret".to_owned();
    let tar = layer(vec![
        symlink_entry("root", "/"),
        file(&through_absolute, 0o644, b"via absolute link"),
        symlink_entry("sub/up", "../.."),
        file(&through_relative, 0o644, b"via relative link"),
    ]);
    let result = sandbox.unpack(&tar);
    assert_host_probe_absent(&probe);
    result.unwrap();

    assert_eq!(
        fs::read(sandbox.dest.join(&probe)).unwrap(),
        b"via absolute link"
    );
    assert_eq!(
        fs::read(sandbox.dest.join("canary/secret")).unwrap(),
        b"via relative link"
    );
    assert_eq!(
        fs::read_link(sandbox.dest.join("root")).unwrap(),
        Path::new("/")
    );
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_symlink_chain_stays_inside() {
    let sandbox = Sandbox::new();
    let tar = layer(vec![
        symlink_entry("l1", "l2"),
        symlink_entry("l2", "sub/../l3"),
        symlink_entry("l3", "sub/l4"),
        // Outside a root, `dest/sub/../..` is the sandbox directory that holds `canary`.
        symlink_entry("sub/l4", "../.."),
        file("l1/canary/secret", 0o644, b"chain"),
    ]);
    sandbox.unpack(&tar).unwrap();
    assert_eq!(
        fs::read(sandbox.dest.join("canary/secret")).unwrap(),
        b"chain"
    );
    sandbox.assert_outside_untouched();

    let looped = Sandbox::new();
    let tar = layer(vec![
        symlink_entry("loop-a", "loop-b"),
        symlink_entry("loop-b", "loop-a"),
        file("loop-a/x", 0o644, b""),
    ]);
    let error = looped.unpack(&tar).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("too many levels of symbolic links"),
        "{error}"
    );
    looped.assert_outside_untouched();
}

#[test]
fn hostile_final_symlink_is_replaced_not_followed() {
    let sandbox = Sandbox::new();
    let tar = layer(vec![
        symlink_entry("f", "../canary/secret"),
        file("f", 0o644, b"replaced"),
        symlink_entry("d", "../canary"),
        dir("d/", 0o700),
        symlink_entry("n", "../canary/dir"),
        Spec {
            name: b"n",
            kind: EntryType::Fifo,
            ..Spec::default()
        },
    ]);
    sandbox.unpack(&tar).unwrap();
    assert_eq!(fs::read(sandbox.dest.join("f")).unwrap(), b"replaced");
    assert!(
        fs::symlink_metadata(sandbox.dest.join("d"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(mode(&sandbox.dest.join("d")), 0o700);
    assert!(
        fs::symlink_metadata(sandbox.dest.join("n"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_hardlinks_stay_inside() {
    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();

    let missing = Sandbox::new();
    let tar = layer(vec![hardlink("h", "../../etc/passwd")]);
    let error = missing.unpack(&tar).unwrap_err();
    assert!(error.to_string().contains("not found"), "{error}");
    missing.assert_outside_untouched();

    let secret = Sandbox::new();
    let tar = layer(vec![hardlink("h", "../canary/secret")]);
    let error = secret.unpack(&tar).unwrap_err();
    assert!(error.to_string().contains("not found"), "{error}");
    secret.assert_outside_untouched();

    let inside = Sandbox::new();
    let tar = layer(vec![
        file("etc/passwd", 0o644, b"root:x:0:0"),
        hardlink("h", "../../etc/passwd"),
        symlink_entry("s", "/etc/passwd"),
        hardlink("hs", "s"),
        symlink_entry("out", "../canary"),
        hardlink("via-out", "out/secret"),
    ]);
    let error = inside.unpack(&tar).unwrap_err();
    // `out/secret` resolves to `dest/canary/secret`, which does not exist.
    assert!(
        matches!(&error, UnpackError::InvalidEntry { path, .. } if path == "via-out"),
        "{error}"
    );
    let h = fs::symlink_metadata(inside.dest.join("h")).unwrap();
    assert_eq!(
        h.ino(),
        fs::symlink_metadata(inside.dest.join("etc/passwd"))
            .unwrap()
            .ino()
    );
    let hs = fs::symlink_metadata(inside.dest.join("hs")).unwrap();
    assert!(hs.file_type().is_symlink());
    assert_eq!(
        hs.ino(),
        fs::symlink_metadata(inside.dest.join("s")).unwrap().ino()
    );
    assert_eq!(
        fs::read_link(inside.dest.join("hs")).unwrap(),
        Path::new("/etc/passwd")
    );
    inside.assert_outside_untouched();
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links);
}

#[test]
fn hostile_whiteouts_stay_inside() {
    let sandbox = Sandbox::new();
    let whiteout_probe = host_probe("whiteout");
    let opaque_probe = host_probe("opaque");
    let whiteout_name = format!("abs/.wh.{whiteout_probe}");
    let opaque_name = format!("abs/{opaque_probe}/.wh..wh..opq");
    let tar = layer(vec![
        file("../.wh.canary", 0o644, b""),
        symlink_entry("link", "../canary"),
        file("link/.wh.secret", 0o644, b""),
        symlink_entry("abs", "/"),
        file(&whiteout_name, 0o644, b""),
        file(&opaque_name, 0o644, b""),
        file("../.wh..wh..opq", 0o644, b""),
    ]);
    let result = sandbox.unpack(&tar);
    assert_host_probe_absent(&whiteout_probe);
    assert_host_probe_absent(&opaque_probe);
    result.unwrap();

    // `../.wh.canary` whites out `canary` at the layer root, and `link/.wh.secret` then
    // walks `link` -> `dest/canary`, which is that whiteout, so it has nothing to hide.
    let canary = sandbox.dest.join("canary");
    assert!(is_whiteout(&canary));
    assert!(is_whiteout(&sandbox.dest.join(&whiteout_probe)));
    assert_eq!(
        xattr(&sandbox.dest.join(&opaque_probe), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr(&sandbox.dest, "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    sandbox.assert_outside_untouched();
}

#[test]
fn hostile_root_names_set_root_metadata() {
    for name in [&b"."[..], b"..", b"/", b"", b"./", b"../.."] {
        let sandbox = Sandbox::new();
        let tar = layer(vec![Spec {
            name,
            uid: 1000,
            gid: 1000,
            ..dir("", 0o750)
        }]);
        sandbox.unpack(&tar).unwrap();
        assert_eq!(mode(&sandbox.dest), 0o750, "{name:?}");
        assert_eq!(owner(&sandbox.dest), (1000, 1000), "{name:?}");
        assert_eq!(
            fs::symlink_metadata(&sandbox.dest).unwrap().mtime(),
            MTIME as i64
        );
        sandbox.assert_outside_untouched();

        for kind in [
            EntryType::Regular,
            EntryType::Symlink,
            EntryType::Link,
            EntryType::Fifo,
        ] {
            let sandbox = Sandbox::new();
            let tar = layer(vec![Spec {
                name,
                kind,
                link: b"target",
                ..Spec::default()
            }]);
            let error = sandbox.unpack(&tar).unwrap_err();
            assert!(
                matches!(error, UnpackError::InvalidEntry { .. }),
                "{name:?} {kind:?}: {error}"
            );
            assert!(error.to_string().contains("layer root"), "{error}");
            sandbox.assert_outside_untouched();
        }
    }
}

#[test]
fn missing_end_padding_is_accepted() {
    let full = layer(vec![dir("opt/", 0o755), file("opt/c", 0o644, b"c\n")]);
    // Two headers and two data bytes, as umoci 0.4.7's `insert` writes: no padding to a
    // 512-byte block and no end-of-archive marker.
    let truncated = &full[..3 * 512 + 2];
    let expected = format!("sha256:{}", hex::encode(Sha256::digest(truncated)));

    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let unpacked = unpack(truncated, &dest, &[]).unwrap();

    assert_eq!(fs::read(dest.join("opt/c")).unwrap(), b"c\n");
    assert_eq!(unpacked.diff_id, expected);
    assert_eq!(unpacked.bytes, truncated.len() as u64);
}

#[test]
fn truncated_file_data_is_rejected() {
    let full = layer(vec![file("big", 0o644, &[7u8; 2000])]);
    let truncated = &full[..512 + 1000];

    let base = tempfile::tempdir().unwrap();
    let dest = new_dest(base.path(), "layer");
    let error = unpack(truncated, &dest, &[]).unwrap_err();

    let message = error.to_string();
    assert!(message.contains("big"), "{message}");
    assert!(message.contains("ends inside"), "{message}");
}
