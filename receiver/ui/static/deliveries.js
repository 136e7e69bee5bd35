// Keep the deliveries table current without a reload: every few seconds fetch the same list
// (same filters) from the JSON API and rebuild the rows. Payload text is only ever assigned
// to textContent, never parsed as HTML.
(function () {
  "use strict";
  var table = document.getElementById("deliveries");
  if (!table) { return; }
  var body = table.tBodies[0];
  var empty = document.getElementById("empty");
  var live = document.getElementById("live");
  var url = table.getAttribute("data-api");
  // "<source> <event type>" -> the page a subject id links to (a conversation, a task).
  var subjectLinks = JSON.parse(table.getAttribute("data-subject-links") || "{}");
  var INTERVAL_MS = 2000;

  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function when(iso) {
    var d = new Date(iso);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) +
      " " + pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  function cell(row, text, className) {
    var td = row.insertCell();
    td.textContent = text;
    if (className) { td.className = className; }
    return td;
  }
  function render(rows) {
    var fresh = document.createElement("tbody");
    rows.forEach(function (r) {
      var tr = fresh.insertRow();
      tr.setAttribute("data-id", String(r.id));
      var link = document.createElement("a");
      link.href = "/ui/deliveries/" + encodeURIComponent(r.id);
      link.textContent = String(r.id);
      tr.insertCell().appendChild(link);
      cell(tr, when(r.received_at));
      cell(tr, r.source);
      cell(tr, r.event_type || "-");
      var prefix = subjectLinks[r.source + " " + r.event_type];
      if (prefix && r.subject_id) {
        var subject = document.createElement("a");
        subject.href = prefix + encodeURIComponent(r.subject_id);
        subject.textContent = r.subject_id;
        var td = tr.insertCell();
        td.className = "mono";
        td.appendChild(subject);
      } else {
        cell(tr, r.subject_id || "-", "mono");
      }
      cell(tr, r.size.toLocaleString("en-US"), "num");
      var status = document.createElement("span");
      status.className = "status " + r.status;
      status.textContent = r.status;
      tr.insertCell().appendChild(status);
    });
    table.replaceChild(fresh, body);
    body = fresh;
    empty.hidden = rows.length > 0;
  }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (rows) { render(rows); live.textContent = "live"; live.className = "muted live"; })
      .catch(function () { live.textContent = "offline"; live.className = "error live"; })
      .then(function () { window.setTimeout(poll, INTERVAL_MS); });
  }
  window.setTimeout(poll, INTERVAL_MS);
})();
