// Blind rating: every answer is kept in this browser (localStorage, per rating set) as it is given,
// and "Download ratings" saves them all as one JSON file for `tsae ratings RUN FILE`.
(function () {
  var set = document.body.dataset.set;
  var store = "tsae-ratings-" + set;
  var answers = {};
  try { answers = JSON.parse(localStorage.getItem(store) || "{}"); } catch (e) { answers = {}; }
  var items = document.querySelectorAll(".item");

  function save() {
    try { localStorage.setItem(store, JSON.stringify(answers)); } catch (e) { /* private mode: kept in the page only */ }
  }
  function complete(id) {
    var a = answers[id] || {};
    return a.A && a.A.rating && a.B && a.B.rating;
  }
  function progress() {
    var done = 0;
    items.forEach(function (el) { var ok = complete(el.id); el.classList.toggle("done", !!ok); if (ok) done += 1; });
    document.getElementById("count").textContent = done + " of " + items.length + " pairs rated";
  }
  function restore() {
    items.forEach(function (el) {
      var a = answers[el.id] || {};
      el.querySelectorAll("input").forEach(function (input) {
        var side = input.dataset.side, what = input.dataset.what;
        var value = what === "prefer" ? a.prefer : (a[side] || {})[what];
        if (input.type === "radio") input.checked = value !== undefined && String(value) === input.value;
        else if (value !== undefined) input.value = value;
      });
    });
    var rater = document.getElementById("rater");
    rater.value = localStorage.getItem(store + "-rater") || "";
  }
  document.addEventListener("change", function (ev) {
    var input = ev.target, item = input.closest(".item");
    if (!item) return;
    var a = answers[item.id] = answers[item.id] || {};
    if (input.dataset.what === "prefer") a.prefer = input.value;
    else {
      var side = a[input.dataset.side] = a[input.dataset.side] || {};
      side[input.dataset.what] = input.dataset.what === "rating" ? Number(input.value) : input.value;
    }
    save();
    progress();
  });
  document.getElementById("rater").addEventListener("change", function (ev) {
    try { localStorage.setItem(store + "-rater", ev.target.value); } catch (e) { /* ignore */ }
  });
  document.getElementById("download").addEventListener("click", function () {
    var out = { format: "tsae-blind-ratings-1", set: set, rater: document.getElementById("rater").value,
                saved: new Date().toISOString(), items: answers };
    var blob = new Blob([JSON.stringify(out, null, 1)], { type: "application/json" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "ratings-" + set + ".json";
    document.body.appendChild(a);
    a.click();
    a.remove();
  });
  document.getElementById("clear").addEventListener("click", function () {
    if (!confirm("Forget every rating given on this page?")) return;
    answers = {};
    save();
    restore();
    progress();
  });
  restore();
  progress();
})();
