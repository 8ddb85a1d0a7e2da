"""Attention modules written from the papers, one family per module, found through the registry.

    from attnviz.attention import family
    family("eca").build(2048, family("eca").check_options({}))   # an ECA module for 2048 channels
"""

from attnviz.attention.registry import (
    FAMILY_MODULES,
    PLAIN,
    RECORD_KINDS,
    AttentionFamily,
    GateSpec,
    RecordKind,
    attention_blocks,
    families,
    family,
    family_keys,
    family_of_module,
)

__all__ = [
    "FAMILY_MODULES",
    "PLAIN",
    "RECORD_KINDS",
    "AttentionFamily",
    "GateSpec",
    "RecordKind",
    "attention_blocks",
    "families",
    "family",
    "family_keys",
    "family_of_module",
]
