// Audio with a transcript or timeline beside it, for any page (plugins' too):
// - a button with data-seek="<seconds>" inside [data-timeline-for="<audio id>"] seeks that
//   player and plays;
// - elements there with data-start (and optional data-end) get the class "speaking" while the
//   player's time is within them (a turn lasts until the next one starts when it has no end).
(function () {
  "use strict";
  document.querySelectorAll("[data-timeline-for]").forEach(function (timeline) {
    var player = document.getElementById(timeline.getAttribute("data-timeline-for"));
    if (!player) { return; }
    var items = Array.prototype.slice.call(timeline.querySelectorAll("[data-start]"));
    var starts = items.map(function (el) { return parseFloat(el.getAttribute("data-start")); });
    var ends = items.map(function (el, i) {
      var end = el.getAttribute("data-end");
      if (end !== null) { return parseFloat(end); }
      return i + 1 < items.length ? starts[i + 1] : Infinity;
    });
    timeline.addEventListener("click", function (event) {
      var button = event.target.closest("[data-seek]");
      if (!button) { return; }
      player.currentTime = parseFloat(button.getAttribute("data-seek"));
      player.play();
    });
    player.addEventListener("timeupdate", function () {
      var t = player.currentTime;
      items.forEach(function (el, i) {
        el.classList.toggle("speaking", t >= starts[i] && t < ends[i]);
      });
    });
  });
})();
