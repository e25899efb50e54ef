#!/usr/bin/env bash
# Audit benchmark (issue 7's target: DEVICE_CERTIFICATE_EXPIRING_CHECK over 1,000,000 registered
# certificates in at most 10 s, on SQLite and on PostgreSQL). For each store, certfleet-loadgen
# seeds one account with the certificates (1% expired or expiring) and times the check, run as an
# on-demand audit task runs; then it times the check again `rounds - 1` times over the same
# account (--reuse). SQLite lives in a temporary directory; PostgreSQL in a schema of its own,
# created here and dropped at the end (as the registry's conformance tests isolate themselves).
# Every run is bounded by `timeout`. Prints a Markdown table.
#
#   bench/audit.sh [certificates] [rounds]
#
# CERTFLEET_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/test) names the
# database; an empty value skips PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
certificates=${1:-1000000}
rounds=${2:-3}
limit=${AUDIT_RUN_TIMEOUT:-900}
pg_url=${CERTFLEET_BENCH_POSTGRES_URL-postgres://postgres@127.0.0.1:5432/test}
schema="cf_bench_audit_$$"
work=$(mktemp -d)
cleanup() {
  if [ -n "$pg_url" ] && command -v psql >/dev/null; then
    psql "$pg_url" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -q -p certfleet-loadgen
# A copy of our own: the target directory may be shared, and another build may replace the binary.
cp "${CARGO_TARGET_DIR:-target}/release/certfleet-loadgen" "$work/loadgen"

run() { # store args...
  timeout "$limit" "$work/loadgen" audit --certificates "$certificates" --json "$@"
}

results="$work/results.jsonl"
run --store "sqlite:$work/registry.db" >>"$results"
for _ in $(seq 2 "$rounds"); do run --store "sqlite:$work/registry.db" --reuse >>"$results"; done
if [ -n "$pg_url" ]; then
  run --store "$pg_url" --schema "$schema" >>"$results"
  for _ in $(seq 2 "$rounds"); do run --store "$pg_url" --schema "$schema" --reuse >>"$results"; done
else
  echo "SKIP: PostgreSQL (CERTFLEET_BENCH_POSTGRES_URL is empty)" >&2
fi

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| store | run | certificates seeded | seeding s | check s | scanned | findings | certificates/s | peak RSS MiB |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
runs = {}
for row in rows:
    runs[row["backend"]] = runs.get(row["backend"], 0) + 1
    seeded = f'{row["seeded_certificates"]:,}' if row["seeded"] else "reused"
    seeding = f'{row["seeding_seconds"]:.1f}' if row["seeded"] else "-"
    rss = f'{row["peak_rss_kib"] / 1024:.0f}' if row["peak_rss_kib"] else "-"
    print(f'| {row["backend"]} | {runs[row["backend"]]} | {seeded} | {seeding} | {row["check_seconds"]:.2f} | '
          f'{row["certificates_scanned"]:,} | {row["findings"]:,} | {row["certificates_per_second"]:,.0f} | {rss} |')
slowest = {}
for row in rows:
    slowest[row["backend"]] = max(slowest.get(row["backend"], 0), row["check_seconds"])
for backend, seconds in slowest.items():
    verdict = "meets" if seconds <= 10 else "MISSES"
    print(f"\n{backend}: slowest check {seconds:.2f} s, {verdict} the 10 s target", end="")
print()
PY
