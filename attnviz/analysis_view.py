"""The app's Analysis tab: the measured comparison of a model set's models, read from the files attnviz.analyze wrote.

The tab measures nothing: it shows ``<weights dir>/<set>/analysis/`` (the headline table, what it shows in plain
sentences computed from the same JSON, the plots, every table of analysis.md and the command that regenerates
them), or one line with that command when the files are not there.

    with gr.Tab("Analysis"):
        build_analysis_tab(weights_dir, "builtin", translate=ui.tr)
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from attnviz.analysis.config import JSON_NAME, MARKDOWN_NAME, plot_files
from attnviz.analysis.findings import findings_markdown
from attnviz.analysis.report import render_summary
from attnviz.analysis.results import analysis_dir, read_result, regenerate_command
from attnviz.errors import AttnvizError
from attnviz.scenes import CLASSES
from attnviz.texts import text
from attnviz.weights import Manifest, default_weights_dir


def _english(key: str) -> str:
    return text(key)


def _command(weights_dir: Path | str | None, set_name: str) -> str:
    """The command for this set, naming the weights folder only when it is not the default one."""
    default = weights_dir is None or Path(weights_dir).resolve() == default_weights_dir().resolve()
    return regenerate_command(set_name, None if default else weights_dir)


def _other_classes(weights_dir: Path | str | None, set_name: str) -> list[str] | None:
    """The set's classes when they are not the generated scenes' (an imported set: the analysis cannot measure
    it), else None (also when the set is not in the manifest)."""
    try:
        classes = Manifest(Path(weights_dir) if weights_dir else None).get(set_name).classes
    except AttnvizError:
        return None
    return None if sorted(classes) == sorted(CLASSES) else classes


def build_analysis_tab(
    weights_dir: Path | str | None = None,
    set_name: str | None = None,
    translate: Callable[[str], Any] | None = None,
    keyed: bool = False,
    language: str = "en",
) -> dict[str, Any]:
    """Create the tab's components inside an open ``gr.Tab`` (or any Blocks context); returns them by name.

    ``translate`` gives a component's text for a key of the locale files (the app's ``ui.tr``); by default the
    English text. ``keyed`` gives every component a key of this set's own, for ``gr.render``: drawn again for
    another set, no component of the old one is reused (gradio would otherwise keep an old component's elem_id
    on a new one). ``language`` is that of the
    findings, which are computed here from the JSON rather than looked up by key.
    """
    count = 0

    def make(component: type, *args, **kwargs):
        nonlocal count
        count += 1
        if keyed:
            kwargs["key"] = f"analysis-{set_name}-{count}"
        return component(*args, **kwargs)

    tr = translate or _english
    set_name = set_name or Manifest(Path(weights_dir) if weights_dir else None).default_set
    folder = analysis_dir(weights_dir, set_name)
    command = _command(weights_dir, set_name)
    components: dict[str, Any] = {"plots": {}}
    try:
        result = read_result(folder) if (folder / JSON_NAME).is_file() else None
    except AttnvizError:
        make(gr.Markdown, tr("analysis_title"))
        components["status"] = make(gr.Markdown, f"{tr('analysis_unreadable')} `{command}`", elem_id="analysis-status")
        return components
    if result is None:
        make(gr.Markdown, tr("analysis_title"))
        other = _other_classes(weights_dir, set_name)
        line = f"{tr('analysis_missing')} `{command}`" if other is None else (
            # one translated text per string: the page replaces only one marker in it
            f"{tr('analysis_other_classes')} `{command} --images DIR --masks DIR --out {shlex.quote(str(folder))}` "
            f"({len(other)}: {', '.join(other[:3])}, …)")
        components["status"] = make(gr.Markdown, line, elem_id="analysis-status")
        return components

    # The same first two components in every case (title, status): gradio's frontend keeps the elem_id of the
    # component drawn before at the same place when gr.render draws the tab again for another set.
    make(gr.Markdown, tr("analysis_title"))
    components["status"] = make(gr.Markdown, _sample_line(result), elem_id="analysis-status")
    make(gr.Markdown, tr("analysis_intro"))
    summary = render_summary(result)
    if summary:
        make(gr.Markdown, tr("analysis_summary"))
        components["summary"] = make(gr.Markdown, summary, elem_id="analysis-summary")
    findings = findings_markdown(result, language)
    if findings:
        make(gr.Markdown, tr("analysis_findings"))
        components["findings"] = make(gr.Markdown, findings, elem_id="analysis-findings")
    make(gr.Markdown, tr("analysis_command"))
    components["command"] = make(
        gr.Code,
        result.get("command") or command,
        language="shell",
        interactive=False,
        show_label=False,
        elem_id="analysis-command",
    )
    components["plots"] = _plots(make, folder, result, tr)
    markdown = folder / MARKDOWN_NAME
    if markdown.is_file():
        with make(gr.Accordion, tr("analysis_tables"), open=False):
            components["tables"] = make(gr.Markdown, markdown.read_text(encoding="utf-8"), elem_id="analysis-tables")
    return components


def _plots(make: Callable, folder: Path, result: dict, tr: Callable) -> dict[str, Any]:
    """The plots the run drew, two per row, each under its caption; returns them by name."""
    files = plot_files(result)
    names = [name for name, file in files.items() if file in result.get("plots", []) and (folder / file).is_file()]
    if names:
        make(gr.Markdown, tr("analysis_plots"))
    shown = {}
    for start in range(0, len(names), 2):
        with make(gr.Row, equal_height=False):
            for name in names[start : start + 2]:
                with make(gr.Column):
                    make(gr.Markdown, _caption(name, result, tr), elem_classes=["attnviz-caption"])
                    shown[name] = _plot(make, folder / files[name], name)
            if len(names[start : start + 2]) == 1:
                with make(gr.Column):  # an empty column beside an odd last plot: it keeps the others' width
                    pass
    return shown


def _plot(make: Callable, path: Path, name: str):
    with Image.open(path) as image:
        picture = image.convert("RGB")
    return make(
        gr.Image,
        picture,
        format="png",
        show_label=False,
        interactive=False,
        buttons=["download", "fullscreen"],
        elem_id=f"analysis-{name}",
        elem_classes=["attnviz-figure"],
    )


def _caption(name: str, result: dict, tr: Callable):
    """A plot's caption; an excitation plot's names its model: "ResNet50 + SE: mean excitation per class"."""
    variant = name.removeprefix("excitation_")
    if variant != name:
        return f"{result['titles'].get(variant, variant)}: {tr('analysis_excitation')}"
    return tr(f"analysis_{name}")


def _sample_line(result: dict) -> str:
    """Which set, how many scenes, how long: plain facts from the JSON, the same in every language."""
    samples, timing = result["samples"], result["timing"]
    data = result.get("data")
    if data:  # a run on the user's own images with masks (--images, --masks)
        measured = (f"{len(data['measured'])} images of `{data['images']}` ({len(data['held_out'])} held out for "
                    f"the IoU threshold)")
    else:
        measured = (f"{samples['test']} test, {samples['unseen']} unseen-glyph, {samples['pairs']} two-object "
                    f"scenes")
    return (
        f"`{result['set']}`: {measured}; faithfulness {samples['faithfulness']}, Score-CAM {samples['scorecam']}; "
        f"{timing['total_s'] / 60:.0f} min on {result['machine']['cores']} cores."
    )
