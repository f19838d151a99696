// The sandboxd web console: a client of the public API, same origin, no framework.
// Every program output is put in the page with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "sandboxd-token";  // sessionStorage: gone when the tab closes
const STATUS_REFRESH_MS = 2000;
const HISTORY_KEPT = 10;
const POLL_MS = 500;
const VERDICT_COLOURS = {
  "Accepted": "#2e9d4f", "Wrong Answer": "#d64545", "Compile Error": "#e09b22",
  "Runtime Error": "#b03a3a", "Time Limit Exceeded": "#7b4fd6",
  "Memory Limit Exceeded": "#a77be8", "Output Limit Exceeded": "#5a3aa8",
  "Internal Error": "#333333",
};
const SAMPLES = {
  "python3": 'print("Hello, world!")\n',
  "c": '#include <stdio.h>\n\nint main(void) {\n    printf("Hello, world!\\n");\n    return 0;\n}\n',
  "cpp": '#include <iostream>\n\nint main() {\n    std::cout << "Hello, world!" << std::endl;\n}\n',
};

const $ = (id) => document.getElementById(id);
const state = { languages: [], history: [], statusTimer: null, lastRequest: null };

// -- API access: the token (if any) from this tab's session ---------------------

class AuthNeeded extends Error {}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store",
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = { error: resp.statusText }; }
  if (resp.status === 401) {
    askForToken(token ? (data && data.error) || "invalid token" : "");
    throw new AuthNeeded((data && data.error) || "a token is needed");
  }
  return { status: resp.status, data };
}

function askForToken(error) {
  $("token-panel").hidden = false;
  $("token-error").textContent = error ? "Refused: " + error : "";
  $("token-state").textContent = "no token";
  $("token-input").focus();
}

function tokenSaved() {
  $("token-panel").hidden = true;
  $("token-state").textContent = sessionStorage.getItem(TOKEN_KEY) ? "token set" : "";
}

// -- Playground -------------------------------------------------------------------

async function loadLanguages() {
  const { status, data } = await api("GET", "/languages");
  if (status !== 200) throw new Error(data.error || "GET /languages: " + status);
  state.languages = data;
  const select = $("language");
  select.replaceChildren();
  for (const lang of data) {
    const option = document.createElement("option");
    option.value = lang.id;
    option.textContent = lang.name + (lang.available ? "" : " (unavailable)");
    option.disabled = !lang.available;
    select.append(option);
  }
  const preferred = data.find((l) => l.id === "python3" && l.available) || data.find((l) => l.available);
  if (preferred) select.value = preferred.id;
  if (!$("source").value) $("source").value = SAMPLES[select.value] || "";
  for (const role of ["checker", "interactor"]) {
    const helper = $(role + "-language");
    helper.replaceChildren(...[...select.options]
      .filter((o) => (data.find((l) => l.id === o.value).usable_as || []).includes(role))
      .map((o) => o.cloneNode(true)));
    if (preferred) helper.value = preferred.id;
  }
}

function intField(id) {
  const text = $(id).value.trim();
  return text === "" ? undefined : Number(text);
}

// -- Tests mode: several stdin/expected pairs, judged at once ----------------------

function testsMode() {
  return $("tests-mode").checked;
}

function setTestsMode(on) {
  $("tests-mode").checked = on;
  $("single-io").hidden = on;
  $("tests-io").hidden = !on;
  if (on && !$("test-rows").children.length) addTestRow();
}

function codeArea(className, label) {
  const area = document.createElement("textarea");
  area.className = "code " + className;
  area.rows = 3;
  area.spellcheck = false;
  area.setAttribute("aria-label", label);
  return area;
}

function addTestRow(test) {
  const item = document.createElement("li");
  item.className = "test-row";
  const io = document.createElement("div");
  io.className = "row io";
  const stdinLabel = document.createElement("label");
  const stdin = codeArea("test-stdin", "Test stdin");
  stdin.value = (test && test.stdin) || "";
  stdinLabel.append(document.createTextNode("stdin "), stdin);
  const expectedLabel = document.createElement("label");
  const expected = codeArea("test-expected", "Test expected output");
  expected.value = (test && test.expected_output) || "";
  expectedLabel.append(document.createTextNode("Expected output (optional) "), expected);
  io.append(stdinLabel, expectedLabel);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove-test";
  remove.textContent = "Remove";
  remove.addEventListener("click", () => {
    if ($("test-rows").children.length > 1) item.remove();
    updateRemoveButtons();
  });
  item.append(io, remove);
  $("test-rows").append(item);
  updateRemoveButtons();
}

function updateRemoveButtons() {
  const rows = $("test-rows").children;
  for (const button of $("test-rows").querySelectorAll(".remove-test")) button.disabled = rows.length <= 1;
}

function setTestRows(tests) {
  $("test-rows").replaceChildren();
  for (const test of tests) addTestRow(test);
  if (!tests.length) addTestRow();
}

function currentTests() {
  const tests = [];
  for (const item of $("test-rows").querySelectorAll(".test-row")) {
    const test = { stdin: item.querySelector(".test-stdin").value };
    const expected = item.querySelector(".test-expected").value;
    if (expected !== "") test.expected_output = expected;
    tests.push(test);
  }
  return tests;
}

// -- Judged by: the expected output, a custom checker or an interactor (never both) --

const JUDGES = ["output", "checker", "interactor"];

function setJudgeMode(mode) {
  $("judge-mode").value = mode;
  $("checker-io").hidden = mode !== "checker";
  $("interactor-io").hidden = mode !== "interactor";
}

function addJudgeFields(body) {
  const mode = $("judge-mode").value;
  if (mode === "checker") {
    body.checker = "custom";
    body.checker_language = $("checker-language").value;
    body.checker_source = $("checker-source").value;
  } else if (mode === "interactor") {
    body.interactor_language = $("interactor-language").value;
    body.interactor_source = $("interactor-source").value;
  }
}

function restoreJudgeFields(body) {
  let mode = "output";
  if (body.interactor_source !== undefined) {
    mode = "interactor";
    $("interactor-language").value = body.interactor_language;
    $("interactor-source").value = body.interactor_source;
  } else if (body.checker === "custom") {
    mode = "checker";
    $("checker-language").value = body.checker_language;
    $("checker-source").value = body.checker_source;
  }
  setJudgeMode(mode);
}

function currentRequest() {
  const body = { language: $("language").value, source: $("source").value };
  if (testsMode()) {
    body.tests = currentTests();
  } else {
    body.stdin = $("stdin").value;
    if ($("expected").value !== "") body.expected_output = $("expected").value;
  }
  addJudgeFields(body);
  const limits = { time_limit_ms: "time-limit", wall_time_limit_ms: "wall-limit", memory_limit_mb: "memory-limit" };
  for (const [field, id] of Object.entries(limits)) {
    const value = intField(id);
    if (value !== undefined) body[field] = value;
  }
  return body;
}

function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curlCommand(body) {
  const lines = ["curl -sS -X POST " + shellQuote(location.origin + "/execute?wait=true")];
  if (sessionStorage.getItem(TOKEN_KEY)) lines.push('-H "Authorization: Bearer $SANDBOXD_TOKEN"');
  lines.push("-H 'Content-Type: application/json'");
  lines.push("--data-binary " + shellQuote(JSON.stringify(body)));
  return lines.join(" \\\n  ");
}

function verdictClass(status) {
  return "v-" + String(status).toLowerCase().replace(/[^a-z]+/g, "-");
}

function showVerdict(status) {
  const verdict = $("verdict");
  verdict.textContent = status;
  verdict.className = "verdict " + verdictClass(status);
}

function dash(value, unit) {
  return value === null || value === undefined ? "–" : value + (unit || "");
}

function showResult(result) {
  showVerdict(result.status + (result.cached ? " (cached)" : ""));
  $("exit-code").textContent = dash(result.exit_code);
  $("signal").textContent = dash(result.signal);
  $("time").textContent = dash(result.time_ms, " ms");
  $("wall-time").textContent = dash(result.wall_time_ms, " ms");
  $("memory").textContent = dash(result.memory_kb, " KiB");
  $("message").textContent = result.message || "";
  $("stdout").textContent = result.stdout || "";
  $("stderr").textContent = result.stderr || "";
  $("compile-output").textContent = result.compile_output || "";
  showJudgeMessage("checker", result.checker_message);
  showJudgeMessage("interactor", result.interactor_message);
  showTestResults(result.tests);
}

function showJudgeMessage(role, message) {
  // Shown when the result has one, even empty (the judge said nothing).
  const given = typeof message === "string";
  $(role + "-message-box").hidden = !given;
  $(role + "-message").textContent = given ? message : "";
}

function showTestResults(tests) {
  const body = $("test-results").tBodies[0];
  body.replaceChildren();
  $("tests-result").hidden = !Array.isArray(tests) || !tests.length;
  if ($("tests-result").hidden) return;
  tests.forEach((test, i) => {
    const row = document.createElement("tr");
    const number = document.createElement("td");
    number.textContent = String(i + 1);
    const status = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "test-verdict " + verdictClass(test.status);
    badge.textContent = test.status;
    status.append(badge);
    if (test.message) status.append(document.createTextNode(" " + test.message));
    row.append(number, status);
    for (const [value, unit] of [[test.time_ms, " ms"], [test.wall_time_ms, " ms"], [test.memory_kb, " KiB"]]) {
      const cell = document.createElement("td");
      cell.textContent = dash(value, unit);
      row.append(cell);
    }
    const said = document.createElement("td");
    said.className = "judge-message";
    said.textContent = test.interactor_message ?? test.checker_message ?? "";
    row.append(said);
    body.append(row);
  });
}

function clearResult() {
  for (const id of ["exit-code", "signal", "time", "wall-time", "memory"]) $(id).textContent = "–";
  for (const id of ["message", "stdout", "stderr", "compile-output"]) $(id).textContent = "";
  for (const role of ["checker", "interactor"]) showJudgeMessage(role, undefined);
  showTestResults(null);
}

async function waitForResult(pending) {
  // The server's wait cap passed (202): poll the result until it is final.
  const id = pending.submission_id;
  showVerdict(pending.status || "Queued");
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    const { status, data } = await api("GET", "/result/" + encodeURIComponent(id));
    if (status !== 200) throw new Error(data.error || "GET /result: " + status);
    if (data.status !== "Queued" && data.status !== "Running") return data;
    showVerdict(data.status);
  }
}

async function run() {
  const button = $("run");
  if (button.disabled) return;
  const body = currentRequest();
  state.lastRequest = body;
  button.disabled = true;
  $("run-state").textContent = "running…";
  clearResult();
  showVerdict("Running");
  try {
    const { status, data } = await api("POST", "/execute?wait=true", body);
    if (status !== 200 && status !== 202) {
      showVerdict("Refused (HTTP " + status + ")");
      $("message").textContent = data.error || "";
      return;
    }
    const result = status === 202 ? await waitForResult(data) : data;
    showResult(result);
    remember(body, result);
  } catch (e) {
    showVerdict(e instanceof AuthNeeded ? "Token needed" : "Request failed");
    $("message").textContent = String(e.message || e);
  } finally {
    button.disabled = false;
    $("run-state").textContent = "";
  }
}

function remember(body, result) {
  state.history.unshift({ body, result, at: new Date() });
  state.history.length = Math.min(state.history.length, HISTORY_KEPT);
  const list = $("history");
  list.replaceChildren();
  for (const entry of state.history) {
    const item = document.createElement("li");
    item.textContent = entry.at.toLocaleTimeString() + " · " + entry.body.language + " · " +
      entry.result.status + (entry.result.time_ms === null ? "" : " · " + entry.result.time_ms + " ms");
    item.addEventListener("click", () => {
      $("language").value = entry.body.language;
      $("source").value = entry.body.source;
      if (entry.body.tests) {
        setTestRows(entry.body.tests);
        setTestsMode(true);
      } else {
        $("stdin").value = entry.body.stdin || "";
        $("expected").value = entry.body.expected_output || "";
        setTestsMode(false);
      }
      restoreJudgeFields(entry.body);
      showResult(entry.result);
    });
    list.append(item);
  }
}

function insertTab(event) {
  // Tab indents in the source instead of leaving the field; Escape then Tab leaves it.
  if (event.key !== "Tab" || event.shiftKey || event.ctrlKey || event.altKey || event.metaKey) return;
  const area = event.target;
  if (area.dataset.tabReleased === "1") { area.dataset.tabReleased = ""; return; }
  event.preventDefault();
  const start = area.selectionStart;
  area.setRangeText("    ", start, area.selectionEnd, "end");
}

// -- Status -----------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function drawLine(svg, values) {
  svg.replaceChildren();
  if (values.length < 2) return;
  const top = Math.max(1, ...values);
  const points = values.map((v, i) =>
    (i * 300 / (values.length - 1)).toFixed(1) + "," + (58 - v * 56 / top).toFixed(1));
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
}

function drawVerdicts(verdicts) {
  const svg = $("chart-verdicts");
  const legend = $("verdict-legend");
  svg.replaceChildren();
  legend.replaceChildren();
  const total = Object.values(verdicts).reduce((a, b) => a + b, 0);
  let x = 0;
  for (const [name, count] of Object.entries(verdicts)) {
    const rect = document.createElementNS(SVG, "rect");
    const width = total ? count * 300 / total : 0;
    rect.setAttribute("x", x.toFixed(2));
    rect.setAttribute("y", "0");
    rect.setAttribute("width", width.toFixed(2));
    rect.setAttribute("height", "16");
    rect.setAttribute("fill", VERDICT_COLOURS[name] || "#999999");
    x += width;
    svg.append(rect);
    const item = document.createElement("li");
    const swatch = document.createElementNS(SVG, "svg");
    swatch.setAttribute("class", "swatch");
    swatch.setAttribute("viewBox", "0 0 1 1");
    const dot = document.createElementNS(SVG, "rect");
    dot.setAttribute("width", "1");
    dot.setAttribute("height", "1");
    dot.setAttribute("fill", VERDICT_COLOURS[name] || "#999999");
    swatch.append(dot);
    item.append(swatch, document.createTextNode(name + ": " + count));
    legend.append(item);
  }
  if (!total) legend.textContent = "no finished jobs";
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? Math.round(value * 1000) + " ms" : value.toFixed(2) + " s";
}

async function refreshStatus() {
  try {
    const { status, data } = await api("GET", "/console/status");
    if (status !== 200) throw new Error(data.error || "GET /console/status: " + status);
    $("status-error").textContent = "";
    $("queue-depth").textContent = data.queued;
    $("running").textContent = data.running;
    const last = data.series.length ? data.series[data.series.length - 1] : null;
    $("jobs-per-s").textContent = last ? last.jobs_per_s.toFixed(1) : "0.0";
    drawLine($("chart-queue"), data.series.map((s) => s.queued));
    drawLine($("chart-running"), data.series.map((s) => s.running));
    drawLine($("chart-rate"), data.series.map((s) => s.jobs_per_s));
    $("p50").textContent = seconds(data.latency_s.p50);
    $("p90").textContent = seconds(data.latency_s.p90);
    $("p99").textContent = seconds(data.latency_s.p99);
    $("window").textContent = Math.round(data.window_s) + " s";
    drawVerdicts(data.verdicts);
    $("kernel").textContent = data.kernel;
    $("cgroup").textContent = data.cgroup;
    $("workers").textContent = data.workers;
    $("queue-size").textContent = data.queue_size;
    const list = $("status-languages");
    list.replaceChildren();
    for (const lang of data.languages) {
      const item = document.createElement("li");
      item.textContent = lang.name;
      if (!lang.available) item.className = "off";
      list.append(item);
    }
  } catch (e) {
    if (!(e instanceof AuthNeeded)) $("status-error").textContent = String(e.message || e);
  }
}

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  $("view-playground").hidden = name !== "playground";
  $("view-status").hidden = name !== "status";
  clearInterval(state.statusTimer);
  if (name === "status") {
    refreshStatus();
    state.statusTimer = setInterval(refreshStatus, STATUS_REFRESH_MS);
  }
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
}

// -- Start ------------------------------------------------------------------------

async function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("run").addEventListener("click", run);
  $("tests-mode").addEventListener("change", () => setTestsMode($("tests-mode").checked));
  $("add-test").addEventListener("click", () => addTestRow());
  setTestsMode($("tests-mode").checked);
  $("judge-mode").addEventListener("change", () => setJudgeMode($("judge-mode").value));
  setJudgeMode(JUDGES.includes($("judge-mode").value) ? $("judge-mode").value : "output");
  $("copy-curl").addEventListener("click", () => {
    const command = curlCommand(currentRequest());
    $("curl").textContent = command;
    $("curl").hidden = false;
    if (navigator.clipboard) navigator.clipboard.writeText(command).catch(() => {});
  });
  for (const id of ["source", "checker-source", "interactor-source"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Escape") event.target.dataset.tabReleased = "1";
      insertTab(event);
    });
  }
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
  });
  $("language").addEventListener("change", () => {
    const known = Object.values(SAMPLES);
    if (!$("source").value.trim() || known.includes($("source").value)) $("source").value = SAMPLES[$("language").value] || "";
  });
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    tokenSaved();
    await init();
  });
  tokenSaved();
  showView(location.hash === "#status" ? "status" : "playground");
  await init();
}

async function init() {
  try {
    await loadLanguages();
    document.body.dataset.ready = "1";
  } catch (e) {
    if (!(e instanceof AuthNeeded)) $("message").textContent = String(e.message || e);
  }
}

document.addEventListener("DOMContentLoaded", start);
