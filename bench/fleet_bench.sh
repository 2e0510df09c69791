#!/usr/bin/env bash
# Benchmark: a fleet of N repofs nodes reading the same git repository, with
# and without the shared cache tier ([shared_cache], an S3 bucket), side by
# side in one run.
#
#   bench/fleet_bench.sh [FILES] [MEGABYTES] [NODE_COUNTS]
#       (default 2000 files, 100 MB, node counts "1 2 4")
#
# Generates a repository of FILES incompressible files totalling MEGABYTES,
# serves it with `git http-backend` on loopback (tests/support/git_http_server.py
# in its default profile: like GitLab and Bitbucket, no object-info; it counts
# requests and the bytes really sent) and starts moto's S3 server
# (tests/support/s3_server.py, which counts per bucket what it served and
# received) for the shared tier. Then for each N of NODE_COUNTS, N daemons,
# each with its own cache_dir and mount root on this machine, read the whole
# tree (`find -type f | xargs cat`, checksummed against the work tree), each
# node all at once:
#   - without the shared tier, the N nodes started together;
#   - with it (a new, empty bucket), the N nodes started together;
#   - with it (a new, empty bucket), staggered: node 1 reads alone and its
#     uploads drain, then nodes 2..N start together (a rolling start; N >= 2).
# Runs with the tier end when every node's uploads have drained ("0 pending"
# in `repofs status`). Printed per run: wall time (daemon start to the last
# byte read), bytes and requests the git server sent, bytes the tier served
# and received, and the ratios to the run without the tier.
#
# Needs root (or FUSE permissions), git, python3 with
# tests/support/requirements.txt, fuse3 and curl (scripts/install-deps.sh).
# Builds target/release/repofs first; REPOFS_BIN=/path/to/repofs skips the
# build and uses that binary. Cleans up after itself.
set -euo pipefail
FILES=${1:-2000}
MB=${2:-100}
NODE_COUNTS=${3:-"1 2 4"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-fleetbench.XXXXXX)
. "$ROOT/bench/lib.sh"
SERVER_PIDS=()
DAEMON_PIDS=()
stop_daemons() {
  local p m
  for p in "${DAEMON_PIDS[@]+"${DAEMON_PIDS[@]}"}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DAEMON_PIDS[@]+"${DAEMON_PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  DAEMON_PIDS=()
  for m in "$W"/run-*/node*/mnt/bench; do
    [ -e "$m" ] || continue
    if grep -q " $m " /proc/self/mountinfo; then fusermount3 -u -z "$m" 2>/dev/null || true; fi
  done
}
cleanup() {
  stop_daemons
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
# What every node reads, and how it is checked: every file, in name order,
# through one md5sum.
tree_sum() { (cd "$1" && find . -type f -not -path './.git/*' -print0 | sort -z | xargs -0 cat | md5sum | awk '{print $1}'); }
WANT=$(tree_sum "$W/work")

start_py "$ROOT/tests/support/git_http_server.py" --root "$W/srv"
GIT_PORT=$PORT
URL="http://127.0.0.1:$GIT_PORT/bench.git"
start_py "$ROOT/tests/support/s3_server.py"
EP="http://127.0.0.1:$PORT"
# The shared tier's credentials (moto takes any); no instance-metadata probes.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true

git_stats() { server_stats "$GIT_PORT" bench.git; }
git_reset() { server_reset "$GIT_PORT"; }
# For bucket $1: bytes the tier sent (GetObject bodies) and received (PutObject
# bodies), and how many GetObject and PutObject requests it answered.
tier_stats() { curl -s "$EP/_stats" | python3 -c 'import json,sys; s=json.load(sys.stdin).get(sys.argv[1],{}); print(s.get("GetObject_bytes",0), s.get("bytes_in",0), s.get("GetObject",0), s.get("PutObject",0))' "$1"; }
make_bucket() { python3 -c 'import boto3,sys; boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1").create_bucket(Bucket=sys.argv[2])' "$EP" "$1"; }
# A node's pending uploads, from `repofs status` ("shared cache s3://...: ..., P pending, ...").
pending() { "$BIN" --config "$1" status 2>/dev/null | awk '/^shared cache s3:/ {for (i = 2; i <= NF; i++) if ($i ~ /^pending/) print $(i-1)}'; }

# node_config DIR BUCKET: a node's config (BUCKET empty: no shared tier).
node_config() {
  mkdir -p "$1"
  cat > "$1/config.toml" <<EOF
mount_root = "$1/mnt"
cache_dir = "$1/cache"
cache_size = "4GiB"
EOF
  if [ -n "$2" ]; then
    cat >> "$1/config.toml" <<EOF
[shared_cache]
bucket = "$2"
region = "us-east-1"
endpoint_url = "$EP"
force_path_style = true
EOF
  fi
  cat >> "$1/config.toml" <<EOF
[[repository]]
name = "bench"
provider = "git"
url = "$URL"
EOF
}

# start_nodes RUN FIRST LAST: starts those nodes together, waits for their mounts.
start_nodes() {
  local i
  for i in $(seq "$2" "$3"); do
    "$BIN" --config "$1/node$i/config.toml" mount 2> "$1/node$i/daemon.log" &
    DAEMON_PIDS+=($!)
  done
  for i in $(seq "$2" "$3"); do
    for _ in $(seq 600); do grep -q " $1/node$i/mnt/bench " /proc/self/mountinfo && break; sleep 0.05; done
    grep -q " $1/node$i/mnt/bench " /proc/self/mountinfo || { echo "node $i did not mount:" >&2; cat "$1/node$i/daemon.log" >&2; exit 1; }
  done
}

# read_nodes RUN FIRST LAST: every node reads the whole tree at once; checks the bytes.
read_nodes() {
  local i readers=() bad=0
  for i in $(seq "$2" "$3"); do
    tree_sum "$1/node$i/mnt/bench" > "$1/node$i/sum" 2> "$1/node$i/read.err" &
    readers+=($!)
  done
  for i in "${readers[@]}"; do wait "$i" || bad=1; done
  for i in $(seq "$2" "$3"); do
    if [ "$(cat "$1/node$i/sum")" != "$WANT" ]; then
      echo "node $i read wrong bytes: $(cat "$1/node$i/read.err"); the end of its log:" >&2
      tail -20 "$1/node$i/daemon.log" >&2
      bad=1
    fi
  done
  [ "$bad" = 0 ] || exit 1
}

# drain_nodes RUN FIRST LAST: waits until none of those nodes has an upload pending.
drain_nodes() {
  local i p deadline
  for i in $(seq "$2" "$3"); do
    deadline=$((SECONDS + 600))
    while :; do
      p=$(pending "$1/node$i/config.toml")
      [ "$p" = 0 ] && break
      [ "$SECONDS" -lt "$deadline" ] || { echo "node $i: uploads never drained (pending: ${p:-no shared cache line in the status})" >&2; exit 1; }
      sleep 0.5
    done
  done
}

# run MODE N: one row of the table (MODE: without, with or staggered).
run() {
  local mode=$1 n=$2 r="$W/run-$1-$2" i t0 t1 bucket="" req bytes down=0 up=0 gets=0 puts=0
  echo "== $n node(s): $mode"
  if [ "$mode" != without ]; then
    bucket="fleet-$mode-$n"
    make_bucket "$bucket"
  fi
  for i in $(seq "$n"); do node_config "$r/node$i" "$bucket"; done
  git_reset
  t0=$(now)
  if [ "$mode" = staggered ]; then
    start_nodes "$r" 1 1
    read_nodes "$r" 1 1
    drain_nodes "$r" 1 1
    start_nodes "$r" 2 "$n"
    read_nodes "$r" 2 "$n"
  else
    start_nodes "$r" 1 "$n"
    read_nodes "$r" 1 "$n"
  fi
  t1=$(now)
  if [ -n "$bucket" ]; then
    drain_nodes "$r" 1 "$n"
    read -r down up gets puts < <(tier_stats "$bucket")
  fi
  read -r req bytes < <(git_stats)
  stop_daemons
  echo "$n $mode $(secs "$t0" "$t1") $bytes $req $down $up $gets $puts" >> "$W/rows"
}

: > "$W/rows"
for n in $NODE_COUNTS; do
  run without "$n"
  run with "$n"
  [ "$n" -lt 2 ] || run staggered "$n"
done

python3 - "$FILES" "$MB" "$W/rows" <<'PY'
import sys
files, mb, rows = sys.argv[1], sys.argv[2], sys.argv[3]
M = 1048576
names = {"without": "none", "with": "started together", "staggered": "1 first, then N-1"}
print()
print(f"repository: {files} files, {mb} MB (incompressible); origin: git server, default profile (no object-info);")
print("shared tier: moto on loopback. Each node has its own cache_dir and mount and reads the whole tree")
print("(find -type f | xargs cat); the nodes of a row run on this one machine.")
print()
print(f"{'nodes':>5}  {'shared tier':18} {'wall s':>8} {'origin MB':>10} {'origin req':>11}"
      f" {'tier down MB':>13} {'tier up MB':>11} {'GETs':>6} {'PUTs':>6}   {'origin bytes':>12} {'wall':>7}")
print(f"{'':>5}  {'':18} {'':>8} {'':>10} {'':>11} {'':>13} {'':>11} {'':>6} {'':>6}   {'vs none':>12} {'vs none':>7}")
base = {}
for line in open(rows):
    n, mode, t, b, r, down, up, gets, puts = line.split()
    t = float(t)
    b, r, down, up, gets, puts = (int(x) for x in (b, r, down, up, gets, puts))
    if mode == "without":
        base[n] = (t, b)
    bt, bb = base.get(n, (t, b))
    print(f"{n:>5}  {names[mode]:18} {t:8.2f} {b/M:10.2f} {r:11d} {down/M:13.2f} {up/M:11.2f}"
          f" {gets:6d} {puts:6d}   {b/max(bb,1):11.3f}x {t/max(bt,1e-3):6.2f}x")
print()
print("origin MB / req: what the git server sent to all the nodes of the row together. tier down / up: the bytes")
print("the shared tier served (GetObject) and received (PutObject); each run with the tier starts with an empty")
print("bucket and ends when its uploads have drained. wall: from starting the daemons to the last byte read")
print("(\"1 first, then N-1\" includes waiting for node 1's uploads). Below 1x: what the tier saved.")
PY
