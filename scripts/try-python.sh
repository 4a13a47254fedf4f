#!/bin/sh
# Runs `agentkernel run python3 -c "print('hello')"` offline: the test registry on
# 127.0.0.1 serves python:3.12-alpine (built from Debian packages) and agentkernel.toml
# mirrors docker.io to it. Run as root on a Debian 12 host.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/try-python.sh: sandboxes need root; run it as root" >&2
    exit 1
fi

cargo build --release --quiet
# shellcheck disable=SC2016 # expanded by the inner shell, after the registry is up
tests/env/with-registries.sh sh -c '
    work=$(mktemp -d)
    trap "rm -rf $work" EXIT
    printf "[registry]\nmirrors = { \"docker.io\" = \"http://%s\" }\n" "$AGENTKERNEL_TEST_REGISTRY" >"$work/agentkernel.toml"
    target/release/agentkernel --root "$work/root" run --config "$work/agentkernel.toml" python3 -c "print(\"hello\")"
'
