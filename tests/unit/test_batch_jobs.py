"""Jobs files of the batch runner: YAML and CSV, the LOVEU-TGVE layout, and clear errors."""
import pytest

from tav_core.batch_jobs import SETTINGS, JobsError, load_jobs

LOVEU_EDITS = ("style", "object", "background", "multiple")


def test_yaml_jobs_with_defaults_and_overrides(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "frames").mkdir()
    (tmp_path / "jobs.yaml").write_text(
        "checkpoint: sd15.safetensors\nclip_model: clip-l\ndefaults: {width: 256, height: 256}\njobs:\n"
        "  - {clip: a.mp4, source_prompt: a man is skiing, edits: [a panda is skiing, a man is surfing],"
        " frame_count: 8, learning_rate: 1e-4}\n"
        "  - name: folder clip\n    clip: frames\n    source_prompt: x\n    edits: {style: 'x, watercolor'}\n")
    jobs = load_jobs(tmp_path / "jobs.yaml")
    assert (jobs.checkpoint, jobs.clip_model) == ("sd15.safetensors", "clip-l")
    first, second = jobs.jobs
    assert first.name == "a" and first.clip == tmp_path / "a.mp4"
    assert first.edits == {"edit-1": "a panda is skiing", "edit-2": "a man is surfing"}
    assert first.settings == {**SETTINGS, "width": 256, "height": 256, "frame_count": 8, "learning_rate": 1e-4}
    assert second.name == "folder-clip" and second.edits == {"style": "x, watercolor"}
    assert second.settings["frame_count"] == SETTINGS["frame_count"]


def test_csv_in_the_loveu_tgve_layout(tmp_path):
    """76 clips x 4 named edits, one row per edit, as LOVEU-TGVE 2023's spreadsheet lists them."""
    rows = ["name,clip,source_prompt,edit,edited_prompt,frame_count,frame_stride,width,height"]
    for i in range(76):
        (tmp_path / f"clip-{i}").mkdir()
        for edit in LOVEU_EDITS:
            frames = 32 if i < 16 else 128
            rows.append(f'clip-{i},clip-{i},"a clip, number {i}",{edit},"clip {i}, {edit} edit",{frames},1,480,480')
    (tmp_path / "loveu.csv").write_text("\n".join(rows) + "\n")
    jobs = load_jobs(tmp_path / "loveu.csv").jobs
    assert len(jobs) == 76 and all(tuple(job.edits) == LOVEU_EDITS for job in jobs)
    assert jobs[3].source_prompt == "a clip, number 3" and jobs[3].edits["object"] == "clip 3, object edit"
    assert (jobs[0].settings["frame_count"], jobs[20].settings["frame_count"]) == (32, 128)
    assert jobs[0].settings["width"] == 480 and jobs[0].settings["frame_stride"] == 1


@pytest.mark.parametrize("text, message", [
    ("jobs: [{clip: missing.mp4, source_prompt: x, edits: [y]}]", "does not exist"),
    ("jobs: [{clip: a.mp4, edits: [y]}]", "source_prompt is missing"),
    ("jobs: [{clip: a.mp4, source_prompt: x, edits: []}]", "edits must be"),
    ("jobs: [{clip: a.mp4, source_prompt: x, edits: [y], frames: 8}]", "unknown keys \\['frames'\\]"),
    ("jobs: [{clip: a.mp4, source_prompt: x, edits: [y], steps: many}]", "steps must be a number"),
    ("defaults: {size: 3}\njobs: [{clip: a.mp4, source_prompt: x, edits: [y]}]", "defaults has unknown"),
    ("jobs: [{clip: a.mp4, source_prompt: x, edits: [y]}, {clip: a.mp4, source_prompt: z, edits: [w]}]",
     "unique"),
    ("jobs: {}", "top-level 'jobs' list"),
    ("jobs: [", "not valid YAML"),
])
def test_bad_jobs_files_are_clear_errors(tmp_path, text, message):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "jobs.yaml").write_text(text)
    with pytest.raises(JobsError, match=message):
        load_jobs(tmp_path / "jobs.yaml")


def test_no_server_answers_is_a_clear_error_and_a_report(tmp_path):
    import json

    from tav_core.batch import AllServersGone, BatchRunner
    from tav_core.testing.server import free_port

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "jobs.yaml").write_text(
        "checkpoint: m.safetensors\njobs: [{clip: a.mp4, source_prompt: x, edits: [y, z]}]")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AllServersGone, match=f"{url}: did not answer at start.*Left to do: a \\(2 edits\\)"):
        BatchRunner(load_jobs(tmp_path / "jobs.yaml"), [url], tmp_path / "results", progress=False).run()
    summary = json.loads((tmp_path / "results" / "results.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["not done", "not done"]


def test_the_report_ignores_results_of_another_prompt(tmp_path):
    import json

    from tav_core.batch_report import write_report

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "jobs.yaml").write_text("jobs: [{clip: a.mp4, source_prompt: x, edits: {one: y, two: z}}]")
    jobs = load_jobs(tmp_path / "jobs.yaml").jobs
    (tmp_path / "a").mkdir()
    for edit, prompt in (("one", "y"), ("two", "an older prompt")):
        (tmp_path / "a" / f"{edit}.json").write_text(json.dumps(
            {"job": "a", "edit": edit, "status": "done", "edited_prompt": prompt, "source_prompt": "x",
             "settings": jobs[0].settings, "video": f"a/{edit}.mp4", "thumbnail": None}))
    records = write_report(tmp_path, jobs, {}, 1.0)
    assert [(r["edit"], r["status"]) for r in records] == [("one", "done"), ("two", "not done")]
    assert "1 of 2 edits done" in (tmp_path / "report.md").read_text()


def test_a_folder_of_frames_becomes_a_lossless_clip(tmp_path):
    import cv2
    import numpy as np

    from tav_core.batch_report import frames_to_video
    from tav_core.video import read_clip

    rng = np.random.default_rng(0)
    frames = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(3)]
    (tmp_path / "frames").mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / "frames" / f"{i:05}.png"), frame)
    clip = frames_to_video(tmp_path / "frames", tmp_path / "clip.avi", fps=8)
    loaded, fps = read_clip(clip, 3, 0, 1, 64, 64, "stretch")
    assert fps == pytest.approx(8)
    assert np.array_equal((loaded * 255).round().astype(np.uint8), np.stack(frames)[..., ::-1])


def test_tuned_weights_are_kept_per_tuning_setup(tmp_path):
    import dataclasses

    from tav_core.batch import Results

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "jobs.yaml").write_text("jobs: [{clip: a.mp4, source_prompt: x, edits: [y]}]")
    job = load_jobs(tmp_path / "jobs.yaml").jobs[0]
    results = Results(tmp_path / "results", "m.safetensors")
    same = [dataclasses.replace(job, edits={"edit-1": "another edit"}),
            dataclasses.replace(job, settings={**job.settings, "cfg": 7.5, "steps": 20})]
    other = [dataclasses.replace(job, source_prompt="z"),
             dataclasses.replace(job, settings={**job.settings, "tune_steps": 10}),
             dataclasses.replace(job, settings={**job.settings, "width": 256})]
    assert {results.tuned(j) for j in same} == {results.tuned(job)}
    assert len({results.tuned(j) for j in [job, *other]}) == 4
    assert Results(tmp_path / "results", "other.safetensors").tuned(job) != results.tuned(job)
