//! End-to-end tests of the OCI spec agentkernel builds: image config defaults and the
//! three security profiles, checked from inside real sandboxes.

mod common;

use common::{env, image, run};

#[test]
fn image_config_defaults_apply() {
    let Some(env) = env() else { return };
    let configured = image(&env, "busybox:config");
    // Entrypoint is `/bin/sh -c`, so the command replaces Cmd as a script argument.
    let result = run(
        &env,
        &[
            "--image",
            &configured,
            "echo $IMAGE_ENV $(pwd) $(id -u):$(id -g) $PATH",
        ],
    );
    assert_eq!(
        result.stdout, "from-config /etc 1000:1000 /usr/sbin:/usr/bin:/sbin:/bin\n",
        "stderr: {}",
        result.stderr
    );
    assert_eq!(result.code, 0);
}

#[test]
fn sandbox_namespaces_and_hostname() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    // Docker's default capability set; restrictive also drops CAP_NET_RAW (bit 13).
    let cases = [
        ("permissive", "00000000a80425fb"),
        ("moderate", "00000000a80425fb"),
        ("restrictive", "00000000a80405fb"),
    ];
    for (profile, capabilities) in cases {
        let result = run(
            &env,
            &[
                "--image",
                &busybox,
                "--profile",
                profile,
                "sh",
                "-c",
                "hostname; ls /proc | grep -c '^[0-9]'; grep -E '^(NoNewPrivs|CapEff)' /proc/self/status",
            ],
        );
        let lines: Vec<&str> = result.stdout.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"agentkernel"),
            "{profile}: {}",
            result.stderr
        );
        // The shell, ls and grep, plus an init process when the runtime adds one.
        let processes: u32 = lines[1].parse().unwrap();
        assert!(processes <= 4, "{profile}: {processes} processes visible");
        // /proc/self/status lists CapEff before NoNewPrivs.
        assert_eq!(lines[2], format!("CapEff:\t{capabilities}"), "{profile}");
        assert_eq!(lines[3], "NoNewPrivs:\t1", "{profile}");
    }
}

#[test]
fn restrictive_has_no_network_and_read_only_root() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    let result = run(
        &env,
        &[
            "--image",
            &busybox,
            "--profile",
            "restrictive",
            "sh",
            "-c",
            "ls /sys/class/net; cat /sys/class/net/lo/operstate; \
           touch /root-file 2>/dev/null && echo root-writable; \
           touch /tmp/file && echo tmp-writable",
        ],
    );
    assert_eq!(
        result.stdout, "lo\nunknown\ntmp-writable\n",
        "{}",
        result.stderr
    );
    // Raw sockets are dropped in this profile, so loopback is checked with TCP.
    let fetch = run(
        &env,
        &[
            "--image",
            &busybox,
            "--profile",
            "restrictive",
            "sh",
            "-c",
            "httpd -p 127.0.0.1:8080 -h /etc && wget -q -O - http://127.0.0.1:8080/passwd",
        ],
    );
    assert_eq!(
        fetch.stdout, "root:x:0:0:root:/root:/bin/sh\n",
        "{}",
        fetch.stderr
    );
    let ping = run(
        &env,
        &[
            "--image",
            &busybox,
            "--profile",
            "restrictive",
            "ping",
            "-c",
            "1",
            "127.0.0.1",
        ],
    );
    assert_ne!(ping.code, 0, "raw sockets work without CAP_NET_RAW");
}

#[test]
fn permissive_sees_the_host_network() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    // Sandboxes of parallel tests add and remove their `ak*` links meanwhile.
    let lasting = |name: &str| !name.starts_with("ak");
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| lasting(name))
        .collect();
    let result = run(
        &env,
        &[
            "--image",
            &busybox,
            "--profile",
            "permissive",
            "ls",
            "/sys/class/net",
        ],
    );
    let inside: Vec<&str> = result
        .stdout
        .split_whitespace()
        .filter(|name| lasting(name))
        .collect();
    assert_eq!(inside.len(), host.len(), "{}", result.stdout);
    let moderate = run(&env, &["--image", &busybox, "ls", "/sys/class/net"]);
    assert_eq!(moderate.stdout, "eth0\nlo\n", "{}", moderate.stderr);
    let touched = run(
        &env,
        &[
            "--image",
            &busybox,
            "sh",
            "-c",
            "touch /root-file && echo ok",
        ],
    );
    assert_eq!(touched.stdout, "ok\n", "{}", touched.stderr);
}

#[test]
fn permissive_mounts_workspace_and_home() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    let work = common::fresh_root();
    let home = common::fresh_root();
    std::fs::write(home.path().join("dotfile"), "from-home\n").unwrap();
    let config = common::mirror_config(&env, work.path());
    let output = common::output(
        common::agentkernel(common::shared_root())
            .current_dir(work.path())
            .env("HOME", home.path())
            .args(["run", "--config"])
            .arg(&config)
            .args([
                "--image",
                &busybox,
                "--profile",
                "permissive",
                "sh",
                "-c",
                "pwd; echo made-inside > result; cat /home/user/dotfile; \
                    touch /home/user/x 2>/dev/null || echo home-read-only",
            ]),
    );
    assert_eq!(
        output.stdout, "/workspace\nfrom-home\nhome-read-only\n",
        "{}",
        output.stderr
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("result")).unwrap(),
        "made-inside\n"
    );
}

#[test]
fn profile_limits_reach_the_cgroup() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    let cases = [
        ("moderate", "536870912", "1024"),
        ("restrictive", "268435456", "256"),
        ("permissive", "9223372036854771712", "4096"),
    ];
    for (profile, memory, pids) in cases {
        let result = run(
            &env,
            &[
                "--image",
                &busybox,
                "--profile",
                profile,
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max",
            ],
        );
        assert_eq!(
            result.stdout,
            format!("{memory}\n{pids}\n"),
            "{profile}: {}",
            result.stderr
        );
    }
}

#[test]
fn cgroup_limits_are_read_only_inside() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    for profile in ["permissive", "moderate", "restrictive"] {
        let result = run(
            &env,
            &[
                "--image",
                &busybox,
                "--profile",
                profile,
                "sh",
                "-c",
                "for f in pids/pids.max memory/memory.limit_in_bytes cpu/cpu.cfs_quota_us; do \
                 echo -1 2>/dev/null > /sys/fs/cgroup/$f && echo wrote $f; done; \
               cat /sys/fs/cgroup/pids/pids.max",
            ],
        );
        let expected = match profile {
            "permissive" => "4096\n",
            "moderate" => "1024\n",
            _ => "256\n",
        };
        assert_eq!(result.stdout, expected, "{profile}: {}", result.stderr);
    }
}
