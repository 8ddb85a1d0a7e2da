"""The benchmark results as markdown: the tables the README shows, written from bench/results/*.json.

    python bench/report.py [--results bench/results] [--out bench/results/REPORT.md] [--readme README.md]

Every figure in the README's performance section comes from here, so none is copied by hand; a result file
that is missing is named in the output instead of its table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TITLES = {"resnet50": "ResNet50", "se": "ResNet50 + SE", "cbam": "ResNet50 + CBAM", "eca": "ResNet50 + ECA",
          "three": "all models of the set"}


def _load(folder: Path, name: str) -> dict | None:
    """One result file, or several (names joined by " + ", e.g. a before and an after) as a dict by name."""
    if " + " in name:
        found = {part: _load(folder, part) for part in name.split(" + ")}
        return found if all(v is not None for v in found.values()) else None
    path = folder / name
    return json.loads(path.read_text()) if path.exists() else None


def _ms(entry: dict | None) -> str:
    return f"{entry['median_ms']:.0f} / {entry['p90_ms']:.0f}" if entry else "-"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _machine(data: dict) -> str:
    m = data["machine"]
    load = m.get("load_average_at_start")
    return (f"{m.get('cpu', '?')}, {m.get('usable_cpus', '?')} CPUs, torch {m.get('torch', '?')}"
            + (f", load average at start {load[0]}" if load else ""))


def explain_section(data: dict, layers: tuple[str, ...] | None = None) -> list[str]:
    lines = [f"Machine: {_machine(data)}; {data['config']['runs']} runs per variant after "
             f"{data['config']['warmup']} warm-up, round-robin; input {data['config']['input']}.", ""]
    for layer, result in data["layers"].items():
        if layers is not None and layer not in layers:
            continue
        lines += [f"**{layer}**{' (targets)' if layer == 'layer4' else ' (reported, not targeted)'}: "
                  f"median / p90 in ms", "",
                  "| model | forward | default pytorch-grad-cam | TorchCAM | attnviz explain | app handler | "
                  "explain / forward | default pgc / explain |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for variant, entry in result["per_model"].items():
            r = result["ratios"]["per_model"][variant]
            lines.append(f"| {TITLES[variant]} | {_ms(entry.get('forward'))} | {_ms(entry.get('pgc'))} | "
                         f"{_ms(entry.get('torchcam'))} | {_ms(entry.get('attnviz'))} | | "
                         f"{_x(r['explain_over_forward'])} | {_x(r['pgc_default_over_explain'])} |")
        entry, r = result["three"], result["ratios"]["three"]
        handler = _ms(entry.get("handler"))
        handler_ratio = f" (handler / forward {_x(r['handler_over_forward'])})" if entry.get("handler") else ""
        lines.append(f"| {TITLES['three']} | {_ms(entry.get('forward'))} | {_ms(entry.get('pgc'))} | "
                     f"{_ms(entry.get('torchcam'))} | {_ms(entry.get('attnviz'))} | {handler}{handler_ratio} | "
                     f"{_x(r['explain_over_forward'])} | {_x(r['pgc_default_over_explain'])} |")
        diffs = ", ".join(f"{TITLES[v]} {e['max_abs_diff']:.1e}" for v, e in
                          result["equivalence_with_pgc_default"].items())
        lines += ["", f"Max abs difference of attnviz's maps from default pytorch-grad-cam's: {diffs}.", ""]
    if data.get("targets_layer4"):
        lines += ["| target (layer4, ratios of medians) | measured | met |", "|---|---:|:-:|"]
        for name, t in data["targets_layer4"].items():
            value = "-" if t["value"] is None else (f"{t['value']:.1e}" if t["value"] < 0.01 else f"{t['value']:.3g}")
            met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
            lines.append(f"| {name} | {value} | {met} |")
        lines.append("")
    if layers is not None:
        lines += ["Layers 3 to 1 (reported, not targeted) are in `bench/results/REPORT.md`.", ""]
    return lines


def memory_section(data: dict) -> list[str]:
    lines = [f"Machine: {_machine(data)}; {data['config']['requests']} requests per mode, each mode in its own "
             f"process; RSS in MiB.", "",
             "| mode | after set-up | after 1st request | after last | peak | growth 1st -> last | ms / request |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, r in data["modes"].items():
        if "error" in r:
            lines.append(f"| {mode} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {mode} | {r['rss_after_setup_mb']:.0f} | {r['rss_after_first_mb']:.0f} | "
                     f"{r['rss_after_last_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['growth_first_to_last_mb']:+.1f} | "
                     f"{r['median_request_ms']:.0f} |")
    lines.append("")
    for name, t in data.get("targets", {}).items():
        lines.append(f"- {name}: {t['value']} ({'met' if t['met'] else '**missed**'})")
    return [*lines, ""]


def load_section(data: dict) -> list[str]:
    if "skipped" in data:
        return [f"Skipped: {data['skipped']}", ""]
    c = data["config"]
    lines = [f"Machine: {_machine(data)}; {c['clients']} clients x {c['requests_per_client']} requests through "
             f"gradio_client, loopback.", ""]
    if "error" in data:
        return [*lines, f"Failed: {data['error']}", ""]
    lines += ["| completed | errors | wall | throughput | p50 | p95 | max | server RSS before / after / peak |",
              "|---:|---:|---:|---:|---:|---:|---:|---|",
              f"| {data['completed']}/{data['expected']} | {data['errors']} | {data['wall_s']:.0f} s | "
              f"{data['throughput_rps']:.2f} req/s | {data['latency_p50_ms']:.0f} ms | "
              f"{data['latency_p95_ms']:.0f} ms | {data['latency_max_ms']:.0f} ms | "
              f"{data['server_rss_before_mb']:.0f} / {data['server_rss_after_mb']:.0f} / "
              f"{data['server_peak_rss_mb']:.0f} MiB |", ""]
    return lines


def load_compare_section(data: dict) -> list[str]:
    """The load test of the previous main's app.py and of this one, run one after the other."""
    before, after = data["load16_before.json"], data["load16.json"]
    c = after["config"]
    lines = [f"Machine: {_machine(after)}; {c['clients']} clients x {c['requests_per_client']} requests through "
             f"gradio_client, loopback, one app after the other; RSS growth: the server's RSS after the last "
             f"request minus when the first request of the load had been answered (target <= 50 MB).", "",
             "| app | completed | errors | throughput | p50 | p95 | server RSS growth | first request |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in (("previous main (`--app` of a worktree)", before), ("this main", after)):
        if "error" in e or "skipped" in e:
            lines.append(f"| {name} | failed: {e.get('error', e.get('skipped'))} | | | | | | |")
            continue
        lines.append(f"| {name} | {e['completed']}/{e['expected']} | {e['errors']} | "
                     f"{e['throughput_rps']:.2f} req/s | {e['latency_p50_ms']:.0f} ms | {e['latency_p95_ms']:.0f} ms | "
                     f"{e['server_rss_growth_mb']:+.0f} MiB | "
                     f"{e['first_request_s']:.2f} s |")
    if "error" not in before and "error" not in after:
        lines += ["", f"Throughput {after['throughput_rps'] / before['throughput_rps']:.2f}x, p95 "
                  f"{after['latency_p95_ms'] / before['latency_p95_ms']:.2f}x the previous main's."]
    return [*lines, ""]


def bf16_section(data: dict) -> list[str]:
    c = data["config"]
    lines = [f"Machine: {_machine(data)}; set {c['set']}, layer {c['layer']}, {len(c['images'])} images "
             f"(maps compared), timing on the first, {c['runs']} runs each.", "",
             "| model | max abs diff of maps | mean abs diff | IoU of top-20 % regions (min / mean) | "
             "same top-1 | max probability diff | fp32 ms | bf16 ms | bf16 / fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, e in data["models"].items():
        t = e["timing"]
        lines.append(f"| {TITLES[variant]} | {e['max_abs_diff']:.3f} | {e['mean_abs_diff']:.4f} | "
                     f"{e['top20_iou_min']:.2f} / {e['top20_iou_mean']:.2f} | {e['top1_agreement']:.0%} | "
                     f"{e['max_probability_diff']:.3f} | {t['fp32']['median_ms']:.0f} | {t['bf16']['median_ms']:.0f} | "
                     f"{_x(t['bf16_over_fp32'])} |")
    return [*lines, ""]


def offline_import_section(data: dict) -> list[str]:
    b = data["baseline_s"]
    lines = [f"Machine: {_machine(data)}; {data['config']['runs']} runs each, round-robin with the baseline "
             f"`{data['config']['baseline']}` (median {b['median']:.2f} s).", "",
             "| source | median s | min / max s | over the baseline (median of the rounds' differences) |",
             "|---|---:|---:|---:|"]
    for source, e in data["sources"].items():
        lines.append(f"| {source} | {e['median_s']:.2f} | {e['min_s']:.2f} / {e['max_s']:.2f} | "
                     f"{e['median_over_baseline_s']:+.2f} s |")
    return [*lines, ""]


def domain_cost_section(data: dict) -> list[str]:
    c = data["config"]
    lines = [f"Machine: {_machine(data)}; set {c['set']}, image {c['image']}, {c['runs']} runs, round-robin.", "",
             "| model | scorer | explain median ms | scoring step median ms | scoring / explain |",
             "|---|---|---:|---:|---:|"]
    for variant, e in data["models"].items():
        lines.append(f"| {TITLES.get(variant, variant)} | {e['scorer']} | {e['explain_median_ms']:.1f} | "
                     f"{e['score_median_ms']:.3f} | {e['score_over_explain']:.2%} |")
    return [*lines, ""]


def batch_section(data: dict) -> list[str]:
    lines = [f"Machine: {_machine(data)}; set {data['set']} ({', '.join(data['models'])}), {data['images']} images, "
             f"{data['rounds']} rounds, {data['threads']} torch threads; Grad-CAM at layer4, top-5, every attention "
             f"record.", "",
             "| mode | seconds (median) | images / s | against batch size 1 |", "|---|---:|---:|---:|"]
    for mode, e in data["summary"].items():
        name = mode.replace("attnviz_batch_", "attnviz, batch size ").replace("pgc_gradcam_batch_",
                                                                          "pytorch-grad-cam GradCAM, batch size ")
        lines.append(f"| {name} | {e['seconds_median']:.2f} | {e['images_per_s']:.1f} | "
                     f"{e['speedup_over_batch_1']:.2f}x |")
    return [*lines, ""]


def scorecam_section(data: dict) -> list[str]:
    s = data["summary"]
    lines = [f"Machine: {_machine(data)}; {TITLES.get(data['variant'], data['variant'])} of set {data['set']}, "
             f"image {data['image']}, {data['batch']} masked copies per pass, {data['rounds']} round(s); peak RSS "
             f"(VmHWM) of a process of its own, against one that only loads the model and runs one forward pass "
             f"({data['forward_peak_rss_mb_median']:.0f} MB).", "",
             "| Score-CAM | seconds | peak RSS MB | over the forward-only process MB |", "|---|---:|---:|---:|"]
    for mode, name in (("pgc", "pytorch-grad-cam ScoreCAM"), ("attnviz", "attnviz's bounded loop")):
        e = s[mode]
        lines.append(f"| {name} | {e['seconds_median']:.1f} | {e['peak_rss_mb_median']:.0f} | "
                     f"{e['peak_over_forward_mb']:.0f} |")
    lines += ["", f"attnviz / pytorch-grad-cam time: {s['attnviz_over_pgc_time']:.2f}x; largest difference of "
              f"the maps: {s['attnviz']['max_difference_from_pgc']:.1e}.", ""]
    return lines


def startup_section(data: dict) -> list[str]:
    s = data["summary"]
    lines = [f"Machine: {_machine(data)}; {len(data['rounds'])} rounds (medians); each round a fresh "
             f"Python that only imports torch, torchvision and gradio, then a fresh app.py, polled every 50 ms "
             f"until `/` answers 200, then the first `/explain` call through gradio_client at once and "
             f"{len(data['rounds'][0]['later_requests_s'])} later ones.", "",
             "| measure | seconds |", "|---|---:|",
             f"| import torch, torchvision, gradio (the floor) | {s['imports_s']:.2f} |",
             f"| app.py started until the page is served | {s['served_s']:.2f} |",
             f"| served minus the imports (target <= 2 s) | {s['served_over_imports_s']:.2f} |",
             f"| first request | {s['first_request_s']:.2f} |",
             f"| a later request | {s['later_request_s']:.2f} |",
             f"| first / later (target <= 1.5x) | {s['first_over_later']:.2f}x |"]
    return [*lines, ""]


def png_section(data: dict) -> list[str]:
    lines = [f"Machine: {_machine(data)}; the {data['pictures_per_request']} pictures the page writes for each of "
             f"{', '.join(data['scenes'])} (set {data['set']}), {data['rounds']} rounds, the writers alternating; "
             f"medians. Both files decode to the drawn pixels.", "",
             "| picture | Pillow, level 1: ms | KB | attnviz: ms | KB | time | size |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for kind, e in data["kinds"].items():
        before, ours = e["pillow_level1"], e["attnviz"]
        lines.append(f"| {kind} | {before['ms_median']:.1f} | {before['kb_median']:.0f} | {ours['ms_median']:.1f} | "
                     f"{ours['kb_median']:.0f} | {e['time_ratio']:.2f}x | {e['size_ratio']:.2f}x |")
    before, ours = data["per_request"]["pillow_level1"], data["per_request"]["attnviz"]
    lines.append(f"| one page request | {before['ms']:.0f} | {before['kb']:.0f} | {ours['ms']:.0f} | "
                 f"{ours['kb']:.0f} | {ours['ms'] / before['ms']:.2f}x | {ours['kb'] / before['kb']:.2f}x |")
    return [*lines, ""]


def sets_section(data: dict) -> list[str]:
    lines = [f"Machine: {_machine(data)}; three random-weight sets at 224 px: the built-in set's four models "
             f"(12 classes) and two ImageNet-shaped sets (ResNet50, +SE, +CBAM, 1000 classes); one request per "
             f"step, {data['rounds']} rounds; each mode in a process of its own. RSS after the phase's last "
             f"request, the largest after any of its requests, and the process's peak (VmHWM).", "",
             "| mode | both in use: RSS last / max MB | sets loaded | past the budget: RSS last / max MB | "
             "sets loaded | peak RSS MB |", "|---|---:|---:|---:|---:|---:|"]
    for mode, s in data["summary"].items():
        two, three = s["both in use"], s["past the budget"]
        name = f"budget {s['budget_mb']:.0f} MiB" if mode == "budget" else "every set kept (before)"
        lines.append(f"| {name} | {two['rss_last_mb']:.0f} / {two['rss_max_mb']:.0f} | {two['loads']} | "
                     f"{three['rss_last_mb']:.0f} / {three['rss_max_mb']:.0f} | {three['loads']} | "
                     f"{s['peak_rss_mb']:.0f} |")
    steps = data["modes"]["budget"]["phases"]["past the budget"]["steps"]
    loaded = [s["seconds"] for s in steps if s["loaded"]]
    kept = [s["seconds"] for s in steps if not s["loaded"]]
    if loaded and kept:
        lines += ["", f"Past the budget a request that loads its set takes {min(loaded):.2f}-{max(loaded):.2f} s, "
                  f"one whose set is kept {min(kept):.2f}-{max(kept):.2f} s."]
    return [*lines, ""]


SECTIONS = (
    ("Time per request", "explain.json", "python bench/bench_explain.py --random --runs 21", explain_section),
    ("Memory of a serving process", "memory.json", "python bench/bench_memory.py --random --requests 50",
     memory_section),
    ("The running app under load", "load.json", "python bench/load_test.py --random --clients 8 --requests 25",
     load_section),
    ("bf16 against fp32", "bf16.json", "python bench/bench_bf16.py --set builtin --runs 21", bf16_section),
    ("An import without internet", "offline_import.json", "python bench/bench_offline_import.py --runs 7",
     offline_import_section),
    ("The out-of-domain score's cost", "domain_cost.json", "python bench/bench_domain.py --set builtin --runs 21",
     domain_cost_section),
    ("Batches", "batch.json", "python bench/bench_batch.py --images 16 --batch-sizes 1 4 8 16 --rounds 3",
     batch_section),
    ("Score-CAM in bounded memory", "scorecam.json", "python bench/bench_scorecam.py --rounds 1", scorecam_section),
    ("The page's PNG files", "png.json", "python bench/bench_png.py --random", png_section),
    ("Switching model sets", "sets.json", "python bench/bench_sets.py --rounds 3", sets_section),
    ("Start-up", "startup.json", "python bench/bench_startup.py --rounds 3", startup_section),
    ("Start-up of the previous main", "startup_before.json",
     "git worktree add /tmp/before 4628969 && python bench/bench_startup.py --rounds 3 --repo /tmp/before "
     "--json bench/results/startup_before.json", startup_section),
    ("Under load: 16 clients, the previous main against this one", "load16_before.json + load16.json",
     "python bench/load_test.py --random --clients 16 --requests 25 --app /tmp/before/app.py --json "
     "bench/results/load16_before.json; python bench/load_test.py --random --clients 16 --requests 25 --json "
     "bench/results/load16.json", load_compare_section),
)


def report(folder: Path) -> str:
    lines: list[str] = []
    for title, name, command, section in SECTIONS:
        lines += [f"### {title}", "", f"`{command}` (writes `bench/results/{name}`)", ""]
        data = _load(folder, name)
        lines += section(data) if data is not None else [f"Not measured yet: `bench/results/{name}` is missing.", ""]
    return "\n".join(lines)


# The README shows layer4 of "Time per request" under this heading, and after README_MARKER these sections, in
# this order; the rest of its performance section is prose.
README_EXPLAIN = "### Time per request, layer4"
README_MARKER = "<!-- performance sections from bench/report.py -->"
README_COMPARES = ("compare.json", "compare_architecture.json")  # the before/after tables in the prose above
README_SECTIONS = ("Batches", "Score-CAM in bounded memory", "The page's PNG files", "Switching model sets", "Start-up",
                   "Start-up of the previous main", "Under load: 16 clients, the previous main against this one")


def readme_command(command: str, name: str) -> list[str]:
    """A section's command as the README writes it: run from the quick start's virtual environment; one that
    needs a worktree of the previous main, which the README's commands do not make, is marked as not run."""
    command = command.replace("python bench/", ".venv/bin/python bench/")
    if "/tmp/before" not in command:
        return [f"`{command}` (writes `bench/results/{name}`)", ""]
    why = ("a worktree of the previous main at /tmp/before" if "worktree add" in command
           else "the worktree of the previous main at /tmp/before (see above)")
    steps = [step.strip() for part in command.split(" && ") for step in part.split("; ")]
    return [f"<!-- not run: needs {why} -->", "```bash", *steps, "```", ""]


def compare_table(data: dict) -> list[str]:
    """A before/after table of bench/compare.py's result (medians in ms, old -> new, and their ratio)."""
    lines = ["| model | forward | explain | handler |", "|---|---|---|---|"]
    for variant, row in data["ratios"].items():
        cells = [f"{row[t]['old_median_ms']:.0f} → {row[t]['new_median_ms']:.0f} ({row[t]['new_over_old']:.3f}x)"
                 for t in ("forward", "explain", "handler")]
        lines.append(f"| {TITLES.get(variant, variant)} | " + " | ".join(cells) + " |")
    return lines


def _with_compare_tables(readme: str, folder: Path) -> str:
    """Each before/after table under a bench/compare.py command, rewritten from the JSON the command names."""
    for name in README_COMPARES:
        data = _load(folder, name)
        at = readme.find(f"bench/results/{name}`")
        if data is None or at < 0:
            continue
        start = readme.index("\n| model |", at) + 1
        end = start
        while readme.startswith("|", end):
            end = readme.index("\n", end) + 1
        readme = readme[:start] + "\n".join(compare_table(data)) + "\n" + readme[end:]
    return readme


def readme_text(readme: str, folder: Path) -> str:
    """The README with its benchmark tables rewritten from the results."""
    readme = _with_compare_tables(readme, folder)
    by_title = {title: (name, command, section) for title, name, command, section in SECTIONS}
    name, command, _ = by_title["Time per request"]
    data = _load(folder, name)
    start = readme.index(README_EXPLAIN)
    end = readme.index("\n### ", start + 1)
    body = ([README_EXPLAIN, "", *readme_command(command, name), *explain_section(data, ("layer4",))]
            if data is not None else [README_EXPLAIN, "", f"Not measured yet: `bench/results/{name}` is missing.", ""])
    readme = readme[:start] + "\n".join(body).rstrip("\n") + "\n" + readme[end:]
    lines = [README_MARKER, ""]
    for title in README_SECTIONS:
        name, command, section = by_title[title]
        data = _load(folder, name)
        lines += [f"### {title}", "", *readme_command(command, name)]
        lines += section(data) if data is not None else [f"Not measured yet: `bench/results/{name}` is missing.", ""]
    start = readme.index(README_MARKER)
    end = readme.index("\n## ", start)
    return readme[:start] + "\n".join(lines).rstrip("\n") + "\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--readme", type=Path, help="rewrite this README's benchmark tables from the results")
    args = parser.parse_args(argv)
    text = report(args.results)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.readme:
        args.readme.write_text(readme_text(args.readme.read_text(), args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
