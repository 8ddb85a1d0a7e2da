"""Ray's own ``ray start``, kept on loopback: ``python tests/raynode.py --head --node-ip-address=127.0.0.1 ...``.

Ray replaces a node address of 127.0.0.1 with the machine's outward address (``resolve_ip_for_localhost``) unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, and with that variable set a second node cannot join (``ray start
--address`` refuses: "Multi-node Ray clusters are not supported"). The tests need a real two-node cluster that
listens on 127.0.0.1 only (these machines flag traffic beyond loopback), so this runs ``ray start`` with that
one function made the identity for loopback addresses: every other part is Ray's.
"""

import ipaddress
import sys

from ray._private import services
from ray.scripts import scripts

_resolve = services.resolve_ip_for_localhost


def _keep_loopback(host: str) -> str:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    return _resolve(host)


services.resolve_ip_for_localhost = _keep_loopback

if __name__ == "__main__":
    sys.argv = ["ray", "start", *sys.argv[1:]]
    sys.exit(scripts.main())
