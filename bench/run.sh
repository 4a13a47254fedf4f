#!/usr/bin/env bash
# Measures agentkernel against runc, podman and a bare `unshare` on this host
# and prints a Markdown summary with medians, min/max and ratios.
#
# usage: bench/run.sh [--write FILE] [--runs N] [--warmups N] [--parallel N]
#                     [--no-big-layer] [--keep] [--no-nice] [--host-fs]
#   --write FILE     also write the summary to FILE (e.g. BENCHMARKS.md)
#   --runs N         counted runs per command (default 10)
#   --warmups N      uncounted warm-up rounds before them (default 2)
#   --parallel N     sandboxes started at once in the parallel test (default 20)
#   --no-big-layer   skip building, pushing and pulling the 1 GiB layer image
#   --keep           keep the work directory with the raw results
#   --no-nice        run at the caller's priority instead of nice -19
#   --host-fs        write to the work directory's filesystem instead of a
#                    fresh ext4 on a loop device
#
# Runs as root from a checkout: installs missing Debian packages (podman, crun,
# strace, time), runs `cargo build --release`, and re-runs itself under
# tests/env/with-registries.sh, which starts the test registries on 127.0.0.1.
# Then, in one run:
#   1. warm `agentkernel run --image <busybox> true` (moderate, restrictive, and
#      moderate with --root on a tmpfs) against `runc run` on equivalent
#      bundles, `podman run --rm` and `unshare --mount --uts --ipc --net --pid
#      --fork true`, alternating; then phase timings from `--debug`, off-CPU
#      time per kernel wait site with `perf` (when it can record
#      sched:sched_switch) and `strace -c -w -f` of one run;
#   2. cold pull + unpack of the python and node test images with agentkernel
#      (fresh --root each run), `podman pull` (after `podman rmi -a -f`) and
#      `skopeo copy` + `umoci unpack`, alternating;
#   3. peak RSS of `agentkernel pull` (ru_maxrss), also of an image with one
#      1 GiB layer of random bytes, built once with umoci and cached in
#      ${AGENTKERNEL_BENCH_CACHE:-/var/cache/agentkernel-bench};
#   4. N `agentkernel run --image <busybox> true` started at once, 3 rounds.
# The measurements take about 4 minutes on an idle 2-core VM and about twice as
# long on a busy one. Building the 1 GiB image the first time adds a minute.
# The work directory is under ${TMPDIR:-/var/tmp}. Everything measured writes to
# a fresh ext4 on a loop device there (unless --host-fs), which takes podman's
# storage and configuration too, so the host's podman setup is neither used nor
# changed.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

write=
runs=10
warmups=2
parallel=20
big_layer=1
keep=0
priority=(nice -n -19)
host_fs=0
args=("$@")
while [ $# -gt 0 ]; do
	case $1 in
	--write)
		[ $# -ge 2 ] || {
			echo "bench/run.sh: --write needs a file name" >&2
			exit 2
		}
		write=$(realpath -m "$2")
		shift
		;;
	--runs | --warmups | --parallel)
		if [ $# -lt 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
			echo "bench/run.sh: $1 needs a number" >&2
			exit 2
		fi
		declare "${1#--}=$2"
		shift
		;;
	--no-big-layer) big_layer=0 ;;
	--keep) keep=1 ;;
	--no-nice) priority=() ;;
	--host-fs) host_fs=1 ;;
	*)
		sed -n '5,15p' "$0" >&2
		exit 2
		;;
	esac
	shift
done

log() {
	printf 'bench: %s\n' "$*" >&2
}

agentkernel=${CARGO_TARGET_DIR:-$repo/target}/release/agentkernel

# Outer part: packages, build, registries.
if [ -z "${AGENTKERNEL_BENCH_INNER:-}" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "bench/run.sh: must run as root: it starts containers, mounts overlays and writes cgroups" >&2
		exit 1
	fi
	missing=()
	for package in podman crun runc umoci skopeo strace time jq python3 util-linux; do
		status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
		[ "$status" = installed ] || missing+=("$package")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]}"
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
	log "building agentkernel (cargo build --release)"
	(cd "$repo" && cargo build --release --quiet)
	[ -x "$agentkernel" ] || {
		echo "bench/run.sh: $agentkernel is missing after cargo build; set CARGO_TARGET_DIR to where cargo puts it" >&2
		exit 1
	}
	export AGENTKERNEL_BENCH_INNER=1
	exec "${priority[@]}" "$repo/tests/env/with-registries.sh" "$0" "${args[@]}"
fi

# Inner part: runs under with-registries.sh with AGENTKERNEL_TEST_* set.
: "${AGENTKERNEL_TEST_REGISTRY:?bench/run.sh: run it directly, not its inner part}"
registry=$AGENTKERNEL_TEST_REGISTRY
busybox=$registry/library/busybox:amd64-only
pull_images=(python:"$registry/library/python:3.12-alpine" node:"$registry/library/node:22-alpine")
[ "${AGENTKERNEL_TEST_IMAGES:-}" = full ] || {
	echo "bench/run.sh: the test layout has no python and node images (AGENTKERNEL_TEST_IMAGES=${AGENTKERNEL_TEST_IMAGES:-})" >&2
	exit 1
}

work=$(mktemp -d "${TMPDIR:-/var/tmp}/agentkernel-bench.XXXXXX")
results=$work/results
mkdir -p "$results"
# Everything measured writes below $data: by default a fresh ext4 with the
# default mkfs options (journal, no discard) on a loop device with direct I/O, so
# that results do not depend on the host filesystem's state and options.
data=$work
loop_device=
# podman rejects a runroot longer than 50 characters, so it gets its own short
# directory.
podman_runroot=$(mktemp -d /run/agentkernel-bench.XXXXXX)
cgroup_parents=(agentkernel-bench libpod_parent)
declare -A cgroup_existed
for name in "${cgroup_parents[@]}"; do
	if compgen -G "/sys/fs/cgroup/*/$name" >/dev/null || [ -d "/sys/fs/cgroup/$name" ]; then
		cgroup_existed[$name]=1
	fi
done

# Unmounts what podman's overlay driver left under the work directory, removes
# the cgroup parents this run created (only when empty) and the work directory.
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	set +e
	if command -v runc >/dev/null && [ -d "$data/runc/state" ]; then
		for id in $(runc --root "$data/runc/state" list -q 2>/dev/null); do
			runc --root "$data/runc/state" delete -f "$id"
		done
	fi
	findmnt -rn -o TARGET | grep -F -e "$work/" -e "$podman_runroot/" | sort -r |
		while read -r target; do
			umount -l "$target"
		done
	rm -rf "$podman_runroot"
	# After a lazy unmount the device is detached when its last user closes it.
	[ -z "$loop_device" ] || losetup -d "$loop_device"
	for name in "${cgroup_parents[@]}"; do
		[ -z "${cgroup_existed[$name]:-}" ] || continue
		for dir in /sys/fs/cgroup/*/"$name" /sys/fs/cgroup/"$name"; do
			[ -d "$dir" ] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
		done
	done
	if [ "$keep" = 1 ]; then
		log "kept $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

if [ "$host_fs" = 0 ]; then
	truncate -s 16G "$work/ext4.img"
	mkfs.ext4 -q -F "$work/ext4.img"
	loop_device=$(losetup --find --show --direct-io=on "$work/ext4.img")
	data=$work/fs
	mkdir "$data"
	mount "$loop_device" "$data"
fi

# Prints its arguments as a JSON array of strings.
json_array() {
	python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"
}

bench_py() {
	python3 "$here/bench.py" "$@"
}

# --- Machine description ------------------------------------------------------

# Prints the type, device, journal and mount options of the filesystem of DIR.
describe_filesystem() {
	local device journal=no
	device=$(findmnt -n -o SOURCE --target "$1")
	if compgen -G "/proc/fs/jbd2/${device#/dev/}-*" >/dev/null; then
		journal=a
	fi
	echo "$(findmnt -n -o FSTYPE --target "$1") on $device ($journal journal, mount options" \
		"$(findmnt -n -o OPTIONS --target "$1"))"
}

machine_info() {
	local cgroups memory versions
	if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
		cgroups="cgroup v2 (unified), controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
	else
		cgroups="cgroup v1: $(findmnt -rn -t cgroup -o TARGET | sed 's|/sys/fs/cgroup/||' | tr '\n' ' ')"
		if findmnt -rn -t cgroup2 -o TARGET >/dev/null; then
			cgroups="$cgroups+ cgroup2 at $(findmnt -rn -t cgroup2 -o TARGET | tr '\n' ' ')(hybrid)"
		fi
	fi
	memory=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)

	local filesystem
	filesystem="$(describe_filesystem "$data"), which holds agentkernel's --root, runc's bundle"
	filesystem="$filesystem and state, podman's storage and the umoci bundles"
	if [ -n "$loop_device" ]; then
		filesystem="$filesystem; $loop_device reads and writes a file on $(describe_filesystem "$work")"
		filesystem="$filesystem with direct I/O"
	fi

	versions="$("$agentkernel" --version); runc $(runc --version | awk 'NR == 1 { print $3 }')"
	versions="$versions; podman $(podman --version | awk '{ print $3 }'); crun $(crun --version | awk 'NR == 1 { print $3 }')"
	versions="$versions; skopeo $(skopeo --version | awk '{ print $3 }'); umoci $(umoci --version | awk '{ print $3 }')"
	versions="$versions; docker-registry $(dpkg-query -W -f='${Version}' docker-registry)"

	jq -n \
		--arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
		--arg commit "$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$repo" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')" \
		--arg cpus "$(nproc) ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))" \
		--arg memory "$memory" \
		--arg kernel "$(uname -r)" \
		--arg os "$(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release)" \
		--arg cgroups "$cgroups" \
		--arg filesystem "$filesystem" \
		--arg load "1, 5 and 15 min load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)" \
		--arg versions "$versions" \
		--arg priority "nice $(nice) for the registries and every measured command" \
		--arg runs "$runs" --arg warmups "$warmups" \
		'$ARGS.named' >"$results/info.json"
}

# --- 1. Warm runs --------------------------------------------------------------

# Writes the runc bundle for PROFILE (moderate or restrictive): `runc spec`,
# edited with jq to carry the settings of agentkernel's own config.json for that
# profile, taken from a sandbox kept with `run --keep` and removed again. With
# --fast the seccomp filter moves out of config.json into a compiled program, so
# the kept sandbox runs with --fast=false to keep the filter in the spec.
write_runc_bundle() {
	local profile=$1 bundle=$data/runc/$1 name=bench-spec-$1
	local kept=$data/ak-warm/sandboxes/$name
	"$agentkernel" --root "$data/ak-warm" run --keep --fast=false --name "$name" \
		--profile "$profile" --image "$busybox" true </dev/null >/dev/null
	mkdir -p "$bundle/etc"
	cp "$kept/config.json" "$data/runc/agentkernel-$profile.json"
	cp "$kept"/etc/* "$bundle/etc/"
	"$agentkernel" --root "$data/ak-warm" rm "$name" >/dev/null
	(cd "$bundle" && runc spec)
	# agentkernel's spec stores the mask of SCMP_CMP_MASKED_EQ in valueTwo, which
	# libcontainer 0.7 reads as the mask. runc reads `value` as the mask, so the
	# two are swapped for runc.
	jq --slurpfile agentkernel "$data/runc/agentkernel-$profile.json" \
		--arg rootfs "$data/runc/bundle/rootfs" --arg etc "$bundle/etc" \
		--arg cgroup "/agentkernel-bench/runc-$profile" '
		def swap_masked: if .op == "SCMP_CMP_MASKED_EQ"
			then {index, op, value: (.valueTwo // 0), valueTwo: (.value // 0)} else . end;
		$agentkernel[0] as $ak
		| .process = ($ak.process | .terminal = false | .args = ["true"])
		| .hostname = $ak.hostname
		| .root = {path: $rootfs, readonly: $ak.root.readonly}
		| .mounts = [$ak.mounts[] | if .type == "bind" and (.destination | startswith("/etc/"))
			then .source = ($etc + "/" + (.source | split("/") | last)) else . end]
		| .linux = ($ak.linux | .cgroupsPath = $cgroup)
		| if .linux.seccomp then .linux.seccomp.syscalls |= map(
			if .args then .args |= map(swap_masked) else . end) else . end
		' "$bundle/config.json" >"$bundle/config.json.new"
	mv "$bundle/config.json.new" "$bundle/config.json"
	# Mount points of the /etc bind mounts, so runc does not create them in the shared rootfs.
	touch "$data/runc/bundle/rootfs/etc/hosts" "$data/runc/bundle/rootfs/etc/hostname" \
		"$data/runc/bundle/rootfs/etc/resolv.conf"
}

prepare_runc() {
	mkdir -p "$data/runc/state"
	skopeo copy -q --src-tls-verify=false "docker://$busybox" "oci:$data/runc/oci:busybox"
	umoci unpack --image "$data/runc/oci:busybox" "$data/runc/bundle" >/dev/null
	write_runc_bundle moderate
	write_runc_bundle restrictive
}

# Writes podman's configuration, which keeps its storage and temporary files
# under $data. registries.conf marks the loopback registry as plain HTTP.
# containers.conf turns off networking and lowers the default ulimits, because
# podman's defaults fail with setrlimit EPERM on a host without CAP_SYS_RESOURCE.
prepare_podman() {
	local dir=$data/podman
	mkdir -p "$dir/tmp"
	printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
		"$dir/root" "$podman_runroot" >"$dir/storage.conf"
	cat >"$dir/containers.conf" <<-EOF
		[engine]
		cgroup_manager = "cgroupfs"
		events_logger = "file"
		events_logfile_path = "$dir/events.log"
		runtime = "crun"
		tmp_dir = "$dir/tmp"
		[containers]
		netns = "none"
		default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
	EOF
	printf 'unqualified-search-registries = []\n[[registry]]\nlocation = "%s"\ninsecure = true\n' \
		"$registry" >"$dir/registries.conf"
	export CONTAINERS_CONF=$dir/containers.conf
	export CONTAINERS_STORAGE_CONF=$dir/storage.conf
	export CONTAINERS_REGISTRIES_CONF=$dir/registries.conf
}

# Prints a shell command that runs ARGS in a private mount namespace without
# the cgroup2 mount, because crun 1.8 rejects this host's hybrid cgroup layout
# ("cgroups in hybrid mode not supported"). The host's mounts stay as they are.
podman_script() {
	if findmnt -rn /sys/fs/cgroup/unified >/dev/null; then
		echo "umount /sys/fs/cgroup/unified && exec $*"
	else
		echo "exec $*"
	fi
}

# Runs ARGV once; on failure logs NAME, the exit status and its output, and returns 1.
check_once() {
	local name=$1 output status=0
	shift
	output=$("$@" </dev/null 2>&1) || status=$?
	if [ "$status" -ne 0 ]; then
		log "$name failed with exit status $status: $output"
		echo "- \`$name\` was left out: \`$*\` exited with status $status: $output" >>"$results/notes-skipped.txt"
		return 1
	fi
}

# Records 10 runs of ARGV with perf system-wide and writes the off-CPU time per
# kernel wait site of the processes whose name matches COMM_REGEX to
# $results/offcpu-NAME.md.
record_offcpu() {
	local name=$1 comm_regex=$2
	shift 2
	# shellcheck disable=SC2016 # expanded by the inner bash
	perf record -q -a -g -e sched:sched_switch -o "$work/offcpu-$name.data" -- \
		bash -c 'for _ in $(seq 10); do "$@" </dev/null >/dev/null 2>&1; done' bash "$@"
	perf script -i "$work/offcpu-$name.data" -F comm,pid,time,event,trace,ip,sym \
		>"$work/offcpu-$name.txt" 2>/dev/null
	bench_py offcpu "$work/offcpu-$name.txt" 10 "$comm_regex" "$results/offcpu-$name.md"
}

measure_warm() {
	local ak_root=$data/ak-warm commands=()
	log "warm runs: preparing agentkernel, runc and podman"
	"$agentkernel" --root "$ak_root" pull "$busybox" >/dev/null
	# A second cache on a tmpfs shows what the filesystem of --root costs each run.
	mkdir -p "$data/tmpfs"
	mount -t tmpfs -o size=512m,mode=0700 agentkernel-bench "$data/tmpfs"
	"$agentkernel" --root "$data/tmpfs/ak" pull "$busybox" >/dev/null
	prepare_runc
	prepare_podman

	local moderate=("$agentkernel" --root "$ak_root" run --image "$busybox" true)
	local restrictive=("$agentkernel" --root "$ak_root" run --profile restrictive --image "$busybox" true)
	local moderate_tmpfs=("$agentkernel" --root "$data/tmpfs/ak" run --image "$busybox" true)
	local runc_moderate=(runc --root "$data/runc/state" run --bundle "$data/runc/moderate" bench-moderate)
	local runc_restrictive=(runc --root "$data/runc/state" run --bundle "$data/runc/restrictive" bench-restrictive)
	local podman_run=(unshare -m --propagation private sh -c
		"$(podman_script podman run --rm --network none --memory 512m --cpus 1 --pids-limit 1024 "$busybox" true)")
	local wrapper=(unshare -m --propagation private sh -c "$(podman_script true)")
	local floor=(unshare --mount --uts --ipc --net --pid --fork true)
	local version=("$agentkernel" --version)

	add() {
		local name=$1
		shift
		commands+=("$(jq -cn --arg name "$name" --argjson argv "$(json_array "$@")" '{name: $name, argv: $argv}')")
	}
	check_once ak-moderate "${moderate[@]}" && add ak-moderate "${moderate[@]}"
	check_once ak-restrictive "${restrictive[@]}" && add ak-restrictive "${restrictive[@]}"
	check_once ak-moderate-tmpfs "${moderate_tmpfs[@]}" && add ak-moderate-tmpfs "${moderate_tmpfs[@]}"
	check_once runc-moderate "${runc_moderate[@]}" && add runc-moderate "${runc_moderate[@]}"
	check_once runc-restrictive "${runc_restrictive[@]}" && add runc-restrictive "${runc_restrictive[@]}"
	if check_once podman-pull podman pull -q "$busybox" && check_once podman "${podman_run[@]}"; then
		add podman "${podman_run[@]}"
		add podman-wrapper "${wrapper[@]}"
	fi
	check_once unshare "${floor[@]}" && add unshare "${floor[@]}"
	add ak-version "${version[@]}"

	printf '%s\n' "${commands[@]}" | jq -s --arg runs "$runs" --arg warmups "$warmups" \
		'{group: "warm", runs: ($runs | tonumber), warmups: ($warmups | tonumber), commands: .}' \
		>"$work/warm-spec.json"
	bench_py time "$work/warm-spec.json" "$results/warm.json"

	log "warm runs: phase timings (--debug)"
	local _
	for _ in $(seq 20); do
		"$agentkernel" --debug --root "$ak_root" run --image "$busybox" true </dev/null 2>&1 |
			grep -a 'sandbox run finished' >>"$results/phases.txt" || true
	done
	if command -v perf >/dev/null &&
		perf record -q -a -e sched:sched_switch -o "$work/perf-check.data" -- true 2>/dev/null; then
		log "warm runs: off-CPU time with perf (sched:sched_switch, system-wide)"
		# The thread names and the commands that agentkernel starts for the network.
		record_offcpu agentkernel '^(agentkernel|youki:|sandbox-|ip$|nsenter$|iptables|xtables)' \
			"${moderate[@]}"
		record_offcpu runc '^(runc|exe$)' "${runc_moderate[@]}"
	else
		log "perf cannot record sched:sched_switch here; the off-CPU tables are left out"
	fi
	log "warm runs: strace -c -w -f of one run"
	strace -c -w -f -o "$work/strace.raw" "${moderate[@]}" </dev/null >/dev/null 2>&1 || true
	# Keep the header, the 15 most expensive calls and the total line.
	awk 'NR <= 2 || /total$/ { print; next } !/^-/ && ++calls <= 15' \
		"$work/strace.raw" >"$results/strace.txt"
}

# --- 2. Cold pulls ------------------------------------------------------------

measure_pulls() {
	local commands=() entry image reference
	log "cold pulls: ${pull_images[*]}"
	for entry in "${pull_images[@]}"; do
		image=${entry%%:*}
		reference=${entry#*:}
		commands+=("$(jq -cn --arg name "ak-pull-$image" \
			--arg prepare "rm -rf '$data/ak-pull' && mkdir '$data/ak-pull'" \
			--argjson argv "$(json_array "$agentkernel" --root "$data/ak-pull" pull "$reference")" \
			'{name: $name, prepare: $prepare, argv: $argv}')")
		commands+=("$(jq -cn --arg name "podman-pull-$image" \
			--arg prepare "podman rmi -a -f >/dev/null" \
			--argjson argv "$(json_array podman pull -q "$reference")" \
			'{name: $name, prepare: $prepare, argv: $argv}')")
		commands+=("$(jq -cn --arg name "skopeo-umoci-$image" \
			--arg prepare "rm -rf '$data/umoci' && mkdir '$data/umoci'" \
			--arg script "skopeo copy -q --src-tls-verify=false 'docker://$reference' 'oci:$data/umoci/oci:image' && umoci unpack --image '$data/umoci/oci:image' '$data/umoci/bundle' >/dev/null" \
			'{name: $name, prepare: $prepare, argv: ["sh", "-c", $script]}')")
	done
	printf '%s\n' "${commands[@]}" | jq -s --arg runs "$runs" --arg warmups "$warmups" \
		'{group: "pull", runs: ($runs | tonumber), warmups: ($warmups | tonumber), commands: .}' \
		>"$work/pull-spec.json"
	bench_py time "$work/pull-spec.json" "$results/pull.json"
	count_sync_calls
	podman rmi -a -f >/dev/null || true
	rm -rf "$data/ak-pull" "$data/umoci"
}

# Counts the fsync-family system calls of one more pull of the python image by
# each tool (strace -c -f), into $results/sync-NAME.txt.
count_sync_calls() {
	local command name
	local -a argv
	log "cold pulls: fsync-family calls of one python pull per tool (strace)"
	while IFS= read -r command; do
		name=$(jq -r .name <<<"$command")
		[[ $name == *-python ]] || continue
		bash -c "$(jq -r .prepare <<<"$command")"
		mapfile -t argv < <(jq -r '.argv[]' <<<"$command")
		strace -f -c -e trace=fsync,fdatasync,syncfs,sync_file_range,sync \
			-o "$results/sync-$name.txt" "${argv[@]}" </dev/null >/dev/null 2>&1 ||
			log "$name failed under strace"
	done < <(jq -c '.commands[]' "$work/pull-spec.json")
}

# --- 3. 1 GiB layer -------------------------------------------------------------

# Prints the path of a cached OCI layout with the tag `big`. Its one layer
# contains /big.bin, 1 GiB from /dev/urandom, which gzip cannot shrink.
big_layout() {
	local cache=${AGENTKERNEL_BENCH_CACHE:-/var/cache/agentkernel-bench}
	local layout=$cache/big-1g tmp
	if [ ! -f "$layout/index.json" ]; then
		log "building the 1 GiB layer image in $layout (once)"
		mkdir -p "$cache"
		tmp=$(mktemp -d "$cache/build.XXXXXX")
		umoci init --layout "$tmp/layout"
		umoci new --image "$tmp/layout:big"
		umoci unpack --image "$tmp/layout:big" "$tmp/bundle" >/dev/null
		head -c $((1024 * 1024 * 1024)) /dev/urandom >"$tmp/bundle/rootfs/big.bin"
		umoci repack --image "$tmp/layout:big" "$tmp/bundle"
		umoci config --image "$tmp/layout:big" --os linux --architecture amd64 \
			--config.env PATH=/usr/bin:/bin --config.cmd /big.bin
		umoci gc --layout "$tmp/layout"
		mv "$tmp/layout" "$layout"
		rm -rf "$tmp"
	fi
	echo "$layout"
}

measure_big() {
	local layout reference=$registry/bench/big:1g
	layout=$(big_layout)
	log "pushing the 1 GiB layer image to $reference"
	skopeo copy -q --dest-tls-verify=false "oci:$layout:big" "docker://$reference"
	jq -n --arg prepare "rm -rf '$data/ak-big' && mkdir '$data/ak-big'" \
		--argjson argv "$(json_array "$agentkernel" --root "$data/ak-big" pull "$reference")" \
		'{group: "big", runs: 3, warmups: 1, commands: [
			{name: "ak-pull-big", prepare: $prepare, argv: $argv}]}' >"$work/big-spec.json"
	bench_py time "$work/big-spec.json" "$results/big.json"
	rm -rf "$data/ak-big"
}

# --- 4. Parallel runs -----------------------------------------------------------

measure_parallel() {
	log "$parallel parallel runs, 3 rounds"
	bench_py parallel "$results/parallel.json" "$parallel" 3 -- \
		"$agentkernel" --root "$data/ak-warm" run --image "$busybox" true
}

write_notes() {
	local seccomp
	seccomp=$("$agentkernel" --root "$data/ak-warm" run --image "$busybox" \
		sh -c 'grep "^Seccomp:" /proc/self/status' </dev/null 2>&1 | tr -s '\t ' ' ') ||
		seccomp="unknown: the check failed"
	local runc_seccomp="has no seccomp filter"
	if jq -e '.linux.seccomp' "$data/runc/moderate/config.json" >/dev/null 2>&1; then
		runc_seccomp="has the same filter, copied from agentkernel's spec"
	fi
	{
		echo "- agentkernel's sandbox reports \`${seccomp}\` (0: no seccomp filter, 2: a filter);"
		echo "  the runc bundle $runc_seccomp."
		cat <<-'EOF'
			- agentkernel runs from the image cache in a `--root` under the work directory, pulled
			  once before the timed runs. Each run mounts an overlay over the cached layers and
			  removes it afterwards. `ak-moderate-tmpfs` is the same with the `--root` on a tmpfs
			  mounted for the benchmark.
			- runc's bundle for each profile is `runc spec`, edited with jq to take from
			  agentkernel's own `config.json` for that profile (from a sandbox kept with
			  `run --keep`): the process settings (capabilities, rlimits, `noNewPrivileges`,
			  environment), the hostname, the read-only root choice, the mounts (with copies of the
			  `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` files) and the whole `linux`
			  section: namespaces, cgroup limits, device rules, seccomp filter, masked and
			  read-only paths. Only `cgroupsPath` differs, and the two operands of
			  `SCMP_CMP_MASKED_EQ` rules are swapped, because libcontainer 0.7 and runc read them
			  in opposite order. The rootfs is the same busybox image, copied from the registry
			  with skopeo and unpacked with `umoci unpack` once. Differences: runc's root is that
			  plain directory, with no overlay mount per run; runc brings up `lo` itself; for
			  moderate, agentkernel also creates a veth pair with NAT and firewall rules for
			  outbound traffic, while runc's network namespace has only `lo`.
			- podman 4.3 runs the image it pulled from the same registry, with crun, its default
			  seccomp profile and capabilities, `--network none`, `--memory 512m --cpus 1
			  --pids-limit 1024`, cgroupfs, and storage in the work directory. crun 1.8 rejects the
			  host's hybrid cgroups, so each podman command runs as `unshare -m --propagation
			  private sh -c 'umount /sys/fs/cgroup/unified && exec podman ...'`. The row
			  `podman-wrapper` is that wrapper alone.
			- `unshare --mount --uts --ipc --net --pid --fork true` is the floor: the namespaces and
			  one fork and exec, with no cgroups, mounts or image.
			- Cold pulls: each agentkernel pull gets an empty `--root`, each podman pull follows an
			  uncounted `podman rmi -a -f`, each skopeo copy + umoci unpack goes to empty
			  directories. All read from the same registry on 127.0.0.1 and write to the same
			  filesystem; the registry's blobs are in the page cache after the warm-up rounds.
			- Everything measured writes to the filesystem named under "Machine": by default a
			  fresh ext4 made with mkfs.ext4's defaults on a loop device, so that the host
			  filesystem's options and recent deletions do not enter the numbers (`--host-fs`
			  measures on the host filesystem instead).
			- Everything measured runs at nice -19 (unless `--no-nice`), so that other processes
			  on the machine take less CPU time from the measured commands; the disk is still
			  shared with them.
			- Times are wall-clock times of the whole process, from posix_spawn to wait4, in
			  `bench/bench.py`. CPU is user + system time of the process and its waited-for
			  children; peak RSS is their largest `ru_maxrss`.
		EOF
		[ ! -f "$results/notes-skipped.txt" ] || cat "$results/notes-skipped.txt"
	} >"$results/notes.txt"
}

started=$SECONDS
machine_info
measure_warm
measure_pulls
[ "$big_layer" = 0 ] || measure_big
measure_parallel
write_notes
log "measured in $((SECONDS - started)) s"
jq --arg after "$(cut -d' ' -f1-3 /proc/loadavg)" --arg seconds "$((SECONDS - started))" \
	'.load += ", after: \($after)" | .duration = "\($seconds) s"' \
	"$results/info.json" >"$results/info.json.new"
mv "$results/info.json.new" "$results/info.json"
cp "$here/profile-notes.md" "$results/profile.md"

report_args=()
[ -z "$write" ] || report_args=(--write "$write")
bench_py report "${report_args[@]}" "$results"
