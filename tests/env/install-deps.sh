#!/usr/bin/env bash
# Installs the Debian packages the integration tests need, if any is missing.
# Runs `apt-get update` only when something has to be installed, so a second
# run is a few dpkg-query calls. Also adds the rustfmt and clippy components
# when rustup is present. A failed rustup download prints a warning and does
# not fail the script.
set -euo pipefail
shopt -s inherit_errexit

packages=(
	# registry, image tools and the images' inputs
	docker-registry skopeo umoci debootstrap debian-archive-keyring busybox-static
	rsync apache2-utils zstd jq openssl curl ca-certificates
	# setcap and getcap, for the file capability test against umoci
	libcap2-bin
	# getfattr, for comparing layer trees with their xattrs (tests/crash_safety.rs)
	attr
	# building and running agentkernel (libseccomp is found with pkg-config;
	# runc is a reference runtime for comparisons)
	gcc libc6-dev pkg-config libseccomp-dev runc
)

missing=()
for package in "${packages[@]}"; do
	status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
	[ "$status" = installed ] || missing+=("$package")
done

if [ ${#missing[@]} -gt 0 ]; then
	echo "install-deps.sh: installing ${missing[*]}" >&2
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null || {
			echo "install-deps.sh: missing packages ${missing[*]}: run as root or install sudo" >&2
			exit 1
		}
		sudo=(sudo)
	fi
	"${sudo[@]}" apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}"

	# On a host with systemd the package starts its own registry with
	# /etc/docker/registry/config.yml, which listens on port 5000 on all
	# interfaces. The tests start their own registries, so disable it when
	# this script installed it.
	if [[ " ${missing[*]} " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
		"${sudo[@]}" systemctl disable --now docker-registry.service >&2 || true
	fi
fi

if command -v rustup >/dev/null; then
	installed=$(rustup component list --installed 2>/dev/null || true)
	for component in rustfmt clippy; do
		if ! grep -q "^$component" <<<"$installed"; then
			timeout 300 rustup component add "$component" >&2 ||
				echo "install-deps.sh: warning: rustup could not add $component; cargo fmt/clippy will be unavailable" >&2
		fi
	done
fi
