//! A pseudo-terminal for the sandbox's command: libcontainer creates it inside the container
//! (`process.terminal`) and sends its master over a console socket, and this process relays
//! between the master and its own terminal.

use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

/// How long the output relay keeps reading after the command exited while background
/// processes still hold the terminal open.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(100);

/// The listening console socket of one command.
pub(crate) struct Terminal {
    path: PathBuf,
    listener: UnixListener,
    /// Whether this process's stdin is relayed to the pseudo-terminal.
    forward_input: bool,
}

/// The running relay between this process's terminal and the pseudo-terminal master.
pub(crate) struct Relay {
    _raw_mode: Option<RawMode>,
    done: Arc<AtomicBool>,
    output: Option<JoinHandle<()>>,
}

/// Puts stdin's terminal in raw mode and restores its previous settings when dropped.
struct RawMode {
    saved: Termios,
}

impl Terminal {
    /// Listens on a new socket in `dir`. libcontainer connects to it during `build`; the
    /// connection waits in the listen backlog until [`Terminal::attach`] accepts it.
    pub fn listen(dir: &Path, forward_input: bool) -> anyhow::Result<Self> {
        let path = dir.join(format!("console-{:08x}.sock", rand::random::<u32>()));
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("failed to listen on {}", path.display()))?;
        Ok(Terminal {
            path,
            listener,
            forward_input,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Receives the pseudo-terminal master, copies this process's window size to it, puts
    /// stdin in raw mode and starts relaying: stdin to the master, the master to stdout, and
    /// each SIGWINCH as a new window size. Call it after `build`, which sent the master.
    pub fn attach(&self) -> anyhow::Result<Relay> {
        let (stream, _) = self
            .listener
            .accept()
            .with_context(|| format!("failed to accept on {}", self.path.display()))?;
        let master = receive_fd(&stream)?;
        copy_window_size(&master);
        let raw_mode = match self.forward_input {
            true => RawMode::enter()?,
            false => None,
        };
        let done = Arc::new(AtomicBool::new(false));
        if self.forward_input {
            let input = master
                .try_clone()
                .context("failed to duplicate the terminal master")?;
            // The thread stays blocked in read(stdin) after the command exits; it ends with the
            // process.
            std::thread::Builder::new()
                .name("terminal-input".to_string())
                .spawn(move || relay_input(input))
                .context("failed to start the terminal input thread")?;
        }
        let (winch, winch_writer) = UnixStream::pair().context("failed to create a socket pair")?;
        winch
            .set_nonblocking(true)
            .context("failed to make the SIGWINCH socket non-blocking")?;
        let winch_id =
            signal_hook::low_level::pipe::register(signal_hook::consts::SIGWINCH, winch_writer)
                .context("failed to install a SIGWINCH handler")?;
        let output_done = Arc::clone(&done);
        let output = std::thread::Builder::new()
            .name("terminal-output".to_string())
            .spawn(move || {
                relay_output(master, winch, &output_done);
                signal_hook::low_level::unregister(winch_id);
            })
            .context("failed to start the terminal output thread")?;
        Ok(Relay {
            _raw_mode: raw_mode,
            done,
            output: Some(output),
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Relay {
    /// Waits until the output relay has copied what the command wrote, then restores the
    /// terminal settings.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

impl RawMode {
    /// Switches stdin to raw mode; returns `None` when stdin is not a terminal.
    fn enter() -> anyhow::Result<Option<Self>> {
        let stdin = io::stdin();
        let Ok(saved) = tcgetattr(stdin.as_fd()) else {
            return Ok(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(io::Error::from)
            .context("failed to put the terminal in raw mode")?;
        Ok(Some(RawMode { saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS on `stream`.
fn receive_fd(stream: &UnixStream) -> anyhow::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let message = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)
    .context("failed to receive the terminal master")?;
    for control in message
        .cmsgs()
        .context("failed to read the control message")?
    {
        if let ControlMessageOwned::ScmRights(fds) = control {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel installed this descriptor for this process with SCM_RIGHTS
                // and nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    anyhow::bail!("the console socket message carried no file descriptor")
}

/// Copies the window size of this process's stdout (or stdin) to `master`.
fn copy_window_size(master: &OwnedFd) {
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which lives for the call.
        if unsafe { nix::libc::ioctl(fd, nix::libc::TIOCGWINSZ, &mut size) } == 0 {
            // SAFETY: TIOCSWINSZ reads one `winsize` from `size`.
            unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
            return;
        }
    }
}

fn relay_input(master: OwnedFd) {
    let mut master = File::from(master);
    let mut stdin = io::stdin().lock();
    let mut buffer = [0u8; 4096];
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => {
                if master.write_all(&buffer[..count]).is_err() {
                    return;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Copies the master's output to stdout until the pseudo-terminal closes, or until `done` is set
/// and nothing arrived for [`DRAIN_TIMEOUT`]. Applies window size changes signalled on `winch`.
fn relay_output(master: OwnedFd, mut winch: UnixStream, done: &AtomicBool) {
    let mut reader = File::from(master.try_clone().expect("duplicate the terminal master"));
    let mut stdout = io::stdout();
    let mut buffer = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(winch.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = PollTimeout::try_from(DRAIN_TIMEOUT).unwrap_or(PollTimeout::NONE);
        match poll(&mut fds, timeout) {
            Ok(0) if done.load(Ordering::SeqCst) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let resized = fds[1].any().unwrap_or(false);
        let readable = fds[0].any().unwrap_or(false);
        if resized {
            let mut drained = [0u8; 64];
            while matches!(winch.read(&mut drained), Ok(count) if count > 0) {}
            copy_window_size(&master);
        }
        if !readable {
            continue;
        }
        match reader.read(&mut buffer) {
            Ok(0) => return,
            Ok(count) => {
                let _ = stdout.write_all(&buffer[..count]);
                let _ = stdout.flush();
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            // EIO: every process closed the terminal's slave side.
            Err(_) => return,
        }
    }
}
