#!/usr/bin/env bash
# Serve the app as K replicas (app.py processes) behind Debian's nginx, each client kept on one replica by a
# cookie (deploy/nginx-replicas.conf says how and why). Everything listens on 127.0.0.1 only. nginx runs with
# its own prefix, configuration, pid and logs in one folder (never /etc/nginx or the system service); it is
# installed with apt-get when it is missing and this runs as root. Ctrl-C or SIGTERM stops nginx and every
# replica; so does any of them exiting.
#
# Usage: bash scripts/replicas.sh [--replicas K] [--port P] [--app-ports LIST] [--dir DIR] [-- APP_ARGS...]
#   K: how many replicas (default 2); P: nginx's port (default 8080); LIST: the replicas' ports, comma-separated
#   (default P+1 ... P+K; given, it sets K); DIR: the folder for nginx.conf, nginx.pid, the replicas' pid files,
#   logs/ (access.log, error.log, replica-N.log) and the replicas' gradio temp folders (default: a new temp
#   folder, removed at the end; a given one is kept); APP_ARGS go to every app.py (e.g. --set, --weights-dir).
# Environment: ATTNVIZ_REPLICAS_START_TIMEOUT (seconds to wait for the replicas to serve, default 900).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
replicas=2
port=8080
app_ports=""
dir=""
app_args=()
usage="usage: bash scripts/replicas.sh [--replicas K] [--port P] [--app-ports LIST] [--dir DIR] [-- APP_ARGS...]"
while [ $# -gt 0 ]; do
  case $1 in
    --replicas) replicas=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --app-ports) app_ports=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --) shift; app_args=("$@"); break ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print substr($0, 3) }' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 ($usage)" >&2; exit 2 ;;
  esac
done

say() { printf '[replicas] %s\n' "$*"; }
fail() { echo "error: $*" >&2; exit 1; }
is_port() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le 65535 ]; }

is_port "$port" || fail "--port $port is not a port number"
if [ -n "$app_ports" ]; then
  IFS=, read -r -a ports <<<"$app_ports"
  replicas=${#ports[@]}
else
  [[ $replicas =~ ^[0-9]+$ ]] && [ "$replicas" -ge 1 ] || fail "--replicas $replicas is not a positive number"
  ports=()
  for i in $(seq "$replicas"); do ports+=($((port + i))); done
fi
for p in "${ports[@]}"; do is_port "$p" || fail "replica port $p is not a port number"; done
[ "$(printf '%s\n' "$port" "${ports[@]}" | sort -u | wc -l)" = $((replicas + 1)) ] \
  || fail "the ports are not all different: nginx $port, replicas ${ports[*]}"
start_timeout=${ATTNVIZ_REPLICAS_START_TIMEOUT:-900}

# nginx: Debian's package, the binary only (its system service is never started or used).
nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || [ ! -x /usr/sbin/nginx ] || nginx_bin=/usr/sbin/nginx  # /usr/sbin is not on a user's PATH
if [ -z "$nginx_bin" ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || fail "nginx is missing; install it (as root: apt-get install nginx) or run this as root to have it installed"
  say "installing nginx (apt-get; its own service is not started)"
  bash "$repo/scripts/apt_install.sh" nginx || fail "apt-get could not install nginx"
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi

cd "$repo"
[ -x .venv/bin/python ] || bash scripts/setup.sh  # the first run sets up .venv (scripts/setup.sh)
py=$repo/.venv/bin/python
export GRADIO_ANALYTICS_ENABLED=False

# Every port must be free on 127.0.0.1 before anything starts.
"$py" - "$port" "${ports[@]}" <<'EOF' || exit 1
import socket, sys
for port in map(int, sys.argv[1:]):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: only a listener is in the way
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sys.exit(f"error: 127.0.0.1:{port} is taken ({exc.strerror})")
EOF

keep_dir=1
if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/attnviz-replicas-XXXXXX")
  keep_dir=0
fi
mkdir -p "$dir/logs" "$dir/temp"
dir=$(cd "$dir" && pwd)
# nginx's workers run as an unprivileged user when nginx starts as root: they must reach temp/ (uploads).
chmod 755 "$dir" "$dir/temp"

app_pids=()
nginx_pid=""
stop_all() {
  local pid
  [ -z "$nginx_pid" ] || kill -TERM "$nginx_pid" 2>/dev/null || true
  for pid in "${app_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $nginx_pid "${app_pids[@]}"; do
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  app_pids=()
  nginx_pid=""
}
cleanup() {
  stop_all
  if [ "$keep_dir" = 0 ]; then rm -rf "$dir"; else say "logs kept in $dir/logs"; fi
}
trap cleanup EXIT
trap 'say "stopping"; exit 130' INT
trap 'say "stopping"; exit 143' TERM

# The replicas, all starting at once; each has a gradio temp folder of its own (the files it hands out).
for i in $(seq "$replicas"); do
  p=${ports[$((i - 1))]}
  mkdir -p "$dir/gradio-$i"
  GRADIO_TEMP_DIR=$dir/gradio-$i "$py" app.py --host 127.0.0.1 --port "$p" "${app_args[@]}" \
    >"$dir/logs/replica-$i.log" 2>&1 &
  app_pids+=($!)
  echo $! >"$dir/replica-$i.pid"
  say "replica r$i: app.py on 127.0.0.1:$p (pid $!, log $dir/logs/replica-$i.log)"
done

# In the background, waited for: a signal interrupts `wait` at once (it would wait for a foreground command).
"$py" - "$start_timeout" "${ports[@]}" -- "${app_pids[@]}" <<'EOF' &
import os, sys, time, urllib.request
args = sys.argv[1:]
timeout, ports, pids = float(args[0]), args[1:args.index("--")], args[args.index("--") + 1:]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + timeout
waiting = dict(zip(ports, pids))
while waiting and time.monotonic() < deadline:
    for port, pid in list(waiting.items()):
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z":
            sys.exit(f"error: the replica on port {port} exited (see its log)")
        try:
            with opener.open(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                if answer.status == 200:
                    del waiting[port]
        except OSError:
            pass
    time.sleep(0.5)  # the replicas are importing torch and gradio and loading their models
if waiting:
    sys.exit(f"error: the replicas on ports {', '.join(waiting)} did not serve within {timeout:.0f} s")
EOF
wait $! || exit 1
say "all $replicas replicas serve"

# nginx.conf: deploy/nginx-replicas.conf with this run's nginx port and its replicas' block.
"$py" - "$repo/deploy/nginx-replicas.conf" "$dir/nginx.conf" "$port" "${ports[@]}" <<'EOF'
import re, sys
template, out, port, ports = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
text = open(template).read()
begin = text.index("    # --- replicas: begin")
end = text.index("\n", text.index("    # --- replicas: end"))
ids = [f"r{i}" for i in range(1, len(ports) + 1)]
block = ["    # --- replicas: begin (written by scripts/replicas.sh) ---",
         "    upstream attnviz_new {", "        zone attnviz_new 64k;"]
block += [f"        server 127.0.0.1:{p};" for p in ports] + ["    }"]
for rid, p in zip(ids, ports):
    block += [f"    upstream attnviz_{rid} {{", f"        server 127.0.0.1:{p};"]
    block += [f"        server 127.0.0.1:{q} backup;" for q in ports if q != p] + ["    }"]
block += ["    map $cookie_attnviz_replica $attnviz_upstream {", "        default attnviz_new;"]
block += [f"        {rid} attnviz_{rid};" for rid in ids] + ["    }"]
block += ["    map $upstream_addr $attnviz_answered_by {", '        default "";']
block += [f'        "~(^|\\s)127\\.0\\.0\\.1:{p}$" {rid};' for rid, p in zip(ids, ports)] + ["    }"]
block += ["    # --- replicas: end ---"]
text = text[:begin] + "\n".join(block) + text[end:]
text, listens = re.subn(r"(?m)^(\s*listen )127\.0\.0\.1:\d+;", rf"\g<1>127.0.0.1:{port};", text)
assert listens == 1, "deploy/nginx-replicas.conf should have one listen line"
open(out, "w").write(text)
EOF

nginx_args=(-p "$dir/" -c "$dir/nginx.conf" -e logs/error.log)
"$nginx_bin" -t -q "${nginx_args[@]}" || fail "nginx does not accept $dir/nginx.conf"
"$nginx_bin" "${nginx_args[@]}" -g 'daemon off;' &
nginx_pid=$!
for _ in $(seq 100); do
  kill -0 "$nginx_pid" 2>/dev/null || fail "nginx exited (see $dir/logs/error.log)"
  if "$py" -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()" "$port" \
       2>/dev/null; then break; fi
  sleep 0.1
done
say "nginx on 127.0.0.1:$port (pid $nginx_pid; config $dir/nginx.conf; access log $dir/logs/access.log)"
say "serving http://127.0.0.1:$port/ with $replicas replicas (ports ${ports[*]}); Ctrl-C stops everything"

# Until one of them exits (or a signal comes): then everything stops.
wait -n "$nginx_pid" "${app_pids[@]}" || true
for i in $(seq "$replicas"); do
  kill -0 "${app_pids[$((i - 1))]}" 2>/dev/null || say "replica r$i exited (log $dir/logs/replica-$i.log)"
done
kill -0 "$nginx_pid" 2>/dev/null || say "nginx exited (log $dir/logs/error.log)"
say "stopping everything"
exit 1
