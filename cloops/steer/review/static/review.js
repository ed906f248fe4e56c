// cloops review & studio: no framework, no build step, nothing fetched from the internet.
(function () {
  "use strict";
  var tokenMeta = document.querySelector('meta[name="cloops-token"]');
  var token = tokenMeta ? tokenMeta.content : null;
  var flash = document.getElementById("flash");

  function show(text, isError) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = "flash" + (isError ? " err" : "");
    flash.hidden = false;
  }
  try {
    var kept = sessionStorage.getItem("cloops-flash");
    if (kept) { sessionStorage.removeItem("cloops-flash"); var k = JSON.parse(kept); show(k.text, k.error); }
  } catch (e) { /* storage unavailable (file://): no message carried over */ }

  // the index's filter box
  var filter = document.getElementById("filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var q = filter.value.toLowerCase();
      document.querySelectorAll(".card").forEach(function (c) {
        c.hidden = q && c.dataset.search.indexOf(q) < 0;
      });
    });
  }

  // play one page of the voice track, from its start to its end
  var stopAt = null;
  function play(btn) {
    var audio = document.getElementById(btn.dataset.play);
    if (!audio) return;
    var start = parseFloat(btn.dataset.start), end = parseFloat(btn.dataset.end);
    stopAt = end;
    var go = function () { audio.currentTime = start; audio.play().catch(function () {}); };
    if (audio.readyState >= 1) go(); else { audio.preload = "auto"; audio.addEventListener("loadedmetadata", go, { once: true }); audio.load(); }
  }
  document.querySelectorAll("audio").forEach(function (a) {
    a.addEventListener("timeupdate", function () {
      if (stopAt !== null && a.currentTime >= stopAt) { a.pause(); stopAt = null; }
    });
  });

  function body(btn) {
    var d = btn.dataset, out = {};
    if (d.target) out.target = d.target;
    if (d.story) out.story = d.story;
    if (d.take) out.take = parseInt(d.take, 10);
    if (d.version) out.version = parseInt(d.version, 10);
    if (d.action === "edit") {
      var box = btn.parentElement.querySelector("textarea");
      if (box.dataset.edit === "field") { out.field = JSON.parse(box.dataset.field); out.value = box.value; }
      else out.text = box.value;
    }
    return out;
  }

  function post(path, data) {
    return fetch(path, { method: "POST", headers: { "Content-Type": "application/json", "X-Cloops-Token": token },
                         body: JSON.stringify(data), credentials: "same-origin" });
  }

  function reloadWith(text, isError) {
    try { sessionStorage.setItem("cloops-flash", JSON.stringify({ text: text, error: isError })); } catch (e) {}
    location.reload();
  }

  // a build (rebuild, or a new take): its output streamed into the page as doit prints it
  function stream(path, data, btn) {
    var out = document.getElementById("progress");
    if (!out) { out = document.createElement("pre"); out.className = "progress"; btn.after(out); }
    out.hidden = false; out.textContent = "";
    return post(path, data).then(function (res) {
      if (!res.ok) return res.json().then(function (j) { throw new Error(j.error || res.statusText); });
      var reader = res.body.getReader(), dec = new TextDecoder();
      function pump() {
        return reader.read().then(function (r) {
          if (r.done) return;
          out.textContent += dec.decode(r.value, { stream: true });
          out.scrollTop = out.scrollHeight;
          return pump();
        });
      }
      return pump();
    }).then(function () {
      var ok = /\nexit 0\s*$/.test(out.textContent);
      reloadWith(ok ? "build finished" : "build failed: see its output below the rebuild button", !ok);
    });
  }

  document.addEventListener("click", function (ev) {
    var p = ev.target.closest("[data-play]");
    if (p) { ev.preventDefault(); play(p); return; }
    var btn = ev.target.closest("button[data-action]");
    if (!btn || !token) return;
    ev.preventDefault();
    var action = btn.dataset.action;
    if (btn.dataset.confirm && !btn.classList.contains("confirm")) {
      btn.classList.add("confirm");
      btn.dataset.label = btn.textContent;
      btn.textContent = "confirm: " + btn.dataset.confirm.replace(/ Ask for it\?$/, "");
      btn.title = btn.dataset.confirm;
      return;
    }
    btn.disabled = true;
    var data = body(btn);
    if (action === "build" || action === "take") {
      stream("/api/" + action, data, btn).catch(function (e) { btn.disabled = false; show(String(e.message || e), true); });
      return;
    }
    post("/api/" + action, data).then(function (res) {
      return res.json().then(function (j) {
        if (!res.ok) throw new Error(j.error || res.statusText);
        reloadWith(j.message || "done", false);
      });
    }).catch(function (e) { btn.disabled = false; show(String(e.message || e), true); });
  });
})();
