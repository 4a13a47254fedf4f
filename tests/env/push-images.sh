#!/usr/bin/env bash
# Pushes the images of an OCI layout built by build-images.sh into the test
# registries with skopeo, under the repository names and tags the tests pull.
#
# usage: push-images.sh [--layout DIR] [--registry ADDR]
#                       [--auth-registry ADDR] [--tls-registry ADDR] [--ca FILE]
#                       [--token-registry ADDR] [--user USER] [--password PASSWORD]
# Each option defaults to the matching AGENTKERNEL_TEST_* variable (see
# with-registries.sh). Only --layout and --registry are required. The auth and
# TLS registries get library/busybox:latest and, with a full layout,
# library/python:3.12-alpine. The token registry gets library/busybox:latest,
# pushed with a token that skopeo fetches with USER and PASSWORD. For TLS, the
# directory of --ca must contain only the CA certificate, because skopeo
# --dest-cert-dir reads every file in it.
set -euo pipefail
shopt -s inherit_errexit

layout=${AGENTKERNEL_TEST_LAYOUT:-}
plain=${AGENTKERNEL_TEST_REGISTRY:-}
auth=${AGENTKERNEL_TEST_REGISTRY_AUTH:-}
tls=${AGENTKERNEL_TEST_REGISTRY_TLS:-}
ca=${AGENTKERNEL_TEST_REGISTRY_CA:-}
token=${AGENTKERNEL_TEST_REGISTRY_TOKEN:-}
user=${AGENTKERNEL_TEST_REGISTRY_USER:-testuser}
password=${AGENTKERNEL_TEST_REGISTRY_PASSWORD:-testpass}

usage() {
	echo "usage: $0 [--layout DIR] [--registry ADDR] [--auth-registry ADDR] [--tls-registry ADDR]"
	echo "       [--ca FILE] [--token-registry ADDR] [--user USER] [--password PASSWORD]"
}

while [ $# -gt 0 ]; do
	[ $# -ge 2 ] || {
		usage >&2
		exit 2
	}
	case $1 in
	--layout) layout=$2 ;;
	--registry) plain=$2 ;;
	--auth-registry) auth=$2 ;;
	--tls-registry) tls=$2 ;;
	--ca) ca=$2 ;;
	--token-registry) token=$2 ;;
	--user) user=$2 ;;
	--password) password=$2 ;;
	*)
		usage >&2
		exit 2
		;;
	esac
	shift 2
done

if [ -z "$layout" ] || [ -z "$plain" ]; then
	usage >&2
	exit 2
fi
[ -f "$layout/index.json" ] || {
	echo "push-images.sh: $layout is not an OCI image layout (no index.json)" >&2
	exit 1
}
if [ -n "$tls" ] && [ ! -f "$ca" ]; then
	echo "push-images.sh: --tls-registry needs --ca FILE; '$ca' not found" >&2
	exit 1
fi

tags=$(jq -r '.manifests[].annotations["org.opencontainers.image.ref.name"] // empty' "$layout/index.json")
has_tag() {
	grep -qx "$1" <<<"$tags"
}

# copy SOURCE_TAG DESTINATION [SKOPEO_OPTION...]
copy() {
	local source=$1 destination=$2
	shift 2
	has_tag "$source" || {
		echo "push-images.sh: tag '$source' not found in $layout" >&2
		return 1
	}
	skopeo copy -q --all "$@" "oci:$layout:$source" "docker://$destination"
}

# The plain registry gets every tag. --preserve-digests keeps the layout's
# digests, so tests can compare what they pulled with the layout. It cannot be
# combined with --format v2s2, which converts to Docker schema 2 (and a
# manifest list).
plain_options=(--dest-tls-verify=false)
push_plain_busybox() {
	copy busybox-multi "$plain/library/busybox:latest" "${plain_options[@]}" --preserve-digests
	copy busybox-multi "$plain/library/busybox:1.36" "${plain_options[@]}" --preserve-digests
	copy busybox-multi "$plain/library/alpine:3.20" "${plain_options[@]}" --preserve-digests
	copy busybox-multi "$plain/library/alpine:latest" "${plain_options[@]}" --preserve-digests
	copy busybox-amd64 "$plain/library/busybox:amd64-only" "${plain_options[@]}" --preserve-digests
	copy busybox-tar "$plain/library/busybox:uncompressed" "${plain_options[@]}" --preserve-digests
	copy busybox-zstd "$plain/library/busybox:zstd" "${plain_options[@]}" --preserve-digests
	copy busybox-amd64 "$plain/library/busybox:v2s2" "${plain_options[@]}" --format v2s2
	copy busybox-config "$plain/library/busybox:config" "${plain_options[@]}" --preserve-digests
	copy busybox-multi "$plain/library/busybox:v2s2-list" "${plain_options[@]}" --format v2s2
}

push_plain_debian() {
	copy debian "$plain/library/debian:bookworm-slim" "${plain_options[@]}" --preserve-digests
	copy python "$plain/library/python:3.12-alpine" "${plain_options[@]}" --preserve-digests
	copy python-mixed "$plain/library/python:3.12-mixed" "${plain_options[@]}" --preserve-digests
	copy node "$plain/library/node:22-alpine" "${plain_options[@]}" --preserve-digests
}

# push_with_auth ADDRESS SKOPEO_OPTION...
push_with_auth() {
	local address=$1
	shift
	copy busybox-multi "$address/library/busybox:latest" "$@" --dest-creds "$user:$password" --preserve-digests
	[ "$full" = false ] ||
		copy python "$address/library/python:3.12-alpine" "$@" --dest-creds "$user:$password" --preserve-digests
}

full=false
! has_tag debian || full=true

# The registries spend most of the time verifying and storing blobs, so the
# groups run in parallel (4.3 s sequential, measured on 2 cores).
pids=()
push_plain_busybox &
pids+=($!)
if [ "$full" = true ]; then
	push_plain_debian &
	pids+=($!)
fi
if [ -n "$auth" ]; then
	push_with_auth "$auth" --dest-tls-verify=false &
	pids+=($!)
fi
if [ -n "$tls" ]; then
	push_with_auth "$tls" --dest-cert-dir "$(dirname "$ca")" &
	pids+=($!)
fi
if [ -n "$token" ]; then
	copy busybox-multi "$token/library/busybox:latest" --dest-tls-verify=false \
		--dest-creds "$user:$password" --preserve-digests &
	pids+=($!)
fi
failed=0
for pid in "${pids[@]}"; do
	wait "$pid" || failed=1
done
if [ "$failed" -ne 0 ]; then
	echo "push-images.sh: a skopeo copy failed; see the messages above" >&2
	exit 1
fi
