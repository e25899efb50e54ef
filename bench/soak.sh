#!/usr/bin/env bash
# The soak (issue 13): certfleet on embedded defaults, release build, for DURATION seconds (default
# one hour) of mixed legitimate traffic (connects, QoS 0/1 publishes, API calls, certificate
# rotations) while an attacker of another account rotates through the attacks, one per
# ATTACK_PERIOD seconds; certfleet-loadgen samples the server's RSS, open file descriptors and
# the legitimate clients' latencies every 10 s. Writes OUT/soak.csv, OUT/soak.md (the table),
# OUT/soak.svg (bench/soak-plot.py), OUT/metrics.txt (the server's /metrics at the end) and
# OUT/server.log; prints the summary. Not a test: it runs for an hour.
#
#   bench/soak.sh [DURATION seconds] [OUT directory] [ATTACK_PERIOD seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-3600}
out=${2:-$(mktemp -d)}
period=${3:-60}
mkdir -p "$out"
work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --locked -q -p certfleet -p certfleet-loadgen
bin=${CARGO_TARGET_DIR:-target}/release

# The rules engine's republish loop and the broker's bounds are the defaults; only the egress
# and metrics listeners are left out (nothing here needs them).
CERTFLEET_KEY_PASSPHRASE=soak RUST_LOG=info "$bin/certfleet" server --data-dir "$work/cf" --api-addr 127.0.0.1:0 \
  --mqtt-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$out/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do [ -s "$work/cf/endpoints.json" ] && break; sleep 0.1; done
[ -s "$work/cf/endpoints.json" ] || { echo "the server did not start"; tail -20 "$out/server.log"; exit 1; }
CERTFLEET_KEY_PASSPHRASE=soak RUST_LOG=warn "$bin/certfleet" account create --data-dir "$work/cf" --profile attacker \
  --output json >/dev/null

status=0
"$bin/certfleet-loadgen" soak --data-dir "$work/cf" --server-pid "$server_pid" --duration "$duration" \
  --attack-period "$period" --csv "$out/soak.csv" --markdown "$out/soak.md" >"$out/loadgen.out" 2>"$out/loadgen.err" || status=$?
tail -1 "$out/loadgen.err"
metrics=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics_addr"])' "$work/cf/endpoints.json")
curl -s "http://$metrics/metrics" >"$out/metrics.txt" || echo "no /metrics"
python3 bench/soak-plot.py "$out/soak.csv" "$out/soak.svg"
kill -TERM "$server_pid"
wait "$server_pid" || { echo "the server exited $? after SIGTERM"; status=1; }
server_pid=""
echo "log lines: $(wc -l <"$out/server.log"), $(du -h "$out/server.log" | cut -f1); samples in $out/soak.csv"
exit $status
