//! Sandboxes that live longer than one command: listing, joining, removing, and removing the
//! ones whose `agentkernel run` process was killed.
//!
//! Layout under the root directory: `sandboxes/<name>` (bundle, overlay directories and
//! `sandbox.json`) and `containers/<name>` (libcontainer state).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use libcontainer::container::{Container, ContainerStatus};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use super::launch::{self, ExecTarget};
use super::record::SandboxRecord;
use super::terminal::Terminal;
use super::{RunError, StdioMode, remove};

/// Prefix of a sandbox directory that is still being set up; it gets its name by a rename.
pub(super) const NEW_PREFIX: &str = ".new-";

/// Returns `<root>/sandboxes`.
pub(super) fn sandboxes_dir(root: &Path) -> PathBuf {
    root.join("sandboxes")
}

/// Returns `<root>/containers`, the root of libcontainer's state directories.
pub(super) fn state_root(root: &Path) -> PathBuf {
    root.join("containers")
}

/// An exclusive `flock` on a sandbox directory, held by the `agentkernel` process that runs the
/// sandbox. The kernel drops it when that process dies, which shows the next command that a
/// sandbox without `keep` is orphaned.
pub(super) struct SandboxLock {
    _dir: Flock<File>,
}

impl SandboxLock {
    /// Locks `dir`, waiting for no one: returns `None` when another process holds the lock.
    pub fn try_lock(dir: &Path) -> anyhow::Result<Option<Self>> {
        let file = File::open(dir).with_context(|| format!("failed to open {}", dir.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(SandboxLock { _dir: lock })),
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(io::Error::from(errno))
                .with_context(|| format!("failed to lock {}", dir.display())),
        }
    }
}

/// A sandbox as `agentkernel list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SandboxInfo {
    pub name: String,
    pub image: String,
    pub profile: String,
    /// `running`, `stopped`, `created`, `paused` or `unknown` (state unreadable).
    pub status: String,
    /// Creation time, RFC 3339 in UTC.
    pub created: String,
    /// Whether the sandbox stays after its command (`run --keep`).
    pub keep: bool,
}

/// Lists the sandboxes below `root`, sorted by creation time and name.
pub fn list(root: &Path) -> anyhow::Result<Vec<SandboxInfo>> {
    let mut sandboxes = Vec::new();
    for name in sandbox_names(root)? {
        let dir = sandboxes_dir(root).join(&name);
        let Ok(record) = SandboxRecord::read(&dir) else {
            continue;
        };
        sandboxes.push((
            record.created,
            SandboxInfo {
                status: status(root, &name),
                name,
                image: record.image,
                profile: record.profile,
                created: super::record::format_time(record.created),
                keep: record.keep,
            },
        ));
    }
    sandboxes.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    Ok(sandboxes.into_iter().map(|(_, info)| info).collect())
}

fn status(root: &Path, name: &str) -> String {
    let state_dir = state_root(root).join(name);
    if !state_dir.exists() {
        return "stopped".to_string();
    }
    match Container::load(state_dir) {
        Ok(container) => match container.status() {
            ContainerStatus::Creating | ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Stopped => "stopped",
            ContainerStatus::Paused => "paused",
        }
        .to_string(),
        Err(_) => "unknown".to_string(),
    }
}

/// Options of a command that joins a sandbox.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    /// Give the command a pseudo-terminal.
    pub tty: bool,
    /// `Some(true)` passes stdin even when it is a terminal, `Some(false)` gives `/dev/null`;
    /// `None` passes pipes and files only, or relays a terminal when `tty` is set.
    pub interactive: Option<bool>,
}

/// Runs `command` in the running sandbox `name` and returns its exit status.
pub fn exec(
    root: &Path,
    name: &str,
    command: &[String],
    options: ExecOptions,
) -> Result<i32, RunError> {
    super::record::validate_name(name)?;
    let bundle = sandboxes_dir(root).join(name);
    if !bundle.is_dir() {
        return Err(RunError::Sandbox(anyhow::anyhow!(
            "no sandbox named {name}"
        )));
    }
    let state_root = state_root(root);
    let seccomp_cache = root.join("seccomp");
    if status(root, name) != "running" {
        return Err(RunError::Sandbox(anyhow::anyhow!(
            "sandbox {name} is not running: remove it with `agentkernel rm {name}`"
        )));
    }
    let bundle = std::fs::canonicalize(&bundle)
        .with_context(|| format!("failed to resolve {}", bundle.display()))?;
    let terminal = match options.tty {
        true => Some(Terminal::listen(
            &bundle,
            options.interactive != Some(false),
        )?),
        false => None,
    };
    let stdio = match options.interactive {
        None => StdioMode::Inherit,
        Some(pass) => StdioMode::InheritStdin(pass),
    };
    let target = ExecTarget {
        id: name,
        state_root: &state_root,
        bundle: &bundle,
        timeout: None,
        seccomp_cache: Some(&seccomp_cache),
    };
    launch::exec(&target, Some(command), stdio, terminal.as_ref()).map(|outcome| outcome.status)
}

/// Stops and removes sandbox `name`: its processes, container state, cgroups, mounts and
/// directory.
pub fn remove_sandbox(root: &Path, name: &str) -> anyhow::Result<()> {
    super::record::validate_name(name)?;
    let dir = sandboxes_dir(root).join(name);
    let state_root = state_root(root);
    if !dir.exists() && !state_root.join(name).exists() {
        bail!("no sandbox named {name}");
    }
    remove(&dir, &state_root, name)
}

/// Removes every sandbox below `root` and returns their names.
pub fn remove_all(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in sandbox_names(root)? {
        remove(&sandboxes_dir(root).join(&name), &state_root(root), &name)?;
        removed.push(name);
    }
    Ok(removed)
}

/// Removes the sandboxes whose `agentkernel run` process is gone and that were not kept: a
/// sandbox directory nobody holds the lock of and whose record lacks `keep`, a half-created
/// directory, and container state without a sandbox directory. Returns their names.
pub fn collect_orphans(root: &Path) -> anyhow::Result<Vec<String>> {
    let sandboxes = sandboxes_dir(root);
    let state_root = state_root(root);
    let mut removed = Vec::new();
    for entry in read_names(&sandboxes)? {
        let dir = sandboxes.join(&entry);
        let Some(_lock) = SandboxLock::try_lock(&dir)? else {
            continue;
        };
        if let Some(id) = entry.strip_prefix(NEW_PREFIX) {
            // Set-up stopped before the rename, so nothing is mounted or created for it yet.
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("failed to remove {}", dir.display()))?;
            removed.push(id.to_string());
            continue;
        }
        let kept = SandboxRecord::read(&dir).is_ok_and(|record| record.keep);
        if kept {
            continue;
        }
        tracing::info!(sandbox = %entry, "removing a sandbox whose run process is gone");
        remove(&dir, &state_root, &entry)?;
        removed.push(entry);
    }
    for id in read_names(&state_root)? {
        if !sandboxes.join(&id).exists() && super::validate_id(&id).is_ok() {
            tracing::info!(sandbox = %id, "removing container state without a sandbox");
            remove(&sandboxes.join(&id), &state_root, &id)?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// Returns the names of the sandbox directories, without the ones being set up.
fn sandbox_names(root: &Path) -> anyhow::Result<Vec<String>> {
    Ok(read_names(&sandboxes_dir(root))?
        .into_iter()
        .filter(|name| !name.starts_with('.'))
        .collect())
}

fn read_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("failed to list {}", dir.display()));
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}
