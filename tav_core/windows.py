"""Frame windows for long clips, on ComfyUI's own context-window machinery (comfy/context_windows.py).

Core's IndexListContextHandler cuts the frames (the batch, dim 0) into windows by its schedules, runs
the model on each and fuses the overlaps by its fuse methods. Tune-A-Video adds one thing that core
lacks, the sparse-causal **anchor**: frame i attends to the clip's frame 0 and to frame i-1, so every
window is run with the real frames it needs in front of it.

The windowing rule, for a window of clip frames W (core's index list):
- the model runs on one video of rows A + W, where the anchors A are the clip frames that W's
  sparse-causal attention needs but W lacks, in clip order: frame 0 and frame j-1 of every j in W
  (for a contiguous window s..e with s > 1 that is [0, s-1]; the first window has none);
- in that video, the row of clip frame j attends to the row of frame 0 and to the row of frame j-1;
  an anchor whose own previous frame is not in the video attends to itself instead (frame 0 does so
  in the whole clip too);
- the anchors' outputs are dropped; only W's go into core's fusion.
Temporal attention and the video-wide GroupNorm see the rows of the window video, not the whole clip:
that is the approximation windows make. One-Shot Tune trains on windows built by the same rule.

The row layout travels to the inflated model in `transformer_options["context_window"]`, where core
already puts the window it runs; a core window without the layout is refused, never run unanchored.
"""
from __future__ import annotations

import inspect
import logging

import torch

import comfy.context_windows as core

CONTEXT_WINDOW = "context_window"  # core's transformer_options key for the window being run
SCHEDULE = core.ContextSchedules.STATIC_STANDARD
FUSE = core.ContextFuseMethods.PYRAMID


class WindowError(ValueError):
    pass


def anchors_for(index_list) -> list[int]:
    """The clip frames that the window's sparse-causal attention needs and the window lacks, in order."""
    members = set(index_list)
    needed = {0} | {j - 1 for j in index_list if j >= 1}
    return sorted(needed - members)


def layout(index_list) -> tuple[list[int], torch.Tensor]:
    """(clip frame of every row, row each row takes as its former frame) for rows anchors + window."""
    rows = anchors_for(index_list) + list(index_list)
    if 0 not in rows:
        raise WindowError("a window video must hold the clip's frame 0")
    position = {frame: row for row, frame in enumerate(rows)}
    former = [position.get(frame - 1, row) for row, frame in enumerate(rows)]
    return rows, torch.tensor(former)


def _core_window(index_list, total_frames: int) -> core.IndexListContextWindow:
    # 0.3.75 takes (index_list, dim); newer releases also want the clip's length.
    if "total_frames" in inspect.signature(core.IndexListContextWindow.__init__).parameters:
        return core.IndexListContextWindow(list(index_list), dim=0, total_frames=total_frames)
    return core.IndexListContextWindow(list(index_list), dim=0)


class AnchoredWindow(core.IndexListContextWindow):
    """A core window that hands the model its anchors in front of its own frames."""

    @classmethod
    def of(cls, window: core.IndexListContextWindow) -> "AnchoredWindow":
        anchored = cls.__new__(cls)
        anchored.__dict__.update(window.__dict__)  # whatever this core release keeps on its windows
        anchored.anchors = anchors_for(window.index_list)
        anchored.frame_rows, anchored.former_rows = layout(window.index_list)
        return anchored

    @classmethod
    def build(cls, index_list, total_frames: int) -> "AnchoredWindow":
        return cls.of(_core_window(index_list, total_frames))

    def get_tensor(self, full, device=None, dim=None, **kwargs):
        dim = self.dim if dim is None else dim
        window = super().get_tensor(full, device, dim, **kwargs)
        if not self.anchors or full.shape[dim] == 1:  # a batch-1 tensor broadcasts over the frames
            return window
        anchors = full[tuple([slice(None)] * dim + [self.anchors])].to(window.device)
        return torch.cat([anchors, window], dim=dim)

    def strip(self, rows: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """A window video's output without its anchor rows."""
        return rows.narrow(dim, len(self.anchors), rows.shape[dim] - len(self.anchors))


class AnchoredContextHandler(core.IndexListContextHandler):
    """Core's handler with the sparse-causal anchor: windows gain their anchors, outputs lose them."""

    @classmethod
    def of(cls, handler: core.IndexListContextHandler) -> "AnchoredContextHandler":
        """The same settings (schedule, fuse, length, overlap, ...) with the anchor."""
        if handler.dim != 0:
            raise WindowError(f"context windows on dim {handler.dim}: an image UNet's video holds its frames in "
                              "dim 0 (the batch). Set dim to 0.")
        anchored = cls.__new__(cls)
        anchored.__dict__.update(handler.__dict__)
        anchored._unanchored()
        return anchored

    def __init__(self, window_frames: int, window_overlap: int):
        super().__init__(core.get_matching_context_schedule(SCHEDULE), core.get_matching_fuse_method(FUSE),
                         context_length=window_frames, context_overlap=window_overlap, dim=0)
        self._unanchored()

    def _unanchored(self):
        # Newer core prepends one "causal fix" frame (index_list[0] - 1) itself; the anchors include it.
        self.causal_window_fix = False

    def set_step(self, timestep, model_options):
        # Frames ride in the batch, so the timestep holds one sigma per frame: match the first.
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        matches = torch.nonzero(torch.isclose(sigmas, timestep.flatten()[0].to(sigmas.dtype), rtol=1e-4))
        if matches.numel():
            self._step = int(matches[0].item())

    def get_context_windows(self, model, x_in, model_options):
        return [AnchoredWindow.of(w) for w in super().get_context_windows(model, x_in, model_options)]

    def get_resized_cond(self, cond_in, x_in, window, device=None):
        for cond in cond_in or []:
            _refuse_framewise_control(cond.get("control"), x_in.shape[0])
        return super().get_resized_cond(cond_in, x_in, window, device)

    def combine_context_window_results(self, x_in, sub_conds_out, sub_conds, window, *args, **kwargs):
        stripped = [window.strip(out, self.dim) for out in sub_conds_out]
        return super().combine_context_window_results(x_in, stripped, sub_conds, window, *args, **kwargs)


def _refuse_framewise_control(control, frames: int) -> None:
    # Core gives a ControlNet in a window the first frames of its hint, not the window's: refuse that.
    while control is not None:
        hint = getattr(control, "cond_hint_original", None)
        if torch.is_tensor(hint) and hint.ndim == 4 and hint.shape[0] == frames > 1:
            raise WindowError("a ControlNet or T2I-Adapter with one hint per frame cannot run in frame windows "
                              "yet (core would give every window the first frames' hints). Set window_frames "
                              "to 0, or sample a shorter excerpt.")
        control = getattr(control, "previous_controlnet", None)


def check(window_frames: int, window_overlap: int | None = None) -> None:
    """Raise WindowError naming the input for values no window can have."""
    if window_frames < 0:
        raise WindowError(f"window_frames is {window_frames}; use 0 for the whole clip, or the frames per window.")
    if window_overlap is None:
        return
    if window_overlap < 0:
        raise WindowError(f"window_overlap is {window_overlap}; use 0 or more.")
    if window_frames and window_overlap >= window_frames:
        raise WindowError(f"window_overlap {window_overlap} must be smaller than window_frames {window_frames}; "
                          "windows would not advance.")


def with_windows(patcher, window_frames: int, window_overlap: int):
    """A clone that runs the model over anchored, overlapping windows; the patcher itself if no window.

    window_frames 0 (or a window no shorter than the clip: core then runs the whole clip) is the
    unwindowed path, unchanged.
    """
    check(window_frames, window_overlap)
    if window_frames == 0:
        return patcher
    model = patcher.clone()
    model.model_options["context_handler"] = AnchoredContextHandler(window_frames, window_overlap)
    core.create_prepare_sampling_wrapper(model)  # memory estimates for one window, as core's node does
    return model


def anchor_core_handler(model_options: dict) -> None:
    """Give a core context handler (the Context Windows nodes) on an inflated model the anchor.

    Called at the start of every sampling run, on that run's own copy of the model options.
    """
    handler = model_options.get("context_handler")
    if handler is None or isinstance(handler, AnchoredContextHandler):
        return
    if type(handler) is not core.IndexListContextHandler:
        raise WindowError(f"the context handler {type(handler).__name__} cannot give Tune-A-Video's sparse-causal "
                          "attention its anchor frames; use the window_frames input of DDIM Invert and Video "
                          "Sample, or core's Context Windows (Manual) node.")
    logging.info("Tune-A-Video: core context windows run with the sparse-causal anchor (frame 0 and frame i-1).")
    model_options["context_handler"] = AnchoredContextHandler.of(handler)


def call_layout(transformer_options: dict, frames: int | None):
    """(frames per video, former row of every row or None) of the model call in progress.

    Outside a window, the video is the clip itself (`frames`, the sampler's frame count) and the former
    rows are today's (frame i-1). Inside one, it is the window video of the row layout above.
    """
    window = transformer_options.get(CONTEXT_WINDOW)
    if window is None:
        return frames, None
    rows = getattr(window, "frame_rows", None)
    if rows is None:
        raise WindowError("a context window reached the inflated model without Tune-A-Video's anchor frames, "
                          "so sparse-causal attention would lose the clip's frame 0. Use the window_frames "
                          "input of DDIM Invert and Video Sample, or core's Context Windows (Manual) node.")
    return len(rows), window.former_rows


def training_window(total_frames: int, window_frames: int, generator: torch.Generator) -> AnchoredWindow:
    """A contiguous window of `window_frames` frames with its anchors, its start drawn from `generator`."""
    start = int(torch.randint(0, total_frames - window_frames + 1, (1,), generator=generator))
    return AnchoredWindow.build(range(start, start + window_frames), total_frames)


def effective(window_frames: int, total_frames: int) -> int:
    """The window in frames, 0 when the whole clip runs at once."""
    return window_frames if 0 < window_frames < total_frames else 0
