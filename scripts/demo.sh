#!/usr/bin/env bash
# The main job in one command: a broker, a server on the embedded SQLite store,
# a client on this host with the shipped plugins, a broadcast, and the stored record.
#   scripts/demo.sh [PLUGIN...]     (default: facter os_release)
# The test suite runs it too (tests/programs.rs), with these set:
#   VOGELER_DEMO_BIN   the programs' directory, already built (default: a release build)
#   VOGELER_DEMO_AMQP  the broker (default amqp://guest:guest@127.0.0.1:5672/)
#   VOGELER_DEMO_DIR   where the configuration, store and logs go (default .demo)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
plugins=("$@"); [ ${#plugins[@]} -gt 0 ] || plugins=(facter os_release)

scripts/services.sh ensure-rabbitmq
scripts/services.sh ensure-plugins
if [ -n "${VOGELER_DEMO_BIN:-}" ]; then
  bin=$VOGELER_DEMO_BIN
else
  echo "==> building (release)" >&2
  cargo build --release --bins --quiet ${VOGELER_CARGO_FLAGS:-}
  bin=$root/target/release
fi

work=${VOGELER_DEMO_DIR:-$root/.demo}
mkdir -p "$work"
rm -f "$work"/vogeler.db*
node=$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)
cat > "$work/vogeler.conf" <<CONF
# Written by scripts/demo.sh: the shipped plugins, an SQLite file beside this file.
[global]
plugin_path = $root/etc/plugins
log_level = INFO

[persistence]
backend = sqlite

[sqlite]
dsn = sqlite:vogeler.db

[amqp]
dsn = ${VOGELER_DEMO_AMQP:-amqp://guest:guest@127.0.0.1:5672/}

[runner]
log_level = WARN

[admin]
log_level = WARN
CONF

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "==> vogeler-server (log: $work/server.log)" >&2
"$bin/vogeler-server" -c "$work/vogeler.conf" >"$work/server.log" 2>&1 &
pids+=($!)
# The server declares its queue as it starts; a client started before that would have its
# first heartbeat refused (no queue to keep it) and send it again after a reconnect.
for _ in $(seq 1 150); do
  if "$bin/vogeler-admin" -c "$work/vogeler.conf" queue --exists master.in >/dev/null 2>&1; then break; fi
  sleep 0.2
done

echo "==> vogeler-client on node $node (log: $work/client.log)" >&2
"$bin/vogeler-client" -c "$work/vogeler.conf" run >"$work/client.log" 2>&1 &
pids+=($!)

# The client's queue exists once it has started; until then a request is unroutable (exit 3).
for _ in $(seq 1 150); do
  if "$bin/vogeler-admin" -c "$work/vogeler.conf" queue --exists "$node" >/dev/null 2>&1; then break; fi
  sleep 0.2
done

# The client's first heartbeat makes the node known to the server: a broadcast then knows
# whom to wait for and ends once it answered, instead of waiting out --timeout.
for _ in $(seq 1 150); do
  if "$bin/vogeler-admin" -c "$work/vogeler.conf" node "$node" >/dev/null 2>&1; then break; fi
  sleep 0.2
done

for p in "${plugins[@]}"; do
  echo "==> vogeler-runner -x $p -n all --wait" >&2
  "$bin/vogeler-runner" -c "$work/vogeler.conf" -x "$p" -n all --wait --timeout 120s || true
done

echo "==> the stored record of $node" >&2
"$bin/vogeler-admin" -c "$work/vogeler.conf" node "$node"
echo "==> its summary (vogeler-admin node $node --summary)" >&2
"$bin/vogeler-admin" -c "$work/vogeler.conf" node "$node" --summary
