"""Task-complexity scoring: the task class, the score, its level and its explanation."""

from __future__ import annotations

import pytest

from gatekeeper.routing.scorer import (
    BASE,
    SCAN_LIMIT,
    TASK_CLASSES,
    Complexity,
    content_text,
    level_of,
    score,
)


def user(text: str) -> list[dict[str, object]]:
    return [{"role": "user", "content": text}]


def feature(complexity: Complexity, name: str) -> float:
    return dict(complexity.features).get(name, 0.0)


class TestTaskClass:
    @pytest.mark.parametrize(
        ("prompt", "task"),
        [
            ("What is 2+2?", "simple"),
            ("Hello!", "simple"),
            ("What's the capital of France?", "simple"),
            ("Why is the sky blue?", "simple"),
            ("Translate 'good morning' into French", "general"),
            ("Summarize this email for me in two sentences.", "general"),
            ("Write a poem about the ocean", "creative"),
            ("Write a short story about a robot who learns to paint", "creative"),
            ("Generate unit tests", "code"),
            ("Write a SQL query that returns the top 5 customers by revenue", "code"),
            ("What does the yield keyword do in Python?", "code"),
            ("Fix this error: TypeError: 'NoneType' object is not subscriptable", "code"),
            ("Prove that the square root of 2 is irrational.", "math"),
            ("Solve for x: 3x + 5 = 20", "math"),
            ("Find the derivative of f(x) = x^3 sin(x)", "math"),
            ("Compare the pros and cons of microservices versus a monolith", "reasoning"),
            ("Plan a product launch step by step", "reasoning"),
            ("Write a legal contract", "legal"),
            ("Draft a mutual NDA between two startups", "legal"),
            ("Explain what an indemnification clause means", "legal"),
        ],
    )
    def test_classifies(self, prompt: str, task: str) -> None:
        """The class with the most keyword hits wins; no hits means simple or general."""
        assert score(user(prompt)).task == task

    def test_code_syntax_outweighs_a_stray_word(self) -> None:
        """A code fence counts double, so a legal word inside a code question stays code."""
        prompt = "Why does this fail?\n```python\nlicense = open('LICENSE').read(\n```"
        assert score(user(prompt)).task == "code"

    def test_ties_go_to_the_riskier_class(self) -> None:
        """One legal and one code word: legal comes first in the priority order."""
        assert score(user("contract python")).task == "legal"

    def test_a_long_marker_free_message_is_general(self) -> None:
        """Past 280 characters a message without markers is no longer 'simple'."""
        assert score(user("tell me about the weather here " * 10)).task == "general"

    def test_classes_are_the_documented_seven(self) -> None:
        """Every class has a base difficulty."""
        assert (
            set(BASE)
            == set(TASK_CLASSES)
            == {
                "simple",
                "general",
                "creative",
                "code",
                "math",
                "reasoning",
                "legal",
            }
        )


class TestScore:
    def test_a_trivial_question_scores_zero(self) -> None:
        """No markers and a short conversation: score 0, level small."""
        complexity = score(user("What is 2+2?"))
        assert (complexity.score, complexity.level) == (0.0, "small")

    def test_drafting_a_contract_is_large(self) -> None:
        """Legal base 0.50 plus drafting 0.20."""
        complexity = score(user("Write a legal contract"))
        assert (complexity.score, complexity.level) == (0.7, "large")
        assert feature(complexity, "drafting") == 0.2

    def test_explaining_a_clause_is_not_drafting(self) -> None:
        """Reading or explaining legal text stays at the legal base."""
        assert score(user("Explain what an indemnification clause means")).score == 0.5

    def test_generating_tests_is_medium(self) -> None:
        """Code base 0.45 plus drafting 0.20."""
        complexity = score(user("Generate unit tests"))
        assert (complexity.score, complexity.level) == (0.65, "medium")

    def test_a_proof_is_harder_than_a_calculation(self) -> None:
        """Proofs add 0.25 to the math base."""
        proof = score(user("Prove that there are infinitely many primes."))
        solve = score(user("Solve for x: 3x + 5 = 20"))
        assert feature(proof, "proof") == 0.25
        assert proof.score > solve.score

    def test_code_in_the_message_adds(self) -> None:
        """A fenced code block adds 0.10 to a code task."""
        prompt = "Review this function for bugs:\n```python\ndef add(a, b):\n    return a - b\n```"
        assert feature(score(user(prompt)), "code_block") == 0.1

    def test_multi_step_instructions_add(self) -> None:
        """Numbered steps and sequencing words add 0.05 each, capped at 0.20."""
        prompt = "Plan a launch:\n1. research\n2. build a page\n3. set prices\nthen announce it"
        assert feature(score(user(prompt)), "multi_step") == 0.2
        assert feature(score(user("Plan a launch")), "multi_step") == 0.0

    def test_tools_add(self) -> None:
        """A request that offers tools is a little harder."""
        assert score(user("What's the weather in Paris?"), tools=True).score == 0.1

    def test_a_second_class_adds(self) -> None:
        """Mixed tasks (here legal and code) add 0.10 per extra class."""
        complexity = score(user("Review the indemnity clause in our python contract"))
        assert complexity.task == "legal"
        assert feature(complexity, "mixed") == 0.1

    def test_length_counts_the_whole_conversation(self) -> None:
        """A long history raises the score even when the last message is short."""
        history: list[dict[str, object]] = [
            {"role": "user", "content": "x " * 8000},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "and now?"},
        ]
        assert feature(score(history), "length") == 0.2

    def test_only_the_last_user_message_decides_the_class(self) -> None:
        """An earlier legal question does not make a greeting legal."""
        messages: list[dict[str, object]] = [
            {"role": "user", "content": "Draft an NDA"},
            {"role": "assistant", "content": "Here is a contract..."},
            {"role": "user", "content": "Thanks!"},
        ]
        assert score(messages).task == "simple"

    def test_reads_content_parts(self) -> None:
        """Content given as a list of parts is scored from its text parts."""
        parts = [
            {"type": "text", "text": "Write a legal contract"},
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
        ]
        assert score([{"role": "user", "content": parts}]).task == "legal"

    def test_no_user_message(self) -> None:
        """A conversation without a user message scores as simple."""
        assert score([{"role": "system", "content": "Be brief."}]).task == "simple"

    def test_scans_a_bounded_prefix(self) -> None:
        """Markers past SCAN_LIMIT characters are not seen, which keeps scoring fast."""
        prompt = "a " * SCAN_LIMIT + "Write a legal contract"
        assert score(user(prompt)).task == "general"

    def test_score_is_the_sum_of_the_features(self) -> None:
        """Every point of the score is accounted for by a named feature."""
        complexity = score(user("Plan step by step, then write a Python script"), tools=True)
        assert complexity.score == pytest.approx(sum(v for _, v in complexity.features))

    def test_is_capped_at_one(self) -> None:
        """However many signals fire, the score stays within 0..1."""
        prompt = (
            "Draft a contract and a python script, prove the theorem, plan step by step:\n"
            "1. a\n2. b\n3. c\n4. d\n" + "z " * 8000
        )
        assert score(user(prompt), tools=True).score == 1.0

    def test_is_deterministic(self) -> None:
        """The same request always scores the same."""
        assert score(user("Generate unit tests")) == score(user("Generate unit tests"))


class TestLevel:
    @pytest.mark.parametrize(
        ("value", "level"),
        [(0.0, "small"), (0.34, "small"), (0.35, "medium"), (0.69, "medium"), (0.7, "large")],
    )
    def test_boundaries(self, value: float, level: str) -> None:
        """small below 0.35, large from 0.70."""
        assert level_of(value) == level


class TestExplain:
    def test_names_the_class_level_and_contributions(self) -> None:
        """The explanation is short and shows what added to the score."""
        assert score(user("Write a legal contract")).explain() == (
            "legal large 0.70: legal+0.50 drafting+0.20"
        )

    def test_no_markers(self) -> None:
        """A zero score says there was nothing to find."""
        assert score(user("Hi")).explain() == "simple small 0.00: no markers"

    def test_is_ascii(self) -> None:
        """The explanation can go into a header or a log line as is."""
        assert score(user("Écris un poème sur la mer 🌊")).explain().isascii()


class TestContentText:
    def test_string_and_parts(self) -> None:
        """Text parts are joined; other parts and other types are ignored."""
        assert content_text("hi") == "hi"
        assert content_text([{"type": "text", "text": "a"}, {"type": "image_url"}, "x"]) == "a"
        assert content_text(None) == ""
