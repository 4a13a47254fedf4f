//! The workload executor: it runs in the container init, which libcontainer forks with a raw
//! `clone3` from a possibly multi-threaded process.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::seccomp::Program;

/// The workload of a container process, run by libcontainer after the namespaces, mounts,
/// capabilities and (for an init) the seccomp filter are set up.
///
/// None of the roles touch the process's own environment. libcontainer's default `setup_envs`
/// calls `std::env::remove_var`, which takes the standard library's environment lock. If another
/// thread of the parent held that lock when the process was cloned, it would wait for it
/// forever. For the same reason errors go to stderr with a raw `write`, not through
/// `std::io::stderr()`.
///
/// Every role first closes the file descriptors above 2. The process inherits them from the
/// `agentkernel` process, marked close-on-exec, but an init never calls `execve`. Without the
/// close, an init would keep the sandbox lock of its `agentkernel` process (see
/// `lifecycle::SandboxLock`) after that process was killed.
///
/// The process inherits the caller's ignored signals (Rust ignores SIGPIPE) and signal mask,
/// and `execve` keeps both, hence the reset before every `execve`.
#[derive(Clone)]
pub(super) enum SandboxExecutor {
    /// The sandbox init: it forks the command and supervises it as PID 1 (see [`supervise`]).
    /// The command runs with `execve`, the spec's environment, default signal actions and an
    /// empty signal mask. Validation is [`DefaultExecutor`]'s.
    Command { filter: Option<Program> },
    /// The init of a kept sandbox: it runs no command, only reaps orphans, and stays until it is
    /// killed. Commands join the sandbox as [`SandboxExecutor::Tenant`] processes.
    KeepAlive { filter: Option<Program> },
    /// A process that joins a running sandbox (`agentkernel exec`). It installs the sandbox's
    /// filter, `filter` or else `seccomp`, and then calls `execve` itself: libcontainer applies
    /// a spec's filter only to an init, because its tenant spec carries no `linux.seccomp`.
    Tenant {
        filter: Option<Program>,
        seccomp: Option<LinuxSeccomp>,
    },
}

impl Executor for SandboxExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // Everything that can fail comes before `close_inherited_fds`, which also closes the
        // channel on which libcontainer reports an error of this function to the caller.
        //
        // A precompiled filter replaces the spec's `linux.seccomp`, which libcontainer would
        // otherwise have compiled and installed just before this call.
        let (SandboxExecutor::Command { filter }
        | SandboxExecutor::KeepAlive { filter }
        | SandboxExecutor::Tenant { filter, .. }) = self;
        if let Some(filter) = filter {
            filter.install().map_err(|errno| {
                ExecutorError::Other(format!("failed to install the seccomp filter: {errno}"))
            })?;
        }
        if !matches!(self, SandboxExecutor::Tenant { .. }) {
            hide_command_line();
        }
        if let SandboxExecutor::KeepAlive { .. } = self {
            close_inherited_fds();
            set_signal_mask(!0);
            reap_forever();
        }
        let process = spec.process().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let args = to_cstrings(process.args().as_deref().unwrap_or_default())?;
        let env = to_cstrings(process.env().as_deref().unwrap_or_default())?;
        let Some(command) = args.first() else {
            return Err(ExecutorError::InvalidArg);
        };
        let path = resolve_executable(command, &env);
        // The child must not allocate: see `fork_without_atfork`.
        let argv = null_terminated(&args);
        let envp = null_terminated(&env);

        if let SandboxExecutor::Tenant { filter, seccomp } = self {
            if let (None, Some(seccomp)) = (filter, seccomp) {
                libcontainer::seccomp::initialize_seccomp(seccomp).map_err(|error| {
                    ExecutorError::Other(format!("failed to install the seccomp filter: {error}"))
                })?;
            }
            close_inherited_fds();
            // Its own process group, so a timeout can kill what the command started too. A
            // session leader (with a terminal) already leads its group, and the call fails.
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            exec_command(&path, &argv, &envp, command);
        }
        close_inherited_fds();

        // Blocking everything before the fork means no signal is lost before `supervise` waits.
        set_signal_mask(!0);
        match fork_without_atfork() {
            Ok(None) => {
                take_terminal_foreground();
                exec_command(&path, &argv, &envp, command)
            }
            Ok(Some(child)) => supervise(child),
            Err(errno) => {
                set_signal_mask(0);
                Err(ExecutorError::Other(format!(
                    "failed to fork the command {}: {errno}",
                    command.to_string_lossy()
                )))
            }
        }
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        match self {
            SandboxExecutor::KeepAlive { .. } => Ok(()),
            _ => DefaultExecutor {}.validate(spec),
        }
    }

    fn setup_envs(&self, _envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        // `exec` passes the spec's environment to execve; the spec always contains HOME.
        Ok(())
    }
}

/// Name that the sandbox's processes see in the init's `/proc/1/cmdline`.
const INIT_NAME: &[u8] = b"agentkernel-init\0";

/// Overwrites this process's argument strings, which `/proc/<pid>/cmdline` shows.
///
/// The init is a clone of the `agentkernel` process and never calls `execve`, so without this
/// every process in the sandbox could read the host's command line from `/proc/1/cmdline`:
/// the binary's path, `--root`, `-v` host paths and `-e` values. The argument area lies in
/// this process's writable stack, at the addresses the kernel reports in fields 48 and 49 of
/// `/proc/self/stat`. Nothing reads the arguments after this point.
fn hide_command_line() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // The fields after the command name, which ends at the last ')', start with field 3.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let (Some(Ok(start)), Some(Ok(end))) = (
        fields.get(48 - 3).map(|field| field.parse::<usize>()),
        fields.get(49 - 3).map(|field| field.parse::<usize>()),
    ) else {
        return;
    };
    if start == 0 || end <= start {
        return;
    }
    let length = end - start;
    // SAFETY: the kernel reports [start, end) as this process's argument area, which lies in
    // its mapped, writable initial stack. This process is single-threaded here, so nothing
    // else accesses the area while the bytes are written.
    unsafe {
        let area = start as *mut u8;
        std::ptr::write_bytes(area, 0, length);
        let name = &INIT_NAME[..INIT_NAME.len().min(length)];
        std::ptr::copy_nonoverlapping(name.as_ptr(), area, name.len());
    }
}

/// Closes every file descriptor above 2 with `close_range`.
fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors of this process; the executor uses none of
    // them afterwards.
    unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Makes the calling process the leader of a new process group and, when stdin is a terminal,
/// that terminal's foreground group. Ctrl-C then sends SIGINT to the command alone, and not
/// also to the init, which would forward it a second time. Allocates nothing.
fn take_terminal_foreground() {
    // SAFETY: isatty, setpgid, getpid and tcsetpgrp take plain integers. SIGTTOU, which
    // tcsetpgrp raises in a background group, is blocked at this point.
    unsafe {
        if nix::libc::isatty(0) == 1 {
            nix::libc::setpgid(0, 0);
            nix::libc::tcsetpgrp(0, nix::libc::getpid());
        }
    }
}

/// Reaps every child that exits, forever; the kept sandbox's init runs only this.
fn reap_forever() -> ! {
    let all = SigSet::all();
    loop {
        if all.wait() != Ok(Signal::SIGCHLD) {
            continue;
        }
        while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

fn to_cstrings(values: &[String]) -> Result<Vec<CString>, ExecutorError> {
    values
        .iter()
        .map(|value| CString::new(value.as_bytes()).map_err(|_| ExecutorError::InvalidArg))
        .collect()
}

/// Resolves `command` the way libcontainer's default validation does: as given when it contains
/// a slash, else the first entry of the environment's `PATH` where it exists as an executable
/// file. Returns `command` unchanged when nothing matches, so execve reports the error.
fn resolve_executable(command: &CStr, env: &[CString]) -> CString {
    let bytes = command.to_bytes();
    if bytes.contains(&b'/') {
        return command.to_owned();
    }
    let path_var = env
        .iter()
        .find_map(|entry| entry.to_bytes().strip_prefix(b"PATH="))
        .unwrap_or_default();
    for dir in path_var.split(|byte| *byte == b':') {
        let candidate = PathBuf::from(std::ffi::OsStr::from_bytes(dir))
            .join(std::ffi::OsStr::from_bytes(bytes));
        let executable = std::fs::metadata(&candidate)
            .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if executable {
            if let Ok(path) = CString::new(candidate.as_os_str().as_bytes()) {
                return path;
            }
        }
    }
    command.to_owned()
}

/// Forks like `fork(2)` with a raw `clone` and returns the child's pid in the parent and `None`
/// in the child.
///
/// glibc's `fork` first takes every malloc arena lock. The container init was cloned from a
/// possibly multi-threaded process, and an arena lock that another thread held at that moment
/// stays locked forever in init, so glibc's `fork` would hang. The child of this fork must not
/// allocate either.
fn fork_without_atfork() -> Result<Option<Pid>, Errno> {
    // SAFETY: clone with only SIGCHLD and a null stack duplicates the process like fork; the
    // child continues on its own copy of this stack.
    let result = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_clone,
            nix::libc::SIGCHLD as nix::libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match result {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

fn null_terminated(values: &[CString]) -> Vec<*const nix::libc::c_char> {
    values
        .iter()
        .map(|value| value.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Executes the command in the forked child with default signal actions and an empty mask.
/// Allocates nothing.
fn exec_command(
    path: &CStr,
    argv: &[*const nix::libc::c_char],
    envp: &[*const nix::libc::c_char],
    command: &CStr,
) -> ! {
    reset_signal_actions();
    set_signal_mask(0);
    // SAFETY: `path` is NUL-terminated and `argv` and `envp` are null-terminated arrays of
    // pointers to NUL-terminated strings that outlive the call.
    unsafe { nix::libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    let errno = Errno::last();
    // `validate` checked that the file exists and is executable, but execve can still fail, for
    // example on a missing ELF interpreter or an unknown format. Exit like a shell would.
    let (code, reason) = match errno {
        Errno::ENOENT => (127, "not found: "),
        _ => (126, "cannot execute: "),
    };
    let parts: [&[u8]; 6] = [
        b"agentkernel: ",
        command.to_bytes(),
        b": ",
        reason.as_bytes(),
        errno.desc().as_bytes(),
        b"\n",
    ];
    for part in parts {
        // SAFETY: write reads `part.len()` bytes from a live buffer.
        unsafe { nix::libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    exit_now(code)
}

/// Runs as PID 1 of the sandbox, like `docker run --init`: forwards every signal it receives
/// to the command, reaps orphans and exits with the command's status (128 + N when signal N
/// killed it). The kernel then kills whatever else is left in the PID namespace.
///
/// The command does not run as PID 1 because the kernel drops signals to a namespace's init
/// that it has no handler for, so `kill -9 $$` or an unhandled SIGTERM would do nothing.
fn supervise(child: Pid) -> ! {
    let all = SigSet::all();
    loop {
        let Ok(sig) = all.wait() else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => exit_now(code),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => exit_now(128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process without running destructors or atexit handlers, none of
    // which belong to this forked init.
    unsafe { nix::libc::_exit(code) }
}

/// Sets every signal, glibc's internal real-time signals 32 and 33 included, to its default
/// action with raw `rt_sigaction`; glibc's wrappers reject those two.
fn reset_signal_actions() {
    // NOTE: this is the x86_64 layout; other architectures may order the fields differently.
    /// The kernel's `struct sigaction`.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let default = KernelSigaction {
        handler: nix::libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for number in 1..=64 {
        if number == nix::libc::SIGKILL || number == nix::libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads one `KernelSigaction` from `&default`, which lives for the
        // call, and writes nothing because the old-action pointer is null. SIG_DFL installs no
        // handler code.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_rt_sigaction,
                number,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            );
        }
    }
}

/// Sets the signal mask of the calling thread to the raw 64-bit `mask` with `rt_sigprocmask`.
/// glibc's wrappers would leave its two internal real-time signals alone.
fn set_signal_mask(mask: u64) {
    // SAFETY: rt_sigprocmask reads 8 bytes from `&mask`, which lives for the call, and writes
    // nothing because the old-set pointer is null.
    unsafe {
        nix::libc::syscall(
            nix::libc::SYS_rt_sigprocmask,
            nix::libc::SIG_SETMASK,
            &mask as *const u64,
            std::ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstring(value: &str) -> CString {
        CString::new(value).unwrap()
    }

    #[test]
    fn resolves_through_env_path() {
        let env = vec![cstring("A=1"), cstring("PATH=/nonexistent:/bin:/usr/bin")];
        assert_eq!(resolve_executable(&cstring("sh"), &env), cstring("/bin/sh"));
        assert_eq!(
            resolve_executable(&cstring("./local"), &env),
            cstring("./local")
        );
        assert_eq!(
            resolve_executable(&cstring("no-such-command"), &env),
            cstring("no-such-command")
        );
    }

    #[test]
    fn skips_non_executable_matches() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), "data").unwrap();
        let path = format!("PATH={}:/bin", dir.path().display());
        let env = vec![CString::new(path).unwrap()];
        assert_eq!(resolve_executable(&cstring("tool"), &env), cstring("tool"));
        assert_eq!(resolve_executable(&cstring("sh"), &env), cstring("/bin/sh"));
    }
}
