//! Sandboxes that outlive one command: `run --keep`, `exec`, `list`, `rm`, names, removal of
//! the sandboxes of killed runs, signal handling, pseudo-terminals and fresh filesystems per
//! run.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Env, Run, agentkernel, env, fresh_root, image, mirror_config, output, run_in};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn busybox(env: &Env) -> String {
    image(env, "busybox:amd64-only")
}

fn ak(root: &Path, args: &[&str]) -> Run {
    output(agentkernel(root).args(args))
}

/// Runs `--keep --name NAME` in `root` with `profile` and returns the run.
fn run_kept(env: &Env, root: &Path, name: &str, profile: &str, command: &[&str]) -> Run {
    let image = busybox(env);
    let mut args = vec![
        "--image",
        &image,
        "--profile",
        profile,
        "--keep",
        "--name",
        name,
    ];
    args.extend_from_slice(command);
    run_in(env, root, &args)
}

fn list_json(root: &Path) -> Vec<serde_json::Value> {
    let listed = ak(root, &["list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    serde_json::from_str::<serde_json::Value>(&listed.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts that nothing of sandbox `name` is left: directories, state, cgroups and mounts.
fn assert_gone(root: &Path, name: &str) {
    assert!(
        !root.join("sandboxes").join(name).exists(),
        "{name}: directory left"
    );
    assert!(
        !root.join("containers").join(name).exists(),
        "{name}: state left"
    );
    for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
        let path = format!("/sys/fs/cgroup/{controller}/agentkernel/{name}");
        assert!(!Path::new(&path).exists(), "{path} was left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let sandbox_dir = root.join("sandboxes").join(name);
    assert!(
        !mounts.contains(sandbox_dir.to_str().unwrap()),
        "a mount under {} was left",
        sandbox_dir.display()
    );
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn process_running(cmdline: &[u8]) -> bool {
    std::fs::read_dir("/proc").unwrap().any(|entry| {
        std::fs::read(entry.unwrap().path().join("cmdline")).is_ok_and(|line| line == cmdline)
    })
}

#[test]
fn kept_sandbox_exec_under_every_profile() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    for profile in ["permissive", "moderate", "restrictive"] {
        let name = format!("keep-{profile}");
        let kept = run_kept(
            &env,
            root.path(),
            &name,
            profile,
            &["sh", "-c", "echo hi > /tmp/debug.log; echo started"],
        );
        assert_eq!(kept.code, 0, "{profile}: {}", kept.stderr);
        assert_eq!(kept.stdout, "started\n");
        assert!(
            kept.stderr.contains(&format!("kept sandbox {name}")),
            "{}",
            kept.stderr
        );

        let read = ak(root.path(), &["exec", &name, "--", "cat", "/tmp/debug.log"]);
        assert_eq!(read.code, 0, "{profile}: {}", read.stderr);
        assert_eq!(read.stdout, "hi\n", "{profile}");

        let status = ak(
            root.path(),
            &["exec", &name, "sh", "-c", "echo out; echo err >&2; exit 7"],
        );
        assert_eq!(status.code, 7);
        assert_eq!(status.stdout, "out\n");
        assert_eq!(status.stderr, "err\n");

        let missing = ak(root.path(), &["exec", &name, "no-such-command"]);
        assert_eq!(missing.code, 127, "{}", missing.stderr);
    }

    let listed = list_json(root.path());
    assert_eq!(listed.len(), 3, "{listed:?}");
    for profile in ["moderate", "permissive", "restrictive"] {
        let name = format!("keep-{profile}");
        let entry = listed.iter().find(|e| e["name"] == name.as_str()).unwrap();
        assert_eq!(entry["profile"], profile);
        assert_eq!(entry["status"], "running");
        assert_eq!(entry["image"], busybox(&env).as_str());
        assert!(entry["created"].as_str().unwrap().ends_with('Z'));
        assert_eq!(entry["keep"], true);
    }
    let table = ak(root.path(), &["list"]);
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(table.stdout.contains("keep-moderate"), "{}", table.stdout);

    let removed = ak(root.path(), &["rm", "keep-moderate"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_gone(root.path(), "keep-moderate");
    assert_eq!(list_json(root.path()).len(), 2);
    let gone = ak(root.path(), &["exec", "keep-moderate", "true"]);
    assert_eq!(gone.code, 125);
    assert!(
        gone.stderr.contains("no sandbox named keep-moderate"),
        "{}",
        gone.stderr
    );

    let all = ak(root.path(), &["rm", "--all"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    assert_gone(root.path(), "keep-permissive");
    assert_gone(root.path(), "keep-restrictive");
    assert!(list_json(root.path()).is_empty());
    assert!(
        !process_running(b"sleep\x00"),
        "a process of a removed sandbox is left"
    );
}

#[test]
fn exec_shares_namespaces_and_limits() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let kept = run_kept(
        &env,
        root.path(),
        "shared",
        "restrictive",
        &["sh", "-c", "sleep 300 >/dev/null 2>&1 &"],
    );
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    let script = "for ns in net pid mnt; do readlink /proc/self/ns/$ns; done; grep -E 'Seccomp:|NoNewPrivs|CapEff' /proc/self/status; ps -o comm | grep -c sleep";
    let first = ak(root.path(), &["exec", "shared", "sh", "-c", script]);
    let second = ak(root.path(), &["exec", "shared", "sh", "-c", script]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout, second.stdout);
    // The background sleep of the first command is visible: same PID namespace.
    assert!(first.stdout.ends_with("1\n"), "{}", first.stdout);

    // Seen from the host, an exec'd process is in the sandbox's cgroups.
    let mut waiting = agentkernel(root.path())
        .args(["exec", "shared", "sleep", "4238"])
        .spawn()
        .unwrap();
    let mut host_pid = None;
    wait_until("the exec'd sleep runs", Duration::from_secs(10), || {
        host_pid = std::fs::read_dir("/proc").unwrap().find_map(|entry| {
            let path = entry.unwrap().path();
            let cmdline = std::fs::read(path.join("cmdline")).ok()?;
            (cmdline == b"sleep\x004238\x00").then_some(path)
        });
        host_pid.is_some()
    });
    let cgroups = std::fs::read_to_string(host_pid.unwrap().join("cgroup")).unwrap();
    assert!(cgroups.contains(":pids:/agentkernel/shared\n"), "{cgroups}");
    assert!(
        cgroups.contains(":memory:/agentkernel/shared\n"),
        "{cgroups}"
    );
    kill(Pid::from_raw(waiting.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(waiting.wait().unwrap().code(), Some(143));

    let plain = run_in(
        &env,
        root.path(),
        &[
            "--image",
            &busybox(&env),
            "--profile",
            "restrictive",
            "grep",
            "-E",
            "Seccomp:|NoNewPrivs|CapEff",
            "/proc/self/status",
        ],
    );
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    assert!(
        first.stdout.contains(&plain.stdout),
        "exec: {} run: {}",
        first.stdout,
        plain.stdout
    );
    let readonly = ak(root.path(), &["exec", "shared", "touch", "/x"]);
    assert_ne!(readonly.code, 0);
    assert!(readonly.stderr.contains("Read-only"), "{}", readonly.stderr);
    let removed = ak(root.path(), &["rm", "shared"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_gone(root.path(), "shared");
}

/// A kept sandbox's command gets --timeout and the out-of-memory message like a plain run, and
/// the sandbox stays. A later exec killed by a signal is not reported as out of memory.
#[test]
fn kept_command_limits_are_reported() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    let base = ["--image", image.as_str(), "--keep"];

    let mut args = base.to_vec();
    args.extend([
        "--name",
        "slow",
        "--timeout",
        "1",
        "sh",
        "-c",
        "sleep 4241 & sleep 30",
    ]);
    let started = Instant::now();
    let slow = run_in(&env, root.path(), &args);
    assert_eq!(slow.code, 124, "{}", slow.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        slow.stderr
            .contains("agentkernel: timed out after 1 s: the command was killed"),
        "{}",
        slow.stderr
    );
    assert!(slow.stderr.contains("kept sandbox slow"), "{}", slow.stderr);
    let alive = ak(root.path(), &["exec", "slow", "echo", "alive"]);
    assert_eq!(alive.code, 0, "{}", alive.stderr);
    assert_eq!(alive.stdout, "alive\n");
    // The timeout also killed the background sleep that the command started.
    let processes = ak(root.path(), &["exec", "slow", "ps", "-o", "args"]);
    assert_eq!(processes.code, 0, "{}", processes.stderr);
    assert!(!processes.stdout.contains("4241"), "{}", processes.stdout);
    // The init shows its own name, not the host's command line.
    let init = ak(root.path(), &["exec", "slow", "cat", "/proc/1/cmdline"]);
    // The kernel returns the whole argument area, zeros included.
    assert_eq!(
        init.stdout.trim_end_matches('\0'),
        "agentkernel-init",
        "{}",
        init.stderr
    );

    // A kept sandbox's filter stays in its spec, where every exec reads it.
    let config = root.path().join("sandboxes/slow/config.json");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    assert!(spec["linux"]["seccomp"]["syscalls"].is_array(), "{spec}");
    let filtered = ak(
        root.path(),
        &["exec", "slow", "grep", "Seccomp:", "/proc/self/status"],
    );
    assert_eq!(filtered.stdout, "Seccomp:\t2\n", "{}", filtered.stderr);

    let mut args = base.to_vec();
    args.extend([
        "--name",
        "hog",
        "--memory",
        "64m",
        "sh",
        "-c",
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    ]);
    let hog = run_in(&env, root.path(), &args);
    assert_eq!(hog.code, 137, "{}", hog.stderr);
    assert!(
        hog.stderr
            .contains("agentkernel: out of memory (limit 64 MiB)"),
        "{}",
        hog.stderr
    );
    let killed = ak(root.path(), &["exec", "hog", "sh", "-c", "kill -9 $$"]);
    assert_eq!(killed.code, 137, "{}", killed.stderr);
    assert!(
        !killed.stderr.contains("out of memory"),
        "{}",
        killed.stderr
    );

    let removed = ak(root.path(), &["rm", "--all"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_gone(root.path(), "slow");
    assert_gone(root.path(), "hog");
}

/// The CLI stays in its own cgroup while it runs a sandbox, also when it runs in a cgroup
/// namespace, where `/proc/self/cgroup` shows `/` for a cgroup below the host's root.
#[test]
fn cli_stays_in_its_cgroup() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let config = mirror_config(&env, root.path());
    let (base, field) = if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
        ("/sys/fs/cgroup/pids", ":pids:")
    } else {
        ("/sys/fs/cgroup", "0::")
    };
    let name = format!("ak-test-cgns-{}", std::process::id());
    let group = Path::new(base).join(&name);
    std::fs::create_dir(&group).unwrap();

    // The shell joins the new cgroup, then unshare starts the CLI in a new cgroup namespace.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$0/cgroup.procs\" && exec unshare -C \"$@\"",
        ])
        .arg(&group)
        .arg(env!("CARGO_BIN_EXE_agentkernel"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--image", &busybox(&env), "sh", "-c", "sleep 2 # 4236"])
        .env("AGENTKERNEL_ROOT", root.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let mut cli = None;
    wait_until("the CLI runs", Duration::from_secs(10), || {
        cli = std::fs::read_dir("/proc").unwrap().find_map(|entry| {
            let path = entry.unwrap().path();
            let cmdline = std::fs::read(path.join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline);
            (text.starts_with(env!("CARGO_BIN_EXE_agentkernel")) && text.contains("# 4236"))
                .then_some(path)
        });
        cli.is_some()
    });
    // Long enough for the CLI's early cgroup write, which runs at its start.
    std::thread::sleep(Duration::from_millis(500));
    let cgroups = std::fs::read_to_string(cli.unwrap().join("cgroup")).unwrap_or_default();

    let status = child.wait().unwrap();
    std::fs::remove_dir(&group).unwrap();
    assert!(status.success(), "{status}");
    assert!(
        cgroups
            .lines()
            .any(|line| line.contains(field) && line.ends_with(&format!("/{name}"))),
        "{cgroups}"
    );
}

#[test]
fn names_are_checked() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    for invalid in ["-x", "a--b", "a_-b", "has.dot", "end-", &"n".repeat(64)] {
        let result = run_in(
            &env,
            root.path(),
            &["--image", &image, "--name", invalid, "true"],
        );
        assert_eq!(result.code, 125, "{invalid}: {}", result.stderr);
        assert!(
            result.stderr.contains("invalid sandbox name"),
            "{}",
            result.stderr
        );
    }
    let kept = run_in(
        &env,
        root.path(),
        &["--image", &image, "--keep", "--name", "taken", "true"],
    );
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    let again = run_in(
        &env,
        root.path(),
        &["--image", &image, "--name", "taken", "echo", "x"],
    );
    assert_eq!(again.code, 125);
    assert_eq!(again.stdout, "");
    assert!(again.stderr.contains("already in use"), "{}", again.stderr);

    let generated = run_in(&env, root.path(), &["--image", &image, "--keep", "true"]);
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    let names: Vec<String> = list_json(root.path())
        .iter()
        .map(|entry| entry["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    let run_name = names.iter().find(|name| *name != "taken").unwrap();
    assert_eq!(run_name.len(), 12, "{run_name}");
    assert!(run_name.starts_with("run-"), "{run_name}");
    assert!(
        run_name[4..].chars().all(|c| c.is_ascii_hexdigit()),
        "{run_name}"
    );
    assert_eq!(ak(root.path(), &["rm", "--all"]).code, 0);
}

/// Starts `run` with `args` in `root` and waits until the container's command runs.
fn spawn_run(env: &Env, root: &Path, args: &[&str], marker: &[u8]) -> Child {
    let config = mirror_config(env, root);
    let mut child = agentkernel(root)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !process_running(marker) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn killed_run_is_collected_by_next_command() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    let pulled = run_in(&env, root.path(), &["--image", &image, "true"]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);
    let kept = run_in(
        &env,
        root.path(),
        &["--image", &image, "--keep", "--name", "survivor", "true"],
    );
    assert_eq!(kept.code, 0, "{}", kept.stderr);

    let mut child = spawn_run(
        &env,
        root.path(),
        &["--image", &image, "--name", "victim", "sleep", "4242"],
        b"sleep\x004242\x00",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        process_running(b"sleep\x004242\x00"),
        "the container should outlive the CLI"
    );
    assert!(root.path().join("containers/victim").exists());
    assert!(Path::new("/sys/fs/cgroup/pids/agentkernel/victim").exists());

    let listed = list_json(root.path());
    let names: Vec<&str> = listed.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["survivor"]);
    assert_gone(root.path(), "victim");
    wait_until("sleep 4242 is gone", Duration::from_secs(5), || {
        !process_running(b"sleep\x004242\x00")
    });
    assert_eq!(entries(&root.path().join("sandboxes")), ["survivor"]);
    assert_eq!(entries(&root.path().join("containers")), ["survivor"]);

    // A kept sandbox survives its CLI and later commands.
    let still = ak(root.path(), &["exec", "survivor", "echo", "alive"]);
    assert_eq!(still.stdout, "alive\n", "{}", still.stderr);
    assert_eq!(ak(root.path(), &["rm", "survivor"]).code, 0);
    assert_gone(root.path(), "survivor");
}

#[test]
fn prune_collects_killed_run() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    let mut child = spawn_run(
        &env,
        root.path(),
        &["--image", &image, "--name", "pruned", "sleep", "4241"],
        b"sleep\x004241\x00",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let pruned = ak(root.path(), &["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert_gone(root.path(), "pruned");
    assert!(entries(&root.path().join("sandboxes")).is_empty());
}

#[test]
fn sigterm_twice_ends_a_command_that_ignores_it() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    let pulled = run_in(&env, root.path(), &["--image", &image, "true"]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);
    let mut child = spawn_run(
        &env,
        root.path(),
        &[
            "--image",
            &image,
            "--name",
            "stubborn",
            "sh",
            "-c",
            "trap '' TERM; sleep 4239; echo late",
        ],
        b"sleep\x004239\x00",
    );
    let pid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "one SIGTERM ended a command that ignores it"
    );
    kill(pid, Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(137));
    assert!(!process_running(b"sleep\x004239\x00"));
    assert_gone(root.path(), "stubborn");
}

#[test]
fn init_reaps_orphans() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    // The subshell exits at once, so its sleeps become children of PID 1, which must reap them
    // as they exit.
    let result = run_in(
        &env,
        root.path(),
        &[
            "--image",
            &busybox(&env),
            "sh",
            "-c",
            "(sleep 0.2 & sleep 0.2 & sleep 0.2 &); sleep 1; ps -o stat,comm | grep -c '^Z' || true",
        ],
    );
    assert_eq!(result.code, 0, "{}", result.stderr);
    assert_eq!(result.stdout, "0\n");
}

#[test]
fn each_run_starts_from_pristine_filesystem() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    for fast in ["--fast", "--fast=false"] {
        let write = run_in(
            &env,
            root.path(),
            &[
                "--image",
                &image,
                fast,
                "sh",
                "-c",
                "echo dirty > /etc/marker; rm /bin/ls",
            ],
        );
        assert_eq!(write.code, 0, "{}", write.stderr);
        let read = run_in(
            &env,
            root.path(),
            &[
                "--image",
                &image,
                fast,
                "sh",
                "-c",
                "cat /etc/marker; test -e /bin/ls && echo ls-present",
            ],
        );
        assert_eq!(read.stdout, "ls-present\n", "{fast}: {}", read.stderr);
        assert!(read.stderr.contains("No such file"), "{}", read.stderr);
    }
    assert!(entries(&root.path().join("sandboxes")).is_empty());
}

/// Runs `tmux` with `args` on the test's own server socket.
fn tmux(socket: &str, args: &[&str]) -> String {
    let result = Command::new("tmux")
        .args(["-S", socket])
        .args(args)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    String::from_utf8_lossy(&result.stdout).into_owned()
}

fn wait_for_screen(socket: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tmux(socket, &["capture-pane", "-p", "-t", "lc"]);
        if screen.contains(text) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} never appeared:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn interactive_shell_in_tmux() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    let pulled = run_in(&env, root.path(), &["--image", &image, "true"]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);
    let config = mirror_config(&env, root.path());
    let socket = root.path().join("tmux.sock");
    let socket = socket.to_str().unwrap();
    let status_file = root.path().join("status");
    let command = format!(
        "AGENTKERNEL_ROOT={} {} run --config {} -it --image {image} sh; echo \"exit=$?\" > {}; stty -a > {}.stty; sleep 60",
        root.path().display(),
        env!("CARGO_BIN_EXE_agentkernel"),
        config.display(),
        status_file.display(),
        status_file.display(),
    );
    tmux(
        socket,
        &[
            "new-session",
            "-d",
            "-s",
            "lc",
            "-x",
            "100",
            "-y",
            "30",
            &command,
        ],
    );
    let result = std::panic::catch_unwind(|| {
        wait_for_screen(socket, "/ #");
        tmux(socket, &["send-keys", "-t", "lc", "echo $((6*7))", "Enter"]);
        wait_for_screen(socket, "42");
        tmux(socket, &["send-keys", "-t", "lc", "stty size", "Enter"]);
        wait_for_screen(socket, "30 100");
        tmux(
            socket,
            &["resize-window", "-t", "lc", "-x", "90", "-y", "25"],
        );
        std::thread::sleep(Duration::from_millis(300));
        tmux(socket, &["send-keys", "-t", "lc", "stty size", "Enter"]);
        wait_for_screen(socket, "25 90");
        // Ctrl-C interrupts the command in the sandbox, not agentkernel.
        tmux(socket, &["send-keys", "-t", "lc", "sleep 50", "Enter"]);
        std::thread::sleep(Duration::from_millis(500));
        tmux(socket, &["send-keys", "-t", "lc", "C-c"]);
        tmux(
            socket,
            &["send-keys", "-t", "lc", "echo after-$((1+1))", "Enter"],
        );
        wait_for_screen(socket, "after-2");
        tmux(socket, &["send-keys", "-t", "lc", "exit 3", "Enter"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !status_file.exists() {
            assert!(Instant::now() < deadline, "agentkernel did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(std::fs::read_to_string(&status_file).unwrap(), "exit=3\n");
        // Raw mode was undone: the terminal echoes and translates input again.
        let stty = std::fs::read_to_string(format!("{}.stty", status_file.display())).unwrap();
        let flags: Vec<&str> = stty.split_whitespace().collect();
        for flag in ["icanon", "echo", "isig", "opost"] {
            assert!(flags.contains(&flag), "{flag} is off: {stty}");
        }
    });
    let _ = Command::new("tmux")
        .args(["-S", socket, "kill-server"])
        .status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(entries(&root.path().join("sandboxes")).is_empty());
}

#[test]
fn tty_flags_follow_docker() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let image = busybox(&env);
    // Without a terminal the command gets pipes.
    let plain = run_in(
        &env,
        root.path(),
        &[
            "--image",
            &image,
            "sh",
            "-c",
            "test -t 1 && echo tty || echo pipe",
        ],
    );
    assert_eq!(plain.stdout, "pipe\n", "{}", plain.stderr);
    // -t forces a pseudo-terminal; its output comes back through the relay.
    let forced = run_in(
        &env,
        root.path(),
        &[
            "--image",
            &image,
            "-t",
            "sh",
            "-c",
            "test -t 1 && echo tty || echo pipe",
        ],
    );
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    assert_eq!(forced.stdout.replace('\r', ""), "tty\n");
    // -i -t needs a terminal on stdin.
    let refused = run_in(&env, root.path(), &["--image", &image, "-i", "-t", "true"]);
    assert_eq!(refused.code, 125);
    assert!(
        refused.stderr.contains("not a terminal"),
        "{}",
        refused.stderr
    );
    // -i passes stdin; -i=false closes it.
    let config = mirror_config(&env, root.path());
    let mut child = agentkernel(root.path())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--image", &image, "--interactive=false", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"ignored\n").unwrap();
    let closed = child.wait_with_output().unwrap();
    assert_eq!(closed.status.code(), Some(0));
    assert_eq!(closed.stdout, b"");
}
