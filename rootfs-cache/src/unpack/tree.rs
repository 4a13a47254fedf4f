//! Filesystem operations confined to the destination directory of one layer.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::UnpackError;
use super::lower::Lowers;
use super::metadata::{Metadata, set_fd_metadata, set_metadata_at};

mod hardlink;
mod parents;

/// Xattr that marks an overlayfs directory as hiding the lower layers.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// The destination directory of a layer being unpacked, and its parent layers.
pub(super) struct Tree {
    root: OwnedFd,
    lowers: Lowers,
    /// Directory times, applied by [`Tree::finish`] because creating entries in a
    /// directory changes its mtime.
    dir_times: Vec<(Vec<Vec<u8>>, Timestamps)>,
    /// Whether an entry of this layer named the root (`./`).
    root_listed: bool,
    copy_buffer: Vec<u8>,
}

fn io_error<E: Into<io::Error>>(path: &str, action: &'static str) -> impl FnOnce(E) -> UnpackError {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        action,
        source: source.into(),
    }
}

fn invalid(path: &str, reason: String) -> UnpackError {
    UnpackError::InvalidEntry {
        path: path.to_owned(),
        reason,
    }
}

fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(super) fn is_whiteout(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::CharacterDevice && stat.st_rdev == 0
}

fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}

fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::NOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

fn open_child_dir(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn join(components: &[Vec<u8>]) -> Vec<u8> {
    if components.is_empty() {
        return b".".to_vec();
    }
    components.join(&b'/')
}

/// Removes `name` from `dir`, recursing into directories without following symlinks.
/// A missing `name` is not an error.
fn remove_entry(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(error) => return Err(error),
    }
    let child = open_child_dir(dir, name)?;
    let mut names = Vec::new();
    for entry in Dir::read_from(&child)? {
        let entry = entry?;
        let entry_name = entry.file_name().to_bytes();
        if entry_name != b"." && entry_name != b".." {
            names.push(entry_name.to_vec());
        }
    }
    for entry_name in names {
        remove_entry(child.as_fd(), &entry_name)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

impl Tree {
    /// Opens `dest`, which must be an empty directory, and the parent layer directories.
    pub fn open(dest: &Path, parents: &[PathBuf]) -> Result<Tree, UnpackError> {
        let open_error = |path: &Path| {
            let path = path.to_owned();
            move |source: Errno| UnpackError::OpenDirectory {
                path,
                source: source.into(),
            }
        };
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(open_error(dest))?;
        for entry in Dir::read_from(&root).map_err(open_error(dest))? {
            let name = entry.map_err(open_error(dest))?;
            let name = name.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Err(UnpackError::DestinationNotEmpty {
                    path: dest.to_owned(),
                });
            }
        }
        let lowers = Lowers::open(parents)?;
        Ok(Tree {
            root,
            lowers,
            dir_times: Vec::new(),
            root_listed: false,
            copy_buffer: vec![0; 128 * 1024],
        })
    }

    /// Opens the existing directory at `components`, resolving symlinks as if the
    /// destination were `/`.
    fn resolve_dir(&self, components: &[Vec<u8>]) -> rustix::io::Result<OwnedFd> {
        let path = join(components);
        loop {
            match rustix::fs::openat2(
                &self.root,
                &path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // openat2 returns EAGAIN when a concurrent rename might have let the
                // lookup escape, and the lookup is safe to retry.
                Err(Errno::AGAIN) => continue,
                result => return result,
            }
        }
    }

    /// Removes whatever is at `name` in `dir`, unless it is a directory and `keep_dir`.
    /// Returns what was there.
    fn clear_slot(
        dir: BorrowedFd<'_>,
        name: &[u8],
        keep_dir: bool,
        path: &str,
    ) -> Result<Option<Stat>, UnpackError> {
        let existing = lstat_at(dir, name).map_err(io_error(path, "stat existing entry"))?;
        if let Some(stat) = &existing
            && !(keep_dir && is_dir(stat))
        {
            remove_entry(dir, name).map_err(io_error(path, "remove existing entry"))?;
        }
        Ok(existing)
    }

    /// Creates an empty regular file at `parent/name`, replacing what was there.
    pub fn create_file(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        path: &str,
    ) -> Result<File, UnpackError> {
        let dir = self.ensure_dir(parent, path)?;
        Self::clear_slot(dir.as_fd(), name, false, path)?;
        let fd = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io_error(path, "create file"))?;
        Ok(File::from(fd))
    }

    /// Copies an entry's content into `file`. For `sparse` entries, blocks of zeros
    /// become holes.
    pub fn copy_content(
        &mut self,
        content: &mut impl Read,
        mut file: &File,
        sparse: bool,
        path: &str,
    ) -> Result<(), UnpackError> {
        let mut length: u64 = 0;
        loop {
            let n = match content.read(&mut self.copy_buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::Read {
                        entry: Some(path.to_owned()),
                        source,
                    });
                }
            };
            let chunk = &self.copy_buffer[..n];
            if sparse && chunk.iter().all(|byte| *byte == 0) {
                file.seek(SeekFrom::Current(n as i64))
                    .map_err(io_error(path, "seek in file"))?;
            } else {
                file.write_all(chunk)
                    .map_err(io_error(path, "write file"))?;
            }
            length += n as u64;
        }
        if sparse {
            file.set_len(length)
                .map_err(io_error(path, "set file length"))?;
        }
        Ok(())
    }

    /// Applies metadata to an open regular file or directory.
    pub fn set_fd_metadata(
        &mut self,
        fd: impl AsFd,
        metadata: &Metadata,
        set_times: bool,
        path: &str,
    ) -> Result<(), UnpackError> {
        set_fd_metadata(fd.as_fd(), metadata, set_times).map_err(io_error(path, "set metadata"))
    }

    /// Creates or updates the directory `parent/name`.
    ///
    /// An existing directory keeps its entries and gets the new metadata. A whiteout that
    /// this layer put there becomes an opaque directory, because the layer removed the
    /// lower directory before adding this one.
    pub fn create_dir(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        metadata: &Metadata,
        path: &str,
    ) -> Result<(), UnpackError> {
        let dir = self.ensure_dir(parent, path)?;
        let existing = Self::clear_slot(dir.as_fd(), name, true, path)?;
        let replaces_whiteout = existing.as_ref().is_some_and(is_whiteout);
        if !existing.as_ref().is_some_and(is_dir) {
            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                .map_err(io_error(path, "create directory"))?;
        }
        let fd = open_child_dir(dir.as_fd(), name).map_err(io_error(path, "open directory"))?;
        if replaces_whiteout {
            rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(io_error(path, "mark directory opaque"))?;
        }
        set_fd_metadata(fd.as_fd(), metadata, false)
            .map_err(io_error(path, "set directory metadata"))?;
        let mut components = parent.to_vec();
        components.push(name.to_vec());
        self.dir_times.push((components, metadata.times.clone()));
        Ok(())
    }

    /// Applies a directory entry that names the layer root (`.`, `/`, `..` or empty).
    pub fn set_root_metadata(
        &mut self,
        metadata: &Metadata,
        path: &str,
    ) -> Result<(), UnpackError> {
        set_fd_metadata(self.root.as_fd(), metadata, false)
            .map_err(io_error(path, "set layer root metadata"))?;
        self.dir_times.push((Vec::new(), metadata.times.clone()));
        self.root_listed = true;
        Ok(())
    }

    /// Gives the layer root the metadata of the nearest parent layer's root, or 0755
    /// root:root without parents, unless this layer has a root entry. Overlayfs shows the
    /// topmost layer's root as `/`, so the mode of the directory that the caller created
    /// must not leak into the image.
    fn inherit_root_metadata(&mut self) -> Result<(), UnpackError> {
        if self.root_listed {
            return Ok(());
        }
        let path = ".";
        let metadata = self
            .lowers
            .root_metadata()
            .map_err(io_error(path, "read parent layer root"))?;
        let metadata = match metadata {
            Some(metadata) => {
                self.dir_times.push((Vec::new(), metadata.times.clone()));
                metadata
            }
            None => Metadata::default_dir(),
        };
        set_fd_metadata(self.root.as_fd(), &metadata, false)
            .map_err(io_error(path, "set layer root metadata"))
    }

    /// Creates the symlink `parent/name` pointing to `target`, which is stored as is.
    pub fn create_symlink(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        target: &[u8],
        metadata: &Metadata,
        path: &str,
    ) -> Result<(), UnpackError> {
        let dir = self.ensure_dir(parent, path)?;
        Self::clear_slot(dir.as_fd(), name, false, path)?;
        rustix::fs::symlinkat(target, &dir, name).map_err(io_error(path, "create symlink"))?;
        set_metadata_at(dir.as_fd(), name, metadata, true)
            .map_err(io_error(path, "set symlink metadata"))
    }

    /// Creates the device or fifo `parent/name`.
    pub fn create_node(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        file_type: FileType,
        device: u64,
        metadata: &Metadata,
        path: &str,
    ) -> Result<(), UnpackError> {
        let dir = self.ensure_dir(parent, path)?;
        Self::clear_slot(dir.as_fd(), name, false, path)?;
        rustix::fs::mknodat(&dir, name, file_type, Mode::empty(), device)
            .map_err(io_error(path, "create device node"))?;
        set_metadata_at(dir.as_fd(), name, metadata, false)
            .map_err(io_error(path, "set device node metadata"))
    }

    /// Replaces `parent/name` with an overlayfs whiteout (character device 0/0).
    ///
    /// A whiteout below a path that has no directory in this layer or its parent layers
    /// does nothing. umoci 0.4.7 writes such whiteouts when a directory becomes a file or
    /// a symlink: `d` as the new object, then `d/.wh.child` for each child of the old
    /// directory.
    // TODO: a whiteout for a name that no parent layer has is still created. In a
    // directory that only this layer has, overlayfs lists it in readdir without being
    // able to stat it.
    pub fn create_whiteout(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        metadata: &Metadata,
        path: &str,
    ) -> Result<(), UnpackError> {
        let Some(dir) = self.ensure_whiteout_dir(parent, path)? else {
            return Ok(());
        };
        Self::clear_slot(dir.as_fd(), name, false, path)?;
        rustix::fs::mknodat(&dir, name, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(io_error(path, "create whiteout"))?;
        rustix::fs::chownat(
            &dir,
            name,
            Some(Uid::from_raw(metadata.uid)),
            Some(Gid::from_raw(metadata.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_error(path, "set whiteout owner"))
    }

    /// Marks the directory at `components` opaque, creating it if needed. Entries that
    /// this layer puts in it, before or after the marker, stay.
    pub fn set_opaque(&mut self, components: &[Vec<u8>], path: &str) -> Result<(), UnpackError> {
        let dir = self.ensure_dir(components, path)?;
        rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(io_error(path, "mark directory opaque"))
    }

    /// Completes the layer: sets the root's inherited metadata, then the recorded
    /// directory times, deepest directories first. Directories that a later entry
    /// replaced with a non-directory are skipped.
    pub fn finish(mut self) -> Result<(), UnpackError> {
        self.inherit_root_metadata()?;
        let mut dir_times = std::mem::take(&mut self.dir_times);
        // A stable sort keeps the last entry for a path after earlier ones.
        dir_times.sort_by_key(|(components, _)| std::cmp::Reverse(components.len()));
        for (components, times) in dir_times {
            let path = printable(&join(&components));
            let Some((name, parent)) = components.split_last() else {
                rustix::fs::futimens(&self.root, &times)
                    .map_err(io_error(&path, "set layer root times"))?;
                continue;
            };
            let dir = match self.resolve_dir(parent) {
                Ok(dir) => dir,
                Err(Errno::NOENT | Errno::NOTDIR) => continue,
                Err(error) => return Err(io_error(&path, "open directory")(error)),
            };
            match lstat_at(dir.as_fd(), name) {
                Ok(Some(stat)) if is_dir(&stat) => {}
                Ok(_) => continue,
                Err(error) => return Err(io_error(&path, "stat directory")(error)),
            }
            rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_error(&path, "set directory times"))?;
        }
        Ok(())
    }
}
