/* LiteQ monitor panel: the throughput chart and the background refresh.
 *
 * Refresh: every few seconds the page fetches its own URL and replaces the
 * contents of each element marked [data-live] with the fresh copy. Forms and
 * inputs outside those regions are never touched, and a region that holds the
 * focused element is skipped, so typing or choosing is never interrupted.
 */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var PAUSE_KEY = "liteq.refresh.paused";

  function svgEl(name, attrs) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    return el;
  }

  function hhmm(epoch) {
    var d = new Date(epoch * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  function zoneName() {
    try {
      var parts = new Intl.DateTimeFormat([], { timeZoneName: "short" }).formatToParts(new Date());
      var zone = parts.filter(function (p) { return p.type === "timeZoneName"; })[0];
      return zone ? zone.value : "";
    } catch (e) { return ""; }
  }

  function niceMax(v) {
    if (v <= 4) return 4;
    var mag = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (steps[i] * mag >= v) return steps[i] * mag;
    }
    return 10 * mag;
  }

  /* A stacked bar chart (done below, failed above) of [{t, done, failed}]. */
  function drawChart(el) {
    var series;
    try { series = JSON.parse(el.getAttribute("data-chart")); } catch (e) { return; }
    if (!Array.isArray(series) || !series.length) return;
    var width = Math.max(el.clientWidth, 320), height = Math.max(el.clientHeight, 160);
    var left = 34, right = 6, top = 8, bottom = 22;
    var plotW = width - left - right, plotH = height - top - bottom;
    var peak = 0;
    series.forEach(function (p) { peak = Math.max(peak, p.done + p.failed); });
    var max = niceMax(peak);
    var svg = svgEl("svg", { viewBox: "0 0 " + width + " " + height, preserveAspectRatio: "none" });

    for (var g = 0; g <= 4; g++) {
      var value = max * g / 4;
      var y = top + plotH - plotH * g / 4;
      svg.appendChild(svgEl("line", { x1: left, x2: width - right, y1: y, y2: y, "class": "grid-line" }));
      var label = svgEl("text", { x: left - 6, y: y + 3.5, "text-anchor": "end", "class": "axis-label" });
      label.textContent = Number.isInteger(value) ? String(value) : value.toFixed(1);
      svg.appendChild(label);
    }

    var slot = plotW / series.length;
    var labelEvery = plotW < 500 ? 10 : 5;  // room for "HH:MM ZONE" on a phone
    var barW = Math.max(2, slot * 0.72);
    series.forEach(function (p, i) {
      var x = left + i * slot + (slot - barW) / 2;
      var hDone = plotH * p.done / max, hFailed = plotH * p.failed / max;
      var base = top + plotH;
      var tip = hhmm(p.t) + " — " + p.done + " done, " + p.failed + " failed";
      if (p.done > 0) {
        var bd = svgEl("rect", { x: x, y: base - hDone, width: barW, height: hDone, rx: 2, "class": "bar bar-done" });
        var t1 = svgEl("title"); t1.textContent = tip; bd.appendChild(t1);
        svg.appendChild(bd);
      }
      if (p.failed > 0) {
        var bf = svgEl("rect", { x: x, y: base - hDone - hFailed, width: barW, height: hFailed, rx: 2, "class": "bar bar-failed" });
        var t2 = svgEl("title"); t2.textContent = tip; bf.appendChild(t2);
        svg.appendChild(bf);
      }
      if (i % labelEvery === 0 || i === series.length - 1) {
        var xl = svgEl("text", { x: i === 0 ? left : left + i * slot + slot / 2, y: height - 6,
                                  "text-anchor": i === 0 ? "start" : "middle", "class": "axis-label" });
        // The first label names the zone of them all (the browser's).
        xl.textContent = i === series.length - 1 ? "now" : hhmm(p.t) + (i === 0 ? " " + zoneName() : "");
        svg.appendChild(xl);
      }
    });
    el.replaceChildren(svg);
  }

  function drawCharts(root) {
    (root || document).querySelectorAll("[data-chart]").forEach(drawChart);
  }

  /* ---- background refresh ---- */

  var status = null, statusText = null, toggle = null, timer = null, busy = false;

  function setStatus(state, text) {
    if (!status) return;
    status.classList.remove("paused", "offline");
    if (state !== "live") status.classList.add(state);
    statusText.textContent = text;
  }

  function paused() {
    try { return window.localStorage.getItem(PAUSE_KEY) === "1"; } catch (e) { return false; }
  }

  function liveIds(doc) {
    return Array.prototype.map.call(doc.querySelectorAll("[data-live][id]"), function (e) { return e.id; }).join(" ");
  }

  function holdsFocus(el) {
    var active = document.activeElement;
    return active && active !== document.body && el.contains(active);
  }

  function apply(doc) {
    var main = document.querySelector("main.page"), fresh = doc.querySelector("main.page");
    if (main && fresh && liveIds(doc) !== liveIds(document)) {
      // The page changed shape (the daemon came up or went away): swap it whole,
      // unless the user is in the middle of filling in a form.
      if (holdsFocus(main)) return;
      main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
      drawCharts(main);
      return;
    }
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      var next = doc.getElementById(el.id);
      if (!next || holdsFocus(el)) return;
      if (next.innerHTML !== el.getAttribute("data-last")) {
        el.innerHTML = next.innerHTML;
        el.setAttribute("data-last", next.innerHTML);
        drawCharts(el);
      }
    });
  }

  function refresh() {
    if (busy || paused() || document.hidden) return;
    busy = true;
    fetch(window.location.href, { headers: { "Accept": "text/html", "X-LiteQ-Refresh": "1" },
                                  credentials: "same-origin", cache: "no-store", redirect: "manual" })
      .then(function (resp) {
        if (resp.type === "opaqueredirect" || !resp.ok) throw new Error("HTTP " + resp.status);
        return resp.text();
      })
      .then(function (html) {
        apply(new DOMParser().parseFromString(html, "text/html"));
        setStatus("live", "live · " + new Date().toLocaleTimeString([], { timeZoneName: "short" }));
      })
      .catch(function () { setStatus("offline", "offline"); })
      .then(function () { busy = false; });
  }

  function updateToggle() {
    if (!toggle) return;
    var p = paused();
    toggle.textContent = p ? "Resume" : "Pause";
    setStatus(p ? "paused" : "live", p ? "paused" : "live");
  }

  function confirmForms() {
    document.addEventListener("submit", function (ev) {
      var msg = ev.target && ev.target.getAttribute && ev.target.getAttribute("data-confirm");
      if (msg && !window.confirm(msg)) ev.preventDefault();
    });
  }

  function init() {
    status = document.getElementById("live-status");
    statusText = document.getElementById("live-text");
    toggle = document.getElementById("live-toggle");
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      el.setAttribute("data-last", el.innerHTML);
    });
    drawCharts(document);
    confirmForms();
    if (toggle) {
      toggle.addEventListener("click", function () {
        try { window.localStorage.setItem(PAUSE_KEY, paused() ? "0" : "1"); } catch (e) { /* private mode */ }
        updateToggle();
        if (!paused()) refresh();
      });
    }
    updateToggle();
    var every = parseInt(document.body.getAttribute("data-refresh-ms"), 10);
    if (isNaN(every)) every = 3000;
    if (!document.querySelector("main [data-live]") || every <= 0) {
      // Nothing on this page (login, errors) changes by itself, or refreshing it would
      // cost too much (a search reads up to a time budget each time).
      if (status) status.hidden = true;
      if (toggle) toggle.hidden = true;
      return;
    }
    timer = window.setInterval(refresh, every);
    window.addEventListener("resize", function () { drawCharts(document); });
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
