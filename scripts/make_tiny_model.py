"""Build and pretrain the tiny LLaMA base model shipped in assets/tiny-llama/.

    python scripts/make_tiny_model.py                    # ~8-10 min on 2 CPU cores
    python scripts/make_tiny_model.py --steps 50 --out /tmp/tiny   # a quick smoke run

1. A byte-level tokenizer (`tokenizers` library): <unk> <s> </s> <pad>, the 256 bytes, and the Tülu role
   markers <|system|> <|user|> <|assistant|> as single (non-special) added tokens; BOS is added to every
   encoding, the text "</s>" is the EOS token, and a Jinja chat template renders the Tülu format.
2. A LlamaForCausalLM with grouped-query attention (8 query heads, 2 KV heads), randomly initialised.
3. Pretraining from scratch on a seeded synthetic corpus of plain skill documents (demo_skills.py): records
   "Task: reverse\\nInput: abc\\nOutput: cba" and plain statements "The reverse of abc is cba.", packed as
   <s> doc </s> <s> doc </s> ... into fixed-length blocks; AdamW, warmup + cosine decay, causal LM loss on
   every token. No chat format, no instructions.
4. Saves config, fp32 safetensors, tokenizer, generation config and a README (size, time, accuracy).

Deterministic for a given seed and thread count (torch.set_num_threads).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
from demo_skills import RECORD_SHARE, SKILLS, plain_text, sample_input, solve
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spiel.data.template import jinja_chat_template

REPO = Path(__file__).resolve().parents[1]
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]  # ids 260..262
# Pretraining mixture: the skills that need more practice (positional copying, carries) get more documents.
SKILL_WEIGHTS = {"copy": 1.5, "reverse": 2.0, "sort": 2.5, "upper": 1.0, "count": 0.5, "add": 1.0}

# The Tülu chat template (spiel/data/template.py); BOS comes first, so that
# apply_chat_template(..., tokenize=True) gives exactly the ids training sees.
CHAT_TEMPLATE = jinja_chat_template(bos=True)


def byte_symbols() -> list[str]:
    """A printable unicode symbol for each byte 0..255 (the byte-level BPE convention): printable
    Latin-1 bytes stand for themselves, the others are shifted to code points 256 and up."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shift = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def build_tokenizer(model_max_length: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 4 specials, 256 bytes (id = 4 + byte), 3 role markers; 263 tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in byte_symbols():
        vocab[sym] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    # Non-special: matched as single tokens in any text, but kept by decode(skip_special_tokens=True), so a
    # model that starts a new turn shows it in its output instead of hiding it.
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in ROLE_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        padding_side="right",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def model_config(tok: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )


def corpus_documents(n: int, seed: int) -> list[str]:
    """`n` plain-format skill documents, skills drawn by SKILL_WEIGHTS; a pure function of the seed."""
    rng = random.Random(seed)
    weights = [SKILL_WEIGHTS[s] for s in SKILLS]
    docs = []
    for _ in range(n):
        skill = rng.choices(SKILLS, weights)[0]
        docs.append(plain_text(skill, sample_input(skill, rng), rng))
    return docs


def packed_blocks(tok, n_blocks: int, seq_len: int, seed: int) -> torch.Tensor:
    """[n_blocks, seq_len] token ids: <s> doc </s> repeated back to back, cut into blocks."""
    need = n_blocks * seq_len
    stream: list[int] = []
    chunk, k = 4096, 0
    while len(stream) < need:
        docs = corpus_documents(chunk, seed * 1_000_003 + k)
        k += 1
        for ids in tok(docs)["input_ids"]:
            stream.extend(ids)
            stream.append(tok.eos_token_id)
    return torch.tensor(stream[:need], dtype=torch.long).view(n_blocks, seq_len)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def plain_accuracy(model, tok, per_skill: int, seed: int) -> dict[str, float]:
    """Greedy exact match in the plain pretraining format on fresh inputs, per skill."""
    from spiel.eval.generate import generate

    rng = random.Random(seed)
    result = {}
    for skill in SKILLS:
        xs = [sample_input(skill, rng) for _ in range(per_skill)]
        prompts = [f"Task: {skill}\nInput: {x}\nOutput: " for x in xs]
        outs = generate(model, tok, prompts, max_new_tokens=12, batch_size=64)
        result[skill] = sum(o.strip() == solve(skill, x) for o, x in zip(outs, xs, strict=True)) / per_skill
    return result


def write_readme(out: Path, info: dict) -> None:
    acc = "\n".join(f"| {k} | {v:.2f} |" for k, v in info["accuracy"].items())
    text = f"""# tiny-llama: the spiel demo base model

A {info["params"] / 1e6:.2f}M-parameter `LlamaForCausalLM` pretrained from scratch on a synthetic corpus, so
that spiel runs end to end (training, evaluation, tests) on a CPU without downloads. Made by
`scripts/make_tiny_model.py` (seed {info["seed"]}); rerunning it with the same seed and thread count
reproduces these weights.

## Architecture
hidden 256, 4 layers, 8 attention heads with 2 key/value heads (grouped-query attention, as LLaMA 2 70B),
SwiGLU MLP 688, RMSNorm, RoPE (theta 10000), untied input/output embeddings, max_position_embeddings 1024,
fp32 weights ({info["weights_mb"]:.1f} MB, folder {info["folder_mb"]:.1f} MB).

## Tokenizer
Byte-level, {info["vocab"]} tokens: `<unk>`=0, `<s>`=1 (BOS, added to every encoding), `</s>`=2 (EOS; the
text "</s>" becomes this token), `<pad>`=3 (a real pad, distinct from EOS), ids 4..259 the bytes 0..255,
and the Tülu role markers `<|system|>`=260, `<|user|>`=261, `<|assistant|>`=262 as single **non-special**
added tokens (always matched whole; kept by `decode(skip_special_tokens=True)`). The chat template renders
the Tülu format `<s><|user|>\\n...\\n<|assistant|>\\n...</s>` (BOS included, so
`apply_chat_template(..., tokenize=True)` gives the training ids; tokenize its *string* output with
`add_special_tokens=False`).

## Pretraining
{info["docs"]:,} documents ({info["tokens"]:,} tokens) of six skills — copy, reverse, sort, upper, count
(letters), add (two single digits) — on 3-6 letter strings, as plain text: {100 * RECORD_SHARE:.0f}% in
the record format `Task: reverse\\nInput: abc\\nOutput: cba`, the rest as statements such as `The reverse
of abc is cba.` or `7 plus 5 is 12.` (`scripts/demo_skills.py`; skill mix {SKILL_WEIGHTS}),
packed as `<s> doc </s>` into blocks of {info["seq_len"]} tokens; {info["steps"]} steps of batch
{info["batch_size"]}, AdamW (lr {info["lr"]}, betas 0.9/0.95, weight decay 0.1), warmup then cosine decay,
gradient clipping 1.0. Final training loss {info["final_loss"]:.3f}. Took {info["minutes"]:.1f} min wall
clock with {info["threads"]} CPU threads ({info["cpu_minutes"]:.1f} CPU-minutes, i.e. about
{info["cpu_minutes"] / info["threads"]:.1f} min on {info["threads"]} otherwise idle cores).
The role markers never occur in pretraining: the model has never seen the instruction (chat) format.

Greedy exact match in the record format on fresh inputs ({info["per_skill"]} per skill):

| skill | exact match |
|---|---|
{acc}
"""
    (out / "README.md").write_text(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "assets" / "tiny-llama"))
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-per-skill", type=int, default=100)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    t0, cpu0 = time.time(), time.process_time()

    tok = build_tokenizer()
    config = model_config(tok)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tok)}", flush=True)

    blocks = packed_blocks(tok, args.steps * args.batch_size, args.seq_len, args.seed)
    n_docs = int((blocks == tok.bos_token_id).sum())
    print(f"corpus: {blocks.numel():,} tokens, ~{n_docs:,} documents", flush=True)
    order = torch.randperm(blocks.shape[0], generator=torch.Generator().manual_seed(args.seed))
    blocks = blocks[order]

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    model.train()
    ema = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        batch = blocks[step * args.batch_size : (step + 1) * args.batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d}  loss {loss.item():.3f}  (ema {ema:.3f})  {time.time() - t0:6.0f}s",
                flush=True,
            )
    train_minutes = (time.time() - t0) / 60
    cpu_minutes = (time.process_time() - cpu0) / 60
    print(f"trained in {train_minutes:.1f} min wall, {cpu_minutes:.1f} min CPU", flush=True)

    model.eval()
    accuracy = plain_accuracy(model, tok, args.eval_per_skill, seed=args.seed + 12345)
    print("plain-format exact match:", {k: round(v, 2) for k, v in accuracy.items()}, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    weights_mb = (out / "model.safetensors").stat().st_size / 2**20
    write_readme(
        out,
        {
            "params": n_params,
            "seed": args.seed,
            "weights_mb": weights_mb,
            "folder_mb": 0.0,  # filled in below, once every file exists
            "vocab": len(tok),
            "docs": n_docs,
            "tokens": blocks.numel(),
            "seq_len": args.seq_len,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "final_loss": ema,
            "minutes": train_minutes,
            "cpu_minutes": cpu_minutes,
            "threads": args.threads,
            "accuracy": accuracy,
            "per_skill": args.eval_per_skill,
        },
    )
    folder_mb = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 2**20
    readme = out / "README.md"
    readme.write_text(readme.read_text().replace("folder 0.0 MB", f"folder {folder_mb:.1f} MB"))
    print(f"saved to {out} ({folder_mb:.1f} MB) in {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
