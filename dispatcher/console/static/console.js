// The console's own behaviour: menus, modal and panel, copy buttons, the create-stream
// steps, and the realtime page's live table (EventSource). No dependencies besides htmx.
(function () {
  "use strict";

  function closeMenus(except) {
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      if (menu !== except) menu.removeAttribute("open");
    });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    var menu = target.closest("details.menu");
    var item = target.closest(".menu-items button");
    closeMenus(menu && !item ? menu : null);

    var copy = target.closest("[data-copy]");
    if (copy) {
      var source = document.querySelector(copy.getAttribute("data-copy"));
      var text = source ? source.textContent : "";
      var done = function () {
        copy.textContent = "Copied";
        copy.classList.add("copied");
        setTimeout(function () { copy.textContent = "Copy"; copy.classList.remove("copied"); }, 1500);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, done);
      } else {
        var area = document.createElement("textarea");
        area.value = text; document.body.appendChild(area); area.select();
        try { document.execCommand("copy"); } finally { area.remove(); }
        done();
      }
    }
    if (target.matches("[data-close-modal]")) {
      document.getElementById("modal").innerHTML = "";
    }
    if (target.closest("[data-close-panel]")) closePanel();

    var go = target.closest("[data-step-go], [data-step-tab]");
    if (go) showStep(go.closest("form"), go.getAttribute("data-step-go") || go.getAttribute("data-step-tab"));
  });

  function closePanel() {
    var panel = document.getElementById("panel");
    panel.classList.remove("open");
    panel.innerHTML = "";
    document.getElementById("panel-backdrop").hidden = true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    var modal = document.getElementById("modal");
    if (modal && modal.innerHTML.trim()) modal.innerHTML = "";
    else if (document.getElementById("panel")) closePanel();
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target.id === "panel") {
      event.detail.target.classList.add("open");
      document.getElementById("panel-backdrop").hidden = false;
    }
  });
  document.addEventListener("stream-deleted", closePanel);

  // ---------------------------------------------------------------- create-stream steps
  function showStep(form, key) {
    if (!form) return;
    form.querySelectorAll("[data-step]").forEach(function (section) {
      section.hidden = section.getAttribute("data-step") !== key;
    });
    form.querySelectorAll("[data-step-tab]").forEach(function (tab) {
      tab.classList.toggle("active", tab.getAttribute("data-step-tab") === key);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var wizard = document.querySelector("form.wizard");
    if (wizard) {
      var first = wizard.querySelector("[data-step]").getAttribute("data-step");
      showStep(wizard, wizard.getAttribute("data-first-error-step") || first);
    }
    var rows = document.getElementById("realtime-rows");
    if (rows) startRealtime(rows);
  });

  // ---------------------------------------------------------------- realtime
  function startRealtime(rows) {
    var form = document.getElementById("realtime-filters");
    var state = document.getElementById("feed-state");
    var labels = JSON.parse(document.getElementById("type-labels").textContent);
    var template = document.getElementById("realtime-row");
    var series = {};
    var source = null;
    var lastSeen = {};

    function setState(name, text) {
      state.setAttribute("data-state", name);
      state.querySelector(".live-text").textContent = text;
    }

    function query() {
      var params = new URLSearchParams();
      ["name", "status"].forEach(function (key) {
        var value = form.elements[key].value.trim();
        if (value) params.set(key, value);
      });
      form.elements.tag.value.split(",").forEach(function (tag) {
        if (tag.trim()) params.append("tag", tag.trim());
      });
      return params.toString();
    }

    function spark(values, height) {
      var peak = Math.max.apply(null, values.concat([1]));
      return values.map(function (value, index) {
        return (index * 120 / 59).toFixed(1) + "," + (height - (value / peak) * (height - 2) - 1).toFixed(1);
      }).join(" ");
    }

    function rowFor(snapshot) {
      var row = rows.querySelector('tr[data-stream-id="' + snapshot.stream_id + '"]');
      if (!row) {
        row = template.content.firstElementChild.cloneNode(true);
        row.setAttribute("data-stream-id", snapshot.stream_id);
        rows.appendChild(row);
      }
      return row;
    }

    function totals() {
      var sums = {in: 0, out: 0, flight: 0, errors: 0};
      rows.querySelectorAll("tr[data-stream-id]").forEach(function (row) {
        sums.in += +row.querySelector(".r-in").textContent;
        sums.out += +row.querySelector(".r-out").textContent;
        sums.flight += +row.querySelector(".r-flight").textContent;
        sums.errors += +row.querySelector(".r-errors").textContent;
      });
      document.getElementById("total-in").textContent = sums.in;
      document.getElementById("total-out").textContent = sums.out;
      document.getElementById("total-flight").textContent = sums.flight;
      document.getElementById("total-errors").textContent = sums.errors;
    }

    function onSnapshot(event) {
      var s = JSON.parse(event.data);
      var placeholder = rows.querySelector(".placeholder");
      if (placeholder) placeholder.remove();
      var row = rowFor(s);
      lastSeen[s.stream_id] = Date.now();
      row.querySelector(".r-name").textContent = s.name;
      var badge = row.querySelector(".r-status .badge");
      badge.textContent = s.status.charAt(0).toUpperCase() + s.status.slice(1);
      badge.className = "badge status-" + s.status;
      row.querySelector(".r-type").textContent = labels[s.type] || s.type;
      row.querySelector(".r-in").textContent = s.in_per_second;
      row.querySelector(".r-out").textContent = s.out_per_second;
      row.querySelector(".r-flight").textContent = s.in_flight;
      row.querySelector(".r-errors").textContent = s.errors_last_minute;
      // Totals since this page opened, so a one-second burst stays visible to a reader.
      row.dataset.inTotal = (+row.dataset.inTotal || 0) + s.in_per_second;
      row.dataset.outTotal = (+row.dataset.outTotal || 0) + s.out_per_second;
      row.classList.toggle("has-errors", s.errors_last_minute > 0);
      var h = series[s.stream_id] || (series[s.stream_id] = {in: [], out: []});
      h.in.push(s.in_per_second); h.out.push(s.out_per_second);
      ["in", "out"].forEach(function (k) {
        while (h[k].length < 60) h[k].unshift(0);
        while (h[k].length > 60) h[k].shift();
      });
      row.querySelector(".spark-in").setAttribute("points", spark(h.in, 24));
      row.querySelector(".spark-out").setAttribute("points", spark(h.out, 24));
      setState("live", "Live");
      totals();
    }

    function prune() {
      // Streams that no longer match (deleted, filtered out) stop getting snapshots.
      var now = Date.now();
      rows.querySelectorAll("tr[data-stream-id]").forEach(function (row) {
        if (now - (lastSeen[row.getAttribute("data-stream-id")] || 0) > 3000) row.remove();
      });
      totals();
    }
    setInterval(prune, 1000);

    function connect() {
      if (source) source.close();
      rows.querySelectorAll("tr[data-stream-id]").forEach(function (row) { row.remove(); });
      series = {}; lastSeen = {};
      var q = query();
      window.history.replaceState(null, "", "/console/realtime" + (q ? "?" + q : ""));
      source = new EventSource("/console/realtime/feed" + (q ? "?" + q : ""));
      setState("connecting", "Connecting…");
      source.addEventListener("snapshot", onSnapshot);
      source.addEventListener("open", function () { setState("live", "Live"); });
      source.addEventListener("error", function () { setState("retrying", "Reconnecting…"); });
    }

    var timer = null;
    form.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(connect, 300);
    });
    window.addEventListener("beforeunload", function () { if (source) source.close(); });
    connect();
  }
})();
