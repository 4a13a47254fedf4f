//! Seccomp filters for the sandbox process: a built-in allowlist with the semantics of Docker's
//! default profile (moby `profiles/seccomp/default.json`), or an OCI or Docker seccomp JSON file.
//!
//! Only the native architecture is listed, so libseccomp builds the filter for one ABI. Listing
//! the x86 and x32 ABIs as well cost about 11 ms per container on a 2-core VM, and calls from
//! other ABIs hit the filter's bad-architecture action (kill) instead.

mod program;

pub use program::Program;

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, bail};
use libcontainer::oci_spec::runtime::{
    Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// `EPERM`, returned for every call the filter does not allow.
const EPERM: u32 = 1;

/// `ENOSYS`, returned for `clone3` so that libc falls back to `clone`, whose flags the filter
/// can inspect (`clone3` passes them in a struct that seccomp cannot read).
const ENOSYS: u32 = 38;

/// `clone` flags that create namespaces: CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS,
/// CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID and CLONE_NEWNET.
pub const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `AF_VSOCK`; Docker's profile allows `socket` for every other address family.
const AF_VSOCK: u64 = 40;

/// `personality` values that stay allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// PER_LINUX32|UNAME26 and 0xffffffff, which only queries the current persona.
const PERSONALITY_VALUES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Calls allowed without conditions. Names that the kernel or libseccomp does not know on this
/// architecture (such as the 32-bit `*64` variants) are skipped by libcontainer.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_requeue",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Calls that read or change other processes. Docker allows them without `CAP_SYS_PTRACE` on
/// kernels from 4.8 on, where seccomp runs again after a ptrace stop and a tracer cannot use
/// them to skip the filter; the pid namespace still hides every process outside the sandbox.
const TRACING: &[&str] = &[
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// Calls allowed only while the process holds the capability, as in Docker's profile.
const CAPABILITY_GATED: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (Capability::SysTime, &["settimeofday", "clock_settime"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// Builds the default filter for a process with the capabilities `caps`: calls outside the
/// allowlist fail with EPERM, `clone` without `CAP_SYS_ADMIN` may not create namespaces,
/// `personality` accepts only the values in [`PERSONALITY_VALUES`] and `socket` rejects
/// `AF_VSOCK`.
pub fn default_filter(caps: &HashSet<Capability>) -> anyhow::Result<LinuxSeccomp> {
    let mut names: Vec<&str> = ALLOWED.iter().chain(TRACING).copied().collect();
    if cfg!(target_arch = "x86_64") {
        names.extend(["arch_prctl", "modify_ldt"]);
    }
    for (capability, gated) in CAPABILITY_GATED {
        if caps.contains(capability) {
            names.extend(gated.iter().copied());
        }
    }
    let mut seen = HashSet::new();
    names.retain(|name| seen.insert(*name));

    let mut syscalls = vec![allow(&names)?];
    for value in PERSONALITY_VALUES {
        syscalls.push(allow_if(
            "personality",
            0,
            LinuxSeccompOperator::ScmpCmpEq,
            value,
            None,
        )?);
    }
    syscalls.push(allow_if(
        "socket",
        0,
        LinuxSeccompOperator::ScmpCmpNe,
        AF_VSOCK,
        None,
    )?);
    if !caps.contains(&Capability::SysAdmin) {
        // The flags are the first argument of clone everywhere except s390x.
        let (value, value_two) = masked_eq_args(CLONE_NAMESPACE_FLAGS, 0);
        syscalls.push(allow_if(
            "clone",
            0,
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            value,
            Some(value_two),
        )?);
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }

    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .syscalls(syscalls)
        .build()?)
}

/// Returns `(value, valueTwo)` for an `SCMP_CMP_MASKED_EQ` rule that matches when
/// `(arg & mask) == datum`, as libcontainer 0.7 reads them.
///
/// The OCI runtime spec and runc take `value` as the mask and `valueTwo` as the datum, but
/// libcontainer 0.7 passes `valueTwo` to libseccomp as the mask and `value` as the datum. Written
/// the runc way, Docker's clone rule (`value` 0x7E020000, `valueTwo` 0) would test
/// `(arg & 0) == 0x7E020000`, which libseccomp reduces to an unconditional allow. The order is
/// swapped here so the filter is right. The sandbox test `clone_namespace_flags_fail` fails if
/// libcontainer changes the order, because clone with namespace flags then succeeds.
pub fn masked_eq_args(mask: u64, datum: u64) -> (u64, u64) {
    (datum, mask)
}

/// Loads a seccomp profile from an OCI (`linux.seccomp` of a runtime spec) or Docker JSON file.
///
/// Docker's format is reduced to what applies here: rules whose `includes` name capabilities
/// outside `caps` or other architectures, and rules whose `excludes` match, are dropped; the
/// `architectures` and `archMap` lists are replaced by the native architecture. `SCMP_CMP_MASKED_EQ`
/// arguments are written the runc way in such files and are swapped for libcontainer (see
/// [`masked_eq_args`]).
pub fn load_file(path: &Path, caps: &HashSet<Capability>) -> anyhow::Result<LinuxSeccomp> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read seccomp profile {}", path.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("invalid JSON in seccomp profile {}", path.display()))?;
    let Some(object) = value.as_object_mut() else {
        bail!(
            "invalid seccomp profile {}: expected a JSON object",
            path.display()
        );
    };
    object.remove("archMap");
    object.remove("architectures");
    if let Some(serde_json::Value::Array(rules)) = object.get_mut("syscalls") {
        let mut kept = Vec::new();
        for mut rule in rules.drain(..) {
            if !rule_applies(&rule, caps) {
                continue;
            }
            if let Some(rule) = rule.as_object_mut() {
                for key in ["includes", "excludes", "comment"] {
                    rule.remove(key);
                }
                if let Some(name) = rule.remove("name") {
                    rule.insert("names".to_string(), serde_json::Value::Array(vec![name]));
                }
            }
            kept.push(rule);
        }
        *rules = kept;
    }
    let mut seccomp: LinuxSeccomp = serde_json::from_value(value)
        .with_context(|| format!("invalid seccomp profile {}", path.display()))?;
    if let Some(rules) = seccomp.syscalls().clone() {
        let swapped = rules
            .into_iter()
            .map(swap_masked_eq)
            .collect::<anyhow::Result<Vec<LinuxSyscall>>>()?;
        seccomp.set_syscalls(Some(swapped));
    }
    Ok(seccomp)
}

/// Name of the native architecture in Docker's profile (`includes.arches`).
fn docker_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Evaluates a Docker rule's `includes` and `excludes` for `caps` and the native architecture.
/// `minKernel` is not checked: the rules that use it need kernel 4.8 or later.
fn rule_applies(rule: &serde_json::Value, caps: &HashSet<Capability>) -> bool {
    let list = |section: &str, key: &str| -> Vec<String> {
        rule.get(section)
            .and_then(|section| section.get(key))
            .and_then(|values| values.as_array())
            .map(|values| {
                values
                    .iter()
                    .filter_map(|value| value.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let held = |name: &String| {
        serde_json::from_value::<Capability>(serde_json::Value::String(name.clone()))
            .is_ok_and(|capability| caps.contains(&capability))
    };
    let arch = docker_arch();
    let include_caps = list("includes", "caps");
    let include_arches = list("includes", "arches");
    if !include_caps.iter().all(held) {
        return false;
    }
    if !include_arches.is_empty() && !include_arches.iter().any(|name| name == arch) {
        return false;
    }
    let exclude_caps = list("excludes", "caps");
    let exclude_arches = list("excludes", "arches");
    if exclude_caps.iter().any(held) {
        return false;
    }
    !exclude_arches.iter().any(|name| name == arch)
}

fn swap_masked_eq(mut rule: LinuxSyscall) -> anyhow::Result<LinuxSyscall> {
    if let Some(args) = rule.args().clone() {
        let mut swapped = Vec::with_capacity(args.len());
        for arg in args {
            if arg.op() != LinuxSeccompOperator::ScmpCmpMaskedEq {
                swapped.push(arg);
                continue;
            }
            let (value, value_two) = masked_eq_args(arg.value(), arg.value_two().unwrap_or(0));
            swapped.push(
                LinuxSeccompArgBuilder::default()
                    .index(arg.index())
                    .op(arg.op())
                    .value(value)
                    .value_two(value_two)
                    .build()?,
            );
        }
        rule.set_args(Some(swapped));
    }
    Ok(rule)
}

fn allow(names: &[&str]) -> anyhow::Result<LinuxSyscall> {
    Ok(LinuxSyscallBuilder::default()
        .names(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?)
}

fn allow_if(
    name: &str,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> anyhow::Result<LinuxSyscall> {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .op(op)
        .value(value);
    if let Some(value_two) = value_two {
        arg = arg.value_two(value_two);
    }
    Ok(LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg.build()?])
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_caps() -> HashSet<Capability> {
        [Capability::Chown, Capability::SysChroot, Capability::Kill]
            .into_iter()
            .collect()
    }

    fn rules_for<'a>(filter: &'a LinuxSeccomp, name: &str) -> Vec<&'a LinuxSyscall> {
        filter
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|rule| rule.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn default_denies_with_eperm_on_native_arch() {
        let filter = default_filter(&docker_caps()).unwrap();
        assert_eq!(filter.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(filter.default_errno_ret(), Some(1));
        assert_eq!(filter.architectures(), &None);
        for denied in [
            "mount", "umount2", "unshare", "setns", "bpf", "keyctl", "reboot",
        ] {
            assert!(rules_for(&filter, denied).is_empty(), "{denied}");
        }
        for allowed in ["read", "ptrace", "chroot", "execve"] {
            assert_eq!(rules_for(&filter, allowed).len(), 1, "{allowed}");
        }
    }

    #[test]
    fn clone_rule_is_swapped_for_libcontainer() {
        let filter = default_filter(&docker_caps()).unwrap();
        let clone = rules_for(&filter, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        // libcontainer 0.7 reads valueTwo as the mask and value as the datum.
        assert_eq!(arg.value(), 0);
        assert_eq!(arg.value_two(), Some(CLONE_NAMESPACE_FLAGS));
        let clone3 = rules_for(&filter, "clone3");
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(38));
    }

    #[test]
    fn capabilities_open_gated_calls() {
        let mut caps = docker_caps();
        caps.insert(Capability::SysAdmin);
        let filter = default_filter(&caps).unwrap();
        let clone = rules_for(&filter, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none());
        assert_eq!(rules_for(&filter, "mount").len(), 1);
        assert!(rules_for(&filter, "reboot").is_empty());
    }

    #[test]
    fn personality_values_are_limited() {
        let filter = default_filter(&docker_caps()).unwrap();
        let values: Vec<u64> = rules_for(&filter, "personality")
            .iter()
            .map(|rule| rule.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(values, PERSONALITY_VALUES.to_vec());
    }

    #[test]
    fn docker_file_keeps_matching_rules_and_swaps_masks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profile.json");
        std::fs::write(
            &path,
            r#"{
              "defaultAction": "SCMP_ACT_ERRNO",
              "defaultErrnoRet": 1,
              "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}],
              "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chroot"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_CHROOT"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                           "op": "SCMP_CMP_MASKED_EQ"}],
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"name": "write", "action": "SCMP_ACT_ALLOW",
                 "includes": {"arches": ["s390x"]}}
              ]
            }"#,
        )
        .unwrap();
        let filter = load_file(&path, &docker_caps()).unwrap();
        let names: Vec<String> = filter
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|rule| rule.names().clone())
            .collect();
        assert_eq!(names, vec!["read", "chroot", "clone"]);
        let clone = rules_for(&filter, "clone");
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.value(), 0);
        assert_eq!(arg.value_two(), Some(CLONE_NAMESPACE_FLAGS));
    }

    #[test]
    fn invalid_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
        let error = format!("{:#}", load_file(&path, &docker_caps()).unwrap_err());
        assert!(error.contains("bad.json"), "{error}");
        let missing = dir.path().join("missing.json");
        let error = format!("{:#}", load_file(&missing, &docker_caps()).unwrap_err());
        assert!(error.contains("missing.json"), "{error}");
    }
}
