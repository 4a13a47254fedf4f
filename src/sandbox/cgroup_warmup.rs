//! Starting the kernel's grace period for cgroup moves before libcontainer needs it.
//!
//! Every write to a `cgroup.procs` file takes the kernel's `cgroup_threadgroup_rwsem` for
//! writing. Unless the hierarchy is mounted with `favordynmods`, the first writer after a quiet
//! period waits for an RCU grace period (`rcu_sync_enter` → `synchronize_rcu`), and later
//! writers pass at once until one more grace period after the last writer left. libcontainer
//! moves each new sandbox process into its cgroups this way, so the first such write of a run
//! waited 5 to 9 ms on a 2-core VM, in runc as well.
//!
//! [`start`] lets a background thread take that wait while the run mounts the overlay and writes
//! the bundle: it writes this process's own pid into the `cgroup.procs` of the cgroup the process
//! is already in, which moves nothing. It writes only when that file lists the process, so a
//! path that names another cgroup (in a cgroup namespace, say) is left alone. A pid that does
//! not exist would not do: Linux 6.18 looks the task up before it takes the lock.

use std::path::PathBuf;

/// Starts the background write. Errors are only logged, because the write only saves time.
pub fn start() {
    let Some(procs) = own_procs_file() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("cgroup-warmup".to_string())
        .spawn(move || {
            let pid = std::process::id().to_string();
            // In a cgroup namespace, or with another hierarchy mounted at the path, the file
            // may belong to another cgroup, and the write would move this process there.
            let listed = std::fs::read_to_string(&procs)
                .is_ok_and(|members| members.lines().any(|line| line == pid));
            if !listed {
                tracing::debug!(path = %procs.display(), "not this process's cgroup, no warm-up");
                return;
            }
            if let Err(error) = std::fs::write(&procs, &pid) {
                tracing::debug!(path = %procs.display(), %error, "cgroup warm-up write failed");
            }
        });
    if let Err(error) = spawned {
        tracing::debug!(%error, "failed to start the cgroup warm-up thread");
    }
}

/// Returns the `cgroup.procs` file of this process's cgroup: in the v1 `pids` hierarchy, or in
/// the unified hierarchy when `/sys/fs/cgroup` is cgroup v2.
fn own_procs_file() -> Option<PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    procs_file(
        &cgroups,
        std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
    )
}

/// Picks the `cgroup.procs` path from the text of `/proc/self/cgroup`.
fn procs_file(cgroups: &str, unified: bool) -> Option<PathBuf> {
    let controllers_field = if unified { "" } else { "pids" };
    cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers != controllers_field {
            return None;
        }
        let base = match unified {
            true => PathBuf::from("/sys/fs/cgroup"),
            false => PathBuf::from("/sys/fs/cgroup/pids"),
        };
        Some(base.join(path.trim_start_matches('/')).join("cgroup.procs"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_hosts_use_the_pids_hierarchy() {
        let text = "9:name=systemd:/\n8:pids:/user.slice\n4:memory:/x\n0::/\n";
        assert_eq!(
            procs_file(text, false),
            Some(PathBuf::from("/sys/fs/cgroup/pids/user.slice/cgroup.procs"))
        );
    }

    #[test]
    fn unified_hosts_use_the_v2_line() {
        let text = "0::/user.slice/session-1.scope\n";
        assert_eq!(
            procs_file(text, true),
            Some(PathBuf::from(
                "/sys/fs/cgroup/user.slice/session-1.scope/cgroup.procs"
            ))
        );
        assert_eq!(procs_file(text, false), None);
    }

    #[test]
    fn own_cgroup_file_exists_here() {
        let path = own_procs_file().unwrap();
        assert!(path.exists(), "{}", path.display());
    }
}
