// sitemon's dashboard script: the filter box, and a refresh of the page's figures every few
// seconds without a reload. Served by sitemon itself (nothing is fetched from elsewhere);
// every page works without it.
(function () {
  "use strict";

  function applyFilter() {
    var box = document.getElementById("filter");
    var body = document.querySelector("tbody[data-sites]");
    if (!box || !body) return;
    var needle = box.value.trim().toLowerCase();
    var shown = 0;
    var rows = body.querySelectorAll("tr");
    for (var i = 0; i < rows.length; i++) {
      var hit = !needle || (rows[i].getAttribute("data-search") || "").indexOf(needle) !== -1;
      rows[i].hidden = !hit;
      if (hit) shown++;
    }
    var count = document.getElementById("shown");
    if (count && needle) count.textContent = shown + " shown";
  }

  function refresh() {
    var live = document.getElementById("live");
    if (!live || document.hidden) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        // Logged out meanwhile, or the server is away: keep what is shown.
        if (!response.ok || response.redirected) return null;
        return response.text();
      })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) {
          current.replaceWith(document.importNode(fresh, true));
          applyFilter();
        }
      })
      .catch(function () {});
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("filter");
    if (box) {
      box.addEventListener("input", applyFilter);
      applyFilter();
    }
    var main = document.getElementById("main");
    var every = main ? parseInt(main.getAttribute("data-refresh"), 10) : 0;
    if (every > 0) window.setInterval(refresh, every * 1000);
  });
})();
