"""CaseOps: the lossless case transform the frontier's SP8192 tokenizer is trained on (PR #1729 of
openai/parameter-golf, "lossless_caps_caseops_v1"), its exact inverse, and each token's original bytes.

On every maximal run of ASCII letters:
    lowercase                 stays                                   "the"   -> "the"
    TitleCase (or one capital) TITLE + lowercase                      "The"   -> TITLE "the"
    ALLCAPS (two letters or more) ALLCAPS + lowercase                 "NASA"  -> ALLCAPS "nasa"
    other mixed case          TITLE if the first letter is upper, then CAPNEXT before each later capital
                                                                      "iPhone" -> "i" CAPNEXT "phone"
A marker character already in the text is escaped: ESC + the character. Everything else (digits,
punctuation, whitespace, non-ASCII letters) is untouched, so decode(encode(text)) == text for any text.

The markers are the private-use characters U+E001..U+E004; the tokenizer reserves them as user-defined
pieces (ids 4..7, after pad/bos/eos/unk), so a marker is always a token of its own.
"""
import re

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
MARKERS = (TITLE, ALLCAPS, CAPNEXT, ESC)
MARKER_IDS = (4, 5, 6, 7)  # the tokenizer's ids for MARKERS
WORD_OR_MARKER = re.compile("[A-Za-z]+|[\ue001-\ue004]")
MARKER = re.compile("[\ue001-\ue004]")
ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class CaseOpsError(ValueError):
    pass


def encode_word(word: str) -> str:
    """One maximal run of ASCII letters, transformed."""
    lower = word.lower()
    if word == lower:
        return word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[0].isupper() and word[1:] == lower[1:]:
        return TITLE + lower
    out = [TITLE + lower[0] if word[0].isupper() else lower[0]]
    for ch, low in zip(word[1:], lower[1:]):
        out.append(CAPNEXT + low if ch.isupper() else low)
    return "".join(out)


def encode(text: str) -> str:
    """The CaseOps text of `text`."""
    out = []
    pos = 0
    for m in WORD_OR_MARKER.finditer(text):
        out.append(text[pos:m.start()])
        token = m.group()
        out.append(ESC + token if token in MARKERS else encode_word(token))
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def decode(text: str) -> str:
    """The original text of a CaseOps text; CaseOpsError where `text` is not one encode() can write."""
    out = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == ESC:
            if i + 1 >= n or text[i + 1] not in MARKERS:
                raise CaseOpsError(f"escape at {i} is not followed by a marker")
            out.append(text[i + 1])
            i += 2
        elif ch == ALLCAPS:
            j = i + 1
            while j < n and text[j] in ASCII_LETTERS:
                j += 1
            word = text[i + 1:j]
            if len(word) < 2 or not word.islower():
                raise CaseOpsError(f"ALLCAPS at {i} is not followed by two or more lowercase letters")
            out.append(word.upper())
            i = j
        elif ch in (TITLE, CAPNEXT):
            if i + 1 >= n or not "a" <= text[i + 1] <= "z":
                raise CaseOpsError(f"marker U+{ord(ch):04X} at {i} is not followed by a lowercase ASCII letter")
            out.append(text[i + 1].upper())
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def original_bytes(surfaces) -> list[int]:
    """The original UTF-8 bytes behind each piece, given the pieces' surfaces (the slices of the CaseOps text
    each piece covers, in order): markers count 0, an escaped marker its own 3 bytes, everything else its
    UTF-8 length (lowercasing an ASCII letter keeps its byte)."""
    counts = []
    escaped = False
    for surface in surfaces:
        if not escaped and not MARKER.search(surface):
            counts.append(len(surface.encode("utf-8")))
            continue
        n = 0
        for ch in surface:
            if escaped:
                escaped = False
                n += len(ch.encode("utf-8"))
            elif ch == ESC:
                escaped = True
            elif ch not in MARKERS:
                n += len(ch.encode("utf-8"))
        counts.append(n)
    return counts
