#!/usr/bin/env bash
# Installs what repofs and its tests need on a fresh Debian machine:
# FUSE (fusermount3, /dev/fuse userspace), git (its http-backend serves the
# test repositories), python3 (runs the test git server), and small tools.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  fuse3 git python3 curl diffutils coreutils procps ca-certificates >/dev/null
command -v cargo >/dev/null || { echo "cargo (Rust) is required: install it with rustup" >&2; exit 1; }
echo "dependencies installed"
