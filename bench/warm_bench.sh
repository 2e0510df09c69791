#!/usr/bin/env bash
# Benchmark: native speed once cached, and a repository of a million files
# (issue "Native speed once cached"), each figure against its baseline
# measured in the same run.
#
#   bench/warm_bench.sh [FILES] [BIG_MB] [FILES_BIG]
#       (default 5000 files, 1024 MB, 1000000 files; the same names work as
#        environment variables; 0 skips that part)
#
# 1. FILES small files (1-64 KB, incompressible, three levels of directories)
#    in a git repository served by tests/support/git_http_server.py (default
#    profile: no object-info; it counts requests and bytes really sent),
#    mounted twice (refresh = "never"): once with the defaults and once with
#    `xattrs = false`. Each mount reads everything once (cold, checksummed
#    against the work tree; this fills the cache), then, warm, median of 5,
#    interleaved with the same on the native work tree:
#      find -type f | xargs stat > /dev/null       (goal: at most 1.3x native)
#      find -type f | xargs cat > /dev/null        (goal: at most 1.3x native)
#      ls -lR > /dev/null                          (no goal: where xattrs cost)
# 2. One BIG_MB MB incompressible file: read once through a fresh mount (cold,
#    compared with the native file: this puts it in the cache), then
#    `dd if=FILE of=/dev/null bs=1M` after `sync; echo 3 > drop_caches`,
#    median of 3, through the mount and on the native file, in MiB/s (goal:
#    at least 0.9x native). Prints the read mode the daemon's log announces
#    (kernel passthrough for complete cached files, or through the daemon)
#    and, from its metrics, the passthrough opens and the read calls that
#    reached the daemon during the timed reads.
# 3. FILES_BIG files made by `git fast-import` (content "file N\n", distinct
#    per file; directories tNN/mNNN/sNNNN of 1000 files, ten sNNNN per mNNN),
#    served by a second git server, with --object-info when
#    BIG_OBJECT_INFO=1 (default profile otherwise; the output says which):
#      - baseline: git clone --filter=blob:none --no-checkout, and
#        git ls-tree -r HEAD | wc -l in it (first run, and median of 3);
#      - a fresh daemon with an empty cache: daemon start to the first `ls` of
#        the root answering (goal: 1.2x the clone), then `find | wc -l`
#        (cold, timed from the daemon start: goal 2x clone + ls-tree -r),
#        again warm, median of 3 (goal: 2x ls-tree -r);
#      - the daemon's VmRSS and VmHWM after the finds, per file (goal: 200
#        bytes/file), and VmRSS after `echo 2 > drop_caches`;
#      - what the git server sent for the clone and for the cold find;
#      - `grep -r` over t00/m000 (10,000 files), and the cache_dir's
#        apparent size, disk blocks (du) and file count, and the "cache:"
#        line of `repofs status`, after the find and after the grep.
#    The 1,000,000-file default takes long on a small machine: "== ..."
#    lines show progress.
#
# Needs root (FUSE mounts, drop_caches), git, python3, fuse3 and curl
# (scripts/install-deps.sh; the git server needs only python3's standard
# library). Builds target/release/repofs first; REPOFS_BIN=/path/to/repofs
# skips the build and uses that binary. LOG_DIR=dir keeps the daemons' logs.
# FILE_READS=passthrough (or daemon, no-open) sets `file_reads` of every mount.
# Cleans up after itself (daemons, mounts, servers, the work directory).
set -euo pipefail
export LC_ALL=C
FILES=${1:-${FILES:-5000}}
BIG_MB=${2:-${BIG_MB:-1024}}
FILES_BIG=${3:-${FILES_BIG:-1000000}}
BIG_OBJECT_INFO=${BIG_OBJECT_INFO:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=$(mktemp -d /tmp/repofs-warmbench.XXXXXX)
. "$ROOT/bench/lib.sh"
DAEMON_PIDS=()
SERVER_PIDS=()

unmount_all() { # every FUSE mount left under $W
  local m
  for m in $(awk -v w="$W/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo); do
    fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}
cleanup() {
  local p
  for p in "${DAEMON_PIDS[@]+"${DAEMON_PIDS[@]}"}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DAEMON_PIDS[@]+"${DAEMON_PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  unmount_all
  for p in "${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SERVER_PIDS[@]+"${SERVER_PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR"
    for p in "$W"/*/daemon*.log; do [ -e "$p" ] && cp "$p" "$LOG_DIR/$(basename "$(dirname "$p")")-$(basename "$p")"; done
  fi
  # Never remove through a mount that is still there.
  if awk -v w="$W/" 'index($5, w) == 1 {f = 1} END {exit !f}' /proc/self/mountinfo; then
    echo "mounts left under $W; not removing it" >&2
  else
    rm -rf "$W"
  fi
}
trap cleanup EXIT

[ -w /proc/sys/vm/drop_caches ] || { echo "needs root: writes /proc/sys/vm/drop_caches and mounts FUSE file systems" >&2; exit 1; }
repofs_bin

median() { sort -n | awk '{v[NR] = $1} END {printf "%.3f", v[int((NR + 1) / 2)]}'; }
calc() { awk "BEGIN {printf \"%.${2:-2}f\", $1}"; }
drop() { sync; echo "$1" > /proc/sys/vm/drop_caches; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server ROOT [ARGS...] -> its port in $PORT
start_server() {
  local root=$1
  shift
  start_py "$ROOT/tests/support/git_http_server.py" --root "$root" "$@"
}

# write_config DIR NAME URL [TOP-LEVEL LINES...]: DIR/config.toml, mounting at DIR/mnt/NAME.
write_config() {
  local dir=$1 name=$2 url=$3 line
  shift 3
  mkdir -p "$dir"
  {
    echo "mount_root = \"$dir/mnt\""
    echo "cache_dir = \"$dir/cache\""
    echo 'cache_size = "32GiB"'
    [ -z "${FILE_READS:-}" ] || echo "file_reads = \"$FILE_READS\""
    for line in "$@"; do echo "$line"; done
    echo '[[repository]]'
    echo "name = \"$name\""
    echo 'provider = "git"'
    echo "url = \"$url\""
    echo 'refresh = "never"'
  } > "$dir/config.toml"
}
# start_daemon DIR NAME: starts the daemon of DIR/config.toml (log: DIR/daemon.log),
# its pid in $DPID, and waits (up to 15 minutes) for DIR/mnt/NAME to be mounted.
start_daemon() {
  local dir=$1 mnt="$1/mnt/$2" i
  "$BIN" --config "$dir/config.toml" mount 2>> "$dir/daemon.log" &
  DPID=$!
  DAEMON_PIDS+=("$DPID")
  for i in $(seq 90000); do
    grep -q " $mnt " /proc/self/mountinfo && return 0
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.01
  done
  echo "$mnt was not mounted; the daemon's log:" >&2
  tail -30 "$dir/daemon.log" >&2
  exit 1
}
# stop_daemon PID DIR: SIGTERM, wait, then make sure nothing stays mounted there.
stop_daemon() {
  local m p keep=()
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for p in "${DAEMON_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  DAEMON_PIDS=("${keep[@]+"${keep[@]}"}")
  for m in $(awk -v w="$2/mnt/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo); do
    fusermount3 -u -z "$m" 2>/dev/null || true
  done
}
mode_line() { # what the daemon's log says about file reads
  grep -ho 'file reads: [^"]*\|kernel passthrough refused[^"]*' "$1" | sed 's/ *repo=[^ ]*$//; s/ *$//' | sort -u | paste -sd ';' - || true
}
problems() { # LOG LABEL: says how many WARN/ERROR lines the daemon logged, and the first 3
  local n
  n=$(grep -cE 'WARN|ERROR' "$1" || true)
  say "   daemon log ($2): $n WARN/ERROR lines"
  [ "$n" = 0 ] || grep -E 'WARN|ERROR' "$1" | head -3 | cut -c1-240 | sed 's/^/      /' >> "$OUT"
}
inodes() { # the daemon's inode table size (status.json, refreshed by `repofs status`)
  "$BIN" --config "$1/config.toml" status > /dev/null 2>&1 || true
  python3 -c 'import json,sys; print(sum(r.get("inodes", 0) for r in json.load(open(sys.argv[1]))["repositories"]))' "$1/cache/state/status.json" 2>/dev/null || echo "?"
}
cache_line() { "$BIN" --config "$1/config.toml" status 2>/dev/null | grep '^cache:' || echo "cache: (status failed)"; }
du_line() { # cache_dir: apparent size, disk blocks, files
  printf 'apparent %s MiB, disk blocks %s MiB, %s files' \
    "$(calc "$(du -s -b --apparent-size "$1" | cut -f1) / 1048576" 1)" \
    "$(calc "$(du -s -B1 "$1" | cut -f1) / 1048576" 1)" \
    "$(find "$1" -type f | wc -l)"
}
ratio() { calc "$1 / ($2 > 0 ? $2 : 0.001)"; }
verdict() { # VALUE OP GOAL -> met / MISSED
  awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN {ok = (op == "<=") ? (v <= g) : (v >= g); print ok ? "met" : "MISSED"}'
}
OUT="$W/results"
: > "$OUT"
say() { printf '%s\n' "$*" >> "$OUT"; }

# ---------------------------------------------------------------- part 1
if [ "$FILES" -gt 0 ]; then
  echo "== part 1: generating $FILES files of 1-64 KB"
  mkdir -p "$W/srv" "$W/native"
  python3 - "$W/native" "$FILES" <<'PY'
import os, random, sys
root, files = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for i in range(files):
    d = os.path.join(root, "pkg%02d" % (i // 1000), "mod%d" % (i // 100 % 10), "part%d" % (i // 25 % 4))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "file%05d.dat" % i), "wb") as f:
        f.write(rng.randbytes(rng.randint(1024, 65536)))
PY
  git init -q --bare -b main "$W/srv/bench.git"
  git --git-dir="$W/srv/bench.git" --work-tree="$W/native" add -A
  git --git-dir="$W/srv/bench.git" --work-tree="$W/native" commit -q -m bench
  SMALL_DIRS=$(find "$W/native" -mindepth 1 -type d | wc -l)
  SMALL_MB=$(calc "$(du -s -b --apparent-size "$W/native" | cut -f1) / 1048576" 1)
  start_server "$W/srv"
  P1=$PORT
  URL1="http://127.0.0.1:$P1/bench.git"
  tree_sum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 cat | md5sum | cut -d' ' -f1); }
  WANT=$(tree_sum "$W/native")
  write_config "$W/xa" bench "$URL1"
  write_config "$W/nx" bench "$URL1" "xattrs = false"
  for m in xa nx; do
    echo "== part 1: mount ($m) and cold read"
    server_reset "$P1"
    t0=$(now)
    start_daemon "$W/$m" bench
    eval "PID_$m=\$DPID"
    GOT=$(tree_sum "$W/$m/mnt/bench")
    t1=$(now)
    [ "$GOT" = "$WANT" ] || { echo "mount $m read wrong bytes; its log:" >&2; tail -20 "$W/$m/daemon.log" >&2; exit 1; }
    read -r req bytes < <(server_stats "$P1" bench.git)
    eval "COLD_$m=\"$(secs "$t0" "$t1") s, the server sent $(calc "$bytes / 1048576" 1) MiB in $req requests\""
  done
  echo "== part 1: warm runs, 5 rounds (native, default mount, xattrs = false)"
  run_stat() { (cd "$1" && find . -type f -print0 | xargs -0 stat > /dev/null); }
  run_cat() { (cd "$1" && find . -type f -print0 | xargs -0 cat > /dev/null); }
  run_ls() { (cd "$1" && ls -lR > /dev/null); }
  declare -A T1
  for op in stat cat ls; do for where in nat xa nx; do T1[$op.$where]=""; done; done
  for dir in "$W/native" "$W/xa/mnt/bench" "$W/nx/mnt/bench"; do run_cat "$dir"; run_stat "$dir"; run_ls "$dir"; done
  for round in 1 2 3 4 5; do
    for op in stat cat ls; do
      for where in nat xa nx; do
        case $where in nat) dir="$W/native" ;; *) dir="$W/$where/mnt/bench" ;; esac
        t0=$(now); "run_$op" "$dir"; t1=$(now)
        T1[$op.$where]+="$(secs "$t0" "$t1") "
      done
    done
  done
  med() { printf '%s\n' ${T1[$1]} | median; }
  say "1. $FILES files (1-64 KB, $SMALL_MB MiB, $SMALL_DIRS directories in 3 levels), git server: default profile;"
  say "   warm (after one cold read through each mount), median of 5 interleaved rounds"
  say "$(printf '   %-38s %9s %9s %8s   %-9s %s' measure "native s" "repofs s" ratio goal "")"
  for op in stat cat ls; do
    case $op in
      stat) label="find -type f | xargs stat"; goal="1.3" ;;
      cat) label="find -type f | xargs cat"; goal="1.3" ;;
      ls) label="ls -lR (no goal; xattrs show here)"; goal="" ;;
    esac
    n=$(med "$op.nat")
    for where in xa nx; do
      v=$(med "$op.$where"); r=$(ratio "$v" "$n")
      [ "$where" = xa ] && l="$label" || l="  same, xattrs = false"
      if [ -n "$goal" ]; then g="<= ${goal}x"; vd=$(verdict "$r" "<=" "$goal"); else g=""; vd=""; fi
      say "$(printf '   %-38s %9s %9s %7sx   %-9s %s' "$l" "$n" "$v" "$r" "$g" "$vd")"
    done
  done
  say "   cold read (fills the cache), default mount: $COLD_xa"
  say "   cold read, xattrs = false mount:            $COLD_nx"
  say "   read mode (daemon log): $(mode_line "$W/xa/daemon.log")"
  problems "$W/xa/daemon.log" "default mount"
  problems "$W/nx/daemon.log" "xattrs = false mount"
  say ""
  stop_daemon "$PID_xa" "$W/xa"
  stop_daemon "$PID_nx" "$W/nx"
fi

# ---------------------------------------------------------------- part 2
if [ "$BIG_MB" -gt 0 ]; then
  echo "== part 2: generating a $BIG_MB MB file"
  mkdir -p "$W/srv2" "$W/bignative"
  head -c "$((BIG_MB * 1048576))" /dev/urandom > "$W/bignative/blob.bin"
  git init -q --bare -b main "$W/srv2/big.git"
  # Incompressible: store it without zlib work, in the repository and on the wire.
  git --git-dir="$W/srv2/big.git" config core.compression 0
  git --git-dir="$W/srv2/big.git" --work-tree="$W/bignative" add -A
  git --git-dir="$W/srv2/big.git" --work-tree="$W/bignative" commit -q -m big
  start_server "$W/srv2"
  P2=$PORT
  MPORT=$(free_port)
  write_config "$W/big" big "http://127.0.0.1:$P2/big.git" "metrics_listen = \"127.0.0.1:$MPORT\""
  metric() { # NAME [OPERATION]: summed over the labels
    curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v n="$1" -v op="${2:-}" \
      '{split($1, a, "{")} a[1] == n && (op == "" || index($1, "operation=\"" op "\"")) {s += $NF} END {printf "%d", s}'
  }
  echo "== part 2: cold read through the mount"
  t0=$(now)
  start_daemon "$W/big" big
  PID_big=$DPID
  cmp "$W/big/mnt/big/blob.bin" "$W/bignative/blob.bin"
  t1=$(now)
  COLD_BIG=$(secs "$t0" "$t1")
  sleep 1
  echo "== part 2: dd after drop_caches, 3 rounds (native, mount)"
  TN=""; TM=""
  P_OPEN0=$(metric repofs_passthrough_opens_total); READS0=$(metric repofs_fuse_operations_total read)
  for round in 1 2 3; do
    drop 3; t0=$(now); dd if="$W/bignative/blob.bin" of=/dev/null bs=1M status=none; t1=$(now); TN+="$(secs "$t0" "$t1") "
    drop 3; t0=$(now); dd if="$W/big/mnt/big/blob.bin" of=/dev/null bs=1M status=none; t1=$(now); TM+="$(secs "$t0" "$t1") "
  done
  P_OPEN=$(( $(metric repofs_passthrough_opens_total) - P_OPEN0 ))
  READS=$(( $(metric repofs_fuse_operations_total read) - READS0 ))
  SN=$(printf '%s\n' $TN | median); SM=$(printf '%s\n' $TM | median)
  RN=$(calc "$BIG_MB / $SN" 0); RM=$(calc "$BIG_MB / $SM" 0); R=$(ratio "$RM" "$RN")
  say "2. one $BIG_MB MiB file, cached by a cold read ($COLD_BIG s through a fresh mount);"
  say "   sequential read after sync; echo 3 > drop_caches, median of 3"
  say "$(printf '   %-38s %9s %9s %8s   %-9s %s' measure "native" "repofs" ratio goal "")"
  say "$(printf '   %-38s %9s %9s %7sx   %-9s %s' "dd bs=1M, MiB/s" "$RN" "$RM" "$R" ">= 0.9x" "$(verdict "$R" ">=" 0.9)")"
  say "$(printf '   %-38s %9s %9s' "  (seconds)" "$SN" "$SM")"
  say "   read mode (daemon log): $(mode_line "$W/big/daemon.log")"
  say "   during the 3 timed reads: $P_OPEN passthrough opens, $READS read calls answered by the daemon"
  problems "$W/big/daemon.log" "part 2"
  say ""
  stop_daemon "$PID_big" "$W/big"
  rm -f "$W/bignative/blob.bin"
fi

# ---------------------------------------------------------------- part 3
if [ "$FILES_BIG" -gt 0 ]; then
  echo "== part 3: generating $FILES_BIG files with git fast-import"
  mkdir -p "$W/srv3"
  git init -q --bare -b main "$W/srv3/huge.git"
  t0=$(now)
  python3 - "$FILES_BIG" <<'PY' | git --git-dir="$W/srv3/huge.git" fast-import --quiet
import sys
n = int(sys.argv[1])
out = sys.stdout.buffer
out.write(b"commit refs/heads/main\ncommitter bench <bench@example.com> 1700000000 +0000\ndata 6\nhuge\n\n")
buf = []
for i in range(n):
    leaf = i // 1000
    body = b"file %d\n" % i
    buf.append(b"M 100644 inline t%02d/m%03d/s%04d/f%07d.txt\ndata %d\n%s\n"
               % (leaf // 100, leaf // 10, leaf, i, len(body), body))
    if len(buf) == 10000:
        out.write(b"".join(buf)); buf = []
out.write(b"".join(buf))
out.write(b"\n")
PY
  t1=$(now)
  GEN_T=$(secs "$t0" "$t1")
  echo "   generated in $GEN_T s"
  if [ "$BIG_OBJECT_INFO" = 1 ]; then
    start_server "$W/srv3" --object-info; PROFILE="--object-info (object-info advertised)"
  else
    start_server "$W/srv3"; PROFILE="default (no object-info: sizes come from fetching the small blobs)"
  fi
  P3=$PORT
  URL3="http://127.0.0.1:$P3/huge.git"

  echo "== part 3: baseline: git clone --filter=blob:none --no-checkout, git ls-tree -r"
  server_reset "$P3"
  t0=$(now); git clone -q --filter=blob:none --no-checkout "$URL3" "$W/clone3"; t1=$(now)
  CLONE_T=$(secs "$t0" "$t1")
  read -r CLONE_REQ CLONE_BYTES < <(server_stats "$P3" huge.git)
  LST=""
  for round in 1 2 3; do
    t0=$(now); NLS=$(git -C "$W/clone3" ls-tree -r HEAD | wc -l); t1=$(now)
    LST+="$(secs "$t0" "$t1") "
  done
  LS1=${LST%% *}
  LSM=$(printf '%s\n' $LST | median)
  WANT_FIND=$(( $(git -C "$W/clone3" ls-tree -r -t HEAD | wc -l) + 1 ))
  COLD_BASE=$(calc "$CLONE_T + $LS1" 3)

  echo "== part 3: repofs, empty cache: daemon start to the first ls of the root"
  D3="$W/huge"
  write_config "$D3" huge "$URL3"
  M3="$D3/mnt/huge"
  server_reset "$P3"
  t0=$(now)
  start_daemon "$D3" huge
  PID_huge=$DPID
  ls "$M3" > /dev/null
  t1=$(now)
  FIRST_LS=$(secs "$t0" "$t1")
  rss() { awk -v k="$1:" '$1 == k {print $2 * 1024}' "/proc/$PID_huge/status"; }
  RSS0=$(rss VmRSS)
  echo "   $FIRST_LS s; == part 3: find | wc -l, cold"
  NFIND=$(find "$M3" | wc -l)
  t2=$(now)
  COLD_FIND=$(secs "$t0" "$t2")
  FIND_ONLY=$(secs "$t1" "$t2")
  read -r FIND_REQ FIND_BYTES < <(server_stats "$P3" huge.git)
  DU_FIND=$(du_line "$D3/cache")
  CACHE_FIND=$(cache_line "$D3")
  echo "   $COLD_FIND s; == part 3: find | wc -l, warm, 3 runs"
  FT=""
  for round in 1 2 3; do
    t0=$(now); n=$(find "$M3" | wc -l); t1=$(now); FT+="$(secs "$t0" "$t1") "
    [ "$n" = "$NFIND" ] || echo "   warm find saw $n entries, the cold one $NFIND" >&2
  done
  WARM_FIND=$(printf '%s\n' $FT | median)
  RSS=$(rss VmRSS); HWM=$(rss VmHWM); INO=$(inodes "$D3")
  echo "== part 3: echo 2 > drop_caches"
  drop 2
  sleep 3
  RSS_DROP=$(rss VmRSS); INO_DROP=$(inodes "$D3")
  echo "== part 3: grep -r over t00/m000"
  NSUB=$(git -C "$W/clone3" ls-tree -r HEAD t00/m000 | wc -l)
  server_reset "$P3"
  t0=$(now); NGREP=$( (grep -rxF "file 4242" "$M3/t00/m000" || true) | wc -l); t1=$(now)
  GREP_T=$(secs "$t0" "$t1")
  read -r GREP_REQ GREP_BYTES < <(server_stats "$P3" huge.git)
  DU_GREP=$(du_line "$D3/cache")
  CACHE_GREP=$(cache_line "$D3")

  mib() { calc "$1 / 1048576" 1; }
  say "3. $FILES_BIG files (git fast-import, ${GEN_T} s; content \"file N\\n\"; 1000 files per directory, 3 levels),"
  say "   git server profile: $PROFILE"
  say "$(printf '   %-34s %-32s %9s %9s %8s   %-9s %s' measure baseline "base s" "repofs s" ratio goal "")"
  r=$(ratio "$FIRST_LS" "$CLONE_T")
  say "$(printf '   %-34s %-32s %9s %9s %7sx   %-9s %s' "daemon start to first ls of root" "clone --filter=blob:none" "$CLONE_T" "$FIRST_LS" "$r" "<= 1.2x" "$(verdict "$r" "<=" 1.2)")"
  r=$(ratio "$COLD_FIND" "$COLD_BASE")
  say "$(printf '   %-34s %-32s %9s %9s %7sx   %-9s %s' "find | wc -l cold, from start" "that clone + ls-tree -r" "$COLD_BASE" "$COLD_FIND" "$r" "<= 2x" "$(verdict "$r" "<=" 2)")"
  r=$(ratio "$WARM_FIND" "$LSM")
  say "$(printf '   %-34s %-32s %9s %9s %7sx   %-9s %s' "find | wc -l warm, median of 3" "ls-tree -r | wc -l, median of 3" "$LSM" "$WARM_FIND" "$r" "<= 2x" "$(verdict "$r" "<=" 2)")"
  say "   (the cold find alone, after the first ls: $FIND_ONLY s; ls-tree -r runs: $LST)"
  say "   entries: find $NFIND (expected $WANT_FIND = files + directories + root), ls-tree -r $NLS"
  BPF=$(calc "$RSS / $FILES_BIG" 0); HPF=$(calc "$HWM / $FILES_BIG" 0); DPF=$(calc "$RSS_DROP / $FILES_BIG" 0)
  say "   daemon RSS after the finds: VmRSS $(mib "$RSS") MiB = $BPF bytes/file, VmHWM $(mib "$HWM") MiB = $HPF bytes/file (goal <= 200 bytes/file: $(verdict "$BPF" "<=" 200)); inode table $INO"
  say "   (VmRSS after the first ls: $(mib "$RSS0") MiB; the finds added $(calc "($RSS - $RSS0) / $FILES_BIG" 0) bytes/file)"
  say "   after echo 2 > drop_caches:  VmRSS $(mib "$RSS_DROP") MiB = $DPF bytes/file; inode table $INO_DROP"
  say "   git server sent: blobless clone $(mib "$CLONE_BYTES") MiB in $CLONE_REQ requests; repofs start + cold find $(mib "$FIND_BYTES") MiB in $FIND_REQ requests"
  say "   grep -rxF over t00/m000 ($NSUB files): $GREP_T s, $NGREP match(es) (expected 1 if file 4242 exists), the server sent $(mib "$GREP_BYTES") MiB in $GREP_REQ requests"
  say "   cache_dir after the cold find: $DU_FIND; status: $CACHE_FIND"
  say "   cache_dir after the grep:      $DU_GREP; status: $CACHE_GREP"
  say "   read mode (daemon log): $(mode_line "$D3/daemon.log")"
  problems "$D3/daemon.log" "part 3"
  say ""
  stop_daemon "$PID_huge" "$D3"
fi

echo
echo "== results (each ratio against its baseline measured in this run; $(uname -r), $(nproc) CPUs)"
echo
cat "$OUT"
