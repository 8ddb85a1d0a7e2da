"""Serve the attnviz web app: [--host H] [--port P] [--set NAME] [--weights-dir DIR].

``app.py`` at the repository's top level and ``python -m attnviz.serve`` (for an installed attnviz, with
``--weights-dir`` or ``ATTNVIZ_WEIGHTS`` naming a weights folder) both run ``main``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
WARM_UP_WAIT_S = 60  # the longest the server waits for the models' warm-up before serving the page anyway


def _log(line: str) -> None:
    print(line, file=sys.stderr if line.startswith("error") else sys.stdout, flush=True)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse the options, warm the default set up, build the page and serve it until interrupted; 2 (with one
    line on stderr) when no model set can be served."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--set", dest="set_name", help="the model set selected at start (default: the manifest's)")
    parser.add_argument("--weights-dir", type=Path, help="folder holding manifest.json (default: $ATTNVIZ_WEIGHTS "
                                                         "or weights/)")
    args = parser.parse_args(argv)

    # The models load and run once in the background while gradio is imported and the page built (one line says
    # when, or what is wrong); the page is served once that is done (or after WARM_UP_WAIT_S at most), so that
    # the first request costs what a later one does.
    from attnviz import warmup

    warming = warmup.start(args.weights_dir, args.set_name, _log)

    from attnviz.errors import AttnvizError
    from attnviz.get_imagenet import downloads_allowed
    from attnviz.ui import AttnvizApp, launch

    try:
        # the ImageNet download button: on loopback by default, elsewhere only with ATTNVIZ_DOWNLOADS=1
        app = AttnvizApp(args.weights_dir, args.set_name, downloads=downloads_allowed(args.host))
    except AttnvizError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Optional password protection (e.g. in the Docker image): ATTNVIZ_PASSWORD, user ATTNVIZ_USER.
    password = os.environ.get("ATTNVIZ_PASSWORD")
    auth = [(os.environ.get("ATTNVIZ_USER") or "attnviz", password)] if password else None
    demo = app.build()
    if warming is not None:
        warming.join(WARM_UP_WAIT_S)
    launch(demo, host=args.host, port=args.port, auth=auth)
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m attnviz.serve"))
