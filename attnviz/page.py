"""The page's parts shared by its tabs: settings of the server, texts in every language, the per-request result
(``Analysis``, with its own folder for files) and small component builders. ``attnviz.ui`` puts them together.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import cv2  # noqa: E402
import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

from attnviz.attention import RECORD_KINDS, family  # noqa: E402
from attnviz.catalogue import Catalogue, catalogue  # noqa: E402
from attnviz.errors import AttnvizError  # noqa: E402
from attnviz.get_imagenet import DOWNLOAD_MB  # noqa: E402
from attnviz.images import MAX_FILE_BYTES  # noqa: E402
from attnviz.models import RESNET50_LAYERS, TARGET_LAYERS  # noqa: E402
from attnviz.render import Rendered  # noqa: E402
from attnviz.results import Explanation  # noqa: E402
from attnviz.settings import COLORMAP, LAYER, METHOD, OPACITY, TIME_LIMIT_S, TOP_K  # noqa: E402
from attnviz.texts import LANGUAGES, fill, locale  # noqa: E402

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"  # package data (examples/ at the top: a link)
# The page's defaults are the library's (attnviz.settings); the target dropdown's OWN_TOP1 means each model's own
# top-1.
DEFAULT_METHOD, DEFAULT_LAYER, DEFAULT_OPACITY, DEFAULT_COLORMAP = METHOD, LAYER, OPACITY, COLORMAP
DELETE_CACHE = (600, 1800)  # every 10 minutes, delete uploads and results older than 30 minutes
MAX_FILE_SIZE = f"{MAX_FILE_BYTES // 2**20}mb"
QUEUE_SIZE = 16
CONCURRENCY = 2  # requests at once; each model's lock still lets only one request use its hooks
RESULTS_DIR = Path(tempfile.gettempdir()) / "attnviz-results"
_PNG_WRITERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="attnviz-png")
PNG_LEVEL = 1  # zlib level of the page's PNGs: about a quarter of level 6's time, files about 10-20 % larger
PNG_PHOTO = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
PNG_CHART = [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL]
PHOTO_LIKE = ("view", "overlay", "spatial_maps", "difference_maps", "knockout_difference")  # picture names' ends
IMPORT_COMMANDS = "python -m attnviz.weights import imagenet"  # the three published models in one step
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "Noto Sans", "Helvetica Neue", "Arial",
                "PingFang SC", "Microsoft YaHei", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
.attnviz-credit { font-size: 0.8em; opacity: 0.75; }
.attnviz-model-title h3 { margin: 0; }
.attnviz-note { font-size: 0.9em; }
.attnviz-caption { font-weight: 600; }
.attnviz-overlay img { width: 100%; height: 100%; object-fit: contain; }
.attnviz-figure img { max-width: 100%; height: auto; object-fit: contain; }
#status { font-size: 1.05em; }
.attnviz-notice { border-left: 4px solid #d97706; background: rgba(217, 119, 6, 0.08); padding: 0.4em 0.8em; }
"""

_MINUTES = DELETE_CACHE[1] // 60

# Every text of the page is in the locale files (attnviz/locales, one per language, shared with the CLI's report);
# a few name a setting of this module, filled in here.
_SETTINGS_IN_TEXTS = {"time_limit_s": TIME_LIMIT_S, "import_commands": IMPORT_COMMANDS, "minutes": _MINUTES,
                      "download_mb": DOWNLOAD_MB}
TRANSLATIONS: dict[str, dict[str, str]] = {
    lang: {key: fill(value, _SETTINGS_IN_TEXTS) for key, value in locale(lang).items()} for lang in LANGUAGES
}
TRANSLATIONS["zh"] = TRANSLATIONS["zh-CN"]  # browsers that send plain "zh"
# Keys are prefixed in the page: gradio's own translations have nested groups ("image", "file", ...) and a key
# equal to one of their names would show as "[object Object]".
KEY_PREFIX = "attnviz_"
I18N = gr.I18n(**{lang: {KEY_PREFIX + k: v for k, v in texts.items()} for lang, texts in TRANSLATIONS.items()})

def tr(key: str) -> gr.i18n.I18nData:
    """A translated text for a component's label, info or value."""
    return I18N(KEY_PREFIX + key)


def t(key: str) -> str:
    """A translated text inside a longer string (at most one per string): the page replaces the marker."""
    return str(tr(key))


def domain_notice(explanation: Explanation) -> str:
    """The notice above the result columns when a shown model finds the image far from its training scenes (one
    line per such model: its score and threshold); empty when the image is in domain or no model is calibrated."""
    if not explanation.out_of_domain:
        return ""
    lines = [f"- {family(v).title}: **{r.domain_score:.3g}** > {r.domain_threshold:.3g}"
             for v, r in explanation.results.items() if r.out_of_domain]
    return t("ood_notice") + "\n\n" + "\n".join(lines)


def error_text(exc: AttnvizError) -> str:
    """A translated one-line headline, found by the error's code, followed by the library's own message."""
    return f"{t('err_' + getattr(exc, 'code', 'generic'))} {exc}"


def _uploaded_file(payload):
    """The upload as it arrived: its path (or the bytes of a data URL), for ``load_image`` to validate."""
    if payload is None:
        return None
    if payload.url and payload.url.startswith("data:"):
        return base64.b64decode(payload.url.split(",", 1)[1])
    return payload.path


def uploaded_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` input that hands the handler the uploaded file untouched.

    ``gr.Image`` itself opens every upload with Pillow before the handler runs, so a zero-byte file, a non-image
    or a decompression bomb would fail there with a bare "Error" instead of attnviz's one-line message. The
    override is set on the instance: a subclass of a gradio component makes gradio write a .pyi stub next to
    this module.
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    image.preprocess = _uploaded_file
    return image


@dataclass
class Analysis:
    """One request's results: the data, its pictures and, once asked for, the zip of both."""

    explanation: Explanation
    rendered: Rendered
    archive: Path | None = None
    folder: Path | None = None  # this request's own folder for its files, made on first use
    request: tuple | None = None  # what the models ran on (request_key): the same again shows this result
    drawing: tuple | None = None  # (opacity, colormap, excitation block): a change redraws without the models
    excitation: dict = field(default_factory=dict)  # variant -> the live excitation figure (None: no profile)
    sanity: object | None = None  # the sanity check of this image (attnviz.sanity.ImageSanity), when asked for
    writing: dict = field(default_factory=dict)  # picture name -> the Future of its file being written

    def directory(self) -> Path:
        if self.folder is None:
            _prune_results(DELETE_CACHE[1])
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="request-", dir=RESULTS_DIR))
        return self.folder

    def image_file(self, name: str, image: np.ndarray | None) -> str | None:
        """A picture as a PNG file of this request's own, for an image output.

        Handing gradio arrays would let it write each picture to a path named by the hash of its bytes, in
        place: two requests with the same result (a class clicking the same example) would rewrite the file
        while another client downloads it, and that download breaks off. gradio copies a file output into its
        cache under a temporary name and renames it into place, which is safe.
        """
        if image is None:
            return None
        path = self.directory() / f"{name}.png"
        writing = self.writing.pop(name, None)
        if writing is not None:
            writing.result()
        elif not path.exists():
            write_png(path, image)
        return str(path)

    def write_soon(self, name: str, image: np.ndarray | None) -> None:
        """Start writing a picture's file in the background (``image_file`` waits for it); no model runs while
        a request's pictures are written, and the encoder lets go of the GIL."""
        if image is not None and name not in self.writing:
            path = self.directory() / f"{name}.png"
            if not path.exists():
                self.writing[name] = _PNG_WRITERS.submit(write_png, path, image)

    def write_images(self, images: dict[str, np.ndarray | None]) -> None:
        """Write the files of these pictures (name -> picture) two at a time, and wait for every file started
        earlier (``write_soon``), so that a finished request holds no background work."""
        for name, image in images.items():
            self.write_soon(name, image)
        while self.writing:
            self.writing.popitem()[1].result()


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB picture as a PNG file: libpng through OpenCV at zlib level 1. Pictures of photographs and heatmaps
    (by their name: ``PHOTO_LIKE``) use zlib's run-length matching: 16-37 % faster than Pillow at level 1 and
    7-12 % smaller; charts keep the default matching, which finds their long repeats (bench/bench_png.py)."""
    params = PNG_PHOTO if path.stem.endswith(PHOTO_LIKE) else PNG_CHART
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), params):
        raise OSError(f"could not write {path}")


def api_picture(name: str) -> bool:
    """The pictures (``Rendered.images`` names, without ".png") the API returns as files: the view and the
    overlays."""
    return name == "view" or name.endswith("_overlay")


def page_picture(name: str) -> bool:
    """The pictures the page shows as files: all but the view (the upload field shows the image itself)."""
    return name != "view"


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give the memory a finished request freed back to the system. glibc keeps freed blocks in the arena of the
    thread that used them; with requests on several worker threads the server's RSS then creeps up to the sum
    of their peaks (bench/load_test.py). ``malloc_trim`` returns them (about 1.4 ms here); a no-op elsewhere."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _prune_results(max_age: float) -> None:
    """Delete this app's result folders older than ``max_age`` seconds (gradio serves its own copies)."""
    if not RESULTS_DIR.exists():
        return
    cutoff = time.time() - max_age
    for folder in RESULTS_DIR.iterdir():
        try:
            if folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:
            pass


def installed_sets(weights_dir: str | Path | None = None) -> tuple[Catalogue, list[str]]:
    """The model sets of the weights folder and of the writable one the app downloads into, and their names; a
    clear AttnvizError when no model set is installed."""
    manifest = catalogue(weights_dir)
    names = manifest.set_names()
    if not names:
        raise AttnvizError(
            f"no model set is installed in {manifest.weights_dir}: train the built-in set (python -m attnviz.train "
            f"--variant V for resnet50, se and cbam, then --register) or import one (python -m attnviz.weights "
            f"import torchvision-resnet50 --set imagenet), or point --weights-dir / ATTNVIZ_WEIGHTS at a weights "
            f"folder")
    return manifest, names


def request_key(image, *settings) -> tuple | None:
    """What a page request runs the models on: the image (a file by path, size and modification time, data by
    its hash) and the settings; None for an image it cannot tell apart, which then always runs."""
    if isinstance(image, (str, Path)):
        try:
            stat = os.stat(image)
        except OSError:
            return None
        picture: tuple = ("file", str(image), stat.st_size, stat.st_mtime_ns)
    elif isinstance(image, bytes):
        picture = ("bytes", hashlib.sha256(image).hexdigest())
    elif isinstance(image, np.ndarray):
        picture = ("array", image.shape, str(image.dtype), hashlib.sha256(np.ascontiguousarray(image)).hexdigest())
    else:
        return None
    return (picture, *(tuple(s) if isinstance(s, list) else s for s in settings))


def family_kinds(variant: str) -> list:
    """The record kinds a family's gates produce, in the order the kinds are declared: one figure each."""
    present = family(variant).kinds()
    return [kind for kind in RECORD_KINDS.values() if kind.key in present]


def model_choices(variants: list[str]) -> list[tuple[str, str]]:
    return [(family(v).title, v) for v in variants]


def page_layers() -> list[str]:
    """The target layers the page offers: the stages, then every block (the library takes any module too)."""
    return [*TARGET_LAYERS, *(f"{stage}.{i}" for stage, blocks in zip(TARGET_LAYERS, RESNET50_LAYERS, strict=True)
                              for i in range(blocks))]


def top_label(elem_id: str) -> gr.Label:
    return gr.Label(num_top_classes=TOP_K, show_label=False, show_heading=False, elem_id=elem_id)


def figure(elem_id: str) -> gr.Image:
    """An output for a figure; its caption goes above as Markdown (a floating label would cover its title)."""
    return gr.Image(show_label=False, format="png", interactive=False, elem_id=elem_id,
                    elem_classes=["attnviz-figure"], buttons=["download", "fullscreen"])



def theme() -> gr.themes.Base:
    """The default theme on the system's own fonts, so that the page fetches no web font."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
