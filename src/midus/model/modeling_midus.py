"""MIDUS: a Llama decoder whose stack mixes decoder blocks with memory blocks.

A memory block keeps the attention of the block it was copied from but not its output projection
nor its FFN; the per-head attention outputs query a Head-wise Memory Layer (HML):

    a   = Attn'(RMSNorm(x))   # [.., H, d_h], q/k/v + RoPE + GQA + KV cache, no o_proj
    out = x + HML(a)          # the only residual add

Relative imports only: `save_pretrained` ships this folder as remote code.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)
from transformers.models.mistral.modeling_mistral import MistralAttention, MistralDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2DecoderLayer
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3DecoderLayer
from transformers.utils import can_return_tuple

from .compat import CACHE_NAMES, CACHE_ARG, MASK_CACHE, OUTPUT_CACHE, keep_last, take_cache
from .configuration_midus import MidusConfig
from .hml import HeadwiseMemoryLayer, ProductKeyMemory, ProductKeys
from .values import HiveProjection, HiveValues, MemoryValues

# the blocks of each base family (config.base_model_type): decoder layer and attention
DECODER_LAYERS = {"llama": LlamaDecoderLayer, "mistral": MistralDecoderLayer, "qwen2": Qwen2DecoderLayer,
                  "qwen3": Qwen3DecoderLayer}
ATTENTIONS = {"llama": LlamaAttention, "mistral": MistralAttention, "qwen2": Qwen2Attention, "qwen3": Qwen3Attention}


class MidusHeadsAttention(LlamaAttention):
    """The base family's attention without o_proj: returns the per-head outputs [B, T, H, d_h].
    q/k/v (with biases for qwen2) and the per-head q/k norms before RoPE (qwen3) are the family's.

    The attention function comes from ALL_ATTENTION_FUNCTIONS: transformers' own return [B, T, H, d_h],
    vLLM's (its Transformers backend) returns [tokens, H*d_h]; both are reshaped to heads here."""

    def __init__(self, config: MidusConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        del self.o_proj
        family = ATTENTIONS[config.base_model_type](config, layer_idx)
        self.q_proj, self.k_proj, self.v_proj = family.q_proj, family.k_proj, family.v_proj
        self.q_norm, self.k_norm = getattr(family, "q_norm", None), getattr(family, "k_norm", None)
        sliding = config.layer_types[layer_idx] == "sliding_attention"
        self.sliding_window = config.sliding_window if sliding else None

    def forward(self, hidden_states, position_embeddings, attention_mask=None, cache=None, **kwargs):
        hidden_shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape)
        key = self.k_proj(hidden_states).view(hidden_shape)
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)

        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        heads_output, _ = attention(
            self, query, key, value, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
            sliding_window=self.sliding_window, **kwargs,
        )
        return heads_output.reshape(hidden_shape)  # [B, T, H, d_h]


class MidusMemoryBlock(GradientCheckpointingLayer):
    """x + HML(Attn'(RMSNorm(x))): no FFN, no post-attention norm."""

    def __init__(self, config: MidusConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = MidusHeadsAttention(config, layer_idx)
        self.memory = HeadwiseMemoryLayer(config, owns_bank=not config.memory["share_bank"])

    def forward(self, hidden_states, attention_mask=None, position_ids=None, use_cache=False,
                position_embeddings=None, shared_bank=None, **kwargs):
        # the cache comes under transformers' name, so that gradient checkpointing can drop it
        cache = kwargs.pop(CACHE_ARG, None)
        heads_output = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings=position_embeddings,
            attention_mask=attention_mask, cache=cache, **kwargs,
        )
        return hidden_states + self.memory(heads_output, shared_bank)


class MidusPKMBlock(LlamaDecoderLayer):
    """The memory-layer baseline: a full decoder block (the base family's attention) whose FFN is a
    classic product-key memory."""

    def __init__(self, config: MidusConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.self_attn = ATTENTIONS[config.base_model_type](config, layer_idx)
        self.mlp = ProductKeyMemory(config)


BLOCKS = {"decoder": LlamaDecoderLayer, "memory": MidusMemoryBlock, "pkm": MidusPKMBlock}


def block_class(config: MidusConfig, kind: str) -> type[nn.Module]:
    """Decoder blocks are the base family's own; memory and pkm blocks are ours."""
    return DECODER_LAYERS[config.base_model_type] if kind == "decoder" else BLOCKS[kind]


class MidusPreTrainedModel(PreTrainedModel):
    config: MidusConfig
    config_class = MidusConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = [*(layer.__name__ for layer in DECODER_LAYERS.values()), "MidusMemoryBlock", "MidusPKMBlock"]
    _skip_keys_device_placement = list(CACHE_NAMES)
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # tests/model/test_compile.py
    _can_record_outputs = {}

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        zero_init = self.config.memory["zero_init"]
        if isinstance(module, ProductKeys):
            bound = module.keys.shape[-1] ** -0.5
            init.uniform_(module.keys, -bound, bound)
        elif isinstance(module, MemoryValues) and module.bank is not None:
            init_bank(module.bank, isinstance(module, HiveValues), zero_init, self.config.initializer_range)
        if isinstance(module, HiveProjection) and zero_init == "proj":
            init.zeros_(module.weight)
        if isinstance(module, MidusModel) and module.shared_bank is not None:
            init_bank(module.shared_bank, self.config.memory["values"] == "hive", zero_init, self.config.initializer_range)


def init_bank(bank: torch.Tensor, hive: bool, zero_init: str, std: float) -> None:
    """`memory.zero_init` picks the tensor that starts at zero, so that an inserted block is the identity:
    - proj (default): HIVE's P = 0, its latent bank U ~ N(0, 1/r);
    - bank: U = 0, P random (the Linear's init, N(0, initializer_range));
    - none: both random: not the identity, a small perturbation of the base.
    The value tables of the other kinds (per-head, shared, PKM's) have no P: they start at zero unless
    zero_init is none (then N(0, initializer_range))."""
    if hive and zero_init != "bank":
        init.normal_(bank, std=bank.shape[-1] ** -0.5)
    elif not hive and zero_init == "none":
        init.normal_(bank, std=std)
    else:
        init.zeros_(bank)


class MidusModel(MidusPreTrainedModel):
    def __init__(self, config: MidusConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [block_class(config, kind)(config, layer_idx) for layer_idx, kind in enumerate(config.layer_kinds)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.shared_bank = None
        if config.memory["share_bank"]:
            shapes = {layer.memory.values.bank_shape for layer in self.layers if isinstance(layer, MidusMemoryBlock)}
            if len(shapes) != 1:
                raise ValueError("share_bank needs at least one memory block")
            self.shared_bank = nn.Parameter(torch.empty(shapes.pop()))
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """The KV cache comes as `cache=` (transformers >= 5.24) or `past_key_values=` (before)."""
        cache = take_cache(cache, past_key_values, kwargs)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if use_cache is None:
            use_cache = self.config.use_cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        # one mask per layer type; `generate` with a static cache passes them ready-made, by type
        if not isinstance(masks := attention_mask, dict):
            mask_kwargs = dict(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{MASK_CACHE: cache},
            )
            masks = {"full_attention": create_causal_mask(**mask_kwargs)}
            if "sliding_attention" in self.config.layer_types:
                masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_kwargs)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer, layer_type in zip(self.layers[: self.config.num_hidden_layers], self.config.layer_types):
            extra = {"shared_bank": self.shared_bank} if isinstance(layer, MidusMemoryBlock) else {}
            hidden_states = layer(
                hidden_states,
                attention_mask=masks[layer_type],
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                use_cache=use_cache,
                **{CACHE_ARG: cache},
                **extra,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{OUTPUT_CACHE: cache})


class MidusForCausalLM(MidusPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MidusConfig):
        super().__init__(config)
        self.model = MidusModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=take_cache(cache, past_key_values, kwargs),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = self.lm_head(keep_last(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{OUTPUT_CACHE: getattr(outputs, OUTPUT_CACHE)})


__all__ = ["MidusPreTrainedModel", "MidusModel", "MidusForCausalLM", "MidusMemoryBlock", "MidusPKMBlock"]
