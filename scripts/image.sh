#!/usr/bin/env bash
# Build the Docker image with buildah, without any container registry, and check that it serves the app:
#   1. a Debian bookworm base made with debootstrap from Debian's archive, in buildah's own storage (made once:
#      later runs reuse it, and the build reuses its cached layers);
#   2. `buildah bud` of the Dockerfile on that base; pip reaches the package index through this machine's pip
#      settings, handed to the build as secrets (nothing of them is stored in the image);
#   3. for the Dockerfile's user (10001) and for uid 1000 (the uid Hugging Face Spaces run images as): the
#      image's CMD started in a container (host network, listening on 127.0.0.1 only), the image's HEALTHCHECK
#      command run in that container until it passes, an image sent to /explain with gradio_client, the app's
#      process uid read, and write probes into the code, the weights and the app's own writable paths;
#   4. the image's size and the build time printed;
#   5. with --imagenet DIR: the image built again with the Dockerfile's IMAGENET build argument, importing the
#      three ImageNet files in DIR (copied into a build context of their own), and the set verified in it.
# Needs root (buildah with chroot isolation); installs buildah and debootstrap with apt-get when they are missing.
#
# Usage: bash scripts/image.sh [--context DIR] [--imagenet FILES]
#   DIR: the build context (default: this repository); FILES: a folder with the three ImageNet files
#   (python -m attnviz.weights import imagenet --files), torchvision's being the V1 release
# Environment: ATTNVIZ_BUILDAH_DIR (storage and base, default /var/tmp/attnviz-buildah), TORCH_INDEX_URL (default:
# PyTorch's CPU index when it answers, else the package index pip uses here, i.e. the CUDA build from PyPI),
# DEBIAN_MIRROR (default: this machine's apt mirror), ATTNVIZ_IMAGE_START_TIMEOUT (seconds, default 900).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
context=$repo
imagenet_files=""
while [ $# -gt 0 ]; do
  case $1 in
    --context) context=$(cd "$2" && pwd); shift 2 ;;
    --imagenet) imagenet_files=$(cd "$2" && pwd); shift 2 ;;
    -h|--help) sed -n '2,23p' "$0" | cut -c3-; exit 0 ;;
    *) echo "error: unknown argument $1 (usage: bash scripts/image.sh [--context DIR] [--imagenet FILES])" >&2
       exit 2 ;;
  esac
done

store=${ATTNVIZ_BUILDAH_DIR:-/var/tmp/attnviz-buildah}
image=localhost/attnviz:latest
base=localhost/attnviz-base:bookworm
start_timeout=${ATTNVIZ_IMAGE_START_TIMEOUT:-900}
py=$repo/.venv/bin/python
export GRADIO_ANALYTICS_ENABLED=False

say() { printf '[image] %s\n' "$*"; }
fail() { echo "error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "scripts/image.sh runs buildah as root (chroot isolation); run it as root"
case $store in "$repo"|"$repo"/*) fail "ATTNVIZ_BUILDAH_DIR=$store is inside the repository; choose a folder outside it" ;; esac
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || fail "buildah and debootstrap are missing and there is no apt-get to install them"
  say "installing buildah and debootstrap (apt-get)"
  bash "$repo/scripts/apt_install.sh" buildah debootstrap \
    || fail "apt-get could not install buildah and debootstrap"
fi
[ -x "$py" ] || bash "$repo/scripts/setup.sh"   # the host side (gradio_client, JSON) runs in the project's venv

mkdir -p "$store"
exec 9>"$store/lock"
flock -n 9 || { say "another scripts/image.sh uses $store; waiting for it"; flock 9; }
B=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver overlay)

# Containers of an earlier run that was killed (the lock says none of ours is running now).
for name in $("${B[@]}" containers --format '{{.ContainerName}}' 2>/dev/null | grep '^attnviz-check-' || true); do
  "${B[@]}" rm "$name" >/dev/null
done

app_pid=""
work=$(mktemp -d "$store/run-XXXXXX")
cleanup() {
  stop_app
  for name in $("${B[@]}" containers --format '{{.ContainerName}}' 2>/dev/null | grep "^attnviz-check-$$-" || true); do
    "${B[@]}" rm "$name" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
descendants() {  # the process $1 and all its descendants, by pid
  "$py" - "$1" <<'EOF'
import os, sys
children = {}
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry))
todo, found = [int(sys.argv[1])], []
while todo:
    pid = todo.pop()
    found.append(pid)
    todo += children.get(pid, [])
print(" ".join(map(str, found)))
EOF
}
stop_app() {
  [ -n "$app_pid" ] || return 0
  local pids
  pids=$(descendants "$app_pid")
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$app_pid" 2>/dev/null || break; sleep 0.5; done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  wait "$app_pid" 2>/dev/null || true
  app_pid=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --------------------------------------------------------------------------- 1. the base
base_s=0
if "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  say "base $base: already in $store, reused"
else
  mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/*$/\1/p' /etc/apt/sources.list.d/*.sources \
                            2>/dev/null | head -1)}
  mirror=${mirror:-http://deb.debian.org/debian}
  say "base $base: debootstrap bookworm from $mirror"
  t0=$(date +%s)
  ctr=$("${B[@]}" from --name "attnviz-check-$$-base" scratch)
  root=$("${B[@]}" mount "$ctr")
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" config --env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd python3 "$ctr"
  "${B[@]}" commit --quiet --format docker --rm "$ctr" "$base" >/dev/null
  base_s=$(( $(date +%s) - t0 ))
  say "base $base: made in ${base_s} s"
fi

# --------------------------------------------------------------------------- 2. the build
# This machine's pip settings that make sense inside the build: the certificate bundle and http(s) indexes
# (file:// indexes and find-links are folders of this machine).
pip_setting() {  # $1: environment variable, $2: pip config key
  local value=${!1:-}
  [ -n "$value" ] || value=$("$py" -m pip config get "global.$2" 2>/dev/null || true)
  printf '%s' "$value"
}
secrets=()
pipconf=$work/pip.conf
echo "[global]" >"$pipconf"
cert=$(pip_setting PIP_CERT cert)
if [ -n "$cert" ] && [ -f "$cert" ]; then
  secrets+=(--secret "id=pipcert,src=$cert")
  echo "cert = /run/secrets/pipcert" >>"$pipconf"
fi
index=$(pip_setting PIP_INDEX_URL index-url)
case $index in http://*|https://*) echo "index-url = $index" >>"$pipconf" ;; *) index="" ;; esac
extra=$(for url in $(pip_setting PIP_EXTRA_INDEX_URL extra-index-url); do
          case $url in http://*|https://*) printf '%s ' "$url" ;; esac; done)
[ -z "$extra" ] || echo "extra-index-url = $extra" >>"$pipconf"
timeout=$(pip_setting PIP_DEFAULT_TIMEOUT timeout)
[ -n "$timeout" ] || timeout=$(pip_setting PIP_DEFAULT_TIMEOUT default-timeout)
[ -z "$timeout" ] || echo "timeout = $timeout" >>"$pipconf"
secrets+=(--secret "id=pipconf,src=$pipconf")

cpu_index=https://download.pytorch.org/whl/cpu
if [ -z "${TORCH_INDEX_URL:-}" ]; then
  if "$py" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1] + '/torch/', timeout=10)" "$cpu_index" \
       >/dev/null 2>&1; then
    TORCH_INDEX_URL=$cpu_index
  else
    TORCH_INDEX_URL=${index:-https://pypi.org/simple}
    say "PyTorch's CPU index does not answer here: torch comes from $TORCH_INDEX_URL (the CUDA build, larger)"
  fi
fi

say "building $image from $context (base $base, torch from $TORCH_INDEX_URL)"
t0=$(date +%s)
if ! "${B[@]}" bud --isolation chroot --format docker --layers --force-rm --pull=never \
       --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" "${secrets[@]}" \
       -f "$repo/Dockerfile" -t "$image" "$context" >"$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  fail "buildah bud failed (the end of its log is above)"
fi
build_s=$(( $(date +%s) - t0 ))
grep -E '^(\[[0-9]+/[0-9]+\] )?STEP [0-9]+/[0-9]+: |^--> Using cache' "$work/build.log" | sed 's/^/[image]   /' \
  | cut -c1-120
reused=$(grep -c '^--> Using cache' "$work/build.log" || true)
say "built $image in ${build_s} s (${reused} cached layers reused)"
# Earlier builds' images and stages that nothing names any more; the layers of this image stay, as the cache.
"${B[@]}" rmi --prune >/dev/null 2>&1 || true

# The image's size: the sum of its layers (uncompressed, as stored), and buildah's own rounding.
"${B[@]}" inspect --type image "$image" >"$work/inspect.json"
read -r size_bytes cmd_json health_json user <<<"$("$py" - "$work/inspect.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
manifest = json.loads(data["Manifest"])
config = data["Docker"]["config"]
health = (config.get("Healthcheck") or {}).get("Test") or []
print(sum(layer["size"] for layer in manifest["layers"]),
      json.dumps(config["Cmd"], separators=(",", ":")).replace(" ", "\\u0020"),
      json.dumps(health, separators=(",", ":")).replace(" ", "\\u0020"),
      config.get("User") or "root")
EOF
)"
size_human=$("${B[@]}" images --format '{{.Size}}' "$image" | head -1)
[ "$health_json" != "[]" ] || fail "the image has no HEALTHCHECK (was it built with --format oci?)"
as_array() {  # JSON list -> NUL-separated words; drops a leading "CMD" (a HEALTHCHECK's exec form)
  "$py" -c 'import json, sys; t = json.loads(sys.argv[1]); t = t[1:] if t[:1] == ["CMD"] else t
if t[:1] == ["CMD-SHELL"]: t = ["/bin/sh", "-c", t[1]]
sys.stdout.write("\0".join(t))' "$1"
}
mapfile -d '' start_cmd < <(as_array "$cmd_json")
mapfile -d '' health_cmd < <(as_array "$health_json")

# --------------------------------------------------------------------------- 3. the app in the image
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
write_probe='me=$(id -u); bad=0
for d in /app /app/attnviz /app/weights /app/weights/builtin /opt/venv/bin /opt/venv/lib/python3*/site-packages; do
  if (: >"$d/.attnviz-write-probe") 2>/dev/null; then echo "uid $me can write into $d"; rm -f "$d/.attnviz-write-probe"; bad=1; fi
done
for f in /app/app.py /app/attnviz/__init__.py /app/weights/manifest.json /app/weights/builtin/cbam.safetensors; do
  if (: >>"$f") 2>/dev/null; then echo "uid $me can write to $f"; bad=1; fi
done
for d in "$HOME" "$MPLCONFIGDIR" "${GRADIO_TEMP_DIR:-/tmp}" /tmp; do
  mkdir -p "$d" 2>/dev/null
  if (: >"$d/.attnviz-write-probe") 2>/dev/null; then rm -f "$d/.attnviz-write-probe"; else echo "uid $me cannot write into $d"; bad=1; fi
done
exit $bad'

check_as() {  # $1: "" for the image's own USER, or a uid given to buildah run --user
  local who=${1:-$user} ctr port url t0 deadline ok=0
  local -a user_opt=()
  [ -z "$1" ] || user_opt=(--user "$1")
  ctr=$("${B[@]}" from --pull=never --name "attnviz-check-$$-${1:-default}" "$image")
  port=$(free_port)
  url=http://127.0.0.1:$port/
  say "as user $who: starting ${start_cmd[*]} on 127.0.0.1:$port"
  t0=$(date +%s)
  "${B[@]}" run --isolation chroot "${user_opt[@]}" --env GRADIO_SERVER_NAME=127.0.0.1 \
    --env "GRADIO_SERVER_PORT=$port" "$ctr" -- "${start_cmd[@]}" >"$work/app-$who.log" 2>&1 &
  app_pid=$!
  deadline=$(( t0 + start_timeout ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$app_pid" 2>/dev/null || { tail -30 "$work/app-$who.log" >&2; fail "the app exited as user $who (log above)"; }
    if "${B[@]}" run --isolation chroot "${user_opt[@]}" --env "GRADIO_SERVER_PORT=$port" "$ctr" -- \
         "${health_cmd[@]}" >/dev/null 2>&1; then ok=1; break; fi
    sleep 2  # the app is still starting (importing torch and gradio, loading three models)
  done
  [ "$ok" = 1 ] || { tail -30 "$work/app-$who.log" >&2; fail "the health check did not pass within ${start_timeout} s"; }
  say "as user $who: the image's health check passes after $(( $(date +%s) - t0 )) s"

  local uids
  uids=$("$py" - $(descendants "$app_pid") <<'EOF'
import sys
uids = set()
for pid in sys.argv[2:]:  # the first is buildah itself
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    if cmdline[0].rsplit(b"/", 1)[-1].startswith(b"python") and b"app.py" in cmdline:
        uids.add(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
print(" ".join(sorted(uids)))
EOF
  )
  [ -n "$uids" ] || fail "no app.py process found under the container"
  [ "$uids" != 0 ] && [[ " $uids " != *" 0 "* ]] || fail "the app runs as root"
  [ -z "$1" ] || [ "$uids" = "$1" ] || fail "the app runs as uid $uids, not $1"
  say "as user $who: the app's process runs as uid $uids"

  "$py" - "$url" "$repo/examples/scene_00_cat.png" <<'EOF' || fail "/explain did not give the three models' results"
import sys, time
from gradio_client import Client, handle_file
t0 = time.monotonic()
summary, images, archive = Client(sys.argv[1], analytics_enabled=False, verbose=False).predict(
    handle_file(sys.argv[2]), api_name="/explain")
models = summary["models"]
assert sorted(models) == ["cbam", "resnet50", "se"], sorted(models)
assert images, "no images came back"
tops = ", ".join(f"{v}: {m['top'][0]['name']} {m['top'][0]['probability']:.2f}" for v, m in models.items())
print(f"[image]   /explain answered in {time.monotonic() - t0:.1f} s: {tops}; {len(images)} images")
EOF

  if ! "${B[@]}" run --isolation chroot "${user_opt[@]}" "$ctr" -- /bin/sh -c "$write_probe" >"$work/probe.log" 2>&1
  then
    cat "$work/probe.log" >&2
    fail "write probes failed as user $who (above)"
  fi
  say "as user $who: cannot write the code or the weights; can write HOME, MPLCONFIGDIR, GRADIO_TEMP_DIR"
  stop_app
  "${B[@]}" rm "$ctr" >/dev/null
}

check_as ""
check_as 1000

if [ -n "$imagenet_files" ]; then
  # The same Dockerfile and context, with the three files in a folder of the context: every layer before the
  # IMAGENET step is the cached one of the build above.
  ctx=$work/context-imagenet
  mkdir -p "$ctx"
  for item in Dockerfile .dockerignore pyproject.toml README.md app.py requirements.txt attnviz weights; do
    cp -al "$context/$item" "$ctx/" 2>/dev/null || cp -a "$context/$item" "$ctx/"
  done
  cp -al "$imagenet_files" "$ctx/imagenet-files" 2>/dev/null || cp -a "$imagenet_files" "$ctx/imagenet-files"
  imagenet_image=localhost/attnviz-imagenet:latest
  say "building $imagenet_image with --build-arg IMAGENET=imagenet-files"
  t0=$(date +%s)
  if ! "${B[@]}" bud --isolation chroot --format docker --layers --force-rm --pull=never \
         --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" \
         --build-arg IMAGENET=imagenet-files --build-arg IMAGENET_TORCHVISION=V1 "${secrets[@]}" \
         -f "$ctx/Dockerfile" -t "$imagenet_image" "$ctx" >"$work/build-imagenet.log" 2>&1; then
    tail -40 "$work/build-imagenet.log" >&2
    fail "buildah bud with IMAGENET failed (the end of its log is above)"
  fi
  say "built $imagenet_image in $(( $(date +%s) - t0 )) s"
  ctr=$("${B[@]}" from --pull=never --name "attnviz-check-$$-imagenet" "$imagenet_image")
  if ! "${B[@]}" run --isolation chroot "$ctr" -- python -m attnviz.weights verify >"$work/verify.log" 2>&1; then
    cat "$work/verify.log" >&2
    fail "the image's model sets do not verify (above)"
  fi
  sed 's/^/[image]   /' "$work/verify.log"
  grep -q '^imagenet/cbam: ok$' "$work/verify.log" || fail "the image has no imagenet set"
  if "${B[@]}" run --isolation chroot "$ctr" -- sh -c 'ls -d /tmp/imagenet-cache' >/dev/null 2>&1; then
    fail "the libraries' caches were left in the image"
  fi
  "${B[@]}" rm "$ctr" >/dev/null
  say "image $imagenet_image: the imagenet set of the build argument verifies, beside the built-in one"
  "${B[@]}" rmi "$imagenet_image" >/dev/null 2>&1 || true
fi

base_note="base made in ${base_s} s"
[ "$base_s" != 0 ] || base_note="base reused"
say "image $image: ${size_human} (${size_bytes} bytes of layers), built in ${build_s} s" \
    "(${reused} cached layers reused, ${base_note}), torch from $TORCH_INDEX_URL"
