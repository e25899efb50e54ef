// certfleet console: the only script (served from the console's own origin, no inline code).
// It keeps a page's live numbers current without reloading: every element marked
// data-live="key" shows the value of `key` in the JSON of the page's source (the element with
// data-live-source, else /api/live), and a <progress> marked data-live-max / data-live-value
// follows two keys. Without the script the page still shows the numbers of its load.
"use strict";
(function () {
  const texts = document.querySelectorAll("[data-live]");
  const bars = document.querySelectorAll("progress[data-live-max]");
  if (texts.length === 0 && bars.length === 0) return;
  const marked = document.querySelector("[data-live-source]");
  const source = marked ? marked.dataset.liveSource : "/api/live";
  async function refresh() {
    try {
      const answer = await fetch(source, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401) { window.location.assign("/signin"); return; }
      if (!answer.ok) return;
      const data = await answer.json();
      for (const element of texts) {
        const value = data[element.dataset.live];
        if (typeof value === "number" || typeof value === "string") element.textContent = String(value);
      }
      for (const bar of bars) {
        const max = data[bar.dataset.liveMax];
        const value = data[bar.dataset.liveValue];
        if (typeof max === "number" && typeof value === "number") {
          bar.max = Math.max(max, 1);
          bar.value = value;
        }
      }
    } catch (_) {
      // The server is away for a moment: try again at the next tick.
    }
  }
  window.setInterval(refresh, 3000);
})();
