// Click a column header to sort the table by it (numbers numerically; empty cells last).
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("th");
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var desc = !th.classList.contains("sorted-desc");
      heads.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(desc ? "sorted-desc" : "sorted-asc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = x === undefined || x === "" ? NaN : Number(x), ny = y === undefined || y === "" ? NaN : Number(y);
        if (isNaN(nx) && isNaN(ny)) { x = a.cells[col].textContent; y = b.cells[col].textContent; return desc ? y.localeCompare(x) : x.localeCompare(y); }
        if (isNaN(nx)) return 1;
        if (isNaN(ny)) return -1;
        return desc ? ny - nx : nx - ny;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
var only = document.getElementById("pages-only");
if (only) only.addEventListener("change", function () {
  document.querySelectorAll("tr[data-page='0']").forEach(function (r) { r.hidden = only.checked; });
});
