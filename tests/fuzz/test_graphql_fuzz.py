"""Schemathesis (GraphQL mode) against the running `--demo` gateway.

Every root field the gateway's introspection shows (`checkoutSession`, `checkoutSessions` and
federation's `_service` and `_entities`) gets generated operations, valid and invalid ones.
Each answer must be:
  - not a 5xx;
  - JSON, an object with `data` or `errors`;
  - free of internal errors: no top-level error whose message or `extensions` mentions
    "internal" or "panic", and nothing anywhere in the body saying "panicked";
  - what schemathesis' own checks accept (`response_schema_conformance`: the answer fits the
    GraphQL response format and the schema, e.g. no null for a non-null field, and
    `negative_data_rejection`: an operation that breaks the schema is refused).
Typed errors (union members) and GraphQL validation / BATCH_TOO_LARGE errors are normal answers.

`test_operation_count` then checks that at least MIN_OPERATIONS operations were really sent,
that the gateway is still running and that it logged no panic.

    bash tests/fuzz/run.sh    # FUZZ_MAX_EXAMPLES, FUZZ_MIN_OPERATIONS, FUZZ_SEED, FUZZ_TRACE: see run.sh
"""

from __future__ import annotations

import json
import os
import random
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from graphql import NameNode, ObjectFieldNode
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.graphql import nodes
from schemathesis.specs.openapi.checks import negative_data_rejection, response_schema_conformance

# Generated operations per root field (Hypothesis' max_examples; for GraphQL schemathesis has
# no examples or coverage cases to add). A root field with a small input space (`_service` has
# no arguments) stops early, once Hypothesis has seen all of it: 3 x 500 + a few, about 1,500.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "500"))
# The floor for one run.
MIN_OPERATIONS = int(os.environ.get("FUZZ_MIN_OPERATIONS", "1000"))
SEED = int(os.environ["FUZZ_SEED"]) if os.environ.get("FUZZ_SEED") else random.getrandbits(64)
REQUEST_TIMEOUT_S = 15
# FUZZ_TRACE=<file>: every operation sent and its answer, one JSON object a line.
TRACE = os.environ.get("FUZZ_TRACE")

INTERNAL = re.compile(r"internal|panic", re.IGNORECASE)
PANICKED = re.compile(r"panicked", re.IGNORECASE)

# ---- inputs: the demo's fixture ids and accounts, so that lookups reach the sandbox providers
# (random ids alone mostly end in INVALID_ID / NOT_FOUND).
DHMAD_IDS = [f"d4a1e000-0000-4000-8000-000000000{n}" for n in
             ("001", "002", "003", "004", "005", "401", "403", "404", "429", "500", "502", "504")]
DODO_STATUSES = [
    "succeeded", "failed", "cancelled", "processing", "requires_customer_action",
    "requires_merchant_action", "requires_payment_method", "requires_confirmation",
    "requires_capture", "partially_captured", "partially_captured_and_capturable",
]
DODO_IDS = (
    ["cks_demo_open", "cks_demo_new_status", "cks_bench_fuzz"]
    + [f"cks_demo_{status}" for status in DODO_STATUSES]
    + [f"cks_err_{suffix}" for suffix in ("401", "403", "404", "422", "429", "500", "garbage", "slow")]
)
DEMO_IDS = DHMAD_IDS + DODO_IDS
ACCOUNTS = ["dhmad", "dhmad_sandbox", "dodo", "dodo_test", "nope"]
PROVIDERS = ["DHMAD", "DODO"]

CONFIG = {
    "seed": SEED,
    "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
    "dictionaries": {
        "demo-ids": {"values": DEMO_IDS},
        "demo-accounts": {"values": ACCOUNTS},
    },
    # An argument is replaced by a dictionary entry with this probability; otherwise it keeps
    # the generated value.
    "parameters": {
        "*.*.id": {"dictionary": "demo-ids", "probability": 0.6},
        "*.*.refs[*].id": {"dictionary": "demo-ids", "probability": 0.6},
        "*.*.account": {"dictionary": "demo-accounts", "probability": 0.5},
        "*.*.refs[*].account": {"dictionary": "demo-accounts", "probability": 0.5},
    },
}


# `_entities(representations: [_Any!]!)`: federation representations, well-formed ones
# (`{__typename: "CheckoutSession", provider, id}` or `{…, account, id}`) with demo or random
# values, and junk: other shapes, other types, nested values.
def _text():
    return st.text(max_size=40)


_names = st.from_regex(r"[_A-Za-z][_0-9A-Za-z]{0,12}", fullmatch=True)
_leaf = st.one_of(
    _text().map(nodes.String),
    st.integers(min_value=-(2**31), max_value=2**31 - 1).map(nodes.Int),
    st.booleans().map(nodes.Boolean),
    st.just(nodes.Null),
    st.sampled_from(PROVIDERS + DEMO_IDS + ACCOUNTS + ["CheckoutSession"]).map(nodes.String),
)
_junk = st.recursive(
    _leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(nodes.List),
        st.dictionaries(_names, children, max_size=4).map(
            lambda fields: nodes.Object([_field(k, v) for k, v in fields.items()])
        ),
    ),
    max_leaves=12,
)


def _field(name, value):
    return ObjectFieldNode(name=NameNode(value=name), value=value)


# (Weights are repeated entries of `sampled_from`: `one_of` drops repeated strategies.)
@st.composite
def _known_or_random(draw, values):
    """Mostly a known value, sometimes random text."""
    if draw(st.sampled_from([True, True, True, False])):
        return draw(st.sampled_from(values))
    return draw(_text())


@st.composite
def _representation(draw):
    typename = draw(st.sampled_from(["CheckoutSession"] * 14 + ["Other", ""]))
    fields = {"__typename": typename}
    key = draw(st.sampled_from(["provider"] * 5 + ["account"] * 4 + ["both"] * 2 + ["neither"]))
    if key in ("provider", "both"):
        fields["provider"] = draw(_known_or_random(PROVIDERS))
    if key in ("account", "both"):
        fields["account"] = draw(_known_or_random(ACCOUNTS))
    if draw(st.sampled_from([True] * 19 + [False])):
        fields["id"] = draw(_known_or_random(DEMO_IDS))
    return nodes.Object([_field(k, nodes.String(v)) for k, v in fields.items()])


# async-graphql fails the whole `_entities` list on one representation of an unknown type, so
# most representations are well-formed, for the lookups behind them to run.
@st.composite
def _any(draw):
    if draw(st.sampled_from([True] * 19 + [False])):
        return draw(_representation())
    return draw(_junk)


schemathesis.graphql.scalar("_Any", _any())


@pytest.fixture(scope="session")
def graphql_schema(gateway, fuzz_stats):
    """The gateway's schema, read by introspection (on in `--demo` mode)."""
    fuzz_stats.seed = SEED
    config = SchemathesisConfig.from_dict(CONFIG)
    return schemathesis.graphql.from_url(gateway.graphql_url, config=config, wait_for_schema=10)


# Every root field, federation's `_entities` and `_service` included (schemathesis leaves those
# two out unless a filter names them).
schema = schemathesis.pytest.from_fixture("graphql_schema").include(name_regex=r"^(Query|Mutation)\.")


def _assert_no_internal_error(case, response, body):
    context = f"\nquery: {case.body}\nHTTP {response.status_code}: {response.text[:2000]}"
    assert not PANICKED.search(response.text), f"a panic message in the answer{context}"
    for error in body.get("errors") or []:
        assert isinstance(error, dict), f"an error that is not an object{context}"
        text = json.dumps({"message": error.get("message"), "extensions": error.get("extensions")})
        assert not INTERNAL.search(text), f"an internal error in the answer{context}"


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
def test_graphql_fuzz(case, gateway, http_session, fuzz_stats):
    response = case.call(session=http_session, timeout=REQUEST_TIMEOUT_S)
    fuzz_stats.record(case.operation.label, response.status_code)
    if TRACE:
        mode = case.meta.generation.mode.value if case.meta else None
        with open(TRACE, "a", encoding="utf-8") as trace:
            trace.write(json.dumps({"operation": case.operation.label, "mode": mode, "query": case.body,
                                    "status": response.status_code, "answer": response.text}) + "\n")
    context = f"\nquery: {case.body}\nHTTP {response.status_code}: {response.text[:2000]}"
    assert response.status_code < 500, f"a server error{context}"
    try:
        body = response.json()
    except ValueError:
        pytest.fail(f"an answer that is not JSON{context}")
    assert isinstance(body, dict) and ("data" in body or "errors" in body), (
        f"an answer without `data` or `errors`{context}"
    )
    _assert_no_internal_error(case, response, body)
    fuzz_stats.record_errors(body.get("errors"))
    # Schemathesis' own checks, without `not_a_server_error`: besides 5xx (asserted above) it
    # counts every execution error as a server error, and this gateway answers federation's
    # `_entities` failures and BATCH_TOO_LARGE as coded GraphQL errors by design.
    case.validate_response(response, checks=[response_schema_conformance, negative_data_rejection])


def test_operation_count(gateway, fuzz_stats):
    """Runs after test_graphql_fuzz (file order): the run really sent enough operations."""
    assert fuzz_stats.total >= MIN_OPERATIONS, (
        f"only {fuzz_stats.total} fuzzed operations were sent, at least {MIN_OPERATIONS} are "
        f"required (per root field: {fuzz_stats.by_operation}); was test_graphql_fuzz deselected?"
    )
    assert gateway.process.poll() is None, (
        f"the gateway exited ({gateway.process.returncode}) during the run:\n{gateway.log_tail()}"
    )
    panics = [line for line in gateway.log_text().splitlines() if PANICKED.search(line)]
    assert not panics, "the gateway logged a panic:\n" + "\n".join(panics[:20])
