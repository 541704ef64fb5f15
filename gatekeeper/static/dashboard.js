// Gatekeeper dashboard: renders the snapshots of GET /dashboard/events (one a second).
// Plain DOM, no build step; every value is set with textContent (never parsed as HTML).
"use strict";

(function () {
  const token = new URLSearchParams(window.location.search).get("token") || "";
  const rpsHistory = [];

  function $(id) { return document.getElementById(id); }

  function setNumber(id, value, text) {
    const el = $(id);
    el.dataset.value = String(value);
    el.textContent = text === undefined ? String(value) : text;
  }

  function fmtInt(n) { return Math.round(n).toLocaleString("en-US"); }
  function fmtTime(ts) {
    if (!ts) return "";
    return new Date(ts * 1000).toISOString().slice(11, 19);
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(tableId, rows, render, emptyText) {
    const body = $(tableId).tBodies[0];
    const fresh = document.createElement("tbody");
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = cell(tr, emptyText);
      td.colSpan = $(tableId).tHead.rows[0].cells.length;
      fresh.appendChild(tr);
    }
    for (const row of rows) {
      const tr = document.createElement("tr");
      render(tr, row);
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  }

  function budgetCell(tr, pct) {
    const td = cell(tr, "", "num");
    if (pct === null || pct === undefined) { td.textContent = "no limit"; return; }
    const bar = document.createElement("span");
    bar.className = "bar" + (pct >= 100 ? " bad" : pct >= 80 ? " warn" : "");
    bar.style.width = Math.min(100, pct) * 0.6 + "px";
    td.appendChild(bar);
    td.appendChild(document.createTextNode(pct.toFixed(1) + " %"));
  }

  function alertDetail(a) {
    if (a.type === "budget_threshold") {
      return `${a.key_id}: ${a.counter} passed ${a.threshold_pct} % (${a.value} of ${a.limit})`;
    }
    if (a.type === "sla_breach") {
      return `${a.provider}/${a.model}: ${a.metric} ${a.value} > ${a.limit}`;
    }
    if (a.type === "audit_spool") return `spool depth ${a.depth} ≥ ${a.limit}`;
    return JSON.stringify(a);
  }

  function incidentDetail(e) {
    if (e.type === "failover") {
      return `${e.from_provider}/${e.from_model} (${e.status || "-"} ${e.error || ""}) → ` +
        `${e.to_provider}/${e.to_model}  ${e.request_id || ""}`;
    }
    if (e.type === "breaker") return `${e.provider}: breaker ${e.state}`;
    return JSON.stringify(e);
  }

  function drawChart() {
    const canvas = $("rps-chart");
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (rpsHistory.length < 2) return;
    const max = Math.max(1, ...rpsHistory);
    ctx.strokeStyle = "#5aa9e6";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    rpsHistory.forEach((v, i) => {
      const x = (i / 59) * w;
      const y = h - 2 - (v / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }

  function renderLanes(l) {
    const rows = l.enabled ? l.lanes : [];
    fill("lanes", rows, (tr, row) => {
      tr.dataset.lane = row.lane;
      cell(tr, row.lane);
      numberCell(tr, row.queued, "queued");
      let total = 0;
      for (const reason of l.reasons) {
        const n = row.shed[reason] || 0;
        total += n;
        numberCell(tr, n, reason, n > 0 ? "warn" : "");
      }
      numberCell(tr, total, "shed", total > 0 ? "bad" : "");
    }, "lanes off (capacity.max_in_flight: 0)");
  }

  function numberCell(tr, n, key, cls) {
    const td = cell(tr, fmtInt(n), "num" + (cls ? " " + cls : ""));
    td.dataset.key = key;
    td.dataset.value = String(n);
    return td;
  }

  function renderCache(c) {
    $("cache").classList.toggle("off", !c.enabled);
    if (!c.enabled) {
      setNumber("cache-hit-ratio", 0, "off");
      setNumber("cache-counts", 0, "–");
      setNumber("cache-bypass", 0, "–");
      setNumber("cache-saved", 0, "–");
      return;
    }
    setNumber("cache-hit-ratio", c.hit_ratio, (c.hit_ratio * 100).toFixed(1) + " %");
    setNumber("cache-counts", c.hit + c.miss + c.coalesced,
      `${fmtInt(c.hit)} / ${fmtInt(c.miss)} / ${fmtInt(c.coalesced)}`);
    setNumber("cache-bypass", c.bypass, fmtInt(c.bypass));
    setNumber("cache-saved", c.saved_usd, "$" + c.saved_usd.toFixed(6));
  }

  function render(s) {
    const t = s.totals;
    $("node-id").textContent = s.node_id;
    $("updated").textContent = fmtTime(s.ts);
    setNumber("requests-total", t.requests, fmtInt(t.requests));
    setNumber("rps", s.rps, s.rps.toFixed(1));
    setNumber("errors-total", t.errors, fmtInt(t.errors));
    setNumber("failovers-total", t.failovers, fmtInt(t.failovers));
    setNumber("tokens-total", t.tokens_input + t.tokens_output,
      `${fmtInt(t.tokens_input)} / ${fmtInt(t.tokens_output)}`);
    setNumber("cost-total", t.cost_usd, "$" + t.cost_usd.toFixed(4));
    setNumber("spool-depth", t.audit_spool_depth, fmtInt(t.audit_spool_depth));
    rpsHistory.push(s.rps);
    if (rpsHistory.length > 60) rpsHistory.shift();
    drawChart();

    fill("providers", s.providers, (tr, p) => {
      tr.dataset.provider = p.provider;
      cell(tr, p.provider);
      cell(tr, p.breaker_worst === p.breaker ? p.breaker : `${p.breaker} (worst ${p.breaker_worst})`,
        p.breaker_worst);
      cell(tr, p.p50_ms.toFixed(1), "num");
      cell(tr, p.p99_ms.toFixed(1), "num");
      cell(tr, (p.error_rate * 100).toFixed(1) + " %", "num" + (p.error_rate > 0.25 ? " bad" : ""));
      cell(tr, fmtInt(p.count), "num");
      cell(tr, p.nodes, "num");
    }, "no providers");

    renderLanes(s.lanes);
    renderCache(s.cache);

    fill("keys", s.keys, (tr, k) => {
      cell(tr, k.key_id);
      cell(tr, k.tenant);
      cell(tr, fmtInt(k.requests), "num");
      cell(tr, fmtInt(k.tokens), "num");
      cell(tr, "$" + k.spend_usd.toFixed(4), "num");
      budgetCell(tr, k.budget_used_pct);
    }, "no keys seen yet");

    fill("alerts", s.alerts, (tr, a) => {
      cell(tr, fmtTime(a.ts));
      cell(tr, a.type);
      cell(tr, alertDetail(a), "wrap");
    }, "no alerts");

    fill("routes", s.routes, (tr, r) => {
      cell(tr, fmtTime(r.ts));
      cell(tr, r.node_id);
      cell(tr, r.request_id);
      cell(tr, r.requested_model);
      cell(tr, `${r.provider}/${r.chosen}`);
      cell(tr, r.mode);
      cell(tr, r.reason, "wrap");
    }, "no routing decisions yet");

    fill("incidents", s.incidents, (tr, e) => {
      cell(tr, fmtTime(e.ts));
      cell(tr, e.node_id);
      cell(tr, e.type);
      cell(tr, incidentDetail(e), "wrap");
    }, "no failovers");
  }

  function setStatus(text, cls) {
    const el = $("status");
    el.textContent = text;
    el.className = "status " + cls;
  }

  function connect() {
    const url = "/dashboard/events" + (token ? "?token=" + encodeURIComponent(token) : "");
    const source = new EventSource(url);
    source.onopen = () => setStatus("live", "live");
    source.onmessage = (ev) => {
      try {
        render(JSON.parse(ev.data));
        setStatus("live", "live");
      } catch (err) {
        setStatus("bad data: " + err, "down");
      }
    };
    // EventSource reconnects by itself (the server ends each stream after ~30 s).
    source.onerror = () => setStatus("reconnecting", "connecting");
  }

  document.addEventListener("DOMContentLoaded", connect);
})();
