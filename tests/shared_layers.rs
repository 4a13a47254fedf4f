//! Layer sharing between images and concurrent pulls into one cache, checked against the
//! test registry's access log.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Env, agentkernel, env, fresh_root, full_images, image, output};
use serde_json::Value;

/// Both tests read the shared access log, so they run one at a time.
static ACCESS_LOG: Mutex<()> = Mutex::new(());

/// The config and layer digests of the image tagged `name` in the test OCI layout.
struct LayoutImage {
    config: String,
    layers: Vec<String>,
}

fn layout_image(name: &str) -> LayoutImage {
    let layout = PathBuf::from(
        std::env::var_os("AGENTKERNEL_TEST_LAYOUT")
            .expect("AGENTKERNEL_TEST_LAYOUT is not set by with-registries.sh"),
    );
    let read_json =
        |path: &Path| -> Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the test layout"));
    let digest = entry["digest"].as_str().unwrap();
    let manifest = read_json(
        &layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    );
    LayoutImage {
        config: manifest["config"]["digest"].as_str().unwrap().to_owned(),
        layers: manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layer["digest"].as_str().unwrap().to_owned())
            .collect(),
    }
}

fn log_length(env: &Env) -> usize {
    std::fs::read(&env.access_log).unwrap().len()
}

/// Counts the blob GETs in the access log after byte `offset`, by digest. The request
/// must be for `repository`.
fn blob_gets_since(env: &Env, offset: usize, repository: &str) -> BTreeMap<String, usize> {
    let log = std::fs::read(&env.access_log).unwrap();
    let text = String::from_utf8_lossy(&log[offset..]).into_owned();
    let prefix = format!("\"GET /v2/{repository}/blobs/");
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(start) = line.find(&prefix) else {
            continue;
        };
        let rest = &line[start + prefix.len()..];
        let digest = rest.split([' ', '?']).next().unwrap().to_owned();
        *counts.entry(digest).or_insert(0) += 1;
    }
    counts
}

/// Waits until every digest in `expected` has a GET in the log after `offset`, because the
/// registry may write a log line just after the client has its response. Then returns
/// the counts of all blob GETs of `repository`.
fn wait_for_blob_gets(
    env: &Env,
    offset: usize,
    repository: &str,
    expected: &[&String],
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = blob_gets_since(env, offset, repository);
        if expected.iter().all(|digest| counts.contains_key(*digest)) || Instant::now() > deadline {
            // One more short wait catches a duplicate GET logged late.
            std::thread::sleep(Duration::from_millis(200));
            return blob_gets_since(env, offset, repository);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn node_reuses_python_base_layer() {
    let Some(env) = env() else { return };
    if !full_images() {
        panic!("the python and node images are missing: build the full image set");
    }
    let _log = ACCESS_LOG.lock().unwrap_or_else(|e| e.into_inner());
    let python = layout_image("python");
    let node = layout_image("node");
    assert_eq!(
        python.layers[0], node.layers[0],
        "python and node in the test layout do not share their bottom layer"
    );
    let root = fresh_root();

    let pulled = output(
        agentkernel(root.path())
            .arg("pull")
            .arg(image(&env, "python:3.12-alpine")),
    );
    assert_eq!(pulled.code, 0, "python: {}", pulled.stderr);

    let offset = log_length(&env);
    let pulled = output(
        agentkernel(root.path())
            .arg("pull")
            .arg(image(&env, "node:22-alpine")),
    );
    assert_eq!(pulled.code, 0, "node: {}", pulled.stderr);

    let mut expected: Vec<&String> = vec![&node.config];
    expected.extend(&node.layers[1..]);
    let node_gets = wait_for_blob_gets(&env, offset, "library/node", &expected);
    let expected_counts: BTreeMap<String, usize> = expected
        .iter()
        .map(|digest| ((*digest).clone(), 1))
        .collect();
    assert_eq!(node_gets, expected_counts, "blob GETs of the node pull");
    for repository in ["library/python", "library/debian"] {
        let other = blob_gets_since(&env, offset, repository);
        assert!(
            other.is_empty(),
            "the node pull fetched {repository} blobs {other:?}"
        );
    }

    // Four python layers plus node's own layer; the shared layer is unpacked once.
    let layer_dirs = std::fs::read_dir(root.path().join("layers"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "tmp")
        .count();
    assert_eq!(layer_dirs, python.layers.len() + node.layers.len() - 1);

    let run = output(
        agentkernel(root.path())
            .args(["run", "--image"])
            .arg(image(&env, "node:22-alpine"))
            .args(["node", "-e", "console.log(6 * 7)"]),
    );
    assert_eq!(run.stdout, "42\n", "{}", run.stderr);
    assert_eq!(run.code, 0);
}

#[test]
fn concurrent_runs_fetch_each_blob_once() {
    let Some(env) = env() else { return };
    if !full_images() {
        panic!("the python image is missing: build the full image set");
    }
    let _log = ACCESS_LOG.lock().unwrap_or_else(|e| e.into_inner());
    const PROCESSES: usize = 8;
    let python = layout_image("python");
    let root = fresh_root();
    let reference = image(&env, "python:3.12-alpine");
    let offset = log_length(&env);

    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            agentkernel(root.path())
                .args(["run", "--image", &reference, "sh", "-c", "ls /opt/app"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (index, child) in children.into_iter().enumerate() {
        let result = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(
            String::from_utf8_lossy(&result.stdout),
            "c\n",
            "process {index}: {stderr}"
        );
        assert_eq!(result.status.code(), Some(0), "process {index}: {stderr}");
    }
    // Each pull removes the temporary entries that no live process holds locked, so the
    // pulls waiting for the lock must not have removed one another's entries (each
    // exited 0 above) and none is left.
    for dir in ["blobs/tmp", "layers/tmp"] {
        let left: Vec<_> = std::fs::read_dir(root.path().join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{dir} after {PROCESSES} runs: {left:?}");
    }

    let mut expected: Vec<&String> = vec![&python.config];
    expected.extend(&python.layers);
    let gets = wait_for_blob_gets(&env, offset, "library/python", &expected);
    let expected_counts: BTreeMap<String, usize> = expected
        .iter()
        .map(|digest| ((*digest).clone(), 1))
        .collect();
    assert_eq!(gets, expected_counts, "blob GETs of {PROCESSES} runs");
}
