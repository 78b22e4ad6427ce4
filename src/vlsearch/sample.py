"""A generated sample catalog in the Kaggle fashion layout, for tests and the demo fallback.

``write_sample_catalog`` writes ``styles.csv`` (the ten Kaggle columns) and
``images/{id}.jpg``: 60x80 RGB drawings of a simple shape per category, filled with the
product's colour, so the colour can be read from the image even when the title omits it.
The same seed gives the same bytes.

With ``images_per_product`` N > 1 each product also gets ``images/{id}_2.jpg`` ..
``images/{id}_N.jpg`` (other views: the same drawing shifted and scaled otherwise, from a
random stream of their own, so ``styles.csv`` and the first images are those of N = 1) and
``products.csv``, a column-mapped catalog (``id, title, image, category`` and the attribute
columns) whose ``image`` cell lists the N paths separated by ``|``: the multi-image catalog.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

STYLES_COLUMNS = (
    "id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season",
    "year", "usage", "productDisplayName",
)

BRANDS = (
    "Peter England", "United Colors of Benetton", "U.S. Polo Assn.", "Nike", "Puma", "ADIDAS",
    "Catwalk", "Jealous 21", "W", "Fastrack", "Lino Perros", "Wildcraft", "Red Tape", "Titan",
    "Lee Cooper",
)

COLOURS = {  # baseColour -> RGB fill
    "Black": (25, 25, 25), "White": (250, 250, 250), "Blue": (30, 80, 200),
    "Navy Blue": (20, 30, 90), "Red": (200, 30, 30), "Green": (40, 150, 60),
    "Grey": (128, 128, 128), "Pink": (240, 130, 180), "Brown": (120, 70, 30),
    "Yellow": (240, 210, 40), "Purple": (120, 50, 150), "Orange": (245, 130, 30),
}


@dataclass(frozen=True)
class _Category:
    article_type: str
    master: str
    sub: str
    noun: str  # how the title names it
    shape: str  # drawing in _SHAPES
    genders: tuple[str, ...]
    usages: tuple[str, ...]


CATEGORIES = (
    _Category("Tshirts", "Apparel", "Topwear", "T-shirt", "tshirt",
              ("Men", "Women", "Boys", "Girls"), ("Casual", "Sports")),
    _Category("Shirts", "Apparel", "Topwear", "Shirt", "shirt", ("Men", "Boys"),
              ("Formal", "Casual")),
    _Category("Jeans", "Apparel", "Bottomwear", "Jeans", "trousers", ("Men", "Women"), ("Casual",)),
    _Category("Dresses", "Apparel", "Dress", "Dress", "dress", ("Women", "Girls"),
              ("Party", "Casual")),
    _Category("Kurtas", "Apparel", "Topwear", "Kurta", "kurta", ("Women", "Men"), ("Ethnic",)),
    _Category("Casual Shoes", "Footwear", "Shoes", "Casual Shoes", "shoe",
              ("Men", "Women", "Unisex"), ("Casual",)),
    _Category("Sports Shoes", "Footwear", "Shoes", "Sports Shoes", "sports_shoe",
              ("Men", "Women", "Unisex"), ("Sports",)),
    _Category("Watches", "Accessories", "Watches", "Watch", "watch", ("Men", "Women"),
              ("Casual", "Formal")),
    _Category("Handbags", "Accessories", "Bags", "Handbag", "bag", ("Women",), ("Casual",)),
    _Category("Backpacks", "Accessories", "Bags", "Backpack", "backpack", ("Unisex", "Men"),
              ("Casual", "Sports")),
    _Category("Sunglasses", "Accessories", "Eyewear", "Sunglasses", "sunglasses",
              ("Men", "Women", "Unisex"), ("Casual",)),
    _Category("Caps", "Accessories", "Headwear", "Cap", "cap", ("Men", "Unisex"),
              ("Casual", "Sports")),
)

DESCRIPTORS = ("", "", "Printed", "Solid", "Striped", "Slim Fit", "Classic", "Textured")
SEASONS = ("Summer", "Fall", "Winter", "Spring")
YEARS = tuple(range(2010, 2018))
POSSESSIVE = {"Men": "Men's", "Women": "Women's", "Boys": "Boy's", "Girls": "Girl's"}

IMAGE_SIZE = (60, 80)  # width, height (the real catalog's size)
BACKGROUND = (236, 236, 236)
OUTLINE = (60, 60, 60)


def _scaled(points, dx: int, dy: int, s: float):
    return [(round(dx + x * s), round(dy + y * s)) for x, y in points]


def _draw(draw: ImageDraw.ImageDraw, shape: str, fill, dx: int, dy: int, s: float) -> None:
    """One category drawing in a 60x80 frame, shifted by (dx, dy) and scaled by s."""
    def poly(points):
        draw.polygon(_scaled(points, dx, dy, s), fill=fill, outline=OUTLINE)

    def box(x0, y0, x1, y1, kind="rectangle", **kw):
        (a, b), (c, d) = _scaled([(x0, y0), (x1, y1)], dx, dy, s)
        getattr(draw, kind)((a, b, c, d), **kw)

    if shape in ("tshirt", "shirt"):
        poly([(18, 14), (26, 12), (34, 12), (42, 14), (54, 26), (46, 32), (44, 28), (44, 66),
              (16, 66), (16, 28), (14, 32), (6, 26)])
        if shape == "shirt":  # collar and button line
            poly([(26, 12), (30, 20), (34, 12)])
            box(30, 20, 30, 64, "line", fill=OUTLINE)
    elif shape == "kurta":
        poly([(20, 10), (40, 10), (50, 22), (44, 26), (44, 72), (16, 72), (16, 26), (10, 22)])
    elif shape == "dress":
        poly([(24, 8), (36, 8), (38, 28), (52, 72), (8, 72), (22, 28)])
    elif shape == "trousers":
        poly([(16, 8), (44, 8), (48, 74), (34, 74), (30, 30), (26, 74), (12, 74)])
    elif shape in ("shoe", "sports_shoe"):
        poly([(8, 40), (20, 40), (26, 46), (50, 50), (54, 58), (54, 62), (8, 62)])
        if shape == "sports_shoe":
            box(8, 58, 54, 62, fill=OUTLINE)
    elif shape == "watch":
        box(24, 6, 36, 74, fill=fill, outline=OUTLINE)
        box(14, 24, 46, 56, "ellipse", fill=fill, outline=OUTLINE, width=2)
        box(20, 30, 40, 50, "ellipse", fill=(245, 245, 245), outline=OUTLINE)
    elif shape == "bag":
        box(18, 14, 42, 36, "arc", start=180, end=360, fill=OUTLINE, width=3)
        box(10, 26, 50, 66, fill=fill, outline=OUTLINE)
    elif shape == "backpack":
        box(12, 14, 48, 70, "rounded_rectangle", radius=8, fill=fill, outline=OUTLINE)
        box(18, 44, 42, 64, fill=fill, outline=OUTLINE)
    elif shape == "sunglasses":
        box(6, 32, 28, 48, "ellipse", fill=fill, outline=OUTLINE, width=2)
        box(32, 32, 54, 48, "ellipse", fill=fill, outline=OUTLINE, width=2)
        box(28, 36, 32, 38, fill=OUTLINE)
    elif shape == "cap":
        box(12, 22, 48, 58, "chord", start=180, end=360, fill=fill, outline=OUTLINE)
        poly([(40, 40), (56, 40), (56, 44), (40, 44)])
    else:
        raise ValueError(f"unknown shape {shape!r}")


def draw_product_image(shape: str, colour: str, rng: random.Random) -> Image.Image:
    """A 60x80 RGB drawing of ``shape`` filled with ``colour``, slightly shifted and scaled."""
    image = Image.new("RGB", IMAGE_SIZE, BACKGROUND)
    scale = rng.uniform(0.85, 1.0)
    dx = rng.randint(0, round(IMAGE_SIZE[0] * (1 - scale)))
    dy = rng.randint(0, round(IMAGE_SIZE[1] * (1 - scale)))
    _draw(ImageDraw.Draw(image), shape, COLOURS[colour], dx, dy, scale)
    return image


def _title(rng: random.Random, brand: str, gender: str, colour: str, category: _Category,
           colour_in_title: bool, gender_in_title: bool) -> str:
    words = [brand]
    if gender_in_title:
        possessive = gender in POSSESSIVE and rng.random() < 0.15
        words.append(POSSESSIVE[gender] if possessive else gender)
    descriptor = rng.choice(DESCRIPTORS)
    if descriptor:
        words.append(descriptor)
    if colour_in_title:
        words.append(colour)
    words.append(category.noun)
    return " ".join(words)


MULTI_IMAGE_FILE = "products.csv"  # the multi-image catalog (images_per_product > 1)


def write_sample_catalog(out_dir: str | Path, n_products: int = 300, seed: int = 0,
                         colourless_title_share: float = 0.1,
                         genderless_title_share: float = 0.05, jpeg_quality: int = 95,
                         images_per_product: int = 1) -> Path:
    """Write ``styles.csv`` and ``images/{id}.jpg`` into ``out_dir``; returns ``out_dir``.

    About ``colourless_title_share`` of the titles leave out the colour (only the image
    tells it) and ``genderless_title_share`` leave out the gender word. With
    ``images_per_product`` > 1 also the further views and ``products.csv`` (module docstring).
    """
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n_products):
        pid = str(10001 + i)
        category = rng.choice(CATEGORIES)
        brand = rng.choice(BRANDS)
        gender = rng.choice(category.genders)
        colour = rng.choice(sorted(COLOURS))
        title = _title(rng, brand, gender, colour, category,
                       colour_in_title=rng.random() >= colourless_title_share,
                       gender_in_title=rng.random() >= genderless_title_share)
        rows.append([
            pid, gender, category.master, category.sub, category.article_type, colour,
            rng.choice(SEASONS), str(rng.choice(YEARS)), rng.choice(category.usages), title,
        ])
        draw_product_image(category.shape, colour, rng).save(
            images / f"{pid}.jpg", format="JPEG", quality=jpeg_quality)
        views = random.Random(f"{seed}/{pid}")  # not drawn from rng: the N = 1 bytes stay
        for k in range(2, images_per_product + 1):
            draw_product_image(category.shape, colour, views).save(
                images / f"{pid}_{k}.jpg", format="JPEG", quality=jpeg_quality)
    with open(out / "styles.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(STYLES_COLUMNS)
        writer.writerows(rows)
    if images_per_product > 1:
        _write_multi_image_csv(out / MULTI_IMAGE_FILE, rows, images_per_product)
    return out


def _write_multi_image_csv(path: Path, rows: list[list[str]], images_per_product: int) -> None:
    """``products.csv``: the styles rows as a column-mapped catalog with every image path."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("id", "title", "image", "category", *STYLES_COLUMNS[1:-1]))
        for row in rows:
            pid = row[0]
            paths = [f"images/{pid}.jpg"] + [f"images/{pid}_{k}.jpg" for k in range(2, images_per_product + 1)]
            writer.writerow((pid, row[-1], "|".join(paths), row[4], *row[1:-1]))
