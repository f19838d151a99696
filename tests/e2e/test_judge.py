"""Judge-facing behaviour over HTTP: requests that can never be Accepted are refused,
a BOM in the expected output is ignored, GET /languages shows runnable commands."""

from __future__ import annotations

MIB = 1024 * 1024


def test_expected_output_longer_than_the_output_limit_is_400(daemon):
    status, body, _ = daemon.request("POST", "/execute?wait=true", {
        "language": "python3", "source": "print('x' * 2**20)",
        "expected_output": "x" * (MIB + 1)})
    assert status == 400, body
    assert body["error"].startswith("expected_output: 1048577 bytes")
    assert "sandbox.output_limit_bytes" in body["error"]


def test_bom_at_the_start_of_expected_output_is_accepted(daemon):
    result = daemon.execute(language="c",
                            source='#include <stdio.h>\nint main(void){puts("42");}\n',
                            expected_output="\ufeff42\r\n")
    assert result["status"] == "Accepted", result


def test_languages_show_commands_for_the_default_limits(daemon):
    status, langs, _ = daemon.request("GET", "/languages")
    assert status == 200
    by_id = {lang["id"]: lang for lang in langs}
    for lang in langs:
        for arg in lang["run_command"] + (lang["compile_command"] or []):
            assert "{memory_limit_mb}" not in arg and "{heap_limit_mb}" not in arg, lang
    java = by_id["java"]["run_command"]
    assert "-Xmx216m" in java and "-XX:MaxRAM=256m" in java  # 256 MiB by default
    assert by_id["javascript"]["compile_command"] == ["/usr/bin/node", "--check", "main.js"]
    assert by_id["python3"]["compiled"] is False
