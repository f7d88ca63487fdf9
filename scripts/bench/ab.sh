#!/usr/bin/env bash
# Compares the throughput of two cflow builds with `cflow bench tasks`, alternating the order of
# each pair (A B, B A, A B, ...): on a shared machine the speed drifts within minutes, and pairs
# always run in the same order credit that drift to whichever build runs second (on 2026-11-28
# a 6-9 % "gain" measured that way vanished once the order alternated).
#
#   scripts/bench/ab.sh A/cflow B/cflow [PAIRS] [-- extra `bench tasks` options]
#
# PAIRS defaults to 6. Each run is a fresh `cflow bench tasks --slots 256 --idle-agents 0
# --rate 0` on SQLite; with CFLOW_AB_DATABASE=postgres://user@host:port (a server where the
# user may create databases, e.g. from `scripts/pg-test.sh start`), each run gets a fresh
# database there instead (`--database`), dropped afterwards. Prints every run, then each build's
# mean and how many pairs it won.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
a="$1"
b="$2"
shift 2
pairs=6
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  pairs="$1"
  shift
fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
for bin in "$a" "$b"; do
  [ -x "$bin" ] || { echo "ab.sh: $bin is not an executable" >&2; exit 2; }
done

# Runs one benchmark with binary $1; prints its tasks/s (empty when the run failed).
one() {
  local bin="$1" db="" args=()
  shift
  if [ -n "${CFLOW_AB_DATABASE:-}" ]; then
    db="cflow_ab_$$_$RANDOM$RANDOM"
    psql -q "${CFLOW_AB_DATABASE%/}/postgres" -c "CREATE DATABASE $db" >/dev/null
    args=(--database "${CFLOW_AB_DATABASE%/}/$db")
  fi
  "$bin" bench tasks --slots 256 --idle-agents 0 --rate 0 --json "${args[@]}" "$@" 2>/dev/null |
    python3 -c 'import json,sys
try: print(round(json.load(sys.stdin)["throughput"]["tasks_per_sec"]))
except Exception: pass' || true
  if [ -n "$db" ]; then
    psql -q "${CFLOW_AB_DATABASE%/}/postgres" -c "DROP DATABASE $db" >/dev/null || true
  fi
}

sum_a=0 sum_b=0 n=0 wins_a=0 wins_b=0
for i in $(seq 1 "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then
    ra="$(one "$a" "$@")"
    rb="$(one "$b" "$@")"
  else
    rb="$(one "$b" "$@")"
    ra="$(one "$a" "$@")"
  fi
  if [ -z "$ra" ] || [ -z "$rb" ]; then
    echo "pair $i: a run failed (A: ${ra:-failed}, B: ${rb:-failed}); not counted" >&2
    continue
  fi
  echo "pair $i ($([ $((i % 2)) -eq 1 ] && echo "A first" || echo "B first")): A $ra  B $rb tasks/s"
  sum_a=$((sum_a + ra)) sum_b=$((sum_b + rb)) n=$((n + 1))
  if [ "$ra" -gt "$rb" ]; then wins_a=$((wins_a + 1)); elif [ "$rb" -gt "$ra" ]; then wins_b=$((wins_b + 1)); fi
done
[ "$n" -gt 0 ] || { echo "ab.sh: no pair completed" >&2; exit 1; }
echo "A $a: mean $((sum_a / n)) tasks/s, won $wins_a of $n pairs"
echo "B $b: mean $((sum_b / n)) tasks/s, won $wins_b of $n pairs"
