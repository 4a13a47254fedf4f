//! Removal of a sandbox: its container, cgroups, mounts and directory.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use libcontainer::container::Container;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{network, overlay, validate_id};

/// Root of the cgroup hierarchies; cgroup v1 has one directory per controller below it.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes sandbox `id`: kills and deletes its container if libcontainer state for it exists in
/// `state_root`, removes cgroups left at `/agentkernel/<id>`, unmounts everything below
/// `sandbox_dir` and removes `sandbox_dir`.
///
/// Parts that are already gone are skipped, so it can run again after a partial failure or on
/// a sandbox whose `agentkernel` process was killed. The directory is only removed once nothing
/// below it is mounted.
pub fn remove(sandbox_dir: &Path, state_root: &Path, id: &str) -> anyhow::Result<()> {
    release(sandbox_dir, state_root, id)?;
    match std::fs::remove_dir_all(sandbox_dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => {
            Err(error).with_context(|| format!("failed to remove {}", sandbox_dir.display()))
        }
    }
}

/// Does everything [`remove`] does except removing `sandbox_dir`, which keeps the upper layer.
pub(super) fn release(sandbox_dir: &Path, state_root: &Path, id: &str) -> anyhow::Result<()> {
    validate_id(id)?;
    let mut errors = Vec::new();
    if let Err(error) = delete_container(state_root, id) {
        errors.push(error);
    }
    if let Err(error) = remove_cgroups(id) {
        errors.push(error);
    }
    // Both steps kill the sandbox's processes, so none is left when both succeeded.
    let processes_gone = errors.is_empty();
    if let Err(error) = network::remove_isolated(sandbox_dir, processes_gone) {
        errors.push(error);
    }
    if let Err(error) = overlay::unmount_all_under(sandbox_dir) {
        errors.push(error);
    }
    let mut errors = errors.into_iter();
    match errors.next() {
        None => Ok(()),
        Some(first) => Err(errors.fold(first, |all, error| all.context(format!("{error:#}")))),
    }
}

/// Kills and deletes the container whose state is in `<state_root>/<id>`, if there is one.
fn delete_container(state_root: &Path, id: &str) -> anyhow::Result<()> {
    let state_dir = state_root.join(id);
    if !state_dir.exists() {
        return Ok(());
    }
    match Container::load(state_dir.clone()) {
        Ok(mut container) => match container.delete(true) {
            Ok(()) => Ok(()),
            Err(error) => {
                // The running `agentkernel` process may be deleting the same container, and
                // libcontainer fails when a cgroup vanishes under it: let that finish.
                for _ in 0..100 {
                    if !state_dir.exists() {
                        return Ok(());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                // Nothing else removed it, so finish by hand: `remove_cgroups` kills what
                // is left in the cgroups.
                tracing::warn!(%id, error = %error, "removing container state after a failed delete");
                std::fs::remove_dir_all(&state_dir)
                    .with_context(|| format!("failed to delete container {id}: {error}"))
            }
        },
        Err(error) => {
            // The state was never completely written; the cgroups are removed separately.
            tracing::warn!(%id, error = %error, "removing unreadable container state");
            std::fs::remove_dir_all(&state_dir)
                .with_context(|| format!("failed to remove {}", state_dir.display()))
        }
    }
}

/// Kills the processes left in `/agentkernel/<id>` of every cgroup hierarchy and removes those
/// cgroups. `Container::delete` does the same when the container state survived.
fn remove_cgroups(id: &str) -> anyhow::Result<()> {
    for cgroup in sandbox_cgroups(id)? {
        let procs_path = cgroup.join("cgroup.procs");
        let mut removed = false;
        for _ in 0..50 {
            if let Ok(procs) = std::fs::read_to_string(&procs_path) {
                for pid in procs.lines().filter_map(|line| line.parse().ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            match std::fs::remove_dir(&cgroup) {
                Ok(()) => {
                    removed = true;
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    removed = true;
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        if !removed {
            bail!(
                "failed to remove cgroup {}: it still has processes",
                cgroup.display()
            );
        }
    }
    Ok(())
}

/// Returns the existing `/agentkernel/<id>` cgroup directories: `/sys/fs/cgroup/agentkernel/<id>`
/// on cgroup v2 and `/sys/fs/cgroup/<hierarchy>/agentkernel/<id>` on v1.
pub(super) fn sandbox_cgroups(id: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut candidates = vec![Path::new(CGROUP_ROOT).join("agentkernel").join(id)];
    let entries = match std::fs::read_dir(CGROUP_ROOT) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("failed to list {CGROUP_ROOT}")),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {CGROUP_ROOT}"))?;
        candidates.push(entry.path().join("agentkernel").join(id));
    }
    Ok(candidates
        .into_iter()
        .filter(|path| path.is_dir())
        .collect())
}
