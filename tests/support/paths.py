"""Where things are, for every test folder: the repository root and the sample images."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "input_images"
