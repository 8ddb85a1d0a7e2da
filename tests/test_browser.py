"""The app in a real headless Chromium (Debian's package, driven by Playwright for Python)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from servers import REPO, running_app, serving

from attnviz.get_imagenet import IMAGENET_VARIANTS
from attnviz.importers import imagenet_classes
from attnviz.models import VARIANTS

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
TINY_CLASSES = re.compile("circle|square|triangle|star")
TIMEOUT_MS = 300_000  # a ceiling for each wait; the machine may be busy training

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
]


@pytest.fixture(scope="module")
def app_url(tiny_weights_dir) -> Iterator[str]:
    with running_app(tiny_weights_dir) as url:
        yield url


@pytest.fixture(scope="module", autouse=True)
def patient_assertions():
    """Assertions wait up to TIMEOUT_MS for their condition (Playwright's default is 5 s)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def example_image(tmp_path) -> Path:
    """An example scene from examples/, or the same scene written on the spot when examples/ was not generated."""
    shipped = Path(__file__).resolve().parent.parent / "examples" / "scene_00_cat.png"
    if shipped.exists():
        return shipped
    from attnviz.scenes import export_examples

    return export_examples(tmp_path, singles=1, pairs=0)[0]


def open_page(browser, url: str, locale: str = "en-US", width: int = 1500):
    context = browser.new_context(viewport={"width": width, "height": 1100}, locale=locale)
    page = context.new_page()
    outside: list[str] = []
    host = urlparse(url).netloc
    page.on("request", lambda request: outside.append(request.url)
            if urlparse(request.url).scheme in ("http", "https", "ws", "wss") and urlparse(request.url).netloc != host
            else None)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#image-input input[type=file]").wait_for(state="attached")  # the app has rendered
    return page, outside


def fill_field(page, element_id: str, value: str) -> None:
    """Type into a text field and make sure the page kept it.

    A field inside an accordion that has just opened can be mounted again after the first fill (seen once
    in CI: the request went out with the field empty), so the value is checked after a pause and typed
    again if it was lost."""
    from playwright.sync_api import expect

    field = page.locator(f"#{element_id}").locator("textarea, input").first
    for _ in range(5):
        field.fill(value)
        field.press("Tab")  # blur: the page commits the value
        page.wait_for_timeout(300)
        if field.input_value() == value:
            break
    expect(field).to_have_value(value)


def upload(page, path: Path) -> None:
    page.locator("#image-input input[type=file]").set_input_files(str(path))


def test_uploaded_example_shows_three_overlays_and_top5(browser, app_url, example_image, artifacts_dir):
    from playwright.sync_api import expect

    page, outside = open_page(browser, app_url)
    upload(page, example_image)
    for variant in VARIANTS:
        expect(page.locator(f"#overlay-{variant} img")).to_be_visible()
        expect(page.locator(f"#top-{variant}")).to_contain_text(TINY_CLASSES)
    for figure in ("spatial-cbam", "channel-eca", "agreement"):  # scrolled to, as a reader would (lazy images)
        page.locator(f"#{figure}").scroll_into_view_if_needed()
        expect(page.locator(f"#{figure} img")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#domain-notice")).to_be_hidden()  # a set without statistics: no notice
    expect(page.locator("body")).not_to_contain_text("[object Object]")  # every translated label resolved
    page.screenshot(path=str(artifacts_dir / "app.png"), full_page=True)
    expect(page.locator("#download")).not_to_contain_text(".zip")  # written only when asked for
    page.locator("#zip-button").click()
    expect(page.locator("#download")).to_contain_text(re.compile(r"attnviz_tiny_gradcam\s*\.zip"))
    assert outside == []
    page.context.close()


def test_bad_upload_shows_a_message_and_the_next_upload_works(browser, app_url, example_image, tmp_path):
    from playwright.sync_api import expect

    page, _ = open_page(browser, app_url)
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not pixels")
    upload(page, bad)
    expect(page.locator("#status")).to_contain_text("not an image file")
    upload(page, example_image)
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#overlay-cbam img")).to_be_visible()
    page.context.close()


def test_page_speaks_simplified_chinese_to_a_chinese_browser(browser, app_url):
    from playwright.sync_api import expect

    page, _ = open_page(browser, app_url, locale="zh-CN")
    expect(page.locator("#explain-button")).to_have_text("解释")
    expect(page.get_by_text("本模型组的类别")).to_be_visible()
    page.context.close()


def test_analysis_tab_says_a_set_of_other_classes_cannot_be_measured_and_what_it_would_need(browser, app_url):
    """The tiny set's classes (shapes) are not the scenes': the tab says so, and offers only the command that
    measures the set on the user's own images with masks, never the scene analysis that would refuse it (the
    command for a scene set without analysis: tests/test_analyze.py)."""
    import re

    from playwright.sync_api import expect

    page, _ = open_page(browser, app_url)
    page.get_by_role("tab", name="Analysis").click()
    status = page.locator("#analysis-status")
    expect(status).to_contain_text("other classes than the generated scenes")
    expect(status).to_contain_text("a mask of the object")
    expect(status).to_contain_text("--images DIR --masks DIR --out")
    commands = re.findall(r"python -m attnviz\.analyze[^\n]*", status.inner_text())
    assert len(commands) == 1 and "--images DIR --masks DIR" in commands[0], commands
    page.context.close()


@pytest.fixture(scope="module")
def two_set_url(tmp_path_factory) -> Iterator[str]:
    """An app with two sets: "tiny" (the default, shapes: no analysis can measure it) and "scenes" with a quick
    analysis written."""
    from conftest import make_model_set

    from attnviz.analysis import cli as analysis_cli
    from attnviz.analysis import config as analysis_config
    from attnviz.scenes import CLASSES

    weights = make_model_set(tmp_path_factory.mktemp("two-sets"), "tiny")
    make_model_set(weights, "scenes", classes=CLASSES, crop=32, variants=("resnet50", "se"), make_default=False)
    # named: a quick run alone would not write what the app shows
    out = weights / "scenes" / analysis_config.ANALYSIS_DIR
    assert analysis_cli.main(["--set", "scenes", "--weights-dir", str(weights), "--quick", "--quiet",
                              "--sanity-scenes", "0", "--out", str(out)]) == 0  # the tab's status is what counts
    with running_app(weights) as url:
        yield url


def test_analysis_tab_follows_the_chosen_model_set(browser, two_set_url):
    from playwright.sync_api import expect

    page, _ = open_page(browser, two_set_url)
    page.get_by_role("tab", name="Analysis").click()
    expect(page.locator("#analysis-status")).to_contain_text("other classes than the generated scenes")
    page.get_by_role("tab", name="Explain an image").click()
    page.get_by_label("Model set").click()
    page.get_by_role("option", name="scenes").click()
    page.get_by_role("tab", name="Analysis").click()
    expect(page.locator("#analysis-summary")).to_contain_text("pointing game")
    expect(page.locator("#analysis-status")).to_contain_text("scenes: 6 test")
    page.context.close()


# --------------------------------------------------------------------------- the models run once per change

# app.py in a process that writes one line to a file each time the explainer runs its models
COUNTING_LAUNCHER = """
import runpy, sys
from pathlib import Path
from attnviz import explainer
log = Path(sys.argv.pop(1))
original = explainer.Explainer.explain
def explain(self, *args, **kwargs):
    with log.open("a") as file:
        file.write("explain\\n")
    return original(self, *args, **kwargs)
explainer.Explainer.explain = explain
sys.argv[0] = "app.py"
runpy.run_path("app.py", run_name="__main__")
"""


def counting_app(weights_dir: Path, log: Path):
    launcher = log.with_name("counting_app.py")
    launcher.write_text(COUNTING_LAUNCHER)
    return serving(launcher, str(log), "--weights-dir", str(weights_dir), quiet=True)


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_upload_then_explain_runs_the_models_once_and_a_changed_layer_again(browser, tiny_weights_dir,
                                                                           example_image, tmp_path):
    from playwright.sync_api import expect

    log = tmp_path / "runs.log"
    with counting_app(tiny_weights_dir, log) as url:
        page, _ = open_page(browser, url)
        expect(page.locator("#explain-button")).to_be_visible()
        # app.py warms the models up in the background (one run): wait for it, so that it is not counted below
        deadline = time.monotonic() + 60
        while runs(log) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        at_start = runs(log)
        assert at_start == 1, "app.py's warm-up did not run the models once"
        upload(page, example_image)
        expect(page.locator("#status")).to_contain_text("Done: Grad-CAM · layer4")
        assert runs(log) == at_start + 1
        page.locator("#explain-button").click()
        expect(page.locator("#status")).to_contain_text("nothing changed")  # answered: the same result again
        assert runs(log) == at_start + 1
        page.get_by_label("Target layer").click()
        page.get_by_role("option", name="layer3", exact=True).click()
        page.locator("#explain-button").click()
        expect(page.locator("#status")).to_contain_text("Done: Grad-CAM · layer3")
        assert runs(log) == at_start + 2
        page.context.close()


# --------------------------------------------------------------------------- the shipped analysis on the page


@pytest.fixture(scope="module")
def shipped_analysis_url(tmp_path_factory) -> Iterator[str]:
    """An app whose set "builtin" holds a copy of the shipped analysis (one small random model to serve)."""
    from conftest import make_model_set

    weights = make_model_set(tmp_path_factory.mktemp("shipped"), "builtin", crop=32, variants=("resnet50",))
    shutil.copytree(REPO / "weights" / "builtin" / "analysis", weights / "builtin" / "analysis")
    with running_app(weights) as url:
        yield url


PLOTS_LOADED = """() => {
    const images = [...document.querySelectorAll("[id^=analysis-] img")];
    return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0 && i.clientWidth > 0);
}"""


def analysis_images(page) -> list[dict]:
    """Every plot on the Analysis tab once all are loaded: its id, shown width and PNG width."""
    page.wait_for_function(PLOTS_LOADED)
    return page.eval_on_selector_all(
        "[id^=analysis-] img",
        "images => images.map(i => ({id: i.closest('[id]').id, shown: i.clientWidth, png: i.naturalWidth}))")


def test_analysis_plots_are_shown_at_the_width_they_were_drawn_for(browser, shipped_analysis_url, artifacts_dir):
    from playwright.sync_api import expect

    from attnviz.analysis import plots as analysis_plots

    page, outside = open_page(browser, shipped_analysis_url, width=1280)
    page.get_by_role("tab", name="Analysis").click()
    expect(page.locator("#analysis-findings")).to_contain_text("is the most accurate")
    shown = analysis_images(page)
    shipped = json.loads((REPO / "weights" / "builtin" / "analysis" / "analysis.json").read_text())
    assert len(shown) == len(shipped["plots"]) >= 9
    for image in shown:
        assert image["png"] == analysis_plots.DISPLAY_WIDTH_PX * analysis_plots.PIXEL_SCALE, image
        assert abs(image["shown"] - analysis_plots.DISPLAY_WIDTH_PX) <= 2, image  # the odd last one too
        smallest = min(analysis_plots.FONT_SIZES.values()) * analysis_plots.DPI / 72
        assert smallest * image["shown"] / analysis_plots.DISPLAY_WIDTH_PX >= analysis_plots.MIN_TEXT_PX
    page.screenshot(path=str(artifacts_dir / "analysis_tab.png"), full_page=True)
    assert outside == []
    page.context.close()


def test_analysis_findings_speak_simplified_chinese_to_a_chinese_browser(browser, shipped_analysis_url):
    from playwright.sync_api import expect

    page, _ = open_page(browser, shipped_analysis_url, locale="zh-CN")
    page.get_by_role("tab", name="分析").click()
    expect(page.locator("#analysis-findings")).to_contain_text("准确率最高")
    expect(page.get_by_text("这些数字说明了什么")).to_be_visible()
    page.context.close()


def test_attention_lab_shows_each_model_with_the_gates_off(browser, app_url, example_image, artifacts_dir):
    from playwright.sync_api import expect

    page, outside = open_page(browser, app_url)
    page.locator("#lab").get_by_text("Attention lab").first.click()  # open the accordion
    fill_field(page, "knockout", "layer4.*:spatial")
    upload(page, example_image)
    expect(page.locator("#status")).to_contain_text("Done")
    expect(page.locator("#knockout-info-cbam")).to_contain_text("layer4.*:spatial")
    expect(page.locator("#knockout-info-cbam")).to_contain_text("3 gates")
    expect(page.locator("#knockout-info-se")).to_contain_text("unaffected")
    for figure in ("knockout-overlay-cbam", "knockout-difference-cbam"):
        page.locator(f"#{figure}").scroll_into_view_if_needed()
        expect(page.locator(f"#{figure} img")).to_be_visible()
    expect(page.locator("body")).not_to_contain_text("[object Object]")
    page.screenshot(path=str(artifacts_dir / "lab.png"), full_page=True)
    assert outside == []


def test_scene_lab_draws_explains_and_measures_a_scene(browser, two_set_url, artifacts_dir):
    from playwright.sync_api import expect

    page, outside = open_page(browser, two_set_url)
    page.get_by_label("Model set").click()
    page.get_by_role("option", name="scenes").click()
    page.get_by_role("tab", name="Scene lab").click()
    page.locator("#scene-run").click()
    expect(page.locator("#scene-status")).to_contain_text("Done")
    expect(page.locator("#scene-numbers")).to_contain_text("energy in mask")
    expect(page.locator("#scene-numbers")).to_contain_text("ResNet50 + SE")
    expect(page.locator("#scene-gallery img").first).to_be_visible()
    page.locator("#scene-move").click()
    expect(page.locator("#scene-status")).to_contain_text("Done")
    page.screenshot(path=str(artifacts_dir / "scene_lab.png"), full_page=True)
    assert outside == []
    page.context.close()


@pytest.fixture(scope="module")
def flagging_url(tmp_path_factory) -> Iterator[str]:
    """An app whose set has fitted out-of-domain statistics and a threshold that flags every image."""
    from conftest import make_model_set, with_domain_threshold

    from attnviz.domain_fit import fit_set
    from attnviz.scenes import CLASSES

    folder = make_model_set(tmp_path_factory.mktemp("ood"), "scenes", classes=list(CLASSES), crop=32,
                            variants=("resnet50", "cbam"))
    fit_set("scenes", folder, train=24, val=12, probes=1, progress=False)
    with running_app(with_domain_threshold(folder, "scenes", -1e9, tmp_path_factory.mktemp("ood-flag"))) as url:
        yield url


def test_an_out_of_domain_image_gets_the_notice_above_the_results(browser, flagging_url, tmp_path, artifacts_dir):
    from PIL import Image
    from playwright.sync_api import expect

    from attnviz.probes import probe_image

    photo = tmp_path / "drawing.png"
    Image.fromarray(probe_image("lines", 0)).save(photo)
    page, outside = open_page(browser, flagging_url)
    upload(page, photo)
    notice = page.locator("#domain-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("unlike the scenes these models were trained on")
    expect(notice).to_contain_text("ResNet50 + CBAM")
    notice_box, column_box = notice.bounding_box(), page.locator("#column-resnet50").bounding_box()
    assert notice_box["y"] + notice_box["height"] <= column_box["y"] + 1  # right above the result columns
    page.screenshot(path=str(artifacts_dir / "app_out_of_domain.png"), full_page=True)
    assert outside == []
    page.context.close()


# --------------------------------------------------------------------------- the ImageNet models in one step


@pytest.fixture(scope="module")
def imagenet_button_url(tmp_path_factory, tiny_weights_dir, imagenet_caches) -> Iterator[tuple[str, Path]]:
    """The app on loopback (so it offers the download) with the stand-in downloads in the libraries' caches
    (tests/standins.py) and a writable weights folder of its own: (URL, that folder)."""
    from standins import PYTORCHCV_SHA1_ENV

    torch_home, hf_cache, placed = imagenet_caches
    writable = tmp_path_factory.mktemp("writable-weights")
    env = {"TORCH_HOME": str(torch_home), "HF_HUB_CACHE": str(hf_cache), PYTORCHCV_SHA1_ENV: placed.pytorchcv_sha1,
           "ATTNVIZ_USER_WEIGHTS": str(writable), "ATTNVIZ_DOWNLOADS": ""}
    with serving("tests/standin_app.py", "--weights-dir", str(tiny_weights_dir), env=env) as url:
        yield url, writable


def test_the_imagenet_button_adds_the_set_to_the_selector(browser, imagenet_button_url,
                                                                                 example_image, artifacts_dir):
    """Two people press the button at once: one download, both get the set chosen in the selector."""
    from playwright.sync_api import expect

    from attnviz.catalogue import Catalogue

    url, writable = imagenet_button_url
    first, outside = open_page(browser, url)
    second, _ = open_page(browser, url)
    for page in (first, second):
        expect(page.locator("#get-imagenet")).to_have_text("Get the ImageNet models (about 300 MB)")
    first.locator("#get-imagenet").click()
    second.locator("#get-imagenet").click()
    first.screenshot(path=str(artifacts_dir / "app_imagenet_download.png"))
    statuses = []
    for page in (first, second):
        expect(page.locator("#get-imagenet")).to_be_hidden()
        expect(page.get_by_label("Model set")).to_have_value("imagenet")
        expect(page.locator("#status")).to_contain_text("imagenet")
        statuses.append(page.locator("#status").inner_text())
    assert sum("installed and chosen" in s for s in statuses) == 1, statuses  # one download ...
    assert sum("already installed" in s for s in statuses) == 1, statuses  # ... the other press waited for it
    assert Catalogue([writable]).set_names() == ["imagenet"]
    second.context.close()

    # the 1000 classes work in the page: the target chooser searches them as a user types (over the text shown)
    target = first.locator("#target input")
    target.click()
    target.press("Control+a")
    target.press_sequentially("tabb", delay=50)
    expect(first.get_by_role("option")).to_have_text([re.compile(r"^\W*tabby$")])  # one option (a ✓ may lead)
    first.screenshot(path=str(artifacts_dir / "app_imagenet_target_filter.png"))
    first.get_by_role("option").click()
    expect(target).to_have_value("tabby")
    upload(first, example_image)  # ... every heatmap explains the class chosen; the top-5 are ImageNet's names
    expect(first.locator("#status")).to_contain_text("Done")
    names = set(imagenet_classes())
    for variant in IMAGENET_VARIANTS:
        expect(first.locator(f"#info-{variant}")).to_contain_text("tabby")
        shown = [line.strip() for line in first.locator(f"#top-{variant}").inner_text().splitlines()]
        assert sum(line in names for line in shown) == 5, (variant, shown)
    first.locator("#top-cbam").scroll_into_view_if_needed()
    first.screenshot(path=str(artifacts_dir / "app_imagenet_result.png"))
    first.get_by_role("tab", name="Analysis").click()  # ... and the Analysis tab says why it cannot measure them
    expect(first.locator("#analysis-status")).to_contain_text("other classes than the generated scenes")
    assert outside == []
    first.context.close()

    later, _ = open_page(browser, url)  # a page opened later offers the set, and no button
    expect(later.locator("#get-imagenet")).to_be_hidden()
    later.locator("#model-set input").click()
    expect(later.get_by_role("option", name="imagenet")).to_be_visible()
    later.context.close()
