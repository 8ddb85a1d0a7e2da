"""The page's PNG files: attnviz's writer (OpenCV's libpng, zlib level 1, run-length strategy) against Pillow at
zlib level 1 (the writer before it), on the pictures of real page requests, in one run.

    python bench/bench_png.py [--set NAME] [--weights-dir DIR] [--random] [--rounds 15]
                              [--json bench/results/png.json]

The pictures are those the page writes for each example scene (every overlay, channel-weight strip, spatial
grid, difference maps and agreement figure of the set's models, drawn by ``AttnvizApp.analyse``). Each round
encodes every picture with both writers, alternating which goes first; per picture kind the median time and
the file size are reported, and the totals of one request. Both files decode to the same pixels (checked).
Not to be run while training.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_explain import RESULTS, machine_info, prepare_weights  # noqa: E402


def pillow_png(path: Path, image) -> None:
    """The previous writer: Pillow at zlib level 1."""
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def kind_of(name: str) -> str:
    """A picture's kind: its name without the scene and the model ("scene_00_cat/cbam_spatial_maps" ->
    "spatial_maps")."""
    name = name.split("/")[-1]
    for kind in ("knockout_overlay", "overlay", "channel_weights", "spatial_maps"):
        if name.endswith(kind):
            return kind
    return name


def measure(pictures: dict, rounds: int, folder: Path, requests: int) -> dict:
    """Times and sizes per picture kind, and per request (the pictures come from ``requests`` requests)."""
    import numpy as np
    from PIL import Image

    from attnviz.page import write_png

    writers = {"pillow_level1": pillow_png, "attnviz": write_png}
    times: dict[str, dict[str, list[float]]] = {w: {name: [] for name in pictures} for w in writers}
    sizes: dict[str, dict[str, int]] = {w: {} for w in writers}
    for round_ in range(rounds):
        order = list(writers) if round_ % 2 == 0 else list(reversed(writers))
        for name, image in pictures.items():
            for writer in order:
                path = folder / writer / f"{name}.png"
                started = time.perf_counter()
                writers[writer](path, image)
                times[writer][name].append(time.perf_counter() - started)
                sizes[writer][name] = path.stat().st_size
    for name, image in pictures.items():  # both files hold the picture exactly
        for writer in writers:
            decoded = np.asarray(Image.open(io.BytesIO((folder / writer / f"{name}.png").read_bytes())).convert("RGB"))
            assert np.array_equal(decoded, image), (writer, name)
    kinds: dict[str, dict] = {}
    for name in pictures:
        entry = kinds.setdefault(kind_of(name), {w: {"ms": [], "bytes": []} for w in writers})
        for writer in writers:
            entry[writer]["ms"].append(1000 * statistics.median(times[writer][name]))
            entry[writer]["bytes"].append(sizes[writer][name])
    summary = {}
    for kind, entry in kinds.items():
        summary[kind] = {w: {"ms_median": statistics.median(entry[w]["ms"]),
                             "kb_median": statistics.median(entry[w]["bytes"]) / 1024} for w in writers}
        ours, before = summary[kind]["attnviz"], summary[kind]["pillow_level1"]
        summary[kind]["time_ratio"] = ours["ms_median"] / before["ms_median"]
        summary[kind]["size_ratio"] = ours["kb_median"] / before["kb_median"]
    return {"kinds": summary, "per_request": {
        w: {"ms": sum(1000 * statistics.median(times[w][n]) for n in pictures) / requests,
            "kb": sum(sizes[w].values()) / 1024 / requests} for w in writers}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="set_name", help="model set (default: random-weight models)")
    parser.add_argument("--weights-dir", help="weights folder of --set")
    parser.add_argument("--random", action="store_true", help="random-weight models even if a set exists")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=RESULTS / "png.json")
    args = parser.parse_args(argv)

    set_name, weights_dir, set_note = prepare_weights(args.set_name, args.weights_dir, args.random)
    from attnviz.page import EXAMPLES_DIR, page_picture
    from attnviz.ui import AttnvizApp

    app = AttnvizApp(weights_dir=weights_dir, default_set=set_name)
    pictures = {}
    scenes = sorted(EXAMPLES_DIR.glob("scene_*.png"))[:3]
    for scene in scenes:
        drawn = app.analyse(str(scene)).rendered.images()
        pictures.update({f"{scene.stem}/{name[:-4]}": image for name, image in drawn.items()
                         if page_picture(name[:-4]) and "top_k" not in name})
    with tempfile.TemporaryDirectory() as folder:
        for scene in scenes:
            for writer in ("pillow_level1", "attnviz"):
                (Path(folder) / writer / scene.stem).mkdir(parents=True)
        result = measure(pictures, args.rounds, Path(folder), len(scenes))
    out = {"benchmark": "bench/bench_png.py", "machine": machine_info(), "set": set_name, "set_note": set_note,
           "scenes": [s.name for s in scenes], "pictures_per_request": len(pictures) // len(scenes),
           "rounds": args.rounds,
           **result}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    for kind, entry in result["kinds"].items():
        before = entry["pillow_level1"]
        print(f"{kind:18} pillow {before['ms_median']:6.2f} ms {before['kb_median']:7.1f} KB"
              f"   attnviz {entry['attnviz']['ms_median']:6.2f} ms {entry['attnviz']['kb_median']:7.1f} KB"
              f"   time {entry['time_ratio']:.2f}x size {entry['size_ratio']:.2f}x")
    r = result["per_request"]
    print(f"one request: pillow {r['pillow_level1']['ms']:.1f} ms {r['pillow_level1']['kb']:.0f} KB, "
          f"attnviz {r['attnviz']['ms']:.1f} ms {r['attnviz']['kb']:.0f} KB -> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
