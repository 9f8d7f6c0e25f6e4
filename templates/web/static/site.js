/* The pages work without this script; it adds a live check of each query
   as it is typed (the same check as the "Check queries" button, from the
   server), a button to add subscription rows, the browser's time zone on
   a new sign-up, and shows only the schedule fields that apply. */
(function () {
  "use strict";
  var each = function (selector, fn) {
    Array.prototype.forEach.call(document.querySelectorAll(selector), fn);
  };
  var csrf = document.querySelector("input[name=csrf]");
  var checkUrl = document.body.getAttribute("data-check-url");

  function wire(area) {
    var target = document.getElementById(area.getAttribute("data-check"));
    var timer = null;
    var last = area.value.trim();
    function run() {
      var query = area.value.trim();
      if (query === last) return;
      last = query;
      if (!query) {
        target.innerHTML = "";
        area.removeAttribute("aria-invalid");
        return;
      }
      var body = new URLSearchParams();
      body.set("csrf", csrf ? csrf.value : "");
      body.set("query", query);
      fetch(checkUrl, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) return;
          var ok = response.headers.get("X-Query-Ok") === "1";
          return response.text().then(function (html) {
            if (area.value.trim() !== query) return; /* a newer check is on its way */
            target.innerHTML = html; /* escaped by the server's template */
            if (ok) area.removeAttribute("aria-invalid");
            else area.setAttribute("aria-invalid", "true");
          });
        })
        .catch(function () {});
    }
    area.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(run, 300);
    });
  }
  each("textarea[data-check]", wire);

  var add = document.querySelector("[data-add-row]");
  var template = document.getElementById("row-template");
  var rows = document.querySelector("[data-rows]");
  if (add && template && rows) {
    add.hidden = false;
    add.addEventListener("click", function () {
      var next = 0;
      each("[data-rows] textarea[data-check]", function (area) {
        next = Math.max(next, parseInt(area.id.split("-")[1], 10) + 1);
      });
      rows.insertAdjacentHTML("beforeend", template.innerHTML.replace(/__N__/g, String(next)));
      var row = rows.lastElementChild;
      wire(row.querySelector("textarea[data-check]"));
      row.querySelector("input").focus();
    });
  }

  var zone = document.querySelector("[data-zone-prefill]");
  if (zone && zone.value === "UTC" && window.Intl) {
    try {
      var found = Intl.DateTimeFormat().resolvedOptions().timeZone;
      if (found) zone.value = found;
    } catch (e) { /* keep UTC */ }
  }

  function schedule() {
    var picked = document.querySelector("input[name=schedule]:checked");
    var kind = picked ? picked.value : "instant";
    each("[data-for]", function (field) {
      field.hidden = field.getAttribute("data-for").split(" ").indexOf(kind) < 0;
    });
  }
  each("input[name=schedule]", function (radio) {
    radio.addEventListener("change", schedule);
  });
  schedule();
})();
