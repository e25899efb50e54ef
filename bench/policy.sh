#!/usr/bin/env bash
# Cost of IoT policy enforcement in the gateway: QoS 0 and QoS 1 publish throughput with a typical
# ten-statement policy (bench/typical-policy.json) enforced on every CONNECT, SUBSCRIBE, PUBLISH
# and delivery, against the same gateway with `mqtt.danger_authorize_everything` (no checks),
# in one run, alternating A B A B. Every run is bounded. Prints a Markdown table.
#
#   bench/policy.sh [seconds-per-run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
rounds=${2:-2}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --locked -q -p certfleet -p certfleet-loadgen
bin=${CARGO_TARGET_DIR:-target}/release

start() { # name, extra config
  local name=$1 config=$2
  printf '[mqtt]\naddr = "127.0.0.1:0"\n%s\n' "$config" >"$work/$name.toml"
  CERTFLEET_KEY_PASSPHRASE=bench RUST_LOG=warn "$bin/certfleet" server --config "$work/$name.toml" --data-dir "$work/$name" \
    --api-addr 127.0.0.1:0 >"$work/$name.log" 2>&1 &
  pids+=($!); eval "${name}_pid=$!"
  for _ in $(seq 100); do [ -s "$work/$name/endpoints.json" ] && break; sleep 0.1; done
  "$bin/certfleet-loadgen" mqtt --data-dir "$work/$name" --scenario connect --devices 8 --identities "$work/$name-ids" \
    --policy-file bench/typical-policy.json --duration 0.5 --count 1 --json >/dev/null
  eval "${name}_addr=$(python3 -c "import json;print(json.load(open('$work/$name/endpoints.json'))['mqtt_addr'])")"
}
start enforced ""
start unchecked "danger_authorize_everything = true"

results="$work/results.jsonl"
for round in $(seq "$rounds"); do
  for spec in "publish-qos0 1" "publish-qos1 4"; do
    set -- $spec
    for name in enforced unchecked; do
      eval "pid=\$${name}_pid; addr=\$${name}_addr"
      "$bin/certfleet-loadgen" mqtt --scenario "$1" --connections "$2" --duration "$seconds" --devices 8 \
        --addr "$addr" --cafile "$work/$name/server-root.pem" --identities "$work/$name-ids" --server-name localhost \
        --server-pid "$pid" --label "$name" --json 2>/dev/null >>"$results"
    done
  done
done

python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(line) for line in open(sys.argv[1])]
groups = {}
for row in rows:
    groups.setdefault((row["scenario"], row["label"]), []).append(row)
print("| scenario | policies | runs | delivered/s (median) | p50 ms | p99 ms | per server CPU-s |")
print("|---|---|---|---|---|---|---|")
for (scenario, label), runs in sorted(groups.items()):
    med = lambda key: statistics.median([r[key] or 0 for r in runs])
    print(f"| {scenario} | {label} | {len(runs)} | {med('rate_per_second'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('requests_per_server_cpu_second'):.0f} |")
print()
for scenario in sorted({s for s, _ in groups}):
    on, off = groups.get((scenario, "enforced")), groups.get((scenario, "unchecked"))
    if on and off:
        ratio = statistics.median([r["requests_per_server_cpu_second"] or 0 for r in on]) / max(1e-9, statistics.median([r["requests_per_server_cpu_second"] or 0 for r in off]))
        print(f"- {scenario}: with policies / without = {ratio:.2f}x per server CPU-second")
PY
