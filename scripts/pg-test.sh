#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suites.
#
#   eval "$(scripts/pg-test.sh start)"   # prints `export CFLOW_TEST_DATABASE_URL=…`
#   cargo test …
#   scripts/pg-test.sh stop              # stops the cluster and deletes its files
#   scripts/pg-test.sh status            # prints the URL of the running cluster, if any
#   scripts/pg-test.sh clean             # drops the test databases no session is using
#
# The cluster lives in a fresh temporary directory (data, Unix socket and log), listens on a free
# port on 127.0.0.1 only, trusts local connections and keeps fsync on, so that the durability
# the tests observe is the real one. Its location is recorded in $CFLOW_PG_TEST_STATE (default
# target/pg-test/state) so that `stop` finds it. `start` while a recorded cluster is still running
# prints that cluster's URL again instead of starting a second one.
#
# Its buffers are small (shared_buffers 64MB), sized for the test suites' many databases.
# CFLOW_PG_TEST_OPTIONS adds server options after the script's own, which they override: to
# benchmark against a cluster set up like another one, for example
#   CFLOW_PG_TEST_OPTIONS="-c shared_buffers=1GB -c wal_buffers=64MB" scripts/pg-test.sh start
#
# PostgreSQL refuses to run as root, so as root the cluster runs as the unprivileged user
# `postgres` (created when missing).
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
state_file="${CFLOW_PG_TEST_STATE:-$repo_root/target/pg-test/state}"
pg_user="postgres"

log() { echo "pg-test: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Finds the directory holding initdb, pg_ctl and pg_isready.
find_bindir() {
  local candidates=()
  if command -v pg_config >/dev/null 2>&1; then
    candidates+=("$(pg_config --bindir 2>/dev/null || true)")
  fi
  # Newest version first.
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -V -r); do
    candidates+=("$d")
  done
  if command -v initdb >/dev/null 2>&1; then
    candidates+=("$(dirname "$(readlink -f "$(command -v initdb)")")")
  fi
  for d in "${candidates[@]}"; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Runs a command as the cluster's owner: ourselves, or `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "$pg_user" -- "$@"
  else
    "$@"
  fi
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
  local i port
  for i in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! port_in_use "$port"; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

url_for() { echo "postgres://postgres@127.0.0.1:$1/postgres"; }

# Prints the recorded cluster's port if it is running, else fails.
running_port() {
  [ -f "$state_file" ] || return 1
  local dir port
  dir="$(sed -n 's/^dir=//p' "$state_file")"
  port="$(sed -n 's/^port=//p' "$state_file")"
  [ -n "$dir" ] && [ -n "$port" ] && [ -d "$dir/data" ] || return 1
  local bindir
  bindir="$(find_bindir)" || return 1
  as_owner "$bindir/pg_ctl" status -D "$dir/data" >/dev/null 2>&1 || return 1
  echo "$port"
}

wait_ready() {
  local bindir="$1" dir="$2" port="$3"
  local deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "PostgreSQL did not become ready within 60 s; its log follows"
  cat "$dir/postgres.log" >&2 || true
  return 1
}

cmd_start() {
  local port
  if port="$(running_port)"; then
    log "reusing the running cluster recorded in $state_file"
    echo "export CFLOW_TEST_DATABASE_URL=$(url_for "$port")"
    return 0
  fi

  local bindir
  bindir="$(find_bindir)" ||
    die "PostgreSQL server binaries (initdb, pg_ctl) not found; install the Debian package 'postgresql' (apt-get install postgresql) or run scripts/setup.sh"

  if [ "$(id -u)" -eq 0 ] && ! id "$pg_user" >/dev/null 2>&1; then
    log "creating the unprivileged user '$pg_user' to run the cluster"
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$pg_user"
  fi

  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/cflow-pg-test.XXXXXX")"
  chmod 700 "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown "$pg_user:" "$dir"
  fi

  # initdb writes into the data directory with fsync on; --no-sync would make it faster but the
  # point of this cluster is to behave like a real one.
  if ! as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C \
    >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    die "initdb failed"
  fi
  as_owner mkdir -p "$dir/sock"

  local attempt started=""
  for attempt in 1 2 3 4 5; do
    port="$(pick_port)" || die "no free TCP port found on 127.0.0.1"
    if as_owner "$bindir/pg_ctl" start -D "$dir/data" -l "$dir/postgres.log" -w -t 60 -o \
      "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/sock -c fsync=on -c synchronous_commit=on -c max_connections=400 -c shared_buffers=64MB ${CFLOW_PG_TEST_OPTIONS:-}" \
      >/dev/null 2>&1; then
      started=1
      break
    fi
    log "start on port $port failed (attempt $attempt); retrying on another port"
  done
  if [ -z "$started" ]; then
    cat "$dir/postgres.log" >&2 || true
    rm -rf "$dir"
    die "could not start PostgreSQL"
  fi
  wait_ready "$bindir" "$dir" "$port" || {
    as_owner "$bindir/pg_ctl" stop -D "$dir/data" -m immediate >/dev/null 2>&1 || true
    rm -rf "$dir"
    die "PostgreSQL did not become ready"
  }

  mkdir -p "$(dirname "$state_file")"
  printf 'dir=%s\nport=%s\n' "$dir" "$port" >"$state_file"
  log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') running on 127.0.0.1:$port (files in $dir)"
  echo "export CFLOW_TEST_DATABASE_URL=$(url_for "$port")"
}

cmd_stop() {
  if [ ! -f "$state_file" ]; then
    log "no cluster recorded in $state_file; nothing to stop"
    return 0
  fi
  local dir
  dir="$(sed -n 's/^dir=//p' "$state_file")"
  if [ -n "$dir" ] && [ -d "$dir/data" ]; then
    local bindir
    if bindir="$(find_bindir)"; then
      as_owner "$bindir/pg_ctl" stop -D "$dir/data" -m fast -w -t 60 >/dev/null 2>&1 ||
        as_owner "$bindir/pg_ctl" stop -D "$dir/data" -m immediate -w -t 30 >/dev/null 2>&1 ||
        true
    fi
  fi
  # Only ever delete what this script created.
  case "$dir" in
    */cflow-pg-test.*) rm -rf "$dir" ;;
  esac
  rm -f "$state_file"
  log "stopped"
}

cmd_status() {
  local port
  if port="$(running_port)"; then
    echo "export CFLOW_TEST_DATABASE_URL=$(url_for "$port")"
  else
    log "no running cluster recorded in $state_file"
    return 1
  fi
}

# Drops the databases the test suites created (`cflow_t_…`, one per test) that nobody is
# connected to. They pile up in a long-lived cluster (hundreds after a day of test runs), and the
# autovacuum launcher's rounds through them showed as noise in benchmarks run on the same
# cluster. A database in use is left alone (`DROP DATABASE` refuses one with connections).
cmd_clean() {
  local port bindir db n=0
  port="$(running_port)" || die "no running cluster recorded in $state_file"
  bindir="$(find_bindir)" || die "PostgreSQL binaries not found"
  local q=("$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -X -q -A -t)
  for db in $("${q[@]}" -c "SELECT datname FROM pg_database d WHERE datname LIKE 'cflow\_t\_%' \
      AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"); do
    if "${q[@]}" -c "DROP DATABASE \"$db\"" >/dev/null 2>&1; then
      n=$((n + 1))
    fi
  done
  log "dropped $n unused test databases"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  clean) cmd_clean ;;
  *)
    echo "usage: $0 start|stop|status|clean" >&2
    exit 2
    ;;
esac
