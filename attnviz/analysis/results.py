"""Reading what an analysis run wrote, and where: all that the app's Analysis tab needs of the analysis."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from attnviz.analysis.config import ANALYSIS_DIR, FORMAT, JSON_NAME
from attnviz.attention import family
from attnviz.errors import AttnvizError
from attnviz.weights import Manifest


def finite(value):
    """The result with every NaN or infinity as None, so that analysis.json is strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def read_result(folder: Path) -> dict:
    """The analysis.json of an earlier run."""
    path = Path(folder) / JSON_NAME
    if not path.is_file():
        raise AttnvizError(f"{path} does not exist: run python -m attnviz.analyze first")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AttnvizError(f"{path}: not valid JSON ({exc.msg}); run python -m attnviz.analyze again") from None
    if result.get("format") == 1:
        result = _upgrade_format_1(result)
    if result.get("format") != FORMAT:
        raise AttnvizError(f"{path}: written by another version of attnviz; run python -m attnviz.analyze again")
    return result


def _upgrade_format_1(result: dict) -> dict:
    """Format 1 had one "spatial" section, that of the set's one spatially gated model; format 2 has one per
    model. Everything else is the same."""
    spatial = result.get("spatial") or {}
    gated = [v for v in result.get("variants", []) if "spatial" in family(v).kinds()]
    if spatial and len(gated) != 1:
        raise AttnvizError("an analysis.json of format 1 with spatial attention but not one spatially gated model; "
                           "run python -m attnviz.analyze again")
    return {**result, "format": 2, "spatial": {gated[0]: spatial} if spatial else {}}


def analysis_dir(weights_dir: Path | str | None, set_name: str | None) -> Path:
    """Where the analysis of a model set lives: ``<weights dir>/<set>/analysis``."""
    manifest = Manifest(Path(weights_dir) if weights_dir else None)
    return manifest.weights_dir / (set_name or manifest.default_set) / ANALYSIS_DIR


def regenerate_command(set_name: str, weights_dir: Path | str | None = None) -> str:
    command = f"python -m attnviz.analyze --set {shlex.quote(set_name)}"
    if weights_dir is not None:
        command += f" --weights-dir {shlex.quote(str(weights_dir))}"
    return command
