"""moe-vs-dense: paired dense and modality-expert models on matched compute."""

__version__ = "0.1.0"
