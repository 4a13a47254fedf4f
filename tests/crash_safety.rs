//! The image cache after a pull is killed (SIGKILL at random points) or runs out of disk
//! space: no incomplete layer or damaged blob is ever in the cache, and the next pull
//! completes from what is there.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Run, env, full_images, image};
use rand::{Rng, SeedableRng};
use rootfs_cache::Digest;

const TRIALS: usize = 20;

/// The tests of this file run one at a time, so that the clean pull's duration, which
/// sets the kill delays, is measured without another pull running.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `body` with the path of a new tmpfs of `size_mib` MiB, on a new thread in a new
/// mount namespace. Only the thread and the processes it starts see the tmpfs, and the
/// tmpfs goes away with the namespace when the thread ends.
fn in_private_tmpfs(size_mib: u32, body: impl FnOnce(&Path) + Send + 'static) {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};

    let mount_point = common::fresh_root();
    let dir = mount_point.path().to_owned();
    std::thread::spawn(move || {
        // unshare(CLONE_NEWNS) gives only the calling thread a new mount namespace, and
        // the processes it starts inherit it.
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");
        mount(
            Some("tmpfs"),
            &dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(format!("size={size_mib}m").as_str()),
        )
        .expect("mount tmpfs");
        body(&dir);
        umount2(&dir, MntFlags::MNT_DETACH).expect("unmount tmpfs");
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    drop(mount_point);
}

/// Builds an `agentkernel` command with the cache root `root`.
fn agentkernel(root: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentkernel"));
    command
        .env("AGENTKERNEL_ROOT", root)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

fn output(command: &mut Command) -> Run {
    let output = command.output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn pull_command(reference: &str, root: &Path) -> Command {
    let mut command = agentkernel(root);
    command.arg("pull").arg(reference);
    command
}

fn pull(reference: &str, root: &Path) -> Run {
    output(&mut pull_command(reference, root))
}

/// Lists the entries of `blobs/tmp` and `layers/tmp` under `root`, as paths relative to
/// `root`.
fn temporary_entries(root: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    for dir in ["blobs/tmp", "layers/tmp"] {
        for path in files_in(&root.join(dir)) {
            entries.push(path.strip_prefix(root).unwrap().to_owned());
        }
    }
    entries
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Lists the metadata of every entry under `dir` by relative path: type, mode, owner, link
/// count, size, device number, mtime (except for whiteouts) and symlink target. File
/// contents are compared separately.
fn tree_listing(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(base: &Path, dir: &Path, listing: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let kind = metadata.file_type();
            let target = if kind.is_symlink() {
                std::fs::read_link(&path).unwrap().display().to_string()
            } else {
                String::new()
            };
            let rdev = if kind.is_char_device() || kind.is_block_device() {
                metadata.rdev()
            } else {
                0
            };
            let size = if kind.is_file() { metadata.size() } else { 0 };
            // A whiteout (character device 0/0) gets the time it was created as mtime.
            let mtime = if kind.is_char_device() && rdev == 0 {
                0
            } else {
                metadata.mtime()
            };
            listing.insert(
                path.strip_prefix(base).unwrap().to_owned(),
                format!(
                    "mode={:o} uid={} gid={} nlink={} size={size} rdev={rdev} mtime={} link={target}",
                    metadata.mode(),
                    metadata.uid(),
                    metadata.gid(),
                    metadata.nlink(),
                    mtime,
                ),
            );
            if kind.is_dir() {
                walk(base, &path, listing);
            }
        }
    }
    let mut listing = BTreeMap::new();
    walk(dir, dir, &mut listing);
    listing
}

/// Returns every extended attribute under `dir` (the overlayfs opaque markers among
/// them), as `getfattr` dumps them with paths relative to `dir`.
fn xattr_dump(dir: &Path) -> String {
    let result = Command::new("getfattr")
        .args(["--recursive", "--physical", "--no-dereference", "--dump"])
        .args(["--match", "-", "."])
        .current_dir(dir)
        .output()
        .expect("getfattr (Debian package attr) is needed");
    assert!(
        result.status.success(),
        "getfattr in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    String::from_utf8(result.stdout).unwrap()
}

/// Asserts that the layer directory `actual` has exactly the tree of `expected`: same
/// entries and metadata, same file contents and same extended attributes.
fn assert_same_layer(expected: &Path, actual: &Path, label: &str) {
    let expected_listing = tree_listing(expected);
    let actual_listing = tree_listing(actual);
    if expected_listing != actual_listing {
        let differing: Vec<_> = expected_listing
            .iter()
            .filter(|(path, meta)| actual_listing.get(*path) != Some(meta))
            .map(|(path, _)| path)
            .chain(
                actual_listing
                    .keys()
                    .filter(|path| !expected_listing.contains_key(*path)),
            )
            .take(10)
            .collect();
        panic!(
            "{label}: layer {} differs from the clean pull at {differing:?}",
            actual.display()
        );
    }
    for path in expected_listing.keys() {
        let expected_file = expected.join(path);
        if std::fs::symlink_metadata(&expected_file).unwrap().is_file() {
            let same =
                std::fs::read(&expected_file).unwrap() == std::fs::read(actual.join(path)).unwrap();
            assert!(
                same,
                "{label}: {} has other content than the clean pull",
                actual.join(path).display()
            );
        }
    }
    assert_eq!(
        xattr_dump(expected),
        xattr_dump(actual),
        "{label}: extended attributes of {} differ from the clean pull",
        actual.display()
    );
}

/// Counts of what a cache contains.
#[derive(Default, Debug)]
struct CacheState {
    layers: usize,
    blobs: usize,
    temporary: usize,
    records: usize,
}

/// Asserts that everything the cache under `root` would trust is complete: each layer
/// directory has its layer.json and, with a `reference` cache of a clean pull, the same
/// layer.json and tree as there. Each blob hashes to its name. Files in `blobs/tmp` and
/// `layers/tmp` are never read by a lookup, so they are only counted.
fn assert_cache_trustworthy(reference: Option<&Path>, root: &Path, label: &str) -> CacheState {
    let mut state = CacheState::default();
    let layers = root.join("layers");
    if layers.exists() {
        for dir in files_in(&layers) {
            let name = dir.file_name().unwrap().to_owned();
            if name == "tmp" {
                state.temporary += std::fs::read_dir(&dir).unwrap().count();
                continue;
            }
            assert!(
                dir.join("layer.json").is_file(),
                "{label}: layer {} has no layer.json",
                dir.display()
            );
            if let Some(reference) = reference {
                let expected = reference.join("layers").join(&name);
                assert_eq!(
                    std::fs::read(dir.join("layer.json")).unwrap(),
                    std::fs::read(expected.join("layer.json")).unwrap(),
                    "{label}: layer.json of {} differs from the clean pull",
                    dir.display()
                );
                assert_same_layer(&expected.join("fs"), &dir.join("fs"), label);
            }
            state.layers += 1;
        }
    }
    let blobs = root.join("blobs/sha256");
    if blobs.exists() {
        for path in files_in(&blobs) {
            let actual = Digest::of(&std::fs::read(&path).unwrap());
            assert_eq!(
                actual.encoded(),
                path.file_name().unwrap().to_str().unwrap(),
                "{label}: blob {} does not hash to its name",
                path.display()
            );
            state.blobs += 1;
        }
    }
    let temporary = root.join("blobs/tmp");
    if temporary.exists() {
        state.temporary += std::fs::read_dir(&temporary).unwrap().count();
    }
    let images = root.join("images");
    if images.exists() {
        state.records = std::fs::read_dir(&images).unwrap().count();
    }
    state
}

/// Asserts that the cache under `root` has every layer of the clean pull in `reference`
/// and that the image runs. With `compare_trees`, every layer tree is compared with the
/// clean pull's. Without it only the layer.json files are compared, because the pull
/// itself checked each new layer against its diff ID.
fn assert_complete_and_runs(
    image: &str,
    reference: &Path,
    root: &Path,
    compare_trees: bool,
    label: &str,
) {
    let layer_names = |root: &Path| -> Vec<_> {
        files_in(&root.join("layers"))
            .into_iter()
            .map(|dir| dir.file_name().unwrap().to_owned())
            .filter(|name| name != "tmp")
            .collect()
    };
    let expected = layer_names(reference);
    assert_eq!(
        layer_names(root),
        expected,
        "{label}: layers after the pull"
    );
    if compare_trees {
        assert_cache_trustworthy(Some(reference), root, label);
    } else {
        for name in &expected {
            let json = |root: &Path| {
                std::fs::read(root.join("layers").join(name).join("layer.json")).unwrap()
            };
            assert_eq!(
                json(root),
                json(reference),
                "{label}: layer.json of {name:?}"
            );
        }
    }
    let run =
        output(
            agentkernel(root)
                .args(["run", "--image", image])
                .args(["sh", "-c", "ls /opt/app"]),
        );
    assert_eq!(run.stdout, "c\n", "{label}: {}", run.stderr);
    assert_eq!(run.code, 0, "{label}");
}

/// Pulls `image` into `root` (a clean cache) and returns how long that took.
fn clean_pull(image: &str, root: &Path) -> Duration {
    let started = Instant::now();
    let result = pull(image, root);
    let duration = started.elapsed();
    assert_eq!(result.code, 0, "clean pull: {}", result.stderr);
    let state = assert_cache_trustworthy(None, root, "clean pull");
    assert_eq!(state.temporary, 0, "clean pull: temporary files left");
    duration
}

#[test]
fn sigkill_during_pull_then_pull_again() {
    let Some(env) = env() else { return };
    if !full_images() {
        panic!("the python image is missing: build the full image set");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = image(&env, "python:3.12-alpine");
    let seed = match std::env::var("AGENTKERNEL_TEST_SEED") {
        Ok(seed) => seed.parse().expect("AGENTKERNEL_TEST_SEED is not a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    println!("seed {seed} (AGENTKERNEL_TEST_SEED={seed} repeats these kill delays)");

    // The caches are on a tmpfs. SIGKILL leaves the page cache intact, so on a disk the
    // trials would only add time for fsync and for deleting the caches.
    in_private_tmpfs(1024, move |dir| {
        let reference = dir.join("reference");
        let pull_duration = clean_pull(&image, &reference);
        println!("clean pull of {image}: {pull_duration:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Delays spread over the whole pull and a little past it, because a pull's
        // duration varies with the machine's load.
        let max_delay = pull_duration.as_millis() as u64 * 5 / 4;

        let mut killed = 0;
        let mut left_temporary = 0;
        for trial in 0..TRIALS {
            let delay = Duration::from_millis(rng.gen_range(0..max_delay));
            let root = dir.join(format!("trial-{trial}"));
            let label = format!("trial {trial} (seed {seed}, kill after {delay:?})");
            let mut child = pull_command(&image, &root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let finished = child.try_wait().unwrap().is_some();
            if !finished {
                // Child::kill sends SIGKILL.
                child.kill().unwrap();
                killed += 1;
            }
            let status = child.wait().unwrap();
            let state = assert_cache_trustworthy(Some(&reference), &root, &label);
            println!(
                "{label}: {}, then {} layers, {} blobs, {} temporary entries, {} records",
                if finished { "finished first" } else { "killed" },
                state.layers,
                state.blobs,
                state.temporary,
                state.records
            );
            if finished {
                assert!(status.success(), "{label}: the pull failed with {status}");
            }
            if state.temporary > 0 {
                left_temporary += 1;
            }

            let again = pull(&image, &root);
            assert_eq!(
                again.code, 0,
                "{label}: pull after the kill: {}",
                again.stderr
            );
            assert_eq!(
                temporary_entries(&root),
                Vec::<PathBuf>::new(),
                "{label}: temporary entries after the pull that followed the kill"
            );
            let last = trial == TRIALS - 1;
            assert_complete_and_runs(&image, &reference, &root, last, &label);
            std::fs::remove_dir_all(&root).unwrap();
        }
        println!("{left_temporary} of {TRIALS} trials left temporary entries before the next pull");
        assert!(
            killed >= TRIALS / 2,
            "only {killed} of {TRIALS} pulls were killed before they finished"
        );
    });
}

/// Starts a pull of `image` into `root` and kills it with SIGKILL as soon as it has
/// created a layer's unpack directory in `layers/tmp`. Returns the temporary entries it
/// left, which are empty when the unpack finished between the check and the kill.
fn kill_pull_while_unpacking(image: &str, root: &Path) -> Vec<PathBuf> {
    let mut child = pull_command(image, root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = root.join("layers/tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let unpacking = std::fs::read_dir(&staging).is_ok_and(|mut dir| dir.next().is_some());
        if unpacking {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            panic!("the pull ended with {status} before it unpacked a layer: {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "the pull created nothing in {} within 60 s",
            staging.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Child::kill sends SIGKILL.
    child.kill().unwrap();
    child.wait().unwrap();
    temporary_entries(root)
}

/// A pull killed with SIGKILL leaves temporary entries, and the next pull removes them
/// but keeps the entry that a live process holds locked, as a concurrent pull's writer does.
#[test]
fn next_pull_removes_temporary_entries_of_killed_pull() {
    let Some(env) = env() else { return };
    if !full_images() {
        panic!("the python image is missing: build the full image set");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = image(&env, "python:3.12-alpine");

    in_private_tmpfs(1024, move |dir| {
        // Unpacking a layer of the python image takes far longer than the 1 ms poll
        // interval, so the first attempt almost always kills the pull inside an unpack.
        let mut attempt = 0;
        let (root, left) = loop {
            attempt += 1;
            let root = dir.join(format!("attempt-{attempt}"));
            let left = kill_pull_while_unpacking(&image, &root);
            if !left.is_empty() || attempt == 5 {
                break (root, left);
            }
        };
        println!("attempt {attempt}: the killed pull left {left:?}");
        assert!(
            left.iter().any(|path| path.starts_with("layers/tmp")),
            "no unpack directory in layers/tmp after {attempt} killed pulls: {left:?}"
        );

        // A file that a live writer holds locked, as a concurrent pull's blob writer does.
        let live = root.join("blobs/tmp/live-writer");
        std::fs::write(&live, b"partial blob").unwrap();
        let live_lock = nix::fcntl::Flock::lock(
            std::fs::File::open(&live).unwrap(),
            nix::fcntl::FlockArg::LockExclusive,
        )
        .unwrap();

        let again = pull(&image, &root);
        assert_eq!(again.code, 0, "pull after the kill: {}", again.stderr);
        assert_eq!(
            temporary_entries(&root),
            [PathBuf::from("blobs/tmp/live-writer")],
            "temporary entries after the next pull"
        );
        assert_eq!(std::fs::read(&live).unwrap(), b"partial blob");
        drop(live_lock);
        let state = assert_cache_trustworthy(None, &root, "pull after the kill");
        assert_eq!(state.records, 1);
    });
}

/// Pulls `image` into a tmpfs of `size_mib` MiB, which is too small for it, and checks
/// the failure and the cache.
fn pull_on_full_disk(image: &str, size_mib: u32) {
    let image = image.to_owned();
    let label = format!("tmpfs of {size_mib} MiB");
    in_private_tmpfs(size_mib, move |root| {
        let result = pull(&image, root);
        assert_eq!(result.code, 125, "{label}: {}", result.stderr);
        let lines: Vec<&str> = result.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{label}: {}", result.stderr);
        assert!(
            lines[0].contains("No space left on device"),
            "{label}: {}",
            lines[0]
        );
        assert!(
            lines[0].contains("free disk space"),
            "{label}: the hint does not point at the disk: {}",
            lines[0]
        );
        println!("{label}: {}", lines[0]);

        let state = assert_cache_trustworthy(None, root, &label);
        println!("{label}: left {state:?}");
        assert_eq!(state.temporary, 0, "{label}: temporary files left");
        assert_eq!(state.records, 0, "{label}: an image record was written");
    });
}

#[test]
fn full_disk_leaves_no_partial_entries() {
    let Some(env) = env() else { return };
    if !full_images() {
        panic!("the python image is missing: build the full image set");
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let image = image(&env, "python:3.12-alpine");
    // 20 MiB: the first layer blob (about 30 MB) does not fit. 64 MiB: the blobs
    // (about 46 MB) fit, and unpacking the first layer fills the disk.
    for size_mib in [20, 64] {
        pull_on_full_disk(&image, size_mib);
    }
}
