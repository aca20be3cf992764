#!/usr/bin/env bash
# apt-install.sh PACKAGE WHAT: installs one Debian package for `make setup`, as root or via
# sudo. Never fails the set-up: when it cannot install, it says so on stderr, with WHAT
# (what the package is for) so the user knows what will be missing.
set -u
package="$1"; what="$2"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get is not available; install $package by hand ($what)" >&2; exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "setup: run 'apt-get install $package' as root ($what)" >&2; exit 0
  fi
fi
echo "setup: installing Debian's $package ($what)"
$sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null \
  || echo "setup: could not install $package ($what)" >&2
