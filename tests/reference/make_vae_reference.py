#!/usr/bin/env python3
"""Reference tensors for the wan_vae parity tests, computed with Diffusers' AutoencoderKLWan.

Usage: make_vae_reference.py OUT_DIR

For each tiny random configuration (CASES) it writes into OUT_DIR/<case>/:
  model/                    Diffusers layout (config.json + diffusion_pytorch_model.safetensors)
  model_sharded/            the same weights as a sharded checkpoint with an index (first case)
  wan_original.safetensors  the original Wan 2.1 VAE key layout (cases with the Wan 2.1 topology:
                            4 levels, 2 residual blocks; checked against Diffusers' own converter)
  data.safetensors          for each encode input i: video_<i> [B,3,F,H,W] in [-1,1],
      mean_<i> (the posterior mean: latent_dist.mode()), latents_<i> (normalised as the Wan
      pipelines do: (mean - latents_mean) * (1 / latents_std)); for each decode input j: z_<j>
      (normalised latents), video_out_<j> (decode(z / (1 / latents_std) + latents_mean), clamped
      by Diffusers); first case only: latents_bf16_0 and video_out_bf16_0 (Diffusers in bf16:
      module and input cast, the (un)normalisation in bf16 as the Wan pipelines do it)
  meta.json                 the case's config, shapes and parameter names
and OUT_DIR/malformed/bad.safetensors (first case: 2 missing, 1 unexpected, 1 mis-shaped tensor).
run_reference.sh writes OUT_DIR/DONE (the stamp that skips regenerating) after this succeeded.
"""

import copy
import json
import math
import os

import torch
from safetensors.torch import save_file

import reference_cases  # beside this script
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

# Tiny configurations: "base" has the Wan 2.1 level layout with one residual block per level and
# 4 latent channels; "wan_layout" is the Wan 2.1 topology exactly (4 levels, 2 residual blocks,
# 16 latent channels) at width 8; "small" has 3 levels (4x spatial), temporal downsampling in
# both, and a decoder narrower than the encoder (decoder_base_dim).
CASES = {
    "base": dict(
        config=dict(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                    temperal_downsample=[False, True, True]),
        encode=[[1, 3, 5, 32, 48], [2, 3, 9, 32, 48]],
        decode=[[1, 4, 3, 4, 6], [2, 4, 2, 5, 3]]),
    "wan_layout": dict(
        config=dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                    temperal_downsample=[False, True, True]),
        encode=[[1, 3, 5, 16, 24]],
        decode=[[1, 16, 2, 2, 3]]),
    "small": dict(
        config=dict(base_dim=8, decoder_base_dim=12, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                    temperal_downsample=[True, True], scale_factor_spatial=4,
                    dropout=0.1),
        encode=[[2, 3, 9, 12, 20]],
        decode=[[2, 4, 3, 3, 5]]),
}


def randomize(model, gen):
    """Non-trivial values everywhere (RMS-norm gammas and biases included)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) * (1.3 / math.sqrt(fan_in)))


def to_original(state, cfg):
    """Diffusers names -> original Wan 2.1 VAE names (the inverse of convert_vae in diffusers'
    scripts/convert_wan_to_diffusers.py), for the 4-level layout."""
    out = {}
    per_block = cfg["num_res_blocks"] + 2  # (num_res_blocks + 1) resnets + 1 resample
    res = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.", "norm2.gamma": "residual.3.gamma",
           "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}

    def resnet(rest):
        for a, b in res.items():
            if rest.startswith(a):
                return b + rest[len(a):]
        raise KeyError(rest)

    for k, v in state.items():
        p = k.split(".")
        if k.startswith("quant_conv."):
            n = "conv1." + p[-1]
        elif k.startswith("post_quant_conv."):
            n = "conv2." + p[-1]
        elif p[1] == "conv_in":
            n = p[0] + ".conv1." + p[-1]
        elif p[1] == "norm_out":
            n = p[0] + ".head.0.gamma"
        elif p[1] == "conv_out":
            n = p[0] + ".head.2." + p[-1]
        elif p[1] == "mid_block":
            if p[2] == "attentions":
                n = p[0] + ".middle.1." + ".".join(p[4:])
            else:
                n = p[0] + ".middle.%d." % (2 * int(p[3])) + resnet(".".join(p[4:]))
        elif p[1] == "down_blocks":
            rest = ".".join(p[3:])
            n = "encoder.downsamples.%s." % p[2] + (rest if rest.startswith(("resample", "time_conv"))
                                                    else resnet(rest))
        elif p[1] == "up_blocks":
            base = int(p[2]) * per_block
            if p[3] == "resnets":
                n = "decoder.upsamples.%d." % (base + int(p[4])) + resnet(".".join(p[5:]))
            else:  # upsamplers.0.<rest>
                n = "decoder.upsamples.%d." % (base + per_block - 1) + ".".join(p[5:])
        else:
            raise KeyError(k)
        out[n] = v
    return out


def write_case(out_dir, name, spec, first):
    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(4321 + len(name))
    cfg = dict(spec["config"])
    z = cfg["z_dim"]
    cfg["latents_mean"] = [round(float(x), 4) for x in torch.randn(z, generator=gen) * 0.5]
    cfg["latents_std"] = [round(float(x), 4) for x in 0.5 + torch.rand(z, generator=gen) * 2.5]
    model = AutoencoderKLWan(**cfg).float().eval()
    randomize(model, gen)
    model.save_pretrained(os.path.join(case_dir, "model"), safe_serialization=True)
    if first:
        model.save_pretrained(os.path.join(case_dir, "model_sharded"), safe_serialization=True,
                              max_shard_size="400KB")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if cfg["num_res_blocks"] == 2 and len(cfg["dim_mult"]) == 4:
        original = to_original(state, cfg)
        assert len(original) == len(state)
        # Diffusers' own single-file converter must map the names back exactly.
        back = convert_wan_vae_to_diffusers(original)
        assert sorted(back) == sorted(state), set(back) ^ set(state)
        assert all(torch.equal(back[k], state[k]) for k in state)
        save_file(original, os.path.join(case_dir, "wan_original.safetensors"))

    mean = torch.tensor(cfg["latents_mean"]).view(1, z, 1, 1, 1)
    std = torch.tensor(cfg["latents_std"]).view(1, z, 1, 1, 1)
    inv_std = 1.0 / std
    inv_std16 = 1.0 / std.bfloat16()  # the pipelines cast std to the VAE dtype, then invert
    bf16 = copy.deepcopy(model).to(torch.bfloat16) if first else None
    tensors = {}
    with torch.no_grad():
        for i, shape in enumerate(spec["encode"]):
            video = torch.rand(shape, generator=gen) * 2 - 1
            mu = model.encode(video).latent_dist.mode()
            tensors["video_%d" % i] = video
            tensors["mean_%d" % i] = mu
            tensors["latents_%d" % i] = (mu - mean) * inv_std
            if first and i == 0:  # normalised in bf16, as a bf16 Wan pipeline does
                mu16 = bf16.encode(video.bfloat16()).latent_dist.mode()
                tensors["latents_bf16_%d" % i] = ((mu16 - mean.bfloat16()) * inv_std16).float()
        for j, shape in enumerate(spec["decode"]):
            zn = torch.randn(shape, generator=gen)
            tensors["z_%d" % j] = zn
            tensors["video_out_%d" % j] = model.decode(zn / inv_std + mean).sample
            if first and j == 0:  # WanPipeline: latents.to(vae.dtype) / (1 / std) + mean
                z16 = zn.bfloat16() / inv_std16 + mean.bfloat16()
                tensors["video_out_bf16_%d" % j] = bf16.decode(z16).sample.float()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(case_dir, "data.safetensors"))
    with open(os.path.join(case_dir, "meta.json"), "w") as f:
        json.dump({"config": cfg, "encode": spec["encode"], "decode": spec["decode"],
                   "parameters": [k for k, _ in model.named_parameters()]}, f, indent=1)
    return state


def malformed(state):
    """A checkpoint with missing, unexpected and mis-shaped tensors."""
    bad = dict(state)
    bad.pop("decoder.conv_out.bias")
    bad.pop("encoder.mid_block.attentions.0.norm.gamma")
    bad["encoder.down_blocks.0.extra.weight"] = torch.zeros(3, 3)
    w = bad["quant_conv.weight"]
    bad["quant_conv.weight"] = torch.zeros(w.shape[0], w.shape[1] + 1, 1, 1, 1)
    return bad


if __name__ == "__main__":
    reference_cases.run(__doc__, CASES, write_case, malformed, "wan_vae", threads=2)
