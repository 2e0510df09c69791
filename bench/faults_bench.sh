#!/usr/bin/env bash
# Benchmark: the 16-reader walk of a git mount on a clean network and on a
# bad one, side by side in one run.
#
#   bench/faults_bench.sh [FILES] [MEGABYTES] [SEED] [LIMIT_S]
#       (default 5000 files, 60 MB, seed 2025, each walk stopped after 900 s)
#
# Generates a repository of FILES incompressible files totalling MEGABYTES
# (bench/gen_tree.py, directories of 100) plus large/ with four files of 1.5
# to 4 MB (streamed reads), publishes it twice (clean.git, faulty.git) on
# tests/support/git_http_server.py, and mounts each with a daemon and cache
# of its own (default settings),
# each through its own tests/support/fault_proxy.py:
#   - clean: the proxy passes everything (same path, no faults);
#   - faulty: per 16 KiB of answer, cut 0.25 %, stalled 3 s then cut 0.1 %,
#     one byte flipped 0.1 % (CUT, STALL, FLIP override; seeded: SEED
#     replays the dice).
# Then 16 threads read every file of each mount (each file once, compared
# with the work tree) and it prints for each: wall time, requests and bytes
# the server sent, EIO count, other errors, wrong files, the slowest read,
# the faults injected, and the faulty/clean ratios.
# Needs root (or FUSE permissions), git, python3, fuse3, curl. Cleans up.
set -euo pipefail
FILES=${1:-5000}
MB=${2:-60}
SEED=${3:-2025}
LIMIT=${4:-900}
# The fault profile per 16 KiB of answer (the issue's: a fault in about 25 %
# of MBs); CUT=0.02 STALL=0.01 FLIP=0.01 is a much harsher network.
CUT=${CUT:-0.0025}
STALL=${STALL:-0.001}
FLIP=${FLIP:-0.001}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-bench.XXXXXX)
. "$ROOT/bench/lib.sh"
SERVER_PIDS=()
DAEMON_PIDS=()
cleanup() {
  for p in "${DAEMON_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  for m in clean faulty; do fusermount3 -u -z "$W/mnt/$m" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

repofs_bin

echo "== generating $FILES files, $MB MB, and large/ (4 files of 1.5 to 4 MB)"
mkdir -p "$W/work" "$W/srv"
gen_tree "$W/work" "$FILES" "$MB"
mkdir -p "$W/work/large"
for i in 1 2 3 4; do head -c "$((i * 1000000 + 500000))" /dev/urandom > "$W/work/large/l$i.bin"; done
commit_all "$W/work"
git clone -q --bare "$W/work" "$W/srv/clean.git"
git clone -q --bare "$W/work" "$W/srv/faulty.git"

start_py "$ROOT/tests/support/git_http_server.py" --root "$W/srv"
GIT_PORT=$PORT
start_py "$ROOT/tests/support/fault_proxy.py" --target "$GIT_PORT" --seed "$SEED" --stats "$W/clean.json"
CLEAN_PORT=$PORT
start_py "$ROOT/tests/support/fault_proxy.py" --target "$GIT_PORT" --seed "$SEED" --stats "$W/faulty.json" \
  --cut "$CUT" --stall "$STALL" --stall-secs 3 --flip "$FLIP"
FAULTY_PORT=$PORT

# One daemon per mount, each with its own cache: blobs are cached by id,
# and both repositories hold the same blobs.
for m in clean faulty; do
  port=$CLEAN_PORT; [ "$m" = faulty ] && port=$FAULTY_PORT
  cat > "$W/$m.toml" <<EOF
mount_root = "$W/mnt"
cache_dir = "$W/cache-$m"
cache_size = "4GiB"
[[repository]]
name = "$m"
provider = "git"
url = "http://127.0.0.1:$port/$m.git"
EOF
  "$BIN" --config "$W/$m.toml" mount 2> "$W/daemon-$m.log" &
  DAEMON_PIDS+=($!)
done
for _ in $(seq 600); do
  grep -q " $W/mnt/clean " /proc/self/mountinfo && grep -q " $W/mnt/faulty " /proc/self/mountinfo && break
  sleep 0.05
done

# walk.py MOUNT WORK: 16 threads read every file once; prints a JSON summary.
cat > "$W/walk.py" <<'PY'
import errno, json, os, sys, threading, time
mnt, work = sys.argv[1], sys.argv[2]
paths = sorted(os.path.relpath(os.path.join(d, f), work) for d, _, fs in os.walk(work)
               if "/.git" not in d + "/" and not d.endswith("/.git") for f in fs)
paths = [p for p in paths if not p.startswith(".git/")]
lock, res, it = threading.Lock(), {"slowest": 0.0, "slowest_path": "", "eio": 0, "errors": 0,
                                   "wrong": 0, "files": len(paths)}, iter(paths)
def reader():
    while True:
        with lock:
            p = next(it, None)
        if p is None:
            return
        t = time.monotonic()
        try:
            with open(os.path.join(mnt, p), "rb") as f:
                got = f.read()
            err = None
        except OSError as e:
            got, err = None, e
        took = time.monotonic() - t
        with open(os.path.join(work, p), "rb") as f:
            want = f.read()
        with lock:
            if took > res["slowest"]:
                res["slowest"], res["slowest_path"] = took, p
            if err is not None:
                res["errors"] += 1
                res["eio"] += err.errno == errno.EIO
            elif got != want:
                res["wrong"] += 1
t0 = time.monotonic()
threads = [threading.Thread(target=reader) for _ in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
res["wall"] = time.monotonic() - t0
print(json.dumps(res))
PY

run_walk() { # NAME: the walk's JSON in $W/NAME.walk (or a timeout marker)
  server_reset "$GIT_PORT"
  timeout --kill-after=10 "$LIMIT" python3 "$W/walk.py" "$W/mnt/$1" "$W/work" > "$W/$1.walk" \
    || echo "{\"timeout\": $LIMIT}" > "$W/$1.walk"
  server_stats "$GIT_PORT" "$1.git" > "$W/$1.server"
}
echo "== 16-reader walk, clean network"
run_walk clean
echo "== 16-reader walk, faulty network (seed $SEED)"
run_walk faulty
sleep 0.3 # the proxies' stats files are written every 0.1 s
cat "$W"/daemon-*.log > "$W/daemon.log"

python3 - "$W" "$FILES" "$MB" "$SEED" "$(grep -c ' WARN \| ERROR ' "$W/daemon.log" || true)" <<'PY'
import json, sys
w, files, mb, seed, warnings = sys.argv[1:6]
rows = {}
for name in ("clean", "faulty"):
    walk = json.load(open(f"{w}/{name}.walk"))
    req, sent = map(int, open(f"{w}/{name}.server").read().split())
    rows[name] = (walk, req, sent, json.load(open(f"{w}/{name}.json")))
print()
print(f"repository: {files} files, {mb} MB + large/ (4 files, 1.5 to 4.5 MB); seed {seed}")
print(f"{'network':8} {'wall s':>8} {'requests':>9} {'MB sent':>8} {'EIO':>5} {'errors':>7} {'wrong':>6} {'slowest s':>10}  slowest file")
for name, (walk, req, sent, _) in rows.items():
    if "timeout" in walk:
        print(f"{name:8} did not finish within {walk['timeout']} s; {req} requests, {sent/1048576:.1f} MB sent")
        continue
    print(f"{name:8} {walk['wall']:8.1f} {req:9d} {sent/1048576:8.1f} {walk['eio']:5d} {walk['errors']:7d} "
          f"{walk['wrong']:6d} {walk['slowest']:10.1f}  {walk['slowest_path']}")
f = rows["faulty"][3]["faults"]
print(f"faults injected: {f['cut']} cuts, {f['stall']} stalls, {f['flip']} flips "
      f"({rows['faulty'][3]['connections']} connections)")
(cw, cr, cs, _), (fw, fr, fs, _) = rows["clean"], rows["faulty"]
if "timeout" not in cw and "timeout" not in fw:
    print(f"ratio faulty/clean: wall {fw['wall']/max(cw['wall'],1e-3):.2f}x, "
          f"requests {fr/max(cr,1):.2f}x, bytes {fs/max(cs,1):.2f}x")
print(f"daemon log: {warnings} warnings/errors")
PY
