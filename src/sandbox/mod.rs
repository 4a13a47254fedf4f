//! Runs one command in a throw-away container: an overlayfs root over the image layers, an OCI
//! spec from the image config and profile, and youki's `libcontainer` to create, start, wait for
//! and delete the container in this process.
//!
//! [`run`] forks the container init with a raw `clone3` inside `ContainerBuilder::build`, which
//! runs no `pthread_atfork` handlers. A lock that another thread holds at that moment (a malloc
//! arena or the standard library's environment lock) stays locked in the child, which can then
//! hang. Call [`run`] before starting other threads, such as an async runtime.

pub mod cgroup_warmup;
mod cleanup;
mod etc_files;
mod executor;
mod exit;
mod launch;
mod lifecycle;
mod network;
mod overlay;
mod record;
mod stdio;
mod terminal;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::profile::{Overrides, Profile};
use crate::seccomp::Program;
use crate::spec::{ImageRunConfig, SpecInput, build_spec};
pub use cleanup::remove;
pub use lifecycle::{ExecOptions, collect_orphans, exec, list, remove_all, remove_sandbox};
pub use network::remove_unused_rules;
pub use record::{generate_name, validate_name};
pub(crate) use stdio::StdioMode;

use lifecycle::{NEW_PREFIX, SandboxLock};
use record::SandboxRecord;
use terminal::Terminal;

/// Hostname of every sandbox.
pub const HOSTNAME: &str = "agentkernel";

/// Everything needed to run one command in a new sandbox.
#[derive(Clone, Debug)]
pub struct SandboxRequest {
    /// Container id: `[A-Za-z0-9_+.-]`, unique among running sandboxes. It names the cgroup
    /// `/agentkernel/<id>` and the libcontainer state directory.
    pub id: String,
    /// Root of libcontainer's state directories, such as `<root>/containers`; the container's
    /// state lives in `<state_root>/<id>`.
    pub state_root: PathBuf,
    /// Per-sandbox directory, such as `<root>/sandboxes/<id>`; it must not exist yet. It receives
    /// `config.json`, the overlay's `upper`, `work` and `merged` directories and the generated
    /// `/etc` files. It must be on a filesystem that can hold an overlayfs upper directory.
    pub sandbox_dir: PathBuf,
    /// Unpacked image layers, topmost first; they are never modified.
    pub lower_dirs: Vec<PathBuf>,
    /// Image config of the image.
    pub image: ImageRunConfig,
    /// Command line; an empty one runs the image's `Cmd`.
    pub command: Vec<String>,
    /// Security profile.
    pub profile: Profile,
    /// Changes to the profile's defaults.
    pub overrides: Overrides,
    /// Time after which every process of the sandbox is killed; the run then fails with
    /// [`RunError::TimedOut`].
    pub timeout: Option<Duration>,
    /// Image reference as the user gave it, for `sandbox.json`.
    pub image_name: String,
    /// Keep the sandbox running after the command exits, for `exec`, until `rm` removes it.
    pub keep: bool,
    /// Give the command a pseudo-terminal.
    pub tty: bool,
    /// `Some(true)` passes stdin even when it is a terminal, `Some(false)` gives `/dev/null`;
    /// `None` passes pipes and files only, or relays a terminal when `tty` is set.
    pub interactive: Option<bool>,
    /// Directory of precompiled seccomp filters, such as `<root>/seccomp`. With `None`
    /// libcontainer compiles the spec's filter in the sandbox's init on every start.
    pub seccomp_cache: Option<PathBuf>,
}

/// Failure of [`run`].
#[derive(Debug)]
pub enum RunError {
    /// The command could not be executed: `code` is 127 when it was not found and 126 when it
    /// is not executable, as in a POSIX shell.
    Exec {
        /// Exit status a shell would report.
        code: i32,
        /// One-line message that names the command.
        message: String,
    },
    /// The sandbox was killed because it ran out of memory or time; `code` is 137 or 124, as
    /// with `timeout`.
    Killed {
        /// Exit status to report.
        code: i32,
        /// One-line message that names the limit.
        message: String,
    },
    /// Setting up, running or removing the sandbox failed.
    Sandbox(anyhow::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Exec { message, .. } | RunError::Killed { message, .. } => {
                formatter.write_str(message)
            }
            RunError::Sandbox(error) => write!(formatter, "{error:#}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<anyhow::Error> for RunError {
    fn from(error: anyhow::Error) -> Self {
        RunError::Sandbox(error)
    }
}

/// Wall time of the phases of one run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timings {
    /// Creating the sandbox directory, mounting the overlay and writing `config.json`.
    pub prepare: Duration,
    /// `ContainerBuilder::build`: namespaces, cgroups, mounts, up to the parked init.
    pub build: Duration,
    /// Bringing up `lo`, installing signal forwarding and `Container::start`.
    pub start: Duration,
    /// From the start of the command until its exit status is reaped.
    pub wait: Duration,
    /// `Container::delete`: the cgroups and the state directory.
    pub delete: Duration,
    /// Unmounting the overlay and removing the sandbox directory.
    pub cleanup: Duration,
}

/// Result of a run whose exit status was collected.
#[derive(Debug)]
pub(crate) struct RunOutcome {
    /// Exit code, or 128 + signal number when the command was killed by a signal.
    pub status: i32,
    /// Output captured with [`StdioMode::Capture`]; empty otherwise.
    #[cfg_attr(not(test), allow(dead_code))]
    pub stdout: Vec<u8>,
    /// Error output captured with [`StdioMode::Capture`]; empty otherwise.
    #[cfg_attr(not(test), allow(dead_code))]
    pub stderr: Vec<u8>,
    pub timings: Timings,
}

/// Runs `request.command` in a new sandbox and returns its exit status: the exit code, or
/// 128 + N when signal N killed it.
///
/// The sandbox uses this process's stdout and stderr; stdin is passed on when it is a pipe or a
/// file and is `/dev/null` otherwise. SIGINT, SIGTERM and SIGHUP received during the run are
/// forwarded to the container's init process, and a second one kills the container. After the
/// first run this process keeps a handler for those three signals that does nothing outside a
/// run, so they no longer terminate it.
///
/// The sandbox is removed afterwards, also on failure. With `request.keep` a sandbox whose
/// command could be started stays running, and [`exec`] can run more commands in it.
pub fn run(request: SandboxRequest) -> Result<i32, RunError> {
    let stdio = match request.interactive {
        None => StdioMode::Inherit,
        Some(pass) => StdioMode::InheritStdin(pass),
    };
    run_with_stdio(request, stdio).map(|outcome| outcome.status)
}

/// Runs like [`run`] with the given stdio and returns the captured output and phase timings.
pub(crate) fn run_with_stdio(
    request: SandboxRequest,
    stdio: StdioMode,
) -> Result<RunOutcome, RunError> {
    validate_id(&request.id)?;
    // Both checks run before anything is created, so the cleanup below never removes another
    // sandbox's files.
    if request.sandbox_dir.exists() {
        return Err(RunError::Sandbox(anyhow::anyhow!(
            "sandbox directory {} already exists: remove it or use another sandbox id",
            request.sandbox_dir.display()
        )));
    }
    let state_dir = request.state_root.join(&request.id);
    if state_dir.exists() {
        return Err(RunError::Sandbox(anyhow::anyhow!(
            "container state directory {} already exists: remove the sandbox or use another sandbox id",
            state_dir.display()
        )));
    }
    let started = Instant::now();
    let (sandbox_dir, lock) = create_sandbox_dir(&request)?;
    let result = prepare_and_launch(&request, &sandbox_dir, stdio);

    let cleanup_started = Instant::now();
    // A kept sandbox stays when only its command failed, timed out or ran out of memory.
    let cleanup = match (&result, request.keep) {
        (Ok(_) | Err(RunError::Exec { .. } | RunError::Killed { .. }), true) => Ok(()),
        _ => remove(&request.sandbox_dir, &request.state_root, &request.id),
    };
    let cleanup_time = cleanup_started.elapsed();
    drop(lock);

    let mut outcome = result?;
    cleanup.with_context(|| {
        format!(
            "command exited with status {}, but removing sandbox {} failed",
            outcome.status, request.id
        )
    })?;
    outcome.timings.cleanup = cleanup_time;
    tracing::debug!(
        id = %request.id,
        total = ?started.elapsed(),
        timings = ?outcome.timings,
        "sandbox run finished"
    );
    Ok(outcome)
}

fn prepare_and_launch(
    request: &SandboxRequest,
    sandbox_dir: &Path,
    stdio: StdioMode,
) -> Result<RunOutcome, RunError> {
    let prepare_started = Instant::now();
    let sandbox_dir = sandbox_dir.to_path_buf();
    let rootfs = overlay::mount(&sandbox_dir, &request.lower_dirs)?;
    let network = request.overrides.network(request.profile);
    let etc_dir = etc_files::write(&sandbox_dir, network, HOSTNAME)?;

    let host_cwd = std::env::current_dir().ok();
    let host_home = std::env::var_os("HOME").map(PathBuf::from);
    let mut spec = build_spec(&SpecInput {
        image: &request.image,
        command: &request.command,
        profile: request.profile,
        overrides: &request.overrides,
        rootfs: &rootfs,
        cgroups_path: format!("/agentkernel/{}", request.id),
        host_cwd,
        host_home,
        hostname: HOSTNAME,
        term: stdio.term(),
        etc_dir: Some(&etc_dir),
    })?;
    if let Some(process) = spec.process() {
        overlay::create_dir_in_root(&rootfs, process.cwd())?;
    }
    // A kept sandbox's init runs no command; `launch_kept` sets the terminal of its command.
    let terminal = match request.tty {
        true => Some(Terminal::listen(
            &sandbox_dir,
            request.interactive != Some(false),
        )?),
        false => None,
    };
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(terminal.is_some() && !request.keep));
    }
    let filter = precompile_filter(request, &mut spec)?;
    let config = sandbox_dir.join("config.json");
    spec.save(&config)
        .with_context(|| format!("failed to write {}", config.display()))?;
    let prepare = prepare_started.elapsed();

    let launch_request = launch::LaunchRequest {
        id: &request.id,
        state_root: &request.state_root,
        bundle: &sandbox_dir,
        spec: &spec,
        network,
        timeout: request.timeout,
        memory_limit: request.overrides.limits(request.profile).memory_bytes,
        console_socket: match request.keep {
            true => None,
            false => terminal.as_ref().map(Terminal::socket_path),
        },
        filter: filter.as_ref(),
        seccomp_cache: request.seccomp_cache.as_deref(),
    };
    let mut outcome = match request.keep {
        true => launch::launch_kept(&launch_request, stdio, terminal.as_ref())?,
        false => launch::launch(&launch_request, stdio, terminal.as_ref())?,
    };
    outcome.timings.prepare = prepare;
    Ok(outcome)
}

/// Moves the spec's seccomp filter into a precompiled [`Program`] from the request's cache, when
/// it has one and the filter allows it.
///
/// A kept sandbox keeps the filter in its spec, because every `exec` reads it from there: a
/// filter stored in a file of its own would leave `exec` unfiltered once that file is gone.
fn precompile_filter(
    request: &SandboxRequest,
    spec: &mut libcontainer::oci_spec::runtime::Spec,
) -> anyhow::Result<Option<Program>> {
    let (Some(cache), false) = (&request.seccomp_cache, request.keep) else {
        return Ok(None);
    };
    let Some(linux) = spec.linux_mut() else {
        return Ok(None);
    };
    let Some(seccomp) = linux.seccomp() else {
        return Ok(None);
    };
    let Some(program) = Program::cached(cache, seccomp).with_context(|| {
        format!(
            "failed to prepare the seccomp filter in {}",
            cache.display()
        )
    })?
    else {
        return Ok(None);
    };
    linux.set_seccomp(None);
    Ok(Some(program))
}

/// Creates the sandbox directory with its `sandbox.json` and returns its absolute path and the
/// lock that marks it as in use.
///
/// The directory is set up as `.new-<id>`, locked and then renamed without replacing, so another
/// command never sees it unlocked or without its record, and two runs cannot take one name.
fn create_sandbox_dir(request: &SandboxRequest) -> Result<(PathBuf, SandboxLock), RunError> {
    use std::os::unix::fs::DirBuilderExt;

    let sandbox_dir = &request.sandbox_dir;
    let parent = sandbox_dir
        .parent()
        .with_context(|| format!("{} has no parent directory", sandbox_dir.display()))?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("failed to create {}", parent.display()))?;
    let new_dir = parent.join(format!("{NEW_PREFIX}{}", request.id));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&new_dir)
        .with_context(|| format!("failed to create {}", new_dir.display()))?;
    let set_up = || -> anyhow::Result<SandboxLock> {
        let lock = SandboxLock::try_lock(&new_dir)?
            .with_context(|| format!("{} is locked by another process", new_dir.display()))?;
        SandboxRecord {
            name: request.id.clone(),
            image: request.image_name.clone(),
            profile: profile_name(request.profile),
            created: record::now(),
            keep: request.keep,
        }
        .write(&new_dir)?;
        nix::fcntl::renameat2(
            None,
            &new_dir,
            None,
            sandbox_dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("sandbox name {} is already in use", request.id))?;
        Ok(lock)
    };
    let lock = match set_up() {
        Ok(lock) => lock,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&new_dir);
            return Err(RunError::Sandbox(error));
        }
    };
    let absolute = std::fs::canonicalize(sandbox_dir)
        .with_context(|| format!("failed to resolve {}", sandbox_dir.display()))?;
    Ok((absolute, lock))
}

/// Checks that `id` is a valid container id: 1 to 64 characters from `[A-Za-z0-9_+.-]`, not
/// `.` or `..`.
fn validate_id(id: &str) -> anyhow::Result<()> {
    let valid_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-'));
    if id.is_empty() || id.len() > 64 || !valid_chars || id == "." || id == ".." {
        bail!(
            "invalid sandbox id {id:?}: use 1 to 64 characters from A-Z, a-z, 0-9, _, +, . and -"
        );
    }
    Ok(())
}

/// Returns the profile's name as `--profile` spells it.
fn profile_name(profile: Profile) -> String {
    use clap::ValueEnum;
    profile
        .to_possible_value()
        .map(|value| value.get_name().to_string())
        .unwrap_or_default()
}
