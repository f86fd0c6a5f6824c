#!/usr/bin/env python3
"""Tiny stand-in encoders for the comparison experiment (docs/comparison.md): a pipeline folder
that `wanhost prepare --vae-plugin pixel_vae` (--model) and `wanhost generate --vae-plugin
pixel_vae` (--pipeline) take instead of a Wan 2.1 Diffusers download.

Usage: make_tiny_encoders.py OUT_DIR [--text-dim 32] [--seed 0]

Writes into OUT_DIR:
  tokenizer/      a SentencePiece unigram model trained on the experiment's caption vocabulary
                  (scripts/experiment/make_videos.sh) plus filler text, saved as a Wan Diffusers
                  pipeline ships its umT5 tokenizer: spiece.model, tokenizer.json and
                  tokenizer_config.json (T5Tokenizer, <pad>=0 </s>=1 <unk>=2, 10 <extra_id_N>)
  text_encoder/   a tiny random Transformers UMT5EncoderModel (2 layers, d_model = --text-dim),
                  save_pretrained (config.json + model.safetensors); the `umt5` plugin runs it
  vae/config.json {"z_dim": 16}: the pixel_vae plugin's whole "weights"
  corpus.txt      the tokenizer's training text
  encoders.json   what was made (sizes, seed, versions) and a check: the cosine similarity of the
                  mean embeddings of two different captions

Random weights say nothing about language, but they give every caption its own embedding: values
are drawn larger than Transformers' initialisation (embeddings N(0, 1), layer norms 1 + N(0, 0.2),
linear layers N(0, 1/fan_in); the same scaling as the umt5 plugin's parity reference,
tests/reference/make_umt5_reference.py), so the position bias, every norm and every word matter,
and the trained DiT can tell captions apart. Deterministic: the same OUT_DIR contents for the same
arguments and package versions (seeded torch, SentencePiece on one thread).
Needs torch, transformers, sentencepiece (tests/reference/requirements.txt; `scripts/bootstrap.sh
test` installs them into .venv).
"""

import argparse
import json
import os
import random
import shutil
import sys

SP_VOCAB = 240
EXTRA_IDS = 10

# The words of make_videos.sh's captions (kept in step with it; a word missing here is still
# tokenized, into smaller pieces).
COLOURS = "red green blue yellow cyan magenta white black orange purple gray pink".split()
SHAPES = ["square", "disc"]
MOTIONS = ["moves from left to right", "moves from right to left", "moves from top to bottom",
           "moves from bottom to top", "moves diagonally from the top left to the bottom right",
           "moves in a circle"]
PATTERNS = ["colour bars", "red, green and blue stripes", "bright colour bars",
            "a test pattern with a moving counter", "a test pattern"]
DIRECTIONS = ["to the left", "to the right", "upwards", "downwards"]


def caption_lines(rng):
    """Captions of every form make_videos.sh writes, with random colours and shapes."""
    lines = []
    for _ in range(400):
        a, b, c = rng.sample(COLOURS, 3)
        shape = rng.choice(SHAPES)
        lines += [
            f"a {a} {shape} {rng.choice(MOTIONS)} over a {b} background",
            f"a {a} {shape} {rng.choice(['grows', 'shrinks'])} in the middle of a {b} background",
            f"a {a} square moves {rng.choice(['right', 'down'])} and a {c} square moves "
            f"{rng.choice(['left', 'up'])} over a {b} background",
            f"{rng.choice(PATTERNS)} {rng.choice(['scroll', 'scrolls'])} {rng.choice(DIRECTIONS)}",
            f"{rng.choice(PATTERNS)} {rng.choice(['stay', 'stays'])} still",
            f"a {rng.choice(['linear', 'radial'])} gradient from {a} to {b} slowly drifts",
            f"the screen fades from {rng.choice([f'black to {a}', f'{a} to black'])}",
            f"{rng.choice(PATTERNS)} whose colours cycle through the rainbow",
            f"the camera zooms {rng.choice(['in on', 'out from'])} {rng.choice(PATTERNS)}",
            f"a {a} game of life pattern evolves on a black background",
            "a white and black cellular automaton pattern scrolls upwards",
            "the camera zooms into a colourful mandelbrot fractal",
        ]
    return [line.replace(" a orange", " an orange").replace("a orange", "an orange")
            for line in lines]


def filler_lines(rng):
    """Other text, so that prompts outside the dataset still tokenize into real pieces."""
    words = ("the a an of and with in on over under slowly quickly camera shot close up wide view "
             "light dark bright sky water tree grass city street night day sun cloud rain snow "
             "person dog cat car bird house window door road river mountain forest field table "
             "runs walks flies jumps turns spins falls rises glows flickers shines floats").split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) +
             rng.choice([".", ",", "!", "?", ""]) for _ in range(1500)]
    lines.append("numbers 0123456789 & < > \" ' ( ) - _ : ; caf\u00e9 na\u00efve")
    return lines


def make_tokenizer(out, seed):
    import sentencepiece as spm

    rng = random.Random(seed)
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(caption_lines(rng) + filler_lines(rng)) + "\n")
    src = os.path.join(out, "tokenizer_src")
    os.makedirs(src)
    # spiece.model records its training paths: relative ones keep its bytes the same wherever
    # OUT_DIR is.
    cwd = os.getcwd()
    os.chdir(out)
    try:
        spm.SentencePieceTrainer.train(
            input="corpus.txt", model_prefix="tokenizer_src/spiece", vocab_size=SP_VOCAB,
            model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
            character_coverage=1.0, num_threads=1, seed_sentencepiece_size=100000,
            shuffle_input_sentence=False, minloglevel=2)
    finally:
        os.chdir(cwd)
    return package_t5_tokenizer(src, os.path.join(out, "tokenizer"), EXTRA_IDS)


def package_t5_tokenizer(src, dst, extra_ids):
    """Turns a folder holding a trained spiece.model (and spiece.vocab) into a tokenizer folder as
    the Wan pipelines ship it (spiece.model, tokenizer.json, tokenizer_config.json): Transformers
    converts spiece.model into its fast tokenizer. Removes `src`; returns the loaded tokenizer.
    (tests/reference/make_umt5_reference.py uses it too.)"""
    from transformers import AutoTokenizer, T5Tokenizer

    os.remove(os.path.join(src, "spiece.vocab"))
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids}, f)
    T5Tokenizer.from_pretrained(src).save_pretrained(dst)
    shutil.copy(os.path.join(src, "spiece.model"), os.path.join(dst, "spiece.model"))
    shutil.rmtree(src)
    return AutoTokenizer.from_pretrained(dst)


def make_text_encoder(out, text_dim, vocab, seed):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    # 4 heads of up to 64 features and a feed-forward of up to 512: small even at d_model 4096.
    heads = 4
    d_kv = max(8, min(64, text_dim // heads))
    d_ff = min(512, max(64, 2 * text_dim))
    config = UMT5Config(vocab_size=vocab, d_model=text_dim, d_kv=d_kv, d_ff=d_ff, num_layers=2,
                        num_heads=heads,
                        relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[1] ** -0.5)
    model.save_pretrained(os.path.join(out, "text_encoder"))
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the pipeline folder to write (replaced)")
    ap.add_argument("--text-dim", type=int, default=32,
                    help="d_model of the text encoder = the DiT's text_dim (tiny preset: 32, "
                         "Wan 2.1: 4096)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus and the weights")
    ap.add_argument("--z-dim", type=int, default=16, help="pixel_vae latent channels")
    args = ap.parse_args()
    if args.text_dim < 8:
        ap.error("--text-dim must be at least 8")
    try:
        import torch
        import transformers
        import sentencepiece  # noqa: F401
    except ImportError as e:
        sys.exit(f"make_tiny_encoders.py: {e.name} is missing: run `scripts/bootstrap.sh test` "
                 "(installs tests/reference/requirements.txt into .venv) and use .venv/bin/python")
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()

    out = args.out
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tokenizer = make_tokenizer(tmp, args.seed)
    vocab = SP_VOCAB + EXTRA_IDS
    model = make_text_encoder(tmp, args.text_dim, vocab, args.seed)
    os.makedirs(os.path.join(tmp, "vae"))
    with open(os.path.join(tmp, "vae", "config.json"), "w") as f:
        json.dump({"z_dim": args.z_dim}, f)
        f.write("\n")

    # Check: two captions that differ in two words get clearly different mean embeddings.
    texts = ["a red square moves from left to right over a blue background",
             "a green disc moves from left to right over a blue background"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(batch.input_ids, batch.attention_mask).last_hidden_state
    m = batch.attention_mask.unsqueeze(-1).to(h.dtype)
    mean = (h * m).sum(1) / m.sum(1)
    cos = torch.nn.functional.cosine_similarity(mean[0], mean[1], dim=0).item()
    info = {"text_dim": args.text_dim, "z_dim": args.z_dim, "seed": args.seed,
            "sentencepiece_vocab": SP_VOCAB, "extra_ids": EXTRA_IDS,
            "text_encoder": {k: getattr(model.config, k) for k in
                             ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")},
            "tokens": [len(t) for t in tokenizer(texts)["input_ids"]],
            "check_texts": texts, "check_cosine_of_mean_embeddings": round(cos, 4),
            "torch": torch.__version__, "transformers": transformers.__version__}
    with open(os.path.join(tmp, "encoders.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print(f"tiny encoders in {out}: text_dim {args.text_dim}, vocabulary {vocab}, "
          f"{info['tokens'][0]} tokens for '{texts[0]}'; cosine of two captions' mean "
          f"embeddings {cos:.3f}")


if __name__ == "__main__":
    main()
