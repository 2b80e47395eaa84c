"""flareseg: two-step abdominal CT segmentation of 13 organs and pan-cancer lesions (FLARE23)."""

__version__ = "0.1.0"
