"""Time attnviz's explain path against a forward pass, default pytorch-grad-cam and TorchCAM, on one machine.

    python bench/bench_explain.py [--runs 21] [--set NAME] [--weights-dir DIR] [--layers layer4 layer3 ...]
                                  [--image PATH] [--json bench/results/explain.json]

For every target layer, each repetition runs every measured variant once, in a
rotating round-robin order, so that machine noise hits all of them alike:

* ``forward``   - the model alone, eval mode, under ``torch.no_grad``;
* ``pgc``       - pytorch-grad-cam as users write it, on a copy of the model whose
                  parameters require grad: ``with GradCAM(model, target_layers=[layer]) as cam: cam(x, targets=None)``;
* ``torchcam``  - TorchCAM's GradCAM: forward, then ``extractor(class_idx, scores)``; hooks removed on exit;
* ``attnviz``   - ``ModelExplainer.explain`` for one model; ``Explainer.explain`` (image in) for the three;
* ``handler``   - the app's full handler (CAMs, top-k, every attention map, rendering), when attnviz.ui has one.

The three-model figures of forward / pgc / torchcam are per-repetition sums.
The JSON also records the machine, peak RSS, and the max abs difference between
attnviz's map and default pytorch-grad-cam's map for the benchmarked image.
The other bench scripts import the helpers defined here.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import importlib.util
import inspect
import json
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnviz.models import TARGET_LAYERS, VARIANTS  # noqa: E402

RESULTS = REPO / "bench" / "results"
HAS_TORCHCAM = importlib.util.find_spec("torchcam") is not None  # a benchmark-only dependency
RANDOM_SET = "bench-random"
UI_BLOCKS_BUILDERS = ("build_app", "build_ui", "build_demo", "build_blocks", "create_app", "create_demo", "make_app")
RENDER_SKIP_WORDS = ("archive", "zip", "download", "save", "write", "export")

# --------------------------------------------------------------------------- machine and memory


def _cpuinfo() -> tuple[str, int | None, set[str]]:
    """CPU model name, physical core count and feature flags from /proc/cpuinfo (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown", None, set()
    model, flags, cores = "unknown", set(), set()
    physical = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model == "unknown":
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
            cores.add((physical, core))
    return model, (len(cores) or None), flags


def bf16_support() -> dict:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX), and whether torch's oneDNN uses it."""
    _, _, flags = _cpuinfo()
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = None
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "onednn_bf16": onednn}


def machine_info() -> dict:
    model, physical_cores, _ = _cpuinfo()
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores,
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bf16": bf16_support(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


def _proc_status_kb(field_name: str, pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident set size now, in MiB (Linux /proc)."""
    kb = _proc_status_kb("VmRSS", pid)
    return None if kb is None else round(kb / 1024, 1)


def peak_rss_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size, in MiB: VmHWM, else ru_maxrss for this process."""
    kb = _proc_status_kb("VmHWM", pid)
    if kb is None and pid == "self":
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return None if kb is None else round(kb / 1024, 1)


# --------------------------------------------------------------------------- models and images


def exit_on_sigterm() -> None:
    """A terminated benchmark still runs its atexit clean-up (the temporary weights and images)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def prepare_weights(set_name: str | None, weights_dir: str | Path | None, force_random: bool = False
                    ) -> tuple[str | None, Path | None, str]:
    """The model set to benchmark: the one asked for, else random full ResNet50s (224 px) registered in a temp dir.

    Returns (set name, weights dir, a note saying which). ``ATTNVIZ_WEIGHTS`` is pointed at the weights dir so
    that the app's own loading (in the handler) finds the same set.
    """
    from attnviz.weights import Manifest

    if not force_random:
        manifest = Manifest(Path(weights_dir) if weights_dir else None)
        if manifest.path.exists() and (set_name or manifest.default_set) in manifest.set_names():
            os.environ["ATTNVIZ_WEIGHTS"] = str(manifest.weights_dir)
            name = set_name or manifest.default_set
            return name, manifest.weights_dir, f"model set {name!r} from {manifest.path}"
        if set_name or weights_dir:
            raise SystemExit(f"model set {set_name or manifest.default_set!r} is not in {manifest.path}; "
                             f"leave out --set/--weights-dir to benchmark random weights")
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_model_set  # the tests' random full ResNet50 models

    from attnviz.scenes import CLASSES

    directory = Path(tempfile.mkdtemp(prefix="attnviz-bench-weights-"))
    atexit.register(shutil.rmtree, directory, True)
    make_model_set(directory, RANDOM_SET, classes=list(CLASSES), crop=224)
    os.environ["ATTNVIZ_WEIGHTS"] = str(directory)
    reason = "--random given" if force_random else "weights/manifest.json has no model set yet"
    return RANDOM_SET, directory, (f"random weights ({reason}): full ResNet50 / +SE / +CBAM, {len(CLASSES)} classes, "
                                   f"224 px, made by tests/conftest.py make_model_set")


def example_images() -> list[Path]:
    return sorted((REPO / "examples").glob("*.png"))


def bench_image(path: str | None) -> Path:
    """The benchmarked image: --image, else the first single-object example, else a generated scene."""
    if path:
        return Path(path)
    examples = example_images()
    singles = [p for p in examples if p.name.startswith("scene_")]
    if singles or examples:
        return (singles or examples)[0]
    return generated_images(1)[0]


def generated_images(count: int) -> list[Path]:
    """``count`` test scenes from attnviz.scenes written as PNGs to a temp dir (when examples/ is empty)."""
    from PIL import Image

    from attnviz.scenes import make_scene

    directory = Path(tempfile.mkdtemp(prefix="attnviz-bench-images-"))
    atexit.register(shutil.rmtree, directory, True)
    paths = []
    for i in range(count):
        path = directory / f"scene_{i:02d}.png"
        Image.fromarray(make_scene(0, "test", i).image).save(path)
        paths.append(path)
    return paths


def trainable_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose parameters require grad, as a model loaded by a user is: what default pytorch-grad-cam sees."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone


def retained_grad_mb(models: list[torch.nn.Module]) -> float:
    total = sum(p.grad.numel() * p.grad.element_size() for m in models for p in m.parameters() if p.grad is not None)
    return round(total / 2**20, 1)


def write_results(path: str | Path, out: dict) -> None:
    """A benchmark's results as indented JSON (folders made as needed), and where they went."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


# --------------------------------------------------------------------------- the app's handler


@dataclass
class AppHandler:
    """The app's full request handler, called as the app would call it; ``note`` says what was found."""

    call: Callable[[Path, str], object]
    note: str
    takes_layer: bool

    def __call__(self, image: Path, layer: str = "layer4") -> object:
        return self.call(image, layer)


def _drain(result: object) -> object:
    """A generator handler (progress updates) runs to its end; its last value is the result."""
    if inspect.isgenerator(result):
        last = None
        for last in result:  # noqa: B007
            pass
        return last
    return result


def _choice_values(component) -> list:
    values = []
    for choice in getattr(component, "choices", None) or []:
        values.append(choice[1] if isinstance(choice, (tuple, list)) else choice)
    return values


def _handler_from_blocks(blocks) -> AppHandler | None:
    """The function behind the Blocks' ``explain`` endpoint, given the image and every other input's UI default."""
    import gradio as gr
    from PIL import Image

    block_fn = next((f for f in blocks.fns.values() if str(f.api_name or "").lstrip("/") == "explain"), None)
    if block_fn is None:
        return None
    image_index = next((i for i, c in enumerate(block_fn.inputs) if isinstance(c, (gr.Image, gr.File))), 0)
    layer_index = next((i for i, c in enumerate(block_fn.inputs) if set(TARGET_LAYERS) <= set(_choice_values(c))),
                       None)
    defaults = []
    for component in block_fn.inputs:
        value = getattr(component, "value", None)
        defaults.append(value() if callable(value) else value)
    image_component = block_fn.inputs[image_index]
    kind = getattr(image_component, "type", "filepath")
    cache: dict[Path, object] = {}

    def image_value(path: Path) -> object:  # what Gradio's preprocess hands the function; decoded once, untimed
        if path not in cache:
            if kind == "numpy":
                cache[path] = np.asarray(Image.open(path).convert("RGB"))
            elif kind == "pil":
                cache[path] = Image.open(path).convert("RGB")
            else:
                cache[path] = str(path)
        return cache[path]

    def call(path: Path, layer: str) -> object:
        values = list(defaults)
        values[image_index] = image_value(path)
        if layer_index is not None:
            values[layer_index] = layer
        if block_fn.inputs_as_dict:
            return _drain(block_fn.fn(dict(zip(block_fn.inputs, values, strict=True))))
        return _drain(block_fn.fn(*values))

    name = getattr(block_fn.fn, "__qualname__", repr(block_fn.fn))
    note = f"attnviz.ui: {name}, the function of the app's 'explain' endpoint, with the UI's default inputs"
    if layer_index is None:
        note += " (no layer input found: measured at the UI's default layer only)"
    return AppHandler(call, note, layer_index is not None)


def _handler_from_render(set_name: str | None, weights_dir: str | Path | None) -> AppHandler | None:
    """No UI yet: Explainer.explain followed by every public attnviz.render function that takes the Explanation."""
    try:
        import attnviz.render as render
    except ImportError:
        return None
    from attnviz.explainer import ExplainSettings, get_explainer

    functions = []
    for name, fn in vars(render).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != render.__name__:
            continue
        if any(word in name for word in RENDER_SKIP_WORDS):
            continue
        params = list(inspect.signature(fn).parameters.values())
        required = [p for p in params if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                                          p.POSITIONAL_OR_KEYWORD)]
        if len(required) == 1 and "Explanation" in str(required[0].annotation):
            functions.append(fn)
    if not functions:
        return None

    def call(path: Path, layer: str) -> object:
        explanation = get_explainer(set_name, str(weights_dir) if weights_dir else None).explain(
            path, ExplainSettings(layer=layer))
        return [fn(explanation) for fn in functions]

    names = ", ".join(f.__name__ for f in functions)
    return AppHandler(call, f"no handler in attnviz.ui: Explainer.explain + attnviz.render ({names})", True)


def _call_with(fn: Callable, **available) -> object:
    """Call ``fn`` with those of ``available`` that it names; a TypeError if it needs anything else."""
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in available.items() if k in params}
    return fn(**kwargs)


def _ui_blocks(ui, available: dict, problems: list[str]) -> list:
    """The app's Blocks: module-level ones, else built by a builder function or by a class's ``build()``."""
    import gradio as gr

    found = [v for v in vars(ui).values() if isinstance(v, gr.Blocks)]
    for name, obj in vars(ui).items():
        if found:
            break
        if getattr(obj, "__module__", None) != ui.__name__:
            continue
        try:
            if inspect.isclass(obj) and callable(getattr(obj, "build", None)):
                built = _call_with(obj, **available).build()
            elif inspect.isfunction(obj) and name in UI_BLOCKS_BUILDERS:
                built = _call_with(obj, **available)
            else:
                continue
        except Exception as exc:  # a half-written UI must not stop the other measurements
            problems.append(f"attnviz.ui.{name} could not build the app: {type(exc).__name__}: {exc}")
            continue
        built = built[0] if isinstance(built, tuple) else built
        if isinstance(built, gr.Blocks):
            found.append(built)
    return found


def find_app_handler(set_name: str | None = None, weights_dir: str | Path | None = None
                     ) -> tuple[AppHandler | None, str]:
    """The app's full handler if attnviz.ui (or attnviz.render) exists, else None and a note saying why.

    The handler is the function behind the app's ``explain`` endpoint, found in the Blocks that attnviz.ui builds
    (a module-level Blocks, a builder function, or a class with ``build()`` constructed with the weights dir).
    """
    problems = []
    try:
        import attnviz.ui as ui
    except ImportError as exc:
        ui = None
        problems.append(f"attnviz.ui cannot be imported ({exc})")
    except Exception as exc:  # a half-written UI must not stop the other measurements
        ui = None
        problems.append(f"importing attnviz.ui failed: {type(exc).__name__}: {exc}")
    if ui is not None:
        available = {"weights_dir": weights_dir, "default_set": set_name, "set_name": set_name}
        for blocks in _ui_blocks(ui, available, problems):
            handler = _handler_from_blocks(blocks)
            if handler is not None:
                return handler, handler.note
        problems.append("attnviz.ui built no Blocks with an 'explain' endpoint")
    handler = _handler_from_render(set_name, weights_dir)
    if handler is not None:
        return handler, handler.note + "; " + "; ".join(problems)
    problems.append("attnviz.render has no public function taking an Explanation")
    return None, "skipped the app handler: " + "; ".join(problems)


# --------------------------------------------------------------------------- timing


def summarise(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000
    return {
        "median_ms": round(float(np.median(ms)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "min_ms": round(float(ms.min()), 2),
        "runs": len(ms),
        "samples_ms": [round(float(v), 2) for v in ms],
    }


def round_robin(tasks: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Run every task once per repetition, starting one later each time; seconds per task and repetition."""
    names = list(tasks)
    for _ in range(warmup):
        for name in names:
            tasks[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(runs):
        start = rep % len(names)
        for name in names[start:] + names[:start]:
            began = time.perf_counter()
            tasks[name]()
            times[name].append(time.perf_counter() - began)
    return times


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


# --------------------------------------------------------------------------- the variants measured


def run_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def run_pgc_default(model: torch.nn.Module, x: torch.Tensor, layer: str) -> np.ndarray:
    from pytorch_grad_cam import GradCAM

    with GradCAM(model, target_layers=[getattr(model, layer)]) as cam:
        return cam(x, targets=None)


def pgc_default_with_target(model: torch.nn.Module, x: torch.Tensor, layer: str) -> tuple[np.ndarray, int]:
    from pytorch_grad_cam import GradCAM

    with GradCAM(model, target_layers=[getattr(model, layer)]) as cam:
        heatmap = cam(x, targets=None)[0]
        return heatmap, int(cam.outputs[0].argmax())


def run_torchcam(model: torch.nn.Module, x: torch.Tensor, layer: str) -> list[torch.Tensor]:
    from torchcam.methods import GradCAM

    with GradCAM(model, target_layer=layer) as extractor:  # the exit removes its hooks
        scores = model(x)
        return extractor(int(scores[0].argmax()), scores)


# --------------------------------------------------------------------------- main


def measure_layer(layer: str, explainer, baselines: dict, x: torch.Tensor, image: Path, handler: AppHandler | None,
                  runs: int, warmup: int) -> dict:
    from attnviz.explainer import ExplainSettings

    settings = ExplainSettings(layer=layer, top_k=min(5, len(explainer.classes)))
    variants = list(explainer.explainers)
    kinds = ("forward", "pgc", "torchcam", "attnviz") if HAS_TORCHCAM else ("forward", "pgc", "attnviz")
    tasks: dict[str, Callable[[], object]] = {}
    for v in variants:
        model, trainable = explainer.explainers[v].model, baselines[v]
        tasks[f"forward:{v}"] = lambda m=model: run_forward(m, x)
        tasks[f"pgc:{v}"] = lambda m=trainable: run_pgc_default(m, x, layer)
        if HAS_TORCHCAM:
            tasks[f"torchcam:{v}"] = lambda m=trainable: run_torchcam(m, x, layer)
        tasks[f"attnviz:{v}"] = lambda e=explainer.explainers[v]: e.explain(x, settings)
    tasks["attnviz:three"] = lambda: explainer.explain(image, settings)
    if handler is not None and (handler.takes_layer or layer == "layer4"):
        tasks["handler:three"] = lambda: handler(image, layer)
    times = round_robin(tasks, runs, warmup)

    per_model = {v: {kind: summarise(times[f"{kind}:{v}"]) for kind in kinds} for v in variants}
    three = {kind: summarise([sum(rep) for rep in zip(*(times[f"{kind}:{v}"] for v in variants), strict=True)])
             for kind in kinds if kind != "attnviz"}
    three["attnviz"] = summarise(times["attnviz:three"])
    if "handler:three" in times:
        three["handler"] = summarise(times["handler:three"])

    def med(entry: dict, kind: str) -> float | None:
        return entry.get(kind, {}).get("median_ms")

    ratios = {
        "per_model": {v: {"explain_over_forward": ratio(med(r, "attnviz"), med(r, "forward")),
                          "torchcam_over_forward": ratio(med(r, "torchcam"), med(r, "forward")),
                          "pgc_default_over_forward": ratio(med(r, "pgc"), med(r, "forward")),
                          "pgc_default_over_explain": ratio(med(r, "pgc"), med(r, "attnviz")),
                          "torchcam_over_explain": ratio(med(r, "torchcam"), med(r, "attnviz"))}
                      for v, r in per_model.items()},
        "three": {"explain_over_forward": ratio(med(three, "attnviz"), med(three, "forward")),
                  "pgc_default_over_explain": ratio(med(three, "pgc"), med(three, "attnviz")),
                  "handler_over_forward": ratio(med(three, "handler"), med(three, "forward"))},
    }

    equivalence = {}
    for v in variants:
        baseline_map, baseline_target = pgc_default_with_target(baselines[v], x, layer)
        result = explainer.explainers[v].explain(x, settings)
        equivalence[v] = {"max_abs_diff": float(np.abs(result.heatmap - baseline_map).max()),
                          "target": result.target.index, "same_target": result.target.index == baseline_target}
    return {"per_model": per_model, "three": three, "ratios": ratios, "equivalence_with_pgc_default": equivalence}


def targets_at_layer4(result: dict) -> dict:
    """The issue's targets, as ratios of medians from this run."""
    out = {}
    for v, r in result["ratios"]["per_model"].items():
        rm = result["per_model"][v]
        out[f"{v}: explain <= 1.15x forward"] = _target(r["explain_over_forward"], 1.15, "<=")
        detail = f"attnviz {rm['attnviz']['median_ms']} ms, TorchCAM {rm['torchcam']['median_ms']} ms" \
            if "torchcam" in rm else None
        out[f"{v}: explain faster than TorchCAM"] = _target(r["torchcam_over_explain"], 1.0, ">", detail)
        out[f"{v}: default pytorch-grad-cam >= 3x explain"] = _target(r["pgc_default_over_explain"], 3.0, ">=")
    out["all models: default pytorch-grad-cam >= 3x explain"] = _target(
        result["ratios"]["three"]["pgc_default_over_explain"], 3.0, ">=")
    out["all models: handler <= 1.3x their forwards"] = _target(result["ratios"]["three"]["handler_over_forward"],
                                                                1.3, "<=")
    worst = max(e["max_abs_diff"] for e in result["equivalence_with_pgc_default"].values())
    out["maps equal default pytorch-grad-cam (max abs diff <= 1e-4)"] = _target(worst, 1e-4, "<=")
    return out


def _target(value: float | None, limit: float, op: str, detail: str | None = None) -> dict:
    if value is None:
        return {"value": None, "limit": f"{op} {limit}", "met": None}
    met = {"<=": value <= limit, ">=": value >= limit, ">": value > limit}[op]
    out = {"value": value, "limit": f"{op} {limit}", "met": bool(met)}
    if detail:
        out["detail"] = detail
    return out


def print_layer(layer: str, result: dict) -> None:
    def cell(entry: dict, kind: str) -> str:
        s = entry.get(kind)
        return f"{s['median_ms']:8.1f} /{s['p90_ms']:7.1f}" if s else f"{'-':>16}"

    header = f"{'':10} {'forward':>16} {'pgc default':>16} {'TorchCAM':>16} {'attnviz':>16} {'handler':>16}" \
             f" {'expl/fwd':>9} {'pgc/expl':>9}"
    print(f"\n{layer}: median / p90 ms" + (" (targets)" if layer == "layer4" else " (reported, not targeted)"))
    print(header)
    for v, entry in result["per_model"].items():
        r = result["ratios"]["per_model"][v]
        print(f"{v:10} {cell(entry, 'forward')} {cell(entry, 'pgc')} {cell(entry, 'torchcam')} "
              f"{cell(entry, 'attnviz')} {'':>16} {r['explain_over_forward']:9.3f} "
              f"{r['pgc_default_over_explain']:9.3f}")
    entry, r = result["three"], result["ratios"]["three"]
    handler = f" handler/fwd {r['handler_over_forward']:.3f}" if r["handler_over_forward"] else ""
    print(f"{'three':10} {cell(entry, 'forward')} {cell(entry, 'pgc')} {cell(entry, 'torchcam')} "
          f"{cell(entry, 'attnviz')} {cell(entry, 'handler')} {r['explain_over_forward']:9.3f} "
          f"{r['pgc_default_over_explain']:9.3f}{handler}")
    diffs = ", ".join(f"{v} {e['max_abs_diff']:.2e}" for v, e in result["equivalence_with_pgc_default"].items())
    print(f"max abs diff attnviz vs default pytorch-grad-cam: {diffs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed repetitions per variant (default 21)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions first (default 3)")
    parser.add_argument("--set", dest="set_name", help="model set name (default: the manifest's default set)")
    parser.add_argument("--weights-dir", help="weights folder holding manifest.json (default: weights/)")
    parser.add_argument("--random", action="store_true", help="benchmark random-weight models even if a set exists")
    parser.add_argument("--layers", nargs="+", default=["layer4", "layer3", "layer2", "layer1"],
                        choices=TARGET_LAYERS, help="target layers; layer4 carries the targets")
    parser.add_argument("--image", help="image to explain (default: the first examples/scene_*.png)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default for this machine)")
    parser.add_argument("--no-handler", action="store_true", help="skip the app handler")
    parser.add_argument("--json", default=str(RESULTS / "explain.json"), help="where to write the results")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    exit_on_sigterm()

    from attnviz.explainer import get_explainer
    from attnviz.images import load_image, preprocess

    machine = machine_info()
    rss_start = rss_mb()
    set_name, weights_dir, set_note = prepare_weights(args.set_name, args.weights_dir, args.random)
    explainer = get_explainer(set_name, str(weights_dir))  # the process-wide one, which the app's handler shares
    loaded = explainer.model_set
    rss_loaded = rss_mb()
    baselines = {v: trainable_copy(e.model) for v, e in explainer.explainers.items()}
    image = bench_image(args.image)
    x = preprocess(load_image(image), loaded.preprocessing).tensor
    if args.no_handler:
        handler, handler_note = None, "skipped (--no-handler)"
    else:
        handler, handler_note = find_app_handler(set_name, weights_dir)
    notes = [set_note, handler_note]
    if machine["load_average_at_start"][0] > 0.5 * (machine["usable_cpus"] or 1):
        notes.append(f"the machine was busy at the start (load average {machine['load_average_at_start'][0]}): "
                     f"these timings are not those of an idle machine")
    if not HAS_TORCHCAM:
        notes.append("TorchCAM is not installed (pip install torchcam): its column is left out")
    if len(explainer.explainers) < len(VARIANTS):
        notes.append(f"the set has only {', '.join(explainer.explainers)}: three-model figures cover those")
    print(f"machine: {machine['cpu']}, {machine['usable_cpus']} usable CPUs, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads, load average {machine['load_average_at_start']}")
    print(f"models: {set_note}\nimage: {image} -> {tuple(x.shape)}\nhandler: {handler_note}")
    print(f"runs: {args.runs} per variant after {args.warmup} warm-up, round-robin")

    layers = {}
    for layer in args.layers:
        layers[layer] = measure_layer(layer, explainer, baselines, x, image, handler, args.runs, args.warmup)
        print_layer(layer, layers[layer])
        if handler is not None and not handler.takes_layer and layer != "layer4":
            layers[layer]["note"] = "the handler has no layer input: measured at layer4 only"
    targets = targets_at_layer4(layers["layer4"]) if "layer4" in layers else {}
    for name, t in targets.items():
        state = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        print(f"target {name}: {t['value']} ({t['limit']}) {state}")

    three_fwd = layers.get("layer4", {}).get("three", {}).get("forward", {}).get("median_ms")
    handler_ms = layers.get("layer4", {}).get("three", {}).get("handler", {}).get("median_ms")
    if three_fwd and handler_ms and handler_ms < three_fwd:
        notes.append("the handler took less than three forward passes: check that it explained the image "
                     "rather than returning an error message")
    memory = {
        "rss_at_start_mb": rss_start,
        "rss_after_loading_set_mb": rss_loaded,
        "rss_at_end_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "pgc_default_retained_param_grads_mb": retained_grad_mb(list(baselines.values())),
        "note": "one process holds the set plus a requires-grad copy of each model for the baselines; "
                "default pytorch-grad-cam leaves every parameter's .grad allocated after a call (counted above); "
                "bench/bench_memory.py measures each path in its own process",
    }
    machine["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = {
        "benchmark": "bench/bench_explain.py",
        "machine": machine,
        "config": {"runs": args.runs, "warmup": args.warmup, "image": str(image), "input": list(x.shape),
                   "set": set_name, "classes": len(loaded.classes), "layers": args.layers,
                   "order": "round-robin, rotating start each repetition"},
        "notes": notes,
        "layers": layers,
        "targets_layer4": targets,
        "memory": memory,
    }
    print(f"peak RSS {memory['peak_rss_mb']} MB; default pytorch-grad-cam left "
          f"{memory['pgc_default_retained_param_grads_mb']} MB of parameter gradients allocated")
    write_results(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
