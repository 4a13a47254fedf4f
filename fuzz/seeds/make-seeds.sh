#!/usr/bin/env bash
# Writes the seed inputs of the fuzz targets into fuzz/seeds/<target>/. The layer seeds
# are GNU tar archives of a small tree with every entry type, long names in GNU and PAX
# form, xattrs, a sparse file, whiteouts, and names that point outside the destination.
# The outputs are committed, so this only needs to run again when the seeds change.
#
# usage: make-seeds.sh   (as root, because the tree has device nodes and owners)
set -euo pipefail
shopt -s inherit_errexit

seeds=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

tree=$work/tree
mkdir -p "$tree"/{etc,usr/lib,opaque,tmp,dev}
echo root >"$tree/etc/passwd"
printf 'elf' >"$tree/usr/lib/libc.so"
ln "$tree/usr/lib/libc.so" "$tree/usr/lib/libc-link.so"
ln -s usr/lib "$tree/lib"
ln -s /etc/passwd "$tree/etc/abs-link"
chmod 4755 "$tree/usr/lib/libc.so"
chmod 1777 "$tree/tmp"
chown 1000:1000 "$tree/etc/passwd"
mkfifo "$tree/tmp/fifo"
mknod "$tree/dev/null" c 1 3
setfattr -n user.origin -v seed "$tree/etc/passwd" 2>/dev/null || true
touch "$tree/opaque/.wh..wh..opq" "$tree/.wh.removed"
long=$(printf 'd%.0s' $(seq 1 120))
mkdir -p "$tree/$long"
echo long >"$tree/$long/$(printf 'f%.0s' $(seq 1 130))"
ln -s ../../canary "$tree/canary-link"
sparse=$work/sparse
mkdir "$sparse"
truncate -s 64K "$sparse/file"
printf 'data' | dd of="$sparse/file" bs=1 seek=40000 conv=notrunc status=none

# archive NAME TAR_OPTION...: a seed of the tree with GNU tar.
archive() {
	local name=$1
	shift
	tar -C "$tree" --numeric-owner --exclude ./canary-link -cf "$seeds/unpack_layer/$name.tar" "$@" .
}

mkdir -p "$seeds/unpack_layer" "$seeds/parse_documents" "$seeds/parse_references"
archive gnu --format=gnu
archive pax --format=pax --xattrs
tar -C "$sparse" --numeric-owner --format=pax --sparse -cf "$seeds/unpack_layer/sparse-pax.tar" .
tar -C "$sparse" --numeric-owner --format=gnu --sparse -cf "$seeds/unpack_layer/sparse-gnu.tar" .
# Names that climb out of the destination or are absolute, and a symlink written
# through, as GNU tar writes them with --absolute-names.
tar -C "$tree" --numeric-owner --absolute-names -cf "$seeds/unpack_layer/hostile.tar" \
	--transform 's,^\./etc/passwd$,../../canary/secret,' \
	--transform 's,^\./usr/lib/libc\.so$,canary-link/secret,' \
	--transform 's,^\./tmp/fifo$,/tmp/rootfs-cache-fuzz-probe,' \
	--transform 's,^\./etc/abs-link$,../.wh.canary,' \
	--no-recursion ./etc/passwd ./canary-link ./usr/lib/libc.so ./tmp/fifo ./etc/abs-link

cat >"$seeds/parse_documents/oci-manifest.json" <<'JSON'
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":10},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":20}]}
JSON
cat >"$seeds/parse_documents/docker-list.json" <<'JSON'
{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":1,"platform":{"architecture":"amd64","os":"linux"}}]}
JSON
cat >"$seeds/parse_documents/config.json" <<'JSON'
{"architecture":"amd64","os":"linux","config":{"User":"1000:1000","Env":["PATH=/bin"],"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"WorkingDir":"/srv"},"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111","sha256:2222222222222222222222222222222222222222222222222222222222222222"]}}
JSON
printf '%s' 'python:3.12-alpine' >"$seeds/parse_references/short.txt"
printf '%s' '127.0.0.1:5000/library/busybox:latest@sha256:1111111111111111111111111111111111111111111111111111111111111111' >"$seeds/parse_references/digest.txt"
printf '%s' 'oci:/var/lib/images/layout:v1' >"$seeds/parse_references/oci.txt"
printf '%s' 'docker-archive:/tmp/image.tar:busybox:1.36' >"$seeds/parse_references/archive.txt"
echo "make-seeds.sh: wrote $(find "$seeds" -type f ! -name '*.sh' | wc -l) seeds" >&2
