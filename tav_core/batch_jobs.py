"""The jobs of a batch: clips, source prompts, edited prompts and per-job settings, from YAML or CSV.

YAML:
    checkpoint: v1-5-pruned-emaonly.safetensors   # as the servers list it
    clip_model: clip-vit-large-patch14            # optional: score every edit (models/clip_scoring)
    defaults: {frame_count: 24, width: 512, height: 512}
    jobs:
      - name: bmx-rider
        clip: DAVIS_480p/480p_frames/bmx-rider    # a video file or a folder of frames
        source_prompt: A person does a trick on a BMX bike at a skatepark.
        edits: {style: "..., grayscale.", object: "... on a unicycle ..."}   # or a list
        frame_count: 32                           # any setting of SETTINGS overrides the defaults

CSV: one row per edit, with columns name (optional), clip, source_prompt, edit (optional),
edited_prompt, and any setting of SETTINGS; rows with the same name (or clip) form one job.
Relative clip paths are relative to the jobs file. LOVEU-TGVE 2023 is 76 jobs of 4 named edits.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

# The pack's (and the paper's) defaults; every one can be set per job.
SETTINGS = {
    "frame_count": 24, "start_frame": 0, "frame_stride": 2, "width": 512, "height": 512,
    "tune_steps": 500, "learning_rate": 3e-5, "steps": 50, "cfg": 12.5, "seed": 33, "fps": 8.0,
}
NAME = re.compile(r"[^A-Za-z0-9_.-]+")


class JobsError(ValueError):
    pass


@dataclass
class Job:
    name: str
    clip: Path
    source_prompt: str
    edits: dict[str, str]
    settings: dict = field(default_factory=dict)


@dataclass
class JobsFile:
    jobs: list[Job]
    checkpoint: str | None = None
    clip_model: str | None = None


def safe_name(text: str) -> str:
    name = NAME.sub("-", text).strip("-.")
    if not name:
        raise JobsError(f"{text!r} gives an empty name; name the job or edit with letters or digits")
    return name


def _settings(raw: dict, where: str, base: dict) -> dict:
    settings = dict(base)
    for key, value in raw.items():
        if key not in SETTINGS or value in (None, ""):
            continue
        try:
            settings[key] = type(SETTINGS[key])(float(value) if isinstance(SETTINGS[key], int) else value)
        except (TypeError, ValueError) as e:
            raise JobsError(f"{where}: {key} must be a number, got {value!r}") from e
    return settings


def _job(raw: dict, where: str, base_dir: Path, defaults: dict) -> Job:
    for key in ("clip", "source_prompt"):
        if not raw.get(key):
            raise JobsError(f"{where}: {key} is missing")
    edits = raw.get("edits") or {}
    if isinstance(edits, list):
        edits = {f"edit-{i + 1}": prompt for i, prompt in enumerate(edits)}
    if not isinstance(edits, dict) or not edits:
        raise JobsError(f"{where}: edits must be a non-empty list or mapping of edited prompts")
    clip = Path(str(raw["clip"])).expanduser()
    clip = clip if clip.is_absolute() else base_dir / clip
    if not clip.exists():
        raise JobsError(f"{where}: clip {clip} does not exist")
    unknown = set(raw) - set(SETTINGS) - {"name", "clip", "source_prompt", "edits"}
    if unknown:
        raise JobsError(f"{where}: unknown keys {sorted(unknown)}; settings are {sorted(SETTINGS)}")
    return Job(name=safe_name(str(raw.get("name") or clip.stem)), clip=clip,
               source_prompt=str(raw["source_prompt"]).strip(),
               edits={safe_name(str(k)): str(v).strip() for k, v in edits.items()},
               settings=_settings(raw, where, defaults))


def load_jobs(path: Path) -> JobsFile:
    path = Path(path)
    if not path.is_file():
        raise JobsError(f"jobs file {path} does not exist")
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise JobsError(f"jobs file {path} must be .yaml, .yml or .csv")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise JobsError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
        raise JobsError(f"{path} needs a top-level 'jobs' list")
    defaults = data.get("defaults") or {}
    unknown = set(defaults) - set(SETTINGS) if isinstance(defaults, dict) else {"(not a mapping)"}
    if unknown:
        raise JobsError(f"{path}: defaults has unknown keys {sorted(unknown)}; settings are {sorted(SETTINGS)}")
    defaults = _settings(defaults, f"{path}: defaults", SETTINGS)
    jobs = [_job(raw if isinstance(raw, dict) else {}, f"{path}: job {i + 1}", path.parent, defaults)
            for i, raw in enumerate(data["jobs"])]
    return _checked(JobsFile(jobs, data.get("checkpoint"), data.get("clip_model")))


def _load_csv(path: Path) -> JobsFile:
    grouped: dict[str, dict] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not row.get("edited_prompt"):
                raise JobsError(f"{path}: line {line}: edited_prompt is missing")
            key = row.get("name") or row.get("clip", "")
            job = grouped.setdefault(key, {k: v for k, v in row.items()
                                           if k not in ("edit", "edited_prompt") and v != ""} | {"edits": {}})
            edit = row.get("edit") or f"edit-{len(job['edits']) + 1}"
            job["edits"][edit] = row["edited_prompt"]
    jobs = [_job(raw, f"{path}: job {key}", path.parent, SETTINGS) for key, raw in grouped.items()]
    return _checked(JobsFile(jobs))


def _checked(jobs: JobsFile) -> JobsFile:
    names = [job.name for job in jobs.jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise JobsError(f"job names must be unique; repeated: {duplicates}")
    if not jobs.jobs:
        raise JobsError("the jobs file has no jobs")
    return jobs
