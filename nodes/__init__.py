"""Thin V3 node wrappers over tav_core, one module per stage of the pipeline."""
from comfy_api.latest import ComfyExtension, io

from . import model, video

ALL_NODES = [*video.NODES, *model.NODES]


class TuneAVideoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(ALL_NODES)
