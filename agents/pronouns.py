"""Saying the user's words back to them: "take my vitamins" becomes "take your
vitamins", so a confirmation, a reminder or a remembered fact never sounds as if the
box were talking about itself."""

from __future__ import annotations

import re

FIRST_TO_SECOND = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself",
    "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd",
    "we": "you", "us": "you", "our": "your", "ours": "yours", "ourselves": "yourselves",
    "we're": "you're", "we've": "you've", "we'll": "you'll",
}
# "I am" / "I was": the verb changes with the pronoun.
VERBS = {("i", "am"): "are", ("i", "was"): "were", ("we", "am"): "are"}
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def second_person(text: str) -> str:
    """The same words, addressed to the user (first person becomes second person)."""
    out: list[str] = []
    last = 0
    previous = ""
    for m in WORD.finditer(text.replace("’", "'")):
        word = m.group()
        lower = word.lower()
        swapped = VERBS.get((previous, lower)) or FIRST_TO_SECOND.get(lower)
        out.append(text[last:m.start()])
        if swapped is None:
            out.append(word)
        else:
            out.append(swapped.capitalize() if word[0].isupper() and m.start() == 0 else swapped)
        last = m.end()
        previous = lower
    out.append(text[last:])
    return "".join(out)
