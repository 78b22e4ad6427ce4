"""Phrasing tables: the ways shoppers write each canonical category, colour, gender and usage
(data kept as Python tables), the per-category rules of which attributes read naturally in
a query, and the colour-naming test of a title.

``SYNONYMS`` gathers every phrasing the generator writes ({attribute: {canonical value:
phrasings}}); query understanding may load it as an optional, hand-written synonym layer.
"""

from __future__ import annotations

from collections.abc import Iterable

from vlsearch.text import segment
from vlsearch.vocabulary import canonical

# articleType (canonical) -> the ways shoppers write it; the most frequent ~80 types of the
# fashion catalog. Phrases never overlap between types. Unlisted types use their own name.
CATEGORY_PHRASES: dict[str, tuple[str, ...]] = {
    "tshirts": ("tshirts", "tshirt", "t-shirts", "t-shirt", "t shirt", "tees", "tee"),
    "shirts": ("shirts", "shirt"),
    "casual shoes": ("casual shoes", "casual shoe", "casual sneakers"),
    "watches": ("watches", "watch", "wrist watch", "wristwatch"),
    "sports shoes": ("sports shoes", "sport shoes", "sneakers", "running shoes", "trainers"),
    "kurtas": ("kurtas", "kurta"),
    "tops": ("tops", "top"),
    "handbags": ("handbags", "handbag", "hand bag", "purse", "purses"),
    "heels": ("heels", "high heels", "heeled sandals"),
    "sunglasses": ("sunglasses", "sunglass", "shades", "sun glasses", "goggles"),
    "wallets": ("wallets", "wallet"),
    "flip flops": ("flip flops", "flip-flops", "flipflops", "slippers", "chappals"),
    "sandals": ("sandals", "sandal"),
    "briefs": ("briefs", "brief"),
    "belts": ("belts", "belt"),
    "backpacks": ("backpacks", "backpack", "school bag", "college bag"),
    "socks": ("socks", "sock"),
    "formal shoes": ("formal shoes", "formal shoe", "office shoes"),
    "perfume and body mist": ("perfume", "perfumes", "body mist", "eau de toilette"),
    "jeans": ("jeans", "denims", "denim jeans"),
    "shorts": ("shorts", "half pants", "bermudas"),
    "trousers": ("trousers", "trouser", "pants", "chinos"),
    "flats": ("flats", "flat sandals", "ballerinas", "flat shoes"),
    "bra": ("bra", "bras", "brassiere"),
    "dresses": ("dresses", "dress", "frock"),
    "sarees": ("sarees", "saree", "sari", "saris"),
    "earrings": ("earrings", "earring", "ear rings"),
    "deodorant": ("deodorant", "deodorants", "deo"),
    "nail polish": ("nail polish", "nail paint", "nail enamel"),
    "lipstick": ("lipstick", "lipsticks", "lip stick"),
    "track pants": ("track pants", "trackpants", "joggers", "track pant"),
    "clutches": ("clutches", "clutch", "clutch bag"),
    "sweatshirts": ("sweatshirts", "sweatshirt", "hoodie", "hoodies"),
    "caps": ("caps", "cap", "baseball cap"),
    "sweaters": ("sweaters", "sweater", "pullover", "jumper"),
    "ties": ("ties", "tie", "neckties", "necktie"),
    "jackets": ("jackets", "jacket"),
    "innerwear vests": ("vests", "vest", "innerwear vest", "banian"),
    "kurtis": ("kurtis", "kurti"),
    "tunics": ("tunics", "tunic"),
    "nightdress": ("nightdress", "nighty", "nightie", "night dress"),
    "leggings": ("leggings", "legging"),
    "pendant": ("pendant", "pendants", "locket"),
    "capris": ("capris", "capri", "three fourths"),
    "necklace and chains": ("necklace", "necklaces", "chain", "chains"),
    "lip gloss": ("lip gloss", "lipgloss"),
    "night suits": ("night suits", "night suit", "pajamas", "pyjamas"),
    "trunk": ("trunks", "trunk"),
    "skirts": ("skirts", "skirt"),
    "scarves": ("scarves", "scarf"),
    "ring": ("ring", "rings"),
    "dupatta": ("dupatta", "dupattas", "chunni"),
    "accessory gift set": ("accessory gift set", "gift set", "gift hamper"),
    "cufflinks": ("cufflinks", "cuff links", "cufflink"),
    "kajal and eyeliner": ("kajal", "eyeliner", "eye liner", "kohl"),
    "kurta sets": ("kurta sets", "kurta set", "kurta pyjama set"),
    "stoles": ("stoles", "stole"),
    "duffel bag": ("duffel bag", "duffle bag", "gym bag", "duffel bags"),
    "bangle": ("bangles", "bangle"),
    "laptop bag": ("laptop bag", "laptop bags", "office bag"),
    "foundation and primer": ("foundation", "primer", "face foundation"),
    "sports sandals": ("sports sandals", "floaters", "sport sandals"),
    "bracelet": ("bracelet", "bracelets"),
    "lounge pants": ("lounge pants", "lounge pant", "pyjama bottoms"),
    "face moisturisers": ("face moisturiser", "moisturizer", "face cream", "moisturiser"),
    "jewellery set": ("jewellery set", "jewelry set", "jewellery sets"),
    "fragrance gift set": ("fragrance gift set", "perfume gift set"),
    "highlighter and blush": ("blush", "highlighter", "blusher"),
    "boxers": ("boxers", "boxer shorts"),
    "compact": ("compact", "compact powder"),
    "lip liner": ("lip liner", "lipliner"),
    "mobile pouch": ("mobile pouch", "phone pouch"),
    "messenger bag": ("messenger bag", "messenger bags", "sling bag"),
    "eyeshadow": ("eyeshadow", "eye shadow"),
    "suspenders": ("suspenders",),
    "camisoles": ("camisoles", "camisole", "cami"),
    "mufflers": ("mufflers", "muffler"),
    "patiala": ("patiala", "patiala pants", "patiala salwar"),
    "lounge shorts": ("lounge shorts", "sleep shorts"),
    "jeggings": ("jeggings", "jegging"),
    "stockings": ("stockings", "stocking"),
    "salwar": ("salwar", "salwars"),
    "churidar": ("churidar", "churidars"),
    "tracksuits": ("tracksuits", "tracksuit", "track suit"),
    "face wash and cleanser": ("face wash", "cleanser", "facewash"),
    "sunscreen": ("sunscreen", "sunblock", "sun screen"),
    "bath robe": ("bath robe", "bathrobe"),
    "rain jacket": ("rain jacket", "raincoat", "rain coat"),
    "swimwear": ("swimwear", "swimsuit", "swimming costume"),
    "waist pouch": ("waist pouch", "waist bag", "fanny pack"),
    "rucksacks": ("rucksacks", "rucksack"),
    "blazers": ("blazers", "blazer"),
}

# baseColour (canonical) -> true synonyms only; unlisted colours use their own name.
COLOUR_PHRASES: dict[str, tuple[str, ...]] = {
    "navy blue": ("navy blue", "navy"),
    "grey": ("grey", "gray"),
    "off white": ("off white", "off-white"),
    "multi": ("multicolour", "multicolor", "multi colour", "multicoloured"),
    "grey melange": ("grey melange", "gray melange", "melange grey"),
    "charcoal": ("charcoal", "charcoal grey"),
    "turquoise blue": ("turquoise blue", "turquoise"),
    "coffee brown": ("coffee brown", "coffee"),
    "lime green": ("lime green", "lime"),
    "fluorescent green": ("fluorescent green", "neon green"),
    "olive": ("olive", "olive green"),
    "gold": ("gold", "golden"),
    "sea green": ("sea green", "seagreen"),
}

# canonical gender -> (phrases before the category, phrases after it). The genders and their
# spellings are vlsearch.vocabulary's (GENDER_MATCHES, GENDER_ALIASES): each phrase before the
# category is one of the gender's spellings there, in the order shoppers favour (commonest
# first, which the generator's draws depend on).
GENDER_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "men": (("men", "men's", "mens", "male", "gents", "man"), ("for men",)),
    "women": (("women", "women's", "womens", "ladies", "female", "woman"), ("for women", "for ladies")),
    "boys": (("boys", "boy's", "boys'", "boy"), ("for boys",)),
    "girls": (("girls", "girl's", "girls'", "girl"), ("for girls",)),
    "kids": (("kids", "kid's", "kids'", "children's", "childrens"), ("for kids", "for children")),
    "unisex": (("unisex",), ()),
}

# canonical usage -> (phrases before the category, phrases after it)
USAGE_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "casual": (("casual",), ()),
    "sports": (("sports", "sport", "sporty", "gym"), ("for sports", "for gym", "for running")),
    "formal": (("formal", "office"), ("for office", "for work")),
    "ethnic": (("ethnic", "traditional"), ("for festive wear",)),
    "party": (("party", "partywear", "party wear"), ("for party",)),
    "smart casual": (("smart casual",), ()),
    "travel": (("travel",), ("for travel",)),
    "home": (("home",), ("for home",)),
}

# attribute -> canonical value -> every phrasing the generator writes (query understanding
# in vlsearch.index reads this to map query phrases back to catalog values)
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "category": CATEGORY_PHRASES,
    "colour": COLOUR_PHRASES,
    "gender": {g: before + after for g, (before, after) in GENDER_PHRASES.items()},
    "usage": {u: before + after for u, (before, after) in USAGE_PHRASES.items()},
}


def category_phrases(category: str) -> tuple[str, ...]:
    key = canonical(category) or ""
    return CATEGORY_PHRASES.get(key, (key,))


def colour_phrases(colour: str) -> tuple[str, ...]:
    key = canonical(colour) or ""
    return COLOUR_PHRASES.get(key, (key,))


def names_colour(title: str, colour: str) -> bool:
    """True when ``title`` names ``colour`` (or a synonym of it) as consecutive terms."""
    return names_any(segment(title), colour_words(colour))


def colour_words(colour: str) -> list[list[str]]:
    """The segmented spellings of a colour: its name and its synonyms."""
    return [words for phrase in (colour, *colour_phrases(colour)) if (words := segment(phrase))]


def names_any(terms: list[str], phrases: Iterable[list[str]]) -> bool:
    """True when one of ``phrases`` occurs in ``terms`` as consecutive terms."""
    return any(terms[i : i + len(words)] == words
               for words in phrases for i in range(len(terms) - len(words) + 1))

