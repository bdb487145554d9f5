"""The forms of a query text that a match must satisfy: the text itself, and the text without its
colour words.

Why: a short caption's sentence embedding is dominated by its colour. With the built-in scene's
captions, "a red apple" reaches relevance 0.90 on "a red coffee mug", "a grey box" 0.87 on "a dark
grey tray", "a yellow ball" 0.90 on "a yellow rubber duck": above the 0.80 threshold, so the query
answered with a grasp on the wrong object. Their object words alone ("apple", "box", "ball") score
0.27-0.39 there, while the right object's ("mug" for "the red mug", "tray" for "a dark grey tray")
keep 0.95-0.99. A pixel (or Gaussian) counts as relevant only when it is relevant to every form.
"""

from __future__ import annotations

COLOUR_WORDS: tuple[str, ...] = (
    "red", "green", "blue", "yellow", "orange", "purple", "violet", "pink", "brown", "black",
    "white", "grey", "gray", "silver", "gold", "golden", "beige", "tan", "dark", "light", "bright",
    "pale",
)  # fmt: skip
ARTICLES: tuple[str, ...] = ("a", "an", "the")
# A core of only these names nothing: "the red one" keeps its colour ("one" alone would match
# nothing, and "object" is itself a canonical negative).
GENERIC_WORDS: tuple[str, ...] = ("one", "object", "objects", "thing", "things", "item", "stuff", "something")


def query_forms(text: str, attribute_words: tuple[str, ...] = COLOUR_WORDS) -> list[str]:
    """[text] plus, when it differs and still names something, the text without its articles and
    attribute words ("a red coffee mug" -> ["a red coffee mug", "coffee mug"]; "red" -> ["red"];
    "the red one" -> ["the red one"]).

    Material words ("wooden", "rubber") stay: a "small wooden object" is the wooden block because
    of its material, and without it ("small object") matches no caption."""
    text = " ".join(text.split())
    drop = {w.lower() for w in attribute_words}
    if not drop:
        return [text]
    words = [w for w in text.split() if w.lower().strip(".,;:!?") not in drop]
    core = [w for w in words if w.lower() not in ARTICLES]
    generic = all(w.lower().strip(".,;:!?") in GENERIC_WORDS for w in core)
    if generic or len(words) == len(text.split()):
        return [text]  # nothing but attributes, or no attribute at all: the text is its own core
    return [text, " ".join(core)]
