"""What an analysis shows, in plain sentences computed from its analysis.json (the numbers the tables show).

Each sentence names a model and the numbers behind the claim: which model is most accurate, which one's CAMs
find the object best, which one's CAMs are most faithful to it, and where attention does not help against the
plain ResNet50. A lead counts only when the paired bootstrap interval of the difference excludes 0 ("beyond
noise"); otherwise the sentence says it is within noise. The sentences' words live in the locale files.

    findings(read_result(folder), "en")        # a list of markdown sentences
    findings_markdown(read_result(folder), "zh-CN")
"""

from __future__ import annotations

from attnviz.attention import family
from attnviz.texts import text

GRADCAM = "gradcam@layer4"
LOCALISING = ("energy", "iou")  # the pointing game saturates on these scenes: said apart when it does
FAITHFUL = {"deletion": False, "insertion": True, "road_combined": True}  # metric -> higher is better
PERCENT = {"accuracy", "unseen_accuracy", "pointing"}


def language_of(accept_language: str | None) -> str:
    """The locale for a browser's Accept-Language header: Simplified Chinese for any Chinese, else English."""
    first = (accept_language or "").split(",")[0].strip().lower()
    return "zh-CN" if first.startswith("zh") else "en"


def _number(value: float, metric: str, signed: bool = False) -> str:
    if metric in PERCENT:
        value *= 100
        return f"{value:+.1f}" if signed else f"{value:.1f}"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _interval(iv: dict, metric: str, signed: bool = False) -> str:
    unit = " %" if metric in PERCENT and not signed else ""
    return (f"{_number(iv['mean'], metric, signed)}{unit} [{_number(iv['low'], metric)}, "
            f"{_number(iv['high'], metric)}]")


def _sentences(parts) -> str:
    """Sentences one after the other: a space after a Latin full stop, none after a CJK one ("。")."""
    text = ""
    for part in parts:
        text += ("" if not text or text.endswith("。") else " ") + part
    return text


def _difference(group: dict, a: str, b: str) -> dict | None:
    """``a`` − ``b`` with its interval (the file keeps each pair once, in one direction)."""
    differences = group.get("differences", {})
    if f"{a}-{b}" in differences:
        return differences[f"{a}-{b}"]
    found = differences.get(f"{b}-{a}")
    if found is None or found.get("mean") is None:
        return None
    return {"mean": -found["mean"], "low": -found["high"], "high": -found["low"],
            "excludes_zero": found.get("excludes_zero", False)}


def _groups(result: dict) -> dict[str, dict]:
    """Metric -> the comparison on the test scenes (Grad-CAM at layer4 for the CAM metrics), where measured."""
    groups = {"accuracy": result["accuracy"].get("test"), "unseen_accuracy": result["accuracy"].get("unseen")}
    for metric in ("pointing", *LOCALISING):
        groups[metric] = result["localisation"].get("test", {}).get(metric, {}).get(GRADCAM)
    for metric in FAITHFUL:
        groups[metric] = (result.get("faithfulness") or {}).get(metric, {}).get(GRADCAM)
    return {k: g for k, g in groups.items() if g and all(g["models"].get(v, {}).get("mean") is not None
                                                          for v in result["variants"])}


class _Writer:
    """Sentences in one language about one result."""

    def __init__(self, result: dict, language: str) -> None:
        self.result, self.language = result, language
        self.variants, self.titles = result["variants"], result["titles"]
        self.groups = _groups(result)

    def t(self, key: str, **values) -> str:
        return text(f"finding_{key}", self.language).format(**values)

    def join(self, items: list[str]) -> str:
        if len(items) < 2:
            return "".join(items)
        return self.t("comma").join(items[:-1]) + self.t("and") + items[-1]

    def metric(self, metric: str) -> str:
        return self.t(f"metric_{metric}")

    def best(self, metric: str, higher: bool = True) -> str:
        models = self.groups[metric]["models"]
        return (max if higher else min)(self.variants, key=lambda v: models[v]["mean"])

    def lead(self, metric: str, best: str, higher: bool = True) -> tuple[list[str], list[str]]:
        """The other models ``best`` is ahead of beyond noise, and those it is not, each with the difference."""
        ahead, close = [], []
        for other in (v for v in self.variants if v != best):
            diff = _difference(self.groups[metric], best, other)
            if diff is None:
                continue
            clause = f"{self.titles[other]} ({_interval(diff, metric, signed=True)})"
            beyond = diff["excludes_zero"] and (diff["mean"] > 0) == higher
            (ahead if beyond else close).append(clause)
        return ahead, close

    def lead_sentences(self, metric: str, best: str, higher: bool = True) -> str:
        ahead, close = self.lead(metric, best, higher)
        parts = [self.t("ahead", models=self.join(ahead))] if ahead else []
        parts += [self.t("within_noise", models=self.join(close))] if close else []
        return _sentences(parts)

    def sentence(self, key: str, metric: str, higher: bool = True, **values) -> str:
        best = self.best(metric, higher)
        iv = self.groups[metric]["models"][best]
        head = self.t(key, model=self.titles[best], value=_interval(iv, metric), metric=self.metric(metric),
                      **values)
        return _sentences(filter(None, [head, self.lead_sentences(metric, best, higher)]))


def _accuracy(w: _Writer) -> list[str]:
    if "accuracy" not in w.groups:
        return []
    return [w.sentence("accuracy", "accuracy", n=w.groups["accuracy"]["n"])]


def _localisation(w: _Writer) -> list[str]:
    lines = []
    chance = w.result.get("area_share", {}).get("test")
    for metric in (m for m in LOCALISING if m in w.groups):
        extra = w.t("chance", value=f"{chance:.3f}") if metric == "energy" and chance is not None else ""
        lines.append(w.sentence("localisation", metric, extra=extra))
    if "pointing" in w.groups:
        group = w.groups["pointing"]
        apart = [d for d in group.get("differences", {}).values() if d.get("excludes_zero")]
        means = [group["models"][v]["mean"] * 100 for v in w.variants]
        if not apart:
            lines.append(w.t("pointing_saturated", low=f"{min(means):.1f}", high=f"{max(means):.1f}"))
    return lines


def _faithfulness(w: _Writer) -> list[str]:
    measured = [m for m in FAITHFUL if m in w.groups]
    if not measured:
        return []
    wins = {v: [m for m in measured if w.best(m, FAITHFUL[m]) == v] for v in w.variants}
    best = max(w.variants, key=lambda v: len(wins[v]))
    beyond, close = [], []
    for metric in wins[best]:
        ahead, near = w.lead(metric, best, FAITHFUL[metric])
        beyond += [w.t("against", metric=w.metric(metric), models=w.join(ahead))] if ahead else []
        close += [w.t("against", metric=w.metric(metric), models=w.join(near))] if near else []
    parts = [w.t("faithful", model=w.titles[best], metrics=w.join([w.metric(m) for m in wins[best]]),
                 count=len(wins[best]), total=len(measured), n=w.groups[measured[0]]["n"])]
    parts += [w.t("faithful_beyond", clauses=w.t("semicolon").join(beyond)) if beyond else w.t("faithful_none")]
    parts += [w.t("faithful_close", clauses=w.t("semicolon").join(close))] if close else []
    return [_sentences(parts)]


def _attention(w: _Writer) -> list[str]:
    """For each model with attention against each plain one: the measures where it is not better beyond noise."""
    plain = [v for v in w.variants if not family(v).has_attention]
    lines = []
    for baseline in plain:
        for model in (v for v in w.variants if family(v).has_attention):
            kinds: dict[str, list[str]] = {"worse": [], "same": [], "better": []}
            for metric, group in w.groups.items():
                diff = _difference(group, model, baseline)
                if diff is None:
                    continue
                higher = FAITHFUL.get(metric, True)
                kind = "same" if not diff["excludes_zero"] else "better" if (diff["mean"] > 0) == higher else "worse"
                clause = w.metric(metric) + (f" ({_interval(diff, metric, signed=True)})" if kind != "same" else "")
                kinds[kind].append(clause)
            if not kinds["worse"] and not kinds["same"]:
                continue
            parts = [w.t(f"attention_{kind}", metrics=w.join(items)) for kind, items in kinds.items() if items]
            lines.append(w.t("attention", model=w.titles[model], baseline=w.titles[baseline],
                             parts=w.t("semicolon").join(parts)))
    return lines


def _sanity(w: _Writer) -> list[str]:
    """One sentence on the sanity section: the methods that pass on every model, those that fail on some, and
    the edge map (which must fail)."""
    section = w.result.get("sanity") or {}
    models = section.get("models") or {}
    if not models:
        return []
    from attnviz.methods import CAM_METHODS
    from attnviz.sanity import EDGES

    def failing(kind: str) -> list[str]:
        return [w.titles.get(v, v) for v, m in models.items() if not m["verdict"][kind]["passes"]]

    passed = [CAM_METHODS[k].label for k in section["methods"] if not failing(k)]
    parts = [w.t("sanity_pass", methods=w.join(passed))] if passed else []
    parts += [w.t("sanity_fail", method=CAM_METHODS[k].label, models=w.join(failing(k)))
              for k in section["methods"] if failing(k)]
    edges = w.t("sanity_edges_fail" if len(failing(EDGES)) == len(models) else "sanity_edges_pass")
    return [w.t("sanity", n=section["scenes"], parts=w.t("semicolon").join(parts), edges=edges)]


def findings(result: dict, language: str = "en") -> list[str]:
    """The plain-language findings of one analysis.json, as markdown sentences (empty when nothing fits)."""
    w = _Writer(result, language)
    if not w.groups or len(w.variants) < 2:
        return []
    return [*_accuracy(w), *_localisation(w), *_faithfulness(w), *_attention(w), *_sanity(w)]


def findings_markdown(result: dict, language: str = "en") -> str:
    """The findings as a markdown list under one line that says what "beyond noise" means; empty if none."""
    sentences = findings(result, language)
    if not sentences:
        return ""
    confidence = int(round(result["config"]["confidence"] * 100))
    intro = text("finding_intro", language).format(confidence=confidence)
    return "\n".join([intro, "", *(f"- {s}" for s in sentences)])
