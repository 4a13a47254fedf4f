//! The workload executor: libcontainer's default executor plus a clean signal state and shell
//! exit codes for exec failures.

use std::ffi::CString;
use std::io::Write;

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
use nix::unistd::execvp;

/// Runs the container process with `execvp`, after resetting every signal to its default action
/// and unblocking all signals; validates like [`DefaultExecutor`].
///
/// The container init is a clone of the calling process, so it inherits the caller's ignored
/// signals (Rust ignores SIGPIPE) and signal mask; `execve` keeps both.
#[derive(Clone)]
pub(super) struct SandboxExecutor;

impl Executor for SandboxExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        reset_signals();
        let args: Vec<CString> = spec
            .process()
            .as_ref()
            .and_then(|process| process.args().as_ref())
            .ok_or(ExecutorError::InvalidArg)?
            .iter()
            .map(|arg| CString::new(arg.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        let Some(command) = args.first() else {
            return Err(ExecutorError::InvalidArg);
        };
        let Err(errno) = execvp(command, &args);
        // The file passed `validate` before `start`, so execvp fails only on a missing ELF
        // interpreter, a bad format or a race. Report it and exit like a shell would.
        let (code, reason) = match errno {
            Errno::ENOENT => (127, "not found"),
            _ => (126, "cannot execute"),
        };
        let _ = writeln!(
            std::io::stderr(),
            "agentkernel: {}: {reason}: {}",
            command.to_string_lossy(),
            errno.desc()
        );
        // SAFETY: _exit ends this process at once; the container init has no buffered state
        // that needs flushing.
        unsafe { nix::libc::_exit(code) }
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

fn reset_signals() {
    for number in 1..=31 {
        let Ok(sig) = Signal::try_from(number) else {
            continue;
        };
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code, so no handler can observe inconsistent
        // state; this process execs right after.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
