"""The Explain tab's "Get the ImageNet models" button, and the set selector kept in step with what is installed.

The button is there when the app offers downloads (``get_imagenet.downloads_allowed``: on loopback by default)
and no ImageNet set is installed. Pressing it downloads the three models into the writable weights folder with a
progress bar (``get_imagenet.get_imagenet``: one download however many press it), then offers the set in the
selector and chooses it, without a restart. Each page opened later reads the installed sets again, so a set that
another page downloaded is offered there too.
"""

from __future__ import annotations

import gradio as gr

from attnviz.errors import AttnvizError
from attnviz.get_imagenet import get_imagenet, imagenet_set
from attnviz.page import error_text, t


def build_button(app, tr) -> None:
    """The button, under the set selector; hidden unless offered."""
    app.components["get_imagenet"] = gr.Button(tr("get_imagenet"), variant="secondary", size="sm",
                                               elem_id="get-imagenet", visible=offers_imagenet(app))


def wire(app, demo: gr.Blocks) -> None:
    """The button's event (two at once: the second waits for the first's download) and the page-load refresh."""
    c = app.components
    c["get_imagenet"].click(app.get_imagenet_page, outputs=[c["model_set"], c["get_imagenet"], c["status"]],
                            api_visibility="private", concurrency_id="get_imagenet", concurrency_limit=2)
    demo.load(app.page_loaded, outputs=[c["model_set"], c["get_imagenet"]], api_visibility="private",
              concurrency_id="page_loaded", concurrency_limit=None)


def press(app, progress) -> dict:
    """Download and install the models (or wait for the download another user started), then offer the set in the
    selector and choose it; one line on what went wrong else. Refused when the app does not offer downloads (the
    button is hidden then; an event sent anyway gets this)."""
    c = app.components
    unchanged = {c["model_set"]: gr.skip(), c["get_imagenet"]: gr.skip()}
    if not app.downloads:
        return {**unchanged, c["status"]: f"⚠️ {t('imagenet_off')}"}
    try:
        name, new = get_imagenet(app.sets, report=lambda fraction, message: progress(fraction, desc=message))
    except AttnvizError as exc:
        gr.Warning(str(exc), title="attnviz")
        return {**unchanged, c["status"]: f"⚠️ {error_text(exc)}"}
    offer_sets(app)
    return {c["model_set"]: gr.Dropdown(choices=app.set_names, value=name),
            c["get_imagenet"]: gr.Button(visible=False),
            c["status"]: f"{t('imagenet_ready' if new else 'imagenet_there')} **{name}**"}


def page_loaded(app) -> dict:
    """The sets installed now (a download since the start adds one) and whether the button is offered."""
    offer_sets(app)
    c = app.components
    return {c["model_set"]: gr.Dropdown(choices=app.set_names),
            c["get_imagenet"]: gr.Button(visible=offers_imagenet(app))}


def offer_sets(app) -> None:
    """Read the manifests again and offer their sets, also to requests of sessions that started before (the API's
    and other pages', whose chosen set the server checks against the component's own choices)."""
    app.sets.reload()
    app.set_names = app.sets.set_names()
    if "model_set" in app.components:
        app.components["model_set"].choices = [(name, name) for name in app.set_names]


def offers_imagenet(app) -> bool:
    return app.downloads and imagenet_set(app.sets) is None
