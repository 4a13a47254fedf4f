#!/usr/bin/env bash
# Adds a multi-platform image index to an OCI image layout.
#
# usage: make-index.sh LAYOUT NEW_TAG TAG=OS/ARCH[/VARIANT]...
#   e.g. make-index.sh oci busybox-multi busybox-amd64=linux/amd64 busybox-arm64=linux/arm64/v8
#
# Each TAG must name an image manifest in LAYOUT/index.json. The index is
# written as a blob (application/vnd.oci.image.index.v1+json) and tagged
# NEW_TAG, replacing an earlier entry with that tag.
set -euo pipefail
shopt -s inherit_errexit

if [ $# -lt 3 ]; then
	echo "usage: $0 LAYOUT NEW_TAG TAG=OS/ARCH[/VARIANT]..." >&2
	exit 2
fi
layout=$1 new_tag=$2
shift 2
ref_name=org.opencontainers.image.ref.name

manifests=()
for spec in "$@"; do
	tag=${spec%%=*}
	platform=${spec#*=}
	IFS=/ read -r os arch variant <<<"$platform"
	if [ "$tag" = "$spec" ] || [ -z "$os" ] || [ -z "$arch" ]; then
		echo "make-index.sh: invalid argument '$spec': expected TAG=OS/ARCH[/VARIANT]" >&2
		exit 2
	fi
	descriptor=$(jq -c --arg tag "$tag" --arg ref "$ref_name" \
		'[.manifests[] | select(.annotations[$ref] == $tag)] | first // empty' "$layout/index.json")
	if [ -z "$descriptor" ]; then
		echo "make-index.sh: tag '$tag' not found in $layout/index.json" >&2
		exit 1
	fi
	manifests+=("$(jq -c --arg os "$os" --arg arch "$arch" --arg variant "$variant" '
		{mediaType: (.mediaType // "application/vnd.oci.image.manifest.v1+json"), digest, size,
		 platform: ({architecture: $arch, os: $os} + (if $variant == "" then {} else {variant: $variant} end))}
	' <<<"$descriptor")")
done

index=$(printf '%s\n' "${manifests[@]}" | jq -cs \
	'{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: .}')
blob=$(mktemp "$layout/blobs/sha256/.index-XXXXXX")
printf '%s' "$index" >"$blob"
hex=$(sha256sum "$blob" | cut -d' ' -f1)
size=$(stat -c %s "$blob")
chmod 0644 "$blob"
mv "$blob" "$layout/blobs/sha256/$hex"

jq --arg tag "$new_tag" --arg ref "$ref_name" --arg digest "sha256:$hex" --argjson size "$size" '
	.manifests = [.manifests[] | select(.annotations[$ref] != $tag)] + [{
		mediaType: "application/vnd.oci.image.index.v1+json", digest: $digest, size: $size,
		annotations: {($ref): $tag}}]
' "$layout/index.json" >"$layout/index.json.new"
mv "$layout/index.json.new" "$layout/index.json"
