// The task monitor page: reads api/stream (server-sent events) and draws each snapshot.
// No framework and no build step. Every value from the server goes in through
// textContent or setAttribute, never as HTML: task names and errors are user data.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MODES = { immediate: "immediate", after_route: "after route", after_response: "after response" };
const REASONS = {
  request: null, // depends on the mode, see reason()
  max_concurrency: "a free slot (max_concurrency)",
  event_loop: "the event loop",
  limiter: "its limiter",
  thread: "a worker thread",
  retry: "its retry delay",
  journal: "its record in the journal",
};

let latest = null;
let latestJournal = null;
let paused = false;
let clockOffset = 0; // server time minus browser time, in seconds
let detailId = null;

function $(id) { return document.getElementById(id); }

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0.001) return `${(value * 1e6).toFixed(0)} µs`;
  if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
  if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function clock(epoch) {
  if (epoch === null || epoch === undefined) return "–";
  const date = new Date(epoch * 1000);
  return date.toLocaleTimeString([], { hour12: false }) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function now() { return Date.now() / 1000 + clockOffset; }

function modeBadge(mode) { return el("span", { className: `mode ${mode}`, text: MODES[mode] || mode }); }

function reason(task) {
  if (task.waiting_for === "request") {
    return task.mode === "after_route" ? "the endpoint to return" : "the response to be sent";
  }
  return REASONS[task.waiting_for] || (task.state === "pending" ? "its start" : "–");
}

function taskButton(task) {
  return el("button", {
    type: "button", className: "link", "data-key": `open-${task.id}`,
    "aria-label": `${task.name}, task ${task.id}: details`, onclick: () => openDetail(task.id),
  }, `${task.name} `, el("span", { className: "count", text: `#${task.id}` }));
}

function cancelButton(task) {
  return el("button", {
    type: "button", className: "danger", "data-key": `cancel-${task.id}`,
    "aria-label": `Cancel ${task.name}, task ${task.id}`, onclick: () => cancelTask(task.id),
  }, "Cancel");
}

// Re-rendering replaces rows: keep the keyboard focus on the same control.
function keepFocus(render) {
  const active = document.activeElement;
  const key = active && active.getAttribute && active.getAttribute("data-key");
  render();
  if (key) {
    const again = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

function fillTable(id, rows) {
  const table = $(id);
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  const empty = table.parentElement.querySelector(".empty");
  table.hidden = rows.length === 0;
  if (empty) empty.hidden = rows.length !== 0;
}

function renderCounts(summary) {
  const c = summary.counts;
  const rate = summary.success_rate === null ? "–" : `${(summary.success_rate * 100).toFixed(1)} %`;
  const items = [
    ["pending", "Pending", c.pending], ["running", "Running", c.running],
    ["succeeded", "Succeeded", c.succeeded], ["failed", "Failed", c.failed],
    ["cancelled", "Cancelled", c.cancelled], ["discarded", "Discarded", c.discarded],
    ["retries", "Retries", c.retries], ["rate", "Success rate", rate],
  ];
  $("counts").replaceChildren(...items.map(([key, label, value]) =>
    el("div", { className: key, "data-count": key },
      el("dt", { text: label }),
      el("dd", { text: typeof value === "number" ? value.toLocaleString() : value }))));
}

function renderChart(series) {
  const chart = $("chart");
  const done = series.finished;
  const failed = series.failed;
  const top = Math.max(1, ...done);
  const height = 140;
  const y = (value) => (height - (value / top) * (height - 12)).toFixed(1);
  const area = (values) => {
    let path = `M0 ${height}`;
    values.forEach((value, index) => { path += ` L${index} ${y(value)} L${index + 1} ${y(value)}`; });
    return path + ` L${values.length} ${height} Z`;
  };
  chart.replaceChildren(
    svg("line", { class: "gridline", x1: 0, x2: 900, y1: y(top), y2: y(top) }),
    svg("path", { class: "finished", d: area(done) }),
    svg("path", { class: "failed", d: area(failed) }),
  );
  chart.setAttribute("data-total", String(done.reduce((a, b) => a + b, 0)));
  const totalDone = done.reduce((a, b) => a + b, 0);
  const totalFailed = failed.reduce((a, b) => a + b, 0);
  const last = done.slice(-60).reduce((a, b) => a + b, 0);
  const peakAt = done.indexOf(Math.max(...done));
  $("chart-text").textContent = totalDone === 0
    ? "No task finished in the last 15 minutes."
    : `${totalDone.toLocaleString()} finished in the last 15 minutes, ${totalFailed.toLocaleString()} of them failed; ` +
      `${last.toLocaleString()} in the last minute; at most ${Math.max(...done).toLocaleString()} in one second ` +
      `(${clock(series.end - (series.seconds - 1 - peakAt))}). Scale: top line = ${top.toLocaleString()} per second.`;
  const rows = [];
  for (let minute = 0; minute < 15; minute++) {
    const from = minute * 60;
    const sum = (values) => values.slice(from, from + 60).reduce((a, b) => a + b, 0);
    const end = series.end - (series.seconds - 1 - (from + 59));
    rows.push(el("tr", {}, el("td", { text: `until ${clock(end).slice(0, 8)}` }),
      el("td", { text: String(sum(done)) }), el("td", { text: String(sum(failed)) })));
  }
  $("chart-table").tBodies[0].replaceChildren(...rows.reverse());
}

function renderRunning(running) {
  $("running-count").textContent = `(${running.total.toLocaleString()})`;
  const at = now();
  fillTable("running", running.tasks.map((task) => el("tr", { "data-task": task.id },
    el("td", {}, taskButton(task)),
    el("td", {}, modeBadge(task.mode)),
    el("td", { "data-started": task.started, text: seconds(at - task.started) }),
    el("td", {}, cancelButton(task)))));
}

function renderWaiting(waiting) {
  $("waiting-count").textContent = `(${waiting.total.toLocaleString()})`;
  const at = now();
  fillTable("waiting", waiting.tasks.map((task) => el("tr", { "data-task": task.id },
    el("td", {}, taskButton(task)),
    el("td", {}, modeBadge(task.mode)),
    el("td", { text: reason(task) }),
    el("td", { text: task.scheduled === null ? "–" : seconds(at - task.scheduled) }),
    el("td", {}, cancelButton(task)))));
}

function renderDurations(durations) {
  fillTable("durations", durations.map((row) => el("tr", {},
    el("th", { scope: "row", text: row.name }),
    el("td", { className: "num", text: row.count.toLocaleString() }),
    el("td", { className: "num", text: seconds(row.p50) }),
    el("td", { className: "num", text: seconds(row.p95) }),
    el("td", { className: "num", text: seconds(row.p99) }))));
}

function renderFailures(failures) {
  const list = $("failures");
  list.replaceChildren(...failures.map((task) => el("li", { "data-task": task.id },
    taskButton(task),
    el("div", { className: "error", text: task.error || "failed" }),
    el("div", { className: "meta", text: `${clock(task.ended)} · ${MODES[task.mode]} · ${task.attempts} attempt(s)` +
      (task.path ? ` · ${task.path}` : "") }))));
  list.parentElement.querySelector(".empty").hidden = failures.length !== 0;
}

function renderTimeline(requests) {
  const list = $("timeline");
  const at = now();
  list.replaceChildren(...requests.map((request) => timelineRow(request, at)));
  list.parentElement.querySelector(".empty").hidden = requests.length !== 0;
}

function timelineRow(request, at) {
  const start = request.received;
  let end = Math.max(request.response_ended || at, start);
  for (const task of request.tasks) end = Math.max(end, task.ended || (task.started ? at : task.scheduled || start));
  const span = Math.max(end - start, 0.001);
  const width = 1000;
  const labelWidth = 190;
  const x = (t) => (labelWidth + ((t - start) / span) * (width - labelWidth - 10)).toFixed(1);
  const rowHeight = 16;
  const height = 22 + request.tasks.length * rowHeight;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, height: String(height * 0.95), role: "img" });
  const routeEnd = request.response_started || request.response_ended || end;
  chart.append(svg("rect", { class: "endpoint", x: x(start), y: 3, width: Math.max(1, x(routeEnd) - x(start)), height: 12, rx: 2 }));
  if (request.response_started) {
    chart.append(svg("rect", {
      class: "response", x: x(request.response_started), y: 3,
      width: Math.max(2, x(request.response_ended || at) - x(request.response_started)), height: 12, rx: 2,
    }));
    chart.append(svg("line", { class: "moment", x1: x(request.response_started), x2: x(request.response_started), y1: 0, y2: height }));
  }
  if (request.response_ended) {
    chart.append(svg("line", { class: "moment", x1: x(request.response_ended), x2: x(request.response_ended), y1: 0, y2: height }));
  }
  const label = svg("text", { x: 0, y: 13 });
  label.textContent = "request";
  chart.append(label);
  const words = [];
  request.tasks.forEach((task, index) => {
    const top = 20 + index * rowHeight;
    const name = svg("text", { x: 0, y: top + 10 });
    name.textContent = task.name.length > 28 ? task.name.slice(0, 27) + "…" : task.name;
    chart.append(name);
    const began = task.started;
    const finished = task.ended || at;
    const scheduled = task.scheduled ?? began ?? start;
    chart.append(svg("line", { class: "wait", x1: x(scheduled), x2: x(began || finished), y1: top + 6, y2: top + 6 }));
    if (began) {
      const link = svg("a", { href: "#", "data-key": `bar-${task.id}`, "aria-label": `${task.name}, task ${task.id}: details` });
      link.addEventListener("click", (event) => { event.preventDefault(); openDetail(task.id); });
      const bar = svg("rect", {
        class: `run ${task.state === "failed" ? "failed" : task.mode}`, x: x(began), y: top + 1,
        width: Math.max(2, x(finished) - x(began)), height: 10, rx: 2,
      });
      const title = svg("title", {});
      title.textContent = `${task.name} (${MODES[task.mode]}): ${task.state}`;
      bar.append(title);
      link.append(bar);
      chart.append(link);
    }
    const offset = (t) => (t === null || t === undefined ? null : seconds(t - start));
    words.push(`${task.name} (${MODES[task.mode]}, ${task.state}): scheduled at +${offset(scheduled)}` +
      (began ? `, ran from +${offset(began)} to ${task.ended ? "+" + offset(task.ended) : "now"}` : ", not started"));
  });
  const description = `${request.method} ${request.path}: response started at ` +
    (request.response_started ? `+${seconds(request.response_started - start)}` : "–") +
    ", ended at " + (request.response_ended ? `+${seconds(request.response_ended - start)}` : "–") +
    ". " + words.join("; ") + (request.more_tasks ? `; and ${request.more_tasks} more task(s).` : ".");
  const descriptionId = `timeline-${Math.round(start * 1e6)}`;
  chart.setAttribute("aria-describedby", descriptionId);
  chart.setAttribute("aria-label", `Timeline of ${request.method} ${request.path}`);
  return el("li", {},
    el("div", { className: "request" },
      el("span", { className: "path", text: `${request.method} ${request.path}` }),
      el("span", { className: "meta", text: `${clock(start)} · status ${request.status ?? "–"} · drawn over ${seconds(span)} · ` +
        `response ${request.response_started ? seconds(request.response_started - start) : "–"} → ` +
        `${request.response_ended ? seconds(request.response_ended - start) : "–"}` +
        (request.more_tasks ? ` · ${request.more_tasks} more task(s) not drawn` : "") })),
    chart,
    el("p", { id: descriptionId, className: "visually-hidden", text: description }));
}

function render(snapshot) {
  latest = snapshot;
  clockOffset = snapshot.now - Date.now() / 1000;
  keepFocus(() => {
    renderCounts(snapshot.summary);
    renderChart(snapshot.series);
    renderRunning(snapshot.running);
    renderWaiting(snapshot.waiting);
    renderDurations(snapshot.durations);
    renderFailures(snapshot.failures);
    renderTimeline(snapshot.requests);
  });
  document.body.setAttribute("data-updated", String(snapshot.now));
}

function when(epoch) {
  if (epoch === null || epoch === undefined) return "–";
  const date = new Date(epoch * 1000);
  const today = new Date(now() * 1000).toDateString() === date.toDateString();
  return (today ? "" : date.toLocaleDateString() + " ") + clock(epoch);
}

function processName(row) {
  if (!row.process) return "–";
  return row.this_process ? `${row.process} (this process)` : row.process;
}

function stateBadge(state) { return el("span", { className: `state ${state}`, text: state }); }

// The journal: durable work of every process that shares the file, across restarts.
// It comes as its own event, only when it changed (read at most every few seconds).
function renderJournal(journal) {
  latestJournal = journal;
  $("journal").hidden = false;
  $("journal-meta").textContent = `From ${journal.path}, shared by every process that uses it; ` +
    `read at ${when(journal.read_at)}, at most every ${journal.interval} s.`;
  const error = $("journal-error");
  error.hidden = !journal.error;
  error.textContent = journal.error ? `The journal could not be read: ${journal.error}` : "";
  const counts = journal.counts || {};
  const items = [
    ["pending", "Unfinished"], ["succeeded", "Succeeded"], ["failed", "Failed"], ["cancelled", "Cancelled"],
  ];
  $("journal-counts").replaceChildren(...items.map(([key, label]) =>
    el("div", { className: key, "data-journal-count": key },
      el("dt", { text: label }),
      el("dd", { text: key in counts ? counts[key].toLocaleString() : "–" }))));
  fillTable("journal-rows", journal.finished.map((row) => el("tr", { "data-row": row.id },
    el("th", { scope: "row" }, `${row.name} `, el("span", { className: "count", text: MODES[row.mode] || row.mode })),
    el("td", {}, stateBadge(row.state)),
    el("td", { className: "num", text: String(row.attempts) }),
    el("td", { text: processName(row) }),
    el("td", { text: when(row.finished) }),
    el("td", { className: "path", text: row.request || "–" }))));
  // Re-rendering must not close a traceback someone opened.
  const open = new Set([...document.querySelectorAll("#journal-failures details[open]")].map((node) => node.dataset.row));
  const list = $("journal-failures");
  list.replaceChildren(...journal.failures.map((row) => el("li", { "data-row": row.id },
    el("div", { className: "name", text: row.name }),
    el("div", { className: "error", text: row.error || "failed" }),
    el("div", { className: "meta", text: `${when(row.finished)} · ${MODES[row.mode] || row.mode} · ` +
      `${row.attempts} attempt(s) · ${processName(row)}` + (row.request ? ` · ${row.request}` : "") }),
    row.traceback ? el("details", { "data-row": row.id, open: open.has(row.id) },
      el("summary", { "data-key": `journal-traceback-${row.id}`, text: "Traceback" }),
      el("pre", { className: "traceback", tabindex: "0", text: row.traceback })) : null)));
  list.parentElement.querySelector(".empty").hidden = journal.failures.length !== 0;
}

// The connection's state; it changes rarely, so it is only written when it changes.
function setStatus(text, kind) {
  const status = $("status");
  if (status.textContent === text) return;
  status.textContent = text;
  status.className = `status ${kind || ""}`;
}

// What an action did, in a live region of its own that snapshots never overwrite.
function notify(text, bad) {
  const notice = $("notice");
  notice.textContent = text;
  notice.className = `notice ${bad ? "bad" : ""}`;
}

async function cancelTask(id) {
  try {
    const response = await fetch(`api/tasks/${id}/cancel`, { method: "POST", headers: { Accept: "application/json" } });
    const body = await response.json();
    if (!response.ok) notify(`Cancel refused: ${body.detail || response.status}`, true);
    else notify(body.cancelled ? `Task ${id} cancelled.` : `Task ${id} had already finished.`, false);
  } catch (error) {
    notify(`Cancel failed: ${error}`, true);
  }
  if (detailId === id) openDetail(id);
}

async function openDetail(id) {
  detailId = id;
  const dialog = $("detail");
  let task;
  try {
    const response = await fetch(`api/tasks/${id}`, { headers: { Accept: "application/json" } });
    if (!response.ok) { notify(`Task ${id} is no longer in the history.`, true); return; }
    task = await response.json();
  } catch (error) {
    notify(`Could not load task ${id}: ${error}`, true);
    return;
  }
  $("detail-title").textContent = `${task.name} #${task.id}`;
  const fields = [
    ["State", task.state], ["Mode", MODES[task.mode]], ["Attempts", String(task.attempts)],
    ["Request", task.request ? `${task.request.method} ${task.request.path} (status ${task.request.status ?? "–"})` : "none (scheduled outside a request)"],
  ];
  if (task.waiting_for) fields.push(["Waits for", reason(task)]);
  if (task.error) fields.push(["Error", task.error]);
  if ("arguments" in task) fields.push(["Arguments", task.arguments ?? "–"]);
  $("detail-fields").replaceChildren(...fields.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { text: value })]));
  const base = task.scheduled ?? task.started ?? task.ended;
  const steps = [["scheduled", task.scheduled], ["handed over", task.handed_over], ["started", task.started], ["ended", task.ended]];
  if (task.request) {
    steps.push(["response started", task.request.response_started], ["response ended", task.request.response_ended]);
    steps.sort((a, b) => (a[1] ?? Infinity) - (b[1] ?? Infinity));
  }
  $("detail-timings").replaceChildren(...steps.map(([name, value]) => el("li", {},
    el("span", { text: name }), value === null || value === undefined ? "–" : `${clock(value)} (+${seconds(value - base)})`)));
  $("detail-error").hidden = !task.traceback;
  $("detail-traceback").textContent = task.traceback || "";
  const cancel = $("detail-cancel");
  cancel.hidden = task.state !== "pending" && task.state !== "running";
  cancel.onclick = () => cancelTask(task.id);
  if (!dialog.open) dialog.showModal();
}

function connect() {
  const source = new EventSource("api/stream");
  source.addEventListener("open", () => setStatus("Live", "live"));
  source.addEventListener("snapshot", (event) => {
    setStatus(paused ? "Paused" : "Live", paused ? "" : "live");
    if (!paused) render(JSON.parse(event.data));
  });
  source.addEventListener("journal", (event) => {
    const journal = JSON.parse(event.data).journal;
    if (paused) latestJournal = journal;
    else keepFocus(() => renderJournal(journal));
  });
  source.addEventListener("error", () => setStatus("Connection lost; reconnecting…", "down"));
}

document.addEventListener("DOMContentLoaded", () => {
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").setAttribute("aria-pressed", String(paused));
    $("pause").textContent = paused ? "Resume updates" : "Pause updates";
    setStatus(paused ? "Paused" : "Live", paused ? "" : "live");
    if (!paused && latestJournal) keepFocus(() => renderJournal(latestJournal));
  });
  $("detail").addEventListener("close", () => { detailId = null; });
  connect();
});
