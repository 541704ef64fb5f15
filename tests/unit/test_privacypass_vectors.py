"""Privacy Pass type 0x0001 against the published vectors (RFC 9497 A.4, RFC 9578 A.1).

Three layers, each checked before the next relies on it:

1. the test-only reference (``p384_reference``) reproduces every RFC 9497
   P384-SHA384 OPRF/VOPRF vector exactly, proofs included;
2. the ``voprf`` library reproduces the RFC 9497 VOPRF keys and outputs, and its
   proofs (single and batched) verify under the reference;
3. the RFC 9578 vectors: each ``token_response`` is reproduced from
   ``token_request`` and ``skS`` (the evaluated element exactly; the randomized
   proof by verification), and each ``token`` is accepted with ``skS``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from voprf import p384

from gatekeeper.passes import wire
from gatekeeper.passes.keys import derive_seed, key_info
from tests.unit.p384_reference import Suite

VECTORS = Path(__file__).parent.parent / "vectors"
RFC9497 = json.loads((VECTORS / "voprf-p384-sha384.json").read_text())["suites"]
RFC9578 = json.loads((VECTORS / "privacypass-rfc9578-voprf-p384.json").read_text())


def _suite(mode: int) -> dict[str, Any]:
    return next(s for s in RFC9497 if s["mode"] == mode)


def _h(text: str) -> bytes:
    return bytes.fromhex(text)


def _cases(mode: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    suite = _suite(mode)
    return [(suite, v) for v in suite["vectors"]]


class TestReferenceAgainstRFC9497:
    @pytest.mark.parametrize("mode", [0, 1])
    def test_derive_key_pair(self, mode: int) -> None:
        """DeriveKeyPair(seed, "test key") gives the vectors' skSm (and pkSm)."""
        suite = _suite(mode)
        sk, pk = Suite(mode).derive_key_pair(_h(suite["seed"]), _h(suite["keyInfo"]))
        assert sk == int(suite["skSm"], 16)
        if "pkSm" in suite:
            assert pk.hex() == suite["pkSm"]

    @pytest.mark.parametrize(("suite", "v"), _cases(0) + _cases(1))
    def test_blind_evaluate_finalize(self, suite: dict[str, Any], v: dict[str, Any]) -> None:
        """Every (batched) vector: BlindedElement, EvaluationElement, Output, Proof."""
        ref = Suite(suite["mode"])
        sk = int(suite["skSm"], 16)
        inputs = [_h(x) for x in v["Input"].split(",")]
        blinds = [int(x, 16) for x in v["Blind"].split(",")]
        blinded = [ref.blind(x, b) for x, b in zip(inputs, blinds, strict=True)]
        assert ",".join(b.hex() for b in blinded) == v["BlindedElement"]
        evaluated = [ref.evaluate_blinded(sk, b) for b in blinded]
        assert ",".join(e.hex() for e in evaluated) == v["EvaluationElement"]
        outputs = [ref.finalize(x, b, e) for x, b, e in zip(inputs, blinds, evaluated, strict=True)]
        assert ",".join(o.hex() for o in outputs) == v["Output"]
        assert [ref.evaluate(sk, x) for x in inputs] == outputs
        if "Proof" in v:
            pk = _h(suite["pkSm"])
            proof = ref.prove(sk, pk, blinded, evaluated, int(v["Proof"]["r"], 16))
            assert proof.hex() == v["Proof"]["proof"]
            assert ref.verify(pk, blinded, evaluated, proof)
            assert not ref.verify(
                pk,
                blinded,
                evaluated[::-1]
                if len(evaluated) > 1
                else [ref.evaluate_blinded(sk + 1, blinded[0])],
                proof,
            )


class TestLibraryAgainstRFC9497:
    def test_derive_key_pair_gives_the_vector_public_key(self) -> None:
        suite = _suite(1)
        evaluator = p384.Evaluator.from_seed(_h(suite["seed"]), _h(suite["keyInfo"]))
        assert evaluator.public_key.serialize().hex() == suite["pkSm"]

    @pytest.mark.parametrize(("suite", "v"), _cases(1))
    def test_known_input_evaluation_gives_the_vector_output(
        self, suite: dict[str, Any], v: dict[str, Any]
    ) -> None:
        """The redemption check (RFC 9497 Evaluate) equals each vector's Output."""
        evaluator = p384.Evaluator.from_seed(_h(suite["seed"]), _h(suite["keyInfo"]))
        for data, out in zip(v["Input"].split(","), v["Output"].split(","), strict=True):
            assert evaluator.evaluate_known_input(_h(data)).hex() == out

    def test_blind_evaluation_is_the_vector_element_and_its_proof_verifies(self) -> None:
        """The library evaluates the vector's BlindedElement to its EvaluationElement,
        with a proof the reference verifies; its proof bytes are c || s."""
        suite = _suite(1)
        evaluator = p384.Evaluator.from_seed(_h(suite["seed"]), _h(suite["keyInfo"]))
        v = suite["vectors"][0]
        raw = evaluator.evaluate(p384.BlindedInput.deserialize(_h(v["BlindedElement"])))
        out = raw.serialize()
        proof, element = out[:96], out[96:]
        assert element.hex() == v["EvaluationElement"]
        assert Suite(1).verify(_h(suite["pkSm"]), [_h(v["BlindedElement"])], [element], proof)

    def test_batched_proof_verifies_under_the_reference(self) -> None:
        suite = _suite(1)
        evaluator = p384.Evaluator.from_seed(_h(suite["seed"]), _h(suite["keyInfo"]))
        v = next(x for x in suite["vectors"] if x["Batch"] == 2)
        blinded = [_h(x) for x in v["BlindedElement"].split(",")]
        raw = evaluator.evaluate_batch([p384.BlindedInput.deserialize(b) for b in blinded])
        out = raw.serialize()
        elements = [out[96 + 49 * i : 96 + 49 * (i + 1)] for i in range(2)]
        assert ",".join(e.hex() for e in elements) == v["EvaluationElement"]
        assert Suite(1).verify(_h(suite["pkSm"]), blinded, elements, out[:96])


@pytest.mark.parametrize("case", RFC9578, ids=[f"A.1-{i}" for i in range(len(RFC9578))])
class TestRFC9578Vectors:
    def test_token_request_is_parsed_and_names_the_key(self, case: dict[str, Any]) -> None:
        request = wire.parse_token_request(_h(case["token_request"]))
        kid = wire.token_key_id(_h(case["pkS"]))
        assert request.truncated_key_id == kid[-1]
        assert wire.token_request(kid, request.blinded[0]).hex() == case["token_request"]

    def test_token_response_from_token_request_and_skS(self, case: dict[str, Any]) -> None:
        """The evaluated element is reproduced exactly; the randomized proof verifies."""
        ref = Suite(1)
        sk, pk = int(case["skS"], 16), _h(case["pkS"])
        blinded = wire.parse_token_request(_h(case["token_request"])).blinded[0]
        response = _h(case["token_response"])
        assert len(response) == wire.NE + 2 * wire.NS
        assert ref.evaluate_blinded(sk, blinded) == response[: wire.NE]
        assert ref.verify(pk, [blinded], [response[: wire.NE]], response[wire.NE :])
        tampered = response[: wire.NE] + bytes([response[wire.NE] ^ 1]) + response[wire.NE + 1 :]
        assert not ref.verify(pk, [blinded], [response[: wire.NE]], tampered[wire.NE :])

    def test_token_is_accepted_with_skS(self, case: dict[str, Any]) -> None:
        token = wire.parse_token(_h(case["token"]))
        assert token.nonce.hex() == case["nonce"]
        assert token.challenge_digest == hashlib.sha256(_h(case["token_challenge"])).digest()
        assert token.key_id == wire.token_key_id(_h(case["pkS"]))
        assert Suite(1).evaluate(int(case["skS"], 16), token.token_input) == token.authenticator

    def test_the_client_side_finalize_gives_the_token(self, case: dict[str, Any]) -> None:
        """Finalize(token_input, blind, evaluate_msg) is the token's authenticator."""
        token = wire.parse_token(_h(case["token"]))
        element = _h(case["token_response"])[: wire.NE]
        assert Suite(1).finalize(token.token_input, int(case["blind"], 16), element) == (
            token.authenticator
        )

    def test_the_library_serves_this_request_with_an_rfc_proof(self, case: dict[str, Any]) -> None:
        """Our issuer's evaluation of the vector's TokenRequest, under a derived key,
        carries a proof the reference verifies against the published public key."""
        evaluator = p384.Evaluator.from_seed(bytes(32), b"vector")
        blinded = wire.parse_token_request(_h(case["token_request"])).blinded[0]
        out = evaluator.evaluate(p384.BlindedInput.deserialize(blinded)).serialize()
        pk = evaluator.public_key.serialize()
        assert Suite(1).verify(pk, [blinded], [out[96:]], out[:96])


class TestKeyDerivationMatchesTheReference:
    def test_gateway_key_is_rfc9497_derive_key_pair_of_the_hmac_seed(self) -> None:
        """Any RFC 9497 implementation derives the same key from the documented seed."""
        seed = derive_seed(b"s" * 32, "acme", "h2026120121")
        info = key_info("acme", "h2026120121")
        sk, pk = Suite(1).derive_key_pair(seed, info)
        evaluator = p384.Evaluator.from_seed(seed, info)
        assert evaluator.public_key.serialize() == pk
        data = b"\x00\x01" + bytes(96)
        assert evaluator.evaluate_known_input(data) == Suite(1).evaluate(sk, data)
