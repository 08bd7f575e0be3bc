"""`rgvlm make-tiny-vlm`: tiny, randomly initialised models of real architectures, built offline in seconds.

- `qwen2_vl`: a Qwen2-VL (about 0.1M parameters) for the `hf` engine, saved with `save_pretrained` and loaded
  back through the very code that loads Qwen/Qwen2.5-VL-7B-Instruct (rgvlm_ray/labelers/engines/hf.py).
- `clip`: a CLIPModel for the `clip` reference labeler.
- `blip2`: a Blip2ForImageTextRetrieval for the `blip2` labeler.
- `xclip`: an XCLIPModel (video-text) for the `roboclip` labeler.
All get a byte-level BPE tokenizer trained here on a small corpus of our own prompt and task words, so
nothing is downloaded. Their outputs are random; they exist to exercise every code path on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CLIP_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]

# Qwen2-VL's chat-template structure: system/user/assistant turns; images become vision placeholders.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    from rgvlm_ray.data.env import ACTION_TEXTS
    from rgvlm_ray.labelers import prompts

    words = (
        "go to pick up open put next the a red green blue purple yellow grey ball box key door, then and "
        "agent goal step frame action progress score scores analysis task sub-task left right forward"
    )
    texts = [words, " ".join(ACTION_TEXTS), json.dumps({"scores": list(range(11))})]
    texts += [p.read_text() for p in sorted(prompts.PROMPT_DIR.glob("*.txt"))]
    return texts * 4


def train_tokenizer(special: list[str], vocab_size: int = 512):
    """A byte-level BPE (any text encodes) with the given special tokens first in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


def build_qwen2_vl(
    out: str | Path, seed: int = 0, text: dict | None = None, vision: dict | None = None
) -> Path:
    """`text` and `vision` override the tiny sizes (bench/label_engine.py --size small); `mrope_section` in
    `text` must split head_dim / 2 rotary frequencies over (time, height, width)."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from rgvlm_ray.labelers.engines.hf import ImageOnlyQwen2VLProcessor

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(QWEN_SPECIAL),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL,
    )
    ids = dict(zip(QWEN_SPECIAL, tokenizer.convert_tokens_to_ids(QWEN_SPECIAL), strict=True))
    # 14 px patches merged 2x2: a 56x56 frame is 4 image tokens, 112x112 is 16.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=224 * 224, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = ImageOnlyQwen2VLProcessor(image_processor, tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    text = dict(text or {})
    mrope_section = text.pop("mrope_section", [1, 1, 2])
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            # head_dim 8 -> 4 rotary frequencies split over (time, height, width)
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": mrope_section,
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            **text,
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            **(vision or {}),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


TINY_VISION = {  # the vision tower of the tiny CLIP, X-CLIP and BLIP-2
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def clip_text_side() -> tuple[Any, dict]:
    """The text side the tiny CLIP and X-CLIP share: a local BPE tokenizer whose encodings end in <|endoftext|>
    (both pool the text at that token, the highest id in the real vocabularies) and a 2-layer text tower."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    raw = train_tokenizer(CLIP_SPECIAL)
    bos, eos = raw.token_to_id("<|startoftext|>"), raw.token_to_id("<|endoftext|>")
    raw.post_processor = TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.model_max_length = 77
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    return tokenizer, text_config


def build_clip(out: str | Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer, text_config = clip_text_side()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=text_config,
        vision_config=TINY_VISION,
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    out = Path(out)
    model.save_pretrained(out)
    CLIPProcessor(image_processor, tokenizer).save_pretrained(out)
    return out


BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_blip2(out: str | Path, seed: int = 0) -> Path:
    """A Blip2ForImageTextRetrieval (Salesforce/blip2-itm-vit-g's architecture): ViT, Q-Former, ITM head.

    The real checkpoint's tokenizer is BERT's ([CLS] text [SEP]); ours is a locally trained byte-level BPE with
    the same special tokens, and a `BlipImageProcessorPil` (the stock BlipImageProcessor needs torchvision;
    AutoImageProcessor picks the PIL one for a real checkpoint on a machine without it)."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor, PreTrainedTokenizerFast
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    raw = train_tokenizer(BERT_SPECIAL)
    cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
    raw.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    tokenizer.model_max_length = 64
    num_query_tokens = 4
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=num_query_tokens)
    config = Blip2Config(
        # Blip2VisionConfig's default initializer_range (1e-10) leaves a random tower nearly zero: every frame
        # would look alike.
        vision_config={**TINY_VISION, "initializer_range": 0.02},
        qformer_config={
            "vocab_size": len(processor.tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "encoder_hidden_size": 32,
            "pad_token_id": tokenizer.pad_token_id,
            "use_qformer_text_input": True,  # the ITM head reads the text through the Q-Former
        },
        text_config={
            "model_type": "opt",
            "vocab_size": 64,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "ffn_dim": 32,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 16,
        },
        num_query_tokens=num_query_tokens,
        # the processor puts num_query_tokens <image> tokens before the text; the model strips them again
        image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
        image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_xclip(out: str | Path, seed: int = 0, num_frames: int = 8) -> Path:
    """An XCLIPModel (microsoft/xclip-base-patch32's architecture: CLIP towers, cross-frame communication, a
    multi-frame integration transformer and a video-conditioned text prompt), `num_frames` frames per clip as
    the real one. Video frames go through `VideoMAEImageProcessorPil` (the stock VideoMAEImageProcessor needs
    torchvision)."""
    import torch
    from transformers import XCLIPConfig, XCLIPModel, XCLIPProcessor
    from transformers.models.videomae.image_processing_pil_videomae import VideoMAEImageProcessorPil

    tokenizer, text_config = clip_text_side()
    image_processor = VideoMAEImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    config = XCLIPConfig(
        text_config=text_config,
        vision_config={
            **TINY_VISION,
            "mit_hidden_size": 16,
            "mit_intermediate_size": 32,
            "mit_num_attention_heads": 2,
            "num_frames": num_frames,
        },
        projection_dim=16,
        prompt_num_attention_heads=2,
    )
    torch.manual_seed(seed)
    model = XCLIPModel(config)
    out = Path(out)
    model.save_pretrained(out)
    XCLIPProcessor(image_processor, tokenizer).save_pretrained(out)
    return out


BUILDERS = {"qwen2_vl": build_qwen2_vl, "clip": build_clip, "blip2": build_blip2, "xclip": build_xclip}
