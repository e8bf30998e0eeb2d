"""Test helpers for the data pipeline: a tiny, fully local tokenizer (no Hugging Face hub).

``make_byte_tokenizer()`` builds a byte-level tokenizer whose token id for a byte is the byte
value itself (ids 0..255), so a test can compute the expected ids of any text independently of
the tokenizer with ``byte_ids(text) == list(text.encode("utf-8"))``. Special tokens follow at
256 and up (see ``SPECIAL_TOKENS``). Optional BPE merges get ids after the special tokens; they
exist to build tokenizers whose tokens merge across a prompt/response boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)
SPECIAL_IDS = {tok: 256 + i for i, tok in enumerate(SPECIAL_TOKENS)}

# One role marker per message, the message text, then EOS to end the turn; the generation
# prompt is the assistant marker. Prompt+response renders as an exact prefix extension.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map (what byte-level BPE uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_ids(text: str) -> list[int]:
    """The ids ``make_byte_tokenizer()`` (without merges) gives ``text``: its UTF-8 bytes."""
    return list(text.encode("utf-8"))


def make_byte_tokenizer(
    *,
    bos: bool = True,
    chat_template: str | None = CHAT_TEMPLATE,
    merges: Sequence[tuple[str, str]] = (),
) -> PreTrainedTokenizerFast:
    """A local byte-level ``PreTrainedTokenizerFast``: byte ``b`` is token id ``b``.

    Args:
        bos: give the tokenizer a BOS token (``<bos>``, id 256); ``False`` leaves it unset.
        chat_template: the Jinja chat template to set (``None`` for no template).
        merges: BPE merges over the byte characters, e.g. ``[("o", "w")]``; each merged token
            gets the next free id after the special tokens.

    EOS is ``<eos>`` (257), padding ``<pad>`` (258); ``<|system|>``, ``<|user|>`` and
    ``<|assistant|>`` are single special tokens (259-261).
    """
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab.update(SPECIAL_IDS)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    model = models.BPE(vocab=vocab, merges=list(merges))
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS if bos else None,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    wrapped.chat_template = chat_template
    return wrapped


def sentencepiece_like_tokenizer(layout: str = "llama2"):
    """Characters + ``▁X`` merges for the capitals, in the Llama-2 ``tokenizer.json`` layout
    (``"llama2"``: normalizer Prepend + Replace, no pre-tokenizer) or with a Metaspace
    pre-tokenizer (``"metaspace"``: newer SentencePiece conversions)."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set(" \t\n\r\x0b\x0c")) + ["▁", "\n"]
    vocab = {"<unk>": 0}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    merges = []
    for letter in string.ascii_uppercase:
        vocab["▁" + letter] = len(vocab)
        merges.append(("▁", letter))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    if layout == "llama2":
        backend.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always", split=False
        )
    backend.add_special_tokens(["<s>", "</s>", "<pad>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


DATED_TEMPLATE = (
    '{{ strftime_now("%d %b %Y") }}|{% for m in messages %}{{ m["content"] }}{% endfor %}'
)
"""A chat template that writes the day it renders (as Llama-3.x Instruct's does), then the
messages' contents: ``"<date>|<contents>"``."""


def dated_tiny_tokenizer(monkeypatch, day=None):
    """The tiny byte tokenizer with :data:`DATED_TEMPLATE`, and transformers' template clock
    moved to ``day`` (default 2 Jan 2031): a render that reads today's date shows it."""
    import datetime as dt

    from transformers.utils import chat_template_utils

    from smoothalign.models.loading import build_tiny_tokenizer

    day = day or dt.datetime(2031, 1, 2)

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return day

    monkeypatch.setattr(chat_template_utils, "datetime", Clock)
    tok = build_tiny_tokenizer()
    tok.chat_template = DATED_TEMPLATE
    return tok
