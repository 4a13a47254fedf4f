//! Compares agentkernel's unpacked layers with `umoci unpack` of the same image.
//!
//! Each test pulls an image from the test registry into a fresh cache root and mounts the
//! cached layer directories as a read-only overlayfs. It unpacks the same image from an
//! OCI layout with umoci 0.4.7 and compares both trees entry by entry: type, mode with the
//! setuid, setgid and sticky bits, owner, size, SHA-256 of the content, symlink target,
//! device number, xattrs (without overlayfs' own `trusted.overlay.*`), the groups of paths
//! that share an inode, and the mtime of every entry.
//!
//! Directory mtimes are not compared for a layer that creates directories without listing
//! them. Both tools give such a directory the time of the unpack. umoci also gives that
//! time to the directory in which it creates them, where agentkernel keeps the time from
//! the layer that last listed it.
//!
//! umoci 0.4.7 cannot read zstd layers, so it gets a copy of a zstd image whose layers
//! are decompressed to plain tars with the same diff IDs.

mod common;
mod crafted;
mod fstree;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, agentkernel, env, fresh_root, full_images, image, output};
use crafted::{Layout, run_tool};
use fstree::{Compared, OverlayMount, compare, snapshot};
use rootfs_cache::{ImageSource, ImageStore};

/// Returns the OCI layout of the test images, which the tests only read.
fn test_layout() -> PathBuf {
    std::env::var_os("AGENTKERNEL_TEST_LAYOUT")
        .expect("AGENTKERNEL_TEST_LAYOUT is not set by with-registries.sh")
        .into()
}

/// Copies tag `tag` of the test layout into a new layout that umoci can read.
fn import_test_image(tag: &str) -> Layout {
    let layout = Layout::new();
    layout.import(&test_layout(), tag);
    layout.decompress_zstd_layers(tag);
    layout
}

/// Pulls `reference` into `root` with `agentkernel pull` and returns its layer
/// directories, bottom layer first.
fn pull_layers(root: &Path, reference: &str) -> Vec<PathBuf> {
    let pulled = output(agentkernel(root).args(["pull", reference]));
    assert_eq!(pulled.code, 0, "pull {reference}: {}", pulled.stderr);
    let source: ImageSource = reference.parse().unwrap();
    let image = ImageStore::open(root)
        .unwrap()
        .lookup(source)
        .unwrap()
        .unwrap_or_else(|| panic!("{reference} is not in the cache after the pull"));
    image.layer_dirs
}

/// Every mtime compared.
const ALL: Compared = Compared {
    mtimes: true,
    dir_mtimes: true,
};

/// Asserts that umoci's `expected` tree and the overlay of `layer_dirs` differ in
/// exactly the `known` differences, in path order.
fn assert_same_tree(
    name: &str,
    expected: &Path,
    layer_dirs: &[PathBuf],
    compared: Compared,
    known: &[&str],
) {
    let mount = OverlayMount::new(layer_dirs);
    let want = snapshot(expected);
    let got = snapshot(mount.path());
    let differences: Vec<String> = compare(&want, &got, compared)
        .iter()
        .map(ToString::to_string)
        .collect();
    if differences != known {
        let first = differences
            .iter()
            .find(|difference| !known.contains(&difference.as_str()))
            .map_or("none (a known difference is missing)", String::as_str);
        panic!(
            "{name}: {} differences between umoci and agentkernel, first unexpected: {first}\n{}",
            differences.len(),
            differences
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert!(want.nodes.len() > 1, "{name}: umoci unpacked an empty tree");
    eprintln!("{name}: {} entries compared", want.nodes.len());
}

/// Compares tag `tag` of the test layout, pulled from the registry as `repository`.
/// umoci gets a copy of the image, because it may write to a layout that it opens.
fn compare_test_image(env: &Env, tag: &str, repository: &str) {
    let layout = import_test_image(tag);
    let work = fresh_root();
    let expected = layout.umoci_unpack(tag, &work.path().join("bundle"));
    let root = fresh_root();
    let layer_dirs = pull_layers(root.path(), &image(env, repository));
    assert_same_tree(tag, &expected, &layer_dirs, ALL, &[]);
}

fn require_full_images() {
    if !full_images() {
        panic!("the Debian images are missing: build the full image set");
    }
}

#[test]
fn busybox_amd64_matches_umoci() {
    let Some(env) = env() else { return };
    compare_test_image(&env, "busybox-amd64", "busybox:amd64-only");
}

#[test]
fn busybox_uncompressed_matches_umoci() {
    let Some(env) = env() else { return };
    compare_test_image(&env, "busybox-tar", "busybox:uncompressed");
}

#[test]
fn busybox_zstd_matches_umoci() {
    let Some(env) = env() else { return };
    compare_test_image(&env, "busybox-zstd", "busybox:zstd");
}

#[test]
fn busybox_config_matches_umoci() {
    let Some(env) = env() else { return };
    compare_test_image(&env, "busybox-config", "busybox:config");
}

#[test]
fn busybox_arm64_matches_umoci() {
    let Some(env) = env() else { return };
    // The registry has the arm64 image only inside an index, which a pull on an amd64
    // host resolves to amd64, so the single-platform manifest is pushed on its own.
    let layout = import_test_image("busybox-arm64");
    compare_crafted(&env, &layout, "busybox-arm64");
}

#[test]
fn debian_matches_umoci() {
    let Some(env) = env() else { return };
    require_full_images();
    compare_test_image(&env, "debian", "debian:bookworm-slim");
}

#[test]
fn python_matches_umoci() {
    let Some(env) = env() else { return };
    require_full_images();
    compare_test_image(&env, "python", "python:3.12-alpine");
}

#[test]
fn python_mixed_compression_matches_umoci() {
    let Some(env) = env() else { return };
    require_full_images();
    compare_test_image(&env, "python-mixed", "python:3.12-mixed");
}

#[test]
fn node_matches_umoci() {
    let Some(env) = env() else { return };
    require_full_images();
    compare_test_image(&env, "node", "node:22-alpine");
}

/// Pushes image `tag` of `layout` to the registry, pulls it, and compares it with umoci.
fn compare_crafted(env: &Env, layout: &Layout, tag: &str) {
    compare_crafted_except(env, layout, tag, ALL, &[]);
}

/// Compares like [`compare_crafted`], checking only what `compared` selects, and expects
/// exactly the `known` differences.
fn compare_crafted_except(
    env: &Env,
    layout: &Layout,
    tag: &str,
    compared: Compared,
    known: &[&str],
) {
    let reference = layout.push(tag, &env.registry, &format!("umoci-compare:{tag}"));
    let work = fresh_root();
    let expected = layout.umoci_unpack(tag, &work.path().join("bundle"));
    let root = fresh_root();
    let layer_dirs = pull_layers(root.path(), &reference);
    assert_same_tree(tag, &expected, &layer_dirs, compared, known);
}

fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs GNU tar with `args` in `dir` and returns the archive it writes to stdout.
fn gnu_tar(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--numeric-owner", "-cf", "-"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn whiteouts_then_recreation_match_umoci() {
    let Some(env) = env() else { return };
    let layout = Layout::new();
    layout.new_image("recreate");
    let bundle = layout.bundle("recreate");
    let rootfs = bundle.rootfs();
    write(&rootfs.join("w/file"), "first\n");
    write(&rootfs.join("w/dir/old"), "old\n");
    write(&rootfs.join("w/dir/sub/deep"), "deep\n");
    write(&rootfs.join("w/keep"), "keep\n");
    bundle.commit();

    fs::remove_file(rootfs.join("w/file")).unwrap();
    fs::remove_dir_all(rootfs.join("w/dir")).unwrap();
    bundle.commit();

    write(&rootfs.join("w/file"), "second\n");
    write(&rootfs.join("w/dir/new"), "new\n");
    chmod(&rootfs.join("w/dir"), 0o750);
    bundle.commit();

    compare_crafted(&env, &layout, "recreate");
}

#[test]
fn opaque_marker_between_entries_matches_umoci() {
    let Some(env) = env() else { return };
    let layout = Layout::new();
    layout.new_image("opaque");
    let bundle = layout.bundle("opaque");
    write(&bundle.rootfs().join("o/lower-a"), "a\n");
    write(&bundle.rootfs().join("o/sub/lower-b"), "b\n");
    write(&bundle.rootfs().join("o/before"), "lower\n");
    bundle.commit();

    // GNU tar keeps the order of its arguments with --no-recursion, so the layer lists
    // `o/before`, then the opaque marker, then `o/after`.
    let staging = tempfile::tempdir().unwrap();
    write(&staging.path().join("o/before"), "upper\n");
    write(&staging.path().join("o/.wh..wh..opq"), "");
    write(&staging.path().join("o/after"), "after\n");
    let tar = gnu_tar(
        staging.path(),
        &[
            "--no-recursion",
            "o",
            "o/before",
            "o/.wh..wh..opq",
            "o/after",
        ],
    );
    layout.append_tar_layer("opaque", &tar);

    compare_crafted(&env, &layout, "opaque");
}

#[test]
fn type_changes_match_umoci() {
    let Some(env) = env() else { return };
    let layout = Layout::new();
    layout.new_image("types");
    let bundle = layout.bundle("types");
    let rootfs = bundle.rootfs();
    write(&rootfs.join("t/file-dir-file"), "file 1\n");
    write(&rootfs.join("t/dir-symlink/child"), "child\n");
    write(&rootfs.join("t/dir-file/child"), "child\n");
    bundle.commit();

    fs::remove_file(rootfs.join("t/file-dir-file")).unwrap();
    write(&rootfs.join("t/file-dir-file/inside"), "inside\n");
    fs::remove_dir_all(rootfs.join("t/dir-symlink")).unwrap();
    std::os::unix::fs::symlink("/etc", rootfs.join("t/dir-symlink")).unwrap();
    fs::remove_dir_all(rootfs.join("t/dir-file")).unwrap();
    write(&rootfs.join("t/dir-file"), "now a file\n");
    bundle.commit();

    fs::remove_dir_all(rootfs.join("t/file-dir-file")).unwrap();
    write(&rootfs.join("t/file-dir-file"), "file 2\n");
    bundle.commit();

    compare_crafted(&env, &layout, "types");
}

#[test]
fn hardlinks_with_replaced_target_match_umoci() {
    let Some(env) = env() else { return };
    let layout = Layout::new();
    layout.new_image("links");
    let bundle = layout.bundle("links");
    let rootfs = bundle.rootfs();
    write(&rootfs.join("h/a"), "shared\n");
    fs::hard_link(rootfs.join("h/a"), rootfs.join("h/b")).unwrap();
    fs::hard_link(rootfs.join("h/a"), rootfs.join("h/c")).unwrap();
    write(&rootfs.join("h/x"), "x\n");
    fs::hard_link(rootfs.join("h/x"), rootfs.join("h/y")).unwrap();
    bundle.commit();

    // `h/a` gets new content in a new inode, so `h/b` and `h/c` keep the old content.
    fs::remove_file(rootfs.join("h/a")).unwrap();
    write(&rootfs.join("h/a"), "replaced\n");
    bundle.commit();

    // A layer whose only entry is a hardlink to `h/x` of a lower layer: GNU tar writes
    // `h/x` as a file and `h/z` as a link to it, then `--delete` drops `h/x`.
    let staging = tempfile::tempdir().unwrap();
    write(&staging.path().join("h/x"), "x\n");
    fs::hard_link(staging.path().join("h/x"), staging.path().join("h/z")).unwrap();
    let both = gnu_tar(staging.path(), &["--no-recursion", "h/x", "h/z"]);
    let archive = staging.path().join("both.tar");
    fs::write(&archive, both).unwrap();
    run_tool("tar", &["--delete", "-f", archive.to_str().unwrap(), "h/x"]);
    layout.append_tar_layer("links", &fs::read(&archive).unwrap());

    // agentkernel copies `h/x` up into the last layer to link `h/z` to it, as link(2) on
    // an overlayfs mount without the index feature does, so `h/y` keeps the content but
    // leaves the group.
    compare_crafted_except(
        &env,
        &layout,
        "links",
        ALL,
        &[
            r#"/h/x: hardlinks differs: umoci ["h/y", "h/z"], agentkernel ["h/z"]"#,
            r#"/h/y: hardlinks differs: umoci ["h/x", "h/z"], agentkernel []"#,
            r#"/h/z: hardlinks differs: umoci ["h/x", "h/y"], agentkernel ["h/x"]"#,
        ],
    );
}

#[test]
fn long_names_match_umoci() {
    let Some(env) = env() else { return };
    let long_dir = format!("long/{}", "d".repeat(120));
    let long_file = format!("{long_dir}/{}", "f".repeat(150));
    let layout = Layout::new();
    layout.new_image("long");
    let bundle = layout.bundle("long");
    let rootfs = bundle.rootfs();
    // umoci writes PAX records for names over 100 bytes.
    write(&rootfs.join(&long_file), "pax\n");
    std::os::unix::fs::symlink(&long_file, rootfs.join("long/pax-link")).unwrap();
    bundle.commit();

    // GNU tar writes GNU long-name and long-link entries.
    let staging = tempfile::tempdir().unwrap();
    let gnu_dir = format!("gnu/{}", "g".repeat(110));
    let gnu_file = format!("{gnu_dir}/{}", "h".repeat(140));
    write(&staging.path().join(&gnu_file), "gnu\n");
    std::os::unix::fs::symlink(
        format!("/{gnu_file}"),
        staging.path().join("gnu/long-target-link"),
    )
    .unwrap();
    fs::hard_link(
        staging.path().join(&gnu_file),
        staging
            .path()
            .join(format!("{gnu_dir}/{}", "l".repeat(130))),
    )
    .unwrap();
    let tar = gnu_tar(staging.path(), &["--format=gnu", "gnu"]);
    layout.append_tar_layer("long", &tar);

    compare_crafted(&env, &layout, "long");
}

#[test]
fn implied_parent_directories_match_umoci() {
    let Some(env) = env() else { return };
    let layout = Layout::new();
    layout.new_image("implied");
    let bundle = layout.bundle("implied");
    write(&bundle.rootfs().join("etc/lower"), "lower\n");
    chmod(&bundle.rootfs().join("etc"), 0o750);
    bundle.commit();

    // Neither `imp`, `imp/a`, `imp/a/b` nor `etc` is in this layer: umoci and agentkernel
    // must both create the new parents as 0755 root:root and keep `etc` as it was.
    let staging = tempfile::tempdir().unwrap();
    write(&staging.path().join("imp/a/b/file"), "implied\n");
    write(&staging.path().join("etc/upper"), "upper\n");
    let tar = gnu_tar(
        staging.path(),
        &["--no-recursion", "imp/a/b/file", "etc/upper"],
    );
    layout.append_tar_layer("implied", &tar);

    let compared = Compared {
        mtimes: true,
        dir_mtimes: false,
    };
    compare_crafted_except(&env, &layout, "implied", compared, &[]);
}

#[test]
fn paths_through_lower_symlinks_match_umoci() {
    let Some(env) = env() else { return };
    let layout = Layout::new();
    layout.new_image("usrmerge");
    let bundle = layout.bundle("usrmerge");
    let rootfs = bundle.rootfs();
    write(&rootfs.join("usr/lib/old.so"), "old\n");
    write(&rootfs.join("usr/lib/kept.so"), "kept\n");
    std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
    bundle.commit();

    // A layer that names `lib/...` as tools do that write the path they were given
    // (`umoci insert` into /lib among them), without resolving the lower `lib` symlink.
    let staging = tempfile::tempdir().unwrap();
    write(&staging.path().join("lib/new.so"), "new\n");
    write(&staging.path().join("lib/.wh.old.so"), "");
    let tar = gnu_tar(
        staging.path(),
        &["--no-recursion", "lib/new.so", "lib/.wh.old.so"],
    );
    layout.append_tar_layer("usrmerge", &tar);

    compare_crafted(&env, &layout, "usrmerge");
}

#[test]
fn debian_file_capabilities_match_umoci() {
    let Some(env) = env() else { return };
    require_full_images();
    // Debian bookworm minbase ships no binary with file capabilities (`getcap -r /` of
    // the debian image is empty), so a layer adds them with setcap, as iputils-ping's
    // postinst does for /bin/ping.
    let layout = import_test_image("debian");
    let bundle = layout.bundle("debian");
    let rootfs = bundle.rootfs();
    let existing = rootfs.join("usr/bin/dd");
    let added = rootfs.join("usr/local/bin/bind-low-port");
    fs::copy(rootfs.join("usr/bin/true"), &added).unwrap();
    run_tool(
        "setcap",
        &["cap_net_bind_service=+ep", existing.to_str().unwrap()],
    );
    run_tool(
        "setcap",
        &["cap_net_raw,cap_net_admin=+p", added.to_str().unwrap()],
    );
    chmod(&rootfs.join("usr/bin/dd"), 0o4755);
    bundle.commit();

    let reference = layout.push("debian", &env.registry, "umoci-compare:caps");
    let work = fresh_root();
    let expected = layout.umoci_unpack("debian", &work.path().join("bundle"));
    let capabilities = run_tool("getcap", &["-r", expected.to_str().unwrap()]);
    assert_eq!(
        capabilities.lines().count(),
        2,
        "umoci's tree has other capabilities than the two set: {capabilities}"
    );
    let root = fresh_root();
    let layer_dirs = pull_layers(root.path(), &reference);
    assert_same_tree("caps", &expected, &layer_dirs, ALL, &[]);
}
