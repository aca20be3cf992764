#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist when apt is available and Fashion-MNIST is not
# found where tunnelscope looks for it. Never fails the set-up: without the data, the CLI
# says where it looked and how to get it.
set -u
python="${1:-.venv/bin/python}"
if "$python" -c 'import sys; from tunnelscope.data.sources import LoadContext, find_fashion; sys.exit(0 if find_fashion(LoadContext.make()) else 1)' 2>/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: Fashion-MNIST not found and apt-get is not available; use 'tunnelscope datasets' to see where it is looked for, or --download" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: Fashion-MNIST not found; run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 0
  fi
fi
echo "setup: installing Debian's dataset-fashion-mnist"
$sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
  || echo "setup: could not install dataset-fashion-mnist; tests that need it will fail with a clear message" >&2
