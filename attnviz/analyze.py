"""``python -m attnviz.analyze``: the analysis' command line (the code is the package ``attnviz.analysis``).

    python -m attnviz.analyze                          # the default set; 28.5 min + 7.5 min (sanity) on 2 cores
    python -m attnviz.analyze --set NAME --quick       # about a minute: a handful of scenes, to try it out
"""

import sys

from attnviz.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
