"""Save Tuned Weights / Load Tuned Weights: thin V3 wrappers over tav_core.weights.

Files live in the `tuneavideo` model folder: ComfyUI's models/tuneavideo and output/tuneavideo, so
that what Save Tuned Weights writes is at once in Load Tuned Weights' list.
"""
import os

import folder_paths
from comfy_api.latest import io, ui

from ..tav_core import files as file_policy
from ..tav_core import weights as tuned_files

FOLDER = "tuneavideo"
EXTENSIONS = {".safetensors", ".bin"}
DEFAULT_NAME = "tuned"
SAVE_PREFIX = "Save Tuned Weights (Tune-A-Video): "
LOAD_PREFIX = "Load Tuned Weights (Tune-A-Video): "


def register_folder() -> None:
    """Register models/tuneavideo and output/tuneavideo; again is a no-op (add_model_folder_path
    skips known paths), and picks up an output folder changed since import."""
    for path in (os.path.join(folder_paths.models_dir, FOLDER),
                 os.path.join(folder_paths.get_output_directory(), FOLDER)):
        folder_paths.add_model_folder_path(FOLDER, path)
    folder_paths.folder_names_and_paths[FOLDER][1].update(EXTENSIONS)


def _is_pipeline_unet(file: str) -> bool:
    return os.path.basename(file) in tuned_files.UNET_FILES and os.path.basename(os.path.dirname(file)) == "unet"


def weight_choices() -> list[str]:
    """Weight files, and `save_pretrained` folders (holding unet/) listed as the folder alone."""
    register_folder()
    files = folder_paths.get_filename_list(FOLDER)
    folders = {os.path.dirname(os.path.dirname(f)) for f in files if _is_pipeline_unet(f)} - {""}
    loose = [f for f in files if not any(f.startswith(d + os.sep) for d in folders)]
    return sorted(folders) + loose


def resolve(choice) -> str:
    """The weights file that `choice` names, by the pack's one path policy (tav_core.files): its real
    path must lie inside the folder it is listed from, as for Load Video."""
    if not isinstance(choice, str) or not choice:
        raise ValueError(f"{LOAD_PREFIX}weights must be a file name from the list, not {choice!r}.")
    for base in folder_paths.get_folder_paths(FOLDER):
        try:
            path = file_policy.resolve_inside(choice, base)
            if not os.path.exists(path):
                continue
            file = tuned_files.weights_file(path)
            file_policy.resolve_inside(os.path.relpath(file, os.path.realpath(base)), base)  # unet/ links too
            return str(file)
        except file_policy.OutsideError:
            relative = os.path.normpath(choice)
            if ("\0" not in choice and not os.path.isabs(relative) and not relative.startswith("..")
                    and os.path.lexists(os.path.join(base, relative))):  # a link leading out
                raise ValueError(f"{LOAD_PREFIX}{choice} links to a file outside models/{FOLDER} and "
                                 f"output/{FOLDER}; copy the file into one of them instead.") from None
        except tuned_files.WeightsError as e:
            raise ValueError(LOAD_PREFIX + str(e)) from e
    raise ValueError(f"{LOAD_PREFIX}{choice} is not in models/{FOLDER} or output/{FOLDER}; pick a file from the list.")


def _save_prefix(filename_prefix: str) -> str:
    """The prefix relative to output/tuneavideo; empty, "." or the folder itself mean the default name."""
    parts = os.path.normpath(filename_prefix.strip() or ".").split(os.sep)
    if parts[0] == FOLDER:
        parts = parts[1:]
    if not parts or parts[-1] == ".":
        parts = [*parts[:-1], DEFAULT_NAME]
    return os.path.join(*parts)


class SaveTuned(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVSaveTuned",
            display_name="Save Tuned Weights",
            category="Tune-A-Video",
            description="Saves what Tune-A-Video tuned or added (every temporal attention layer and the "
                        "tuned attention queries) as a small .safetensors file in output/tuneavideo, under "
                        "the official Tune-A-Video tensor names, with the base model's hash and the tuning "
                        "settings as metadata. Load Tuned Weights lists it at once.",
            inputs=[
                io.Model.Input("model", tooltip="The tuned model: the output of One-Shot Tune or Load Tuned Weights."),
                io.String.Input("filename_prefix", default=f"{FOLDER}/tuned",
                                tooltip="File name prefix, relative to ComfyUI's output folder; files always go "
                                        f"under output/{FOLDER}/ and get a counter: tuned_00001_.safetensors."),
                io.String.Input("source_prompt", default="", multiline=True, optional=True,
                                tooltip="The clip's source prompt used for tuning, e.g. \"a man is skiing\"; "
                                        "stored in the file's metadata so whoever loads it knows what it shows."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, filename_prefix, source_prompt="") -> io.NodeOutput:
        # Saved relative to output/tuneavideo whatever the prefix, so Load Tuned Weights always lists it.
        base = os.path.abspath(os.path.join(folder_paths.get_output_directory(), FOLDER))
        if not isinstance(filename_prefix, str):
            raise ValueError(f"{SAVE_PREFIX}filename_prefix must be text, not {filename_prefix!r}.")
        prefix = _save_prefix(filename_prefix)
        try:
            folder, name, counter, _, _ = folder_paths.get_save_image_path(prefix, base)
        except Exception as e:  # ComfyUI raises a bare Exception for a prefix leaving the folder
            raise ValueError(f"{SAVE_PREFIX}filename_prefix {filename_prefix!r} leads outside output/{FOLDER}; "
                             "use a plain name such as tuneavideo/tuned.") from e
        path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
        try:
            tuned_files.save_tuned(model, path, {"source_prompt": source_prompt} if source_prompt else None)
        except ValueError as e:
            raise ValueError(SAVE_PREFIX + str(e)) from e
        return io.NodeOutput(ui=ui.PreviewText(os.path.relpath(path, base)))


class LoadTuned(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVLoadTuned",
            display_name="Load Tuned Weights",
            category="Tune-A-Video",
            description="Loads tuned Tune-A-Video weights onto a model, inflating it on a clone: a file of Save "
                        "Tuned Weights, or an official Tune-A-Video tuned UNet (.safetensors or .bin, or a "
                        "save_pretrained folder holding unet/). The weights go on as patches, so LoRAs already "
                        "on the model stay applied. Put files in models/tuneavideo or output/tuneavideo.",
            inputs=[
                io.Model.Input("model", tooltip="The base image model the weights were tuned from (SD1.x for "
                                                "official files); LoRAs on it carry over."),
                io.Combo.Input("weights", options=weight_choices(),
                               tooltip=f"A tuned-weight file or save_pretrained folder in models/{FOLDER} or "
                                       f"output/{FOLDER}."),
            ],
            outputs=[io.Model.Output(tooltip="The inflated model with the tuned weights, ready for sampling.")],
        )

    @classmethod
    def execute(cls, model, weights) -> io.NodeOutput:
        path = resolve(weights)
        try:
            return io.NodeOutput(tuned_files.load_tuned(model, path))
        except ValueError as e:
            raise ValueError(LOAD_PREFIX + str(e)) from e


register_folder()

NODES = [SaveTuned, LoadTuned]
