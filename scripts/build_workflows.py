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
                if options.get("control_after_generate"):
                    widgets_values.append("fixed")
            elif name in node.widgets:
                raise ValueError(f"{wf.name}: {node.type}.{name} is a socket, not a widget")
        ui_nodes.append({
            "id": node.id, "type": node.type, "pos": list(node.pos), "size": [300, 120],
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


def tune_a_video() -> Workflow:
    return Workflow(
        name="tune-a-video",
        note=("**Tune-A-Video, the paper's pipeline.** Load a clip, encode it, inflate the model, "
              "tune it on the clip with its source prompt, invert the clip with the empty prompt, "
              "then sample the edited prompt from the inverted noise. Paper defaults: 24 frames at "
              "512x512 (every 2nd frame), 500 tuning steps at lr 3e-5, 50 DDIM steps, cfg 12.5."),
        nodes=[
            Node(1, "CheckpointLoaderSimple", (0, 0), {"ckpt_name": DEMO_CHECKPOINT}),
            Node(2, "TAVLoadVideo", (0, 200), {"video": DEMO_CLIP, "frame_count": 24, "start_frame": 0,
                                               "frame_stride": 2, "width": 512, "height": 512,
                                               "resize_mode": "center crop"}),
            Node(3, "VAEEncode", (350, 200), links={"pixels": (2, 0), "vae": (1, 2)}),
            Node(4, "VAEDecode", (700, 200), links={"samples": (3, 0), "vae": (1, 2)}),
            Node(5, "CreateVideo", (1000, 200), links={"images": (4, 0), "fps": (2, 2)}),
            Node(6, "SaveVideo", (1300, 200), {"filename_prefix": "tuneavideo/edit", "format": "mp4",
                                               "codec": "h264"}, links={"video": (5, 0)}),
        ],
    )


WORKFLOWS = [tune_a_video]


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
