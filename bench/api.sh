#!/usr/bin/env bash
# Control-plane benchmark: DescribeCertificate and CreateCertificateFromCsr over HTTPS with SigV4,
# certfleet on SQLite and on PostgreSQL, and moto (the usual local AWS IoT emulator) as the peer,
# all driven by certfleet-loadgen in one run, alternating servers (A B A B) because these
# machines are shared and noisy. Every run is bounded (--duration). Prints a Markdown table.
#
#   bench/api.sh [seconds-per-run] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
rounds=${2:-2}
connections=${CONNECTIONS:-16}
pg_url=${CERTFLEET_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --locked -q -p certfleet -p certfleet-loadgen
bin=${CARGO_TARGET_DIR:-target}/release
if [ ! -x .venv-bench/bin/moto_server ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install --quiet --disable-pip-version-check 'moto[server]'
fi

wait_for() { for _ in $(seq 100); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "timed out waiting for $1" >&2; exit 1; }

start_certfleet() { # name, extra args...
  local name=$1; shift
  CERTFLEET_KEY_PASSPHRASE=bench RUST_LOG=warn "$bin/certfleet" server --data-dir "$work/$name" --api-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=($!); eval "${name}_pid=$!"
  wait_for "$work/$name/endpoints.json"
}

psql "$pg_url/postgres" -qc "DROP DATABASE IF EXISTS certfleet_bench" -qc "CREATE DATABASE certfleet_bench" >/dev/null
start_certfleet sqlite
start_certfleet postgres --database-url "$pg_url/certfleet_bench"
moto_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv-bench/bin/moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
pids+=($!); moto_pid=$!
for _ in $(seq 100); do curl -s "http://127.0.0.1:$moto_port/moto-api/" >/dev/null && break; sleep 0.1; done

run() { # label, pid, scenario, target args...
  local label=$1 pid=$2 scenario=$3; shift 3
  "$bin/certfleet-loadgen" api --scenario "$scenario" --duration "$seconds" --connections "$connections" \
    --server-pid "$pid" --label "$label" --json "$@"
}

results="$work/results.jsonl"
for round in $(seq "$rounds"); do
  for scenario in describe-certificate create-certificate-from-csr; do
    run "certfleet sqlite https" "$sqlite_pid" "$scenario" --data-dir "$work/sqlite" >>"$results"
    run "moto http" "$moto_pid" "$scenario" --url "http://127.0.0.1:$moto_port" --access-key-id AKIDBENCH --secret-access-key bench >>"$results"
    run "certfleet postgres https" "$postgres_pid" "$scenario" --data-dir "$work/postgres" >>"$results"
  done
done
psql "$pg_url/postgres" -qc "DROP DATABASE IF EXISTS certfleet_bench" >/dev/null 2>&1 || true

python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| server | scenario | runs | ok/s (median) | p50 ms | p99 ms | failed | req per server CPU-s | peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|---|")
groups = {}
for row in rows:
    groups.setdefault((row["label"], row["scenario"]), []).append(row)
for (label, scenario), runs in groups.items():
    med = lambda key: statistics.median([r[key] or 0 for r in runs])
    failed = sum(sum(r["failures"].values()) for r in runs)
    print(f"| {label} | {scenario} | {len(runs)} | {med('rate_per_second'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {failed} | {med('requests_per_server_cpu_second'):.0f} | {max(r['server_peak_rss_mib'] or 0 for r in runs):.1f} |")
by = {(k[0], k[1]): statistics.median([r["rate_per_second"] for r in v]) for k, v in groups.items()}
print()
for scenario in sorted({k[1] for k in by}):
    base = by.get(("moto http", scenario))
    for label in ("certfleet sqlite https", "certfleet postgres https"):
        if base and (label, scenario) in by:
            print(f"- {scenario}: {label} / moto http = {by[(label, scenario)] / base:.1f}x")
PY
