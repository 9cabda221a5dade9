// Small behaviours htmx does not cover. Pages work without this file.
(function () {
  "use strict";

  // The log follows its newest line unless the reader scrolled up to read something.
  var follow = true;
  function logBox() { return document.getElementById("log"); }
  function toBottom() {
    var box = logBox();
    if (box && follow) box.scrollTop = box.scrollHeight;
  }
  document.addEventListener("scroll", function (event) {
    var box = logBox();
    if (event.target === box) follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
  }, true);
  document.addEventListener("htmx:oobAfterSwap", toBottom);
  document.addEventListener("DOMContentLoaded", toBottom);

  // Buttons that destroy or stop something ask first.
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);
})();
