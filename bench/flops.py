"""FLOPs of one img2img call, counted (not estimated) with torch's FlopCounterMode.

One forward of each component runs at the exact shapes of the benchmark: the text
encoder(s) on prompt and negative prompt, the VAE encoder on the input batch, the UNet
at the classifier-free-guidance batch (2 x images), the VAE decoder. The UNet count is
multiplied by the number of denoising steps diffusers really runs for img2img,
``int(steps * strength)``. FlopCounterMode counts matmuls, convolutions and attention
(2 FLOPs per multiply-add); elementwise work (norms, activations, the scheduler) is not
counted, which is the usual convention for "achieved TFLOP/s" on tensor cores.

Dense peak figures (no sparsity) are the vendors' datasheet numbers for fp16/bf16 with
fp32 accumulation on tensor cores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# name fragment (lower case, most specific first) -> dense fp16/bf16 tensor TFLOP/s
DENSE_FP16_PEAK_TFLOPS: list[tuple[str, float]] = [
    ("h200", 989.4),          # H200 SXM (same compute as H100 SXM)
    ("gh200", 989.4),
    ("h100 nvl", 835.0),
    ("h100 pcie", 756.0),
    ("h100", 989.4),          # H100 SXM5 / "H100 80GB HBM3"
    ("b200", 2250.0),
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.1),
    ("l40", 181.0),
    ("a10", 125.0),
    ("l4", 121.0),
    ("v100", 125.0),
    ("t4", 65.0),
]


def dense_peak_tflops(device_name: str) -> float | None:
    name = device_name.lower()
    for fragment, peak in DENSE_FP16_PEAK_TFLOPS:
        if fragment in name:
            return peak
    return None


def denoising_steps(steps: int, strength: float) -> int:
    """What diffusers' img2img runs: ``min(int(steps * strength), steps)``."""
    return min(int(steps * strength), steps)


@dataclass(frozen=True)
class FlopCount:
    batch: int
    denoising_steps: int
    cfg: bool
    text_encoders: int
    vae_encode: int
    unet_forward: int
    vae_decode: int

    @property
    def total(self) -> int:
        return (self.text_encoders + self.vae_encode + self.vae_decode
                + self.unet_forward * self.denoising_steps)

    @property
    def per_image(self) -> float:
        return self.total / self.batch

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total, "per_image": self.per_image}


def _extra_formulas() -> dict:
    """Ops torch's counter misses: the CPU flash-attention kernel SDPA uses on a CPU
    (the CUDA flash/efficient/cuDNN kernels are counted by torch itself)."""
    import torch
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: cpu_sdpa} if op is not None else {}


def _count(fn) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    with torch.inference_mode(), counter:
        fn()
    return int(counter.get_total_flops())


def count_pipeline_flops(pipe: Any, *, batch: int, height: int, width: int, steps: int,
                         strength: float, guidance_scale: float) -> FlopCount:
    """Count one call's FLOPs on ``pipe`` (its modules on one device, no offload hooks)."""
    import torch

    unet, vae = pipe.unet, pipe.vae
    device, dtype = unet.device, unet.dtype
    cfg = guidance_scale > 1.0
    unet_batch = 2 * batch if cfg else batch
    prompts = 2 * batch if cfg else batch
    seq = pipe.tokenizer.model_max_length
    ids = torch.ones(prompts, seq, dtype=torch.long, device=device)

    encoders = [m for m in (getattr(pipe, "text_encoder", None),
                            getattr(pipe, "text_encoder_2", None)) if m is not None]
    text = sum(_count(lambda m=m: m(ids.to(m.device), output_hidden_states=True))
               for m in encoders)

    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    image = torch.randn(batch, 3, height, width, device=vae.device, dtype=vae.dtype)
    latents = torch.randn(batch, vae.config.latent_channels, height // scale,
                          width // scale, device=vae.device, dtype=vae.dtype)
    encode = _count(lambda: vae.encode(image))
    decode = _count(lambda: vae.decode(latents))

    sample = torch.randn(unet_batch, unet.config.in_channels, height // scale,
                         width // scale, device=device, dtype=dtype)
    context = torch.randn(unet_batch, seq, unet.config.cross_attention_dim, device=device,
                          dtype=dtype)
    kwargs: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        n_ids = ((unet.config.projection_class_embeddings_input_dim - pooled)
                 // unet.config.addition_time_embed_dim)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(unet_batch, pooled, device=device, dtype=dtype),
            "time_ids": torch.zeros(unet_batch, n_ids, device=device, dtype=dtype),
        }
    timestep = torch.tensor(500, device=device)
    forward = _count(lambda: unet(sample, timestep, encoder_hidden_states=context, **kwargs))
    return FlopCount(batch=batch, denoising_steps=denoising_steps(steps, strength), cfg=cfg,
                     text_encoders=text, vae_encode=encode, unet_forward=forward,
                     vae_decode=decode)


def count_call_flops(call) -> int:
    """FLOPs of an arbitrary call (e.g. a whole pipeline call), to cross-check the above."""
    return _count(call)


def count_on_meta(name: str, *, batch: int, size: int, steps: int, strength: float,
                  guidance_scale: float) -> FlopCount:
    """Count a full-size architecture ('sd15' or 'sdxl') on the meta device: shapes only,
    no memory and no arithmetic, so it runs on any machine in seconds."""
    from bench.models import build_sd15, build_sdxl

    pipe = {"sd15": build_sd15, "sdxl": build_sdxl}[name](device="meta")
    return count_pipeline_flops(pipe, batch=batch, height=size, width=size, steps=steps,
                                strength=strength, guidance_scale=guidance_scale)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    p = argparse.ArgumentParser(description="Counted FLOPs of one img2img call "
                                "(full-size architecture, meta device)")
    p.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    p.add_argument("--size", type=int, default=None, help="px (512 sd15, 1024 sdxl)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=0.8)
    p.add_argument("--guidance", type=float, default=7.5)
    args = p.parse_args(argv)
    size = args.size or (512 if args.model == "sd15" else 1024)
    count = count_on_meta(args.model, batch=args.batch, size=size, steps=args.steps,
                          strength=args.strength, guidance_scale=args.guidance)
    print(json.dumps({"model": args.model, "size": size, **count.as_dict()}, indent=2))


if __name__ == "__main__":
    main()
