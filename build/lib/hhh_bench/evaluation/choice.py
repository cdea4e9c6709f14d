"""Direct log-likelihood scoring of multiple-choice items (no lm-eval), used for quick checks
inside stages and as an independent cross-check of the harness's numbers.

The score of a choice is the sum of the log-probabilities of its tokens after the chat-templated
question, exactly as lm-eval's ``multiple_choice`` ``acc`` scores it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


@torch.no_grad()
def choice_logprobs(
    model: Any, tokenizer: Any, question: str, choices: Sequence[str], device: str = "cpu"
) -> list[float]:
    """Sum log p(choice tokens | chat-templated question) for each choice."""
    ctx = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ctx_ids = tokenizer(ctx, add_special_tokens=False)["input_ids"]
    seqs = [ctx_ids + tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in choices]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):  # right padding keeps positions aligned with the context
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    out = []
    for i, s in enumerate(seqs):
        tgt = torch.tensor(s[len(ctx_ids) :], device=logp.device)
        pos = torch.arange(len(ctx_ids) - 1, len(s) - 1, device=logp.device)
        out.append(float(logp[i, pos, tgt].sum()))
    return out


def score_items(
    model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]], device: str = "cpu"
) -> dict[str, float]:
    """Accuracy (gold has the highest log-likelihood) and soft score (softmax mass on gold)."""
    if not items:
        raise ValueError("no items to score")
    was_training = model.training
    model.eval()
    acc = soft = 0.0
    for it in items:
        lp = torch.tensor(choice_logprobs(model, tokenizer, it["question"], it["choices"], device))
        gold = int(it["gold"])
        acc += float(int(lp.argmax()) == gold)
        soft += float(torch.softmax(lp, 0)[gold])
    if was_training:
        model.train()
    return {"acc": acc / len(items), "soft": soft / len(items), "n": float(len(items))}
