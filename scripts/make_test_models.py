"""Generate (or find in the cache) the random-weight SD1.5 test checkpoint and print its path.

    .venv/bin/python scripts/make_test_models.py [--size tiny|full] [--out DIR]

Without --out the file goes to <pack>/.cache/test-models (env TAV_TEST_MODELS overrides), where the
tests, the demo and the benchmarks look for it. Copy or link it into ComfyUI's models/checkpoints to
use it from the UI.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tav_core.testing.checkpoints import SIZES, cached_sd15_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny: 2-level UNet (107M params); full: the real SD1.5 UNet (860M)")
    parser.add_argument("--out", type=Path, help="directory to write to instead of the cache")
    args = parser.parse_args()
    print(cached_sd15_checkpoint(cache_dir=args.out, size=args.size))


if __name__ == "__main__":
    main()
