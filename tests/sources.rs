//! End-to-end tests of local image sources: `oci:DIR[:REF]` layouts and
//! `docker-archive:FILE[:NAME:TAG]` archives written by skopeo, in the legacy format and in
//! Docker 25's format with an OCI layout inside the tar.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Run, agentkernel, env, fresh_root, output};
use serde_json::{Value, json};

fn layout() -> PathBuf {
    PathBuf::from(
        std::env::var_os("AGENTKERNEL_TEST_LAYOUT")
            .expect("AGENTKERNEL_TEST_LAYOUT is not set by with-registries.sh"),
    )
}

fn ak(root: &Path, args: &[&str]) -> Run {
    output(agentkernel(root).args(args))
}

/// Runs `cat /etc/test-registry-arch` in `image`.
fn arch(root: &Path, image: &str) -> Run {
    ak(
        root,
        &["run", "--image", image, "cat", "/etc/test-registry-arch"],
    )
}

fn skopeo_copy(from: &str, to: &str) {
    let status = Command::new("skopeo")
        .args(["copy", "--quiet", from, to])
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy {from} {to}");
}

fn tar_create(archive: &Path, dir: &Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar -cf {}", archive.display());
}

fn tar_extract(archive: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-xf")
        .arg(archive)
        .status()
        .unwrap();
    assert!(status.success(), "tar -xf {}", archive.display());
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The digest of the manifest tagged `tag` in the layout at `dir`.
fn manifest_digest(dir: &Path, tag: &str) -> String {
    let index = read_json(&dir.join("index.json"));
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The manifest digest `agentkernel images --json` lists for `reference`.
fn cached_digest(root: &Path, reference: &str) -> String {
    let listed = ak(root, &["images", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let entries: Value = serde_json::from_str(&listed.stdout).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["reference"] == reference)
        .unwrap_or_else(|| panic!("{reference} is not in {}", listed.stdout))["manifest_digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Copies busybox-amd64 into a one-image OCI layout `dir` tagged `tag`.
fn small_layout(dir: &Path, tag: &str) {
    skopeo_copy(
        &format!("oci:{}:busybox-amd64", layout().display()),
        &format!("oci:{}:{tag}", dir.display()),
    );
}

#[test]
fn oci_layout_by_name_and_default() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let dir = layout();
    for image in [
        format!("oci:{}:busybox-amd64", dir.display()),
        format!("oci:{}:busybox-multi", dir.display()),
        format!("oci:{}:busybox-zstd", dir.display()),
        // Without a name, the first manifest of index.json, which is busybox-amd64.
        format!("oci:{}", dir.display()),
    ] {
        let result = arch(root.path(), &image);
        assert_eq!(result.stdout, "amd64\n", "{image}: {}", result.stderr);
        assert_eq!(result.code, 0, "{image}");
    }
    assert_eq!(
        cached_digest(root.path(), &format!("oci:{}", dir.display())),
        manifest_digest(&dir, "busybox-amd64")
    );
}

#[test]
fn relative_layout_paths_are_absolute() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    small_layout(&work.path().join("layout"), "app");
    let result = output(agentkernel(root.path()).current_dir(work.path()).args([
        "run",
        "--image",
        "oci:layout:app",
        "cat",
        "/etc/test-registry-arch",
    ]));
    assert_eq!(result.stdout, "amd64\n", "{}", result.stderr);
    let absolute = format!("oci:{}:app", work.path().join("layout").display());
    assert_eq!(
        cached_digest(root.path(), &absolute),
        manifest_digest(&layout(), "busybox-amd64")
    );
}

#[test]
fn oci_layout_errors_name_the_problem() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    small_layout(&work.path().join("layout"), "app");
    let image = format!("oci:{}:nope", work.path().join("layout").display());
    let result = arch(root.path(), &image);
    assert_eq!(result.code, 125);
    assert_eq!(
        result.stderr,
        format!(
            "agentkernel: cannot pull {image}: {image}: index.json has no manifest named \"nope\" \
             (org.opencontainers.image.ref.name); the names are app (check that the path contains an \
             OCI image layout (oci:DIR) or a docker save archive (docker-archive:FILE))\n"
        )
    );

    let missing = format!("oci:{}", work.path().join("missing").display());
    let result = arch(root.path(), &missing);
    assert_eq!(result.code, 125);
    assert!(
        result.stderr.contains(&format!(
            "{} is not a directory holding an OCI image layout",
            work.path().join("missing").display()
        )),
        "{}",
        result.stderr
    );
}

#[test]
fn damaged_layout_blob_is_rejected() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    let dir = work.path().join("layout");
    small_layout(&dir, "app");
    let manifest = read_json(
        &dir.join("blobs/sha256")
            .join(&manifest_digest(&dir, "app")[7..]),
    );
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let layer_path = dir.join("blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&layer_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&layer_path, &bytes).unwrap();

    let image = format!("oci:{}:app", dir.display());
    let result = ak(root.path(), &["pull", &image]);
    assert_eq!(result.code, 125);
    assert!(
        result.stderr.contains(&format!(
            "{image}: blob blobs/sha256/{} is damaged: its content hashes to sha256:",
            &layer[7..]
        )),
        "{}",
        result.stderr
    );
    assert!(!root.path().join("blobs/sha256").join(&layer[7..]).exists());
    let layers: Vec<_> = std::fs::read_dir(root.path().join("layers"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(layers, ["tmp"]);
}

#[test]
fn docker_archive_from_skopeo() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    let archive = work.path().join("busybox.tar");
    skopeo_copy(
        &format!("oci:{}:busybox-amd64", layout().display()),
        &format!("docker-archive:{}:busybox:test", archive.display()),
    );
    let image = format!("docker-archive:{}", archive.display());
    let result = arch(root.path(), &image);
    assert_eq!(result.stdout, "amd64\n", "{}", result.stderr);
    assert_eq!(result.code, 0);

    // The uncompressed layer is stored under its digest, which is the config's diff ID.
    let config = read_json(
        &layout().join("blobs/sha256").join(
            &read_json(
                &layout()
                    .join("blobs/sha256")
                    .join(&manifest_digest(&layout(), "busybox-amd64")[7..]),
            )["config"]["digest"]
                .as_str()
                .unwrap()[7..],
        ),
    );
    let diff_id = config["rootfs"]["diff_ids"][0].as_str().unwrap();
    assert!(
        root.path()
            .join("blobs/sha256")
            .join(&diff_id[7..])
            .is_file()
    );

    let named = format!("docker-archive:{}:busybox:test", archive.display());
    let result = arch(root.path(), &named);
    assert_eq!(result.stdout, "amd64\n", "{}", result.stderr);
    assert_eq!(
        cached_digest(
            root.path(),
            &format!(
                "docker-archive:{}:docker.io/library/busybox:test",
                archive.display()
            )
        ),
        cached_digest(root.path(), &image)
    );

    let other = format!("docker-archive:{}:busybox:other", archive.display());
    let result = arch(root.path(), &other);
    assert_eq!(result.code, 125);
    assert!(
        result.stderr.contains(
            "manifest.json has no image tagged docker.io/library/busybox:other; \
             its RepoTags are docker.io/library/busybox:test"
        ),
        "{}",
        result.stderr
    );
}

#[test]
fn docker_archive_layer_must_match_diff_id() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    let archive = work.path().join("busybox.tar");
    skopeo_copy(
        &format!("oci:{}:busybox-amd64", layout().display()),
        &format!("docker-archive:{}:busybox:test", archive.display()),
    );
    let unpacked = work.path().join("unpacked");
    tar_extract(&archive, &unpacked);
    let manifest = read_json(&unpacked.join("manifest.json"));
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap().to_owned();
    // Two more zero blocks keep the tar valid but change its digest.
    let layer_path = unpacked.join(&layer_name);
    let mut bytes = std::fs::read(&layer_path).unwrap();
    bytes.extend_from_slice(&[0u8; 1024]);
    std::fs::write(&layer_path, &bytes).unwrap();
    let changed = work.path().join("changed.tar");
    tar_create(&changed, &unpacked);

    let image = format!("docker-archive:{}", changed.display());
    let result = arch(root.path(), &image);
    assert_eq!(result.code, 125);
    let diff_id = format!("sha256:{}", layer_name.trim_end_matches(".tar"));
    assert!(
        result
            .stderr
            .contains(&format!("{image}: layer {layer_name} hashes to sha256:")),
        "{}",
        result.stderr
    );
    assert!(
        result.stderr.contains(&format!(
            "but the config's rootfs.diff_ids expects {diff_id}"
        )),
        "{}",
        result.stderr
    );
    assert!(
        !root
            .path()
            .join("blobs/sha256")
            .join(&diff_id[7..])
            .exists()
    );
}

#[test]
fn docker_archive_with_oci_layout() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    // Docker 25 and later write an OCI layout plus manifest.json into `docker save`.
    let dir = work.path().join("save");
    small_layout(&dir, "test");
    let digest = manifest_digest(&dir, "test");
    let manifest = read_json(&dir.join("blobs/sha256").join(&digest[7..]));
    let mut index = read_json(&dir.join("index.json"));
    index["manifests"][0]["annotations"]["io.containerd.image.name"] =
        json!("docker.io/library/busybox:test");
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    let docker_manifest = json!([{
        "Config": format!("blobs/sha256/{}", &manifest["config"]["digest"].as_str().unwrap()[7..]),
        "RepoTags": ["busybox:test"],
        "Layers": [format!("blobs/sha256/{}", &manifest["layers"][0]["digest"].as_str().unwrap()[7..])],
    }]);
    std::fs::write(dir.join("manifest.json"), docker_manifest.to_string()).unwrap();
    let archive = work.path().join("save.tar");
    tar_create(&archive, &dir);

    for image in [
        format!("docker-archive:{}", archive.display()),
        format!("docker-archive:{}:busybox:test", archive.display()),
    ] {
        let result = arch(root.path(), &image);
        assert_eq!(result.stdout, "amd64\n", "{image}: {}", result.stderr);
        // The OCI layout keeps the original manifest, so the digest is the registry's.
        let listed = image.replace(":busybox:test", ":docker.io/library/busybox:test");
        assert_eq!(cached_digest(root.path(), &listed), digest);
    }
}

#[test]
fn changed_layout_is_pulled_again() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    let dir = work.path().join("layout");
    small_layout(&dir, "app");
    let image = format!("oci:{}:app", dir.display());
    let first = arch(root.path(), &image);
    assert_eq!(first.stdout, "amd64\n", "{}", first.stderr);
    assert_eq!(
        cached_digest(root.path(), &image),
        manifest_digest(&layout(), "busybox-amd64")
    );

    // Point `app` at the zstd variant: same files, another manifest.
    skopeo_copy(
        &format!("oci:{}:busybox-zstd", layout().display()),
        &format!("oci:{}:app", dir.display()),
    );
    let second = arch(root.path(), &image);
    assert_eq!(second.stdout, "amd64\n", "{}", second.stderr);
    assert_eq!(
        cached_digest(root.path(), &image),
        manifest_digest(&layout(), "busybox-zstd")
    );
}

#[test]
fn compressed_archive_is_rejected() {
    let Some(_) = env() else { return };
    let root = fresh_root();
    let work = fresh_root();
    let archive = work.path().join("busybox.tar");
    skopeo_copy(
        &format!("oci:{}:busybox-amd64", layout().display()),
        &format!("docker-archive:{}", archive.display()),
    );
    let status = Command::new("gzip").arg(&archive).status().unwrap();
    assert!(status.success());
    let image = format!("docker-archive:{}.gz", archive.display());
    let result = arch(root.path(), &image);
    assert_eq!(result.code, 125);
    assert!(
        result.stderr.contains(&format!(
            "{}.gz is gzip-compressed; decompress it with gunzip first",
            archive.display()
        )),
        "{}",
        result.stderr
    );
}
