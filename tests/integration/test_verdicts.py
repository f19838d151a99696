"""Verdicts a judge can trust, proven with real programs through the real runner.

1. Memory Limit Exceeded only with evidence: a program that used most of its memory
   and then failed for another reason is a Runtime Error.
2. A runtime's own out-of-memory failure is Memory Limit Exceeded (languages.toml
   `out_of_memory`); Java's heap is sized so one big array can use most of the limit.
3. Compile output is information: past the cap it is truncated, never a verdict.
4. Recursion may go as deep as memory allows, in every language.
5. Source-level failures are Compile Errors with a message; a UTF-8 BOM is accepted.
6. A BOM at the start of expected_output is ignored.

Each program prints or exits in a way that tells its failure apart from the verdict's
cause, and each assertion names the verdict a judge expects, with the full result on
failure.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sandboxd.config import Config
from sandboxd.jail import supervisor
from sandboxd.model import Status
from sandboxd.verdict import COMPILE_OUTPUT_TRUNCATED
from tests.conftest import SLOWDOWN
from tests.integration.hostile import describe

MIB = 1024 * 1024
SIGSEGV, SIGABRT = int(signal.SIGSEGV), int(signal.SIGABRT)
BOM = "\ufeff"
DEEP = 1_000_000


# ------------------------------------------------ 1: most of the memory, then another failure

# Touches `mib` MiB, then fails the way stdin says. Not one of these is an allocation
# the kernel refused, so none is Memory Limit Exceeded.
NEAR_LIMIT_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(void) {
    char how[16];
    int mib;
    if (scanf("%15s %d", how, &mib) != 2) return 99;
    size_t n = (size_t)mib << 20;
    char *p = malloc(n);
    if (!p) return 98;
    memset(p, 1, n);
    __asm__ volatile("" : : "r"(p) : "memory");
    printf("touched %d MiB\n", mib);
    fflush(stdout);
    if (!strcmp(how, "null")) return *(volatile int *)(p[0] == 1 ? NULL : p);
    if (!strcmp(how, "abort")) abort();
    return 1;
}
"""


@pytest.mark.parametrize(("how", "exit_code", "sig"), [
    ("null", None, SIGSEGV),
    ("abort", None, SIGABRT),
    ("return1", 1, None),
])
async def test_c_failing_at_122_of_128_mib_is_runtime_error(execute, how, exit_code, sig):
    result = await execute("c", NEAR_LIMIT_C, stdin=f"{how} 122", memory_limit_mb=128)
    assert result.stdout == "touched 122 MiB\n", describe(result)
    assert result.status is Status.RUNTIME_ERROR, describe(result)
    assert (result.exit_code, result.signal) == (exit_code, sig), describe(result)
    # It really was near its limit: the old 95 %-of-peak guess called this MLE.
    assert result.memory_kb is not None and result.memory_kb >= 122 * 1024, describe(result)


NEAR_LIMIT_PY = """\
data = bytearray(b"x") * (241 << 20)
print("holding", len(data) >> 20, "MiB", flush=True)
{}["missing"]
"""


async def test_python_raising_keyerror_at_245_of_256_mib_is_runtime_error(execute):
    result = await execute("python3", NEAR_LIMIT_PY, memory_limit_mb=256,
                           time_limit_ms=int(2000 * SLOWDOWN))
    assert result.stdout == "holding 241 MiB\n", describe(result)
    assert result.status is Status.RUNTIME_ERROR, describe(result)
    assert result.exit_code == 1 and result.stderr.rstrip().endswith("KeyError: 'missing'")
    assert result.memory_kb is not None and result.memory_kb >= 241 * 1024, describe(result)


# ------------------------------------------------------- 2: a runtime's own out-of-memory

# What Java may hold depends on the JVM flags of languages.toml; stdin picks the case.
JAVA_MEMORY = """\
import java.util.*;
public class Main {
    public static void main(String[] args) {
        Scanner in = new Scanner(System.in);
        String what = in.next();
        int n = in.nextInt();
        if (what.equals("array")) {
            int[] a = new int[n];
            for (int i = 0; i < n; i += 1024) a[i] = i;
            long sum = 0;
            for (int i = 0; i < n; i += 1024) sum += a[i];
            System.out.println(sum);
        } else {
            List<byte[]> keep = new ArrayList<>();
            while (true) {
                byte[] b = new byte[n];
                for (int i = 0; i < n; i += 4096) b[i] = 1;
                keep.add(b);
            }
        }
    }
}
"""


async def test_java_200_mb_int_array_under_256_mib_is_accepted(execute):
    n = 50_000_000  # 200,000,000 bytes (190.7 MiB)
    expected = sum(range(0, n, 1024))
    result = await execute("java", JAVA_MEMORY, stdin=f"array {n}", memory_limit_mb=256,
                           expected_output=f"{expected}\n")
    assert result.status is Status.ACCEPTED, describe(result)
    assert result.memory_kb is not None and result.memory_kb >= 190 * 1024, describe(result)


@pytest.mark.parametrize(("what", "n"), [
    ("array", 60_000_000),  # one 229 MiB array: more than the heap
    ("chunks", 16 * MIB),  # the heap filled 16 MiB at a time
    ("chunks", 4096),  # ... and in small pieces
])
async def test_java_heap_overflow_is_memory_limit_exceeded(execute, what, n):
    result = await execute("java", JAVA_MEMORY, stdin=f"{what} {n}", memory_limit_mb=256)
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, describe(result)
    # The JVM's own report (ExitOnOutOfMemoryError), or the kernel's OOM kill when the
    # JVM's own memory ran over first: both are evidence.
    assert ((result.exit_code == 3 and "java.lang.OutOfMemoryError" in result.stderr)
            or result.signal == signal.SIGKILL), describe(result)
    assert "java.lang.OutOfMemoryError" not in result.stdout, describe(result)


@pytest.mark.parametrize(("language", "source", "evidence"), [
    # An allocation no memory limit allows fails at once, in the runtime's own way.
    ("python3", "x = [0] * 10**12\n", "MemoryError"),
    ("cpp", "#include <vector>\n#include <cstdio>\nint main() {\n"
            "    std::vector<long> v(1000000000000L);\n    std::printf(\"%ld\\n\", v[0]);\n}\n",
     "std::bad_alloc"),
    ("javascript", "const keep = [];\n"
                   "for (;;) keep.push(new Array(1 << 16).fill(keep.length));\n",
     "JavaScript heap out of memory"),
])
async def test_runtime_out_of_memory_is_memory_limit_exceeded(execute, language, source,
                                                              evidence):
    result = await execute(language, source, memory_limit_mb=256, time_limit_ms=5000)
    assert result.status is Status.MEMORY_LIMIT_EXCEEDED, describe(result)
    # V8 may be outrun by the kernel's OOM killer; Python and C++ fail before touching.
    assert evidence in result.stderr or result.signal == signal.SIGKILL, describe(result)


# ----------------------------------------------------- 3: compile output is information

def _jail_keeps_compile_steps_running_past_the_output_cap() -> bool:
    # BoxLimits.output_overflow_kills is declared in jail/spec.py; the supervisor that
    # honours it is being written on another branch. Until it lands this test is an
    # expected failure (strict: it must fail), afterwards an ordinary test.
    return "output_overflow_kills" in Path(supervisor.__file__).read_text()


# gcc -Wall repeats the offending line under each of the two warnings: 1.16 MB of
# output for a valid program.
LONG_LINE_C = (
    "#include <stdio.h>\n"
    "int main(void) { int unused_a; int unused_b; /* " + "x" * 580_000 + " */ "
    'puts("ok"); return 0; }\n'
)


@pytest.mark.xfail(not _jail_keeps_compile_steps_running_past_the_output_cap(), strict=True,
                   reason="needs the supervisor to honour BoxLimits.output_overflow_kills")
async def test_compile_output_past_the_cap_is_truncated_not_a_compile_error(execute):
    result = await execute("c", LONG_LINE_C, expected_output="ok\n")
    assert result.status is Status.ACCEPTED, describe(result)[:3000]
    assert result.compile_output.endswith(COMPILE_OUTPUT_TRUNCATED)
    kept = result.compile_output.removesuffix(COMPILE_OUTPUT_TRUNCATED)
    assert "unused_a" in kept
    cap = Config().sandbox.output_limit_bytes
    assert cap - 1024 < len(kept.encode()) <= cap + 1  # + the newline before the marker


# ------------------------------------------------------------- 4: recursion 10^6 deep

# A path 0-1-...-(n-1) as adjacency lists in flat arrays; the DFS from 0 is n deep and
# not a tail call (the best depth is taken after the call returns).
DFS = {
    "c": r"""
#include <stdio.h>
#include <stdlib.h>
static int *head, *nxt, *to;
static char *seen;
static long dfs(int v, long depth) {
    seen[v] = 1;
    long best = depth;
    for (int e = head[v]; e >= 0; e = nxt[e])
        if (!seen[to[e]]) { long d = dfs(to[e], depth + 1); if (d > best) best = d; }
    return best;
}
int main(void) {
    int n, m = 0;
    if (scanf("%d", &n) != 1) return 2;
    head = malloc(n * sizeof *head); nxt = malloc(2 * n * sizeof *nxt);
    to = malloc(2 * n * sizeof *to); seen = calloc(n, 1);
    for (int i = 0; i < n; i++) head[i] = -1;
    for (int i = 0; i + 1 < n; i++) {
        to[m] = i + 1; nxt[m] = head[i]; head[i] = m++;
        to[m] = i; nxt[m] = head[i + 1]; head[i + 1] = m++;
    }
    printf("%ld\n", dfs(0, 1));
    return 0;
}
""",
    "cpp": r"""
#include <cstdio>
#include <vector>
static std::vector<std::vector<int>> adj;
static std::vector<char> seen;
static long dfs(int v, long depth) {
    seen[v] = 1;
    long best = depth;
    for (int w : adj[v])
        if (!seen[w]) { long d = dfs(w, depth + 1); if (d > best) best = d; }
    return best;
}
int main() {
    int n;
    if (std::scanf("%d", &n) != 1) return 2;
    adj.assign(n, {});
    seen.assign(n, 0);
    for (int i = 0; i + 1 < n; i++) { adj[i].push_back(i + 1); adj[i + 1].push_back(i); }
    std::printf("%ld\n", dfs(0, 1));
}
""",
    # CPython objects are large: adjacency lists for 10^6 nodes alone take ~200 MiB, so
    # the Python program follows the path through one flat array (150 bytes a frame).
    "python3": """\
import sys
sys.setrecursionlimit(1_100_000)
n = int(input())
nxt = list(range(1, n)) + [-1]
def depth(v):
    return 1 if nxt[v] < 0 else 1 + depth(nxt[v])
print(depth(0))
""",
    "java": """\
import java.io.*;
import java.util.*;
public class Main {
    static int[] head, nxt, to;
    static boolean[] seen;
    static int dfs(int v, int depth) {
        seen[v] = true;
        int best = depth;
        for (int e = head[v]; e >= 0; e = nxt[e])
            if (!seen[to[e]]) { int d = dfs(to[e], depth + 1); if (d > best) best = d; }
        return best;
    }
    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        int n = Integer.parseInt(in.readLine().trim());
        head = new int[n]; nxt = new int[2 * n]; to = new int[2 * n]; seen = new boolean[n];
        Arrays.fill(head, -1);
        int m = 0;
        for (int i = 0; i + 1 < n; i++) {
            to[m] = i + 1; nxt[m] = head[i]; head[i] = m++;
            to[m] = i; nxt[m] = head[i + 1]; head[i + 1] = m++;
        }
        System.out.println(dfs(0, 1));
    }
}
""",
    "javascript": """\
const n = parseInt(require("fs").readFileSync(0, "utf8"));
const head = new Int32Array(n).fill(-1), nxt = new Int32Array(2 * n), to = new Int32Array(2 * n);
let m = 0;
for (let i = 0; i + 1 < n; i++) {
  to[m] = i + 1; nxt[m] = head[i]; head[i] = m++;
  to[m] = i; nxt[m] = head[i + 1]; head[i + 1] = m++;
}
const seen = new Uint8Array(n);
function dfs(v, depth) {
  seen[v] = 1;
  let best = depth;
  for (let e = head[v]; e >= 0; e = nxt[e])
    if (!seen[to[e]]) { const d = dfs(to[e], depth + 1); if (d > best) best = d; }
  return best;
}
console.log(dfs(0, 1));
""",
}


@pytest.mark.parametrize("language", sorted(DFS))
async def test_recursion_a_million_deep_is_accepted_at_the_default_limits(execute, language):
    # The default 2 s (scaled only under the VM lane's emulation, SLOWDOWN times slower).
    result = await execute(language, DFS[language], stdin=f"{DEEP}\n",
                           expected_output=f"{DEEP}\n", time_limit_ms=int(2000 * SLOWDOWN))
    assert result.status is Status.ACCEPTED, describe(result)[:3000]


# --------------------------------------------------------- 5: source-level failures

@pytest.mark.parametrize(("language", "source", "words"), [
    ("python3", "print('ok')\nif True\n    print('never')\n",
     ["main.py", "line 2", "SyntaxError"]),
    ("javascript", "console.log('ok');\nlet x = ;\n", ["main.js:2", "SyntaxError"]),
    ("java", "class Solution { public static void main(String[] a) { } }\n",
     ["no class named Main", "found: Solution"]),
    ("java", "package judge.solutions;\n"
             "public class Main { public static void main(String[] a) { } }\n",
     ["default package", "judge.solutions", "package declaration"]),
    ("java", "public class Main {\n"
             "    static { System.out.println(\"initialized\"); }\n"
             "    public static void mian(String[] a) { }\n}\n",
     ["Main method not found in class Main", "public static void main(String[] args)"]),
])
async def test_source_level_failures_are_compile_errors_that_say_why(execute, language,
                                                                     source, words):
    result = await execute(language, source)
    assert result.status is Status.COMPILE_ERROR, describe(result)
    for word in words:
        assert word in result.compile_output, describe(result)
    # Nothing of the program ran (not even Main's static initializer): run fields null.
    assert "initialized" not in result.compile_output, describe(result)
    assert result.stdout == "" and result.exit_code is None and result.time_ms is None


HELLO = {
    "c": '#include <stdio.h>\nint main(void) { puts("ok"); return 0; }\n',
    "cpp": '#include <iostream>\nint main() { std::cout << "ok\\n"; }\n',
    "python3": 'print("ok")\n',
    "java": ("public class Main {\n"
             '    public static void main(String[] a) { System.out.println("ok"); }\n}\n'),
    "javascript": 'console.log("ok");\n',
}


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_source_starting_with_a_bom_is_accepted(execute, language):
    result = await execute(language, BOM + HELLO[language], expected_output="ok\n")
    assert result.status is Status.ACCEPTED, describe(result)


# ------------------------------------------------------------ 6: BOM in expected output

async def test_bom_at_the_start_of_expected_output_is_ignored(execute):
    result = await execute("python3", 'print("42")\nprint("x")\n',
                           expected_output=BOM + "42\r\nx\r\n")
    assert result.status is Status.ACCEPTED, describe(result)
    wrong = await execute("python3", 'print("43")\n', expected_output=BOM + "42\n")
    assert wrong.status is Status.WRONG_ANSWER, describe(wrong)
