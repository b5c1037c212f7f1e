"""Paths and fixtures shared by every test level."""
import os
import shutil
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]
# The second `make test` run (the newest ComfyUI) keeps its screenshots apart.
ARTIFACTS = Path(os.environ.get("TAV_ARTIFACTS") or PACK_ROOT / "artifacts")
SERVER_CLIP = "clip.mp4"


def shared_videos_dir() -> Path:
    """The real clips of ../shared/videos (env TAV_SHARED_VIDEOS overrides)."""
    env = os.environ.get("TAV_SHARED_VIDEOS")
    return Path(env) if env else PACK_ROOT.parent / "shared" / "videos"


@pytest.fixture(scope="session")
def real_clip() -> Path:
    path = shared_videos_dir() / "man-skiing.mp4"
    if not path.exists():
        pytest.skip(f"real clip {path} is not on this machine")
    return path


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory) -> Path:
    from tav_core.video import write_synthetic_clip

    path = tmp_path_factory.mktemp("clips") / "synthetic.mp4"
    write_synthetic_clip(path, frames=24, size=128, fps=12)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The cached random-weight SD1.5-format checkpoint (2-level UNet, real CLIP-L, TAESD)."""
    from tav_core.testing.checkpoints import cached_sd15_checkpoint

    return cached_sd15_checkpoint(size="tiny")


@pytest.fixture
def artifacts_dir(request) -> Path:
    path = ARTIFACTS / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_checkpoint, synthetic_clip, request):
    """One real ComfyUI server (levels 3 and 4) with the pack linked into custom_nodes."""
    from tav_core.testing.server import ComfyServer

    base = tmp_path_factory.mktemp("comfy-base")
    (base / "models" / "checkpoints").mkdir(parents=True)
    (base / "models" / "checkpoints" / tiny_checkpoint.name).symlink_to(tiny_checkpoint)
    (base / "input").mkdir()
    shutil.copy(synthetic_clip, base / "input" / SERVER_CLIP)
    with ComfyServer(base) as running:
        yield running
        if request.session.testsfailed:
            print(f"--- ComfyUI log tail ({running.log_path}) ---\n{running.log_tail()}")


def pytest_report_header(config):
    from tav_core.testing.server import comfyui_dir

    version_file = comfyui_dir() / "comfyui_version.py"
    version = "unknown"
    if version_file.exists():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                version = line.split("=", 1)[1].strip().strip("\"'")
    return f"ComfyUI {version} at {comfyui_dir()}"
