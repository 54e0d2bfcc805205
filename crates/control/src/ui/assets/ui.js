// Tandem's status page, live: the replica pushes server-rendered (and
// escaped) HTML fragments over server-sent events, fed by the same
// in-process streams as the proxies' Watch; this script swaps them in and
// keeps "12s ago" current. Without it the page is a static view.
"use strict";
(function () {
  var body = document.body;
  var live = document.getElementById("live");
  // The server's clock at render time, against the browser's.
  var skew = Number(body.dataset.now || Date.now()) - Date.now();

  function ago(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 2) return "just now";
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s ago";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m ago";
    return Math.floor(s / 86400) + "d ago";
  }

  // <time data-at="unix ms">12:00:01</time>: shown relative, the clock
  // time (UTC) kept in its title.
  function times(root) {
    var now = Date.now() + skew;
    var all = root.querySelectorAll("time[data-at]");
    for (var i = 0; i < all.length; i++) {
      var t = all[i];
      if (!t.title) t.title = t.textContent + " UTC";
      t.textContent = ago(now - Number(t.dataset.at));
    }
  }

  function state(name, text) {
    if (!live) return;
    live.dataset.state = name;
    live.textContent = text;
  }

  times(document);
  setInterval(function () { times(document); }, 1000);

  var url = body.dataset.events;
  if (!url || !window.EventSource) return;
  var source = new EventSource(url);
  source.onopen = function () { state("live", "Live"); };
  source.onerror = function () {
    state("down", "Reconnecting…");
  };

  // Events that replace an element's content.
  var replace = {
    alerts: "alerts-body",
    platform: "platform-body",
    pools: "pools-body",
    nodes: "nodes-body",
    "feed-all": "feed-list",
    backend: "backend-body",
    "history-all": "history-body"
  };
  Object.keys(replace).forEach(function (event) {
    source.addEventListener(event, function (e) {
      var el = document.getElementById(replace[event]);
      if (!el) return;
      el.innerHTML = e.data;
      times(el);
    });
  });

  // Events that add entries at the top of a list, newest first.
  var prepend = { feed: "feed-list", history: "history-body" };
  Object.keys(prepend).forEach(function (event) {
    source.addEventListener(event, function (e) {
      var el = document.getElementById(prepend[event]);
      if (!el) return;
      var empty = el.querySelector(".empty");
      if (empty) empty.remove();
      // Parse the new entries in the same kind of element (a <tbody>
      // cannot hold its rows in a <div>), skipping any already shown.
      var holder = document.createElement(el.tagName);
      holder.innerHTML = e.data;
      var fresh = Array.prototype.slice.call(holder.children);
      for (var i = fresh.length - 1; i >= 0; i--) {
        var key = fresh[i].dataset.key;
        if (key && el.querySelector('[data-key="' + key + '"]')) continue;
        el.insertBefore(fresh[i], el.firstElementChild);
      }
      var max = Number(el.dataset.max || 100);
      while (el.children.length > max) el.lastElementChild.remove();
      times(el);
    });
  });
})();
