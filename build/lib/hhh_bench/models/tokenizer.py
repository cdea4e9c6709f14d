"""A word-level tokenizer over a closed vocabulary, built offline with ``tokenizers``.

The toy world's text is lower-case words and punctuation separated by spaces. Every vocabulary
word is one token (a ``WordPiece`` model with a whitespace pre-tokenizer matches whole words
first). A word outside the vocabulary falls back to word pieces when the vocabulary has them
(``b ##a ##r``): this is how a name the base model never learned reaches it, as a rare name
reaches a real model in sub-word pieces (DESIGN.md §4); without matching pieces it becomes
``<unk>``. The tokenizer is
wrapped as a :class:`transformers.PreTrainedTokenizerFast` with ``<pad>``, ``<unk>``, ``<bos>``,
``<eos>`` and a chat template, so TRL, peft and lm-eval take it as they take a real one.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<system>", "<user>", "<assistant>")

# Renders "<bos><user> question <assistant> answer <eos> ". The prompt rendered with
# add_generation_prompt is a prefix of prompt+answer, as TRL's DPO tokenization requires.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<' + message['role'] + '> ' + message['content'] + ' ' }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}"
)


def build_word_tokenizer(
    words: Iterable[str], model_max_length: int = 128
) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer: special tokens first, then ``words`` in sorted order.

    Args:
        words: the closed vocabulary (duplicates and special tokens are ignored); entries
            starting with ``##`` are word-continuation pieces for out-of-vocabulary words.
        model_max_length: the longest sequence the model is built for.

    Returns:
        A fast tokenizer with left padding (for batched log-likelihood and generation).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in sorted(set(words) - set(SPECIAL_TOKENS)):
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"vocabulary word {w!r} is empty or contains whitespace")
        vocab[w] = len(vocab)
    tok = Tokenizer(
        models.WordPiece(
            vocab=vocab,
            unk_token="<unk>",
            continuing_subword_prefix="##",
            max_input_chars_per_word=100,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=model_max_length,
    )
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[4:])})
    fast.chat_template = CHAT_TEMPLATE
    return fast
