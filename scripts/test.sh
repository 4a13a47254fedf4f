#!/bin/sh
# Runs the whole test suite as root on a Debian 12 host: installs the packages it needs,
# builds the test images (cached between runs), starts the test registries on 127.0.0.1,
# runs the format and lint checks and then every unit and integration test. Last, it
# replays the fuzz targets' committed inputs and fuzzes each target for a short time.
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

# The fuzz targets' checks on fuzz/seeds/ and fuzz/regressions/, without libFuzzer.
cargo test --manifest-path fuzz/Cargo.toml
# 80 seconds of libFuzzer over the three targets, built without AddressSanitizer to keep
# the build short. A crash fails the run, and run.sh prints the path of the input.
fuzz/run.sh --sanitizer none 80
