#!/usr/bin/env bash
# Install PostgreSQL from Debian's packages, for the kill switch's PostgreSQL store tests.
# The tests (tests/harness/postgres.py) run initdb and `postgres` themselves, as the unprivileged
# `postgres` OS user, from /usr/lib/postgresql/<version>/bin; no cluster service is needed.
# Idempotent: skipped when the binaries are there; `apt-get update` runs at most once, and only
# when the package cannot be found in the current lists.
set -euo pipefail

log() { printf '[install-postgres] %s\n' "$*" >&2; }

installed() {
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null &&
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null &&
    id -u postgres >/dev/null 2>&1
}

if installed; then
  log "already installed: $(ls -d /usr/lib/postgresql/*/bin/postgres | tr '\n' ' ')"
  exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "ERROR: not root and no sudo"; exit 1; }
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# apt-cache policy prints "Candidate: (none)" when the package lists have never been fetched.
if ! apt-cache policy postgresql 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  log "apt-get update"
  $SUDO apt-get update
fi
log "apt-get install -y postgresql"
$SUDO apt-get install -y --no-install-recommends postgresql
installed || { log "ERROR: postgresql installed but no server binaries found"; exit 1; }
log "done: $(ls -d /usr/lib/postgresql/*/bin/postgres | tr '\n' ' ')"
