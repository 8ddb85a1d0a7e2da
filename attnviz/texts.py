"""Texts a person reads, from the locale files in ``attnviz/locales`` (one JSON file per language).

Every text the app's page shows is here (the app reads them all, its Analysis tab included); the HTML report of
the batch CLI reads the English ones. A new family adds its title and note; a new language is one more file
with every key of ``en.json`` (tests/test_ui.py checks that each file has them all), and its code in LANGUAGES.
A few texts name a setting as ``{name}``; ``fill`` puts the value in.

    text("family_eca")                  # "ResNet50 + ECA"
    text("family_eca", "zh-CN")
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LOCALES_DIR = Path(__file__).resolve().parent / "locales"
LANGUAGES = ("en", "zh-CN")


@cache
def locale(language: str = "en") -> dict[str, str]:
    """Every text of one language, by key."""
    path = LOCALES_DIR / f"{language}.json"
    if not path.is_file():
        raise ValueError(f"no locale file for {language!r} in {LOCALES_DIR}; languages: {', '.join(LANGUAGES)}")
    return json.loads(path.read_text(encoding="utf-8"))


def text(key: str, language: str = "en", default: str | None = None) -> str:
    """One text; the English one when the language lacks it; ``default`` (or KeyError) when neither has it."""
    found = locale(language).get(key, locale("en").get(key))
    if found is None:
        if default is None:
            raise KeyError(key)
        return default
    return found


def fill(template: str, values: dict[str, object]) -> str:
    """``template`` with each ``{name}`` of ``values`` replaced by its value; other braces stay as they are."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", str(value))
    return template
