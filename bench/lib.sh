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
