//! Escape attempts from real sandboxes in each profile where they apply. A static probe
//! (`tests/escape_probe.c`, built with `cc -static`) makes one system call and prints `ok` or
//! the errno name, so each case asserts the kernel's exact answer.
//!
//! TODO: a sandbox on a pure cgroup v2 layout is not tested. On this host (cgroup v1 hybrid)
//! the v1 hierarchies hold every controller but hugetlb, so a cgroup2 mount in a private mount
//! namespace has no memory, cpu or pids controller, and libcontainer fails on the first limit
//! (`failed to open .../pids.max`). Such a test needs a host booted with
//! `systemd.unified_cgroup_hierarchy=1` or `cgroup_no_v1=all`.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::{Env, Run, agentkernel, env, fresh_root, image, output, run};

const PROFILES: [&str; 3] = ["permissive", "moderate", "restrictive"];

/// Builds the probe once and returns the directory that contains it.
fn probe_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("ak-probe-")
            .tempdir_in("/tmp")
            .unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/escape_probe.c");
        let output = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(dir.path().join("probe"))
            .arg(&source)
            .output()
            .expect("cc is needed to build the escape probe");
        assert!(
            output.status.success(),
            "building {} failed: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
    .path()
}

fn busybox(env: &Env) -> String {
    image(env, "busybox:amd64-only")
}

/// Runs `/probe OPERATION [ARG]` in `profile` and returns its output line.
fn probe(env: &Env, profile: &str, args: &[&str]) -> String {
    let busybox = busybox(env);
    let volume = format!("{}:/probe:ro", probe_dir().display());
    let mut command = vec![
        "--image",
        busybox.as_str(),
        "--profile",
        profile,
        "-v",
        volume.as_str(),
        "/probe/probe",
    ];
    command.extend_from_slice(args);
    let result = run(env, &command);
    assert!(
        result.code == 0 || result.code == 1,
        "{profile} {args:?}: exit {} stderr {}",
        result.code,
        result.stderr
    );
    result.stdout.trim().to_string()
}

fn sh(env: &Env, profile: &str, extra: &[&str], script: &str) -> Run {
    let busybox = busybox(env);
    let mut args = vec!["--image", &busybox, "--profile", profile];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["sh", "-c", script]);
    run(env, &args)
}

#[test]
fn host_processes_are_invisible() {
    let Some(env) = env() else { return };
    let own_pid = std::process::id();
    for profile in PROFILES {
        let result = sh(
            &env,
            profile,
            &[],
            &format!(
                "test -e /proc/{own_pid} && echo visible || echo hidden; ls /proc | grep -c '^[0-9]'"
            ),
        );
        let lines: Vec<&str> = result.stdout.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"hidden"),
            "{profile}: {}",
            result.stderr
        );
        // The sandbox's init, the shell, ls and grep.
        let processes: u32 = lines[1].parse().unwrap();
        assert!(processes <= 4, "{profile}: {processes} processes visible");
        let ptrace = probe(&env, profile, &["ptrace", &own_pid.to_string()]);
        assert_eq!(ptrace, "ESRCH", "{profile}");
    }
}

#[test]
fn namespace_and_mount_calls_fail() {
    let Some(env) = env() else { return };
    let cases = [
        ("clone-newuser", "EPERM"),
        ("clone-newnet", "EPERM"),
        ("unshare-user", "EPERM"),
        ("mount", "EPERM"),
        ("umount", "EPERM"),
        ("setns", "EPERM"),
        ("pivot_root", "EPERM"),
        // clone3 fails with ENOSYS so that libc falls back to clone, whose flags seccomp reads.
        ("clone3", "ENOSYS"),
        ("fork", "ok"),
    ];
    for profile in PROFILES {
        for (operation, expected) in cases {
            assert_eq!(
                probe(&env, profile, &[operation]),
                expected,
                "{profile} {operation}"
            );
        }
    }
}

/// Clone without namespace flags must pass and clone with them must fail: the rule is
/// a masked-equal comparison whose operands libcontainer 0.7 swaps, and agentkernel swaps them
/// back. If libcontainer changes the order, the filter allows `clone-newuser`.
#[test]
fn clone_namespace_flags_fail() {
    let Some(env) = env() else { return };
    assert_eq!(probe(&env, "moderate", &["clone-newuser"]), "EPERM");
    assert_eq!(probe(&env, "moderate", &["fork"]), "ok");
    let result = sh(
        &env,
        "moderate",
        &[],
        "sh -c 'echo nested' | cat; unshare -U true",
    );
    assert_eq!(result.stdout, "nested\n", "{}", result.stderr);
    assert!(
        result.stderr.contains("Operation not permitted"),
        "{}",
        result.stderr
    );
}

#[test]
fn kernel_interfaces_fail() {
    let Some(env) = env() else { return };
    let cases = [
        ("keyctl", "EPERM"),
        ("bpf", "EPERM"),
        ("init_module", "EPERM"),
        ("finit_module", "EPERM"),
        ("reboot", "EPERM"),
        ("vsock", "EPERM"),
    ];
    for profile in PROFILES {
        for (operation, expected) in cases {
            assert_eq!(
                probe(&env, profile, &[operation]),
                expected,
                "{profile} {operation}"
            );
        }
        // READ_IMPLIES_EXEC is not among the allowed personality values; PER_LINUX is.
        assert_eq!(probe(&env, profile, &["personality", "0x400000"]), "EPERM");
        assert_eq!(probe(&env, profile, &["personality", "0"]), "ok");
    }
    let result = sh(&env, "moderate", &[], "insmod /probe.ko; modprobe dummy");
    assert_ne!(result.code, 0);
}

#[test]
fn raw_sockets_only_without_restrictive() {
    let Some(env) = env() else { return };
    assert_eq!(probe(&env, "restrictive", &["raw-socket"]), "EPERM");
    assert_eq!(probe(&env, "moderate", &["raw-socket"]), "ok");
}

#[test]
fn proc_sys_and_root_are_read_only() {
    let Some(env) = env() else { return };
    for profile in PROFILES {
        assert_eq!(
            probe(&env, profile, &["write", "/proc/sys/kernel/hostname"]),
            "EROFS",
            "{profile}"
        );
        assert_eq!(
            probe(&env, profile, &["write", "/sys/kernel/profiling"]),
            "EROFS",
            "{profile}"
        );
    }
    assert_eq!(
        probe(&env, "restrictive", &["create", "/escape-file"]),
        "EROFS"
    );
    assert_eq!(probe(&env, "restrictive", &["create", "/tmp/file"]), "ok");
    assert_eq!(probe(&env, "moderate", &["create", "/escape-file"]), "ok");
}

#[test]
fn read_only_volume_rejects_writes() {
    let Some(env) = env() else { return };
    let dir = common::fresh_root();
    std::fs::write(dir.path().join("kept"), "host data\n").unwrap();
    let volume = format!("{}:/data:ro", dir.path().display());
    let result = sh(
        &env,
        "moderate",
        &["-v", &volume],
        "cat /data/kept; echo changed > /data/kept",
    );
    assert_eq!(result.stdout, "host data\n");
    assert!(
        result.stderr.contains("Read-only file system"),
        "{}",
        result.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("kept")).unwrap(),
        "host data\n"
    );
}

#[test]
fn cpu_limit_in_cgroup() {
    let Some(env) = env() else { return };
    let read_quota = "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us";
    let result = sh(&env, "restrictive", &[], read_quota);
    assert_eq!(result.stdout, "50000\n100000\n", "{}", result.stderr);
    let result = sh(&env, "moderate", &["--cpus", "0.25"], read_quota);
    assert_eq!(result.stdout, "25000\n100000\n", "{}", result.stderr);
}

#[test]
fn fork_bomb_stops_at_pids_limit() {
    let Some(env) = env() else { return };
    let started = Instant::now();
    let result = sh(
        &env,
        "restrictive",
        &["--timeout", "6"],
        "bomb() { bomb | bomb & }; bomb; sleep 60",
    );
    assert_eq!(result.code, 124, "{}", result.stderr);
    assert!(
        result.stderr.contains("can't fork"),
        "no fork failed: {}",
        &result.stderr[..result.stderr.len().min(500)]
    );
    assert!(
        result
            .stderr
            .contains("agentkernel: timed out after 6 s: the sandbox was killed"),
        "{}",
        &result.stderr[result.stderr.len().saturating_sub(300)..]
    );
    assert!(started.elapsed() < Duration::from_secs(40));
    let host = Command::new("true").status().unwrap();
    assert!(host.success());
}

/// A custom filter that kills on a system call gives the shell status for SIGSYS and a
/// message naming the filter, with the precompiled filter and with libcontainer's.
#[test]
fn seccomp_kill_is_reported() {
    let Some(env) = env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let filter = dir.path().join("kill-mkdir.json");
    std::fs::write(
        &filter,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_KILL"}]}"#,
    )
    .unwrap();
    let filter = filter.to_str().unwrap();
    for fast in ["--fast=true", "--fast=false"] {
        let result = sh(
            &env,
            "moderate",
            &[fast, "--seccomp", filter],
            "mkdir /tmp/x",
        );
        assert_eq!(result.code, 159, "{fast}: {}", result.stderr);
        assert_eq!(
            result.stderr,
            "agentkernel: killed by SIGSYS: the seccomp filter blocked a system call\n",
            "{fast}"
        );
    }
}

#[test]
fn memory_hog_is_reported() {
    let Some(env) = env() else { return };
    let result = sh(
        &env,
        "moderate",
        &["--memory", "64m"],
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    assert_eq!(result.code, 137, "{}", result.stderr);
    assert!(
        result
            .stderr
            .contains("agentkernel: out of memory (limit 64 MiB)"),
        "{}",
        result.stderr
    );
}

/// A TCP server on the host that greets every client with `hello`.
struct Greeter {
    port: u16,
}

impl Greeter {
    fn start(address: &str) -> Greeter {
        let listener = TcpListener::bind((address, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.write_all(b"hello\n");
            }
        });
        Greeter { port }
    }
}

/// A network namespace with a veth link to the host and a busybox httpd: the stand-in for a
/// host on the network. It has 10.250.N.2 and 169.254.N.2; the host side has the .1 addresses.
struct TestHost {
    namespace: String,
    host_link: String,
    address: String,
    link_local: String,
    server: Child,
    _root: tempfile::TempDir,
}

impl TestHost {
    fn start() -> TestHost {
        let n = std::process::id() % 200 + 20;
        let namespace = format!("aktest{}", std::process::id());
        let host_link = format!("etv{}", std::process::id());
        let peer = format!("etp{}", std::process::id());
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &namespace]);
        ip(&[
            "link", "add", &host_link, "type", "veth", "peer", "name", &peer, "netns", &namespace,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("10.250.{n}.1/30"),
            "dev",
            &host_link,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("169.254.{n}.1/30"),
            "dev",
            &host_link,
        ]);
        ip(&["link", "set", &host_link, "up"]);
        let in_namespace = |args: &[&str]| {
            let mut all = vec!["-n", namespace.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_namespace(&["addr", "add", &format!("10.250.{n}.2/30"), "dev", &peer]);
        in_namespace(&["addr", "add", &format!("169.254.{n}.2/30"), "dev", &peer]);
        in_namespace(&["link", "set", &peer, "up"]);
        in_namespace(&["link", "set", "lo", "up"]);
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("index.html"), "from-test-host\n").unwrap();
        let server = Command::new("ip")
            .args([
                "netns", "exec", &namespace, "busybox", "httpd", "-f", "-p", "8080", "-h",
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        TestHost {
            namespace,
            host_link,
            address: format!("10.250.{n}.2"),
            link_local: format!("169.254.{n}.2"),
            server,
            _root: root,
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

/// Returns the first global IPv4 address of the host outside the sandbox and test ranges.
fn host_global_address() -> String {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .find(|address| !address.starts_with("10.200.") && !address.starts_with("10.250."))
        .expect("the host has a global IPv4 address")
        .to_string()
}

/// Fetches the test host's page with an HTTP/1.0 request over `nc`; busybox's `wget` from
/// Debian's static build crashes with SIGSEGV before it connects.
fn fetch_script(address: &str) -> String {
    format!(
        "printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {address} 8080 2>&1 | tail -1; \
         echo done"
    )
}

#[test]
fn network_modes_reach_what_they_should() {
    let Some(env) = env() else { return };
    let _rules = lock_firewall();
    let local = Greeter::start("127.0.0.1");
    let any = Greeter::start("0.0.0.0");
    let host = TestHost::start();
    let host_loopback = format!(
        "nc -w 2 127.0.0.1 {} </dev/null 2>/dev/null || echo unreachable",
        local.port
    );
    // A global address of the host, and in the isolated network also the sandbox's gateway,
    // which is the host side of its veth pair.
    let global = host_global_address();
    let host_address = format!(
        "gw=$(ip route | awk '/^default via 10[.]200[.]/ {{print $3}}'); \
         for address in {global} $gw; do \
           nc -w 2 $address {} </dev/null 2>/dev/null || echo unreachable; \
         done",
        any.port
    );
    let cases = [
        ("none", "unreachable", "unreachable", false),
        ("isolated", "unreachable", "unreachable\nunreachable", true),
        ("host", "hello", "hello", true),
    ];
    for (mode, loopback_expected, host_expected, reaches_test_host) in cases {
        let network = ["--network", mode];
        let result = sh(&env, "moderate", &network, &host_loopback);
        assert_eq!(
            result.stdout.trim(),
            loopback_expected,
            "{mode} loopback: {}",
            result.stderr
        );
        let result = sh(&env, "moderate", &network, &host_address);
        assert_eq!(
            result.stdout.trim(),
            host_expected,
            "{mode} host address: {}",
            result.stderr
        );
        let result = sh(&env, "moderate", &network, &fetch_script(&host.address));
        assert!(
            result.stdout.ends_with("done\n"),
            "{mode}: {}",
            result.stderr
        );
        assert_eq!(
            result.stdout.contains("from-test-host"),
            reaches_test_host,
            "{mode} test host: {} {}",
            result.stdout,
            result.stderr
        );
        let result = sh(&env, "moderate", &network, &fetch_script(&host.link_local));
        let reaches_link_local = mode == "host";
        assert!(
            result.stdout.ends_with("done\n"),
            "{mode}: {}",
            result.stderr
        );
        assert_eq!(
            result.stdout.contains("from-test-host"),
            reaches_link_local,
            "{mode} link-local: {} {}",
            result.stdout,
            result.stderr
        );
    }
}

/// Serializes the tests that delete or check the host's iptables rules, so that no isolated
/// sandbox of this test binary runs while a test has deleted them.
fn lock_firewall() -> MutexGuard<'static, ()> {
    static FIREWALL: Mutex<()> = Mutex::new(());
    FIREWALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Prefix of the iptables chains that agentkernel installs for isolated networks.
const CHAIN_PREFIX: &str = "AGENTKERNEL-";

/// Rules of the isolated networks, in `iptables-save` syntax after `-A`, by table.
const STATIC_RULES: [(&str, &str); 8] = [
    ("filter", "INPUT -j AGENTKERNEL-INPUT"),
    ("filter", "FORWARD -j AGENTKERNEL-FORWARD"),
    ("filter", "AGENTKERNEL-INPUT -i ak+ -j DROP"),
    ("filter", "AGENTKERNEL-FORWARD -i ak+ -o ak+ -j DROP"),
    (
        "filter",
        "AGENTKERNEL-FORWARD -d 169.254.0.0/16 -i ak+ -j DROP",
    ),
    ("filter", "AGENTKERNEL-FORWARD -i ak+ -j ACCEPT"),
    (
        "filter",
        "AGENTKERNEL-FORWARD -o ak+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ),
    (
        "nat",
        "AGENTKERNEL-POSTROUTING -s 10.200.0.0/16 ! -o ak+ -j MASQUERADE",
    ),
];

/// Returns a command that runs `program` in the network namespace `namespace` (with
/// `ip netns exec`), or on the host with `None`.
fn in_namespace(namespace: Option<&str>, program: &str) -> Command {
    match namespace {
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace, program]);
            command
        }
        None => Command::new(program),
    }
}

/// Runs `iptables-save` in the network namespace `namespace`, or the host's with `None`, and
/// returns `(table, rule)` for every rule, with the rule after `-A `.
fn saved_rules(namespace: Option<&str>) -> Vec<(String, String)> {
    let saved = in_namespace(namespace, "iptables-save").output().unwrap();
    assert!(saved.status.success(), "iptables-save failed");
    let mut table = String::new();
    let mut rules = Vec::new();
    for line in String::from_utf8(saved.stdout).unwrap().lines() {
        if let Some(name) = line.strip_prefix('*') {
            table = name.to_string();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            rules.push((table.clone(), rule.to_string()));
        }
    }
    rules
}

/// Returns the rules in `namespace`, or on the host with `None`, that mention an agentkernel
/// chain.
fn agentkernel_rules(namespace: Option<&str>) -> Vec<(String, String)> {
    saved_rules(namespace)
        .into_iter()
        .filter(|(_, rule)| rule.contains(CHAIN_PREFIX))
        .collect()
}

/// Asserts that every static rule exists and that the jumps come first in INPUT and FORWARD.
fn assert_static_rules(namespace: Option<&str>) {
    let rules = saved_rules(namespace);
    for (table, rule) in STATIC_RULES {
        assert!(
            rules.iter().any(|(t, r)| t == table && r == rule),
            "{table} rule {rule} missing: {rules:?}"
        );
    }
    for chain in ["INPUT", "FORWARD"] {
        let first = rules
            .iter()
            .find(|(table, rule)| table == "filter" && rule.starts_with(&format!("{chain} ")));
        assert_eq!(
            first.map(|(_, rule)| rule.as_str()),
            Some(format!("{chain} -j AGENTKERNEL-{chain}").as_str()),
            "first rule of {chain}"
        );
    }
}

/// Feeds `script` to `iptables-restore --noflush` in `namespace` or on the host.
fn iptables_restore(namespace: Option<&str>, script: &str) {
    let mut child = in_namespace(namespace, "iptables-restore")
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "iptables-restore:\n{script}"
    );
}

/// Deletes the host's agentkernel chains, their rules and the rules that jump to them, and
/// nothing else.
fn delete_static_rules() {
    let rules = agentkernel_rules(None);
    let mut script = String::new();
    for table in ["filter", "nat"] {
        let in_table = || rules.iter().filter(|(t, _)| t == table);
        let chains: Vec<&str> = in_table()
            .filter_map(|(_, rule)| rule.split_whitespace().next())
            .filter(|chain| chain.starts_with(CHAIN_PREFIX))
            .collect();
        script.push_str(&format!("*{table}\n"));
        for (_, rule) in in_table() {
            script.push_str(&format!("-D {rule}\n"));
        }
        for chain in dedup(chains) {
            script.push_str(&format!("-X {chain}\n"));
        }
        script.push_str("COMMIT\n");
    }
    iptables_restore(None, &script);
    assert_eq!(agentkernel_rules(None), Vec::new());
}

fn dedup(mut names: Vec<&str>) -> Vec<&str> {
    names.sort();
    names.dedup();
    names
}

/// Tries from an isolated moderate sandbox to connect to a host server on 127.0.0.1, on a
/// global host address and on the sandbox's gateway, and returns the run. Each attempt that
/// fails prints `unreachable`.
fn probe_host(env: &Env) -> Run {
    let local = Greeter::start("127.0.0.1");
    let any = Greeter::start("0.0.0.0");
    let global = host_global_address();
    let script = format!(
        "nc -w 2 127.0.0.1 {} </dev/null 2>/dev/null || echo unreachable; \
         gw=$(ip route | awk '/^default via 10[.]200[.]/ {{print $3}}'); \
         for address in {global} $gw; do \
           nc -w 2 $address {} </dev/null 2>/dev/null || echo unreachable; \
         done",
        local.port, any.port
    );
    sh(env, "moderate", &[], &script)
}

/// Returns whether the host has network interface `name`.
fn host_has_link(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Waits up to 5 s for the host's network interface `name` to disappear and returns whether it
/// did: the kernel deletes a sandbox's veth pair in a worker after its namespace is gone.
fn link_disappears(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while host_has_link(name) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Returns the host interface whose IPv4 address is `gateway`.
fn link_with_address(gateway: &str) -> Option<String> {
    let addresses = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&addresses.stdout)
        .lines()
        .find(|line| line.contains(&format!(" inet {gateway}/30 ")))
        .and_then(|line| line.split_whitespace().nth(1))
        .map(str::to_string)
}

#[test]
fn isolated_network_is_removed() {
    let Some(env) = env() else { return };
    let _rules = lock_firewall();
    let name = format!("netrm-{}", std::process::id());
    let busybox = busybox(&env);
    let keep_run = run(
        &env,
        &[
            "--image",
            &busybox,
            "--profile",
            "moderate",
            "--keep",
            "--name",
            &name,
            "true",
        ],
    );
    assert_eq!(keep_run.code, 0, "{}", keep_run.stderr);
    let root = common::shared_root();
    let inside = output(agentkernel(root).args([
        "exec",
        &name,
        "sh",
        "-c",
        "ip -o -4 addr show eth0 | awk '{print $4}'; ip route | awk '/default/ {print $3}'",
    ]));
    let lines: Vec<&str> = inside.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{} {}", inside.stdout, inside.stderr);
    assert!(lines[0].starts_with("10.200."), "{}", lines[0]);
    assert!(lines[0].ends_with("/30"), "{}", lines[0]);
    let gateway = lines[1].to_string();
    let link = link_with_address(&gateway).expect("the host side has the gateway address");
    assert!(link.starts_with("ak"), "{link}");
    assert_eq!(link.len(), 10, "{link}");
    assert_static_rules(None);

    let removed = output(agentkernel(root).args(["rm", &name]));
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(link_disappears(&link), "{link} is left after rm");
    assert_eq!(link_with_address(&gateway), None);
    // No rule names the sandbox's link or subnet: the static rules cover it.
    let (network, last) = gateway.rsplit_once('.').unwrap();
    let subnet = format!("{network}.{}/30", last.parse::<u8>().unwrap() - 1);
    let per_sandbox: Vec<(String, String)> = saved_rules(None)
        .into_iter()
        .filter(|(_, rule)| rule.contains(&link) || rule.contains(&subnet))
        .collect();
    assert_eq!(per_sandbox, Vec::new(), "rules for {link} or {subnet}");

    // A sandbox without --keep loses its link when the run ends.
    let result = sh(
        &env,
        "moderate",
        &[],
        "ip route | awk '/default/ {print $3}'",
    );
    let gateway = result.stdout.trim().to_string();
    assert!(
        gateway.starts_with("10.200."),
        "{} {}",
        result.stdout,
        result.stderr
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_with_address(&gateway).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(link_with_address(&gateway), None);

    assert_static_rules(None);
}

#[test]
fn deleted_rules_are_restored() {
    let Some(env) = env() else { return };
    let _rules = lock_firewall();
    let installed = sh(&env, "moderate", &[], "true");
    assert_eq!(installed.code, 0, "{}", installed.stderr);
    assert_static_rules(None);

    delete_static_rules();
    let result = probe_host(&env);
    assert_eq!(
        result.stdout, "unreachable\nunreachable\nunreachable\n",
        "{}",
        result.stderr
    );
    assert_static_rules(None);

    // One rule missing from a chain.
    iptables_restore(
        None,
        "*filter\n-D AGENTKERNEL-INPUT -i ak+ -j DROP\nCOMMIT\n",
    );
    let result = probe_host(&env);
    assert_eq!(
        result.stdout, "unreachable\nunreachable\nunreachable\n",
        "{}",
        result.stderr
    );
    assert_static_rules(None);

    // Another tool's rule that accepts sandbox traffic above the jump.
    let comment = format!("agentkernel-test-{}", std::process::id());
    let accept = format!("INPUT -i ak+ -m comment --comment {comment} -j ACCEPT");
    iptables_restore(None, &format!("*filter\n-I {accept}\nCOMMIT\n"));
    let result = probe_host(&env);
    iptables_restore(None, &format!("*filter\n-D {accept}\nCOMMIT\n"));
    assert_eq!(
        result.stdout, "unreachable\nunreachable\nunreachable\n",
        "{}",
        result.stderr
    );
    assert_static_rules(None);
}

/// A network namespace for `agentkernel prune` with its own links and iptables rules.
struct PruneNamespace {
    name: String,
}

impl PruneNamespace {
    fn new() -> PruneNamespace {
        let name = format!("akprune{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        PruneNamespace { name }
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args:?}", self.name);
    }

    /// Runs `agentkernel prune` in the namespace on an empty cache root.
    fn prune(&self) -> Run {
        let root = fresh_root();
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .arg(env!("CARGO_BIN_EXE_agentkernel"))
                .arg("prune")
                .env("AGENTKERNEL_ROOT", root.path())
                .env_remove("RUST_LOG"),
        )
    }
}

impl Drop for PruneNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn prune_removes_rules_without_sandboxes() {
    let Some(env) = env() else { return };
    let installed = {
        let _rules = lock_firewall();
        let installed = sh(&env, "moderate", &[], "true");
        assert_eq!(installed.code, 0, "{}", installed.stderr);
        agentkernel_rules(None)
    };
    // The host's rule set, copied into a namespace of its own, where this test controls which
    // sandbox links exist.
    let namespace = PruneNamespace::new();
    let mut script = String::new();
    for table in ["filter", "nat"] {
        script.push_str(&format!("*{table}\n"));
        for (_, rule) in installed.iter().filter(|(t, _)| t == table) {
            let chain = rule.split_whitespace().next().unwrap();
            if chain.starts_with(CHAIN_PREFIX) && !script.contains(&format!(":{chain} ")) {
                script.push_str(&format!(":{chain} - [0:0]\n"));
            }
        }
        for (_, rule) in installed.iter().filter(|(t, _)| t == table) {
            script.push_str(&format!("-A {rule}\n"));
        }
        script.push_str("COMMIT\n");
    }
    iptables_restore(Some(&namespace.name), &script);
    assert_static_rules(Some(&namespace.name));

    // A link named like a sandbox's host side keeps the rules.
    namespace.ip(&[
        "link",
        "add",
        "ak0000beef",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ]);
    let pruned = namespace.prune();
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert_static_rules(Some(&namespace.name));

    namespace.ip(&["link", "del", "ak0000beef"]);
    let pruned = namespace.prune();
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert_eq!(pruned.stderr, "");
    assert_eq!(agentkernel_rules(Some(&namespace.name)), Vec::new());
    let chains = Command::new("ip")
        .args(["netns", "exec", &namespace.name, "iptables-save"])
        .output()
        .unwrap();
    let chains = String::from_utf8_lossy(&chains.stdout);
    assert!(!chains.contains(CHAIN_PREFIX), "{chains}");
}
