//! End-to-end tests of the image commands: `pull` progress, `images`, `rmi` and `prune`,
//! with images from the test registry and from the OCI layout the registry was filled from.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, agentkernel, env, fresh_root, image, mirror_config, output};
use serde_json::Value;

/// The OCI layout of the test images (read-only).
fn layout() -> PathBuf {
    PathBuf::from(
        std::env::var_os("AGENTKERNEL_TEST_LAYOUT")
            .expect("AGENTKERNEL_TEST_LAYOUT is not set by with-registries.sh"),
    )
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A manifest of the test layout: its digest and size, and its JSON.
struct Manifest {
    digest: String,
    size: u64,
    json: Value,
}

impl Manifest {
    fn by_tag(tag: &str) -> Manifest {
        let index = read_json(&layout().join("index.json"));
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("the test layout has no {tag}"));
        let digest = entry["digest"].as_str().unwrap().to_owned();
        Manifest {
            size: entry["size"].as_u64().unwrap(),
            json: read_json(&blob(&digest)),
            digest,
        }
    }

    fn config_digest(&self) -> String {
        self.json["config"]["digest"].as_str().unwrap().to_owned()
    }

    fn config_size(&self) -> u64 {
        self.json["config"]["size"].as_u64().unwrap()
    }

    /// The only layer's digest and size.
    fn layer(&self) -> (String, u64) {
        let layers = self.json["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{} has several layers", self.digest);
        (
            layers[0]["digest"].as_str().unwrap().to_owned(),
            layers[0]["size"].as_u64().unwrap(),
        )
    }

    /// The only layer's diff ID, which is also its chain ID.
    fn diff_id(&self) -> String {
        let config = read_json(&blob(&self.config_digest()));
        config["rootfs"]["diff_ids"][0].as_str().unwrap().to_owned()
    }
}

fn blob(digest: &str) -> PathBuf {
    layout()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn oci(tag: &str) -> String {
    format!("oci:{}:{tag}", layout().display())
}

fn ak(root: &Path, args: &[&str]) -> Run {
    output(agentkernel(root).args(args))
}

/// `du -sb PATH`: the apparent size, computed by coreutils.
fn du_bytes(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().unwrap();
    assert!(out.status.success(), "du -sb {}", path.display());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn images_json(root: &Path) -> Vec<Value> {
    let listed = ak(root, &["images", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    serde_json::from_str::<Value>(&listed.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The sizes as the `images` table prints them: decimal units, one decimal.
fn human(bytes: u64) -> String {
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let units = ["kB", "MB", "GB"];
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.95 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[test]
fn pull_prints_a_line_per_layer() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let busybox = Manifest::by_tag("busybox-amd64");
    let (layer, size) = busybox.layer();

    let first = ak(root.path(), &["pull", &oci("busybox-amd64")]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stderr, format!("{layer} {size} bytes done\n"));
    assert_eq!(
        first.stdout,
        format!("{} {}\n", oci("busybox-amd64"), busybox.digest)
    );

    let second = ak(root.path(), &["pull", &oci("busybox-amd64")]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stderr, format!("{layer} {size} bytes cached\n"));
}

#[test]
fn pull_from_registry_prints_lines() {
    let Some(env) = env() else { return };
    let root = fresh_root();
    let config = mirror_config(&env, root.path());
    let reference = image(&env, "busybox:zstd");
    let pulled = output(
        agentkernel(root.path())
            .args(["pull", "--config"])
            .arg(&config)
            .arg(&reference),
    );
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);
    let lines: Vec<&str> = pulled.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", pulled.stderr);
    let fields: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(fields.len(), 4, "{}", lines[0]);
    assert!(fields[0].starts_with("sha256:"), "{}", lines[0]);
    assert_eq!(fields[0].len(), 71, "{}", lines[0]);
    assert!(fields[1].parse::<u64>().unwrap() > 0, "{}", lines[0]);
    assert_eq!(&fields[2..], ["bytes", "done"]);
    // The layer line names the blob that is now in the cache, with its size.
    let blob = root.path().join("blobs/sha256").join(&fields[0][7..]);
    assert_eq!(
        std::fs::metadata(&blob).unwrap().len().to_string(),
        fields[1]
    );
}

/// Runs `agentkernel` with stderr on a pseudo-terminal and returns what it wrote there.
fn stderr_on_terminal(root: &Path, args: &[&str]) -> (i32, String) {
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let mut command = agentkernel(root);
    command
        .env("TERM", "xterm")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave));
    let mut child = command.spawn().unwrap();
    // Reads from the terminal fail with EIO once no process has the other side open.
    drop(command);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = master.read(&mut buffer) {
            if read == 0 {
                break;
            }
            bytes.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (code, reader.join().unwrap())
}

#[test]
fn pull_draws_bars_on_a_terminal() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let busybox = Manifest::by_tag("busybox-amd64");
    let (layer, size) = busybox.layer();
    let (code, text) = stderr_on_terminal(root.path(), &["pull", &oci("busybox-amd64")]);
    assert_eq!(code, 0, "{text}");
    let short = &layer["sha256:".len().."sha256:".len() + 12];
    let total = indicatif::DecimalBytes(size).to_string();
    let last = text
        .lines()
        .flat_map(|line| line.split('\r'))
        .rfind(|line| line.contains(short))
        .unwrap_or_else(|| panic!("no bar for {short} in {text:?}"));
    assert!(last.contains(&format!("{short} [")), "{last:?}");
    assert!(last.contains(&format!("{total}/{total}")), "{last:?}");
    assert!(last.contains("B/s"), "no speed in {last:?}");
    assert!(last.trim_end().ends_with("done"), "{last:?}");
    // Bars redraw in place with cursor movements, which plain lines never contain.
    assert!(text.contains("\x1b["), "{text:?}");
}

#[test]
fn images_lists_sizes_and_last_use() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let busybox = Manifest::by_tag("busybox-amd64");
    let reference = oci("busybox-amd64");
    let pulled = ak(root.path(), &["pull", &reference]);
    assert_eq!(pulled.code, 0, "{}", pulled.stderr);

    let entries = images_json(root.path());
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let (_, layer_size) = busybox.layer();
    let layer_dir = root
        .path()
        .join("layers")
        .join(busybox.diff_id().trim_start_matches("sha256:"));
    let blob_bytes = busybox.size + busybox.config_size() + layer_size;
    let unpacked_bytes = du_bytes(&layer_dir);
    assert_eq!(entry["reference"], reference.as_str());
    assert_eq!(entry["manifest_digest"], busybox.digest.as_str());
    assert_eq!(entry["resolved_digest"], busybox.digest.as_str());
    assert_eq!(entry["config_digest"], busybox.config_digest().as_str());
    assert_eq!(entry["blob_bytes"], blob_bytes);
    assert_eq!(entry["unpacked_bytes"], unpacked_bytes);
    assert_eq!(entry["layers"], 1);
    assert_eq!(entry["complete"], true);
    assert_eq!(entry["last_used"], Value::Null);
    let pulled_at = entry["pulled_at"].as_u64().unwrap();
    assert!(
        pulled_at <= unix_now(),
        "pulled_at {pulled_at} is in the future"
    );
    assert!(
        pulled_at + 60 > unix_now(),
        "pulled_at {pulled_at} is too old"
    );

    let table = ak(root.path(), &["images"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", table.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["REFERENCE", "DIGEST", "BLOBS", "UNPACKED", "LAST", "USED"]
    );
    let row: Vec<String> = lines[1].split_whitespace().map(str::to_owned).collect();
    let expected = format!(
        "{reference} {} {} {} never",
        &busybox.digest[..19],
        human(blob_bytes),
        human(unpacked_bytes)
    );
    assert_eq!(row.join(" "), expected);

    let before = unix_now();
    let ran = ak(root.path(), &["run", "--image", &reference, "true"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let entries = images_json(root.path());
    let last_used = entries[0]["last_used"].as_u64().unwrap();
    assert!(
        (before..=unix_now()).contains(&last_used),
        "last_used {last_used}"
    );
    assert_eq!(entries[0]["pulled_at"], pulled_at);

    // A run within a minute of the recorded use leaves the record alone.
    std::thread::sleep(Duration::from_millis(1100));
    let ran = ak(root.path(), &["run", "--image", &reference, "true"]);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(images_json(root.path())[0]["last_used"], last_used);
    let table = ak(root.path(), &["images"]);
    assert!(
        table.stdout.lines().nth(1).unwrap().ends_with(" ago"),
        "{}",
        table.stdout
    );

    // A new pull keeps the last use.
    let again = ak(root.path(), &["pull", &reference]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(images_json(root.path())[0]["last_used"], last_used);
}

#[test]
fn rmi_removes_the_record() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let reference = oci("busybox-amd64");
    assert_eq!(ak(root.path(), &["pull", &reference]).code, 0);

    let removed = ak(root.path(), &["rmi", &reference]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_eq!(removed.stdout, format!("removed {reference}\n"));
    assert_eq!(images_json(root.path()).len(), 0);

    let again = ak(root.path(), &["rmi", &reference]);
    assert_eq!(again.code, 125);
    assert_eq!(again.stdout, "");
    assert_eq!(
        again.stderr,
        format!(
            "agentkernel: no image {reference} in the cache at {}; `agentkernel --root {} images` lists the cached images\n",
            root.path().display(),
            root.path().display()
        )
    );

    let invalid = ak(root.path(), &["rmi", "Not A Reference"]);
    assert_eq!(invalid.code, 125);
    assert!(
        invalid.stderr.contains("\"Not A Reference\""),
        "{}",
        invalid.stderr
    );
}

/// Files and directories directly in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn prune_frees_unused_blobs_and_layers() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    // busybox-tar has busybox-amd64's config and layer, with the layer uncompressed. The
    // second pull finds the layer unpacked, so busybox-amd64's gzip blob is never fetched.
    let gzip = Manifest::by_tag("busybox-amd64");
    let tar = Manifest::by_tag("busybox-tar");
    assert_eq!(gzip.config_digest(), tar.config_digest());
    for tag in ["busybox-tar", "busybox-amd64"] {
        let pulled = ak(root.path(), &["pull", &oci(tag)]);
        assert_eq!(pulled.code, 0, "{tag}: {}", pulled.stderr);
    }
    // Leftovers of interrupted pulls.
    std::fs::write(root.path().join("blobs/tmp/partial"), vec![7u8; 1234]).unwrap();
    let staged = root.path().join("layers/tmp/halfway");
    std::fs::create_dir_all(staged.join("fs/etc")).unwrap();
    std::fs::write(staged.join("fs/etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    let staged_bytes = du_bytes(&staged);

    let nothing = ak(root.path(), &["prune"]);
    assert_eq!(nothing.code, 0, "{}", nothing.stderr);
    let leftovers = 1234 + staged_bytes;
    assert_eq!(
        nothing.stdout,
        format!(
            "removed 0 blobs, 0 layers and 2 temporary entries; freed {leftovers} bytes ({})\n",
            human(leftovers)
        )
    );
    assert_eq!(
        entries(&root.path().join("blobs/tmp")),
        Vec::<String>::new()
    );
    assert_eq!(
        entries(&root.path().join("layers/tmp")),
        Vec::<String>::new()
    );

    assert_eq!(ak(root.path(), &["rmi", &oci("busybox-tar")]).code, 0);
    let (tar_layer, tar_layer_size) = tar.layer();
    let pruned = ak(root.path(), &["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let freed = tar.size + tar_layer_size;
    assert_eq!(
        pruned.stdout,
        format!(
            "removed 2 blobs, 0 layers and 0 temporary entries; freed {freed} bytes ({})\n",
            human(freed)
        )
    );
    let blobs = root.path().join("blobs/sha256");
    assert!(!blobs.join(&tar.digest[7..]).exists());
    assert!(!blobs.join(&tar_layer[7..]).exists());
    let ran = ak(
        root.path(),
        &[
            "run",
            "--image",
            &oci("busybox-amd64"),
            "cat",
            "/etc/test-registry-arch",
        ],
    );
    assert_eq!(ran.stdout, "amd64\n", "{}", ran.stderr);

    assert_eq!(ak(root.path(), &["rmi", &oci("busybox-amd64")]).code, 0);
    let layer_dir = root.path().join("layers").join(&gzip.diff_id()[7..]);
    let layer_bytes = du_bytes(&layer_dir);
    let pruned = ak(root.path(), &["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    let freed = gzip.size + gzip.config_size() + layer_bytes;
    assert_eq!(
        pruned.stdout,
        format!(
            "removed 2 blobs, 1 layer and 0 temporary entries; freed {freed} bytes ({})\n",
            human(freed)
        )
    );
    assert_eq!(entries(&blobs), Vec::<String>::new());
    assert_eq!(entries(&root.path().join("layers")), ["tmp"]);
}

#[test]
fn prune_keeps_layers_of_sandboxes() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let reference = oci("busybox-amd64");
    let busybox = Manifest::by_tag("busybox-amd64");
    let layer_dir = root.path().join("layers").join(&busybox.diff_id()[7..]);

    let kept = ak(
        root.path(),
        &["run", "--keep", "--image", &reference, "true"],
    );
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    let id = kept
        .stderr
        .trim()
        .strip_prefix("agentkernel: kept sandbox ")
        .unwrap_or_else(|| panic!("{}", kept.stderr))
        .to_owned();
    let list = root
        .path()
        .join("sandbox-layers")
        .join(format!("{id}.json"));
    let listed = read_json(&list);
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["image"], reference.as_str());
    assert_eq!(
        listed["layer_dirs"],
        serde_json::json!([layer_dir.join("fs")])
    );

    assert_eq!(ak(root.path(), &["rmi", &reference]).code, 0);
    let pruned = ak(root.path(), &["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        pruned
            .stdout
            .starts_with("removed 3 blobs, 0 layers and 0 temporary entries;"),
        "{}",
        pruned.stdout
    );
    assert!(layer_dir.join("layer.json").is_file());

    // A sandbox directory that no run holds and no --keep made is an orphan: prune
    // collects it, and the kept sandbox still keeps its layer.
    std::fs::create_dir(root.path().join("sandboxes/stray")).unwrap();
    let collected = ak(root.path(), &["prune"]);
    assert_eq!(collected.code, 0, "{}", collected.stderr);
    assert!(!root.path().join("sandboxes/stray").exists());
    assert!(layer_dir.join("layer.json").is_file());
    // Files next to the sandbox directories are not sandboxes.
    std::fs::write(root.path().join("sandboxes/notes.txt"), "").unwrap();

    // Once the kept sandbox is removed, its layer and its list go.
    let removed = ak(root.path(), &["rm", &id]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let pruned = ak(root.path(), &["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        pruned
            .stdout
            .starts_with("removed 0 blobs, 1 layer and 0 temporary entries;"),
        "{}",
        pruned.stdout
    );
    assert!(!layer_dir.exists());
    assert!(!list.exists());
}

#[test]
fn prune_spares_a_running_sandbox() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let reference = oci("busybox-amd64");
    let busybox = Manifest::by_tag("busybox-amd64");
    let layer_dir = root.path().join("layers").join(&busybox.diff_id()[7..]);
    let child = agentkernel(root.path())
        .args(["run", "--image", &reference, "sh", "-c"])
        .arg("sleep 2; cat /etc/test-registry-arch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lists = root.path().join("sandbox-layers");
    let started = Instant::now();
    while std::fs::read_dir(&lists).map_or(true, |mut dir| dir.next().is_none()) {
        assert!(started.elapsed() < Duration::from_secs(30), "no layer list");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ak(root.path(), &["rmi", &reference]).code, 0);
    let pruned = ak(root.path(), &["prune"]);
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        pruned.stdout.starts_with("removed 3 blobs, 0 layers"),
        "{}",
        pruned.stdout
    );
    let finished = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&finished.stdout), "amd64\n");
    assert_eq!(finished.status.code(), Some(0));
    assert_eq!(entries(&lists), Vec::<String>::new());
    assert!(layer_dir.is_dir());
}

#[test]
fn prune_waits_for_the_pull_lock() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    assert_eq!(ak(root.path(), &["images"]).code, 0);
    let lock = root.path().join("pull.lock");
    // flock(1) holds the lock as a pull would, then releases it.
    let mut holder = Command::new("flock")
        .arg("--exclusive")
        .arg(&lock)
        .args(["sleep", "1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let pruned = ak(root.path(), &["prune"]);
    let waited = started.elapsed();
    assert_eq!(pruned.code, 0, "{}", pruned.stderr);
    assert!(
        waited >= Duration::from_millis(900),
        "prune finished after {waited:?} while the pull lock was held"
    );
    assert!(holder.wait().unwrap().success());
}
