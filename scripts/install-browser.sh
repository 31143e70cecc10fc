#!/usr/bin/env bash
# Install the headless browser used by the web-page tests (tests/alerts/web/):
#   - Debian's chromium package (at /usr/bin/chromium)
#   - Playwright for Python into the project's venv, driving that system chromium
#
# Playwright's own browser downloads (`playwright install`) are NOT used: the tests launch the
# system chromium with executable_path=/usr/bin/chromium, so nothing is fetched outside the
# package registries.
# Idempotent: each part is skipped when it is already there.
#
# Usage: scripts/install-browser.sh        (needs root, or sudo, for apt-get)
set -euo pipefail

VENV="${DRAINWATCH_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}"
PLAYWRIGHT_SPEC="${DRAINWATCH_PLAYWRIGHT:-playwright>=1.65,<2}"

log() { printf '[install-browser] %s\n' "$*" >&2; }

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo "$@"; fi
}

if [[ -x /usr/bin/chromium ]]; then
  log "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown)"
else
  log "installing Debian's chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core
fi

if "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
  log "playwright present in $VENV"
else
  log "installing $PLAYWRIGHT_SPEC into $VENV"
  "$VENV/bin/pip" install -q "$PLAYWRIGHT_SPEC"
fi
