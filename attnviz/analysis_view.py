"""The app's Analysis tab: the measured comparison of a model set's models, read from the files attnviz.analyze wrote.

The tab measures nothing: it shows ``<weights dir>/<set>/analysis/`` (the headline table, what it shows in plain
sentences computed from the same JSON, the plots, every table of analysis.md and the command that regenerates
them), or one line with that command when the files are not there.

    with gr.Tab("Analysis"):
        build_analysis_tab(weights_dir, "builtin", translate=ui.tr)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from attnviz.analyze import (
    JSON_NAME,
    MARKDOWN_NAME,
    analysis_dir,
    plot_files,
    read_result,
    regenerate_command,
    render_summary,
)
from attnviz.errors import AttnvizError
from attnviz.findings import findings_markdown
from attnviz.weights import Manifest, default_weights_dir

ANALYSIS_TRANSLATIONS: dict[str, dict[str, str]] = {
    "en": {
        "analysis_tab": "Analysis",
        "analysis_title": "## How the three models compare, measured",
        "analysis_intro": (
            "The scenes come with true object masks, so attnviz measures what the CBAM paper only shows in "
            "pictures: how well each model's CAM finds the object (pointing game, energy in the mask, mask IoU), "
            "how faithful the CAM is to the model (deletion, insertion, ROAD), and what SE's and CBAM's attention "
            "does in every block (the SE paper's excitation analysis). Every number comes with a 95 % paired "
            "bootstrap interval over the same scenes; a difference in **bold** is one the sample can tell from noise."
        ),
        "analysis_command": "Regenerate these results (about half an hour on 2 CPU cores):",
        "analysis_missing": "No analysis for this model set yet. Make it with this command (about half an hour on "
        "2 CPU cores), then restart the app:",
        "analysis_unreadable": "The analysis files of this model set cannot be read. Make them again with:",
        "analysis_summary": "### Summary: test scenes, Grad-CAM at layer4",
        "analysis_findings": "### What these numbers show",
        "analysis_plots": "### Plots",
        "analysis_tables": "Every table, with its intervals",
        "analysis_localisation": "Localisation at layer4, per model and CAM method",
        "analysis_layers": "Grad-CAM at each layer",
        "analysis_pairs": "Two-object scenes: each class's CAM on its own object and on the other",
        "analysis_faithfulness": "Faithfulness: deletion, insertion and ROAD",
        "analysis_curves": "Mean deletion and insertion curves",
        "analysis_excitation": "mean excitation per class, after the SE paper's figure",
        "analysis_specificity": "How class-specific each block's channel attention is",
        "analysis_spatial": "Spatial attention on the object, per block",
        "analysis_knockout": "Each stage's attention switched off: change in accuracy and in energy in mask",
        "analysis_sanity": "Sanity check: each map against the original as the model is randomised from the top",
        "analysis_sanity_independent": "Sanity check: each map against the original with one step randomised",
    },
    "zh-CN": {
        "analysis_tab": "分析",
        "analysis_title": "## 三个模型的定量比较",
        "analysis_intro": (
            "这些场景带有物体的真实掩码，所以 attnviz 可以测量 CBAM 论文只用图片展示的内容：每个模型的 CAM "
            "找到物体的程度（指向游戏、掩码内能量、掩码 IoU），CAM 对模型的忠实度（删除、插入、ROAD），以及 SE 和 "
            "CBAM 的注意力在每个模块中的作用（SE 论文的激励分析）。每个数值都附有在同一批场景上的 95 % 配对自助法"
            "置信区间；**粗体**的差异表示样本足以将其与噪声区分开。"
        ),
        "analysis_command": "重新生成这些结果（在 2 个 CPU 核上约半小时）：",
        "analysis_missing": "此模型集还没有分析结果。用下面的命令生成（在 2 个 CPU 核上约半小时），然后重启应用：",
        "analysis_unreadable": "无法读取此模型集的分析文件。用下面的命令重新生成：",
        "analysis_summary": "### 摘要：测试场景，layer4 的 Grad-CAM",
        "analysis_findings": "### 这些数字说明了什么",
        "analysis_plots": "### 图表",
        "analysis_tables": "全部表格及其置信区间",
        "analysis_localisation": "layer4 的定位效果：每个模型和每种 CAM 方法",
        "analysis_layers": "各层的 Grad-CAM",
        "analysis_pairs": "双物体场景：每个类别的 CAM 落在自己的物体上还是另一个物体上",
        "analysis_faithfulness": "忠实度：删除、插入和 ROAD",
        "analysis_curves": "删除和插入的平均曲线",
        "analysis_excitation": "每个类别的平均激励（仿照 SE 论文的图）",
        "analysis_specificity": "每个模块的通道注意力有多大的类别特异性",
        "analysis_spatial": "空间注意力落在物体上的比例（逐模块）",
        "analysis_knockout": "逐阶段关闭注意力：准确率和掩码内能量的变化",
        "analysis_sanity": "合理性检验：从顶层起逐步随机化模型后，每张图与原图的相似度",
        "analysis_sanity_independent": "合理性检验：每次只随机化一步时，每张图与原图的相似度",
    },
}
ANALYSIS_TRANSLATIONS["zh"] = ANALYSIS_TRANSLATIONS["zh-CN"]


def _english(key: str) -> str:
    return ANALYSIS_TRANSLATIONS["en"][key]


def _command(weights_dir: Path | str | None, set_name: str) -> str:
    """The command for this set, naming the weights folder only when it is not the default one."""
    default = weights_dir is None or Path(weights_dir).resolve() == default_weights_dir().resolve()
    return regenerate_command(set_name, None if default else weights_dir)


def build_analysis_tab(
    weights_dir: Path | str | None = None,
    set_name: str | None = None,
    translate: Callable[[str], Any] | None = None,
    keyed: bool = False,
    language: str = "en",
) -> dict[str, Any]:
    """Create the tab's components inside an open ``gr.Tab`` (or any Blocks context); returns them by name.

    ``translate`` gives a component's text for a key of ``ANALYSIS_TRANSLATIONS`` (the app's ``ui.tr`` once
    they are merged into its translations); by default the English text. ``keyed`` gives every component a key
    of this set's own, for ``gr.render``: drawn again for another set, no component of the old one is reused
    (gradio would otherwise keep an old component's elem_id on a new one). ``language`` is that of the
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
        components["status"] = make(gr.Markdown, f"{tr('analysis_missing')} `{command}`", elem_id="analysis-status")
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
    return (
        f"`{result['set']}`: {samples['test']} test, {samples['unseen']} unseen-glyph, {samples['pairs']} "
        f"two-object scenes; faithfulness {samples['faithfulness']}, Score-CAM {samples['scorecam']}; "
        f"{timing['total_s'] / 60:.0f} min on {result['machine']['cores']} cores."
    )
