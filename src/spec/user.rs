//! Resolution of an image's `User` (`name`, `uid`, `name:group`, `uid:gid`, ...) against the
//! `/etc/passwd` and `/etc/group` files of the container's root filesystem.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};

/// The numeric identity a container process runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids: the groups in `/etc/group` that list the user by name.
    pub additional_gids: Vec<u32>,
    /// Home directory from the user's `/etc/passwd` entry, if it has one.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (the image config's `User` field) the way runc and Docker do.
///
/// - An empty or missing value is root (0:0).
/// - The user part is looked up by name or uid in `rootfs/etc/passwd`. A numeric uid that is not
///   listed runs with gid 0; a name that is not listed is an error.
/// - An explicit group part (name or gid, looked up in `rootfs/etc/group`) becomes the primary
///   group and no supplementary groups are added. Without one, the primary group is the passwd
///   entry's and the supplementary groups are every group that lists the user name.
///
/// The files are opened with `RESOLVE_IN_ROOT`, so symlinks in the image cannot point outside
/// `rootfs`. A missing file counts as empty.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> anyhow::Result<ResolvedUser> {
    let spec = user.unwrap_or("").trim();
    if spec.is_empty() {
        let passwd = parse_passwd(&read_in_root(rootfs, "etc/passwd")?);
        let home = passwd
            .iter()
            .find(|entry| entry.uid == 0)
            .map(|entry| entry.home.clone());
        return Ok(ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home,
        });
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user_part, group_part)) => (user_part, Some(group_part)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        bail!("invalid user {spec:?}: the user part is empty");
    }

    let passwd = parse_passwd(&read_in_root(rootfs, "etc/passwd")?);
    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = passwd.iter().find(|entry| match numeric_uid {
        Some(uid) => entry.uid == uid,
        None => entry.name == user_part,
    });
    let home = entry.map(|entry| entry.home.clone());
    let (uid, mut gid, name) = match (entry, numeric_uid) {
        (Some(entry), _) => (entry.uid, entry.gid, Some(entry.name.as_str())),
        (None, Some(uid)) => (uid, 0, None),
        (None, None) => bail!(
            "user {user_part:?} not found in {}",
            rootfs.join("etc/passwd").display()
        ),
    };

    let needs_groups = group_part.is_some() || name.is_some();
    let groups = if needs_groups {
        parse_group(&read_in_root(rootfs, "etc/group")?)
    } else {
        Vec::new()
    };

    let mut additional_gids = Vec::new();
    match group_part {
        Some("") => bail!("invalid user {spec:?}: the group part is empty"),
        Some(group_part) => {
            let numeric_gid = group_part.parse::<u32>().ok();
            let group = groups.iter().find(|group| match numeric_gid {
                Some(gid) => group.gid == gid,
                None => group.name == group_part,
            });
            gid = match (group, numeric_gid) {
                (Some(group), _) => group.gid,
                (None, Some(gid)) => gid,
                (None, None) => bail!(
                    "group {group_part:?} not found in {}",
                    rootfs.join("etc/group").display()
                ),
            };
        }
        None => {
            if let Some(name) = name {
                for group in &groups {
                    let listed = group.members.iter().any(|member| member == name);
                    if listed && group.gid != gid && !additional_gids.contains(&group.gid) {
                        additional_gids.push(group.gid);
                    }
                }
            }
        }
    }

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Reads `relative` inside `rootfs`, resolving symlinks as if `rootfs` were `/`.
fn read_in_root(rootfs: &Path, relative: &str) -> anyhow::Result<String> {
    let root =
        File::open(rootfs).with_context(|| format!("failed to open {}", rootfs.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(root.as_raw_fd(), relative, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(String::new()),
        Err(err) => {
            return Err(io::Error::from(err))
                .with_context(|| format!("failed to open {}", rootfs.join(relative).display()));
        }
    };
    // SAFETY: openat2 returned a new file descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut content = String::new();
    file.read_to_string(&mut content)
        .with_context(|| format!("failed to read {}", rootfs.join(relative).display()))?;
    Ok(content)
}

/// Parses `name:password:uid:gid:gecos:home:shell` lines, skipping malformed ones.
fn parse_passwd(content: &str) -> Vec<PasswdEntry> {
    content
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields.get(5).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Parses `name:password:gid:member,member` lines, skipping malformed ones.
fn parse_group(content: &str) -> Vec<GroupEntry> {
    content
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            let members = fields
                .get(3)
                .map(|list| {
                    list.split(',')
                        .filter(|member| !member.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1::/:/bin/false\n\
                          broken line\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
                         wheel:x:10:app,other\n\
                         app:x:1000:\n\
                         audio:x:29:other,app\n\
                         staff:x:50:\n";

    fn rootfs_with_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("create temp dir");
        std::fs::create_dir(dir.path().join("etc")).expect("create etc");
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).expect("write passwd");
        std::fs::write(dir.path().join("etc/group"), GROUP).expect("write group");
        dir
    }

    fn resolve(rootfs: &Path, user: &str) -> ResolvedUser {
        resolve_user(rootfs, Some(user)).expect("user resolves")
    }

    #[test]
    fn empty_user_is_root() {
        let dir = rootfs_with_files();
        let root = ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: Some("/root".to_string()),
        };
        assert_eq!(resolve_user(dir.path(), None).unwrap(), root);
        assert_eq!(resolve(dir.path(), ""), root);
    }

    #[test]
    fn name_gets_passwd_gid_and_member_groups() {
        let dir = rootfs_with_files();
        let user = resolve(dir.path(), "app");
        assert_eq!(user.uid, 1000);
        assert_eq!(user.gid, 1000);
        assert_eq!(user.additional_gids, vec![10, 29]);
        assert_eq!(user.home.as_deref(), Some("/home/app"));
    }

    #[test]
    fn numeric_uid_in_passwd_uses_entry() {
        let dir = rootfs_with_files();
        let user = resolve(dir.path(), "1000");
        assert_eq!(user.gid, 1000);
        assert_eq!(user.additional_gids, vec![10, 29]);
    }

    #[test]
    fn unknown_numeric_uid_gets_gid_zero() {
        let dir = rootfs_with_files();
        let user = resolve(dir.path(), "4242");
        assert_eq!(user.uid, 4242);
        assert_eq!(user.gid, 0);
        assert!(user.additional_gids.is_empty());
        assert_eq!(user.home, None);
    }

    #[test]
    fn explicit_group_replaces_supplementary() {
        let dir = rootfs_with_files();
        let by_name = resolve(dir.path(), "app:staff");
        assert_eq!((by_name.uid, by_name.gid), (1000, 50));
        assert!(by_name.additional_gids.is_empty());
        let by_number = resolve(dir.path(), "4242:777");
        assert_eq!((by_number.uid, by_number.gid), (4242, 777));
        let mixed = resolve(dir.path(), "daemon:1000");
        assert_eq!((mixed.uid, mixed.gid), (1, 1000));
    }

    #[test]
    fn unknown_names_are_errors() {
        let dir = rootfs_with_files();
        let missing_user = resolve_user(dir.path(), Some("nobody")).unwrap_err();
        assert!(
            missing_user
                .to_string()
                .contains("user \"nobody\" not found")
        );
        let missing_group = resolve_user(dir.path(), Some("app:nogroup")).unwrap_err();
        assert!(
            missing_group
                .to_string()
                .contains("group \"nogroup\" not found")
        );
        assert!(resolve_user(dir.path(), Some(":0")).is_err());
        assert!(resolve_user(dir.path(), Some("app:")).is_err());
    }

    #[test]
    fn missing_files_allow_numeric_ids() {
        let dir = tempfile::tempdir().unwrap();
        let user = resolve(dir.path(), "12:34");
        assert_eq!((user.uid, user.gid), (12, 34));
        assert!(resolve_user(dir.path(), Some("app")).is_err());
    }

    #[test]
    fn symlink_cannot_escape_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("etc")).unwrap();
        std::fs::write(outside.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        // An absolute symlink resolves inside the rootfs, where the target does not exist.
        std::os::unix::fs::symlink(
            outside.path().join("etc/passwd"),
            dir.path().join("etc/passwd"),
        )
        .unwrap();
        assert!(resolve_user(dir.path(), Some("app")).is_err());
        assert_eq!(resolve(dir.path(), "1000").gid, 0);
    }
}
