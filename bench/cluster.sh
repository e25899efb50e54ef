#!/usr/bin/env bash
# Several certfleet nodes over NATS (issue 14), with certfleet-loadgen mqtt, MQTT 3.1.1 over
# mutual TLS 1.3, in one run, alternating setups round by round:
#
#   peer   nats-server's own MQTT listener (QoS 1, TLS with client certificates verified against
#          certfleet's device root, JetStream on, as its MQTT needs): 1 to 1 and fan-in, QoS 1
#   one    one certfleet node, no NATS (the embedded default, SQLite): QoS 0 and QoS 1 1 to 1,
#          fan-in at QoS 1, and a connect storm
#   same   three nodes over NATS on one PostgreSQL, publishers and subscriber on node 1
#   cross  the same three nodes, publishers on node 1, the subscriber on node 2
#   three  the connect storm spread over the three nodes (workers take the nodes in turn)
#
# The three-node setups need a certfleet with `server --nats-url`; without one they are left out
# and the section says so. The cluster's CPU time is its three nodes' plus its nats-server's.
# Writes its section of docs/benchmarks.md (between the cluster.sh marker comments; the rest of
# the file is left alone) and prints it.
#
#   CLUSTER_SMOKE=1 bench/cluster.sh   # small sizes, 2 s runs, one round: proves it works (< 2 min)
#   bench/cluster.sh                   # 3 rounds of 10 s runs (< 15 min on a quiet machine)
#
# Sizes (env, smoke / real default): CLUSTER_ROUNDS 1/3, CLUSTER_SECONDS 2/10 (per run),
# CLUSTER_DEVICES 16/64 (identities), CLUSTER_FANIN_PUBLISHERS 4/50, CLUSTER_CONNECT_WORKERS 6/12
# (a multiple of 3: each node gets as many); CLUSTER_POSTGRES_URL (default
# $CERTFLEET_TEST_POSTGRES_URL, else postgres://postgres@127.0.0.1:5432/test: the script makes a
# database of its own there and drops it); CLUSTER_DOC (the file to write; "-": none);
# CLUSTER_BIN_DIR (take certfleet and certfleet-loadgen from there instead of building release
# binaries: for trying the script; the figures of a debug build mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=${CLUSTER_SMOKE:-0}
pick() { if [ "$smoke" = 1 ]; then echo "$1"; else echo "$2"; fi; }
rounds=${CLUSTER_ROUNDS:-$(pick 1 3)}
seconds=${CLUSTER_SECONDS:-$(pick 2 10)}
devices=${CLUSTER_DEVICES:-$(pick 16 64)}
fanin_publishers=${CLUSTER_FANIN_PUBLISHERS:-$(pick 4 50)}
connect_workers=${CLUSTER_CONNECT_WORKERS:-$(pick 6 12)}
postgres=${CLUSTER_POSTGRES_URL:-${CERTFLEET_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}}
doc=${CLUSTER_DOC:-docs/benchmarks.md}
# Messages sent per publish run: a safety bound far above what the duration allows.
messages=$((seconds * 5000000))

work=$(mktemp -d)
pids=()
database=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$database" ] && psql "$postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

command -v nats-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server; }
if [ -n "${CLUSTER_BIN_DIR:-}" ]; then
  bin=$CLUSTER_BIN_DIR
else
  cargo build --release --locked -q -p certfleet -p certfleet-loadgen
  bin=${CARGO_TARGET_DIR:-target}/release
fi
loadgen=$bin/certfleet-loadgen
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mqtt_addr() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['mqtt_addr'])" "$1/endpoints.json"; }
wait_endpoints() { # data dir, log, pid
  for _ in $(seq 300); do
    [ -s "$1/endpoints.json" ] && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.1
  done
  echo "no $1/endpoints.json (the server exited, or 30 s passed):" >&2; tail -30 "$2" >&2; exit 1
}
wait_port() { # port
  for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',int(sys.argv[1])),1)" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2; exit 1
}

cat >"$work/certfleet.toml" <<CONF
[mqtt]
max_connections = 10000
CONF
export CERTFLEET_KEY_PASSPHRASE=bench RUST_LOG=warn

# one: a node alone, the embedded default (SQLite, no NATS).
"$bin/certfleet" server --config "$work/certfleet.toml" --data-dir "$work/one" --node-id one \
  --api-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$work/one.log" 2>&1 &
pids+=($!); one_pid=$!
wait_endpoints "$work/one" "$work/one.log" "$one_pid"
one_addr=$(mqtt_addr "$work/one")
"$loadgen" mqtt --data-dir "$work/one" --scenario connect --devices "$devices" --identities "$work/ids-one" \
  --duration 1 --count 1 --json >/dev/null

# peer: nats-server's MQTT listener, its own server certificate (ECDSA P-256, like certfleet's),
# client certificates verified against the device root of `one` (the same identities).
openssl ecparam -name prime256v1 -genkey -noout -out "$work/peer-ca.key"
openssl req -new -x509 -key "$work/peer-ca.key" -subj /CN=bench-nats-ca -days 2 -out "$work/peer-ca.pem" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/peer.key"
openssl req -new -key "$work/peer.key" -subj /CN=localhost -out "$work/peer.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/peer.ext"
openssl x509 -req -in "$work/peer.csr" -CA "$work/peer-ca.pem" -CAkey "$work/peer-ca.key" -CAcreateserial -days 2 \
  -extfile "$work/peer.ext" -out "$work/peer.pem" 2>/dev/null
peer_port=$(free_port)
cat >"$work/peer.conf" <<CONF
server_name: certfleet-bench-peer
listen: 127.0.0.1:$(free_port)
jetstream { store_dir: "$work/peer-js" }
mqtt {
  listen: 127.0.0.1:$peer_port
  tls {
    cert_file: "$work/peer.pem"
    key_file: "$work/peer.key"
    ca_file: "$work/one/device-root.pem"
    verify: true
    timeout: 5
  }
}
CONF
nats-server -c "$work/peer.conf" >"$work/peer.log" 2>&1 &
pids+=($!); peer_pid=$!
wait_port "$peer_port"

# The cluster: a nats-server (JetStream) and three nodes on a fresh PostgreSQL database, the
# same passphrase, node 1 first (it creates the account and the CAs).
if "$bin/certfleet" server --help | grep -q -- --nats-url; then
  cluster=1
  database="certfleet_bench_$(date +%s)_$$"
  psql "$postgres" -qc "CREATE DATABASE $database"
  database_url="${postgres%/*}/$database"
  nats_port=$(free_port)
  nats-server -n certfleet-bench-fabric -js -sd "$work/fabric-js" -a 127.0.0.1 -p "$nats_port" >"$work/fabric.log" 2>&1 &
  pids+=($!); nats_pid=$!
  wait_port "$nats_port"
  node_pids=()
  for node in n1 n2 n3; do
    "$bin/certfleet" server --config "$work/certfleet.toml" --data-dir "$work/$node" --node-id "$node" \
      --database-url "$database_url" --nats-url "nats://127.0.0.1:$nats_port" \
      --api-addr 127.0.0.1:0 --mqtt-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 >"$work/$node.log" 2>&1 &
    pids+=($!); node_pids+=($!)
    [ "$node" = n1 ] && wait_endpoints "$work/n1" "$work/n1.log" "$!"
  done
  wait_endpoints "$work/n2" "$work/n2.log" "${node_pids[1]}"; wait_endpoints "$work/n3" "$work/n3.log" "${node_pids[2]}"
  n1_addr=$(mqtt_addr "$work/n1"); n2_addr=$(mqtt_addr "$work/n2"); n3_addr=$(mqtt_addr "$work/n3")
  "$loadgen" mqtt --data-dir "$work/n1" --scenario connect --devices "$devices" --identities "$work/ids-cluster" \
    --duration 1 --count 1 --json >/dev/null
  cluster_pids=()
  for pid in "${node_pids[@]}" "$nats_pid"; do cluster_pids+=(--server-pid "$pid"); done
else
  cluster=0
  echo "this certfleet has no \`server --nats-url\`: the three-node setups are left out" >&2
fi

results="$work/results.jsonl"
commands="$work/commands.txt"
: >"$commands"
run() { # round, setup, command...
  local round=$1 setup=$2; shift 2
  local shown="$*"
  shown=${shown//$work/\$WORK}
  shown=${shown//--addr $one_addr/--addr \$ONE}
  shown=${shown//--addr 127.0.0.1:$peer_port/--addr \$PEER}
  if [ "$cluster" = 1 ]; then
    shown=${shown//$n1_addr/\$N1}; shown=${shown//$n2_addr/\$N2}; shown=${shown//$n3_addr/\$N3}
  fi
  shown=$(printf '%s' "$shown" | sed -E 's/(--server-pid [0-9]+ ?)+/--server-pid $PIDS /')
  printf '%s\n' "$shown" >>"$commands"
  local line
  if line=$("$@" --json 2>>"$work/loadgen.log"); then
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); r['round']=int(sys.argv[2]); r['setup']=sys.argv[3]; print(json.dumps(r))" \
      "$line" "$round" "$setup" >>"$results"
  else
    echo "round $round $setup failed: $shown" | tee -a "$work/loadgen.log" >&2
  fi
}
publishing() { # round, setup, scenario args...
  local round=$1 setup=$2; shift 2
  case $setup in
    peer) run "$round" peer "$loadgen" mqtt --addr "127.0.0.1:$peer_port" --cafile "$work/peer-ca.pem" \
            --identities "$work/ids-one" --devices "$devices" --server-pid "$peer_pid" --label peer "$@" ;;
    one) run "$round" one "$loadgen" mqtt --addr "$one_addr" --cafile "$work/one/server-root.pem" \
           --identities "$work/ids-one" --devices "$devices" --server-pid "$one_pid" --label one "$@" ;;
    same) run "$round" same "$loadgen" mqtt --addr "$n1_addr" --cafile "$work/n1/server-root.pem" \
            --identities "$work/ids-cluster" --devices "$devices" "${cluster_pids[@]}" --label same "$@" ;;
    cross) run "$round" cross "$loadgen" mqtt --addr "$n1_addr" --subscribe-addr "$n2_addr" \
             --cafile "$work/n1/server-root.pem" --identities "$work/ids-cluster" --devices "$devices" \
             "${cluster_pids[@]}" --label cross "$@" ;;
  esac
}

started=$(date -u +%FT%TZ)
setups=(peer one)
[ "$cluster" = 1 ] && setups+=(same cross)
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for setup in "${setups[@]}"; do
    if [ "$setup" != peer ]; then
      publishing "$round" "$setup" --scenario publish-qos0 --connections 1 --duration "$seconds" --count "$messages"
    fi
    publishing "$round" "$setup" --scenario publish-qos1 --connections 1 --duration "$seconds" --count "$messages"
    publishing "$round" "$setup" --scenario fan-in --connections "$fanin_publishers" --qos 1 --duration "$seconds" \
      --count "$messages"
  done
  run "$round" one "$loadgen" mqtt --addr "$one_addr" --cafile "$work/one/server-root.pem" --identities "$work/ids-one" \
    --devices "$devices" --server-pid "$one_pid" --label one --scenario connect --connections "$connect_workers" \
    --duration "$seconds"
  if [ "$cluster" = 1 ]; then
    run "$round" three "$loadgen" mqtt --addr "$n1_addr" --also-addr "$n2_addr" --also-addr "$n3_addr" \
      --cafile "$work/n1/server-root.pem" --identities "$work/ids-cluster" --devices "$devices" "${cluster_pids[@]}" \
      --label three --scenario connect --connections "$connect_workers" --duration "$seconds"
  fi
done
finished=$(date -u +%FT%TZ)
# Every node's counters of dropped messages, over the whole run (the lost deliveries' causes).
for node in one n1 n2 n3; do
  [ -s "$work/$node/endpoints.json" ] || continue
  metrics=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['metrics_addr'] or '')" "$work/$node/endpoints.json")
  [ -n "$metrics" ] && curl -fsS "http://$metrics/metrics" >"$work/metrics-$node.txt" 2>/dev/null || true
done

export CLUSTER_WORK=$work CLUSTER_SMOKE=$smoke CLUSTER_STARTED=$started CLUSTER_FINISHED=$finished CLUSTER_ROUNDS=$rounds CLUSTER_RAN=$cluster
export CLUSTER_SIZES="rounds=$rounds seconds=$seconds devices=$devices fanin_publishers=$fanin_publishers connect_workers=$connect_workers"
export CLUSTER_MACHINE="nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r); $(nats-server --version); $(rustc --version)"
export CLUSTER_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
export CLUSTER_BIN="${CLUSTER_BIN_DIR:+$CLUSTER_BIN_DIR (not a release build: the figures mean nothing)}"
python3 - "$results" "$commands" "$work/peer.conf" "$work/certfleet.toml" "$doc" <<'PY'
import json, os, re, statistics, sys

results, commands_file, peer_conf, certfleet_conf, doc = sys.argv[1:6]
rows = [json.loads(line) for line in open(results) if line.strip()] if os.path.exists(results) else []
smoke = os.environ.get("CLUSTER_SMOKE") == "1"
ran_cluster = os.environ.get("CLUSTER_RAN") == "1"
sizes = dict(item.split("=", 1) for item in os.environ["CLUSTER_SIZES"].split())
rounds = int(os.environ["CLUSTER_ROUNDS"])

def runs(scenario, setup):
    return sorted((r for r in rows if r["scenario"] == scenario and r["setup"] == setup), key=lambda r: r["round"])

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def get(scenario, setup, key):
    if key == "lost":
        return median([r.get("details", {}).get("lost") for r in runs(scenario, setup)])
    return median([r.get(key) for r in runs(scenario, setup)])

def fmt(value, digits=0):
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"

def ratio(a, b):
    return a / b if a is not None and b else None

SETUPS = {
    "peer": "nats-server MQTT (peer)",
    "one": "certfleet, one node",
    "same": "certfleet, 3 nodes, same node",
    "cross": "certfleet, 3 nodes, node 1 to node 2",
    "three": "certfleet, 3 nodes",
}
SCENARIOS = [
    ("PublishQos0", "QoS 0, 1 to 1"),
    ("PublishQos1", "QoS 1, 1 to 1"),
    ("FanIn", f"fan-in {sizes['fanin_publishers']} to 1, QoS 1"),
    ("Connect", f"connect storm, {sizes['connect_workers']} workers, full handshakes"),
]

out = []
w = out.append
w("<!-- cluster.sh:begin (generated by bench/cluster.sh; edits between these markers are overwritten) -->")
w("")
w("#### The latest run of bench/cluster.sh")
w("")
if smoke:
    w("> **Smoke run, not a measurement.** `CLUSTER_SMOKE=1` sizes (a few connections, 2-second runs, one")
    w("> round) on a busy shared machine, with the load tool, every node and both nats-servers on the same two")
    w("> cores. It proves every setup runs; the figures mean nothing as performance figures. Run")
    w("> `bench/cluster.sh` on a quiet machine for the real thing.")
    w("")
if os.environ.get("CLUSTER_BIN"):
    w(f"> Binaries from {os.environ['CLUSTER_BIN']}.")
    w("")
if not ran_cluster:
    w("> **The three-node setups did not run:** this certfleet has no `server --nats-url` (the NATS fabric")
    w("> had not landed). Only the peer and the single node were measured.")
    w("")
w(f"Generated by `{'CLUSTER_SMOKE=1 ' if smoke else ''}bench/cluster.sh` from {os.environ['CLUSTER_STARTED']} to {os.environ['CLUSTER_FINISHED']}.")
w(f"Machine: {os.environ['CLUSTER_MACHINE']}. Load average at the end: {os.environ['CLUSTER_LOAD']}.")
w("Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".")
w("")
w("Every server and the load tool run on one machine, over loopback: MQTT 3.1.1, TLS 1.3 with X25519,")
w("ECDSA P-256 device certificates made through certfleet's API (the peer verifies the same ones against")
w("certfleet's device root). Setups: **peer**, nats-server's own MQTT listener with JetStream (QoS 1 is")
w("what it is compared at); **one**, one certfleet node without NATS (SQLite, the embedded default);")
w("**same**, three certfleet nodes over one nats-server on one PostgreSQL, publishers and subscriber on")
w("node 1; **cross**, the same cluster, publishers on node 1 and the subscriber on node 2 (every message")
w("crosses NATS); **three**, the connect storm's workers spread over the three nodes in turn. Each round")
w("runs every setup in turn. Rates are wall-clock messages delivered (or connects) per second; \"per")
w("CPU-s\" divides the same count by the servers' user + system CPU seconds over the run: for the")
w("cluster, its three nodes' and its nats-server's together. Latency is end to end (a timestamp in the")
w("payload), or a connect's handshake + CONNECT/CONNACK. Medians over the rounds.")
w("")
w("| scenario | setup | ok/s | per CPU-s | p50 ms | p99 ms | lost | peak RSS MiB (largest process) |")
w("|---|---|---|---|---|---|---|---|")
for scenario, name in SCENARIOS:
    for setup, label in SETUPS.items():
        if not runs(scenario, setup):
            continue
        peak = max((r.get("server_peak_rss_mib") or 0) for r in runs(scenario, setup))
        w(f"| {name} | {label} | {fmt(get(scenario, setup, 'rate_per_second'))} | {fmt(get(scenario, setup, 'requests_per_server_cpu_second'))} "
          f"| {fmt(get(scenario, setup, 'p50_ms'), 2)} | {fmt(get(scenario, setup, 'p99_ms'), 2)} | {fmt(get(scenario, setup, 'lost'))} | {fmt(peak, 1)} |")
w("")

w("Ratios (medians; wall-clock rate, then per CPU-s):")
w("")
w("| comparison | rate | per CPU-s | p99 latency |")
w("|---|---|---|---|")
def compare(scenario, name, a, b):
    if not runs(scenario, a) or not runs(scenario, b):
        return
    rate = ratio(get(scenario, a, "rate_per_second"), get(scenario, b, "rate_per_second"))
    cpu = ratio(get(scenario, a, "requests_per_server_cpu_second"), get(scenario, b, "requests_per_server_cpu_second"))
    p99 = ratio(get(scenario, a, "p99_ms"), get(scenario, b, "p99_ms"))
    w(f"| {name}: {SETUPS[a]} / {SETUPS[b]} | {fmt(rate, 2)}x | {fmt(cpu, 2)}x | {fmt(p99, 2)}x |")
compare("PublishQos0", "QoS 0 1 to 1", "cross", "one")
compare("PublishQos1", "QoS 1 1 to 1", "cross", "one")
compare("FanIn", "fan-in QoS 1", "cross", "one")
compare("PublishQos1", "QoS 1 1 to 1", "same", "one")
compare("PublishQos1", "QoS 1 1 to 1", "one", "peer")
compare("FanIn", "fan-in QoS 1", "one", "peer")
compare("PublishQos1", "QoS 1 1 to 1", "cross", "peer")
compare("FanIn", "fan-in QoS 1", "cross", "peer")
compare("Connect", "connect storm", "three", "one")
w("")

scraped = [n for n in ("one", "n1", "n2", "n3") if os.path.exists(os.path.join(os.environ["CLUSTER_WORK"], f"metrics-{n}.txt"))]
drops = {}
for node in scraped:
    for line in open(os.path.join(os.environ["CLUSTER_WORK"], f"metrics-{node}.txt")):
        if re.match(r"certfleet_(broker_dropped|cluster_messages_total)", line):
            name, _, value = line.strip().rpartition(" ")
            if float(value) > 0:
                drops.setdefault(name, {})[node] = float(value)
if drops:
    w("Counters of dropped (and, for the cluster, carried) messages over the whole run, read from each node's")
    w("`/metrics` at the end (a lost delivery shows up here as the cause of its loss):")
    w("")
    w("| counter | " + " | ".join(scraped) + " |")
    w("|---|" + "---|" * len(scraped))
    for name in sorted(drops):
        w(f"| `{name}` | " + " | ".join(fmt(drops[name].get(n, 0)) for n in scraped) + " |")
    w("")

w("<details><summary>Every run</summary>")
w("")
w("| scenario | setup | round | ok | failed | ok/s | per CPU-s | servers' CPU s | p50 ms | p99 ms | max ms | sent | lost | notes |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for scenario, name in SCENARIOS:
    for setup in SETUPS:
        for r in runs(scenario, setup):
            d = r.get("details", {})
            failed = sum(r.get("failures", {}).values())
            w(f"| {name} | {setup} | {r['round']} | {fmt(r['ok'])} | {failed} | {fmt(r['rate_per_second'])} | {fmt(r.get('requests_per_server_cpu_second'))} "
              f"| {fmt(r.get('server_cpu_seconds'), 2)} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['max_ms'], 2)} "
              f"| {fmt(d.get('sent'))} | {fmt(d.get('lost'))} | {'; '.join(r.get('notes', []))} |")
expected = {("PublishQos1", "peer"), ("FanIn", "peer")} | {(s, x) for s in ("PublishQos0", "PublishQos1", "FanIn") for x in ("one",) + (("same", "cross") if ran_cluster else ())} \
    | {("Connect", "one")} | ({("Connect", "three")} if ran_cluster else set())
missing = sorted((s, x, len(runs(s, x))) for s, x in expected if len(runs(s, x)) < rounds)
w("")
if missing:
    w("Runs that failed (see the script's output): " + ", ".join(f"{s} on {x} ({n} of {rounds} rounds ran)" for s, x, n in missing) + ".")
    w("")
w("The load tool's commands of the first round (`$WORK` is the script's temporary directory, `$ONE`,")
w("`$PEER`, `$N1`.. the MQTT addresses, `$PIDS` the servers' process IDs):")
w("")
w("```sh")
seen = []
for line in open(commands_file):
    line = line.strip()
    if line and line not in seen:
        seen.append(line)
for line in seen:
    w(line)
w("```")
w("")
w("certfleet's configuration file (every node; the nodes of the cluster add `--node-id nK --database-url")
w("... --nats-url nats://127.0.0.1:PORT`, and their nats-server runs `nats-server -js -sd DIR -a 127.0.0.1 -p PORT`):")
w("")
w("```toml")
w(open(certfleet_conf).read().strip())
w("```")
w("")
w("The peer's configuration (nats-server; ports and paths replaced):")
w("")
w("```")
conf = open(peer_conf).read().strip()
conf = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", conf)
conf = conf.replace(os.environ["CLUSTER_WORK"], "$WORK")
w(conf)
w("```")
w("")
w("</details>")
w("")
w("<!-- cluster.sh:end -->")
section = "\n".join(out) + "\n"
print(section)
if doc != "-":
    text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
    begin, end = text.find("<!-- cluster.sh:begin"), text.find("<!-- cluster.sh:end -->")
    if begin >= 0 and end > begin:
        text = text[:begin] + section + text[end + len("<!-- cluster.sh:end -->\n"):]
    else:
        text = text.rstrip("\n") + "\n\n## Several nodes over NATS (issue 14)\n\n" + section
    open(doc, "w").write(text)
    print(f"(written to {doc}, between the cluster.sh markers)", file=sys.stderr)
PY
if [ -s "$work/loadgen.log" ]; then
  echo; echo "load tool messages:"; sort "$work/loadgen.log" | uniq -c | sort -rn | head -20
fi
