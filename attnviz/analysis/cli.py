"""python -m attnviz.analyze: the command line of the analysis."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch

from attnviz.analysis.config import (
    DATA_DIR,
    DEFAULT_METHODS,
    JSON_NAME,
    PART_TITLES,
    PARTIAL_DIR,
    QUICK,
    QUICK_DIR,
    SECTIONS,
    SKIP_LINES,
    AnalysisConfig,
)
from attnviz.analysis.dataset import VAL_SHARE, folder_name
from attnviz.analysis.report import write_report
from attnviz.analysis.results import analysis_dir, read_result
from attnviz.analysis.run import check_set, run_analysis, run_sections, skipped_parts
from attnviz.batch import UsageError
from attnviz.distributed import add_engine_arguments, engine_problem
from attnviz.errors import AttnvizError
from attnviz.knockout import KNOCKOUT_VALUES
from attnviz.models import VARIANTS
from attnviz.weights import Manifest, load_model_set


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """--images, --masks, --labels and --val-share: measuring on the user's own images."""
    data = parser.add_argument_group(
        "your own images (instead of the scenes; any model set, e.g. an imported ImageNet one)")
    data.add_argument("--images", type=Path, metavar="DIR",
                      help="measure on every image file under DIR (recursive: .png, .jpg, .jpeg, .webp, .gif, .bmp, "
                           ".tif, .tiff), each preprocessed as the set says; needs --masks. Scene-only parts "
                           "(unseen-glyph and two-object scenes) are skipped. Written to <weights dir>/<set>/"
                           + DATA_DIR.format(name="<DIR's name>") + " unless --out says otherwise")
    data.add_argument("--masks", type=Path, metavar="DIR",
                      help="one mask PNG per image: the same relative path and stem with .png (DIR/a/x.jpg -> "
                           "MASKS/a/x.png), the image's size, any mode (binary, greyscale, palette, colour): "
                           "nonzero = object (a palette's index, so e.g. VOC's border index 255 counts too). An image "
                           "without a usable mask is skipped with a line saying why")
    data.add_argument("--masks-on-stored-pixels", action="store_true",
                      help="a photo turned or mirrored on display by its EXIF orientation, whose mask fits it either "
                           "way (a square photo, a half turn): the mask was drawn on the file's stored pixels and is "
                           "turned with the image (default: drawn on the image as shown). A mask that fits one way "
                           "only is always taken that way")
    data.add_argument("--labels", type=Path, metavar="FILE",
                      help="CSV of 'file,class' rows (file: the image's path under --images, with or without its "
                           "extension; class: a class name or index of the set): each image's CAMs explain that class "
                           "and accuracy is measured. Without it each model explains its own top-1 class")
    data.add_argument("--val-share", type=float, metavar="F",
                      help=f"without --threshold: the share of the usable images, at most --val of them, held out at "
                           f"random (--seed) to choose the IoU threshold and not measured (default {VAL_SHARE:g}); "
                           f"with --test N a random N of the others are measured (default all)")


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine ray and its options (the analysis' measuring phases on a Ray cluster; --workers is ROAD's)."""
    add_engine_arguments(
        parser, "local (default), or ray: the measuring phases (val, test, unseen, pairs, Score-CAM, faithfulness, "
                "knock-out, sanity) spread over Ray workers, each unit's values kept in <out>/.attnviz-work until "
                "the report is written, so a run that stopped goes on where it was; workers use CPUs only. Needs "
                "pip install 'attnviz[ray]'", workers="--ray-workers")


def _parser() -> argparse.ArgumentParser:
    defaults = AnalysisConfig()
    parser = argparse.ArgumentParser(
        prog="python -m attnviz.analyze",
        description="Measure localisation and faithfulness per model and CAM method, and the attention read-out, "
        "on attnviz's scenes, or on your own images with a mask each (--images, --masks); writes analysis.json, "
        "analysis.md and PNG plots.",
    )
    parser.add_argument("--set", dest="set_name", help="model set (default: the manifest's default, builtin)")
    parser.add_argument("--weights-dir", type=Path, help="folder holding manifest.json (default: weights/)")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: <weights dir>/<set>/analysis, which the app shows; a quick run or one that "
        "measures less than the default goes to analysis-quick or analysis-partial beside it)",
    )
    parser.add_argument("--models", nargs="+", choices=VARIANTS, help="models to analyse (default: all of the set)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a handful of scenes, 4 steps, no Score-CAM, to try the pipeline (explicit options still win); "
        "written to <weights dir>/<set>/analysis-quick unless --out says otherwise",
    )
    _dataset_arguments(parser)
    sizes = parser.add_argument_group("sample sizes (scenes 0..n-1 of each split; with --images see there)")
    for name, text in (
        ("val", "val scenes that choose the IoU threshold"),
        ("test", "test scenes"),
        ("unseen", "unseen-glyph scenes"),
        ("pairs", "two-object scenes (two CAMs each)"),
        ("faithfulness", "first test scenes that also get deletion / insertion and ROAD"),
        ("scorecam", "first test scenes that also get Score-CAM (slow: 2048 passes per model)"),
    ):
        sizes.add_argument(f"--{name}", type=int, help=f"{text} (default {getattr(defaults, name)})")
    how = parser.add_argument_group("methods and parameters")
    how.add_argument("--methods", nargs="+", help=f"CAM methods at layer4 (default: {' '.join(DEFAULT_METHODS)})")
    how.add_argument("--layers", nargs="+", help="layers for Grad-CAM (default: layer1 layer2 layer3 layer4)")
    how.add_argument("--steps", type=int, help=f"deletion / insertion steps (default {defaults.steps})")
    how.add_argument(
        "--blur-sigma", type=float, help=f"sigma of the blurred baseline in px at 224 (default {defaults.blur_sigma:g})"
    )
    how.add_argument("--road-methods", nargs="+", help="methods that also get ROAD (default: gradcam)")
    how.add_argument("--road-percentiles", nargs="+", type=int, help="ROAD removal percentiles (default 20 40 60 80)")
    how.add_argument("--tolerance", type=float, help="pointing game tolerance in px (default 15)")
    how.add_argument("--threshold", type=float, help="mask IoU threshold (default: chosen on the val scenes)")
    how.add_argument("--resamples", type=int, help=f"bootstrap resamples (default {defaults.resamples})")
    how.add_argument("--confidence", type=float, help="confidence level (default 0.95)")
    how.add_argument("--seed", type=int, help="seed of the bootstrap, tie-breaks and ROAD noise (default 0)")
    how.add_argument("--knockout-scenes", type=int,
                     help=f"test scenes of the knock-out section (default {defaults.knockout_scenes}; 0: skip it)")
    how.add_argument("--knockout-value", choices=KNOCKOUT_VALUES,
                     help=f"what a switched-off gate outputs in that section (default {defaults.knockout_value})")
    how.add_argument("--sanity-scenes", type=int,
                     help=f"test scenes of the sanity section (default {defaults.sanity_scenes}; 0: skip it)")
    how.add_argument("--sanity-methods", nargs="+",
                     help=f"CAM methods the sanity section checks (default: {' '.join(defaults.sanity_methods)})")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections ({', '.join(SECTIONS)}) over the analysis already in the "
                             f"output folder, and rewrite its report")
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, help=f"images per forward pass (default {defaults.batch_size})")
    run.add_argument("--scorecam-batch", type=int, help=f"Score-CAM batch (default {defaults.scorecam_batch})")
    run.add_argument("--workers", type=int, help="processes for ROAD's imputation, 0 inline (default 2)")
    run.add_argument("--threads", type=int, help="torch threads (default: torch's own, which honours OMP_NUM_THREADS)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    _engine_arguments(parser)
    run.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rewrite analysis.md and the plots from the analysis.json in the output folder",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AnalysisConfig:
    values = dict(QUICK) if args.quick else {}
    for name in (
        "val",
        "test",
        "unseen",
        "pairs",
        "faithfulness",
        "scorecam",
        "steps",
        "blur_sigma",
        "tolerance",
        "threshold",
        "resamples",
        "confidence",
        "seed",
        "batch_size",
        "scorecam_batch",
        "workers",
        "knockout_scenes",
        "knockout_value",
        "sanity_scenes",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    for name in ("methods", "layers", "road_methods", "road_percentiles", "sanity_methods"):
        value = getattr(args, name)
        if value is not None:
            values[name] = tuple(value)
    if args.models:
        values["variants"] = tuple(args.models)
    if "methods" in values and "road_methods" not in values:  # ROAD's default follows the methods asked for
        values["road_methods"] = tuple(m for m in AnalysisConfig.road_methods if m in values["methods"]) or (
            values["methods"][0],)
    return AnalysisConfig(**values)


def measures_less(config: AnalysisConfig, models: Iterable[str]) -> bool:
    """Whether a run measures less than the default one: fewer scenes, steps, resamples or ROAD percentiles, or
    fewer CAM methods, layers or models. Its numbers are not the default run's and must not replace them."""
    full = AnalysisConfig()
    sizes = ("val", "test", "unseen", "pairs", "faithfulness", "steps", "resamples", "knockout_scenes",
             "sanity_scenes")
    if any(getattr(config, name) < getattr(full, name) for name in sizes):
        return True
    for name in ("methods", "layers", "road_methods", "road_percentiles", "sanity_methods"):
        if not set(getattr(full, name)) <= set(getattr(config, name)):
            return True
    return config.variants is not None and not set(models) <= set(config.variants)


def output_dir(args: argparse.Namespace, config: AnalysisConfig, models: Iterable[str]) -> Path:
    """``--out`` when given; else ``<weights dir>/<set>/analysis`` (what the app shows) for a run that measures
    at least the default, and ``analysis-quick`` / ``analysis-partial`` beside it for a quick or smaller run.
    A run on the user's images (``--images``) goes to ``analysis-data-<folder's name>`` beside them (``-quick`` or
    ``-partial`` appended likewise; its sample is the folder's, so only a --test limit makes it smaller)."""
    if args.out:
        return args.out
    shipped = analysis_dir(args.weights_dir, args.set_name)
    if getattr(args, "images", None):
        folder = shipped.with_name(DATA_DIR.format(name=folder_name(args.images)))
        full = AnalysisConfig()
        sized = replace(config, val=full.val, test=full.test, unseen=full.unseen, pairs=full.pairs)
        if args.quick:
            return folder.with_name(folder.name + "-quick")
        less = measures_less(sized, models) or args.test is not None
        return folder.with_name(folder.name + "-partial") if less else folder
    if args.quick:
        return shipped.with_name(QUICK_DIR)
    return shipped.with_name(PARTIAL_DIR) if measures_less(config, models) else shipped


def _check_data_options(args: argparse.Namespace) -> None:
    """One line when the options of the user's images, or of the engine, do not go together."""
    problem = engine_problem(args, "--ray-workers")
    if problem:
        raise AttnvizError(problem)
    if args.engine == "ray" and (args.sections or args.report_only):
        raise AttnvizError(f"{'--sections' if args.sections else '--report-only'} runs here, not on Ray: leave out "
                           f"--engine ray")
    if bool(args.images) != bool(args.masks):
        given, missing = ("--images", "--masks") if args.images else ("--masks", "--images")
        raise AttnvizError(f"{given} needs {missing}: give both, a folder of images and one of their mask PNGs")
    if not args.images and (args.labels or args.val_share is not None or args.masks_on_stored_pixels):
        raise AttnvizError("--labels, --val-share and --masks-on-stored-pixels go with --images DIR --masks DIR")


def folder_source(args: argparse.Namespace, info, config: AnalysisConfig, out: Path):
    """The user's folder as the analysis' items, each skipped image and each part that cannot run on it said in one
    line on stderr; None without --images."""
    if not args.images:
        return None
    from attnviz.analysis.dataset import FolderSource, find_pairs

    found = find_pairs(args.images, args.masks, info.preprocessing, info.classes, args.labels, exclude=(out,),
                       stored_pixels=args.masks_on_stored_pixels)
    for name, reason in found.skipped[:SKIP_LINES]:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if len(found.skipped) > SKIP_LINES:  # a wrong --masks folder would otherwise print a line per image
        print(f"... and {len(found.skipped) - SKIP_LINES} more skipped image files (a run that measures lists "
              f"each with its reason under data.skipped in {out / JSON_NAME})", file=sys.stderr)
    for line in found.notes:
        print(f"note: {line}", file=sys.stderr)
    limit = args.test if args.test is not None else (QUICK["test"] if args.quick else None)
    source = FolderSource(args.images, args.masks, args.labels, found, info.preprocessing, config,
                          VAL_SHARE if args.val_share is None else args.val_share, limit)
    if found.skipped:
        print(f"skipped {len(found.skipped)} of {found.files} image files; measuring {len(source.splits['test'])}"
              + (f", {len(source.splits['val'])} held out for the IoU threshold" if source.splits["val"] else ""),
              file=sys.stderr)
    for name, reason in skipped_parts(source, source.config(config)).items():
        print(f"skipping the {PART_TITLES.get(name, name)}: {reason}", file=sys.stderr)
    return source


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    command = "python -m attnviz.analyze" + (f" {shlex.join(argv)}" if argv else "")
    if args.engine == "ray":  # Ray's workers start in other folders: every path absolute
        for name in ("images", "masks", "labels", "weights_dir", "out"):
            if getattr(args, name) is not None:
                setattr(args, name, getattr(args, name).resolve())
    try:
        _check_data_options(args)
        config = config_from_args(args)
        config.validate()
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.report_only and args.out:  # a folder of its own: no model set needed
            info = None
        else:
            info = Manifest(args.weights_dir).get(args.set_name)  # checked before any weights are loaded
        out = output_dir(args, config, info.models if info else ())
        if args.report_only:
            written = write_report(read_result(out), out)
            print(f"rewrote {len(written)} files in {out}")
            return 0
        variants = check_set(info.name, info.classes, info.models, config.variants, scenes=not args.images)
        source = folder_source(args, info, config, out)
        if source is not None:
            config = source.config(config)
        if args.sections:
            return _sections_command(args, info, config, out, source)
        result, written = _measure(args, info, variants, config, source, out, command)
    except (AttnvizError, UsageError) as exc:  # UsageError: --engine ray without Ray installed
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {out} in {result['timing']['total_s'] / 60:.1f} min")
    shipped = analysis_dir(args.weights_dir, info.name)
    if out.resolve() != shipped.resolve() and not args.out and not args.images:
        kind = "a quick run" if args.quick else "a run with less than the default sample"
        print(f"{kind}: {shipped} (what the app shows) is untouched; give --out {shipped} to replace it")
    return 0


def _measure(args: argparse.Namespace, info, variants: list[str], config: AnalysisConfig, source, out: Path,
             command: str) -> tuple[dict, list]:
    """Load the set, measure (here, or with --engine ray on Ray workers) and write the report."""
    model_set = load_model_set(info.name, args.weights_dir, variants=variants)
    if args.engine != "ray":
        result = run_analysis(model_set, config, progress=not args.quiet, command=command, source=source)
        return result, write_report(result, out)
    import contextlib

    from attnviz.analysis.items import SceneSource
    from attnviz.analysis.on_ray import WORK_DIR, RayEngine, ray_setup
    from attnviz.distributed import cluster_plan, ray_session
    from attnviz.weights import default_weights_dir

    source = source or SceneSource(model_set.classes, model_set.preprocessing)
    weights_dir = Path(args.weights_dir or default_weights_dir()).resolve()
    written = None
    # Ray's driver prints cluster events to stdout: to stderr, so that stdout keeps the command's one line
    with contextlib.redirect_stdout(sys.stderr), ray_session(args.address) as ray:
        n_workers, _ = cluster_plan(ray, args.ray_workers, args.worker_cpus)  # on CPUs: see on_ray.py
        setup = ray_setup(info, variants, config, source, args.worker_cpus, weights_dir)
        engine = RayEngine(ray, out.resolve() / WORK_DIR, setup, n_workers, args.worker_cpus)
        try:
            result = run_analysis(model_set, config, progress=not args.quiet, command=command, source=source,
                                  engine=engine)
            written = write_report(result, out)
        finally:
            engine.close(remove=written is not None)
    return result, written


def _sections_command(args: argparse.Namespace, info, config: AnalysisConfig, out: Path, source=None) -> int:
    """--sections: the named sections over the analysis in ``out``, merged into it (with --images, on that folder's
    images, chosen again with the same seed)."""
    result = read_result(out)  # one line saying to run the analysis first when there is none
    model_set = load_model_set(info.name, args.weights_dir, variants=result["variants"])
    started = time.perf_counter()
    run_sections(model_set, result, list(args.sections), config, progress=not args.quiet, source=source)
    written = write_report(result, out)
    print(f"ran {', '.join(args.sections)} in {(time.perf_counter() - started) / 60:.1f} min; rewrote "
          f"{len(written)} files in {out}")
    return 0
