"""Task-complexity scoring: which kind of task a request is, and how hard.

``score()`` reads only the last user message (its first ``SCAN_LIMIT`` characters)
plus the conversation's total length. The message becomes a set of lowercased words
checked against fixed vocabularies (set intersections and a few substring checks, no
per-word Python loop; its cost is in BENCHMARKS.md). It is deterministic and explains
itself: ``features`` lists what each signal added to the score.

The task class is the class with the most distinct keyword hits (code syntax counts
two; two or more of ``+ = ^`` beside digits count one for math; ties go to the earlier
class in ``_PRIORITY``). With no hits a short message is ``simple`` and anything
else is ``general``. The score starts at the class's base difficulty and adds:

- length      up to +0.20 as the conversation grows towards 16,000 characters
- drafting    +0.20 when asked to produce code or a legal document
- proof       +0.25 when asked to prove or derive (math)
- code_block  +0.10 when the message carries code (fences or code syntax)
- mixed       +0.10 per other class also present (at most +0.20)
- multi_step  +0.05 per step or sequencing word, from 2 steps (at most +0.20)
- tools       +0.10 when the request offers tools
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

TaskClass = Literal["simple", "general", "creative", "code", "math", "reasoning", "legal"]
TASK_CLASSES: tuple[TaskClass, ...] = (
    "simple",  # greetings, one-line facts, small arithmetic
    "general",  # translation, summaries, emails, explanations, long chat
    "creative",  # poems, stories, slogans
    "code",  # writing, reviewing, testing or debugging software; SQL
    "math",  # equations, calculus, probability, proofs
    "reasoning",  # plans, comparisons, trade-offs, puzzles
    "legal",  # contracts, NDAs, clauses, compliance
)
Level = Literal["small", "medium", "large"]

SCAN_LIMIT = 4000  # characters of the last user message that are scanned
SIMPLE_MAX_CHARS = 280  # a marker-free message up to this long is "simple"
MEDIUM_FROM = 0.35  # score at which the level becomes "medium"
LARGE_FROM = 0.7  # score at which the level becomes "large"

BASE: Mapping[TaskClass, float] = {
    "simple": 0.0,
    "general": 0.15,
    "creative": 0.25,
    "code": 0.45,
    "math": 0.35,
    "reasoning": 0.4,
    "legal": 0.5,
}


def _vocabulary(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Words are matched on the lowercased message split at punctuation (``+ # -`` kept,
# so "c++", "c#", "non-disclosure" and "step-by-step" stay whole). Phrases are
# plain substring checks. Each distinct word or phrase found is one hit.
_WORDS: Mapping[TaskClass, frozenset[str]] = {
    "legal": _vocabulary(
        "contract contracts agreement agreements nda ndas non-disclosure indemnify"
        " indemnification indemnity indemnities indemnified liability liabilities clause"
        " clauses warranty warranties jurisdiction gdpr hipaa lease tenant tenants landlord"
        " lawsuit litigation statute statutes statutory legal legally attorney lawyer"
        " lawyers arbitration copyright trademark patent breach plaintiff defendant"
        " severability non-compete compliance license licence licensing"
    ),
    "code": _vocabulary(
        "code coding function functions method methods bug bugs debug debugging refactor"
        " refactoring compile compiler compiling pytest unittest jest python javascript"
        " typescript java rust golang kotlin swift sql mysql postgres postgresql sqlite"
        " query queries regex api endpoint endpoints script scripts exception exceptions"
        " traceback algorithm algorithms repo repository git docker dockerfile kubernetes"
        " html css react django flask program programming c++ c# json yaml unit-test unit-tests"
    ),
    "math": _vocabulary(
        "prove proof theorem lemma integral integrals integrate derivative derivatives"
        " differentiate equation equations eigenvalue eigenvalues eigenvector matrix"
        " matrices probability variance limit series polynomial polynomials factorize"
        " factorise factorization irrational prime primes induction calculus algebra"
        " algebraic geometry combinatorics modulo logarithm logarithms sqrt hypotenuse"
        " vector vectors"
    ),
    "reasoning": _vocabulary(
        "analyze analyse analysis compare comparison contrast trade-off trade-offs"
        " tradeoffs pros evaluate assess plan planning strategy strategies step-by-step"
        " implications decide recommend recommendation puzzle riddle logic logical deduce"
        " prioritize prioritise"
    ),
    "creative": _vocabulary(
        "poem poems poetry story stories haiku limerick sonnet lyrics song novel fiction"
        " screenplay character characters slogan slogans tagline joke jokes rap verse"
        " verses fable creative imagine"
    ),
}
# Phrases by their anchor (a word the phrase contains), so a phrase is searched for
# only when its anchor is among the message's words. Tags are task classes, "proof"
# or "step".
_PHRASES: Mapping[str, tuple[tuple[str, str], ...]] = {
    "terms": (("legal", "terms of"), ("legal", "terms and conditions")),
    "governing": (("legal", "governing law"),),
    "privacy": (("legal", "privacy policy"),),
    "intellectual": (("legal", "intellectual property"),),
    "majeure": (("legal", "force majeure"),),
    "unit": (("code", "unit test"),),
    "test": (("code", "test case"), ("code", "test suite")),
    "pull": (("code", "pull request"),),
    "stack": (("code", "stack trace"),),
    "solve": (("math", "solve for"),),
    "expected": (("math", "expected value"),),
    "root": (("math", "square root"), ("reasoning", "root cause")),
    "infinitely": (("math", "infinitely many"),),
    "x": (("math", "(x)"),),
    "frac": (("math", "\\frac"),),
    "pros": (("reasoning", "pros and cons"),),
    "through": (("reasoning", "think through"),),
    "fairy": (("creative", "fairy tale"),),
    "show": (("proof", "show that"),),
    "step": (("step", "step by step"),),
    "after": (("step", "after that"),),
}
_ANCHORS = frozenset(_PHRASES)
_PRIORITY: tuple[TaskClass, ...] = ("legal", "code", "math", "reasoning", "creative")
_GENERAL = _vocabulary(
    "translate translation summarize summarise summary rewrite rephrase paraphrase"
    " proofread email letter explain describe outline"
)
_DRAFTING = _vocabulary("write draft generate create implement build compose prepare produce")
_PROOF = _vocabulary("prove proof derive derivation")
_SEQUENCE = _vocabulary("then finally next afterwards step-by-step")
_NUMBERED = ("1. ", "2. ", "3. ", "4. ", "5. ", "1) ", "2) ", "3) ")
_BULLETS = ("\n- ", "\n* ", "\n• ")
# Code syntax: a fence, a word only code has, or a word code often has next to a symbol.
_CODE_ONLY = _vocabulary(
    "elif nullptr println printf #include kwargs typeerror valueerror"
    " keyerror indexerror attributeerror nameerror syntaxerror importerror runtimeerror"
    " nullpointerexception segfault nonetype"
)
_CODE_LIKELY = _vocabulary("def return import const var void struct impl fn async await select")
_CODE_SYMBOLS = ("(", "{", ";", "=")
_PUNCTUATION = str.maketrans({ch: " " for ch in string.punctuation if ch not in "+#-"})
_OPERATORS = ("+", "=", "^")
_DIGITS = tuple("0123456789")


@dataclass(frozen=True, slots=True)
class Complexity:
    """How hard a request is; ``features`` are (signal, amount added to the score)."""

    task: TaskClass
    score: float
    level: Level
    features: tuple[tuple[str, float], ...] = ()

    def explain(self) -> str:
        """A short ASCII reason, e.g. ``legal large 0.70: legal+0.50 drafting+0.20``."""
        parts = " ".join(f"{name}+{value:.2f}" for name, value in self.features if value)
        return f"{self.task} {self.level} {self.score:.2f}: {parts or 'no markers'}"


def score(messages: Sequence[Mapping[str, object]], *, tools: bool = False) -> Complexity:
    """Classify and score a chat request from its last user message and total length."""
    text = last_user_text(messages)[:SCAN_LIMIT]
    lowered = text.lower()
    words = set(lowered.translate(_PUNCTUATION).split())
    phrases = _phrase_hits(lowered, words)
    code_syntax = _has_code_syntax(text, words)
    steps = _multi_step(lowered, words, phrases.get("step", 0))
    hits = _class_hits(lowered, words, phrases, code_syntax)
    task = _task_class(text, words, hits, steps)
    drafting = task in ("code", "legal") and not words.isdisjoint(_DRAFTING)
    proof = task == "math" and (not words.isdisjoint(_PROOF) or "proof" in phrases)
    features = (
        (task, BASE[task]),
        ("length", round(0.2 * min(1.0, total_chars(messages) / 16000), 2)),
        ("drafting", 0.2 if drafting else 0.0),
        ("proof", 0.25 if proof else 0.0),
        ("code_block", 0.1 if task == "code" and code_syntax else 0.0),
        ("mixed", 0.1 * min(2, len(hits) - (task in hits))),
        ("multi_step", steps),
        ("tools", 0.1 if tools else 0.0),
    )
    total = round(min(1.0, sum(value for _, value in features)), 3)
    return Complexity(task, total, level_of(total), features)


def level_of(value: float) -> Level:
    if value >= LARGE_FROM:
        return "large"
    return "medium" if value >= MEDIUM_FROM else "small"


def last_user_text(messages: Sequence[Mapping[str, object]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def total_chars(messages: Sequence[Mapping[str, object]]) -> int:
    return sum(len(content_text(message.get("content"))) for message in messages)


def content_text(content: object) -> str:
    """The text of an OpenAI message ``content``: a string or a list of parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [part.get("text") for part in content if isinstance(part, Mapping)]
    return "\n".join(text for text in texts if isinstance(text, str))


def _phrase_hits(lowered: str, words: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for anchor in words & _ANCHORS:
        for tag, phrase in _PHRASES[anchor]:
            if phrase in lowered:
                found[tag] = found.get(tag, 0) + 1
    return found


def _class_hits(
    lowered: str, words: set[str], phrases: Mapping[str, int], code_syntax: bool
) -> dict[TaskClass, int]:
    hits: dict[TaskClass, int] = {}
    for task in _PRIORITY:
        count = len(words & _WORDS[task]) + phrases.get(task, 0)
        if count:
            hits[task] = count
    if code_syntax:
        hits["code"] = hits.get("code", 0) + 2
    elif _arithmetic(lowered):
        hits["math"] = hits.get("math", 0) + 1
    return hits


def _arithmetic(lowered: str) -> bool:
    """Two or more of ``+ = ^`` next to digits, e.g. ``3x + 5 = 20``."""
    operators = sum(lowered.count(op) for op in _OPERATORS)
    return operators >= 2 and any(digit in lowered for digit in _DIGITS)


def _task_class(
    text: str, words: set[str], hits: Mapping[TaskClass, int], steps: float
) -> TaskClass:
    if hits:
        return max(_PRIORITY, key=lambda task: (hits.get(task, 0), -_PRIORITY.index(task)))
    if len(text) <= SIMPLE_MAX_CHARS and words.isdisjoint(_GENERAL) and not steps:
        return "simple"
    return "general"


def _has_code_syntax(text: str, words: set[str]) -> bool:
    if "```" in text or not words.isdisjoint(_CODE_ONLY):
        return True
    return not words.isdisjoint(_CODE_LIKELY) and any(sym in text for sym in _CODE_SYMBOLS)


def _multi_step(lowered: str, words: set[str], phrases: int) -> float:
    """+0.05 per list item or sequencing word, counted from two, capped at four."""
    steps = phrases + len(words & _SEQUENCE)
    if "1" in words:
        steps += sum(1 for item in _NUMBERED if item in lowered)
    if "\n" in lowered:
        steps += sum(1 for item in _BULLETS if item in lowered)
    return round(0.05 * min(steps, 4), 2) if steps >= 2 else 0.0
