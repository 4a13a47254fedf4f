#!/usr/bin/env bash
# Checks the test environment that with-registries.sh sets up, with curl,
# skopeo and umoci only: the catalog and tags, manifest and layer media
# types, auth and TLS, the access log, and the unpacked content of the images.
#
# usage: tests/env/with-registries.sh tests/env/check-env.sh
# Prints one line per check and exits 1 if any check failed.
set -euo pipefail
shopt -s inherit_errexit

: "${AGENTKERNEL_TEST_REGISTRY:?run under with-registries.sh}"
plain=$AGENTKERNEL_TEST_REGISTRY
auth=$AGENTKERNEL_TEST_REGISTRY_AUTH
tls=$AGENTKERNEL_TEST_REGISTRY_TLS
ca=$AGENTKERNEL_TEST_REGISTRY_CA
creds=$AGENTKERNEL_TEST_REGISTRY_USER:$AGENTKERNEL_TEST_REGISTRY_PASSWORD
full=false
[ "$AGENTKERNEL_TEST_IMAGES" != full ] || full=true

failures=0
# expect NAME ACTUAL EXPECTED
expect() {
	if [ "$2" = "$3" ]; then
		printf 'ok    %s\n' "$1"
	else
		printf 'FAIL  %s: got %s, expected %s\n' "$1" "$2" "$3"
		failures=$((failures + 1))
	fi
}

raw() {
	skopeo inspect --raw --tls-verify=false "docker://$plain/$1"
}

# Print the names in DIR, sorted, each followed by a space.
list_dir() {
	find "$1" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' '
}

http_status() {
	curl -s -o /dev/null -w '%{http_code}' "$@"
}

repositories='["library/alpine","library/busybox"]'
[ "$full" = false ] ||
	repositories='["library/alpine","library/busybox","library/debian","library/node","library/python"]'
expect "catalog" "$(curl -s "http://$plain/v2/_catalog" | jq -c .repositories)" "$repositories"
expect "busybox tags" \
	"$(curl -s "http://$plain/v2/library/busybox/tags/list" | jq -c '.tags | sort')" \
	'["1.36","amd64-only","latest","uncompressed","v2s2","v2s2-list","zstd"]'
expect "alpine tags" \
	"$(curl -s "http://$plain/v2/library/alpine/tags/list" | jq -c '.tags | sort')" '["3.20","latest"]'

index=$(raw library/alpine:3.20)
expect "alpine:3.20 media type" "$(jq -r .mediaType <<<"$index")" application/vnd.oci.image.index.v1+json
expect "alpine:3.20 platforms" \
	"$(jq -c '[.manifests[].platform | [.os, .architecture, .variant // ""] | join("/")]' <<<"$index")" \
	'["linux/amd64/","linux/arm64/v8"]'
expect "busybox:latest is alpine:3.20" "$(raw library/busybox:latest | sha256sum)" \
	"$(raw library/alpine:3.20 | sha256sum)"
expect "alpine:3.20 for arm64" \
	"$(skopeo inspect --tls-verify=false --override-arch arm64 "docker://$plain/library/alpine:3.20" | jq -r .Architecture)" \
	arm64
expect "alpine:3.20 default platform" \
	"$(skopeo inspect --tls-verify=false "docker://$plain/library/alpine:3.20" | jq -r .Architecture)" amd64

expect "busybox:v2s2 media type" "$(raw library/busybox:v2s2 | jq -r .mediaType)" \
	application/vnd.docker.distribution.manifest.v2+json
expect "busybox:v2s2 layer type" "$(raw library/busybox:v2s2 | jq -r '.layers[].mediaType')" \
	application/vnd.docker.image.rootfs.diff.tar.gzip
expect "busybox:v2s2-list media type" "$(raw library/busybox:v2s2-list | jq -r .mediaType)" \
	application/vnd.docker.distribution.manifest.list.v2+json
expect "busybox:uncompressed layer type" "$(raw library/busybox:uncompressed | jq -r '.layers[].mediaType')" \
	application/vnd.oci.image.layer.v1.tar
expect "busybox:zstd layer type" "$(raw library/busybox:zstd | jq -r '.layers[].mediaType')" \
	application/vnd.oci.image.layer.v1.tar+zstd

# The plain registry writes one access log line per blob request.
layer=$(raw library/busybox:amd64-only | jq -r '.layers[0].digest')
curl -s -o /dev/null "http://$plain/v2/library/busybox/blobs/$layer"
expect "access log has the blob GET" \
	"$(grep -c "\"GET /v2/library/busybox/blobs/$layer HTTP/1.1\" 200" "$AGENTKERNEL_TEST_REGISTRY_LOG")" 1

expect "auth registry without credentials" "$(http_status "http://$auth/v2/")" 401
expect "auth registry with credentials" "$(http_status -u "$creds" "http://$auth/v2/")" 200
expect "auth registry with a wrong password" "$(http_status -u testuser:wrong "http://$auth/v2/")" 401
expect "tls registry without credentials" "$(http_status --cacert "$ca" "https://$tls/v2/")" 401
expect "tls registry with credentials" "$(http_status --cacert "$ca" -u "$creds" "https://$tls/v2/")" 200
expect "tls registry without the CA" "$(http_status -u "$creds" "https://$tls/v2/")" 000
auth_repositories='["library/busybox"]'
[ "$full" = false ] || auth_repositories='["library/busybox","library/python"]'
expect "auth registry catalog" \
	"$(curl -s -u "$creds" "http://$auth/v2/_catalog" | jq -c .repositories)" "$auth_repositories"
expect "tls registry catalog" \
	"$(curl -s --cacert "$ca" -u "$creds" "https://$tls/v2/_catalog" | jq -c .repositories)" "$auth_repositories"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# Unpack IMAGE (a tag in the plain registry) with skopeo and umoci into
# $scratch/NAME/rootfs.
unpack() {
	skopeo copy -q --src-tls-verify=false "docker://$plain/$1" "oci:$scratch/oci:$2"
	umoci unpack --image "$scratch/oci:$2" "$scratch/$2" 2>/dev/null
}

unpack library/busybox:v2s2 busybox-v2s2
expect "busybox:v2s2 /bin/sh" "$(readlink "$scratch/busybox-v2s2/rootfs/bin/sh")" /bin/busybox
expect "busybox:v2s2 /tmp mode" "$(stat -c %a "$scratch/busybox-v2s2/rootfs/tmp")" 1777
skopeo copy -q --src-tls-verify=false --override-arch arm64 \
	"docker://$plain/library/busybox:latest" "oci:$scratch/oci:busybox-arm64"
umoci unpack --image "$scratch/oci:busybox-arm64" "$scratch/busybox-arm64" 2>/dev/null
expect "busybox arm64 ELF machine" \
	"$(od -An -tu2 -j18 -N2 "$scratch/busybox-arm64/rootfs/bin/busybox" | tr -d ' ')" 183
expect "busybox arm64 marker" "$(cat "$scratch/busybox-arm64/rootfs/etc/test-registry-arch")" arm64

if [ "$full" = true ]; then
	python=$(raw library/python:3.12-alpine)
	expect "python:3.12-alpine layer count" "$(jq '.layers | length' <<<"$python")" 4
	expect "python:3.12-mixed layer types" \
		"$(raw library/python:3.12-mixed | jq -c '[.layers[].mediaType | sub("application/vnd.oci.image.layer.v1."; "")]')" \
		'["tar+gzip","tar+zstd","tar","tar+gzip"]'
	expect "node:22-alpine layer count" "$(raw library/node:22-alpine | jq '.layers | length')" 2
	expect "python and debian share L1" "$(jq -r '.layers[0].digest' <<<"$python")" \
		"$(raw library/debian:bookworm-slim | jq -r '.layers[0].digest')"

	expect "python-mixed config is python's" "$(raw library/python:3.12-mixed | jq -r .config.digest)" \
		"$(jq -r .config.digest <<<"$python")"

	unpack library/python:3.12-alpine python
	r=$scratch/python/rootfs
	expect "python /opt/app" "$(list_dir "$r/opt/app")" "c "
	expect "python /etc/test-registry-base-only" "$([ -e "$r/etc/test-registry-base-only" ] && echo present || echo absent)" absent
	expect "python pydoc_data" "$([ -e "$r/usr/lib/python3.11/pydoc_data" ] && echo present || echo absent)" absent
	expect "python perl hard link" "$(stat -c %i "$r/usr/bin/perl")" "$(stat -c %i "$r/usr/bin/perl5.36.0")"
	expect "python /usr/bin/su mode" "$(stat -c %a "$r/usr/bin/su")" 4755
	expect "python /bin symlink" "$(readlink "$r/bin")" usr/bin
	expect "python /dev empty" "$(list_dir "$r/dev")" ""
	expect "python /etc/resolv.conf" "$([ -e "$r/etc/resolv.conf" ] && echo present || echo absent)" absent
	expect "python3 present" "$([ -x "$r/usr/bin/python3" ] && echo yes || echo no)" yes

	unpack library/debian:bookworm-slim debian
	expect "debian /opt/app" "$(list_dir "$scratch/debian/rootfs/opt/app")" "a b "
	expect "debian /etc/test-registry-base-only" "$(cat "$scratch/debian/rootfs/etc/test-registry-base-only")" base
fi

if [ "$failures" -ne 0 ]; then
	echo "$failures checks failed"
	exit 1
fi
echo "all checks passed"
