#!/usr/bin/env bash
# Benchmark: repofs git mount vs `git clone --depth 1`, a blobless clone
# and a native checkout.
#
#   bench/git_bench.sh [FILES] [MEGABYTES] [LARGE_MB] [HUGE_MB]
#       (default 10000 files, 200 MB; models/ with three LARGE_MB=80 MB files;
#        one HUGE_MB=1024 MB blob)
#
# Generates a repository of FILES incompressible files totalling MEGABYTES,
# plus models/ (three large files and a small one) and huge/blob.bin, serves
# it with `git http-backend` on loopback (tests/support/git_http_server.py in
# its default profile: like GitLab and Bitbucket, no object-info; it counts
# requests and the bytes really sent), and prints, side by side:
#   - git clone --depth 1: time, requests, bytes;
#   - git clone --filter=blob:none --no-checkout + git show HEAD:FILE;
#   - repofs: mount + read one file: time, requests, bytes;
#   - repofs: `ls -l models/` on a fresh mount: requests, bytes;
#   - repofs: time to first byte of the huge blob, its full read, and the
#     daemon's peak RSS (VmHWM) while reading it;
#   - repofs: first full read (find | xargs cat) through the mount: time, requests, bytes;
#   - warm `find . -type f | xargs cat` through the mount vs the same on the
#     native checkout, and their ratio.
# Needs root (or FUSE permissions), git, python3, fuse3. Cleans up after itself.
set -euo pipefail
FILES=${1:-10000}
MB=${2:-200}
LARGE_MB=${3:-80}
HUGE_MB=${4:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-bench.XXXXXX)
. "$ROOT/bench/lib.sh"
SERVER_PID=""
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  fusermount3 -u -z "$W/mnt/bench" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

repofs_bin

echo "== generating $FILES files, $MB MB"
mkdir -p "$W/work" "$W/srv"
gen_tree "$W/work" "$FILES" "$MB"
mkdir -p "$W/work/models" "$W/work/huge"
echo '{"layers": 12}' > "$W/work/models/config.json"
for i in 1 2 3; do head -c "$((LARGE_MB * 1000000 + i))" /dev/urandom > "$W/work/models/model-$i.bin"; done
head -c "$((HUGE_MB * 1048576))" /dev/urandom > "$W/work/huge/blob.bin"
commit_all "$W/work"
git clone -q --bare "$W/work" "$W/srv/bench.git"
# A file from the middle of the tree (awk reads everything: no SIGPIPE under pipefail).
ONE=$(cd "$W/work" && find . -type f -not -path './.git/*' | sort | awk -v n="$((FILES / 2))" 'NR==n || NR==1 {f=$0} END {sub(/^\.\//, "", f); print f}')

python3 "$ROOT/tests/support/git_http_server.py" --root "$W/srv" > "$W/port" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$W/port" ] && break; sleep 0.1; done
PORT=$(awk '{print $2}' "$W/port")
URL="http://127.0.0.1:$PORT/bench.git"

stats() { server_stats "$PORT" bench.git; }
reset() { server_reset "$PORT"; }

echo "== git clone --depth 1"
reset
t0=$(now); git clone -q --depth 1 "$URL" "$W/clone"; t1=$(now)
read -r CLONE_REQ CLONE_BYTES < <(stats)
CLONE_T=$(secs "$t0" "$t1")

echo "== git clone --filter=blob:none --no-checkout + git show HEAD:$ONE"
reset
t0=$(now)
git clone -q --filter=blob:none --no-checkout "$URL" "$W/blobless"
git -C "$W/blobless" show "HEAD:$ONE" > /dev/null
t1=$(now)
read -r BL_REQ BL_BYTES < <(stats)
BL_T=$(secs "$t0" "$t1")

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
ONE_T=$(secs "$t0" "$t1")

echo "== repofs: ls -l models/ (three ${LARGE_MB} MB files and a small one)"
ls "$W/mnt/bench" > /dev/null
reset
t0=$(now); ls -l "$W/mnt/bench/models" > "$W/ls.txt"; t1=$(now)
sleep 1 # the background prefetch of the listed directory counts too
read -r LS_REQ LS_BYTES < <(stats)
LS_T=$(secs "$t0" "$t1")
for i in 1 2 3; do grep -q " $((LARGE_MB * 1000000 + i)) .*model-$i.bin" "$W/ls.txt" || { echo "wrong size for model-$i.bin" >&2; exit 1; }; done

echo "== repofs: the ${HUGE_MB} MB blob: first byte, full read, daemon peak RSS"
reset
t0=$(now); head -c 1 "$W/mnt/bench/huge/blob.bin" > /dev/null; t1=$(now)
TTFB_T=$(secs "$t0" "$t1")
t0=$(now); cmp "$W/mnt/bench/huge/blob.bin" "$W/work/huge/blob.bin"; t1=$(now)
HUGE_T=$(secs "$t0" "$t1")
read -r HUGE_REQ HUGE_BYTES < <(stats)
RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")

echo "== repofs: first full read through the mount"
reset
t0=$(now); (cd "$W/mnt/bench" && find . -type f -print0 | xargs -0 cat > /dev/null); t1=$(now)
read -r COLD_REQ COLD_BYTES < <(stats)
COLD_T=$(secs "$t0" "$t1")

echo "== warm reads: mount vs native checkout"
warm() { (cd "$1" && find . -type f -not -path './.git/*' -print0 | xargs -0 cat > /dev/null); }
warm "$W/clone"; warm "$W/mnt/bench"
t0=$(now); warm "$W/mnt/bench"; t1=$(now); WARM_MNT=$(secs "$t0" "$t1")
t0=$(now); warm "$W/clone"; t1=$(now); WARM_NAT=$(secs "$t0" "$t1")
diff -r -x .git "$W/mnt/bench" "$W/clone" > /dev/null && SAME=yes || SAME=NO

python3 - <<PY
rows = [
  ("git clone --depth 1",                 $CLONE_T, $CLONE_REQ, $CLONE_BYTES),
  ("blobless clone + git show one file",  $BL_T,    $BL_REQ,    $BL_BYTES),
  ("repofs mount + read one file",        $ONE_T,   $ONE_REQ,   $ONE_BYTES),
  ("repofs ls -l models/ (3 large files)", $LS_T,   $LS_REQ,    $LS_BYTES),
  ("repofs read the huge blob",           $HUGE_T,  $HUGE_REQ,  $HUGE_BYTES),
  ("repofs first full read (find|cat)",   $COLD_T,  $COLD_REQ,  $COLD_BYTES),
]
print()
print(f"repository: $FILES files, $MB MB, models/ 3 x $LARGE_MB MB, one $HUGE_MB MB blob (incompressible)")
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
print(f"time to first byte of the $HUGE_MB MB blob:   {$TTFB_T:.2f} s")
print(f"daemon peak RSS (VmHWM) after reading it: {$RSS_KB/1024:.0f} MB")
print(f"ratio blobless-clone/mount+one-file bytes: {$BL_BYTES/max($ONE_BYTES,1):.2f}x")
PY
