"""LightReasoner: a small amateur model shows a large expert where its reasoning matters (arXiv 2510.07962)."""

__version__ = "0.1.0"
