// Live refresh: a page whose <body> has data-refresh="N" re-reads itself every N seconds and
// swaps in its <main>; it stops when the new page no longer asks (the job has finished).
// An element with data-fragment="URL" (a job's figures not computed yet) is replaced by what
// that URL returns. No framework, nothing from another origin (the CSP allows only 'self').
(function () {
  "use strict";
  function loadFragments() {
    document.querySelectorAll("[data-fragment]").forEach(function (element) {
      var url = element.dataset.fragment;
      delete element.dataset.fragment;
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (!response.ok || response.redirected) { throw new Error("status " + response.status); }
          return response.text();
        })
        .then(function (html) {
          var fragment = new DOMParser().parseFromString(html, "text/html").body.firstElementChild;
          if (fragment) { element.replaceWith(fragment); }
        })
        .catch(function () { element.dataset.fragment = url; window.setTimeout(loadFragments, 2000); });
    });
  }
  function schedule() {
    var seconds = Number(document.body.dataset.refresh || 0);
    if (seconds > 0) { window.setTimeout(refresh, seconds * 1000); }
  }
  function refresh() {
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok || response.redirected) { throw new Error("status " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html");
        var main = next.getElementById("live");
        if (main) { document.getElementById("live").replaceWith(main); loadFragments(); }
        if (next.body.dataset.refresh) {
          document.body.dataset.refresh = next.body.dataset.refresh;
        } else {
          delete document.body.dataset.refresh;
        }
        document.body.dataset.refreshed = String(Date.now());
      })
      .catch(function () { /* a server restart or a lost session: try again later */ })
      .then(schedule);
  }
  document.addEventListener("DOMContentLoaded", function () { loadFragments(); schedule(); });
}());
