"""Load Video node: a thin V3 wrapper over tav_core.video."""
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..tav_core import video as clip_io

PREFIX = "Load Video (Tune-A-Video): "


def _input_videos():
    input_dir = folder_paths.get_input_directory()
    return sorted(f for f in os.listdir(input_dir)
                  if f.lower().endswith(clip_io.VIDEO_EXTENSIONS) and os.path.isfile(os.path.join(input_dir, f)))


def _resolve(video):
    return clip_io.resolve_input_path(video, folder_paths.get_input_directory())


class LoadVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVLoadVideo",
            display_name="Load Video (Tune-A-Video)",
            category="Tune-A-Video",
            description="Loads a short excerpt of a clip from ComfyUI's input folder as frames for "
                        "Tune-A-Video: picks every frame_stride-th frame from start_frame and resizes each to width x height.",
            inputs=[
                io.Combo.Input("video", options=_input_videos(), upload=io.UploadType.video,
                               tooltip="Video file in ComfyUI's input folder; use the upload button to add one."),
                io.Int.Input("frame_count", default=24, min=0,
                             tooltip="How many frames to load; 0 loads every frame to the end of the clip (after "
                                     "start_frame and frame_stride). Tune-A-Video tunes on 8 to 24 frames; longer "
                                     "clips want window_frames on One-Shot Tune, DDIM Invert and Video Sample. An "
                                     "excerpt that would not fit in memory is refused before decoding."),
                io.Int.Input("start_frame", default=0, min=0, tooltip="Index of the first frame to load (0 = first frame of the clip)."),
                io.Int.Input("frame_stride", default=2, min=1,
                             tooltip="Take every n-th frame: 1 keeps every frame, 2 every other one (covers twice the time)."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8, tooltip="Output width in pixels (multiple of 8)."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8, tooltip="Output height in pixels (multiple of 8)."),
                io.Combo.Input("resize_mode", options=list(clip_io.RESIZE_MODES), default="center crop",
                               tooltip="center crop: fill the frame and cut the overflow; stretch: distort to fit; "
                                       "pad: fit inside and add black bars."),
            ],
            outputs=[
                io.Image.Output(tooltip="The loaded frames as an image batch, one image per frame."),
                io.Int.Output("loaded_frame_count", display_name="frame_count", tooltip="Number of frames loaded."),
                io.Float.Output("fps", display_name="fps", tooltip="Frame rate of the loaded frames: the clip's fps divided by frame_stride."),
            ],
        )

    @classmethod
    def execute(cls, video, frame_count, start_frame, frame_stride, width, height, resize_mode) -> io.NodeOutput:
        try:
            frames, fps = clip_io.read_clip(_resolve(video), frame_count, start_frame, frame_stride,
                                            width, height, resize_mode)
        except clip_io.ClipError as e:
            raise ValueError(PREFIX + str(e)) from e
        return io.NodeOutput(torch.from_numpy(frames), len(frames), fps)

    @classmethod
    def fingerprint_inputs(cls, video, **kwargs):
        try:
            return clip_io.file_fingerprint(_resolve(video))
        except (clip_io.ClipError, OSError) as e:
            # Changes whenever the problem changes; execute then reports it.
            return str(e)

    @classmethod
    def validate_inputs(cls, video, width=None, height=None):
        # width/height are None when linked from another node; execute checks them then.
        try:
            if not os.path.isfile(_resolve(video)):
                return f"{PREFIX}Video file not found: {video}. Upload it or pick a file from the list."
            if width is not None and height is not None:
                # Declaring width/height here turns off ComfyUI's own min/max check for them.
                if not (64 <= width <= 4096 and 64 <= height <= 4096):
                    return f"{PREFIX}width and height must be 64 to 4096; got {width}x{height}. Pick a size in that range."
                clip_io.check_size(width, height)
        except clip_io.ClipError as e:
            return PREFIX + str(e)
        return True


NODES = [LoadVideo]
