/* Live job page: the server-rendered page works alone (it refreshes itself with a <meta>
 * refresh inside <noscript>, so it is inert when scripts run); with JavaScript this script takes
 * over: it drops the <noscript> refresh (and any other refresh), follows the job's
 * Server-Sent Events and updates status and progress in place, fetches the changing part of the
 * page again when the status changes, and runs the action buttons without leaving the page.
 * No inline script is needed, so the page runs under script-src 'self'. */
(function () {
  "use strict";

  var root = document.getElementById("job");
  if (!root) {
    return;
  }
  var TERMINAL = { finished: true, failed: true, canceled: true };
  var jobId = root.getAttribute("data-job-id");
  var state = {
    id: jobId,
    status: root.getAttribute("data-status"),
    live: "off", // "events", "polling" or "off"
    events: 0,
    fragments: 0,
    loadedAt: Date.now()
  };
  // Visible to tests and to the curious: it lives exactly as long as this document.
  window.crunchJobPage = state;

  // This document updates itself from now on; a reload would only lose its state. (A parsed
  // <meta> refresh outside <noscript> could not be cancelled this way: the template never emits one.)
  var refresh = document.querySelectorAll('meta[http-equiv="refresh" i], head noscript');
  for (var i = 0; i < refresh.length; i++) {
    refresh[i].parentNode.removeChild(refresh[i]);
  }

  var statusEl = document.getElementById("job-status");
  var progressEl = document.getElementById("job-progress");
  var percentEl = document.getElementById("job-percent");
  var doneEl = document.getElementById("job-done");
  var detailsEl = document.getElementById("job-details");
  var flashEl = document.getElementById("flash");
  var source = null;
  var pollTimer = null;
  var fragmentBusy = null;

  function fmtInt(n) {
    return Number(n).toLocaleString("en-US");
  }

  function flash(kind, text) {
    var p = document.createElement("p");
    p.className = "flash flash-" + (kind === "error" ? "error" : "ok");
    p.textContent = text;
    flashEl.replaceChildren(p);
  }

  function showStatus(status) {
    statusEl.textContent = status;
    statusEl.className = "badge badge-" + status;
    root.setAttribute("data-status", status);
    document.title = document.title.replace(/\((queued|started|paused|finished|failed|canceled)\)/, "(" + status + ")");
  }

  function showProgress(progress, status) {
    var percent = progress && typeof progress.percent === "number" ? progress.percent : 0;
    if (status === "finished") {
      percent = 100;
    }
    percent = Math.max(0, Math.min(100, percent));
    progressEl.value = percent;
    progressEl.textContent = percent.toFixed(1) + " %";
    percentEl.textContent = percent.toFixed(1) + " %";
    doneEl.textContent = progress && progress.total
      ? fmtInt(progress.done) + " of " + fmtInt(progress.total) + " " + (root.getAttribute("data-unit") || "")
      : "";
    if (status === "started") {
      observe(percent);
    }
  }

  // Elapsed time and ETA of a running job: the server renders both; this keeps them ticking and
  // estimates the time left from the progress seen on this page (the CLI's estimate), falling
  // back to the average pace since the job started.
  var pace = { first: null, last: null };

  function observe(percent) {
    var now = Date.now();
    if (!pace.first || percent < pace.first.p) {
      pace.first = { t: now, p: percent };
    }
    pace.last = { t: now, p: percent };
  }

  function clock(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var mm = Math.floor(s / 60) % 60, ss = s % 60, hh = Math.floor(s / 3600);
    var two = function (n) { return (n < 10 ? "0" : "") + n; };
    return hh ? hh + ":" + two(mm) + ":" + two(ss) : mm + ":" + two(ss);
  }

  function tickRun() {
    var run = document.getElementById("job-run");
    if (!run || state.status !== "started") {
      return;
    }
    if (!run.getAttribute("data-t0")) {
      run.setAttribute("data-t0", String(Date.now()));
    }
    var elapsed = parseFloat(run.getAttribute("data-elapsed") || "0") +
      (Date.now() - parseFloat(run.getAttribute("data-t0"))) / 1000;
    var elapsedEl = document.getElementById("job-elapsed");
    var etaEl = document.getElementById("job-eta");
    if (elapsedEl) {
      elapsedEl.textContent = clock(elapsed);
    }
    var p = pace.last ? pace.last.p : parseFloat(run.getAttribute("data-percent") || "0");
    var eta = null;
    if (pace.first && pace.last && pace.last.t - pace.first.t >= 1000 && pace.last.p > pace.first.p) {
      var rate = (pace.last.p - pace.first.p) / ((pace.last.t - pace.first.t) / 1000);
      eta = (100 - p) / rate - (Date.now() - pace.last.t) / 1000;
    } else if (p >= 0.5 && p < 100) {
      eta = elapsed * (100 - p) / p;
    }
    if (etaEl) {
      etaEl.textContent = eta !== null && eta >= 0 ? "about " + clock(eta) + " left" : "time left not known yet";
    }
    state.ticks = (state.ticks || 0) + 1;
  }
  setInterval(tickRun, 1000);

  function refreshDetails() {
    // One fetch at a time; a status change during a fetch asks for one more afterwards.
    if (fragmentBusy) {
      fragmentBusy.again = true;
      return;
    }
    fragmentBusy = { again: false };
    fetch(root.getAttribute("data-fragment"), { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) {
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          detailsEl.innerHTML = html; // same-origin markup rendered with autoescaping
          state.fragments += 1;
          if (window.crunchPages && window.crunchPages.localize) {
            window.crunchPages.localize(detailsEl);
          }
          bindActions();
        }
      })
      .catch(function () {})
      .then(function () {
        var again = fragmentBusy.again;
        fragmentBusy = null;
        if (again) {
          refreshDetails();
        }
      });
  }

  // A queued job's "Waiting: N ahead" line changes with other jobs' dispatch, which sends this job no
  // event: read the details again every few seconds while it waits.
  setInterval(function () {
    if (state.status === "queued" && !document.hidden) {
      refreshDetails();
    }
  }, 3000);

  function apply(job) {
    state.events += 1;
    var changed = job.status !== state.status;
    state.status = job.status;
    showStatus(job.status);
    showProgress(job.progress, job.status);
    if (changed) {
      refreshDetails();
    }
    if (TERMINAL[job.status]) {
      stop();
    }
  }

  function stop() {
    if (source) {
      source.close();
      source = null;
    }
    if (pollTimer) {
      clearInterval(pollTimer);
      pollTimer = null;
    }
    state.live = "off";
  }

  function poll() {
    fetch(root.getAttribute("data-api"), { headers: { Accept: "application/json" }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 404) {
          stop();
          flash("error", "This job no longer exists.");
          return null;
        }
        return r.ok ? r.json() : null;
      })
      .then(function (job) {
        if (job) {
          apply(job);
        }
      })
      .catch(function () {});
  }

  function startPolling() {
    if (!pollTimer) {
      state.live = "polling";
      pollTimer = setInterval(poll, 2000);
    }
  }

  function start() {
    if (TERMINAL[state.status] || source || pollTimer) {
      return;
    }
    if (!window.EventSource) {
      startPolling();
      return;
    }
    source = new EventSource(root.getAttribute("data-events"));
    var onJob = function (ev) {
      apply(JSON.parse(ev.data));
    };
    source.addEventListener("status", onJob);
    source.addEventListener("progress", onJob);
    source.addEventListener("deleted", function () {
      stop();
      flash("error", "This job was deleted.");
    });
    source.addEventListener("open", function () {
      state.live = "events";
    });
    source.addEventListener("error", function () {
      // EventSource reconnects by itself after a dropped stream; it gives up only on an
      // error answer (e.g. 503 when the server holds too many streams): then poll instead.
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        startPolling();
      }
    });
  }

  var DONE = {
    cancel: function (job) { return job.status === "canceled" ? "Job canceled." : "Cancel requested."; },
    pause: function (job) { return job.status === "paused" ? "Job paused." : "Pause requested."; },
    resume: function () { return "Job resumed: it is queued again and continues from its checkpoint."; },
    retry: function () { return "Job queued again."; }
  };

  function onAction(ev) {
    var form = ev.currentTarget;
    var action = form.getAttribute("data-action");
    if (!DONE[action]) {
      return; // let the browser post the form
    }
    ev.preventDefault();
    var button = form.querySelector("button");
    if (button) {
      button.disabled = true;
    }
    // Signed in by cookie (API_TOKENS on), the API wants the form's CSRF token as a header.
    var csrf = form.querySelector("input[name=csrf_token]");
    fetch("/api/v1/jobs/" + encodeURIComponent(jobId) + "/" + action, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf ? csrf.value : "" }
    })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          if (r.ok) {
            flash("ok", DONE[action](body));
            apply(body); // fetches the buttons again if the status changed
            start();
          } else {
            flash("error", "Could not " + action + " the job: " + (body.detail || r.statusText) + ".");
            refreshDetails();
          }
        });
      })
      .catch(function () {
        flash("error", "Could not reach the server; try again.");
      })
      .then(function () {
        if (button) {
          button.disabled = false;
        }
      });
  }

  function bindActions() {
    var forms = detailsEl.querySelectorAll("form[data-action]");
    for (var k = 0; k < forms.length; k++) {
      forms[k].addEventListener("submit", onAction);
    }
  }

  bindActions();
  start();
})();
