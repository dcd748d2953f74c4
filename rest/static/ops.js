/* The operations page's charts (uPlot, served from /static/vendor/uplot).
 * The data sits in #ops-live's data-series attribute, rendered by the server from Redis;
 * pages.js swaps #ops-live for a fresh copy every few seconds and fires "crunch:live",
 * and the charts then take the new series with setData (no redraw of the page, no flicker).
 * window.crunchOps counts the chart updates, for tests and the curious. */
(function () {
  "use strict";

  var state = { drawn: false, updates: 0, finishedPoints: 0, depthPoints: 0, lastFinished: null, lastDepth: null };
  window.crunchOps = state;
  var COLORS = ["#0b57d0", "#b3261e", "#0d6b2c", "#6b4a00"];
  var charts = { finished: null, depth: null };

  function series() {
    var el = document.getElementById("ops-live");
    try {
      return el ? JSON.parse(el.getAttribute("data-series")) : null;
    } catch (e) {
      return null;
    }
  }

  function width(el) {
    return Math.max(260, Math.floor(el.getBoundingClientRect().width) || 480);
  }

  function finishedData(s) {
    var xs = [], ys = [];
    for (var i = 0; i < s.finished.length; i++) {
      xs.push(s.finished[i][0]);
      ys.push(s.finished[i][1]);
    }
    return [xs, ys];
  }

  function depthData(s) {
    var cols = [[]];
    for (var q = 0; q < s.depth.queues.length; q++) {
      cols.push([]);
    }
    for (var i = 0; i < s.depth.points.length; i++) {
      var p = s.depth.points[i];
      for (var c = 0; c < p.length; c++) {
        cols[c].push(p[c]);
      }
    }
    return cols;
  }

  function axes(yLabel) {
    return [
      { stroke: "#37424d", grid: { stroke: "#e1e6eb" }, ticks: { stroke: "#c9d1d9" } },
      { stroke: "#37424d", label: yLabel, grid: { stroke: "#e1e6eb" }, ticks: { stroke: "#c9d1d9" },
        incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000, 1000000] }
    ];
  }

  function draw(s) {
    var fEl = document.getElementById("chart-finished");
    var dEl = document.getElementById("chart-depth");
    if (!fEl || !dEl || !window.uPlot) {
      return;
    }
    var now = Date.now() / 1000;
    charts.finished = new window.uPlot({
      width: width(fEl), height: 220,
      scales: { x: { time: true, range: function () { return [now - 3600, now + 60]; } }, y: { range: function (u, lo, hi) { return [0, Math.max(5, hi || 0)]; } } },
      axes: axes("jobs / min"),
      legend: { show: true },
      series: [
        { label: "minute" },
        { label: "finished", stroke: COLORS[0], fill: "rgba(11, 87, 208, 0.35)", width: 1,
          paths: window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
          points: { show: false } }
      ]
    }, finishedData(s), fEl);
    var depthSeries = [{ label: "time" }];
    for (var q = 0; q < s.depth.queues.length; q++) {
      depthSeries.push({ label: s.depth.queues[q], stroke: COLORS[q % COLORS.length], width: 2,
                         points: { show: true, size: 4 }, spanGaps: false });
    }
    charts.depth = new window.uPlot({
      width: width(dEl), height: 220,
      scales: { x: { time: true }, y: { range: function (u, lo, hi) { return [0, Math.max(5, hi || 0)]; } } },
      axes: axes("waiting jobs"),
      series: depthSeries
    }, depthData(s), dEl);
    state.drawn = true;
    note(s);
  }

  function note(s) {
    state.finishedPoints = s.finished.filter(function (p) { return p[1] !== null; }).length;
    state.depthPoints = s.depth.points.length;
    state.lastFinished = s.finished.length ? s.finished[s.finished.length - 1][1] : null;
    state.lastDepth = s.depth.points.length ? s.depth.points[s.depth.points.length - 1] : null;
  }

  function update() {
    var s = series();
    if (!s) {
      return;
    }
    if (!state.drawn) {
      draw(s);
      return;
    }
    var now = Date.now() / 1000;
    charts.finished.setScale("x", { min: now - 3600, max: now + 60 });
    charts.finished.setData(finishedData(s));
    charts.depth.setData(depthData(s));
    state.updates += 1;
    note(s);
  }

  function resize() {
    var pairs = [[charts.finished, "chart-finished"], [charts.depth, "chart-depth"]];
    for (var i = 0; i < pairs.length; i++) {
      var el = document.getElementById(pairs[i][1]);
      if (pairs[i][0] && el) {
        pairs[i][0].setSize({ width: width(el), height: 220 });
      }
    }
  }

  function start() {
    // The chart containers are inside #ops-live, which pages.js replaces: move the drawn
    // charts into each fresh copy instead of drawing them again.
    document.addEventListener("crunch:live", function (ev) {
      var fresh = ev.target;
      ["chart-finished", "chart-depth"].forEach(function (id) {
        var old = charts[id === "chart-finished" ? "finished" : "depth"];
        var slot = fresh.querySelector("#" + id);
        if (old && slot && old.root.parentNode !== slot) {
          slot.replaceChildren(old.root);
        }
      });
      update();
    });
    window.addEventListener("resize", resize);
    update();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
