//! Hardlinks, including targets copied up from a parent layer.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Stat};
use rustix::io::Errno;

use super::{
    Tree, invalid, io_error, is_dir, is_whiteout, join, lstat_at, printable, remove_entry,
};
use crate::unpack::UnpackError;
use crate::unpack::lower;

impl Tree {
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
            // TODO: other names of the target's inode in the parent layers are not copied
            // up, so they no longer share an inode with the target and this link.
            self.copy_up(target_parent, target_name, &lower, path)?;
            found = self.find_in_layer(target_parent, target_name, path)?;
        }
        let Some((target_dir, target_stat)) = found else {
            return Err(invalid(
                path,
                format!(
                    "hardlink target {target_text:?} not found after copying it from a parent layer"
                ),
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
}
