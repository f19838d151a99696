"""README.md's "Several hosts" section works as written, on one machine: its Redis
settings, its configuration for two daemons, and its curl example across them.

Deviations, each because other test daemons may run on this host: our Redis port,
daemon ports and box uid ranges replace the README's, and the daemons keep their
workspaces in the tests' state directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

from tests.conftest import require_kernel
from tests.e2e.conftest import free_port, start_daemon, stop_daemon
from tests.e2e.redis_fixtures import STATE_DIR, UID_BASE, RedisServer, require_redis_server
from tests.e2e.test_readme import _blocks, _section

SECTION = "## Several hosts"


def test_the_several_hosts_section_works_with_two_daemons(tmp_path: Path) -> None:
    require_kernel()
    require_redis_server()
    section = _section(SECTION)
    blocks = _blocks(section)
    redis_sh, config_toml, serve_sh, curl_sh = (body for _, body in blocks)
    assert [lang for lang, _ in blocks] == ["sh", "toml", "sh", "sh"]
    # The Redis settings the section names are the ones our test Redis runs with.
    for setting in ("--appendonly yes", "--appendfsync always",
                    "--maxmemory-policy noeviction", "--port 6379"):
        assert setting in redis_sh
    config = tomllib.loads(config_toml)
    assert config["queue"]["redis_url"] == "redis://127.0.0.1:6379/0"
    readme_uids = [config["sandbox"]["uid_base"],
                   int(re.search(r"`b\.toml` is the same with `uid_base = (\d+)`",
                                 section).group(1))]  # type: ignore[union-attr]
    assert readme_uids[1] - readme_uids[0] >= 2 * 64  # room for many workers each
    assert "--config a.toml --listen 127.0.0.1:8081" in serve_sh
    assert "--config b.toml --listen 127.0.0.1:8082" in serve_sh

    server = RedisServer(free_port(), tmp_path)
    server.start()
    daemons = []
    try:
        for index in range(len(readme_uids)):
            ours = UID_BASE + 16 * (6 + index)  # beyond test_redis.py's daemons 0-5
            text = (config_toml.replace("127.0.0.1:6379", f"127.0.0.1:{server.port}")
                    .replace(f"uid_base = {readme_uids[0]}", f"uid_base = {ours}")
                    + f'state_dir = "{STATE_DIR}"\n')
            daemons.append(start_daemon(tmp_path, config_text=text, state_dir=STATE_DIR,
                                        log_name=f"readme-{index}.log",
                                        languages=["python3"]))
        script = (curl_sh.replace("127.0.0.1:8081", f"127.0.0.1:{daemons[0].port}")
                  .replace("127.0.0.1:8082", f"127.0.0.1:{daemons[1].port}"))
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        answer = json.loads(proc.stdout)
        assert (answer["status"], answer["stdout"]) == ("Accepted", "42\n"), answer
    finally:
        for daemon in daemons:
            stop_daemon(daemon)
        server.stop()
