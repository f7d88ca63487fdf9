#!/usr/bin/env bash
# Installs what cflow's build and tests need on a fresh Debian machine, and nothing when it is
# already there: PostgreSQL server binaries for the throwaway test cluster, the Claude Code CLI
# (npm) for the claude-code driver tests, and the system
# `python3` and `git` the sandbox tests run inside the sandbox (which hides /root, so a Python
# under ~/.pyenv does not count).
set -euo pipefail

have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if ! have_initdb; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: PostgreSQL is not installed; run as root or install Debian's 'postgresql' package" >&2
    exit 1
  fi
  echo "setup: installing PostgreSQL (Debian package 'postgresql') for the test cluster"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# The throwaway cluster runs as an unprivileged user, since PostgreSQL refuses to run as root.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# The sandbox's hostile tests run /usr/bin/python3 and git inside the sandbox.
missing=()
[ -x /usr/bin/python3 ] || missing+=(python3)
[ -x /usr/bin/git ] || missing+=(git)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: ${missing[*]} missing under /usr/bin; install Debian's ${missing[*]} packages" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]} (Debian packages) for the sandbox tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The claude-code driver's tests run the real Claude Code CLI (offline, against a local server
# speaking the Anthropic API). npm puts it in /usr/bin, inside the sandbox's read-only view.
if ! [ -x /usr/bin/claude ] && ! [ -x /usr/local/bin/claude ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: the Claude Code CLI is missing; install it with 'npm install -g @anthropic-ai/claude-code'" >&2
    exit 1
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "setup: installing Node.js and npm (Debian packages) for the Claude Code CLI"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "setup: installing the Claude Code CLI (npm @anthropic-ai/claude-code)"
  npm install -g --no-audit --no-fund @anthropic-ai/claude-code >/dev/null
fi

# The MCP tests drive cflow with the official MCP Python SDK (PyPI 'mcp', pinned), in a venv under
# target/ built on the system python3 (Debian's python3-venv provides `python3 -m venv`).
MCP_SDK_VERSION=2.3.0
mcp_venv="$(cd "$(dirname "$0")/.." && pwd)/target/mcp-venv"
if ! compgen -G "$mcp_venv/lib/python3*/site-packages/mcp-$MCP_SDK_VERSION.dist-info" >/dev/null; then
  if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "setup: python3 -m venv does not work; install Debian's python3-venv package" >&2
      exit 1
    fi
    echo "setup: installing python3-venv (Debian package) for the MCP SDK's venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "setup: installing the MCP Python SDK (PyPI mcp==$MCP_SDK_VERSION) in $mcp_venv"
  rm -rf "$mcp_venv"
  /usr/bin/python3 -m venv "$mcp_venv"
  "$mcp_venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_SDK_VERSION"
fi
