// The inbox's one script; a file, not inline: the CSP allows no inline script.
// 1. A form marked data-busy (feedback-form, the review decisions, a new run) says the model
//    is working and keeps its buttons from a second click while the server answers.
// 2. The reviewer's name typed in one decision form fills the others.
"use strict";
for (const form of document.querySelectorAll("form[data-busy]")) {
  form.addEventListener("submit", function () {
    form.classList.add("busy");
    for (const button of form.querySelectorAll("button")) {
      button.disabled = true;
    }
  });
}
const names = document.querySelectorAll("input.reviewer");
for (const input of names) {
  input.addEventListener("input", function () {
    for (const other of names) {
      if (other !== input) {
        other.value = input.value;
      }
    }
  });
}
