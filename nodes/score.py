"""Video CLIP Score: a thin V3 wrapper over tav_core.clip_score.

Models live in the `clip_scoring` model folder (models/clip_scoring/<name>/, transformers CLIPModel
folders as downloaded from Hugging Face: openai/clip-vit-large-patch14, and optionally
pickapic-anonymous/PickScore_v1 with its processor files).
"""
import os
from contextlib import contextmanager

import comfy.model_management
import folder_paths
from comfy_api.latest import io

from ..tav_core import clip_score

FOLDER = "clip_scoring"
NO_PICKSCORE = "none"
PREFIX = "Video CLIP Score (Tune-A-Video): "


def register_folder() -> None:
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))
    folder_paths.folder_names_and_paths[FOLDER][1].add(".json")


def model_choices() -> list[str]:
    """Every CLIPModel folder (a folder holding config.json) under the clip_scoring folders."""
    register_folder()
    configs = [f for f in folder_paths.get_filename_list(FOLDER) if os.path.basename(f) == "config.json"]
    return sorted({os.path.dirname(f) for f in configs} - {""})


def resolve(choice: str, input_name: str) -> str:
    relative = os.path.relpath(os.path.join("/", choice), "/")  # never above the folder
    for base in folder_paths.get_folder_paths(FOLDER):
        path = os.path.join(base, relative)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise ValueError(f"{PREFIX}{input_name} {choice!r} is not a model folder in models/{FOLDER}; put a "
                     "transformers CLIPModel folder (e.g. openai/clip-vit-large-patch14) there.")


_loaded: dict[str, tuple[str, clip_score.Scorer]] = {}


@contextmanager
def scorer(role: str, path: str):
    """The last loaded model of each role (CLIP, PickScore), kept between runs (loading is slow) on
    ComfyUI's offload device, and on its compute device only while it scores, so the diffusion
    models keep the GPU memory."""
    if role not in _loaded or _loaded[role][0] != path:
        _loaded.pop(role, None)
        _loaded[role] = path, clip_score.load_scorer(path, comfy.model_management.unet_offload_device())
    loaded = _loaded[role][1]
    loaded.device = comfy.model_management.get_torch_device()
    loaded.model.to(loaded.device)
    try:
        yield loaded
    finally:
        loaded.device = comfy.model_management.unet_offload_device()
        loaded.model.to(loaded.device)
        comfy.model_management.soft_empty_cache()


class VideoCLIPScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        choices = model_choices()
        return io.Schema(
            node_id="TAVCLIPScore",
            display_name="Video CLIP Score",
            category="Tune-A-Video",
            description="Scores an edited video as Tune-A-Video's paper (Table 1) and LOVEU-TGVE 2023 do: frame "
                        "consistency (100 x the mean CLIP cosine similarity over all pairs of frames) and text "
                        "alignment (100 x the mean CLIP cosine between each frame and the edited prompt), with "
                        "CLIP ViT-L/14; optionally PickScore. Shows the numbers on the node and in /history.",
            inputs=[
                io.Image.Input("images", tooltip="The edited video's frames (VAE Decode's output); at least 2."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The edited prompt the video should show, as given to Video Sample."),
                io.Combo.Input("clip_model", options=choices,
                               tooltip=f"A transformers CLIPModel folder in models/{FOLDER}: "
                                       "openai/clip-vit-large-patch14 for the paper's and LOVEU's numbers."),
                io.Combo.Input("pickscore_model", options=[NO_PICKSCORE, *choices], default=NO_PICKSCORE,
                               optional=True,
                               tooltip=f"Optional: a PickScore folder in models/{FOLDER} "
                                       "(pickapic-anonymous/PickScore_v1 with the processor files of "
                                       "laion/CLIP-ViT-H-14-laion2B-s32B-b79K), or none."),
            ],
            outputs=[
                io.Float.Output("frame_consistency", display_name="frame_consistency",
                                tooltip="100 x mean cosine similarity of CLIP image embeddings over all frame pairs."),
                io.Float.Output("text_alignment", display_name="text_alignment",
                                tooltip="100 x mean CLIP cosine similarity between each frame and the prompt."),
                io.Float.Output("pick_score", display_name="pick_score",
                                tooltip="Mean PickScore over the frames; NaN when no PickScore model is chosen."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, prompt, clip_model, pickscore_model=NO_PICKSCORE) -> io.NodeOutput:
        if images.shape[0] < 2:
            raise ValueError(f"{PREFIX}images has {images.shape[0]} frame; frame consistency compares pairs "
                             "of frames and needs at least 2.")
        try:
            with scorer("clip", resolve(clip_model, "clip_model")) as clip:
                consistency, alignment = clip_score.clip_scores(clip, images, prompt)
            scores = {"frame_consistency": consistency, "text_alignment": alignment}
            pick = float("nan")
            if pickscore_model != NO_PICKSCORE:
                with scorer("pickscore", resolve(pickscore_model, "pickscore_model")) as pick_model:
                    pick = clip_score.pick_score(pick_model, images, prompt)
                scores["pick_score"] = pick
        except clip_score.ScoreError as e:
            raise ValueError(PREFIX + str(e)) from e
        text = ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in scores.items())
        # "text" is what the frontend shows on the node; "clip_score" carries the numbers for API users.
        return io.NodeOutput(consistency, alignment, pick, ui={"text": [text], "clip_score": [scores]})


register_folder()

NODES = [VideoCLIPScore]
