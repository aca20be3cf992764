#!/usr/bin/env bash
# Installs Debian's chromium (used by the test suite to open report.html headless) when no
# Chromium is on PATH. Never fails the set-up: without it, the browser test says what to install.
set -u
for name in chromium chromium-browser google-chrome; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: no Chromium found and apt-get is not available; install Chromium for the browser test" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: no Chromium found; run 'apt-get install chromium' as root for the browser test" >&2; exit 0
  fi
fi
echo "setup: installing Debian's chromium (headless browser for the report test)"
$sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
  || echo "setup: could not install chromium; the browser test will fail with a clear message" >&2
