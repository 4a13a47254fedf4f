//! Resolution and creation of the parent directories of an entry.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::{
    OPAQUE_XATTR, Tree, invalid, io_error, is_dir, is_whiteout, lstat_at, open_child_dir, printable,
};
use crate::unpack::UnpackError;
use crate::unpack::lower::{self, Lowers};
use crate::unpack::metadata::{Metadata, set_fd_metadata};

/// Maximum number of symlinks followed while creating one entry's parent directories,
/// the same as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;
const TOO_MANY_SYMLINKS: &str = "too many levels of symbolic links in parent path";

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
        None => Metadata::default_dir(),
    };
    set_fd_metadata(fd.as_fd(), &metadata, false)
        .map_err(io_error(path, "set parent directory metadata"))?;
    if replaces_whiteout {
        rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(io_error(path, "mark parent directory opaque"))?;
    }
    Ok(fd)
}

/// Policy for the missing directories that [`Tree::create_dirs`] finds on a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Every missing directory: the entry is added to the image.
    Create,
    /// Only directories that the parent layers have: the entry is a whiteout, which has
    /// nothing to hide below a path that the parent layers lack.
    CreateFromParents,
}

impl Tree {
    /// Opens the directory at `components`, creating missing directories on the way.
    pub fn ensure_dir(
        &mut self,
        components: &[Vec<u8>],
        path: &str,
    ) -> Result<OwnedFd, UnpackError> {
        match self.resolve_dir(components) {
            Ok(dir) => Ok(dir),
            Err(Errno::NOENT | Errno::NOTDIR) => self
                .create_dirs(components, Missing::Create, path)?
                .ok_or_else(|| invalid(path, "parent directory was not created".to_owned())),
            Err(Errno::LOOP) => Err(invalid(path, TOO_MANY_SYMLINKS.to_owned())),
            Err(error) => Err(io_error(path, "open parent directory")(error)),
        }
    }

    /// Opens the directory at `components` for a whiteout, creating only the missing
    /// directories that the parent layers have. Returns `None` when the path has no
    /// directory in this layer or its parent layers, because then the whiteout has
    /// nothing to hide: a non-directory on the path (including a whiteout of this layer)
    /// hides everything below it.
    pub fn ensure_whiteout_dir(
        &mut self,
        components: &[Vec<u8>],
        path: &str,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        match self.resolve_dir(components) {
            Ok(dir) => Ok(Some(dir)),
            Err(Errno::NOENT | Errno::NOTDIR) => {
                self.create_dirs(components, Missing::CreateFromParents, path)
            }
            Err(Errno::LOOP) => Err(invalid(path, TOO_MANY_SYMLINKS.to_owned())),
            Err(error) => Err(io_error(path, "open parent directory")(error)),
        }
    }

    /// Walks `components` one at a time from the root with `O_NOFOLLOW`, following
    /// symlinks by hand, and creates missing directories as `missing` says. Returns
    /// `None` where `missing` lets the walk stop.
    ///
    /// `..` pops the stack of opened directories and absolute symlink targets restart at
    /// the root, so the walk cannot leave the destination. A component that this layer
    /// lacks is looked up in the parent layers as overlayfs would show it, unless an
    /// opaque directory of this layer hides them: a symlink there is followed, so `lib/x` below a parent layer's `lib -> usr/lib` lands in
    /// `usr/lib`. A created directory takes its metadata from the same directory in the
    /// nearest parent layer (0755 root:root if none). With [`Missing::Create`], a
    /// whiteout on the way is replaced by an opaque directory, because the layer removes
    /// the lower directory and then adds entries under the same name.
    fn create_dirs(
        &mut self,
        components: &[Vec<u8>],
        missing: Missing,
        path: &str,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let mut pending: VecDeque<Vec<u8>> = components.iter().cloned().collect();
        // Each opened directory, and whether it or a directory above it is opaque in
        // this layer, which hides the parent layers below it.
        let mut stack: Vec<(Vec<u8>, OwnedFd, bool)> = Vec::new();
        let mut symlinks = 0;
        let root_opaque =
            lower::is_opaque(&self.root).map_err(io_error(path, "read layer root xattrs"))?;

        while let Some(name) = pending.pop_front() {
            if name.is_empty() || name == b"." {
                continue;
            }
            if name == b".." {
                stack.pop();
                continue;
            }
            let (current, opaque) = match stack.last() {
                Some((_, fd, opaque)) => (fd.as_fd(), *opaque),
                None => (self.root.as_fd(), root_opaque),
            };
            let existing = lstat_at(current, &name).map_err(io_error(path, "stat parent"))?;
            let mut physical: Vec<Vec<u8>> = stack.iter().map(|(n, _, _)| n.clone()).collect();
            physical.push(name.clone());
            let symlink_target = match existing {
                Some(stat) if is_dir(&stat) => None,
                Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => Some(
                    rustix::fs::readlinkat(current, &name, Vec::new())
                        .map_err(io_error(path, "read symlink in parent path"))?
                        .into_bytes(),
                ),
                Some(_) if missing == Missing::CreateFromParents => return Ok(None),
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
                    stack.push((name, fd, true));
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
                    let lower = if opaque {
                        None
                    } else {
                        self.lowers
                            .find(&physical)
                            .map_err(io_error(path, "look up parent in parent layers"))?
                    };
                    let lower_type = lower
                        .as_ref()
                        .map(|entry| FileType::from_raw_mode(entry.stat.st_mode));
                    if lower_type == Some(FileType::Symlink) {
                        let lower = lower.expect("a lower type comes from a lower entry");
                        Some(
                            lower
                                .read_link()
                                .map_err(io_error(path, "read symlink in parent layer"))?,
                        )
                    } else if missing == Missing::CreateFromParents
                        && lower_type != Some(FileType::Directory)
                    {
                        return Ok(None);
                    } else {
                        let fd = make_implied_dir(
                            &self.lowers,
                            &mut self.dir_times,
                            current,
                            &name,
                            &physical,
                            false,
                            path,
                        )?;
                        stack.push((name, fd, opaque));
                        continue;
                    }
                }
            };
            if let Some(target) = symlink_target {
                symlinks += 1;
                if symlinks > MAX_SYMLINKS {
                    return Err(invalid(path, TOO_MANY_SYMLINKS.to_owned()));
                }
                if target.starts_with(b"/") {
                    stack.clear();
                }
                for part in target.rsplit(|byte| *byte == b'/') {
                    pending.push_front(part.to_vec());
                }
                continue;
            }
            let fd = open_child_dir(current, &name).map_err(io_error(path, "open parent"))?;
            let opaque =
                opaque || lower::is_opaque(&fd).map_err(io_error(path, "read parent xattrs"))?;
            stack.push((name, fd, opaque));
        }

        match stack.pop() {
            Some((_, fd, _)) => Ok(Some(fd)),
            None => self
                .resolve_dir(&[])
                .map(Some)
                .map_err(io_error(path, "open layer root")),
        }
    }
}
