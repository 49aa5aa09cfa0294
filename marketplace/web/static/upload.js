// Uploads a version with a progress bar, then shows the inspection's findings. Without this
// script the same form posts normally and the page reports the result.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) return;
  var wrap = document.getElementById("upload-progress-wrap");
  var bar = document.getElementById("upload-progress");
  var status = document.getElementById("upload-status");
  var say = function (text, cls) { status.textContent = text; status.className = cls || ""; };

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    wrap.hidden = false;
    bar.value = 0;
    say(form.dataset.tUploading);
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 100);
    });
    xhr.upload.addEventListener("load", function () {
      bar.value = 100;
      say(form.dataset.tInspecting);
    });
    xhr.addEventListener("load", function () {
      var answer = {};
      try { answer = JSON.parse(xhr.responseText); } catch (e) { answer = { detail: xhr.statusText }; }
      if (xhr.status === 201) {
        var findings = (answer.findings || []).map(function (f) { return f.severity + " " + f.code; });
        say(form.dataset.tDone + ": " + answer.version + (findings.length ? " · " + findings.join(", ") : ""), "flash ok");
        window.setTimeout(function () { window.location.assign(answer.location); window.location.reload(); }, 800);
      } else {
        var list = (answer.findings || []).map(function (f) { return f.code + ": " + f.message; });
        say(form.dataset.tRejected + ": " + (answer.detail || xhr.status) + (list.length ? " — " + list.join("; ") : ""), "flash error");
      }
    });
    xhr.addEventListener("error", function () { say(form.dataset.tRejected, "flash error"); });
    xhr.send(new FormData(form));
  });
})();
