"""python -m attnviz.analysis: the same command as python -m attnviz.analyze."""

import sys

from attnviz.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
