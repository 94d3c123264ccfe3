// The run page's feedback form: say the model is working and keep the button from a
// second click while the refinement runs. A file, not inline: the CSP allows no inline script.
"use strict";
const form = document.getElementById("feedback-form");
if (form) {
  form.addEventListener("submit", function () {
    form.classList.add("busy");
    form.querySelector("button").disabled = true;
  });
}
