"""Shrunk, random-weight parts that the model families are built from: tokenizers made
offline (a character CLIP vocabulary; a small sentencepiece model for T5), CLIP and T5
text encoders, and VAEs with the real 8x downscale (four blocks).

Each class is the one the published checkpoints use; only layer counts and widths shrink.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

from worker.engine.tiny_model import character_tokenizer

HIDDEN = 32  # every text encoder's width (CLIP hidden and projection, T5 d_model)
_CORPUS = [
    "a photo of a cat in the style of picasso",
    "an oil painting of a dog by the sea, watercolor, sketch",
    "the quick brown fox jumps over the lazy dog at night",
    "portrait of a woman, studio light, 35mm, film grain",
]


def clip_tokenizer() -> tuple[Any, int]:
    """A CLIPTokenizer from an in-memory character vocabulary (merges=[])."""
    return character_tokenizer()


def clip_text_encoder(vocab_size: int, *, with_projection: bool = False,
                      hidden_act: str = "quick_gelu") -> Any:
    """CLIPTextModel (SD 1.x/2.x, SDXL's first encoder, Flux) or, with a projection,
    CLIPTextModelWithProjection (SDXL's second encoder, SD3's two)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=HIDDEN,
                            intermediate_size=2 * HIDDEN, projection_dim=HIDDEN,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=77, hidden_act=hidden_act,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def train_sentencepiece(folder: Path) -> Path:
    """A unigram sentencepiece model (``spiece.model``, as T5 checkpoints ship it),
    trained offline on a few sentences."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 8), model_writer=model, vocab_size=64,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spiece.model"
    path.write_bytes(model.getvalue())
    return path


def t5_tokenizer(work: Path) -> tuple[Any, Path]:
    """A T5 tokenizer converted from a freshly trained ``spiece.model``; returns the
    tokenizer and the model file (copied next to the saved tokenizer later)."""
    from transformers import T5TokenizerFast

    spiece = train_sentencepiece(work / "spiece")
    return T5TokenizerFast.from_pretrained(spiece.parent, extra_ids=0), spiece


def t5_text_encoder(vocab_size: int, d_model: int = HIDDEN) -> Any:
    """T5EncoderModel; SD3 needs ``d_model`` at least its two CLIP widths together."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=64,
                                   num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                   feed_forward_proj="gated-gelu", pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0))


def vae(latent_channels: int = 4, *, flow: bool = False) -> Any:
    """AutoencoderKL with four blocks (8x downscale). ``flow``: SD3/Flux's 16-channel
    latent without quant convs, with a shift factor."""
    from diffusers import AutoencoderKL

    extra: dict[str, Any] = (
        {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.0609,
         "scaling_factor": 1.5305} if flow else {})
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(8, 16, 16, 16),
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
                         norm_num_groups=8, sample_size=512, **extra)


def copy_spiece(spiece: Path, tokenizer_folder: Path) -> None:
    """Put ``spiece.model`` beside the saved T5 tokenizer, as published folders have it."""
    shutil.copyfile(spiece, tokenizer_folder / "spiece.model")
