"""Video CLIP Score on a real server: the numbers appear in /history and match the library's."""
import math

import pytest
import torch

pytest.importorskip("transformers")

from tav_core import clip_score, video  # noqa: E402
from tav_core.testing.clip_models import write_clip_model  # noqa: E402

pytestmark = pytest.mark.server


def score_prompt(pickscore="none", frame_count=4):
    return {
        "1": {"class_type": "TAVLoadVideo", "inputs": {"video": "clip.mp4", "frame_count": frame_count,
                                                        "start_frame": 0, "frame_stride": 2, "width": 64,
                                                        "height": 64, "resize_mode": "center crop"}},
        "2": {"class_type": "TAVCLIPScore", "inputs": {"images": ["1", 0], "prompt": "a man is skiing",
                                                        "clip_model": "tiny-clip", "pickscore_model": pickscore}},
    }


@pytest.fixture(scope="module")
def clip_folder(server):
    return write_clip_model(server.base_dir / "models" / "clip_scoring" / "tiny-clip", "small", seed=11)


def test_scores_in_history_match_the_library(server, clip_folder):
    history = server.run(score_prompt(), timeout=300)
    shown = history["outputs"]["2"]
    scores = shown["clip_score"][0]
    assert "frame consistency" in shown["text"][0] and "pick_score" not in scores
    frames, _ = video.read_clip(server.base_dir / "input" / "clip.mp4", 4, 0, 2, 64, 64, "center crop")
    want = clip_score.clip_scores(clip_score.load_scorer(str(clip_folder)), torch.from_numpy(frames),
                                  "a man is skiing")
    assert (scores["frame_consistency"], scores["text_alignment"]) == pytest.approx(want, abs=1e-3)
    assert 0 < scores["frame_consistency"] < 100 and math.isfinite(scores["text_alignment"])


def test_pickscore_is_shown_when_chosen(server, clip_folder):
    history = server.run(score_prompt(pickscore="tiny-clip"), timeout=300)
    scores = history["outputs"]["2"]["clip_score"][0]
    assert scores["pick_score"] == pytest.approx(scores["text_alignment"] * math.exp(
        math.log(1 / 0.07)) / 100, rel=1e-4)  # transformers' initial logit scale is 1/0.07


def test_one_frame_is_a_clear_error(server, clip_folder):
    from tav_core.testing.server import PromptFailed

    with pytest.raises(PromptFailed, match="images has 1 frame"):
        server.run(score_prompt(frame_count=1), timeout=300)
