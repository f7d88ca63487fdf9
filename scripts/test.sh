#!/usr/bin/env bash
# Runs every cflow test, on SQLite and on PostgreSQL. Without CFLOW_TEST_DATABASE_URL it starts a
# throwaway PostgreSQL cluster for the run and removes it afterwards. Extra arguments go to
# `cargo test` (for example `scripts/test.sh -p cflow-store`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

if [ -z "${CFLOW_TEST_DATABASE_URL:-}" ]; then
  eval "$(scripts/pg-test.sh start)"
  trap 'scripts/pg-test.sh stop >/dev/null 2>&1 || true' EXIT
fi
export CFLOW_TEST_DATABASE_URL

cargo test --workspace --no-fail-fast "$@"
