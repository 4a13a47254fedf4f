//! Snapshots of a directory tree for comparing two unpacked root filesystems, and a
//! read-only overlayfs mount of agentkernel's layer directories.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rootfs_cache::Digest;

/// Xattr prefix that overlayfs uses for its own metadata (whiteouts, opaque directories).
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// One filesystem object as far as an image defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `dir`, `file`, `symlink`, `char`, `block`, `fifo` or `socket`, or a description of
    /// a name that readdir lists but stat cannot find.
    pub kind: &'static str,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size in bytes of a regular file, 0 for other types.
    pub size: u64,
    /// SHA-256 of a regular file's content.
    pub content: Option<Digest>,
    /// Target of a symlink.
    pub target: Option<PathBuf>,
    /// Device number of a character or block device.
    pub rdev: Option<u64>,
    /// Xattrs other than `trusted.overlay.*`.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Other paths of the tree that share this non-directory's inode.
    pub hardlinks: Vec<PathBuf>,
}

impl Node {
    /// A name that readdir returns but stat does not find.
    fn listed_but_missing() -> Node {
        Node {
            kind: "name listed by readdir but not found",
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            content: None,
            target: None,
            rdev: None,
            xattrs: BTreeMap::new(),
            mtime_ns: 0,
            hardlinks: Vec::new(),
        }
    }
}

/// Every object below a root directory, keyed by its path relative to the root (the root
/// itself is the empty path).
pub struct Tree {
    pub nodes: BTreeMap<PathBuf, Node>,
}

/// Reads every object below `root` without following symlinks. The walk stays on the
/// file system of `root`.
pub fn snapshot(root: &Path) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let root_dev = fs::symlink_metadata(root)
        .unwrap_or_else(|error| panic!("stat {}: {error}", root.display()))
        .dev();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = root.join(&relative);
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            // overlayfs lists a whiteout in a directory that no lower layer has, but a
            // lookup of the name fails.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                nodes.insert(relative, Node::listed_but_missing());
                continue;
            }
            Err(error) => panic!("stat {}: {error}", path.display()),
        };
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            "dir"
        } else if file_type.is_file() {
            "file"
        } else if file_type.is_symlink() {
            "symlink"
        } else if file_type.is_char_device() {
            "char"
        } else if file_type.is_block_device() {
            "block"
        } else if file_type.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        if file_type.is_dir() && metadata.dev() == root_dev {
            let entries = fs::read_dir(&path)
                .unwrap_or_else(|error| panic!("read directory {}: {error}", path.display()));
            for entry in entries {
                let entry = entry.unwrap();
                pending.push(relative.join(entry.file_name()));
            }
        } else if !file_type.is_dir() {
            inodes
                .entry((metadata.dev(), metadata.ino()))
                .or_default()
                .push(relative.clone());
        }
        let content = file_type.is_file().then(|| {
            let bytes =
                fs::read(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
            Digest::of(&bytes)
        });
        let target = file_type
            .is_symlink()
            .then(|| fs::read_link(&path).unwrap());
        let rdev =
            (file_type.is_char_device() || file_type.is_block_device()).then(|| metadata.rdev());
        let node = Node {
            kind,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            size: if file_type.is_file() {
                metadata.len()
            } else {
                0
            },
            content,
            target,
            rdev,
            xattrs: read_xattrs(&path),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            hardlinks: Vec::new(),
        };
        nodes.insert(relative, node);
    }
    for paths in inodes.values().filter(|paths| paths.len() > 1) {
        for path in paths {
            let mut others: Vec<PathBuf> = paths.iter().filter(|p| *p != path).cloned().collect();
            others.sort();
            nodes.get_mut(path).unwrap().hardlinks = others;
        }
    }
    Tree { nodes }
}

/// Reads the xattrs of `path` without following a symlink at it, except
/// `trusted.overlay.*`.
pub fn read_xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: `c_path` is NUL-terminated and `names` is writable for `names.len()` bytes.
    let len =
        unsafe { nix::libc::llistxattr(c_path.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        len >= 0,
        "list xattrs of {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(len as usize);

    let mut xattrs = BTreeMap::new();
    for name in names
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        let text = String::from_utf8_lossy(name).into_owned();
        if text.starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let c_name = CString::new(name).unwrap();
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: both strings are NUL-terminated and `value` is writable for
        // `value.len()` bytes.
        let len = unsafe {
            nix::libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        assert!(
            len >= 0,
            "read xattr {text} of {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        value.truncate(len as usize);
        xattrs.insert(text, value);
    }
    xattrs
}

/// What [`compare`] checks besides type, mode, owner, size, content, symlink target,
/// device number, xattrs and hardlink groups.
#[derive(Clone, Copy, Debug)]
pub struct Compared {
    /// Compare the mtime of non-directories.
    pub mtimes: bool,
    /// Compare the mtime of directories.
    pub dir_mtimes: bool,
}

/// One difference between two trees.
pub struct Difference {
    pub path: PathBuf,
    pub detail: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}: {}", self.path.display(), self.detail)
    }
}

/// Lists the differences between `expected` and `actual` in path order.
pub fn compare(expected: &Tree, actual: &Tree, compared: Compared) -> Vec<Difference> {
    let mut differences = Vec::new();
    let mut paths: Vec<&PathBuf> = expected.nodes.keys().chain(actual.nodes.keys()).collect();
    paths.sort();
    paths.dedup();
    for path in paths {
        let detail = match (expected.nodes.get(path), actual.nodes.get(path)) {
            (Some(node), None) => format!("{} missing in agentkernel's tree", node.kind),
            (None, Some(node)) => format!("unexpected {} in agentkernel's tree", node.kind),
            (Some(want), Some(got)) => match describe_difference(want, got, compared) {
                Some(detail) => detail,
                None => continue,
            },
            (None, None) => unreachable!(),
        };
        differences.push(Difference {
            path: path.clone(),
            detail,
        });
    }
    differences
}

fn describe_difference(want: &Node, got: &Node, compared: Compared) -> Option<String> {
    let field = |name: &str, want: String, got: String| {
        Some(format!("{name} differs: umoci {want}, agentkernel {got}"))
    };
    if want.kind != got.kind {
        return field("type", want.kind.into(), got.kind.into());
    }

    if want.mode != got.mode {
        return field(
            "mode",
            format!("{:o}", want.mode),
            format!("{:o}", got.mode),
        );
    }

    if (want.uid, want.gid) != (got.uid, got.gid) {
        return field(
            "owner",
            format!("{}:{}", want.uid, want.gid),
            format!("{}:{}", got.uid, got.gid),
        );
    }

    if want.size != got.size {
        return field("size", want.size.to_string(), got.size.to_string());
    }

    if want.content != got.content {
        return field(
            "content",
            format!("{:?}", want.content),
            format!("{:?}", got.content),
        );
    }

    if want.target != got.target {
        return field(
            "symlink target",
            format!("{:?}", want.target),
            format!("{:?}", got.target),
        );
    }

    if want.rdev != got.rdev {
        return field(
            "device number",
            format!("{:?}", want.rdev),
            format!("{:?}", got.rdev),
        );
    }

    if want.xattrs != got.xattrs {
        return field(
            "xattrs",
            format!("{:?}", want.xattrs),
            format!("{:?}", got.xattrs),
        );
    }

    if want.hardlinks != got.hardlinks {
        return field(
            "hardlinks",
            format!("{:?}", want.hardlinks),
            format!("{:?}", got.hardlinks),
        );
    }

    let mtime_compared = if want.kind == "dir" {
        compared.dir_mtimes
    } else {
        compared.mtimes
    };
    if mtime_compared && want.mtime_ns != got.mtime_ns {
        return field(
            "mtime (ns)",
            want.mtime_ns.to_string(),
            got.mtime_ns.to_string(),
        );
    }
    None
}

/// A read-only overlayfs mount of layer directories, unmounted on drop.
pub struct OverlayMount {
    target: tempfile::TempDir,
    _bottom: tempfile::TempDir,
}

impl OverlayMount {
    /// Mounts `layer_dirs` (bottom layer first) read-only on a new temp directory.
    ///
    /// An empty directory goes below the bottom layer, because overlayfs without an upper
    /// directory needs at least two lower directories.
    pub fn new(layer_dirs: &[PathBuf]) -> OverlayMount {
        let target = tempfile::Builder::new()
            .prefix("ak-overlay-")
            .tempdir_in("/tmp")
            .unwrap();
        let bottom = tempfile::Builder::new()
            .prefix("ak-overlay-empty-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut lowers: Vec<String> = layer_dirs
            .iter()
            .rev()
            .map(|dir| {
                let text = dir.to_str().unwrap().to_owned();
                assert!(
                    !text.contains([':', ',', '\\']),
                    "layer directory {text} needs escaping in overlayfs options"
                );
                text
            })
            .collect();
        lowers.push(bottom.path().to_str().unwrap().to_owned());
        let options = format!("lowerdir={}", lowers.join(":"));
        nix::mount::mount(
            Some("overlay"),
            target.path(),
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(options.as_str()),
        )
        .unwrap_or_else(|error| {
            panic!(
                "mount overlay on {} with {options}: {error}",
                target.path().display()
            )
        });
        OverlayMount {
            target,
            _bottom: bottom,
        }
    }

    pub fn path(&self) -> &Path {
        self.target.path()
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if let Err(error) =
            nix::mount::umount2(self.target.path(), nix::mount::MntFlags::MNT_DETACH)
        {
            eprintln!(
                "failed to unmount overlay at {}: {error}",
                self.target.path().display()
            );
        }
    }
}
