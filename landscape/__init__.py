"""landscape: sharpness-aware training and loss-landscape geometry.

Import the pieces you need from their modules (``landscape.data``,
``landscape.models``, ``landscape.checkpoint``, ...); this package root stays
light so that ``import landscape`` is cheap.
"""
__version__ = "0.1.0"
