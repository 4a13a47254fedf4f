//! Filesystem operations confined to the destination directory of one layer.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Stat, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::UnpackError;
use super::lower::{self, Lowers};

/// Maximum number of symlinks followed while creating one entry's parent directories,
/// the same as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;
const TOO_MANY_SYMLINKS: &str = "too many levels of symbolic links in parent path";
/// Xattr that marks an overlayfs directory as hiding the lower layers.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

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

/// The destination directory of a layer being unpacked, and its parent layers.
pub(super) struct Tree {
    root: OwnedFd,
    lowers: Lowers,
    /// Directory times, applied by [`Tree::finish`] because creating entries in a
    /// directory changes its mtime.
    dir_times: Vec<(Vec<Vec<u8>>, Timestamps)>,
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

/// Path that names `name` inside the directory `dir` without following a symlink at
/// `name`, for the `l*xattr` calls that have no `*at` form.
pub(super) fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    path
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

/// Applies owner, mode and xattrs (and times unless `set_times` is false) to an open
/// regular file or directory, in an order that keeps setuid bits and capabilities:
/// chown clears both, so chmod and setxattr come after it.
fn set_fd_metadata(
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
fn set_metadata_at(
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

/// Creates a directory that an entry implies without listing it.
fn make_implied_dir(
    lowers: &Lowers,
    dir_times: &mut Vec<(Vec<Vec<u8>>, Timestamps)>,
    parent: BorrowedFd<'_>,
    name: &[u8],
    physical: &[Vec<u8>],
    replaces_whiteout: bool,
    path: &str,
) -> Result<OwnedFd, UnpackError> {
    let metadata = if replaces_whiteout {
        None
    } else {
        lowers
            .dir_metadata(physical)
            .map_err(io_error(path, "read parent layer directory"))?
    };
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
        .map_err(io_error(path, "create parent directory"))?;
    let fd = open_child_dir(parent, name).map_err(io_error(path, "open parent"))?;
    let metadata = match metadata {
        Some(metadata) => {
            dir_times.push((physical.to_vec(), metadata.times.clone()));
            metadata
        }
        None => Metadata {
            mode: 0o755,
            uid: 0,
            gid: 0,
            times: Timestamps {
                last_access: Default::default(),
                last_modification: Default::default(),
            },
            xattrs: Vec::new(),
        },
    };
    set_fd_metadata(fd.as_fd(), &metadata, false)
        .map_err(io_error(path, "set parent directory metadata"))?;
    if replaces_whiteout {
        rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(io_error(path, "mark parent directory opaque"))?;
    }
    Ok(fd)
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

    /// Opens the directory at `components`, creating missing directories on the way.
    pub fn ensure_dir(
        &mut self,
        components: &[Vec<u8>],
        path: &str,
    ) -> Result<OwnedFd, UnpackError> {
        match self.resolve_dir(components) {
            Ok(dir) => Ok(dir),
            Err(Errno::NOENT | Errno::NOTDIR) => self.create_dirs(components, path),
            Err(Errno::LOOP) => Err(invalid(path, TOO_MANY_SYMLINKS.to_owned())),
            Err(error) => Err(io_error(path, "open parent directory")(error)),
        }
    }

    /// Walks `components` one at a time from the root with `O_NOFOLLOW`, following
    /// symlinks by hand, and creates missing directories.
    ///
    /// `..` pops the stack of opened directories and absolute symlink targets restart at
    /// the root, so the walk cannot leave the destination. A created directory takes its
    /// metadata from the same directory in the nearest parent layer (0755 root:root if
    /// none). A whiteout on the way is replaced by an opaque directory, because the layer
    /// removes the lower directory and then adds entries under the same name.
    fn create_dirs(&mut self, components: &[Vec<u8>], path: &str) -> Result<OwnedFd, UnpackError> {
        let mut pending: std::collections::VecDeque<Vec<u8>> = components.iter().cloned().collect();
        let mut stack: Vec<(Vec<u8>, OwnedFd)> = Vec::new();
        let mut symlinks = 0;

        while let Some(name) = pending.pop_front() {
            if name.is_empty() || name == b"." {
                continue;
            }
            if name == b".." {
                stack.pop();
                continue;
            }
            let current = match stack.last() {
                Some((_, fd)) => fd.as_fd(),
                None => self.root.as_fd(),
            };
            let existing = lstat_at(current, &name).map_err(io_error(path, "stat parent"))?;
            let mut physical: Vec<Vec<u8>> = stack.iter().map(|(n, _)| n.clone()).collect();
            physical.push(name.clone());
            match existing {
                Some(stat) if is_dir(&stat) => {}
                Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(invalid(path, TOO_MANY_SYMLINKS.to_owned()));
                    }
                    let target = rustix::fs::readlinkat(current, &name, Vec::new())
                        .map_err(io_error(path, "read symlink in parent path"))?;
                    let target = target.into_bytes();
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for part in target.rsplit(|byte| *byte == b'/') {
                        pending.push_front(part.to_vec());
                    }
                    continue;
                }
                Some(stat) if is_whiteout(&stat) => {
                    rustix::fs::unlinkat(current, &name, AtFlags::empty())
                        .map_err(io_error(path, "remove whiteout"))?;
                    let fd = make_implied_dir(
                        &self.lowers,
                        &mut self.dir_times,
                        current,
                        &name,
                        &physical,
                        true,
                        path,
                    )?;
                    stack.push((name, fd));
                    continue;
                }
                Some(_) => {
                    return Err(invalid(
                        path,
                        format!(
                            "parent path component {:?} is not a directory",
                            printable(&physical.join(&b'/'))
                        ),
                    ));
                }
                None => {
                    let fd = make_implied_dir(
                        &self.lowers,
                        &mut self.dir_times,
                        current,
                        &name,
                        &physical,
                        false,
                        path,
                    )?;
                    stack.push((name, fd));
                    continue;
                }
            }
            let fd = open_child_dir(current, &name).map_err(io_error(path, "open parent"))?;
            stack.push((name, fd));
        }

        match stack.pop() {
            Some((_, fd)) => Ok(fd),
            None => self
                .resolve_dir(&[])
                .map_err(io_error(path, "open layer root")),
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
        Ok(())
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
    pub fn create_whiteout(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        metadata: &Metadata,
        path: &str,
    ) -> Result<(), UnpackError> {
        let dir = self.ensure_dir(parent, path)?;
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

    /// Creates the hardlink `parent/name` to `target`.
    ///
    /// The target's parent is resolved like any entry path and its final component is
    /// not followed, so a link to a symlink links the symlink itself. A target that is
    /// not in this layer is copied up from the nearest parent layer first.
    pub fn create_hardlink(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        target: &[Vec<u8>],
        path: &str,
    ) -> Result<(), UnpackError> {
        let target_text = printable(&join(target));
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(invalid(
                path,
                "hardlink target is the layer root".to_owned(),
            ));
        };
        let mut found = self.find_in_layer(target_parent, target_name, path)?;
        if found.is_none() {
            let Some(lower) = self
                .lowers
                .find(target)
                .map_err(io_error(path, "look up hardlink target in parent layers"))?
            else {
                return Err(invalid(
                    path,
                    format!(
                        "hardlink target {target_text:?} not found in this layer or its parent layers"
                    ),
                ));
            };
            self.copy_up(target_parent, target_name, &lower, path)?;
            found = self.find_in_layer(target_parent, target_name, path)?;
        }
        let Some((target_dir, target_stat)) = found else {
            return Err(invalid(
                path,
                format!("hardlink target {target_text:?} vanished after copy-up"),
            ));
        };
        if is_dir(&target_stat) {
            return Err(invalid(
                path,
                format!("hardlink target {target_text:?} is a directory"),
            ));
        }
        if is_whiteout(&target_stat) {
            return Err(invalid(
                path,
                format!("hardlink target {target_text:?} was removed by a whiteout in this layer"),
            ));
        }

        let dir = self.ensure_dir(parent, path)?;
        if let Some(existing) =
            lstat_at(dir.as_fd(), name).map_err(io_error(path, "stat existing entry"))?
        {
            if existing.st_dev == target_stat.st_dev && existing.st_ino == target_stat.st_ino {
                return Ok(());
            }
            remove_entry(dir.as_fd(), name).map_err(io_error(path, "remove existing entry"))?;
        }
        rustix::fs::linkat(&target_dir, target_name, &dir, name, AtFlags::empty())
            .map_err(io_error(path, "create hardlink"))
    }

    /// Looks up `parent/name` in this layer without following a symlink at `name`.
    fn find_in_layer(
        &self,
        parent: &[Vec<u8>],
        name: &[u8],
        path: &str,
    ) -> Result<Option<(OwnedFd, Stat)>, UnpackError> {
        let dir = match self.resolve_dir(parent) {
            Ok(dir) => dir,
            Err(Errno::NOENT) => return Ok(None),
            Err(error) => return Err(io_error(path, "open hardlink target directory")(error)),
        };
        let stat = lstat_at(dir.as_fd(), name).map_err(io_error(path, "stat hardlink target"))?;
        Ok(stat.map(|stat| (dir, stat)))
    }

    /// Copies a file, symlink or device node from a parent layer into this layer at
    /// `parent/name`, with its content, mode, owner, xattrs and times.
    fn copy_up(
        &mut self,
        parent: &[Vec<u8>],
        name: &[u8],
        lower: &lower::Entry,
        path: &str,
    ) -> Result<(), UnpackError> {
        let metadata = lower
            .metadata()
            .map_err(io_error(path, "read hardlink target in parent layer"))?;
        match FileType::from_raw_mode(lower.stat.st_mode) {
            FileType::RegularFile => {
                let source = lower
                    .open_file()
                    .map_err(io_error(path, "open hardlink target in parent layer"))?;
                let file = self.create_file(parent, name, path)?;
                io::copy(&mut &source, &mut &file)
                    .map_err(io_error(path, "copy hardlink target from parent layer"))?;
                self.set_fd_metadata(&file, &metadata, true, path)
            }
            FileType::Symlink => {
                let target = lower
                    .read_link()
                    .map_err(io_error(path, "read hardlink target in parent layer"))?;
                self.create_symlink(parent, name, &target, &metadata, path)
            }
            file_type @ (FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo) => {
                self.create_node(parent, name, file_type, lower.stat.st_rdev, &metadata, path)
            }
            FileType::Directory => {
                let mut target = parent.to_vec();
                target.push(name.to_vec());
                Err(invalid(
                    path,
                    format!(
                        "hardlink target {:?} is a directory",
                        printable(&join(&target))
                    ),
                ))
            }
            other => Err(invalid(
                path,
                format!("hardlink target in a parent layer has unsupported type {other:?}"),
            )),
        }
    }

    /// Sets the recorded directory times, deepest directories first. Directories that a
    /// later entry replaced with a non-directory are skipped.
    pub fn finish(mut self) -> Result<(), UnpackError> {
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
