//! Waiting for the container init, forwarding signals to it and mapping its wait status to a
//! shell exit code.

use std::io::{self, Read};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use signal_hook::SigId;

/// Signals that are forwarded to the container init while it runs.
const FORWARDED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// Counts SIGINT, SIGTERM and SIGHUP received by this process and wakes a socket on each.
///
/// The handlers are process-wide, so the signals are caught whichever thread receives them.
/// Dropping the forwarder unregisters its actions; signal-hook keeps a handler installed that
/// does nothing, so the signals no longer have their default action afterwards.
pub(super) struct SignalForwarder {
    wake: UnixStream,
    counters: Vec<(Signal, Arc<AtomicUsize>)>,
    handled: Vec<usize>,
    ids: Vec<SigId>,
    /// Time at which [`wait_for_exit`] calls `kill_all`, as the second signal does.
    pub deadline: Option<Instant>,
    /// Whether the deadline passed and `kill_all` was called.
    pub timed_out: bool,
}

impl SignalForwarder {
    /// Registers the handlers.
    pub fn install() -> anyhow::Result<Self> {
        let (wake, wake_writer) = UnixStream::pair().context("failed to create a socket pair")?;
        wake.set_nonblocking(true)
            .context("failed to make the signal socket non-blocking")?;
        let mut forwarder = SignalForwarder {
            wake,
            counters: Vec::new(),
            handled: Vec::new(),
            ids: Vec::new(),
            deadline: None,
            timed_out: false,
        };
        for sig in FORWARDED {
            let counter = Arc::new(AtomicUsize::new(0));
            let handler_counter = Arc::clone(&counter);
            // SAFETY: the action only increments an atomic integer, which is async-signal-safe,
            // and it neither allocates nor locks.
            let counter_id = unsafe {
                signal_hook::low_level::register(sig as i32, move || {
                    handler_counter.fetch_add(1, Ordering::SeqCst);
                })
            }
            .with_context(|| format!("failed to install a {sig} handler"))?;
            forwarder.ids.push(counter_id);
            let writer = wake_writer
                .try_clone()
                .context("failed to duplicate the signal socket")?;
            let wake_id = signal_hook::low_level::pipe::register(sig as i32, writer)
                .with_context(|| format!("failed to install a {sig} handler"))?;
            forwarder.ids.push(wake_id);
            forwarder.counters.push((sig, counter));
            forwarder.handled.push(0);
        }
        Ok(forwarder)
    }

    /// Returns the signals received since the previous call, in the order of [`FORWARDED`].
    fn take_pending(&mut self) -> Vec<Signal> {
        let mut buffer = [0u8; 64];
        while matches!(self.wake.read(&mut buffer), Ok(count) if count > 0) {}
        let mut pending = Vec::new();
        for (index, (sig, counter)) in self.counters.iter().enumerate() {
            let total = counter.load(Ordering::SeqCst);
            for _ in self.handled[index]..total {
                pending.push(*sig);
            }
            self.handled[index] = total;
        }
        pending
    }
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Waits until `pid`, a child of this process, exits and returns its status mapped like a shell:
/// the exit code, or 128 + N after signal N.
///
/// The first forwarded signal is sent to `pid`; a container init passes it on to the command.
/// A second signal calls `kill_all`.
pub(super) fn wait_for_exit(
    pid: Pid,
    forwarder: &mut SignalForwarder,
    kill_all: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<i32> {
    let pidfd = pidfd_open(pid)?;
    let mut signals_received = 0;
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(forwarder.wake.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = match forwarder.deadline {
            None => PollTimeout::NONE,
            Some(deadline) => {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis();
                PollTimeout::try_from(left.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno).context("failed to poll the container init"),
        }
        let exited = fds[0].any().unwrap_or(false);
        if let Some(deadline) = forwarder.deadline {
            if !exited && Instant::now() >= deadline {
                tracing::debug!(%pid, "timeout: killing the command");
                forwarder.deadline = None;
                forwarder.timed_out = true;
                kill_all()?;
            }
        }
        for sig in forwarder.take_pending() {
            signals_received += 1;
            if signals_received == 1 {
                tracing::debug!(%pid, %sig, "forwarding signal to the container init");
                match kill(pid, sig) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(errno) => {
                        return Err(errno)
                            .with_context(|| format!("failed to send {sig} to {pid}"));
                    }
                }
            } else {
                tracing::debug!(%pid, %sig, "second signal: killing the command");
                kill_all()?;
            }
        }
        if exited {
            break;
        }
    }
    reap(pid)
}

/// Returns whether the kernel's OOM killer killed a process in the memory cgroup
/// `/agentkernel/<id>` (see [`oom_kills`]).
pub(super) fn oom_killed(id: &str) -> bool {
    oom_kills(id) > 0
}

/// Returns how many processes the kernel's OOM killer killed in the memory cgroup
/// `/agentkernel/<id>`: the `oom_kill` counter of `memory.oom_control` (cgroup v1) or
/// `memory.events` (cgroup v2), or 0 when neither can be read.
pub(super) fn oom_kills(id: &str) -> u64 {
    [
        format!("/sys/fs/cgroup/memory/agentkernel/{id}/memory.oom_control"),
        format!("/sys/fs/cgroup/agentkernel/{id}/memory.events"),
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .find_map(|text| {
        text.lines().find_map(|line| {
            line.strip_prefix("oom_kill ")
                .and_then(|count| count.trim().parse::<u64>().ok())
        })
    })
    .unwrap_or(0)
}

/// Reaps `pid` and returns its shell exit status.
pub(super) fn reap(pid: Pid) -> anyhow::Result<i32> {
    loop {
        match waitpid(pid, None) {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno).with_context(|| format!("failed to wait for {pid}")),
        }
    }
}

/// Maps a final wait status to a shell exit status; `None` for a status that is not final.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

fn pidfd_open(pid: Pid) -> anyhow::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new file descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("failed to open a pidfd for {pid}"));
    }
    // SAFETY: the syscall returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_maps_signals() {
        let pid = Pid::from_raw(1);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 7)), Some(7));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, true)),
            Some(143)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }
}
