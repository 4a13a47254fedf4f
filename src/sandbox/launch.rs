//! Creating, starting, waiting for and deleting the container with libcontainer.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::executor::SandboxExecutor;
use super::exit::{self, SignalForwarder};
use super::stdio::StdioMode;
use super::{RunError, RunOutcome, Timings, network};
use crate::profile::NetworkMode;

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
}

/// Creates the container, starts it, waits for it and deletes it.
///
/// On failure after `build` the container is killed and reaped here, and its state is deleted by
/// the caller's cleanup.
pub(super) fn launch(request: &LaunchRequest, stdio: StdioMode) -> Result<RunOutcome, RunError> {
    let mut timings = Timings::default();
    let (fds, pending_capture) = stdio.open()?;
    std::fs::create_dir_all(request.state_root)
        .with_context(|| format!("failed to create {}", request.state_root.display()))?;

    let builder = ContainerBuilder::new(request.id.to_string(), SyscallType::default())
        .with_executor(SandboxExecutor)
        .with_root_path(request.state_root)
        .map_err(|error| libcontainer_error(error, "invalid state directory"))?
        .with_stdin(fds.stdin)
        .with_stdout(fds.stdout)
        .with_stderr(fds.stderr)
        .validate_id()
        .map_err(|error| libcontainer_error(error, "invalid container id"))?
        .as_init(request.bundle)
        .with_systemd(false)
        .with_detach(true);

    // build() clears the dumpable flag of this process (so it cannot be ptraced or dump core);
    // it is restored afterwards.
    let dumpable = prctl::get_dumpable().unwrap_or(true);
    let build_started = Instant::now();
    let built = builder.build();
    timings.build = build_started.elapsed();
    if let Err(errno) = prctl::set_dumpable(dumpable) {
        tracing::warn!(%errno, "failed to restore the dumpable flag");
    }
    let mut container = built.map_err(|error| build_error(error, request.spec))?;
    let pid = container
        .pid()
        .with_context(|| format!("container {} has no init pid after build", request.id))?;

    let capture = pending_capture.start()?;
    let result = start_and_wait(
        &mut container,
        pid,
        request.network,
        request.timeout,
        &mut timings,
    );
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
        // A concurrent `remove` of this sandbox may have deleted the state first.
        if request.state_root.join(request.id).exists() {
            return Err(libcontainer_error(error, "failed to delete the container"));
        }
    }
    timings.delete = delete_started.elapsed();
    if let (true, Some(timeout)) = (timed_out, request.timeout) {
        return Err(RunError::Killed {
            code: 124,
            message: format!(
                "timed out after {} s: the sandbox was killed",
                timeout.as_secs_f64()
            ),
        });
    }
    if out_of_memory {
        let limit = match request.memory_limit {
            Some(bytes) => format!("limit {} MiB", bytes / (1024 * 1024)),
            None => "no sandbox limit".to_string(),
        };
        return Err(RunError::Killed {
            code: 137,
            message: format!("out of memory ({limit})"),
        });
    }
    Ok(RunOutcome {
        status,
        stdout,
        stderr,
        timings,
    })
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
    let status = exit::wait_for_exit(container, pid, &mut forwarder)?;
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
fn build_error(error: LibcontainerError, spec: &Spec) -> RunError {
    let command = spec
        .process()
        .as_ref()
        .and_then(|process| process.args().as_ref())
        .and_then(|args| args.first())
        .cloned()
        .unwrap_or_default();
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
