//! OCI runtime spec (`config.json`) for a sandbox, built from an image config, a command line
//! and a security profile.

mod user;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use libcontainer::oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths,
    get_default_mounts, get_default_readonly_paths,
};
use libcontainer::oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType};

use crate::profile::{Limits, NetworkMode, Overrides, Profile};
pub use user::resolve_user;

/// `PATH` for images whose config does not set one; libcontainer's default executor rejects a
/// process environment without `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Mount point of the host working directory in the permissive profile.
pub const WORKSPACE_DIR: &str = "/workspace";

/// Mount point of the host home directory in the permissive profile.
pub const HOST_HOME_DIR: &str = "/home/user";

/// CFS period used to turn a CPU count into a quota, in microseconds (Docker's `--cpus` uses
/// the same).
const CPU_PERIOD_US: u64 = 100_000;

/// Soft and hard `RLIMIT_NOFILE` of the container process.
const NOFILE_LIMIT: u64 = 1024;

/// The parts of an OCI image config that decide how its process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageRunConfig {
    /// `Env`: `KEY=value` entries.
    pub env: Vec<String>,
    /// `WorkingDir`; `None` or empty means `/`.
    pub working_dir: Option<String>,
    /// `User`: `user`, `uid`, `user:group` or `uid:gid`; `None` or empty means root.
    pub user: Option<String>,
    /// `Entrypoint`, prepended to the command.
    pub entrypoint: Vec<String>,
    /// `Cmd`, used when the command line has no command.
    pub cmd: Vec<String>,
}

/// Everything [`build_spec`] needs to describe one sandbox.
#[derive(Clone, Debug)]
pub struct SpecInput<'a> {
    /// Image config of the image the sandbox runs.
    pub image: &'a ImageRunConfig,
    /// Command from the command line; replaces the image `Cmd` unless empty.
    pub command: &'a [String],
    /// Security profile.
    pub profile: Profile,
    /// Changes to the profile's defaults.
    pub overrides: &'a Overrides,
    /// Root filesystem (the mounted overlay); `/etc/passwd` and `/etc/group` are read from it.
    pub rootfs: &'a Path,
    /// Cgroup path relative to each hierarchy root, such as `/agentkernel/<id>`.
    pub cgroups_path: String,
    /// Host directory mounted read-write at `/workspace` by the permissive profile.
    pub host_cwd: Option<PathBuf>,
    /// Host directory mounted read-only at `/home/user` by the permissive profile.
    pub host_home: Option<PathBuf>,
    /// Hostname inside the UTS namespace, also exported as `HOSTNAME`.
    pub hostname: &'a str,
    /// `TERM` value to export; set it only when the host's stdout is a terminal.
    pub term: Option<String>,
    /// Host directory that contains `hosts`, `hostname` and `resolv.conf`, each bound read-only
    /// onto the same name in the container's `/etc`; `None` leaves the image's files.
    pub etc_dir: Option<&'a Path>,
}

/// Builds the OCI runtime spec of a sandbox.
///
/// Every profile gets new pid, mount, ipc, uts and cgroup namespaces, Docker's default
/// capabilities, `no_new_privileges`, `RLIMIT_NOFILE` 1024, a device cgroup that denies all but
/// the standard devices, runc's masked and read-only paths, a seccomp filter (see
/// [`crate::seccomp`]) and the profile's cgroup limits.
pub fn build_spec(input: &SpecInput) -> anyhow::Result<Spec> {
    let args = command_args(input.image, input.command)?;
    let user = resolve_user(input.rootfs, input.image.user.as_deref())?;
    let workspace = workspace_mounts(input)?;
    let cwd = if let Some(workdir) = &input.overrides.workdir {
        if !workdir.starts_with('/') {
            bail!("invalid working directory {workdir:?}: it must be an absolute path");
        }
        workdir.clone()
    } else if workspace.is_empty() || input.host_cwd.is_none() {
        working_dir(input.image)
    } else {
        WORKSPACE_DIR.to_string()
    };
    let caps = capability_set(input.profile);
    let seccomp = match &input.overrides.seccomp {
        Some(path) => crate::seccomp::load_file(path, &caps)?,
        None => crate::seccomp::default_filter(&caps)?,
    };
    let network = input.overrides.network(input.profile);
    let limits = input.overrides.limits(input.profile);

    let process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(process_env(input, user.home.as_deref()))
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        )
        .capabilities(capabilities(caps)?)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(NOFILE_LIMIT)
                .hard(NOFILE_LIMIT)
                .build()?,
        ])
        .no_new_privileges(true)
        .build()?;

    let mut mounts = get_default_mounts();
    mounts.extend(etc_mounts(input.etc_dir)?);
    if input.profile.read_only_root() {
        mounts.push(
            MountBuilder::default()
                .destination("/tmp")
                .typ("tmpfs")
                .source("tmpfs")
                .options(strings(&["nosuid", "nodev", "mode=1777", "size=64m"]))
                .build()?,
        );
    }
    mounts.extend(workspace);
    for volume in &input.overrides.volumes {
        mounts.push(bind_mount(
            &volume.host,
            &volume.container,
            volume.read_only,
        )?);
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces(network)?)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(
            resources(&limits)
                .with_context(|| format!("invalid limits for {:?}", input.profile))?,
        )
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(readonly_paths())
        .seccomp(seccomp)
        .build()?;

    let mut spec = Spec::default();
    spec.set_hostname(Some(input.hostname.to_string()))
        .set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(input.profile.read_only_root())
                .build()?,
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    Ok(spec)
}

/// Returns the process arguments the way `docker run IMAGE COMMAND...` does: `Entrypoint`
/// followed by the command, or by `Cmd` when the command is empty.
fn command_args(image: &ImageRunConfig, command: &[String]) -> anyhow::Result<Vec<String>> {
    let tail = if command.is_empty() {
        &image.cmd
    } else {
        command
    };
    let args: Vec<String> = image.entrypoint.iter().chain(tail).cloned().collect();
    if args.is_empty() {
        bail!("no command given and the image config has neither Entrypoint nor Cmd");
    }
    Ok(args)
}

fn working_dir(image: &ImageRunConfig) -> String {
    match image.working_dir.as_deref() {
        Some(dir) if !dir.is_empty() => dir.to_string(),
        _ => "/".to_string(),
    }
}

/// Returns the image `Env` with later duplicates winning, plus `PATH`, `HOSTNAME`, `HOME` (the
/// passwd entry's or `/`, as Docker does) and `TERM` where the image does not set them.
fn process_env(input: &SpecInput, home: Option<&str>) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        match env
            .iter_mut()
            .find(|existing| existing.split('=').next() == Some(key.as_str()))
        {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    };
    for entry in input.image.env.iter().chain(&input.overrides.env) {
        set(entry.clone());
    }
    let has =
        |env: &[String], key: &str| env.iter().any(|entry| entry.split('=').next() == Some(key));
    let mut defaults = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", input.hostname),
        format!(
            "HOME={}",
            home.filter(|home| !home.is_empty()).unwrap_or("/")
        ),
    ];
    if let Some(term) = &input.term {
        defaults.push(format!("TERM={term}"));
    }
    for entry in defaults {
        let key = entry.split('=').next().unwrap_or_default();
        if !has(&env, key) {
            env.push(entry);
        }
    }
    env
}

/// Returns Docker's default capability set, without `CAP_NET_RAW` for the restrictive profile.
pub(crate) fn capability_set(profile: Profile) -> HashSet<Capability> {
    let mut caps: HashSet<Capability> = [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect();
    if profile.drops_net_raw() {
        caps.remove(&Capability::NetRaw);
    }
    caps
}

/// Returns `caps` as bounding, effective and permitted set; the inheritable and ambient sets
/// stay empty.
fn capabilities(
    caps: HashSet<Capability>,
) -> anyhow::Result<libcontainer::oci_spec::runtime::LinuxCapabilities> {
    Ok(LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?)
}

fn namespaces(network: NetworkMode) -> anyhow::Result<Vec<LinuxNamespace>> {
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if network.has_namespace() {
        types.push(LinuxNamespaceType::Network);
    }
    types
        .into_iter()
        .map(|typ| Ok(LinuxNamespaceBuilder::default().typ(typ).build()?))
        .collect()
}

fn resources(limits: &Limits) -> anyhow::Result<libcontainer::oci_spec::runtime::LinuxResources> {
    let mut builder = LinuxResourcesBuilder::default()
        .devices(device_rules()?)
        .pids(LinuxPidsBuilder::default().limit(limits.pids).build()?);
    if let Some(bytes) = limits.memory_bytes {
        let bytes = i64::try_from(bytes).context("memory limit does not fit in i64")?;
        // Swap equal to the limit means no swap, so a process over the limit is OOM-killed.
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if let Some(cpus) = limits.cpus {
        let quota = (cpus * CPU_PERIOD_US as f64).round() as i64;
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    Ok(builder.build()?)
}

/// Returns a deny-all device rule followed by runc's default allowed devices. Without the
/// deny-all rule a cgroup v1 `devices` controller keeps the parent's `a *:* rwm`.
fn device_rules() -> anyhow::Result<Vec<LinuxDeviceCgroup>> {
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ];
    // (major, minor, access): null, zero, full, tty, urandom, random, /dev/pts/*, ptmx.
    let allowed: [(i64, Option<i64>, &str); 8] = [
        (1, Some(3), "rwm"),
        (1, Some(5), "rwm"),
        (1, Some(7), "rwm"),
        (5, Some(0), "rwm"),
        (1, Some(9), "rwm"),
        (1, Some(8), "rwm"),
        (136, None, "rwm"),
        (5, Some(2), "rwm"),
    ];
    for (major, minor, access) in allowed {
        let mut builder = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access(access);
        if let Some(minor) = minor {
            builder = builder.minor(minor);
        }
        rules.push(builder.build()?);
    }
    Ok(rules)
}

/// Cgroup v1 controller mount points inside the container.
///
/// libcontainer 0.7 mounts each v1 controller of the sandbox's cgroup at
/// `/sys/fs/cgroup/<controller>` without applying the spec's `ro` option, so a process in
/// the sandbox could write `memory.limit_in_bytes` or `pids.max` and lift its own limits.
/// Listing them as read-only paths makes libcontainer remount each one read-only after
/// the mounts are made; paths that do not exist (v2 hosts, absent controllers) are skipped.
const CGROUP_V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
    "systemd",
    "unified",
];

/// runc's read-only paths, plus the cgroup file system and each v1 controller under it.
fn readonly_paths() -> Vec<String> {
    let mut paths = get_default_readonly_paths();
    paths.push("/sys/fs/cgroup".to_owned());
    for controller in CGROUP_V1_CONTROLLERS {
        paths.push(format!("/sys/fs/cgroup/{controller}"));
    }
    paths
}

fn etc_mounts(etc_dir: Option<&Path>) -> anyhow::Result<Vec<Mount>> {
    let Some(dir) = etc_dir else {
        return Ok(Vec::new());
    };
    ["hosts", "hostname", "resolv.conf"]
        .into_iter()
        .map(|name| bind_mount(&dir.join(name), &format!("/etc/{name}"), true))
        .collect()
}

fn workspace_mounts(input: &SpecInput) -> anyhow::Result<Vec<Mount>> {
    if !input.overrides.mounts_workspace(input.profile) {
        return Ok(Vec::new());
    }
    let mut mounts = Vec::new();
    if let Some(cwd) = &input.host_cwd {
        mounts.push(bind_mount(cwd, WORKSPACE_DIR, false)?);
    }
    if let Some(home) = &input.host_home {
        mounts.push(bind_mount(home, HOST_HOME_DIR, true)?);
    }
    Ok(mounts)
}

fn bind_mount(source: &Path, destination: &str, read_only: bool) -> anyhow::Result<Mount> {
    let mode = if read_only { "ro" } else { "rw" };
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(strings(&["rbind", mode, "nosuid", "nodev"]))
        .build()?)
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_OVERRIDES: Overrides = Overrides {
        network: None,
        memory_bytes: None,
        cpus: None,
        mount_cwd: None,
        seccomp: None,
        env: Vec::new(),
        volumes: Vec::new(),
        workdir: None,
    };

    fn image() -> ImageRunConfig {
        ImageRunConfig {
            env: vec!["PATH=/opt/bin:/bin".into(), "LANG=C.UTF-8".into()],
            working_dir: Some("/srv".into()),
            user: None,
            entrypoint: vec![],
            cmd: vec!["sh".into()],
        }
    }

    fn input<'a>(
        image: &'a ImageRunConfig,
        command: &'a [String],
        profile: Profile,
        rootfs: &'a Path,
    ) -> SpecInput<'a> {
        SpecInput {
            image,
            command,
            profile,
            overrides: &NO_OVERRIDES,
            rootfs,
            cgroups_path: "/agentkernel/t1".into(),
            host_cwd: Some(PathBuf::from("/home/someone/project")),
            host_home: Some(PathBuf::from("/home/someone")),
            hostname: "agentkernel",
            term: None,
            etc_dir: Some(Path::new("/run/sandbox/etc")),
        }
    }

    fn args(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().args().clone().unwrap()
    }

    fn env(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().env().clone().unwrap()
    }

    fn mount_destinations(spec: &Spec) -> Vec<String> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|mount| mount.destination().display().to_string())
            .collect()
    }

    fn cmd(values: &[&str]) -> Vec<String> {
        strings(values)
    }

    #[test]
    fn args_follow_docker_run() {
        let rootfs = tempfile::tempdir().unwrap();
        let mut image = image();
        let empty: Vec<String> = vec![];
        let spec = build_spec(&input(&image, &empty, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(args(&spec), cmd(&["sh"]));

        let command = cmd(&["echo", "hi"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(args(&spec), command);

        image.entrypoint = cmd(&["/entry", "--flag"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(args(&spec), cmd(&["/entry", "--flag", "echo", "hi"]));
        let spec = build_spec(&input(&image, &empty, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(args(&spec), cmd(&["/entry", "--flag", "sh"]));

        image.entrypoint.clear();
        image.cmd.clear();
        let error = build_spec(&input(&image, &empty, Profile::Moderate, rootfs.path()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither Entrypoint nor Cmd"), "{error}");
    }

    #[test]
    fn env_adds_hostname_and_keeps_image_path() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(
            env(&spec),
            cmd(&[
                "PATH=/opt/bin:/bin",
                "LANG=C.UTF-8",
                "HOSTNAME=agentkernel",
                "HOME=/"
            ])
        );
    }

    #[test]
    fn env_adds_default_path_and_term() {
        let rootfs = tempfile::tempdir().unwrap();
        let mut image = image();
        image.env = cmd(&["A=1", "A=2", "EMPTY="]);
        let command = cmd(&["true"]);
        let mut spec_input = input(&image, &command, Profile::Moderate, rootfs.path());
        spec_input.term = Some("xterm-256color".into());
        let spec = build_spec(&spec_input).unwrap();
        assert_eq!(
            env(&spec),
            vec![
                "A=2".to_string(),
                "EMPTY=".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=agentkernel".to_string(),
                "HOME=/".to_string(),
                "TERM=xterm-256color".to_string(),
            ]
        );
    }

    #[test]
    fn user_and_cwd_come_from_image() {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("etc")).unwrap();
        std::fs::write(
            rootfs.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(rootfs.path().join("etc/group"), "web:x:33:\nlogs:x:4:web\n").unwrap();
        let mut image = image();
        image.user = Some("web".into());
        let command = cmd(&["id"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.user().uid(), 33);
        assert_eq!(process.user().gid(), 33);
        assert_eq!(process.user().additional_gids(), &Some(vec![4]));
        assert_eq!(process.cwd(), Path::new("/srv"));
        assert!(env(&spec).contains(&"HOME=/var/www".to_string()));

        image.working_dir = None;
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/"));
    }

    #[test]
    fn common_security_settings() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("agentkernel"));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().unwrap();
        let effective = caps.effective().as_ref().unwrap();
        assert_eq!(effective.len(), 14);
        assert!(effective.contains(&Capability::NetRaw));
        assert!(!effective.contains(&Capability::SysAdmin));
        assert_eq!(caps.bounding(), caps.effective());
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        let rlimit = &process.rlimits().as_ref().unwrap()[0];
        assert_eq!(rlimit.typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((rlimit.soft(), rlimit.hard()), (1024, 1024));

        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/agentkernel/t1"))
        );
        let devices = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(!devices[0].allow());
        assert_eq!(devices[0].access().as_deref(), Some("rwm"));
        assert_eq!(devices[0].major(), None);
        assert!(devices[1..].iter().all(|rule| rule.allow()));
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        assert!(
            linux
                .readonly_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/sys".to_string())
        );
        let destinations = mount_destinations(&spec);
        for expected in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
        ] {
            assert!(destinations.contains(&expected.to_string()), "{expected}");
        }
        let hosts = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|mount| mount.destination() == Path::new("/etc/hosts"))
            .unwrap();
        assert_eq!(
            hosts.source().as_deref(),
            Some(Path::new("/run/sandbox/etc/hosts"))
        );
        assert!(
            hosts
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
    }

    #[test]
    fn restrictive_profile_isolates_network_and_root() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let spec = build_spec(&input(
            &image,
            &command,
            Profile::Restrictive,
            rootfs.path(),
        ))
        .unwrap();
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let namespaces: Vec<LinuxNamespaceType> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|namespace| namespace.typ())
            .collect();
        assert!(namespaces.contains(&LinuxNamespaceType::Network));
        assert!(namespaces.contains(&LinuxNamespaceType::Pid));
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        assert!(
            !caps
                .effective()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetRaw)
        );
        assert_eq!(caps.effective().as_ref().unwrap().len(), 13);

        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(
            resources.memory().as_ref().unwrap().limit(),
            Some(268_435_456)
        );
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(resources.cpu().as_ref().unwrap().period(), Some(100_000));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 256);

        let tmp = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|mount| mount.destination() == Path::new("/tmp"))
            .unwrap();
        assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
        assert_eq!(
            tmp.options().as_ref().unwrap(),
            &cmd(&["nosuid", "nodev", "mode=1777", "size=64m"])
        );
        assert!(!mount_destinations(&spec).contains(&WORKSPACE_DIR.to_string()));
    }

    #[test]
    fn overrides_apply_to_spec() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let overrides = Overrides {
            network: Some(NetworkMode::Host),
            memory_bytes: Some(268_435_456),
            cpus: Some(0.25),
            env: cmd(&["LANG=en_US.UTF-8", "EXTRA=1"]),
            volumes: vec!["/etc:/data:ro".parse().unwrap()],
            workdir: Some("/data".into()),
            ..Overrides::default()
        };
        let mut spec_input = input(&image, &command, Profile::Moderate, rootfs.path());
        spec_input.overrides = &overrides;
        let spec = build_spec(&spec_input).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.cwd(), Path::new("/data"));
        let env = env(&spec);
        assert!(env.contains(&"LANG=en_US.UTF-8".to_string()));
        assert!(!env.contains(&"LANG=C.UTF-8".to_string()));
        assert!(env.contains(&"EXTRA=1".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .all(|namespace| namespace.typ() != LinuxNamespaceType::Network)
        );
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(
            resources.memory().as_ref().unwrap().limit(),
            Some(268_435_456)
        );
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(25_000));
        let data = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|mount| mount.destination() == Path::new("/data"))
            .unwrap();
        assert_eq!(data.source().as_deref(), Some(Path::new("/etc")));
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));

        let relative = Overrides {
            workdir: Some("data".into()),
            ..Overrides::default()
        };
        spec_input.overrides = &relative;
        let error = build_spec(&spec_input).unwrap_err().to_string();
        assert!(error.contains("\"data\""), "{error}");
    }

    #[test]
    fn seccomp_filter_is_set() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(seccomp.default_errno_ret(), Some(1));
        assert_eq!(seccomp.architectures(), &None);
    }

    #[test]
    fn moderate_profile_isolates_network() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let spec = build_spec(&input(&image, &command, Profile::Moderate, rootfs.path())).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|namespace| namespace.typ() == LinuxNamespaceType::Network)
        );
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(
            resources.memory().as_ref().unwrap().limit(),
            Some(536_870_912)
        );
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(100_000));
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 1024);
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
        assert!(!mount_destinations(&spec).contains(&"/tmp".to_string()));
    }

    #[test]
    fn permissive_profile_mounts_workspace() {
        let rootfs = tempfile::tempdir().unwrap();
        let image = image();
        let command = cmd(&["true"]);
        let spec =
            build_spec(&input(&image, &command, Profile::Permissive, rootfs.path())).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().cwd(),
            Path::new(WORKSPACE_DIR)
        );

        let mounts = spec.mounts().as_ref().unwrap();
        let workspace = mounts
            .iter()
            .find(|mount| mount.destination() == Path::new(WORKSPACE_DIR))
            .unwrap();
        assert_eq!(
            workspace.source().as_deref(),
            Some(Path::new("/home/someone/project"))
        );
        assert!(
            workspace
                .options()
                .as_ref()
                .unwrap()
                .contains(&"rw".to_string())
        );
        let home = mounts
            .iter()
            .find(|mount| mount.destination() == Path::new(HOST_HOME_DIR))
            .unwrap();
        assert!(home.options().as_ref().unwrap().contains(&"ro".to_string()));

        let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert!(resources.memory().is_none());
        assert!(resources.cpu().is_none());
        assert_eq!(resources.pids().as_ref().unwrap().limit(), 4096);
    }
}
