// Vector detail view: metadata, top SAE features, strength-sweep and loss plots (inline SVG, no libraries).
"use strict";

window.PlaygroundDetail = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const fmt = (x) => (typeof x === "number" ? String(Number(x.toPrecision(4))) : String(x));

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    Object.assign(node, attrs);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  // [step, loss] pairs of the trainer's `training.loss_curve` ({step: [...], loss: [...]}), numbers only.
  function lossPoints(curve) {
    if (!curve || !Array.isArray(curve.step) || !Array.isArray(curve.loss)) return [];
    return curve.step
      .map((s, i) => [s, curve.loss[i]])
      .filter(([s, y]) => typeof s === "number" && typeof y === "number" && Number.isFinite(y));
  }

  function noLossCurve(method) {
    return method === "caa" || method === "sas"
      ? "No loss curve: mean-difference methods are estimated, not optimised."
      : "No loss curve recorded in this vector's metadata; the trainer's summary is below.";
  }

  function section(title, ...children) {
    const box = el("section", { className: "detail-part" });
    box.append(el("h3", {}, title), ...children);
    return box;
  }

  // Scalars of an object as a definition list (nested objects as compact JSON).
  function facts(obj) {
    const dl = el("dl", { className: "facts" });
    for (const [k, v] of Object.entries(obj)) {
      if (v === null || v === undefined || k === "loss_curve") continue;
      const shown = typeof v === "object" ? JSON.stringify(v) : fmt(v);
      dl.append(el("dt", {}, k), el("dd", {}, shown));
    }
    return dl;
  }

  function featureTable(features) {
    const max = Math.max(...features.map((f) => Math.abs(f.value)), 1e-12);
    const table = el("table", { className: "features" });
    table.append(el("caption", {}, "Largest SAE features by |value|"));
    const head = table.createTHead().insertRow();
    for (const h of ["feature", "value", ""]) head.append(el("th", { scope: "col" }, h));
    const body = table.createTBody();
    for (const f of features) {
      const row = body.insertRow();
      row.insertCell().textContent = String(f.index);
      row.insertCell().textContent = fmt(f.value);
      const bar = el("span", { className: f.value < 0 ? "bar neg" : "bar" });
      bar.style.width = `${(100 * Math.abs(f.value)) / max}%`;
      bar.setAttribute("aria-hidden", "true");
      row.insertCell().append(bar);
    }
    return table;
  }

  // Series of {x: y} with numeric keys in the vector's eval record: what the trainer measured per strength.
  function sweepSeries(evaluation) {
    const series = {};
    for (const [name, value] of Object.entries(evaluation || {})) {
      if (!value || typeof value !== "object" || Array.isArray(value)) continue;
      const points = Object.entries(value)
        .filter(([k, y]) => Number.isFinite(Number(k)) && typeof y === "number")
        .map(([k, y]) => [Number(k), y])
        .sort((a, b) => a[0] - b[0]);
      if (points.length >= 2) series[name] = points;
    }
    return series;
  }

  // A line chart of named series [[x, y], ...] with axis labels; the numbers are also in a table.
  // Options: `size` [width, height] of the drawing, `yRange` [lo, hi] instead of the data's, `mark` an x to
  // draw a vertical marker at (with `markLabel`), `numbers: false` to leave the table out.
  function lineChart(series, xLabel, yLabel, title, options = {}) {
    const [W, H] = options.size || [420, 230];
    const L = 48, R = 12, T = 22, B = 36;
    const all = Object.values(series).flat();
    const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    const [y0, y1] = options.yRange || [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    const sx = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0 || 1)) * (H - T - B);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart", "aria-label": title });
    chart.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }));
    chart.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
    const label = (x, y, text, anchor = "middle") => {
      const t = svg("text", { x, y, "text-anchor": anchor, class: "tick" });
      t.textContent = text;
      chart.append(t);
    };
    label(L, H - B + 14, fmt(x0));
    label(W - R, H - B + 14, fmt(x1), "end");
    label(L - 4, H - B + 4, fmt(y0), "end");
    label(L - 4, T + 4, fmt(y1), "end");
    label((L + W - R) / 2, H - 4, xLabel);
    label(L, 12, yLabel, "middle");
    if (typeof options.mark === "number" && options.mark >= x0 && options.mark <= x1) {
      const x = sx(options.mark).toFixed(1);
      const mark = svg("line", { x1: x, y1: T, x2: x, y2: H - B, class: "mark" });
      const t = svg("title");
      t.textContent = options.markLabel || `x = ${fmt(options.mark)}`;
      mark.append(t);
      chart.append(mark);
    }
    Object.entries(series).forEach(([name, points], i) => {
      const d = points.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
      const path = svg("path", { d, class: `series s${i % 4}` });
      const t = svg("title");
      t.textContent = name;
      path.append(t);
      chart.append(path);
    });
    const legend = el("ul", { className: "legend" });
    Object.keys(series).forEach((name, i) => legend.append(el("li", { className: `s${i % 4}` }, name)));
    const numbers = el("details");
    numbers.append(el("summary", {}, "Numbers"));
    const table = el("table");
    for (const [name, points] of Object.entries(series)) {
      const row = table.insertRow();
      row.append(el("th", { scope: "row" }, name));
      row.insertCell().textContent = points.map(([x, y]) => `${fmt(x)}: ${fmt(y)}`).join(", ");
    }
    numbers.append(table);
    const figure = el("figure", { className: "plot" });
    figure.append(chart, legend);
    if (options.numbers !== false) figure.append(numbers);
    return figure;
  }

  function render(detail) {
    const meta = detail.metadata || {};
    const s = detail.summary;
    const parts = [];
    parts.push(
      section(
        "Metadata",
        facts({
          method: s.method,
          space: s.space,
          layer: s.layer,
          hook: meta.hook_name,
          model: meta.model && meta.model.name,
          sae: meta.sae && `${meta.sae.source} (${meta.sae.d_sae} features)`,
          apply: s.apply,
          "non-zeros": s.nnz,
          "safe strength range": `${fmt(s.strength_range[0])} to ${fmt(s.strength_range[1])}`,
          "default strength": s.default_strength,
          created: s.created,
        }),
      ),
    );
    if (detail.top_features.length) parts.push(section("Top SAE features", featureTable(detail.top_features)));
    else parts.push(section("Top SAE features", el("p", {}, "Not an SAE-space vector: no features to list.")));

    const sweep = sweepSeries(meta.eval);
    parts.push(
      section(
        "Strength sweep (trainer's evaluation)",
        Object.keys(sweep).length
          ? lineChart(sweep, "strength", "score", `Strength sweep of ${detail.name}`)
          : el("p", {}, "No strength sweep recorded for this vector (run `steer eval --write-back`)."),
      ),
    );
    const training = meta.training || {};
    const losses = lossPoints(training.loss_curve);
    const lossPart = losses.length >= 2
      ? lineChart({ loss: losses }, "step", "loss", `Training loss of ${detail.name}`)
      : el("p", {}, noLossCurve(meta.method));
    parts.push(section("Training", lossPart, facts(training)));
    if (meta.eval && Object.keys(meta.eval).length) parts.push(section("Evaluation record", facts(meta.eval)));
    return parts;
  }

  return { render, sweepSeries, lineChart };
})();
