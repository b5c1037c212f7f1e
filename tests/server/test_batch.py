"""The batch runner on two real ComfyUI servers: 3 clips x 2 edits, one server killed mid-prompt.

Every edit must finish exactly once, the report must list all 6, a second run must do no work, and a
run with every server gone must stop with a clear error.
"""
import json
import shutil
import time
from collections import Counter

import cv2
import pytest

from tav_core import batch
from tav_core.batch_jobs import load_jobs
from tav_core.testing.server import ComfyServer
from tav_core.video import write_synthetic_clip

# CI time: two servers driven by the pack's batch client; on the newest ComfyUI only (scripts/test.sh).
pytestmark = [pytest.mark.server, pytest.mark.newest_comfyui_only]
TINY = {"frame_count": 2, "frame_stride": 1, "width": 64, "height": 64, "tune_steps": 1, "steps": 2}


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_checkpoint):
    pytest.importorskip("transformers")
    from tav_core.testing.clip_models import write_clip_model

    clip_model = write_clip_model(tmp_path_factory.mktemp("clip") / "tiny-clip", "small")
    running = []
    try:
        for name in ("a", "b"):
            base = tmp_path_factory.mktemp(f"comfy-{name}")
            (base / "models" / "checkpoints").mkdir(parents=True)
            (base / "models" / "checkpoints" / tiny_checkpoint.name).symlink_to(tiny_checkpoint)
            shutil.copytree(clip_model, base / "models" / "clip_scoring" / "tiny-clip")
            running.append(ComfyServer(base).start())
        yield running
    finally:
        for server in running:
            server.stop()


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs")
    write_synthetic_clip(folder / "ball.mp4", frames=6, size=64, fps=8)
    write_synthetic_clip(folder / "wide.mp4", frames=6, size=(80, 64), fps=8)
    frames = folder / "frames" / "stripe"  # LOVEU-TGVE's layout: a folder of frames
    frames.mkdir(parents=True)
    capture = cv2.VideoCapture(str(folder / "ball.mp4"))
    for i in range(4):
        cv2.imwrite(str(frames / f"{i:05}.jpg"), cv2.flip(capture.read()[1], 1))
    import yaml

    spec = {"checkpoint": None, "clip_model": "tiny-clip", "defaults": TINY, "jobs": [
        {"name": "ball", "clip": "ball.mp4", "source_prompt": "a ball rolls",
         "edits": {"style": "a ball rolls, watercolor", "object": "an orange rolls"}},
        {"name": "wide", "clip": "wide.mp4", "source_prompt": "a ball rolls", "seed": 5,
         "edits": ["a ball rolls on the beach", "a ball rolls in the snow"]},
        {"name": "stripe", "clip": "frames/stripe", "source_prompt": "a stripe moves",
         "edits": {"style": "a stripe moves, pencil sketch", "background": "a stripe moves on grass"}},
    ]}
    path = folder / "jobs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def history_size(server):
    return len(server.get("/history"))


def test_batch_survives_a_dead_server_and_resumes(servers, jobs_file, tiny_checkpoint, tmp_path):
    a, b = servers
    results = tmp_path / "results"
    b_edits, killed = [], []

    def note_edit(line):
        if b.url in line:
            b_edits.append(line)

    def kill_b_while_it_samples_its_second_edit(url, kind, data):
        # Mid-prompt: the first sampling step of b's next prompt after its first finished edit.
        if url == b.url and b_edits and not killed and kind == "progress":
            killed.append(b_edits[0])
            b.process.kill()
            b.process.wait()

    jobs = load_jobs(jobs_file)
    started = time.monotonic()
    runner = batch.BatchRunner(jobs, [a.url, b.url], results, checkpoint=tiny_checkpoint.name,
                               on_edit=note_edit, on_message=kill_b_while_it_samples_its_second_edit,
                               timeout=600)
    records = runner.run()
    seconds = time.monotonic() - started
    print(f"batch of 3 clips x 2 edits on 2 servers, one killed: {seconds:.1f} s")
    assert killed, "server b finished no edit before the end"
    assert len(b_edits) == 1

    assert [(r["job"], r["status"]) for r in records].count(("ball", "done")) == 2
    assert len(records) == 6 and all(r["status"] == "done" for r in records)
    events = [json.loads(line) for line in (results / "events.jsonl").read_text().splitlines()]
    assert Counter((e["job"], e["edit"]) for e in events if e["event"] == "edit") == {
        (r["job"], r["edit"]): 1 for r in records}, "an edit was done twice or not at all"
    assert Counter(e["job"] for e in events if e["event"] == "tuned") == {"ball": 1, "wide": 1, "stripe": 1}
    killed_job = killed[0].split("/")[0]
    servers_of_killed = {r["server"] for r in records if r["job"] == killed_job}
    assert servers_of_killed == {a.url, b.url}, "b's clip did not continue on a"
    assert any(r["inversion_reused"] for r in records if r["server"] == a.url), "a inverted every edit again"

    for r in records:
        capture = cv2.VideoCapture(str(results / r["video"]))
        count = 0
        while capture.read()[0]:
            count += 1
        assert count == TINY["frame_count"], r["video"]
        assert (results / r["thumbnail"]).stat().st_size > 0
        assert 0 < r["frame_consistency"] <= 100 + 1e-6 and isinstance(r["text_alignment"], float)
    report = (results / "report.md").read_text()
    html = (results / "report.html").read_text()
    for r in records:
        assert r["thumbnail"] in report and r["thumbnail"] in html and r["edited_prompt"] in report
    summary = json.loads((results / "results.json").read_text())["summary"]
    assert summary["done"] == 6 and (results / "results.csv").read_text().count("\n") == 7

    # A second run, from the command line, does no work: nothing is queued on the live server.
    before = history_size(a)
    assert batch.main([str(jobs_file), "--server", a.url, "--server", b.url, "--results", str(results),
                       "--checkpoint", tiny_checkpoint.name, "--no-progress"]) == 0
    assert history_size(a) == before
    assert sorted(p.parent.name for p in results.glob("*/tuned-*.safetensors")) == ["ball", "stripe", "wide"]
    assert json.loads((results / "results.json").read_text())["summary"]["done"] == 6

    # New work with every server gone: a clear error, and what was done stays.
    spec = jobs_file.read_text().replace("an orange rolls", "a lemon rolls")
    changed = jobs_file.with_name("changed.yaml")
    changed.write_text(spec)
    with pytest.raises(batch.AllServersGone, match="every server is gone.*ball \\(1 edits\\)"):
        batch.BatchRunner(load_jobs(changed), [b.url], results, checkpoint=tiny_checkpoint.name).run()
    assert len(list(results.glob("*/*.mp4"))) >= 6


def test_a_job_every_server_refuses_is_reported_failed(servers, jobs_file, tiny_checkpoint, tmp_path):
    a, _ = servers
    bad = jobs_file.with_name("bad.yaml")
    bad.write_text("jobs: [{name: tiny, clip: ball.mp4, source_prompt: x, edits: [y], width: 32, frame_count: 2}]")
    records = batch.BatchRunner(load_jobs(bad), [a.url], tmp_path / "results", checkpoint=tiny_checkpoint.name,
                                progress=False).run()
    assert [(r["status"], a.url in r["error"], "width" in r["error"]) for r in records] == [("failed", True, True)]
    assert "failed" in (tmp_path / "results" / "report.md").read_text()
