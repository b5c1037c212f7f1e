"""Write example_workflows/*.json (UI format) and their API-format twins from one description each.

Node definitions (inputs, their order, widget kinds, outputs) come from ComfyUI itself, loaded
in-process with the pack, so the files match what the frontend builds. The browser test checks
that the frontend turns each UI file into exactly its API twin.

    .venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tav_core.testing.comfy_inprocess import load_comfy_with_pack  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "example_workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DEMO_CLIP = "tav-demo-clip.mp4"
DEMO_CHECKPOINT = "tav-tiny-random-sd15.safetensors"


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    widgets: dict = field(default_factory=dict)  # widget input -> value
    links: dict = field(default_factory=dict)  # socket input -> (source node id, output slot)
    title: str | None = None


@dataclass
class Workflow:
    name: str
    note: str
    nodes: list[Node]


def node_info(comfy_nodes, class_type: str) -> dict:
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))}


def ordered_inputs(info: dict):
    """(name, type, options) in the frontend's order: required, then optional."""
    for section in ("required", "optional"):
        spec = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(spec)):
            entry = spec[name]
            kind = entry[0]
            options = entry[1] if len(entry) > 1 else {}
            yield name, ("COMBO" if isinstance(kind, list) else kind), options


def is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput", False)


def has_control_widget(name: str, options: dict) -> bool:
    """The frontend adds "control after generate" when asked, and by default to seed inputs."""
    control = options.get("control_after_generate")
    return bool(control) or (control is None and name in ("seed", "noise_seed"))


def ui_workflow(comfy_nodes, wf: Workflow) -> dict:
    links, ui_nodes = [], []
    out_links: dict[tuple[int, int], list[int]] = {}
    infos = {n.id: node_info(comfy_nodes, n.type) for n in wf.nodes}
    for order, node in enumerate(wf.nodes):
        info = infos[node.id]
        inputs, widgets_values = [], []
        for name, kind, options in ordered_inputs(info):
            if name in node.links:
                src, slot = node.links[name]
                link_id = len(links) + 1
                src_type = infos[src]["output"][slot]
                links.append([link_id, src, slot, node.id, len(inputs), src_type])
                out_links.setdefault((src, slot), []).append(link_id)
                entry = {"name": name, "type": kind if kind != "COMBO" else "COMBO", "link": link_id}
                if is_widget(kind, options):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
            elif is_widget(kind, options):
                if name not in node.widgets and "default" not in options and kind != "COMBO":
                    raise ValueError(f"{wf.name}: {node.type}.{name} needs a value")
                value = node.widgets.get(name, options.get("default"))
                widgets_values.append(value)
                if has_control_widget(name, options):
                    widgets_values.append("fixed")
            elif name in node.widgets:
                raise ValueError(f"{wf.name}: {node.type}.{name} is a socket, not a widget")
        ui_nodes.append({
            "id": node.id, "type": node.type, "pos": [node.pos[0] * 1.2, node.pos[1] * 1.6],
            "size": [320, 40 + 26 * max(len(inputs) + len(widgets_values), len(info["output"]))],
            "flags": {}, "order": order, "mode": 0,
            "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "slot_index": slot, "links": []}
                        for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"]))],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": widgets_values,
            **({"title": node.title} if node.title else {}),
        })
    for ui_node in ui_nodes:
        for output in ui_node["outputs"]:
            output["links"] = out_links.get((ui_node["id"], output["slot_index"]), [])
    note_id = max(n.id for n in wf.nodes) + 1
    ui_nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [0, -260], "size": [520, 220],
                     "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                     "properties": {}, "widgets_values": [wf.note], "title": "About this workflow"})
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 300]}},
            "version": 0.4}


def api_workflow(comfy_nodes, wf: Workflow) -> dict:
    prompt = {}
    for node in wf.nodes:
        info = node_info(comfy_nodes, node.type)
        inputs = {}
        for name, kind, options in ordered_inputs(info):
            if name in node.links:
                src, slot = node.links[name]
                inputs[name] = [str(src), slot]
            elif is_widget(kind, options) and (name in node.widgets or "default" in options):
                inputs[name] = node.widgets.get(name, options.get("default"))
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or info.get("display_name", node.type)}}
    return prompt


SOURCE_PROMPT = "a man is skiing"
EDIT_PROMPT = "Spider-Man is skiing on the beach, cartoon style"
TUNE = {"steps": 500, "learning_rate": 3e-5, "seed": 33, "trainable": "paper (attn1.to_q, attn2.to_q, attn_temp)",
        "gradient_checkpointing": True, "checkpoint_blocks": "all blocks", "precision": "auto", "optimizer": "AdamW",
        "cache": False}
SAMPLE = {"steps": 50, "cfg": 12.5, "seed": 33, "eta": 0.0}
CLIP = {"video": DEMO_CLIP, "frame_count": 24, "start_frame": 0, "frame_stride": 2, "width": 512, "height": 512,
        "resize_mode": "center crop"}


def prompt(id, pos, text, clip=(1, 1)):
    return Node(id, "CLIPTextEncode", pos, {"text": text}, {"clip": clip})


def save_video(id, pos, images, fps, audio, prefix):
    """VAE-decoded frames -> CreateVideo with the loaded clip's fps and sound -> SaveVideo (h264 mp4)."""
    return [Node(id, "CreateVideo", pos, links={"images": images, "fps": fps, "audio": audio}),
            Node(id + 1, "SaveVideo", (pos[0] + 320, pos[1]),
                 {"filename_prefix": prefix, "format": "mp4", "codec": "h264"}, {"video": (id, 0)})]


def clip_and_tuning(model=(1, 0)) -> list[Node]:
    """Checkpoint, clip, its latents, Inflate, One-Shot Tune with the source prompt (nodes 1-6)."""
    return [
        Node(1, "CheckpointLoaderSimple", (0, 0), {"ckpt_name": DEMO_CHECKPOINT}),
        Node(2, "TAVLoadVideo", (0, 260), dict(CLIP)),
        Node(3, "VAEEncode", (340, 260), links={"pixels": (2, 0), "vae": (1, 2)}),
        Node(4, "TAVInflateModel", (340, 0), {"seed": 0, "video_wide_groupnorm": True}, {"model": model}),
        prompt(5, (340, 120), SOURCE_PROMPT),
        Node(6, "TAVOneShotTune", (680, 0), dict(TUNE), {"model": (4, 0), "positive": (5, 0), "latent": (3, 0)}),
    ]


def inversion(model=(6, 0), latent=(3, 0)) -> list[Node]:
    """The empty prompt, and DDIM Invert of the clip under it (nodes 7-8)."""
    return [prompt(7, (680, 400), ""),
            Node(8, "TAVDDIMInvert", (1020, 260), {"steps": 50},
                 {"model": model, "latent": latent, "conditioning": (7, 0)})]


def edit(id, pos, model, positive, negative, latent, prefix) -> list[Node]:
    """Video Sample -> VAE Decode -> video file (ids id..id+3)."""
    return [Node(id, "TAVVideoSample", pos, dict(SAMPLE),
                 {"model": model, "positive": positive, "negative": negative, "latent": latent}),
            Node(id + 1, "VAEDecode", (pos[0] + 340, pos[1]), links={"samples": (id, 0), "vae": (1, 2)}),
            *save_video(id + 2, (pos[0] + 680, pos[1]), (id + 1, 0), (2, 2), (2, 3), prefix)]


def tune_a_video() -> Workflow:
    return Workflow(
        name="tune-a-video",
        note=("**Tune-A-Video, the paper's pipeline.** Load a clip, encode it, inflate the model, tune it on "
              "the clip with its source prompt, invert the clip with the empty prompt, then sample the edited "
              "prompt from the inverted noise. Paper defaults: 24 frames at 512x512 (every 2nd frame), 500 "
              "tuning steps at lr 3e-5, 50 DDIM steps, cfg 12.5. Save Tuned Weights keeps the tuning for reuse."),
        nodes=[*clip_and_tuning(), *inversion(), prompt(9, (1020, 0), EDIT_PROMPT),
               *edit(10, (1360, 0), (6, 0), (9, 0), (7, 0), (8, 0), "tuneavideo/edit"),
               Node(14, "TAVSaveTuned", (1020, 520), {"filename_prefix": "tuneavideo/man-skiing",
                                                     "source_prompt": SOURCE_PROMPT}, {"model": (6, 0)})],
    )


def reuse_tuned() -> Workflow:
    edits = ["Spider-Man is skiing on the beach, cartoon style", "a cat is skiing, Van Gogh style",
             "Wonder Woman, wearing a cowboy hat, is skiing"]
    nodes = [Node(1, "CheckpointLoaderSimple", (0, 0), {"ckpt_name": DEMO_CHECKPOINT}),
             Node(2, "TAVLoadVideo", (0, 260), dict(CLIP)),
             Node(3, "VAEEncode", (340, 260), links={"pixels": (2, 0), "vae": (1, 2)}),
             Node(6, "TAVLoadTuned", (340, 0), {"weights": "man-skiing_00001_.safetensors"}, {"model": (1, 0)}),
             *inversion()]
    for i, text in enumerate(edits):
        base = 20 + 10 * i
        nodes += [prompt(base, (1020, 420 * i), text),
                  *edit(base + 1, (1360, 420 * i), (6, 0), (base, 0), (7, 0), (8, 0), f"tuneavideo/edit-{i + 1}")]
    return Workflow(
        name="reuse-tuned-weights",
        note=("**Reuse a tuning.** Load Tuned Weights puts a saved tuning (ours, or an official Tune-A-Video "
              "UNet) on the base model; the clip is inverted once and edited with several prompts, with no "
              "re-tuning. Put the file in models/tuneavideo or output/tuneavideo."),
        nodes=nodes,
    )


def controlnet_pose() -> Workflow:
    return Workflow(
        name="controlnet-pose",
        note=("**Controllable generation (the paper's pose example).** The tuned model samples the edit under "
              "a ControlNet whose hints are a batch of frames, one per video frame: here the pose clip loaded "
              "with a second Load Video (use pose images, e.g. from an OpenPose preprocessor, with an OpenPose "
              "ControlNet). Core ControlNet nodes; the hints must have the clip's frame count."),
        nodes=[*clip_and_tuning(), *inversion(), prompt(9, (1020, 0), "Iron Man is skiing"),
               Node(30, "ControlNetLoader", (680, 700), {"control_net_name": "control_v11p_sd15_openpose.pth"}),
               Node(31, "TAVLoadVideo", (340, 700), {**CLIP, "video": "pose-clip.mp4"}),
               Node(32, "ControlNetApplyAdvanced", (1020, 700),
                    {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
                    {"positive": (9, 0), "negative": (7, 0), "control_net": (30, 0), "image": (31, 0),
                     "vae": (1, 2)}),
               *edit(10, (1360, 0), (6, 0), (32, 0), (32, 1), (8, 0), "tuneavideo/controlnet")],
    )


def personalised() -> Workflow:
    nodes = clip_and_tuning(model=(40, 0))
    nodes.insert(1, Node(40, "LoraLoader", (0, -220), {"lora_name": "my-style.safetensors",
                                                       "strength_model": 0.8, "strength_clip": 0.8},
                         {"model": (1, 0), "clip": (1, 1)}))
    for node in nodes:  # prompts through the LoRA's CLIP
        if node.type == "CLIPTextEncode":
            node.links["clip"] = (40, 1)
    inv = inversion()
    inv[0].links["clip"] = (40, 1)
    return Workflow(
        name="personalised-lora",
        note=("**Personalised.** A LoRA (or a DreamBooth checkpoint in the loader) under the tuned model: "
              "tune and sample with the personalised model, so the edit takes its subject or style. The LoRA "
              "stays a patch under the tuning; nothing is merged."),
        nodes=[*nodes, *inv, prompt(9, (1020, 0), "a sks dog is skiing", clip=(40, 1)),
               *edit(10, (1360, 0), (6, 0), (9, 0), (7, 0), (8, 0), "tuneavideo/personalised")],
    )


def text_to_video_ablation() -> Workflow:
    return Workflow(
        name="text-to-video-from-noise",
        note=("**The ablation: no inversion.** The tuned model samples the edit from seeded random noise (an "
              "empty latent with the clip's frame count) instead of the inverted clip, as in the paper's "
              "ablation: the motion is looser without the inversion's structure."),
        nodes=[*clip_and_tuning(), prompt(7, (680, 400), ""), prompt(9, (1020, 0), EDIT_PROMPT),
               Node(50, "EmptyLatentImage", (1020, 260), {"width": 512, "height": 512, "batch_size": 24}),
               *edit(10, (1360, 0), (6, 0), (9, 0), (7, 0), (50, 0), "tuneavideo/from-noise")],
    )


SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_SIZE = 768


def sdxl_prompt(id, pos, text):
    """CLIPTextEncodeSDXL with the same text for both encoders, conditioned on the clip's size."""
    size = {"width": SDXL_SIZE, "height": SDXL_SIZE, "crop_w": 0, "crop_h": 0,
            "target_width": SDXL_SIZE, "target_height": SDXL_SIZE}
    return Node(id, "CLIPTextEncodeSDXL", pos, {**size, "text_g": text, "text_l": text}, {"clip": (1, 1)})


def tune_a_video_sdxl() -> Workflow:
    nodes = [*clip_and_tuning(), *inversion(), prompt(9, (1020, 0), EDIT_PROMPT),
             *edit(10, (1360, 0), (6, 0), (9, 0), (7, 0), (8, 0), "tuneavideo/edit-sdxl"),
             Node(14, "TAVSaveTuned", (1020, 520), {"filename_prefix": "tuneavideo/man-skiing-sdxl",
                                                   "source_prompt": SOURCE_PROMPT}, {"model": (6, 0)})]
    for i, node in enumerate(nodes):
        if node.type == "CheckpointLoaderSimple":
            node.widgets["ckpt_name"] = SDXL_CHECKPOINT
        elif node.type == "TAVLoadVideo":
            node.widgets.update(width=SDXL_SIZE, height=SDXL_SIZE)
        elif node.type == "CLIPTextEncode":  # every prompt: source, empty (inversion) and edit
            # The SDXL encoder is taller: the source prompt moves below VAE Encode.
            nodes[i] = sdxl_prompt(node.id, (340, 420) if node.id == 5 else node.pos, node.widgets["text"])
    return Workflow(
        name="tune-a-video-sdxl",
        note=("**Tune-A-Video on SDXL.** The paper's pipeline with an SDXL checkpoint: every prompt (the source "
              "prompt for tuning, the empty prompt for the inversion, the edit) goes through CLIP Text Encode "
              "SDXL, whose size conditioning is the clip's size. 24 frames at 768x768 (SDXL's native 1024x1024 "
              "needs more memory: it grows with frames and pixels); the tuning, inversion and sampling settings "
              "are the paper's. SD2.x checkpoints (v-prediction included) run in the SD1.5 workflows as they are."),
        nodes=nodes,
    )


LONG_CLIP_FRAMES = 96
WINDOW = {"window_frames": 16, "window_overlap": 4}


def long_clip() -> Workflow:
    nodes = [*clip_and_tuning(), *inversion(), prompt(9, (1020, 0), EDIT_PROMPT),
             *edit(10, (1360, 0), (6, 0), (9, 0), (7, 0), (8, 0), "tuneavideo/long-clip")]
    for node in nodes:
        if node.type == "TAVLoadVideo":
            node.widgets.update(frame_count=LONG_CLIP_FRAMES, frame_stride=1)
        if node.type == "TAVOneShotTune":
            node.widgets["window_frames"] = WINDOW["window_frames"]
        if node.type in ("TAVDDIMInvert", "TAVVideoSample"):
            node.widgets.update(WINDOW)
    return Workflow(
        name="long-clip",
        note=("**A whole shot: 96 frames (4 s at 24 fps, every frame).** One-Shot Tune trains each step on a "
              "16-frame window drawn from the clip; DDIM Invert and Video Sample run the model over 16-frame "
              "windows that overlap by 4 and are blended. Every window also sees the clip's frame 0 and the frame "
              "before it (the sparse-causal anchor), so the look stays tied to the first frame. Memory depends on "
              "the window, not on the clip; time grows linearly with the frames. frame_count 0 loads the whole "
              "clip. The saved video has every frame, at the clip's fps."),
        nodes=nodes,
    )


RABBIT_SOURCE = "a rabbit is eating a watermelon"
RABBIT_EDIT = "a cat is eating a watermelon"


def attention_edit() -> Workflow:
    """Tune on the rabbit clip, null-text-invert it, then edit rabbit -> cat under attention control."""
    nodes = clip_and_tuning()
    for node in nodes:
        if node.type == "TAVLoadVideo":
            node.widgets.update(video="rabbit-watermelon.mp4")
        elif node.id == 5:
            node.widgets["text"] = RABBIT_SOURCE
    nodes += [
        prompt(7, (680, 400), ""),
        Node(8, "TAVNullTextInvert", (1020, 260),
             {"steps": 50, "cfg": 7.5, "inner_steps": 10, "epsilon": 1e-5, "fast": False},
             {"model": (6, 0), "latent": (3, 0), "positive": (5, 0), "negative": (7, 0)}),
        Node(9, "TAVAttentionEditSample", (1360, 0),
             {"source_prompt": RABBIT_SOURCE, "edited_prompt": RABBIT_EDIT, "steps": 50, "cfg": 7.5,
              "cross_replace": 0.2, "self_replace": 0.5, "controller": "replace",
              "blend_source_word": "rabbit", "blend_edited_word": "cat"},
             {"model": (6, 0), "clip": (1, 1), "latent": (8, 0)}),
        Node(10, "VAEDecode", (1700, 0), links={"samples": (9, 0), "vae": (1, 2)}),
        *save_video(11, (2040, 0), (10, 0), (2, 2), (2, 3), "tuneavideo/attention-edit"),
        Node(13, "VAEDecode", (1700, 420), links={"samples": (9, 1), "vae": (1, 2)}),
        *save_video(14, (2040, 420), (13, 0), (2, 2), (2, 3), "tuneavideo/attention-edit-source"),
    ]
    return Workflow(
        name="attention-edit",
        note=("**An edit that keeps the video (Video-P2P).** Tune on the clip, then Null-Text Inversion: the "
              "inversion under the source prompt, with every step's unconditional embedding optimised so that "
              "CFG 7.5 retraces it. Video Edit samples the source and the edited prompt together and gives the "
              "edit the source's attention maps: 'rabbit' becomes 'cat', and local blend on rabbit/cat keeps "
              "everything outside the animal from the source. The second video is the source's reconstruction: "
              "how faithful the inversion is. Use rabbit-watermelon.mp4 from the Tune-A-Video data, or your own "
              "clip and prompts."),
        nodes=nodes,
    )


WORKFLOWS = [tune_a_video, reuse_tuned, controlnet_pose, personalised, text_to_video_ablation, tune_a_video_sdxl,
             long_clip, attention_edit]


def main() -> None:
    comfy_nodes = load_comfy_with_pack()
    (OUT / "api").mkdir(parents=True, exist_ok=True)
    for make in WORKFLOWS:
        wf = make()
        for path, data in ((OUT / f"{wf.name}.json", ui_workflow(comfy_nodes, wf)),
                           (OUT / "api" / f"{wf.name}.json", api_workflow(comfy_nodes, wf))):
            path.write_text(json.dumps(data, indent=2) + "\n")
            print(path)


if __name__ == "__main__":
    main()
