//! The check of the isolated network's iptables rules: a run checks them with `iptables-save`
//! unless the nftables ruleset is unchanged since the last complete check, and a run that cannot
//! check them fails. This binary has one test, so no other sandbox of the test suite checks the
//! rules, and records a new generation, between its steps.

mod common;

use std::path::Path;
use std::process::Command;

use common::{agentkernel, env, output};

/// File in which runs record the nftables ruleset generation of their last complete rule check.
const RULE_CHECK_STAMP: &str = "/run/agentkernel-network.checked";

#[test]
fn missing_iptables_fails_the_run() {
    let Some(env) = env() else { return };
    let root = common::shared_root();
    let config = common::mirror_config(&env, root);
    let busybox = common::image(&env, "busybox:amd64-only");
    // A PATH without iptables-save: the rule check cannot run, so the command must not start.
    let empty = tempfile::tempdir().unwrap();
    let run_with_path = |path: Option<&Path>, network: &str| {
        let mut command = agentkernel(root);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        output(
            command
                .arg("run")
                .arg("--config")
                .arg(&config)
                .args(["--image", &busybox, "--profile", "moderate"])
                .args(["--network", network, "echo", "started"]),
        )
    };

    // A complete check records the ruleset generation; while it is unchanged, runs skip the
    // check and need no iptables-save.
    let checked = run_with_path(None, "isolated");
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let stamp = std::fs::read_to_string(RULE_CHECK_STAMP).unwrap();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert!(stamp.starts_with(boot_id.trim()), "{stamp}");
    let unchanged = run_with_path(Some(empty.path()), "isolated");
    assert_eq!(unchanged.code, 0, "{}", unchanged.stderr);
    assert_eq!(unchanged.stdout, "started\n");

    // Any ruleset change, here a chain created and deleted, makes the next run check again.
    let chain = format!("AK-STAMP-{}", std::process::id());
    for action in ["-N", "-X"] {
        let status = Command::new("iptables")
            .args(["-w", action, &chain])
            .status()
            .unwrap();
        assert!(status.success(), "iptables {action} {chain}");
    }
    let failed = run_with_path(Some(empty.path()), "isolated");
    assert_eq!(failed.code, 125, "{}", failed.stderr);
    assert_eq!(failed.stdout, "");
    assert_eq!(failed.stderr.lines().count(), 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("failed to run iptables-save"),
        "{}",
        failed.stderr
    );

    // Without an isolated network the same PATH works.
    let started = run_with_path(Some(empty.path()), "none");
    assert_eq!(started.code, 0, "{}", started.stderr);
    assert_eq!(started.stdout, "started\n");
}
