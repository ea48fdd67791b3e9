#!/usr/bin/env bash
# Builds the two Debian packages into $TARGET/debian/ (TARGET = CARGO_TARGET_DIR or ./target):
#
#   vogeler-client_<version>-1_amd64.deb   vogeler-client, static (x86_64-unknown-linux-musl),
#                                          /etc/vogeler/vogeler.conf, /etc/vogeler/plugins/*.cfg
#   vogeler-server_<version>-1_amd64.deb   vogeler-server, -runner, -admin (glibc), the unit
#                                          and the vogeler system user
#
# Profile `deb` (Cargo.toml): release without LTO. Needs cargo-deb,
# the musl target and a musl C compiler (ring, for TLS, has C parts):
# `scripts/services.sh ensure-packaging` installs them.
#
#   scripts/package.sh            build both sets of binaries, then both packages
#   scripts/package.sh --no-build package what the last build made (tests/package.rs); fails
#                                 if sources changed since, does nothing if the .debs are current
set -euo pipefail
cd "$(dirname "$0")/.."

MUSL=x86_64-unknown-linux-musl
# VOGELER_PACKAGE_PROFILE=dev packages the test build's binaries (CI: checks the packaging
# without a second optimised build of everything); releases use the default, deb.
PROFILE=${VOGELER_PACKAGE_PROFILE:-deb}
# The agent has a profile of its own, optimised for size (Cargo.toml, [profile.client]).
if [ "$PROFILE" = deb ]; then CLIENT_PROFILE=client; else CLIENT_PROFILE=$PROFILE; fi
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
OUT=$TARGET/debian
STAMP=$OUT/.built

log() { printf 'package: %s\n' "$*" >&2; }
die() { printf 'package: FAILED: %s\n' "$*" >&2; exit 1; }

command -v cargo-deb >/dev/null 2>&1 \
  || die "cargo-deb is not installed: run scripts/services.sh ensure-packaging"
rustup target list --installed 2>/dev/null | grep -qx "$MUSL" \
  || die "the Rust target $MUSL is not installed: run scripts/services.sh ensure-packaging"
command -v x86_64-linux-musl-gcc >/dev/null 2>&1 \
  || die "no musl C compiler (x86_64-linux-musl-gcc, Debian package musl-tools): run scripts/services.sh ensure-packaging"

# Tests may run this concurrently: one at a time, so nobody reads a half-written .deb.
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

if [ "${1:-}" = "--no-build" ]; then
  # tests/package.rs: cargo cannot run inside `cargo test` (it holds the target directory's
  # lock). Refuse binaries older than the sources rather than package them silently.
  # (cargo leaves current binaries untouched, hence a stamp written after each build.)
  [ -f "$STAMP" ] || die "no binaries built yet: run scripts/package.sh (without --no-build)"
  newer=$(find src crates Cargo.toml Cargo.lock -newer "$STAMP" -type f -print -quit)
  [ -z "$newer" ] || die "$newer changed since the last build: run scripts/package.sh (without --no-build)"
else
  # The client needs no store backend: building it without them skips SQLite's C code,
  # tokio-postgres and reqwest for the musl target.
  log "building vogeler-client for $MUSL (profile $CLIENT_PROFILE)"
  cargo build --quiet --profile "$CLIENT_PROFILE" --target "$MUSL" --no-default-features --bin vogeler-client
  log "building vogeler-server, vogeler-runner, vogeler-admin (profile $PROFILE)"
  cargo build --quiet --profile "$PROFILE" --bin vogeler-server --bin vogeler-runner --bin vogeler-admin
  touch "$STAMP"
fi

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
DEBS=("$OUT/vogeler-client_$VERSION-1_amd64.deb" "$OUT/vogeler-server_$VERSION-1_amd64.deb")
if [ "${1:-}" = "--no-build" ] && [ -f "${DEBS[0]}" ] && [ -f "${DEBS[1]}" ] \
   && [ -z "$(find "$STAMP" pkg etc README.md Cargo.toml -newer "${DEBS[0]}" -print -quit)" ] \
   && [ -z "$(find "$STAMP" pkg etc README.md Cargo.toml -newer "${DEBS[1]}" -print -quit)" ]; then
  log "packages are current"
  printf '%s\n' "${DEBS[@]}"
  exit 0
fi

log "packaging vogeler-client"
cargo deb --no-build --quiet --fast --profile "$CLIENT_PROFILE" --target "$MUSL" --variant client --output "$OUT/"
log "packaging vogeler-server"
cargo deb --no-build --quiet --fast --profile "$PROFILE" --variant server --output "$OUT/"
