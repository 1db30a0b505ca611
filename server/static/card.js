// Catalog cards: each vector's headline (method, default strength, its effect and retention there) and a small
// strength-sweep chart drawn from the catalog's `sweep` (GET /vectors), with served vectors before baselines.
"use strict";

window.PlaygroundCard = (() => {
  // The demo build's namespace for the comparison methods (`<demo>/vectors/baselines/<method>-<country>`).
  const BASELINES = "baselines";
  const fmt = (x) => String(Number(x.toPrecision(4)));
  const pct = (x) => `${Number((100 * x).toFixed(1))} %`;
  const points = (d) => `${d < 0 ? "−" : "+"}${Number(Math.abs(100 * d).toFixed(1))} pts`;
  const isNumber = (x) => typeof x === "number" && Number.isFinite(x);

  const isBaseline = (name) => name === BASELINES || name.startsWith(`${BASELINES}/`);

  // Served vectors first, baselines after; within each group the server's order (by name).
  function order(vectors) {
    return [...vectors].sort((a, b) => isBaseline(a.name) - isBaseline(b.name));
  }

  // "accuracy 64 % (+33 pts vs unsteered)"; null when the sweep has no such number.
  function measure(label, value, unsteered) {
    if (!isNumber(value)) return null;
    return `${label} ${pct(value)}${isNumber(unsteered) ? ` (${points(value - unsteered)} vs unsteered)` : ""}`;
  }

  // One line: method, default strength, and accuracy / retention at the default next to unsteered (the eval
  // record's unsteered numbers, else its strength-0 point).
  function headline(v) {
    const head = `${v.method} · default strength ${fmt(v.default_strength)}`;
    const evaluation = v.eval || {};
    if (evaluation.unreadable) return `${head} · evaluation unreadable: ${evaluation.unreadable}`;
    const sweep = v.sweep || [];
    if (!sweep.length) return `${head} · not evaluated`;
    const point = sweep.find((p) => p.strength === v.default_strength);
    if (!point) return `${head} · not measured at its default strength`;
    const zero = sweep.find((p) => p.strength === 0) || {};
    const base = (key, fallback) => (isNumber(evaluation[key]) ? evaluation[key] : fallback);
    const parts = [
      measure("accuracy", point.accuracy, base("unsteered_heldout_accuracy", zero.accuracy)),
      measure("retention", point.retention, base("unsteered_retention", zero.retention)),
    ];
    return [head, ...parts.filter(Boolean)].join(" · ");
  }

  // Accuracy and retention over the measured strengths, the default strength marked; null under two points.
  function chart(v) {
    const series = {};
    for (const key of ["accuracy", "retention"]) {
      const line = (v.sweep || []).filter((p) => isNumber(p[key])).map((p) => [p.strength, p[key]]);
      if (line.length >= 2) series[key] = line;
    }
    if (!Object.keys(series).length) return null;
    return window.PlaygroundDetail.lineChart(series, "strength", "share", `Accuracy and retention of ${v.name} by strength`, {
      size: [300, 130],
      yRange: [0, 1],
      mark: v.default_strength,
      markLabel: `default strength ${fmt(v.default_strength)}`,
      numbers: false,
    });
  }

  return { order, headline, chart };
})();
