#!/usr/bin/env bash
# Builds the fuzz targets with cargo fuzz and runs them for about SECONDS seconds in
# total: half for unpack_layer, a quarter each for parse_documents and
# parse_references. The build is not counted. Each target starts from its inputs in
# corpus/<target>/, seeds/<target>/ and regressions/<target>/. New inputs go to
# fuzz/corpus/<target>/ (not committed), crashes to fuzz/artifacts/<target>/ and
# libFuzzer's output to fuzz/artifacts/<target>.log. Exits 1 if a target crashed, and
# then prints the end of that target's log and the inputs that made it fail.
#
# usage: fuzz/run.sh [--sanitizer address|none] SECONDS
#   (as root: unpack_layer creates device nodes and owners)
#
# --sanitizer address (the default) builds in release mode with AddressSanitizer.
# --sanitizer none builds in release mode with only libFuzzer's coverage
# instrumentation, plus debug assertions and overflow checks. It finds panics, failed
# assertions and integer overflows, but a memory error in unsafe code only when the
# error crashes the process by itself. scripts/test.sh uses it because rootfs-cache has
# no unsafe code. On the 2-core test VM it also built faster (142 s against 197 s from
# an empty fuzz/target) and ran unpack_layer about 4 times as fast (62117 against 16039
# inputs in 4 s).
#
# cargo fuzz passes rustc -Z flags (sanitizer, coverage), which only nightly accepts.
# RUSTC_BOOTSTRAP=1 makes the default toolchain accept them too, so this works on a
# stable-only machine. cargo-fuzz is installed from crates.io when missing. The same
# checks run on the seeds and regressions without libFuzzer with
# `cargo test --manifest-path fuzz/Cargo.toml`.
set -euo pipefail
shopt -s inherit_errexit

usage() {
	echo "usage: $0 [--sanitizer address|none] SECONDS   (SECONDS >= 4)" >&2
	exit 2
}

sanitizer=address
while [ $# -gt 0 ]; do
	case $1 in
	--sanitizer)
		[ $# -ge 2 ] || usage
		sanitizer=$2
		shift 2
		;;
	--sanitizer=*)
		sanitizer=${1#--sanitizer=}
		shift
		;;
	-*) usage ;;
	*) break ;;
	esac
done
if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+$ ]] || [ "$1" -lt 4 ]; then
	usage
fi
total=$1
case $sanitizer in
address) build_flags=(-O) ;;
none) build_flags=(-O --debug-assertions --sanitizer none) ;;
*)
	echo "run.sh: unknown sanitizer '$sanitizer': use address or none" >&2
	exit 2
	;;
esac
if [ "$(id -u)" -ne 0 ]; then
	echo "run.sh: must run as root, because unpack_layer creates device nodes and sets owners" >&2
	exit 1
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

if ! command -v cargo-fuzz >/dev/null; then
	# cargo-fuzz 0.13 accepts the options that this script passes.
	echo "run.sh: installing cargo-fuzz 0.13 from crates.io" >&2
	started=$SECONDS
	cargo install --locked --version '~0.13' cargo-fuzz
	echo "run.sh: installed cargo-fuzz in $((SECONDS - started))s" >&2
fi

export RUSTC_BOOTSTRAP=1

started=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "run.sh: built the fuzz targets (sanitizer $sanitizer) in $((SECONDS - started))s" >&2

declare -A share=(
	[unpack_layer]=$((total / 2))
	[parse_documents]=$((total / 4))
	[parse_references]=$((total / 4))
)
failed=()
started=$SECONDS
for target in unpack_layer parse_documents parse_references; do
	inputs=("corpus/$target" "seeds/$target")
	[ ! -d "regressions/$target" ] || inputs+=("regressions/$target")
	mkdir -p "corpus/$target" "artifacts/$target"
	log=artifacts/$target.log
	# A file older than the inputs that this run writes to artifacts/<target>/.
	started_marker=$(mktemp)
	echo "run.sh: fuzzing $target for ${share[$target]}s" >&2
	# -timeout: seconds one input may take before libFuzzer reports it as a hang.
	if cargo fuzz run "${build_flags[@]}" "$target" "${inputs[@]}" -- \
		-max_total_time="${share[$target]}" -timeout=10 -rss_limit_mb=2048 \
		-print_final_stats=1 >"$log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		echo "run.sh: $target: no crash in ${share[$target]}s, executions: ${runs:-unknown}" >&2
	else
		failed+=("$target")
		echo "run.sh: $target failed; the end of $here/$log:" >&2
		tail -n 60 "$log" >&2
		echo "run.sh: inputs that made $target fail:" >&2
		find "$here/artifacts/$target" -type f -newer "$started_marker" >&2 || true
	fi
	rm -f "$started_marker"
done

if [ ${#failed[@]} -gt 0 ]; then
	echo "run.sh: failures in ${failed[*]}; inputs are in $here/artifacts/<target>/." >&2
	echo "run.sh: after the fix, copy each input to $here/regressions/<target>/ so that" \
		"\`cargo test --manifest-path fuzz/Cargo.toml\` replays it" >&2
	exit 1
fi
echo "run.sh: no crash in $((SECONDS - started))s of fuzzing" >&2
