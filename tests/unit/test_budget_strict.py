"""Strict budgets, pure part: no sequence of holds, spends and transfers creates budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeeper.auth.claims import IMPLICIT_ASSERTION, ClaimsError, parse_claims
from gatekeeper.auth.keyfiles import mint
from gatekeeper.auth.paserk import generate_secret_key, public_key_of
from gatekeeper.auth.paseto import verify
from gatekeeper.budget.strict import Grant, StrictBook

CID = "tok.key_1.total"
NODES = ("a", "b", "c")

ops = st.lists(
    st.one_of(
        st.tuples(st.just("spend"), st.sampled_from(NODES), st.integers(0, 60)),
        st.tuples(st.just("over"), st.sampled_from(NODES), st.integers(0, 60)),
        st.tuples(
            st.just("give"), st.sampled_from(NODES), st.sampled_from(NODES), st.integers(0, 80)
        ),
        st.tuples(st.just("deliver"), st.integers(0, 50), st.booleans()),
    ),
    max_size=80,
)


def cluster(total: int) -> dict[str, StrictBook]:
    books = {n: StrictBook(n) for n in NODES}
    for book in books.values():
        book.open(CID, total, "a")
    return books


def deliver(books: dict[str, StrictBook], grant: Grant) -> None:
    books[grant.dst].accept(grant.cid, grant.total, grant.owner, grant.src, grant.cumulative)


def spent(books: dict[str, StrictBook]) -> int:
    return sum(books[n].counter(CID).used(n) for n in NODES)  # type: ignore[union-attr]


def held(books: dict[str, StrictBook]) -> int:
    """Rights each node holds by its own (exact) replica."""
    return sum(books[n].counter(CID).rights(n) for n in NODES)  # type: ignore[union-attr]


class TestEscrowTransfers:
    @given(total=st.integers(0, 300), steps=ops)
    def test_no_sequence_creates_budget(self, total: int, steps: list[tuple[object, ...]]) -> None:
        """Spends, charges past the hold, transfers delivered late, twice, out of order or
        never: at every step Σ spent + Σ held ≤ total, so Σ spent ≤ total."""
        books = cluster(total)
        wire: list[Grant] = []
        for step in steps:
            if step[0] in ("spend", "over"):
                _, node, n = step
                book = books[str(node)]
                if book.hold(CID, int(n)):  # type: ignore[call-overload]
                    extra = 25 if step[0] == "over" else 0  # an upstream billing past the cap
                    book.settle(CID, int(n), int(n) + extra)  # type: ignore[call-overload]
            elif step[0] == "give":
                _, src, dst, n = step
                grant = books[str(src)].give(CID, str(dst), int(n))  # type: ignore[call-overload]
                if grant is not None:
                    wire.append(grant)
            elif wire:
                _, k, keep = step
                grant = wire[int(k) % len(wire)]  # type: ignore[call-overload]
                deliver(books, grant)
                if not keep:  # delivered and gone; kept ones may be replayed later
                    wire.remove(grant)
            assert spent(books) + held(books) <= total
        for grant in wire:  # everything in flight lands at last: nothing was lost either
            deliver(books, grant)
        assert spent(books) + held(books) == total

    def test_a_node_spends_only_what_it_holds(self) -> None:
        books = cluster(100)
        assert not books["b"].hold(CID, 1)  # b holds nothing yet
        grant = books["a"].give(CID, "b", 30)
        assert grant is not None and grant.cumulative == 30
        deliver(books, grant)
        deliver(books, grant)  # a replay adds nothing
        assert books["b"].available(CID) == 30
        assert books["a"].available(CID) == 70
        assert books["b"].hold(CID, 30) and not books["b"].hold(CID, 1)

    def test_a_charge_past_the_hold_is_spent_only_from_free_rights(self) -> None:
        books = cluster(50)
        assert books["a"].hold(CID, 40)
        assert books["a"].settle(CID, 40, 70) == 20  # 10 free rights covered, 20 short
        assert books["a"].available(CID) == 0 and books["a"].shortfall == 20

    def test_a_share_is_enough_or_half_of_what_is_free(self) -> None:
        books = cluster(100)
        assert books["a"].share_for(CID, 10) == 50
        assert books["a"].share_for(CID, 80) == 80
        assert books["a"].share_for(CID, 500) == 100
        assert books["b"].share_for(CID, 10) == 0

    def test_a_transfer_for_another_budget_is_refused(self) -> None:
        books = cluster(100)
        assert not books["b"].accept(CID, 10_000, "a", "a", 5_000)
        assert books["b"].available(CID) == 0


class TestBudgetModeClaim:
    def test_mint_writes_the_mode_and_parsing_reads_it(self) -> None:
        secret = generate_secret_key()
        token = mint(secret, "acme", budget_tokens=10, budget_mode="strict")
        claims = parse_claims(verify(token, public_key_of(secret), IMPLICIT_ASSERTION).payload)
        assert claims.budget is not None and claims.budget.mode == "strict"

    def test_an_unknown_mode_is_refused(self) -> None:
        payload = (
            b'{"iss":"gk","sub":"key_1","jti":"j","iat":"2026-01-01T00:00:00+00:00",'
            b'"nbf":"2026-01-01T00:00:00+00:00","exp":"2027-01-01T00:00:00+00:00",'
            b'"tenant":"t","budget":{"tokens":5,"mode":"lenient"}}'
        )
        with pytest.raises(ClaimsError, match=r"budget\.mode"):
            parse_claims(payload)
