#!/usr/bin/env bash
# Replicas behind a real load balancer, by hand (not in CI): three proxies on one PostgreSQL
# behind HAProxy (Debian's package, TCP mode, health checks on each replica's /readyz), agents'
# traffic (curl through HTTPS_PROXY semantics, one keep-alive tunnel per client, a chat
# completion per request) through HAProxy, against a local TLS provider upstream (Python).
#
#   scripts/ha-bench.sh                       # release build first
#   AIBRIDGE_BIN=target/debug/aibridge-proxy scripts/ha-bench.sh
#
# Needs: haproxy, curl, openssl, python3 and Debian's PostgreSQL server binaries: the bench
# starts a private PostgreSQL cluster of its own (it restarts it in the last phase, so it never
# touches a server anyone else uses). Prints FIGURE lines; the README quotes a run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CLIENTS="${CLIENTS:-8}"        # concurrent agents
PER_CLIENT="${PER_CLIENT:-150}" # requests per agent per load run
ROUNDS="${ROUNDS:-3}"

bin="${AIBRIDGE_BIN:-}"
if [ -z "$bin" ]; then
    cargo build --release --locked --bin aibridge-proxy >&2
    bin=target/release/aibridge-proxy
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

work=$(mktemp -d)
chmod 0755 "$work"
pids=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- a private PostgreSQL cluster (as the postgres user when run as root) -------------------
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_port=$(free_port)
mkdir -p "$work/pg" && { [ "$(id -u)" != 0 ] || chown postgres "$work/pg"; }
as_pg "$pgbin/initdb" -D "$work/pg/data" -U postgres --auth=trust >/dev/null
pg_ctl() { as_pg "$pgbin/pg_ctl" -D "$work/pg/data" -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" -l "$work/pg/log" -w "$@" >/dev/null; }
pg_ctl start
db_url="postgres://postgres@127.0.0.1:$pg_port/postgres"
cleanup() {
    # Replicas restarted inside a phase's subshell are listed in $work/replicas.
    for p in "${pids[@]}" $(cat "$work/replicas" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pg_ctl stop -m immediate || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- the provider upstream: HTTPS, HTTP/1.1 keep-alive, a chat completion with usage -------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-upstream-ca \
    -keyout "$work/up-ca-key.pem" -out "$work/up-ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$work/up-key.pem" -out "$work/up.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$work/up.ext"
openssl x509 -req -in "$work/up.csr" -CA "$work/up-ca.pem" -CAkey "$work/up-ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$work/up.ext" -out "$work/up.pem" 2>/dev/null
up_port=$(free_port)
cat >"$work/upstream.py" <<'PY'
import http.server, json, ssl, sys
BODY = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}).encode()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
PY
python3 "$work/upstream.py" "$up_port" "$work/up.pem" "$work/up-key.pem" &
pids+=($!)

# --- shared state: CA, admin token, provider and agent token in PostgreSQL ------------------
"$bin" ca init --ca-cert "$work/ca.pem" --ca-key "$work/ca-key.pem" >/dev/null
echo "abpa_$(head -c 32 /dev/urandom | base64 | tr -d '=+/')" >"$work/admin-token"
chmod 0600 "$work/admin-token"
export BENCH_KEY=sk-bench-0123456789
"$bin" providers create --database-url "$db_url" --name openai --kind openai \
    --base-url "https://127.0.0.1:$up_port" --intercept-host api.openai.com \
    --key-env BENCH_KEY --allow-private-upstreams 127.0.0.0/8 >/dev/null
token=$("$bin" token create --database-url "$db_url" --user bench | tail -1)
admin_token=$(cat "$work/admin-token")

declare -a P A RPID
start_replica() { # index
    local i=$1
    "$bin" serve --listen "127.0.0.1:${P[$i]}" --admin-listen "127.0.0.1:${A[$i]}" \
        --database-url "$db_url" --ca-cert "$work/ca.pem" --ca-key "$work/ca-key.pem" \
        --admin-token-file "$work/admin-token" --upstream-ca-file "$work/up-ca.pem" \
        --allow-private-upstreams 127.0.0.0/8 --shutdown-grace 10s --log-level warn \
        >>"$work/replica$i.log" 2>&1 &
    RPID[$i]=$!
    echo "$!" >>"$work/replicas"
}
ready() { # index → 0 when /readyz is 200
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $admin_token" "http://127.0.0.1:${A[$1]}/readyz")" = 200 ]
}
wait_ready() {
    for _ in $(seq 1 300); do ready "$1" && return 0; sleep 0.1; done
    echo "replica $1 not ready" >&2; cat "$work/replica$1.log" >&2; return 1
}
for i in 0 1 2; do P[$i]=$(free_port); A[$i]=$(free_port); start_replica "$i"; done
for i in 0 1 2; do wait_ready "$i"; done

# --- HAProxy: TCP mode, /readyz checks with the admin token ---------------------------------
lb_port=$(free_port)
{
    echo "global"
    echo "    maxconn 4096"
    echo "defaults"
    echo "    mode tcp"
    echo "    timeout connect 2s"
    echo "    timeout client 60s"
    echo "    timeout server 60s"
    echo "    retries 3"
    echo "    option redispatch"
    echo "frontend agents"
    echo "    bind 127.0.0.1:$lb_port"
    echo "    default_backend proxies"
    echo "backend proxies"
    echo "    balance leastconn"
    echo "    option httpchk"
    echo "    http-check send meth GET uri /readyz hdr Authorization \"Bearer $admin_token\""
    echo "    http-check expect status 200"
    echo "    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions"
    for i in 0 1 2; do echo "    server r$i 127.0.0.1:${P[$i]} check port ${A[$i]}"; done
} >"$work/haproxy.cfg"
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
pids+=($!)
sleep 1.5

# --- load: CLIENTS agents, each PER_CLIENT requests on one keep-alive tunnel ----------------
# Writes "code request-id" per request to $out; curl reconnects (new tunnel) after a failure.
load() { # proxy_port out_file
    local port=$1 out=$2 cp=()
    for c in $(seq 1 "$CLIENTS"); do
        curl -s -o /dev/null -w '%{http_code} %header{x-request-id}\n' \
            --proxy "http://agent:$token@127.0.0.1:$port" --cacert "$work/ca.pem" \
            -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}' \
            --max-time 20 "https://api.openai.com/v1/chat/completions?n=[1-$PER_CLIENT]" >"$out.$c" 2>/dev/null &
        cp+=($!)
    done
    for p in "${cp[@]}"; do wait "$p" || true; done
    cat "$out".* >"$out"
    rm -f "$out".*
}
# Load through HAProxy for as long as the action (a background subshell) runs, at least once.
under() { # action_pid out_file
    local action=$1 out=$2 rounds=0
    : >"$out.all"
    while [ $rounds = 0 ] || kill -0 "$action" 2>/dev/null; do
        load "$lb_port" "$out.part"
        cat "$out.part" >>"$out.all"
        rounds=$((rounds + 1))
    done
    wait "$action" || true
    mv "$out.all" "$out"
}
summary() { # out_file
    echo "$(ok_count "$1")/$(wc -l <"$1") answered 200, $(fail_count "$1") failed; 200s without a record: $(records_missing "$1")"
}
ok_count() { grep -c '^200 ' "$1" || true; }
fail_count() { grep -vc '^200 ' "$1" || true; }
records_missing() { # every 200's request id has its record
    local ids=$work/ids.txt
    sleep 3 # records are written in batches: let the writers flush
    grep '^200 ' "$1" | awk '{print $2}' | sort -u >"$ids"
    psql -qtA "$db_url" -c "CREATE TEMP TABLE seen(id text); COPY seen FROM STDIN; SELECT count(*) FROM seen s WHERE NOT EXISTS (SELECT 1 FROM interceptions i WHERE i.request_id = s.id);" <"$ids" | tail -1
}
now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1])/(float(sys.argv[3])-float(sys.argv[2])):.0f}')" "$@"; }
total=$((CLIENTS * PER_CLIENT))

echo "# $CLIENTS clients x $PER_CLIENT requests, binary $(basename "$bin") $("$bin" --version)"

# Phase 1: throughput, direct to one replica vs through HAProxy (three replicas), alternating.
direct=(); lb=(); ratio=()
for r in $(seq 1 "$ROUNDS"); do
    t0=$(now); load "${P[0]}" "$work/direct.txt"; t1=$(now)
    d=$(rate "$(ok_count "$work/direct.txt")" "$t0" "$t1")
    t0=$(now); load "$lb_port" "$work/lb.txt"; t1=$(now)
    l=$(rate "$(ok_count "$work/lb.txt")" "$t0" "$t1")
    [ "$d" != 0 ] || { echo "no 200 direct:"; head -3 "$work/direct.txt"; tail -5 "$work/replica0.log"; }
    direct+=("$d"); lb+=("$l")
    ratio+=("$(python3 -c "print(f'{$l/$d:.2f}')")")
    echo "round $r: direct $d req/s ($(fail_count "$work/direct.txt") failed), through HAProxy $l req/s ($(fail_count "$work/lb.txt") failed)"
done
mm() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "min %s median %s max %s", a[1], a[int((NR+1)/2)], a[NR]}'; }
echo "FIGURE throughput direct (1 replica) req/s: $(mm "${direct[@]}")"
echo "FIGURE throughput via HAProxy (3 replicas) req/s: $(mm "${lb[@]}")"
echo "FIGURE LB/direct ratio: $(mm "${ratio[@]}")"

# Phase 2: a provider change made on replica 0 converging on replicas 1 and 2.
times=()
for n in $(seq 1 20); do
    t0=$(now)
    curl -s -o /dev/null -X PATCH -H "Authorization: Bearer $admin_token" -H 'content-type: application/json' \
        -d "{\"intercept_hosts\":[\"api.openai.com\",\"h$n.example\"]}" "http://127.0.0.1:${A[0]}/api/v1/providers/openai"
    for i in 1 2; do
        until curl -s -H "Authorization: Bearer $admin_token" "http://127.0.0.1:${A[$i]}/api/v1/router" | grep -q "h$n.example"; do sleep 0.002; done
    done
    t1=$(now)
    times+=("$(python3 -c "print(f'{($t1-$t0)*1000:.1f}')")")
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo "FIGURE provider change converged on all three (20 changes, ms, incl. the PATCH): p50 $(echo "$sorted" | awk 'NR==10') p99/max $(echo "$sorted" | tail -1)"

# Phase 3: kill -9 one replica under load.
( sleep 2; kill -9 "${RPID[1]}" ) &
under $! "$work/kill.txt"
echo "FIGURE kill -9 of one replica under load: $(summary "$work/kill.txt")"
start_replica 1; wait_ready 1; sleep 1.5

# Phase 4: rolling restart, SIGTERM one replica at a time under load (each drains, exits,
# restarts and turns ready before the next).
(
    for i in 0 1 2; do
        sleep 1
        kill -TERM "${RPID[$i]}"; while kill -0 "${RPID[$i]}" 2>/dev/null; do sleep 0.05; done
        start_replica "$i"; wait_ready "$i"; sleep 1.2
    done
) &
under $! "$work/roll.txt"
# The restarted replicas' pids are the subshell's: read them back for the cleanup.
echo "FIGURE rolling restart (SIGTERM one at a time) under load: $(summary "$work/roll.txt")"

# Phase 5: the PostgreSQL server restarted under load.
( sleep 2; pg_ctl restart -m fast ) &
under $! "$work/pg.txt"
echo "FIGURE PostgreSQL restarted under load: $(summary "$work/pg.txt")"
