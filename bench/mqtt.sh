#!/usr/bin/env bash
# Gateway benchmark: certfleet's gateway and Mosquitto (Debian package, installed here if
# missing) with the same device certificates, ECDSA P-256 keys and TLS 1.2/1.3, driven by
# certfleet-loadgen in one run, alternating servers (A B A B) because these machines are noisy.
# Scenarios: full mTLS handshake + CONNECT/CONNACK storm, QoS 0 and QoS 1 publish throughput
# (publishers to one subscriber). Every run is bounded. Prints a Markdown table.
#
#   bench/mqtt.sh [seconds-per-run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
rounds=${2:-2}
work=$(mktemp -d)
pids=()
mq_dir=""
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work" ${mq_dir:+"$mq_dir"}; }
trap cleanup EXIT

command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
cargo build --release --locked -q -p certfleet -p certfleet-loadgen
bin=${CARGO_TARGET_DIR:-target}/release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# certfleet, and 64 device identities made through its API (saved for Mosquitto).
CERTFLEET_KEY_PASSPHRASE=bench RUST_LOG=warn "$bin/certfleet" server --data-dir "$work/cf" --api-addr 127.0.0.1:0 \
  --mqtt-addr 127.0.0.1:0 >"$work/certfleet.log" 2>&1 &
pids+=($!); certfleet_pid=$!
for _ in $(seq 100); do [ -s "$work/cf/endpoints.json" ] && break; sleep 0.1; done
"$bin/certfleet-loadgen" mqtt --data-dir "$work/cf" --scenario connect --devices 64 --identities "$work/ids" \
  --duration 0.5 --count 1 --json >/dev/null

# Mosquitto: its own server certificate (ECDSA P-256, like certfleet's), client certificates
# verified against certfleet's device root, a fair configuration.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/mq-ca.key"
openssl req -new -x509 -key "$work/mq-ca.key" -subj /CN=bench-mosquitto-ca -days 2 -out "$work/mq-ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/mq.key"
openssl req -new -key "$work/mq.key" -subj /CN=localhost -out "$work/mq.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/mq.ext"
openssl x509 -req -in "$work/mq.csr" -CA "$work/mq-ca.pem" -CAkey "$work/mq-ca.key" -CAcreateserial -days 2 \
  -extfile "$work/mq.ext" -out "$work/mq.pem" 2>/dev/null
# Mosquitto drops root for its own user: give it readable copies (throwaway bench material).
mq_dir=$(mktemp -d /tmp/certfleet-bench-mosquitto.XXXXXX)
cp "$work/cf/device-root.pem" "$work/mq.pem" "$work/mq.key" "$mq_dir/"
chmod 755 "$mq_dir"; chmod 644 "$mq_dir"/*
mq_port=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
per_listener_settings false
listener $mq_port 127.0.0.1
cafile $mq_dir/device-root.pem
certfile $mq_dir/mq.pem
keyfile $mq_dir/mq.key
require_certificate true
use_identity_as_username true
set_tcp_nodelay true
max_queued_messages 100000
max_inflight_messages 100
persistence false
log_type error
CONF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!); mosquitto_pid=$!
sleep 0.5

results="$work/results.jsonl"
run() { # label, pid, scenario, connections, target args...
  local label=$1 pid=$2 scenario=$3 connections=$4; shift 4
  "$bin/certfleet-loadgen" mqtt --scenario "$scenario" --duration "$seconds" --connections "$connections" \
    --devices 64 --server-pid "$pid" --label "$label" --json "$@" 2>>"$work/loss.log" >>"$results"
}
for round in $(seq "$rounds"); do
  for spec in "connect 8" "publish-qos0 1" "publish-qos1 4"; do
    set -- $spec
    run "certfleet" "$certfleet_pid" "$1" "$2" --addr "$(python3 -c "import json;print(json.load(open('$work/cf/endpoints.json'))['mqtt_addr'])")" \
      --cafile "$work/cf/server-root.pem" --identities "$work/ids" --server-name localhost
    run "mosquitto" "$mosquitto_pid" "$1" "$2" --addr "127.0.0.1:$mq_port" --cafile "$work/mq-ca.pem" \
      --identities "$work/ids" --server-name localhost
  done
done

python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(line) for line in open(sys.argv[1])]
groups = {}
for row in rows:
    groups.setdefault((row["scenario"], row["label"]), []).append(row)
print("| scenario | server | runs | ok/s (median) | p50 ms | p99 ms | per server CPU-s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for (scenario, label), runs in sorted(groups.items()):
    med = lambda key: statistics.median([r[key] or 0 for r in runs])
    print(f"| {scenario} | {label} | {len(runs)} | {med('rate_per_second'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('requests_per_server_cpu_second'):.0f} | {max(r['server_peak_rss_mib'] or 0 for r in runs):.1f} |")
print()
for scenario in sorted({s for s, _ in groups}):
    cf, mq = groups.get((scenario, "certfleet")), groups.get((scenario, "mosquitto"))
    if cf and mq:
        rate = statistics.median([r["rate_per_second"] for r in cf]) / statistics.median([r["rate_per_second"] for r in mq])
        cpu = statistics.median([r["requests_per_server_cpu_second"] or 0 for r in cf]) / max(1e-9, statistics.median([r["requests_per_server_cpu_second"] or 0 for r in mq]))
        print(f"- {scenario}: certfleet / mosquitto = {rate:.2f}x wall-clock, {cpu:.2f}x per server CPU-second")
PY
echo
echo "messages sent but not delivered (QoS 0 drops to a slower subscriber; QoS 1 beyond queue bounds):"
cat "$work/loss.log" || true
