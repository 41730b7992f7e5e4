"""Tiny random-weight diffusers pipelines, built offline and saved like a downloaded model.

The configs follow diffusers' own fast tests (``tests/pipelines/<family>/``), with two changes
for a machine with no network: the tokenizers are generated here instead of downloaded, and the
text encoders' vocabularies match them. Each builder writes a folder that
``DiffusionPipeline.from_pretrained(folder)`` loads, which is the path an operator's config takes.

- :func:`build_sd`: Stable Diffusion (UNet, VAE, CLIP). Text-to-image, and image-to-image
  through ``StableDiffusionImg2ImgPipeline`` on the same folder.
- :func:`build_sd_upscaler`: Stable Diffusion's x4 super-resolution pipeline.
- :func:`build_z_image`: Z-Image (Z-Image transformer, FLUX-style VAE, Qwen3 text encoder),
  the suggested text-to-image default (Z-Image-Turbo).
- :func:`build_flux2_klein`: FLUX.2 [klein] (Flux2 transformer, Flux2 VAE, Qwen3 text encoder):
  a production family that does text-to-image and multi-reference editing in one pipeline.
- :func:`build_qwen_image_layered`: Qwen-Image-Layered (QwenImage transformer with its layer
  options, an RGBA QwenImage VAE, a Qwen2.5-VL text encoder), for layer decomposition. It has
  no ``processor``: see the function for why.

Importing this module imports torch, diffusers and transformers: only tests that need them do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    QwenImageLayeredPipeline,
    QwenImageTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2TokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

__all__ = [
    "KLEIN_CALL",
    "LAYERED_CALL",
    "ZIMAGE_CALL",
    "build_flux2_klein",
    "build_qwen_image_layered",
    "build_sd",
    "build_sd_upscaler",
    "build_z_image",
]

#: klein's pipeline reads text-encoder layers 9, 18 and 27 by default; the tiny encoder has 2
KLEIN_CALL = {"text_encoder_out_layers": [1], "max_sequence_length": 32}

#: a short prompt window keeps the tiny text encoder's work negligible
ZIMAGE_CALL = {"max_sequence_length": 32}

#: Qwen-Image-Layered renders at 640 or 1024 px (``resolution``); true CFG off for speed
LAYERED_CALL = {"resolution": 640, "max_sequence_length": 32}

#: the vision tokens of Qwen2.5-VL's vocabulary, which its config points at
_QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>"]

_QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-to-printable-character table, which CLIP's BPE vocabulary is written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _clip_tokenizer(folder: Path) -> CLIPTokenizer:
    # Every byte, alone and word-final: any prompt tokenizes, with no merges to learn.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    # transformers 5 ignores vocab_file=/merges_file= arguments: load from the folder.
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def build_sd(folder: Path, *, channels: int = 32) -> Path:
    """A tiny Stable Diffusion pipeline saved to ``folder``; ``channels`` sets its width."""
    tokenizer = _clip_tokenizer(folder.parent / f"{folder.name}-tokenizer-source")
    groups = min(32, channels)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(channels, channels * 2),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=groups,
    )
    torch.manual_seed(0)
    # Four blocks: latents 1/8 of the image, as in real SD (with diffusers' two-block test VAE
    # the UNet works at 1/2 size, and a 256 px image takes seconds per step on a CPU).
    vae = AutoencoderKL(
        block_out_channels=[channels, channels, channels * 2, channels * 2],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=groups,
        # Full attention over every latent pixel: at 256 px it alone takes seconds on a CPU.
        mid_block_add_attention=False,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
        )
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_sd_upscaler(folder: Path) -> Path:
    """A tiny ``StableDiffusionUpscalePipeline`` (4x) saved to ``folder``."""
    tokenizer = _clip_tokenizer(folder.parent / f"{folder.name}-tokenizer-source")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        only_cross_attention=(True, True, False),
        num_class_embeds=100,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        mid_block_add_attention=False,
        scaling_factor=0.08333,  # the x4 upscaler's (diffusers warns about SD's default)
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=len(tokenizer),
            hidden_act="gelu",
            projection_dim=512,
        )
    )
    pipe = StableDiffusionUpscalePipeline(
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        max_noise_level=350,
    )
    pipe.save_pretrained(folder)
    return folder


def _qwen_tokenizer(extra_special: list[str] | None = None) -> Qwen2TokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["a dog is dancing in the sahara desert", "make the cat blue and put it on the hat"],
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(extra_special or [])],
        show_progress=False,
    )
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


def build_flux2_klein(folder: Path) -> Path:
    """A tiny FLUX.2 [klein] pipeline saved to ``folder`` (call it with :data:`KLEIN_CALL`)."""
    tokenizer = _qwen_tokenizer()
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            intermediate_size=16,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
    )
    pipe.save_pretrained(folder)
    return folder


def build_z_image(folder: Path) -> Path:
    """A tiny Z-Image pipeline saved to ``folder`` (call it with :data:`ZIMAGE_CALL`)."""
    tokenizer = _qwen_tokenizer()
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[256, 32, 32],
    )
    with torch.no_grad():
        # made with torch.empty: NaN-prone random memory unless fixed (as diffusers' tests do)
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token.data))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token.data))
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 32, 32],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=16,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        mid_block_add_attention=False,
    )
    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=512,
        )
    )
    pipe = ZImagePipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )
    pipe.save_pretrained(folder)
    return folder


def build_qwen_image_layered(folder: Path) -> Path:
    """A tiny ``QwenImageLayeredPipeline`` saved to ``folder``, without its ``processor``.

    The configs are diffusers' ``tests/pipelines/qwenimage/test_qwenimage_layered.py`` with three
    changes. The VAE takes RGBA (``input_channels=4``) and has 16 latent channels, as the released
    model's does (with 4, an RGBA image is mistaken for latents by the pipeline), and 8x
    downsampling, so the transformer sees 1,600 tokens per layer at the pipeline's minimum
    640 px render instead of 6,400. The transformer has the released model's layer options
    (``use_additional_t_cond``, ``use_layer3d_rope``). The tokenizer is generated here.

    The ``processor`` (``Qwen2VLProcessor``, which captions an image that comes without a
    prompt) cannot be built on this machine: transformers >= 5.4 requires it to hold a video
    processor, video processors require torchvision, and PyPI's torchvision wheels for Linux are
    CUDA builds that fail to import beside the CPU torch the tests use (``libtorch_cuda.so`` is
    missing). So the pipeline is saved without one and loaded with ``processor=None``, which is
    what ``skip_components = ["processor"]`` does; tasks without a prompt use ``default_prompt``.
    """
    tokenizer = _qwen_tokenizer(_QWEN_VISION_TOKENS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_VISION_TOKENS}
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
        use_additional_t_cond=True,
        use_layer3d_rope=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
        input_channels=4,
    )
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config={
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default"},
                "rope_theta": 1000000.0,
                "vocab_size": len(tokenizer),
                # the generated vocabulary's, not Qwen's 151643 / 151645
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            },
            vision_config={
                "depth": 2,
                "hidden_size": 16,
                "intermediate_size": 16,
                "num_heads": 2,
                "out_hidden_size": 16,
            },
            hidden_size=16,
            vocab_size=len(tokenizer),
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            vision_token_id=ids["<|vision_pad|>"],
            image_token_id=ids["<|image_pad|>"],
        )
    )
    pipe = QwenImageLayeredPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=None,
    )
    pipe.save_pretrained(folder)
    return folder
