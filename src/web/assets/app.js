// Progressive enhancement only: every page works without this file.
// Adds "expand all" / "collapse all" buttons above the plugin trees.
document.addEventListener("DOMContentLoaded", function () {
  var section = document.getElementById("plugins");
  if (!section) return;
  var bar = document.createElement("p");
  [["expand all", true], ["collapse all", false]].forEach(function (b) {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "expand";
    button.textContent = b[0];
    button.addEventListener("click", function () {
      section.querySelectorAll("details").forEach(function (d) { d.open = b[1]; });
    });
    bar.appendChild(button);
  });
  section.insertBefore(bar, section.children[1] || null);
});
