#!/usr/bin/env python3
"""Reference data for the umt5 plugin's parity tests, computed with Transformers' UMT5EncoderModel,
its T5Tokenizer and the Diffusers Wan pipeline's prompt handling.

Usage: make_umt5_reference.py OUT_DIR

Writes into OUT_DIR:
  corpus.txt                 the text the tiny SentencePiece model is trained on
  tokenizer/                 the tokenizer folder as a Wan Diffusers pipeline has it: spiece.model
                             (a unigram model of 300 pieces, <pad>=0 </s>=1 <unk>=2) plus the
                             tokenizer.json / tokenizer_config.json that Transformers writes for
                             it (10 <extra_id_N> added tokens)
  model/                     a tiny random UMT5EncoderModel (gated-gelu), save_pretrained
  model_sharded/             the same weights as shards with model.safetensors.index.json
  model_relu/                a second tiny model: feed_forward_proj "relu", 8 buckets, eps 1e-5
  tokens.json                per text: the raw text, the pipeline's cleaned text, token ids at
                             max_length 16 and 64 (cleaned text), token ids of the raw text at 64;
                             html.unescape cases (one pass) for the unescaping unit test
  data.safetensors           input_ids / attention_mask [3, 64] of three cleaned texts (padded,
                             one truncated), last_hidden_state (fp32), last_hidden_state_bf16
                             (loaded with torch_dtype=bfloat16), relu_last_hidden_state (model_relu),
                             encode_hidden [3, 64, 32] (WanPipeline._get_t5_prompt_embeds, fp32),
                             encode_lengths [3]
  meta.json                  shapes, max lengths, the texts of data.safetensors
  DONE                       written by run_reference.sh (see there) once this script succeeded
Diffusers' prompt_clean runs ftfy.fix_text when ftfy is installed; the plugin does not, so the
reference is computed with ftfy disabled.
"""

import html
import json
import os
import random
import sys
import types

import torch
import sentencepiece as spm
from safetensors.torch import save_file
from transformers import UMT5Config, UMT5EncoderModel
import diffusers.pipelines.wan.pipeline_wan as pipeline_wan

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                                "experiment"))
from make_tiny_encoders import package_t5_tokenizer  # noqa: E402

SMALL_MAX = 16
LARGE_MAX = 64
SP_VOCAB = 300
EXTRA_IDS = 10

MODEL = dict(vocab_size=320, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
             relative_attention_num_buckets=32, relative_attention_max_distance=128,
             feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
MODEL_RELU = dict(vocab_size=320, d_model=32, d_kv=16, d_ff=48, num_layers=1, num_heads=2,
                  relative_attention_num_buckets=8, relative_attention_max_distance=20,
                  feed_forward_proj="relu", layer_norm_epsilon=1e-5)

# Texts for the tokenizer: empty, plain, messy whitespace, characters outside the tiny vocabulary,
# HTML entities (named, numeric, double-escaped, without ';', invalid), Unicode whitespace,
# special tokens written in the text, one far longer than both max lengths, NFKC-folded forms.
TEXTS = [
    "",
    "a cat runs over the green grass",
    "  the   dog\tand\nthe cat  ",
    "Caf\u00e9 cr\u00e8me \u65e5\u672c\u8a9e\u306e\u5c0f\u72d7 \U0001f389 \u03a9\u03bc\u03ad\u03b3\u03b1",
    "A &amp; B &lt;tag&gt; &#39;q&#39; &#x27;x&#X27; &quot;quoted&quot;",
    "&amp;amp; &amp;lt;b&amp;gt; double escaped &amp;#65;",
    "&ampx &copy2024 &notit; &notin; &#0; &#128; &#x110000; &#13;x &#1;y &#65 &#x41g &; &# &#x",
    "&unknown; &AMP &amp &Eacute &eacutex &thisisaverylongnamethatgoesbeyondthirtytwo; end",
    "nbsp&nbsp;&nbsp;here\u3000ideo\u2028sep\u0085next\u00a0nb",
    "<pad></s><unk> specials <extra_id_3> in text</s>",
    "the cat " * 40,
    "\uff21\uff22\uff23\uff11\uff12\uff13 \ufb01 ligature",
    "mixed\r\n\r\nlines\x0b\x0c and\x1ccontrol",
]
# Texts of the forward / encode reference (cleaned, then tokenized at LARGE_MAX).
BATCH_TEXTS = [
    "a small brown puppy runs in the park",
    "camera pans left over the river &amp; the mountain forest, golden hour",
    "the cat " * 40,
]
UNESCAPE_CASES = TEXTS + [
    "&amp;amp;", "&#x1F600;", "&#128512;", "&#xD800;", "&#99999999999999999999;", "&#x7f;",
    "&#x9F;", "&#xFFFE;", "&#x10FFFF;", "&lt&gt", "&notin", "&not", "&ltx", "&&amp;", "&#;",
    "&a;", "&ab", "&\u00e9;", "&am&p;", "&quot", "&QUOT;", "&nsubE;", "&NotEqualTilde;",
]


def write_corpus(path):
    rng = random.Random(0)
    words = ("the a cat dog runs over green grass under blue sky with white clouds slowly camera "
             "pans left right video of small brown puppy playing in park sunlight golden hour "
             "cinematic close up shot water flows river mountain forest tree").split()
    syllables = ["ka", "to", "ri", "mu", "sen", "da", "lo", "pi", "ve", "gra", "sho", "tem", "bur",
                 "nix", "al", "qua", "zel", "or", "fin", "wy"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) +
             rng.choice([".", ",", "!", "?", ""]) for _ in range(1500)]
    lines += ["Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve fa\u00e7ade",
              "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u5c0f\u72d7\u5728\u8349\u5730\u4e0a",
              "\u00dcn\u00efc\u00f6d\u00e9 \u03a9\u03bc\u03ad\u03b3\u03b1 \u041f\u0440\u0438\u0432\u0435\u0442",
              "numbers 0123456789 & < > \" ' ( ) - _ : ;"]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def make_tokenizer(out):
    corpus = os.path.join(out, "corpus.txt")
    write_corpus(corpus)
    src = os.path.join(out, "tokenizer_src")
    os.makedirs(src, exist_ok=True)
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(src, "spiece"), vocab_size=SP_VOCAB,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
        num_threads=1, minloglevel=2)
    # Saved as the pipelines ship it and loaded back as they do (the experiment's tokenizer writer).
    return package_t5_tokenizer(src, os.path.join(out, "tokenizer"), EXTRA_IDS)


def make_model(config, seed):
    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(**config)).eval()
    # Larger-than-default random values so that every part (position bias, norms) matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name or name == "shared.weight":
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def ids(tokenizer, text, max_length):
    return tokenizer(text, max_length=max_length, truncation=True)["input_ids"]


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    # The plugin does not reproduce ftfy.fix_text; compute the reference without it.
    pipeline_wan.is_ftfy_available = lambda: False
    clean = pipeline_wan.prompt_clean

    tokenizer = make_tokenizer(out)
    cases = []
    for text in TEXTS:
        cleaned = clean(text)
        cases.append({"text": text, "cleaned": cleaned,
                      "ids_small": ids(tokenizer, cleaned, SMALL_MAX),
                      "ids_large": ids(tokenizer, cleaned, LARGE_MAX),
                      "raw_ids_large": ids(tokenizer, text, LARGE_MAX)})
    unescape = [{"text": t, "once": html.unescape(t)} for t in UNESCAPE_CASES]
    with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"small_max": SMALL_MAX, "large_max": LARGE_MAX, "cases": cases,
                   "unescape": unescape}, f, ensure_ascii=False, indent=1)

    model = make_model(MODEL, 0)
    model.save_pretrained(os.path.join(out, "model"))
    model.save_pretrained(os.path.join(out, "model_sharded"), max_shard_size="20KB")
    relu = make_model(MODEL_RELU, 1)
    relu.save_pretrained(os.path.join(out, "model_relu"))

    cleaned = [clean(t) for t in BATCH_TEXTS]
    batch = tokenizer(cleaned, padding="max_length", max_length=LARGE_MAX, truncation=True,
                      return_tensors="pt")
    data = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with torch.no_grad():
        data["last_hidden_state"] = model(batch.input_ids, batch.attention_mask).last_hidden_state
        data["relu_last_hidden_state"] = relu(batch.input_ids,
                                              batch.attention_mask).last_hidden_state
        bf16 = UMT5EncoderModel.from_pretrained(os.path.join(out, "model"),
                                                torch_dtype=torch.bfloat16).eval()
        data["last_hidden_state_bf16"] = bf16(batch.input_ids,
                                              batch.attention_mask).last_hidden_state.float()
        # The pipeline's own code path (prompt_clean, tokenizer, encoder, cut and zero-pad).
        pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=model,
                                     _execution_device=torch.device("cpu"))
        data["encode_hidden"] = pipeline_wan.WanPipeline._get_t5_prompt_embeds(
            pipe, prompt=BATCH_TEXTS, max_sequence_length=LARGE_MAX, device=torch.device("cpu"),
            dtype=torch.float32)
    data["encode_lengths"] = batch.attention_mask.sum(dim=1).long()
    save_file({k: v.contiguous() for k, v in data.items()}, os.path.join(out, "data.safetensors"))
    with open(os.path.join(out, "meta.json"), "w", encoding="utf-8") as f:
        json.dump({"batch_texts": BATCH_TEXTS, "large_max": LARGE_MAX, "small_max": SMALL_MAX,
                   "model": MODEL, "model_relu": MODEL_RELU}, f, ensure_ascii=False, indent=1)

    print(f"umt5 reference written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
