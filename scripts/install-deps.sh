#!/usr/bin/env bash
# Installs what repofs and its tests need on a fresh Debian machine:
# FUSE (fusermount3), git (its http-backend serves the test repositories),
# git-lfs (pushes LFS objects in tests), python3 with the test servers'
# packages and setuptools (tests/support/requirements.txt; the overlay test
# builds a Python project offline), systemd (systemd-analyze checks the unit
# file), tinyproxy (a CONNECT proxy for the proxy test), and small tools.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  fuse3 git git-lfs systemd python3 python3-pip curl diffutils coreutils procps util-linux ca-certificates tinyproxy >/dev/null
# The test LFS server (giftless) and its dependencies.
req="$(dirname "$0")/../tests/support/requirements.txt"
python3 -m pip install --quiet --disable-pip-version-check -r "$req" 2>/dev/null ||
  python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r "$req"
command -v cargo >/dev/null || { echo "cargo (Rust) is required: install it with rustup" >&2; exit 1; }
echo "dependencies installed"
