# Shared by the benchmark scripts (sourced): they set ROOT (the repository)
# and W (their work directory), and keep SERVER_PIDS for their cleanup.

# start_py SCRIPT ARGS... : runs a server script that prints "PORT n" first;
# its port goes to $PORT and its pid to SERVER_PIDS.
start_py() {
  local out="$W/port.$RANDOM"
  python3 "$@" > "$out" 2> /dev/null &
  SERVER_PIDS+=($!)
  for _ in $(seq 300); do [ -s "$out" ] && break; sleep 0.1; done
  PORT=$(awk '{print $2}' "$out")
  [ -n "$PORT" ] || { echo "$1 did not start (is tests/support/requirements.txt installed?)" >&2; exit 1; }
}

# server_stats PORT REPO -> "requests bytes" the test git server sent for REPO.
server_stats() { curl -s "http://127.0.0.1:$1/_stats" | python3 -c 'import json,sys; s=json.load(sys.stdin).get(sys.argv[1],{"requests":0,"bytes":0}); print(s["requests"], s["bytes"])' "$2"; }
# server_reset PORT: zeroes the test git server's counts.
server_reset() { curl -s -X POST "http://127.0.0.1:$1/_stats" > /dev/null; }

# gen_tree DIR FILES MB: the seeded tree of bench/gen_tree.py.
gen_tree() { python3 "$ROOT/bench/gen_tree.py" "$@"; }

# repofs_bin: sets BIN to $REPOFS_BIN, or builds this checkout (release).
repofs_bin() {
  if [ -n "${REPOFS_BIN:-}" ]; then
    BIN=$REPOFS_BIN
  else
    echo "== building repofs (release)"
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    BIN="$ROOT/target/release/repofs"
  fi
}

# commit_all DIR: a new repository in DIR with everything in it committed
# on main, by a fixed author.
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
commit_all() { git -C "$1" init -q -b main && git -C "$1" add -A && git -C "$1" commit -q -m bench; }

# now: a timestamp in seconds; secs T0 T1: the seconds between, 3 decimals.
now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
