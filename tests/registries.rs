//! Pulls from registries that need credentials or TLS: the basic-auth and TLS registries
//! that `tests/env/with-registries.sh` starts next to the plain one.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::{Run, agentkernel, env, fresh_root, output};

struct Secured {
    auth: String,
    tls: String,
    ca: String,
    user: String,
    password: String,
}

fn secured() -> Secured {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set by with-registries.sh"))
    };
    Secured {
        auth: var("AGENTKERNEL_TEST_REGISTRY_AUTH"),
        tls: var("AGENTKERNEL_TEST_REGISTRY_TLS"),
        ca: var("AGENTKERNEL_TEST_REGISTRY_CA"),
        user: var("AGENTKERNEL_TEST_REGISTRY_USER"),
        password: var("AGENTKERNEL_TEST_REGISTRY_PASSWORD"),
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

fn run_with(root: &Path, docker_config: &Path, config: Option<&Path>, image: &str) -> Run {
    let mut command = agentkernel(root);
    command.env("DOCKER_CONFIG", docker_config).arg("run");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    output(command.args(["--image", image, "cat", "/etc/test-registry-arch"]))
}

#[test]
fn basic_auth_from_docker_config() {
    let Some(_) = env() else { return };
    let registry = secured();
    let root = fresh_root();
    let docker = fresh_root();
    let image = format!("{}/library/busybox:latest", registry.auth);

    let anonymous = run_with(root.path(), docker.path(), None, &image);
    assert_eq!(anonymous.code, 125, "{}", anonymous.stderr);
    assert!(
        anonymous.stderr.contains(&registry.auth),
        "{}",
        anonymous.stderr
    );

    write_docker_config(docker.path(), &registry.auth, &registry.user, "wrong");
    let wrong = run_with(root.path(), docker.path(), None, &image);
    assert_eq!(wrong.code, 125, "{}", wrong.stderr);

    write_docker_config(
        docker.path(),
        &registry.auth,
        &registry.user,
        &registry.password,
    );
    let good = run_with(root.path(), docker.path(), None, &image);
    assert_eq!(good.stdout, "amd64\n", "{}", good.stderr);
    assert_eq!(good.code, 0);
}

#[test]
fn tls_registry_with_configured_ca() {
    let Some(_) = env() else { return };
    let registry = secured();
    let root = fresh_root();
    let docker = fresh_root();
    write_docker_config(
        docker.path(),
        &registry.tls,
        &registry.user,
        &registry.password,
    );
    let image = format!("{}/library/busybox:latest", registry.tls);

    let untrusted = run_with(root.path(), docker.path(), None, &image);
    assert_eq!(untrusted.code, 125, "{}", untrusted.stderr);
    assert!(
        untrusted.stderr.contains(&registry.tls),
        "{}",
        untrusted.stderr
    );

    let config = root.path().join("agentkernel.toml");
    std::fs::write(
        &config,
        format!("[registry]\nca_files = [{:?}]\n", registry.ca),
    )
    .unwrap();
    let trusted = run_with(root.path(), docker.path(), Some(&config), &image);
    assert_eq!(trusted.stdout, "amd64\n", "{}", trusted.stderr);
    assert_eq!(trusted.code, 0);
}
