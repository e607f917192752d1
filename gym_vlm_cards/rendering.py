"""Drawing the observations: cached sprites blitted into a numpy frame.

Everything is drawn by this package with the DejaVu Sans Bold font shipped inside it (no system
fonts, no paths relative to the working directory, no card pictures from other projects). Pillow
draws each distinct piece once - a card face, a card back, a line of text - and the result is kept
as a numpy array; a frame is then a copy of a cached background plus a few slice assignments, which
costs a few microseconds instead of the ~0.3 ms of drawing into a fresh PIL image every step.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gym_vlm_cards.cards import SUIT_SYMBOLS, Card

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
TABLE_GREEN: Color = (0x35, 0x65, 0x4D)
CARD_RED: Color = (200, 20, 30)
CARD_BORDER: Color = (90, 90, 90)
CARD_BACK: Color = (40, 70, 160)
#: Below this width (pixels) a card shows only a large rank and suit, no corner index.
SMALL_CARD_WIDTH = 36


@lru_cache(maxsize=1)
def font_bytes() -> bytes:
    """The packaged font file, read once through importlib.resources (works from wheels and zips)."""
    return resources.files("gym_vlm_cards").joinpath("fonts/DejaVuSans-Bold.ttf").read_bytes()


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """The packaged DejaVu Sans Bold at ``size`` pixels."""
    import io

    return ImageFont.truetype(io.BytesIO(font_bytes()), size)


def _to_array(image: Image.Image) -> np.ndarray:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    array.setflags(write=False)
    return array


@lru_cache(maxsize=64)
def solid(height: int, width: int, color: Color) -> np.ndarray:
    """A read-only frame of one colour, the starting point of every observation."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:] = color
    array.setflags(write=False)
    return array


@lru_cache(maxsize=8192)
def text_sprite(text: str, size: int, color: Color, background: Color) -> np.ndarray:
    """One line of text on a solid background; every line of a given size has the same height."""
    face = font(size)
    ascent, descent = face.getmetrics()
    width = max(1, int(np.ceil(face.getlength(text))) + 2)
    image = Image.new("RGB", (width, ascent + descent), background)
    ImageDraw.Draw(image).text((1, 0), text, fill=color, font=face)
    return _to_array(image)


@lru_cache(maxsize=1024)
def card_sprite(code: str, width: int, height: int, background: Color) -> np.ndarray:
    """A card face: large rank and suit in the middle, small index in the top-left corner."""
    card = Card.parse(code)
    ink = CARD_RED if card.is_red else BLACK
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    radius = max(2, width // 10)
    draw.rounded_rectangle(
        (0, 0, width - 1, height - 1), radius=radius, fill=WHITE, outline=CARD_BORDER, width=max(1, width // 40)
    )
    symbol = SUIT_SYMBOLS[card.suit]
    if width < SMALL_CARD_WIDTH:
        # Too small for a corner index: the rank and suit alone, as large as the card allows.
        rank_font = font(max(6, int(width * (0.7 if len(card.label) == 1 else 0.5))))
        draw.text((width * 0.5, height * 0.36), card.label, fill=ink, font=rank_font, anchor="mm")
        suit_font = font(max(6, int(width * 0.5)))
        draw.text((width * 0.5, height * 0.76), symbol, fill=ink, font=suit_font, anchor="mm")
        return _to_array(image)
    corner = font(max(8, width // 5))
    draw.text((width * 0.08, height * 0.04), card.label, fill=ink, font=corner)
    draw.text((width * 0.08, height * 0.04 + corner.size), symbol, fill=ink, font=corner)
    # Large centre rank and suit: this is what a low-resolution vision encoder must read.
    rank_font = font(max(10, int(width * (0.42 if len(card.label) == 1 else 0.36))))
    draw.text((width * 0.56, height * 0.45), card.label, fill=ink, font=rank_font, anchor="mm")
    suit_font = font(max(10, int(width * 0.36)))
    draw.text((width * 0.56, height * 0.78), symbol, fill=ink, font=suit_font, anchor="mm")
    return _to_array(image)


@lru_cache(maxsize=64)
def card_back_sprite(width: int, height: int, background: Color) -> np.ndarray:
    """The back of a card (the dealer's hidden card)."""
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    radius = max(2, width // 10)
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=radius, fill=WHITE, outline=CARD_BORDER)
    inset = max(3, width // 10)
    draw.rounded_rectangle(
        (inset, inset, width - 1 - inset, height - 1 - inset), radius=max(1, radius // 2), fill=CARD_BACK
    )
    step = max(4, width // 6)
    for offset in range(-height, width, step):
        draw.line((inset + offset, inset, inset + offset + height, inset + height), fill=(70, 100, 190), width=1)
    # Redraw the border so the hatching never leaks outside the card.
    draw.rounded_rectangle((0, 0, width - 1, height - 1), radius=radius, outline=CARD_BORDER)
    outside = Image.new("RGB", (width, height), background)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width - 1, height - 1), radius=radius, fill=255)
    return _to_array(Image.composite(image, outside, mask))


class Canvas:
    """A writable frame with helpers to blit cached sprites; clips anything that falls outside."""

    def __init__(self, height: int, width: int, background: Color) -> None:
        self.background = background
        self.pixels = solid(height, width, background).copy()

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    def blit(self, sprite: np.ndarray, x: int, y: int) -> None:
        """Copies ``sprite`` with its top-left corner at (x, y)."""
        x, y = int(x), int(y)
        h, w = sprite.shape[:2]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        self.pixels[y0:y1, x0:x1] = sprite[y0 - y : y1 - y, x0 - x : x1 - x]

    def text(self, text: str, x: int, y: int, size: int, color: Color = BLACK) -> int:
        """Draws one line of text; returns its width in pixels."""
        sprite = text_sprite(text, int(size), color, self.background)
        self.blit(sprite, x, y)
        return sprite.shape[1]

    def card(self, code: str, x: int, y: int, width: int, height: int) -> None:
        self.blit(card_sprite(code, int(width), int(height), self.background), x, y)

    def card_back(self, x: int, y: int, width: int, height: int) -> None:
        self.blit(card_back_sprite(int(width), int(height), self.background), x, y)

    def fill(self, x: int, y: int, width: int, height: int, color: Color) -> None:
        x0, y0 = max(int(x), 0), max(int(y), 0)
        self.pixels[y0 : max(y0, int(y + height)), x0 : max(x0, int(x + width))] = color


def fitting_size(text: str, max_size: int, max_width: int, min_size: int = 6) -> int:
    """The largest type size up to ``max_size`` at which ``text`` fits in ``max_width`` pixels."""
    size = max(min_size, int(max_size))
    while size > min_size and font(size).getlength(text) > max_width:
        size -= 1
    return size


def line_height(size: int) -> int:
    """Height in pixels of one line of text at ``size`` (what :func:`text_sprite` makes)."""
    ascent, descent = font(size).getmetrics()
    return ascent + descent


def wrap_text(text: str, size: int, max_width: int) -> list[str]:
    """Greedy word wrap of ``text`` so that every line fits ``max_width`` pixels at ``size``."""
    return list(_wrapped(text, int(size), int(max_width)))


@lru_cache(maxsize=8192)
def _wrapped(text: str, size: int, max_width: int) -> tuple[str, ...]:
    # Cached: the card tasks wrap their formula on every frame, and formulas repeat.
    face = font(size)
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = word if not line else f"{line} {word}"
            if face.getlength(candidate) <= max_width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return tuple(lines)
