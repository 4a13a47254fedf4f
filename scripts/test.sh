#!/bin/sh
# Runs the whole test suite as root on a Debian 12 host: installs the packages it needs,
# builds the test images (cached between runs), starts the test registries on 127.0.0.1,
# runs the format and lint checks and then every unit and integration test.
set -eu
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests start containers and registries; run it as root" >&2
    exit 1
fi

tests/env/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
tests/env/with-registries.sh cargo test --workspace --no-fail-fast
