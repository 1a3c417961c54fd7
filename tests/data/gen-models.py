#!/usr/bin/env python3
# gen-models.py - make the project's own model fixtures under tests/data/models:
# tiny randomly initialised checkpoints of the architecture variants that
# ../shared does not cover (falcon's new decoder, alibi falcon, opt with
# post-norm and projections, rope scalings, sliding windows, ...), each with
# ref.safetensors: input_ids [2, T], logits [2, T, V] and hidden_states.N from
# transformers in float32 eager mode on the stored (rounded) weights.
#
# Needs torch + transformers (run it where they are installed):
#   python3 tests/data/gen-models.py OUTDIR
import json
import os
import sys

import torch
import transformers as tf
from safetensors.torch import save_file

torch.manual_seed(1234)
OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/data/models"
T = 40
V = 128


def perturb(model):
    # default inits leave norms at 1 and biases at 0: randomise them so that
    # a mix-up of weight and bias or of two norms cannot go unnoticed
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln" in name):
                if "gemma" in type(model).__name__.lower():
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))


def make(name, config, dtype=torch.bfloat16, edit_config=None, seq=T, attn="eager"):
    d = os.path.join(OUT, name)
    config._attn_implementation = attn
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation=attn)
    perturb(model)
    model = model.to(dtype)
    model.save_pretrained(d, safe_serialization=True)
    # reload from disk: casting the live model would also round its rotary
    # inv_freq buffer to the storage dtype, which a fresh load does not
    model = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                    attn_implementation=attn).eval()
    ids = torch.randint(0, config.vocab_size, (2, seq))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    ref = {"input_ids": ids.to(torch.int32), "logits": out.logits.float().contiguous()}
    for i, h in enumerate(out.hidden_states):
        ref[f"hidden_states.{i}"] = h.float().contiguous()
    save_file(ref, os.path.join(d, "ref.safetensors"),
              metadata={"transformers": tf.__version__, "torch": torch.__version__,
                        "note": "float32 eager reference on the stored weights"})
    if edit_config:
        path = os.path.join(d, "config.json")
        with open(path) as f:
            c = json.load(f)
        edit_config(c)
        with open(path, "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
    print("made", name, flush=True)


def legacy_rope(c):
    # the keys real checkpoints carry: rope_theta + rope_scaling
    p = c.pop("rope_parameters")
    c["rope_theta"] = p.pop("rope_theta")
    if p.get("rope_type", "default") != "default":
        c["rope_scaling"] = p


def llama(**kw):
    base = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    base.update(kw)
    return tf.LlamaConfig(**base)


def rope(kind, **kw):
    return dict(rope_parameters=dict(rope_type=kind, rope_theta=10000.0, **kw))


FIXTURES = [
    ("llama_legacy_rope", lambda: llama(rope_parameters=dict(rope_type="default", rope_theta=500000.0)),
     dict(edit_config=legacy_rope)),
    ("llama3_rope", lambda: llama(**rope("llama3", factor=8.0, low_freq_factor=1.0,
                                         high_freq_factor=4.0, original_max_position_embeddings=32)),
     dict(edit_config=legacy_rope)),
    ("llama_linear_rope", lambda: llama(**rope("linear", factor=4.0)), {}),
    ("llama_dynamic_rope", lambda: llama(max_position_embeddings=16, **rope("dynamic", factor=2.0)), {}),
    ("mistral_window", lambda: tf.MistralConfig(vocab_size=V, hidden_size=64, intermediate_size=96,
                                                num_hidden_layers=2, num_attention_heads=4,
                                                num_key_value_heads=2, sliding_window=8), {}),
    ("qwen2_window", lambda: tf.Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=96,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, use_sliding_window=True,
                                            sliding_window=8, max_window_layers=1), {}),
    ("gemma2_window", lambda: tf.Gemma2Config(vocab_size=V, hidden_size=64, intermediate_size=96,
                                              num_hidden_layers=3, num_attention_heads=4,
                                              num_key_value_heads=2, head_dim=16, sliding_window=8,
                                              query_pre_attn_scalar=16), {}),
    ("falcon_new_arch", lambda: tf.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                                num_attention_heads=8, num_kv_heads=2,
                                                new_decoder_architecture=True, parallel_attn=True,
                                                bias=False, alibi=False), {}),
    ("falcon_new_arch_1ln", lambda: tf.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                                    num_attention_heads=8, num_kv_heads=2,
                                                    new_decoder_architecture=True,
                                                    num_ln_in_parallel_attn=1, parallel_attn=True,
                                                    bias=False, alibi=False), {}),
    ("falcon_alibi", lambda: tf.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, multi_query=False,
                                             new_decoder_architecture=False, parallel_attn=False,
                                             bias=True, alibi=True),
     # transformers 5.17's eager falcon adds the alibi bias twice (once more
     # through the mask it builds for sdpa); sdpa computes (q·k + alibi)/sqrt(d)
     # as Falcon-RW was trained, so the reference comes from sdpa
     dict(dtype=torch.float16, attn="sdpa")),
    ("opt_postnorm_proj", lambda: tf.OPTConfig(vocab_size=V, hidden_size=64, word_embed_proj_dim=32,
                                               ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                               max_position_embeddings=64, do_layer_norm_before=False),
     dict(dtype=torch.float16)),
    ("gpt_bigcode_mha", lambda: tf.GPTBigCodeConfig(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                                    n_positions=64, multi_query=False),
     dict(dtype=torch.float32)),
    ("gpt2_layer_scaled", lambda: tf.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                                n_positions=64, scale_attn_by_inverse_layer_idx=True),
     dict(dtype=torch.float32)),
    ("gpt_neox_sequential", lambda: tf.GPTNeoXConfig(vocab_size=V, hidden_size=64, intermediate_size=128,
                                                     num_hidden_layers=2, num_attention_heads=4,
                                                     use_parallel_residual=False,
                                                     rope_parameters=dict(rope_type="default",
                                                                          rope_theta=10000.0,
                                                                          partial_rotary_factor=0.5)),
     dict(dtype=torch.float16)),
    ("bloom_post_ln_residual", lambda: tf.BloomConfig(vocab_size=V, hidden_size=64, n_layer=2, n_head=4,
                                                      apply_residual_connection_post_layernorm=True), {}),
    ("codegen", lambda: tf.CodeGenConfig(vocab_size=V, n_embd=64, n_layer=2, n_head=8, rotary_dim=4,
                                         n_positions=64, n_ctx=64), dict(dtype=torch.float32)),
    ("qwen3", lambda: tf.Qwen3Config(vocab_size=V, hidden_size=64, intermediate_size=96,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     head_dim=16), {}),
    ("mixtral_top2of4", lambda: tf.MixtralConfig(vocab_size=V, hidden_size=64, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 num_key_value_heads=2, num_local_experts=4,
                                                 num_experts_per_tok=2), {}),
]


def main():
    only = set(sys.argv[2:])
    os.makedirs(OUT, exist_ok=True)
    failed = []
    for name, cfg, kw in FIXTURES:
        if only and name not in only:
            continue
        try:
            make(name, cfg(), **kw)
        except Exception as e:  # keep going: report every fixture that failed
            print("FAILED", name, repr(e), flush=True)
            failed.append(name)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
