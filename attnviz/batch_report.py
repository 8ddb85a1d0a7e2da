"""The batch command's report: static HTML pages that open from disk (the index, then pages of images side by
side as the app shows them), written from each image's summary.json and previews (``attnviz.batch``)."""

from __future__ import annotations

import html
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from attnviz.texts import fill, text

if TYPE_CHECKING:  # the command starts without importing torch; the explain command loads it when it runs
    pass

from attnviz.batch import (
    PAGE_NAME,
    PAGE_PATTERN,
    PER_PAGE,
    REPORT_NAME,
    SUMMARY_NAME,
    ImageJob,
    Run,
    _read_summary,
)

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


def n_images(count: int) -> str:
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
            f"<p>{span} of the {n_images(total)} shown; the settings and every "
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
    counts = (f"{n_images(len(jobs))}: {sum(j.status == 'done' for j in jobs)} explained in this run, "
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
