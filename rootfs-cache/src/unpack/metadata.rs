//! Metadata of filesystem objects and the order in which it is applied.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, Gid, Mode, Timestamps, Uid, XattrFlags};

/// Mode, owner, times and xattrs to apply to one filesystem object.
#[derive(Debug, Clone)]
pub(super) struct Metadata {
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub times: Timestamps,
    pub xattrs: Vec<(CString, Vec<u8>)>,
}

impl Metadata {
    /// Metadata of a directory that no layer describes: 0755 root:root. The times are
    /// not applied.
    pub(super) fn default_dir() -> Metadata {
        Metadata {
            mode: 0o755,
            uid: 0,
            gid: 0,
            times: Timestamps {
                last_access: Default::default(),
                last_modification: Default::default(),
            },
            xattrs: Vec::new(),
        }
    }
}

/// Builds a path that names `name` inside the directory `dir` without following a
/// symlink at `name`, for the `l*xattr` calls that have no `*at` form.
pub(super) fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    path
}

/// Applies owner, mode and xattrs (and times unless `set_times` is false) to an open
/// regular file or directory, in an order that keeps setuid bits and capabilities:
/// chown clears both, so chmod and setxattr come after it.
pub(super) fn set_fd_metadata(
    fd: BorrowedFd<'_>,
    metadata: &Metadata,
    set_times: bool,
) -> rustix::io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(metadata.uid)),
        Some(Gid::from_raw(metadata.gid)),
    )?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(metadata.mode))?;
    for (name, value) in &metadata.xattrs {
        rustix::fs::fsetxattr(fd, name.as_c_str(), value, XattrFlags::empty())?;
    }
    if set_times {
        rustix::fs::futimens(fd, &metadata.times)?;
    }
    Ok(())
}

/// Applies owner, mode, xattrs and times to `name` in `dir` without following a symlink
/// at `name`. The mode is not applied to symlinks, which have none on Linux.
pub(super) fn set_metadata_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    metadata: &Metadata,
    is_symlink: bool,
) -> rustix::io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(metadata.uid)),
        Some(Gid::from_raw(metadata.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !is_symlink {
        // `name` is a device or fifo that the caller created in a directory that only
        // this process writes, so following the final component reaches that node.
        rustix::fs::chmodat(
            dir,
            name,
            Mode::from_raw_mode(metadata.mode),
            AtFlags::empty(),
        )?;
    }
    if !metadata.xattrs.is_empty() {
        let path = proc_path(dir, name);
        for (name, value) in &metadata.xattrs {
            rustix::fs::lsetxattr(&path, name.as_c_str(), value, XattrFlags::empty())?;
        }
    }
    rustix::fs::utimensat(dir, name, &metadata.times, AtFlags::SYMLINK_NOFOLLOW)
}
