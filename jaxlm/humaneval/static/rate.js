// Keyboard shortcuts for the rating page: 1/a left better, 2/b right better, 3/t tie, 4/x both bad,
// s skips (cannot judge), c writes a comment, Esc leaves the comment box. A second key or click while the page moves on
// is ignored, so one decision is one rating.
(function () {
  var form = document.getElementById("rate-form");
  if (!form) return;
  var keys = {"1": "left", "a": "left", "2": "right", "b": "right", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad", "s": "skip"};
  var sent = false;
  form.addEventListener("submit", function (e) {
    if (sent) { e.preventDefault(); return; }
    sent = true;
    document.body.classList.add("sending");
  });
  document.addEventListener("keydown", function (e) {
    var typing = e.target && (e.target.tagName === "TEXTAREA" || e.target.tagName === "INPUT");
    if (typing) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "c") { e.preventDefault(); document.getElementById("comment").focus(); return; }
    var choice = keys[e.key.toLowerCase()];
    if (choice) { e.preventDefault(); document.getElementById("choose-" + choice).click(); }
  });
})();
