/* Live job page: the server-rendered page works alone (it refreshes itself with a <meta>
 * refresh inside <noscript>, so it is inert when scripts run); with JavaScript this script takes
 * over: it drops the <noscript> refresh (and any other refresh), follows the job's
 * Server-Sent Events and updates status and progress in place, fetches the changing part of the
 * page again when the status changes, and runs the action buttons without leaving the page.
 * The buttons stay the same elements until the set of actions offered changes (a click never lands
 * on a button that was just replaced), and a split job between two parts stays "started" on the
 * page while the API says "queued" for those milliseconds (rest/presenting.py, shown()).
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
    apiStatus: root.getAttribute("data-status"),
    events: 0,
    fragments: 0,
    actionsKept: 0, // fragments swapped in around the same action buttons
    held: 0, // times a split job's "queued" between two parts was shown as "started"
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

  // The fetched details replace the old ones, except the actions section while it offers the same
  // actions: the new nodes go in around it, so its buttons stay the very elements (with their focus,
  // listeners and a click in progress) and nothing above them changes height. Written here rather than
  // with a DOM-morphing library (morphdom, idiomorph): those would morph the pause form into the resume
  // form and reset a button that a click has disabled; the one rule the page needs is a few lines.
  function swapDetails(html) {
    var fresh = document.createElement("div");
    fresh.innerHTML = html; // same-origin markup rendered with autoescaping
    var oldRoot = detailsEl.firstElementChild;
    var newRoot = fresh.firstElementChild;
    var kept = oldRoot && oldRoot.querySelector(":scope > [data-actions]");
    var next = newRoot && newRoot.querySelector(":scope > [data-actions]");
    if (!kept || !next || kept.getAttribute("data-actions") !== next.getAttribute("data-actions")) {
      detailsEl.replaceChildren.apply(detailsEl, Array.prototype.slice.call(fresh.childNodes));
      return;
    }
    while (kept.previousSibling) {
      oldRoot.removeChild(kept.previousSibling);
    }
    while (kept.nextSibling) {
      oldRoot.removeChild(kept.nextSibling);
    }
    while (next.previousSibling) {
      oldRoot.insertBefore(next.previousSibling, kept);
    }
    while (next.nextSibling) {
      oldRoot.appendChild(next.nextSibling);
    }
    for (var a = 0; a < newRoot.attributes.length; a++) {
      oldRoot.setAttribute(newRoot.attributes[a].name, newRoot.attributes[a].value);
    }
    state.actionsKept += 1;
  }

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
          swapDetails(html);
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

  // A split job reads "queued" in the API while a worker moves from one part to the next (ms); the page
  // keeps showing "started" for up to data-between-parts-ms, and shows "queued" only if the job still
  // reads so then (all its parts waiting, e.g. sent back by a worker's shutdown).
  var split = root.hasAttribute("data-split");
  var holdMs = parseInt(root.getAttribute("data-between-parts-ms") || "0", 10);
  var holdTimer = null;
  var lastJob = null;

  function shownStatus(job) {
    if (split && job.status === "queued" && state.status === "started" && holdMs > 0) {
      if (!holdTimer) {
        state.held += 1;
        holdTimer = setTimeout(function () {
          holdTimer = null;
          if (lastJob && lastJob.status === "queued") {
            show(lastJob, "queued");
          }
        }, holdMs);
      }
      return "started";
    }
    if (holdTimer) {
      clearTimeout(holdTimer);
      holdTimer = null;
    }
    return job.status;
  }

  function show(job, status) {
    var changed = status !== state.status;
    state.status = status;
    showStatus(status);
    showProgress(job.progress, status);
    if (changed) {
      refreshDetails();
    }
  }

  function apply(job) {
    state.events += 1;
    state.apiStatus = job.status;
    lastJob = job;
    show(job, shownStatus(job));
    if (TERMINAL[job.status]) {
      stop();
    }
  }

  function stop() {
    if (holdTimer) {
      clearTimeout(holdTimer);
      holdTimer = null;
    }
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

  // Answers to the buttons can arrive out of order (a pause that waited for its checkpoint answers after
  // the cancel clicked once the page showed "paused"): only the latest action's answer may set the
  // message and the shown state; an earlier one's would put back a state the job has left.
  var actionSeq = 0;

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
    var mine = ++actionSeq;
    fetch("/api/v1/jobs/" + encodeURIComponent(jobId) + "/" + action, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf ? csrf.value : "" }
    })
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (body) {
          if (mine !== actionSeq) {
            return; // a later action's answer speaks for the page
          }
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
        if (mine === actionSeq) {
          flash("error", "Could not reach the server; try again.");
        }
      })
      .then(function () {
        if (button) {
          button.disabled = false;
        }
      });
  }

  function bindActions() {
    // Only forms not bound yet: the kept action buttons already have their listener.
    var forms = detailsEl.querySelectorAll("form[data-action]");
    for (var k = 0; k < forms.length; k++) {
      if (!forms[k].crunchBound) {
        forms[k].crunchBound = true;
        forms[k].addEventListener("submit", onAction);
      }
    }
  }

  // A "crunch:refresh" event on the page's <article> fetches the details now, as a status change would.
  root.addEventListener("crunch:refresh", refreshDetails);

  bindActions();
  start();
})();
