//! Sandbox runs against the real kernel and libcontainer. They need root and a busybox-static
//! binary at /bin/busybox; cgroup paths assume the cgroup v1 layout
//! (`/sys/fs/cgroup/<controller>/agentkernel/<id>`).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cleanup::sandbox_cgroups;
use super::testutil::{TestEnv, require_root, run_captured, run_lock, run_text, snapshot};
use super::{RunError, SandboxRequest, StdioMode, remove, run_with_stdio};
use crate::profile::Profile;

/// Docker's default capability set as a `/proc/<pid>/status` mask.
const DOCKER_CAPS: &str = "00000000a80425fb";
/// Docker's default set without `CAP_NET_RAW` (bit 13).
const DOCKER_CAPS_WITHOUT_NET_RAW: &str = "00000000a80405fb";

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

/// Returns the value of `key:` in `/proc/<pid>/status`-style text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .trim()
}

/// Asserts that nothing of the sandbox is left: sandbox dir, mounts, state, cgroups.
fn assert_removed(env: &TestEnv, request: &SandboxRequest) {
    assert!(
        !request.sandbox_dir.exists(),
        "{} left behind",
        request.sandbox_dir.display()
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&request.id),
        "mount of {} left: {mountinfo}",
        request.id
    );
    assert!(!env.state_root().join(&request.id).exists());
    assert_eq!(
        sandbox_cgroups(&request.id).unwrap(),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn echo_hello() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["echo", "hello"], Profile::Moderate);
    let (status, stdout, stderr) = run_text(request.clone());
    assert_eq!(stdout, "hello\n");
    assert_eq!(stderr, "");
    assert_eq!(status, 0);
    assert_removed(&env, &request);
}

#[test]
fn run_restores_dumpable_flag() {
    if !require_root() {
        return;
    }
    // ContainerBuilder::build clears the dumpable flag of the calling process. The flag is
    // process-wide, so it is read under the run lock, while no other test builds a container.
    let dumpable = || {
        let _guard = run_lock();
        nix::sys::prctl::get_dumpable().unwrap()
    };
    assert!(dumpable());
    let env = TestEnv::new();
    let (status, _, _) = run_text(env.request(&["true"], Profile::Moderate));
    assert_eq!(status, 0);
    assert!(dumpable());
}

#[test]
fn stdout_stderr_and_exit_code() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, stderr) =
        run_text(env.request(&sh("echo out; echo err >&2; exit 7"), Profile::Moderate));
    assert_eq!(stdout, "out\n");
    assert_eq!(stderr, "err\n");
    assert_eq!(status, 7);
}

#[test]
fn signal_death_is_128_plus_signal() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, _, _) = run_text(env.request(&sh("kill -9 $$"), Profile::Moderate));
    assert_eq!(status, 137);
}

#[test]
fn missing_command_is_127() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["no-such-command", "arg"], Profile::Moderate);
    match run_captured(request.clone()) {
        Err(RunError::Exec { code, message }) => {
            assert_eq!(code, 127);
            assert!(message.contains("no-such-command"), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
    assert_removed(&env, &request);
}

#[test]
fn non_executable_is_126() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["/etc/data.txt"], Profile::Moderate);
    match run_captured(request.clone()) {
        Err(RunError::Exec { code, message }) => {
            assert_eq!(code, 126);
            assert!(message.contains("/etc/data.txt"), "{message}");
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
    assert_removed(&env, &request);
}

#[test]
fn hostname_and_etc_files() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, _) = run_text(env.request(
        &sh("hostname; echo $HOSTNAME; cat /etc/hostname; grep -c agentkernel /etc/hosts"),
        Profile::Moderate,
    ));
    assert_eq!(stdout, "agentkernel\nagentkernel\nagentkernel\n1\n");
    assert_eq!(status, 0);

    let (status, stdout, _) = run_text(env.request(&["cat", "/etc/hosts"], Profile::Restrictive));
    assert_eq!(
        stdout,
        "127.0.0.1\tlocalhost agentkernel\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    );
    assert_eq!(status, 0);
    let (status, _, stderr) = run_text(env.request(&sh("echo x > /etc/hosts"), Profile::Moderate));
    assert_ne!(status, 0);
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

#[test]
fn restrictive_root_is_read_only() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, _, stderr) = run_text(env.request(&["touch", "/x"], Profile::Restrictive));
    assert_ne!(status, 0);
    assert!(stderr.contains("Read-only file system"), "{stderr}");

    let (status, stdout, _) = run_text(env.request(
        &sh("echo data > /tmp/file && cat /tmp/file && stat -c %a /tmp && grep ' /tmp ' /proc/mounts"),
        Profile::Restrictive,
    ));
    assert_eq!(status, 0);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("data"));
    assert_eq!(lines.next(), Some("1777"));
    let tmp_mount = lines.next().unwrap();
    assert!(
        tmp_mount.starts_with("tmpfs /tmp tmpfs rw,nosuid,nodev"),
        "{tmp_mount}"
    );
    assert!(tmp_mount.contains("size=65536k"), "{tmp_mount}");
}

#[test]
fn restrictive_network_has_only_lo_up() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, stderr) = run_text(env.request(
        &sh("ls /sys/class/net; cat /sys/class/net/lo/operstate; ip link"),
        Profile::Restrictive,
    ));
    assert_eq!(status, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "lo");
    assert_eq!(lines[1], "unknown");
    assert!(
        lines[2].starts_with("1: lo: <LOOPBACK,UP,LOWER_UP>"),
        "{stdout}"
    );
    let interfaces = lines[2..]
        .iter()
        .filter(|line| !line.starts_with(' '))
        .count();
    assert_eq!(interfaces, 1, "only lo expected: {stdout}");

    let (status, stdout, _) = run_text(env.request(
        &sh("ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; echo ping=$?; nc -z -w 1 10.0.2.2 22; echo nc=$?"),
        Profile::Restrictive,
    ));
    assert_eq!(status, 0);
    // ping needs CAP_NET_RAW, which the restrictive profile drops.
    assert!(stdout.contains("ping=1"), "{stdout}");
    assert!(stdout.contains("nc=1"), "{stdout}");
}

#[test]
fn permissive_shares_host_network() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, _) = run_text(env.request(&["ls", "/sys/class/net"], Profile::Permissive));
    assert_eq!(status, 0);
    // Host links of other tests' isolated sandboxes (`ak` + 8 hex digits) come and go while
    // this test runs, so they are left out on both sides.
    let sandbox_link = |name: &str| {
        name.len() == 10
            && name.starts_with("ak")
            && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !sandbox_link(name))
        .collect();
    host.sort();
    let mut inside: Vec<String> = stdout
        .lines()
        .filter(|name| !sandbox_link(name))
        .map(str::to_string)
        .collect();
    inside.sort();
    assert!(host.iter().any(|name| name == "lo"), "{host:?}");
    assert_eq!(inside, host);
}

#[test]
fn security_settings_in_status() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    for (profile, caps) in [
        (Profile::Moderate, DOCKER_CAPS),
        (Profile::Restrictive, DOCKER_CAPS_WITHOUT_NET_RAW),
        (Profile::Permissive, DOCKER_CAPS),
    ] {
        let (status, stdout, _) = run_text(env.request(&["cat", "/proc/self/status"], profile));
        assert_eq!(status, 0);
        assert_eq!(status_field(&stdout, "NoNewPrivs"), "1", "{profile:?}");
        assert_eq!(status_field(&stdout, "CapEff"), caps, "{profile:?}");
        assert_eq!(status_field(&stdout, "CapBnd"), caps, "{profile:?}");
        assert_eq!(status_field(&stdout, "CapInh"), "0000000000000000");
        assert_eq!(status_field(&stdout, "CapAmb"), "0000000000000000");
        // SIGPIPE and all other signals have their default action.
        assert_eq!(status_field(&stdout, "SigIgn"), "0000000000000000");
        assert_eq!(status_field(&stdout, "SigBlk"), "0000000000000000");
    }
}

#[test]
fn namespaces_limits_and_masks() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let script = "echo pid=$$; ulimit -n; cat /proc/self/cgroup | grep -c ':/$'; \
                  cat /sys/fs/cgroup/memory/memory.limit_in_bytes \
                      /sys/fs/cgroup/pids/pids.max \
                      /sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
                  wc -c < /proc/timer_list; echo 1 > /proc/sys/kernel/domainname; echo sys=$?; \
                  cat /sys/fs/cgroup/devices/devices.list";
    let (status, stdout, stderr) = run_text(env.request(&sh(script), Profile::Restrictive));
    assert_eq!(status, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    // PID 1 is the sandbox init; the command is its first child.
    assert_eq!(lines[0], "pid=2");
    assert_eq!(lines[1], "1024");
    // With a cgroup namespace every hierarchy shows the container's cgroup as its root.
    let hierarchies: usize = lines[2].parse().unwrap();
    assert!(hierarchies >= 8, "{stdout}");
    assert_eq!(lines[3], "268435456");
    assert_eq!(lines[4], "256");
    assert_eq!(lines[5], "50000");
    assert_eq!(lines[6], "0", "masked /proc/timer_list is not empty");
    assert_eq!(lines[7], "sys=1", "/proc/sys is writable");
    let devices = &lines[8..];
    assert!(!devices.contains(&"a *:* rwm"), "{stdout}");
    for device in ["c 1:3 rwm", "c 1:5 rwm", "c 1:9 rwm", "c 136:* rwm"] {
        assert!(devices.contains(&device), "{device} missing: {stdout}");
    }
    // libcgroups adds runc's defaults after the spec's rules: mknod of any node, /dev/console
    // and /dev/net/tun. No block device may be read or written.
    let block_rules: Vec<&&str> = devices
        .iter()
        .filter(|rule| rule.starts_with("b "))
        .collect();
    assert_eq!(block_rules, vec![&"b *:* m"], "{stdout}");

    let (status, stdout, _) = run_text(env.request(
        &sh("cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/pids/pids.max"),
        Profile::Moderate,
    ));
    assert_eq!(status, 0);
    assert_eq!(stdout, "536870912\n100000\n1024\n");
    let (status, stdout, _) = run_text(env.request(
        &sh("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/pids/pids.max"),
        Profile::Permissive,
    ));
    assert_eq!(status, 0);
    assert_eq!(stdout, "-1\n4096\n");
}

#[test]
fn memory_limit_visible_from_host() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["sleep", "2"], Profile::Restrictive);
    let limit_file = Path::new("/sys/fs/cgroup/memory/agentkernel")
        .join(&request.id)
        .join("memory.limit_in_bytes");
    // Right after creation the file still shows the unlimited default. The last value read
    // before the cgroup disappears is the one in force while the command ran.
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        while Instant::now() < deadline {
            match std::fs::read_to_string(&limit_file) {
                Ok(limit) => last = Some(limit),
                Err(_) if last.is_some() => break,
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        last
    });
    let (status, _, _) = run_text(request.clone());
    assert_eq!(status, 0);
    assert_eq!(watcher.join().unwrap().as_deref(), Some("268435456\n"));
    assert_removed(&env, &request);
}

#[test]
fn memory_limit_kills_with_oom() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    // 400 MiB in one shell variable exceeds the restrictive profile's 256 MiB.
    let result = run_captured(env.request(
        &sh("x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}"),
        Profile::Restrictive,
    ));
    match result {
        Err(RunError::Killed { code, message }) => {
            assert_eq!(code, 137);
            assert_eq!(message, "out of memory (limit 256 MiB)");
        }
        other => panic!("expected an OOM kill, got {other:?}"),
    }
}

#[test]
fn moderate_network_is_isolated() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, stderr) = run_text(env.request(
        &sh("ls /sys/class/net; ip route | awk '/default/ {print $3}'"),
        Profile::Moderate,
    ));
    assert_eq!(status, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["eth0", "lo"]);
    assert!(lines[2].starts_with("10.200."), "{stdout}");
}

#[test]
fn seccomp_denies_namespace_clone() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    // The precompiled filter and libcontainer's own compilation of the spec must agree.
    for cache in [Some(env.dir.path().join("seccomp")), None] {
        // busybox's unshare calls unshare(2); a user namespace needs no capability, so only
        // the filter rejects it. The pipeline forks, which the clone rule must allow.
        let mut request = env.request(
            &sh("echo forked | cat; unshare -U true; echo $?; grep Seccomp: /proc/self/status"),
            Profile::Moderate,
        );
        request.seccomp_cache = cache.clone();
        let (status, stdout, stderr) = run_text(request);
        assert_eq!(status, 0, "{cache:?}: {stderr}");
        assert_eq!(stdout, "forked\n1\nSeccomp:\t2\n", "{cache:?}");
        assert!(
            stderr.contains("Operation not permitted"),
            "{cache:?}: {stderr}"
        );
    }
    let cached = std::fs::read_dir(env.dir.path().join("seccomp"))
        .unwrap()
        .count();
    assert_eq!(cached, 1);
}

#[test]
fn timeout_kills_sandbox() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut request = env.request(&["sleep", "30"], Profile::Moderate);
    request.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    let result = run_captured(request.clone());
    match result {
        Err(RunError::Killed { code, message }) => {
            assert_eq!(code, 124);
            assert_eq!(message, "timed out after 0.5 s: the sandbox was killed");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_removed(&env, &request);
}

#[test]
fn pids_limit_stops_fork() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let started = Instant::now();
    let (status, stdout, stderr) = run_text(env.request(
        &sh("for i in $(seq 300); do sleep 30 & done; echo all-started"),
        Profile::Restrictive,
    ));
    assert_eq!(stdout, "");
    assert!(stderr.contains("can't fork"), "{stderr}");
    assert_ne!(status, 0);
    // The sleeps die with the sandbox init.
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn lower_dirs_unchanged_and_upper_kept() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let before: Vec<_> = env.lowers.iter().map(|lower| snapshot(lower)).collect();
    let mut request = env.request(
        &sh("cat /etc/motd; rm /etc/motd /bin/ls; echo new > /etc/data.txt; chmod 700 /etc; mkdir /opt; echo created > /opt/file"),
        Profile::Moderate,
    );
    request.keep = true;
    let (status, stdout, stderr) = run_text(request.clone());
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "top\n");
    let after: Vec<_> = env.lowers.iter().map(|lower| snapshot(lower)).collect();
    assert!(before == after, "a lower directory changed");

    let upper = request.sandbox_dir.join("upper");
    assert_eq!(
        std::fs::read_to_string(upper.join("opt/file")).unwrap(),
        "created\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/data.txt")).unwrap(),
        "new\n"
    );
    // Whiteouts for removed lower files are character devices 0:0.
    let whiteout = std::fs::symlink_metadata(upper.join("bin/ls")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(whiteout.file_type().is_char_device());
    // A kept sandbox stays running until it is removed.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mountinfo.contains(&request.id), "merged is not mounted");
    assert!(env.state_root().join(&request.id).exists());
    assert!(!sandbox_cgroups(&request.id).unwrap().is_empty());

    remove(&request.sandbox_dir, &env.state_root(), &request.id).unwrap();
    assert_removed(&env, &request);
    remove(&request.sandbox_dir, &env.state_root(), &request.id).unwrap();
}

#[test]
fn mounts_hide_host_paths() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&sh("grep '^overlay / ' /proc/mounts"), Profile::Moderate);
    let (status, stdout, _) = run_text(request.clone());
    assert_eq!(status, 0);
    assert!(
        stdout.contains("lowerdir=../../top:../../base,upperdir=upper,workdir=work"),
        "{stdout}"
    );
    let host_dir = env.dir.path().to_string_lossy().into_owned();
    assert!(!stdout.contains(&host_dir), "{stdout}");
}

#[test]
fn image_config_user_env_and_workdir() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut request = env.request(&[], Profile::Moderate);
    request.image.entrypoint = vec!["sh".into(), "-c".into()];
    request.image.cmd =
        vec!["id -u; id -g; id -G; pwd; echo $PATH; echo $GREETING; echo $HOME".into()];
    request.image.env = vec!["GREETING=hi".into()];
    request.image.user = Some("app".into());
    request.image.working_dir = Some("/srv/app".into());
    let (status, stdout, stderr) = run_text(request);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(
        stdout,
        "1000\n1000\n1000 10\n/srv/app\n\
         /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nhi\n/home/app\n"
    );

    let mut request = env.request(&["id", "-u"], Profile::Moderate);
    request.image.user = Some("4242:77".into());
    let (status, stdout, _) = run_text(request);
    assert_eq!(status, 0);
    assert_eq!(stdout, "4242\n");

    let mut request = env.request(&["true"], Profile::Moderate);
    request.image.user = Some("nosuchuser".into());
    let error = run_captured(request.clone()).unwrap_err().to_string();
    assert!(error.contains("user \"nosuchuser\" not found"), "{error}");
    assert_removed(&env, &request);
}

#[test]
fn stdin_pipe_reaches_command() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (reader, writer) = nix::unistd::pipe().unwrap();
    std::fs::File::from(writer)
        .write_all(b"piped input\n")
        .unwrap();
    let _guard = run_lock();
    let outcome = run_with_stdio(
        env.request(&["cat"], Profile::Moderate),
        StdioMode::Capture {
            stdin: Some(reader),
        },
    )
    .unwrap();
    assert_eq!(outcome.status, 0);
    assert_eq!(outcome.stdout, b"piped input\n");
}

#[test]
fn sigpipe_has_default_action() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let (status, stdout, stderr) = run_text(env.request(&sh("yes | head -n 1"), Profile::Moderate));
    assert_eq!(stdout, "y\n");
    assert_eq!(stderr, "");
    assert_eq!(status, 0);
}

#[test]
fn permissive_mounts_workspace_and_home() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let cwd = std::env::current_dir().unwrap();
    let marker = cwd.read_dir().unwrap().next().unwrap().unwrap().file_name();
    let marker = marker.to_string_lossy();
    let script = format!(
        "pwd; test -e /workspace/{marker} && echo found; grep -E ' /(workspace|home/user) ' /proc/mounts | cut -d' ' -f2,4 | cut -d, -f1"
    );
    let (status, stdout, stderr) = run_text(env.request(&sh(&script), Profile::Permissive));
    assert_eq!(status, 0, "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("/workspace"));
    assert_eq!(lines.next(), Some("found"));
    let mounts: Vec<&str> = lines.collect();
    assert!(mounts.contains(&"/workspace rw"), "{stdout}");
    if std::env::var_os("HOME").is_some() {
        assert!(mounts.contains(&"/home/user ro"), "{stdout}");
    }

    let (status, stdout, _) = run_text(env.request(&["ls", "/"], Profile::Moderate));
    assert_eq!(status, 0);
    assert!(!stdout.lines().any(|line| line == "workspace"), "{stdout}");
}

#[test]
fn no_process_left_behind() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&sh("sleep 4242 & echo started"), Profile::Moderate);
    let (status, stdout, _) = run_text(request.clone());
    assert_eq!(status, 0);
    assert_eq!(stdout, "started\n");
    for entry in std::fs::read_dir("/proc").unwrap() {
        let cmdline = std::fs::read(entry.unwrap().path().join("cmdline")).unwrap_or_default();
        assert!(
            !cmdline.ends_with(b"sleep\x004242\x00"),
            "sleep 4242 still runs"
        );
    }
    assert_removed(&env, &request);
}

#[test]
fn remove_kills_running_sandbox() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["sleep", "4244"], Profile::Moderate);
    let runner = {
        let request = request.clone();
        std::thread::spawn(move || run_text(request))
    };
    // The command runs only after the network setup, so the wait is for the command itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_dir("/proc").unwrap().any(|entry| {
        std::fs::read(entry.unwrap().path().join("cmdline")).unwrap_or_default()
            == b"sleep\x004244\x00"
    }) {
        assert!(Instant::now() < deadline, "container did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    if let Err(error) = remove(&request.sandbox_dir, &env.state_root(), &request.id) {
        panic!("remove failed: {error:?}");
    }
    let (status, _, _) = runner.join().unwrap();
    assert_eq!(status, 137);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_removed(&env, &request);
}

#[test]
fn forwarded_signal_reaches_trap() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(
        &sh("trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done"),
        Profile::Moderate,
    );
    let id = request.id.clone();
    let sender = std::thread::spawn(move || send_when_running(&id, &[Signal::SIGTERM]));
    let (status, stdout, _) = run_text(request);
    sender.join().unwrap();
    assert_eq!(stdout, "ready\ngot-term\n");
    assert_eq!(status, 3);
}

#[test]
fn second_signal_kills_container() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(
        &sh("trap '' INT TERM; echo ready; sleep 30"),
        Profile::Moderate,
    );
    let id = request.id.clone();
    let sender =
        std::thread::spawn(move || send_when_running(&id, &[Signal::SIGINT, Signal::SIGTERM]));
    let started = Instant::now();
    let (status, stdout, _) = run_text(request);
    sender.join().unwrap();
    assert_eq!(stdout, "ready\n");
    assert_eq!(status, 137);
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Waits until container `id` has processes, then sends `signals` to this process, 200 ms
/// apart. The run's handlers catch them and forward them to the container.
fn send_when_running(id: &str, signals: &[Signal]) {
    let procs = Path::new("/sys/fs/cgroup/pids/agentkernel")
        .join(id)
        .join("cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&procs)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "container did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Give the shell time to start and install its trap.
    std::thread::sleep(Duration::from_millis(300));
    for sig in signals {
        kill(Pid::this(), *sig).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn many_layers_mount() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut request = env.request(&sh("cat /layer-0 /layer-39"), Profile::Moderate);
    let mut lowers = Vec::new();
    for index in 0..40 {
        let layer = env
            .dir
            .path()
            .join(format!("layers/layer-{index:02}-{}", "x".repeat(40)));
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join(format!("layer-{index}")), format!("{index}\n")).unwrap();
        lowers.push(layer);
    }
    lowers.extend(env.lowers.clone());
    request.lower_dirs = lowers;
    let (status, stdout, stderr) = run_text(request);
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "0\n39\n");
}

#[test]
fn long_layer_stack_mounts() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    // 30 layers at about 215 bytes a path exceed the 4095 bytes of mount(2) options, so the
    // overlay is configured one layer at a time with fsconfig.
    let mut request = env.request(
        &sh("cat /layer-0 /layer-29; grep -c 'lowerdir' /proc/mounts"),
        Profile::Moderate,
    );
    let mut lowers = Vec::new();
    for index in 0..30 {
        let name = format!("{index:02}-{}", "y".repeat(200));
        let layer = env.dir.path().join("layers").join(name);
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::write(layer.join(format!("layer-{index}")), format!("{index}\n")).unwrap();
        lowers.push(layer);
    }
    lowers.extend(env.lowers.clone());
    request.lower_dirs = lowers;
    let (status, stdout, stderr) = run_text(request.clone());
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "0\n29\n1\n");
    assert_removed(&env, &request);
}

#[test]
fn existing_sandbox_dir_is_rejected() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["true"], Profile::Moderate);
    std::fs::create_dir_all(&request.sandbox_dir).unwrap();
    std::fs::write(request.sandbox_dir.join("keep-me"), "x").unwrap();
    let error = run_captured(request.clone()).unwrap_err().to_string();
    assert!(error.contains("already exists"), "{error}");
    assert!(request.sandbox_dir.join("keep-me").exists());
}

/// Measures `true` runs in the moderate profile; run with
/// `cargo test --release -- --ignored --nocapture run_timing`.
#[test]
#[ignore = "benchmark"]
fn run_timing() {
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let mut samples = Vec::new();
    for index in 0..23 {
        let request = env.request(&["true"], Profile::Moderate);
        let started = Instant::now();
        let outcome = run_captured(request).unwrap();
        let total = started.elapsed();
        assert_eq!(outcome.status, 0);
        if index >= 3 {
            samples.push((total, outcome.timings));
        }
    }
    let median = |mut values: Vec<Duration>| {
        values.sort();
        values[values.len() / 2]
    };
    let column = |pick: fn(&super::Timings) -> Duration| {
        median(samples.iter().map(|(_, timings)| pick(timings)).collect())
    };
    println!(
        "median of {} runs: total {:?}, prepare {:?}, build {:?}, start {:?}, wait {:?}, delete {:?}, cleanup {:?}",
        samples.len(),
        median(samples.iter().map(|(total, _)| *total).collect()),
        column(|t| t.prepare),
        column(|t| t.build),
        column(|t| t.start),
        column(|t| t.wait),
        column(|t| t.delete),
        column(|t| t.cleanup),
    );
}

const CRASH_DIR_VAR: &str = "AGENTKERNEL_TEST_CRASH_DIR";
const CRASH_ID_VAR: &str = "AGENTKERNEL_TEST_CRASH_ID";

/// Kills a process in the middle of a run and checks that `remove` cleans up what it left:
/// the running container, its state and cgroups and the mounted overlay.
///
/// The test binary runs this same test again as the victim, with the sandbox location in
/// environment variables.
#[test]
fn remove_cleans_after_killed_process() {
    if let (Ok(dir), Ok(id)) = (std::env::var(CRASH_DIR_VAR), std::env::var(CRASH_ID_VAR)) {
        let dir = Path::new(&dir);
        let request = SandboxRequest {
            id: id.clone(),
            state_root: dir.join("state"),
            sandbox_dir: dir.join("sandboxes").join(&id),
            lower_dirs: vec![dir.join("top"), dir.join("base")],
            image: Default::default(),
            command: ["sleep", "4243"].map(String::from).to_vec(),
            profile: Profile::Moderate,
            overrides: Default::default(),
            timeout: None,
            image_name: "busybox".to_string(),
            keep: false,
            tty: false,
            interactive: None,
            seccomp_cache: None,
        };
        run_text(request);
        panic!("the victim run was expected to be killed");
    }
    if !require_root() {
        return;
    }
    let env = TestEnv::new();
    let request = env.request(&["sleep", "4243"], Profile::Moderate);
    let mut victim = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sandbox::tests::remove_cleans_after_killed_process",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_VAR, env.dir.path())
        .env(CRASH_ID_VAR, &request.id)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sleep_running = || {
        std::fs::read_dir("/proc").unwrap().any(|entry| {
            let cmdline = std::fs::read(entry.unwrap().path().join("cmdline")).unwrap_or_default();
            cmdline == b"sleep\x004243\x00"
        })
    };
    // The command runs only after the network setup, so the wait is for the command itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleep_running() {
        assert!(Instant::now() < deadline, "victim sandbox did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    victim.kill().unwrap();
    victim.wait().unwrap();

    assert!(sleep_running(), "the container should outlive its parent");
    assert!(env.state_root().join(&request.id).exists());
    assert!(!sandbox_cgroups(&request.id).unwrap().is_empty());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        mountinfo.contains(&request.id),
        "overlay should still be mounted"
    );

    remove(&request.sandbox_dir, &env.state_root(), &request.id).unwrap();
    assert_removed(&env, &request);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleep_running() {
        assert!(
            Instant::now() < deadline,
            "sleep 4243 still runs after remove"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
