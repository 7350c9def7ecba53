// Throughput: jobs by state, and bar charts of the last hours and days drawn as inline SVG.
import { el, formatMegapixels } from "./format.js";
import { $, state } from "./state.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { width: 480, height: 120, top: 16, bottom: 18 };

function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function hourLabel(hour) {
  return new Date(hour.hour).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function dayLabel(day) {
  return new Date(`${day.day}T00:00:00`).toLocaleDateString([], { month: "short", day: "numeric" });
}

// A small bar chart drawn as inline SVG: one bar per bucket, the series stacked, the tallest bar's
// total written above the chart. Screen readers get the table next to it instead (the SVG is hidden).
function barChart(buckets, series, label) {
  const { width, height, top, bottom } = CHART;
  const totals = buckets.map((bucket) => series.reduce((sum, one) => sum + (bucket[one.key] || 0), 0));
  const max = Math.max(1, ...totals);
  const step = width / Math.max(1, buckets.length);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", "aria-hidden": "true", focusable: "false" });
  chart.append(svg("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: "axis" }));
  buckets.forEach((bucket, index) => {
    let base = height - bottom;
    for (const one of series) {
      const value = bucket[one.key] || 0;
      if (!value) continue;
      const barHeight = (value / max) * (height - top - bottom);
      base -= barHeight;
      const bar = svg("rect", { x: index * step + step * 0.1, y: base, width: step * 0.8, height: barHeight, class: `bar ${one.className}`, "data-value": value });
      bar.append(svg("title", {}, `${label(bucket)}: ${value} ${one.name}`));
      chart.append(bar);
    }
  });
  chart.append(svg("text", { x: 0, y: 11, class: "chart-max" }, `max ${Math.max(...totals, 0)}`));
  chart.append(svg("text", { x: 0, y: height - 4 }, buckets.length ? label(buckets[0]) : ""));
  chart.append(svg("text", { x: width, y: height - 4, "text-anchor": "end" }, buckets.length ? label(buckets[buckets.length - 1]) : ""));
  return chart;
}

function statsTable(caption, head, rows, className = "") {
  return el(
    "table",
    { class: className },
    el("caption", { class: "muted", text: caption }),
    el("thead", {}, el("tr", {}, ...head.map((h, i) => el("th", { class: i ? "num" : "", text: h })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((cell, i) => el("td", { class: i ? "num" : "", text: String(cell) }))))),
  );
}

function chartFigure(id, caption, chart, legend, table) {
  return el("figure", { class: "chart-figure", id }, el("figcaption", { text: caption }), chart, legend, table);
}

function legend(series) {
  return el("p", { class: "legend muted", "aria-hidden": "true" }, ...series.map((one) => el("span", { class: `key ${one.className}`, text: one.name })));
}

export function renderStats(stats) {
  const counts = stats.counts || {};
  state.counts = counts;
  const rate = stats.seconds_per_megapixel;
  const hours = stats.per_hour || [];
  const days = stats.per_day || [];
  const hourSeries = [{ key: "images", className: "bar-done", name: "images" }];
  const daySeries = [
    { key: "done", className: "bar-done", name: "done" },
    { key: "failed", className: "bar-failed", name: "failed" },
  ];
  const box = $("stats");
  box.dataset.generatedAt = stats.generated_at || "";
  box.replaceChildren(
    el(
      "div",
      {},
      statsTable("Jobs by state", ["state", "jobs"], Object.entries(counts)),
      el("p", { class: "muted", text: rate ? `${rate.toFixed(1)} s per input megapixel (mean of done jobs)` : "No finished jobs to time yet." }),
    ),
    chartFigure(
      "chart-hours",
      `Images finished per hour, last ${hours.length} hours`,
      barChart(hours, hourSeries, hourLabel),
      legend(hourSeries),
      statsTable("Images finished per hour", ["hour", "images", "MP"], hours.map((h) => [hourLabel(h), h.images, formatMegapixels(h.megapixels)]), "visually-hidden"),
    ),
    chartFigure(
      "chart-days",
      `Jobs finished per day, last ${days.length} days`,
      barChart(days, daySeries, dayLabel),
      legend(daySeries),
      statsTable("Jobs finished per day", ["day", "done", "failed", "MP"], days.map((d) => [d.day, d.done, d.failed, formatMegapixels(d.megapixels)]), "visually-hidden"),
    ),
  );
}
