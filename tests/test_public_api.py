"""The package's public names stay what the README says, whatever submodules were imported before."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import attnviz


def import_every_submodule() -> list[str]:
    """Import every module and package under attnviz; an import that fails fails the test, none is skipped."""

    def failed(name: str) -> None:
        raise ImportError(f"cannot import {name}")

    names = [info.name for info in pkgutil.walk_packages(attnviz.__path__, "attnviz.", onerror=failed)]
    for name in names:
        importlib.import_module(name)
    return names


def test_every_submodule_is_found_and_imports():
    names = import_every_submodule()
    assert {"attnviz.weights", "attnviz.importers", "attnviz.cli"} <= set(names)


def test_no_submodule_is_named_like_a_public_name():
    # Importing attnviz.X sets the package's attribute X to that module, hiding the public X for good.
    submodules = {info.name for info in pkgutil.iter_modules(attnviz.__path__)}
    assert submodules & set(attnviz.__all__) == set()


def test_public_names_are_functions_and_classes_after_every_submodule_is_imported():
    import_every_submodule()
    assert attnviz.__all__
    for name in attnviz.__all__:
        value = getattr(attnviz, name)
        assert not isinstance(value, types.ModuleType), f"attnviz.{name} is the module {value.__name__}"
        assert callable(value), f"attnviz.{name} is {value!r}"
        if name[0].isupper():
            assert inspect.isclass(value), f"attnviz.{name} should be a class, is {value!r}"
        else:
            assert inspect.isfunction(value), f"attnviz.{name} should be a function, is {value!r}"


def test_readme_import_gives_the_explain_function_after_every_submodule_is_imported():
    import_every_submodule()
    namespace: dict = {}
    exec("from attnviz import explain, load_model_set", namespace)
    assert inspect.isfunction(namespace["explain"])
    assert inspect.isfunction(namespace["load_model_set"])
    assert attnviz.explain is namespace["explain"]


def test_public_error_is_an_exception_class():
    assert issubclass(attnviz.AttnvizError, Exception)
