#!/usr/bin/env bash
# Benchmark: `repofs prefetch` against reading a tree cold with one reader,
# against `git clone --depth 1` of the same commit, and what metrics cost on
# warm reads, all in one run.
#
#   bench/prefetch_bench.sh [FILES] [MEGABYTES]     (default 2000 files, 100 MB)
#
# Generates a repository of FILES incompressible files, serves it with
# tests/support/git_http_server.py (default profile: no object-info; counts
# requests and bytes really sent), and prints per operation the wall time and
# what the server sent:
#   - git clone --depth 1 (baseline);
#   - a fresh mount read with `find -type f | xargs cat` (one reader);
#   - a fresh mount made local with `repofs prefetch --jobs 8`;
#   - warm `find | xargs cat` (pages cached by the kernel), median of 5, on
#     a mount with metrics_listen and on one without.
# Needs root (or FUSE permissions), git, python3 with
# tests/support/requirements.txt, fuse3, curl (scripts/install-deps.sh).
# REPOFS_BIN=/path/to/repofs skips building target/release/repofs.
set -euo pipefail
FILES=${1:-2000}
MB=${2:-100}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-prefetchbench.XXXXXX)
SERVER_PIDS=()
. "$ROOT/bench/lib.sh"
PIDS=()
cleanup() {
  local p m
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  for m in "$W"/*/mnt/bench; do
    if grep -q " $m " /proc/self/mountinfo 2>/dev/null; then fusermount3 -u -z "$m" || true; fi
  done
  for p in "${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
repofs_bin

echo "== generating $FILES files, $MB MB"
mkdir -p "$W/work" "$W/srv"
gen_tree "$W/work" "$FILES" "$MB"
commit_all "$W/work"
git clone -q --bare "$W/work" "$W/srv/bench.git"

start_py "$ROOT/tests/support/git_http_server.py" --root "$W/srv"
URL="http://127.0.0.1:$PORT/bench.git"
stats() { server_stats "$PORT" bench.git; }
reset() { server_reset "$PORT"; }
ROWS=()
row() { ROWS+=("$(printf '%-44s %8s %8s %10.2f' "$1" "$2" "$3" "$(python3 -c "print($4/1e6)")")"); }

# mount NAME [METRICS_PORT]: a fresh daemon with its own cache.
mount() {
  mkdir -p "$W/$1"
  { echo "mount_root = \"$W/$1/mnt\""; echo "cache_dir = \"$W/$1/cache\""; echo 'cache_size = "4GiB"'
    [ -n "${2:-}" ] && echo "metrics_listen = \"127.0.0.1:$2\""
    echo '[[repository]]'; echo 'name = "bench"'; echo 'provider = "git"'; echo "url = \"$URL\""; } > "$W/$1/config.toml"
  "$BIN" --config "$W/$1/config.toml" mount 2> "$W/$1/log" &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q " $W/$1/mnt/bench " /proc/self/mountinfo && break; sleep 0.1; done
}

reset; t0=$(now); git clone -q --depth 1 "$URL" "$W/clone"; t1=$(now)
read -r req bytes < <(stats); row "git clone --depth 1" "$(secs "$t0" "$t1")" "$req" "$bytes"

reset; t0=$(now); mount serial; (cd "$W/serial/mnt/bench" && find . -type f -print0 | xargs -0 cat > /dev/null); t1=$(now)
read -r req bytes < <(stats); row "mount + find | xargs cat (1 reader)" "$(secs "$t0" "$t1")" "$req" "$bytes"

reset; t0=$(now); mount pre; "$BIN" --config "$W/pre/config.toml" prefetch --jobs 8 "$W/pre/mnt/bench" > "$W/pre/out"; t1=$(now)
read -r req bytes < <(stats); row "mount + repofs prefetch --jobs 8" "$(secs "$t0" "$t1")" "$req" "$bytes"
echo "   prefetch said: $(cat "$W/pre/out")"
cmp <(cd "$W/pre/mnt/bench" && find . -type f | sort | xargs cat | md5sum) <(cd "$W/work" && find . -type f -not -path './.git/*' | sort | xargs cat | md5sum)

MPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mount metrics "$MPORT"
(cd "$W/metrics/mnt/bench" && find . -type f -print0 | xargs -0 cat > /dev/null)
warm() { # dir -> median seconds of 5 warm reads
  local t=() i a b
  for i in 1 2 3 4 5; do a=$(now); (cd "$1" && find . -type f -print0 | xargs -0 cat > /dev/null); b=$(now); t+=("$(secs "$a" "$b")"); done
  printf '%s\n' "${t[@]}" | sort -n | sed -n 3p
}
WOFF=$(warm "$W/serial/mnt/bench"); WON=$(warm "$W/metrics/mnt/bench"); WNAT=$(warm "$W/work")
OPS=$(curl -s "http://127.0.0.1:$MPORT/metrics" | awk '/^repofs_fuse_operations_total/ {s += $2} END {print s}')

echo
printf '%-44s %8s %8s %10s\n' "operation" "seconds" "requests" "MB sent"
printf '%s\n' "${ROWS[@]}"
echo
echo "warm find | xargs cat, median of 5: native $WNAT s, repofs without metrics $WOFF s, with metrics $WON s ($(python3 -c "print(f'{$WON/$WOFF:.2f}')")x)"
echo "FUSE operations counted on the metrics mount: $OPS"
