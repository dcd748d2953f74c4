/* Behaviour shared by every Crunch page; each page works without it.
 *
 * - Times: every <time datetime="...Z"> is shown in the browser's local time, with the UTC
 *   time in its tooltip (the server renders UTC, which is what a page without JavaScript shows).
 * - Live sections: an element with data-live="SECONDS" is fetched again from the page's own URL
 *   every SECONDS while the tab is visible, and replaced by the element with the same id in
 *   the fresh page (so server and live rendering never differ). Form fields outside it keep
 *   what the user typed. After each swap a "crunch:live" event fires on the new element.
 * No inline script and no eval, so the pages keep script-src 'self'.
 */
(function () {
  "use strict";

  var state = { liveUpdates: 0, liveErrors: 0 };
  window.crunchPages = state;

  var fmt = null;
  try {
    fmt = new Intl.DateTimeFormat(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit"
    });
  } catch (e) {
    fmt = null;
  }

  function utcText(d) {
    return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function localize(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      if (el.getAttribute("data-local") === "1") {
        continue;
      }
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime()) || !fmt) {
        continue;
      }
      el.textContent = fmt.format(d);
      el.title = utcText(d);
      el.setAttribute("data-local", "1");
    }
  }
  state.localize = localize;

  function swap(el, seconds) {
    var id = el.id;
    var busy = false;
    function tick() {
      if (busy || document.hidden) {
        return;
      }
      busy = true;
      fetch(window.location.href, { headers: { Accept: "text/html" }, cache: "no-store", credentials: "same-origin" })
        .then(function (r) {
          return r.status < 500 && r.status !== 404 ? r.text() : null; // a 422 page still holds the list
        })
        .then(function (html) {
          if (html === null) {
            state.liveErrors += 1;
            return;
          }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(id);
          var current = document.getElementById(id);
          if (!fresh || !current) {
            return;
          }
          var adopted = document.importNode(fresh, true);
          current.replaceWith(adopted);
          localize(adopted);
          state.liveUpdates += 1;
          adopted.dispatchEvent(new CustomEvent("crunch:live", { bubbles: true }));
        })
        .catch(function () {
          state.liveErrors += 1;
        })
        .then(function () {
          busy = false;
        });
    }
    setInterval(tick, seconds * 1000);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) {
        tick();
      }
    });
  }

  function start() {
    localize(document);
    var live = document.querySelectorAll("[data-live]");
    for (var i = 0; i < live.length; i++) {
      var seconds = parseFloat(live[i].getAttribute("data-live")) || 3;
      swap(live[i], seconds);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
