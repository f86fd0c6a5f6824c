#!/usr/bin/env python3
"""Reference tensors for the wan21_dit parity tests, computed with Diffusers' WanTransformer3DModel.

Usage: make_wan_reference.py OUT_DIR

For each tiny random configuration (CASES) it writes into OUT_DIR/<case>/:
  model/                       Diffusers layout (config.json + diffusion_pytorch_model.safetensors)
  model_sharded/               the same weights as a sharded checkpoint with an index (first case)
  model_norm_out/              the output modulation as `norm_out.linear.*` instead of the top-level
                               `scale_shift_table` (identity pair as weight, table as bias)
  wan_original.safetensors     the original Wan 2.1 key layout (first case: with the ComfyUI
                               `model.diffusion_model.` prefix)
  data.safetensors             inputs, outputs and the parameter gradients of a fixed scalar loss:
      latents [B,C,F,H,W], timesteps [B], text [B,L,D_text] (rows >= length zeroed, as the Wan
      pipeline does), text_lengths [B] (int64), probe [out shape] (loss = (out * probe).sum()),
      out (fp32), out_bf16 (Diffusers loaded with torch_dtype=bf16, i.e. with its fp32 islands),
      out_all_bf16 (every parameter bf16, as the AutoModel recipe's model.to(bf16); that also
      casts the RoPE tables), out_all_bf16_fp32_rope (the same with fp32 RoPE tables),
      out_masked (each sample run alone on its unpadded text: what masking padded rows gives),
      grad.<param> (fp32 gradients of the loss)
  meta.json                    the case's shapes
and OUT_DIR/malformed/bad.safetensors (2 missing, 1 unexpected, 1 mis-shaped tensor).
run_reference.sh writes OUT_DIR/DONE (the stamp that skips regenerating) after this succeeded.
"""

import copy
import json
import math
import os
import shutil

import torch
from safetensors.torch import save_file

import reference_cases  # beside this script
from diffusers import WanTransformer3DModel

# Tiny configurations covering: several heads, odd latent frame counts, non-square latents, text
# shorter than the padded length, patch_t > 1, in != out channels, no cross-attention norm.
CASES = {
    "base": dict(
        config=dict(patch_size=[1, 2, 2], num_attention_heads=3, attention_head_dim=16, in_channels=16,
                    out_channels=16, text_dim=24, freq_dim=32, ffn_dim=80, num_layers=2,
                    cross_attn_norm=True, eps=1e-6),
        latents=[2, 16, 3, 6, 10], text_len=20, lengths=[13, 20], timesteps=[917.25, 31.5]),
    "wide": dict(
        config=dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=32, in_channels=16,
                    out_channels=16, text_dim=40, freq_dim=64, ffn_dim=128, num_layers=3,
                    cross_attn_norm=True, eps=1e-5, rope_max_seq_len=64),
        latents=[2, 16, 5, 4, 8], text_len=12, lengths=[5, 9], timesteps=[499.0, 3.0]),
    "patch_t2": dict(
        config=dict(patch_size=[2, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=8,
                    out_channels=4, text_dim=16, freq_dim=16, ffn_dim=48, num_layers=1,
                    cross_attn_norm=False, eps=1e-6),
        latents=[2, 8, 6, 4, 6], text_len=7, lengths=[7, 3], timesteps=[250.75, 999.0]),
}

# Original Wan 2.1 names -> Diffusers names (scripts/convert_wan_to_diffusers.py); inverted below.
ORIGINAL_TO_DIFFUSERS = [
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    (".self_attn.q.", ".attn1.to_q."), (".self_attn.k.", ".attn1.to_k."),
    (".self_attn.v.", ".attn1.to_v."), (".self_attn.o.", ".attn1.to_out.0."),
    (".self_attn.norm_q.", ".attn1.norm_q."), (".self_attn.norm_k.", ".attn1.norm_k."),
    (".cross_attn.q.", ".attn2.to_q."), (".cross_attn.k.", ".attn2.to_k."),
    (".cross_attn.v.", ".attn2.to_v."), (".cross_attn.o.", ".attn2.to_out.0."),
    (".cross_attn.norm_q.", ".attn2.norm_q."), (".cross_attn.norm_k.", ".attn2.norm_k."),
    (".norm3.", ".norm2."),  # the original's affine pre-cross-attention norm is Diffusers' norm2
    (".ffn.0.", ".ffn.net.0.proj."), (".ffn.2.", ".ffn.net.2."),
]


def to_original(name):
    if name == "scale_shift_table":
        return "head.modulation"
    if name.endswith(".scale_shift_table"):
        return name[: -len("scale_shift_table")] + "modulation"
    for orig, diff in ORIGINAL_TO_DIFFUSERS:
        if diff.startswith("."):
            if diff in name:
                return name.replace(diff, orig)
        elif name.startswith(diff):
            return orig + name[len(diff):]
    return name


def randomize(model, gen):
    """Non-trivial values everywhere (norm weights, biases, modulation tables included)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif ".norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def make_inputs(spec, cfg, gen):
    b, c, f, h, w = spec["latents"]
    latents = torch.randn(spec["latents"], generator=gen)
    lengths = torch.tensor(spec["lengths"], dtype=torch.int64)
    text = torch.randn(b, spec["text_len"], cfg["text_dim"], generator=gen)
    for i, n in enumerate(spec["lengths"]):
        text[i, n:] = 0  # the Wan pipeline zeroes the rows past the prompt's length
    timesteps = torch.tensor(spec["timesteps"], dtype=torch.float32)
    return latents, timesteps, text, lengths


def run(model, latents, timesteps, text):
    return model(hidden_states=latents, timestep=timesteps, encoder_hidden_states=text,
                 return_dict=False)[0]


def write_case(out_dir, name, spec, first):
    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(1234 + len(name))
    cfg = spec["config"]
    model = WanTransformer3DModel(**cfg).float().eval()
    randomize(model, gen)
    model.save_pretrained(os.path.join(case_dir, "model"), safe_serialization=True)
    if first:
        model.save_pretrained(os.path.join(case_dir, "model_sharded"), safe_serialization=True,
                              max_shard_size="40KB")

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]

    # Output modulation as an adaptive LayerNorm: linear(temb) with an identity pair and the table
    # (shift row, then scale row) as its bias.
    norm_out = dict(state)
    table = norm_out.pop("scale_shift_table")
    norm_out["norm_out.linear.weight"] = torch.cat([torch.eye(dim), torch.eye(dim)], 0)
    norm_out["norm_out.linear.bias"] = table.reshape(2 * dim).clone()
    norm_out_dir = os.path.join(case_dir, "model_norm_out")
    os.makedirs(norm_out_dir, exist_ok=True)
    shutil.copy(os.path.join(case_dir, "model", "config.json"), norm_out_dir)
    save_file(norm_out, os.path.join(norm_out_dir, "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})

    prefix = "model.diffusion_model." if first else ""
    original = {prefix + to_original(k): v for k, v in state.items()}
    assert len(original) == len(state)
    save_file(original, os.path.join(case_dir, "wan_original.safetensors"))

    latents, timesteps, text, lengths = make_inputs(spec, cfg, gen)
    model.zero_grad()
    out = run(model, latents, timesteps, text)
    probe = torch.randn(out.shape, generator=gen)
    (out * probe).sum().backward()
    tensors = {
        "latents": latents, "timesteps": timesteps, "text": text, "text_lengths": lengths,
        "probe": probe, "out": out.detach(),
    }
    for k, p in model.named_parameters():
        tensors["grad." + k] = p.grad.detach().clone()

    with torch.no_grad():
        masked = [run(model, latents[i:i + 1], timesteps[i:i + 1], text[i:i + 1, :n])
                  for i, n in enumerate(spec["lengths"])]
        tensors["out_masked"] = torch.cat(masked, 0)
        bf16 = WanTransformer3DModel.from_pretrained(os.path.join(case_dir, "model"),
                                                     torch_dtype=torch.bfloat16).eval()
        tensors["out_bf16"] = run(bf16, latents.bfloat16(), timesteps,
                                  text.bfloat16()).float()
        # The AutoModel recipe's model: every parameter bf16 (_keep_in_fp32_modules bypassed).
        all_bf16 = copy.deepcopy(model).to(torch.bfloat16)  # (Diffusers warns about this cast)
        tensors["out_all_bf16"] = run(all_bf16, latents.bfloat16(), timesteps,
                                      text.bfloat16()).float()
        # The same with the RoPE tables left fp32 (.to() casts those buffers to bf16 too).
        all_bf16.rope.freqs_cos = model.rope.freqs_cos.clone()
        all_bf16.rope.freqs_sin = model.rope.freqs_sin.clone()
        tensors["out_all_bf16_fp32_rope"] = run(all_bf16, latents.bfloat16(), timesteps,
                                                text.bfloat16()).float()

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(case_dir, "data.safetensors"))
    with open(os.path.join(case_dir, "meta.json"), "w") as f:
        json.dump({"latents": spec["latents"], "text_len": spec["text_len"],
                   "lengths": spec["lengths"],
                   "parameters": [k for k, _ in model.named_parameters()]}, f, indent=1)
    return state


def malformed(state):
    """A checkpoint with missing, unexpected and mis-shaped tensors."""
    bad = dict(state)
    bad.pop("proj_out.bias")
    bad.pop("blocks.1.attn2.norm_k.weight")
    bad["blocks.0.attn1.to_extra.weight"] = torch.zeros(3, 3)
    bad["blocks.0.ffn.net.2.weight"] = torch.zeros(5, 7)
    return bad


if __name__ == "__main__":
    reference_cases.run(__doc__, CASES, write_case, malformed, "Wan")
