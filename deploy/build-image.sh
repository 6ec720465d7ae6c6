#!/bin/sh
# Builds the provider's image with podman: deploy/build-image.sh [IMAGE]
# (`make image` runs it). From the repository root.
#
# - Installs podman (and mmdebstrap, when it is needed) from Debian when they
#   are missing, as `make deps` does for the rest: as root, apt-get install.
# - The build stage's base is BASE (default docker.io/library/debian:12-slim):
#   used when podman has it or can pull it. Otherwise a Debian 12 minbase is
#   bootstrapped with mmdebstrap from the mirror and apt settings this machine
#   uses, imported once as $LOCAL_BASE and reused by later builds.
# - podman builds with --isolation=chroot (PODMAN_ISOLATION): RUN steps need
#   no OCI runtime, so this works where podman cannot start containers.
#   PODMAN_BUILD_FLAGS adds flags (--no-cache, --pull=always...).
set -eu

IMAGE=${1:-maskinporten-csi-provider:0.1.0}
BASE=${BASE:-docker.io/library/debian:12-slim}
LOCAL_BASE=${LOCAL_BASE:-localhost/maskinporten-csi-provider-base:bookworm}
PODMAN_ISOLATION=${PODMAN_ISOLATION:-chroot}
PODMAN_BUILD_FLAGS=${PODMAN_BUILD_FLAGS:-}

say() {
	echo "image: $*"
}

# Installs Debian packages when their command is missing.
need() {
	cmd=$1
	shift
	command -v "$cmd" >/dev/null 2>&1 && return 0
	if [ "$(id -u)" != 0 ]; then
		say "$cmd is missing; run this once as root:"
		say "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $*"
		exit 1
	fi
	say "installing $* from Debian"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A Debian 12 minbase from this machine's own apt sources and settings, as
# podman image $LOCAL_BASE. Sources: the files that name bookworm (mmdebstrap
# pastes each into the chroot); settings: the apt.conf files that set
# Acquire:: options (a proxy, or the validity checks of a snapshot mirror).
bootstrap_base() {
	need mmdebstrap mmdebstrap
	set --
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
		/etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] && grep -qs '^[^#]*bookworm' "$f" && set -- "$@" "$f"
	done
	opts=
	for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
		[ -f "$f" ] && grep -qs '^[[:space:]]*Acquire' "$f" && opts="$opts --aptopt=$f"
	done
	say "bootstrapping Debian 12 (mmdebstrap --variant=minbase bookworm) as $LOCAL_BASE"
	tar=$(mktemp --suffix=.tar)
	trap 'rm -f "$tar"' EXIT
	# shellcheck disable=SC2086 # opts is a list of words
	mmdebstrap --quiet --variant=minbase $opts bookworm "$tar" "$@"
	podman import --change 'CMD ["/bin/bash"]' "$tar" "$LOCAL_BASE" >/dev/null
	rm -f "$tar"
}

need podman podman

if podman image exists "$BASE"; then
	base=$BASE
elif timeout 300 podman pull -q "$BASE" >/dev/null 2>&1; then
	say "pulled $BASE"
	base=$BASE
else
	say "$BASE cannot be pulled here"
	podman image exists "$LOCAL_BASE" || bootstrap_base
	base=$LOCAL_BASE
fi

say "building $IMAGE on $base"
# shellcheck disable=SC2086 # PODMAN_BUILD_FLAGS is a list of words
podman build --isolation="$PODMAN_ISOLATION" --build-arg BASE="$base" $PODMAN_BUILD_FLAGS \
	-f deploy/Containerfile -t "$IMAGE" .
podman image inspect --format '{{.Size}}' "$IMAGE" |
	awk -v i="$IMAGE" '{ printf "image: %s is %.1f MB uncompressed (%d bytes)\n", i, $1 / 1e6, $1 }'
