"""Launch the attnviz web app: python app.py [--host H] [--port P] [--set NAME] [--weights-dir DIR].

A thin launcher: the app is ``attnviz.serve`` (also ``python -m attnviz.serve``, for an installed attnviz).
"""

import sys

from attnviz.serve import main

if __name__ == "__main__":
    sys.exit(main(prog="python app.py"))
