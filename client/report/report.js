// ppctl report: draws the results embedded in the page (the JSON element #pp-data) with uPlot.
// Input: {"results": [{"name": ..., "result": <ppctl traffic --out JSON>}, ...]}.
// Every chart is one uPlot instance drawing every result on one time axis (uPlot.join aligns the
// timelines), with each result's destroy/unbind as a dashed vertical line in its colour. The y axis
// runs from 0 to a round value at or above the data's maximum, with ticks at round steps, so the
// top tick label is never below the peak. After drawing, each chart's <section> carries what it
// drew for a test reading the DOM: data-drawn, data-series, data-points, data-y-max (the data's
// maximum), data-y-ticks (the tick labels, JSON) and data-y-tick-values (the tick values, JSON).
(function () {
  "use strict";

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];
  const color = (i) => COLORS[i % COLORS.length];

  // 3 significant digits at most, no trailing zeros: 2.6537 -> "2.65", 3 -> "3".
  function short(v) {
    return String(+v.toPrecision(3));
  }

  // Counts and rates: 2653714 -> "2.65M"; 1234 -> "1.23k"; 0.5 -> "0.5".
  function si(v) {
    if (v == null || !isFinite(v)) return "";
    const a = Math.abs(v);
    for (const [div, suffix] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
      if (a >= div) return short(v / div) + suffix;
    }
    return short(v);
  }

  // Bytes in binary units: 1572864 -> "1.5 MiB".
  function bytes(v) {
    if (v == null || !isFinite(v)) return "";
    const a = Math.abs(v);
    for (const [div, suffix] of [[2 ** 40, "TiB"], [2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]]) {
      if (a >= div) return short(v / div) + " " + suffix;
    }
    return short(v) + " B";
  }

  // Microseconds: 85.2 -> "85.2 µs"; 1530 -> "1.53 ms"; 2.5e6 -> "2.5 s".
  function micros(v) {
    if (v == null || !isFinite(v)) return "";
    const a = Math.abs(v);
    if (a >= 1e6) return short(v / 1e6) + " s";
    if (a >= 1e3) return short(v / 1e3) + " ms";
    return short(v) + " µs";
  }

  // A round step and top for a 0-based axis showing `max`, with 4 to 8 steps: 2653714 ->
  // {step: 500000, top: 3000000}. base 1024 rounds in KiB/MiB/... (page-table bytes).
  function niceAxis(max, base) {
    if (!(max > 0)) return { step: 1, top: 1 };
    let unit = 1;
    if (base === 1024) {
      while (unit * 1024 <= max) unit *= 1024;
    }
    const raw = max / unit / 5;
    const mag = 10 ** Math.floor(Math.log10(raw));
    let step = mag * 10;
    for (const m of [1, 2, 2.5, 5, 10]) {
      if (m * mag >= raw) {
        step = m * mag;
        break;
      }
    }
    step *= unit;
    const top = Math.ceil(max / step - 1e-9) * step;
    return { step, top };
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }

  function labelOf(entry) {
    const r = entry.result;
    const parts = [entry.name];
    if (r.strategy && entry.name.indexOf(r.strategy) < 0) parts.push(r.strategy);
    return parts.join(" · ");
  }

  // Every timeline on one x axis (uPlot.join; a result has no value where only another sampled).
  function aligned(results, field) {
    const tables = results.map((e) => {
      const tl = e.result.timeline || [];
      return [tl.map((s) => s.t_s), tl.map((s) => (s[field] == null ? null : s[field]))];
    });
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  }

  // Vertical dashed lines at each result's events (destroy, unbind), labelled at the top; the
  // labels of several results are stacked so they do not overlap.
  function eventsPlugin(results) {
    const draw = (u) => {
      const ctx = u.ctx;
      const px = devicePixelRatio;
      results.forEach((e, i) => {
        for (const ev of e.result.events || []) {
          const x = Math.round(u.valToPos(ev.t_s, "x", true));
          if (!isFinite(x)) continue;
          ctx.save();
          ctx.strokeStyle = color(i);
          ctx.setLineDash([6 * px, 4 * px]);
          ctx.lineWidth = 1.5 * px;
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.fillStyle = color(i);
          ctx.font = "bold " + 11 * px + "px sans-serif";
          ctx.textBaseline = "top";
          ctx.textAlign = "left";
          ctx.fillText(ev.kind, x + 4 * px, u.bbox.top + (4 + 14 * i) * px);
          ctx.restore();
        }
      });
    };
    return { hooks: { draw: [draw] } };
  }

  // Room for the widest tick label (uPlot's default is too narrow for "2.65M"); at least 72 px so
  // the charts' plot areas line up under each other.
  function axisSize(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1 && axis._size) return axis._size;
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
    if (longest !== "") {
      u.ctx.font = axis.font[0];
      size += u.ctx.measureText(longest).width / devicePixelRatio + 10;
    }
    return Math.max(72, Math.ceil(size));
  }

  // One chart: `fields` are [{field, suffix, dash}] drawn for every result; `fmt` formats values
  // (ticks and legend); `base` is 1024 for bytes.
  function chart(root, results, spec) {
    const { title, axisLabel, fields, fmt, base } = spec;
    const box = el("section", { class: "pp-chart", "data-title": title });
    box.appendChild(el("h2", {}, title));
    root.appendChild(box);

    const data = [aligned(results, "t_s")[0]];
    const series = [{ label: "time", value: (u, v) => (v == null ? "" : v.toFixed(2) + " s") }];
    let points = 0;
    let ymax = 0;
    for (const f of fields) {
      const cols = aligned(results, f.field);
      results.forEach((e, i) => {
        const col = cols[i + 1];
        data.push(col);
        for (const v of col) {
          if (v != null) {
            points++;
            ymax = Math.max(ymax, v);
          }
        }
        series.push({
          label: labelOf(e) + (f.suffix ? " " + f.suffix : ""),
          stroke: color(i),
          width: 2,
          dash: f.dash,
          spanGaps: true,
          points: { show: false },
          value: (u, v) => (v == null ? "" : fmt(v)),
        });
      });
    }
    const y = niceAxis(ymax, base);
    const ticks = [];
    for (let t = 0; t <= y.top + y.step / 1e6; t += y.step) ticks.push(t);
    const opts = {
      width: Math.min(1160, Math.max(480, root.clientWidth - 8)),
      height: 240,
      series,
      // Dashed series get dashed legend markers, so the legend tells p50 from p99.
      legend: { live: false, markers: { dash: (u, i) => (u.series[i].dash ? "dashed" : "solid") } },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false, range: (u, min, max) => [0, max] }, y: { range: () => [0, y.top] } },
      axes: [
        { label: "seconds since the run started", values: (u, vals) => vals.map((v) => +v.toFixed(3) + " s") },
        { label: axisLabel, splits: () => ticks, values: (u, vals) => vals.map(fmt), size: axisSize },
      ],
      plugins: [eventsPlugin(results)],
      hooks: {
        // What was drawn, for tests reading the DOM.
        draw: [
          (u) => {
            const labels = (u.axes[1]._values || []).map(String);
            box.setAttribute("data-series", String(series.length - 1));
            box.setAttribute("data-points", String(points));
            box.setAttribute("data-y-max", String(ymax));
            box.setAttribute("data-y-ticks", JSON.stringify(labels));
            box.setAttribute("data-y-tick-values", JSON.stringify(u.axes[1]._splits || []));
            box.setAttribute("data-drawn", points > 0 && labels.length > 0 ? "true" : "false");
            const drawn = document.querySelectorAll(".pp-chart[data-drawn=true]").length;
            document.body.setAttribute("data-charts-drawn", String(drawn));
          },
        ],
      },
    };
    return new uPlot(opts, data, box);
  }

  function destroyCell(r) {
    const ev = (r.events || []).find((e) => e.kind === "destroy" || e.kind === "unbind");
    if (!ev) return "";
    return ev.kind + " at " + ev.t_s.toFixed(2) + " s: " + (ev.duration_ms || 0).toFixed(2) + " ms, " +
      si(ev.inflight_at_destroy || 0) + " in flight, " + si(ev.pages_unmapped || 0) + " unmapped";
  }

  function summaryTable(root, results) {
    const t = el("table", { class: "pp-summary" });
    const head = [
      "run", "pattern", "strategy", "iommu", "streams × batch", "window", "duration", "page ops/s",
      "rpc p50", "rpc p99", "errors", "violations", "destroy / unbind",
    ];
    const tr = el("tr");
    head.forEach((h) => tr.appendChild(el("th", {}, h)));
    t.appendChild(tr);
    results.forEach((e, i) => {
      const r = e.result;
      const row = el("tr");
      const run = el("td", { class: "pp-run" });
      run.appendChild(el("span", { class: "pp-swatch", style: "background:" + color(i) }));
      run.appendChild(document.createTextNode(e.name));
      row.appendChild(run);
      const cells = [
        r.pattern || "", r.strategy || "", r.iommu_mode || "",
        (r.streams || 0) + " × " + (r.batch || 0), String(r.window || 1),
        (r.duration_s || 0).toFixed(1) + " s", si(r.page_ops_per_sec || 0),
        micros(r.rpc_p50_us || 0), micros(r.rpc_p99_us || 0),
        String(r.errors || 0), String(r.violations || 0), destroyCell(r),
      ];
      cells.forEach((c, j) => {
        const td = el("td", {}, c);
        if (j === 9) {
          td.className = (r.errors || 0) > 0 ? "pp-bad" : "pp-ok";
          if (r.first_error) td.title = "first: " + r.first_error;
        }
        if (j === 10) td.className = (r.violations || 0) > 0 ? "pp-bad" : "pp-ok";
        if (j === 11) td.className = "pp-left";
        row.appendChild(td);
      });
      t.appendChild(row);
    });
    root.appendChild(t);
  }

  function main() {
    const data = JSON.parse(document.getElementById("pp-data").textContent);
    const results = data.results;
    const root = document.getElementById("pp-root");
    summaryTable(root, results);
    chart(root, results, {
      title: "Page operations per second", axisLabel: "page ops/s",
      fields: [{ field: "page_ops_per_sec" }], fmt: si,
    });
    chart(root, results, {
      title: "RPC latency per batch, client side (p50 solid, p99 dashed)", axisLabel: "latency",
      fields: [{ field: "rpc_p50_us", suffix: "p50" }, { field: "rpc_p99_us", suffix: "p99", dash: [6, 4] }],
      fmt: micros,
    });
    chart(root, results, {
      title: "Pages in flight (pool inflight solid, held by the client dashed)", axisLabel: "pages",
      fields: [{ field: "inflight", suffix: "pool" }, { field: "held", suffix: "client", dash: [6, 4] }],
      fmt: si,
    });
    chart(root, results, {
      title: "I/O page-table memory", axisLabel: "bytes",
      fields: [{ field: "table_bytes" }], fmt: bytes, base: 1024,
    });
    document.body.setAttribute("data-charts", String(document.querySelectorAll(".pp-chart").length));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
