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

/// Writes `docker-credential-NAME` into `bin`: it logs the server URL it gets on stdin to
/// `bin/NAME.log`, then runs `body` with the URL in `$server`.
fn write_credential_helper(bin: &Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;

    let log = bin.join(format!("{name}.log"));
    let path = bin.join(format!("docker-credential-{name}"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" >> '{}'\n{body}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs busybox from `image` with `config_json` as the Docker config and `bin` first in PATH.
fn run_with_helpers(bin: &Path, config_json: &str, image: &str) -> Run {
    let root = fresh_root();
    let docker = fresh_root();
    std::fs::write(docker.path().join("config.json"), config_json).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    output(
        agentkernel(root.path())
            .env("DOCKER_CONFIG", docker.path())
            .env("PATH", path)
            .args(["run", "--image", image, "cat", "/etc/test-registry-arch"]),
    )
}

#[test]
fn credential_helpers_from_docker_config() {
    let Some(_) = env() else { return };
    let registry = secured();
    let bin = fresh_root();
    let image = format!("{}/library/busybox:latest", registry.auth);
    let answer = |password: &str| {
        format!(
            "printf '{{\"ServerURL\":\"%s\",\"Username\":\"{}\",\"Secret\":\"{password}\"}}' \"$server\"",
            registry.user
        )
    };
    write_credential_helper(bin.path(), "good", &answer(&registry.password));
    write_credential_helper(bin.path(), "wrong", &answer("wrong"));
    write_credential_helper(
        bin.path(),
        "empty",
        "echo 'credentials not found in native keychain'; exit 1",
    );
    write_credential_helper(bin.path(), "broken", "echo 'keyring is locked' >&2; exit 3");
    let log = |name: &str| {
        std::fs::read_to_string(bin.path().join(format!("{name}.log"))).unwrap_or_default()
    };

    let store = run_with_helpers(bin.path(), r#"{"credsStore":"good"}"#, &image);
    assert_eq!(store.stdout, "amd64\n", "{}", store.stderr);
    assert_eq!(store.code, 0);
    assert_eq!(log("good"), format!("{}\n", registry.auth));

    // credHelpers for the registry wins over credsStore.
    let helpers = format!(
        r#"{{"credsStore":"broken","credHelpers":{{"{}":"good"}}}}"#,
        registry.auth
    );
    let helper = run_with_helpers(bin.path(), &helpers, &image);
    assert_eq!(helper.stdout, "amd64\n", "{}", helper.stderr);
    assert_eq!(log("broken"), "");

    let wrong = run_with_helpers(bin.path(), r#"{"credsStore":"wrong"}"#, &image);
    assert_eq!(wrong.code, 125, "{}", wrong.stderr);
    assert_eq!(log("wrong"), format!("{}\n", registry.auth));

    // A helper without an entry for the registry falls back to auths.
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", registry.user, registry.password));
    let fallback = format!(
        r#"{{"credsStore":"empty","auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
        registry.auth
    );
    let fallback = run_with_helpers(bin.path(), &fallback, &image);
    assert_eq!(fallback.stdout, "amd64\n", "{}", fallback.stderr);
    assert_eq!(log("empty"), format!("{}\n", registry.auth));

    let broken = run_with_helpers(bin.path(), r#"{"credsStore":"broken"}"#, &image);
    assert_eq!(broken.code, 125);
    assert!(
        broken
            .stderr
            .contains("credential helper docker-credential-broken (set in "),
        "{}",
        broken.stderr
    );
    assert!(
        broken.stderr.contains(&format!(
            "failed for {}: exit status: 3: keyring is locked",
            registry.auth
        )),
        "{}",
        broken.stderr
    );
}
