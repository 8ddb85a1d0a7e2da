#!/usr/bin/env bash
# Install Debian packages quietly (as root), without starting their services: a package such as nginx would
# otherwise start its system service at once, listening on port 80 of every address. A policy-rc.d that refuses
# every start is put in place for the install, unless the machine has one already (containers usually do).
#
#   bash scripts/apt_install.sh nginx git-lfs
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: scripts/apt_install.sh PACKAGE..." >&2; exit 2; }
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
fi
ok=1
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null) || ok=0
[ -z "$policy" ] || rm -f "$policy"
[ "$ok" = 1 ]
