"""The pack on a real server: it imports cleanly, serves its nodes and web files, loads clips."""
import urllib.request

import pytest

from tav_core.testing.server import PromptFailed

SERVER_CLIP = "clip.mp4"  # copied into the server's input folder by tests/conftest.py


def load_video_prompt(**overrides):
    inputs = {"video": SERVER_CLIP, "frame_count": 8, "start_frame": 0, "frame_stride": 2,
              "width": 64, "height": 64, "resize_mode": "center crop"}
    inputs.update(overrides)
    return {"1": {"class_type": "TAVLoadVideo", "inputs": inputs},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def test_pack_imports_without_error(server):
    log = server.log_path.read_text()
    assert "ComfyUI-TuneAVideo" in log
    assert "IMPORT FAILED" not in log.split("Import times for custom nodes")[-1].split("\n\n")[0]
    info = server.get("/object_info/TAVLoadVideo")["TAVLoadVideo"]
    assert info["display_name"] == "Load Video (Tune-A-Video)"
    kind, options = info["input"]["required"]["video"][:2]
    assert SERVER_CLIP in (options["options"] if kind == "COMBO" else kind), "the clip is not offered"


def test_web_extension_is_served(server):
    extensions = server.get("/extensions")
    ours = [e for e in extensions if "/ComfyUI-TuneAVideo/" in e]
    assert ours, f"no web extension of the pack among {extensions}"
    with urllib.request.urlopen(server.url + ours[0]) as r:
        assert b"registerExtension" in r.read()


def test_load_video_through_the_queue(server):
    progress = []
    history = server.run(load_video_prompt(), timeout=120,
                         on_message=lambda kind, data: progress.append(kind))
    assert "executed" in progress and "execution_start" in progress
    images = history["outputs"]["2"]["images"]
    assert len(images) == 8
    assert all((server.base_dir / "temp" / i["subfolder"] / i["filename"]).exists() for i in images)


@pytest.mark.parametrize("overrides, expected", [
    ({"video": "missing.mp4"}, "not found"),
    ({"frame_count": 500}, "available"),
    ({"start_frame": 10_000}, "beyond"),
    ({"video": 7}, "file name"),
    ({"video": "clip.mp4\u0000.mp4"}, "input folder"),
    ({"width": 100}, "width 100 is not a multiple of 64: use 64 or 128"),
])
def test_bad_input_gets_a_clear_error(server, overrides, expected):
    try:
        server.run(load_video_prompt(**overrides), timeout=60)
    except PromptFailed as e:
        message = str(e)
    except RuntimeError as e:  # rejected at validation, before execution
        message = str(e)
    else:
        pytest.fail("a bad input ran to success")
    assert "Load Video (Tune-A-Video)" in message
    assert expected in message.lower()


def test_server_stays_usable_after_errors(server):
    history = server.run(load_video_prompt(frame_count=4), timeout=60)
    assert len(history["outputs"]["2"]["images"]) == 4


def test_clips_in_subfolders_are_offered_and_load(server):
    folder = server.base_dir / "input" / "trips"
    folder.mkdir(exist_ok=True)
    (folder / "ski.mp4").write_bytes((server.base_dir / "input" / SERVER_CLIP).read_bytes())
    options = server.get("/object_info/TAVLoadVideo")["TAVLoadVideo"]["input"]["required"]["video"][1]["options"]
    assert "trips/ski.mp4" in options
    history = server.run(load_video_prompt(video="trips/ski.mp4", frame_count=2), timeout=60)
    assert len(history["outputs"]["2"]["images"]) == 2
