# Private PostgreSQL and Redis on free loopback ports, for scripts/test and
# scripts/bench. Source this file, then call `start_services`: it installs
# what is missing (Debian packages, as root), starts both in a temporary
# directory, exports SERVICES_PG_URL and SERVICES_REDIS_URL, and stops
# exactly what it started when the shell exits.

services_log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

install_services() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ -x "$(pg_bin)/initdb" ] || missing+=(postgresql)
  if [ ${#missing[@]} -gt 0 ]; then
    services_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# A free port whose cluster bus port (+10000) is free too.
free_cluster_port() {
  python3 -c '
import socket
while True:
    a, b = socket.socket(), socket.socket()
    a.bind(("127.0.0.1", 0))
    port = a.getsockname()[1]
    if port + 10000 < 65536:
        try:
            b.bind(("127.0.0.1", port + 10000))
            print(port)
            break
        except OSError:
            pass
    a.close(); b.close()
'
}

# A private Redis Cluster on loopback: 3 primaries with a replica each,
# joined with `redis-cli --cluster create`. Exports SERVICES_REDIS_CLUSTER_URL
# (fred's form: redis-cluster://first?node=second&node=…); stopped with the rest.
start_redis_cluster() {
  local ports=() nodes=() port
  for _ in 1 2 3 4 5 6; do
    port=$(free_cluster_port)
    mkdir -p "$SERVICES_BASE/cluster/$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$SERVICES_BASE/cluster/$port/nodes.conf" --cluster-node-timeout 2000 \
      --save '' --appendonly no --daemonize yes --dir "$SERVICES_BASE/cluster/$port" \
      --pidfile "$SERVICES_BASE/cluster/$port/redis.pid" --logfile "$SERVICES_BASE/cluster/$port/redis.log"
    ports+=("$port")
    nodes+=("127.0.0.1:$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 200); do
      redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
      sleep 0.05
    done
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$SERVICES_BASE/cluster/create.log" 2>&1 || {
    services_log "the Redis Cluster did not form"
    cat "$SERVICES_BASE/cluster/create.log"
    exit 1
  }
  for _ in $(seq 200); do
    redis-cli -p "${ports[0]}" cluster info 2>/dev/null | grep -q cluster_state:ok && break
    sleep 0.05
  done
  local url="redis-cluster://${nodes[0]}?node=${nodes[1]}&node=${nodes[2]}"
  export SERVICES_REDIS_CLUSTER_URL="$url"
  services_log "Redis Cluster on ${nodes[*]}"
}

stop_services() {
  set +e
  for pid in "$SERVICES_BASE"/cluster/*/redis.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null
  done
  [ -f "$SERVICES_PGDIR/data/postmaster.pid" ] &&
    (cd /tmp && runuser -u postgres -- "$SERVICES_PGBIN/pg_ctl" -D "$SERVICES_PGDIR/data" -m fast -w stop >/dev/null)
  [ -f "$SERVICES_BASE/redis.pid" ] && kill "$(cat "$SERVICES_BASE/redis.pid")" 2>/dev/null
  rm -rf "$SERVICES_BASE"
}

start_services() {
  install_services
  SERVICES_BASE=$(mktemp -d /tmp/vh-svc.XXXXXX)
  chmod 755 "$SERVICES_BASE" # postgres must be able to traverse it
  SERVICES_PGBIN=$(pg_bin)
  SERVICES_PGDIR="$SERVICES_BASE/pg"
  trap stop_services EXIT

  local rport pport
  rport=$(free_port)
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize yes --dir "$SERVICES_BASE" --pidfile "$SERVICES_BASE/redis.pid" --logfile "$SERVICES_BASE/redis.log"
  for _ in $(seq 200); do
    redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break
    sleep 0.05
  done
  redis-cli -p "$rport" ping | grep -q PONG || {
    services_log "redis did not start"
    cat "$SERVICES_BASE/redis.log"
    exit 1
  }

  pport=$(free_port)
  mkdir -p "$SERVICES_PGDIR"
  chown postgres:postgres "$SERVICES_PGDIR"
  # initdb refuses to run as root; run it (and the server) as the postgres user.
  # pg_stat_statements lets the benchmark count the statements voicehub runs.
  (cd /tmp && runuser -u postgres -- "$SERVICES_PGBIN/initdb" -D "$SERVICES_PGDIR/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null)
  (cd /tmp && runuser -u postgres -- "$SERVICES_PGBIN/pg_ctl" -D "$SERVICES_PGDIR/data" -l "$SERVICES_PGDIR/pg.log" -w -t 30 \
    -o "-p $pport -k $SERVICES_PGDIR -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_preload_libraries=pg_stat_statements" \
    start >/dev/null)

  export SERVICES_REDIS_URL="redis://127.0.0.1:$rport"
  export SERVICES_PG_URL="postgres://postgres@127.0.0.1:$pport/postgres"
  services_log "PostgreSQL on 127.0.0.1:$pport, Redis on 127.0.0.1:$rport"
}
