"""Perceiver AR (Hawthorne et al., 2022): autoregressive modelling of a long context through a few latents.

The input is a sequence of ids ``x`` (B, L), L <= ``max_seq_len``. Its last N positions (N = ``num_latents``) are the
latents, and each latent's query is the embedding of its own token. One causal cross-attention lets latent i read
the whole prefix and latents 0..i (queries aligned with the last N keys, see ``perceiver.attend``), then
``num_self_attention_layers`` causal self-attention layers refine the latents, and a linear map gives next-token
logits per latent: ``logits[:, i]`` predicts ``x[:, L - N + i + 1]``. The cost is linear in L (one cross-attention)
and quadratic in N only. With ``num_latents == max_seq_len`` there is no prefix and the model is a decoder-only
transformer (GPT) built of the same layers.

Positions: ``"rotary"`` (default) rotates the query and key heads of every attention layer by their positions
(``perceiver.positions.RotaryEmbedding``), as krasserm/perceiver-io's Perceiver AR does; ``"learned"`` adds one learned
vector per absolute position to the token embedding. Positions count real tokens: with a ``pad_mask`` (True =
padding, e.g. left padding) the first real token is at position 0.

Prefix dropout (training only, as in the paper): each sample keeps a random ``1 - prefix_dropout`` of its prefix
positions as the cross-attention's keys and drops the others, which also cuts the cost of a training step.

``generate`` samples with a key/value cache; see its docstring for what is cached and why it is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from perceiver.attention import Backend, attend
from perceiver.config import Pretrained, capture_config
from perceiver.init import init_latents, init_linear_layers
from perceiver.layers import CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer
from perceiver.masks import check_pad_mask
from perceiver.positions import LearnedPositionEncoding, RotaryEmbedding

AR_POSITIONS = ("rotary", "learned")


def _check_positive_int(name: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


class PerceiverAR(Pretrained, nn.Module):
    """Next-token logits (B, N, vocab_size) for the last N = ``num_latents`` positions of ids (B, L).

    Args:
        vocab_size: number of token ids (256 for bytes); ids must lie in [0, vocab_size).
        max_seq_len: longest input (prefix + latents), the model's context.
        num_latents: N, the positions that get a latent (and a prediction); at most ``max_seq_len``.
        num_channels: width of the embeddings, latents and attention.
        num_heads: heads of every attention layer.
        num_self_attention_layers: causal latent self-attention layers after the cross-attention.
        widening_factor: MLP width / ``num_channels``.
        positions: ``"rotary"`` or ``"learned"`` (see the module docstring).
        prefix_dropout: fraction of the prefix positions dropped from the cross-attention in training.
        dropout: dropout of the attention and MLP outputs.
        init_scale: None (the package's fan-in scaled init, ``perceiver.init``) or a fixed std.
        backend: attention backend of every layer (None: the dispatch's default).
    """

    def __init__(
        self,
        *,
        vocab_size: int = 256,
        max_seq_len: int = 1024,
        num_latents: int = 128,
        num_channels: int = 256,
        num_heads: int = 8,
        num_self_attention_layers: int = 6,
        widening_factor: int = 4,
        positions: str = "rotary",
        prefix_dropout: float = 0.5,
        dropout: float = 0.0,
        init_scale: float | None = None,
        backend: Backend | None = None,
    ):
        super().__init__()
        self.config = capture_config(locals())
        for name in ("vocab_size", "max_seq_len", "num_latents", "num_channels", "num_heads",
                     "num_self_attention_layers", "widening_factor"):
            _check_positive_int(name, locals()[name])
        if num_latents > max_seq_len:
            raise ValueError(f"num_latents: expected at most max_seq_len={max_seq_len}, got {num_latents}")
        if num_channels % num_heads != 0:
            raise ValueError(f"num_channels: expected a multiple of num_heads={num_heads}, got {num_channels}")
        if positions not in AR_POSITIONS:
            raise ValueError(f"positions: expected one of {AR_POSITIONS}, got {positions!r}")
        head_channels = num_channels // num_heads
        if positions == "rotary" and head_channels % 2:
            raise ValueError(f"num_channels / num_heads: expected an even head width for rotary positions, got "
                             f"{num_channels} / {num_heads} = {head_channels}")
        if not (isinstance(prefix_dropout, (int, float)) and 0 <= prefix_dropout < 1):
            raise ValueError(f"prefix_dropout: expected a fraction in [0, 1), got {prefix_dropout!r}")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.num_latents = num_latents
        self.prefix_dropout = float(prefix_dropout)

        self.embedding = nn.Embedding(vocab_size, num_channels)
        self.position_encoding = (LearnedPositionEncoding(max_shape=max_seq_len, num_channels=num_channels)
                                  if positions == "learned" else None)
        self.rotary = RotaryEmbedding(num_channels=head_channels) if positions == "rotary" else None
        self.cross_attention = CrossAttentionLayer(
            num_heads=num_heads, num_q_input_channels=num_channels, num_kv_input_channels=num_channels,
            widening_factor=widening_factor, dropout=dropout, causal=True, backend=backend)
        self.self_attention = SelfAttentionBlock(
            num_layers=num_self_attention_layers, num_heads=num_heads, num_channels=num_channels,
            widening_factor=widening_factor, dropout=dropout, causal=True, backend=backend)
        self.norm = nn.LayerNorm(num_channels)
        self.output = nn.Linear(num_channels, vocab_size)

        # The latents' residual stream passes an attention and an MLP branch per layer.
        init_linear_layers(self, init_scale, num_residual_branches=2 * (1 + num_self_attention_layers))
        # Token embeddings are the latents' starting values: unit scale, like a PerceiverEncoder's latent array.
        init_latents(self.embedding.weight, init_scale)
        if self.position_encoding is not None:
            init_latents(self.position_encoding.table, init_scale)

    # ----------------------------------------------------------------------------------------------- forward

    def forward(self, x: Tensor, pad_mask: Tensor | None = None, *, num_latents: int | None = None) -> Tensor:
        """Logits (B, n, vocab_size) of ids ``x`` (B, L): ``logits[:, i]`` predicts ``x[:, L - n + i + 1]``.

        ``n = min(num_latents, L)``; ``num_latents`` defaults to the model's and may be anything from 1 to
        ``max_seq_len`` (a latent at index i of the window is trained to predict from i + 1 latents and the prefix, so
        a shorter window is in distribution for its last latent). ``pad_mask`` (B, L): True = padding.
        """
        self._check_ids(x, "x")
        batch_size, length = x.shape
        check_pad_mask(pad_mask, batch_size, length)
        n = min(self._check_num_latents(num_latents), length)
        positions = self._positions(pad_mask, length, x.device)
        logits, _ = self._run(self._embed(x, positions), positions, pad_mask, n)
        return logits

    def _check_ids(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor) or x.dtype not in (torch.int32, torch.int64) or x.dim() != 2:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected an integer tensor (B, L) of token ids, got {got}")
        if not 1 <= x.shape[1] <= self.max_seq_len:
            raise ValueError(f"{name}: expected a length L between 1 and max_seq_len={self.max_seq_len}, got {x.shape[1]}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(f"{name}: expected ids in [0, {self.vocab_size}), got values in "
                             f"[{int(x.min())}, {int(x.max())}]")

    def _check_num_latents(self, num_latents: int | None) -> int:
        if num_latents is None:
            return self.num_latents
        if not (isinstance(num_latents, int) and 1 <= num_latents <= self.max_seq_len):
            raise ValueError(f"num_latents: expected an int in [1, max_seq_len={self.max_seq_len}], got {num_latents!r}")
        return num_latents

    @staticmethod
    def _positions(pad_mask: Tensor | None, length: int, device) -> Tensor:
        """Positions (L,) without padding, else (B, L) counting real tokens only (padding gets a real neighbour's)."""
        if pad_mask is None:
            return torch.arange(length, device=device)
        return ((~pad_mask).long().cumsum(dim=1) - 1).clamp(min=0)

    def _embed(self, ids: Tensor, positions: Tensor) -> Tensor:
        x = self.embedding(ids)
        if self.position_encoding is not None:
            x = x + self.position_encoding.encode_index(positions)
        return x

    def _angles(self, positions: Tensor, dtype: torch.dtype):
        """The rotary angles of ``positions`` (None without rotary positions), shared by every layer."""
        return None if self.rotary is None else self.rotary.angles(positions, dtype)

    def _rotate(self, heads: Tensor, angles) -> Tensor:
        return heads if angles is None else self.rotary.rotate(heads, angles)

    def _cross_keys_values(self, x: Tensor, angles) -> tuple[Tensor, Tensor]:
        """The cross-attention's key and value heads of embedded tokens: they depend on each token alone."""
        layer = self.cross_attention
        k, v = layer.attention.project_keys_values(layer.kv_norm(x))
        return self._rotate(k, angles), v

    def _cross(self, x_latent: Tensor, angles, k: Tensor, v: Tensor, pad_mask: Tensor | None) -> Tensor:
        layer = self.cross_attention
        q = self._rotate(layer.attention.project_queries(layer.q_norm(x_latent)), angles)
        x = x_latent + layer.dropout(layer.attention.attend_heads(q, k, v, pad_mask))
        return x + layer.mlp(x)

    def _self(self, layer: SelfAttentionLayer, x: Tensor, angles, pad_mask: Tensor | None,
              cache: "KeyValueCache | None" = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One causal self-attention layer; ``cache``: key/value heads of the earlier latents, grown by this call's
        (then no padding)."""
        normed = layer.norm(x)
        q = self._rotate(layer.attention.project_queries(normed), angles)
        k, v = layer.attention.project_keys_values(normed)
        k = self._rotate(k, angles)
        if cache is not None:
            k, v = cache.append(k, v)
        x = x + layer.dropout(layer.attention.attend_heads(q, k, v, pad_mask))
        return x + layer.mlp(x), (k, v)

    def _run(self, x: Tensor, positions: Tensor, pad_mask: Tensor | None, n: int):
        """Logits of the last ``n`` of the embedded tokens ``x`` (B, L, C), and every layer's key/value heads."""
        length = x.shape[1]
        positions_2d = positions.expand(x.shape[0], length)
        latent_positions = positions_2d[:, length - n:] if positions.dim() == 2 else positions[length - n:]
        latent_pad = None if pad_mask is None else pad_mask[:, length - n:]
        keys_x, keys_positions, keys_pad = x, positions, pad_mask
        if self.training and self.prefix_dropout > 0 and length - n > 1:
            keys_x, keys_positions, keys_pad = self._drop_prefix(x, positions_2d, pad_mask, length - n)
        latent_angles = self._angles(latent_positions, x.dtype)
        k, v = self._cross_keys_values(keys_x, self._angles(keys_positions, x.dtype))
        h = self._cross(x[:, length - n:], latent_angles, k, v, keys_pad)
        caches = [(k, v)]
        for layer in self.self_attention:
            h, kv = self._self(layer, h, latent_angles, latent_pad)
            caches.append(kv)
        return self.output(self.norm(h)), caches

    def _drop_prefix(self, x: Tensor, positions: Tensor, pad_mask: Tensor | None, prefix_length: int):
        """Keep a random ``1 - prefix_dropout`` of each sample's prefix positions (in order) and all latents."""
        batch_size, length, channels = x.shape
        keep = prefix_length - int(round(self.prefix_dropout * prefix_length))
        chosen = torch.rand(batch_size, prefix_length, device=x.device).topk(keep, dim=1).indices.sort(dim=1).values
        latents = torch.arange(prefix_length, length, device=x.device).expand(batch_size, -1)
        index = torch.cat([chosen, latents], dim=1)
        x = x.gather(1, index[..., None].expand(-1, -1, channels))
        return x, positions.gather(1, index), None if pad_mask is None else pad_mask.gather(1, index)

    # -------------------------------------------------------------------------------------------- generation

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        stride: int | None = None,
    ) -> Tensor:
        """Sample ``max_new_tokens`` ids after ``prompt_ids`` ((L,) or (B, L), 1 <= L <= max_seq_len); returns the
        prompt followed by the new ids, in the prompt's shape.

        ``temperature`` 0 is greedy decoding; ``top_k`` keeps the k most likely ids, ``top_p`` the smallest set whose
        probability reaches p (nucleus sampling); ``generator`` makes the draws reproducible.

        The model sees a window W of the sequence whose last n ids are latents (n <= num_latents, len(W) <=
        max_seq_len). Each new id becomes one more latent: with the cache, its cross-attention keys and values are
        appended (they depend on the token and its position alone), its query reads all of them, and each
        self-attention layer appends its keys and values to that layer's cache; earlier latents are causal, so none
        of their states change. That is exact: the logits are those of ``self(W, num_latents=n)[:, -1]``. When n
        would pass ``num_latents`` (or W the context), the window is rebuilt: W keeps its last
        ``max_seq_len - stride`` ids and n restarts at ``num_latents - stride`` (default stride: num_latents / 2),
        and one full forward fills the cache again. (Sliding the latents by one id per step cannot be cached: every
        latent's self-attention reads the first latent of the window, so dropping it changes all of their states.)
        ``use_cache=False`` computes the same windows with a full forward per id, the reference for tests.
        """
        ids, squeeze = self._check_generate_args(prompt_ids, max_new_tokens, temperature, top_k, top_p)
        stride = max(1, self.num_latents // 2) if stride is None else stride
        if not (isinstance(stride, int) and 1 <= stride <= self.num_latents):
            raise ValueError(f"stride: expected an int in [1, num_latents={self.num_latents}], got {stride!r}")
        was_training = self.training
        self.eval()
        try:
            window, n, cache, fused, new = ids, min(self.num_latents, ids.shape[1]), None, None, []
            for _ in range(max_new_tokens):
                if n > self.num_latents or window.shape[1] > self.max_seq_len:
                    window = window[:, -max(1, self.max_seq_len - stride):]
                    n, cache = min(max(1, self.num_latents - stride), window.shape[1]), None
                if not use_cache:
                    logits = self(window, num_latents=n)[:, -1]
                elif cache is None:
                    positions = torch.arange(window.shape[1], device=window.device)
                    logits, heads = self._run(self._embed(window, positions), positions, None, n)
                    logits = logits[:, -1]
                    cache = [KeyValueCache(*heads[0], capacity=self.max_seq_len)]
                    cache += [KeyValueCache(k, v, capacity=self.num_latents) for k, v in heads[1:]]
                else:
                    fused = self._fused_projections() if fused is None else fused
                    logits = self._step(window[:, -1:], window.shape[1] - 1, cache, fused)
                token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
                new.append(token)
                window, n = torch.cat([window, token[:, None]], dim=1), n + 1
        finally:
            self.train(was_training)
        out = torch.cat([ids, *[token[:, None] for token in new]], dim=1)
        return out[0] if squeeze else out

    def _fused_projections(self) -> list[tuple[Tensor, Tensor]]:
        """Per attention layer, its input projections as one matrix: (k, v) of the cross-attention, then (q, k, v)
        of each self-attention layer. One id's step is bound by reading the weights; one matrix per layer instead
        of two or three saves the calls in between (the same products, row by row)."""
        cross = self.cross_attention.attention
        parts = [(cross.k_proj, cross.v_proj)]
        parts += [(layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj)
                  for layer in self.self_attention]
        return [(torch.cat([p.weight for p in maps]), torch.cat([p.bias for p in maps])) for maps in parts]

    def _step(self, token: Tensor, position: int, cache: list["KeyValueCache"],
              fused: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Logits (B, vocab) after one new id (B, 1) at window ``position``; grows every layer's cache by one.

        The same computation as ``_run``'s for the last latent (its query sees every cached key: no mask), written
        for one position: fused input projections, heads by ``view``."""
        positions = torch.tensor([position], device=token.device)
        x = self._embed(token, positions)
        angles = self._angles(positions, x.dtype)
        layer = self.cross_attention
        k, v = _one_position_heads(nn.functional.linear(layer.kv_norm(x), *fused[0]), 2, layer.attention.num_heads)
        k, v = cache[0].append(self._rotate(k, angles), v)
        (q,) = _one_position_heads(layer.attention.q_proj(layer.q_norm(x)), 1, layer.attention.num_heads)
        h = x + _one_position_attention(layer.attention, self._rotate(q, angles), k, v)
        h = h + layer.mlp(h)
        for layer, layer_cache, projection in zip(self.self_attention, cache[1:], fused[1:]):
            q, k, v = _one_position_heads(nn.functional.linear(layer.norm(h), *projection), 3,
                                          layer.attention.num_heads)
            k, v = layer_cache.append(self._rotate(k, angles), v)
            h = h + _one_position_attention(layer.attention, self._rotate(q, angles), k, v)
            h = h + layer.mlp(h)
        return self.output(self.norm(h))[:, -1]

    def _check_generate_args(self, prompt_ids, max_new_tokens, temperature, top_k, top_p) -> tuple[Tensor, bool]:
        if not isinstance(prompt_ids, Tensor) or prompt_ids.dtype not in (torch.int32, torch.int64) \
                or prompt_ids.dim() not in (1, 2):
            got = f"{prompt_ids.dtype} of shape {tuple(prompt_ids.shape)}" if isinstance(prompt_ids, Tensor) \
                else type(prompt_ids).__name__
            raise ValueError(f"prompt_ids: expected an integer tensor (L,) or (B, L) of token ids, got {got}")
        squeeze = prompt_ids.dim() == 1
        ids = prompt_ids[None] if squeeze else prompt_ids
        if ids.shape[1] == 0 or ids.shape[0] == 0:
            raise ValueError(f"prompt_ids: expected at least one id per prompt, got an empty prompt of shape "
                             f"{tuple(prompt_ids.shape)}")
        if ids.shape[1] > self.max_seq_len:
            raise ValueError(f"prompt_ids: expected at most max_seq_len={self.max_seq_len} ids (the model's context), "
                             f"got {ids.shape[1]}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise ValueError(f"prompt_ids: expected ids in [0, {self.vocab_size}), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        if not (isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool) and max_new_tokens >= 0):
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        check_sampling(temperature, top_k, top_p, self.vocab_size)
        return ids.to(next(self.parameters()).device).long(), squeeze

    # ------------------------------------------------------------------------------------------ persistence


def _one_position_heads(projected: Tensor, parts: int, num_heads: int) -> tuple[Tensor, ...]:
    """(B, 1, parts · H · D) → ``parts`` head tensors (B, H, 1, D)."""
    batch_size = projected.shape[0]
    return projected.view(batch_size, 1, parts, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _one_position_attention(attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """One query position (B, H, 1, D) over all of ``k``, ``v``, merged and projected: (B, 1, C)."""
    out = attend(q, k, v, backend=attention.backend)
    return attention.o_proj(out.transpose(1, 2).reshape(q.shape[0], 1, -1))


class KeyValueCache:
    """Key and value heads (B, H, length, D) of one attention layer in buffers of ``capacity`` positions, so that
    growing them by one position writes that position only (no copy of the whole cache per generated id)."""

    def __init__(self, k: Tensor, v: Tensor, *, capacity: int):
        batch_size, heads, length, _ = k.shape
        self.k = k.new_empty(batch_size, heads, capacity, k.shape[-1])
        self.v = v.new_empty(batch_size, heads, capacity, v.shape[-1])
        self.k[:, :, :length] = k
        self.v[:, :, :length] = v
        self.length = length

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the heads of new positions; returns views of all cached keys and values."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise RuntimeError(f"KeyValueCache: {end} positions exceed its capacity of {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def check_sampling(temperature, top_k, top_p, vocab_size: int) -> None:
    """Raise a clear error for a sampling argument no draw can use."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0:
        raise ValueError(f"temperature: expected a finite float >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k: expected None or an int in [1, vocab_size={vocab_size}], got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0 < top_p <= 1):
        raise ValueError(f"top_p: expected None or a float in (0, 1], got {top_p!r}")


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """One id per row of ``logits`` (B, V): greedy at temperature 0, else drawn from softmax(logits / temperature)
    restricted to the ``top_k`` most likely ids and to the smallest set whose probability reaches ``top_p``."""
    check_sampling(temperature, top_k, top_p, logits.shape[-1])
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop an id when the ids more likely than it already reach top_p (the most likely id always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
