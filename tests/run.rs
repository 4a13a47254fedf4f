//! End-to-end tests of `agentkernel run`: real registry, real images built by umoci and
//! debootstrap, real sandboxes.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{agentkernel, blob_requests, env, fresh_root, full_images, image, run, run_in};

#[test]
fn python_hello_through_mirror() {
    let Some(env) = env() else { return };
    if !full_images() {
        panic!("the python image is missing: build the full image set");
    }
    let result = run(&env, &["python3", "-c", "print('hello')"]);
    assert_eq!(result.stderr, "");
    assert_eq!(result.stdout, "hello\n");
    assert_eq!(result.code, 0);
    let log = std::fs::read_to_string(&env.access_log).unwrap();
    assert!(
        log.contains("/v2/library/python/manifests/3.12-alpine"),
        "the mirror was not asked for library/python:3.12-alpine"
    );
}

#[test]
fn auto_detected_images() {
    let Some(env) = env() else { return };
    // alpine:3.20 in the test registry is the two-platform busybox index.
    let result = run(&env, &["cat", "/etc/test-registry-arch"]);
    assert_eq!(result.stdout, "amd64\n", "stderr: {}", result.stderr);
    assert_eq!(result.code, 0);
    if full_images() {
        let result = run(&env, &["node", "-e", "console.log(6 * 7)"]);
        assert_eq!(result.stdout, "42\n", "stderr: {}", result.stderr);
        let result = run(
            &env,
            &[
                "/usr/bin/python3",
                "-c",
                "import sys; print(sys.argv[1:])",
                "-x",
                "--y",
            ],
        );
        assert_eq!(
            result.stdout, "['-x', '--y']\n",
            "stderr: {}",
            result.stderr
        );
    }
}

#[test]
fn image_flag_overrides_detection() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    let result = run(&env, &["--image", &busybox, "python3", "-c", "1"]);
    // busybox has no python3: the command is not found, so detection did not win.
    assert_eq!(result.code, 127, "stderr: {}", result.stderr);
    assert!(result.stderr.contains("python3"), "{}", result.stderr);
}

#[test]
fn layer_formats_all_run() {
    let Some(env) = env() else { return };
    for tag in [
        "uncompressed",
        "zstd",
        "v2s2",
        "v2s2-list",
        "latest",
        "amd64-only",
    ] {
        let reference = image(&env, &format!("busybox:{tag}"));
        let result = run(
            &env,
            &["--image", &reference, "cat", "/etc/test-registry-arch"],
        );
        assert_eq!(result.stdout, "amd64\n", "{tag}: {}", result.stderr);
        assert_eq!(result.code, 0, "{tag}");
    }
}

#[test]
fn mixed_compression_layers_apply_in_order() {
    let Some(env) = env() else { return };
    if !full_images() {
        return;
    }
    let reference = image(&env, "python:3.12-mixed");
    let result = run(
        &env,
        &[
            "--image",
            &reference,
            "sh",
            "-c",
            "ls /opt/app; python3 -c 'print(2**10)'",
        ],
    );
    assert_eq!(result.stdout, "c\n1024\n", "stderr: {}", result.stderr);
}

#[test]
fn whiteouts_hardlinks_and_setuid() {
    let Some(env) = env() else { return };
    if !full_images() {
        return;
    }
    let script = "ls -A /opt/app; \
        test -e /etc/test-registry-base-only && echo base-only-present; \
        test -e /usr/lib/python3.11/pydoc_data && echo pydoc-present; \
        test -e /usr/lib/python3.11/json/__init__.py && echo json-present; \
        stat -c %i /usr/bin/perl; stat -c %i /usr/bin/perl5.36.0; \
        stat -c %a:%u:%g /usr/bin/su; readlink /bin";
    let python = image(&env, "python:3.12-alpine");
    let result = run(&env, &["--image", &python, "sh", "-c", script]);
    let lines: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        lines[0], "c",
        "stdout: {}\nstderr: {}",
        result.stdout, result.stderr
    );
    assert_eq!(lines[1], "json-present");
    assert_eq!(lines[2], lines[3], "perl and perl5.36.0 are not one inode");
    assert_eq!(lines[4], "4755:0:0");
    assert_eq!(lines[5], "usr/bin");
    assert_eq!(lines.len(), 6, "{}", result.stdout);
}

#[test]
fn cached_image_sends_no_blob_requests() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let reference = image(&env, "busybox:zstd");
    let before = blob_requests(&env);
    let first = run_in(&env, root.path(), &["--image", &reference, "true"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let after_first = blob_requests(&env);
    assert!(
        after_first >= before + 2,
        "the first run fetched no config and layer blobs"
    );
    let second = run_in(&env, root.path(), &["--image", &reference, "true"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        blob_requests(&env),
        after_first,
        "the second run fetched blobs"
    );
}

#[test]
fn runs_never_modify_the_cache() {
    let Some(env) = env() else { return };
    let reference = image(&env, "busybox:amd64-only");
    let first = run(
        &env,
        &[
            "--image",
            &reference,
            "sh",
            "-c",
            "rm -rf /bin/cat /etc/passwd; echo x > /etc/new; echo done",
        ],
    );
    assert_eq!(first.stdout, "done\n", "{}", first.stderr);
    let second = run(
        &env,
        &[
            "--image",
            &reference,
            "sh",
            "-c",
            "cat /etc/passwd; ls /etc/new 2>&1",
        ],
    );
    assert_eq!(
        second.stdout, "root:x:0:0:root:/root:/bin/sh\nls: /etc/new: No such file or directory\n",
        "{}",
        second.stderr
    );
}

#[test]
fn exit_codes_pass_through() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    let cases: [(&[&str], i32); 5] = [
        (&["sh", "-c", "exit 7"], 7),
        (&["true"], 0),
        (&["sh", "-c", "kill -9 $$"], 137),
        (&["/no/such/program"], 127),
        (&["/etc/passwd"], 126),
    ];
    for (command, code) in cases {
        let mut args = vec!["--image", busybox.as_str()];
        args.extend_from_slice(command);
        let result = run(&env, &args);
        assert_eq!(result.code, code, "{command:?}: {}", result.stderr);
    }
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let Some(env) = env() else { return };
    let busybox = image(&env, "busybox:amd64-only");
    let result = run(
        &env,
        &[
            "--image",
            &busybox,
            "sh",
            "-c",
            "echo out; echo err >&2; echo out2",
        ],
    );
    assert_eq!(result.stdout, "out\nout2\n");
    assert_eq!(result.stderr, "err\n");
}

#[test]
fn stdin_is_forwarded_from_a_pipe() {
    let Some(env) = env() else { return };
    let root = common::shared_root();
    let config = common::mirror_config(&env, root);
    let busybox = image(&env, "busybox:amd64-only");
    let mut child = agentkernel(root)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--image", &busybox, "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped input\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "PIPED INPUT\n");
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn agentkernel_failures_exit_125() {
    let Some(env) = env() else { return };
    let missing = image(&env, "busybox:no-such-tag");
    let result = run(&env, &["--image", &missing, "true"]);
    assert_eq!(result.code, 125);
    assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
    assert!(result.stderr.contains(&missing), "{}", result.stderr);

    let result = run(
        &env,
        &["--image", "127.0.0.1:1/library/busybox:latest", "true"],
    );
    assert_eq!(result.code, 125);
    assert_eq!(result.stderr.lines().count(), 1, "{}", result.stderr);
    assert!(result.stderr.contains("127.0.0.1:1"), "{}", result.stderr);

    let result = run(&env, &["--image", "Not A Reference", "true"]);
    assert_eq!(result.code, 125);
    assert!(
        result.stderr.contains("Not A Reference"),
        "{}",
        result.stderr
    );

    let result = run(&env, &["--runtime", "docker", "true"]);
    assert_eq!(result.code, 125);
    assert!(result.stderr.contains("native"), "{}", result.stderr);
}

#[test]
fn nothing_left_after_a_run() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let config = common::mirror_config(&env, root.path());
    let busybox = image(&env, "busybox:amd64-only");
    // Pull first, so the sandbox's state directory is the only thing that appears below.
    let pulled = run_in(&env, root.path(), &["--image", &busybox, "true"]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);

    let mut child = agentkernel(root.path())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--image", &busybox, "sleep", "1"])
        .spawn()
        .unwrap();
    let containers = root.path().join("containers");
    let id = loop {
        let entry = std::fs::read_dir(&containers)
            .ok()
            .and_then(|mut dir| dir.next())
            .map(|entry| entry.unwrap().file_name().into_string().unwrap());
        if let Some(id) = entry {
            break id;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its state appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    // libcontainer writes its state before it creates the cgroup.
    let cgroup = format!("/sys/fs/cgroup/memory/agentkernel/{id}");
    while !std::path::Path::new(&cgroup).is_dir() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{cgroup} never appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));

    for controller in ["memory", "pids", "cpu", "devices", "freezer"] {
        let path = format!("/sys/fs/cgroup/{controller}/agentkernel/{id}");
        assert!(!std::path::Path::new(&path).exists(), "{path} was left");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(root.path().to_str().unwrap()),
        "a mount under the root was left"
    );
    for dir in ["sandboxes", "containers"] {
        let path = root.path().join(dir);
        let left: Vec<_> = std::fs::read_dir(&path)
            .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{} still has {left:?}", path.display());
    }
}
