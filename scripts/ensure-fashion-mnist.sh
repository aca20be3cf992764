#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist when Fashion-MNIST is not found where tunnelscope
# looks for it. Never fails the set-up: without the data, the CLI says where it looked and
# how to get it.
set -u
python="${1:-.venv/bin/python}"
if "$python" -c 'import sys; from tunnelscope.data.sources import LoadContext, find_fashion; sys.exit(0 if find_fashion(LoadContext.make()) else 1)' 2>/dev/null; then
  exit 0
fi
"$(dirname "$0")/apt-install.sh" dataset-fashion-mnist "Fashion-MNIST for the demo and the tests; 'tunnelscope datasets' says where it is looked for"
