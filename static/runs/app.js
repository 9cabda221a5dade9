// Small behaviours htmx does not cover. Pages work without this file.
(function () {
  "use strict";

  // The log follows its newest line unless the reader scrolled up to read something:
  // whether it was at the bottom is decided just before new lines are appended.
  var wasAtBottom = true;
  function logBox() { return document.getElementById("log"); }
  function atBottom(box) { return box.scrollTop + box.clientHeight >= box.scrollHeight - 8; }
  document.addEventListener("htmx:oobBeforeSwap", function () {
    var box = logBox();
    if (box) wasAtBottom = atBottom(box);
  });
  document.addEventListener("htmx:oobAfterSwap", function () {
    var box = logBox();
    if (box && wasAtBottom) box.scrollTop = box.scrollHeight;
  });
  document.addEventListener("DOMContentLoaded", function () {
    var box = logBox();
    if (box) box.scrollTop = box.scrollHeight;
  });

  // Buttons that destroy or stop something ask first.
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);
})();
