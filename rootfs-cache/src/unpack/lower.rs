//! Read-only lookups in the parent layers of the layer being unpacked.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use super::UnpackError;
use super::entry::OVERLAY_XATTR_PREFIX;
use super::metadata::{Metadata, proc_path};
use super::tree::is_whiteout;

/// Parent layer directories, nearest first.
pub(super) struct Lowers {
    layers: Vec<OwnedFd>,
}

/// A non-whiteout object found in a parent layer.
pub(super) struct Entry {
    /// The directory that contains the object, inside its layer.
    dir: OwnedFd,
    name: Vec<u8>,
    pub stat: Stat,
}

impl Lowers {
    pub fn open(parents: &[PathBuf]) -> Result<Lowers, UnpackError> {
        let mut layers = Vec::with_capacity(parents.len());
        for parent in parents {
            let fd = rustix::fs::open(
                parent,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|source| UnpackError::OpenDirectory {
                path: parent.clone(),
                source: source.into(),
            })?;
            layers.push(fd);
        }
        Ok(Lowers { layers })
    }

    /// Finds the object at `components` as overlayfs would show it with these layers
    /// stacked: the nearest layer that has it wins, and a whiteout, a non-directory or an
    /// opaque directory on the way hides the layers below.
    ///
    /// No symlink is followed, including in the directories on the way.
    // TODO: a path that crosses a symlink in a parent layer (`lib -> usr/lib`, then
    // `lib/x`) is reported as missing instead of being resolved across the layers.
    pub fn find(&self, components: &[Vec<u8>]) -> rustix::io::Result<Option<Entry>> {
        let Some((name, parents)) = components.split_last() else {
            return Ok(None);
        };
        'layers: for layer in &self.layers {
            let mut dir = rustix::io::fcntl_dupfd_cloexec(layer, 0)?;
            let mut below_opaque = false;
            for component in parents {
                match lstat_at(&dir, component)? {
                    Some(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                        dir = rustix::fs::openat(
                            &dir,
                            component.as_slice(),
                            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        below_opaque |= is_opaque(&dir)?;
                    }
                    Some(_) => return Ok(None),
                    None if below_opaque => return Ok(None),
                    None => continue 'layers,
                }
            }
            match lstat_at(&dir, name)? {
                Some(stat) if is_whiteout(&stat) => return Ok(None),
                Some(stat) => {
                    return Ok(Some(Entry {
                        dir,
                        name: name.clone(),
                        stat,
                    }));
                }
                None if below_opaque => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// Returns the metadata of the nearest parent layer's root directory.
    pub fn root_metadata(&self) -> rustix::io::Result<Option<Metadata>> {
        let Some(layer) = self.layers.first() else {
            return Ok(None);
        };
        let root = Entry {
            dir: rustix::io::fcntl_dupfd_cloexec(layer, 0)?,
            name: b".".to_vec(),
            stat: rustix::fs::fstat(layer)?,
        };
        root.metadata().map(Some)
    }

    /// Returns the metadata of the directory at `components` in the nearest parent layer
    /// that has one there.
    pub fn dir_metadata(&self, components: &[Vec<u8>]) -> rustix::io::Result<Option<Metadata>> {
        match self.find(components)? {
            Some(entry) if FileType::from_raw_mode(entry.stat.st_mode) == FileType::Directory => {
                entry.metadata().map(Some)
            }
            _ => Ok(None),
        }
    }
}

impl Entry {
    /// Reads mode, owner, times and xattrs, leaving out `trusted.overlay.*` xattrs
    /// because they describe the parent layer's own stacking.
    pub fn metadata(&self) -> rustix::io::Result<Metadata> {
        #[allow(
            clippy::unnecessary_cast,
            reason = "stat field types differ by architecture"
        )]
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: self.stat.st_atime as i64,
                tv_nsec: self.stat.st_atime_nsec as i64,
            },
            last_modification: Timespec {
                tv_sec: self.stat.st_mtime as i64,
                tv_nsec: self.stat.st_mtime_nsec as i64,
            },
        };
        Ok(Metadata {
            mode: self.stat.st_mode & 0o7777,
            uid: self.stat.st_uid,
            gid: self.stat.st_gid,
            times,
            xattrs: read_xattrs(&proc_path(self.dir.as_fd(), &self.name))?,
        })
    }

    /// Opens the regular file for reading.
    pub fn open_file(&self) -> rustix::io::Result<File> {
        let fd = rustix::fs::openat(
            &self.dir,
            self.name.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Reads the symlink's target.
    pub fn read_link(&self) -> rustix::io::Result<Vec<u8>> {
        let target = rustix::fs::readlinkat(&self.dir, self.name.as_slice(), Vec::new())?;
        Ok(target.into_bytes())
    }
}

fn lstat_at(dir: &OwnedFd, name: &[u8]) -> rustix::io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::NOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Reports whether the directory `dir` is marked opaque.
pub(super) fn is_opaque(dir: impl AsFd) -> rustix::io::Result<bool> {
    let mut value = [0u8; 8];
    match rustix::fs::fgetxattr(dir, "trusted.overlay.opaque", &mut value[..]) {
        Ok(len) => Ok(&value[..len] == b"y"),
        Err(Errno::NODATA | Errno::NOTSUP | Errno::RANGE) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Reads all xattrs of `path` without following a symlink at it, except
/// `trusted.overlay.*`.
fn read_xattrs(path: &[u8]) -> rustix::io::Result<Vec<(CString, Vec<u8>)>> {
    let names = loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(size) => size,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut names = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(len) => {
                names.truncate(len);
                break names;
            }
            // The list grew between the two calls.
            Err(Errno::RANGE) => continue,
            Err(error) => return Err(error),
        }
    };

    let mut xattrs = Vec::new();
    for name in names.split(|byte| *byte == 0) {
        if name.is_empty() || name.starts_with(OVERLAY_XATTR_PREFIX) {
            continue;
        }
        let value = loop {
            let size = match rustix::fs::lgetxattr_query(path, name) {
                Ok(size) => size,
                Err(Errno::NODATA) => break None,
                Err(error) => return Err(error),
            };
            let mut value = vec![0u8; size];
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(len) => {
                    value.truncate(len);
                    break Some(value);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(error) => return Err(error),
            }
        };
        if let Some(value) = value {
            let name = CString::new(name).map_err(|_| Errno::INVAL)?;
            xattrs.push((name, value));
        }
    }
    Ok(xattrs)
}
