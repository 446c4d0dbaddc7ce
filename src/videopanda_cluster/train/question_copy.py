"""The question-copy loss (training only; a deliberate addition, not in the reference).

To answer "What shape is the red object?" among several shapes, the answering position must hold
the question's colour word so that the last layer can look up the red shape's cells by it. A
finetune of the bundled small model from random weights learns that copy by chance: the runs that
bind by colour have it after the first layer, those that do not lack it, and neither the
question-focus head nor the shape-attention loss teaches it (docs/training.md, "Nineteenth
round"). This loss asks for the copy as attention: at every position that predicts a token of an
answer whose question has a ``focus`` word, some head of Llama layer ``layer`` (1-based) should
attend to that word's tokens in the question:

    L_copy = Σ_answer positions −log(max_heads Σ focus-word positions attention + eps)

The maximum lets the layer keep its other heads for other work. The focus word is the question's
own text, so nothing outside the prompt is used; the attention rows are recomputed from the
layer's input as in ``shape_attention.py``, and the loss has no parameters of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .data import FocusedAnswer, expand_labels
from .shape_attention import attention_nll


def word_positions(ids: Sequence[int], start: int, stop: int, word: Sequence[int]) -> list[int]:
    """Positions in ``ids[start:stop]`` of every occurrence of the token sequence ``word``."""
    n = len(word)
    found: list[int] = []
    for p in range(max(start, 0), stop - n + 1):
        if list(ids[p : p + n]) == list(word):
            found += range(p, p + n)
    return found


class QuestionCopyLoss:
    """The summed loss over a batch's focus answers (module docstring)."""

    def __init__(self, layer: int, tokenizer: Any, words: Sequence[str]) -> None:
        if layer < 1:
            raise ValueError(f"the copying layer is 1-based, got {layer}")
        if not words:
            raise ValueError("the question-copy loss needs focus words in the data")
        self.layer = layer
        self.tokens = {w: tokenizer.encode(w, add_special_tokens=False) for w in words}

    def targets(
        self, ids: torch.Tensor, answers: Sequence[FocusedAnswer]
    ) -> list[tuple[int, list[int]]]:
        """``ids`` (L,): the spliced sequence's token ids (visual positions any non-token);
        ``answers``: each answer's span with its focus word (``data.answer_focus``) → each
        position of an answer with a focus word, with the word's positions in its question, the
        text since the previous answer (answers whose word is not found there are left out)."""
        listed = ids.tolist()
        found: list[tuple[int, list[int]]] = []
        question_start = 0
        for span, word in answers:
            if word is not None and len(span):
                where = word_positions(listed, question_start, span.start + 1, self.tokens[word])
                found += [(position, where) for position in span] if where else []
            question_start = span.stop + 1  # after the answer's last token and its </s>
        return found

    def loss_sum(
        self,
        llm: Any,
        hidden_states: Sequence[torch.Tensor],
        position_ids: torch.Tensor,
        answers: dict[int, list[tuple[int, list[int]]]],
    ) -> torch.Tensor:
        """``answers``: per batch row, :meth:`targets`' pairs; rows without any add nothing."""
        return attention_nll(llm, hidden_states, position_ids, self.layer, answers, heads="max")


def spliced_ids(input_ids: Sequence[int], lengths: Sequence[int], length: int) -> torch.Tensor:
    """The token ids of a spliced sequence cut to ``length`` positions (visual ones ignored)."""
    return expand_labels(input_ids, input_ids, lengths)[:length]
