#!/usr/bin/env bash
# Installs Debian's chromium (the test suite opens report.html in it, headless) when no
# Chromium is on PATH. Never fails the set-up: without it, the browser test says what to install.
set -u
for name in chromium chromium-browser google-chrome; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
"$(dirname "$0")/apt-install.sh" chromium "the headless browser of the report test"
