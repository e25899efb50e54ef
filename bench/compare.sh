#!/usr/bin/env bash
# certfleet's gateway against Mosquitto (issue 7): the same device certificates (ECDSA P-256,
# made through certfleet's API), server certificates of the same key type, TLS 1.3, MQTT 3.1.1,
# every scenario of `certfleet-loadgen mqtt` run against both servers in one run, alternating
# (A B A B) for COMPARE_ROUNDS rounds, plus the in-process rustls handshake ceiling
# (`certfleet-loadgen ceiling`) in each round. Writes its section of docs/benchmarks.md
# (between the compare.sh marker comments; the rest of the file is left alone) and prints it.
#
#   COMPARE_SMOKE=1 bench/compare.sh   # small sizes, 2 s runs: proves every scenario works
#   bench/compare.sh                   # the issue's sizes (needs a quiet machine, ~1 h)
#
# Sizes (env, smoke default / real default):
#   COMPARE_ROUNDS 3/3, COMPARE_SECONDS 2/10 (per run), COMPARE_DEVICES 16/64 (identities for
#   every scenario but revocation), COMPARE_CONNECT_WORKERS 4/8, COMPARE_FANIN_PUBLISHERS 4/100,
#   COMPARE_FANOUT_SUBSCRIBERS 20/1000, COMPARE_FAN_QOS 1/1, COMPARE_FANOUT_RATE 0/0 (messages
#   per second published, 0: as fast as the QoS 1 window allows), COMPARE_IDLE_CONNECTIONS
#   50/50000, COMPARE_IDLE_HOLD 2/30, COMPARE_OPEN_SECONDS 20/300 (bound on opening idle and
#   revocation fleets), COMPARE_REVOKE_CONNECTIONS 50/10000, COMPARE_REVOKE_SAMPLE 10/100,
#   COMPARE_CEILING_SECONDS 2/10, COMPARE_POLICIES enforced|unchecked (certfleet's IoT policies;
#   unchecked sets mqtt.danger_authorize_everything), COMPARE_DOC (the file to write; "-": none).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=${COMPARE_SMOKE:-0}
pick() { if [ "$smoke" = 1 ]; then echo "$1"; else echo "$2"; fi; }
rounds=${COMPARE_ROUNDS:-3}
seconds=${COMPARE_SECONDS:-$(pick 2 10)}
devices=${COMPARE_DEVICES:-$(pick 16 64)}
connect_workers=${COMPARE_CONNECT_WORKERS:-$(pick 4 8)}
fanin_publishers=${COMPARE_FANIN_PUBLISHERS:-$(pick 4 100)}
fanout_subscribers=${COMPARE_FANOUT_SUBSCRIBERS:-$(pick 20 1000)}
fan_qos=${COMPARE_FAN_QOS:-1}
fanout_rate=${COMPARE_FANOUT_RATE:-0}
idle_connections=${COMPARE_IDLE_CONNECTIONS:-$(pick 50 50000)}
idle_hold=${COMPARE_IDLE_HOLD:-$(pick 2 30)}
open_seconds=${COMPARE_OPEN_SECONDS:-$(pick 20 300)}
revoke_connections=${COMPARE_REVOKE_CONNECTIONS:-$(pick 50 10000)}
revoke_sample=${COMPARE_REVOKE_SAMPLE:-$(pick 10 100)}
ceiling_seconds=${COMPARE_CEILING_SECONDS:-$(pick 2 10)}
policies=${COMPARE_POLICIES:-enforced}
doc=${COMPARE_DOC:-docs/benchmarks.md}
# Messages sent per publish run: a safety bound far above what the duration allows.
messages=$((seconds * 5000000))

work=$(mktemp -d)
pids=()
mq_dir=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work" ${mq_dir:+"$mq_dir"}
}
trap cleanup EXIT

# Both servers and the tool inherit the open-files limit: one file per connection and then some.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
needed_files=$((idle_connections > revoke_connections ? idle_connections : revoke_connections))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((needed_files + 1024)) ]; then
  echo "warning: ulimit -n is $(ulimit -n), $((needed_files + 1024)) wanted; raise the hard limit (e.g. ulimit -Hn) first" >&2
fi

command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto; }
cargo build --release --locked -q -p certfleet -p certfleet-loadgen
bin=${CARGO_TARGET_DIR:-target}/release
loadgen=$bin/certfleet-loadgen
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# certfleet: release build, ports picked by the kernel and read from endpoints.json.
cat >"$work/certfleet.toml" <<CONF
[mqtt]
max_connections = 200000
danger_authorize_everything = $([ "$policies" = unchecked ] && echo true || echo false)
CONF
CERTFLEET_KEY_PASSPHRASE=bench RUST_LOG=warn "$bin/certfleet" server --config "$work/certfleet.toml" \
  --data-dir "$work/cf" --api-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 >"$work/certfleet.log" 2>&1 &
pids+=($!); certfleet_pid=$!
for _ in $(seq 300); do [ -s "$work/cf/endpoints.json" ] && break; sleep 0.1; done
[ -s "$work/cf/endpoints.json" ] || { cat "$work/certfleet.log"; exit 1; }
certfleet_addr=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['mqtt_addr'])" "$work/cf/endpoints.json")
# The device identities every scenario but revocation uses, made through the API, saved for Mosquitto.
"$loadgen" mqtt --data-dir "$work/cf" --scenario connect --devices "$devices" --identities "$work/ids" \
  --duration 1 --count 1 --json >/dev/null
echo "$loadgen mqtt --data-dir \$WORK/cf --scenario connect --devices $devices --identities \$WORK/ids --duration 1 --count 1 --json  # makes the identities" >"$work/commands.txt"

# Mosquitto: its own server certificate (ECDSA P-256, like certfleet's), client certificates
# verified against certfleet's device root, TLS 1.3 only, a fair configuration.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/mq-ca.key"
openssl req -new -x509 -key "$work/mq-ca.key" -subj /CN=bench-mosquitto-ca -days 2 -out "$work/mq-ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/mq.key"
openssl req -new -key "$work/mq.key" -subj /CN=localhost -out "$work/mq.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/mq.ext"
openssl x509 -req -in "$work/mq.csr" -CA "$work/mq-ca.pem" -CAkey "$work/mq-ca.key" -CAcreateserial -days 2 \
  -extfile "$work/mq.ext" -out "$work/mq.pem" 2>/dev/null
# Mosquitto drops root for its own user: give it readable copies (throwaway bench material).
mq_dir=$(mktemp -d /tmp/certfleet-compare-mosquitto.XXXXXX)
cp "$work/cf/device-root.pem" "$work/mq.pem" "$work/mq.key" "$mq_dir/"
chmod 755 "$mq_dir"; chmod 644 "$mq_dir"/*
mq_port=$(free_port)
cat >"$work/mosquitto.conf" <<CONF
per_listener_settings false
listener $mq_port 127.0.0.1
max_connections -1
cafile $mq_dir/device-root.pem
certfile $mq_dir/mq.pem
keyfile $mq_dir/mq.key
tls_version tlsv1.3
require_certificate true
use_identity_as_username true
set_tcp_nodelay true
max_inflight_messages 100
max_queued_messages 10000000
persistence false
log_type error
CONF
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!); mosquitto_pid=$!
for _ in $(seq 50); do python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',int(sys.argv[1])),1)" "$mq_port" 2>/dev/null && break; sleep 0.1; done

results="$work/results.jsonl"
commands="$work/commands.txt"
run() { # round, server, command...
  local round=$1 server=$2; shift 2
  printf '%s\n' "$*" | sed -e "s#$work#\$WORK#g" -e "s#--addr $certfleet_addr#--addr \$CERTFLEET_MQTT_ADDR#" \
    -e "s#--addr 127.0.0.1:$mq_port#--addr \$MOSQUITTO_ADDR#" -e "s#--server-pid $certfleet_pid #--server-pid \$CERTFLEET_PID #" \
    -e "s#--server-pid $mosquitto_pid #--server-pid \$MOSQUITTO_PID #" >>"$commands"
  local line
  if line=$("$@" --json 2>>"$work/loadgen.log"); then
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['round']=int(sys.argv[2]); r['server']=sys.argv[3]; print(json.dumps(r))" \
      "$line" "$round" "$server" >>"$results"
  else
    echo "round $round $server failed: $*" | tee -a "$work/loadgen.log" >&2
  fi
}
mqtt() { # round, server, scenario args...
  local round=$1 server=$2; shift 2
  if [ "$server" = certfleet ]; then
    run "$round" certfleet "$loadgen" mqtt --addr "$certfleet_addr" --cafile "$work/cf/server-root.pem" \
      --identities "$work/ids" --devices "$devices" --server-pid "$certfleet_pid" --label certfleet "$@"
  else
    run "$round" mosquitto "$loadgen" mqtt --addr "127.0.0.1:$mq_port" --cafile "$work/mq-ca.pem" \
      --identities "$work/ids" --devices "$devices" --server-pid "$mosquitto_pid" --label mosquitto "$@"
  fi
}

started=$(date -u +%FT%TZ)
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  run "$round" ceiling "$loadgen" ceiling --mode full --seconds "$ceiling_seconds"
  run "$round" ceiling "$loadgen" ceiling --mode resumed --seconds "$ceiling_seconds"
  for server in certfleet mosquitto; do
    mqtt "$round" "$server" --scenario connect --connections "$connect_workers" --duration "$seconds"
    mqtt "$round" "$server" --scenario connect-resumed --connections "$connect_workers" --duration "$seconds"
    mqtt "$round" "$server" --scenario publish-qos0 --connections 1 --duration "$seconds" --count "$messages"
    mqtt "$round" "$server" --scenario publish-qos1 --connections 1 --duration "$seconds" --count "$messages"
    mqtt "$round" "$server" --scenario fan-in --connections "$fanin_publishers" --qos "$fan_qos" --duration "$seconds" \
      --count "$messages"
    mqtt "$round" "$server" --scenario fan-out --connections "$fanout_subscribers" --qos "$fan_qos" \
      --publish-rate "$fanout_rate" --duration "$seconds" --count "$messages"
    mqtt "$round" "$server" --scenario idle --connections "$idle_connections" --hold "$idle_hold" \
      --duration "$open_seconds"
  done
  # Revocation: certfleet only (Mosquitto has no API to revoke through); fresh identities each
  # round, since revoked certificates cannot be made active again.
  run "$round" certfleet "$loadgen" mqtt --data-dir "$work/cf" --scenario revocation \
    --connections "$revoke_connections" --revoke "$revoke_sample" --duration "$open_seconds" \
    --server-pid "$certfleet_pid" --label certfleet
done
finished=$(date -u +%FT%TZ)

export COMPARE_SMOKE=$smoke COMPARE_STARTED=$started COMPARE_FINISHED=$finished COMPARE_ROUNDS=$rounds
export COMPARE_SIZES="rounds=$rounds seconds=$seconds devices=$devices connect_workers=$connect_workers fanin_publishers=$fanin_publishers fanout_subscribers=$fanout_subscribers fan_qos=$fan_qos fanout_rate=$fanout_rate idle_connections=$idle_connections idle_hold=$idle_hold open_seconds=$open_seconds revoke_connections=$revoke_connections revoke_sample=$revoke_sample ceiling_seconds=$ceiling_seconds policies=$policies"
export COMPARE_MACHINE="nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r); $(mosquitto -h 2>/dev/null | head -1 || true); $(rustc --version)"
export COMPARE_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$results" "$commands" "$work/mosquitto.conf" "$work/certfleet.toml" "$doc" <<'PY'
import json, os, re, statistics, sys

results, commands_file, mosquitto_conf, certfleet_conf, doc = sys.argv[1:6]
rows = [json.loads(line) for line in open(results) if line.strip()]
smoke = os.environ.get("COMPARE_SMOKE") == "1"
sizes = dict(item.split("=", 1) for item in os.environ["COMPARE_SIZES"].split())
rounds = int(os.environ["COMPARE_ROUNDS"])

def runs(scenario, server):
    return sorted((r for r in rows if r["scenario"] == scenario and r["server"] == server), key=lambda r: r["round"])

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(value, digits=0):
    if value is None:
        return "-"
    if isinstance(value, float) and digits == 0:
        return f"{value:,.0f}"
    if isinstance(value, (int,)) and digits == 0:
        return f"{value:,}"
    return f"{value:,.{digits}f}"

def ratio(a, b):
    return a / b if a is not None and b else None

def detail(row, key):
    return row.get("details", {}).get(key)

SCENARIOS = [
    ("Connect", "connect storm, full handshakes"),
    ("ConnectResumed", "connect storm, TLS resumption"),
    ("PublishQos0", "QoS 0, 1 to 1"),
    ("PublishQos1", "QoS 1, 1 to 1"),
    ("FanIn", f"fan-in {sizes['fanin_publishers']} to 1, QoS {sizes['fan_qos']}"),
    ("FanOut", f"fan-out 1 to {sizes['fanout_subscribers']}, QoS {sizes['fan_qos']}"),
    ("Idle", f"{sizes['idle_connections']} idle connections"),
    ("Revocation", f"revocation, {sizes['revoke_connections']} connected"),
]
med = {}
for scenario, _ in SCENARIOS:
    for server in ("certfleet", "mosquitto"):
        rs = runs(scenario, server)
        if rs:
            med[(scenario, server)] = {
                key: median([r.get(key) for r in rs])
                for key in ("rate_per_second", "requests_per_server_cpu_second", "p50_ms", "p99_ms", "max_ms", "server_cpu_seconds")
            }
            med[(scenario, server)]["peak_rss_mib"] = max((r.get("server_peak_rss_mib") or 0) for r in rs)
ceiling = {mode: runs(f"Ceiling{mode}", "ceiling") for mode in ("Full", "Resumed")}
ceiling_med = {mode: {k: median([r[k] for r in rs]) for k in ("handshakes_per_core_second", "handshakes_per_server_core_second")} for mode, rs in ceiling.items() if rs}

out = []
w = out.append
w("<!-- compare.sh:begin (generated by bench/compare.sh; edits between these markers are overwritten) -->")
w("")
w("#### The latest run of bench/compare.sh")
w("")
if smoke:
    w("> **Smoke run, not a measurement.** `COMPARE_SMOKE=1` sizes (tens of connections, 2-second runs) on a")
    w("> busy shared machine (other builds on the same two cores), with the load tool on those cores too. It")
    w("> proves every scenario runs against both servers; the figures below mean nothing as performance")
    w("> figures and the targets are not judged. Run `bench/compare.sh` on a quiet machine for the real thing.")
    w("")
w(f"Generated by `{'COMPARE_SMOKE=1 ' if smoke else ''}bench/compare.sh` from {os.environ['COMPARE_STARTED']} to {os.environ['COMPARE_FINISHED']}.")
w(f"Machine: {os.environ['COMPARE_MACHINE']}. Load average at the end: {os.environ['COMPARE_LOAD']}.")
w("Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".")
w("")
w("Both servers run on the machine the load tool runs on, on loopback, with the same device certificates")
w("(ECDSA P-256, made through certfleet's API), server certificates of the same key type, TLS 1.3 with")
w("X25519 (the tool offers only X25519, so both do the same key exchange), MQTT 3.1.1. Each round runs every")
w("scenario against certfleet, then against Mosquitto (A B A B), then the next round; the in-process ceiling")
w("is measured at the start of each round. Rates are wall-clock; \"per CPU-s\" divides the same count by the")
w("server's user + system CPU seconds over the run (`/proc/<pid>/stat`), which is the fairer figure on a")
w("shared machine. Mosquitto is single-threaded (one event loop, one core at most): on a 2-core machine")
w("where the load tool takes the other core, wall-clock rates favour neither much, but on bigger machines")
w("certfleet's multi-threaded runtime can use cores Mosquitto cannot; the per-CPU-s figures compare the")
w("work per unit of CPU regardless. Mosquitto is configured to drop nothing (`max_queued_messages`")
w("10,000,000). certfleet keeps AWS's bound (1,000 queued messages per session) but applies flow control")
w("through the broker: a publisher whose messages fill a connected subscriber's queue is not read from")
w("until the queue is half empty (a subscriber that stays stuck for 2 s is dropped past the bound instead);")
w("both allow 100 QoS 1 messages in flight per client. Both offer TLS 1.3 session tickets (certfleet:")
w("stateless, one per full handshake). certfleet's IoT policies: "
  f"**{sizes['policies']}** (an allow-all policy on every device); Mosquitto has no ACL.")
w("")

# Targets.
def status(ok, big_enough=True):
    if smoke:
        return "smoke run: not judged"
    if ok is None:
        return "no figure"
    if not big_enough:
        return ("met" if ok else "not met") + " (at smaller sizes than the target's)"
    return "met" if ok else "not met"

def get(scenario, server, key):
    return med.get((scenario, server), {}).get(key)

w("#### Against the issue's targets")
w("")
w("| target | figure (medians) | status |")
w("|---|---|---|")
connect_cpu = ratio(get("Connect", "certfleet", "requests_per_server_cpu_second"), get("Connect", "mosquitto", "requests_per_server_cpu_second"))
w(f"| connect storm ≥ 3x Mosquitto per server CPU-s | {fmt(connect_cpu, 2)}x ({fmt(get('Connect','certfleet','requests_per_server_cpu_second'))} vs {fmt(get('Connect','mosquitto','requests_per_server_cpu_second'))} per CPU-s) | {status(connect_cpu is not None and connect_cpu >= 3 if connect_cpu else None)} |")
ceiling_server = ceiling_med.get("Full", {}).get("handshakes_per_server_core_second")
of_ceiling = ratio(get("Connect", "certfleet", "requests_per_server_cpu_second"), ceiling_server)
w(f"| connect storm ≥ 60 % of the in-process rustls ceiling | {fmt(of_ceiling * 100 if of_ceiling else None, 0)} % (certfleet {fmt(get('Connect','certfleet','requests_per_server_cpu_second'))} per server CPU-s; ceiling {fmt(ceiling_server)} per server-side core-s) | {status(of_ceiling >= 0.6 if of_ceiling else None)} |")
for scenario, name in (("PublishQos0", "QoS 0 1-to-1"), ("PublishQos1", "QoS 1 1-to-1")):
    wall = ratio(get(scenario, "certfleet", "rate_per_second"), get(scenario, "mosquitto", "rate_per_second"))
    cpu = ratio(get(scenario, "certfleet", "requests_per_server_cpu_second"), get(scenario, "mosquitto", "requests_per_server_cpu_second"))
    w(f"| {name} ≥ 1.5x Mosquitto | {fmt(wall, 2)}x wall-clock, {fmt(cpu, 2)}x per CPU-s | {status(wall >= 1.5 if wall else None)} |")
wall = ratio(get("FanOut", "certfleet", "rate_per_second"), get("FanOut", "mosquitto", "rate_per_second"))
cpu = ratio(get("FanOut", "certfleet", "requests_per_server_cpu_second"), get("FanOut", "mosquitto", "requests_per_server_cpu_second"))
w(f"| fan-out 1-to-1000 ≥ 1x Mosquitto | 1 to {sizes['fanout_subscribers']}: {fmt(wall, 2)}x wall-clock, {fmt(cpu, 2)}x per CPU-s | {status(wall >= 1 if wall else None, int(sizes['fanout_subscribers']) >= 1000)} |")
idle = runs("Idle", "certfleet")
established = min((r["ok"] for r in idle), default=None)
# The worst round, not the median: a later round reuses memory an earlier one left behind.
per_conn = max((detail(r, "server_rss_per_connection_kib") for r in idle if detail(r, "server_rss_per_connection_kib") is not None), default=None)
w(f"| 50,000 idle connections at ≤ 16 KiB server memory each | certfleet: {fmt(established)} of {sizes['idle_connections']} established (worst round), {fmt(per_conn, 1)} KiB RSS per connection (worst round) | {status(per_conn <= 16 and established >= int(sizes['idle_connections']) if per_conn is not None and established is not None else None, int(sizes['idle_connections']) >= 50000)} |")
revocation = runs("Revocation", "certfleet")
p99 = get("Revocation", "certfleet", "p99_ms")
not_closed = sum(detail(r, "not_closed") or 0 for r in revocation)
w(f"| revocation p99 ≤ 1 s with 10,000 connected | {fmt(p99, 1)} ms p99 with {sizes['revoke_connections']} connected, {sizes['revoke_sample']} revoked per round; {not_closed} never closed | {status(p99 <= 1000 and not_closed == 0 if p99 is not None else None, int(sizes['revoke_connections']) >= 10000)} |")
w("")

w("#### Medians and ratios")
w("")
w("| scenario | certfleet ok/s | Mosquitto ok/s | ratio | certfleet per CPU-s | Mosquitto per CPU-s | ratio | p50 / p99 ms certfleet | p50 / p99 ms Mosquitto | peak RSS MiB cf / mq |")
w("|---|---|---|---|---|---|---|---|---|---|")
for scenario, name in SCENARIOS:
    cf, mq = med.get((scenario, "certfleet")), med.get((scenario, "mosquitto"))
    if not cf and not mq:
        continue
    g = lambda m, k: m.get(k) if m else None
    w(f"| {name} | {fmt(g(cf,'rate_per_second'))} | {fmt(g(mq,'rate_per_second')) if mq else 'n/a'} | {fmt(ratio(g(cf,'rate_per_second'), g(mq,'rate_per_second')), 2) if mq else 'n/a'} "
      f"| {fmt(g(cf,'requests_per_server_cpu_second'))} | {fmt(g(mq,'requests_per_server_cpu_second')) if mq else 'n/a'} | {fmt(ratio(g(cf,'requests_per_server_cpu_second'), g(mq,'requests_per_server_cpu_second')), 2) if mq else 'n/a'} "
      f"| {fmt(g(cf,'p50_ms'),2)} / {fmt(g(cf,'p99_ms'),2)} | {(fmt(g(mq,'p50_ms'),2) + ' / ' + fmt(g(mq,'p99_ms'),2)) if mq else 'n/a'} | {fmt(g(cf,'peak_rss_mib'),1)} / {fmt(g(mq,'peak_rss_mib'),1) if mq else 'n/a'} |")
w("")
w("Revocation is certfleet-only: Mosquitto has no API to revoke a certificate through (n/a). For idle")
w("connections the rate is connections opened per second and the latency is the time to open one")
w("(handshake + CONNECT/CONNACK, with many in flight); for publish scenarios the rate counts messages")
w("delivered to subscribers and the latency is end to end (a timestamp in the payload).")
w("")
w("In-process ceiling (`certfleet-loadgen ceiling`: a rustls client and server in one thread pumping bytes")
w("into each other, mutual TLS 1.3, ECDSA P-256, X25519; the server side's share of the CPU time is taken")
w("from the time spent in each side's calls):")
w("")
w("| mode | round | handshakes per core-s (client + server) | per server-side core-s |")
w("|---|---|---|---|")
for mode, rs in ceiling.items():
    for r in rs:
        w(f"| {mode.lower()} | {r['round']} | {fmt(r['handshakes_per_core_second'])} | {fmt(r['handshakes_per_server_core_second'])} |")
    if rs:
        w(f"| {mode.lower()} | median | {fmt(ceiling_med[mode]['handshakes_per_core_second'])} | {fmt(ceiling_med[mode]['handshakes_per_server_core_second'])} |")
w("")

w("#### Every round")
w("")
w("| scenario | server | round | ok | failed | ok/s | per CPU-s | server CPU s | p50 ms | p99 ms | max ms | peak RSS MiB | details |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
SHOWN = ("resumed", "full", "resumption_offered", "sent", "lost", "established", "server_rss_before_kib", "server_rss_after_kib",
         "server_rss_per_connection_kib", "source_addresses", "connected", "revoked", "not_closed", "collateral_closes", "api_p50_ms")
for scenario, name in SCENARIOS:
    for server in ("certfleet", "mosquitto"):
        for r in runs(scenario, server):
            details = ", ".join(f"{k} {json.dumps(r['details'][k])}" for k in SHOWN if k in r.get("details", {}))
            notes = "; ".join(r.get("notes", []))
            failed = sum(r.get("failures", {}).values())
            w(f"| {name} | {server} | {r['round']} | {fmt(r['ok'])} | {failed} | {fmt(r['rate_per_second'])} | {fmt(r.get('requests_per_server_cpu_second'))} "
              f"| {fmt(r.get('server_cpu_seconds'), 2)} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['max_ms'], 2)} | {fmt(r.get('server_peak_rss_mib'), 1)} "
              f"| {details}{' — ' + notes if notes else ''} |")
missing = [(s, v, n) for s, _ in SCENARIOS for v in ("certfleet", "mosquitto") for n in [len(runs(s, v))] if n < rounds and not (s == "Revocation" and v == "mosquitto")]
w("")
if missing:
    w("Runs that failed (see the script's output): " + ", ".join(f"{s} on {v} ({n} of {rounds} rounds ran)" for s, v, n in missing) + ".")
    w("")

w("#### How it was run")
w("")
w("The load tool's commands of the first round (`$WORK` is the script's temporary directory; later rounds repeat them):")
w("")
w("```sh")
seen = []
for line in open(commands_file):
    line = line.strip()
    if line not in seen:
        seen.append(line)
for line in seen:
    w(line)
w("```")
w("")
w("certfleet (release build, `certfleet server --config $WORK/certfleet.toml --data-dir $WORK/cf --api-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0`, ports read from `endpoints.json`):")
w("")
w("```toml")
w(open(certfleet_conf).read().strip())
w("```")
w("")
w("Mosquitto (its own process on a free loopback port; not the system one):")
w("")
w("```")
w(re.sub(r"/tmp/certfleet-compare-mosquitto\.\w+", "$MQ_DIR", re.sub(r"listener \d+", "listener $PORT", open(mosquitto_conf).read().strip())))
w("```")
w("")
w("<!-- compare.sh:end -->")
section = "\n".join(out) + "\n"
print(section)
if doc != "-":
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    begin, end = text.find("<!-- compare.sh:begin"), text.find("<!-- compare.sh:end -->")
    if begin >= 0 and end > begin:
        text = text[:begin] + section + text[end + len("<!-- compare.sh:end -->\n"):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    open(doc, "w").write(text)
    print(f"(written to {doc}, between the compare.sh markers)", file=sys.stderr)
PY
if [ -s "$work/loadgen.log" ]; then
  echo; echo "load tool messages:"; sort "$work/loadgen.log" | uniq -c | sort -rn | head -20
fi
