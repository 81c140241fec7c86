"""Build a tiny random-weight Llama model on disk, for the demo and the tests (no model hub).

    python -m deployer.tinymodel OUT_DIR

A byte-level BPE tokenizer trained on a few sentences, a 2-layer LlamaForCausalLM with a head
dimension of 64 (vLLM's CPU attention rejects 16), saved in bf16. Its output is gibberish;
the serving path is real. Building is idempotent: an existing complete model is kept.
Needs torch, transformers and tokenizers (installed with the engine).
"""

from __future__ import annotations

import sys
from pathlib import Path

SENTENCES = [
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "deployer turns one spec into a running vLLM endpoint.",
    "Serverless or dedicated: it depends on how busy the GPU is.",
    "A cold start is mostly moving weights onto the GPU.",
    "user assistant system: answer briefly and clearly.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)
MARKER = "deployer-tiny.done"


def build(out: Path) -> Path:
    """Write the model to `out` (created) unless it is already complete there; return `out`."""
    out = Path(out)
    if (out / MARKER).exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=max(512, tok.get_vocab_size()),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    (out / MARKER).write_text("ok\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deployer.tinymodel OUT_DIR", file=sys.stderr)
        return 2
    print(build(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
