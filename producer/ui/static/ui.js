// Live refresh: a page whose <body> has data-refresh="N" re-reads itself every N seconds and
// swaps in its <main>; it stops when the new page no longer asks (the job has finished).
// No framework, nothing from another origin (the Content-Security-Policy allows only 'self').
(function () {
  "use strict";
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
        if (main) { document.getElementById("live").replaceWith(main); }
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
  document.addEventListener("DOMContentLoaded", schedule);
}());
