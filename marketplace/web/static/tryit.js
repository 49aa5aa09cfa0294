// The try-it panel: runs an evaluation through the HTTP API with a short-lived page token.
// The token comes from POST /session/api-token (session cookie + CSRF header) and carries only
// sandbox:run; the API applies its own rules to it as to any client.
(function () {
  "use strict";
  var panel = document.getElementById("try-it");
  var run = document.getElementById("tryit-run");
  if (!panel || !run) return;
  var result = document.getElementById("tryit-result");
  var select = document.getElementById("tryit-version");
  var t = function (key) { return result.dataset["t" + key.charAt(0).toUpperCase() + key.slice(1)] || key; };
  var token = null;
  var tokenExpires = 0;

  function currentFieldset() {
    var sets = panel.querySelectorAll("fieldset.tryit-version");
    for (var i = 0; i < sets.length; i++) if (sets[i].dataset.version === select.value) return sets[i];
    return null;
  }
  select.addEventListener("change", function () {
    panel.querySelectorAll("fieldset.tryit-version").forEach(function (f) {
      f.hidden = f.dataset.version !== select.value;
    });
  });

  function pageToken() {
    if (token && Date.now() < tokenExpires) return Promise.resolve(token);
    return fetch(panel.dataset.tokenUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRFToken": panel.dataset.csrf, "Accept": "application/json" }
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.detail || body.code || r.status);
        token = body.access_token;
        tokenExpires = Date.now() + (body.expires_in - 30) * 1000;
        return token;
      });
    });
  }

  var NPY_TYPES = {
    "<f4": ["float32", Float32Array], "<f8": ["float64", Float64Array],
    "<i4": ["int32", Int32Array], "<i8": ["int64", BigInt64Array], "<i2": ["int16", Int16Array],
    "|i1": ["int8", Int8Array], "|u1": ["uint8", Uint8Array], "<u2": ["uint16", Uint16Array],
    "<u4": ["uint32", Uint32Array], "<u8": ["uint64", BigUint64Array], "|b1": ["bool", Uint8Array]
  };

  // A .npy file (little-endian, C order) as a JSON tensor {dtype, shape, data}.
  function parseNpy(buffer) {
    var bytes = new Uint8Array(buffer);
    if (bytes[0] !== 0x93 || String.fromCharCode.apply(null, bytes.slice(1, 6)) !== "NUMPY") {
      throw new Error("not a .npy file");
    }
    var view = new DataView(buffer);
    var major = bytes[6];
    var headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
    var start = major === 1 ? 10 : 12;
    var header = new TextDecoder("latin1").decode(bytes.slice(start, start + headerLength));
    var descr = /'descr':\s*'([^']+)'/.exec(header);
    var shape = /'shape':\s*\(([^)]*)\)/.exec(header);
    if (!descr || !shape || /'fortran_order':\s*True/.test(header)) throw new Error("unsupported .npy header");
    var type = NPY_TYPES[descr[1]];
    if (!type) throw new Error("unsupported dtype " + descr[1]);
    var dims = shape[1].split(",").map(function (s) { return s.trim(); }).filter(Boolean).map(Number);
    var offset = start + headerLength;
    var count = dims.reduce(function (a, b) { return a * b; }, 1);
    var data = new type[1](buffer.slice(offset, offset + count * type[1].BYTES_PER_ELEMENT));
    var values = Array.prototype.map.call(data, function (v) {
      return type[0] === "bool" ? v !== 0 : Number(v);
    });
    return { dtype: type[0], shape: dims, data: values };
  }

  function shapeOf(nested) {
    var dims = [];
    var node = nested;
    while (Array.isArray(node)) { dims.push(node.length); node = node[0]; }
    return dims;
  }

  function readTensor(field) {
    var file = field.querySelector("input[type=file]").files[0];
    if (file) return file.arrayBuffer().then(parseNpy);
    var text = field.querySelector("textarea").value.trim();
    if (!text) return Promise.resolve(null);
    var value = JSON.parse(text);
    if (Array.isArray(value)) value = { dtype: field.dataset.dtype, shape: shapeOf(value), data: value };
    return Promise.resolve(value);
  }

  function body(fieldset, bearer) {
    var sample = fieldset.querySelector(".tryit-sample");
    var base = "/api/v1/models/" + panel.dataset.modelId + "/versions/" + encodeURIComponent(fieldset.dataset.version);
    if (sample && sample.checked) {
      return fetch(base + "/sample", { headers: { "Authorization": "Bearer " + bearer } }).then(function (r) {
        if (!r.ok) return r.json().then(function (p) { throw new Error(p.detail || p.code); });
        return r.arrayBuffer().then(function (b) { return { type: "application/x-npz", data: b }; });
      });
    }
    var npz = fieldset.querySelector(".tryit-npz").files[0];
    if (npz) return npz.arrayBuffer().then(function (b) { return { type: "application/x-npz", data: b }; });
    var fields = fieldset.querySelectorAll(".tryit-input");
    return Promise.all(Array.prototype.map.call(fields, readTensor)).then(function (tensors) {
      var inputs = {};
      for (var i = 0; i < fields.length; i++) {
        if (!tensors[i]) throw new Error(t("noinput"));
        inputs[fields[i].dataset.name] = tensors[i];
      }
      return { type: "application/json", data: JSON.stringify({ inputs: inputs }) };
    });
  }

  function show(nodes) {
    result.replaceChildren.apply(result, nodes);
  }
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  run.addEventListener("click", function () {
    var fieldset = currentFieldset();
    if (!fieldset) return;
    run.disabled = true;
    show([el("p", t("running"))]);
    var started = 0;
    pageToken().then(function (bearer) {
      return body(fieldset, bearer).then(function (payload) {
        started = performance.now();
        var url = "/api/v1/models/" + panel.dataset.modelId + "/versions/" + encodeURIComponent(fieldset.dataset.version) + "/evaluate";
        return fetch(url, {
          method: "POST", body: payload.data,
          headers: { "Authorization": "Bearer " + bearer, "Content-Type": payload.type, "Accept": "application/json" }
        });
      });
    }).then(function (r) {
      var roundTrip = performance.now() - started;
      return r.json().then(function (answer) {
        if (!r.ok) throw new Error((answer.code ? answer.code + ": " : "") + (answer.detail || r.status));
        var nodes = [el("h3", t("outputs"))];
        Object.keys(answer.outputs).forEach(function (name) {
          var o = answer.outputs[name];
          nodes.push(el("p", name + " · " + o.dtype + " " + JSON.stringify(o.shape), "output-name"));
          var shown = o.data.slice(0, 64);
          nodes.push(el("pre", JSON.stringify(shown) + (o.data.length > shown.length ? " …" : ""), "output"));
        });
        var timing = answer.timing || {};
        nodes.push(el("p", t("latency") + ": " + roundTrip.toFixed(1) + " ms (run " + (timing.run_ms || 0) + " ms)", "latency"));
        var usage = answer.usage || {};
        if (usage.calls_remaining !== undefined && usage.calls_remaining !== null) {
          nodes.push(el("p", t("remaining") + ": " + usage.calls_remaining, "remaining"));
        }
        if (usage.call_accrued_minor !== undefined) nodes.push(el("p", t("charged") + ": " + usage.call_accrued_minor, "charged"));
        show(nodes);
      });
    }).catch(function (error) {
      show([el("p", t("error") + ": " + error.message, "notice error")]);
    }).finally(function () { run.disabled = false; });
  });
})();
