"""Which tokens of a prompt are which words, and how two prompts' tokens correspond (prompt-to-prompt).

The controllers of attention_control.py edit cross-attention maps column by column, one column per
token of the 77-token chunk the CLIP encodes. Everything here works on those token positions:

- A `Prompt` holds the chunk's content tokens (start token, the text's tokens, end token) and their
  grouping into words. A word is a run of tokens that ends with an end-of-word BPE token (CLIP marks
  them "</w>"), so "rabbit," is two words, "rabbit" and ",", and a word split into several tokens
  ("water" "melon</w>") is one. An embedding vector of the prompt is a word of its own.
- A user's word ("rabbit", or a phrase "red car") is tokenized alone and found as a run of whole
  words; every occurrence counts (as Video-P2P's get_word_inds).
- `replacement_mapper`: for a word swap (prompts with the same number of words), the [77, 77]
  matrix M with edited map = source map @ M: the unchanged words and the end/padding tokens map one
  to one; a swapped word's source tokens map one to one to the new word's when they are as many,
  else every source token spreads its weight evenly over the new word's tokens.
- `refinement_mapper`: for added words, a global alignment of the two token sequences (the longest
  common subsequence, gap 0, match 1, mismatch -1 as prompt-to-prompt's), giving for every edited
  position the source position it copies or none.
- `equalizer`: the per-position weights of a reweight edit.

`comfy_prompt` and `comfy_word` read the tokens from ComfyUI's CLIP tokenizer (SD1.x, SD2.x, SDXL),
so the positions are those of exactly what CLIP Text Encode feeds the model, weights syntax
"(word:1.2)" included.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Hashable, Sequence

import torch

MAX_TOKENS = 77  # one CLIP chunk: start token, up to 75 text tokens, end token


class PromptError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A prompt's content tokens (start .. end token) in the encoded chunk and their words."""

    text: str
    tokens: tuple[Hashable, ...]
    words: tuple[tuple[int, ...], ...]  # chunk positions of each word's tokens, in order

    @classmethod
    def from_tokens(cls, text: str, tokens: Sequence[Hashable], ends_word: Callable[[Hashable], bool]) -> "Prompt":
        """`tokens`: start token, the text's tokens, end token. `ends_word(token)`: True for a word's last token."""
        if len(tokens) > MAX_TOKENS:
            raise PromptError(f"the prompt {text!r} has {len(tokens) - 2} tokens; attention control needs prompts "
                              f"of at most {MAX_TOKENS - 2} tokens (one CLIP chunk). Shorten it.")
        words, current = [], []
        for position in range(1, len(tokens) - 1):
            current.append(position)
            if ends_word(tokens[position]):
                words.append(tuple(current))
                current = []
        if current:  # a text ending inside a word (an embedding's vectors, or a truncated word)
            words.append(tuple(current))
        return cls(text, tuple(tokens), tuple(words))

    @property
    def length(self) -> int:
        """Content tokens including the start and end tokens (the official tokenizer.encode length)."""
        return len(self.tokens)

    def word_tokens(self, index: int) -> tuple:
        return tuple(self.tokens[p] for p in self.words[index])

    def positions(self, word: str, word_tokens: Sequence[Hashable]) -> list[int]:
        """Chunk positions of every occurrence of `word_tokens` as a run of whole words."""
        target = tuple(word_tokens)
        if not target:
            raise PromptError(f"{word!r} has no tokens; give a word of the prompt.")
        found = []
        for first in range(len(self.words)):
            run = []
            for last in range(first, len(self.words)):
                run += self.words[last]
                if len(run) >= len(target):
                    break
            if tuple(self.tokens[p] for p in run) == target:
                found += run
        if not found:
            raise PromptError(f"{word!r} is not a word of the prompt {self.text!r}.")
        return found


def token_mask(positions: Sequence[int]) -> torch.Tensor:
    """[77] with 1 at `positions`."""
    mask = torch.zeros(MAX_TOKENS)
    mask[list(positions)] = 1.0
    return mask


def replacement_mapper(source: Prompt, edited: Prompt) -> torch.Tensor:
    """[77, 77] M for a word swap: the edited prompt's maps are the source's maps @ M."""
    if len(source.words) != len(edited.words):
        raise PromptError(f"replace swaps words one for one, but {source.text!r} has {len(source.words)} words and "
                          f"{edited.text!r} has {len(edited.words)} (punctuation counts as a word). Use refine to "
                          "add words.")
    mapper = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    mapper[0, 0] = 1.0  # start token
    for s, e in zip(source.words, edited.words):
        if len(s) == len(e):
            mapper[list(s), list(e)] = 1.0
        else:
            for target in e:
                mapper[list(s), target] = 1.0 / len(e)
    # The end token and the padding after it, one to one from where each prompt's words end, as far as
    # the chunk reaches.
    source_tail = range(source.length - 1, MAX_TOKENS)
    for s, e in zip(source_tail, range(edited.length - 1, MAX_TOKENS)):
        mapper[s, e] = 1.0
    return mapper


def align(source: Sequence[Hashable], edited: Sequence[Hashable]) -> list[int]:
    """For each edited token, the index of the source token it aligns with, or -1.

    A global alignment with gap 0, match 1 and mismatch -1: a mismatch never beats two gaps, so it is
    the longest common subsequence. Among optimal alignments, the one prompt-to-prompt's traceback
    picks: walking back from the ends, leave the edited token unaligned when that stays optimal,
    else drop the source token, else match.
    """
    n, m = len(source), len(edited)
    common = [[0] * (m + 1) for _ in range(n + 1)]  # common[i][j]: LCS of source[:i], edited[:j]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            if source[i - 1] == edited[j - 1]:
                common[i][j] = common[i - 1][j - 1] + 1
            else:
                common[i][j] = max(common[i - 1][j], common[i][j - 1])
    aligned = [-1] * m
    i, j = n, m
    while i > 0 or j > 0:
        if j > 0 and common[i][j] == common[i][j - 1]:
            j -= 1  # edited[j] unaligned
        elif i > 0 and common[i][j] == common[i - 1][j]:
            i -= 1  # source[i] dropped
        else:
            i, j = i - 1, j - 1
            aligned[j] = i
    return aligned


def refinement_mapper(source: Prompt, edited: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper [77] long, alphas [77]) for added words: edited position j copies source position mapper[j]
    where alphas[j] is 1 and keeps its own map where it is 0 (tokens the source lacks, mapper -1: the
    column it picks, the last, is weighted 0; -1 as in prompt-to-prompt, so the tables compare equal).

    Past the edited prompt's end token, position j copies source position j (the padding).
    """
    aligned = align(source.tokens, edited.tokens)
    mapper = torch.arange(MAX_TOKENS)
    alphas = torch.ones(MAX_TOKENS)
    for j, i in enumerate(aligned):
        mapper[j] = i
        alphas[j] = float(i >= 0)
    return mapper, alphas


def equalizer(prompt: Prompt, weighted: Sequence[tuple[str, Sequence[Hashable], float]]) -> torch.Tensor:
    """[77] weights: `value` at every position of each (word, word_tokens, value), 1 elsewhere."""
    weights = torch.ones(MAX_TOKENS)
    for word, tokens, value in weighted:
        weights[prompt.positions(word, tokens)] = float(value)
    return weights


# --- ComfyUI's tokenizers ---------------------------------------------------------------------------

def _word_tokenizers(tokenizer) -> list:
    """The SDTokenizer(s) inside ComfyUI's CLIP tokenizer: SD1Tokenizer's one, SDXLTokenizer's clip_l and clip_g."""
    found = [value for value in vars(tokenizer).values()
             if hasattr(value, "tokenize_with_weights") and hasattr(value, "inv_vocab") and hasattr(value, "tokenizer")]
    if not found:
        raise PromptError(f"attention control needs a CLIP tokenizer (SD1.x, SD2.x, SDXL), not "
                          f"{type(tokenizer).__name__}.")
    return found


def _token_key(token) -> Hashable:
    if isinstance(token, int):
        return token
    # An embedding vector (textual inversion): equal vectors are the same token.
    tensor = token.detach().cpu().float().contiguous()
    return "embedding:" + hashlib.blake2b(tensor.numpy().tobytes(), digest_size=8).hexdigest()


def _content(chunk, start_token, end_token) -> list:
    keys = [_token_key(token) for token, *_ in chunk]
    if start_token is not None and keys[:1] != [start_token]:
        raise PromptError("the tokenizer's chunk does not begin with its start token.")
    if end_token not in keys[1:]:
        raise PromptError("the tokenizer's chunk has no end token.")
    return keys[:keys.index(end_token, 1) + 1]


def comfy_prompt(clip, text: str) -> tuple[Prompt, dict]:
    """(Prompt, ComfyUI tokens) of `text` with `clip`'s tokenizer; the tokens are what to encode."""
    if not isinstance(text, str):
        raise PromptError(f"a prompt must be text, not {type(text).__name__}.")
    tokens = clip.tokenize(text)
    word_tokenizer = _word_tokenizers(clip.tokenizer)[0]
    contents = []
    for key, chunks in tokens.items():
        if len(chunks) != 1:
            raise PromptError(f"the prompt {text!r} is longer than {MAX_TOKENS} tokens ({len(chunks)} CLIP chunks); "
                              f"attention control needs one chunk (at most {MAX_TOKENS - 2} tokens). Shorten it.")
        contents.append(_content(chunks[0], word_tokenizer.start_token, word_tokenizer.end_token))
    if any(content != contents[0] for content in contents):
        raise PromptError(f"the text encoders of this CLIP tokenize {text!r} differently ({', '.join(tokens)}); "
                          "attention control needs one token layout.")
    vocabulary = word_tokenizer.inv_vocab

    def ends_word(token) -> bool:
        return not isinstance(token, int) or vocabulary.get(token, "").endswith("</w>")

    return Prompt.from_tokens(text, contents[0], ends_word), tokens


def comfy_word(clip, word: str) -> tuple[int, ...]:
    """The tokens of `word` (or phrase) alone, as they appear inside a prompt."""
    word_tokenizer = _word_tokenizers(clip.tokenizer)[0]
    ids = word_tokenizer.tokenizer(word)["input_ids"]
    return tuple(ids[word_tokenizer.tokens_start:-1])
