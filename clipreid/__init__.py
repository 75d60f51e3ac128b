"""clipreid: player and person re-identification with contrastively fine-tuned CLIP image encoders."""

__version__ = "0.1.0"
