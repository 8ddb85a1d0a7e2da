"""The batch command's work: finding the image files, one run's settings, and explaining and writing each
image's folder (in batches of one pass per model), skipping what an earlier run finished. ``attnviz.cli`` is
its command line; ``attnviz.batch_report`` writes the report."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attnviz.errors import AttnvizError

if TYPE_CHECKING:  # the command starts without importing torch; the explain command loads it when it runs
    from attnviz.explainer import Explainer, ExplainSettings
    from attnviz.weights import ModelSet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
OUTPUT_FORMAT = 2  # part of every image's run key: raise it when the files written per image change
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"  # the index; the pages of images are report-1.html, report-2.html, ...
PAGE_NAME = "report-{number}.html"
PAGE_PATTERN = re.compile(r"report-([0-9]+)\.html", re.IGNORECASE)
BATCH_SIZE = 8  # images per pass of each model (bench/bench_batch.py measures what a batch buys)
PER_PAGE = 100  # images per page: a page of previews loads in a moment; thousands of images make tens of pages
PREVIEW_SUFFIX = ".webp"
PREVIEW_QUALITY = 80  # lossy WebP: about a sixth of the PNG's bytes, with the figures' text still sharp
# The widest (CSS px) the report shows each picture at (REPORT_CSS): its preview is never wider.
VIEW_WIDTH, COLUMN_WIDTH, COMPARISON_WIDTH = 220, 540, 1100


class UsageError(Exception):
    """A problem with the command line itself: exit status 2."""


@dataclass
class ImageJob:
    """One image file of the run and where its results go."""

    path: Path
    label: str  # how the report and the output name it: the path as given, or relative to its folder
    folder: str = ""  # the result folder's name inside --out
    status: str = "pending"  # "done", "skipped" or "failed"
    reason: str = ""
    sha256: str = ""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def find_images(paths: list[Path], out_dir: Path) -> list[ImageJob]:
    """Files as given and image files found recursively in folders (not those inside ``out_dir``), in order."""
    out_dir = out_dir.resolve()
    jobs: list[ImageJob] = []
    seen: set[Path] = set()
    for given in paths:
        if given.is_dir():
            root = given.resolve()
            if out_dir == root:
                raise UsageError(f"--out {given} is the folder of images itself; choose another folder for --out")
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not _inside(p.resolve(), out_dir))
            for path in found:
                key = path.resolve()
                if key not in seen:
                    seen.add(key)
                    jobs.append(ImageJob(path, (Path(given.resolve().name or "root") /
                                                path.relative_to(given)).as_posix()))
        else:
            key = given.resolve()
            if key not in seen:  # a missing file is kept: it is reported as failed with its reason
                seen.add(key)
                jobs.append(ImageJob(given, given.name or str(given)))
    _name_folders(jobs)
    return jobs


def _name_folders(jobs: list[ImageJob]) -> None:
    """A distinct, readable folder name per image, derived from its label so that re-runs find it again."""
    used: set[str] = set()
    for job in jobs:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", job.label.replace("/", "__")).strip("._") or "image"
        if len(name) > 100:
            name = f"{name[:90]}-{hashlib.sha1(job.label.encode()).hexdigest()[:8]}"
        candidate, n = name, 2
        while candidate.lower() in used or _is_report_file(candidate):
            candidate, n = f"{name}-{n}", n + 1
        used.add(candidate.lower())
        job.folder = candidate


def _is_report_file(name: str) -> bool:
    return name.lower() == REPORT_NAME or PAGE_PATTERN.fullmatch(name) is not None


@dataclass
class Run:
    """What every image of one invocation is explained and drawn with; the models load on first use."""

    info: ModelSet
    weights_dir: str | None
    settings: ExplainSettings
    colormap: str
    opacity: float
    fingerprint: dict = field(default_factory=dict)
    batch_size: int = 1  # images per pass of each model (see batch_size_for)
    # Which invocation wrote a result: a batch redone after its Ray worker died finds the images that worker
    # finished in this run, and they count as done, not as finished earlier.
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex)
    device: str = "cpu"  # where the models run (a Ray worker given a GPU: "cuda")
    _explainer: Explainer | None = None

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def explainer(self) -> Explainer:
        """The loaded set, warmed up by one quick pass per model on a grey image, so that one-time set-up does not
        inflate the first image's times. A set that cannot load raises here, outside any one image's failure."""
        if self._explainer is None:
            import numpy as np

            from attnviz.explainer import ExplainSettings, get_explainer

            explainer = get_explainer(self.info.name, self.weights_dir, self.device)
            side = self.info.preprocessing.crop
            explainer.explain(np.full((side, side, 3), 128, np.uint8),
                              ExplainSettings(layer=self.settings.layer, top_k=1, variants=self.settings.variants))
            self._explainer = explainer
        return self._explainer

    def key(self, image_sha256: str) -> str:
        """The identity of one image's result: its content and everything that shapes the output."""
        text = json.dumps({"image": image_sha256, "run": self.fingerprint}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def prepare_run(args: argparse.Namespace) -> Run:
    """Check the model set and every setting once, before any image; the weights load only when needed."""
    from attnviz.settings import build_settings
    from attnviz.weights import Manifest

    info = Manifest(args.weights_dir).get(args.set_name)
    settings = build_settings(info.classes, info.models, method=args.method, layer=args.layer, target=args.target,
                              models=args.models, aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth,
                              precision=args.precision, knockout=args.knockout,
                              knockout_value=args.knockout_value)
    if settings.knockout:  # a bad spec is one line before any image, not one error per image
        from attnviz.attention import family
        from attnviz.knockout import check_spec

        check_spec(settings.knockout, {gate.name for v in settings.variants for gate in family(v).gates})
    fingerprint = {
        "format": OUTPUT_FORMAT,
        "set": info.name,
        "weights": {v: info.models[v].sha256 for v in settings.variants},
        "preprocessing": info.preprocessing.to_dict(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "render": {"colormap": args.colormap, "opacity": args.opacity},
    }
    weights_dir = str(args.weights_dir) if args.weights_dir else None
    return Run(info, weights_dir, settings, args.colormap, args.opacity, fingerprint,
               batch_size_for(settings, args.batch_size))


def _read_summary(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(folder: Path, key: str) -> bool:
    """The folder holds a complete result for this key (summary.json is written last)."""
    summary = _read_summary(folder)
    if not summary or summary.get("run", {}).get("key") != key:
        return False
    return all((folder / name).is_file() for name in summary.get("files", []))


def explain_one(job: ImageJob, run: Run, out_dir: Path, progress=None, explanation=None) -> None:
    """Explain (unless ``explanation`` is given), draw and write one image's folder; a half-written folder never
    replaces a finished one."""
    from PIL import Image

    from attnviz.render import render_explanation

    if explanation is None:
        explanation = run.explainer().explain(job.path, run.settings, progress=progress)
    rendered = render_explanation(explanation, colormap=run.colormap, opacity=run.opacity)
    images = rendered.images()
    staging = out_dir / f".incoming-{job.folder}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    previews = {}
    for name, pixels in images.items():
        picture = Image.fromarray(pixels)
        picture.save(staging / name, format="PNG")
        width = preview_width(name)
        if width:
            previews[name] = _save_preview(picture, staging / Path(name).with_suffix(PREVIEW_SUFFIX), width)
    summary = explanation.summary()
    summary["classes"] = list(explanation.classes)
    summary["render"] = {"colormap": run.colormap, "opacity": run.opacity}
    summary["files"] = list(images) + [preview["file"] for preview in previews.values()]
    summary["previews"] = previews
    summary["run"] = {"key": run.key(job.sha256), "source": str(job.path), "source_sha256": job.sha256,
                      "invocation": run.invocation, "device": run.device}
    (staging / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    final = out_dir / job.folder
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def preview_width(name: str) -> int | None:
    """The widest the report shows the picture ``name`` at, or None for one it does not show."""
    if name == "view.png":
        return VIEW_WIDTH
    if name.endswith("_top_k.png"):  # the report draws the top-k as a table
        return None
    if name in ("difference_maps.png", "agreement.png"):
        return COMPARISON_WIDTH
    return COLUMN_WIDTH  # a model's overlay and attention figures, in its column


def _save_preview(picture, path: Path, width: int) -> dict:
    """A lossy WebP of ``picture`` at most ``width`` pixels wide (never enlarged); its file name and size."""
    from PIL import Image

    if picture.width > width:
        picture = picture.resize((width, max(1, round(picture.height * width / picture.width))),
                                 Image.Resampling.LANCZOS)
    picture.save(path, format="WEBP", quality=PREVIEW_QUALITY)  # method 6 saves 4 % for twice the time
    return {"file": path.name, "width": picture.width, "height": picture.height}


def _content_hash(path: Path) -> str:
    from attnviz.weights import sha256_of

    if not path.is_file():
        raise AttnvizError(f"{path}: no such file")
    try:
        return sha256_of(path)
    except OSError as exc:  # permissions, a device, ...
        raise AttnvizError(f"{path}: cannot be read ({exc.strerror or exc}); check the file") from None


def _fail(job: ImageJob, exc: AttnvizError) -> None:
    job.status, job.reason = "failed", " ".join(str(exc).split())


def batch_size_for(settings: ExplainSettings, asked: int) -> int:
    """Images per pass: as asked for methods that come from the one pass; 1 for those that make passes of their
    own per image (perturbation and own-call methods, test-time augmentation), where a batch gains nothing and
    the time limit would cover several images."""
    from attnviz.methods import CAM_METHODS

    method = CAM_METHODS[settings.method]
    return 1 if method.kind == "perturbation" or method.own_call or settings.aug_smooth else asked


def check_job(job: ImageJob, run: Run, out_dir: Path, force: bool) -> None:
    """Hash the file; a job finished earlier with these settings is skipped (done, when this invocation finished
    it: a batch redone after a lost worker), an unreadable file failed."""
    try:
        job.sha256 = _content_hash(job.path)
    except AttnvizError as exc:
        _fail(job, exc)
        return
    folder = out_dir / job.folder
    if not force and is_finished(folder, run.key(job.sha256)):
        same_run = (_read_summary(folder) or {}).get("run", {}).get("invocation") == run.invocation
        job.status = "done" if same_run else "skipped"


def process_batch(jobs: list[ImageJob], run: Run, out_dir: Path, progress=None) -> None:
    """Explain pending jobs in one pass per model and write each; each job ends done or failed on its own (an
    image that cannot be read fails alone; a batch that fails as a whole is explained image by image)."""
    from attnviz.images import load_image

    explainer = run.explainer()  # outside the handling below: a set that cannot load ends the run (exit 2)
    loaded = []
    for job in jobs:
        try:
            loaded.append((job, load_image(job.path)))
        except AttnvizError as exc:
            _fail(job, exc)
    explanations = [None] * len(loaded)
    if len(loaded) > 1:
        try:
            explanations = explainer.explain_many([image for _, image in loaded], run.settings, progress,
                                                  batch_size=len(loaded))
        except AttnvizError:
            pass  # each image again on its own, for its own error
    for (job, image), explanation in zip(loaded, explanations, strict=True):
        try:
            if explanation is None:
                explanation = explainer.explain(image, run.settings, progress=progress)
            explain_one(job, run, out_dir, progress, explanation)
        except AttnvizError as exc:
            _fail(job, exc)
        else:
            job.status = "done"


def explain_group(jobs: list[ImageJob], run: Run, out_dir: Path, force: bool, progress=None) -> None:
    """One batch of the run: hash each file, skip those finished with these settings, explain and write the rest
    in one pass per model; every job ends done, skipped or failed. The local loop and each Ray worker run it."""
    for job in jobs:
        check_job(job, run, out_dir, force)
    pending = [job for job in jobs if job.status == "pending"]
    if pending:
        process_batch(pending, run, out_dir, progress)


def _outcome(job: ImageJob, out_dir: Path) -> str:
    """The job's one line on stdout."""
    if job.status == "failed":
        return f"failed   {job.label}: {job.reason}"
    if job.status == "skipped":
        return f"skipped  {job.label} (finished earlier with these settings)"
    summary = _read_summary(out_dir / job.folder) or {}
    flag = " (out of domain: unlike the models' training scenes)" if summary.get("out_of_domain") else ""
    return f"done     {job.label} -> {out_dir / job.folder}{flag}"


class Reporter:
    """One line per finished image on stdout, and a progress bar on stderr only when stderr is a terminal:
    redirected to a file, a bar is hundreds of overdrawn lines."""

    def __init__(self, total: int, out_dir: Path, desc: str = "explaining", stream=None) -> None:
        from tqdm import tqdm

        isatty = getattr(sys.stderr, "isatty", None)
        self.out_dir = out_dir
        self.stream = stream  # where the lines go: sys.stdout as it is when a line is written, unless given
        self.bar = tqdm(total=total, unit="image", desc=desc, file=sys.stderr, dynamic_ncols=True,
                        disable=not (isatty and isatty()))

    def say(self, line: str) -> None:
        stream = self.stream or sys.stdout
        if self.bar.disable:
            print(line, file=stream, flush=True)
        else:
            from tqdm import tqdm

            tqdm.write(line, file=stream)  # clears the bar, writes the line, draws the bar again
            stream.flush()

    def finished(self, job: ImageJob) -> None:
        self.bar.update(1)
        self.say(_outcome(job, self.out_dir))

    def status(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def progress(self, _fraction: float, message: str) -> None:
        """An explainer's progress callback: its message next to the bar."""
        self.status(message)

    def close(self) -> None:
        self.bar.close()


def explain_all(jobs: list[ImageJob], run: Run, out_dir: Path, force: bool) -> bool:
    """Process every job in this process with one line per image on stdout; True when interrupted."""
    report = Reporter(len(jobs), out_dir)
    try:
        for start in range(0, len(jobs), run.batch_size):
            group = jobs[start : start + run.batch_size]
            report.status(group[0].label[-40:])
            explain_group(group, run, out_dir, force, report.progress)
            for job in group:
                report.finished(job)
    except KeyboardInterrupt:
        return True
    finally:
        report.close()
    return False
