#!/usr/bin/env python3
"""Reference data for the parity tests of `wanhost generate`, computed with the Diffusers
WanPipeline (diffusers/pipelines/wan/pipeline_wan.py) on a tiny random pipeline.

Usage: make_generate_reference.py OUT_DIR

Writes into OUT_DIR:
  pipeline/                 a tiny random Wan pipeline saved with WanPipeline.save_pretrained:
                            transformer/ (WanTransformer3DModel, text_dim 32), vae/
                            (AutoencoderKLWan, z_dim 16), text_encoder/ (UMT5EncoderModel,
                            d_model 32), tokenizer/ (the umt5 tests' tiny SentencePiece model),
                            scheduler/ (UniPCMultistepScheduler as the Wan 2.1 Diffusers pipelines
                            configure it: flow sigmas, flow_shift 3.0)
  noise.safetensors         "latents" [2, 16, 2, 4, 6]: the initial noise of two 5-frame 48x32
                            videos
  image_noise.safetensors   "latents" [1, 16, 1, 4, 6]: the same for one image
  cases.json                per case: sampler, guidance, prompts, negative prompt, frames, size
  <case>.safetensors        "latents": the pipeline's final latents (output_type="latent", fp32)
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler,
                       WanPipeline, WanTransformer3DModel)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_umt5_reference as umt5_ref  # noqa: E402

TRANSFORMER = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16,
                   in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64,
                   num_layers=2, cross_attn_norm=True, eps=1e-6, rope_max_seq_len=64)
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
           temperal_downsample=[False, True, True])
TEXT = dict(umt5_ref.MODEL)
STEPS = 6
PROMPTS = ["a small brown puppy runs in the park", "camera pans left over the river"]
NEGATIVE = "blurry video"
CASES = {
    "unipc_guided": dict(sampler="unipc", guidance=4.0),
    "unipc_unguided": dict(sampler="unipc", guidance=1.0),
    "euler_guided": dict(sampler="euler", guidance=4.0),
    "euler_unguided": dict(sampler="euler", guidance=1.0),
    "unipc_image": dict(sampler="unipc", guidance=3.0, image=True),
}


def randomize(module, scale, text_scale):
    """Larger-than-default weights so that every part of the model changes the result, the text
    path (text projection, cross-attention) most, so that prompts and guidance matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            text = "text_embedder" in name or "attn2" in name
            p.add_((text_scale if text else scale) * torch.randn(p.shape, generator=gen))


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tokenizer = umt5_ref.make_tokenizer(out)
    text_encoder = umt5_ref.make_model(TEXT, seed=3)
    transformer = WanTransformer3DModel(**TRANSFORMER).eval()
    randomize(transformer, 0.05, 0.3)
    vae = AutoencoderKLWan(**VAE).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                       transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(os.path.join(out, "pipeline"))
    # The Wan pipelines ship spiece.model beside tokenizer.json; save_pretrained of a fast
    # tokenizer does not write it.
    shutil.copy(os.path.join(out, "tokenizer", "spiece.model"),
                os.path.join(out, "pipeline", "tokenizer", "spiece.model"))
    # Diffusers' prompt_clean runs ftfy when it is installed; the prompts are plain ASCII anyway.
    gen = torch.Generator().manual_seed(7)
    noise = {"noise": torch.randn(2, 16, 2, 4, 6, generator=gen),
             "image_noise": torch.randn(1, 16, 1, 4, 6, generator=gen)}
    for key, value in noise.items():
        save_file({"latents": value}, os.path.join(out, key + ".safetensors"))
    euler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    cases = {}
    for name, case in CASES.items():
        pipe.scheduler = euler if case["sampler"] == "euler" else scheduler
        image = case.get("image", False)
        prompts = PROMPTS[:1] if image else PROMPTS
        frames = 1 if image else 5
        with torch.no_grad():
            latents = pipe(prompt=prompts, negative_prompt=[NEGATIVE] * len(prompts),
                           height=32, width=48, num_frames=frames, num_inference_steps=STEPS,
                           guidance_scale=case["guidance"],
                           latents=noise["image_noise" if image else "noise"].clone(),
                           output_type="latent", return_dict=False)[0]
        save_file({"latents": latents.contiguous()}, os.path.join(out, name + ".safetensors"))
        cases[name] = dict(case, prompts=prompts, negative=NEGATIVE, frames=frames, width=48,
                           height=32, steps=STEPS,
                           noise=("image_noise" if image else "noise") + ".safetensors")
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    print("wrote generate reference cases %s to %s" % (", ".join(CASES), out))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
