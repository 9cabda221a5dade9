// Dataset pages: upload progress and showing a rejected upload's
// errors in place (htmx does not swap 4xx answers by default). Confirmation before a delete
// is app.js's one handler. Pages work without it.
(function () {
  "use strict";

  document.addEventListener("htmx:xhr:progress", function (evt) {
    var form = evt.target.closest && evt.target.closest("form[data-upload-progress]");
    if (!form || !evt.detail.lengthComputable || !evt.detail.total) return;
    var bar = form.querySelector("progress");
    var label = form.querySelector("[data-progress-label]");
    var percent = Math.round((evt.detail.loaded / evt.detail.total) * 100);
    bar.hidden = false;
    bar.value = percent;
    label.textContent = percent >= 100 ? "Uploaded; validating…" : "Uploading… " + percent + "%";
  });

  // Field errors (422), an existing version (409) and the size limit (413) come back as
  // the form with its messages: show them where the form was.
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var elt = evt.detail.elt || evt.target;
    var status = evt.detail.xhr.status;
    if (elt && elt.closest && elt.closest("[data-swap-errors]") &&
        (status === 409 || status === 413 || status === 422)) {
      evt.detail.shouldSwap = true;
      evt.detail.isError = false;
    }
  });
})();
