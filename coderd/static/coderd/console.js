// The admin index's overview: fills itself from the JSON the page was rendered with, then polls the
// same data every few seconds. Charts are drawn by hand as inline SVG (a few polylines: no library,
// nothing loaded from another host).
"use strict";
(function () {
  const POLL_MS = 3000;
  const WINDOW_S = 3600;
  const SVG = "http://www.w3.org/2000/svg";
  const root = document.getElementById("coderd-overview");
  if (!root) return;

  function get(obj, path) {
    return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }

  function ago(iso, now) {
    const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min ago";
  }

  function exact(iso) {
    return new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function wait(seconds) {
    if (seconds == null) return "none waiting";
    if (seconds < 60) return "oldest waiting " + Math.round(seconds) + " s";
    return "oldest waiting " + Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  function renderStates(data) {
    const box = root.querySelector('[data-k="workspaces"]');
    const base = root.dataset.workspacesUrl;
    box.replaceChildren(
      ...Object.entries(data.workspaces).map(([state, n]) => {
        const a = el("a", { class: "coderd-state", href: base + "?state=" + state, "data-state": state });
        a.append(el("span", { class: "coderd-badge coderd-state-" + state }, state));
        a.append(el("span", { class: "coderd-state-n" }, n.toLocaleString("en-US")));
        return a;
      })
    );
  }

  function renderFailed(data, now) {
    const body = root.querySelector('[data-k="failed_builds.newest"]');
    const rows = data.failed_builds.newest.map((b) => {
      const tr = el("tr");
      tr.append(el("td", { class: "coderd-nowrap", title: exact(b.completed_at) }, ago(b.completed_at, now)));
      tr.append(el("td", {}, b.owner + "/" + b.workspace));
      const link = el("td", { class: "coderd-nowrap" });
      link.append(el("a", { href: b.url }, "#" + b.build_number + " " + b.transition));
      tr.append(link);
      const err = b.error.length > 200 ? b.error.slice(0, 199) + "…" : b.error;
      tr.append(el("td", { class: "coderd-error" }, err));
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", { colspan: "4", class: "coderd-quiet" }, "None."));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  // --- charts ---

  const CHARTS = {
    rps: { series: [["rps", "var(--coderd-line-1)"]], digits: 2 },
    errors: { series: [["errors_per_second", "var(--coderd-line-bad)"]], digits: 2 },
    latency: { series: [["p50_ms", "var(--coderd-line-1)"], ["p95_ms", "var(--coderd-line-2)"]], digits: 1 },
    websockets: { series: [["websockets", "var(--coderd-line-1)"]], digits: 0 },
    jobs: { series: [["jobs_running", "var(--coderd-line-1)"]], digits: 0 },
    job_durations: { series: [["job_mean_s", "var(--coderd-line-1)"], ["job_p95_s", "var(--coderd-line-2)"]], digits: 1 },
  };
  const H = 120, PAD_L = 40, PAD_B = 16, PAD_T = 8, PAD_R = 6;

  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function fmt(v, digits) {
    if (v == null) return "–";
    if (v >= 1000) return Math.round(v).toLocaleString("en-US");
    return v.toFixed(digits);
  }

  function drawChart(figure, points, nowS) {
    const spec = CHARTS[figure.dataset.chart];
    const svg = figure.querySelector("svg");
    // Drawn at the size it is shown (1 unit = 1 px), so text and lines are never stretched.
    const W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 320);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    const from = nowS - WINDOW_S;
    const x = (t) => PAD_L + ((t - from) / WINDOW_S) * (W - PAD_L - PAD_R);
    let max = 0;
    for (const p of points) for (const [key] of spec.series) if (p[key] != null) max = Math.max(max, p[key]);
    // Whole-number series (websockets, jobs) get whole-number gridlines: 0, 1, 2 at least.
    max = niceMax(spec.digits === 0 ? Math.max(max, 2) : max);
    const y = (v) => H - PAD_B - (v / max) * (H - PAD_B - PAD_T);
    const parts = [];
    for (const frac of [0, 0.5, 1]) {
      const yy = y(max * frac);
      parts.push(svgEl("line", { x1: PAD_L, x2: W - PAD_R, y1: yy, y2: yy, class: "coderd-grid" }));
      parts.push(svgEl("text", { x: PAD_L - 4, y: yy + 3, "text-anchor": "end", class: "coderd-axis" }, fmt(max * frac, frac ? spec.digits : 0)));
    }
    parts.push(svgEl("text", { x: PAD_L, y: H - 3, class: "coderd-axis" }, "−60 min"));
    parts.push(svgEl("text", { x: (PAD_L + W - PAD_R) / 2, y: H - 3, "text-anchor": "middle", class: "coderd-axis" }, "−30 min"));
    parts.push(svgEl("text", { x: W - PAD_R, y: H - 3, "text-anchor": "end", class: "coderd-axis" }, "now"));
    const latest = [];
    for (const [key, colour] of spec.series) {
      // A null (no data in that interval) breaks the line instead of drawing it to zero.
      let run = [];
      const runs = [run];
      for (const p of points) {
        if (p.t < from) continue;
        if (p[key] == null) {
          if (run.length) runs.push((run = []));
          continue;
        }
        run.push(`${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
      }
      for (const r of runs) {
        if (r.length === 1) {
          const [cx, cy] = r[0].split(",");
          parts.push(svgEl("circle", { cx, cy, r: 1.8, fill: colour }));
        } else if (r.length > 1) {
          parts.push(svgEl("polyline", { points: r.join(" "), fill: "none", stroke: colour, "stroke-width": 1.6, "vector-effect": "non-scaling-stroke" }));
        }
      }
      // The legend shows the newest value there is (an interval without requests has no latency).
      let last = null;
      for (let i = points.length - 1; i >= 0 && last == null; i--) last = points[i][key];
      latest.push([colour, fmt(last, spec.digits)]);
    }
    if (!points.length) {
      parts.push(svgEl("text", { x: (PAD_L + W) / 2, y: H / 2, "text-anchor": "middle", class: "coderd-axis" }, "collecting: the first point comes after one interval"));
    }
    svg.replaceChildren(...parts);
    let legend = figure.querySelector(".coderd-latest");
    if (!legend) {
      legend = el("span", { class: "coderd-latest" });
      figure.querySelector("figcaption").append(legend);
    }
    legend.replaceChildren(
      ...latest.map(([colour, text]) => {
        const s = el("span", { class: "coderd-latest-v" }, text);
        s.style.color = colour;
        return s;
      })
    );
  }

  function render(data) {
    const now = Date.parse(data.now);
    for (const node of root.querySelectorAll("[data-k]")) {
      const key = node.dataset.k;
      if (key === "workspaces" || key === "failed_builds.newest" || key === "updated") continue;
      if (key === "jobs.oldest") {
        node.textContent = wait(data.jobs.oldest_wait_seconds);
        continue;
      }
      const v = get(data, key);
      if (v != null) node.textContent = typeof v === "number" ? v.toLocaleString("en-US") : v;
    }
    renderStates(data);
    renderFailed(data, now);
    for (const fig of root.querySelectorAll("figure[data-chart]")) drawChart(fig, data.traffic.points, now / 1000);
    const stamp = root.querySelector('[data-k="updated"]');
    stamp.textContent = "live · " + exact(data.now).slice(11);
    stamp.parentElement.classList.remove("coderd-offline");
  }

  async function poll() {
    try {
      const response = await fetch(root.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      // A session that ended is answered with the login page (a redirect), not JSON.
      if (response.redirected) throw new Error("signed out: reload to log in again");
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
    } catch (e) {
      const stamp = root.querySelector('[data-k="updated"]');
      stamp.textContent = "not updating (" + (e.message || e) + ")";
      stamp.parentElement.classList.add("coderd-offline");
    }
  }

  render(JSON.parse(document.getElementById("coderd-overview-data").textContent));
  setInterval(poll, POLL_MS);
})();
