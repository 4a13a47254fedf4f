#!/usr/bin/env bash
# Copies an image in an OCI image layout under a new tag with its layers
# recompressed.
#
# usage: recompress.sh LAYOUT SRC_TAG NEW_TAG MODE...
#   MODE is tar (uncompressed), gzip or zstd. Give one MODE for all layers, or
#   one per layer in manifest order, e.g. `... python python-mixed gzip zstd tar gzip`.
#
# Every layer is decompressed and compressed again (gzip -9n, zstd -10), so a
# gzip layer gets a new digest too. The config blob is shared with SRC_TAG:
# its rootfs.diff_ids hold the digests of the uncompressed tars, which this
# script checks.
set -euo pipefail
shopt -s inherit_errexit

if [ $# -lt 4 ]; then
	echo "usage: $0 LAYOUT SRC_TAG NEW_TAG tar|gzip|zstd..." >&2
	exit 2
fi
layout=$1 src_tag=$2 new_tag=$3
shift 3
modes=("$@")
ref_name=org.opencontainers.image.ref.name
blobs=$layout/blobs/sha256

blob_path() {
	echo "$blobs/${1#sha256:}"
}

# Move FILE into the layout's blob store and print "DIGEST SIZE".
store_blob() {
	local file=$1 hex size
	hex=$(sha256sum "$file" | cut -d' ' -f1)
	size=$(stat -c %s "$file")
	chmod 0644 "$file"
	mv "$file" "$blobs/$hex"
	echo "sha256:$hex $size"
}

descriptor=$(jq -c --arg tag "$src_tag" --arg ref "$ref_name" \
	'[.manifests[] | select(.annotations[$ref] == $tag)] | first // empty' "$layout/index.json")
if [ -z "$descriptor" ]; then
	echo "recompress.sh: tag '$src_tag' not found in $layout/index.json" >&2
	exit 1
fi
manifest=$(cat "$(blob_path "$(jq -r .digest <<<"$descriptor")")")
config=$(cat "$(blob_path "$(jq -r .config.digest <<<"$manifest")")")
layer_count=$(jq '.layers | length' <<<"$manifest")
if [ ${#modes[@]} -ne 1 ] && [ ${#modes[@]} -ne "$layer_count" ]; then
	echo "recompress.sh: $src_tag has $layer_count layers but ${#modes[@]} modes were given" >&2
	exit 2
fi

scratch=$(mktemp -d "$layout/.recompress-XXXXXX")
trap 'rm -rf "$scratch"' EXIT

layers=()
for ((i = 0; i < layer_count; i++)); do
	mode=${modes[0]}
	[ ${#modes[@]} -eq 1 ] || mode=${modes[$i]}
	layer=$(jq -c ".layers[$i]" <<<"$manifest")
	media_type=$(jq -r .mediaType <<<"$layer")
	source=$(blob_path "$(jq -r .digest <<<"$layer")")

	case $media_type in
	*tar+gzip | *.tar.gzip) gzip -dc "$source" >"$scratch/layer.tar" ;;
	*tar+zstd | *.tar.zstd) zstd -q -dc "$source" >"$scratch/layer.tar" ;;
	*.tar) cp "$source" "$scratch/layer.tar" ;;
	*)
		echo "recompress.sh: layer $i of $src_tag has unsupported media type $media_type" >&2
		exit 1
		;;
	esac

	diff_id=sha256:$(sha256sum "$scratch/layer.tar" | cut -d' ' -f1)
	expected=$(jq -r ".rootfs.diff_ids[$i]" <<<"$config")
	if [ "$diff_id" != "$expected" ]; then
		echo "recompress.sh: layer $i of $src_tag decompresses to $diff_id, config diff_id is $expected" >&2
		exit 1
	fi

	case $mode in
	tar)
		new_type=application/vnd.oci.image.layer.v1.tar
		mv "$scratch/layer.tar" "$scratch/layer.out"
		;;
	gzip)
		new_type=application/vnd.oci.image.layer.v1.tar+gzip
		gzip -9n -c "$scratch/layer.tar" >"$scratch/layer.out"
		;;
	zstd)
		new_type=application/vnd.oci.image.layer.v1.tar+zstd
		zstd -q -10 -c "$scratch/layer.tar" >"$scratch/layer.out"
		;;
	*)
		echo "recompress.sh: invalid mode '$mode': expected tar, gzip or zstd" >&2
		exit 2
		;;
	esac
	rm -f "$scratch/layer.tar"
	stored=$(store_blob "$scratch/layer.out")
	read -r digest size <<<"$stored"
	layers+=("$(jq -c --arg type "$new_type" --arg digest "$digest" --argjson size "$size" \
		'.mediaType = $type | .digest = $digest | .size = $size' <<<"$layer")")
done

new_layers=$(printf '%s\n' "${layers[@]}" | jq -cs .)
jq -c --argjson layers "$new_layers" '.layers = $layers' <<<"$manifest" >"$scratch/manifest.json"
stored=$(store_blob "$scratch/manifest.json")
read -r manifest_digest manifest_size <<<"$stored"

jq --arg tag "$new_tag" --arg ref "$ref_name" --arg digest "$manifest_digest" --argjson size "$manifest_size" '
	.manifests = [.manifests[] | select(.annotations[$ref] != $tag)] + [{
		mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $digest, size: $size,
		annotations: {($ref): $tag}}]
' "$layout/index.json" >"$scratch/index.json"
mv "$scratch/index.json" "$layout/index.json"
