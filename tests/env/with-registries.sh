#!/usr/bin/env bash
# Runs CMD with four test registries on 127.0.0.1 filled with the test images.
#
# usage: with-registries.sh [--busybox-only] CMD [ARG...]
#   e.g. tests/env/with-registries.sh cargo test
#
# Steps: install missing Debian packages, build or reuse the cached OCI layout
# (build-images.sh), start the registries (registry.sh), push the images
# (push-images.sh) and run CMD with the variables below. Then stop the
# registries and the token server and delete their temporary directory, also
# after Ctrl-C or SIGTERM. Exits with CMD's exit status. After SIGKILL the
# registries still stop (parent-death signal), but the temporary directory stays.
#
#   AGENTKERNEL_TEST_REGISTRY           127.0.0.1:PORT, HTTP, no auth
#   AGENTKERNEL_TEST_REGISTRY_LOG       its access log (Apache combined format)
#   AGENTKERNEL_TEST_REGISTRY_AUTH      127.0.0.1:PORT, HTTP with basic auth
#   AGENTKERNEL_TEST_REGISTRY_USER      testuser
#   AGENTKERNEL_TEST_REGISTRY_PASSWORD  testpass
#   AGENTKERNEL_TEST_REGISTRY_TLS       127.0.0.1:PORT, HTTPS with basic auth
#   AGENTKERNEL_TEST_REGISTRY_CA        PEM file of the CA that signed its certificate
#   AGENTKERNEL_TEST_REGISTRY_TOKEN     127.0.0.1:PORT, HTTP with Bearer token auth
#                                       (anonymous pull; push needs the user above)
#   AGENTKERNEL_TEST_TOKEN_LOG          the token server's request log, one JSON
#                                       object per line (see token-server.py)
#   AGENTKERNEL_TEST_LAYOUT             the OCI layout the images came from (read-only)
#   AGENTKERNEL_TEST_IMAGES             full, or busybox for a --busybox-only layout
#
# --busybox-only (or AGENTKERNEL_TEST_IMAGES=busybox in the environment) skips
# building the Debian images, which need the Debian mirror and ~1.5 min. A
# cached full layout is still used, and then AGENTKERNEL_TEST_IMAGES is full.
# AGENTKERNEL_TEST_KEEP=1 keeps the registries' directory (logs, storage).
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/registry.sh
. "$here/registry.sh"

build_options=()
if [ "${1:-}" = --busybox-only ] || [ "${AGENTKERNEL_TEST_IMAGES:-full}" = busybox ]; then
	build_options=(--busybox-only)
fi
[ "${1:-}" != --busybox-only ] || shift
if [ $# -eq 0 ]; then
	echo "usage: $0 [--busybox-only] CMD [ARG...]" >&2
	exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "with-registries.sh: must run as root, because building the images needs debootstrap and umoci as root" >&2
	exit 1
fi

"$here/install-deps.sh"
layout=$("$here/build-images.sh" "${build_options[@]}" | tail -n 1)
[ -f "$layout/index.json" ] || {
	echo "with-registries.sh: build-images.sh returned '$layout', which is not an OCI layout" >&2
	exit 1
}
if jq -e '.manifests | any(.annotations["org.opencontainers.image.ref.name"] == "debian")' \
	"$layout/index.json" >/dev/null; then
	images=full
else
	images=busybox
fi

signalled=0
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/agentkernel-registries.XXXXXX")
child=

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	registry_stop "$run_dir"
	if [ "${AGENTKERNEL_TEST_KEEP:-0}" = 1 ]; then
		echo "with-registries.sh: kept $run_dir" >&2
	else
		rm -rf "$run_dir"
	fi
}

# Print the PIDs of the descendants of process PID.
# shellcheck disable=SC2317 # called from on_signal
descendants() {
	ps -e -o pid= -o ppid= | awk -v root="$1" '
		{ parent[$1] = $2 }
		END {
			queue[0] = root
			n = 1
			for (i = 0; i < n; i++)
				for (pid in parent)
					if (parent[pid] == queue[i]) { queue[n++] = pid; print pid }
		}'
}

# Forward SIGNAL to CMD and all its descendants, as a terminal does to its
# foreground process group, or exit at once when CMD is not running yet.
# shellcheck disable=SC2317 # called by the signal traps
on_signal() {
	local signal=$1 number=$2 pids
	signalled=1
	if [ -n "$child" ]; then
		pids=$(descendants "$child")
		# shellcheck disable=SC2086 # one PID per word
		kill -s "$signal" "$child" $pids 2>/dev/null || true
	else
		exit $((128 + number))
	fi
}

trap cleanup EXIT
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM
trap 'on_signal HUP 1' HUP

# Registries get SIGTERM if this shell dies without running its traps (kill -9).
REGISTRY_PDEATHSIG=1
registry_start plain "$run_dir"
plain=$REGISTRY_ADDR
registry_start auth "$run_dir"
auth=$REGISTRY_ADDR
registry_start tls "$run_dir"
tls=$REGISTRY_ADDR
registry_start token "$run_dir"
token=$REGISTRY_ADDR

export AGENTKERNEL_TEST_REGISTRY=$plain
export AGENTKERNEL_TEST_REGISTRY_LOG=$run_dir/plain/access.log
export AGENTKERNEL_TEST_REGISTRY_AUTH=$auth
export AGENTKERNEL_TEST_REGISTRY_USER=$REGISTRY_USER_DEFAULT
export AGENTKERNEL_TEST_REGISTRY_PASSWORD=$REGISTRY_PASSWORD_DEFAULT
export AGENTKERNEL_TEST_REGISTRY_TLS=$tls
export AGENTKERNEL_TEST_REGISTRY_CA=$run_dir/ca/ca.crt
export AGENTKERNEL_TEST_REGISTRY_TOKEN=$token
export AGENTKERNEL_TEST_TOKEN_LOG=$run_dir/token-server/requests.log
export AGENTKERNEL_TEST_LAYOUT=$layout
export AGENTKERNEL_TEST_IMAGES=$images

pushed_at=$SECONDS
"$here/push-images.sh"
echo "with-registries.sh: $images images in $plain (plain), $auth (basic auth), $tls (TLS), $token (token auth); pushed in $((SECONDS - pushed_at))s" >&2

# CMD runs in the background so that the traps above fire while it runs. Bash
# gives a background job /dev/null as stdin and ignores SIGINT and SIGQUIT in
# it. The explicit redirection and env --default-signal undo both, so CMD
# behaves as in the foreground and Ctrl-C reaches it directly.
exec 3<&0
env --default-signal=INT,QUIT "$@" <&3 3<&- &
child=$!
exec 3<&-

# wait returns early, with a status above 128, when a trapped signal arrives,
# so wait again. Bash keeps the status of a job that exited meanwhile, and a
# second wait on a job already waited for returns 127.
status=
while :; do
	signalled=0
	if wait "$child"; then rc=0; else rc=$?; fi
	if [ "$rc" = 127 ] && [ -n "$status" ]; then
		break
	fi
	status=$rc
	[ "$signalled" = 1 ] || break
done
exit "$status"
