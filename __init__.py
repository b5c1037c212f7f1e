"""Tune-A-Video for ComfyUI: registers the pack's V3 nodes and its frontend extension."""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    # Imported here, not at module level: ComfyUI's API exists only inside ComfyUI, and tools such
    # as pytest import this package on its own.
    from .nodes import TuneAVideoExtension

    return TuneAVideoExtension()
