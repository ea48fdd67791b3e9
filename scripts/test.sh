#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script):
# services ensured, then fmt, clippy, docs, benchmark build, the Debian packages and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "services (RabbitMQ, NATS with JetStream, PostgreSQL, pouchdb-server, plugins, packaging tools)"
scripts/services.sh ensure
# The tests' vhost starts empty: queues an earlier run left behind go with it.
scripts/services.sh reset-test-vhost
eval "$(scripts/services.sh env)"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "build everything, benchmarks included (dev profile: shares the tests' artifacts)"
cargo build --workspace --all-targets --quiet

step "Debian packages (scripts/package.sh, test build's binaries; tests/package.rs checks them)"
# The packages hold the dev-profile binaries built above (only the static musl client is
# compiled again): the packaging is what is tested; releases build with the deb profile.
export VOGELER_PACKAGE_PROFILE=dev
scripts/package.sh

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; run them first so the suite's summary closes the output.
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --no-fail-fast --test-threads "${VOGELER_TEST_THREADS:-8}"
else
  cargo test --workspace --no-fail-fast
fi
