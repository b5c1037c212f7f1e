"""Files of a batch run: thumbnail strips, frame folders as video, and the report of every result."""
from __future__ import annotations

import csv
import html
import json
import time
from pathlib import Path

import numpy as np

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
COLUMNS = ["job", "edit", "status", "edited_prompt", "source_prompt", "video", "thumbnail", "server", "seconds",
           "inversion_reused", "frame_consistency", "text_alignment", "pick_score", "error"]


def frames_to_video(folder: Path, path: Path, fps: float) -> Path:
    """A folder of frames (sorted by name), as LOVEU-TGVE ships its clips, as a lossless FFV1 .avi."""
    import cv2

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    if not files:
        raise ValueError(f"clip folder {folder} has no frames ({', '.join(FRAME_EXTENSIONS)})")
    first = cv2.imread(str(files[0]))
    if first is None:
        raise ValueError(f"{files[0]} is not a readable image")
    height, width = (first.shape[0] // 2) * 2, (first.shape[1] // 2) * 2
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"FFV1"), fps, (width, height))
    if not writer.isOpened():
        raise ValueError(f"OpenCV cannot write FFV1 video here, so the frames of {folder} cannot become a clip")
    for file in files:
        frame = cv2.imread(str(file))
        if frame is None:
            raise ValueError(f"{file} is not a readable image")
        writer.write(cv2.resize(frame, (width, height)) if frame.shape[:2] != (height, width) else frame)
    writer.release()
    partial.replace(path)
    return path


def thumbnail_strip(video: Path, path: Path, frames: int = 8, height: int = 96) -> Path | None:
    """Up to `frames` evenly spaced frames of the video side by side, as a JPEG."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    images = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        images.append(frame)
    capture.release()
    if not images:
        return None
    picks = [images[i] for i in np.linspace(0, len(images) - 1, min(frames, len(images))).round().astype(int)]
    scaled = [cv2.resize(f, (max(1, round(f.shape[1] * height / f.shape[0])), height)) for f in picks]
    cv2.imwrite(str(path), np.concatenate(scaled, axis=1))
    return path


def collect(folder: Path, jobs, failures: dict[str, str], checkpoint: str | None = None) -> list[dict]:
    records = []
    for job in jobs:
        for edit, prompt in job.edits.items():
            path = folder / job.name / f"{edit}.json"
            record = json.loads(path.read_text()) if path.exists() else {}
            if record.get("edited_prompt") == prompt and record.get("settings") == job.settings and \
                    record.get("checkpoint", checkpoint) == checkpoint:
                records.append(record)
            else:  # not run, or run with another prompt or settings than the jobs file's now
                records.append({"job": job.name, "edit": edit,
                                "status": "failed" if job.name in failures else "not done",
                                "edited_prompt": prompt, "source_prompt": job.source_prompt,
                                "error": failures.get(job.name, "")})
    return records


def _number(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def write_report(folder: Path, jobs, failures: dict[str, str], seconds: float,
                 checkpoint: str | None = None) -> list[dict]:
    """results.json, results.csv, report.md and report.html for every edit of every job."""
    folder = Path(folder)
    records = collect(folder, jobs, failures, checkpoint)
    done = sum(r["status"] == "done" for r in records)
    summary = {"edits": len(records), "done": done, "run_seconds": round(seconds, 2),
               "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    (folder / "results.json").write_text(json.dumps({"summary": summary, "results": records}, indent=1))
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    head = f"{done} of {len(records)} edits done; this run took {seconds:.1f} s."
    md = ["# Tune-A-Video batch report", "", head, "",
          "| job | edit | status | edited prompt | frame consistency | text alignment | server | s | frames |",
          "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for r in records:
        thumb = f"![{r['job']}/{r['edit']}]({r['thumbnail']})" if r.get("thumbnail") else ""
        md.append(f"| {r['job']} | {r['edit']} | {r['status']} | {r['edited_prompt'].replace('|', '/')} | "
                  f"{_number(r.get('frame_consistency'))} | {_number(r.get('text_alignment'))} | "
                  f"{r.get('server', '')} | {_number(r.get('seconds'))} | {thumb} |")
        e = {k: html.escape(str(v)) for k, v in r.items() if v is not None}
        video = f'<a href="{e["video"]}">video</a>' if r.get("video") else e.get("error", "")
        strip = f'<img src="{e["thumbnail"]}" alt="{e["job"]}/{e["edit"]}">' if r.get("thumbnail") else ""
        rows.append(f"<tr><td>{e['job']}</td><td>{e['edit']}</td><td>{e['status']}</td><td>{e['edited_prompt']}</td>"
                    f"<td>{_number(r.get('frame_consistency'))}</td><td>{_number(r.get('text_alignment'))}</td>"
                    f"<td>{e.get('server', '')}</td><td>{_number(r.get('seconds'))}</td><td>{video}</td>"
                    f"<td>{strip}</td></tr>")
    (folder / "report.md").write_text("\n".join(md) + "\n")
    (folder / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>Tune-A-Video batch report</title>"
        "<style>body{font:14px sans-serif}td,th{border:1px solid #ccc;padding:4px}table{border-collapse:collapse}"
        "img{height:64px}</style><h1>Tune-A-Video batch report</h1>"
        f"<p>{html.escape(head)}</p><table><tr><th>job</th><th>edit</th><th>status</th><th>edited prompt</th>"
        "<th>frame consistency</th><th>text alignment</th><th>server</th><th>s</th><th>video</th><th>frames</th></tr>"
        + "".join(rows) + "</table>\n")
    return records
