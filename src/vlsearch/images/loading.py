"""Image loading: a file decoded fully into an RGB image, or an :class:`InputError` naming it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from vlsearch.errors import InputError


def load_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image (EXIF rotation applied, alpha over white).

    Raises :class:`InputError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as raw:
            raw.load()
            image = ImageOps.exif_transpose(raw)
            return to_rgb(image)
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected an image file, found a directory") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is bad input
        raise InputError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
