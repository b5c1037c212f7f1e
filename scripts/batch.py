"""Batch Tune-A-Video edits across ComfyUI servers; the same as `python -m tav_core.batch`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tav_core.batch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
