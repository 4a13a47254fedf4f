//! Runs images whose last layer is a hostile tar: paths with `..` or a leading `/`,
//! symlinks written through, hardlinks and whiteouts aimed outside the root, device nodes
//! and a setuid-root file.
//!
//! Each image is the busybox test image plus one raw tar layer, pushed to the test
//! registry and run with `agentkernel run` in a cache root that has a canary directory
//! next to it. Nothing outside the cache root may change. The run either succeeds with
//! the entries placed inside the sandbox's own root, or it exits 125 with one stderr line
//! that names the layer digest and the entry.

mod common;
mod crafted;
mod fstree;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, Run, agentkernel, env, output};
use crafted::{Layout, TarEntry, TarWriter};
use fstree::{Compared, Tree, compare, snapshot};
use rootfs_cache::Digest;

/// Content of the canary file next to the cache root.
const CANARY: &[u8] = b"canary\n";

/// An image with one hostile layer on top of busybox, pushed to the test registry.
struct HostileImage {
    reference: String,
    layer: Digest,
}

fn push_hostile_image(env: &Env, name: &str, tar: &TarWriter) -> HostileImage {
    let source = std::env::var_os("AGENTKERNEL_TEST_LAYOUT")
        .expect("AGENTKERNEL_TEST_LAYOUT is not set by with-registries.sh");
    let layout = Layout::new();
    layout.import(Path::new(&source), "busybox-amd64");
    let layer = layout.append_tar_layer("busybox-amd64", &tar.finish());
    let reference = layout.push("busybox-amd64", &env.registry, &format!("hostile:{name}"));
    HostileImage { reference, layer }
}

/// A cache root with a canary directory next to it, and names under the host's `/` and
/// `/tmp` that no entry may create.
struct Host {
    base: tempfile::TempDir,
    probe: String,
    canary_before: Tree,
}

impl Host {
    fn new(case: &str) -> Host {
        let base = tempfile::Builder::new()
            .prefix("ak-hostile-")
            .tempdir_in("/tmp")
            .unwrap();
        // World-searchable like /var/lib, so the test checks what another host user can reach.
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let canary = base.path().join("canary");
        fs::create_dir_all(canary.join("dir")).unwrap();
        fs::write(canary.join("secret"), CANARY).unwrap();
        fs::create_dir(base.path().join("root")).unwrap();
        Host {
            canary_before: snapshot(&canary),
            probe: format!("agentkernel-hostile-{}-{case}", std::process::id()),
            base,
        }
    }

    fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    fn run(&self, image: &HostileImage, script: &str) -> Run {
        output(agentkernel(&self.root()).args([
            "run",
            "--image",
            &image.reference,
            "sh",
            "-c",
            script,
        ]))
    }

    /// Asserts that the canary is as it was, that the base directory holds only the
    /// cache root and the canary, and that no probe exists on the host.
    fn assert_outside_untouched(&self) {
        let canary = self.base.path().join("canary");
        assert_eq!(fs::read(canary.join("secret")).unwrap(), CANARY);
        let compared = Compared {
            mtimes: true,
            dir_mtimes: true,
        };
        let differences = compare(&self.canary_before, &snapshot(&canary), compared);
        let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
        assert!(listed.is_empty(), "the canary changed: {listed:?}");

        let mut names: Vec<String> = fs::read_dir(self.base.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["canary", "root"]);

        for dir in ["/", "/tmp"] {
            let path = Path::new(dir).join(&self.probe);
            let escaped = fs::symlink_metadata(&path).is_ok();
            if escaped {
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
            assert!(
                !escaped,
                "an entry escaped the cache and created {}",
                path.display()
            );
        }
    }
}

/// Asserts that the run failed as agentkernel's own failure with one stderr line naming
/// the layer and `entry`.
fn assert_rejected(run: &Run, image: &HostileImage, entry: &str, reason: &str) {
    assert_eq!(
        run.code, 125,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&image.layer.to_string()),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("invalid layer entry {entry:?}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(reason), "{}", run.stderr);
    assert_eq!(run.stdout, "");
}

#[test]
fn dot_dot_and_absolute_paths_stay_in_image() {
    let Some(env) = env() else { return };
    let host = Host::new("dotdot");
    let mut tar = TarWriter::default();
    tar.file("../../../../../../canary/secret", 0o644, b"deep\n")
        .file("../escaped", 0o644, b"dotdot\n")
        .file(&format!("/{}", host.probe), 0o644, b"absolute\n")
        .file(
            &format!("../../../../../../../../tmp/{}", host.probe),
            0o644,
            b"tmp\n",
        );
    let image = push_hostile_image(&env, "dotdot", &tar);

    let script = format!(
        "cat /canary/secret /escaped /{probe} /tmp/{probe}",
        probe = host.probe
    );
    let run = host.run(&image, &script);
    assert_eq!(
        run.stdout, "deep\ndotdot\nabsolute\ntmp\n",
        "{}",
        run.stderr
    );
    assert_eq!(run.code, 0);
    host.assert_outside_untouched();
}

#[test]
fn symlinks_written_through_stay_in_image() {
    let Some(env) = env() else { return };
    let host = Host::new("symlink");
    let mut tar = TarWriter::default();
    tar.symlink("rootlink", "/")
        .file(
            &format!("rootlink/{}", host.probe),
            0o644,
            b"absolute link\n",
        )
        .symlink("sub/up", "../../../../../..")
        .file("sub/up/canary/secret", 0o644, b"relative link\n")
        .symlink("tmplink", "/tmp")
        .file(&format!("tmplink/{}", host.probe), 0o644, b"tmp link\n")
        .symlink("passwd", "/etc/passwd")
        .file("passwd", 0o644, b"replaced symlink\n")
        .hardlink("passwd-link", "/etc/passwd");
    let image = push_hostile_image(&env, "symlink", &tar);

    let script = format!(
        "cat /{probe} /canary/secret /tmp/{probe} /passwd /passwd-link; readlink /rootlink",
        probe = host.probe
    );
    let run = host.run(&image, &script);
    assert_eq!(
        run.stdout,
        "absolute link\nrelative link\ntmp link\nreplaced symlink\n\
         root:x:0:0:root:/root:/bin/sh\n/\n",
        "{}",
        run.stderr
    );
    assert_eq!(run.code, 0);
    host.assert_outside_untouched();
}

#[test]
fn hardlink_outside_is_rejected() {
    let Some(env) = env() else { return };
    let host = Host::new("hardlink");
    let mut tar = TarWriter::default();
    tar.hardlink("h", "../../../../../canary/secret");
    let image = push_hostile_image(&env, "hardlink", &tar);

    let run = host.run(&image, "cat /h");
    assert_rejected(
        &run,
        &image,
        "h",
        "not found in this layer or its parent layers",
    );
    host.assert_outside_untouched();
}

#[test]
fn whiteouts_outside_stay_in_image() {
    let Some(env) = env() else { return };
    let host = Host::new("whiteout");
    let mut tar = TarWriter::default();
    tar.file("../../../../../.wh.canary", 0o644, b"")
        .symlink("link", "../../../canary")
        .file("link/.wh.secret", 0o644, b"")
        .file(&format!("/.wh.{}", host.probe), 0o644, b"")
        .file("../../../../tmp/.wh..wh..opq", 0o644, b"")
        .file("../../../etc/.wh.group", 0o644, b"");
    let image = push_hostile_image(&env, "whiteout", &tar);

    let host_tmp_xattrs = fstree::read_xattrs(Path::new("/tmp"));
    let run = host.run(&image, "ls -a /tmp; cat /etc/passwd; ls /etc/group /canary");
    // busybox's /tmp is empty, so the opaque marker leaves it as it was.
    assert_eq!(
        run.stdout, ".\n..\nroot:x:0:0:root:/root:/bin/sh\n",
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr,
        "ls: /etc/group: No such file or directory\nls: /canary: No such file or directory\n"
    );
    assert_eq!(run.code, 1);
    assert_eq!(fstree::read_xattrs(Path::new("/tmp")), host_tmp_xattrs);
    host.assert_outside_untouched();
}

#[test]
fn whiteout_device_number_is_rejected() {
    let Some(env) = env() else { return };
    let host = Host::new("device-0-0");
    let mut tar = TarWriter::default();
    tar.add(TarEntry {
        name: "dev/sneaky",
        kind: b'3',
        mode: 0o600,
        ..TarEntry::default()
    });
    let image = push_hostile_image(&env, "device-0-0", &tar);

    let run = host.run(&image, "true");
    assert_rejected(
        &run,
        &image,
        "dev/sneaky",
        "character device 0/0 is the overlayfs whiteout",
    );
    host.assert_outside_untouched();
}

#[test]
fn device_nodes_from_image_are_unusable() {
    let Some(env) = env() else { return };
    let host = Host::new("devices");
    // /dev/mem, and the block device that holds the host's root file system.
    let root_dev = fs::metadata("/").unwrap().dev();
    let disk = (
        nix::sys::stat::major(root_dev) as u32,
        nix::sys::stat::minor(root_dev) as u32,
    );
    let mut tar = TarWriter::default();
    tar.add(TarEntry {
        name: "mem",
        kind: b'3',
        mode: 0o666,
        device: (1, 1),
        ..TarEntry::default()
    })
    .add(TarEntry {
        name: "disk",
        kind: b'4',
        mode: 0o666,
        device: disk,
        ..TarEntry::default()
    });
    let image = push_hostile_image(&env, "devices", &tar);

    let script = "for node in /mem /disk; do \
                  if head -c 1 $node >/dev/null 2>&1; then echo $node readable; \
                  else echo $node denied; fi; done; stat -c '%t:%T' /mem";
    let run = host.run(&image, script);
    assert_eq!(
        run.stdout, "/mem denied\n/disk denied\n1:1\n",
        "{}",
        run.stderr
    );
    assert_eq!(run.code, 0);
    host.assert_outside_untouched();
}

#[test]
fn setuid_root_file_stays_private() {
    let Some(env) = env() else { return };
    let host = Host::new("setuid");
    let mut tar = TarWriter::default();
    tar.add(TarEntry {
        name: "bin/suid-sh",
        mode: 0o4755,
        data: b"#!/bin/sh\nid -u\n",
        ..TarEntry::default()
    });
    let image = push_hostile_image(&env, "setuid", &tar);

    let run = host.run(&image, "stat -c '%a %u %g' /bin/suid-sh");
    assert_eq!(run.stdout, "4755 0 0\n", "{}", run.stderr);
    assert_eq!(run.code, 0);
    host.assert_outside_untouched();

    // The cached copy keeps its setuid bit, so no other host user may reach it.
    let cached = find_file(&host.root().join("layers"), "suid-sh");
    assert_eq!(fs::metadata(&cached).unwrap().mode() & 0o7777, 0o4755);
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "stat"])
        .arg(&cached)
        .output()
        .unwrap();
    assert!(
        !nobody.status.success(),
        "user 65534 can reach {}",
        cached.display()
    );
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&nobody.stderr)
    );
}

/// Returns the only file named `name` below `dir`.
fn find_file(dir: &Path, name: &str) -> PathBuf {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    assert_eq!(found.len(), 1, "{name} below {}: {found:?}", dir.display());
    found.pop().unwrap()
}
