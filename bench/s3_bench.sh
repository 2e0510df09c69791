#!/usr/bin/env bash
# Benchmark: repofs vs `rclone mount` vs `s3fs` on the same bucket of a local
# S3 server (moto, tests/support/s3_server.py), in one run.
#
#   bench/s3_bench.sh [OBJECT_MB] [KEYS]      (default 1024 MB, 10000 keys)
#
# For each mount it prints: time to first byte of the big object, cold
# sequential read MB/s, warm (second) read MB/s, and `ls -l` of a directory
# of KEYS keys; then ratios against repofs. Needs root (FUSE), python3 with
# tests/support/requirements.txt, and Debian's rclone and s3fs packages
# (apt-get install rclone s3fs).
set -euo pipefail
MB=${1:-1024}
KEYS=${2:-10000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-s3bench.XXXXXX)
. "$ROOT/bench/lib.sh"
PIDS=()
cleanup() {
  for m in "$W"/mnt-*; do fusermount3 -u -z "$m" 2>/dev/null || true; done
  for m in "$W"/mnt-repofs/*; do fusermount3 -u -z "$m" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
for tool in rclone s3fs; do
  command -v "$tool" > /dev/null || { echo "$tool is missing: apt-get install rclone s3fs" >&2; exit 1; }
done

repofs_bin

python3 "$ROOT/tests/support/s3_server.py" > "$W/port" 2> /dev/null &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$W/port" ] && break; sleep 0.1; done
PORT=$(awk '{print $2}' "$W/port")
EP="http://127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test

echo "== seeding: one $MB MB object and $KEYS small keys"
head -c "$((MB * 1024 * 1024))" /dev/urandom > "$W/big.bin"
python3 - "$EP" "$W/big.bin" "$KEYS" <<'PY'
import sys, boto3
from concurrent.futures import ThreadPoolExecutor
ep, path, keys = sys.argv[1], sys.argv[2], int(sys.argv[3])
s3 = boto3.client("s3", endpoint_url=ep, region_name="us-east-1")
s3.create_bucket(Bucket="bench")
s3.upload_file(path, "bench", "big.bin")
def put(i):
    s3.put_object(Bucket="bench", Key="many/key%06d.txt" % i, Body=b"x" * 100)
with ThreadPoolExecutor(8) as ex:
    list(ex.map(put, range(keys)))
PY

mount_repofs() {
  cat > "$W/repofs.toml" <<EOF
mount_root = "$W/mnt-repofs"
cache_dir = "$W/cache"
cache_size = "8GiB"
[[repository]]
name = "bench"
provider = "s3"
bucket = "bench"
endpoint_url = "$EP"
access_key_id = "test"
secret_access_key_file = "$W/secret"
EOF
  echo test > "$W/secret"
  chmod 600 "$W/repofs.toml"
  "$BIN" --config "$W/repofs.toml" mount > /dev/null 2> "$W/repofs.log" &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q " $W/mnt-repofs/bench " /proc/self/mountinfo && break; sleep 0.05; done
  M="$W/mnt-repofs/bench"
}
mount_rclone() {
  mkdir -p "$W/mnt-rclone"
  env -u AWS_CA_BUNDLE rclone mount ":s3:bench" "$W/mnt-rclone" --s3-provider Other --s3-endpoint "$EP" \
    --s3-access-key-id test --s3-secret-access-key test --s3-force-path-style=true \
    --read-only --allow-non-empty > /dev/null 2> "$W/rclone.log" &
  PIDS+=($!)
  for _ in $(seq 300); do grep -q " $W/mnt-rclone " /proc/self/mountinfo && break; sleep 0.05; done
  M="$W/mnt-rclone"
}
mount_s3fs() {
  mkdir -p "$W/mnt-s3fs"
  echo "test:test" > "$W/s3fs.passwd"
  chmod 600 "$W/s3fs.passwd"
  s3fs bench "$W/mnt-s3fs" -o url="$EP" -o use_path_request_style -o passwd_file="$W/s3fs.passwd" -o ro
  for _ in $(seq 300); do grep -q " $W/mnt-s3fs " /proc/self/mountinfo && break; sleep 0.05; done
  M="$W/mnt-s3fs"
}

declare -A TTFB COLD WARM LS
for tool in repofs rclone s3fs; do
  echo "== $tool"
  "mount_$tool"
  m=$M
  t0=$(now); head -c 1 "$m/big.bin" > /dev/null; t1=$(now); TTFB[$tool]=$(secs "$t0" "$t1")
  t0=$(now); cat "$m/big.bin" > /dev/null; t1=$(now); COLD[$tool]=$(secs "$t0" "$t1")
  t0=$(now); cat "$m/big.bin" > /dev/null; t1=$(now); WARM[$tool]=$(secs "$t0" "$t1")
  t0=$(now); ls -l "$m/many" > /dev/null; t1=$(now); LS[$tool]=$(secs "$t0" "$t1")
  cmp "$m/big.bin" "$W/big.bin"
  fusermount3 -u -z "$m" || true
done

python3 - <<PY
mb = $MB
r = {
  "repofs": (${TTFB[repofs]}, ${COLD[repofs]}, ${WARM[repofs]}, ${LS[repofs]}),
  "rclone mount": (${TTFB[rclone]}, ${COLD[rclone]}, ${WARM[rclone]}, ${LS[rclone]}),
  "s3fs": (${TTFB[s3fs]}, ${COLD[s3fs]}, ${WARM[s3fs]}, ${LS[s3fs]}),
}
print()
print(f"object: {mb} MB; directory: $KEYS keys; server: moto on loopback")
print(f"{'mount':14} {'TTFB s':>8} {'cold MB/s':>10} {'warm MB/s':>10} {'ls -l s':>8}")
for name, (ttfb, cold, warm, ls) in r.items():
    print(f"{name:14} {ttfb:8.3f} {mb/cold:10.1f} {mb/warm:10.1f} {ls:8.2f}")
base = r["repofs"]
for name in ("rclone mount", "s3fs"):
    o = r[name]
    # >1 means repofs is better (faster throughput, or less time).
    print(f"repofs vs {name}: cold MB/s x{o[1]/base[1]:.2f}, warm MB/s x{o[2]/base[2]:.2f}, ls -l time x{o[3]/base[3]:.2f}, TTFB x{o[0]/base[0]:.2f} (above 1: repofs better)")
PY
