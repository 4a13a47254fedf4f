//! The overlayfs root filesystem of a sandbox: read-only image layers below, a per-sandbox upper
//! directory on top.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, mkdirat};

/// Directory names inside the sandbox directory. They appear as typed in the container's
/// `/proc/mounts`, so they are short and relative.
const UPPER: &str = "upper";
const WORK: &str = "work";
const MERGED: &str = "merged";

/// Maximum length of `mount(2)` data: one page, including the terminating NUL.
const MAX_MOUNT_DATA: usize = 4095;

/// Maximum length of one `fsconfig` string value, excluding the terminating NUL (Linux copies at
/// most 256 bytes with `strndup_user`).
const MAX_FSCONFIG_VALUE: usize = 255;

/// Mounts an overlay of `lower_dirs` (topmost first) with `upper` and `work` in `sandbox_dir`
/// on `<sandbox_dir>/merged` and returns that path.
///
/// The mount is `volatile` (Linux 5.10+): overlayfs skips syncing the upper filesystem, which
/// would otherwise flush the whole host filesystem on every unmount. The upper layer is thrown
/// away after the run, and one kept with `--keep` is written back by normal page-cache writeback,
/// so it may lose its latest writes if the host crashes.
///
/// The options name upper, work and lower directories relative to `sandbox_dir` (or absolute
/// when that is shorter), because overlayfs shows them as given in every `/proc/mounts`,
/// including the container's. Relative paths resolve against the working directory of the
/// mounting thread. A helper thread therefore unshares its filesystem attributes (`CLONE_FS`),
/// changes into `sandbox_dir` and mounts, and the rest of the process keeps its directory.
/// Options longer than the one page `mount(2)` accepts go through `fsconfig` one layer at a
/// time instead (Linux 6.8+), where each path may have at most 255 bytes.
pub(super) fn mount(sandbox_dir: &Path, lower_dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if lower_dirs.is_empty() {
        bail!("no image layers to mount for {}", sandbox_dir.display());
    }
    for name in [UPPER, WORK, MERGED] {
        let path = sandbox_dir.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
    }
    let mut lowers = Vec::with_capacity(lower_dirs.len());
    for lower in lower_dirs {
        let absolute = std::fs::canonicalize(lower)
            .with_context(|| format!("image layer {} not found", lower.display()))?;
        if !absolute.is_dir() {
            bail!("image layer {} is not a directory", absolute.display());
        }
        let relative = relative_path(sandbox_dir, &absolute);
        let shorter = if relative.as_os_str().len() < absolute.as_os_str().len() {
            relative
        } else {
            absolute
        };
        let Some(text) = shorter.to_str() else {
            bail!("image layer path {} is not valid UTF-8", shorter.display());
        };
        lowers.push(text.to_string());
    }
    let escaped: Vec<String> = lowers
        .iter()
        .map(|lower| escape_lower(lower))
        .collect::<anyhow::Result<_>>()?;
    let options = format!(
        "lowerdir={},upperdir={UPPER},workdir={WORK},volatile",
        escaped.join(":")
    );

    let dir = sandbox_dir.to_path_buf();
    std::thread::Builder::new()
        .name("sandbox-mount".to_string())
        .spawn(move || -> anyhow::Result<()> {
            unshare(CloneFlags::CLONE_FS).context("failed to unshare the working directory")?;
            std::env::set_current_dir(&dir)
                .with_context(|| format!("failed to change into {}", dir.display()))?;
            if options.len() <= MAX_MOUNT_DATA {
                nix::mount::mount(
                    Some("overlay"),
                    MERGED,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(options.as_str()),
                )
                .map_err(io::Error::from)
                .with_context(|| format!("failed to mount overlay ({options})"))
            } else {
                mount_layer_by_layer(&lowers).with_context(|| {
                    format!(
                        "failed to mount an overlay of {} layers with fsconfig",
                        lowers.len()
                    )
                })
            }
        })
        .context("failed to start the mount thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the overlay mount thread panicked"))?
        .with_context(|| format!("in {}", sandbox_dir.display()))?;
    Ok(sandbox_dir.join(MERGED))
}

/// Mounts the overlay on `merged` in the current directory with the new mount API, passing each
/// lower directory in its own `fsconfig` call ("lowerdir+", Linux 6.8+). This avoids the
/// one-page limit of `mount(2)` options for image stacks with many layers.
fn mount_layer_by_layer(lowers: &[String]) -> anyhow::Result<()> {
    use nix::libc;

    let string =
        |value: &str| CString::new(value).with_context(|| format!("{value:?} contains a NUL byte"));
    // SAFETY: fsopen reads the NUL-terminated file system name and returns a new descriptor.
    let context =
        unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), libc::FSOPEN_CLOEXEC) };
    let context = owned_fd(context).context("fsopen(overlay) failed")?;
    let set = |key: &str, value: Option<&str>| -> anyhow::Result<()> {
        let key_c = string(key)?;
        let value_c = value.map(string).transpose()?;
        let (command, value_ptr) = match &value_c {
            Some(value) => (libc::FSCONFIG_SET_STRING, value.as_ptr()),
            None => (libc::FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: fsconfig reads the NUL-terminated key and value (or no value for a flag),
        // which live until it returns.
        let result = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                command,
                key_c.as_ptr(),
                value_ptr,
                0,
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("fsconfig {key}={}", value.unwrap_or("")));
        }
        Ok(())
    };
    for lower in lowers {
        if lower.len() > MAX_FSCONFIG_VALUE {
            bail!("image layer path {lower} is longer than {MAX_FSCONFIG_VALUE} bytes");
        }
        set("lowerdir+", Some(lower))?;
    }
    set("upperdir", Some(UPPER))?;
    set("workdir", Some(WORK))?;
    set("volatile", None)?;
    // SAFETY: FSCONFIG_CMD_CREATE takes no key or value pointers.
    let created = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if created < 0 {
        return Err(io::Error::last_os_error()).context("fsconfig create failed");
    }
    // SAFETY: fsmount takes the configured context and returns a new mount descriptor.
    let mount = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            0,
        )
    };
    let mount = owned_fd(mount).context("fsmount failed")?;
    let target = string(MERGED)?;
    // SAFETY: move_mount reads the empty source path and the NUL-terminated target path,
    // which live until it returns.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if moved < 0 {
        return Err(io::Error::last_os_error()).context("move_mount failed");
    }
    Ok(())
}

/// Takes ownership of the descriptor a syscall returned, or of its error.
fn owned_fd(result: nix::libc::c_long) -> io::Result<OwnedFd> {
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(result as i32) })
}

/// Unmounts everything mounted on or below `dir`, deepest first, and fails if anything stays.
pub(super) fn unmount_all_under(dir: &Path) -> anyhow::Result<()> {
    let mut mount_points = mount_points_under(dir)?;
    mount_points.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for mount_point in &mount_points {
        match umount2(mount_point, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(Errno::EBUSY) => umount2(mount_point, MntFlags::MNT_DETACH)
                .map_err(io::Error::from)
                .with_context(|| format!("failed to detach {}", mount_point.display()))?,
            Err(errno) => {
                return Err(io::Error::from(errno))
                    .with_context(|| format!("failed to unmount {}", mount_point.display()));
            }
        }
    }
    let left = mount_points_under(dir)?;
    if let Some(first) = left.first() {
        bail!("{} is still mounted", first.display());
    }
    Ok(())
}

/// Returns the mount points of this mount namespace that are `dir` or below it.
fn mount_points_under(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = match std::fs::canonicalize(dir) {
        Ok(dir) => dir,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to resolve {}", dir.display()));
        }
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|path| path.starts_with(&dir))
        .collect())
}

/// Decodes the octal escapes (`\040` for a space) of a mountinfo path field.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4);
        let octal = escape
            .filter(|digits| {
                bytes[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
            })
            .map(|digits| {
                digits
                    .iter()
                    .fold(0u32, |value, d| value * 8 + u32::from(d - b'0'))
            });
        match octal {
            Some(value) if value <= 0xff => {
                decoded.push(value as u8);
                index += 4;
            }
            _ => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&decoded))
}

/// Returns the path of `to` relative to `from`; both must be absolute and free of symlinks.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from
        .iter()
        .zip(&to)
        .take_while(|(left, right)| left == right)
        .count();
    let mut relative = PathBuf::new();
    for _ in common..from.len() {
        relative.push("..");
    }
    for component in &to[common..] {
        relative.push(component);
    }
    relative
}

/// Escapes a lower directory for the `lowerdir=` list, where `:` separates layers and `,`
/// separates options.
fn escape_lower(text: &str) -> anyhow::Result<String> {
    if text.contains(',') {
        bail!(
            "image layer path {text} contains a comma, which overlay mount options cannot contain"
        );
    }
    Ok(text.replace('\\', "\\\\").replace(':', "\\:"))
}

/// Creates `path` (absolute inside the container) and its missing parents below `rootfs`, like
/// Docker does for a missing `WorkingDir`. Symlinks resolve as if `rootfs` were `/`, so an image
/// cannot make this create directories on the host.
pub(super) fn create_dir_in_root(rootfs: &Path, path: &Path) -> anyhow::Result<()> {
    let root =
        File::open(rootfs).with_context(|| format!("failed to open {}", rootfs.display()))?;
    let mut prefix = PathBuf::new();
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let parent = open_in_root(&root, &prefix)
            .with_context(|| format!("failed to open {} in the rootfs", prefix.display()))?;
        prefix.push(name);
        match mkdirat(
            Some(parent.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => {
                return Err(io::Error::from(errno)).with_context(|| {
                    format!("failed to create {} in the rootfs", prefix.display())
                });
            }
        }
    }
    Ok(())
}

fn open_in_root(root: &File, relative: &Path) -> io::Result<OwnedFd> {
    let path = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), path, how)?;
    // SAFETY: openat2 returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_between_dirs() {
        assert_eq!(
            relative_path(Path::new("/r/sandboxes/a"), Path::new("/r/layers/x")),
            PathBuf::from("../../layers/x")
        );
        assert_eq!(
            relative_path(Path::new("/r/s"), Path::new("/r/s/lower")),
            PathBuf::from("lower")
        );
        assert_eq!(
            relative_path(Path::new("/a"), Path::new("/b/c")),
            PathBuf::from("../b/c")
        );
    }

    #[test]
    fn lower_paths_are_escaped() {
        assert_eq!(escape_lower("a:b").unwrap(), "a\\:b");
        assert_eq!(escape_lower("a\\b").unwrap(), "a\\\\b");
        assert!(escape_lower("a,b").is_err());
    }

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(
            unescape_mountinfo("/tmp/with\\040space"),
            PathBuf::from("/tmp/with space")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
        assert_eq!(
            unescape_mountinfo("/back\\slash"),
            PathBuf::from("/back\\slash")
        );
    }

    #[test]
    fn dir_in_root_stays_inside() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        // The symlink resolves inside the rootfs, where its target does not exist.
        assert!(create_dir_in_root(root.path(), Path::new("/escape/new/dir")).is_err());
        assert!(!outside.path().join("new").exists());

        create_dir_in_root(root.path(), Path::new("/srv/app")).unwrap();
        assert!(root.path().join("srv/app").is_dir());
        std::os::unix::fs::symlink("/srv", root.path().join("link")).unwrap();
        create_dir_in_root(root.path(), Path::new("/link/data")).unwrap();
        assert!(root.path().join("srv/data").is_dir());
        create_dir_in_root(root.path(), Path::new("/")).unwrap();
    }
}
