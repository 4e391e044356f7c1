"""Export any Hugging Face sentence-embedding transformer as the ``onnx`` sentence-encoder kind
(`xlsearch.encode.onnx_sentence`): a folder with ``model.onnx`` (input_ids, attention_mask -> last_hidden_state,
dynamic batch and sequence), ``tokenizer.json`` and ``sentence_encoder.json`` (pooling, prefixes, max length).

    xlsearch bundle sentence --model intfloat/multilingual-e5-base --out runs/e5-base --pooling mean \\
        --query-prefix "query: " --passage-prefix "passage: "
    xlsearch bundle pretrained --cm cn-clip:ViT-B-16 --cl onnx:runs/e5-base --out runs/cnclip-e5base

``--model`` is a hub name (downloads on first use) or a local folder saved with ``save_pretrained`` (model +
tokenizer). `export_sentence_encoder` checks ONNX Runtime against PyTorch (max abs diff < 1e-4) on the pooled,
normalised vectors of a few sentences before it writes the spec.
"""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xlsearch.encode.onnx_sentence import OnnxSentenceEncoder

__all__ = ["export_sentence_encoder", "main", "torch_sentence_vectors"]

CHECK_TEXTS = ["一只红色的袋鼠", "A dog catching a frisbee.", "两个孩子在公园里放风筝,天气很好。"]


class _Hidden(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def torch_sentence_vectors(
    model: nn.Module, tokenizer: Any, texts: list[str], pooling: str = "mean", max_length: int = 512
) -> np.ndarray:
    """The reference: the transformer in PyTorch, pooled over the attention mask (or [CLS]) and L2-normalised."""
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        m = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, dim=-1).numpy()


def export_sentence_encoder(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    name: str,
    pooling: str = "mean",
    prefixes: dict[str, str] | None = None,
    max_length: int = 512,
) -> dict[str, Any]:
    """Write ``out/{model.onnx, tokenizer.json, sentence_encoder.json}`` and return the spec (paths relative to
    ``out``). ``tokenizer`` is a transformers fast tokenizer (its ``backend_tokenizer`` is saved)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = model.eval()
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    batch = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Hidden(
                model
            ).eval(),  # a module in training mode would leave the model in training mode after export
            (batch["input_ids"], batch["attention_mask"]),
            str(out / "model.onnx"),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"},
            },
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    max_length = min(max_length, int(getattr(tokenizer, "model_max_length", max_length) or max_length))
    spec: dict[str, Any] = {
        "kind": "onnx",
        "name": name,
        "model": "model.onnx",
        "tokenizer": "tokenizer.json",
        "pooling": pooling,
        "normalize": True,
        "max_length": max_length,
        "prefixes": {"query": "", "passage": "", **(prefixes or {})},
        "inputs": {"ids": "input_ids", "mask": "attention_mask"},
        "output": "last_hidden_state",
    }
    encoder = OnnxSentenceEncoder(out, **{k: v for k, v in spec.items() if k != "kind"})
    got = encoder.encode(CHECK_TEXTS, "query")
    queries = [spec["prefixes"]["query"] + t for t in CHECK_TEXTS]
    want = torch_sentence_vectors(model, tokenizer, queries, pooling, max_length)
    diff = float(np.abs(got - want).max())
    if diff > 1e-4:
        raise AssertionError(f"ONNX sentence encoder differs from PyTorch by {diff:.2e}")
    spec["dim"] = int(got.shape[1])
    spec["info"] = {"onnx_parity_max_abs_diff": diff, "exported_from": name}
    (out / "sentence_encoder.json").write_text(
        json.dumps(spec, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="Hugging Face model name or local folder (model + tokenizer)"
    )
    p.add_argument("--out", required=True, help="folder to write (model.onnx, tokenizer.json, spec)")
    p.add_argument("--pooling", default="mean", choices=("mean", "cls"))
    p.add_argument("--query-prefix", default="", help='e.g. "query: " for e5 models')
    p.add_argument("--passage-prefix", default="", help='e.g. "passage: " for e5 models')
    p.add_argument("--max-length", type=int, default=512)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(args.model, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prefixes = {"query": args.query_prefix, "passage": args.passage_prefix}
    spec = export_sentence_encoder(
        model, tokenizer, args.out, args.model, args.pooling, prefixes, args.max_length
    )
    print(
        f"{args.out}: {spec['name']} dim {spec['dim']}, ONNX parity {spec['info']['onnx_parity_max_abs_diff']:.1e}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
