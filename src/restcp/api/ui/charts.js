// Five minutes of rates, kept by the page from the stream's updates (one point a second),
// drawn with uPlot (vendored: uplot.esm.js, its license in uplot.LICENSE.txt).
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
