"""The ``attnviz`` command: explain images in batch into a report that opens from disk.

    attnviz explain PATH... --out DIR [--set NAME] [--models resnet50 se cbam] [--method gradcam] [--per-page 100]
    attnviz weights list|verify|import|add ...     (the same as python -m attnviz.weights)
    attnviz app [--port P] ...                      (the same as python app.py, from a source checkout)

``explain`` runs the app's path (``Explainer.explain`` then ``render_explanation``) on every image file
given or found under a folder. Each image gets a folder in DIR with its full-size PNGs, a WebP preview of
each picture the report shows (at the widest size the report shows it) and ``summary.json``, written last.
A re-run skips the images whose folder already holds the result for the same file content and settings.

The report is static HTML with no server and nothing fetched from outside: ``DIR/report.html`` is the index
(the settings, one row per image with each model's top-1 and a link to its page, the files that failed) and
``DIR/report-1.html``, ``report-2.html``, ... hold ``--per-page`` images each, side by side as the app shows
them, every preview linked to its full-size PNG.

The previews are files referenced by relative links, not data URIs embedded in the pages. Relative links
work from file://, and the pages link each image's full-size PNGs and summary.json in DIR anyway: the report
is DIR, to be moved or zipped whole. With files, a page of a hundred images is under 1 MB of HTML that opens
at once, and the browser reads only the previews scrolled to (``loading="lazy"``); embedded, the same page
would be about 25 MB (base64 adds a third) that the browser must parse whole before it shows anything. A
preview is also written once, with its image, instead of being read and encoded again each time a run
rewrites the report.

Exit status: 0 when every image was explained, 1 when any failed, 2 on a usage or model-set error.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from attnviz import settings as defaults
from attnviz.batch import (
    BATCH_SIZE,
    IMAGE_EXTENSIONS,
    PER_PAGE,
    UsageError,
    explain_all,
    find_images,
    prepare_run,
)
from attnviz.batch_report import n_images, write_report
from attnviz.distributed import add_engine_arguments, engine_problem, import_ray
from attnviz.errors import AttnvizError

if TYPE_CHECKING:  # the command starts without importing torch; the explain command loads it when it runs
    pass

class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one ``error:`` line with exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _explain_parser() -> argparse.ArgumentParser:
    from attnviz.explainer import CAM_METHODS, PRECISIONS
    from attnviz.knockout import KNOCKOUT_VALUES
    from attnviz.models import VARIANTS
    from attnviz.render import COLORMAPS

    parser = _Parser(prog="attnviz explain",
                     description="Explain images with every model of a set into one folder per image and a "
                                 "report (report.html, the index, and its pages) that opens from disk.")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help=f"image files, or folders searched recursively for {', '.join(IMAGE_EXTENSIONS)}")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the results and report")
    parser.add_argument("--set", dest="set_name", metavar="NAME", help="model set (default: the manifest's)")
    parser.add_argument("--weights-dir", type=Path, metavar="DIR",
                        help="folder holding manifest.json (default: $ATTNVIZ_WEIGHTS or weights/)")
    parser.add_argument("--models", nargs="+", choices=VARIANTS, help="which models (default: all of the set)")
    parser.add_argument("--method", default=defaults.METHOD, choices=list(CAM_METHODS),
                        help=f"CAM method ({defaults.METHOD})")
    parser.add_argument("--layer", default=defaults.LAYER, metavar="LAYER",
                        help="target layer: a stage (layer1-layer4), a block (layer3.5) or a module inside one "
                             f"(layer4.2.conv3, layer4.1.attention) ({defaults.LAYER})")
    parser.add_argument("--target", metavar="CLASS",
                        help="class name or index every heatmap explains (default: each model's own top-1)")
    parser.add_argument("--colormap", default=defaults.COLORMAP, choices=COLORMAPS,
                        help=f"heatmap colormap ({defaults.COLORMAP})")
    parser.add_argument("--opacity", type=float, default=defaults.OPACITY,
                        help=f"heatmap opacity, 0 to 1 ({defaults.OPACITY})")
    parser.add_argument("--aug-smooth", action="store_true", help="pytorch-grad-cam's aug_smooth (6 extra passes)")
    parser.add_argument("--eigen-smooth", action="store_true", help="pytorch-grad-cam's eigen_smooth")
    parser.add_argument("--precision", default=defaults.PRECISION, choices=PRECISIONS,
                        help="fp32, or bf16 autocast for the models' pass: faster on CPUs with native bf16 "
                             "(AVX512-BF16, AMX), slower elsewhere; maps change slightly (README)")
    parser.add_argument("--knockout", metavar="SPEC",
                        help="switch attention gates off and show each model with them off too: TARGET[:GATE], "
                             "comma-separated; TARGET all, layer3, layer3.2 or layer4.*; GATE channel or spatial")
    parser.add_argument("--knockout-value", default=defaults.KNOCKOUT_VALUE, choices=KNOCKOUT_VALUES,
                        help="what a switched-off gate outputs: identity (1) or mean (its mean over the set's "
                             f"validation scenes) ({defaults.KNOCKOUT_VALUE})")
    parser.add_argument("--force", action="store_true", help="explain every image again, even if finished")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N",
                        help=f"images per pass of each model, for the methods that come from one pass; the results "
                             f"are those of one image at a time ({BATCH_SIZE})")
    add_engine_arguments(parser, "local: this process; ray: Ray workers, each writing its images' folders itself "
                                 "(pip install 'attnviz[ray]')", gpus=True)
    parser.add_argument("--per-page", type=int, default=PER_PAGE, metavar="N",
                        help=f"images per page of the report; report.html is the index of the pages ({PER_PAGE})")
    return parser


def explain_command(argv: list[str]) -> int:
    args = _explain_parser().parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        raise UsageError(f"--opacity must be between 0 and 1, not {args.opacity}")
    if args.per_page < 1:
        raise UsageError(f"--per-page must be at least 1, not {args.per_page}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    problem = engine_problem(args)
    if problem:
        raise UsageError(problem)
    if args.engine == "ray":
        import_ray(args.address)  # without Ray: one line saying how to install it, before anything else
    jobs = find_images(args.paths, args.out)
    if not jobs:
        raise UsageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, args.paths))}")
    run = prepare_run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.engine == "ray":
        from attnviz.distributed import explain_on_ray

        interrupted = explain_on_ray(jobs, run, args, args.out, args.force)
    else:
        interrupted = explain_all(jobs, run, args.out, args.force)
    report = write_report(jobs, run, args.out, interrupted, args.per_page)
    counts = {s: sum(j.status == s for j in jobs) for s in ("done", "skipped", "failed")}
    pages = f"{len(report.pages)} page" + ("" if len(report.pages) == 1 else "s")
    print(f"{n_images(len(jobs))}: {counts['done']} explained, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; report: {report.index} (index and {pages}, "
          f"{report.bytes_per_image / 1000:.0f} KB per image with its previews)", flush=True)
    if interrupted:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return 130
    return 1 if counts["failed"] else 0


def app_command(argv: list[str]) -> int:
    """``python app.py`` of the source checkout this package was installed from."""
    app_file = Path(__file__).resolve().parent.parent / "app.py"
    if not app_file.is_file():
        raise UsageError("app.py is not next to this installed package; run python app.py in the attnviz repository")
    spec = importlib.util.spec_from_file_location("attnviz_app", app_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


COMMANDS = {
    "explain": "explain images into per-image folders and a report.html that opens from disk",
    "weights": "list, verify, import and add model sets (python -m attnviz.weights)",
    "app": "start the web app (python app.py, from a source checkout)",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``attnviz`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    try:
        if command == "explain":
            return explain_command(rest)
        if command == "weights":
            from attnviz.weights_cli import main as weights_main

            return weights_main(rest)
        if command == "app":
            return app_command(rest)
        listing = "\n".join(f"  {name:<9}{text}" for name, text in COMMANDS.items())
        usage = (f"usage: attnviz {{{','.join(COMMANDS)}}} ...\n\ncommands:\n{listing}\n\n"
                 f"attnviz COMMAND --help shows a command's options.")
        if command in ("-h", "--help"):
            print(usage)
            return 0
        if command is None:
            print(usage, file=sys.stderr)
            return 2
        raise UsageError(f"unknown command {command!r}; choose one of {', '.join(COMMANDS)}")
    except (UsageError, AttnvizError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
