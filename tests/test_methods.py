"""The CAM method table: every row names a pytorch-grad-cam class that exists, and method lists group by kind."""

from __future__ import annotations

import pytorch_grad_cam

from attnviz.methods import CAM_METHODS, KINDS, method_choices


def test_every_method_names_a_pytorch_grad_cam_class_a_kind_and_one_line():
    for key, method in CAM_METHODS.items():
        assert method.key == key
        assert isinstance(getattr(pytorch_grad_cam, method.library_class), type), key
        assert method.kind in KINDS, key
        assert method.description and "\n" not in method.description and len(method.description) <= 110, key
    assert len({m.label for m in CAM_METHODS.values()}) == len(CAM_METHODS)


def test_method_choices_are_grouped_by_kind_and_mark_the_slow_ones():
    choices = method_choices()
    assert sorted(key for _, key in choices) == sorted(CAM_METHODS)
    kinds = [CAM_METHODS[key].kind for _, key in choices]
    assert kinds == sorted(kinds, key=KINDS.index)  # each kind in one run, in the order of KINDS
    for label, key in choices:
        method = CAM_METHODS[key]
        assert label.startswith(method.label) and method.kind in label
        assert label.endswith("(slow)") == (method.kind == "perturbation")
