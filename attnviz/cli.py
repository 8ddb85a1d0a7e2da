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
import hashlib
import html
import importlib.util
import json
import re
import shutil
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attnviz import settings as defaults
from attnviz.errors import AttnvizError
from attnviz.texts import fill, text

if TYPE_CHECKING:  # the command starts without importing torch; the explain command loads it when it runs
    from attnviz.explainer import Explainer, ExplainSettings
    from attnviz.weights import ModelSet

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
OUTPUT_FORMAT = 2  # part of every image's run key: raise it when the files written per image change
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"  # the index; the pages of images are report-1.html, report-2.html, ...
PAGE_NAME = "report-{number}.html"
PAGE_PATTERN = re.compile(r"report-([0-9]+)\.html", re.IGNORECASE)
PER_PAGE = 100  # images per page: a page of previews loads in a moment; thousands of images make tens of pages
PREVIEW_SUFFIX = ".webp"
PREVIEW_QUALITY = 80  # lossy WebP: about a sixth of the PNG's bytes, with the figures' text still sharp
# The widest (CSS px) the report shows each picture at (REPORT_CSS): its preview is never wider.
VIEW_WIDTH, COLUMN_WIDTH, COMPARISON_WIDTH = 220, 540, 1100


class UsageError(Exception):
    """A problem with the command line itself: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one ``error:`` line with exit status 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


# --------------------------------------------------------------------------- finding the images


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


# --------------------------------------------------------------------------- one run's settings


@dataclass
class Run:
    """What every image of one invocation is explained and drawn with; the models load on first use."""

    info: ModelSet
    weights_dir: str | None
    settings: ExplainSettings
    colormap: str
    opacity: float
    fingerprint: dict = field(default_factory=dict)
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

            explainer = get_explainer(self.info.name, self.weights_dir)
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
    return Run(info, weights_dir, settings, args.colormap, args.opacity, fingerprint)


# --------------------------------------------------------------------------- one image


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


def explain_one(job: ImageJob, run: Run, out_dir: Path, progress=None) -> None:
    """Explain, draw and write one image's folder; a half-written folder never replaces a finished one."""
    from PIL import Image

    from attnviz.render import render_explanation

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
    summary["run"] = {"key": run.key(job.sha256), "source": str(job.path), "source_sha256": job.sha256}
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


def process(job: ImageJob, run: Run, out_dir: Path, force: bool, progress=None) -> None:
    """Set ``job.status``: skipped when finished earlier, done, or failed with a one-line reason."""
    try:
        job.sha256 = _content_hash(job.path)
    except AttnvizError as exc:
        _fail(job, exc)
        return
    if not force and is_finished(out_dir / job.folder, run.key(job.sha256)):
        job.status = "skipped"
        return
    run.explainer()  # outside the handling below: a set that cannot load ends the run (exit 2), not one image
    try:
        explain_one(job, run, out_dir, progress)
    except AttnvizError as exc:
        _fail(job, exc)
    else:
        job.status = "done"


# --------------------------------------------------------------------------- the report

REPORT_CSS = """
:root { color-scheme: light; --line: #d0d7de; --muted: #57606a; --bar: #9aa5b1; --hit: #d62728; --mark: #fff1c2; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "PingFang SC", "Microsoft YaHei",
       sans-serif; margin: 1.5rem; color: #1f2328; line-height: 1.4; }
h1 { margin-top: 0; } h2 { border-bottom: 1px solid var(--line); padding-bottom: .3rem; margin-top: 2.5rem; }
table.meta { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92em; }
table.meta th, table.meta td { text-align: left; padding: .2rem .8rem .2rem 0; vertical-align: top; }
.muted, .note { color: var(--muted); font-size: .9em; }
nav.pages { margin: 1rem 0; font-size: .95em; } nav.pages a, nav.pages b { margin-right: .6rem; }
table.images { border-collapse: collapse; font-size: .92em; }
table.images th, table.images td { text-align: left; padding: .25rem .9rem .25rem 0; vertical-align: middle;
                                   border-bottom: 1px solid var(--line); }
table.images td.n { color: var(--muted); text-align: right; }
table.images a.image { display: flex; align-items: center; gap: .6rem; overflow-wrap: anywhere; }
table.images img.thumb { width: 56px; flex: 0 0 56px; }
table.images td.differs { background: var(--mark); }
.ood { color: #b45309; font-weight: 600; }
p.notice { border-left: 4px solid #d97706; background: rgba(217, 119, 6, .08); padding: .4em .8em; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.view { flex: 0 0 220px; } .view img { width: 220px; }
.model { flex: 1 1 300px; min-width: 280px; max-width: 560px; border: 1px solid var(--line); border-radius: 6px;
         padding: .6rem .8rem; }
.model h3 { margin: 0 0 .3rem; }
img { max-width: 100%; height: auto; display: block; }
img.overlay { width: 100%; image-rendering: auto; }
.caption { font-weight: 600; margin: .7rem 0 .2rem; font-size: .92em; }
table.top { width: 100%; border-collapse: collapse; font-size: .9em; }
table.top td { padding: .1rem .3rem; }
table.top td.name { width: 40%; overflow-wrap: anywhere; } table.top td.value { width: 4.5em; text-align: right; }
.bar { background: #eef1f4; height: .8em; } .bar span { display: block; height: 100%; background: var(--bar); }
tr.target .bar span { background: var(--hit); } tr.target td.name { font-weight: 600; }
.comparison { margin-top: 1rem; } .comparison img { max-width: min(100%, 1100px); }
table.failed { border-collapse: collapse; } table.failed td { padding: .3rem .8rem .3rem 0; vertical-align: top; }
table.failed td.path { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: nowrap; }
footer { margin-top: 3rem; }
@media print { .model { break-inside: avoid; } section.image { break-before: page; } nav.pages { display: none; } }
"""


@dataclass
class Report:
    """The files of one report: the index, its pages, and how many bytes they and the previews they show take."""

    index: Path
    pages: list[Path]
    images: int
    size: int

    @property
    def bytes_per_image(self) -> float:
        return self.size / max(1, self.images)


def _n_images(count: int) -> str:
    return f"{count} image" + ("" if count == 1 else "s")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(*parts: str) -> str:
    """A relative link to a file inside the output folder, from a page in it."""
    return _e("/".join(urllib.parse.quote(part) for part in parts))


def _page_name(number: int) -> str:
    return PAGE_NAME.format(number=number)


def _figure(folder: str, summary: dict, name: str, alt: str, css: str = "") -> str:
    """The preview of picture ``name``, linked to its full-size PNG; nothing when the image has no such picture."""
    preview = summary.get("previews", {}).get(name)
    if not preview:
        return ""
    cls = f' class="{css}"' if css else ""
    return (f'<a href="{_href(folder, name)}" title="full size"><img{cls} src="{_href(folder, preview["file"])}" '
            f'width="{preview["width"]}" height="{preview["height"]}" alt="{_e(alt)}" loading="lazy" '
            f'decoding="async"></a>')


def _top_table(model: dict) -> str:
    target = model["target"]["index"]
    rows = []
    for p in model["top"]:
        width = max(0.0, min(100.0, 100.0 * p["probability"]))
        cls = ' class="target"' if p["index"] == target else ""
        rows.append(f'<tr{cls}><td class="name">{_e(p["name"])}</td><td><div class="bar"><span style="width:'
                    f'{width:.1f}%"></span></div></td><td class="value">{p["probability"]:.1%}</td></tr>')
    return f'<table class="top">{"".join(rows)}</table>'


def _model_column(folder: str, summary: dict, variant: str) -> str:
    from attnviz.attention import RECORD_KINDS

    model = summary["models"][variant]
    target = model["target"]
    parts = [
        f'<div class="model" id="{_e(folder)}-{_e(variant)}"><h3>{_e(model["title"])}</h3>',
        f'<div class="muted">explains <b>{_e(target["name"])}</b> ({target["probability"]:.1%}) · '
        f'{model["seconds"]:.2f} s{_domain_line(model)}</div>',
        _figure(folder, summary, f"{variant}_overlay.png", f"{model['title']}: CAM heatmap", "overlay"),
        f'<div class="caption">{_e(fill(text("report_top"), {"k": len(model["top"])}))}</div>',
        _top_table(model),
    ]
    parts += _knockout_parts(folder, summary, variant)
    for kind in RECORD_KINDS.values():  # the figures each record kind gave, as the app shows them
        figure = _figure(folder, summary, f"{variant}_{kind.figure}.png", f"{model['title']}: {kind.key} attention")
        if figure:
            parts += [f'<div class="caption">{_e(text(f"kind_{kind.key}"))}</div>', figure]
    note = text(f"family_{variant}_note", default="")
    if note:
        parts.append(f'<p class="note">{_markdown_bold(note)}</p>')
    parts.append("</div>")
    return "\n".join(p for p in parts if p)


def _knockout_parts(folder: str, summary: dict, variant: str) -> list[str]:
    """What the model does with the knocked-out gates off: its top-k, the heatmap and the change."""
    knocked = summary["models"][variant].get("knockout")
    if not knocked:
        return []
    head = f'<div class="caption">{_e(fill(text("report_knocked"), knocked))}</div>'
    if not knocked["affected"]:
        return [head, f'<p class="note">{_e(knocked["note"])}</p>']
    target = knocked["target"]
    title = summary["models"][variant]["title"]
    return [
        head,
        f'<div class="muted">{len(knocked["gates"])} gates off · <b>{_e(target["name"])}</b> now '
        f'{target["probability"]:.1%} ({knocked["target_probability_change"]:+.1%}) · top-20 % IoU with the '
        f'trained heatmap {knocked["iou_top20"]:.2f}</div>',
        _figure(folder, summary, f"{variant}_knockout_overlay.png", f"{title}: heatmap with the gates off", "overlay"),
        _figure(folder, summary, f"{variant}_knockout_difference.png",
                f"{title}: heatmap with the gates off minus as trained (red: higher, blue: lower)", "overlay"),
        _top_table({"top": knocked["top"], "target": target}),
    ]


def _markdown_bold(markdown: str) -> str:
    """A one-line Markdown text with **bold** as HTML, everything else escaped."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", _e(markdown))


def _domain_line(model: dict) -> str:
    """The model's out-of-domain score against its threshold; nothing for a model that is not calibrated."""
    if model.get("out_of_domain") is None:
        return ""
    verdict = "outside its training scenes" if model["out_of_domain"] else "in domain"
    sign = ">" if model["out_of_domain"] else "≤"
    return (f' · <span class="{"ood" if model["out_of_domain"] else ""}">out-of-domain score '
            f'{model["domain_score"]:.3g} {sign} {model["domain_threshold"]:.3g}: {verdict}</span>')


def _image_section(job: ImageJob, summary: dict) -> str:
    from attnviz.models import VARIANT_TITLES

    folder = job.folder
    agreement = ", ".join(
        f"{VARIANT_TITLES.get(a, a)} / {VARIANT_TITLES.get(b, b)} {iou:.2f}"
        for (a, b), iou in ((pair.split("|"), iou) for pair, iou in summary.get("agreement_top20_iou", {}).items()))
    status = "finished in an earlier run" if job.status == "skipped" else "explained in this run"
    columns = "\n".join(_model_column(folder, summary, variant) for variant in summary.get("models", {}))
    comparison = ""
    difference = _figure(folder, summary, "difference_maps.png", "difference maps")
    if difference:
        comparison += f'<div class="caption">{_e(text("difference"))}</div>{difference}'
    comparison += (f'<div class="caption">{_e(text("agreement"))}</div>'
                   f'{_figure(folder, summary, "agreement.png", "agreement and time per model")}')
    if agreement:
        comparison += f'<p class="muted">IoU of the top-20 % regions: {_e(agreement)}</p>'
    return f"""
<section class="image" id="{_e(folder)}">
<h2>{_e(job.label)}</h2>
<p class="muted">{_e(status)} · sha256 {_e(job.sha256[:12])}… ·
 full-size pictures and results in <a href="{_href(folder, SUMMARY_NAME)}">{_e(folder)}/</a></p>
{f'<p class="notice">{_e(text("ood_report"))}</p>' if summary.get("out_of_domain") else ""}
<div class="row">
<div class="view"><div class="caption">{_e(text("report_view"))}</div>
{_figure(folder, summary, "view.png", "model input")}</div>
{columns}
</div>
<div class="comparison"><h3>{_e(text("comparison").lstrip("# "))}</h3>
<p class="note">Each heatmap is scaled to its own maximum: compare where the maps point, not how hot they are.</p>
{comparison}
</div>
</section>"""


def _settings_table(run: Run) -> str:
    from attnviz.explainer import CAM_METHODS
    from attnviz.models import VARIANT_TITLES

    s = run.settings
    info = run.info
    target = "each model's own top-1" if s.target is None else f"{run.classes[s.target]} (index {s.target})"
    smoothing = ", ".join(n for n, on in (("aug_smooth", s.aug_smooth), ("eigen_smooth", s.eigen_smooth)) if on)
    rows = [
        ("Model set", f"{info.name}" + (f": {info.description}" if info.description else "")),
        ("Models", ", ".join(VARIANT_TITLES[v] for v in s.variants)),
        ("CAM method", CAM_METHODS[s.method].label),
        ("Target layer", s.layer),
        ("Target class", target),
        ("Top-k", str(s.top_k)),
        ("Colormap, opacity", f"{run.colormap}, {run.opacity:g}"),
        ("Smoothing", smoothing or "none"),
        ("Preprocessing", f"resize {info.preprocessing.resize}, centre crop {info.preprocessing.crop}, "
                          f"{info.preprocessing.interpolation}"),
        ("Classes", f"{len(run.classes)}: " + ", ".join(run.classes[:30]) + (" …" if len(run.classes) > 30 else "")),
    ]
    for variant in s.variants:
        entry = info.models[variant]
        accuracy = ", ".join(f"{k} {v}" for k, v in entry.accuracy.items()) or "no accuracy recorded"
        rows.append((VARIANT_TITLES[variant], f"{entry.source or 'unknown source'}; {accuracy}; "
                                              f"sha256 {entry.sha256[:12]}…"))
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="meta">{body}</table>'


def _html_page(run: Run, title: str, body: str) -> str:
    """One page of the report: ``body`` with the style, the glossary and the credit every page carries."""
    from attnviz.weights import BUILTIN_SET

    credit = ""
    if run.info.name == BUILTIN_SET:
        from attnviz.scenes import attribution

        credit = (f'<p class="muted">The built-in set was trained on generated scenes drawn with OpenMoji glyphs. '
                  f'{_e(attribution())}</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{REPORT_CSS}</style>
</head>
<body>
{body}
<footer class="muted">
<p>A CAM heatmap marks the parts of the image that most raised the score of the target class, seen from the
target layer; channel attention is the weight (0 to 1) a model's attention modules gave each channel of each
block on this image; spatial attention is their weight (0 to 1) for each position. Each picture is a preview:
click it for the full-size PNG.</p>
{credit}
</footer>
</body>
</html>
"""


def _page_nav(number: int, count: int) -> str:
    links = [f'<a href="{REPORT_NAME}">Index</a>']
    if number > 1:
        links.append(f'<a href="{_page_name(number - 1)}" rel="prev">‹ Page {number - 1}</a>')
    links.append(f"<b>Page {number} of {count}</b>")
    if number < count:
        links.append(f'<a href="{_page_name(number + 1)}" rel="next">Page {number + 1} ›</a>')
    return f'<nav class="pages">{"".join(links)}</nav>'


def _image_page(run: Run, number: int, pages: list[list[ImageJob]], summaries: dict, total: int) -> str:
    jobs = pages[number - 1]
    first = sum(len(page) for page in pages[:number - 1]) + 1
    contents = "".join(f'<li><a href="#{_e(j.folder)}">{_e(j.label)}</a></li>' for j in jobs)
    nav = _page_nav(number, len(pages))
    last = first + len(jobs) - 1
    span = f"Image {first}" if last == first else f"Images {first}–{last}"
    body = (f"<h1>attnviz report: page {number} of {len(pages)}</h1>\n"
            f"<p>{span} of the {_n_images(total)} shown; the settings and every "
            f'image are on the <a href="{REPORT_NAME}">index</a>.</p>\n{nav}\n<ul>{contents}</ul>\n'
            + "".join(_image_section(j, summaries[j.folder]) for j in jobs) + f"\n{nav}")
    return _html_page(run, f"attnviz report: {run.info.name}, page {number}", body)


def _top1_cells(summary: dict, variants: tuple[str, ...]) -> str:
    models = summary.get("models", {})
    tops = [models[v]["top"][0] if v in models and models[v]["top"] else None for v in variants]
    first = tops[0]["index"] if tops and tops[0] else None
    cells = []
    for top in tops:
        if top is None:
            cells.append('<td class="muted">–</td>')
        else:
            cls = ' class="differs"' if top["index"] != first else ""
            cells.append(f'<td{cls}>{_e(top["name"])} {top["probability"]:.1%}</td>')
    flag = summary.get("out_of_domain")
    cells.append('<td class="muted">–</td>' if flag is None else
                 '<td class="ood">yes</td>' if flag else "<td>no</td>")
    return "".join(cells)


def _index_table(run: Run, pages: list[list[ImageJob]], summaries: dict) -> str:
    from attnviz.models import VARIANT_TITLES

    variants = run.settings.variants
    heads = "".join(f"<th>{_e(VARIANT_TITLES[v])}</th>" for v in variants)
    rows, n = [], 0
    for number, jobs in enumerate(pages, 1):
        for job in jobs:
            n += 1
            summary = summaries[job.folder]
            thumb = summary.get("previews", {}).get("view.png")
            img = (f'<img class="thumb" src="{_href(job.folder, thumb["file"])}" width="56" '
                   f'height="{round(56 * thumb["height"] / thumb["width"])}" alt="" loading="lazy" '
                   f'decoding="async">' if thumb else "")
            link = f"{_page_name(number)}#{job.folder}"
            rows.append(f'<tr><td class="n">{n}</td><td><a class="image" href="{_e(link)}">{img}'
                        f'<span>{_e(job.label)}</span></a></td>{_top1_cells(summary, variants)}'
                        f'<td><a href="{_page_name(number)}">{number}</a></td></tr>')
    marked = (f"; marked: a top-1 that differs from {_e(VARIANT_TITLES[variants[0]])}'s" if len(variants) > 1
              else "")
    return (f'<p class="note">Each model\'s top-1 class and its probability{marked}; out of domain: whether any '
            f'model finds the image unlike its training scenes (–: no model is calibrated). Click an image for its '
            f'page.</p>'
            f'<table class="images"><thead><tr><th>#</th><th>Image</th>{heads}<th>Out of domain</th>'
            f'<th>Page</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _index_page(run: Run, counts: str, pages: list[list[ImageJob]], summaries: dict, failed: list[ImageJob]) -> str:
    page_links = "".join(f'<a href="{_page_name(n)}">{n}</a>' for n in range(1, len(pages) + 1))
    nav = f'<nav class="pages">Pages ({len(pages)}): {page_links}</nav>' if pages else ""
    failed_rows = "".join(f'<tr><td class="path">{_e(j.label)}</td><td>{_e(j.reason)}</td></tr>' for j in failed)
    failed_html = (f'<h2 id="failed">Files that failed ({len(failed)})</h2><table class="failed">{failed_rows}</table>'
                   if failed else "")
    images = f"<h2>Images</h2>\n{nav}\n{_index_table(run, pages, summaries)}" if pages else ""
    body = (f"<h1>attnviz report</h1>\n<p>{_e(counts)}. Written {_e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>\n"
            + (f'<p><a href="#failed">Files that failed ({len(failed)})</a></p>\n' if failed else "")
            + f"{_settings_table(run)}\n{images}\n{failed_html}")
    return _html_page(run, f"attnviz report: {run.info.name}", body)


def _write_text(path: Path, text: str) -> int:
    """Write through a staging file, so that a reader never sees half a page; the bytes written."""
    staging = path.with_name(f".{path.name}.incoming")
    data = text.encode("utf-8")
    staging.write_bytes(data)
    staging.replace(path)
    return len(data)


def write_report(jobs: list[ImageJob], run: Run, out_dir: Path, interrupted: bool = False,
                 per_page: int = PER_PAGE) -> Report:
    """The index ``report.html`` and ``per_page`` finished images per page; pages left by a longer run go."""
    shown = [j for j in jobs if j.status in ("done", "skipped")]
    failed = [j for j in jobs if j.status == "failed"]
    counts = (f"{_n_images(len(jobs))}: {sum(j.status == 'done' for j in jobs)} explained in this run, "
              f"{sum(j.status == 'skipped' for j in jobs)} finished earlier, {len(failed)} failed"
              + (", the run was interrupted" if interrupted else ""))
    summaries = {j.folder: _read_summary(out_dir / j.folder) or {} for j in shown}
    pages = [shown[i:i + per_page] for i in range(0, len(shown), per_page)]
    size, written = 0, []
    for number in range(1, len(pages) + 1):
        path = out_dir / _page_name(number)
        size += _write_text(path, _image_page(run, number, pages, summaries, len(shown)))
        written.append(path)
    for stale in out_dir.iterdir():
        match = PAGE_PATTERN.fullmatch(stale.name)
        if match and stale.name == _page_name(int(match.group(1))) and int(match.group(1)) > len(pages):
            stale.unlink()
    index = out_dir / REPORT_NAME
    size += _write_text(index, _index_page(run, counts, pages, summaries, failed))
    for job in shown:
        for preview in summaries[job.folder].get("previews", {}).values():
            path = out_dir / job.folder / preview["file"]
            size += path.stat().st_size if path.is_file() else 0
    return Report(index, written, len(shown), size)


# --------------------------------------------------------------------------- the command line


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
    parser.add_argument("--per-page", type=int, default=PER_PAGE, metavar="N",
                        help=f"images per page of the report; report.html is the index of the pages ({PER_PAGE})")
    return parser


def explain_command(argv: list[str]) -> int:
    args = _explain_parser().parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        raise UsageError(f"--opacity must be between 0 and 1, not {args.opacity}")
    if args.per_page < 1:
        raise UsageError(f"--per-page must be at least 1, not {args.per_page}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder")
    jobs = find_images(args.paths, args.out)
    if not jobs:
        raise UsageError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(map(str, args.paths))}")
    run = prepare_run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    interrupted = explain_all(jobs, run, args.out, args.force)
    report = write_report(jobs, run, args.out, interrupted, args.per_page)
    counts = {s: sum(j.status == s for j in jobs) for s in ("done", "skipped", "failed")}
    pages = f"{len(report.pages)} page" + ("" if len(report.pages) == 1 else "s")
    print(f"{_n_images(len(jobs))}: {counts['done']} explained, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; report: {report.index} (index and {pages}, "
          f"{report.bytes_per_image / 1000:.0f} KB per image with its previews)", flush=True)
    if interrupted:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return 130
    return 1 if counts["failed"] else 0


def explain_all(jobs: list[ImageJob], run: Run, out_dir: Path, force: bool) -> bool:
    """Process every job with one line per image on stdout; True when interrupted. A progress bar is drawn on
    stderr only when stderr is a terminal: redirected to a file, a bar is hundreds of overdrawn lines."""
    from tqdm import tqdm

    isatty = getattr(sys.stderr, "isatty", None)
    bar = tqdm(jobs, unit="image", desc="explaining", file=sys.stderr, dynamic_ncols=True,
               disable=not (isatty and isatty()))

    def say(line: str) -> None:
        if bar.disable:
            print(line, flush=True)
        else:
            tqdm.write(line, file=sys.stdout)  # clears the bar, writes the line, draws the bar again
            sys.stdout.flush()

    try:
        for job in bar:
            bar.set_postfix_str(job.label[-40:])
            process(job, run, out_dir, force, lambda _fraction, message: bar.set_postfix_str(message))
            if job.status == "failed":
                say(f"failed   {job.label}: {job.reason}")
            elif job.status == "skipped":
                say(f"skipped  {job.label} (finished earlier with these settings)")
            else:
                summary = _read_summary(out_dir / job.folder) or {}
                flag = " (out of domain: unlike the models' training scenes)" if summary.get("out_of_domain") else ""
                say(f"done     {job.label} -> {out_dir / job.folder}{flag}")
    except KeyboardInterrupt:
        return True
    finally:
        bar.close()
    return False


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


if __name__ == "__main__":
    sys.exit(main())
