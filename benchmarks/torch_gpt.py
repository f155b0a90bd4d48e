"""The TinyGPT architecture in PyTorch, for the benchmark and the cross-checks.

The same model as ``alignment_np.nn.gpt.TinyGPT`` (pre-LN GPT-2, tied LM head,
GELU tanh, fused qkv), written the way PyTorch runs fastest in eager mode on a
CPU: ``nn.Linear`` (one ``addmm`` per layer), ``F.layer_norm``,
``F.gelu(approximate="tanh")``, ``F.scaled_dot_product_attention(is_causal=True)``.
``from_numpy`` copies a TinyGPT's weights, so both sides start from the same
numbers and the benchmark compares the same work. Generation uses its own
simple key/value cache (preallocated (B, H, T_max, hd) buffers per layer).

The language-model path and the value head (PPO's critic) are here, no
reward head, and no padding mask: the benchmark's rows are full length or
right-padded after a response's end, and under the causal mask a real token
never attends to a later (padding) position, so its output is the same with
or without the mask (TinyGPT's masked path gives the same numbers there;
padded positions are masked out of every loss). ``torch_rollout`` and
``torch_ppo_iteration`` do the work of ``alignment_np``'s ``collect_rollout``
and ``PPOTrainer.train_step``, as TRL's PPO does it in torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TorchBlock(nn.Module):
    def __init__(self, d: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc_proj = nn.Linear(4 * d, d)

    def _heads(self, qkv):
        b, t, d3 = qkv.shape
        hd = d3 // (3 * self.n_head)
        q, k, v = qkv.view(b, t, 3, self.n_head, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        return q, k, v

    def _mlp(self, x):
        return self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self._heads(self.qkv(self.ln1(x)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self._mlp(x)

    def forward_kv(self, x, k_cache, v_cache, start: int):
        """x (B, Tn, D) at positions start..start+Tn-1; writes k, v into the caches."""
        b, t, d = x.shape
        end = start + t
        q, k, v = self._heads(self.qkv(self.ln1(x)))
        k_cache[:, :, start:end] = k
        v_cache[:, :, start:end] = v
        # A prefill from position 0 is causal; one new token sees every cached key.
        y = F.scaled_dot_product_attention(
            q, k_cache[:, :, :end], v_cache[:, :, :end], is_causal=t > 1
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self._mlp(x)


class TorchGPT(nn.Module):
    """idx (B, T) -> logits (B, T, V), the LM head tied to wte."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int,
                 value_head: bool = False):
        super().__init__()
        self.n_head, self.d_model = n_head, d_model
        self.wte = nn.Parameter(torch.zeros(vocab_size, d_model))
        self.wpe = nn.Parameter(torch.zeros(block_size, d_model))
        self.blocks = nn.ModuleList(TorchBlock(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.value_head = nn.Linear(d_model, 1) if value_head else None  # PPO's critic only

    @classmethod
    def from_numpy(cls, model, value_head: bool = False) -> "TorchGPT":
        """A TorchGPT holding a copy of a TinyGPT's weights (and its dtype); with
        ``value_head``, its value head too."""
        c = model.config
        out = cls(c.vocab_size, c.block_size, c.n_layer, c.n_head, c.d_model, value_head)
        state = model.state_dict()
        out = out.to(torch.float64 if c.dtype == "float64" else torch.float32)
        with torch.no_grad():
            for name, p in out.named_parameters():
                value = torch.from_numpy(state[numpy_name(name)])
                p.copy_(value.T if _is_transposed(name) else value)
        return out

    def trunk(self, idx):
        t = idx.shape[1]
        x = self.wte[idx] + self.wpe[:t]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx):
        return self.trunk(idx) @ self.wte.T

    def values(self, idx):
        """The value head's V (B, T) at every position."""
        return self.value_head(self.trunk(idx))[..., 0]

    def init_kv_cache(self, batch_size: int, max_len: int):
        hd = self.d_model // self.n_head
        shape = (batch_size, self.n_head, max_len, hd)
        dtype = self.wte.dtype
        return [(torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)) for _ in self.blocks]

    def forward_kv(self, idx_new, kv_cache, start: int):
        """Logits (B, Tn, V) of the new tokens, appending their keys and values."""
        t = idx_new.shape[1]
        x = self.wte[idx_new] + self.wpe[start : start + t]
        for block, (k, v) in zip(self.blocks, kv_cache):
            x = block.forward_kv(x, k, v, start)
        return self.ln_f(x) @ self.wte.T


@torch.inference_mode()
def torch_generate(model: TorchGPT, prompt, max_new_tokens: int):
    """Greedy decoding with the KV cache: prompt (B, Tp) -> (new tokens, their log-probs),
    each (B, max_new_tokens), the same work as ``alignment_np.rl.generate(temperature=0)``."""
    b, tp = prompt.shape
    cache = model.init_kv_cache(b, tp + max_new_tokens)
    logits = model.forward_kv(prompt, cache, 0)[:, -1]
    out = torch.empty((b, max_new_tokens), dtype=torch.long)
    logprobs = torch.empty((b, max_new_tokens), dtype=logits.dtype)
    rows = torch.arange(b)
    for i in range(max_new_tokens):
        nxt = logits.argmax(-1)
        out[:, i] = nxt
        logprobs[:, i] = torch.log_softmax(logits, dim=-1)[rows, nxt]
        if i + 1 < max_new_tokens:
            logits = model.forward_kv(nxt[:, None], cache, tp + i)[:, -1]
    return out, logprobs


# TinyGPT parameter name <-> TorchGPT parameter name. nn.Linear keeps its
# weight as (out, in), TinyGPT as (in, out): those are transposed on copy.
_RENAMES = {
    "ln1.weight": "ln1.gamma", "ln1.bias": "ln1.beta",
    "ln2.weight": "ln2.gamma", "ln2.bias": "ln2.beta",
    "qkv.weight": "attn.w_qkv", "qkv.bias": "attn.b_qkv",
    "proj.weight": "attn.w_proj", "proj.bias": "attn.b_proj",
    "fc.weight": "mlp.fc.w", "fc.bias": "mlp.fc.b",
    "fc_proj.weight": "mlp.proj.w", "fc_proj.bias": "mlp.proj.b",
    "ln_f.weight": "ln_f.gamma", "ln_f.bias": "ln_f.beta",
    "value_head.weight": "value_head.w", "value_head.bias": "value_head.b",
}


def numpy_name(torch_name: str) -> str:
    """The TinyGPT parameter name of a TorchGPT parameter (e.g. blocks.0.qkv.weight -> blocks.0.attn.w_qkv)."""
    if torch_name.startswith("blocks."):
        _, i, rest = torch_name.split(".", 2)
        return f"blocks.{i}.{_RENAMES[rest]}"
    return _RENAMES.get(torch_name, torch_name)


def _is_transposed(torch_name: str) -> bool:
    return torch_name.endswith(("qkv.weight", "proj.weight", "fc.weight", "fc_proj.weight", "value_head.weight"))


def numpy_grad(torch_name: str, grad):
    """A TorchGPT parameter gradient in TinyGPT's layout, as a NumPy array."""
    g = grad.detach().cpu().numpy()
    return g.T if _is_transposed(torch_name) else g


# ---------------------------------------------------------------- PPO for RLHF, as TRL does it in torch


def _response_logps(model, tokens, p: int, temperature: float):
    """log_softmax(logits / tau)[token] of the response tokens after P prompt columns: (B, N)."""
    logits = model(tokens[:, :-1])[:, p - 1:] / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, p:, None])[..., 0], logits


@torch.inference_mode()
def torch_rollout(policy, reference, value_model, prompt, max_new_tokens: int, eos_id: int, pad_id: int,
                  decode, reward_fn, temperature: float = 1.0, generator=None) -> dict:
    """``alignment_np.rl.rollout.collect_rollout``'s work: sample with the KV cache at temperature
    tau until every row has produced eos (or N tokens), decode, score, then one forward of the
    policy, the reference and the value model over the whole sequences."""
    b, p = prompt.shape
    cache = policy.init_kv_cache(b, p + max_new_tokens)
    logits = policy.forward_kv(prompt, cache, 0)[:, -1]
    tokens = torch.full((b, p + max_new_tokens), pad_id, dtype=torch.long)
    tokens[:, :p] = prompt
    mask = torch.zeros((b, max_new_tokens), dtype=torch.bool)
    finished = torch.zeros(b, dtype=torch.bool)
    for i in range(max_new_tokens):
        probs = torch.softmax(logits / temperature, dim=-1)
        new = torch.multinomial(probs, 1, generator=generator)[:, 0]
        alive = ~finished
        tokens[:, p + i] = torch.where(alive, new, pad_id)
        mask[:, i] = alive
        finished |= alive & (new == eos_id)
        if bool(finished.all()):
            break
        if i + 1 < max_new_tokens:
            logits = policy.forward_kv(tokens[:, p + i : p + i + 1], cache, p + i)[:, -1]
    lengths = mask.sum(1)
    n = int(lengths.max())
    tokens, mask = tokens[:, : p + n].contiguous(), mask[:, :n]
    completions = [decode(tokens[r, p : p + int(lengths[r])].numpy()) for r in range(b)]
    scores = torch.as_tensor(reward_fn(None, completions), dtype=torch.float32)
    logps, _ = _response_logps(policy, tokens, p, temperature)
    ref_logps, _ = _response_logps(reference, tokens, p, temperature)
    values = value_model.values(tokens[:, :-1])[:, p - 1:]
    zero = torch.zeros((), dtype=logps.dtype)
    return {"tokens": tokens, "mask": mask, "prompt_length": p, "scores": scores, "lengths": lengths,
            "logps": torch.where(mask, logps, zero), "ref_logps": torch.where(mask, ref_logps, zero),
            "values": torch.where(mask, values, zero)}


def _masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def _gae(rewards, values, mask, gamma: float, lam: float):
    """GAE over each response (gamma, lambda), then the advantages whitened over the batch."""
    b, n = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype)
    for t in reversed(range(n)):
        next_value = values[:, t + 1] if t + 1 < n else torch.zeros(b, dtype=rewards.dtype)
        next_value = next_value * mask[:, t + 1] if t + 1 < n else next_value
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < n else 0)) * mask[:, t]
        adv[:, t] = last
    returns = adv + values
    m = mask.bool()
    mean, var = adv[m].mean(), adv[m].var()
    return torch.where(m, (adv - mean) * torch.rsqrt(var + 1e-8), 0.0), torch.where(m, returns, 0.0)


def torch_ppo_iteration(policy, reference, value_model, optimizer, prompt, c: dict, decode, reward_fn,
                        eos_id: int, pad_id: int, generator=None) -> None:
    """``PPOTrainer.train_step``'s work: a rollout, per-token KL rewards, GAE, then
    ``num_ppo_epochs`` x ``num_mini_batches`` clipped-surrogate + clipped-value updates
    (grad clip, AdamW), with the entropy statistic TRL logs."""
    r = torch_rollout(policy, reference, value_model, prompt, c["response_length"], eos_id, pad_id, decode,
                      reward_fn, c["temperature"], generator)
    mask = r["mask"].to(r["logps"].dtype)
    b, n = mask.shape
    p = r["prompt_length"]
    kl = (r["logps"] - r["ref_logps"]) * mask  # k1
    rewards = -c["kl_coef"] * kl
    rewards[torch.arange(b), r["lengths"] - 1] += r["scores"]
    advantages, returns = _gae(rewards, r["values"], mask, c["gamma"], c["lam"])
    params = [q for group in optimizer.param_groups for q in group["params"]]
    mb = b // c["num_mini_batches"]
    eps, eps_v = c["cliprange"], c["cliprange_value"]
    for _ in range(c["num_ppo_epochs"]):
        order = torch.randperm(b, generator=generator)
        for start in range(0, b, mb):
            idx = order[start : start + mb]
            tokens, m = r["tokens"][idx], mask[idx]
            logps, logits = _response_logps(policy, tokens, p, c["temperature"])
            values = value_model.values(tokens[:, :-1])[:, p - 1:]
            ratio = torch.exp(logps - r["logps"][idx])
            adv = advantages[idx]
            pg = _masked_mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)), m)
            old_v = r["values"][idx]
            v_clipped = old_v + (values - old_v).clamp(-eps_v, eps_v)
            ret = returns[idx]
            vf = 0.5 * _masked_mean(torch.maximum((values - ret) ** 2, (v_clipped - ret) ** 2), m)
            loss = pg + c["vf_coef"] * vf
            loss.backward()
            with torch.no_grad():  # the entropy TRL logs
                logp_all = torch.log_softmax(logits, dim=-1)
                _masked_mean(-(logp_all.exp() * logp_all).sum(-1), m)
            torch.nn.utils.clip_grad_norm_(params, c["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
