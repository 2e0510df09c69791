#!/usr/bin/env bash
# Benchmark: reading a Git LFS file through repofs vs `git lfs pull` vs local disk.
#
#   bench/lfs_bench.sh [MEGABYTES]      (default 300)
#
# Pushes one incompressible LFS file with git-lfs to a real LFS server
# (giftless, tests/support/lfs_server.py) behind the loopback git server, then
# prints in one run:
#   - local disk: sequential read MB/s of the same file (page cache warm);
#   - git lfs pull of the file: seconds and MB/s;
#   - repofs: time to first byte (empty cache), cold sequential read MB/s
#     (empty cache), warm read MB/s (kernel page cache), and the first read
#     after a daemon restart (from repofs's disk cache).
# Needs root (or FUSE permissions), git, git-lfs, python3 with
# tests/support/requirements.txt, fuse3.
set -euo pipefail
MB=${1:-300}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-lfsbench.XXXXXX)
. "$ROOT/bench/lib.sh"
PIDS=()
DAEMON_PID=""
cleanup() {
  [ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  fusermount3 -u -z "$W/mnt/big" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

repofs_bin

wait_port() { for _ in $(seq 100); do [ -s "$1" ] && break; sleep 0.1; done; awk '{print $2}' "$1"; }
python3 "$ROOT/tests/support/lfs_server.py" --storage "$W/store" > "$W/lport" 2>/dev/null &
PIDS+=($!)
LP=$(wait_port "$W/lport")
mkdir -p "$W/srv"
python3 "$ROOT/tests/support/git_http_server.py" --root "$W/srv" --lfs-upstream "http://127.0.0.1:$LP" > "$W/gport" &
PIDS+=($!)
GP=$(wait_port "$W/gport")

echo "== pushing a $MB MB LFS file"
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=b@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=b@example.com
git init -q --bare -b main "$W/srv/big.git"
git init -q -b main "$W/work"
cd "$W/work"
git lfs install --local > /dev/null
git config lfs.url "http://127.0.0.1:$LP/test/big"
git lfs track "*.bin" > /dev/null
head -c "$((MB * 1024 * 1024))" /dev/urandom > big.bin
git add -A && git commit -q -m big
git remote add origin "$W/srv/big.git"
git push -q origin main 2> /dev/null
cd - > /dev/null
FILE_BYTES=$((MB * 1024 * 1024))

echo "== local disk"
cat "$W/work/big.bin" > /dev/null
t0=$(now); cat "$W/work/big.bin" > /dev/null; t1=$(now); DISK=$(secs "$t0" "$t1")

echo "== git lfs pull"
GIT_LFS_SKIP_SMUDGE=1 git clone -q "http://127.0.0.1:$GP/big.git" "$W/clone"
(cd "$W/clone" && git lfs install --local > /dev/null)
t0=$(now); (cd "$W/clone" && git lfs pull); t1=$(now); PULL=$(secs "$t0" "$t1")

cat > "$W/config.toml" <<EOF
mount_root = "$W/mnt"
cache_dir = "$W/cache"
cache_size = "4GiB"
[[repository]]
name = "big"
provider = "git"
url = "http://127.0.0.1:$GP/big.git"
EOF
start() {
  "$BIN" --config "$W/config.toml" mount 2>> "$W/daemon.log" &
  DAEMON_PID=$!
  for _ in $(seq 300); do grep -q " $W/mnt/big " /proc/self/mountinfo && break; sleep 0.02; done
  stat "$W/mnt/big/big.bin" > /dev/null
}
stop() { kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=""; }

echo "== repofs: time to first byte (empty cache)"
start
t0=$(now); head -c 1 "$W/mnt/big/big.bin" > /dev/null; t1=$(now); TTFB=$(secs "$t0" "$t1")
stop; rm -rf "$W/cache"

echo "== repofs: cold sequential read (empty cache)"
start
t0=$(now); cat "$W/mnt/big/big.bin" > /dev/null; t1=$(now); COLD=$(secs "$t0" "$t1")
t0=$(now); cat "$W/mnt/big/big.bin" > /dev/null; t1=$(now); WARM=$(secs "$t0" "$t1")
cmp "$W/mnt/big/big.bin" "$W/work/big.bin"
stop

echo "== repofs: first read after a restart (disk cache)"
start
t0=$(now); cat "$W/mnt/big/big.bin" > /dev/null; t1=$(now); RESTART=$(secs "$t0" "$t1")
stop

python3 - <<PY
mb = $FILE_BYTES / 1048576
rows = [
  ("local disk (page cache warm)", $DISK),
  ("git lfs pull", $PULL),
  ("repofs cold read (empty cache)", $COLD),
  ("repofs warm read (kernel cache)", $WARM),
  ("repofs read after restart (disk cache)", $RESTART),
]
print()
print(f"LFS file: {mb:.0f} MB")
print(f"{'operation':42} {'seconds':>8} {'MB/s':>9}")
for name, t in rows:
    print(f"{name:42} {t:8.3f} {mb/max(t,1e-6):9.1f}")
print(f"{'repofs time to first byte (empty cache)':42} {$TTFB:8.3f}")
print(f"ratio repofs cold / git lfs pull time:     {$COLD/max($PULL,1e-6):.2f}x")
print(f"ratio repofs warm / local disk time:       {$WARM/max($DISK,1e-6):.2f}x")
PY
