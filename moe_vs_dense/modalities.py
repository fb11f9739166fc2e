"""The modalities the toolkit knows, their raw units, and the built-in real-data sources."""

from __future__ import annotations

from typing import Literal

Modality = Literal["text", "code", "dna", "image", "speech", "protein", "junk"]
MODALITIES: tuple[str, ...] = ("text", "code", "dna", "image", "speech", "protein", "junk")

# The raw unit each modality's loss is normalized by (bits per raw unit).
RAW_UNIT: dict[str, str] = {
    "text": "byte",
    "code": "byte",
    "dna": "base",
    "image": "pixel",
    "speech": "sample",
    "protein": "residue",
    "junk": "hex digit",  # an incompressible hash dump (data/junk.py): 4 bits per digit at best
}

# Built-in sources fetched by `moe-vs-dense data fetch`, by name -> modality.
BUILTIN_SOURCES: dict[str, str] = {
    "austen": "text",
    "sympy": "code",
    "ecoli": "dna",
    "fashion_mnist": "image",
    "mnist": "image",
    "espeak": "speech",
    "uniprot": "protein",
    "junk": "junk",
}
