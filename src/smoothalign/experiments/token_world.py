"""A cheap oracle world for the noisy-preference benchmark: a tiny LM, a rule as the reward.

Everything is fixed by a seed and a :class:`TokenWorldConfig`:

* **Tokens.** ``V`` content tokens (rendered as the letters ``a, b, …``), ``T`` topic tokens
  (``A, B, …``) and ``<bos>``. A prompt is ``<bos> topic n₁ … n_k`` (``k`` noise tokens);
  a response is exactly ``L`` content tokens (no end token: every response has length ``L``).
* **Oracle reward** (deterministic, independent of any policy): topic ``t`` wants the
  content tokens ``G(t) = {2t, 2t+1}`` and dislikes ``B(t) = {2t + V/2, 2t + 1 + V/2}``
  (mod ``V``); ``r*(x, y) = (#G(t) − #B(t)) / L`` over the response, in ``[−1, 1]``.
* **Reference policy.** A config-built 2-layer Llama, fine-tuned briefly (SFT) on responses
  from a random first-order Markov chain over the content tokens that ignores the topic: it
  is fluent in its own way and knows nothing of the reward, so its expected reward is ~0.
* **Pairs.** Two responses sampled from the reference for a prompt; the true preference
  ``q = P(y₁ ≻ y₂) = σ((r*(y₁) − r*(y₂)) / τ)`` (Bradley–Terry with temperature ``τ``: the
  natural ambiguity); a label drawn from it; then an exact fraction ``ε`` of the labels
  flipped (a uniformly random subset, nested across ``ε``: the pairs flipped at 0.1 are
  also flipped at 0.2). Every pair keeps ``q`` and whether it was flipped.

A policy's sequence log-probability is the sum over the ``L`` response tokens; all sequences
share one length, so no padding or masks are needed. Sampling is ancestral at temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import Tensor

LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class TokenWorldConfig:
    vocab: int = 16  # content tokens (even; at most 26)
    topics: int = 8  # topic tokens (at most vocab / 2, so the G(t) are disjoint)
    prompt_noise: int = 2  # random content tokens after the topic
    response_length: int = 8
    temperature: float = 0.1  # Bradley–Terry τ on r*; typical |r₁ − r₂| is ~0.25
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    ref_steps: int = 200  # SFT of the reference on the Markov chain's responses
    ref_batch: int = 64
    ref_lr: float = 3e-3
    markov_concentration: float = 0.5  # Dirichlet concentration of the chain's rows

    def __post_init__(self) -> None:
        checks = {
            "vocab": 2 <= self.vocab <= len(LETTERS) and self.vocab % 2 == 0,
            "topics": 1 <= self.topics <= self.vocab // 2,
            "prompt_noise": self.prompt_noise >= 0,
            "response_length": self.response_length >= 1,
            "temperature": self.temperature > 0,
            "ref_steps": self.ref_steps >= 0,
            "markov_concentration": self.markov_concentration > 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"TokenWorldConfig: invalid {bad}: {self}")

    @property
    def bos(self) -> int:
        return self.vocab + self.topics

    @property
    def vocab_size(self) -> int:
        return self.vocab + self.topics + 1

    @property
    def prompt_length(self) -> int:
        return 2 + self.prompt_noise


@dataclass
class PairSet:
    """``N`` pairs in a fixed orientation ``(y₁, y₂)`` with ``q = P(y₁ ≻ y₂)``."""

    prompts: Tensor  # [N, P] long
    first: Tensor  # [N, L] long
    second: Tensor  # [N, L] long
    q: Tensor  # [N] float64
    natural_label: Tensor  # [N] bool: True when the Bradley–Terry draw preferred y₁
    flip_order: Tensor  # [N] long: a permutation; the first round(ε·N) are flipped at ε

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def labelled(self, flip_rate: float) -> LabelledPairs:
        """The pairs as ``(chosen, rejected)`` after flipping exactly ``round(ε·N)`` labels."""
        if not 0.0 <= flip_rate <= 1.0:
            raise ValueError(f"flip_rate: must lie in [0, 1], got {flip_rate}")
        n = len(self)
        flipped = torch.zeros(n, dtype=torch.bool)
        flipped[self.flip_order[: round(flip_rate * n)]] = True
        first_chosen = self.natural_label ^ flipped
        fc = first_chosen[:, None]
        return LabelledPairs(
            prompts=self.prompts,
            chosen=torch.where(fc, self.first, self.second),
            rejected=torch.where(fc, self.second, self.first),
            q_chosen=torch.where(first_chosen, self.q, 1 - self.q),
            flipped=flipped,
        )


@dataclass
class LabelledPairs:
    prompts: Tensor  # [N, P]
    chosen: Tensor  # [N, L]
    rejected: Tensor  # [N, L]
    q_chosen: Tensor  # [N] float64: true P(chosen ≻ rejected)
    flipped: Tensor  # [N] bool


class TokenWorld:
    """One seeded world: its reward, its reference policy, and samplers of prompts and pairs."""

    name = "tokens"

    def __init__(self, config: TokenWorldConfig | None = None, seed: int = 0) -> None:
        self.config = config or TokenWorldConfig()
        self.seed = int(seed)

    # -------------------------------------------------------------------------- randomness
    def generator(self, *stream: int) -> torch.Generator:
        """An independent, reproducible stream for ``(seed, *stream)``."""
        key = np.random.SeedSequence([self.seed, 0x70C3, *stream]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(key))

    # -------------------------------------------------------------------------- the oracle
    @cached_property
    def reward_table(self) -> Tensor:
        """``[T, V]``: +1 for the topic's wanted tokens, −1 for the disliked ones, else 0."""
        c = self.config
        table = torch.zeros(c.topics, c.vocab, dtype=torch.float64)
        for t in range(c.topics):
            for k in (0, 1):
                table[t, (2 * t + k) % c.vocab] = 1.0
                table[t, (2 * t + k + c.vocab // 2) % c.vocab] = -1.0
        return table

    def reward(self, prompts: Tensor, responses: Tensor) -> Tensor:
        """``r*(x, y)`` ``[N]`` (float64) of responses ``[N, L]`` to prompts ``[N, P]``."""
        topics = prompts[:, 1] - self.config.vocab
        if (topics < 0).any() or (topics >= self.config.topics).any():
            raise ValueError("prompts: position 1 must hold a topic token")
        return self.reward_table[topics[:, None], responses].mean(-1)

    def preference(self, prompts: Tensor, first: Tensor, second: Tensor) -> Tensor:
        """True ``P(first ≻ second)`` under Bradley–Terry with temperature ``τ``."""
        diff = self.reward(prompts, first) - self.reward(prompts, second)
        return torch.sigmoid(diff / self.config.temperature)

    # -------------------------------------------------------------------------- the policy
    @cached_property
    def markov_chain(self) -> tuple[Tensor, Tensor]:
        """``(initial [V], transitions [V, V])`` of the reference's training responses."""
        c = self.config
        g = self.generator(1)
        conc = torch.full((c.vocab,), c.markov_concentration, dtype=torch.float64)
        gamma = torch._standard_gamma(conc.expand(c.vocab + 1, c.vocab).contiguous(), g)
        rows = gamma / gamma.sum(-1, keepdim=True)
        return rows[0], rows[1:]

    def sample_prompts(self, n: int, generator: torch.Generator) -> Tensor:
        c = self.config
        topics = torch.randint(c.topics, (n,), generator=generator) + c.vocab
        noise = torch.randint(c.vocab, (n, c.prompt_noise), generator=generator)
        bos = torch.full((n, 1), c.bos, dtype=torch.long)
        return torch.cat([bos, topics[:, None], noise], dim=1)

    def markov_responses(self, n: int, generator: torch.Generator) -> Tensor:
        init, trans = self.markov_chain
        out = torch.empty(n, self.config.response_length, dtype=torch.long)
        out[:, 0] = torch.multinomial(init.expand(n, -1), 1, generator=generator)[:, 0]
        for j in range(1, out.shape[1]):
            out[:, j] = torch.multinomial(trans[out[:, j - 1]], 1, generator=generator)[:, 0]
        return out

    def build_model(self) -> torch.nn.Module:
        """A fresh config-built Llama, weights seeded by the world."""
        from transformers import LlamaConfig, LlamaForCausalLM

        c = self.config
        cfg = LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden,
            intermediate_size=2 * c.hidden,
            num_hidden_layers=c.layers,
            num_attention_heads=c.heads,
            num_key_value_heads=c.heads,
            max_position_embeddings=c.prompt_length + c.response_length,
            tie_word_embeddings=False,
            bos_token_id=c.bos,
            eos_token_id=None,
            pad_token_id=None,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.generator(2).initial_seed()) % (2**63))
            model = LlamaForCausalLM(cfg)
        return model.float()

    @cached_property
    def reference(self) -> torch.nn.Module:
        """The reference policy: :meth:`build_model` fine-tuned on the Markov chain (frozen)."""
        c = self.config
        model = self.build_model().train()
        opt = torch.optim.Adam(model.parameters(), lr=c.ref_lr)
        g = self.generator(3)
        with torch.enable_grad():  # first use may come from inside a no_grad block
            for _ in range(c.ref_steps):
                prompts = self.sample_prompts(c.ref_batch, g)
                responses = self.markov_responses(c.ref_batch, g)
                loss = -self.logps(model, prompts, responses).mean() / c.response_length
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return model.eval().requires_grad_(False)

    def logps(self, model: torch.nn.Module, prompts: Tensor, responses: Tensor) -> Tensor:
        """``log π(y|x)`` ``[N]``: the sum over the response tokens. A response token is a
        content token, so the policy at a response position is the softmax of the logits
        of the ``V`` content tokens (the same distribution :meth:`sample` draws from)."""
        ids = torch.cat([prompts, responses], dim=1)
        v = self.config.vocab
        logits = model(input_ids=ids, use_cache=False).logits[:, prompts.shape[1] - 1 : -1, :v]
        token = logits.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
        return (token - torch.logsumexp(logits, -1)).sum(-1)

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, prompts: Tensor, generator: torch.Generator) -> Tensor:
        """Ancestral samples ``[N, L]`` at temperature 1 over the content tokens."""
        ids = prompts
        v = self.config.vocab
        for _ in range(self.config.response_length):
            logits = model(input_ids=ids, use_cache=False).logits[:, -1, :v].float()
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
        return ids[:, prompts.shape[1] :]

    # -------------------------------------------------------------------------- pairs
    def pairs(self, n: int, *stream: int) -> PairSet:
        """``n`` prompts with two reference samples each, their true ``q``, a Bradley–Terry
        label and a flip order; reproducible from ``(seed, *stream)``."""
        g = self.generator(4, *stream)
        prompts = self.sample_prompts(n, g)
        first = self.sample(self.reference, prompts, g)
        second = self.sample(self.reference, prompts, g)
        q = self.preference(prompts, first, second)
        natural = torch.rand(n, generator=g, dtype=torch.float64) < q
        return PairSet(prompts, first, second, q, natural, torch.randperm(n, generator=g))

    # -------------------------------------------------------------------------- text
    def render_prompt(self, prompt: Tensor) -> str:
        """``"C:gh"`` for topic C and noise tokens g, h."""
        c = self.config
        topic = LETTERS[int(prompt[1]) - c.vocab].upper()
        return topic + ":" + "".join(LETTERS[int(t)] for t in prompt[2:])

    def render_response(self, response: Tensor) -> str:
        return "".join(LETTERS[int(t)] for t in response)

    def vote_rows(
        self, pairs: PairSet, annotators: int, *, flip_rate: float = 0.0
    ) -> list[dict[str, Any]]:
        """The pairs as soft-label rows for ``smoothalign reward`` (SPEC §6): ``annotators``
        independent Bradley–Terry annotators vote on each pair (``votes ~ Binomial(K, q)``),
        and ``p_chosen`` is the vote share of ``chosen``. The label (``chosen`` first) is the
        pair's label after ``flip_rate`` flips, so the shares can disagree with it. Each row
        keeps the true ``confidence`` (``q`` of ``chosen``) and both true rewards."""
        from smoothalign.reward.data import simulate_votes

        lab = pairs.labelled(flip_rate)
        rng = np.random.default_rng([self.seed, 0x707E, annotators])
        votes = simulate_votes(lab.q_chosen.numpy(), annotators, rng)
        r_c = self.reward(lab.prompts, lab.chosen)
        r_r = self.reward(lab.prompts, lab.rejected)
        return [
            {
                "pair_id": f"tokens-{self.seed}-{i}",
                "prompt": self.render_prompt(lab.prompts[i]),
                "chosen": self.render_response(lab.chosen[i]),
                "rejected": self.render_response(lab.rejected[i]),
                "p_chosen": int(votes[i]) / annotators,
                "votes_chosen": int(votes[i]),
                "votes_total": annotators,
                "confidence": float(lab.q_chosen[i]),
                "reward_chosen": float(r_c[i]),
                "reward_rejected": float(r_r[i]),
            }
            for i in range(len(pairs))
        ]
