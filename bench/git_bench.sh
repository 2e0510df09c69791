#!/usr/bin/env bash
# Benchmark: repofs git mount vs `git clone --depth 1` and a native checkout.
#
#   bench/git_bench.sh [FILES] [MEGABYTES]      (default 10000 files, 200 MB)
#
# Generates a repository of FILES incompressible files totalling MEGABYTES,
# serves it with `git http-backend` on loopback (tests/support/git_http_server.py,
# which counts requests and bytes), and prints, side by side:
#   - git clone --depth 1: time, requests, bytes;
#   - repofs: mount + read one file: time, requests, bytes;
#   - repofs: first full read (find | xargs cat) through the mount: time, requests, bytes;
#   - warm `find . -type f | xargs cat` through the mount vs the same on the
#     native checkout, and their ratio.
# Needs root (or FUSE permissions), git, python3, fuse3. Cleans up after itself.
set -euo pipefail
FILES=${1:-10000}
MB=${2:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-bench.XXXXXX)
SERVER_PID=""
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  fusermount3 -u -z "$W/mnt/bench" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

echo "== building repofs (release)"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/repofs"

echo "== generating $FILES files, $MB MB"
mkdir -p "$W/work" "$W/srv"
python3 - "$W/work" "$FILES" "$MB" <<'PY'
import os, random, sys
root, files, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(42)
weights = [rng.paretovariate(1.2) for _ in range(files)]
scale = mb * 1024 * 1024 / sum(weights)
for i, w in enumerate(weights):
    d = os.path.join(root, "dir%03d" % (i // 100))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%05d.bin" % i), "wb") as f:
        f.write(os.urandom(max(1, int(w * scale))))
PY
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
git -C "$W/work" init -q -b main
git -C "$W/work" add -A
git -C "$W/work" commit -q -m bench
git clone -q --bare "$W/work" "$W/srv/bench.git"
# A file from the middle of the tree (awk reads everything: no SIGPIPE under pipefail).
ONE=$(cd "$W/work" && find . -type f -not -path './.git/*' | sort | awk -v n="$((FILES / 2))" 'NR==n || NR==1 {f=$0} END {sub(/^\.\//, "", f); print f}')

python3 "$ROOT/tests/support/git_http_server.py" --root "$W/srv" > "$W/port" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$W/port" ] && break; sleep 0.1; done
PORT=$(awk '{print $2}' "$W/port")
URL="http://127.0.0.1:$PORT/bench.git"

now() { date +%s.%N; }
stats() { curl -s "http://127.0.0.1:$PORT/_stats" | python3 -c 'import json,sys; s=json.load(sys.stdin).get("bench.git",{"requests":0,"bytes":0}); print(s["requests"], s["bytes"])'; }
reset() { curl -s -X POST "http://127.0.0.1:$PORT/_stats" >/dev/null; }
elapsed() { python3 -c "print(f'{$2-$1:.2f}')"; }

echo "== git clone --depth 1"
reset
t0=$(now); git clone -q --depth 1 "$URL" "$W/clone"; t1=$(now)
read -r CLONE_REQ CLONE_BYTES < <(stats)
CLONE_T=$(elapsed "$t0" "$t1")

echo "== repofs: mount + read one file ($ONE)"
cat > "$W/config.toml" <<EOF
mount_root = "$W/mnt"
cache_dir = "$W/cache"
cache_size = "4GiB"
[[repository]]
name = "bench"
provider = "git"
url = "$URL"
EOF
reset
t0=$(now)
"$BIN" --config "$W/config.toml" mount 2> "$W/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 300); do grep -q " $W/mnt/bench " /proc/self/mountinfo && break; sleep 0.02; done
cmp "$W/mnt/bench/$ONE" "$W/work/$ONE"
t1=$(now)
read -r ONE_REQ ONE_BYTES < <(stats)
ONE_T=$(elapsed "$t0" "$t1")

echo "== repofs: first full read through the mount"
reset
t0=$(now); (cd "$W/mnt/bench" && find . -type f -print0 | xargs -0 cat > /dev/null); t1=$(now)
read -r COLD_REQ COLD_BYTES < <(stats)
COLD_T=$(elapsed "$t0" "$t1")

echo "== warm reads: mount vs native checkout"
warm() { (cd "$1" && find . -type f -not -path './.git/*' -print0 | xargs -0 cat > /dev/null); }
warm "$W/clone"; warm "$W/mnt/bench"
t0=$(now); warm "$W/mnt/bench"; t1=$(now); WARM_MNT=$(elapsed "$t0" "$t1")
t0=$(now); warm "$W/clone"; t1=$(now); WARM_NAT=$(elapsed "$t0" "$t1")
diff -r -x .git "$W/mnt/bench" "$W/clone" > /dev/null && SAME=yes || SAME=NO

python3 - <<PY
rows = [
  ("git clone --depth 1",                 $CLONE_T, $CLONE_REQ, $CLONE_BYTES),
  ("repofs mount + read one file",        $ONE_T,   $ONE_REQ,   $ONE_BYTES),
  ("repofs first full read (find|cat)",   $COLD_T,  $COLD_REQ,  $COLD_BYTES),
]
print()
print(f"repository: $FILES files, $MB MB (incompressible)")
print(f"{'operation':40} {'seconds':>9} {'requests':>9} {'MB sent':>9}")
for name, t, r, b in rows:
    print(f"{name:40} {t:9.2f} {r:9d} {b/1048576:9.2f}")
print()
print(f"{'warm find|xargs cat, native checkout':40} {$WARM_NAT:9.2f}")
print(f"{'warm find|xargs cat, repofs mount':40} {$WARM_MNT:9.2f}")
print(f"ratio mount/native (warm):               {$WARM_MNT/max($WARM_NAT,1e-3):.2f}x")
print(f"ratio clone/mount+one-file time:         {$CLONE_T/max($ONE_T,1e-3):.1f}x faster to first byte")
print(f"ratio clone/mount+one-file bytes:        {$CLONE_BYTES/max($ONE_BYTES,1):.0f}x fewer bytes")
print(f"mount identical to checkout (diff -r):   $SAME")
PY
