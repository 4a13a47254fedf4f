//! Builds test images in a temporary OCI image layout: layers made by umoci from bundle
//! changes, raw tar layers appended by editing the manifest and config, and a push to the
//! test registry with skopeo.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rootfs_cache::Digest;
use serde_json::{Value, json};

/// Media type of an uncompressed OCI layer.
const TAR_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Runs `program` with `args` and returns its stdout, or panics with its stderr.
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to start {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {} failed with {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// An OCI image layout in a temporary directory.
pub struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    pub fn new() -> Layout {
        let dir = tempfile::Builder::new()
            .prefix("ak-crafted-")
            .tempdir_in("/tmp")
            .unwrap();
        let layout = Layout { dir };
        run_tool("umoci", &["init", "--layout", path_str(&layout.path())]);
        layout
    }

    /// Returns the layout directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("oci")
    }

    /// `DIR:TAG` for umoci.
    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", path_str(&self.path()))
    }

    /// Creates image `tag` with no layers for linux on the host architecture.
    pub fn new_image(&self, tag: &str) {
        let image = self.image(tag);
        run_tool("umoci", &["new", "--image", &image]);
        run_tool(
            "umoci",
            &[
                "config",
                "--image",
                &image,
                "--os",
                "linux",
                "--architecture",
                rootfs_cache::image::host_architecture(),
                "--config.env",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            ],
        );
    }

    /// Unpacks image `tag` into a new bundle; change `bundle.rootfs()` and call
    /// [`Bundle::commit`] to add a layer with the changes.
    pub fn bundle(&self, tag: &str) -> Bundle<'_> {
        let dir = self.dir.path().join(format!("bundle-{tag}"));
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        run_tool(
            "umoci",
            &["unpack", "--image", &self.image(tag), path_str(&dir)],
        );
        Bundle {
            layout: self,
            tag: tag.to_owned(),
            dir,
        }
    }

    /// Adds `source` as `target` in a new layer of image `tag` with `umoci insert`.
    pub fn insert(&self, tag: &str, source: &Path, target: &str) {
        run_tool(
            "umoci",
            &[
                "insert",
                "--image",
                &self.image(tag),
                path_str(source),
                target,
            ],
        );
    }

    /// Copies image `tag` of the OCI layout `source` into this layout with skopeo,
    /// keeping its digests.
    pub fn import(&self, source: &Path, tag: &str) {
        run_tool(
            "skopeo",
            &[
                "copy",
                "-q",
                "--preserve-digests",
                &format!("oci:{}:{tag}", path_str(source)),
                &format!("oci:{}", self.image(tag)),
            ],
        );
    }

    /// Appends `tar` as an uncompressed layer to image `tag`: stores the blob, adds it to
    /// the manifest's layers and its digest to the config's `rootfs.diff_ids`, and points
    /// the tag at the new manifest.
    pub fn append_tar_layer(&self, tag: &str, tar: &[u8]) -> Digest {
        let layer = self.write_blob(tar);
        self.edit_image(tag, |manifest, config| {
            config["rootfs"]["diff_ids"]
                .as_array_mut()
                .unwrap()
                .push(json!(layer.to_string()));
            manifest["layers"].as_array_mut().unwrap().push(json!({
                "mediaType": TAR_LAYER,
                "digest": layer.to_string(),
                "size": tar.len(),
            }));
        });
        layer
    }

    /// Replaces the zstd layers of image `tag` with their uncompressed tars, which umoci
    /// 0.4.7 can read. The diff IDs stay the same.
    pub fn decompress_zstd_layers(&self, tag: &str) {
        self.edit_image(tag, |manifest, config| {
            let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap().clone();
            for (layer, diff_id) in manifest["layers"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .zip(diff_ids)
            {
                if !layer["mediaType"].as_str().unwrap().ends_with("+zstd") {
                    continue;
                }
                let blob = self.blob_path(layer["digest"].as_str().unwrap());
                let output = Command::new("zstd")
                    .args(["-d", "-c", "-q"])
                    .arg(&blob)
                    .output()
                    .unwrap();
                assert!(output.status.success(), "zstd -d {}", blob.display());
                let tar = self.write_blob(&output.stdout);
                assert_eq!(
                    json!(tar.to_string()),
                    diff_id,
                    "diff ID of {}",
                    blob.display()
                );
                layer["mediaType"] = json!(TAR_LAYER);
                layer["digest"] = json!(tar.to_string());
                layer["size"] = json!(output.stdout.len());
            }
        });
    }

    /// Lets `edit` change the manifest and config of image `tag`, then stores both and
    /// points the tag at the new manifest.
    fn edit_image(&self, tag: &str, edit: impl FnOnce(&mut Value, &mut Value)) {
        let index_path = self.path().join("index.json");
        let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
        let entry = index["manifests"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap_or_else(|| panic!("tag {tag} not found in the layout"));
        let mut manifest: Value =
            serde_json::from_slice(&self.read_blob(entry["digest"].as_str().unwrap())).unwrap();
        let mut config: Value =
            serde_json::from_slice(&self.read_blob(manifest["config"]["digest"].as_str().unwrap()))
                .unwrap();

        edit(&mut manifest, &mut config);

        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = self.write_blob(&config_bytes);
        manifest["config"]["digest"] = json!(config_digest.to_string());
        manifest["config"]["size"] = json!(config_bytes.len());
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest_digest = self.write_blob(&manifest_bytes);
        entry["digest"] = json!(manifest_digest.to_string());
        entry["size"] = json!(manifest_bytes.len());
        fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    }

    fn write_blob(&self, bytes: &[u8]) -> Digest {
        let digest = Digest::of(bytes);
        let path = self.path().join("blobs/sha256").join(digest.encoded());
        fs::write(path, bytes).unwrap();
        digest
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let digest: Digest = digest.parse().unwrap();
        self.path().join("blobs/sha256").join(digest.encoded())
    }

    fn read_blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).unwrap()
    }

    /// Copies image `tag` to `registry` (`127.0.0.1:PORT`, plain HTTP) as
    /// `library/NAME:TAG` and returns that reference.
    pub fn push(&self, tag: &str, registry: &str, name_and_tag: &str) -> String {
        let reference = format!("{registry}/library/{name_and_tag}");
        run_tool(
            "skopeo",
            &[
                "copy",
                "-q",
                "--dest-tls-verify=false",
                "--preserve-digests",
                &format!("oci:{}", self.image(tag)),
                &format!("docker://{reference}"),
            ],
        );
        reference
    }

    /// Unpacks image `tag` with `umoci unpack` into `<dir>/rootfs` and returns that path.
    pub fn umoci_unpack(&self, tag: &str, dir: &Path) -> PathBuf {
        run_tool(
            "umoci",
            &["unpack", "--image", &self.image(tag), path_str(dir)],
        );
        dir.join("rootfs")
    }
}

/// An unpacked bundle of an image in a [`Layout`].
pub struct Bundle<'a> {
    layout: &'a Layout,
    tag: String,
    dir: PathBuf,
}

impl Bundle<'_> {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Adds the changes made in the rootfs since the unpack or the last commit as a new
    /// layer of the image.
    pub fn commit(&self) {
        run_tool(
            "umoci",
            &[
                "repack",
                "--refresh-bundle",
                "--image",
                &self.layout.image(&self.tag),
                path_str(&self.dir),
            ],
        );
    }
}

/// A tar archive written header by header, so entries can carry any name, type, owner
/// and device number, including ones that tar tools refuse to write.
#[derive(Default)]
pub struct TarWriter {
    bytes: Vec<u8>,
}

/// One entry for [`TarWriter::add`].
#[derive(Clone, Copy)]
pub struct TarEntry<'a> {
    pub name: &'a str,
    /// The ustar type flag: `b'0'` file, `b'1'` hardlink, `b'2'` symlink, `b'3'`
    /// character device, `b'5'` directory.
    pub kind: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link: &'a str,
    pub data: &'a [u8],
    pub device: (u32, u32),
}

impl Default for TarEntry<'_> {
    fn default() -> Self {
        TarEntry {
            name: "",
            kind: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            link: "",
            data: b"",
            device: (0, 0),
        }
    }
}

/// Writes `value` as a NUL-terminated octal number that fills `field`.
fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    assert_eq!(
        text.len(),
        field.len(),
        "{value} does not fit the tar field"
    );
    field.copy_from_slice(text.as_bytes());
}

impl TarWriter {
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.add(TarEntry {
            name,
            mode,
            data,
            ..TarEntry::default()
        })
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.add(TarEntry {
            name,
            kind: b'5',
            mode,
            ..TarEntry::default()
        })
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(TarEntry {
            name,
            kind: b'2',
            mode: 0o777,
            link: target,
            ..TarEntry::default()
        })
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(TarEntry {
            name,
            kind: b'1',
            link: target,
            ..TarEntry::default()
        })
    }

    /// Appends a ustar header and the data padded to a 512-byte block.
    pub fn add(&mut self, entry: TarEntry<'_>) -> &mut Self {
        assert!(entry.name.len() <= 100, "name {} is too long", entry.name);
        assert!(entry.link.len() <= 100, "link {} is too long", entry.link);
        let mut header = [0u8; 512];
        header[..entry.name.len()].copy_from_slice(entry.name.as_bytes());
        octal(&mut header[100..108], u64::from(entry.mode));
        octal(&mut header[108..116], u64::from(entry.uid));
        octal(&mut header[116..124], u64::from(entry.gid));
        octal(&mut header[124..136], entry.data.len() as u64);
        octal(&mut header[136..148], 1_600_000_000);
        header[156] = entry.kind;
        header[157..157 + entry.link.len()].copy_from_slice(entry.link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        octal(&mut header[329..337], u64::from(entry.device.0));
        octal(&mut header[337..345], u64::from(entry.device.1));
        // The checksum is computed with its own field as eight spaces.
        header[148..156].fill(b' ');
        let sum: u64 = header.iter().map(|byte| u64::from(*byte)).sum();
        let checksum = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(checksum.as_bytes());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(entry.data);
        let padding = (512 - entry.data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, padding));
        self
    }

    /// Returns the archive with its end-of-archive marker (two zero blocks).
    pub fn finish(&self) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        bytes.extend_from_slice(&[0u8; 1024]);
        bytes
    }
}
