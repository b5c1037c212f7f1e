"""Thin V3 node wrappers over tav_core, one module per stage of the pipeline."""
from comfy_api.latest import ComfyExtension, io

from . import attention_edit, model, null_text, sample, score, tune, video, weights

ALL_NODES = [*video.NODES, *model.NODES, *tune.NODES, *weights.NODES, *sample.NODES, *null_text.NODES,
             *attention_edit.NODES, *score.NODES]


class TuneAVideoExtension(ComfyExtension):
    async def on_load(self) -> None:
        from . import routes  # the HTTP routes of web/js; imported late: they need ComfyUI's server

        routes.register()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 declares on_load but never calls it; registering twice is a no-op.
        await self.on_load()
        return list(ALL_NODES)
