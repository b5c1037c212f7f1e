"""Generate (or find in the cache) a random-weight test checkpoint and print its path.

    .venv/bin/python scripts/make_test_models.py [--arch sd15|sd2|sdxl] [--size tiny|full] [--out DIR]

Without --out the file goes to <pack>/.cache/test-models (env TAV_TEST_MODELS overrides), where the
tests, the demo and the benchmarks look for it. Copy or link it into ComfyUI's models/checkpoints to
use it from the UI.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tav_core.testing import sd2_sdxl  # noqa: E402
from tav_core.testing.checkpoints import SIZES, cached_sd15_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny",
                        help="tiny: 2-level UNet (107M params); full: the real SD1.5 UNet (860M)")
    parser.add_argument("--arch", choices=("sd15", *sd2_sdxl.ARCHITECTURES), default="sd15",
                        help="sd15; sd2 (SD2.x v-prediction) or sdxl, each in one small size only")
    parser.add_argument("--out", type=Path, help="directory to write to instead of the cache")
    args = parser.parse_args()
    if args.arch == "sd15":
        print(cached_sd15_checkpoint(cache_dir=args.out, size=args.size))
    elif args.size != "tiny":
        parser.error(f"--arch {args.arch} has no --size {args.size}")
    else:
        print(sd2_sdxl.cached_checkpoint(args.arch, cache_dir=args.out))


if __name__ == "__main__":
    main()
