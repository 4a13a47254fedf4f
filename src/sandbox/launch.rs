//! Creating, starting, waiting for and deleting the container with libcontainer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::{Process, Spec};
use libcontainer::syscall::syscall::SyscallType;
use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::executor::SandboxExecutor;
use super::exit::{self, SignalForwarder};
use super::stdio::{PendingCapture, StdioFds, StdioMode};
use super::terminal::Terminal;
use super::{RunError, RunOutcome, Timings, network};
use crate::profile::NetworkMode;
use crate::seccomp::Program;

/// The prepared bundle of one container.
pub(super) struct LaunchRequest<'a> {
    pub id: &'a str,
    pub state_root: &'a Path,
    /// Directory that contains `config.json`.
    pub bundle: &'a Path,
    /// The spec saved in `config.json`.
    pub spec: &'a Spec,
    pub network: NetworkMode,
    /// Time after which the command is killed; the run then fails with [`RunError::Killed`].
    pub timeout: Option<Duration>,
    /// Memory limit in bytes, named in the message when the command is OOM-killed.
    pub memory_limit: Option<u64>,
    /// Socket that receives the pseudo-terminal master when the spec sets `terminal`.
    pub console_socket: Option<&'a Path>,
    /// Precompiled seccomp filter that the init installs; the spec then has no `linux.seccomp`.
    pub filter: Option<&'a Program>,
    /// Directory of precompiled seccomp filters for the commands of a kept sandbox.
    pub seccomp_cache: Option<&'a Path>,
}

/// Creates the container, starts it, waits for it and deletes it.
///
/// On failure after `build` the container is killed and reaped here, and its state is deleted by
/// the caller's cleanup.
pub(super) fn launch(
    request: &LaunchRequest,
    stdio: StdioMode,
    terminal: Option<&Terminal>,
) -> Result<RunOutcome, RunError> {
    let mut timings = Timings::default();
    let (fds, pending_capture) = match terminal {
        Some(_) => (StdioFds::null()?, PendingCapture::none()),
        None => stdio.open()?,
    };
    let (mut container, pid) = build_init(
        request,
        SandboxExecutor::Command {
            filter: request.filter.cloned(),
        },
        fds,
        &mut timings,
    )?;

    let capture = pending_capture.start()?;
    let relay = match terminal.map(Terminal::attach).transpose() {
        Ok(relay) => relay,
        Err(error) => {
            kill_and_reap(&mut container, pid);
            return Err(RunError::Sandbox(error));
        }
    };
    let result = start_and_wait(
        &mut container,
        pid,
        request.network,
        request.timeout,
        &mut timings,
    );
    if let Some(relay) = relay {
        relay.finish();
    }
    let (status, timed_out) = match result {
        Ok(status) => status,
        Err(error) => {
            kill_and_reap(&mut container, pid);
            let _ = capture.finish();
            return Err(RunError::Sandbox(error));
        }
    };
    let (stdout, stderr) = capture.finish()?;
    let out_of_memory = status == 137 && exit::oom_killed(request.id);

    let delete_started = Instant::now();
    if let Err(error) = container.delete(true) {
        // A concurrent `remove` of this sandbox may be deleting the state at the same time;
        // it finishes within its own one-second wait.
        let state_dir = request.state_root.join(request.id);
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while state_dir.exists() && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if state_dir.exists() {
            return Err(libcontainer_error(error, "failed to delete the container"));
        }
    }
    timings.delete = delete_started.elapsed();
    let ending = Ending {
        status,
        timeout: request.timeout.filter(|_| timed_out),
        killed: "the sandbox",
        out_of_memory,
        memory_limit: request.memory_limit,
    };
    if let Some(error) = ending.limit_error() {
        return Err(error);
    }
    Ok(RunOutcome {
        status,
        stdout,
        stderr,
        timings,
    })
}

/// Creates and starts a kept sandbox, whose init only reaps orphans and outlives this process,
/// then runs the spec's command in it like [`exec`] and returns that command's outcome.
///
/// On failure the caller removes the sandbox.
pub(super) fn launch_kept(
    request: &LaunchRequest,
    stdio: StdioMode,
    terminal: Option<&Terminal>,
) -> Result<RunOutcome, RunError> {
    let mut timings = Timings::default();
    let fds = StdioFds::null()?;
    let (mut container, pid) = build_init(
        request,
        SandboxExecutor::KeepAlive {
            filter: request.filter.cloned(),
        },
        fds,
        &mut timings,
    )?;
    let start_started = Instant::now();
    let started = start_kept(&mut container, pid, request.network);
    if let Err(error) = started {
        kill_and_reap(&mut container, pid);
        return Err(RunError::Sandbox(error));
    }
    timings.start = start_started.elapsed();
    let target = ExecTarget {
        id: request.id,
        state_root: request.state_root,
        bundle: request.bundle,
        timeout: request.timeout,
        seccomp_cache: request.seccomp_cache,
    };
    let mut outcome = exec(&target, None, stdio, terminal)?;
    outcome.timings.prepare = timings.prepare;
    outcome.timings.build = timings.build;
    outcome.timings.start = timings.start;
    Ok(outcome)
}

fn start_kept(container: &mut Container, pid: Pid, network: NetworkMode) -> anyhow::Result<()> {
    network::set_up(network, pid, container)?;
    container
        .start()
        .map_err(|error| anyhow::Error::new(error).context("failed to start the container"))?;
    Ok(())
}

/// A running sandbox that a command joins.
pub(super) struct ExecTarget<'a> {
    pub id: &'a str,
    pub state_root: &'a Path,
    /// Directory that contains the sandbox's `config.json`.
    pub bundle: &'a Path,
    /// Time after which the process and its process group are killed; the sandbox keeps
    /// running.
    pub timeout: Option<Duration>,
    /// Directory of precompiled seccomp filters; `None` lets libcontainer compile the spec's
    /// filter in the process.
    pub seccomp_cache: Option<&'a Path>,
}

/// Runs `command` (or the command of the sandbox's spec when it is `None`) as a new process in
/// the namespaces, cgroups and root of the running sandbox `target`, with the user, working
/// directory, environment, capabilities, rlimits and seccomp filter of its spec, and waits for
/// it.
///
/// SIGINT, SIGTERM and SIGHUP are forwarded to the process, and a second one kills it with
/// SIGKILL. Processes that it leaves behind stay in the sandbox, whose init reaps them.
pub(super) fn exec(
    target: &ExecTarget,
    command: Option<&[String]>,
    stdio: StdioMode,
    terminal: Option<&Terminal>,
) -> Result<RunOutcome, RunError> {
    let mut timings = Timings::default();
    let config = target.bundle.join("config.json");
    let spec = Spec::load(&config)
        .map_err(|error| anyhow::anyhow!("failed to read {}: {error}", config.display()))?;
    let mut process = spec
        .process()
        .clone()
        .with_context(|| format!("{} has no process", config.display()))?;
    if let Some(command) = command {
        process.set_args(Some(command.to_vec()));
    }
    process.set_terminal(Some(terminal.is_some()));
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.seccomp().clone());
    let memory_limit = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.resources().as_ref())
        .and_then(|resources| resources.memory().as_ref())
        .and_then(|memory| memory.limit())
        .and_then(|limit| u64::try_from(limit).ok());
    let filter = match (target.seccomp_cache, &seccomp) {
        (Some(cache), Some(seccomp)) => Program::cached(cache, seccomp).with_context(|| {
            format!(
                "failed to prepare the seccomp filter in {}",
                cache.display()
            )
        })?,
        _ => None,
    };
    let process_file = ProcessFile::write(target.bundle, &process)?;

    let (fds, pending_capture) = match terminal {
        Some(_) => (StdioFds::null()?, PendingCapture::none()),
        None => stdio.open()?,
    };
    let mut builder = ContainerBuilder::new(target.id.to_string(), SyscallType::default())
        .with_executor(SandboxExecutor::Tenant { filter, seccomp })
        .with_root_path(target.state_root)
        .map_err(|error| libcontainer_error(error, "invalid state directory"))?;
    if terminal.is_none() {
        builder = builder
            .with_stdin(fds.stdin)
            .with_stdout(fds.stdout)
            .with_stderr(fds.stderr);
    }
    let builder = builder
        .with_console_socket(terminal.map(Terminal::socket_path))
        .validate_id()
        .map_err(|error| libcontainer_error(error, "invalid container id"))?
        .as_tenant()
        .with_process(Some(process_file.path.clone()))
        .with_detach(terminal.is_some());

    let dumpable = prctl::get_dumpable().unwrap_or(true);
    let build_started = Instant::now();
    let built = builder.build();
    timings.build = build_started.elapsed();
    restore_dumpable(dumpable);
    drop(process_file);
    let pid = built.map_err(|error| build_error(error, &process_args(&process)))?;

    let capture = pending_capture.start()?;
    let oom_kills_before = exit::oom_kills(target.id);
    let wait_started = Instant::now();
    let status = wait_for_tenant(pid, terminal, target.timeout);
    timings.wait = wait_started.elapsed();
    let (status, timed_out) = match status {
        Ok(status) => status,
        Err(error) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = exit::reap(pid);
            let _ = capture.finish();
            return Err(RunError::Sandbox(error));
        }
    };
    let (stdout, stderr) = capture.finish()?;
    let ending = Ending {
        status,
        timeout: target.timeout.filter(|_| timed_out),
        killed: "the command",
        out_of_memory: status == 137 && exit::oom_kills(target.id) > oom_kills_before,
        memory_limit,
    };
    if let Some(error) = ending.limit_error() {
        return Err(error);
    }
    Ok(RunOutcome {
        status,
        stdout,
        stderr,
        timings,
    })
}

/// Waits for the tenant process `pid`; returns its exit status and whether `timeout` passed,
/// after which the process was killed.
fn wait_for_tenant(
    pid: Pid,
    terminal: Option<&Terminal>,
    timeout: Option<Duration>,
) -> anyhow::Result<(i32, bool)> {
    let mut forwarder = SignalForwarder::install()?;
    forwarder.deadline = timeout.map(|timeout| Instant::now() + timeout);
    let relay = match terminal {
        Some(terminal) => Some(terminal.attach()?),
        None => None,
    };
    // The process leads its own process group (see `SandboxExecutor::Tenant`), so killing the
    // group also stops the processes it started, unless they left the group.
    let status = exit::wait_for_exit(pid, &mut forwarder, &mut || {
        let group = Pid::from_raw(-pid.as_raw());
        kill(group, Signal::SIGKILL)
            .or_else(|_| kill(pid, Signal::SIGKILL))
            .or_else(|errno| match errno {
                Errno::ESRCH => Ok(()),
                errno => Err(errno),
            })
            .with_context(|| format!("failed to kill {pid}"))
    });
    if let Some(relay) = relay {
        relay.finish();
    }
    Ok((status?, forwarder.timed_out))
}

/// The end of a sandbox's command or of a tenant process.
struct Ending {
    /// Shell exit status.
    status: i32,
    /// The timeout, when it passed and the process was killed.
    timeout: Option<Duration>,
    /// Name of what the timeout killed, for the message.
    killed: &'static str,
    /// Whether the OOM killer ended the process.
    out_of_memory: bool,
    /// Memory limit in bytes, for the message.
    memory_limit: Option<u64>,
}

impl Ending {
    /// Returns the error that names the limit that ended the process: the timeout (124), the
    /// memory limit (137) or a seccomp kill action, which sends SIGSYS (159). With a filter
    /// whose default action kills, SIGSYS can end the sandbox's init before the command starts.
    fn limit_error(&self) -> Option<RunError> {
        let (code, message) = if let Some(timeout) = self.timeout {
            let seconds = timeout.as_secs_f64();
            (
                124,
                format!("timed out after {seconds} s: {} was killed", self.killed),
            )
        } else if self.out_of_memory {
            let limit = match self.memory_limit {
                Some(bytes) => format!("limit {} MiB", bytes / (1024 * 1024)),
                None => "no sandbox limit".to_string(),
            };
            (137, format!("out of memory ({limit})"))
        } else if self.status == 128 + nix::libc::SIGSYS {
            let message = "killed by SIGSYS: the seccomp filter blocked a system call";
            (self.status, message.to_string())
        } else {
            return None;
        };
        Some(RunError::Killed { code, message })
    }
}

/// The `process.json` of a process that joins a sandbox; it is removed when dropped.
struct ProcessFile {
    path: PathBuf,
}

impl ProcessFile {
    fn write(bundle: &Path, process: &Process) -> anyhow::Result<Self> {
        let path = bundle.join(format!(
            "exec-{}-{:08x}.json",
            std::process::id(),
            rand::random::<u32>()
        ));
        let json = serde_json::to_vec(process).context("failed to serialize the process")?;
        std::fs::write(&path, json)
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(ProcessFile { path })
    }
}

impl Drop for ProcessFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Builds the container init with `executor`. `build` clears the dumpable flag of this process
/// (so it cannot be ptraced or dump core); it is restored afterwards.
fn build_init(
    request: &LaunchRequest,
    executor: SandboxExecutor,
    fds: StdioFds,
    timings: &mut Timings,
) -> Result<(Container, Pid), RunError> {
    std::fs::create_dir_all(request.state_root)
        .with_context(|| format!("failed to create {}", request.state_root.display()))?;
    let builder = ContainerBuilder::new(request.id.to_string(), SyscallType::default())
        .with_executor(executor)
        .with_root_path(request.state_root)
        .map_err(|error| libcontainer_error(error, "invalid state directory"))?
        .with_stdin(fds.stdin)
        .with_stdout(fds.stdout)
        .with_stderr(fds.stderr)
        .with_console_socket(request.console_socket)
        .validate_id()
        .map_err(|error| libcontainer_error(error, "invalid container id"))?
        .as_init(request.bundle)
        .with_systemd(false)
        .with_detach(true);

    let dumpable = prctl::get_dumpable().unwrap_or(true);
    let build_started = Instant::now();
    let built = builder.build();
    timings.build = build_started.elapsed();
    restore_dumpable(dumpable);
    let container = built.map_err(|error| build_error(error, &spec_args(request.spec)))?;
    let pid = container
        .pid()
        .with_context(|| format!("container {} has no init pid after build", request.id))?;
    Ok((container, pid))
}

fn restore_dumpable(dumpable: bool) {
    if let Err(errno) = prctl::set_dumpable(dumpable) {
        tracing::warn!(%errno, "failed to restore the dumpable flag");
    }
}

/// Starts the container and waits for its init; returns the exit status and whether the timeout
/// killed it.
fn start_and_wait(
    container: &mut Container,
    pid: Pid,
    network: NetworkMode,
    timeout: Option<Duration>,
    timings: &mut Timings,
) -> anyhow::Result<(i32, bool)> {
    let start_started = Instant::now();
    network::set_up(network, pid, container)?;
    let mut forwarder = SignalForwarder::install()?;
    container
        .start()
        .map_err(|error| anyhow::Error::new(error).context("failed to start the container"))?;
    timings.start = start_started.elapsed();
    forwarder.deadline = timeout.map(|timeout| Instant::now() + timeout);

    let wait_started = Instant::now();
    let id = container.id().to_string();
    let status = exit::wait_for_exit(pid, &mut forwarder, &mut || {
        container
            .kill(Signal::SIGKILL, true)
            .with_context(|| format!("failed to kill container {id}"))
    })?;
    timings.wait = wait_started.elapsed();
    Ok((status, forwarder.timed_out))
}

/// Kills every process of the container and reaps its init, which is a child of this process.
fn kill_and_reap(container: &mut Container, pid: Pid) {
    if let Err(error) = container.kill(Signal::SIGKILL, true) {
        tracing::warn!(id = %container.id(), error = %error, "failed to kill the container");
    }
    if let Err(error) = exit::reap(pid) {
        tracing::warn!(%pid, error = %format!("{error:#}"), "failed to reap the container init");
    }
}

fn libcontainer_error(error: LibcontainerError, context: &str) -> RunError {
    RunError::Sandbox(anyhow::Error::new(error).context(context.to_string()))
}

/// Maps a `build` failure. libcontainer's default validation reports a missing executable as
/// "executable '...' not found in $PATH" and one without execute permission as "... does not
/// have correct permissions"; those become shell exit statuses 127 and 126.
fn build_error(error: LibcontainerError, command: &str) -> RunError {
    let error = anyhow::Error::new(error);
    let chain = format!("{error:#}");
    if chain.contains("not found in $PATH") {
        RunError::Exec {
            code: 127,
            message: format!("{command}: command not found in the sandbox"),
        }
    } else if chain.contains("does not have correct permissions")
        || chain.contains("failed to check permissions for executable")
    {
        RunError::Exec {
            code: 126,
            message: format!("{command}: permission denied: not an executable file"),
        }
    } else {
        RunError::Sandbox(error.context("failed to create the container"))
    }
}

fn spec_args(spec: &Spec) -> String {
    spec.process()
        .as_ref()
        .map(process_args)
        .unwrap_or_default()
}

/// Returns the first argument of `process`, the command name.
fn process_args(process: &Process) -> String {
    process
        .args()
        .as_ref()
        .and_then(|args| args.first())
        .cloned()
        .unwrap_or_default()
}
