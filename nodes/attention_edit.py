"""Video Edit (attention control): Video-P2P's prompt-to-prompt edit of a tuned model's inversion."""
from comfy_api.latest import io

from ..tav_core import attention_control, attention_edit
from .sample import CATEGORY, STEPS_TOOLTIP, _latent_without_marker, _refuse_masks


def parse_reweight(words: str, values: str) -> list[tuple[str, float]]:
    """"cat, watermelon" and "2, 0.5" -> [("cat", 2.0), ("watermelon", 0.5)]; empty words: no reweight."""
    names = [w.strip() for w in words.split(",") if w.strip()]
    numbers = [v.strip() for v in values.split(",") if v.strip()]
    if len(names) != len(numbers):
        raise attention_edit.EditError(f"reweight_words has {len(names)} words but reweight_values {len(numbers)} values; give one "
                         "weight per word, both comma-separated (e.g. 'cat, watermelon' and '2, 0.5').")
    try:
        return [(name, float(number)) for name, number in zip(names, numbers)]
    except ValueError as e:
        raise attention_edit.EditError(f"reweight_values must be numbers separated by commas, not {values!r}.") from e


def parse_blend(source_word: str, edited_word: str):
    source_word, edited_word = source_word.strip(), edited_word.strip()
    if not source_word and not edited_word:
        return None
    if not source_word or not edited_word:
        raise attention_edit.EditError("local blend needs both words: blend_source_word (of the source prompt) and "
                         "blend_edited_word (of the edited prompt); leave both empty for no blend.")
    return source_word, edited_word


class AttentionEditSample(io.ComfyNode):
    PREFIX = "Video Edit (attention control): "

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TAVAttentionEditSample",
            display_name="Video Edit (attention control)",
            category=CATEGORY,
            description="Video-P2P's prompt-to-prompt edit: samples the source prompt and the edited prompt together "
                        "from one inversion, and gives the edit the source's cross-attention maps (and, early on, "
                        "its temporal maps), so that only what the words change changes. Local blend limits the "
                        "change to the region of chosen words. Best from a Null-Text Inversion latent.",
            inputs=[
                io.Model.Input("model", tooltip="The tuned, inflated model (the one the clip was inverted with)."),
                io.Clip.Input("clip", tooltip="The CLIP that encodes both prompts; its tokenizer tells the controller "
                                              "which tokens are which words."),
                io.String.Input("source_prompt", multiline=True, default="a rabbit is eating a watermelon",
                                tooltip="The prompt that describes the clip (the one it was tuned and inverted with)."),
                io.String.Input("edited_prompt", multiline=True, default="a cat is eating a watermelon",
                                tooltip="The edit: for replace, the source prompt with words swapped (same number of "
                                        "words); for refine, with words added; for reweight, usually the same prompt."),
                io.Latent.Input("latent", tooltip="Null-Text Inversion's or DDIM Invert's LATENT of the clip, "
                                                  "connected directly."),
                io.Int.Input("steps", default=50, min=1, max=999, tooltip=STEPS_TOOLTIP),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance of both videos (Video-P2P: 7.5). With null-text "
                                       "embeddings, the cfg they were optimised for."),
                io.Float.Input("cross_replace", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps (from the first) in which the edit takes the source's "
                                       "cross-attention maps. Higher keeps more of the source's layout and shape; "
                                       "lower lets the new words reshape more."),
                io.Float.Input("self_replace", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps (from the first) in which the edit takes the source's "
                                       "temporal attention maps, which carry the motion."),
                io.Combo.Input("controller", options=list(attention_control.CONTROLLERS), default="replace",
                               tooltip="replace: words swapped one for one ('rabbit' -> 'cat'). refine: words added "
                                       "('a rabbit' -> 'a origami rabbit'), aligned by tokens. reweight: the source's "
                                       "maps with the reweight words scaled (prompts of equal length)."),
                io.String.Input("reweight_words", default="", optional=True,
                                tooltip="Words of the edited prompt to strengthen or weaken, comma-separated. With "
                                        "replace or refine they reweight on top of it; required for reweight."),
                io.String.Input("reweight_values", default="", optional=True,
                                tooltip="One weight per reweight word, comma-separated (e.g. 2 strengthens, 0.5 "
                                        "weakens; 1 leaves it)."),
                io.String.Input("blend_source_word", default="", optional=True,
                                tooltip="Local blend: the word of the source prompt whose region may change (e.g. "
                                        "'rabbit'). Leave both blend words empty for no blend."),
                io.String.Input("blend_edited_word", default="", optional=True,
                                tooltip="Local blend: the word of the edited prompt that replaces it (e.g. 'cat'). "
                                        "Outside the two words' attention region the edit keeps the source video."),
                io.Float.Input("blend_threshold", default=attention_control.BLEND_THRESHOLD, min=0.0, max=1.0,
                               step=0.01, optional=True,
                               tooltip="Local blend's mask threshold on the words' attention (normalised to 1 at its "
                                       "peak); lower grows the region. Video-P2P: 0.3."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Optional: a conditioning that carries a ControlNet (ControlNet Apply's "
                                              "output), applied to both videos. Its prompt is not used."),
            ],
            outputs=[
                io.Latent.Output(display_name="edited", tooltip="The edited video's latents [frames, 4, h, w]; decode "
                                                                "them with VAE Decode."),
                io.Latent.Output(display_name="source", tooltip="The source prompt's reconstruction of the clip from the "
                                                                "same run: how faithful the inversion is."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, source_prompt, edited_prompt, latent, steps, cfg, cross_replace, self_replace,
                controller, reweight_words="", reweight_values="", blend_source_word="", blend_edited_word="",
                blend_threshold=attention_control.BLEND_THRESHOLD, conditioning=None) -> io.NodeOutput:
        _refuse_masks(latent, cls.PREFIX)
        try:
            edited, source, _ = attention_edit.edit_sample(
                model, clip, source_prompt, edited_prompt, latent, steps, cfg, cross_replace, self_replace, controller,
                reweight=parse_reweight(reweight_words, reweight_values),
                blend_words=parse_blend(blend_source_word, blend_edited_word), blend_threshold=blend_threshold,
                control=conditioning)
        except attention_edit.EditError as e:
            raise ValueError(cls.PREFIX + str(e)) from e
        return io.NodeOutput(_without_inversion(latent, edited), _without_inversion(latent, source))


def _without_inversion(latent: dict, samples) -> dict:
    """The output LATENT: the input's entries without the inversion's marker and null-text embeddings."""
    out = _latent_without_marker(latent, samples)
    out.pop(attention_edit.null_text.NULL_TEXT_KEY, None)
    return out


NODES = [AttentionEditSample]
