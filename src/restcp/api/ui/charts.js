// Five minutes of rates: what the node kept before the page opened (GET .../stats/history),
// then what the stream's updates bring (one point a second), drawn with uPlot (vendored: uplot.esm.js, its license in uplot.LICENSE.txt).
import uPlot from "./uplot.esm.js";

export const WINDOW = 300; // seconds kept

export class Series {
  constructor(names) {
    this.names = names;
    this.t = [];
    this.values = names.map(() => []);
  }

  push(t, values) {
    this.t.push(t);
    values.forEach((v, i) => this.values[i].push(v ?? null));
    while (this.t.length && this.t[0] < t - WINDOW) {
      this.t.shift();
      this.values.forEach((column) => column.shift());
    }
  }

  // Samples from before the first point the page has (oldest first): the node's history.
  prepend(t, columns) {
    const first = this.t.length ? this.t[0] : Infinity;
    const newest = this.t.length ? this.t[this.t.length - 1] : Infinity;
    let n = 0;
    while (n < t.length && t[n] < first - 0.5) n += 1;
    const keep = [];
    for (let i = 0; i < n; i += 1) if (t[i] >= newest - WINDOW || newest === Infinity) keep.push(i);
    this.t = keep.map((i) => t[i]).concat(this.t);
    this.values = this.values.map((column, k) => keep.map((i) => columns[k][i]).concat(column));
  }

  data() {
    return [this.t, ...this.values];
  }
}

const COLOURS = ["#1f6feb", "#8250df", "#cf222e", "#1a7f37"];

export function chart(container, title, series, units) {
  const width = Math.max(280, Math.min(container.clientWidth || 420, 560));
  const opts = {
    title,
    width,
    height: 160,
    series: [
      {},
      ...series.names.map((name, i) => ({ label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5 })),
    ],
    axes: [{}, { size: 60, values: (u, ticks) => ticks.map((v) => units(v)) }],
    scales: { x: { time: true } },
    legend: { live: false },
  };
  return new uPlot(opts, series.data(), container);
}
