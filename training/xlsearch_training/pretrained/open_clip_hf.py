"""open_clip models with a multilingual Hugging Face text tower (``xlm-roberta-base-ViT-B-32``,
``xlm-roberta-large-ViT-H-14``, ...): open_clip's image tower + ``open_clip.hf_model.HFTextEncoder``.

- ``pretrained=TAG`` (e.g. ``laion5b_s13b_b90k``): open_clip's own loader (``create_model_and_transforms``) and
  tokenizer (``get_tokenizer``: the Hugging Face tokenizer of the text tower); both download on first use.
- ``pretrained="random"``: the architecture with seeded random weights, built offline: the vision config from
  open_clip's model config, the text transformer from the known Hugging Face config of its text model
  (`HF_TEXT_CONFIGS`) and a local ``tokenizer.json`` (``tokenizer_dir``: a folder saved by
  ``transformers.PreTrainedTokenizerFast.save_pretrained``; `train_local_tokenizer` makes one).
- ``name="tiny"``: a 2-layer ViT 32 px + 2-layer XLM-R 32-d, random weights (tests).

The serving tokenizer is the tower's ``tokenizer.json`` through the ``tokenizers`` library, with open_clip's
HFTokenizer cleaning ("whitespace") and context length; the reference is open_clip's ``HFTokenizer`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xlsearch_training.pretrained.towers import ImageTower, PretrainedTowers, TextTower, clip_preprocess

__all__ = ["HF_TEXT_CONFIGS", "TINY_OPEN_CLIP", "build_open_clip", "train_local_tokenizer"]

_XLMR = {
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
}
# The Hugging Face configs of the text models open_clip's multilingual towers use (from their config.json).
HF_TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "xlm-roberta-base": {
        **_XLMR,
        "vocab_size": 250002,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 514,
    },
    "xlm-roberta-large": {
        **_XLMR,
        "vocab_size": 250002,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 514,
    },
}
TINY_OPEN_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"hf_model_name": "xlm-roberta-base", "hf_pooler_type": "mean_pooler", "hf_proj_type": "mlp"},
    "hf": {
        **_XLMR,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 80,
    },
}
CONTEXT_LENGTH = 77  # open_clip's default for HF text towers


def train_local_tokenizer(texts: list[str], folder: Path, vocab_size: int = 2000) -> Path:
    """An XLM-R-style SentencePiece Unigram tokenizer trained on ``texts`` with the ``tokenizers`` library
    (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<s> $A </s>``), saved as a Hugging Face tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>")
    tk.train_from_iterator(texts, trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def _text_encoder(text_cfg: dict[str, Any], hf: dict[str, Any], embed_dim: int) -> torch.nn.Module:
    from open_clip.hf_model import HFTextEncoder
    from transformers import XLMRobertaConfig

    config = XLMRobertaConfig(**hf)
    config._attn_implementation = "eager"  # exportable attention
    return HFTextEncoder(
        text_cfg["hf_model_name"],
        output_dim=embed_dim,
        config=config,
        pooler_type=text_cfg.get("hf_pooler_type", "mean_pooler"),
        proj_type=text_cfg.get("hf_proj_type", "mlp"),
    )


def _random_towers(name: str, seed: int, tokenizer_dir: Path | None) -> tuple[Any, Any, dict[str, Any], int]:
    import open_clip
    from open_clip.model import _build_vision_tower

    if name == "tiny":
        cfg = TINY_OPEN_CLIP
        hf = dict(cfg["hf"])
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None or "hf_model_name" not in cfg.get("text_cfg", {}):
            raise ValueError(f"{name!r} is not an open_clip model with a Hugging Face text tower")
        hf_name = cfg["text_cfg"]["hf_model_name"]
        if hf_name not in HF_TEXT_CONFIGS:
            raise ValueError(
                f"no offline config for text model {hf_name!r} (known: {', '.join(HF_TEXT_CONFIGS)})"
            )
        hf = dict(HF_TEXT_CONFIGS[hf_name])
    if tokenizer_dir is None:
        raise ValueError("random open_clip towers need a local tokenizer folder (tokenizer_dir)")
    from transformers import AutoTokenizer

    hf["vocab_size"] = max(hf.get("vocab_size", 0), len(AutoTokenizer.from_pretrained(str(tokenizer_dir))))
    torch.manual_seed(seed)
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
    text = _text_encoder(cfg["text_cfg"], hf, cfg["embed_dim"])
    return visual, text, cfg, int(cfg["vision_cfg"]["image_size"])


def build_open_clip(
    name: str, pretrained: str = "random", seed: int = 0, tokenizer_dir: str | Path | None = None
) -> PretrainedTowers:
    """Towers of open_clip model ``name`` with a Hugging Face text tower (see the module docstring)."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    if pretrained == "random":
        visual, text, cfg, size = _random_towers(name, seed, Path(tokenizer_dir) if tokenizer_dir else None)
        tokenizer = HFTokenizer(str(tokenizer_dir), context_length=CONTEXT_LENGTH)
        preprocess = clip_preprocess(size, "shortest")
        label = f"random (seed {seed})"
    else:
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        visual, text = model.visual, model.text
        tokenizer = open_clip.get_tokenizer(name)
        from xlsearch_training.backbones import _open_clip_preprocess

        preprocess = _open_clip_preprocess(visual.preprocess_cfg)
        cfg, label = open_clip.get_model_config(name), pretrained
    if tokenizer.clean_fn.__name__ != "_clean_whitespace" or tokenizer.strip_sep_token:
        raise ValueError(f"{name}: only open_clip's default HF tokenizer settings are supported")
    folder = Path(tokenizer_dir) if pretrained == "random" else None
    if folder is None:  # the downloaded tokenizer: its tokenizer.json goes into the bundle
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="xlsearch-tokenizer-"))
        tokenizer.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    visual.eval()
    text.eval()
    pad_id = int(text.config.pad_token_id)
    return PretrainedTowers(
        family="open_clip",
        model_name=name,
        weights=label,
        image=ImageTower(visual),
        text=TextTower(text, text),
        dim=int(cfg["embed_dim"]),
        preprocess=preprocess,
        tokenizer_file=folder / "tokenizer.json",
        tokenizer_spec={
            "kind": "hf_tokenizers",
            "context_length": int(tokenizer.context_length),
            "pad_id": pad_id,
            "clean": "whitespace",
        },
        reference_tokenize=lambda texts: tokenizer(texts),
        info={"config": {k: v for k, v in cfg.items() if k != "hf"}, "text_config": text.config.to_dict()},
    ).eval()
