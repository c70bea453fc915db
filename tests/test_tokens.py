"""Tokens on the real tokenizer: subject positions, boundary warnings, readable labels."""

from __future__ import annotations

import warnings

import pytest

from excise.tokens import encode_prompt, pad_rows, subject_positions, token_labels

pytestmark = pytest.mark.real


def test_subject_positions_and_the_boundary_warning(real_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a subject of whole words warns nothing
        assert subject_positions(real_model, "The capital of {} is", "France", warn=True) == [4]
    with pytest.warns(UserWarning, match="does not fall on token boundaries"):
        subject_positions(real_model, "The {}s cafe", "Pari", warn=True)  # "Paris" is one token


def test_labels_of_characters_split_over_tokens_are_readable(real_model):
    ids = encode_prompt(real_model, "Le musée de 東京")
    labels = token_labels(real_model, ids)
    assert "\ufffd" not in "".join(labels)
    assert " 東 (1/3)" in labels and "京 (2/2)" in labels
    assert labels[1] == "Le" and labels[0] == real_model.tokenizer.decode([ids[0]])


def test_pad_rows_masks_the_real_tokens(real_model):
    tokens, mask = pad_rows(real_model, [[1, 2, 3], [4]], width=5)
    assert tokens.shape == (2, 5) and mask.sum() == 4 and mask[1].tolist() == [1, 0, 0, 0, 0]
