"""The compiled-artifact cache over HTTP: a C++ program resubmitted against other input
(single runs, then a `tests` list) compiles once, as /metrics counts it, and says the
same compile_output every time."""

from __future__ import annotations

import uuid

from tests.e2e.test_api_edge import metric, scrape

COMPILES = 'sandboxd_compile_steps_total{language="cpp"}'
HITS = 'sandboxd_artifact_lookups_total{language="cpp",outcome="hit"}'
MISSES = 'sandboxd_artifact_lookups_total{language="cpp",outcome="miss"}'


def test_a_program_resubmitted_against_other_input_compiles_once(daemon):
    # A fresh program (never compiled by an earlier test), with a warning to cache.
    source = ("#include <iostream>\nint main() { int unused; long long a, b; std::cin >> a >> b;"
              f" std::cout << a * b << \"\\n\"; }}\n// {uuid.uuid4().hex}\n")
    before = scrape(daemon)
    results = [daemon.execute(language="cpp", source=source, stdin=stdin)
               for stdin in ("6 7", "2 21", "3 14")]
    tested = daemon.execute(language="cpp", source=source, tests=[
        {"stdin": "1 1", "expected_output": "1"}, {"stdin": "5 5", "expected_output": "25"}])
    after = scrape(daemon)
    assert [r["stdout"] for r in results] == ["42\n"] * 3, results
    assert tested["status"] == "Accepted", tested
    outputs = {r["compile_output"] for r in (*results, tested)}
    assert len(outputs) == 1 and "unused" in outputs.pop()
    assert all(r["cached"] is False for r in results)  # not the result cache: other stdin
    assert metric(after, COMPILES) == metric(before, COMPILES) + 1
    assert metric(after, MISSES) == metric(before, MISSES) + 1
    assert metric(after, HITS) == metric(before, HITS) + 3
