#!/usr/bin/env bash
# Builds the container images Tandem's compose files need without any image
# registry (the project's machines have a Docker engine but cannot pull):
#
#   base      Debian bookworm made with debootstrap + `docker import`
#             (cached: skipped when the image exists; REBUILD_BASE=1 forces)
#   postgres  PostgreSQL 15 from Debian's packages on that base, with an
#             entrypoint honouring the official image's environment contract
#   tandem    the runtime stage of deploy/Dockerfile with binaries built on
#             this host (target/$PROFILE/), not from source
#   patroni   a database host of the data tier (deploy/patroni/): Debian's
#             postgresql-15, patroni and etcd-server on that base
#
#   scripts/images.sh                  # all four
#   scripts/images.sh base postgres    # some of them
#   PROFILE=release scripts/images.sh tandem
#
# And, to try deploy/Dockerfile's from-source path offline (needs crates.io;
# a release build of the workspace takes several minutes):
#   rust         a stand-in for the official rust image: the base plus this
#                host's Rust toolchain, gcc and extra CA certificates
#                (RUST_IMAGE, tandem/rust:host)
#   from-source  deploy/Dockerfile's default target built with it
#                (SOURCE_IMAGE, tandem:source)
#
# Then run the very same docker-compose.yml with the images swapped in:
#   eval "$(scripts/images.sh --print-env)"   # TANDEM_IMAGE=... POSTGRES_IMAGE=... PATRONI_IMAGE=...
#   docker compose up -d                      # or docker-compose
#
# Environment (defaults): BASE_IMAGE (tandem/base:bookworm), POSTGRES_IMAGE
# (tandem/postgres:15), TANDEM_IMAGE (tandem:local), PROFILE (debug: the
# binaries scripts/test.sh builds), CARGO_TARGET_DIR (target), DEBIAN_MIRROR
# (http://deb.debian.org/debian), STRIP (1: strip debug info from the copied
# binaries, which makes the image smaller; 0 keeps it), TANDEM_EXTRA_BINARIES
# (more binaries of target/$PROFILE to pack, e.g. tandem-fake-backend for
# scripts/compose-check.sh's stand-in shop).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

BASE_IMAGE=${BASE_IMAGE:-tandem/base:bookworm}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-tandem/postgres:15}
PATRONI_IMAGE=${PATRONI_IMAGE:-tandem/patroni:local}
TANDEM_IMAGE=${TANDEM_IMAGE:-tandem:local}
PROFILE=${PROFILE:-debug}
[ "$PROFILE" = dev ] && PROFILE=debug
TARGET_DIR=${CARGO_TARGET_DIR:-target}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STRIP=${STRIP:-1}
# The binaries the runtime image carries, when built.
TANDEM_BINARIES=(tandem-control tandem-proxy tandem-agent tandemctl widget-shop)
read -r -a extra_binaries <<< "${TANDEM_EXTRA_BINARIES:-}"
TANDEM_BINARIES+=("${extra_binaries[@]}")
# Packages every derived image needs; installed into the base so that no
# image build has to reach a mirror (deploy/Dockerfile skips apt-get when
# they are present).
BASE_PACKAGES=ca-certificates,curl,tini,openssl

if [ "${1:-}" = --print-env ]; then
  printf 'export TANDEM_IMAGE=%q POSTGRES_IMAGE=%q PATRONI_IMAGE=%q\n' "$TANDEM_IMAGE" "$POSTGRES_IMAGE" "$PATRONI_IMAGE"
  exit 0
fi

docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info)"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_size() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

# Legacy builder (no BuildKit/buildx on the project's machines); the host
# network lets a RUN reach Debian's mirror if it ever must.
# Output goes to a log, shown when the build fails.
docker_build() {
  local log
  log=$(mktemp -t tandem-docker-build.XXXXXX)
  if ! DOCKER_BUILDKIT=0 docker build --force-rm --network host "$@" >"$log" 2>&1; then
    grep -v -e 'legacy builder is deprecated' -e 'BuildKit is currently disabled' -e 'environment-variable\.' "$log" | tail -40 >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

build_base() {
  if image_exists "$BASE_IMAGE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
    echo "$BASE_IMAGE: cached ($(image_size "$BASE_IMAGE")); REBUILD_BASE=1 rebuilds it"
    return
  fi
  local t0=$SECONDS
  command -v debootstrap >/dev/null || { echo "installing debootstrap"; apt_install debootstrap; }
  ROOTFS=$(mktemp -d /var/tmp/tandem-rootfs.XXXXXX)
  trap cleanup_rootfs EXIT
  echo "debootstrap bookworm (minbase + $BASE_PACKAGES) from $DEBIAN_MIRROR into $ROOTFS"
  as_root debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$ROOTFS" "$DEBIAN_MIRROR" \
    > "$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log" >&2; die "debootstrap failed (log above)"; }

  # What debian:bookworm-slim does: apt sources incl. security, no docs or
  # man pages, no recommends, no apt caches.
  as_root tee "$ROOTFS/etc/apt/sources.list" >/dev/null <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main
EOF
  as_root tee "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  as_root tee "$ROOTFS/etc/apt/apt.conf.d/docker" >/dev/null <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
EOF
  echo "applying updates and cleaning up"
  as_root cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  as_root chroot "$ROOTFS" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade && apt-get clean' \
    >> "$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log" >&2; die "apt-get upgrade in the new root failed"; }
  as_root sh -c "rm -rf '$ROOTFS'/var/lib/apt/lists/* '$ROOTFS'/var/cache/apt/*.bin '$ROOTFS'/var/log/*.log \
    '$ROOTFS'/usr/share/doc/*/[!c]* '$ROOTFS'/usr/share/man/* '$ROOTFS'/usr/share/locale/[!l]* \
    '$ROOTFS'/tmp/* '$ROOTFS'/etc/hostname && : > '$ROOTFS/etc/resolv.conf'"

  echo "docker import -> $BASE_IMAGE"
  as_root tar --numeric-owner --one-file-system -C "$ROOTFS" \
      --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -c . |
    docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
      --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase bookworm ($DEBIAN_MIRROR) by scripts/images.sh" \
      - "$BASE_IMAGE" >/dev/null
  cleanup_rootfs
  trap - EXIT
  echo "$BASE_IMAGE: built in $((SECONDS - t0)) s ($(image_size "$BASE_IMAGE"))"
}

ROOTFS=
cleanup_rootfs() {
  [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
  # An interrupted debootstrap can leave /proc or /sys mounted inside.
  local m
  for m in $(awk -v r="$ROOTFS" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
    as_root umount -l "$m" || true
  done
  as_root rm -rf --one-file-system "$ROOTFS" "$ROOTFS.log"
  ROOTFS=
}

# build_on_base IMAGE DIR TITLE: IMAGE from deploy/DIR on BASE_IMAGE; the
# image it replaces (labelled TITLE, now untagged) is dropped.
build_on_base() {
  local image=$1 dir=$2 title=$3 t0=$SECONDS
  image_exists "$BASE_IMAGE" || die "$BASE_IMAGE is missing: run scripts/images.sh base"
  echo "building $image on $BASE_IMAGE (deploy/$dir/)"
  docker_build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$image" "deploy/$dir" ||
    die "building $image failed"
  # A changed entrypoint leaves the previous image untagged: drop it.
  docker image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null 2>&1 || true
  echo "$image: ready in $((SECONDS - t0)) s ($(image_size "$image"))"
}

build_postgres() { build_on_base "$POSTGRES_IMAGE" postgres tandem-postgres; }
build_patroni() { build_on_base "$PATRONI_IMAGE" patroni tandem-patroni; }

build_tandem() {
  image_exists "$BASE_IMAGE" || die "$BASE_IMAGE is missing: run scripts/images.sh base"
  local bin_dir="$TARGET_DIR/$PROFILE" found=() missing=() b
  for b in "${TANDEM_BINARIES[@]}"; do
    if [ -x "$bin_dir/$b" ]; then found+=("$b"); else missing+=("$b"); fi
  done
  [ ${#found[@]} -gt 0 ] || die "no binaries in $bin_dir: run cargo build --workspace --bins first"
  local t0=$SECONDS
  # A small build context of exactly target/<profile>/<binaries> and the
  # Dockerfile (the repository's own context would send all of target/).
  local ctx
  ctx=$(mktemp -d -t tandem-image-ctx.XXXXXX)
  mkdir -p "$ctx/target/$PROFILE" "$ctx/deploy"
  cp deploy/Dockerfile "$ctx/deploy/Dockerfile"
  for b in "${found[@]}"; do
    if [ "$STRIP" = 1 ]; then
      strip --strip-debug -o "$ctx/target/$PROFILE/$b" "$bin_dir/$b"
    else
      cp "$bin_dir/$b" "$ctx/target/$PROFILE/$b"
    fi
  done
  # Layer cache keys on file contents; equal binaries must look equal.
  touch -d @0 "$ctx/target/$PROFILE"/*
  echo "building $TANDEM_IMAGE from $bin_dir: ${found[*]}"
  [ ${#missing[@]} -eq 0 ] || echo "  not built yet, so not in the image: ${missing[*]}"
  docker_build -f "$ctx/deploy/Dockerfile" --target runtime-prebuilt \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PROFILE="$PROFILE" \
    -t "$TANDEM_IMAGE" "$ctx" || { rm -rf "$ctx"; die "building $TANDEM_IMAGE failed"; }
  rm -rf "$ctx"
  # Each new set of binaries leaves the previous image and build stages
  # untagged; remove those (only dangling images built from this
  # Dockerfile's runtime stage), or every test run would leak ~100 MB.
  docker image prune -f --filter "label=org.opencontainers.image.title=tandem" >/dev/null 2>&1 || true
  echo "$TANDEM_IMAGE: ready in $((SECONDS - t0)) s ($(image_size "$TANDEM_IMAGE"))"
}

RUST_IMAGE=${RUST_IMAGE:-tandem/rust:host}
SOURCE_IMAGE=${SOURCE_IMAGE:-tandem:source}

build_rust() {
  image_exists "$BASE_IMAGE" || die "$BASE_IMAGE is missing: run scripts/images.sh base"
  local sysroot ctx t0=$SECONDS
  sysroot=$(rustc --print sysroot) || die "no rustc on this host"
  ctx=$(mktemp -d -t tandem-rust-ctx.XXXXXX)
  mkdir -p "$ctx/toolchain/bin"
  cp "$sysroot"/bin/{cargo,rustc,rustdoc} "$ctx/toolchain/bin/"
  cp -a "$sysroot/lib" "$ctx/toolchain/"
  # The host's extra CA certificates (e.g. of an egress proxy), so cargo in
  # the container reaches crates.io the way the host does.
  mkdir -p "$ctx/ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
  cat > "$ctx/Dockerfile" <<'DOCKERFILE'
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rust/
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN rustc --version && cargo --version
DOCKERFILE
  echo "building $RUST_IMAGE from $(rustc --version) at $sysroot"
  docker_build --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$RUST_IMAGE" "$ctx" || { rm -rf "$ctx"; die "building $RUST_IMAGE failed"; }
  rm -rf "$ctx"
  echo "$RUST_IMAGE: ready in $((SECONDS - t0)) s ($(image_size "$RUST_IMAGE"))"
}

build_from_source() {
  image_exists "$RUST_IMAGE" || die "$RUST_IMAGE is missing: run scripts/images.sh rust"
  local t0=$SECONDS
  echo "building $SOURCE_IMAGE from source: deploy/Dockerfile, builder $RUST_IMAGE, runtime on $BASE_IMAGE"
  # Half the default CPU weight: a shared machine stays usable meanwhile.
  docker_build --cpu-shares 512 -f deploy/Dockerfile --build-arg RUST_IMAGE="$RUST_IMAGE" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$SOURCE_IMAGE" . || die "building $SOURCE_IMAGE failed"
  # The classic builder keeps the builder stage (GBs of target/) as an
  # untagged image; it is of no use once the sources change.
  docker image prune -f --filter "label=org.opencontainers.image.title=tandem-builder" >/dev/null 2>&1 || true
  docker image prune -f --filter "label=org.opencontainers.image.title=tandem" >/dev/null 2>&1 || true
  echo "$SOURCE_IMAGE: ready in $((SECONDS - t0)) s ($(image_size "$SOURCE_IMAGE"))"
}

what=("$@")
[ ${#what[@]} -gt 0 ] || what=(base postgres tandem patroni)
for w in "${what[@]}"; do
  case "$w" in
    base) step "image: base ($BASE_IMAGE)"; build_base ;;
    postgres) step "image: postgres ($POSTGRES_IMAGE)"; build_postgres ;;
    tandem) step "image: tandem ($TANDEM_IMAGE)"; build_tandem ;;
    patroni) step "image: patroni ($PATRONI_IMAGE)"; build_patroni ;;
    rust) step "image: rust ($RUST_IMAGE)"; build_rust ;;
    from-source) step "image: from source ($SOURCE_IMAGE)"; build_from_source ;;
    *) die "unknown image '$w' (base, postgres, tandem, patroni, rust, from-source, --print-env)" ;;
  esac
done
