"""An installed attnviz, away from the checkout: the example scenes and texts come with the package, and without a
weights folder the app, the CLI and the weights command say in one line where they looked and how to point them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install --no-deps --target`` of this checkout (its dependencies are this environment's)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "--target", str(target), str(REPO)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def run(installed: Path, cwd: Path, *args: str, weights: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("ATTNVIZ_WEIGHTS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(installed), GRADIO_ANALYTICS_ENABLED="False", MPLBACKEND="Agg")
    if weights is not None:
        env["ATTNVIZ_WEIGHTS"] = str(weights)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


PACKAGE = """
import json, attnviz, attnviz.page as page, attnviz.texts as texts
print(json.dumps({"package": attnviz.__file__, "examples": sorted(p.name for p in page.EXAMPLES_DIR.glob("*.png")),
                  "languages": [lang for lang in texts.LANGUAGES if texts.locale(lang)]}))
"""


def test_the_installed_package_carries_the_example_scenes_and_the_texts(installed, tmp_path):
    done = run(installed, tmp_path, "-c", PACKAGE)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).is_relative_to(installed)  # not the checkout's copy
    assert found["examples"] == sorted(p.name for p in (REPO / "attnviz" / "examples").glob("*.png"))
    assert len(found["examples"]) >= 10
    assert found["languages"] == ["en", "zh-CN"]


def test_without_a_weights_folder_each_entry_point_says_where_it_looked_and_how_to_point_it(installed, tmp_path):
    looked = str(installed / "weights")
    app = run(installed, tmp_path, "-m", "attnviz.serve", "--port", str(free_port()))  # nothing to serve: exit 2
    listing = run(installed, tmp_path, "-m", "attnviz.weights", "list")  # an empty list is an answer: exit 0
    for done, code, stream in ((app, 2, app.stderr), (listing, 0, listing.stdout)):
        assert done.returncode == code, (done.args, done.stderr[-2000:])
        lines = [line for line in stream.splitlines() if line.strip()]
        assert len(lines) == 1, (done.args, stream[-2000:])
        assert looked in lines[0] and "--weights-dir" in lines[0] and "ATTNVIZ_WEIGHTS" in lines[0], lines[0]


def test_with_attnviz_weights_set_the_installed_copy_finds_the_model_sets(installed, tmp_path):
    done = run(installed, tmp_path, "-m", "attnviz.weights", "list", weights=REPO / "weights")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "builtin" in done.stdout
