"""The app's warm-up (attnviz.warmup): one grey request's work before the first real one, in a thread that
imports nothing, with one line of outcome; and the page's default method needs no pytorch-grad-cam."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import make_model_set
from servers import REPO

from attnviz import warmup
from attnviz.explainer import get_explainer
from attnviz.render import templates
from attnviz.weights import Manifest


def test_startup_set_is_the_one_asked_for_else_the_default_else_the_first(tmp_path):
    weights = make_model_set(tmp_path, "first", crop=32, variants=("resnet50",))
    make_model_set(weights, "second", crop=32, variants=("resnet50",), make_default=False)
    manifest = Manifest(weights)
    assert warmup.startup_set(manifest) == "first"
    assert warmup.startup_set(manifest, "second") == "second"
    assert warmup.startup_set(manifest, "missing") is None
    manifest.data["default_set"] = "gone"
    assert warmup.startup_set(manifest) == "first"
    assert warmup.startup_set(Manifest(tmp_path / "empty")) is None


def test_warm_up_loads_the_set_once_runs_it_and_draws_every_figure_layout(tmp_path):
    weights = make_model_set(tmp_path, "warm", crop=32)
    templates.clear_templates()
    seconds = warmup.warm_up(weights)
    assert seconds > 0
    drawn = set(templates._TEMPLATES)
    kinds = {key[0] for key in drawn}
    assert {"channel", "spatial"} <= kinds, kinds  # SE / ECA and CBAM's figures: their templates exist now
    explainer = get_explainer("warm", str(weights))
    warmup.warm_up(weights)  # a second warm-up reuses the set and draws no new layout
    assert get_explainer("warm", str(weights)) is explainer
    assert set(templates._TEMPLATES) == drawn


def test_start_logs_one_line_and_a_broken_set_says_what_is_wrong_without_raising(tmp_path):
    weights = make_model_set(tmp_path / "good", "ok", crop=32, variants=("resnet50",))
    lines: list[str] = []
    thread = warmup.start(weights, None, lines.append)
    thread.join(60)
    assert lines == [lines[0]] and lines[0].startswith("attnviz: model set 'ok' loaded and run once in ")

    broken = make_model_set(tmp_path / "bad", "broken", crop=32, variants=("resnet50",))
    checkpoint = broken / "broken" / "resnet50.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-64] + bytes(64))  # the sha256 in the manifest no longer fits
    lines.clear()
    thread = warmup.start(broken, None, lines.append)
    thread.join(60)
    assert len(lines) == 1 and lines[0].startswith("error: model set 'broken' could not be loaded and run: ")
    assert "sha256" in lines[0] or "checksum" in lines[0], lines[0]


def test_start_makes_no_thread_for_a_set_that_is_not_installed(tmp_path):
    weights = make_model_set(tmp_path, "only", crop=32, variants=("resnet50",))
    lines: list[str] = []
    assert warmup.start(weights, "other", lines.append) is None  # the app says it is not installed, once
    assert warmup.start(tmp_path / "nothing-here", None, lines.append) is None
    assert lines == []


CHECK_IMPORTS = """
import json, sys
import attnviz.warmup as warmup
before = set(sys.modules)
warmup.warm_up(sys.argv[1])
print(json.dumps({"imported": sorted(set(sys.modules) - before),
                  "pytorch_grad_cam": "pytorch_grad_cam" in sys.modules}))
"""


def test_the_warm_up_imports_nothing_and_the_default_method_needs_no_pytorch_grad_cam(tmp_path):
    """In a fresh process: after ``import attnviz.warmup`` the warm-up (load, Grad-CAM with the page's
    defaults, every figure) imports no module, and pytorch-grad-cam (a second of start-up) is never imported."""
    weights = make_model_set(tmp_path, "fresh", crop=32)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, str(weights)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"imported": [], "pytorch_grad_cam": False}
