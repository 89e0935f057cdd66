#!/usr/bin/env bash
# The async-graphql fork, checked against the crate it forks (vendor/async-graphql/PATCHED.md).
#
#   bash scripts/check-vendor.sh diff      vendor/async-graphql is exactly the published 7.2.1
#                                          (its .crate from crates.io, fetched by cargo) with
#                                          vendor/async-graphql.patch applied, and its src/ the
#                                          same crate with vendor/upstream/*.patch applied in
#                                          order; fails on any drift
#   bash scripts/check-vendor.sh test      the published crate's own tests (tests/*.rs and the
#                                          unit tests in src/) run against the vendored source
#   bash scripts/check-vendor.sh features  `cargo check --all-features` of the vendored crate
#                                          (a first version of the patch broke one feature)
#   bash scripts/check-vendor.sh write     rewrites vendor/async-graphql.patch from the vendored
#                                          copy (after a deliberate change; review its diff), and
#                                          the test crate's lock, vendor/async-graphql-tests.lock
#   bash scripts/check-vendor.sh           diff, test and features (what scripts/test runs)
#
# Everything it builds stays under target/vendor-check (its own target dir: the main build is
# untouched). The vendored copy keeps the crate's Cargo.toml, licences, README and src/; what the
# vendoring drops is the DROPPED list below, and vendor/async-graphql/PATCHED.md is ours.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

version=7.2.1
# The published crate's checksum (crates.io index): a fetched .crate that differs is refused.
checksum=1057a9f7ccf2404d94571dec3451ade1cb524790df6f1ada0d19c2a49f6b0f40
vendored=vendor/async-graphql
patch_file=vendor/async-graphql.patch
# The test crate's lock (its dev-dependencies and default features are not the gateway's).
tests_lock=vendor/async-graphql-tests.lock
# The same changes as a series of upstream-ready patches (git format-patch), one per change.
series=vendor/upstream
work=$root/target/vendor-check
tmp=
trap '[[ -z "$tmp" ]] || rm -rf "$tmp"' EXIT
# What the published crate has and the vendored copy leaves out: tests and benches (run from the
# .crate by `test` instead), the docs book, the other crates' integrations, repository and
# packaging files.
DROPPED=(.cargo-ok .cargo_vcs_info.json .github .gitignore .gitmodules .rustfmt.toml
  ARCHITECTURE.md CHANGELOG.md Cargo.lock Cargo.toml.orig SECURITY.md benches docs integrations
  tests)
# Ours, not the crate's.
OURS=(PATCHED.md)
# Pristine tests that fail because of a documented difference of the patch (PATCHED.md,
# "Differences in behaviour"): skipped by name, each with its reason there.
SKIPPED=()

# The published .crate, unpacked into $work/pristine (fetched by cargo through a throwaway
# project, so the registry's checksum is verified, then checked against ours).
pristine() {
  rm -rf "$work/fetch" "$work/pristine"
  mkdir -p "$work/fetch"
  cat >"$work/fetch/Cargo.toml" <<EOF
[package]
name = "fetch-pristine-async-graphql"
version = "0.0.0"
edition = "2021"
publish = false
[lib]
path = "lib.rs"
[dependencies]
async-graphql = { version = "=$version", default-features = false }
[workspace]
EOF
  : >"$work/fetch/lib.rs"
  # The gateway's lock as a start: no version but async-graphql's own is looked up afresh.
  cp Cargo.lock "$work/fetch/Cargo.lock"
  (cd "$work/fetch" && cargo fetch --quiet --target "$(rustc -vV | sed -n "s/^host: //p")")
  local crate
  crate=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/cache" -name "async-graphql-$version.crate" | head -n 1)
  [[ -n "$crate" ]] || { echo "check-vendor: async-graphql-$version.crate not found after cargo fetch" >&2; exit 1; }
  echo "$checksum  $crate" | sha256sum --check --quiet
  mkdir -p "$work/pristine"
  tar -xzf "$crate" -C "$work/pristine" --strip-components=1
}

# $1: a copy of the published crate without what the vendoring drops.
trimmed_pristine() {
  rm -rf "$1"
  cp -r "$work/pristine" "$1"
  local name
  for name in "${DROPPED[@]}"; do rm -rf "${1:?}/$name"; done
}

# $1: a copy of the vendored crate without our own files.
trimmed_vendored() {
  rm -rf "$1"
  # -p: unchanged files keep their times, so a second run rebuilds only what changed.
  cp -rp "$vendored" "$1"
  local name
  for name in "${OURS[@]}"; do rm -rf "${1:?}/$name"; done
}

check_diff() {
  pristine
  tmp=$(mktemp -d)
  trimmed_pristine "$tmp/a"
  trimmed_vendored "$tmp/vendored"
  # Applied outside the repository, so that git apply takes the paths as the patch gives them.
  (cd "$tmp/a" && git apply -p1 --whitespace=nowarn "$root/$patch_file") || {
    echo "check-vendor: $patch_file does not apply to the published async-graphql $version" >&2
    exit 1
  }
  if ! diff -r "$tmp/a" "$tmp/vendored" >"$tmp/drift"; then
    echo "check-vendor: $vendored has drifted from async-graphql $version + $patch_file:" >&2
    sed 's|'"$tmp"'/a|pristine+patch|g; s|'"$tmp"'/vendored|'"$vendored"'|g' "$tmp/drift" | head -n 60 >&2
    echo "check-vendor: a deliberate change is written up in PATCHED.md and vendor/upstream/, then: bash scripts/check-vendor.sh write" >&2
    exit 1
  fi
  # The same changes as the upstream series (vendor/upstream/*.patch, in order): what is
  # offered to async-graphql is exactly what the gateway runs.
  trimmed_pristine "$tmp/series"
  local one
  for one in "$series"/*.patch; do
    (cd "$tmp/series" && git apply -p1 --whitespace=nowarn "$root/$one") || {
      echo "check-vendor: $one does not apply after the ones before it" >&2
      exit 1
    }
  done
  if ! diff -r "$tmp/series/src" "$vendored/src" >"$tmp/drift"; then
    echo "check-vendor: $vendored/src differs from async-graphql $version + $series/*.patch:" >&2
    sed 's|'"$tmp"'/series|pristine+series|g' "$tmp/drift" | head -n 60 >&2
    exit 1
  fi
  echo "check-vendor: $vendored = async-graphql $version (crates.io, sha256 checked) + $patch_file"
  echo "check-vendor: $vendored/src = async-graphql $version + $series/*.patch ($(ls "$series"/*.patch | wc -l) patches)"
}

write_patch() {
  pristine
  tmp=$(mktemp -d)
  trimmed_pristine "$tmp/a"
  trimmed_vendored "$tmp/b"
  # git diff --no-index exits 1 when the trees differ.
  (cd "$tmp" && git diff --no-index --no-prefix --no-color a b || [[ $? -eq 1 ]]) >"$patch_file"
  echo "check-vendor: wrote $patch_file ($(grep -c '^diff --git' "$patch_file") files)"
  # The test crate's lock: the gateway's versions where it shares them, the rest resolved now.
  rm -f "$tests_lock"
  test_crate
  (cd "$work/crate" && cargo metadata --quiet --format-version 1 >/dev/null)
  cp "$work/crate/Cargo.lock" "$tests_lock"
  echo "check-vendor: wrote $tests_lock"
}

# The crate as vendored, with the published crate's tests, as its own workspace under $work.
# All of tests/*.rs become modules of one test binary (one link instead of 55); the benches'
# criterion is left out of the dev-dependencies (no bench is built), and futures-channel gets
# the `sink` feature criterion's dependencies had given it.
test_crate() {
  local crate=$work/crate
  rm -rf "$crate"
  trimmed_vendored "$crate"
  cp -rp "$work/pristine/tests" "$crate/tests"
  {
    echo "// Generated by scripts/check-vendor.sh: the published tests, one binary."
    for file in "$crate"/tests/*.rs; do
      name=$(basename "$file" .rs)
      # A file's name may be a keyword (enum.rs).
      echo "#[path = \"$name.rs\"] mod test_$name;"
    done
  } >"$crate/pristine_tests.rs"
  mv "$crate/pristine_tests.rs" "$crate/tests/pristine_tests.rs"
  touch -r "$work/pristine/tests" "$crate/tests/pristine_tests.rs"
  python3 - "$crate/Cargo.toml" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r'\[dev-dependencies\.criterion\]\n(?:[^\[\n][^\n]*\n)*\n?', '', text)
# The WebSocket tests send on a channel as a Sink: criterion's dependencies had turned that on.
text = text.replace('[dev-dependencies.futures-channel]\nversion = "0.3.30"\n',
                    '[dev-dependencies.futures-channel]\nversion = "0.3.30"\nfeatures = ["sink"]\n')
# No debug info: a failing test's message and line are enough, and CI builds this cold.
text += '\n[[test]]\nname = "pristine_tests"\npath = "tests/pristine_tests.rs"\n\n[workspace]\n\n[profile.dev]\ndebug = false\n'
open(path, "w").write(text)
EOF
  touch -r "$vendored/Cargo.toml" "$crate/Cargo.toml"
  if [[ -f "$tests_lock" ]]; then cp -p "$tests_lock" "$crate/Cargo.lock"; else cp Cargo.lock "$crate/Cargo.lock"; fi
}

run_tests() {
  [[ -d "$work/pristine" ]] || pristine
  test_crate
  local skip=() name
  for name in "${SKIPPED[@]}"; do skip+=(--skip "$name"); done
  [[ ${#skip[@]} -eq 0 ]] || skip+=(--exact)
  # The features the tests' #[cfg]s name, and the APQ extension's unit tests.
  (cd "$work/crate" && CARGO_TARGET_DIR="$work/target" cargo test --locked --quiet \
    --features chrono,dataloader,apollo_persisted_queries,custom-error-conversion,bson \
    --lib --test pristine_tests -- "${skip[@]}")
}

check_features() {
  [[ -d "$work/pristine" ]] || pristine
  test_crate
  (cd "$work/crate" && CARGO_TARGET_DIR="$work/target" cargo check --locked --quiet --all-features)
}

case "${1:-all}" in
  diff) check_diff ;;
  write) write_patch ;;
  test) run_tests ;;
  features) check_features ;;
  all) check_diff; run_tests; check_features ;;
  *) echo "usage: bash scripts/check-vendor.sh [diff|test|features|write|all]" >&2; exit 2 ;;
esac
