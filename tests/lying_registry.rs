//! Pulls from registries that lie: a small HTTP/1.1 server in this file serves the
//! busybox-amd64 image of the test OCI layout, with one part of it wrong per case. Every
//! case must fail with exit code 125 and one stderr line that names the expected and the
//! actual value. It must leave nothing wrong in the cache, and a pull of the same reference
//! from the honest test registry into that cache must then work.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::{Env, Run, agentkernel, env, fresh_root, output};
use rootfs_cache::Digest;
use serde_json::{Value, json};

/// The reference every case pulls. `docker.io` is mirrored to the server under test.
const REFERENCE: &str = "busybox:amd64-only";
const REPOSITORY: &str = "library/busybox";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One canned HTTP response.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn ok(content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".to_owned(), content_type.to_owned())],
            body,
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A request as the server received it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    /// Header names in lowercase, with their values.
    headers: Vec<(String, String)>,
}

impl Request {
    /// Returns the request target without its query string.
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// An HTTP/1.1 server on a loopback address that returns a fixed reply for each path and
/// records every request. Each connection serves one request and is then closed, so a
/// short body under a matching `Content-Length` ends cleanly.
struct TestServer {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

struct Routes {
    replies: HashMap<String, Reply>,
    /// The `Authorization` header value every request must carry, if any.
    required_authorization: Option<String>,
}

impl TestServer {
    fn start(ip: &str, replies: HashMap<String, Reply>, basic_auth: Option<(&str, &str)>) -> Self {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        let routes = Arc::new(Routes {
            replies,
            required_authorization: basic_auth.map(|(user, password)| {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                format!("Basic {encoded}")
            }),
        });
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let requests = Arc::clone(&requests);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let routes = Arc::clone(&routes);
                    let requests = Arc::clone(&requests);
                    std::thread::spawn(move || serve_connection(stream, &routes, &requests));
                }
            });
        }
        TestServer {
            address,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A connection makes the blocked accept loop return and check the flag.
        let _ = TcpStream::connect(self.address);
    }
}

fn serve_connection(stream: TcpStream, routes: &Routes, requests: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        // Not HTTP (for example a TLS client hello): close the connection.
        return;
    };
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let request = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    };
    requests.lock().unwrap().push(request.clone());

    let path = request.path();
    let authorized = match &routes.required_authorization {
        Some(expected) => request.header("authorization") == Some(expected.as_str()),
        None => true,
    };
    let reply = if !authorized {
        Reply {
            status: 401,
            headers: vec![(
                "WWW-Authenticate".to_owned(),
                "Basic realm=\"lying-registry\"".to_owned(),
            )],
            body: br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                .to_vec(),
        }
    } else {
        routes.replies.get(path).cloned().unwrap_or(Reply {
            status: 404,
            headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
            body: br#"{"errors":[{"code":"NOT_FOUND","message":"not found"}]}"#.to_vec(),
        })
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    if request.method != "HEAD" {
        let _ = stream.write_all(&reply.body);
    }
    let _ = stream.flush();
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Unknown",
    }
}

/// The test OCI layout that `tests/env/with-registries.sh` pushed into the test registry.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn open() -> Layout {
        let dir = std::env::var_os("AGENTKERNEL_TEST_LAYOUT")
            .map(PathBuf::from)
            .expect("AGENTKERNEL_TEST_LAYOUT is not set by with-registries.sh");
        Layout { dir }
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let encoded = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(self.dir.join("blobs/sha256").join(encoded)).unwrap()
    }

    /// Returns the manifest tagged `name` in index.json.
    fn manifest(&self, name: &str) -> Vec<u8> {
        let index: Value =
            serde_json::from_slice(&std::fs::read(self.dir.join("index.json")).unwrap()).unwrap();
        let entry = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the test layout"));
        self.blob(entry["digest"].as_str().unwrap())
    }
}

fn digest_of(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

/// A single-platform image: manifest, config and layers, each with its bytes.
#[derive(Clone)]
struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

impl Image {
    fn from_layout(layout: &Layout, name: &str) -> Image {
        let manifest = layout.manifest(name);
        let parsed: Value = serde_json::from_slice(&manifest).unwrap();
        let config = layout.blob(parsed["config"]["digest"].as_str().unwrap());
        let layers = parsed["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|layer| layout.blob(layer["digest"].as_str().unwrap()))
            .collect();
        Image {
            manifest,
            config,
            layers,
        }
    }

    fn manifest_json(&self) -> Value {
        serde_json::from_slice(&self.manifest).unwrap()
    }

    fn config_json(&self) -> Value {
        serde_json::from_slice(&self.config).unwrap()
    }

    fn manifest_digest(&self) -> String {
        digest_of(&self.manifest)
    }

    /// Returns the digest of layer `index` as the manifest lists it.
    fn layer_digest(&self, index: usize) -> String {
        self.manifest_json()["layers"][index]["digest"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Replaces the config and points the manifest at it.
    fn with_config(mut self, config: Value) -> Image {
        self.config = serde_json::to_vec(&config).unwrap();
        let mut manifest = self.manifest_json();
        manifest["config"]["digest"] = json!(digest_of(&self.config));
        manifest["config"]["size"] = json!(self.config.len());
        self.manifest = serde_json::to_vec(&manifest).unwrap();
        self
    }

    /// Returns the replies of an honest registry for this image under `REFERENCE`'s tag and the
    /// manifest's digest.
    fn routes(&self) -> HashMap<String, Reply> {
        let manifest_digest = self.manifest_digest();
        let manifest_reply = Reply::ok(MANIFEST_TYPE, self.manifest.clone())
            .header("Docker-Content-Digest", &manifest_digest);
        let mut routes = HashMap::new();
        routes.insert(
            "/v2/".to_owned(),
            Reply::ok("application/json", b"{}".to_vec()),
        );
        routes.insert(manifest_path("amd64-only"), manifest_reply.clone());
        routes.insert(manifest_path(&manifest_digest), manifest_reply);
        let config_digest = digest_of(&self.config);
        routes.insert(
            blob_path(&config_digest),
            Reply::ok("application/octet-stream", self.config.clone()),
        );
        for (index, bytes) in self.layers.iter().enumerate() {
            routes.insert(
                blob_path(&self.layer_digest(index)),
                Reply::ok("application/octet-stream", bytes.clone()),
            );
        }
        routes
    }
}

fn manifest_path(reference: &str) -> String {
    format!("/v2/{REPOSITORY}/manifests/{reference}")
}

fn blob_path(digest: &str) -> String {
    format!("/v2/{REPOSITORY}/blobs/{digest}")
}

/// Writes agentkernel.toml mirroring docker.io to `registry` over plain HTTP, with `extra`
/// lines appended to its `[registry]` section.
fn write_config(dir: &Path, registry: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("agentkernel-{}.toml", registry.replace(':', "-")));
    std::fs::write(
        &path,
        format!("[registry]\nmirrors = {{ \"docker.io\" = \"http://{registry}\" }}\n{extra}"),
    )
    .unwrap();
    path
}

/// Runs `agentkernel pull` of `reference` with `config` and a Docker config directory.
fn pull(root: &Path, config: &Path, docker_config: &Path, reference: &str) -> Run {
    output(
        agentkernel(root)
            .env("DOCKER_CONFIG", docker_config)
            .arg("pull")
            .arg("--config")
            .arg(config)
            .arg(reference),
    )
}

/// Asserts that the cache under `root` contains no trace of a failed pull: none of `absent`
/// in the blob store, every stored blob hashing to its name, no temporary files, no
/// unpacked layer and no image record.
fn assert_cache_clean(root: &Path, absent: &[&str], case: &str) {
    let blobs = root.join("blobs/sha256");
    for digest in absent {
        let path = blobs.join(digest.strip_prefix("sha256:").unwrap());
        assert!(!path.exists(), "{case}: {} was stored", path.display());
    }
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let actual = Digest::of(&std::fs::read(&path).unwrap());
        assert_eq!(
            actual.encoded(),
            name,
            "{case}: stored blob does not hash to its name"
        );
    }
    for temporary in ["blobs/tmp", "layers/tmp"] {
        let leftovers: Vec<_> = std::fs::read_dir(root.join(temporary))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(
            leftovers.is_empty(),
            "{case}: {temporary} has {leftovers:?}"
        );
    }
    let layers: Vec<_> = std::fs::read_dir(root.join("layers"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name != "tmp")
        .collect();
    assert!(layers.is_empty(), "{case}: layers/ has {layers:?}");
    let records = std::fs::read_dir(root.join("images")).unwrap().count();
    assert_eq!(records, 0, "{case}: an image record was written");
}

/// Asserts the one-line failure report of agentkernel: exit code 125 and a single stderr
/// line that contains each of `expected`.
fn assert_failure(result: &Run, expected: &[&str], case: &str) {
    assert_eq!(result.code, 125, "{case}: {}", result.stderr);
    assert_eq!(result.stdout, "", "{case}");
    let lines: Vec<&str> = result.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{case}: {}", result.stderr);
    assert!(
        lines[0].starts_with("agentkernel: "),
        "{case}: {}",
        lines[0]
    );
    for text in expected {
        assert!(
            lines[0].contains(text),
            "{case}: {text:?} missing in: {}",
            lines[0]
        );
    }
    println!("{case}: {}", lines[0]);
}

/// Pulls `reference` from the honest test registry into `root` and runs the image.
fn assert_honest_pull_works(env: &Env, root: &Path, docker_config: &Path, reference: &str) {
    let config = write_config(root, &env.registry, "");
    let result = pull(root, &config, docker_config, reference);
    assert_eq!(
        result.code, 0,
        "honest pull of {reference}: {}",
        result.stderr
    );
    let run = output(
        agentkernel(root)
            .env("DOCKER_CONFIG", docker_config)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--image", reference, "cat", "/etc/test-registry-arch"]),
    );
    assert_eq!(run.stdout, "amd64\n", "run {reference}: {}", run.stderr);
    assert_eq!(run.code, 0);
}

/// One lie: what the server serves, what is pulled, and what the error must name.
struct Case {
    name: &'static str,
    routes: HashMap<String, Reply>,
    reference: String,
    /// Texts the error line must contain (expected and actual values).
    expected: Vec<String>,
    /// Digests that must not be in the blob store afterwards.
    absent: Vec<String>,
    extra_config: &'static str,
}

fn lying_cases(layout: &Layout) -> Vec<Case> {
    let image = Image::from_layout(layout, "busybox-amd64");
    let layer_digest = image.layer_digest(0);
    let layer = image.layers[0].clone();
    let mut cases = Vec::new();

    // Same length, one byte changed: only the digest check can catch it.
    let mut wrong = layer.clone();
    wrong[layer.len() / 2] ^= 0xff;
    let mut routes = image.routes();
    routes.insert(
        blob_path(&layer_digest),
        Reply::ok("application/octet-stream", wrong.clone()),
    );
    cases.push(Case {
        name: "layer with wrong bytes",
        routes,
        reference: REFERENCE.to_owned(),
        expected: vec![layer_digest.clone(), digest_of(&wrong)],
        absent: vec![layer_digest.clone(), digest_of(&wrong)],
        extra_config: "",
    });

    let mut config = image.config.clone();
    config.push(b'\n');
    let config_digest = digest_of(&image.config);
    let mut routes = image.routes();
    routes.insert(
        blob_path(&config_digest),
        Reply::ok("application/octet-stream", config.clone()),
    );
    cases.push(Case {
        name: "config one byte longer",
        routes,
        reference: REFERENCE.to_owned(),
        expected: vec![
            config_digest.clone(),
            format!("{} bytes", image.config.len()),
        ],
        absent: vec![config_digest.clone(), digest_of(&config)],
        extra_config: "",
    });

    let short = layer[..layer.len() / 2].to_vec();
    let mut routes = image.routes();
    routes.insert(
        blob_path(&layer_digest),
        Reply::ok("application/octet-stream", short.clone()),
    );
    cases.push(Case {
        name: "truncated layer",
        routes,
        reference: REFERENCE.to_owned(),
        expected: vec![
            layer_digest.clone(),
            format!("{} bytes", layer.len()),
            format!("got {}", short.len()),
        ],
        absent: vec![layer_digest.clone()],
        extra_config: "",
    });

    // The arm64 manifest served for the amd64 manifest's digest.
    let other = layout.manifest("busybox-arm64");
    let requested = image.manifest_digest();
    let mut routes = image.routes();
    routes.insert(
        manifest_path(&requested),
        Reply::ok(MANIFEST_TYPE, other.clone()).header("Docker-Content-Digest", &requested),
    );
    cases.push(Case {
        name: "manifest by digest with other bytes",
        routes,
        reference: format!("busybox@{requested}"),
        expected: vec![requested.clone(), digest_of(&other)],
        absent: vec![requested.clone(), digest_of(&other)],
        extra_config: "",
    });

    // By tag, the only check is against the registry's own Docker-Content-Digest.
    let mut routes = image.routes();
    routes.insert(
        manifest_path("amd64-only"),
        Reply::ok(MANIFEST_TYPE, other.clone()).header("Docker-Content-Digest", &requested),
    );
    cases.push(Case {
        name: "manifest by tag with a false Docker-Content-Digest",
        routes,
        reference: REFERENCE.to_owned(),
        expected: vec![requested.clone(), digest_of(&other)],
        absent: vec![requested.clone(), digest_of(&other)],
        extra_config: "",
    });

    for (name, size) in [
        ("layer size one byte short", layer.len() - 1),
        ("layer size one byte long", layer.len() + 1),
    ] {
        let mut manifest = image.manifest_json();
        manifest["layers"][0]["size"] = json!(size);
        let mut lying = image.clone();
        lying.manifest = serde_json::to_vec(&manifest).unwrap();
        cases.push(Case {
            name,
            routes: lying.routes(),
            reference: REFERENCE.to_owned(),
            expected: vec![
                layer_digest.clone(),
                format!("descriptor says {size} bytes"),
                format!("got {}", layer.len()),
            ],
            absent: vec![layer_digest.clone()],
            extra_config: "",
        });
    }

    let true_diff_id = image.config_json()["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let false_diff_id = digest_of(b"not the busybox layer");
    let mut config = image.config_json();
    config["rootfs"]["diff_ids"][0] = json!(false_diff_id);
    let lying = image.clone().with_config(config);
    cases.push(Case {
        name: "config diff_ids that do not match the layer",
        routes: lying.routes(),
        reference: REFERENCE.to_owned(),
        expected: vec![layer_digest.clone(), true_diff_id, false_diff_id],
        absent: vec![],
        extra_config: "",
    });

    cases.push(decompression_bomb(&image));
    cases
}

/// Builds the case of a layer of 100 MiB of zeros in one file, gzip-compressed to about
/// 100 KiB, pulled with a limit of 10 MiB.
fn decompression_bomb(image: &Image) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros");
    // A sparse file: the 100 MiB take no disk space.
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    let layer_path = dir.path().join("layer.tar.gz");
    let status = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg("tar --numeric-owner -C \"$1\" -cf - zeros | gzip -1 -n > \"$2\"")
        .args(["bash", dir.path().to_str().unwrap()])
        .arg(&layer_path)
        .status()
        .unwrap();
    assert!(status.success(), "building the layer failed");
    let diff_id = Command::new("bash")
        .args(["-o", "pipefail", "-c", "gzip -dc \"$1\" | sha256sum"])
        .args(["bash", layer_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(diff_id.status.success());
    let diff_id = format!(
        "sha256:{}",
        String::from_utf8(diff_id.stdout).unwrap()[..64].to_owned()
    );
    let layer = std::fs::read(&layer_path).unwrap();
    assert!(layer.len() < 1 << 20, "the layer is {} bytes", layer.len());

    let mut config = image.config_json();
    config["rootfs"]["diff_ids"] = json!([diff_id]);
    let mut bomb = image.clone().with_config(config);
    let mut manifest = bomb.manifest_json();
    manifest["layers"] = json!([{
        "mediaType": LAYER_TYPE,
        "digest": digest_of(&layer),
        "size": layer.len(),
    }]);
    bomb.manifest = serde_json::to_vec(&manifest).unwrap();
    bomb.layers = vec![layer.clone()];
    Case {
        name: "gzip layer expanding past max_layer_mb",
        routes: bomb.routes(),
        reference: REFERENCE.to_owned(),
        expected: vec![digest_of(&layer), format!("{} bytes", 10 << 20)],
        absent: vec![],
        extra_config: "max_layer_mb = 10\n",
    }
}

#[test]
fn lying_registries_are_caught() {
    let Some(env) = env() else { return };
    let layout = Layout::open();
    let docker_config = fresh_root();
    for case in lying_cases(&layout) {
        let root = fresh_root();
        let server = TestServer::start("127.0.0.1", case.routes, None);
        let config = write_config(root.path(), &server.address.to_string(), case.extra_config);
        let result = pull(root.path(), &config, docker_config.path(), &case.reference);
        let expected: Vec<&str> = case.expected.iter().map(String::as_str).collect();
        assert_failure(&result, &expected, case.name);
        let absent: Vec<&str> = case.absent.iter().map(String::as_str).collect();
        assert_cache_clean(root.path(), &absent, case.name);
        assert!(
            !server.requests().is_empty(),
            "{}: the server got no request",
            case.name
        );
        assert_honest_pull_works(&env, root.path(), docker_config.path(), &case.reference);
    }
}

#[test]
fn redirect_to_other_host_drops_credentials() {
    let Some(_env) = env() else { return };
    let layout = Layout::open();
    let image = Image::from_layout(&layout, "busybox-amd64");
    let layer_digest = image.layer_digest(0);
    let encoded = layer_digest.strip_prefix("sha256:").unwrap();

    // The blob storage: another loopback address, no authentication.
    let storage_path = format!("/storage/{encoded}");
    let storage = TestServer::start(
        "127.0.0.2",
        HashMap::from([(
            storage_path.clone(),
            Reply::ok("application/octet-stream", image.layers[0].clone()),
        )]),
        None,
    );
    let mut routes = image.routes();
    routes.insert(
        blob_path(&layer_digest),
        Reply {
            status: 307,
            headers: vec![(
                "Location".to_owned(),
                format!("http://{}{storage_path}?signature=test", storage.address),
            )],
            body: Vec::new(),
        },
    );
    // A redirect within the registry keeps the credentials, and the registry rejects the
    // redirected request without them: a control for the check on the other host.
    let config_digest = digest_of(&image.config);
    let same_host_path = format!(
        "/same-host/{}",
        config_digest.strip_prefix("sha256:").unwrap()
    );
    routes.insert(
        blob_path(&config_digest),
        Reply {
            status: 307,
            headers: vec![("Location".to_owned(), same_host_path.clone())],
            body: Vec::new(),
        },
    );
    routes.insert(
        same_host_path.clone(),
        Reply::ok("application/octet-stream", image.config.clone()),
    );
    let (user, password) = ("lying-user", "lying-password");
    let registry = TestServer::start("127.0.0.1", routes, Some((user, password)));

    let root = fresh_root();
    let docker_config = fresh_root();
    let address = registry.address.to_string();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        docker_config.path().join("config.json"),
        format!(r#"{{"auths":{{"{address}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let config = write_config(root.path(), &address, "");
    let result = pull(root.path(), &config, docker_config.path(), REFERENCE);
    assert_eq!(result.code, 0, "{}", result.stderr);

    let expected_authorization = format!("Basic {auth}");
    let registry_requests = registry.requests();
    let blob_request = registry_requests
        .iter()
        .find(|request| request.path() == blob_path(&layer_digest))
        .unwrap_or_else(|| {
            panic!("the registry got no request for the layer: {registry_requests:?}")
        });
    assert_eq!(
        blob_request.header("authorization"),
        Some(expected_authorization.as_str()),
        "the layer request to the registry lacks the credentials"
    );
    let same_host_request = registry_requests
        .iter()
        .find(|request| request.path() == same_host_path)
        .unwrap_or_else(|| {
            panic!("the same-host redirect was not followed: {registry_requests:?}")
        });
    assert_eq!(
        same_host_request.header("authorization"),
        Some(expected_authorization.as_str()),
        "the redirect within the registry lost the credentials"
    );
    let storage_requests = storage.requests();
    assert_eq!(storage_requests.len(), 1, "{storage_requests:?}");
    assert_eq!(
        storage_requests[0].target,
        format!("{storage_path}?signature=test")
    );
    assert_eq!(
        storage_requests[0].header("authorization"),
        None,
        "credentials for {address} were sent to {}",
        storage.address
    );
    assert!(
        root.path().join("blobs/sha256").join(encoded).is_file(),
        "the redirected layer was not stored"
    );
}
