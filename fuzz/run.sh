#!/usr/bin/env bash
# Builds the fuzz targets with cargo fuzz and runs them for about SECONDS seconds in
# total: half for unpack_layer, a quarter each for parse_documents and
# parse_references. The build is not counted. New inputs go to fuzz/corpus/<target>/
# (not committed), crashes to fuzz/artifacts/<target>/. Exits 1 if a target crashed.
#
# usage: fuzz/run.sh SECONDS   (as root: unpack_layer creates device nodes and owners)
#
# cargo fuzz passes rustc -Z flags (sanitizer, coverage), which only nightly accepts.
# RUSTC_BOOTSTRAP=1 makes the default toolchain accept them too, so this works on a
# stable-only machine. The targets are built in release mode with AddressSanitizer.
# cargo-fuzz is installed from crates.io when missing. The same checks run on the seeds
# without libFuzzer with `cargo test --manifest-path fuzz/Cargo.toml`.
set -euo pipefail
shopt -s inherit_errexit

if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 4 ]; then
	echo "usage: $0 SECONDS   (SECONDS >= 4)" >&2
	exit 2
fi
total=$1
if [ "$(id -u)" -ne 0 ]; then
	echo "run.sh: must run as root, because unpack_layer creates device nodes and sets owners" >&2
	exit 1
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

if ! command -v cargo-fuzz >/dev/null; then
	echo "run.sh: installing cargo-fuzz from crates.io" >&2
	cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1

started=$SECONDS
cargo fuzz build -O
echo "run.sh: built the fuzz targets in $((SECONDS - started))s" >&2

declare -A share=(
	[unpack_layer]=$((total / 2))
	[parse_documents]=$((total / 4))
	[parse_references]=$((total / 4))
)
failed=()
for target in unpack_layer parse_documents parse_references; do
	mkdir -p "corpus/$target"
	echo "run.sh: fuzzing $target for ${share[$target]}s" >&2
	# -timeout: seconds one input may take before libFuzzer reports it as a hang.
	if ! cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
		-max_total_time="${share[$target]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
		failed+=("$target")
	fi
done

if [ ${#failed[@]} -gt 0 ]; then
	echo "run.sh: crashes in ${failed[*]}; inputs are in $here/artifacts/" >&2
	exit 1
fi
echo "run.sh: no crash in $((SECONDS - started))s" >&2
