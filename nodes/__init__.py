"""Thin V3 node wrappers over tav_core, one module per stage of the pipeline."""
from comfy_api.latest import ComfyExtension, io

from . import model, sample, tune, video, weights

ALL_NODES = [*video.NODES, *model.NODES, *tune.NODES, *weights.NODES, *sample.NODES]


class TuneAVideoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(ALL_NODES)
