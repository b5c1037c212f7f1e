"""pyproject.toml as the Comfy Registry reads it (docs.comfy.org/registry/specifications, comfy-cli)."""
import re
import tomllib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
# comfy-cli's own checks (comfy_cli/registry/config_parser.py): a value outside these is dropped with a warning.
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
VERSION_PART = r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$"


def repo_file(url: str) -> Path:
    """The file of this repository that a raw.githubusercontent.com URL on the main branch serves."""
    repository = PROJECT["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repository}/main/"
    assert url.startswith(prefix), url
    return ROOT / url.removeprefix(prefix)


def test_node_id_follows_the_registry_rules():
    name = PROJECT["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name)
    assert not re.search(r"[._-]{2}", name) and "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"])
    assert f"comfy node install {name}" in (ROOT / "README.md").read_text()


def test_classifiers_and_comfyui_range():
    environments = [c.removeprefix("Environment :: ") for c in PROJECT["classifiers"] if c.startswith("Environment ::")]
    assert environments == ["GPU :: NVIDIA CUDA"]
    assert "Operating System :: OS Independent" in PROJECT["classifiers"]
    required = COMFY["requires-comfyui"]
    assert all(re.match(VERSION_PART, part.strip()) for part in required.split(","))
    # The oldest ComfyUI that `make test` runs on.
    assert required == ">=0.3.75"


def test_icon_is_small_and_square_and_banner_is_21_by_9():
    with Image.open(repo_file(COMFY["Icon"])) as icon:
        assert icon.width == icon.height <= 400
    with Image.open(repo_file(COMFY["Banner"])) as banner:
        assert abs(banner.width / banner.height - 21 / 9) < 0.01


def test_requirements_txt_mirrors_the_dependencies():
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    listed = [line for line in lines if line]  # as pip reads it: comments are not requirements
    assert listed == PROJECT["dependencies"]
