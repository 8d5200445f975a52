"""Emoji: Noto Color Emoji (Debian ``fonts-noto-color-emoji``) rendered with Pillow, captioned with their Unicode
names and labelled by group from ``emoji-test.txt`` (Debian ``unicode-data``).

Each fully-qualified emoji is drawn centred on white at the font's bitmap size and resized to ``SIZE`` × ``SIZE``
RGB. The ``test`` split is a fixed 15% of the emoji of each group.
"""

from __future__ import annotations

import pathlib

import numpy as np

from perceiver.data.sources.base import Source, seeded_order

SIZE = 64
FONT = pathlib.Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = pathlib.Path("/usr/share/unicode/emoji/emoji-test.txt")
FONT_PIXELS = 109  # the one bitmap size of the CBDT font
TEST_FRACTION = 0.15


def read_emoji_test(path: pathlib.Path) -> list[tuple[str, str, str]]:
    """(emoji, name, group) of every fully-qualified emoji in file order, without the skin-tone "Component" group."""
    entries, group = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and "#" in line and group != "Component":
            comment = line.split("#", 1)[1].strip()  # "😀 E1.0 grinning face"
            emoji, _, rest = comment.partition(" ")
            name = rest.partition(" ")[2]
            entries.append((emoji, name, group))
    return entries


class Emoji(Source):
    name = "emoji"
    splits = ("train", "test")
    fields = ("png", "txt", "cls", "json")
    install = "apt-get install -y --no-install-recommends fonts-noto-color-emoji unicode-data"

    def __init__(self, root=None):
        super().__init__(root)
        self._entries = None
        self._font = None

    def entries(self) -> list[tuple[str, str, str]]:
        if self._entries is None:
            self._entries = read_emoji_test(self.require(EMOJI_TEST))
        return self._entries

    def groups(self) -> list[str]:
        return list(dict.fromkeys(group for _, _, group in self.entries()))

    def specs(self, split, seed):
        chosen = []
        for group in self.groups():
            members = [i for i, entry in enumerate(self.entries()) if entry[2] == group]
            ordered = seeded_order(members, 0, f"{self.name}/{group}")
            count = max(1, round(len(ordered) * TEST_FRACTION))
            chosen += ordered[:count] if split == "test" else ordered[count:]
        return seeded_order(sorted(chosen), seed, f"{self.name}/{split}")

    def render(self, emoji: str) -> np.ndarray:
        from PIL import Image, ImageDraw, ImageFont

        if self._font is None:
            self._font = ImageFont.truetype(str(self.require(self.root or FONT)), FONT_PIXELS)
        canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((80, 80), emoji, font=self._font, embedded_color=True, anchor="mm")
        white = Image.new("RGBA", canvas.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, canvas).convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
        return np.asarray(image, dtype=np.uint8).copy()

    def make(self, index):
        emoji, name, group = self.entries()[index]
        return {"key": f"emoji{index:04d}", "image": self.render(emoji), "text": name,
                "label": self.groups().index(group),
                "meta": {"emoji": emoji, "name": name, "group": group, "codepoints": [f"{ord(c):04X}" for c in emoji]}}
