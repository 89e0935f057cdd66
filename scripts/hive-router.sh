#!/usr/bin/env bash
# Prints the path of the Hive Router 0.2.5 binary (crate hive-router, with its graphiql feature),
# building it first on a machine that has not got it. tests/routers runs it in front of the
# gateway; scripts/test calls this before that suite.
#
#   CHECKOUT_GATEWAY_CACHE  where built tools are kept, one folder per tool and version
#                           (default: ${XDG_CACHE_HOME:-$HOME/.cache}/checkout-gateway).
#                           The binary: $CHECKOUT_GATEWAY_CACHE/hive-router-0.2.5/bin/hive_router.
#
# The build (`cargo install --locked`, release) took 34 minutes on 2 shared cores, once per
# machine and version; the binary is 67 MiB. Its target folder, $CHECKOUT_GATEWAY_CACHE/
# hive-router-build (1.8 GB), is kept until the build succeeds, so an interrupted build resumes
# where it stopped. A lock makes a second run wait for the first one's build instead of
# starting its own. Build output goes to stderr; stdout is the path alone.
#
# 0.2.5 is the newest release that builds with Rust 1.95 (0.3 needs 1.97). Without the graphiql
# feature its build script runs `npm install` for a laboratory page whose pinned version the
# npm registry no longer has.
set -euo pipefail

VERSION=0.2.5
CACHE="${CHECKOUT_GATEWAY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/checkout-gateway}"
ROOT="$CACHE/hive-router-$VERSION"
BINARY="$ROOT/bin/hive_router"

if [[ ! -x "$BINARY" ]]; then
  command -v cargo >/dev/null 2>&1 || { echo "hive-router.sh: cargo is required to build Hive Router" >&2; exit 2; }
  mkdir -p "$CACHE"
  exec 9>"$CACHE/hive-router-$VERSION.lock"
  if ! flock -n 9; then
    echo "hive-router.sh: another run is building Hive Router $VERSION; waiting for it" >&2
    flock 9
  fi
  # The other run may have built it while this one waited.
  if [[ ! -x "$BINARY" ]]; then
    echo "hive-router.sh: building Hive Router $VERSION into $ROOT (once per machine; tens of minutes)" >&2
    # stdout carries only the path: cargo's own output goes to stderr.
    CARGO_TARGET_DIR="$CACHE/hive-router-build" \
      cargo install hive-router --version "$VERSION" --locked --features graphiql --root "$ROOT" >&2
    # Built: the 1.8 GB of intermediate files are only worth keeping for an unfinished build.
    rm -rf "$CACHE/hive-router-build"
  fi
fi
echo "$BINARY"
