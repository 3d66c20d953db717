"use strict";
// The run board: polls `v1/runs` every second and, for the selected run,
// its events (`v1/runs/{id}?after=N`, only the new ones), and draws the
// run from them. Every text from the server goes in as text (textContent,
// setAttribute on data-*), never as markup: answers come from models.
(function () {
  const POLL_MS = 1000;
  const TOKEN_KEY = "conclave-token";
  const $ = (sel) => document.querySelector(sel);

  function stored() {
    try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (_) { return ""; }
  }
  function store(t) {
    try { if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY); } catch (_) { /* private mode */ }
  }

  let token = stored();
  let pinned = initialRun();
  let selected = null;
  let detail = fresh(null);
  let timer = null;

  function fresh(id) {
    return { id: id, events: [], next: 0, head: null, tasks: [], done: false, missing: false };
  }

  function initialRun() {
    const q = new URLSearchParams(location.search).get("run");
    if (q) return q;
    const h = decodeURIComponent(location.hash.slice(1));
    return h || null;
  }

  // An element with attributes (`class`, `title`, `data-*`, `hidden`) and
  // children: strings become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
    const m = Math.floor(ms / 60000);
    return m + " min " + Math.round((ms - m * 60000) / 1000) + " s";
  }
  function fmtTime(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString();
  }
  function stopText(stop) {
    if (!stop) return "";
    if (typeof stop === "string") return stop;
    const s = String(stop.stop || "").replace(/-/g, " ");
    return stop.reason ? s + ": " + stop.reason : s;
  }
  function stopState(stop) {
    return stop && typeof stop === "object" ? String(stop.stop || "").replace(/-/g, " ") : "";
  }

  class Unauthorised extends Error {}

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch(path, { headers: headers, cache: "no-store" });
    if (r.status === 401) throw new Unauthorised("unauthorised");
    if (r.status === 404) return null;
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      throw new Error(msg);
    }
    return r.json();
  }

  function setStatus(state, text) {
    const s = $("#status");
    s.dataset.state = state;
    s.textContent = text;
  }

  // ---- the list of runs ----

  // What the process holds now: replicas in flight against their bound,
  // those waiting on a model (no plugin instance held), instances computing.
  function renderLoad(l) {
    if (!l) return;
    $("#load").textContent =
      "replicas in flight " + l.replicas + " of " + l.max_replicas +
      (l.waiting_for_admission ? " (" + l.waiting_for_admission + " waiting for admission)" : "") +
      " · " + l.waiting_on_model + " waiting on a model · plugin instances computing " +
      l.running + " of " + l.slots;
  }

  function renderRuns(list) {
    renderLoad(list.load);
    const body = $("#runs tbody");
    const rows = list.data.map((r) => {
      const tr = el("tr", {
        "data-run": r.id,
        "data-state": r.state,
        class: r.id === selected ? "selected" : null,
        title: r.question,
      },
        el("td", { class: "state" }, r.state),
        el("td", { class: "id" }, r.id),
        el("td", { class: "team" }, r.team),
        el("td", { class: "question" }, r.question),
        el("td", { class: "started" }, fmtTime(r.started_ms)),
        el("td", { class: "wall" }, fmtMs(r.wall_ms)),
        el("td", { class: "answer" }, r.answer === null ? "" : r.answer),
        el("td", { class: "support" }, supportText(r)));
      tr.addEventListener("click", () => choose(r.id));
      return tr;
    });
    body.replaceChildren(...rows);
    $("#runs-count").textContent = "(" + list.running + " running, " + (list.data.length - list.running) + " recent; the last " + list.keep + " are kept)";
    $("#runs-empty").hidden = list.data.length > 0;
  }

  function choose(id) {
    pinned = id;
    history.replaceState(null, "", location.pathname + "#" + encodeURIComponent(id));
    select(id);
    restart();
  }

  function select(id) {
    if (selected === id) return;
    selected = id;
    detail = fresh(id);
    for (const tr of document.querySelectorAll("#runs tbody tr")) {
      tr.classList.toggle("selected", tr.dataset.run === id);
    }
  }

  function newest(list) {
    let best = null;
    for (const r of list) if (!best || r.started_ms > best.started_ms) best = r;
    return best ? best.id : null;
  }

  // ---- one run ----

  async function pollRun() {
    const d = detail;
    if (d.done) return false;
    let changed = false;
    for (;;) {
      const page = await api("v1/runs/" + encodeURIComponent(d.id) + "?after=" + d.next);
      if (d !== detail) return false;
      if (page === null) {
        d.missing = true;
        d.done = true;
        return true;
      }
      d.head = page.run;
      d.tasks = page.tasks;
      for (const e of page.events) d.events.push(e);
      d.next = page.next;
      changed = true;
      if (!page.more) {
        if (page.run.state !== "running") d.done = true;
        return changed;
      }
    }
  }

  function renderRun() {
    const d = detail;
    const pane = $("#run");
    pane.hidden = !d.id;
    if (!d.id) return;
    pane.dataset.run = d.id;
    $("#run-id").textContent = d.id;
    const state = d.missing ? "not on the board" : d.head ? d.head.state : "loading";
    const st = $("#run-state");
    st.textContent = state;
    st.className = "state";
    st.dataset.state = state;
    pane.dataset.state = state;
    if (d.missing) {
      $("#question").textContent = "This run is not on the board: it keeps the runs in progress and the last few finished (the journal has every run).";
      for (const id of ["#timeline", "#tasks tbody", "#ballots tbody", "#votes tbody", "#hedges", "#cancellations", "#plans", "#failures", "#decision"]) $(id).replaceChildren();
      $("#decision").dataset.state = "none";
      return;
    }
    if (!d.head) return;
    const h = d.head;
    $("#question").textContent = h.question;
    const facts = ["team " + h.team, "started " + fmtTime(h.started_ms), "wall " + fmtMs(h.wall_ms), h.model_calls + " model calls", h.events + " events"];
    if (h.samples !== null) facts.push(h.samples + " samples");
    if (h.tokens !== null) facts.push(h.tokens + " tokens");
    if (h.cost) facts.push("cost " + h.cost.toFixed(4));
    if (h.simulated) facts.push("simulated nodes");
    $("#run-facts").textContent = facts.join(" · ");
    const dropped = $("#dropped");
    dropped.hidden = !h.dropped;
    dropped.dataset.dropped = h.dropped;
    dropped.textContent = h.dropped ? h.dropped + " later events were not kept (the board keeps the first " + h.events + " of a run; the journal has them all)" : "";
    renderDecision(h);
    const view = digest(d.events);
    renderTimeline(view, h);
    renderTasks(view, d.tasks);
    renderBallots(view);
    renderVotes(view);
    renderLists(view);
  }

  // "3 of 5", or, for an answer the voter synthesised (no ballot gave it),
  // "synthesised from 5 ballots".
  function supportText(r) {
    if (r.total === null || r.total === undefined) return "";
    return r.synthesised ? "synthesised from " + r.total + " ballots" : r.support + " of " + r.total;
  }

  function renderDecision(h) {
    const box = $("#decision");
    box.dataset.state = h.state;
    if (h.state === "running") {
      for (const k of ["answer", "support", "total"]) delete box.dataset[k];
      box.replaceChildren(el("div", { class: "answer" }, "running…"),
        el("div", { class: "support" }, fmtMs(h.wall_ms) + " so far, " + h.model_calls + " model calls"));
      return;
    }
    box.dataset.answer = h.answer === null ? "" : h.answer;
    box.dataset.support = h.support === null ? "" : h.support;
    box.dataset.total = h.total === null ? "" : h.total;
    box.dataset.synthesised = h.synthesised ? "yes" : "no";
    const support = h.total === null ? "" :
      (h.synthesised ? "" : "support ") + supportText(h) + (h.runner_up !== null ? " · runner-up " + h.runner_up : "");
    box.replaceChildren(
      el("div", { class: "answer" }, h.answer === null ? "no answer" : h.answer),
      el("div", { class: "support" }, support),
      el("div", { class: "stop" }, h.stop === null ? h.state : h.stop));
  }

  // What the events say, gathered once per render.
  function digest(events) {
    const v = {
      nodes: [], calls: [], attempts: [], nodeMarks: [], taskMarks: [], tasks: new Map(),
      ballots: [], votes: [], hedges: [], cancellations: [], plans: [], failures: [],
      replicaNode: new Map(), cancelled: new Set(), end: 0,
    };
    const key = (task, replica) => task + "\u0000" + replica;
    const node = (n) => { if (n && !v.nodes.includes(n)) v.nodes.push(n); };
    const task = (id) => {
      if (!v.tasks.has(id)) v.tasks.set(id, { id: id, start: null, end: null, role: "", voter: "", result: null });
      return v.tasks.get(id);
    };
    for (const e of events) {
      v.end = Math.max(v.end, e.t_ms);
      switch (e.event) {
        case "task-started": {
          const t = task(e.task);
          t.start = e.t_ms; t.role = e.role; t.voter = e.voter;
          break;
        }
        case "task-ended": {
          const t = task(e.task);
          t.end = e.t_ms; t.result = e.result;
          break;
        }
        case "model-call":
          node(e.node); task(e.task);
          v.replicaNode.set(key(e.task, e.replica), e.node);
          v.calls.push(e);
          break;
        case "attempt":
          node(e.node); task(e.task);
          v.replicaNode.set(key(e.task, e.replica), e.node);
          v.attempts.push(e);
          if (e.outcome === "failed") v.failures.push(e);
          break;
        case "ballot":
          if (e.ballot && e.ballot.node && !v.replicaNode.has(key(e.task, e.ballot.replica))) v.replicaNode.set(key(e.task, e.ballot.replica), e.ballot.node);
          v.ballots.push(e);
          break;
        case "vote":
          v.votes.push(e);
          if (String(e.decision).startsWith("decided")) v.taskMarks.push({ kind: "vote", task: e.task, t: e.t_ms, title: e.voter + ": " + e.decision, e: e });
          break;
        case "failure":
          v.failures.push(e);
          if (e.node) { node(e.node); v.nodeMarks.push({ kind: "failure", node: e.node, task: e.task, t: e.t_ms, title: e.what }); }
          break;
        case "plugin-failure":
        case "retry":
          v.failures.push(e);
          break;
        case "replica-cancelled": {
          v.cancellations.push(e);
          v.cancelled.add(key(e.task, e.replica));
          const n = v.replicaNode.get(key(e.task, e.replica));
          const m = { kind: "cancel", task: e.task, replica: e.replica, t: e.t_ms, title: "replica " + e.replica + " cancelled: " + e.reason };
          if (n) v.nodeMarks.push(Object.assign({ node: n }, m)); else v.taskMarks.push(m);
          break;
        }
        case "task-copy-cancelled":
          v.cancellations.push(e);
          break;
        case "replica-hedged": {
          v.hedges.push(e);
          const n = v.replicaNode.get(key(e.task, e.replica));
          const m = { kind: "hedge", task: e.task, replica: e.replica, t: e.t_ms, title: "replica " + e.replica + " hedged by copy " + e.copy };
          if (n) v.nodeMarks.push(Object.assign({ node: n }, m)); else v.taskMarks.push(m);
          break;
        }
        case "task-hedged":
          v.hedges.push(e);
          v.taskMarks.push({ kind: "hedge", task: e.task, t: e.t_ms, title: "task copy " + e.copy + " started" });
          break;
        case "planned":
          v.plans.push(e);
          break;
        default:
          break;
      }
    }
    v.key = key;
    return v;
  }

  function pos(elem, from, to, scale) {
    elem.style.left = (100 * from / scale).toFixed(3) + "%";
    if (to !== null) elem.style.width = (100 * Math.max(0, to - from) / scale).toFixed(3) + "%";
  }

  function renderTimeline(v, h) {
    const scale = Math.max(1, h.wall_ms || 0, v.end);
    const rows = [];
    // The axis.
    const axis = el("div", { class: "lane" });
    const steps = [100, 200, 500, 1000, 2000, 5000, 10000, 20000, 30000, 60000, 120000, 300000, 600000, 1800000, 3600000];
    const step = steps.find((s) => scale / s <= 8) || 3600000;
    for (let t = 0; t <= scale; t += step) {
      const tick = el("span", { class: "tick" }, fmtMs(t));
      pos(tick, t, null, scale);
      axis.append(tick);
    }
    rows.push(el("div", { class: "axis", "data-scale-ms": Math.round(scale) }, el("div", { class: "label" }, "time"), axis));
    // One row per task: when it ran, and the marks that belong to no node.
    for (const t of v.tasks.values()) {
      const lane = el("div", { class: "lane" });
      if (t.start !== null) {
        const span = el("div", {
          class: "task-span" + (t.end === null ? " open" : ""),
          "data-task": t.id,
          title: "task " + t.id + (t.result ? ": " + stopText(t.result.stop) : ": running"),
        }, t.id);
        pos(span, t.start, t.end === null ? scale : t.end, scale);
        lane.append(span);
      }
      for (const m of v.taskMarks.filter((m) => m.task === t.id)) lane.append(mark(m, scale));
      rows.push(el("div", { class: "tasks-row", "data-task": t.id }, el("div", { class: "label", title: "task " + t.id }, "task " + t.id), lane));
    }
    // One row per node that was called; calls at the same time on one node
    // stack in sub-lanes.
    for (const n of v.nodes) {
      const lane = el("div", { class: "lane" });
      const bars = [];
      for (const e of v.calls.filter((c) => c.node === n)) {
        const cancelled = v.cancelled.has(v.key(e.task, e.replica));
        const bar = el("div", {
          class: "call" + (e.hedged ? " hedged" : "") + (e.replayed ? " replayed" : "") + (e.attempts > 1 ? " retried" : "") + (cancelled ? " of-cancelled" : ""),
          "data-node": e.node, "data-task": e.task, "data-replica": e.replica, "data-call": e.call,
          "data-start-ms": Math.round(Math.max(0, e.t_ms - e.latency_ms)), "data-end-ms": Math.round(e.t_ms),
          "data-hedged": e.hedged ? "true" : "false", "data-attempts": e.attempts,
          "data-cancelled": cancelled ? "true" : null,
          title: e.task + " · replica " + e.replica + " · call " + e.call + ": " + fmtMs(e.latency_ms) + ", " + e.tokens_in + "+" + e.tokens_out + " tokens" +
            (e.hedged ? ", hedged" : "") + (e.attempts > 1 ? ", " + e.attempts + " attempts" : "") + (cancelled ? ", replica later cancelled" : "") + (e.replayed ? ", replayed from the journal" : ""),
        });
        bars.push({ bar: bar, from: Math.max(0, e.t_ms - e.latency_ms), to: e.t_ms });
      }
      for (const e of v.attempts.filter((a) => a.node === n)) {
        const bar = el("div", {
          class: "attempt " + e.outcome,
          "data-node": e.node, "data-task": e.task, "data-replica": e.replica, "data-call": e.call,
          "data-outcome": e.outcome,
          title: e.task + " · replica " + e.replica + " · call " + e.call + ": attempt " + e.outcome + " after " + fmtMs(e.latency_ms) + (e.cause ? " (" + e.cause + ")" : ""),
        });
        bars.push({ bar: bar, from: Math.max(0, e.t_ms - e.latency_ms), to: e.t_ms });
      }
      bars.sort((x, y) => x.from - y.from);
      const ends = [];
      for (const b of bars) {
        let k = ends.findIndex((end) => end <= b.from);
        if (k < 0) { k = ends.length; ends.push(0); }
        ends[k] = b.to;
        pos(b.bar, b.from, b.to, scale);
        b.bar.style.top = (4 + 18 * k) + "px";
        b.bar.dataset.lane = k;
        lane.append(b.bar);
      }
      lane.style.height = (8 + 18 * Math.max(1, ends.length)) + "px";
      for (const m of v.nodeMarks.filter((m) => m.node === n)) lane.append(mark(m, scale));
      rows.push(el("div", { class: "row", "data-node": n, "data-lanes": Math.max(1, ends.length) }, el("div", { class: "label", title: n }, n), lane));
    }
    if (h.state === "running") {
      const now = el("div", { class: "mark now", title: "now" });
      pos(now, h.wall_ms, null, scale);
      rows[0].lastChild.append(now);
    }
    $("#timeline").replaceChildren(...rows);
  }

  function mark(m, scale) {
    const e = el("div", {
      class: "mark " + m.kind, "data-task": m.task,
      "data-replica": m.replica === undefined ? null : m.replica,
      "data-t-ms": Math.round(m.t), title: m.title + " (at " + fmtMs(m.t) + ")",
    });
    pos(e, m.t, null, scale);
    return e;
  }

  function renderTasks(v, results) {
    const byId = new Map((results || []).map((r) => [r.task, r]));
    const rows = [];
    for (const t of v.tasks.values()) {
      const r = t.result;
      const final = byId.get(t.id);
      const state = r ? stopState(r.stop) : "running";
      rows.push(el("tr", { "data-task": t.id, "data-state": state },
        el("td", {}, t.id), el("td", {}, t.role), el("td", {}, t.voter),
        el("td", {}, t.start === null ? "" : fmtMs(t.start)),
        el("td", {}, t.end === null ? "" : fmtMs(t.end)),
        el("td", { class: "state" }, r ? stopText(r.stop) : "running"),
        el("td", { class: "answer" }, r && r.answer !== null ? r.answer : ""),
        el("td", {}, r ? supportText(r) : ""),
        el("td", {}, r ? r.samples : final ? final.samples : "")));
    }
    $("#tasks tbody").replaceChildren(...rows);
  }

  function renderBallots(v) {
    const counted = new Map();
    for (const vote of v.votes) {
      for (const rep of vote.counted || []) counted.set(vote.task + "\u0000" + vote.round + "\u0000" + rep, true);
    }
    const rows = v.ballots.map((e) => {
      const b = e.ballot;
      const isCounted = counted.has(e.task + "\u0000" + e.round + "\u0000" + b.replica);
      const verdicts = el("td", { class: "verdicts" });
      for (const [name, pass, score, reason] of b.verdicts || []) {
        verdicts.append(el("span", { class: pass ? "pass" : "fail", "data-verifier": name, "data-pass": pass ? "true" : "false" },
          name + " " + (pass ? "✓" : "✗") + " " + Number(score).toFixed(2) + (reason ? " (" + reason + ")" : "")), " ");
      }
      return el("tr", {
        "data-task": e.task, "data-round": e.round, "data-replica": b.replica, "data-node": b.node,
        "data-answer": b.answer, class: isCounted ? "counted" : null, title: b.text,
      },
        el("td", {}, fmtMs(e.t_ms)), el("td", {}, e.task), el("td", {}, e.round), el("td", {}, b.replica),
        el("td", { class: "node" }, b.node), el("td", { class: "answer" }, b.answer), verdicts,
        el("td", {}, isCounted ? "counted" : ""));
    });
    $("#ballots tbody").replaceChildren(...rows);
  }

  function renderVotes(v) {
    const rows = v.votes.map((e) => el("tr", {
      class: "vote", "data-task": e.task, "data-round": e.round, "data-voter": e.voter,
      "data-decision": e.decision, "data-ballots": e.ballots, "data-running": e.running || 0,
    },
      el("td", {}, fmtMs(e.t_ms)), el("td", {}, e.task), el("td", {}, e.round), el("td", {}, e.voter),
      el("td", {}, e.ballots), el("td", {}, (e.counted || []).join(", ")), el("td", {}, e.running || 0),
      el("td", { class: "decision" }, e.decision)));
    $("#votes tbody").replaceChildren(...rows);
  }

  function renderLists(v) {
    const at = (e) => "at " + fmtMs(e.t_ms) + ": ";
    $("#hedges").replaceChildren(...v.hedges.map((e) => e.event === "replica-hedged"
      ? el("li", { "data-kind": "replica", "data-task": e.task, "data-replica": e.replica, "data-copy": e.copy },
        at(e) + "task " + e.task + ", round " + e.round + ": replica " + e.replica + " outlived " + fmtMs(e.after_ms) + ", so copy " + e.copy + " started on another node")
      : el("li", { "data-kind": "task", "data-task": e.task, "data-copy": e.copy },
        at(e) + "task " + e.task + " ran " + fmtMs(e.after_ms) + ", so copy " + e.copy + " started")));
    $("#cancellations").replaceChildren(...v.cancellations.map((e) => e.event === "replica-cancelled"
      ? el("li", { "data-kind": "replica", "data-task": e.task, "data-round": e.round, "data-replica": e.replica },
        at(e) + "task " + e.task + ", round " + e.round + ": replica " + e.replica + " cancelled: " + e.reason +
        (e.tokens ? " (" + e.tokens + " tokens spent" + (e.cost ? ", cost " + Number(e.cost).toFixed(4) : "") + ")" : ""))
      : el("li", { "data-kind": "task", "data-task": e.task, "data-copy": e.copy },
        at(e) + "task " + e.task + ": copy " + e.copy + " cancelled, copy " + e.winner + " finished first")));
    $("#plans").replaceChildren(...v.plans.map((e) => el("li", { "data-task": e.task },
      at(e) + "task " + e.task + " planned " + e.subtasks.length + " subtasks: " + e.subtasks.join(", ") +
      (e.role ? " (by " + e.role.plugin + ")" : ""))));
    $("#failures").replaceChildren(...v.failures.map((e) => {
      switch (e.event) {
        case "attempt":
          return el("li", { "data-kind": "attempt", "data-task": e.task, "data-replica": e.replica, "data-node": e.node },
            at(e) + "task " + e.task + ", replica " + e.replica + ": an attempt on " + e.node + " failed after " + fmtMs(e.latency_ms) + (e.cause ? ": " + e.cause : ""));
        case "retry":
          return el("li", { "data-kind": "retry", "data-task": e.task, "data-replica": e.replica },
            at(e) + "task " + e.task + ": replica " + e.replica + " drawn again");
        case "plugin-failure":
          return el("li", { "data-kind": "plugin", "data-task": e.task },
            at(e) + "task " + e.task + ": " + e.by.plugin + " failed: " + e.what);
        default:
          return el("li", { "data-kind": "failure", "data-task": e.task, "data-node": e.node || null },
            at(e) + "task " + e.task + (e.node ? " on " + e.node : "") + ": " + e.what);
      }
    }));
  }

  // ---- the loop ----

  let busy = false;
  let again = false;

  async function tick() {
    if (busy) { again = true; return; }
    busy = true;
    timer = null;
    let next = true;
    try {
      const list = await api("v1/runs");
      $("#login").hidden = true;
      $("#forget").hidden = !token;
      select(pinned || newest(list.data));
      renderRuns(list);
      if (!selected || await pollRun()) renderRun();
      setStatus("live", "live · updated " + new Date().toLocaleTimeString());
    } catch (e) {
      if (e instanceof Unauthorised) {
        $("#login").hidden = false;
        $("#forget").hidden = !token;
        setStatus("unauthorised", token ? "the token was refused" : "a bearer token is needed");
        next = false; // no polling until a token is given
      } else {
        setStatus("error", "cannot reach the server: " + e.message);
      }
    }
    document.body.dataset.polls = Number(document.body.dataset.polls) + 1;
    busy = false;
    if (again) {
      again = false;
      tick();
    } else if (next) {
      timer = setTimeout(tick, POLL_MS);
    }
  }

  function restart() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    tick();
  }

  $("#login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    store(token);
    $("#token").value = "";
    restart();
  });
  $("#forget").addEventListener("click", () => {
    token = "";
    store("");
    restart();
  });
  window.addEventListener("hashchange", () => {
    const h = decodeURIComponent(location.hash.slice(1));
    if (h && h !== selected) { pinned = h; select(h); restart(); }
  });
  tick();
})();
