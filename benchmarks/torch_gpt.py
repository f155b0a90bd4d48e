"""The TinyGPT architecture in PyTorch, for the benchmark and the cross-checks.

The same model as ``alignment_np.nn.gpt.TinyGPT`` (pre-LN GPT-2, tied LM head,
GELU tanh, fused qkv), written the way PyTorch runs fastest in eager mode on a
CPU: ``nn.Linear`` (one ``addmm`` per layer), ``F.layer_norm``,
``F.gelu(approximate="tanh")``, ``F.scaled_dot_product_attention(is_causal=True)``.
``from_numpy`` copies a TinyGPT's weights, so both sides start from the same
numbers and the benchmark compares the same work. Generation uses its own
simple key/value cache (preallocated (B, H, T_max, hd) buffers per layer).

Only the language-model path is here (no value or reward head), and no
padding: the benchmark feeds full-length rows, where TinyGPT also takes its
unmasked (causal-only) path.
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

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, d_model: int):
        super().__init__()
        self.n_head, self.d_model = n_head, d_model
        self.wte = nn.Parameter(torch.zeros(vocab_size, d_model))
        self.wpe = nn.Parameter(torch.zeros(block_size, d_model))
        self.blocks = nn.ModuleList(TorchBlock(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)

    @classmethod
    def from_numpy(cls, model) -> "TorchGPT":
        """A TorchGPT holding a copy of a TinyGPT's weights (and its dtype)."""
        c = model.config
        out = cls(c.vocab_size, c.block_size, c.n_layer, c.n_head, c.d_model)
        state = model.state_dict()
        out = out.to(torch.float64 if c.dtype == "float64" else torch.float32)
        with torch.no_grad():
            for name, p in out.named_parameters():
                value = torch.from_numpy(state[numpy_name(name)])
                p.copy_(value.T if _is_transposed(name) else value)
        return out

    def forward(self, idx):
        t = idx.shape[1]
        x = self.wte[idx] + self.wpe[:t]
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.T

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
}


def numpy_name(torch_name: str) -> str:
    """The TinyGPT parameter name of a TorchGPT parameter (e.g. blocks.0.qkv.weight -> blocks.0.attn.w_qkv)."""
    if torch_name.startswith("blocks."):
        _, i, rest = torch_name.split(".", 2)
        return f"blocks.{i}.{_RENAMES[rest]}"
    return _RENAMES.get(torch_name, torch_name)


def _is_transposed(torch_name: str) -> bool:
    return torch_name.endswith(("qkv.weight", "proj.weight", "fc.weight", "fc_proj.weight"))


def numpy_grad(torch_name: str, grad):
    """A TorchGPT parameter gradient in TinyGPT's layout, as a NumPy array."""
    g = grad.detach().cpu().numpy()
    return g.T if _is_transposed(torch_name) else g
