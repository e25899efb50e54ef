#!/usr/bin/env bash
# Operator console benchmark (issue 16): the overview and the certificate search against a
# registry holding a large account, timed through the real server as a browser sees them (time
# to the first byte of the rendered page, curl's time_starttransfer).
#
#   bench/console.sh [certificates] [rounds]
#
# Seeds one account with certfleet-loadgen's audit scenario (real certificates, CN device-<n>, 1%
# expired or expiring within 10 days), gives it an access key, starts `certfleet server` with the
# console on loopback, signs in with curl and requests each page `rounds` times. The overview is
# cached per account for 15 s: round 1 computes it, the later rounds within 15 s are the cache.
# Prints a Markdown table. SQLite only (the data directory is a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."
certificates=${1:-1000000}
rounds=${2:-3}
work=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --locked -q -p certfleet -p certfleet-loadgen
cp "${CARGO_TARGET_DIR:-target}/release/certfleet" "${CARGO_TARGET_DIR:-target}/release/certfleet-loadgen" "$work/"
export CERTFLEET_KEY_PASSPHRASE=bench
printf '[console]\naddr = "127.0.0.1:0"\nexpiring_gauges_interval = "1h"\n' >"$work/config.toml"
data="$work/data"

start_server() {
  rm -f "$data/endpoints.json"
  RUST_LOG=info,certfleet_console=debug "$work/certfleet" server --data-dir "$data" --api-addr 127.0.0.1:0 \
    --mqtt-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 --config "$work/config.toml" >>"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do [ -s "$data/endpoints.json" ] && grep -q console "$data/endpoints.json" && return; sleep 0.1; done
  echo "the server did not start" >&2; tail -20 "$work/server.log" >&2; exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" || true; server_pid=""; }

start_server # first start: the data directory, the CAs, the first account
stop_server
timeout 3600 "$work/certfleet-loadgen" audit --store "sqlite:$data/registry.db" --certificates "$certificates" --json \
  >"$work/seed.json"
account=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["account"])' "$work/seed.json")
"$work/certfleet" account keys create --data-dir "$data" --account "$account" --profile bench >/dev/null
read -r key secret < <(python3 - "$data/credentials" <<'EOF'
import configparser, sys
parser = configparser.RawConfigParser(); parser.read(sys.argv[1])
print(parser["bench"]["aws_access_key_id"], parser["bench"]["aws_secret_access_key"])
EOF
)
start_server
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["console"])' "$data/endpoints.json")
jar="$work/cookies"
curl() { command curl -s --cacert "$data/server-root.pem" -b "$jar" -c "$jar" "$@"; }
token=$(curl "${url}signin" | sed -n 's/.*name="token" value="\([0-9a-f]*\)".*/\1/p')
status=$(curl -o /dev/null -w '%{http_code}' --data-urlencode "token=$token" --data-urlencode "access_key_id=$key" \
  --data-urlencode "secret_access_key=$secret" "${url}signin")
[ "$status" = 303 ] || { echo "sign-in answered $status" >&2; exit 1; }
ca=$(sqlite3 "$data/registry.db" "SELECT ca_certificate_id FROM certificates WHERE account_id = '$account' LIMIT 1")
soon=$(date -u -d '+20 days' +%F)

page() { # label path
  local times=()
  for _ in $(seq "$rounds"); do
    local answer
    answer=$(curl -o "$work/page.html" -w '%{http_code} %{time_starttransfer}' "${url}${2#/}")
    [ "${answer%% *}" = 200 ] || { echo "$1: HTTP ${answer%% *}" >&2; exit 1; }
    times+=("$(python3 -c "print(f'{float(\"${answer#* }\") * 1000:.0f}')")")
  done
  local rows
  rows=$(grep -o 'class="certificate-link"' "$work/page.html" | wc -l || true)
  echo "| $1 | \`${2}\` | $(IFS=' / '; echo "${times[*]}") | $rows |"
}

echo "| page | request | time to first byte, ms (rounds) | rows |"
echo "|---|---|---|---|"
page "overview" "/overview"
page "search, first page by ID" "/certificates"
page "search by ID prefix" "/certificates?id=ab12"
page "search by CN prefix" "/certificates?cn=device-4242"
page "search by CN prefix, 100 a page" "/certificates?cn=device-9&limit=100"
page "search by status (rare)" "/certificates?status=REVOKED"
page "search by CA" "/certificates?ca=$ca"
page "expiring before (1% match)" "/certificates?status=ACTIVE&before=$soon"
first=$(grep -o 'href="/certificates/[0-9a-f]*"' "$work/page.html" | sed -n '1s/href="\/certificates\/\(.*\)"/\1/p')
page "a certificate's page" "/certificates/$first"
curl -o "$work/page.html" "${url}certificates?cn=device-9"
next=$(grep -m1 -o 'id="next-page" href="[^"]*"' "$work/page.html" | sed 's/.*href="\([^"]*\)"/\1/; s/&amp;/\&/g')
page "search by CN prefix, next page" "$next"
sleep 16 # the overview's cache (15 s) has expired: computed again
page "overview, cache expired" "/overview"
echo
grep -o 'expiring gauges computed.*' "$work/server.log" | tail -1 || true
echo "seeding: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["seeded_certificates"], "certificates in", round(d["seeding_seconds"], 1), "s")' "$work/seed.json")"
