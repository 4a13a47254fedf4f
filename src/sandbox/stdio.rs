//! Standard input, output and error of the container process.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::sys::stat::{SFlag, fstat};
use nix::unistd::pipe2;

/// Source of the container process's stdin, stdout and stderr.
#[derive(Debug)]
pub(crate) enum StdioMode {
    /// Duplicates of this process's stdout and stderr, so output streams live to the same
    /// places. Stdin is a duplicate of fd 0 when that is a pipe or a regular file, else
    /// `/dev/null`, so the sandbox never reads from a terminal.
    Inherit,
    /// Like [`StdioMode::Inherit`], but stdin is a duplicate of fd 0 whatever it is when `true`
    /// (`--interactive`), and `/dev/null` when `false`.
    InheritStdin(bool),
    /// Stdout and stderr go to pipes that reader threads drain into memory; stdin is the given
    /// file descriptor or `/dev/null`.
    #[cfg_attr(not(test), allow(dead_code))]
    Capture { stdin: Option<OwnedFd> },
}

/// File descriptors handed to `ContainerBuilder`. libcontainer's init `dup2`s each onto 0, 1 and
/// 2 and closes the original, so none of them may be this process's own fd 0, 1 or 2.
pub(super) struct StdioFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Read ends of the capture pipes whose reader threads are not started yet.
pub(super) struct PendingCapture(Option<(File, File)>);

/// A reader thread that returns everything read from its pipe.
type Reader = JoinHandle<io::Result<Vec<u8>>>;

/// Running reader threads of the capture pipes.
pub(super) struct Capture(Option<(Reader, Reader)>);

impl StdioMode {
    /// Returns the `TERM` value for the container: the host's (or `xterm`) when stdout is
    /// inherited and is a terminal.
    pub fn term(&self) -> Option<String> {
        match self {
            StdioMode::Inherit | StdioMode::InheritStdin(_) if io::stdout().is_terminal() => {
                Some(std::env::var("TERM").unwrap_or_else(|_| "xterm".to_string()))
            }
            _ => None,
        }
    }

    /// Opens the container's stdio file descriptors.
    pub(super) fn open(self) -> anyhow::Result<(StdioFds, PendingCapture)> {
        match self {
            StdioMode::Inherit => {
                let fds = StdioFds {
                    stdin: stdin_source(io::stdin().as_fd())?,
                    stdout: duplicate_or_null(io::stdout().as_fd(), "stdout")?,
                    stderr: duplicate_or_null(io::stderr().as_fd(), "stderr")?,
                };
                Ok((fds, PendingCapture(None)))
            }
            StdioMode::InheritStdin(pass) => {
                let stdin = match pass {
                    true => duplicate_or_null(io::stdin().as_fd(), "stdin")?,
                    false => dev_null()?,
                };
                let fds = StdioFds {
                    stdin,
                    stdout: duplicate_or_null(io::stdout().as_fd(), "stdout")?,
                    stderr: duplicate_or_null(io::stderr().as_fd(), "stderr")?,
                };
                Ok((fds, PendingCapture(None)))
            }
            StdioMode::Capture { stdin } => {
                let (stdout_reader, stdout_writer) = pipe("stdout")?;
                let (stderr_reader, stderr_writer) = pipe("stderr")?;
                let stdin = match stdin {
                    Some(fd) => fd,
                    None => dev_null()?,
                };
                let fds = StdioFds {
                    stdin,
                    stdout: stdout_writer,
                    stderr: stderr_writer,
                };
                let readers = (File::from(stdout_reader), File::from(stderr_reader));
                Ok((fds, PendingCapture(Some(readers))))
            }
        }
    }
}

impl StdioFds {
    /// Returns `/dev/null` for all three, for a process whose stdio is a pseudo-terminal or
    /// that has none.
    pub fn null() -> anyhow::Result<Self> {
        Ok(StdioFds {
            stdin: dev_null()?,
            stdout: dev_null()?,
            stderr: dev_null()?,
        })
    }
}

impl PendingCapture {
    /// Returns a capture that reads nothing.
    pub fn none() -> Self {
        PendingCapture(None)
    }

    /// Starts the reader threads. Call it after `ContainerBuilder::build`, which forks and must
    /// not run while other threads allocate, and before `Container::start`, after which a full
    /// pipe would block the command.
    pub fn start(self) -> anyhow::Result<Capture> {
        let Some((stdout, stderr)) = self.0 else {
            return Ok(Capture(None));
        };
        let stdout = spawn_reader(stdout, "stdout")?;
        let stderr = spawn_reader(stderr, "stderr")?;
        Ok(Capture(Some((stdout, stderr))))
    }
}

impl Capture {
    /// Waits for end of file on both pipes and returns what was read from stdout and stderr.
    /// End of file comes when every container process has exited.
    pub fn finish(self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let Some((stdout, stderr)) = self.0 else {
            return Ok((Vec::new(), Vec::new()));
        };
        let join = |handle: Reader, name: &str| {
            handle
                .join()
                .map_err(|_| anyhow::anyhow!("the {name} reader thread panicked"))?
                .with_context(|| format!("failed to read the container's {name}"))
        };
        Ok((join(stdout, "stdout")?, join(stderr, "stderr")?))
    }
}

fn spawn_reader(mut reader: File, name: &str) -> anyhow::Result<Reader> {
    std::thread::Builder::new()
        .name(format!("sandbox-{name}"))
        .spawn(move || {
            let mut output = Vec::new();
            reader.read_to_end(&mut output)?;
            Ok(output)
        })
        .with_context(|| format!("failed to start the {name} reader thread"))
}

/// Returns the read and write ends of a new close-on-exec pipe.
fn pipe(name: &str) -> anyhow::Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC)
        .map_err(io::Error::from)
        .with_context(|| format!("failed to create the {name} pipe"))
}

/// Returns a duplicate of `fd` when it is a pipe or a regular file and `/dev/null` otherwise
/// (a terminal, a socket or a closed descriptor).
pub(super) fn stdin_source(fd: BorrowedFd<'_>) -> anyhow::Result<OwnedFd> {
    let passable = match fstat(fd.as_raw_fd()) {
        Ok(stat) => {
            let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
            kind == SFlag::S_IFIFO || kind == SFlag::S_IFREG
        }
        Err(_) => false,
    };
    if passable {
        fd.try_clone_to_owned().context("failed to duplicate stdin")
    } else {
        dev_null()
    }
}

fn duplicate_or_null(fd: BorrowedFd<'_>, name: &str) -> anyhow::Result<OwnedFd> {
    if fstat(fd.as_raw_fd()).is_err() {
        return dev_null();
    }
    fd.try_clone_to_owned()
        .with_context(|| format!("failed to duplicate {name}"))
}

fn dev_null() -> anyhow::Result<OwnedFd> {
    let file = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("failed to open /dev/null")?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn is_dev_null(fd: &OwnedFd) -> bool {
        let null = std::fs::metadata("/dev/null").unwrap();
        let stat = fstat(fd.as_raw_fd()).unwrap();
        stat.st_rdev == null.rdev()
    }

    #[test]
    fn stdin_passes_pipe() {
        let (reader, writer) = pipe("test").unwrap();
        File::from(writer).write_all(b"input").unwrap();
        let fd = stdin_source(reader.as_fd()).unwrap();
        assert!(!is_dev_null(&fd));
        let mut text = String::new();
        File::from(fd).read_to_string(&mut text).unwrap();
        assert_eq!(text, "input");
    }

    #[test]
    fn stdin_passes_regular_file() {
        let file = tempfile::tempfile().unwrap();
        let fd = stdin_source(file.as_fd()).unwrap();
        assert!(!is_dev_null(&fd));
    }

    #[test]
    fn stdin_replaces_terminal_and_socket() {
        let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(is_dev_null(&stdin_source(socket.as_fd()).unwrap()));
        let null = File::open("/dev/null").unwrap();
        assert!(is_dev_null(&stdin_source(null.as_fd()).unwrap()));
        let (master, _) = match nix::pty::openpty(None, None) {
            Ok(pty) => (pty.master, pty.slave),
            Err(error) => panic!("openpty failed: {error}"),
        };
        assert!(is_dev_null(&stdin_source(master.as_fd()).unwrap()));
    }
}
