//! Seccomp filters compiled to classic BPF ahead of the run.
//!
//! libcontainer compiles a spec's `linux.seccomp` with libseccomp inside every container init,
//! which took 1.5 to 5 ms of each warm start on a 2-core VM. A [`Program`] is the same filter
//! compiled once by the same library and cached under `<root>/seccomp`, so the sandbox's init
//! only hands the instructions to `seccomp(2)`. The rules are read exactly as libcontainer 0.7
//! reads them, so a spec means the same filter on both paths (see
//! [`super::masked_eq_args`] for the one place where that reading differs from runc's).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use libcontainer::oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator,
};
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

/// Size of one `struct sock_filter` instruction.
const INSTRUCTION_SIZE: usize = std::mem::size_of::<libc::sock_filter>();

/// Maximum number of instructions the kernel accepts in one filter (`BPF_MAXINSNS`).
const MAX_INSTRUCTIONS: usize = 4096;

/// Changes whenever the meaning of a cached program changes, so old files are not reused.
const FORMAT: &str = "agentkernel-seccomp-bpf-1";

/// First bytes of a cache file; a SHA-256 of the program and the program follow.
const CACHE_MAGIC: &[u8; 8] = b"AKBPF1\n\0";

/// A seccomp filter as BPF instructions for the native architecture.
#[derive(Clone)]
pub struct Program {
    instructions: Vec<libc::sock_filter>,
}

impl PartialEq for Program {
    fn eq(&self, other: &Program) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Program {}

impl std::fmt::Debug for Program {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "Program({} instructions)",
            self.instructions.len()
        )
    }
}

impl Program {
    /// Compiles `filter` with libseccomp, or returns `None` when it needs what only
    /// libcontainer's own loading does: filter flags, or a notify action with its listener.
    pub fn compile(filter: &LinuxSeccomp) -> anyhow::Result<Option<Program>> {
        if !precompilable(filter) {
            return Ok(None);
        }
        let context = build_context(filter)?;
        let memfd = nix::sys::memfd::memfd_create(
            c"agentkernel-seccomp",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .context("failed to create a memfd for the seccomp program")?;
        let mut file = File::from(memfd);
        context
            .export_bpf(&file)
            .context("failed to export the seccomp filter as BPF")?;
        file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Program::from_bytes(&bytes)
            .map(Some)
            .context("libseccomp exported an invalid BPF program")
    }

    /// Returns the compiled `filter` from `cache_dir`, compiling and storing it there first when
    /// it is missing or damaged.
    ///
    /// The directory is created with mode 0700 and used only while it is owned by this user and
    /// writable by no one else, because a program in it becomes the filter of every sandbox.
    /// Otherwise the filter is compiled without the cache. Each file starts with a SHA-256 of
    /// its program, so a truncated or damaged file is compiled again instead of being loaded.
    pub fn cached(cache_dir: &Path, filter: &LinuxSeccomp) -> anyhow::Result<Option<Program>> {
        if !precompilable(filter) {
            return Ok(None);
        }
        let Some(dir) = open_cache_dir(cache_dir)? else {
            return Program::compile(filter);
        };
        let name = format!("{}.bpf", cache_key(filter)?);
        let path = cache_dir.join(&name);
        match read_cached(&dir, &name) {
            Ok(Some(program)) => return Ok(Some(program)),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                path = %path.display(),
                error = %format!("{error:#}"),
                "invalid cached seccomp program, compiling the filter again"
            ),
        }
        let Some(program) = Program::compile(filter)? else {
            return Ok(None);
        };
        write_cached(&dir, &name, &program)
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(Some(program))
    }

    /// Installs the filter on the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER)`.
    ///
    /// Children and `execve` keep it. The caller must have set `no_new_privs` or hold
    /// `CAP_SYS_ADMIN`, as for any seccomp filter. Allocates nothing.
    pub fn install(&self) -> Result<(), nix::errno::Errno> {
        let program = libc::sock_fprog {
            // `from_bytes` limits the length to MAX_INSTRUCTIONS, which fits in u16.
            len: self.instructions.len() as u16,
            filter: self.instructions.as_ptr().cast_mut(),
        };
        // SAFETY: `program` points to `len` valid instructions that outlive the call; the
        // kernel copies them and keeps no pointer.
        let result = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const libc::sock_fprog,
            )
        };
        nix::errno::Errno::result(result).map(drop)
    }

    fn from_bytes(bytes: &[u8]) -> anyhow::Result<Program> {
        if bytes.is_empty() || bytes.len() % INSTRUCTION_SIZE != 0 {
            bail!(
                "{} bytes are not a whole number of {INSTRUCTION_SIZE}-byte instructions",
                bytes.len()
            );
        }
        let count = bytes.len() / INSTRUCTION_SIZE;
        if count > MAX_INSTRUCTIONS {
            bail!("{count} instructions exceed the kernel's limit of {MAX_INSTRUCTIONS}");
        }
        let instructions = bytes
            .chunks_exact(INSTRUCTION_SIZE)
            .map(|chunk| libc::sock_filter {
                code: u16::from_ne_bytes([chunk[0], chunk[1]]),
                jt: chunk[2],
                jf: chunk[3],
                k: u32::from_ne_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            })
            .collect();
        Ok(Program { instructions })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.instructions.len() * INSTRUCTION_SIZE);
        for instruction in &self.instructions {
            bytes.extend_from_slice(&instruction.code.to_ne_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_ne_bytes());
        }
        bytes
    }
}

/// Reports whether `filter` can be loaded from a precompiled program: it sets no flags and
/// uses no notify action.
fn precompilable(filter: &LinuxSeccomp) -> bool {
    let notify = filter.default_action() == LinuxSeccompAction::ScmpActNotify
        || filter
            .syscalls()
            .iter()
            .flatten()
            .any(|rule| rule.action() == LinuxSeccompAction::ScmpActNotify);
    let flags = filter
        .flags()
        .as_ref()
        .is_some_and(|flags| !flags.is_empty());
    !notify && !flags
}

/// Opens `cache_dir`, creating it with mode 0700. Returns `None` with a warning when it is not
/// owned by this user or others can write to it.
fn open_cache_dir(cache_dir: &Path) -> anyhow::Result<Option<OwnedFd>> {
    match std::fs::DirBuilder::new().mode(0o700).create(cache_dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => {
            return Err(error).with_context(|| format!("failed to create {}", cache_dir.display()));
        }
    }
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(cache_dir)
        .with_context(|| format!("failed to open {}", cache_dir.display()))?;
    let metadata = dir.metadata()?;
    if metadata.uid() != nix::unistd::geteuid().as_raw() || metadata.mode() & 0o022 != 0 {
        tracing::warn!(
            path = %cache_dir.display(),
            uid = metadata.uid(),
            mode = format!("{:o}", metadata.mode() & 0o7777),
            "seccomp cache not used: others can write to it; remove it to have it recreated"
        );
        return Ok(None);
    }
    Ok(Some(dir.into()))
}

/// Reads the program `name` from the cache directory `dir`; `None` when there is none.
fn read_cached(dir: &OwnedFd, name: &str) -> anyhow::Result<Option<Program>> {
    let fd = match nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(errno.into()),
    };
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let Some(program) = bytes.strip_prefix(CACHE_MAGIC) else {
        bail!("no {CACHE_MAGIC:?} header");
    };
    let (checksum, program) = program.split_at(program.len().min(32));
    if Sha256::digest(program).as_slice() != checksum {
        bail!("the checksum does not match the program");
    }
    Program::from_bytes(program).map(Some)
}

/// Writes `program` as `name` into the cache directory `dir`, mode 0600, through a temporary
/// file and a rename, so readers see the whole file or none.
fn write_cached(dir: &OwnedFd, name: &str, program: &Program) -> anyhow::Result<()> {
    let temporary = format!("{name}.{}.tmp", std::process::id());
    let remove_temporary = || {
        let flags = nix::unistd::UnlinkatFlags::NoRemoveDir;
        let _ = nix::unistd::unlinkat(Some(dir.as_raw_fd()), temporary.as_str(), flags);
    };
    remove_temporary();

    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        temporary.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };

    let bytes = program.to_bytes();
    let mut contents = CACHE_MAGIC.to_vec();
    contents.extend_from_slice(&Sha256::digest(&bytes));
    contents.extend_from_slice(&bytes);

    let written = file
        .write_all(&contents)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let directory = Some(dir.as_raw_fd());
            nix::fcntl::renameat(directory, temporary.as_str(), directory, name)?;
            Ok(())
        });
    if written.is_err() {
        remove_temporary();
    }
    written
}

/// Returns the file name stem of `filter`'s cached program: a SHA-256 of the format, the
/// architecture, the libseccomp version and the filter's JSON.
fn cache_key(filter: &LinuxSeccomp) -> anyhow::Result<String> {
    let json = serde_json::to_vec(filter).context("failed to serialize the seccomp filter")?;
    let version = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    for part in [
        FORMAT.as_bytes(),
        std::env::consts::ARCH.as_bytes(),
        version.as_bytes(),
    ] {
        hasher.update(part);
        hasher.update([0]);
    }
    hasher.update(&json);
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Builds the libseccomp context of `filter`, reading each field as libcontainer 0.7 does.
///
/// A missing errno means EPERM and `SCMP_ACT_KILL` kills the thread. Rules whose action equals
/// the default and unknown syscall names are skipped. A `MASKED_EQ` argument takes its mask
/// from `valueTwo`. A rule that compares one argument index twice becomes one rule per
/// comparison.
fn build_context(filter: &LinuxSeccomp) -> anyhow::Result<ScmpFilterContext> {
    let default_action = action(filter.default_action(), filter.default_errno_ret())?;
    let mut context =
        ScmpFilterContext::new(default_action).context("failed to create a libseccomp filter")?;
    for arch in filter.architectures().iter().flatten() {
        context
            .add_arch(scmp_arch(*arch))
            .with_context(|| format!("failed to add architecture {arch:?}"))?;
    }
    for rule in filter.syscalls().iter().flatten() {
        let rule_action = action(rule.action(), rule.errno_ret())?;
        if rule_action == default_action {
            continue;
        }
        let comparisons: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|arg| {
                let op = match arg.op() {
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        ScmpCompareOp::MaskedEqual(arg.value_two().unwrap_or(0))
                    }
                };
                ScmpArgCompare::new(arg.index() as u32, op, arg.value())
            })
            .collect();
        let mut indexes = HashSet::new();
        let repeated = rule
            .args()
            .iter()
            .flatten()
            .any(|arg| !indexes.insert(arg.index()));
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                tracing::debug!(%name, "syscall unknown to libseccomp, rule skipped");
                continue;
            };
            let added = if comparisons.is_empty() {
                context.add_rule(rule_action, syscall).map(drop)
            } else if repeated {
                comparisons.iter().try_for_each(|comparison| {
                    context
                        .add_rule_conditional(
                            rule_action,
                            syscall,
                            std::slice::from_ref(comparison),
                        )
                        .map(drop)
                })
            } else {
                context
                    .add_rule_conditional(rule_action, syscall, &comparisons)
                    .map(drop)
            };
            added.with_context(|| format!("failed to add the seccomp rule for {name}"))?;
        }
    }
    Ok(context)
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> anyhow::Result<ScmpAction> {
    let errno = errno.map_or(libc::EPERM, |errno| errno as i32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(errno)
                .with_context(|| format!("invalid SCMP_ACT_TRACE value {errno}"))?,
        ),
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn default_filter() -> LinuxSeccomp {
        crate::seccomp::default_filter(&HashSet::new()).unwrap()
    }

    #[test]
    fn default_filter_compiles() {
        let program = Program::compile(&default_filter()).unwrap().unwrap();
        assert!(
            program.instructions.len() > 100,
            "{} instructions",
            program.instructions.len()
        );
        assert!(program.instructions.len() <= MAX_INSTRUCTIONS);
    }

    fn only_file(dir: &Path) -> std::path::PathBuf {
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert_eq!(files.len(), 1);
        files[0].as_ref().unwrap().path()
    }

    #[test]
    fn cache_round_trips() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("seccomp");
        let filter = default_filter();
        let compiled = Program::cached(&dir, &filter).unwrap().unwrap();
        let metadata = std::fs::metadata(&dir).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o700);
        let path = only_file(&dir);
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o600);
        assert_eq!(
            metadata.len() as usize,
            CACHE_MAGIC.len() + 32 + compiled.instructions.len() * INSTRUCTION_SIZE
        );
        assert_eq!(Program::cached(&dir, &filter).unwrap().unwrap(), compiled);
    }

    #[test]
    fn damaged_cache_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let filter = default_filter();
        let compiled = Program::cached(dir.path(), &filter).unwrap().unwrap();
        let path = only_file(dir.path());
        let valid = std::fs::read(&path).unwrap();
        // Zero bytes make an invalid BPF program of the right length; a flipped byte of the
        // program keeps the header but breaks the checksum.
        let mut flipped = valid.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for damaged in [b"12345".to_vec(), vec![0; 8], flipped] {
            std::fs::write(&path, &damaged).unwrap();
            assert_eq!(
                Program::cached(dir.path(), &filter).unwrap().unwrap(),
                compiled
            );
            assert_eq!(std::fs::read(&path).unwrap(), valid);
        }
    }

    #[test]
    fn cache_others_can_write_is_not_used() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("seccomp");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let filter = default_filter();
        let compiled = Program::cached(&dir, &filter).unwrap().unwrap();
        assert_eq!(compiled, Program::compile(&filter).unwrap().unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn flags_and_notify_are_left_to_libcontainer() {
        let mut filter = default_filter();
        filter.set_flags(Some(vec![
            libcontainer::oci_spec::runtime::LinuxSeccompFilterFlag::SeccompFilterFlagLog,
        ]));
        assert_eq!(Program::compile(&filter).unwrap(), None);
        let mut filter = default_filter();
        filter.set_default_action(LinuxSeccompAction::ScmpActNotify);
        assert_eq!(Program::compile(&filter).unwrap(), None);
    }

    #[test]
    fn truncated_programs_are_rejected() {
        let error = Program::from_bytes(&[0; 12]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "12 bytes are not a whole number of 8-byte instructions"
        );
        assert!(Program::from_bytes(&[]).is_err());
        assert!(Program::from_bytes(&vec![0; 8 * 4097]).is_err());
    }
}
