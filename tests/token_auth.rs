//! Pulls from a registry that uses the Bearer token flow, as Docker Hub does. The registry
//! returns 401 with `WWW-Authenticate: Bearer realm=...`, so the client fetches a JWT from
//! `tests/env/token-server.py` and retries with it. The token server logs each request,
//! so the tests check the flow itself and not only the pulled file.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::{Run, agentkernel, env, fresh_root, output};
use serde_json::{Value, json};

const PULL_SCOPE: &str = "repository:library/busybox:pull";

struct TokenRegistry {
    address: String,
    log: String,
    user: String,
    password: String,
}

fn token_registry() -> TokenRegistry {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set by with-registries.sh"))
    };
    TokenRegistry {
        address: var("AGENTKERNEL_TEST_REGISTRY_TOKEN"),
        log: var("AGENTKERNEL_TEST_TOKEN_LOG"),
        user: var("AGENTKERNEL_TEST_REGISTRY_USER"),
        password: var("AGENTKERNEL_TEST_REGISTRY_PASSWORD"),
    }
}

impl TokenRegistry {
    fn image(&self) -> String {
        format!("{}/library/busybox:latest", self.address)
    }

    /// Returns the logged token requests for exactly [`PULL_SCOPE`] whose credentials were
    /// `credentials` (none, valid or invalid).
    fn pull_requests(&self, credentials: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| panic!("cannot read token log {}: {e}", self.log));
        text.lines()
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("invalid line in {}: {e}: {line}", self.log))
            })
            .filter(|entry| {
                entry["credentials"] == credentials
                    && entry["query"]["scope"] == json!([PULL_SCOPE])
            })
            .collect()
    }
}

fn write_docker_config(dir: &Path, registry: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

fn run_with(root: &Path, docker_config: &Path, image: &str) -> Run {
    let mut command = agentkernel(root);
    command
        .env("DOCKER_CONFIG", docker_config)
        .arg("--root")
        .arg(root)
        .arg("run");
    output(command.args(["--image", image, "cat", "/etc/test-registry-arch"]))
}

#[test]
fn anonymous_pull_fetches_token() {
    let Some(_) = env() else { return };
    let registry = token_registry();
    let root = fresh_root();
    let docker = fresh_root();
    let before = registry.pull_requests("none").len();

    let run = run_with(root.path(), docker.path(), &registry.image());
    assert_eq!(run.stdout, "amd64\n", "{}", run.stderr);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let requests = registry.pull_requests("none");
    assert_eq!(requests.len(), before + 1, "{requests:#?}");
    let request = requests.last().unwrap();
    assert_eq!(request["path"], "/token");
    assert_eq!(request["query"]["service"], json!(["agentkernel-test"]));
    assert_eq!(request["status"], 200);
    assert_eq!(
        request["access"],
        json!([{"type": "repository", "name": "library/busybox", "actions": ["pull"]}])
    );
}

#[test]
fn wrong_credentials_fail_pull() {
    let Some(_) = env() else { return };
    let registry = token_registry();
    let root = fresh_root();
    let docker = fresh_root();
    write_docker_config(docker.path(), &registry.address, &registry.user, "wrong");
    let before = registry.pull_requests("invalid").len();

    let run = run_with(root.path(), docker.path(), &registry.image());
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains(&registry.address), "{}", run.stderr);

    let requests = registry.pull_requests("invalid");
    assert_eq!(requests.len(), before + 1, "{requests:#?}");
    let request = requests.last().unwrap();
    assert_eq!(request["user"], json!(registry.user));
    assert_eq!(request["status"], 401);
}

#[test]
fn valid_credentials_fetch_token() {
    let Some(_) = env() else { return };
    let registry = token_registry();
    let root = fresh_root();
    let docker = fresh_root();
    write_docker_config(
        docker.path(),
        &registry.address,
        &registry.user,
        &registry.password,
    );
    let before = registry.pull_requests("valid").len();

    let run = run_with(root.path(), docker.path(), &registry.image());
    assert_eq!(run.stdout, "amd64\n", "{}", run.stderr);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let requests = registry.pull_requests("valid");
    assert_eq!(requests.len(), before + 1, "{requests:#?}");
    let request = requests.last().unwrap();
    assert_eq!(request["user"], json!(registry.user));
    assert_eq!(request["status"], 200);
}
