"""Interactive problems over HTTP against a real daemon: the guessing game (interactor in
Python, solution in C) judged, its fields in the JSON, the 400s, GET /languages."""

from __future__ import annotations

import uuid

from tests.e2e.test_api_edge import call
from tests.integration.test_interactive import (
    BINARY_SEARCH,
    GUESSING_INTERACTOR,
    LINEAR_SEARCH,
)


def game(solution: str, **fields: object) -> dict[str, object]:
    # A fresh source each run: the result cache never answers.
    return {"language": "c", "source": f"{solution}\n// {uuid.uuid4().hex}\n",
            "interactor_language": "python3", "interactor_source": GUESSING_INTERACTOR,
            **fields}


def test_guessing_game_over_http(daemon):
    result = daemon.execute(**game(BINARY_SEARCH, stdin="31337 30"))
    assert result["status"] == "Accepted", result
    assert result["stdout"] == "" and result["exit_code"] == 0
    assert result["interactor_message"] == "found 31337 in 18 guesses\n"
    result = daemon.execute(**game(LINEAR_SEARCH, tests=[{"stdin": "2 30"}, {"stdin": "99 30"}]))
    assert result["status"] == "Wrong Answer", result
    assert [t["status"] for t in result["tests"]] == ["Accepted", "Wrong Answer"]
    assert result["tests"][1]["interactor_message"] == "no guess left after 30\n"


def test_interactor_fields_refused_over_http(daemon):
    for body, error in [
        (game(BINARY_SEARCH, interactor_language="no-such-language"),
         "interactor_language: unknown language 'no-such-language'"),
        ({"language": "c", "source": "x", "interactor_language": "python3"},
         "interactor_source: required with interactor_language"),
        (game(BINARY_SEARCH, checker="exact"),
         "checker: does not apply to an interactive problem: the interactor decides"),
    ]:
        status, answer, _ = call(daemon, "POST", "/execute", body)
        assert status == 400 and answer["error"].startswith(error), (body, answer)


def test_languages_say_every_one_can_interact(daemon):
    status, languages, _ = call(daemon, "GET", "/languages")
    assert status == 200
    assert all(lang["usable_as"] == ["program", "checker", "interactor"] for lang in languages)
