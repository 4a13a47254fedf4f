#!/usr/bin/env bash
# Builds the OCI image layout that the integration tests push into their
# registries. The images come from Debian packages and independent tools
# (busybox-static, debootstrap, umoci, rsync), never from agentkernel's code.
#
# usage: build-images.sh [--busybox-only] [--cache-dir DIR]
#
# Tags in the layout:
#   busybox-amd64, busybox-arm64   one layer: static busybox, applet symlinks,
#                                  /etc/passwd, /etc/group, /etc/test-registry-arch
#   busybox-multi                  index of both (linux/amd64, linux/arm64 variant v8)
#   busybox-tar, busybox-zstd      busybox-amd64 with an uncompressed / zstd layer
# and, unless --busybox-only (these need the Debian mirror and take ~1.5 min):
#   debian        one layer: debootstrap --variant=minbase, plus /opt/app/{a,b}
#                 and /etc/test-registry-base-only
#   python        L1 = debian's layer, L2 python3, L3 deletes
#                 /etc/test-registry-base-only and /usr/lib/python3.11/pydoc_data
#                 (whiteouts), L4 makes /opt/app opaque holding only `c`
#   python-mixed  python's layers recompressed gzip, zstd, tar, gzip
#   node          L1 = debian's layer, L2 nodejs
# The tags are names for the tests only: the contents are Debian bookworm.
#
# The finished layout is cached in DIR (default
# ${AGENTKERNEL_TEST_CACHE:-/var/cache/agentkernel-test}) under a key made of
# these scripts, the busybox-static version, the suite and the host
# architecture, so a second call returns at once. A build runs in a temporary
# directory and is renamed into place only when complete. A full layout also
# serves --busybox-only. Builds of other keys are deleted after a successful
# build. The layout's path is the last line on stdout.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
suite=bookworm
mode=full
cache=${AGENTKERNEL_TEST_CACHE:-/var/cache/agentkernel-test}
busybox_path_env=PATH=/usr/sbin:/usr/bin:/sbin:/bin
debian_path_env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

usage() {
	echo "usage: $0 [--busybox-only] [--cache-dir DIR]"
}

while [ $# -gt 0 ]; do
	case $1 in
	--busybox-only) mode=busybox ;;
	--cache-dir)
		[ $# -ge 2 ] || {
			usage >&2
			exit 2
		}
		cache=$2
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
	shift
done

log() {
	printf 'build-images.sh: %s\n' "$*" >&2
}

fail() {
	log "$*"
	exit 1
}

if [ "$(id -u)" -ne 0 ]; then
	fail "must run as root: debootstrap and umoci unpack/repack keep file owners, setuid bits and hard links"
fi
for tool in umoci debootstrap rsync jq zstd gzip apt-get dpkg-deb flock sha256sum; do
	command -v "$tool" >/dev/null || fail "$tool not found; run tests/env/install-deps.sh"
done
[ -x /bin/busybox ] || fail "/bin/busybox not found; install busybox-static"

host_arch=$(dpkg --print-architecture)
busybox_version=$(dpkg-query -W busybox-static)
key=$(
	{
		cat "$here/build-images.sh" "$here/make-index.sh" "$here/recompress.sh"
		echo "$busybox_version"
		echo "$suite"
		echo "$host_arch"
	} | sha256sum | cut -c1-16
)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
target=$cache/oci-$mode-$key

# Print the cached layout that satisfies this request, if there is one.
find_cached() {
	if [ -d "$cache/oci-full-$key" ]; then
		echo "$cache/oci-full-$key"
	elif [ "$mode" = busybox ] && [ -d "$cache/oci-busybox-$key" ]; then
		echo "$cache/oci-busybox-$key"
	fi
}

cached=$(find_cached)
if [ -n "$cached" ]; then
	echo "$cached"
	exit 0
fi

# Builds in one cache run one at a time, because they share the .deb cache and
# the apt state.
exec 9>"$cache/lock"
if ! flock -n 9; then
	log "waiting for another build in $cache"
	flock 9
	cached=$(find_cached)
	if [ -n "$cached" ]; then
		echo "$cached"
		exit 0
	fi
fi

# Lazily unmount what debootstrap left mounted (proc, sys) below DIR when it
# was interrupted, so that removing DIR cannot reach the host's /proc or /sys.
unmount_below() {
	awk -v dir="$1" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo |
		sort -r | while read -r mountpoint; do
		umount -l "$mountpoint" || log "could not unmount $mountpoint"
	done
}

remove_tree() {
	unmount_below "$1"
	rm -rf --one-file-system "$1"
}

for stale in "$cache"/.build-*; do
	[ -e "$stale" ] || continue
	log "removing $stale, left by an interrupted build"
	remove_tree "$stale"
done

# Each parallel debootstrap runs in its own session (setsid), so that
# stop_debootstraps can signal it with all its children (dpkg, chroot).
declare -A debootstrap_pids=()
stop_debootstraps() {
	local pid
	for pid in "${debootstrap_pids[@]}"; do
		kill -TERM -- "-$pid" 2>/dev/null || true
	done
	for pid in "${debootstrap_pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}

work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'remove_tree "$work"' EXIT
trap 'stop_debootstraps; exit 130' INT
trap 'stop_debootstraps; exit 143' TERM
trap 'stop_debootstraps; exit 129' HUP
layout=$work/oci
mkdir -p "$work/logs"
started=$SECONDS

# Print the URL of the Debian mirror that apt uses for $suite, read from the
# deb822 .sources files, else from /etc/apt/sources.list.
# AGENTKERNEL_TEST_DEBIAN_MIRROR overrides both.
debian_mirror() {
	local url=${AGENTKERNEL_TEST_DEBIAN_MIRROR:-} file
	if [ -z "$url" ]; then
		for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
			[ -f "$file" ] || continue
			url=$(awk -v suite="$suite" '
				BEGIN { RS = ""; FS = "\n" }
				{
					uri = ""; has_suite = 0; has_deb = 0
					for (i = 1; i <= NF; i++) {
						if ($i ~ /^URIs:/) { v = $i; sub(/^URIs:[ \t]*/, "", v); split(v, u, /[ \t]+/); uri = u[1] }
						if ($i ~ /^Suites:/) { v = $i; sub(/^Suites:/, "", v); gsub(/[ \t]+/, " ", v); if (index(v " ", " " suite " ")) has_suite = 1 }
						if ($i ~ /^Types:/ && $i ~ /[ \t]deb([ \t]|$)/) has_deb = 1
					}
					if (uri != "" && has_suite && has_deb) { print uri; exit }
				}' "$file")
			[ -z "$url" ] || break
		done
	fi
	if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
		url=$(awk -v suite="$suite" '
			$1 == "deb" { sub(/^deb[ \t]+(\[[^]]*\][ \t]+)?/, ""); if ($2 == suite) { print $1; exit } }
		' /etc/apt/sources.list)
	fi
	[ -n "$url" ] || fail "no Debian mirror for $suite in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set AGENTKERNEL_TEST_DEBIAN_MIRROR"
	echo "${url%/}"
}

# Check that FILE is an ELF executable for Debian architecture ARCH.
check_elf_arch() {
	local file=$1 arch=$2 machine expected
	case $arch in
	amd64) expected=62 ;;
	arm64) expected=183 ;;
	*) fail "no ELF machine number known for architecture $arch" ;;
	esac
	machine=$(od -An -tu2 -j18 -N2 "$file" | tr -d ' ')
	[ "$machine" = "$expected" ] || fail "$file has ELF machine $machine, expected $expected ($arch)"
}

# Print the path of a static busybox binary for ARCH: the host's /bin/busybox
# for the host architecture, otherwise busybox-static:ARCH downloaded through
# a private apt state in the cache, which leaves the host's apt configuration
# and dpkg architectures untouched.
fetch_busybox() {
	local arch=$1 state=$cache/apt-$1 mirror apt_options debs
	if [ "$arch" = "$host_arch" ]; then
		echo /bin/busybox
		return
	fi
	mirror=$(debian_mirror)
	mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/sources.list.d" "$state/debs"
	touch "$state/status"
	echo "deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
		>"$state/sources.list"
	apt_options=(
		-q -o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
		-o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status"
		-o "Dir::Cache=$state/cache" -o "Dir::Etc::SourceList=$state/sources.list"
		-o "Dir::Etc::SourceParts=$state/sources.list.d" -o APT::Sandbox::User=root
	)
	log "downloading busybox-static:$arch from $mirror"
	apt-get "${apt_options[@]}" update >"$work/logs/apt-$arch.log" 2>&1 ||
		fail "apt-get update for $arch failed; see the log below"$'\n'"$(tail -n 20 "$work/logs/apt-$arch.log")"
	rm -f "$state"/debs/*.deb
	(cd "$state/debs" && apt-get "${apt_options[@]}" download "busybox-static:$arch") \
		>>"$work/logs/apt-$arch.log" 2>&1 ||
		fail "apt-get download busybox-static:$arch failed"$'\n'"$(tail -n 20 "$work/logs/apt-$arch.log")"
	debs=("$state"/debs/busybox-static_*.deb)
	dpkg-deb -x "${debs[0]}" "$work/busybox-$arch"
	log "busybox-static:$arch is $(dpkg-deb -f "${debs[0]}" Version)"
	echo "$work/busybox-$arch/bin/busybox"
}

# Build image TAG for ARCH from the static busybox binary BINARY. The applet
# list comes from the host's busybox-static.
build_busybox() {
	local arch=$1 binary=$2 tag=$3 bundle=$work/bundle-$3 rootfs applet
	check_elf_arch "$binary" "$arch"
	umoci new --image "$layout:$tag"
	umoci unpack --image "$layout:$tag" "$bundle"
	rootfs=$bundle/rootfs
	mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,dev,proc,sys}
	install -m 0755 "$binary" "$rootfs/bin/busybox"
	while read -r applet; do
		[ "$applet" != bin/busybox ] || continue
		mkdir -p "$rootfs/$(dirname "$applet")"
		ln -sf /bin/busybox "$rootfs/$applet"
	done <<<"$busybox_applets"
	chmod 1777 "$rootfs/tmp"
	chmod 0700 "$rootfs/root"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\n' >"$rootfs/etc/group"
	echo "$arch" >"$rootfs/etc/test-registry-arch"
	umoci repack --image "$layout:$tag" --history.created_by "busybox-static $arch" "$bundle"
	umoci config --image "$layout:$tag" --os linux --architecture "$arch" \
		--config.env "$busybox_path_env" --config.cmd sh
	rm -rf "$bundle"
}

# Create rootfs directories base, py-full and node-full below $work/rootfs
# with debootstrap --variant=minbase, in parallel. One download-only run fills
# the shared .deb cache first, because parallel runs race on a cold cache.
bootstrap_debian() {
	local mirror debcache=$cache/debcache rootfs=$work/rootfs name include failed=0
	mirror=$(debian_mirror)
	mkdir -p "$debcache" "$rootfs"
	log "debootstrap $suite from $mirror: downloading packages into $debcache"
	debootstrap --variant=minbase --include=python3,nodejs --download-only \
		--cache-dir="$debcache" "$suite" "$rootfs/download" "$mirror" \
		>"$work/logs/debootstrap-download.log" 2>&1 ||
		fail "debootstrap --download-only failed"$'\n'"$(tail -n 20 "$work/logs/debootstrap-download.log")"
	rm -rf "$rootfs/download"

	log "debootstrap: base, python3 and nodejs root filesystems in parallel"
	for name in base py-full node-full; do
		case $name in
		base) include= ;;
		py-full) include=python3 ;;
		node-full) include=nodejs ;;
		esac
		setsid debootstrap --variant=minbase ${include:+--include=$include} --cache-dir="$debcache" \
			"$suite" "$rootfs/$name" "$mirror" >"$work/logs/debootstrap-$name.log" 2>&1 &
		debootstrap_pids[$name]=$!
	done
	for name in base py-full node-full; do
		if ! wait "${debootstrap_pids[$name]}"; then
			log "debootstrap of $name failed; $work/logs/debootstrap-$name.log ends with:"
			tail -n 20 "$work/logs/debootstrap-$name.log" >&2
			failed=1
		elif [ -d "$rootfs/$name/debootstrap" ]; then
			log "debootstrap of $name exited 0 but left $rootfs/$name/debootstrap behind"
			failed=1
		fi
	done
	debootstrap_pids=()
	[ "$failed" = 0 ] || exit 1

	# Drop what is host-specific or useless in an image: downloaded .debs and
	# apt lists, docs, logs, the device nodes debootstrap created, and the
	# host's resolv.conf and hostname that debootstrap copied in.
	for name in base py-full node-full; do
		(
			cd "$rootfs/$name"
			rm -rf var/cache/apt/archives/*.deb var/cache/apt/*.bin var/lib/apt/lists/* \
				usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* \
				var/log/* dev/* etc/resolv.conf etc/hostname
		)
	done
}

# Layer the root filesystems into debian, python and node with umoci. rsync
# -H keeps hard links (usr/bin/perl5.36.0 and perl), so unpack tests see them.
build_debian_images() {
	local rootfs=$work/rootfs bundles=$work/bundles
	local rsync_copy=(rsync -aHAX --numeric-ids --delete)
	local keep_markers=(--exclude=/opt/app --exclude=/etc/test-registry-base-only)
	mkdir -p "$bundles"

	log "umoci: debian (1 layer)"
	umoci new --image "$layout:debian"
	umoci unpack --image "$layout:debian" "$bundles/debian"
	"${rsync_copy[@]}" "$rootfs/base/" "$bundles/debian/rootfs/"
	mkdir -p "$bundles/debian/rootfs/opt/app"
	echo a >"$bundles/debian/rootfs/opt/app/a"
	echo b >"$bundles/debian/rootfs/opt/app/b"
	echo base >"$bundles/debian/rootfs/etc/test-registry-base-only"
	umoci repack --image "$layout:debian" \
		--history.created_by "debootstrap --variant=minbase $suite" "$bundles/debian"
	umoci config --image "$layout:debian" --os linux --architecture "$host_arch" \
		--config.env "$debian_path_env" --config.cmd bash
	rm -rf "$bundles/debian"

	log "umoci: python (4 layers)"
	umoci unpack --image "$layout:debian" "$bundles/python"
	"${rsync_copy[@]}" "${keep_markers[@]}" "$rootfs/py-full/" "$bundles/python/rootfs/"
	umoci repack --refresh-bundle --image "$layout:python" \
		--history.created_by "debootstrap --variant=minbase --include=python3 $suite" "$bundles/python"
	rm -rf "$bundles/python/rootfs/etc/test-registry-base-only" \
		"$bundles/python/rootfs/usr/lib/python3.11/pydoc_data"
	umoci repack --refresh-bundle --image "$layout:python" \
		--history.created_by "rm /etc/test-registry-base-only /usr/lib/python3.11/pydoc_data" \
		"$bundles/python"
	mkdir -p "$work/opaque"
	echo c >"$work/opaque/c"
	umoci insert --image "$layout:python" --opaque \
		--history.created_by "replace /opt/app with an opaque directory holding c" \
		"$work/opaque" /opt/app
	umoci config --image "$layout:python" --config.env "$debian_path_env" \
		--config.env LANG=C.UTF-8 --config.cmd python3
	rm -rf "$bundles/python"

	log "umoci: node (2 layers)"
	umoci unpack --image "$layout:debian" "$bundles/node"
	"${rsync_copy[@]}" "${keep_markers[@]}" "$rootfs/node-full/" "$bundles/node/rootfs/"
	umoci repack --refresh-bundle --image "$layout:node" \
		--history.created_by "debootstrap --variant=minbase --include=nodejs $suite" "$bundles/node"
	umoci config --image "$layout:node" --config.env "$debian_path_env" --config.cmd node
	rm -rf "$bundles/node"

	log "python-mixed: recompressing python's layers as gzip, zstd, tar, gzip"
	"$here/recompress.sh" "$layout" python python-mixed gzip zstd tar gzip
}

busybox_applets=$(/bin/busybox --list-full)
umoci init --layout "$layout"

log "building busybox images ($mode layout, key $key) in $work"
for arch in amd64 arm64; do
	binary=$(fetch_busybox "$arch")
	build_busybox "$arch" "$binary" "busybox-$arch"
done
"$here/make-index.sh" "$layout" busybox-multi \
	busybox-amd64=linux/amd64 busybox-arm64=linux/arm64/v8
"$here/recompress.sh" "$layout" busybox-amd64 busybox-tar tar
"$here/recompress.sh" "$layout" busybox-amd64 busybox-zstd zstd
# The busybox layer with every process default of the image config set, for the
# tests of how a runtime combines them with the command it is given.
umoci tag --image "$layout:busybox-amd64" busybox-config
umoci config --image "$layout:busybox-config" --config.env "$busybox_path_env" \
	--config.env IMAGE_ENV=from-config --config.entrypoint /bin/sh \
	--config.entrypoint -c --config.cmd "echo default-cmd" --config.workingdir /etc \
	--config.user 1000:1000

if [ "$mode" = full ]; then
	[ "$host_arch" = amd64 ] || [ "$host_arch" = arm64 ] ||
		fail "the Debian images need an amd64 or arm64 host, this one is $host_arch"
	bootstrap_debian
	build_debian_images
fi

umoci gc --layout "$layout"
mv "$layout" "$target"
for old in "$cache"/oci-*; do
	[ "$old" = "$target" ] || [ ! -d "$old" ] || {
		log "removing $old, built by other scripts or packages"
		rm -rf "$old"
	}
done
log "built $target in $((SECONDS - started))s"
echo "$target"
