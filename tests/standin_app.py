"""The app for tests that press its ImageNet download button without internet: ``python tests/standin_app.py
ARGS`` (ARGS as app.py's) with the stand-ins of tests/standins.py in the libraries' caches (TORCH_HOME,
HF_HUB_CACHE) and ATTNVIZ_TEST_PYTORCHCV_SHA1 naming the stand-in's sha1, which is put in pytorchcv's table."""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from standins import PYTORCHCV_SHA1_ENV, patch_pytorchcv  # noqa: E402

from attnviz.serve import main  # noqa: E402

if __name__ == "__main__":
    patch_pytorchcv(os.environ[PYTORCHCV_SHA1_ENV])
    sys.exit(main(prog="python tests/standin_app.py"))
