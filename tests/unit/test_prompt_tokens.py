"""tav_core.prompt_tokens and the pure parts of tav_core.attention_control, against hand-worked examples.

Tokens here are BPE strings; a word ends with a token ending in "</w>", as in CLIP's vocabulary.
"""
import pytest
import torch

from tav_core.attention_control import blend_mask, blend_start, cross_replace_steps, self_replace_window
from tav_core.prompt_tokens import (
    MAX_TOKENS,
    Prompt,
    PromptError,
    align,
    equalizer,
    refinement_mapper,
    replacement_mapper,
    token_mask,
)


def prompt(text):
    """'a water+melon</w> ,' style: tokens split on spaces, '+' joins the tokens of one word."""
    tokens = ["<start>"]
    for word in text.split():
        parts = word.split("+")
        tokens += [p for p in parts[:-1]] + [parts[-1] + "</w>"]
    return Prompt.from_tokens(text, tokens + ["<end>"], lambda t: t.endswith("</w>"))


def test_words_group_tokens_up_to_the_end_of_word_token():
    p = prompt("a water+melon ,")
    assert p.words == ((1,), (2, 3), (4,))
    assert p.length == 6
    assert p.positions("watermelon", ("water", "melon</w>")) == [2, 3]
    assert p.positions(",", (",</w>",)) == [4]


def test_a_word_matches_whole_words_only_and_every_occurrence():
    p = prompt("a wild+cat and a cat")
    assert p.positions("a", ("a</w>",)) == [1, 5]
    assert p.positions("cat", ("cat</w>",)) == [6]  # not the end of "wildcat"
    assert p.positions("a cat", ("a</w>", "cat</w>")) == [5, 6]
    with pytest.raises(PromptError, match="'dog' is not a word"):
        p.positions("dog", ("dog</w>",))


def test_prompts_longer_than_one_chunk_are_refused():
    prompt(" ".join(["x"] * 75))
    with pytest.raises(PromptError, match="76 tokens"):
        prompt(" ".join(["x"] * 76))


def test_replacement_mapper_of_a_same_length_swap_is_the_identity():
    mapper = replacement_mapper(prompt("a rabbit is eating"), prompt("a cat is eating"))
    assert torch.equal(mapper, torch.eye(MAX_TOKENS))


def test_replacement_mapper_spreads_a_word_over_more_tokens_and_shifts_the_rest():
    # source: <start> a cat sits <end> ...; edited: <start> a water melon sits <end> ...
    mapper = replacement_mapper(prompt("a cat sits"), prompt("a water+melon sits"))
    expected = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    expected[0, 0] = expected[1, 1] = 1
    expected[2, 2] = expected[2, 3] = 0.5
    expected[3, 4] = 1  # "sits"
    for s in range(4, MAX_TOKENS - 1):
        expected[s, s + 1] = 1  # the end token and the padding, shifted by one
    assert torch.equal(mapper, expected)


def test_replacement_mapper_gathers_a_longer_source_word_into_fewer_tokens():
    mapper = replacement_mapper(prompt("a water+melon sits"), prompt("a cat sits"))
    assert mapper[2, 2] == mapper[3, 2] == 1  # both source tokens onto "cat"
    assert mapper[4, 3] == 1 and mapper[5, 4] == 1


def test_replace_needs_as_many_words():
    with pytest.raises(PromptError, match="3 words and .* has 4"):
        replacement_mapper(prompt("a cat sits"), prompt("a big cat sits"))


@pytest.mark.parametrize("source, edited, expected", [
    ("a rabbit is", "a origami rabbit is", [0, 1, -1, 2, 3, 4]),  # an added word
    ("a big cat", "a cat", [0, 1, 3, 4]),  # a dropped word
    ("a", "b", [0, -1, 2]),  # a mismatch is never aligned: two gaps score more
    ("x", "x x", [0, 1, -1, 2]),  # ties: the first "x" aligns, the later one is new
])
def test_alignment_of_hand_worked_examples(source, edited, expected):
    assert align(prompt(source).tokens, prompt(edited).tokens) == expected


def test_refinement_mapper_copies_aligned_positions_and_keeps_new_tokens():
    mapper, alphas = refinement_mapper(prompt("a rabbit is"), prompt("a origami rabbit is"))
    assert mapper[:6].tolist() == [0, 1, -1, 2, 3, 4]
    assert alphas[:6].tolist() == [1, 1, 0, 1, 1, 1]
    assert mapper[6:].tolist() == list(range(6, MAX_TOKENS)) and bool((alphas[6:] == 1).all())


def test_equalizer_and_token_mask():
    p = prompt("a cat and a water+melon")
    weights = equalizer(p, [("watermelon", ("water", "melon</w>"), 2.0), ("a", ("a</w>",), 0.5)])
    expected = torch.ones(MAX_TOKENS)
    expected[[5, 6]] = 2.0
    expected[[1, 4]] = 0.5
    assert torch.equal(weights, expected)
    assert token_mask([2, 3]).nonzero().flatten().tolist() == [2, 3]


def test_step_fractions_as_video_p2p_counts_them():
    assert cross_replace_steps(0.2, 50) == 10 and cross_replace_steps(0.8, 50) == 40
    assert cross_replace_steps(0.5, 5) == 3  # int(0.5 * 6): the alpha table has steps + 1 rows
    assert cross_replace_steps(0.0, 50) == 0
    assert self_replace_window(0.5, 50) == (0, 25) and self_replace_window(0.5, 5) == (0, 2)
    assert blend_start(50) == 10 and blend_start(4) == 0


def test_blend_mask_pools_resizes_normalises_thresholds_and_unites():
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 2.0  # the source word's peak, top left
    maps[1, 0, 3, 3] = 1.0  # the edited word's peak, bottom right
    maps[1, 0, 0, 3] = 0.29  # below 0.3 of the peak after normalising
    maps[1, 0, 3, 0] = 0.31  # above
    mask = blend_mask(maps, (8, 8), 0.3)
    expected = torch.zeros(1, 8, 8, dtype=torch.bool)
    expected[0, :4, :4] = True  # 3x3 max-pool grows the peak to rows/cols 0-1 of 4, resized x2
    expected[0, 4:, 4:] = True
    expected[0, 4:, :4] = True  # the 0.31 at (3, 0) pooled over rows 2-3, cols 0-1
    assert mask.shape == (1, 8, 8)
    assert torch.equal(mask, expected)
