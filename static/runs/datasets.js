// The upload page: the name from the chosen file, a duplicate name-version caught before
// any byte is sent, progress while it uploads, and a rejected upload's errors shown in place
// (htmx does not swap 4xx answers by default). Confirmation before a delete is app.js's one
// handler. The page works without this file.
(function () {
  "use strict";

  function uploadForm(elt) {
    return elt && elt.closest ? elt.closest("form[data-upload-progress]") : null;
  }
  // "my-data.jsonl" -> "my-data", as the server does when the name is left empty.
  function stem(path) {
    return path.replace(/^.*[\\/]/, "").replace(/\.[^.]*$/, "").trim();
  }

  // A chosen file names the dataset unless the user typed a name of their own.
  document.addEventListener("change", function (evt) {
    var form = uploadForm(evt.target);
    if (!form || evt.target.name !== "file" || !evt.target.files.length) return;
    var name = form.querySelector("input[name=name]");
    if (name.value && name.dataset.fromFile !== "true") return;
    name.value = stem(evt.target.files[0].name);
    name.dataset.fromFile = "true";
    htmx.trigger(name, "change");
  });
  document.addEventListener("input", function (evt) {
    if (uploadForm(evt.target) && evt.target.name === "name") delete evt.target.dataset.fromFile;
  });

  // Ask the server whether the name and version are free before the upload starts: the
  // live check may not have answered yet when the button is pressed.
  document.addEventListener("htmx:confirm", function (evt) {
    var form = evt.target;
    if (!form.matches || !form.matches("form[data-upload-progress]")) return;
    if (evt.detail.verb !== "post") return;
    evt.preventDefault();
    var file = form.querySelector("input[name=file]");
    var query = new URLSearchParams({
      name: form.querySelector("input[name=name]").value,
      version: form.querySelector("input[name=version]").value,
      filename: file.files.length ? file.files[0].name : "",
    });
    htmx.ajax("GET", form.dataset.checkUrl + "?" + query, { target: form, swap: "none" })
      .then(function () {
        var problem = form.querySelector("#errors-name li, #errors-version li");
        if (problem) {
          problem.closest(".field").querySelector("input").focus();
        } else {
          evt.detail.issueRequest(true);
        }
      }, function () { evt.detail.issueRequest(true); });
  });

  document.addEventListener("htmx:xhr:progress", function (evt) {
    var form = uploadForm(evt.target);
    if (!form || !evt.detail.lengthComputable || !evt.detail.total) return;
    var bar = form.querySelector("progress");
    var label = form.querySelector("[data-progress-label]");
    var percent = Math.round((evt.detail.loaded / evt.detail.total) * 100);
    bar.hidden = false;
    bar.value = percent;
    label.textContent = percent >= 100 ? "Uploaded; validating…" : "Uploading… " + percent + "%";
  });

  // The request never reached the server: most often the file changed on disk after it
  // was chosen (browsers then refuse to send it).
  document.addEventListener("htmx:sendError", function (evt) {
    var form = uploadForm(evt.detail.elt);
    if (!form) return;
    form.querySelector("progress").hidden = true;
    form.querySelector("[data-progress-label]").textContent = "";
    var errors = form.querySelector("#errors-file");
    errors.innerHTML = "";
    var item = document.createElement("li");
    item.textContent = "The upload could not be sent. If the file changed since you chose it, choose it again.";
    errors.appendChild(item);
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
