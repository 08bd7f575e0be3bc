"""Frames from the dataset (PNG bytes) to the images the judge sees."""

from __future__ import annotations

import base64
import io

from PIL import Image

VIEWS = ("frames", "frames_full")  # the frame columns a labeler can be shown (docs/format.md)


def decode_frames(pngs: list[bytes], image_size: int) -> list[Image.Image]:
    """RGB images, downscaled so the longest side is at most `image_size` (never upscaled).

    Raises ValueError naming the first frame that does not decode.
    """
    out = []
    for i, png in enumerate(pngs):
        try:
            with Image.open(io.BytesIO(png)) as im:
                im.load()
                rgb = im.convert("RGB")
        except Exception as exc:  # PIL raises many types for corrupt input
            raise ValueError(f"frame {i} is not a decodable image ({type(exc).__name__}: {exc})") from None
        out.append(downscale(rgb, image_size))
    return out


def downscale(image: Image.Image, image_size: int) -> Image.Image:
    scale = image_size / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
