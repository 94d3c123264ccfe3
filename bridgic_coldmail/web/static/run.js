// The inbox's one script; a file, not inline: the CSP allows no inline script.
// 1. A form marked data-busy (feedback-form, the review decisions, a new run) says the model
//    is working and keeps its buttons from a second click while the server answers.
// 2. The reviewer's name typed in one decision form fills the others.
// 3. The export form checks the chosen lead list first (the same POST with check=1, which
//    never downloads) and shows what the server found on this page: the leads that will be
//    left out and why. With nothing left out the browser then downloads the file at once;
//    otherwise the button becomes "Download the N leads", and that submission carries the
//    fingerprint of the rows shown (leave_out), without which the server does not download.
//    Without this script the server shows the same report as a page instead.
// 4. While this server writes a batch's first lines, the page reloads itself (data-refresh,
//    in seconds) to show the progress; without this script a <noscript> refresh does.
"use strict";
const refreshing = document.querySelector("#lines[data-refresh]");
if (refreshing) {
  window.setTimeout(function () {
    window.location.reload();
  }, 1000 * Number(refreshing.dataset.refresh));
}
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
const exportForm = document.getElementById("export-form");
const exportResult = document.getElementById("export-result");
if (exportForm && exportResult && window.fetch && window.DOMParser) {
  const leaveOut = exportForm.elements.namedItem("leave_out");
  const button = exportForm.querySelector("button[type=submit]");
  const forget = function () {
    leaveOut.value = "";
    button.textContent = button.dataset.label;
    exportResult.replaceChildren();
  };
  exportForm.elements.namedItem("leads").addEventListener("change", forget);
  exportForm.elements.namedItem("format").addEventListener("change", forget);
  exportForm.elements.namedItem("profile").addEventListener("change", forget);
  exportForm.elements.namedItem("strict").addEventListener("change", forget);
  exportForm.elements.namedItem("variants").addEventListener("input", forget);
  for (const box of exportForm.querySelectorAll("input[name=disabled_rule]")) {
    box.addEventListener("change", forget);
  }
  const saving = function () {
    const report = document.getElementById("export-report");
    if (report) {
      let note = report.querySelector(".downloading");
      if (!note) {
        note = document.createElement("p");
        note.className = "downloading";
        report.append(note);
      }
      note.textContent = report.dataset.skipped === "0"
        ? "Your browser is saving the file."
        : "Your browser is saving the file, without the leads listed here.";
    }
  };
  exportForm.addEventListener("submit", async function (event) {
    if (leaveOut.value) {
      saving(); // the report for this file is on the page: the browser downloads the file
      return;
    }
    event.preventDefault();
    const data = new FormData(exportForm);
    data.set("check", "1");
    exportForm.classList.add("busy");
    button.disabled = true;
    let answer = null;
    try {
      const response = await fetch(exportForm.action, { method: "POST", body: data });
      answer = new DOMParser().parseFromString(await response.text(), "text/html");
    } catch (error) {
      answer = null;
    } finally {
      exportForm.classList.remove("busy");
      button.disabled = false;
    }
    const found = answer && answer.getElementById("export-result");
    if (!found) {
      exportForm.submit(); // an error page (or no answer): let the browser show it
      return;
    }
    const message = answer.getElementById("message");
    exportResult.replaceChildren(...(message ? [message] : []), ...found.childNodes);
    const report = document.getElementById("export-report");
    if (!report) {
      return; // nothing can be exported: the page now says why
    }
    leaveOut.value = report.dataset.leaveOut;
    if (report.dataset.skipped === "0") {
      saving();
      exportForm.submit();
    } else {
      const rows = report.dataset.rows;
      button.textContent = "Download the " + rows + (rows === "1" ? " lead" : " leads");
    }
  });
}
